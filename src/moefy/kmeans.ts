/**
 * Balanced k-means of FFN neurons (MoEfication, Zhang et al. 2022 §3.1; SSD method page §4):
 * the L2-normalised rows of W_in are split into E clusters of exactly n / E neurons. E-step: balanced
 * assignment by auction on score −‖x − c‖; M-step: centroid = mean of its members. The lowest-inertia
 * assignment seen is kept. A warm start (previous partition) and a fresh random start both run and the
 * lower inertia wins.
 */
import { balancedAuction } from './auction.js';

/** Dot products X·Cᵀ: X (n, d), C (E, d) -> (n, E). Supplied by the caller (e.g. a backend GEMM). */
export type DotFn = (X: Float32Array, C: Float32Array, n: number, E: number, d: number) => Float32Array;

export interface KMeansResult {
  /** Cluster of each neuron, (n). */
  assignment: Int32Array;
  /** Σ ‖x_i − c_σ(i)‖² of the kept assignment (normalised rows). */
  inertia: number;
  /** Balanced iterations run (of the start that won). */
  iterations: number;
  start: 'warm' | 'random';
}

export interface BalancedKMeansOptions {
  nExpert: number;
  /** Balanced iterations per start (reference: 100); stops early when the assignment repeats. */
  maxIter?: number;
  seed?: number;
  /** A previous partition (cluster per neuron, in the current neuron order) for the warm start. */
  previous?: Int32Array;
  dot?: DotFn;
}

/** Plain JS X·Cᵀ (the fallback DotFn). */
export const jsDot: DotFn = (X, C, n, E, d) => {
  const out = new Float32Array(n * E);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < E; j++) {
      let s = 0;
      for (let k = 0; k < d; k++) s += X[i * d + k]! * C[j * d + k]!;
      out[i * E + j] = s;
    }
  }
  return out;
};

/** Rows of W (n, d) scaled to unit L2 norm (zero rows stay zero). */
export function normalizeRows(W: Float32Array, n: number, d: number): Float32Array {
  const X = new Float32Array(n * d);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let k = 0; k < d; k++) s += W[i * d + k]! ** 2;
    const inv = s > 0 ? 1 / Math.sqrt(s) : 0;
    for (let k = 0; k < d; k++) X[i * d + k] = W[i * d + k]! * inv;
  }
  return X;
}

/** Cluster means: (E, d). */
export function clusterMeans(X: Float32Array, assignment: Int32Array, n: number, d: number, E: number): Float32Array {
  const C = new Float64Array(E * d), count = new Float64Array(E);
  for (let i = 0; i < n; i++) {
    const c = assignment[i]!;
    count[c]!++;
    for (let k = 0; k < d; k++) C[c * d + k]! += X[i * d + k]!;
  }
  const out = new Float32Array(E * d);
  for (let c = 0; c < E; c++) for (let k = 0; k < d; k++) out[c * d + k] = count[c]! > 0 ? C[c * d + k]! / count[c]! : 0;
  return out;
}

/** Squared distances ‖x_i − c_j‖² (n, E) from dot products, using ‖x_i‖ = 1 for non-zero rows. */
function squaredDistances(X: Float32Array, C: Float32Array, n: number, E: number, d: number, dot: DotFn): Float64Array {
  const xc = dot(X, C, n, E, d);
  const cc = new Float64Array(E);
  for (let j = 0; j < E; j++) for (let k = 0; k < d; k++) cc[j]! += C[j * d + k]! ** 2;
  const out = new Float64Array(n * E);
  for (let i = 0; i < n; i++) {
    let xx = 0;
    for (let k = 0; k < d; k++) xx += X[i * d + k]! ** 2;
    for (let j = 0; j < E; j++) out[i * E + j] = Math.max(0, xx + cc[j]! - 2 * xc[i * E + j]!);
  }
  return out;
}

function lcg(seed: number): () => number {
  let s = (seed >>> 0) || 1;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

/** Initial centroids from a few plain (unbalanced) k-means iterations from E random distinct rows. */
function plainKMeansInit(X: Float32Array, n: number, d: number, E: number, seed: number, dot: DotFn): Float32Array {
  const r = lcg(seed);
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  let C: Float32Array = new Float32Array(E * d);
  for (let c = 0; c < E; c++) C.set(X.subarray(order[c]! * d, order[c]! * d + d), c * d);
  const a = new Int32Array(n);
  for (let it = 0; it < 5; it++) {
    const D = squaredDistances(X, C, n, E, d, dot);
    for (let i = 0; i < n; i++) {
      let best = 0;
      for (let j = 1; j < E; j++) if (D[i * E + j]! < D[i * E + best]!) best = j;
      a[i] = best;
    }
    const M = clusterMeans(X, a, n, d, E);
    // Keep empty clusters at their previous centroid.
    const count = new Int32Array(E);
    for (let i = 0; i < n; i++) count[a[i]!]!++;
    for (let c = 0; c < E; c++) if (count[c] === 0) M.set(C.subarray(c * d, c * d + d), c * d);
    C = M;
  }
  return C;
}

/** Balanced iterations from initial centroids; returns the lowest-inertia assignment seen. */
function balancedIterations(X: Float32Array, n: number, d: number, E: number, C0: Float32Array, maxIter: number,
  dot: DotFn): { assignment: Int32Array; inertia: number; iterations: number } {
  let C = C0, prev: Int32Array | null = null;
  let best: { assignment: Int32Array; inertia: number; iterations: number } = { assignment: new Int32Array(n), inertia: Infinity, iterations: 0 };
  let prices: Float64Array | undefined;
  for (let it = 1; it <= maxIter; it++) {
    const D2 = squaredDistances(X, C, n, E, d, dot);
    const score = D2.map((v) => -Math.sqrt(v));
    const r = balancedAuction(score, n, E, prices ? { prices, epsilonStart: 1e-3 } : {});
    prices = r.prices;
    let inertia = 0;
    for (let i = 0; i < n; i++) inertia += D2[i * E + r.assignment[i]!]!;
    if (inertia < best.inertia) best = { assignment: r.assignment, inertia, iterations: it };
    if (prev && prev.every((v, i) => v === r.assignment[i])) break;
    prev = r.assignment;
    C = clusterMeans(X, r.assignment, n, d, E);
  }
  return best;
}

/**
 * Balanced k-means of the rows of W_in (n = d_ff rows of length d = d_model) into `nExpert` clusters
 * of n / nExpert. Throws if d_ff is not divisible by nExpert.
 */
export function balancedKMeans(W_in: Float32Array, n: number, d: number, opts: BalancedKMeansOptions): KMeansResult {
  const E = opts.nExpert;
  if (!Number.isInteger(E) || E < 1 || n % E !== 0) {
    throw new Error(`MoEfication: d_ff = ${n} is not divisible by n_expert = ${E}`);
  }
  const dot = opts.dot ?? jsDot;
  const maxIter = opts.maxIter ?? 100;
  const X = normalizeRows(W_in, n, d);
  const fresh = balancedIterations(X, n, d, E, plainKMeansInit(X, n, d, E, opts.seed ?? 0, dot), maxIter, dot);
  let result: KMeansResult = { ...fresh, start: 'random' };
  if (opts.previous) {
    if (opts.previous.length !== n) throw new Error(`MoEfication: previous partition has ${opts.previous.length} entries, d_ff is ${n}`);
    const warm = balancedIterations(X, n, d, E, clusterMeans(X, opts.previous, n, d, E), maxIter, dot);
    if (warm.inertia <= fresh.inertia) result = { ...warm, start: 'warm' };
  }
  return result;
}

/** Random balanced split (the ablation baseline): a seeded shuffle cut into equal clusters. */
export function randomBalancedSplit(n: number, nExpert: number, seed = 0): Int32Array {
  if (n % nExpert !== 0) throw new Error(`MoEfication: d_ff = ${n} is not divisible by n_expert = ${nExpert}`);
  const r = lcg(seed);
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const a = new Int32Array(n);
  const s = n / nExpert;
  order.forEach((neuron, k) => (a[neuron] = Math.floor(k / s)));
  return a;
}
