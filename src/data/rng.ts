/**
 * Seeded PRNG with a fully serialisable state: xoshiro128** (32-bit words), seeded by SplitMix32.
 */

/** Serialised generator state: four unsigned 32-bit words. */
export type RngState = [number, number, number, number];

function splitmix32(x: number): [number, number] {
  x = (x + 0x9e3779b9) >>> 0;
  let z = x;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return [x, (z ^ (z >>> 16)) >>> 0];
}

/** xoshiro128** generator. */
export class Rng {
  private s: Uint32Array;

  /** Seeds from any integer (the low 32 bits and the bits above are both mixed in). */
  constructor(seed: number | RngState = 0) {
    this.s = new Uint32Array(4);
    if (Array.isArray(seed)) {
      if (seed.length !== 4 || seed.some((v) => !Number.isInteger(v) || v < 0 || v > 0xffffffff)) throw new Error('bad RNG state');
      this.s.set(seed);
      if (this.s.every((v) => v === 0)) throw new Error('bad RNG state (all zero)');
      return;
    }
    if (!Number.isInteger(seed)) throw new RangeError(`seed must be an integer (got ${seed})`);
    let x = (seed >>> 0) ^ Math.imul(Math.floor(seed / 4294967296) >>> 0, 0x27d4eb2d);
    for (let i = 0; i < 4; i++) {
      const [nx, v] = splitmix32(x);
      x = nx;
      this.s[i] = v;
    }
    if (this.s.every((v) => v === 0)) this.s[0] = 1;
  }

  /** Next uniform unsigned 32-bit integer. */
  nextU32(): number {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1]!, 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1]! << 9) >>> 0;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = rotl(s[3]!, 11);
    return r;
  }

  /** Uniform float in [0, 1) with 53 random bits. */
  nextFloat(): number {
    const hi = this.nextU32() >>> 5, lo = this.nextU32() >>> 6;
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** Uniform integer in [0, n) for 1 ≤ n ≤ 2^53. */
  nextInt(n: number): number {
    return Math.floor(this.nextFloat() * n);
  }

  /** The state, to restore with `new Rng(state)`. */
  state(): RngState {
    return [this.s[0]!, this.s[1]!, this.s[2]!, this.s[3]!];
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** Deterministic uniform [0, 1) hash of (index, seed) — used for the per-document val split. */
export function hashUniform(index: number, seed: number): number {
  const r = new Rng(seed);
  // mix the index into the seeded state without stepping a shared generator
  let h = (r.nextU32() ^ Math.imul(index >>> 0, 0x9e3779b1) ^ Math.imul(Math.floor(index / 4294967296) >>> 0, 0x85ebca6b)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d) >>> 0;
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b) >>> 0;
  h = (h ^ (h >>> 16)) >>> 0;
  return h / 4294967296;
}
