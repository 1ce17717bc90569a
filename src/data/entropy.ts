import { TokenSequence, type TokenInput } from './tokens.js';

/**
 * Entropy (in nats) of the unigram distribution of a token sequence:
 * H = -Σ p(t) ln p(t), p(t) = count(t) / N. A model's val loss should end well below this.
 * @param tokens token ids (non-negative integers)
 * @throws Error if the sequence is empty
 */
export function unigramEntropy(tokens: TokenInput): number {
  const seq = TokenSequence.from(tokens);
  if (seq.length === 0) throw new Error('unigram entropy of an empty token sequence is undefined');
  let max = 0, dense = true;
  for (const part of seq.parts) {
    for (let i = 0; i < part.length; i++) {
      const t = part[i]!;
      if (t > max) max = t;
      if (!(t >= 0) || !Number.isInteger(t)) dense = false;
    }
  }
  if (dense && max < 1 << 24) {
    const c = new Float64Array(max + 1);
    for (const part of seq.parts) for (let i = 0; i < part.length; i++) c[part[i]!]!++;
    return entropyOfCounts(c, seq.length);
  }
  const counts = new Map<number, number>();
  for (const part of seq.parts) {
    for (let i = 0; i < part.length; i++) {
      const t = part[i]!;
      counts.set(t, (counts.get(t) ?? 0) + 1);
    }
  }
  return entropyOfCounts(counts.values(), seq.length);
}

/**
 * Entropy in nats of a distribution given by counts.
 * @param counts non-negative counts (zeros ignored)
 * @param total their sum (computed if omitted)
 */
export function entropyOfCounts(counts: Iterable<number>, total?: number): number {
  const arr = Array.from(counts);
  const n = total ?? arr.reduce((a, b) => a + b, 0);
  if (!(n > 0)) throw new Error('entropy of an empty distribution is undefined');
  let h = 0;
  for (const c of arr) if (c > 0) h -= (c / n) * Math.log(c / n);
  return h;
}
