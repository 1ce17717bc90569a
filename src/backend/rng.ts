/**
 * Counter-based random numbers shared by every backend (dropout masks must agree bit for bit).
 * Mixer: "lowbias32" (Chris Wellons, hash-prospector), applied twice with the seed folded in.
 * C++ twin: native/cpu/rng.h.
 */

function lowbias32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/** 32-bit hash of (seed, counter); both taken modulo 2^32. */
export function hash32(seed: number, i: number): number {
  const x = (Math.imul(i >>> 0, 0x9e3779b1) ^ (seed >>> 0)) >>> 0;
  return lowbias32((lowbias32(x) + (seed >>> 0)) >>> 0);
}

/** Uniform in [0, 1) with 24 random bits: (hash32(seed, i) >>> 8) / 2^24. */
export function uniform(seed: number, i: number): number {
  return (hash32(seed, i) >>> 8) / 16777216;
}
