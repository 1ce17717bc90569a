/**
 * Tokenizer factory and identity: `tokenizerFromJSON`, `sameTokenizer`, `tokenizerFingerprint`.
 */
import { createHash } from 'node:crypto';
import { BpeTokenizer } from './bpe.js';
import { ByteTokenizer } from './byte.js';
import { Gpt2Tokenizer } from './gpt2.js';
import type { Tokenizer, TokenizerSpec } from './types.js';

export * from './types.js';
export { ByteTokenizer } from './byte.js';
export { Gpt2Tokenizer } from './gpt2.js';
export { BpeTokenizer, trainBpe, learnMerges, GPT2_PATTERN, MAX_BPE_VOCAB } from './bpe.js';
export type { BpeTrainOptions, TrainDoc } from './bpe.js';

/**
 * Recreates a tokenizer from its plain-JSON spec (as produced by `toJSON()`).
 * @throws Error naming the problem if the spec is not an object, has an unknown kind/version,
 *   or is malformed (e.g. a BPE merge list referencing undefined ids)
 */
export function tokenizerFromJSON(spec: unknown): Tokenizer {
  if (spec === null || typeof spec !== 'object') throw new Error(`tokenizer spec must be an object (got ${typeof spec})`);
  const s = spec as Partial<TokenizerSpec>;
  if (s.version !== 1) throw new Error(`unsupported tokenizer spec version ${String(s.version)} (expected 1)`);
  switch (s.kind) {
    case 'byte':
      return new ByteTokenizer();
    case 'gpt2':
      if ((s as { encoding?: string }).encoding !== 'gpt2') throw new Error(`gpt2 tokenizer spec: unknown encoding ${String((s as { encoding?: string }).encoding)}`);
      return new Gpt2Tokenizer();
    case 'bpe':
      if (typeof (s as { pattern?: unknown }).pattern !== 'string') throw new Error('bpe tokenizer spec: missing "pattern"');
      return new BpeTokenizer(s as TokenizerSpec & { kind: 'bpe' });
    default:
      throw new Error(`unknown tokenizer kind ${JSON.stringify(s.kind)} (expected 'byte', 'gpt2' or 'bpe')`);
  }
}

/** Canonical JSON (object keys sorted) so that deep-equal specs give identical strings. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return '[' + v.map(canonical).join(',') + ']';
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return '{' + Object.keys(o).sort().filter((k) => o[k] !== undefined).map((k) => JSON.stringify(k) + ':' + canonical(o[k])).join(',') + '}';
  }
  return JSON.stringify(v);
}

/**
 * A short stable identity string for a tokenizer or spec: `<kind>-<sha256 of canonical spec, 16 hex>`.
 * Equal iff the specs are deep-equal (up to hash collisions).
 */
export function tokenizerFingerprint(t: Tokenizer | TokenizerSpec): string {
  const spec = 'toJSON' in t ? t.toJSON() : t;
  const h = createHash('sha256').update(canonical(spec)).digest('hex').slice(0, 16);
  return `${spec.kind}-${h}`;
}

/** True iff the two tokenizers (or specs) have deep-equal specs. */
export function sameTokenizer(a: Tokenizer | TokenizerSpec, b: Tokenizer | TokenizerSpec): boolean {
  const sa = 'toJSON' in a ? a.toJSON() : a;
  const sb = 'toJSON' in b ? b.toJSON() : b;
  return canonical(sa) === canonical(sb);
}
