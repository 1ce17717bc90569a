/** Test helpers: a seeded PRNG and norm-wise relative error. */

/** mulberry32: a small seeded PRNG returning uniforms in [0, 1). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
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
