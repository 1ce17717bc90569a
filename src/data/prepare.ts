/**
 * `prepare`: corpus → tokenizer → binary token shards (train / val) + tokenizer.json + meta.json.
 *
 * Streaming and memory-bounded: documents are read one at a time (BPE training reads a bounded
 * prefix first, then a second pass encodes). The dataset is written into a temporary sibling
 * folder that is renamed to `outDir` only when complete.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { entropyOfCounts } from './entropy.js';
import { hashUniform } from './rng.js';
import { DEFAULT_SHARD_TOKENS, dtypeForVocab, ShardSetWriter, type TokenDtype } from './shard.js';
import { openCorpus, type CorpusFormat } from './sources.js';
import { ByteTokenizer, Gpt2Tokenizer, tokenizerFingerprint, tokenizerFromJSON, trainBpe, type Tokenizer, type TokenizerSpec } from './tokenizer/index.js';

/** Default BPE vocabulary size. */
export const DEFAULT_BPE_VOCAB = 4096;
/** Default cap on the text used to train a BPE tokenizer (20 MB). */
export const DEFAULT_BPE_TRAIN_BYTES = 20_000_000;
/** Default validation fraction (Brown: 5%, anything else: 1%). */
export const DEFAULT_VAL_FRACTION = 0.01;
export const DEFAULT_BROWN_VAL_FRACTION = 0.05;

/** Progress report (phase `tokenizer`: reading text for BPE training; `encode`: the main pass). */
export interface PrepareProgress {
  phase: 'tokenizer' | 'encode';
  docs: number;
  tokens: number;
  bytes: number;
}

/** Options for {@link prepare}. */
export interface PrepareOptions {
  /** File, folder, or `'brown'` (embedded corpus). */
  input: string;
  format?: CorpusFormat;
  /** JSONL field / Parquet column with the text (default `text`). */
  textField?: string;
  /** Tokenizer kind to build, or an existing spec to reuse (e.g. from a checkpoint). */
  tokenizer: 'byte' | 'gpt2' | 'bpe' | TokenizerSpec;
  /** BPE vocab size incl. bytes and eot (default 4096). */
  vocabSize?: number;
  /** Bytes of text used to train BPE (default 20 MB). */
  bpeTrainBytes?: number;
  outDir: string;
  /** Fraction of documents (by deterministic hash) in the val split; default 0.05 for Brown, else 0.01. */
  valFraction?: number;
  /** Max tokens per shard (default 100M). */
  shardTokens?: number;
  /** Seed for the val split hash (default 0). */
  seed?: number;
  /** Replace an existing outDir (default false: error if it exists and is not empty). */
  overwrite?: boolean;
  /** For `brown`: only the first N files (tests). */
  brownLimit?: number;
  onProgress?: (p: PrepareProgress) => void;
}

/** Per-split shard listing. */
export interface ShardInfo {
  file: string;
  tokens: number;
}

/** Contents of `meta.json`. Token counts include one eot per document. */
export interface DatasetMeta {
  format: 'ssd-dataset';
  version: 1;
  createdAt: string;
  elapsedMs: number;
  source: { input: string; format: CorpusFormat; textField?: string };
  /** Summary; the full spec is in tokenizer.json (its fingerprint must match). */
  tokenizer: { kind: string; vocabSize: number; eotId: number; fingerprint: string };
  dtype: TokenDtype;
  documents: { train: number; val: number; skippedEmpty: number };
  tokens: { train: number; val: number };
  /** UTF-8 bytes of document text per split. */
  bytes: { train: number; val: number };
  /** Text bytes per (non-eot) token over both splits. */
  bytesPerToken: number;
  /** Unigram entropy (nats) of each split's tokens. */
  unigramEntropy: { train: number; val: number };
  shards: { train: ShardInfo[]; val: ShardInfo[] };
  shardTokens: number;
  valFraction: number;
  seed: number;
  /** Present for a trained BPE: how much text it was trained on and how long it took. */
  tokenizerTraining?: { bytes: number; ms: number };
  /** Set when the corpus had a single document, which was split by tokens. */
  note?: string;
}

function checkOptions(o: PrepareOptions): void {
  if (!o.input) throw new Error('prepare: no input given');
  if (!o.outDir) throw new Error('prepare: no output folder given');
  const vf = o.valFraction;
  if (vf !== undefined && !(vf > 0 && vf < 1)) throw new RangeError(`valFraction must be in (0, 1) (got ${vf})`);
  if (o.shardTokens !== undefined && !(Number.isInteger(o.shardTokens) && o.shardTokens >= 1)) throw new RangeError(`shardTokens must be a positive integer (got ${o.shardTokens})`);
  if (o.seed !== undefined && !Number.isInteger(o.seed)) throw new RangeError(`seed must be an integer (got ${o.seed})`);
}

async function buildTokenizer(o: PrepareOptions): Promise<{ tok: Tokenizer; training?: { bytes: number; ms: number } }> {
  const t = o.tokenizer;
  if (typeof t === 'object') return { tok: tokenizerFromJSON(t) };
  if (t === 'byte') return { tok: new ByteTokenizer() };
  if (t === 'gpt2') return { tok: new Gpt2Tokenizer() };
  if (t !== 'bpe') throw new Error(`unknown tokenizer ${JSON.stringify(t)} (expected byte, gpt2 or bpe)`);
  const t0 = Date.now();
  let docs = 0, bytes = 0;
  const texts = async function* () {
    for await (const d of openCorpus(corpusOpts(o))) {
      docs++;
      bytes += Buffer.byteLength(d.text, 'utf8');
      if (docs % 100 === 0) o.onProgress?.({ phase: 'tokenizer', docs, tokens: 0, bytes });
      yield d.text;
    }
  };
  let trainedBytes = 0;
  const tok = await trainBpe(texts(), {
    vocabSize: o.vocabSize ?? DEFAULT_BPE_VOCAB,
    maxBytes: o.bpeTrainBytes ?? DEFAULT_BPE_TRAIN_BYTES,
    onProgress: (p) => { trainedBytes = p.bytes; },
  });
  return { tok, training: { bytes: trainedBytes, ms: Date.now() - t0 } };
}

function corpusOpts(o: PrepareOptions) {
  return {
    input: o.input,
    format: o.format ?? 'auto',
    ...(o.textField !== undefined ? { textField: o.textField } : {}),
    ...(o.brownLimit !== undefined ? { brownLimit: o.brownLimit } : {}),
  };
}

/** One split being written: shards + counters + unigram counts. */
class SplitSink {
  docs = 0;
  bytes = 0;
  readonly counts: Float64Array;
  readonly shards: ShardSetWriter;
  constructor(dir: string, name: string, vocab: number, shardTokens: number) {
    this.shards = new ShardSetWriter(dir, name, vocab, shardTokens);
    this.counts = new Float64Array(vocab);
  }
  add(tokens: ArrayLike<number>, bytes: number, docs = 1): void {
    this.shards.write(tokens);
    for (let i = 0; i < tokens.length; i++) this.counts[tokens[i]!]!++;
    this.docs += docs;
    this.bytes += bytes;
  }
  entropy(): number {
    return this.shards.count > 0 ? entropyOfCounts(this.counts, this.shards.count) : 0;
  }
}

/**
 * Prepares a dataset: builds (or trains) the tokenizer, encodes every non-empty document followed
 * by the eot token, and assigns each document to val iff hash(docIndex, seed) < valFraction.
 * Guarantees both splits are non-empty: if no document hashed to val, the last document goes to
 * val (and vice versa); a single-document corpus is split by tokens (the last valFraction, at
 * least 1 token, goes to val).
 *
 * Writes `outDir/{train,val}_NNNNNN.bin`, `tokenizer.json`, `meta.json`, atomically (temp folder + rename).
 * @returns the meta written to meta.json
 * @throws Error if the input is missing or malformed, the corpus is empty (no documents) or has no
 *   text (zero tokens), outDir exists and is not empty (without `overwrite`), or options are invalid
 */
export async function prepare(opts: PrepareOptions): Promise<DatasetMeta> {
  checkOptions(opts);
  const t0 = Date.now();
  const outDir = resolve(opts.outDir);
  if (existsSync(outDir) && (await readdir(outDir)).length > 0) {
    if (!opts.overwrite) throw new Error(`output folder ${outDir} already exists and is not empty; choose another folder or overwrite it`);
    if (!existsSync(join(outDir, 'meta.json'))) {
      throw new Error(`refusing to overwrite ${outDir}: it is not empty and not a prepared dataset (no meta.json)`);
    }
  }
  const valFraction = opts.valFraction ?? (opts.input === 'brown' ? DEFAULT_BROWN_VAL_FRACTION : DEFAULT_VAL_FRACTION);
  const seed = opts.seed ?? 0;
  const shardTokens = opts.shardTokens ?? DEFAULT_SHARD_TOKENS;
  await mkdir(dirname(outDir), { recursive: true });
  const tmp = join(dirname(outDir), `.${basename(outDir)}.tmp-${process.pid}-${Date.now()}`);
  await mkdir(tmp);
  let train: SplitSink | undefined, val: SplitSink | undefined;
  try {
    const { tok, training } = await buildTokenizer(opts);
    const V = tok.vocabSize, eot = tok.eotId;
    train = new SplitSink(tmp, 'train', V, shardTokens);
    val = new SplitSink(tmp, 'val', V, shardTokens);
    let index = -1, skipped = 0, docs = 0, tokens = 0, bytes = 0;
    let pending: { ids: number[]; bytes: number; toVal: boolean } | undefined;
    let note: string | undefined;
    for await (const d of openCorpus(corpusOpts(opts))) {
      index++;
      if (d.text.length === 0) {
        skipped++;
        continue;
      }
      const ids = tok.encode(d.text);
      if (ids.length === 0) {
        skipped++;
        continue;
      }
      ids.push(eot);
      const b = Buffer.byteLength(d.text, 'utf8');
      if (pending) (pending.toVal ? val : train).add(pending.ids, pending.bytes);
      pending = { ids, bytes: b, toVal: hashUniform(index, seed) < valFraction };
      docs++;
      tokens += ids.length;
      bytes += b;
      if (docs % 100 === 0) opts.onProgress?.({ phase: 'encode', docs, tokens, bytes });
    }
    if (!pending) {
      throw new Error(`the corpus ${opts.input} has no text: ${skipped} document(s), all empty (zero tokens)`);
    }
    if (train.docs === 0 && val.docs === 0) {
      // single document: split it by tokens
      const n = pending.ids.length;
      if (n < 2) throw new Error(`the corpus ${opts.input} is too small to split into train and val (${n} token)`);
      const k = Math.min(n - 1, Math.max(1, Math.ceil(valFraction * n)));
      const cut = n - k;
      const frac = cut / n;
      train.add(pending.ids.slice(0, cut), Math.round(pending.bytes * frac));
      val.add(pending.ids.slice(cut), pending.bytes - Math.round(pending.bytes * frac));
      note = `single-document corpus: the last ${k} of its ${n} tokens form the val split`;
    } else if (val.docs === 0) {
      val.add(pending.ids, pending.bytes);
    } else if (train.docs === 0) {
      train.add(pending.ids, pending.bytes);
    } else {
      (pending.toVal ? val : train).add(pending.ids, pending.bytes);
    }
    opts.onProgress?.({ phase: 'encode', docs, tokens, bytes });
    const trainShards = train.shards.close();
    const valShards = val.shards.close();
    const spec = tok.toJSON();
    const totalTokens = train.shards.count + val.shards.count;
    const eots = train.docs + val.docs;
    const meta: DatasetMeta = {
      format: 'ssd-dataset',
      version: 1,
      createdAt: new Date().toISOString(),
      elapsedMs: Date.now() - t0,
      source: { input: opts.input, format: opts.format ?? 'auto', ...(opts.textField !== undefined ? { textField: opts.textField } : {}) },
      tokenizer: { kind: tok.kind, vocabSize: V, eotId: eot, fingerprint: tokenizerFingerprint(spec) },
      dtype: dtypeForVocab(V),
      documents: { train: train.docs, val: val.docs, skippedEmpty: skipped },
      tokens: { train: train.shards.count, val: val.shards.count },
      bytes: { train: train.bytes, val: val.bytes },
      bytesPerToken: bytes / Math.max(1, totalTokens - eots),
      unigramEntropy: { train: train.entropy(), val: val.entropy() },
      shards: { train: trainShards, val: valShards },
      shardTokens,
      valFraction,
      seed,
      ...(training ? { tokenizerTraining: training } : {}),
      ...(note ? { note } : {}),
    };
    await writeFile(join(tmp, 'tokenizer.json'), JSON.stringify(spec) + '\n');
    await writeFile(join(tmp, 'meta.json'), JSON.stringify(meta, null, 2) + '\n');
    // swap into place
    if (existsSync(outDir)) {
      const old = join(dirname(outDir), `.${basename(outDir)}.old-${process.pid}-${Date.now()}`);
      await rename(outDir, old);
      await rename(tmp, outDir);
      await rm(old, { recursive: true, force: true });
    } else {
      await rename(tmp, outDir);
    }
    return meta;
  } catch (e) {
    train?.shards.abort();
    val?.shards.abort();
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
}
