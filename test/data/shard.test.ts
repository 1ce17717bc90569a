import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { readShard, SHARD_HEADER_BYTES, ShardSetWriter, ShardWriter, writeShard } from '../../src/data/shard.js';
import { tempDir } from './helpers.js';

const { dir, cleanup } = tempDir();
after(cleanup);

describe('shards', () => {
  it('round-trips uint16 tokens with the documented header', () => {
    const p = join(dir, 'a.bin');
    const toks = Array.from({ length: 3_000_000 }, (_, i) => (i * 7919) % 4096);
    const w = new ShardWriter(p, 4096, 1000); // small chunk: many flushes
    w.write(toks.slice(0, 1234));
    w.write(toks.slice(1234));
    assert.equal(w.count, toks.length);
    assert.deepEqual(w.close(), { path: p, count: toks.length });
    assert.equal(statSync(p).size, SHARD_HEADER_BYTES + 2 * toks.length);
    const raw = readFileSync(p);
    assert.equal(raw.subarray(0, 8).toString('latin1'), 'SSDTOK\0\0');
    assert.equal(raw.readUInt32LE(8), 1);
    assert.equal(raw.readUInt32LE(12), 1);
    assert.equal(raw.readBigUInt64LE(16), BigInt(toks.length));
    const { header, tokens } = readShard(p);
    assert.deepEqual(header, { version: 1, dtype: 'uint16', count: toks.length, vocabSize: 4096 });
    assert.ok(tokens instanceof Uint16Array);
    assert.deepEqual(Array.from(tokens.subarray(0, 5)), toks.slice(0, 5));
    assert.ok(tokens.every((t, i) => t === toks[i]));
    assert.ok(!readdirSync(dir).some((f) => f.endsWith('.tmp')), 'no temp file left');
  });
  it('uses uint32 for large vocabularies and allows empty shards', () => {
    const p = join(dir, 'b.bin');
    writeShard(p, [0, 65536, 99999], 100000);
    const { header, tokens } = readShard(p);
    assert.equal(header.dtype, 'uint32');
    assert.deepEqual(Array.from(tokens), [0, 65536, 99999]);
    writeShard(join(dir, 'e.bin'), [], 257);
    assert.equal(readShard(join(dir, 'e.bin')).tokens.length, 0);
  });
  it('rejects tokens outside the vocabulary', () => {
    assert.throws(() => writeShard(join(dir, 'c.bin'), [1, 257], 257), /outside the vocabulary/);
    assert.ok(!readdirSync(dir).includes('c.bin') && !readdirSync(dir).includes('c.bin.tmp'));
  });
  it('splits a stream into numbered shards', () => {
    const w = new ShardSetWriter(dir, 'train', 300, 10);
    w.write(Array.from({ length: 7 }, (_, i) => i));
    w.write(Array.from({ length: 18 }, (_, i) => 7 + i));
    const shards = w.close();
    assert.deepEqual(shards, [
      { file: 'train_000000.bin', tokens: 10 },
      { file: 'train_000001.bin', tokens: 10 },
      { file: 'train_000002.bin', tokens: 5 },
    ]);
    const all = shards.flatMap((s) => Array.from(readShard(join(dir, s.file)).tokens));
    assert.deepEqual(all, Array.from({ length: 25 }, (_, i) => i));
  });
  it('reports corrupt, truncated and missing shards clearly', () => {
    const p = join(dir, 'd.bin');
    writeShard(p, [1, 2, 3, 4], 257);
    const good = readFileSync(p);
    const bad = Buffer.from(good);
    bad[0] = 0x58;
    writeFileSync(p, bad);
    assert.throws(() => readShard(p), (e: Error) => /d\.bin/.test(e.message) && /bad magic/.test(e.message) && /ssd prepare/.test(e.message));
    const v2 = Buffer.from(good);
    v2.writeUInt32LE(2, 8);
    writeFileSync(p, v2);
    assert.throws(() => readShard(p), /version 2/);
    writeFileSync(p, good);
    truncateSync(p, good.length - 1);
    assert.throws(() => readShard(p), /truncated: the header promises 4 tokens/);
    truncateSync(p, 10);
    assert.throws(() => readShard(p), /truncated: 10 bytes/);
    writeFileSync(p, Buffer.concat([good, Buffer.from([0, 0])]));
    assert.throws(() => readShard(p), /trailing bytes/);
    assert.throws(() => readShard(join(dir, 'nope.bin')), /nope\.bin cannot be opened \(ENOENT\).*ssd prepare/);
  });
});
