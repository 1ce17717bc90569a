/**
 * Finds or builds the dataset a training config asks for: a prepared dataset folder is used as is;
 * a raw corpus (or the embedded Brown corpus) is prepared once into the cache and reused.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadDataset, prepare, type Dataset, type PrepareProgress } from '../data/index.js';
import { parseTrainConfig, type TrainConfig } from './config.js';

/** True if `dir` looks like a prepared dataset (has meta.json). */
export function isPreparedDataset(dir: string): boolean {
  return fs.existsSync(path.join(dir, 'meta.json'));
}

/** The cache folder for a (corpus, tokenizer) pair. */
export function cachedDatasetDir(cfg: Pick<TrainConfig, 'data' | 'format' | 'text_field' | 'tokenizer' | 'bpe_vocab' | 'cache_dir'>): string {
  const source = cfg.data === 'brown' ? 'brown' : path.resolve(cfg.data);
  const tok = cfg.tokenizer === 'bpe' ? `bpe${cfg.bpe_vocab}` : cfg.tokenizer;
  const key = createHash('sha256').update(JSON.stringify([source, cfg.format, cfg.text_field, tok])).digest('hex').slice(0, 10);
  const base = cfg.data === 'brown' ? 'brown' : path.basename(source).replace(/[^A-Za-z0-9_.-]/g, '_');
  return path.join(cfg.cache_dir, 'data', `${base}-${tok}-${key}`);
}

/**
 * The prepared dataset a checkpoint was trained on (from its stored training config): the data folder
 * itself when it is a prepared dataset, else the cache folder `train` prepared it into.
 */
export function datasetDirOfCheckpoint(trainConfig: Record<string, unknown>): string {
  const cfg = parseTrainConfig(trainConfig);
  return cfg.data !== 'brown' && isPreparedDataset(cfg.data) ? cfg.data : cachedDatasetDir(cfg);
}

/**
 * Loads the dataset for `cfg`, preparing it first when needed (cached). Throws the data layer's
 * clear errors for a missing or empty corpus.
 */
export async function resolveDataset(cfg: TrainConfig, onProgress?: (p: PrepareProgress) => void): Promise<Dataset> {
  if (cfg.data !== 'brown' && isPreparedDataset(cfg.data)) return loadDataset(cfg.data);
  const dir = cachedDatasetDir(cfg);
  if (!isPreparedDataset(dir)) {
    if (cfg.data !== 'brown' && !fs.existsSync(cfg.data)) throw new Error(`corpus not found: ${cfg.data}`);
    await prepare({
      input: cfg.data, format: cfg.format, textField: cfg.text_field, tokenizer: cfg.tokenizer,
      vocabSize: cfg.bpe_vocab, outDir: dir, overwrite: true, ...(onProgress ? { onProgress } : {}),
    });
  }
  return loadDataset(dir);
}
