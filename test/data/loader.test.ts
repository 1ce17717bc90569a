import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { evalBatches, evalWindowCount, RandomBatchSampler, type SamplerState } from '../../src/data/loader.js';
import { Rng } from '../../src/data/rng.js';
import { TokenSequence } from '../../src/data/tokens.js';

const data = Uint16Array.from({ length: 1000 }, (_, i) => i % 997);

describe('RandomBatchSampler', () => {
  it('yields B*T windows with y = x shifted by one', () => {
    const s = new RandomBatchSampler(data, { batchSize: 4, seqLen: 16, seed: 3 });
    for (let k = 0; k < 20; k++) {
      const { x, y, batchSize, seqLen } = s.next();
      assert.equal(batchSize, 4);
      assert.equal(seqLen, 16);
      assert.equal(x.length, 64);
      for (let b = 0; b < 4; b++) {
        const start = x[b * 16]!; // data[i] = i for i < 997
        for (let t = 0; t < 16; t++) {
          assert.equal(x[b * 16 + t], data[start + t]);
          assert.equal(y[b * 16 + t], data[start + t + 1]);
        }
      }
    }
  });
  it('is deterministic per seed and resumes exactly from state()', () => {
    const a = new RandomBatchSampler(data, { batchSize: 2, seqLen: 8, seed: 42 });
    const b = new RandomBatchSampler(data, { batchSize: 2, seqLen: 8, seed: 42 });
    const c = new RandomBatchSampler(data, { batchSize: 2, seqLen: 8, seed: 43 });
    const xa = a.next().x, xb = b.next().x;
    assert.deepEqual(xa, xb);
    assert.notDeepEqual(xa, c.next().x);
    for (let i = 0; i < 5; i++) a.next();
    const saved: SamplerState = JSON.parse(JSON.stringify(a.state()));
    assert.equal(saved.step, 6);
    const expected = [a.next(), a.next(), a.next()];
    const r = RandomBatchSampler.fromState(data, saved);
    assert.equal(r.steps, 6);
    for (const e of expected) assert.deepEqual(r.next(), e);
    assert.throws(() => RandomBatchSampler.fromState(data.subarray(0, 500), saved), /saved on 1000 tokens/);
  });
  it('covers all start positions, including the last one, across shard boundaries', () => {
    const seq = new TokenSequence([Uint16Array.from([0, 1, 2]), [3, 4], Uint32Array.from([5, 6, 7, 8, 9])]);
    const s = new RandomBatchSampler(seq, { batchSize: 1, seqLen: 4, seed: 1 });
    const starts = new Set<number>();
    for (let i = 0; i < 300; i++) {
      const { x, y } = s.next();
      starts.add(x[0]!);
      assert.deepEqual(Array.from(y), Array.from(x, (v) => v + 1));
    }
    assert.deepEqual([...starts].sort((p, q) => p - q), [0, 1, 2, 3, 4, 5]);
  });
  it('errors when the sequence length does not fit', () => {
    assert.throws(
      () => new RandomBatchSampler(new Uint16Array(10), { batchSize: 1, seqLen: 10 }),
      /sequence length 10 is larger than the data \(10 tokens\); use a shorter --seq-len or more data/,
    );
    assert.doesNotThrow(() => new RandomBatchSampler(new Uint16Array(10), { batchSize: 1, seqLen: 9 }));
  });
});

describe('evalBatches', () => {
  it('is sequential, non-overlapping and the same every time', () => {
    const seq = Array.from({ length: 23 }, (_, i) => i);
    assert.equal(evalWindowCount(23, 5), 4);
    const run = () => [...evalBatches(seq, { batchSize: 3, seqLen: 5 })];
    const bs = run();
    assert.deepEqual(bs.map((b) => b.batchSize), [3, 1]);
    assert.deepEqual(Array.from(bs[0]!.x), Array.from({ length: 15 }, (_, i) => i));
    assert.deepEqual(Array.from(bs[0]!.y), Array.from({ length: 15 }, (_, i) => i + 1));
    assert.deepEqual(Array.from(bs[1]!.x), [15, 16, 17, 18, 19]);
    assert.deepEqual(run(), bs);
    assert.equal([...evalBatches(seq, { batchSize: 3, seqLen: 5, dropLast: true })].length, 1);
    assert.equal([...evalBatches(seq, { batchSize: 1, seqLen: 5, maxBatches: 2 })].length, 2);
    assert.throws(() => [...evalBatches(seq, { batchSize: 1, seqLen: 23 })], /sequence length 23 is larger than the data \(23 tokens\)/);
  });
});

describe('Rng', () => {
  it('state round-trips and values are in range', () => {
    const r = new Rng(12345);
    for (let i = 0; i < 10; i++) r.nextU32();
    const s = r.state();
    const a = Array.from({ length: 100 }, () => r.nextFloat());
    const q = new Rng(s);
    assert.deepEqual(Array.from({ length: 100 }, () => q.nextFloat()), a);
    assert.ok(a.every((v) => v >= 0 && v < 1));
    assert.notDeepEqual(new Rng(1).state(), new Rng(2).state());
    assert.notDeepEqual(new Rng(1).state(), new Rng(2 ** 32 + 1).state());
  });
});
