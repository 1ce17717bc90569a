/**
 * `groupedMatmul` with row-indexed operands (`GroupedMatmulArgs.rows`) composed from plain kernels:
 * each indexed input is gathered into a full copy (`gatherRows`), the plain grouped product runs on the
 * copies, and a scattered output is computed into a zeroed copy and added back (`scatterAddRows`, rows
 * ascending). It defines the semantics for the `ref` backend and serves backends without a fused kernel;
 * `cpu` fuses the gather and scatter into the product (native/cpu/gemm_grouped.cc).
 */
import type { Backend, Buf, GroupedMatmulArgs } from './contract.js';
import { addOutBias } from './segments.js';

/**
 * The leading dimension shared by the groups that use one operand (entry `at` of each 9-int problem;
 * a group uses C when m, n > 0, and A and B when also k > 0), or 0 when no group uses it.
 */
function sharedLd(p: Int32Array, at: number, what: string): number {
  let ld = 0;
  for (let q = 0; q < p.length; q += 9) {
    if (p[q] === 0 || p[q + 1] === 0 || (at !== 8 && p[q + 2] === 0)) continue;
    if (ld > 0 && p[q + at] !== ld) {
      throw new Error(`groupedMatmul: group ${q / 9}: indexed ${what} needs one leading dimension for all groups (${ld} and ${p[q + at]})`);
    }
    ld = p[q + at]!;
  }
  return ld;
}

/**
 * Runs `args` (which has `rows`) on `be` through gathered copies. Throws like `groupedMatmul`, and
 * when an indexed operand's groups use different leading dimensions or `rows.c` comes with beta ≠ 1.
 */
export function groupedMatmulByCopies(be: Backend, a: Buf, b: Buf, c: Buf, args: GroupedMatmulArgs): void {
  const { rows, outBias, ...plain } = args;
  const p = args.problems;
  if (rows?.c && args.beta !== 1) throw new Error(`groupedMatmul: a scattered C (rows.c) accumulates, beta must be 1 (got ${args.beta})`);
  const run = (A: Buf, B: Buf): void => {
    if (!rows?.c) { be.groupedMatmul(A, B, c, plain); return; }
    const ldc = sharedLd(p, 8, 'C');
    if (ldc === 0) { be.groupedMatmul(A, B, c, plain); return; }
    const C = be.alloc('f32', rows.c.size * ldc); // (rows.c.size, ldc), zero-filled
    try {
      be.groupedMatmul(A, B, C, { ...plain, beta: 0 });
      be.scatterAddRows(C, rows.c, c, rows.c.size, Math.floor(c.size / ldc), ldc);
    } finally {
      be.free(C);
    }
  };
  if (!rows || p.length === 0) run(a, b);
  else withGathered(be, a, b, rows, p, run);
  if (outBias) addOutBias(be, outBias, c);
}

/** Runs `run` on A and B, each gathered into a copy through its row index when it has one. */
function withGathered(be: Backend, a: Buf, b: Buf, rows: NonNullable<GroupedMatmulArgs['rows']>, p: Int32Array,
  run: (A: Buf, B: Buf) => void): void {
  const temps: Buf[] = [];
  const gathered = (x: Buf, idx: Buf | undefined, at: number, what: string): Buf => {
    const ld = idx ? sharedLd(p, at, what) : 0;
    if (!idx || ld === 0) return x;
    const copy = be.alloc('f32', idx.size * ld); // (idx.size, ld): virtual row j = x's row idx[j]
    temps.push(copy);
    be.gatherRows(x, idx, copy, idx.size, Math.floor(x.size / ld), ld);
    return copy;
  };
  try {
    run(gathered(a, rows.a, 4, 'A'), gathered(b, rows.b, 6, 'B'));
  } finally {
    for (const t of temps) be.free(t);
  }
}
