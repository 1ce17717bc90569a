/**
 * The common tokenizer interface and its plain-JSON specification.
 *
 * A tokenizer is fully described by its {@link TokenizerSpec}: the spec is saved next to prepared
 * data (`tokenizer.json`) and inside checkpoints, and two tokenizers are the same iff their specs
 * are deep-equal (see `sameTokenizer` / `tokenizerFingerprint` in `./index.ts`).
 */

/** Spec of the byte-level tokenizer: ids 0..255 are bytes, 256 is end-of-text (vocab 257). */
export interface ByteTokenizerSpec {
  kind: 'byte';
  version: 1;
}

/** Spec of the GPT-2 tokenizer (js-tiktoken `gpt2` encoding, vocab 50257, eot 50256). */
export interface Gpt2TokenizerSpec {
  kind: 'gpt2';
  version: 1;
  encoding: 'gpt2';
}

/**
 * Spec of a trained byte-level BPE tokenizer.
 * Ids 0..255 are bytes; merge number r (0-based) creates id 256 + r from the pair
 * (merges[2r], merges[2r+1]); the end-of-text id is 256 + merges.length / 2 = vocabSize - 1.
 */
export interface BpeTokenizerSpec {
  kind: 'bpe';
  version: 1;
  /** Pre-tokenisation regex source (used with the `gu` flags). */
  pattern: string;
  /** Flat list of merged pairs: [left0, right0, left1, right1, ...]. */
  merges: number[];
}

/** Plain-JSON description of any tokenizer (discriminated by `kind`). */
export type TokenizerSpec = ByteTokenizerSpec | Gpt2TokenizerSpec | BpeTokenizerSpec;

/** A text <-> token-id codec. */
export interface Tokenizer {
  readonly kind: 'byte' | 'gpt2' | 'bpe';
  /** Number of distinct ids (ids are 0 .. vocabSize-1), including the end-of-text id. */
  readonly vocabSize: number;
  /** The end-of-text id (separates documents; never produced by `encode`). */
  readonly eotId: number;
  /** Encodes text (UTF-8) into ids. Never emits `eotId`; the literal "<|endoftext|>" is plain text. */
  encode(text: string): number[];
  /**
   * Decodes ids back to text. Invalid UTF-8 byte sequences (e.g. a cut multi-byte character)
   * become U+FFFD; `eotId` decodes to "<|endoftext|>". Throws RangeError on an id outside the vocab.
   */
  decode(ids: ArrayLike<number>): string;
  /** The plain-JSON spec that recreates this tokenizer via `tokenizerFromJSON`. */
  toJSON(): TokenizerSpec;
}

/** Text that the end-of-text id decodes to. */
export const EOT_TEXT = '<|endoftext|>';
