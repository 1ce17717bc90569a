/**
 * Byte-level BPE: training (incremental pair counts + pair→chunk index + lazy max-heap) and
 * encoding (merges applied by rank, cached per pre-tokenised chunk).
 *
 * Ids 0..255 are raw bytes, merge r creates id 256+r, and the end-of-text id is the last id.
 * Merges never cross pre-tokenisation chunk boundaries (GPT-2-style regex).
 */
import { EOT_TEXT, type BpeTokenizerSpec, type Tokenizer } from './types.js';

/** GPT-2's pre-tokenisation regex (contractions, letter runs, digit runs, punctuation runs, spaces). */
export const GPT2_PATTERN =
  "'(?:[sdmt]|ll|ve|re)| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/** Chunks longer than this many UTF-16 code units are cut into pieces of this size (bounds work). */
const MAX_CHUNK = 256;
/** Pair key = left * PAIR_BASE + right (exact in a double for ids < 2^20). */
const PAIR_BASE = 1 << 20;
/** Largest vocabulary the trainer accepts (ids must stay below PAIR_BASE). */
export const MAX_BPE_VOCAB = PAIR_BASE;
const ENCODE_CACHE_MAX = 200_000;

/** A document accepted by {@link trainBpe}: a string or anything with a `text` field. */
export type TrainDoc = string | { text: string };

/** Options for {@link trainBpe}. */
export interface BpeTrainOptions {
  /** Target vocabulary size including the 256 bytes and the end-of-text id (so merges = vocabSize - 257). */
  vocabSize: number;
  /** Stop reading documents after this many UTF-8 bytes of text (default: unlimited). */
  maxBytes?: number;
  /** Pre-tokenisation regex source (default {@link GPT2_PATTERN}). */
  pattern?: string;
  /** Called now and then with progress (`bytes`: training text read so far); finally with the totals. */
  onProgress?: (p: { phase: 'count' | 'merge'; bytes: number; merges: number }) => void;
}

/** Splits `text` into pre-tokenisation chunks (regex matches; over-long matches cut at MAX_CHUNK). */
function* chunksOf(re: RegExp, text: string): Generator<string> {
  re.lastIndex = 0;
  for (const m of text.matchAll(re)) {
    const s = m[0];
    if (s.length <= MAX_CHUNK) {
      yield s;
      continue;
    }
    let i = 0;
    while (i < s.length) {
      let j = Math.min(i + MAX_CHUNK, s.length);
      // do not split a surrogate pair
      if (j < s.length) {
        const c = s.charCodeAt(j - 1);
        if (c >= 0xd800 && c <= 0xdbff) j--;
      }
      yield s.slice(i, j);
      i = j;
    }
  }
}

/** Max-heap of (count, key) ordered by count desc, then key asc (deterministic tie-break). */
class PairHeap {
  private c: number[] = [];
  private k: number[] = [];
  get size(): number {
    return this.c.length;
  }
  private above(i: number, j: number): boolean {
    const ci = this.c[i]!, cj = this.c[j]!;
    return ci > cj || (ci === cj && this.k[i]! < this.k[j]!);
  }
  private swap(i: number, j: number): void {
    const tc = this.c[i]!; this.c[i] = this.c[j]!; this.c[j] = tc;
    const tk = this.k[i]!; this.k[i] = this.k[j]!; this.k[j] = tk;
  }
  push(count: number, key: number): void {
    this.c.push(count);
    this.k.push(key);
    let i = this.c.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.above(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }
  /** Removes the top; returns [count, key] or undefined when empty. */
  pop(): [number, number] | undefined {
    const n = this.c.length;
    if (n === 0) return undefined;
    const top: [number, number] = [this.c[0]!, this.k[0]!];
    const lc = this.c.pop()!, lk = this.k.pop()!;
    if (n > 1) {
      this.c[0] = lc;
      this.k[0] = lk;
      let i = 0;
      const m = n - 1;
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let b = i;
        if (l < m && this.above(l, b)) b = l;
        if (r < m && this.above(r, b)) b = r;
        if (b === i) break;
        this.swap(i, b);
        i = b;
      }
    }
    return top;
  }
}

/**
 * Learns BPE merges from chunk frequencies.
 * @param counts map from chunk (string) to its number of occurrences
 * @param numMerges number of merges wanted; fewer are learned if no adjacent pair is left
 * @returns flat merge list [l0, r0, l1, r1, ...]
 */
export function learnMerges(
  counts: Map<string, number>,
  numMerges: number,
  onProgress?: (merges: number) => void,
): number[] {
  const words: number[][] = [];
  const freq: number[] = [];
  for (const [chunk, f] of counts) {
    const bytes = Buffer.from(chunk, 'utf8');
    if (bytes.length < 2) continue; // cannot contain a pair
    words.push(Array.from(bytes));
    freq.push(f);
  }
  const pairCount = new Map<number, number>();
  const where = new Map<number, number[]>();
  for (let w = 0; w < words.length; w++) {
    const s = words[w]!, f = freq[w]!;
    for (let i = 0; i + 1 < s.length; i++) {
      const key = s[i]! * PAIR_BASE + s[i + 1]!;
      pairCount.set(key, (pairCount.get(key) ?? 0) + f);
      let lst = where.get(key);
      if (!lst) where.set(key, (lst = []));
      if (lst[lst.length - 1] !== w) lst.push(w);
    }
  }
  const heap = new PairHeap();
  for (const [key, c] of pairCount) heap.push(c, key);

  const merges: number[] = [];
  const stamp = new Int32Array(words.length).fill(-1);
  const delta = new Map<number, number>();
  for (let r = 0; r < numMerges; r++) {
    // pop the best live pair
    let best: [number, number] | undefined;
    while ((best = heap.pop())) {
      if (pairCount.get(best[1]) === best[0]) break;
    }
    if (!best) break;
    const key = best[1];
    const a = Math.floor(key / PAIR_BASE), b = key % PAIR_BASE;
    const z = 256 + r;
    merges.push(a, b);
    delta.clear();
    const lst = where.get(key) ?? [];
    where.delete(key);
    for (const w of lst) {
      if (stamp[w] === r) continue;
      stamp[w] = r;
      const s = words[w]!;
      let found = false;
      for (let i = 0; i + 1 < s.length; i++) if (s[i] === a && s[i + 1] === b) { found = true; break; }
      if (!found) continue;
      const f = freq[w]!;
      const out: number[] = [];
      for (let i = 0; i < s.length; ) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          out.push(z);
          i += 2;
        } else {
          out.push(s[i]!);
          i++;
        }
      }
      for (let i = 0; i + 1 < s.length; i++) {
        const k = s[i]! * PAIR_BASE + s[i + 1]!;
        delta.set(k, (delta.get(k) ?? 0) - f);
      }
      for (let i = 0; i + 1 < out.length; i++) {
        const l = out[i]!, rr = out[i + 1]!;
        const k = l * PAIR_BASE + rr;
        delta.set(k, (delta.get(k) ?? 0) + f);
        if (l === z || rr === z) {
          let wl = where.get(k);
          if (!wl) where.set(k, (wl = []));
          if (wl[wl.length - 1] !== w) wl.push(w);
        }
      }
      words[w] = out;
    }
    for (const [k, d] of delta) {
      if (d === 0) continue;
      const c = (pairCount.get(k) ?? 0) + d;
      if (c > 0) {
        pairCount.set(k, c);
        heap.push(c, k);
      } else {
        pairCount.delete(k);
        where.delete(k);
      }
    }
    if (onProgress && (r & 255) === 255) onProgress(r + 1);
  }
  return merges;
}

function isAsyncIterable<T>(x: unknown): x is AsyncIterable<T> {
  return x != null && typeof (x as AsyncIterable<T>)[Symbol.asyncIterator] === 'function';
}

/**
 * Trains a byte-level BPE tokenizer on documents.
 * @param docs documents (strings or `{ text }`), sync or async iterable; read once, in order
 * @param opts `vocabSize` (257 .. 2^20; includes bytes and eot), optional `maxBytes` cap on the
 *   training text (documents beyond it are not read; the crossing document is cut at a chunk boundary)
 * @returns the tokenizer; its `vocabSize` is smaller than asked only if the text ran out of pairs
 * @throws RangeError on a bad vocabSize; Error if the documents contain no text
 */
export async function trainBpe(
  docs: Iterable<TrainDoc> | AsyncIterable<TrainDoc>,
  opts: BpeTrainOptions,
): Promise<BpeTokenizer> {
  const { vocabSize } = opts;
  if (!Number.isInteger(vocabSize) || vocabSize < 257 || vocabSize > MAX_BPE_VOCAB) {
    throw new RangeError(`BPE vocab size must be an integer in 257..${MAX_BPE_VOCAB} (got ${vocabSize})`);
  }
  const pattern = opts.pattern ?? GPT2_PATTERN;
  const re = new RegExp(pattern, 'gu');
  const maxBytes = opts.maxBytes ?? Infinity;
  const counts = new Map<string, number>();
  let bytes = 0;
  let lastReport = 0;
  const take = (doc: TrainDoc): boolean => {
    const text = typeof doc === 'string' ? doc : doc.text;
    for (const c of chunksOf(re, text)) {
      const n = Buffer.byteLength(c, 'utf8');
      if (bytes + n > maxBytes) return false;
      bytes += n;
      counts.set(c, (counts.get(c) ?? 0) + 1);
    }
    if (opts.onProgress && bytes - lastReport > 1 << 20) {
      lastReport = bytes;
      opts.onProgress({ phase: 'count', bytes, merges: 0 });
    }
    return bytes < maxBytes;
  };
  if (isAsyncIterable<TrainDoc>(docs)) {
    for await (const d of docs) if (!take(d)) break;
  } else {
    for (const d of docs) if (!take(d)) break;
  }
  if (bytes === 0) throw new Error('cannot train a BPE tokenizer: the training text is empty');
  opts.onProgress?.({ phase: 'count', bytes, merges: 0 });
  const merges = learnMerges(counts, vocabSize - 257, (m) => opts.onProgress?.({ phase: 'merge', bytes, merges: m }));
  opts.onProgress?.({ phase: 'merge', bytes, merges: merges.length / 2 });
  return new BpeTokenizer({ kind: 'bpe', version: 1, pattern, merges });
}

/** A byte-level BPE tokenizer defined by its merge list (see {@link BpeTokenizerSpec}). */
export class BpeTokenizer implements Tokenizer {
  readonly kind = 'bpe' as const;
  readonly vocabSize: number;
  readonly eotId: number;
  private readonly spec: BpeTokenizerSpec;
  private readonly re: RegExp;
  private readonly rank = new Map<number, number>();
  private readonly tokenBytes: Uint8Array[] = [];
  private cache = new Map<string, number[]>();

  /**
   * @param spec a BPE spec; merges must reference only already-defined ids
   * @throws Error on a malformed spec (odd merge list, forward/out-of-range ids, bad pattern)
   */
  constructor(spec: BpeTokenizerSpec) {
    if (spec.kind !== 'bpe' || spec.version !== 1) throw new Error(`not a version-1 BPE spec: ${JSON.stringify(spec).slice(0, 80)}`);
    if (!Array.isArray(spec.merges) || spec.merges.length % 2 !== 0) throw new Error('BPE spec: merges must be a flat array of pairs');
    this.spec = { kind: 'bpe', version: 1, pattern: spec.pattern, merges: spec.merges.slice() };
    this.re = new RegExp(spec.pattern, 'gu');
    for (let i = 0; i < 256; i++) this.tokenBytes.push(Uint8Array.of(i));
    const n = spec.merges.length / 2;
    for (let r = 0; r < n; r++) {
      const a = spec.merges[2 * r]!, b = spec.merges[2 * r + 1]!;
      const z = 256 + r;
      if (!Number.isInteger(a) || !Number.isInteger(b) || a < 0 || b < 0 || a >= z || b >= z) {
        throw new Error(`BPE spec: merge ${r} (${a}, ${b}) references an id not yet defined`);
      }
      const key = a * PAIR_BASE + b;
      if (!this.rank.has(key)) this.rank.set(key, r);
      this.tokenBytes.push(Buffer.concat([this.tokenBytes[a]!, this.tokenBytes[b]!]));
    }
    this.eotId = 256 + n;
    this.vocabSize = this.eotId + 1;
  }

  /** Byte sequences of id `id` (the eot id has none: empty array). */
  bytesOf(id: number): Uint8Array {
    return this.tokenBytes[id] ?? new Uint8Array(0);
  }

  private encodeChunk(chunk: string): number[] {
    const hit = this.cache.get(chunk);
    if (hit) return hit;
    let s: number[] = Array.from(Buffer.from(chunk, 'utf8'));
    while (s.length > 1) {
      let bestRank = Infinity;
      for (let i = 0; i + 1 < s.length; i++) {
        const r = this.rank.get(s[i]! * PAIR_BASE + s[i + 1]!);
        if (r !== undefined && r < bestRank) bestRank = r;
      }
      if (bestRank === Infinity) break;
      const a = this.spec.merges[2 * bestRank]!, b = this.spec.merges[2 * bestRank + 1]!;
      const z = 256 + bestRank;
      const out: number[] = [];
      for (let i = 0; i < s.length; ) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          out.push(z);
          i += 2;
        } else {
          out.push(s[i]!);
          i++;
        }
      }
      s = out;
    }
    if (this.cache.size >= ENCODE_CACHE_MAX) this.cache = new Map();
    this.cache.set(chunk, s);
    return s;
  }

  /** Encodes text: pre-tokenise, then apply merges by rank inside each chunk. Never emits eot. */
  encode(text: string): number[] {
    const out: number[] = [];
    for (const c of chunksOf(this.re, text)) {
      const ids = this.encodeChunk(c);
      for (let i = 0; i < ids.length; i++) out.push(ids[i]!);
    }
    return out;
  }

  /** Decodes ids (eot → "<|endoftext|>"); throws RangeError on ids outside 0..vocabSize-1. */
  decode(ids: ArrayLike<number>): string {
    let out = '';
    const parts: Uint8Array[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (id === this.eotId) {
        out += Buffer.concat(parts).toString('utf8') + EOT_TEXT;
        parts.length = 0;
        continue;
      }
      const b = Number.isInteger(id) ? this.tokenBytes[id] : undefined;
      if (!b) throw new RangeError(`bpe tokenizer: token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
      parts.push(b);
    }
    return out + Buffer.concat(parts).toString('utf8');
  }

  /** The spec (a copy): `{ kind: 'bpe', version: 1, pattern, merges }`. */
  toJSON(): BpeTokenizerSpec {
    return { kind: 'bpe', version: 1, pattern: this.spec.pattern, merges: this.spec.merges.slice() };
  }
}
