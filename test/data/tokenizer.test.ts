import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { brownDocuments } from '../../src/data/brown.js';
import {
  BpeTokenizer, ByteTokenizer, Gpt2Tokenizer, learnMerges, sameTokenizer, tokenizerFingerprint,
  tokenizerFromJSON, trainBpe, type Tokenizer,
} from '../../src/data/tokenizer/index.js';

const SAMPLES = [
  '',
  'Hello, world!',
  "It's a dog's life -- isn't it?  Multiple   spaces\n\nand lines\t tabs.",
  'naïve café — “quotes” 日本語のテキスト 🙂👍🏽 Ελληνικά русский',
  '<|endoftext|> is plain text here',
  '1234567890 3.14159 $1,000,000',
];

function roundTrips(t: Tokenizer): void {
  for (const s of SAMPLES) {
    const ids = t.encode(s);
    for (const id of ids) {
      assert.ok(Number.isInteger(id) && id >= 0 && id < t.vocabSize, `id ${id} in vocab`);
      assert.notEqual(id, t.eotId, 'encode never emits eot');
    }
    assert.equal(t.decode(ids), s);
  }
  assert.equal(t.decode([...t.encode('a'), t.eotId, ...t.encode('b')]), 'a<|endoftext|>b');
  assert.throws(() => t.decode([t.vocabSize]), RangeError);
  const again = tokenizerFromJSON(JSON.parse(JSON.stringify(t.toJSON())));
  assert.ok(sameTokenizer(t, again));
  assert.equal(tokenizerFingerprint(t), tokenizerFingerprint(again));
  assert.deepEqual(again.encode(SAMPLES[3]!), t.encode(SAMPLES[3]!));
}

async function brownTexts(limit: number): Promise<string[]> {
  const out: string[] = [];
  for await (const d of brownDocuments({ limit })) out.push(d.text);
  return out;
}

describe('byte tokenizer', () => {
  it('has vocab 257, eot 256 and round-trips UTF-8', () => {
    const t = new ByteTokenizer();
    assert.equal(t.vocabSize, 257);
    assert.equal(t.eotId, 256);
    assert.deepEqual(t.encode('é'), [0xc3, 0xa9]);
    roundTrips(t);
  });
  it('round-trips arbitrary strings (property)', () => {
    const t = new ByteTokenizer();
    fc.assert(fc.property(fc.string({ unit: 'grapheme' }), (s) => t.decode(t.encode(s)) === s));
  });
});

describe('gpt2 tokenizer', () => {
  it('matches known GPT-2 ids and round-trips', () => {
    const t = new Gpt2Tokenizer();
    assert.equal(t.vocabSize, 50257);
    assert.equal(t.eotId, 50256);
    assert.deepEqual(t.encode('Hello world'), [15496, 995]);
    roundTrips(t);
  });
});

describe('bpe tokenizer', () => {
  it('known answer: frequency then overlap', async () => {
    const t = await trainBpe(['ab ab ab'], { vocabSize: 259 });
    // chunks "ab" x1, " ab" x2: (a,b)=3 > ( ,a)=2 → 256=ab; then ( ,256)=2 → 257
    assert.deepEqual(t.toJSON().merges, [97, 98, 32, 256]);
    assert.equal(t.vocabSize, 259);
    assert.equal(t.eotId, 258);
    assert.deepEqual(t.encode('ab ab'), [256, 257]);
    assert.deepEqual(t.encode('abc'), [256, 99]);
  });
  it('known answer: deterministic tie-break (smallest pair first) and chunk boundaries', async () => {
    const t = await trainBpe(['ab cd'], { vocabSize: 1000 });
    // all pairs count 1: ( ,c) < (a,b) < (c,d)... after ( ,c)→256: (a,b) → 257, (256,d) → 258
    assert.deepEqual(t.toJSON().merges, [32, 99, 97, 98, 256, 100]);
    assert.equal(t.vocabSize, 260, 'stops early when no pairs are left');
    // "b" and " " are in different chunks: no merge ever spans "b c"
    assert.deepEqual(t.encode('ab cd'), [257, 258]);
  });
  it('known answer: overlapping pairs merge left to right', () => {
    const merges = learnMerges(new Map([['aaaa', 1]]), 10);
    assert.deepEqual(merges, [97, 97, 256, 256]);
    const t = new BpeTokenizer({ kind: 'bpe', version: 1, pattern: "\\S+|\\s+", merges });
    assert.deepEqual(t.encode('aaa'), [256, 97]);
    assert.deepEqual(t.encode('aaaa'), [257]);
  });
  it('trains exactly vocabSize tokens on Brown, compresses, round-trips unicode', async () => {
    const texts = await brownTexts(60);
    const bytes = texts.reduce((a, s) => a + Buffer.byteLength(s), 0);
    const t0 = Date.now();
    const t = await trainBpe(texts, { vocabSize: 1024 });
    const ms = Date.now() - t0;
    assert.equal(t.vocabSize, 1024);
    assert.equal(t.eotId, 1023);
    assert.equal(t.toJSON().merges.length, 2 * (1024 - 257));
    let tokens = 0;
    for (const s of texts) {
      const ids = t.encode(s);
      tokens += ids.length;
      assert.equal(t.decode(ids), s);
    }
    const bpt = bytes / tokens;
    console.log(`# bpe-1024 on ${texts.length} Brown docs (${bytes} bytes): ${bpt.toFixed(3)} bytes/token, trained in ${ms} ms`);
    assert.ok(bpt > 2.4, `bytes/token ${bpt}`);
    roundTrips(t);
  });
  it('respects the training byte cap', async () => {
    const seen: number[] = [];
    const t = await trainBpe(['aaaa bbbb cccc dddd'], { vocabSize: 300, maxBytes: 9, onProgress: (p) => seen.push(p.bytes) });
    // chunks "aaaa"(4) " bbbb"(5) fit in 9 bytes; " cccc" does not
    assert.equal(seen[seen.length - 1], 9);
    const m = t.toJSON().merges;
    assert.ok(!m.includes(99) && !m.includes(100), 'c/d never seen');
  });
  it('round-trips random unicode (property) and rejects bad specs', async () => {
    const t = await trainBpe(['the cat sat on the mat; the dog ate the hat. ünïcödé ünïcödé'], { vocabSize: 300 });
    fc.assert(fc.property(fc.string({ unit: 'grapheme' }), (s) => t.decode(t.encode(s)) === s));
    assert.throws(() => tokenizerFromJSON({ kind: 'bpe', version: 1, pattern: '\\S+', merges: [300, 1] }), /not yet defined/);
    assert.throws(() => tokenizerFromJSON({ kind: 'nope', version: 1 }), /unknown tokenizer kind/);
    assert.throws(() => tokenizerFromJSON({ kind: 'byte', version: 2 }), /version/);
    await assert.rejects(trainBpe([''], { vocabSize: 300 }), /empty/);
    await assert.rejects(trainBpe(['x'], { vocabSize: 100 }), RangeError);
  });
  it('specs identify tokenizers', async () => {
    const a = await trainBpe(['hello hello world'], { vocabSize: 300 });
    const b = await trainBpe(['hello hello world'], { vocabSize: 300 });
    const c = await trainBpe(['other text entirely'], { vocabSize: 300 });
    assert.ok(sameTokenizer(a, b));
    assert.ok(!sameTokenizer(a, c));
    assert.ok(!sameTokenizer(new ByteTokenizer(), new Gpt2Tokenizer()));
    assert.notEqual(tokenizerFingerprint(a), tokenizerFingerprint(c));
    assert.equal(tokenizerFingerprint(a), tokenizerFingerprint(b.toJSON()));
  });
});
