/**
 * The `cuda` backend: buffers live in device memory (a caching allocator in native/cuda), kernels are
 * launched asynchronously on one stream and the host synchronises only where a value comes back
 * (`download`, `sumSquares`, index validation of gathers / scatters / cross-entropy targets).
 *
 * Mixed precision, autocast style: buffers stay f32 (master weights, optimizer state, activations);
 * `matmul` runs bf16 tensor-core GEMMs (cuBLAS) with fp32 accumulation and fp32 output on bf16 copies
 * of its operands. Each f32 buffer keeps its bf16 shadow and a write version, so a weight is cast once
 * per optimizer step however many products read it, and an activation once for forward and backward.
 * Attention is a fused bf16 tensor-core kernel; LayerNorm, softmax, cross-entropy and AdamW compute in
 * fp32. `SSD_CUDA_MATMUL=tf32|f32|fast16bf|own` picks another GEMM mode (own: the built-in kernel, no
 * cuBLAS needed); `SSD_CUDA_ATTN=simt` the plain fp32 attention kernels.
 */
import type { AdamWArgs, Backend, BinaryOp, Buf, DType, GroupedMatmulArgs, HostArray, MatmulArgs, UnaryOp } from '../contract.js';
import { checkCachePositions, DTYPE_BYTES } from '../contract.js';
import { cublasCandidates, loadCudaAddon, type CudaAddon } from './addon.js';
import { groupedMatmulByCopies } from '../grouped-rows.js';

const UNARY_CODE: Record<UnaryOp, number> = { relu: 0, gelu: 1, neg: 2, exp: 3, log: 4, sqrt: 5, square: 6, tanh: 7 };
const BINARY_CODE: Record<BinaryOp, number> = { add: 0, sub: 1, mul: 2, div: 3 };
const KIND: Record<DType, number> = { f32: 0, bf16: 1, i32: 2 };

export type MatmulMode = 'bf16' | 'tf32' | 'f32' | 'fast16bf' | 'own';
/** Elements from which misaligned GEMM operands are padded (a copy pays off only on large matrices). */
const PAD_MIN = 1 << 22;
const COMPUTE: Record<Exclude<MatmulMode, 'own'>, number> = { bf16: 0, tf32: 1, f32: 2, fast16bf: 3 };

class CudaBuf implements Buf {
  ptr: number;
  freed = false;
  /** Bumped on every write; a bf16 shadow is valid while its version matches. */
  version = 0;
  shadow = 0;
  shadowVersion = -1;
  /** Leading dimension of a padded shadow (0: plain copy). */
  shadowLd = 0;
  constructor(readonly dtype: DType, readonly size: number, ptr: number) {
    this.ptr = ptr;
  }
}

function isInt(x: number): boolean {
  return Number.isInteger(x) && x >= 0;
}
function need(op: string, cond: boolean, msg: () => string): void {
  if (!cond) throw new Error(`cuda.${op}: ${msg()}`);
}

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);
function f32Bits(v: number): number {
  f32buf[0] = v;
  return u32buf[0]!;
}
function bf16Bits(v: number): number {
  f32buf[0] = v;
  const u = u32buf[0]!;
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * Merges adjacent axes that are contiguous for every operand (stride_{d-1} = stride_d · shape_d for
 * each stride list) and drops size-1 axes: fewer index divisions in the kernels.
 */
function collapse(shape: number[], ...strides: number[][]): [number[], number[][]] {
  const s: number[] = [], st: number[][] = strides.map(() => []);
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const last = s.length - 1;
    if (last >= 0 && strides.every((x, j) => st[j]![last] === x[d]! * shape[d]!)) {
      s[last] = s[last]! * shape[d]!;
      strides.forEach((x, j) => (st[j]![last] = x[d]!));
    } else {
      s.push(shape[d]!);
      strides.forEach((x, j) => st[j]!.push(x[d]!));
    }
  }
  if (s.length === 0) return [[1], strides.map(() => [0])];
  return [s, st];
}

export interface CudaBackendOptions {
  matmul?: MatmulMode;
  /** 'tc' (tensor cores where the head size allows) or 'simt'. */
  attention?: 'tc' | 'simt';
}

export class CudaBackend implements Backend {
  readonly name = 'cuda';
  readonly device: string;
  readonly gemmLibrary: string;
  readonly matmulMode: MatmulMode;
  private readonly attnImpl: number;
  private live = 0;
  private liveBytes = 0;

  constructor(private readonly nat: CudaAddon, opts: CudaBackendOptions = {}) {
    this.device = nat.init();
    const envMode = process.env['SSD_CUDA_MATMUL'] as MatmulMode | undefined;
    this.matmulMode = opts.matmul ?? envMode ?? 'bf16';
    if (!['bf16', 'tf32', 'f32', 'fast16bf', 'own'].includes(this.matmulMode)) {
      throw new Error(`cuda: unknown SSD_CUDA_MATMUL '${this.matmulMode}' (bf16, tf32, f32, fast16bf, own)`);
    }
    this.gemmLibrary = this.matmulMode === 'own' ? 'built-in grouped kernel' : nat.loadCublas(cublasCandidates());
    this.attnImpl = (opts.attention ?? process.env['SSD_CUDA_ATTN']) === 'simt' ? 1 : 0;
  }

  // ------------------------------------------------------------ buffer access
  private buf(op: string, b: Buf, what: string): CudaBuf {
    if (!(b instanceof CudaBuf)) throw new Error(`cuda.${op}: ${what} is not a cuda buffer`);
    if (b.freed) throw new Error(`cuda.${op}: ${what} was freed (${b.dtype}, size ${b.size})`);
    return b;
  }
  /** Pointer of an f32 input. */
  private r(op: string, b: Buf, what: string, minSize = 0, dtype: DType = 'f32'): number {
    const c = this.buf(op, b, what);
    if (c.dtype !== dtype) throw new Error(`cuda.${op}: ${what} must be ${dtype}, got ${c.dtype}`);
    if (c.size < minSize) throw new Error(`cuda.${op}: ${what} has ${c.size} elements, needs ${minSize}`);
    return c.ptr;
  }
  /** Pointer of an output (written or accumulated): bumps its version. */
  private w(op: string, b: Buf, what: string, minSize = 0, dtype: DType = 'f32'): number {
    const p = this.r(op, b, what, minSize, dtype);
    (b as CudaBuf).version++;
    return p;
  }
  private dims(op: string, v: Record<string, number>): void {
    for (const [k, x] of Object.entries(v)) need(op, isInt(x), () => `${k} must be a non-negative integer, got ${x}`);
  }
  /** bf16 copy of an f32 buffer, cast again only after the buffer was written. */
  private shadow(b: CudaBuf): number {
    if (b.dtype === 'bf16') return b.ptr;
    if (b.shadowVersion === b.version && b.shadow !== 0 && b.shadowLd === 0) return b.shadow;
    if (b.shadow !== 0 && b.shadowLd !== 0) { this.nat.free(b.shadow); b.shadow = 0; }
    if (b.shadow === 0) b.shadow = this.nat.malloc(Math.max(1, b.size) * 2);
    b.shadowLd = 0;
    this.nat.cast(0, b.ptr, b.shadow, b.size);
    b.shadowVersion = b.version;
    return b.shadow;
  }
  /**
   * bf16 copy of a (size / ld, ld) f32 matrix with its rows padded to a multiple of 8 elements, for
   * cuBLAS, whose kernels for leading dimensions that are not 16-byte multiples are several times
   * slower (GPT-2's vocabulary of 50257 makes the output layer's operands such).
   */
  private paddedShadow(b: CudaBuf, ld: number): { ptr: number; ld: number } {
    const ldp = Math.ceil(ld / 8) * 8, rows = b.size / ld;
    if (b.shadowVersion === b.version && b.shadow !== 0 && b.shadowLd === ldp) return { ptr: b.shadow, ld: ldp };
    if (b.shadow !== 0) this.nat.free(b.shadow);
    b.shadow = this.nat.malloc(rows * ldp * 2);
    b.shadowLd = ldp;
    this.nat.castPad(b.ptr, b.shadow, rows, ld, ldp);
    b.shadowVersion = b.version;
    return { ptr: b.shadow, ld: ldp };
  }
  /** Operand pointer and leading dimension for a bf16 GEMM (padded when large and misaligned). */
  private operand(b: CudaBuf, ld: number, batch: number): { ptr: number; ld: number } {
    if (b.dtype === 'f32' && batch === 1 && ld % 8 !== 0 && b.size >= PAD_MIN && b.size % ld === 0) return this.paddedShadow(b, ld);
    return { ptr: this.shadow(b), ld };
  }

  // ------------------------------------------------------------ memory
  alloc(dtype: DType, size: number): Buf {
    need('alloc', isInt(size), () => `bad size ${size}`);
    need('alloc', dtype in DTYPE_BYTES, () => `bad dtype ${dtype}`);
    const bytes = size * DTYPE_BYTES[dtype];
    const p = this.nat.malloc(Math.max(bytes, 1));
    this.nat.zero(p, bytes);
    this.live++;
    this.liveBytes += bytes;
    return new CudaBuf(dtype, size, p);
  }
  free(buf: Buf): void {
    if (!(buf instanceof CudaBuf)) throw new Error('cuda.free: not a cuda buffer');
    if (buf.freed) throw new Error(`cuda.free: buffer freed twice (${buf.dtype}, size ${buf.size})`);
    buf.freed = true;
    this.nat.free(buf.ptr);
    if (buf.shadow) this.nat.free(buf.shadow);
    buf.shadow = 0;
    this.live--;
    this.liveBytes -= buf.size * DTYPE_BYTES[buf.dtype];
  }
  upload(buf: Buf, data: ArrayLike<number>): void {
    const b = this.buf('upload', buf, 'buffer');
    need('upload', data.length === b.size, () => `${data.length} values for a buffer of ${b.size}`);
    b.version++;
    if (b.size === 0) return;
    if (b.dtype === 'bf16') {
      this.nat.h2dBf16(b.ptr, data instanceof Float32Array ? data : Float32Array.from(data));
    } else if (b.dtype === 'f32') {
      const a = data instanceof Float32Array ? data : Float32Array.from(data);
      this.nat.h2d(b.ptr, a, b.size * 4);
    } else {
      const a = data instanceof Int32Array ? data : Int32Array.from(data);
      this.nat.h2d(b.ptr, a, b.size * 4);
    }
  }
  download(buf: Buf): HostArray {
    const b = this.buf('download', buf, 'buffer');
    if (b.dtype === 'i32') {
      const out = new Int32Array(b.size);
      if (b.size) this.nat.d2h(b.ptr, out, b.size * 4);
      return out;
    }
    const out = new Float32Array(b.size);
    if (b.size === 0) return out;
    if (b.dtype === 'bf16') this.nat.d2hBf16(b.ptr, out);
    else this.nat.d2h(b.ptr, out, b.size * 4);
    return out;
  }
  memoryStats(): { liveBuffers: number; liveBytes: number } {
    return { liveBuffers: this.live, liveBytes: this.liveBytes };
  }
  /** Device allocator figures (bytes held by live blocks incl. bf16 shadows, cached, peak). */
  deviceMemory(): { liveBytes: number; cachedBytes: number; peakBytes: number; liveBlocks: number } {
    return this.nat.stats();
  }
  /** Waits for all queued device work (for timing). */
  synchronize(): void {
    this.nat.sync();
  }
  /** Returns the allocator's cached blocks to the device. */
  emptyCache(): void {
    this.nat.emptyCache();
  }

  // ------------------------------------------------------------ data movement
  fill(out: Buf, value: number): void {
    const b = this.buf('fill', out, 'out');
    b.version++;
    if (b.dtype === 'bf16') this.nat.fill16(b.ptr, b.size, bf16Bits(value));
    else if (b.dtype === 'i32') this.nat.fill32(b.ptr, b.size, value | 0);
    else this.nat.fill32(b.ptr, b.size, f32Bits(value));
  }
  cast(x: Buf, out: Buf): void {
    const s = this.buf('cast', x, 'x'), d = this.buf('cast', out, 'out');
    need('cast', s.size === d.size, () => `sizes ${s.size} and ${d.size} differ`);
    d.version++;
    if (s.dtype === d.dtype) this.nat.copyBytes(s.ptr, d.ptr, s.size * DTYPE_BYTES[s.dtype]);
    else if (s.dtype === 'f32' && d.dtype === 'bf16') this.nat.cast(0, s.ptr, d.ptr, s.size);
    else if (s.dtype === 'bf16' && d.dtype === 'f32') this.nat.cast(1, s.ptr, d.ptr, s.size);
    else if (s.dtype === 'i32' && d.dtype === 'f32') this.nat.cast(2, s.ptr, d.ptr, s.size);
    else if (s.dtype === 'f32' && d.dtype === 'i32') this.nat.cast(3, s.ptr, d.ptr, s.size);
    else throw new Error(`cuda.cast: unsupported ${s.dtype} -> ${d.dtype}`);
  }
  copyStrided(src: Buf, srcOffset: number, srcStrides: number[], dst: Buf, dstOffset: number,
    dstStrides: number[], shape: number[], accumulate: boolean): void {
    const op = 'copyStrided';
    const s = this.buf(op, src, 'src'), d = this.buf(op, dst, 'dst');
    need(op, s.dtype === d.dtype, () => `src is ${s.dtype} but dst is ${d.dtype}`);
    need(op, srcStrides.length === shape.length && dstStrides.length === shape.length,
      () => `ranks differ: shape ${shape.length}, srcStrides ${srcStrides.length}, dstStrides ${dstStrides.length}`);
    let total = 1;
    for (const x of shape) { need(op, isInt(x), () => `bad shape [${shape}]`); total *= x; }
    for (const x of [...srcStrides, ...dstStrides, srcOffset, dstOffset]) need(op, Number.isInteger(x), () => 'non-integer stride or offset');
    if (total === 0) return;
    // Bounds of both operands.
    const range = (off: number, st: number[]) => {
      let lo = off, hi = off;
      shape.forEach((n, a) => { const e = (n - 1) * st[a]!; if (e < 0) lo += e; else hi += e; });
      return [lo, hi] as const;
    };
    const [slo, shi] = range(srcOffset, srcStrides), [dlo, dhi] = range(dstOffset, dstStrides);
    need(op, slo >= 0 && shi < s.size, () => `source range [${slo}, ${shi}] outside a buffer of ${s.size}`);
    need(op, dlo >= 0 && dhi < d.size, () => `destination range [${dlo}, ${dhi}] outside a buffer of ${d.size}`);
    d.version++;
    const [sh, [ss, ds]] = collapse(shape, srcStrides, dstStrides);
    if (!accumulate && sh.length === 1 && ss![0] === 1 && ds![0] === 1) {
      const eb = DTYPE_BYTES[s.dtype];
      this.nat.copyBytes(s.ptr + srcOffset * eb, d.ptr + dstOffset * eb, sh[0]! * eb);
      return;
    }
    need(op, sh.length <= 8, () => `rank ${sh.length} > 8 after merging contiguous axes`);
    this.nat.copyStrided(KIND[s.dtype], s.ptr, srcOffset, ss!, d.ptr, dstOffset, ds!, sh, accumulate);
  }

  // ------------------------------------------------------------ elementwise
  unary(op: UnaryOp, x: Buf, out: Buf): void {
    const code = UNARY_CODE[op];
    need('unary', code !== undefined, () => `unknown op ${op}`);
    const n = this.buf('unary', x, 'x').size;
    need('unary', this.buf('unary', out, 'out').size === n, () => `${op}: sizes differ`);
    this.nat.unary(code, this.r('unary', x, 'x'), this.w('unary', out, 'out'), n);
  }
  unaryBackward(op: UnaryOp, x: Buf, gy: Buf, gx: Buf): void {
    const code = UNARY_CODE[op], o = 'unaryBackward';
    need(o, code !== undefined, () => `unknown op ${op}`);
    const n = this.buf(o, x, 'x').size;
    need(o, this.buf(o, gy, 'gy').size === n && this.buf(o, gx, 'gx').size === n, () => `${op}: sizes differ`);
    this.nat.unaryBackward(code, this.r(o, x, 'x'), this.r(o, gy, 'gy'), this.w(o, gx, 'gx'), n);
  }
  affine(x: Buf, out: Buf, scale: number, shift: number): void {
    const n = this.buf('affine', x, 'x').size;
    need('affine', this.buf('affine', out, 'out').size === n, () => 'sizes differ');
    this.nat.affine(this.r('affine', x, 'x'), this.w('affine', out, 'out'), n, scale, shift);
  }
  binary(op: BinaryOp, a: Buf, aStrides: number[], b: Buf, bStrides: number[], out: Buf, shape: number[]): void {
    const code = BINARY_CODE[op];
    need('binary', code !== undefined, () => `unknown op ${op}`);
    need('binary', aStrides.length === shape.length && bStrides.length === shape.length,
      () => `${op}: ranks differ: shape [${shape}], aStrides [${aStrides}], bStrides [${bStrides}]`);
    let total = 1;
    for (const s of shape) { need('binary', isInt(s), () => `${op}: bad shape [${shape}]`); total *= s; }
    const A = this.r('binary', a, 'a'), B = this.r('binary', b, 'b'), O = this.w('binary', out, 'out', total);
    if (total === 0) return;
    // Output strides are contiguous.
    const os: number[] = new Array(shape.length);
    for (let d = shape.length - 1, s = 1; d >= 0; d--) { os[d] = s; s *= shape[d]!; }
    const [sh, [as, bs]] = collapse(shape, aStrides, bStrides, os);
    need('binary', sh.length <= 8, () => `rank ${sh.length} > 8 after merging contiguous axes`);
    this.nat.binary(code, A, as!, B, bs!, O, sh);
  }
  reduceSum(x: Buf, out: Buf, outer: number, mid: number, inner: number): void {
    this.dims('reduceSum', { outer, mid, inner });
    const X = this.r('reduceSum', x, 'x', outer * mid * inner), O = this.w('reduceSum', out, 'out', outer * inner);
    this.nat.reduceSum(X, O, outer, mid, inner);
  }
  sumSquares(x: Buf): number {
    const b = this.buf('sumSquares', x, 'x');
    return this.nat.sumSquares(this.r('sumSquares', x, 'x'), b.size);
  }

  // ------------------------------------------------------------ linear algebra
  matmul(a: Buf, b: Buf, c: Buf, g: MatmulArgs): void {
    const { batch, m, n, k } = g, op = 'matmul';
    this.dims(op, { batch, m, n, k, strideA: g.strideA, strideB: g.strideB, strideC: g.strideC });
    const A = this.buf(op, a, 'a'), B = this.buf(op, b, 'b');
    this.r(op, a, 'a');
    this.r(op, b, 'b');
    const C = this.w(op, c, 'c');
    if (batch === 0 || m === 0 || n === 0) return;
    need(op, batch === 1 || g.strideC >= m * n, () => `strideC ${g.strideC} < m*n = ${m * n}`);
    const needA = (batch - 1) * g.strideA + m * k, needB = (batch - 1) * g.strideB + k * n;
    const needC = (batch - 1) * g.strideC + m * n;
    need(op, A.size >= needA, () => `a has ${A.size} elements, needs ${needA} (batch ${batch}, m ${m}, k ${k})`);
    need(op, B.size >= needB, () => `b has ${B.size} elements, needs ${needB} (batch ${batch}, k ${k}, n ${n})`);
    need(op, this.buf(op, c, 'c').size >= needC, () => `c has ${c.size} elements, needs ${needC} (batch ${batch}, m ${m}, n ${n})`);
    const lda = g.transA ? m : k, ldb = g.transB ? k : n;
    if (this.matmulMode === 'own') {
      const p = new Int32Array(9 * batch);
      for (let t = 0; t < batch; t++) p.set([m, n, k, t * g.strideA, lda, t * g.strideB, ldb, t * g.strideC, n], 9 * t);
      this.nat.groupedGemm(A.ptr, B.ptr, C, p, g.transA, g.transB, g.alpha, g.beta);
      return;
    }
    const bf = this.matmulMode === 'bf16';
    if (!bf) {
      this.nat.gemm(A.ptr, 0, lda, g.strideA, B.ptr, 0, ldb, g.strideB, C, n, g.strideC, batch, m, n, k, g.transA, g.transB,
        g.alpha, g.beta, COMPUTE[this.matmulMode as Exclude<MatmulMode, 'own'>]);
      return;
    }
    const oa = this.operand(A, lda, batch), ob = this.operand(B, ldb, batch);
    // (A misaligned f32 output is written in place: padding it and copying back measured slower on H200.)
    this.nat.gemm(oa.ptr, 1, oa.ld, g.strideA, ob.ptr, 1, ob.ld, g.strideB, C, n, g.strideC, batch, m, n, k, g.transA,
      g.transB, g.alpha, g.beta, 0);
  }
  groupedMatmul(a: Buf, b: Buf, c: Buf, g: GroupedMatmulArgs): void {
    if (g.rows) { groupedMatmulByCopies(this, a, b, c, g); return; } // no fused gather/scatter kernel yet
    const op = 'groupedMatmul';
    const A = this.buf(op, a, 'a'), B = this.buf(op, b, 'b');
    this.r(op, a, 'a');
    this.r(op, b, 'b');
    const Cs = this.buf(op, c, 'c').size;
    const C = this.w(op, c, 'c');
    const p = g.problems;
    need(op, p instanceof Int32Array, () => 'problems must be an Int32Array');
    need(op, p.length % 9 === 0, () => `problems length ${p.length} is not a multiple of 9`);
    const groups = p.length / 9;
    let bigWork = true;
    for (let q = 0; q < groups; q++) {
      const [m, n, k, oA, lA, oB, lB, oC, lC] = Array.from(p.subarray(9 * q, 9 * q + 9)) as number[];
      for (const v of [m, n, k, oA, lA, oB, lB, oC, lC]) need(op, v! >= 0, () => `group ${q}: negative entry in [${p.subarray(9 * q, 9 * q + 9)}]`);
      const ext = (rows: number, cols: number, off: number, ld: number, size: number, what: string) => {
        if (rows === 0 || cols === 0) return;
        need(op, ld >= cols, () => `group ${q}: leading dimension ${ld} of ${what} < ${cols}`);
        const last = off + (rows - 1) * ld + cols - 1;
        need(op, last < size, () => `group ${q}: ${what} needs ${last + 1} elements, has ${size}`);
      };
      ext(g.transA ? k! : m!, g.transA ? m! : k!, oA!, lA!, A.size, 'a');
      ext(g.transB ? n! : k!, g.transB ? k! : n!, oB!, lB!, B.size, 'b');
      ext(m!, n!, oC!, lC!, Cs, 'c');
      if (m! * n! * k! < (1 << 26)) bigWork = false;
    }
    if (groups === 0) return;
    const route = process.env['SSD_CUDA_GROUPED'] ?? 'auto';
    const useCublas = this.matmulMode !== 'own' && (route === 'cublas' || (route === 'auto' && (groups <= 4 || bigWork)));
    if (!useCublas) {
      this.nat.groupedGemm(A.ptr, B.ptr, C, p, g.transA, g.transB, g.alpha, g.beta);
      return;
    }
    const bf = this.matmulMode === 'bf16';
    const pa = bf ? this.shadow(A) : A.ptr, pb = bf ? this.shadow(B) : B.ptr, eb = bf ? 2 : 4;
    for (let q = 0; q < groups; q++) {
      const [m, n, k, oA, lA, oB, lB, oC, lC] = Array.from(p.subarray(9 * q, 9 * q + 9)) as number[];
      if (m === 0 || n === 0) continue;
      this.nat.gemm(pa + oA! * eb, bf ? 1 : 0, lA!, 0, pb + oB! * eb, bf ? 1 : 0, lB!, 0, C + oC! * 4, lC!, 0, 1, m!, n!, k!,
        g.transA, g.transB, g.alpha, g.beta, COMPUTE[this.matmulMode as Exclude<MatmulMode, 'own'>]);
    }
  }

  // ------------------------------------------------------------ NN kernels
  softmax(x: Buf, out: Buf, rows: number, cols: number): void {
    this.dims('softmax', { rows, cols });
    const n = rows * cols;
    this.nat.softmax(this.r('softmax', x, 'x', n), this.w('softmax', out, 'out', n), rows, cols);
  }
  softmaxBackward(y: Buf, gy: Buf, gx: Buf, rows: number, cols: number): void {
    const op = 'softmaxBackward';
    this.dims(op, { rows, cols });
    const n = rows * cols;
    this.nat.softmaxBackward(this.r(op, y, 'y', n), this.r(op, gy, 'gy', n), this.w(op, gx, 'gx', n), rows, cols);
  }
  layerNorm(x: Buf, gamma: Buf, beta: Buf, y: Buf, mean: Buf, rstd: Buf, rows: number, cols: number, eps: number): void {
    const op = 'layerNorm';
    this.dims(op, { rows, cols });
    const n = rows * cols;
    this.nat.layerNorm(this.r(op, x, 'x', n), this.r(op, gamma, 'gamma', cols), this.r(op, beta, 'beta', cols),
      this.w(op, y, 'y', n), this.w(op, mean, 'mean', rows), this.w(op, rstd, 'rstd', rows), rows, cols, eps);
  }
  layerNormBackward(x: Buf, gamma: Buf, mean: Buf, rstd: Buf, gy: Buf, gx: Buf, ggamma: Buf, gbeta: Buf,
    rows: number, cols: number): void {
    const op = 'layerNormBackward';
    this.dims(op, { rows, cols });
    const n = rows * cols;
    this.nat.layerNormBackward(this.r(op, x, 'x', n), this.r(op, gamma, 'gamma', cols), this.r(op, mean, 'mean', rows),
      this.r(op, rstd, 'rstd', rows), this.r(op, gy, 'gy', n), this.w(op, gx, 'gx', n), this.w(op, ggamma, 'ggamma', cols),
      this.w(op, gbeta, 'gbeta', cols), rows, cols);
  }
  embedding(table: Buf, ids: Buf, out: Buf, n: number, vocab: number, dim: number): void {
    const op = 'embedding';
    this.dims(op, { n, vocab, dim });
    this.nat.gatherRows(this.r(op, table, 'table', vocab * dim), this.r(op, ids, 'ids', n, 'i32'),
      this.w(op, out, 'out', n * dim), n, vocab, dim, op);
  }
  embeddingBackward(gy: Buf, ids: Buf, gtable: Buf, n: number, vocab: number, dim: number): void {
    const op = 'embeddingBackward';
    this.dims(op, { n, vocab, dim });
    this.nat.scatterAddRows(this.r(op, gy, 'gy', n * dim), this.r(op, ids, 'ids', n, 'i32'),
      this.w(op, gtable, 'gtable', vocab * dim), n, vocab, dim, op);
  }
  attention(qkv: Buf, out: Buf, lse: Buf, B: number, T: number, H: number, D: number, causal: boolean, scale: number): void {
    const op = 'attention';
    this.dims(op, { B, T, H, D });
    this.nat.attention(this.r(op, qkv, 'qkv', B * T * 3 * H * D), this.w(op, out, 'out', B * T * H * D),
      this.w(op, lse, 'lse', B * H * T), B, T, H, D, causal, scale, this.attnImpl);
  }
  attentionBackward(qkv: Buf, out: Buf, lse: Buf, gout: Buf, gqkv: Buf, B: number, T: number, H: number, D: number,
    causal: boolean, scale: number): void {
    const op = 'attentionBackward';
    this.dims(op, { B, T, H, D });
    const nq = B * T * 3 * H * D, no = B * T * H * D;
    this.nat.attentionBackward(this.r(op, qkv, 'qkv', nq), this.r(op, out, 'out', no), this.r(op, lse, 'lse', B * H * T),
      this.r(op, gout, 'gout', no), this.w(op, gqkv, 'gqkv', nq), B, T, H, D, causal, scale, this.attnImpl);
  }
  attentionCached(qkv: Buf, kCache: Buf, vCache: Buf, out: Buf, pos: Int32Array, B: number, T: number, H: number,
    D: number, Tmax: number, scale: number): void {
    const op = 'attentionCached';
    this.dims(op, { B, T, H, D, Tmax });
    checkCachePositions(pos, B, T, Tmax);
    const nc = B * H * Tmax * D;
    this.nat.attentionCached(this.r(op, qkv, 'qkv', B * T * 3 * H * D), this.w(op, kCache, 'kCache', nc),
      this.w(op, vCache, 'vCache', nc), this.w(op, out, 'out', B * T * H * D), Int32Array.from(pos), B, T, H, D, Tmax, scale);
  }
  dropout(x: Buf, out: Buf, p: number, seed: number): void {
    const n = this.buf('dropout', x, 'x').size;
    need('dropout', this.buf('dropout', out, 'out').size === n, () => 'sizes differ');
    need('dropout', p >= 0 && p <= 1, () => `p must be in [0, 1], got ${p}`);
    this.nat.dropout(this.r('dropout', x, 'x'), this.w('dropout', out, 'out'), n, p, seed >>> 0);
  }
  dropoutBackward(gy: Buf, gx: Buf, p: number, seed: number): void {
    const op = 'dropoutBackward';
    const n = this.buf(op, gy, 'gy').size;
    need(op, this.buf(op, gx, 'gx').size === n, () => 'sizes differ');
    need(op, p >= 0 && p <= 1, () => `p must be in [0, 1], got ${p}`);
    this.nat.dropout(this.r(op, gy, 'gy'), this.w(op, gx, 'gx'), n, p, seed >>> 0);
  }
  crossEntropy(logits: Buf, targets: Buf, losses: Buf, lse: Buf, N: number, V: number): void {
    const op = 'crossEntropy';
    this.dims(op, { N, V });
    this.nat.crossEntropy(this.r(op, logits, 'logits', N * V), this.r(op, targets, 'targets', N, 'i32'),
      this.w(op, losses, 'losses', N), this.w(op, lse, 'lse', N), N, V);
  }
  crossEntropyBackward(logits: Buf, targets: Buf, lse: Buf, gloss: Buf, glogits: Buf, N: number, V: number): void {
    const op = 'crossEntropyBackward';
    this.dims(op, { N, V });
    this.nat.crossEntropyBackward(this.r(op, logits, 'logits', N * V), this.r(op, targets, 'targets', N, 'i32'),
      this.r(op, lse, 'lse', N), this.r(op, gloss, 'gloss', N), this.w(op, glogits, 'glogits', N * V), N, V);
  }
  adamw(p: Buf, g: Buf, m: Buf, v: Buf, a: AdamWArgs): void {
    const op = 'adamw';
    const n = this.buf(op, p, 'p').size;
    need(op, this.buf(op, g, 'g').size === n && this.buf(op, m, 'm').size === n && this.buf(op, v, 'v').size === n,
      () => `sizes differ: p ${n}, g ${g.size}, m ${m.size}, v ${v.size}`);
    need(op, a.step >= 1, () => `step must be >= 1, got ${a.step}`);
    this.nat.adamw(this.w(op, p, 'p'), this.r(op, g, 'g'), this.w(op, m, 'm'), this.w(op, v, 'v'), n, a.lr, a.beta1, a.beta2,
      a.eps, a.weightDecay, a.step, a.gradScale);
  }

  // ------------------------------------------------------------ MoE primitives
  topk(x: Buf, values: Buf, indices: Buf, rows: number, cols: number, k: number): void {
    const op = 'topk';
    this.dims(op, { rows, cols, k });
    need(op, k <= cols, () => `k ${k} > cols ${cols}`);
    this.nat.topk(this.r(op, x, 'x', rows * cols), this.w(op, values, 'values', rows * k),
      this.w(op, indices, 'indices', rows * k, 'i32'), rows, cols, k);
  }
  gatherRows(x: Buf, idx: Buf, out: Buf, m: number, n: number, d: number): void {
    const op = 'gatherRows';
    this.dims(op, { m, n, d });
    this.nat.gatherRows(this.r(op, x, 'x', n * d), this.r(op, idx, 'idx', m, 'i32'), this.w(op, out, 'out', m * d), m, n, d, op);
  }
  scatterAddRows(src: Buf, idx: Buf, out: Buf, m: number, n: number, d: number): void {
    const op = 'scatterAddRows';
    this.dims(op, { m, n, d });
    this.nat.scatterAddRows(this.r(op, src, 'src', m * d), this.r(op, idx, 'idx', m, 'i32'), this.w(op, out, 'out', n * d),
      m, n, d, op);
  }
  rowDot(a: Buf, b: Buf, out: Buf, rows: number, cols: number): void {
    const op = 'rowDot';
    this.dims(op, { rows, cols });
    this.nat.rowDot(this.r(op, a, 'a', rows * cols), this.r(op, b, 'b', rows * cols), this.w(op, out, 'out', rows), rows, cols);
  }
}

/** Why the cuda backend cannot run here, or null when a device is present (does not throw). */
export function cudaUnavailableReason(): string | null {
  let nat: CudaAddon;
  try {
    nat = loadCudaAddon();
  } catch (e) {
    return (e as Error).message;
  }
  const p = nat.probe();
  return p.count > 0 ? null : `backend 'cuda': no usable CUDA device (${p.error}); use --backend cpu`;
}

/**
 * Creates the cuda backend. Throws a clear error when the addon is not built, no device is present,
 * or cuBLAS cannot be loaded.
 */
export function createCudaBackend(opts: CudaBackendOptions = {}): CudaBackend {
  const why = cudaUnavailableReason();
  if (why) throw new Error(why);
  return new CudaBackend(loadCudaAddon(), opts);
}
