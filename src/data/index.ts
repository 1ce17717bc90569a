/**
 * Data layer of ssd: tokenizers, corpora, shards, prepare/load, batch loader, entropy.
 */
export * from './tokenizer/index.js';
export * from './document.js';
export * from './brown.js';
export * from './sources.js';
export * from './shard.js';
export * from './tokens.js';
export * from './rng.js';
export * from './loader.js';
export * from './entropy.js';
export * from './prepare.js';
export * from './dataset.js';
