import { EOT_TEXT, type ByteTokenizerSpec, type Tokenizer } from './types.js';

const decoder = new TextDecoder('utf-8');

/** Byte-level tokenizer: the UTF-8 bytes of the text are the ids (0..255); eot = 256; vocab 257. */
export class ByteTokenizer implements Tokenizer {
  readonly kind = 'byte' as const;
  readonly vocabSize = 257;
  readonly eotId = 256;

  /** Returns the UTF-8 bytes of `text` as ids (length = UTF-8 byte length). */
  encode(text: string): number[] {
    return Array.from(Buffer.from(text, 'utf8'));
  }

  /** Decodes ids (bytes; 256 = "<|endoftext|>"); throws RangeError on ids outside 0..256. */
  decode(ids: ArrayLike<number>): string {
    let out = '';
    let buf: number[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (id === 256) {
        out += decoder.decode(Uint8Array.from(buf)) + EOT_TEXT;
        buf = [];
      } else if (Number.isInteger(id) && id >= 0 && id < 256) {
        buf.push(id);
      } else {
        throw new RangeError(`byte tokenizer: token id ${id} is outside the vocabulary (0..256)`);
      }
    }
    return out + decoder.decode(Uint8Array.from(buf));
  }

  /** `{ kind: 'byte', version: 1 }`. */
  toJSON(): ByteTokenizerSpec {
    return { kind: 'byte', version: 1 };
  }
}
