/** Row-indexed grouped-product cases shared by the backend tests (test/cpu.native.test.ts, test/cuda.native.test.ts). */
import type { Backend, Buf } from '../src/backend/contract.js';
import { ints, put, randn, rng } from './helpers.js';

/**
 * Indexed grouped products at sizes that cross the own kernel's MC block (336 rows): the MoE forward (gather
 * A, scatter C with repeated rows onto a non-zero C), both weight-gradient shapes (K-gathered A with
 * transA, K-gathered B), an N-gathered B (transB), decode-sized groups (m <= 8) gathered and scattered,
 * groups scattering into different columns of the same rows, and a k = 0 group with lda 0. Inner sizes
 * k (>= n + 50) and n (>= 40) are parameters; returns the six outputs. Shared by the cpu and cuda tests.
 */
export function groupedRowsRun(b: Backend, k = 300, n = 40): ArrayLike<number>[] {
  const r = rng(31), T = 500, R = 900, E = 3, offsets = [0, 400, 400, 900];
  const idx = put(b, ints(r, R, 0, T), 'i32');
  const x = put(b, randn(r, T * k)), h = put(b, randn(r, R * n)), wIn = put(b, randn(r, E * n * k));
  const c1 = b.alloc('f32', R * n), c2 = put(b, randn(r, T * k)), c3 = b.alloc('f32', E * k * n), c4 = b.alloc('f32', E * n * k);
  const c5 = b.alloc('f32', 2 * 7 * 400), idx5 = put(b, ints(r, 800, 0, T), 'i32');
  const c6 = put(b, randn(r, T * k)), idx6 = put(b, ints(r, 11, 0, T), 'i32');
  const groups = (f: (e: number, m: number, o: number) => number[]) =>
    Int32Array.from(Array.from({ length: E }, (_, e) => f(e, offsets[e + 1]! - offsets[e]!, offsets[e]!)).flat());
  const args = (problems: Int32Array, transA: boolean, transB: boolean, beta: number, rows: { a?: Buf; b?: Buf; c?: Buf }) =>
    ({ problems, transA, transB, alpha: 1, beta, rows });
  try {
    // c1 (R, n) = x[idx] · wIn_eᵀ
    b.groupedMatmul(x, wIn, c1, args(groups((e, m, o) => [m, n, k, o * k, k, e * n * k, k, o * n, n]), false, true, 0, { a: idx }));
    // c2[idx] += h · wIn_e (scatter-add; idx repeats rows)
    b.groupedMatmul(h, wIn, c2, args(groups((e, m, o) => [m, k, n, o * n, n, e * n * k, k, o * k, k]), false, false, 1, { c: idx }));
    // c3_e (k, n) = x[idx_e]ᵀ · h_e (K-gathered A, transA)
    b.groupedMatmul(x, h, c3, args(groups((e, m, o) => [k, n, m, o * k, k, o * n, n, e * k * n, n]), true, false, 0, { a: idx }));
    // c4_e (n, k) = h_eᵀ · x[idx_e] (K-gathered B)
    b.groupedMatmul(h, x, c4, args(groups((e, m, o) => [n, k, m, o * n, n, o * k, k, e * n * k, k]), true, false, 0, { b: idx }));
    // c5 (7, 400) per group = h[0:7, 0:40] · x[idx5[g·400 ..]][:, 10:50]ᵀ (N-gathered B with transB, column offset 10)
    const p5 = Int32Array.from([7, 400, 40, 0, n, 10, k, 0, 400, 7, 400, 40, 7 * n, n, 400 * k + 10, k, 2800, 400]);
    b.groupedMatmul(h, x, c5, args(p5, false, true, 0, { b: idx5 }));
    // decode-sized groups: c6[idx6] += x[idx6] · wIn_eᵀ-shaped products with m = 1, 8, 2
    const p6 = Int32Array.from([1, n, k, 0, k, 0, k, 0, k, 8, n, k, 1 * k, k, n * k, k, 1 * k, k, 2, n, k, 9 * k, k, 2 * n * k, k, 9 * k, k]);
    b.groupedMatmul(x, wIn, c6, args(p6, false, true, 1, { a: idx6, c: idx6 }));
    // c2[idx] += products of two groups into columns [0, 40) and [20, 60) of the same rows (threads own
    // C's columns, not each group's), plus a k = 0 group whose unused A and B have ld 0
    const p7 = Int32Array.from([400, n, n, 0, n, 0, n, 0, k, 491, n, n, 400 * n, n, n * n, n, 400 * k + 20, k, 9, n, 0, 0, 0, 0, 0, 891 * k, k]);
    b.groupedMatmul(h, wIn, c2, args(p7, false, false, 1, { c: idx }));
    return [c1, c2, c3, c4, c5, c6].map((c) => b.download(c));
  } finally {
    for (const buf of [idx, x, h, wIn, c1, c2, c3, c4, c5, idx5, c6, idx6]) b.free(buf);
  }
}

