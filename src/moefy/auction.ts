/**
 * Balanced assignment by the auction algorithm (Bertsekas 1988; "auction for transportation problems"
 * with similar objects, Bertsekas & Castañon 1989), with ε-scaling.
 *
 * Problem: n items (neurons) and E clusters of capacity s = n / E; maximise Σ_i score[i, σ(i)] subject
 * to every cluster receiving exactly s items. Each cluster is s identical "slots" with their own
 * prices; an unassigned item bids for its best cluster (value = score − cheapest slot price), raising
 * that slot's price by the gap to its second-best value plus ε, and evicting the slot's previous holder.
 * At termination the assignment is within n·ε of the optimum (ε-complementary slackness).
 */

import { loadAddon, type NativeAddon } from '../backend/cpu/addon.js';

export interface AuctionResult {
  /** cluster of each item, (n) */
  assignment: Int32Array;
  /** Σ score[i, assignment[i]] */
  score: number;
  /** Slot prices per cluster (E · s), reusable as a warm start. */
  prices: Float64Array;
  /** Bids made over all ε phases. */
  bids: number;
  /** The final ε (the result is within n·ε of optimal). */
  epsilon: number;
}

export interface AuctionOptions {
  /**
   * Final ε as a fraction of the score range (default 1e-4). 1e-3 halves a warm re-MoEfication of the
   * trained `mini` model's 6 layers (1.40 → 0.70 s, k-means inertia within 0.04%) but moved the final
   * loss of the `mini` SSD comparison from −0.99% to +1.51% vs dense (BENCHMARKS.md, issue 5): not the
   * default until more seeds show which is typical.
   */
  epsilonFinal?: number;
  /** ε is divided by this factor between phases (default 8). */
  scaling?: number;
  /** Slot prices from an earlier call with the same n and E (warm start). */
  prices?: Float64Array;
  /** Initial ε as a fraction of the score range (default 1/4; smaller suits warm-started prices). */
  epsilonStart?: number;
  /** false: bid in TypeScript even where the native cpu addon is built (default true). */
  native?: boolean;
}

/**
 * Solves the balanced assignment for `score` (n × E, row-major). Throws if n is not a positive
 * multiple of E, if a score or a warm price is not finite, or on ε options out of range. The bidding
 * runs in the native cpu addon when it is built (the same operations, so the same result to the bit,
 * ≈ 3× faster), else in `biddingPhases` below.
 */
export function balancedAuction(score: Float64Array | Float32Array, n: number, E: number, opts: AuctionOptions = {}): AuctionResult {
  if (!(Number.isInteger(n) && Number.isInteger(E) && n > 0 && E > 0 && n % E === 0)) {
    throw new Error(`balancedAuction: ${n} items cannot be split into ${E} equal clusters`);
  }
  if (score.length !== n * E) throw new Error(`balancedAuction: score has ${score.length} entries, expected ${n} × ${E}`);
  const s = n / E;
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < score.length; i++) {
    if (!Number.isFinite(score[i]!)) throw new Error(`balancedAuction: score ${i} is ${score[i]} (scores must be finite)`);
    lo = Math.min(lo, score[i]!);
    hi = Math.max(hi, score[i]!);
  }
  const range = Math.max(hi - lo, 1e-12);
  const epsFinal = (opts.epsilonFinal ?? 1e-4) * range;
  const factor = opts.scaling ?? 8;
  const eps = Math.max((opts.epsilonStart ?? 0.25) * range, epsFinal);
  if (!(epsFinal > 0 && Number.isFinite(eps) && factor > 1 && Number.isFinite(factor))) {
    throw new Error('balancedAuction: needs epsilonFinal > 0, a finite epsilonStart and scaling > 1');
  }
  if (opts.prices && (opts.prices.length !== n || !opts.prices.every(Number.isFinite))) {
    throw new Error(`balancedAuction: warm prices must be ${n} finite numbers (from a call with the same n and E)`);
  }
  // Per cluster a binary min-heap over its s slots: (price, holder), holder −1 = free.
  const price = opts.prices ? Float64Array.from(opts.prices) : new Float64Array(n);
  const holder = new Int32Array(n);
  const addon = (opts.native ?? true) ? nativeAddon() : null;
  const bids = addon
    ? addon.balancedAuction(score instanceof Float64Array ? score : Float64Array.from(score), n, E, price, holder, eps, epsFinal, factor)
    : biddingPhases(score, n, E, price, holder, eps, epsFinal, factor);
  const assignment = new Int32Array(n);
  let total = 0;
  for (let slot = 0; slot < n; slot++) assignment[holder[slot]!] = Math.floor(slot / s);
  for (let i = 0; i < n; i++) total += score[i * E + assignment[i]!]!;
  return { assignment, score: total, prices: price, bids, epsilon: epsFinal };
}

let native: NativeAddon | null | undefined;

/** The native addon when it is built and loads (the reference below serves otherwise); looked up once. */
function nativeAddon(): NativeAddon | null {
  if (native === undefined) {
    try {
      native = loadAddon();
    } catch {
      native = null;
    }
  }
  return native;
}

/**
 * The bidding phases (the reference implementation): ε from `eps`, divided by `factor` (not below
 * `epsFinal`) after each phase, until a phase at `epsFinal`. Each phase starts with every slot free and
 * ends with every item holding one. Writes `price` and `holder` (n); returns the number of bids.
 */
function biddingPhases(score: Float64Array | Float32Array, n: number, E: number, price: Float64Array, holder: Int32Array,
  eps: number, epsFinal: number, factor: number): number {
  const s = n / E;
  let bids = 0;
  const cheapest = new Float64Array(E); // each cluster's heap root (its cheapest slot), read by every bid
  for (;;) {
    holder.fill(-1);
    for (let j = 0; j < E; j++) {
      heapify(price, holder, j * s, s);
      cheapest[j] = price[j * s]!;
    }
    const queue: number[] = [];
    for (let i = n - 1; i >= 0; i--) queue.push(i);
    while (queue.length) {
      const i = queue.pop()!;
      const row = i * E;
      let best = -1, v1 = -Infinity, v2 = -Infinity;
      for (let j = 0; j < E; j++) {
        const v = score[row + j]! - cheapest[j]!;
        if (v > v1) { v2 = v1; v1 = v; best = j; }
        else if (v > v2) v2 = v;
      }
      const root = best * s;
      const gap = Number.isFinite(v2) ? v1 - v2 : 0;
      const evicted = holder[root]!;
      price[root] = price[root]! + gap + eps;
      holder[root] = i;
      bids++;
      if (evicted >= 0) queue.push(evicted);
      siftDown(price, holder, best * s, s, 0);
      cheapest[best] = price[root]!;
    }
    if (eps <= epsFinal) return bids;
    eps = Math.max(eps / factor, epsFinal);
  }
}

function heapify(price: Float64Array, holder: Int32Array, base: number, s: number): void {
  for (let k = (s >> 1) - 1; k >= 0; k--) siftDown(price, holder, base, s, k);
}

/** Moves the entry at heap position k down to its place (the entry is held aside, not swapped per level). */
function siftDown(price: Float64Array, holder: Int32Array, base: number, s: number, k: number): void {
  const p = price[base + k]!, h = holder[base + k]!;
  for (;;) {
    const l = 2 * k + 1;
    if (l >= s) break;
    const c = l + 1 < s && price[base + l + 1]! < price[base + l]! ? l + 1 : l;
    if (!(price[base + c]! < p)) break;
    price[base + k] = price[base + c]!;
    holder[base + k] = holder[base + c]!;
    k = c;
  }
  price[base + k] = p;
  holder[base + k] = h;
}
