/**
 * Host definitions of the MoE routing entries of the contract, shared by the backends that hold their
 * buffers on the host (`ref`, `cpu`) and by the cuda backend's fallbacks: the token permutation by
 * expert (`expertGroups`), grouped products whose group sizes come from a buffer
 * (`GroupedMatmulArgs.segments`), and the bounds check of grouped problems.
 */
import type { Backend, Buf, GroupedMatmulArgs } from './contract.js';

/** The grouping `expertGroups` writes: offsets (E + 1) and, per grouped row, its token, slot and expert. */
export interface ExpertGroups {
  offsets: Int32Array;
  rowToken: Int32Array;
  rowSlot: Int32Array;
  rowExpert: Int32Array;
}

/**
 * Groups the (N, k) expert choices by expert with a stable counting sort (token order within an
 * expert): the reference of `Backend.expertGroups`. O(N·k + E). Throws a RangeError naming the first
 * expert outside [0, E).
 */
export function groupExperts(experts: Int32Array, N: number, k: number, E: number): ExpertGroups {
  const M = N * k;
  checkExperts(experts, N, k, E);
  const offsets = new Int32Array(E + 1);
  for (let i = 0; i < M; i++) offsets[experts[i]! + 1]!++;
  for (let e = 0; e < E; e++) offsets[e + 1] = offsets[e]! + offsets[e + 1]!;
  const next = offsets.slice(0, E);
  const rowToken = new Int32Array(M), rowSlot = new Int32Array(M), rowExpert = new Int32Array(M);
  for (let n = 0, i = 0; n < N; n++) {
    for (let j = 0; j < k; j++, i++) {
      const e = experts[i]!, r = next[e]!++;
      rowToken[r] = n;
      rowSlot[r] = i;
      rowExpert[r] = e;
    }
  }
  return { offsets, rowToken, rowSlot, rowExpert };
}

/**
 * Checks the (N, k) expert choices of `expertGroups`: N·k entries, each in [0, E). Throws a RangeError
 * naming the first expert outside.
 */
export function checkExperts(experts: Int32Array, N: number, k: number, E: number): void {
  const M = N * k;
  if (experts.length < M) throw new Error(`expertGroups: experts has ${experts.length} entries, needs ${M}`);
  for (let i = 0; i < M; i++) {
    const e = experts[i]!;
    if (!(e >= 0 && e < E)) throw new RangeError(`expertGroups: expert ${e} of token ${Math.floor(i / k)} is outside [0, ${E})`);
  }
}

/** Throws unless the experts buffer and the four outputs of `expertGroups` are distinct buffers. */
export function checkExpertBuffers(bufs: readonly unknown[]): void {
  if (new Set(bufs).size !== bufs.length) throw new Error('expertGroups: experts and the four outputs must be distinct buffers');
}

/**
 * Checks segment offsets (groups + 1 entries, from 0, non-decreasing) and returns their total.
 * Throws naming the first violation.
 */
export function checkSegments(seg: ArrayLike<number>, groups: number): number {
  if (seg.length !== groups + 1) throw new Error(`groupedMatmul: segments has ${seg.length} entries, expected ${groups + 1}`);
  if (seg[0] !== 0) throw new Error(`groupedMatmul: segments must start at 0 (got ${seg[0]})`);
  for (let g = 0; g < groups; g++) {
    if (!(seg[g + 1]! >= seg[g]!)) throw new Error(`groupedMatmul: segments decrease at group ${g} (${seg[g]} then ${seg[g + 1]})`);
  }
  return seg[groups]!;
}

/** Throws unless the product can take segments: not transA and transB together. */
export function checkSegmentLayout(args: GroupedMatmulArgs): void {
  if (args.transA && args.transB) throw new Error('groupedMatmul: segments need transA or transB false (B\'s rows must run along them)');
}

/**
 * The same product with explicit problems: the segments' sizes and row offsets written into each
 * problem (`GroupedMatmulArgs.segments`). Throws like `checkSegments`.
 */
export function resolveSegments(args: GroupedMatmulArgs, seg: ArrayLike<number>): GroupedMatmulArgs {
  const p = Int32Array.from(args.problems), groups = p.length / 9;
  checkSegmentLayout(args);
  checkSegments(seg, groups);
  // Token dimension: m (A and C rows follow it) when !transA, k (A and B rows) when transA.
  const [dim, x, y] = args.transA ? [2, 3, 5] : [0, 3, 7];
  for (let g = 0, q = 0; g < groups; g++, q += 9) {
    p[q + dim] = seg[g + 1]! - seg[g]!;
    p[q + x] = p[q + x]! + seg[g]! * p[q + x + 1]!;
    p[q + y] = p[q + y]! + seg[g]! * p[q + y + 1]!;
  }
  const out: GroupedMatmulArgs = { ...args, problems: p };
  delete out.segments;
  return out;
}

/**
 * Checks grouped problems (9 ints each, `GroupedMatmulArgs`) against the sizes in elements of A, B and
 * C: entries non-negative, leading dimensions at least the stored row lengths, and every group's
 * operands inside their buffers. Throws an Error prefixed with `op` naming the group.
 */
export function checkProblems(op: string, p: Int32Array, transA: boolean, transB: boolean, sizeA: number, sizeB: number,
  sizeC: number): void {
  const fail = (q: number, msg: string) => { throw new Error(`${op}: group ${q / 9}: ${msg}`); };
  /** rows x cols at the offset in entry q + o with the leading dimension after it fit `size` elements. */
  const ext = (q: number, rs: number, cs: number, o: number, size: number, what: string) => {
    if (rs === 0 || cs === 0) return;
    const off = p[q + o]!, ld = p[q + o + 1]!;
    if (ld < cs) fail(q, `leading dimension ${ld} of ${what} < ${cs}`);
    const last = off + (rs - 1) * ld + cs - 1;
    if (last >= size) fail(q, `${what} needs ${last + 1} elements, has ${size}`);
  };
  for (let q = 0; q < p.length; q += 9) {
    for (let i = q; i < q + 9; i++) if (p[i]! < 0) fail(q, `negative entry in [${p.subarray(q, q + 9)}]`);
    const m = p[q]!, n = p[q + 1]!, k = p[q + 2]!;
    ext(q, transA ? k : m, transA ? m : k, 3, sizeA, 'a');
    ext(q, transB ? n : k, transB ? k : n, 5, sizeB, 'b');
    ext(q, m, n, 7, sizeC, 'c');
  }
}

/**
 * Adds a grouped product's outBias (GroupedMatmulArgs.outBias, checked: C's row length) to every row of
 * c, on the paths that do not fuse it into the scatter-add (after the products, which validate first).
 */
export function addOutBias(be: Backend, outBias: Buf, c: Buf): void {
  const ldc = outBias.size;
  if (ldc > 0) be.copyStrided(outBias, 0, [0, 1], c, 0, [ldc, 1], [Math.floor(c.size / ldc), ldc], true);
}

/**
 * Checks a grouped product's epilogue (GroupedMatmulArgs.bias, biasStride, relu): beta 0, transA false,
 * no rows.c, an f32 bias with every used group's n entries inside it; and its outBias: with rows.c, f32,
 * of each group's ldc entries. Throws naming the violation.
 */
export function checkGroupedEpilogue(args: GroupedMatmulArgs): void {
  if (args.outBias) {
    const ob = args.outBias, p = args.problems;
    if (!args.rows?.c) throw new Error('groupedMatmul: outBias needs a scattered C (rows.c)');
    if (ob.dtype !== 'f32') throw new Error(`groupedMatmul: outBias must be f32, got ${ob.dtype}`);
    for (let q = 0; q < p.length; q += 9) {
      if (p[q + 8] !== ob.size) throw new Error(`groupedMatmul: group ${q / 9}: outBias has ${ob.size} entries, C's row length (ldc) is ${p[q + 8]}`);
    }
  }
  if (!args.bias && !args.relu) return;
  if (args.beta !== 0 || args.transA || args.rows?.c) {
    throw new Error('groupedMatmul: bias and relu need beta 0, transA false and no rows.c');
  }
  if (!args.bias) return;
  const stride = args.biasStride ?? 0, p = args.problems;
  if (args.bias.dtype !== 'f32') throw new Error(`groupedMatmul: bias must be f32, got ${args.bias.dtype}`);
  if (!Number.isInteger(stride) || stride < 0) throw new Error(`groupedMatmul: biasStride must be a non-negative integer, got ${stride}`);
  for (let q = 0; q < p.length; q += 9) {
    const n = p[q + 1]!, end = (q / 9) * stride + n;
    if (n > 0 && end > args.bias.size) throw new Error(`groupedMatmul: group ${q / 9}: bias needs ${end} elements, has ${args.bias.size}`);
  }
}

/**
 * Applies a grouped product's epilogue (see `checkGroupedEpilogue`) to C on the host, over explicit
 * problems (m of each group known): C rows of group g += bias[g · stride ..], then ReLU.
 */
export function groupedEpilogue(C: Float32Array | Float64Array, p: Int32Array, bias: ArrayLike<number> | null, stride: number,
  relu: boolean): void {
  for (let q = 0, g = 0; q < p.length; q += 9, g++) {
    const m = p[q]!, n = p[q + 1]!, offC = p[q + 7]!, ldc = p[q + 8]!;
    for (let i = 0; i < m; i++) {
      for (let j = 0, o = offC + i * ldc; j < n; j++, o++) {
        const v = C[o]! + (bias ? bias[g * stride + j]! : 0);
        C[o] = relu && !(v > 0) ? 0 : v;
      }
    }
  }
}
