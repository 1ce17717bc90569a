/**
 * Sampling from a next-token distribution (temperature, top-k, top-p) with a seeded generator. The
 * generation loop (KV cache, batched prompts, stop strings) is in `generate.ts`.
 */

export interface SampleOptions {
  /** Softmax temperature; 0 means greedy (argmax). */
  temperature: number;
  /** Keep only the k most likely tokens (0: all). */
  topK: number;
  /** Keep the smallest set of tokens whose probability reaches p (1: all). */
  topP: number;
}

/** A seeded uniform generator (mulberry32). */
export function seededUniform(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Picks a token id from `logits` (length V). Deterministic for a given generator state. Tokens rank by
 * logit, descending, ties to the lower id, NaN as −∞: the order of `topk` on every backend, so sampling
 * from a row's device top-k (decode-step.ts) picks the same token.
 */
export function sampleToken(logits: ArrayLike<number>, o: SampleOptions, uniform: () => number): number {
  const V = logits.length;
  const key = (i: number) => (Number.isNaN(logits[i]!) ? -Infinity : logits[i]!);
  let best = 0;
  for (let i = 1; i < V; i++) if (key(i) > key(best)) best = i;
  if (o.temperature <= 0) return best;
  const ids = Array.from({ length: V }, (_, i) => i).sort((a, b) => (key(b) > key(a) ? 1 : key(b) < key(a) ? -1 : a - b));
  const keep = o.topK > 0 ? Math.min(o.topK, V) : V;
  const probs: number[] = [];
  let total = 0;
  for (let j = 0; j < keep; j++) {
    const p = Math.exp((key(ids[j]!) - key(best)) / o.temperature);
    probs.push(p);
    total += p;
  }
  let n = keep;
  if (o.topP < 1) {
    let acc = 0;
    for (let j = 0; j < keep; j++) {
      acc += probs[j]! / total;
      if (acc >= o.topP) { n = j + 1; break; }
    }
    total = probs.slice(0, n).reduce((a, b) => a + b, 0);
  }
  let u = uniform() * total;
  for (let j = 0; j < n; j++) {
    u -= probs[j]!;
    if (u <= 0) return ids[j]!;
  }
  return ids[n - 1]!;
}
