/**
 * Loading a prepared dataset folder (see `prepare.ts`).
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { DatasetMeta } from './prepare.js';
import { readShard, type TokenArray } from './shard.js';
import { tokenizerFingerprint, tokenizerFromJSON, type Tokenizer } from './tokenizer/index.js';
import { TokenSequence } from './tokens.js';

/** A loaded dataset: both splits fully in memory as token sequences. */
export interface Dataset {
  dir: string;
  meta: DatasetMeta;
  tokenizer: Tokenizer;
  train: TokenSequence;
  val: TokenSequence;
}

const HINT = 'run `ssd prepare` to (re)build it';

function readJson(path: string, what: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    throw new Error(`${what} ${path} is missing (the dataset is incomplete or was not prepared); ${HINT}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${what} ${path} is not valid JSON (${(e as Error).message}); ${HINT}`);
  }
}

/**
 * Reads and checks `meta.json` and `tokenizer.json` of a dataset folder (no shards).
 * @throws Error if the folder, meta.json or tokenizer.json is missing/invalid, or the tokenizer
 *   does not match the fingerprint recorded in meta.json
 */
export function loadDatasetInfo(dir: string): { meta: DatasetMeta; tokenizer: Tokenizer } {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`dataset folder ${dir} does not exist; ${HINT}`);
  const meta = readJson(join(dir, 'meta.json'), 'dataset metadata') as DatasetMeta;
  if (meta?.format !== 'ssd-dataset' || meta.version !== 1) {
    throw new Error(`${join(dir, 'meta.json')} is not an ssd dataset (version 1) description; ${HINT}`);
  }
  const spec = readJson(join(dir, 'tokenizer.json'), 'tokenizer');
  const tokenizer = tokenizerFromJSON(spec);
  if (tokenizerFingerprint(tokenizer) !== meta.tokenizer.fingerprint) {
    throw new Error(`${join(dir, 'tokenizer.json')} does not match the tokenizer recorded in meta.json; ${HINT}`);
  }
  return { meta, tokenizer };
}

/**
 * Reads the shards of one split into memory.
 * @throws Error if a shard is missing/corrupt, its vocab/dtype disagrees with meta, or the total
 *   token count differs from meta.json
 */
export function loadSplit(dir: string, meta: DatasetMeta, split: 'train' | 'val'): TokenSequence {
  const parts: TokenArray[] = [];
  for (const s of meta.shards[split]) {
    const path = join(dir, s.file);
    const { header, tokens } = readShard(path);
    if (header.count !== s.tokens) {
      throw new Error(`shard ${path} holds ${header.count} tokens but meta.json lists ${s.tokens}; ${HINT}`);
    }
    if (header.vocabSize !== meta.tokenizer.vocabSize) {
      throw new Error(`shard ${path} was written for vocab ${header.vocabSize}, but the dataset's tokenizer has ${meta.tokenizer.vocabSize}; ${HINT}`);
    }
    parts.push(tokens);
  }
  const seq = new TokenSequence(parts);
  if (seq.length !== meta.tokens[split]) {
    throw new Error(`the ${split} split of ${dir} has ${seq.length} tokens but meta.json says ${meta.tokens[split]}; ${HINT}`);
  }
  return seq;
}

/**
 * Loads a prepared dataset folder: meta, tokenizer and both splits (all shards read into memory).
 * @throws Error with a clear message for a missing folder / meta.json / tokenizer.json / shard,
 *   or any inconsistency between them (each suggests re-running `ssd prepare`)
 */
export function loadDataset(dir: string): Dataset {
  const { meta, tokenizer } = loadDatasetInfo(dir);
  return { dir, meta, tokenizer, train: loadSplit(dir, meta, 'train'), val: loadSplit(dir, meta, 'val') };
}
