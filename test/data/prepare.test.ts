import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { loadDataset } from '../../src/data/dataset.js';
import { RandomBatchSampler } from '../../src/data/loader.js';
import { prepare } from '../../src/data/prepare.js';
import { hashUniform } from '../../src/data/rng.js';
import { tempDir } from './helpers.js';

const { dir, cleanup } = tempDir();
after(cleanup);

const DOCS = Array.from({ length: 40 }, (_, i) => `Document number ${i}: ${'héllo wörld '.repeat(i % 5)}end.`);

function writeCorpus(): string {
  const p = join(dir, 'corpus.jsonl');
  writeFileSync(p, DOCS.map((t) => JSON.stringify({ text: t })).join('\n') + '\n');
  return p;
}

describe('prepare', () => {
  it('writes train/val shards with eot separators and exact token counts (byte tokenizer)', async () => {
    const input = writeCorpus();
    const out = join(dir, 'ds-byte');
    const progress: number[] = [];
    const meta = await prepare({ input, tokenizer: 'byte', outDir: out, valFraction: 0.2, seed: 7, shardTokens: 500, onProgress: (p) => progress.push(p.docs) });
    const isVal = DOCS.map((_, i) => hashUniform(i, 7) < 0.2);
    const expTrain = DOCS.filter((_, i) => !isVal[i]);
    const expVal = DOCS.filter((_, i) => isVal[i]);
    assert.ok(expVal.length > 0 && expTrain.length > 0);
    const len = (ds: string[]) => ds.reduce((a, t) => a + Buffer.byteLength(t) + 1, 0);
    assert.deepEqual(meta.documents, { train: expTrain.length, val: expVal.length, skippedEmpty: 0 });
    assert.deepEqual(meta.tokens, { train: len(expTrain), val: len(expVal) });
    assert.equal(meta.bytesPerToken, 1);
    assert.ok(meta.shards.train.length > 1, 'several shards');
    assert.ok(meta.shards.train.every((s) => s.tokens <= 500));
    assert.equal(progress[progress.length - 1], 40);
    assert.deepEqual(readdirSync(out).sort(), ['meta.json', 'tokenizer.json', ...meta.shards.train.map((s) => s.file), ...meta.shards.val.map((s) => s.file)].sort());
    const ds = loadDataset(out);
    const train = Array.from({ length: ds.train.length }, (_, i) => ds.train.get(i));
    assert.equal(ds.tokenizer.decode(train), expTrain.map((t) => t + '<|endoftext|>').join(''));
    assert.equal(train.filter((t) => t === 256).length, expTrain.length);
    assert.equal(train[train.length - 1], 256);
    const val = Array.from({ length: ds.val.length }, (_, i) => ds.val.get(i));
    assert.equal(ds.tokenizer.decode(val), expVal.map((t) => t + '<|endoftext|>').join(''));
    assert.ok(meta.unigramEntropy.train > 0);
    // deterministic: same options → same tokens
    const again = await prepare({ input, tokenizer: 'byte', outDir: join(dir, 'ds-byte2'), valFraction: 0.2, seed: 7, shardTokens: 500 });
    assert.deepEqual(again.tokens, meta.tokens);
    assert.deepEqual(readFileSync(join(out, 'train_000001.bin')), readFileSync(join(dir, 'ds-byte2', 'train_000001.bin')));
  });

  it('trains a BPE tokenizer and saves it with the data', async () => {
    const input = writeCorpus();
    const out = join(dir, 'ds-bpe');
    const meta = await prepare({ input, tokenizer: 'bpe', vocabSize: 300, outDir: out, valFraction: 0.1 });
    assert.equal(meta.tokenizer.kind, 'bpe');
    assert.equal(meta.tokenizer.vocabSize, 300);
    assert.equal(meta.dtype, 'uint16');
    assert.ok(meta.bytesPerToken > 1.5);
    const ds = loadDataset(out);
    assert.equal(ds.tokenizer.vocabSize, 300);
    const all = [...Array.from({ length: ds.train.length }, (_, i) => ds.train.get(i))];
    assert.equal(all.filter((t) => t === 299).length, meta.documents.train);
    const s = new RandomBatchSampler(ds.train, { batchSize: 2, seqLen: 16, seed: 0 });
    assert.equal(s.next().x.length, 32);
  });

  it('keeps the val split non-empty', async () => {
    const p = join(dir, 'two.jsonl');
    writeFileSync(p, '{"text":"alpha"}\n{"text":""}\n{"text":"beta"}\n');
    const meta = await prepare({ input: p, tokenizer: 'byte', outDir: join(dir, 'ds-two'), valFraction: 1e-9 });
    assert.deepEqual(meta.documents, { train: 1, val: 1, skippedEmpty: 1 });
    assert.deepEqual(meta.tokens, { train: 6, val: 5 });
    const ds = loadDataset(join(dir, 'ds-two'));
    assert.equal(ds.tokenizer.decode(Array.from({ length: 5 }, (_, i) => ds.val.get(i))), 'beta<|endoftext|>');
    // single document: split by tokens
    const one = join(dir, 'one.txt');
    writeFileSync(one, 'x'.repeat(99));
    const m1 = await prepare({ input: one, tokenizer: 'byte', outDir: join(dir, 'ds-one'), valFraction: 0.1 });
    assert.deepEqual(m1.tokens, { train: 90, val: 10 });
    assert.match(m1.note ?? '', /single-document/);
  });

  it('errors on empty corpora and leaves nothing behind', async () => {
    const p = join(dir, 'empty.jsonl');
    writeFileSync(p, '{"text":""}\n');
    const out = join(dir, 'ds-empty');
    await assert.rejects(prepare({ input: p, tokenizer: 'byte', outDir: out }), /has no text: 1 document\(s\), all empty \(zero tokens\)/);
    mkdirSync(join(dir, 'nodocs'));
    await assert.rejects(prepare({ input: join(dir, 'nodocs'), tokenizer: 'bpe', outDir: out }), /empty/);
    const bad = join(dir, 'bad.jsonl');
    writeFileSync(bad, '{"text":"fine"}\n{"txt":"oops"}\n');
    await assert.rejects(prepare({ input: bad, tokenizer: 'byte', outDir: out }), /bad\.jsonl:2: missing string field "text"/);
    assert.ok(!existsSync(out));
    assert.ok(!readdirSync(dir).some((f) => f.includes('.tmp-')), 'temp folders removed');
    await assert.rejects(prepare({ input: join(dir, 'nope'), tokenizer: 'byte', outDir: out }), /not found/);
  });

  it('refuses a non-empty outDir unless overwrite, overwrites only a dataset, and replaces it atomically', async () => {
    const input = writeCorpus();
    const out = join(dir, 'ds-over');
    mkdirSync(out);
    writeFileSync(join(out, 'keep.txt'), 'x');
    await assert.rejects(prepare({ input, tokenizer: 'byte', outDir: out }), /already exists and is not empty/);
    await assert.rejects(prepare({ input, tokenizer: 'byte', outDir: out, overwrite: true }), /not a prepared dataset/);
    assert.ok(existsSync(join(out, 'keep.txt')));
    rmSync(join(out, 'keep.txt'));
    await prepare({ input, tokenizer: 'byte', outDir: out });
    writeFileSync(join(out, 'stale.txt'), 'x');
    await prepare({ input, tokenizer: 'byte', outDir: out, overwrite: true });
    assert.ok(!existsSync(join(out, 'stale.txt')));
    assert.ok(existsSync(join(out, 'meta.json')));
  });

  it('loadDataset reports missing pieces clearly', async () => {
    const input = writeCorpus();
    const out = join(dir, 'ds-load');
    await prepare({ input, tokenizer: 'byte', outDir: out });
    assert.throws(() => loadDataset(join(dir, 'missing')), /dataset folder .*missing does not exist; run `ssd prepare`/);
    rmSync(join(out, 'val_000000.bin'));
    assert.throws(() => loadDataset(out), /val_000000\.bin cannot be opened/);
    rmSync(join(out, 'meta.json'));
    assert.throws(() => loadDataset(out), /meta\.json is missing/);
  });

  it('prepares Brown with a 4096 BPE quickly', async () => {
    const t0 = Date.now();
    const meta = await prepare({ input: 'brown', tokenizer: 'bpe', vocabSize: 4096, outDir: join(dir, 'brown-bpe') });
    const ms = Date.now() - t0;
    console.log(`# brown bpe-4096: ${meta.documents.train}+${meta.documents.val} docs, ${meta.tokens.train}+${meta.tokens.val} tokens, ${meta.bytesPerToken.toFixed(3)} bytes/token, H1=${meta.unigramEntropy.val.toFixed(3)} nats, ${ms} ms`);
    assert.equal(meta.documents.train + meta.documents.val, 500);
    assert.ok(meta.documents.val >= 10 && meta.documents.val <= 45);
    assert.equal(meta.tokenizer.vocabSize, 4096);
    assert.ok(meta.bytesPerToken > 3.2, `${meta.bytesPerToken}`);
    assert.ok(ms < 30_000);
  });
});
