import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { parquetWriteBuffer } from 'hyparquet-writer';
import type { Document } from '../../src/data/document.js';
import { openCorpus, readJsonl, readParquet, readTextFiles } from '../../src/data/sources.js';
import { tempDir } from './helpers.js';

const { dir, cleanup } = tempDir();
after(cleanup);

async function all(it: AsyncIterable<Document>): Promise<Document[]> {
  const out: Document[] = [];
  for await (const d of it) out.push(d);
  return out;
}

describe('text sources', () => {
  it('reads a folder recursively in sorted order, one document per file', async () => {
    const root = join(dir, 'txt');
    mkdirSync(join(root, 'b', 'c'), { recursive: true });
    writeFileSync(join(root, 'z.txt'), 'last');
    writeFileSync(join(root, 'a.txt'), '\ufefffirst\r\nline');
    writeFileSync(join(root, 'b', 'c', 'mid.md'), 'middle');
    writeFileSync(join(root, '.hidden'), 'skip me');
    const docs = await all(readTextFiles(root));
    assert.deepEqual(docs, [
      { id: 'a.txt', text: 'first\nline' },
      { id: join('b', 'c', 'mid.md'), text: 'middle' },
      { id: 'z.txt', text: 'last' },
    ]);
    const viaOpen = await all(openCorpus({ input: root }));
    assert.deepEqual(viaOpen.map((d) => d.text), ['first\nline', 'middle', 'last']);
    const single = await all(openCorpus({ input: join(root, 'z.txt') }));
    assert.equal(single.length, 1);
  });
  it('rejects binary files in auto mode and missing paths', async () => {
    const p = join(dir, 'bin.dat');
    writeFileSync(p, Buffer.from([1, 0, 2]));
    await assert.rejects(all(openCorpus({ input: p })), /binary/);
    await assert.rejects(all(openCorpus({ input: join(dir, 'missing') })), /corpus input not found: .*missing/);
  });
  it('reports an empty corpus', async () => {
    mkdirSync(join(dir, 'empty'));
    await assert.rejects(all(openCorpus({ input: join(dir, 'empty') })), /is empty: no documents/);
    writeFileSync(join(dir, 'blank.jsonl'), '\n\n');
    await assert.rejects(all(openCorpus({ input: join(dir, 'blank.jsonl') })), /is empty/);
  });
});

describe('jsonl source', () => {
  it('reads the text field (configurable) and skips blank lines', async () => {
    const p = join(dir, 'a.jsonl');
    writeFileSync(p, '{"text":"one","x":1}\n\n{"text":"two \\u00e9"}\r\n');
    assert.deepEqual(await all(readJsonl(p)), [
      { id: `${p}:1`, text: 'one' },
      { id: `${p}:3`, text: 'two é' },
    ]);
    const q = join(dir, 'b.jsonl');
    writeFileSync(q, '{"content":"c1"}\n{"content":"c2"}\n');
    assert.deepEqual((await all(openCorpus({ input: q, textField: 'content' }))).map((d) => d.text), ['c1', 'c2']);
  });
  it('names the file, line and field on a missing field or invalid JSON', async () => {
    const p = join(dir, 'bad.jsonl');
    writeFileSync(p, '{"text":"ok"}\n{"body":"no text"}\n');
    await assert.rejects(all(readJsonl(p)), (e: Error) => e.message.includes(`${p}:2`) && /missing string field "text"/.test(e.message) && /body/.test(e.message));
    writeFileSync(p, '{"text":"ok"}\n{"text":"ok"}\n{"text": oops}\n');
    await assert.rejects(all(readJsonl(p)), (e: Error) => e.message.includes(`${p}:3`) && /invalid JSON/.test(e.message) && /"text"/.test(e.message));
    writeFileSync(p, '{"text":5}\n');
    await assert.rejects(all(readJsonl(p)), /:1: missing string field "text"/);
  });
});

describe('parquet source', () => {
  it('reads the text column row group by row group', async () => {
    const p = join(dir, 'a.parquet');
    const texts = Array.from({ length: 25 }, (_, i) => `document ${i} — ünïcode`);
    const buf = parquetWriteBuffer({
      columnData: [
        { name: 'id', data: texts.map((_, i) => i), type: 'INT32' },
        { name: 'text', data: texts, type: 'STRING' },
        { name: 'body', data: texts.map((t) => t.toUpperCase()), type: 'STRING' },
      ],
      rowGroupSize: 10,
    });
    writeFileSync(p, Buffer.from(buf));
    const docs = await all(readParquet(p));
    assert.deepEqual(docs.map((d) => d.text), texts);
    assert.equal(docs[24]!.id, `${p}#24`);
    const upper = await all(openCorpus({ input: p, textField: 'body' }));
    assert.equal(upper[3]!.text, texts[3]!.toUpperCase());
    await assert.rejects(all(readParquet(p, { textField: 'content' })), /no column "content" \(columns: id, text, body\)/);
  });
  it('reads GZIP-compressed Parquet and reports non-string values', async () => {
    const p = join(dir, 'gz.parquet');
    const buf = parquetWriteBuffer({
      columnData: [{ name: 'text', data: ['aa', 'bb', 'cc'], type: 'STRING' }],
      codec: 'GZIP',
      compressors: { GZIP: (b: Uint8Array) => new Uint8Array(gzipSync(b)) },
    });
    writeFileSync(p, Buffer.from(buf));
    assert.deepEqual((await all(readParquet(p))).map((d) => d.text), ['aa', 'bb', 'cc']);
    const q = join(dir, 'null.parquet');
    writeFileSync(q, Buffer.from(parquetWriteBuffer({ columnData: [{ name: 'text', data: ['x', null], type: 'STRING' }] })));
    await assert.rejects(all(readParquet(q)), /row 1: column "text" is null/);
  });
});
