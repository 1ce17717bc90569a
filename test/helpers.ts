/** Test helpers: a seeded PRNG, random data, buffer upload and norm-wise relative error. */
import type { Backend, Buf, DType } from '../src/backend/contract.js';
import { seededUniform } from '../src/infer/sample.js';

/** A seeded PRNG returning uniforms in [0, 1) (mulberry32, as used for sampling). */
export const rng = seededUniform;

/** n normal samples (Box–Muller) scaled by `scale`. */
export function randn(r: () => number, n: number, scale = 1): Float64Array {
  const a = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(r(), 1e-12), v = r();
    a[i] = scale * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  return a;
}

/** n integers uniform in [lo, hi). */
export function ints(r: () => number, n: number, lo: number, hi: number): Int32Array {
  return Int32Array.from({ length: n }, () => lo + Math.floor(r() * (hi - lo)));
}

/** A new buffer on `b` holding `data`. */
export function put(b: Backend, data: ArrayLike<number>, dtype: DType = 'f32'): Buf {
  const buf = b.alloc(dtype, data.length);
  b.upload(buf, data);
  return buf;
}

/** ‖got − want‖₂ / max(‖want‖₂, 1e-30); 0 when both are empty. NaN anywhere gives Infinity. */
export function relErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  if (got.length !== want.length) return Infinity;
  let d = 0, w = 0;
  for (let i = 0; i < got.length; i++) {
    const a = got[i]!, b = want[i]!;
    if (Number.isNaN(a) || Number.isNaN(b)) return Infinity;
    d += (a - b) ** 2;
    w += b * b;
  }
  if (d === 0) return 0;
  return Math.sqrt(d) / Math.max(Math.sqrt(w), 1e-30);
}
