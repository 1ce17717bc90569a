import { Tiktoken } from 'js-tiktoken/lite';
import gpt2Ranks from 'js-tiktoken/ranks/gpt2';
import type { Gpt2TokenizerSpec, Tokenizer } from './types.js';

let shared: Tiktoken | undefined;

/** GPT-2 BPE (js-tiktoken `gpt2` encoding): vocab 50257, eot 50256. The rank table loads lazily once. */
export class Gpt2Tokenizer implements Tokenizer {
  readonly kind = 'gpt2' as const;
  readonly vocabSize = 50257;
  readonly eotId = 50256;
  private readonly enc: Tiktoken;

  constructor() {
    shared ??= new Tiktoken(gpt2Ranks);
    this.enc = shared;
  }

  /** GPT-2 ids of `text`; "<|endoftext|>" in the text is encoded as ordinary text, never as eot. */
  encode(text: string): number[] {
    return this.enc.encode(text, [], []);
  }

  /** Decodes GPT-2 ids (50256 → "<|endoftext|>"); throws RangeError on ids outside 0..50256. */
  decode(ids: ArrayLike<number>): string {
    const arr = Array.from(ids);
    for (const id of arr) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new RangeError(`gpt2 tokenizer: token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
      }
    }
    return this.enc.decode(arr);
  }

  /** `{ kind: 'gpt2', version: 1, encoding: 'gpt2' }`. */
  toJSON(): Gpt2TokenizerSpec {
    return { kind: 'gpt2', version: 1, encoding: 'gpt2' };
  }
}
