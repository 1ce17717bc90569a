/**
 * Streaming corpus readers: plain text files / folders, JSONL, Parquet and the embedded Brown corpus.
 * Every reader is an async generator of {@link Document}s in a fixed, reproducible order and holds
 * at most one document (or one Parquet row group) in memory at a time.
 */
import { createReadStream } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { extname, join, relative, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import * as zlib from 'node:zlib';
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects } from 'hyparquet';
import { brownDocuments } from './brown.js';
import type { Document } from './document.js';

/** Corpus file formats. `auto` picks by extension: .jsonl/.ndjson → jsonl, .parquet → parquet, else text. */
export type CorpusFormat = 'auto' | 'text' | 'jsonl' | 'parquet';

/** Options for {@link openCorpus}. */
export interface CorpusOptions {
  /** A file, a folder (read recursively), or the literal `'brown'` for the embedded Brown corpus. */
  input: string;
  /** File format (default `auto`). */
  format?: CorpusFormat;
  /** Field / column holding the text for JSONL and Parquet (default `text`). */
  textField?: string;
  /** For `brown`: read only the first N files (tests). */
  brownLimit?: number;
}

const JSONL_EXT = new Set(['.jsonl', '.ndjson', '.json']);
const PARQUET_EXT = new Set(['.parquet']);

/** Format of one file under `format` (auto → by extension). */
export function formatOf(path: string, format: CorpusFormat = 'auto'): Exclude<CorpusFormat, 'auto'> {
  if (format !== 'auto') return format;
  const ext = extname(path).toLowerCase();
  if (JSONL_EXT.has(ext)) return 'jsonl';
  if (PARQUET_EXT.has(ext)) return 'parquet';
  return 'text';
}

/**
 * Lists the corpus files under `path`: the path itself if it is a file, else every non-hidden file
 * below the folder (recursive, hidden names starting with "." skipped), sorted by path. With an explicit
 * `jsonl`/`parquet` format only files with a matching extension are listed.
 * @throws Error if the path does not exist
 */
export async function listCorpusFiles(path: string, format: CorpusFormat = 'auto'): Promise<string[]> {
  let st;
  try {
    st = await stat(path);
  } catch {
    throw new Error(`corpus input not found: ${path} (expected a file, a folder, or 'brown')`);
  }
  if (!st.isDirectory()) return [path];
  const out: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      if (e.name.startsWith('.')) continue;
      const p = join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) {
        const ext = extname(e.name).toLowerCase();
        if (format === 'jsonl' && !JSONL_EXT.has(ext)) continue;
        if (format === 'parquet' && !PARQUET_EXT.has(ext)) continue;
        out.push(p);
      }
    }
  };
  await walk(path);
  return out.sort();
}

/**
 * One document per text file: the whole file as UTF-8 (BOM stripped, CRLF → LF).
 * Files are read whole, so a single file should fit comfortably in memory.
 * @throws Error if the path is missing, or (when `checkBinary`) a file contains NUL bytes
 */
export async function* readTextFiles(path: string, opts: { checkBinary?: boolean } = {}): AsyncGenerator<Document> {
  const files = await listCorpusFiles(path, 'text');
  for (const f of files) yield await readTextFile(f, path, opts.checkBinary ?? true);
}

async function readTextFile(f: string, root: string, checkBinary: boolean): Promise<Document> {
  const buf = await readFile(f);
  if (checkBinary && buf.subarray(0, 8192).includes(0)) {
    throw new Error(`${f}: looks like a binary file (contains NUL bytes); remove it from the corpus or pass an explicit --format`);
  }
  let text = buf.toString('utf8');
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  text = text.replace(/\r\n?/g, '\n');
  const rel = relative(root, f);
  return { id: rel === '' ? f : rel, text };
}

/**
 * One document per line of a JSONL file (blank lines skipped). Each line must be a JSON object
 * with a string field `textField` (default `text`).
 * @throws Error naming the file and 1-based line number for invalid JSON or a missing / non-string field
 */
export async function* readJsonl(file: string, opts: { textField?: string } = {}): AsyncGenerator<Document> {
  const field = opts.textField ?? 'text';
  const stream = createReadStream(file, { encoding: 'utf8' });
  const rl = createInterface({ input: stream, crlfDelay: Infinity });
  let lineNo = 0;
  try {
    for await (const line of rl) {
      lineNo++;
      if (line.trim() === '') continue;
      let obj: unknown;
      try {
        obj = JSON.parse(line);
      } catch (e) {
        throw new Error(`${file}:${lineNo}: invalid JSON (${(e as Error).message}); expected an object with a "${field}" string field`);
      }
      const text = obj !== null && typeof obj === 'object' ? (obj as Record<string, unknown>)[field] : undefined;
      if (typeof text !== 'string') {
        const has = obj !== null && typeof obj === 'object' ? Object.keys(obj).slice(0, 10).join(', ') : typeof obj;
        throw new Error(
          `${file}:${lineNo}: missing string field "${field}" (line has: ${has || 'nothing'}); ` +
            `choose the field with --text-field`,
        );
      }
      yield { id: `${file}:${lineNo}`, text };
    }
  } finally {
    rl.close();
    stream.destroy();
  }
}

/** Parquet decompressors beyond hyparquet's built-in SNAPPY: GZIP and BROTLI (node:zlib), ZSTD when this Node has it. */
function parquetCompressors(): Record<string, (input: Uint8Array, outputLength: number) => Uint8Array> {
  const out: Record<string, (input: Uint8Array, outputLength: number) => Uint8Array> = {
    GZIP: (input) => new Uint8Array(zlib.gunzipSync(input)),
    BROTLI: (input) => new Uint8Array(zlib.brotliDecompressSync(input)),
  };
  const zstd = (zlib as unknown as { zstdDecompressSync?: (b: Uint8Array) => Buffer }).zstdDecompressSync;
  if (zstd) out.ZSTD = (input) => new Uint8Array(zstd(input));
  return out;
}

/**
 * One document per row of a Parquet file, from the string column `textField` (default `text`),
 * read one row group at a time (memory bounded by the largest row group's text column).
 * Codecs: uncompressed, SNAPPY, GZIP, BROTLI; ZSTD only on a Node with `zlib.zstdDecompressSync` (≥ 22.15).
 * @throws Error if the column is missing (listing the available ones), a value is not a string,
 *   or the file cannot be decoded (e.g. an unsupported compression codec)
 */
export async function* readParquet(file: string, opts: { textField?: string } = {}): AsyncGenerator<Document> {
  const field = opts.textField ?? 'text';
  let buffer, metadata;
  try {
    buffer = await asyncBufferFromFile(file);
    metadata = await parquetMetadataAsync(buffer);
  } catch (e) {
    throw new Error(`${file}: cannot read Parquet metadata (${(e as Error).message})`);
  }
  const root = metadata.schema[0];
  const top = metadata.schema.slice(1, 1 + (root?.num_children ?? metadata.schema.length - 1)).map((s) => s.name);
  if (!metadata.schema.some((s) => s.name === field)) {
    throw new Error(`${file}: no column "${field}" (columns: ${top.join(', ')}); choose the column with --text-field`);
  }
  let rowStart = 0;
  for (const rg of metadata.row_groups) {
    const n = Number(rg.num_rows);
    const rowEnd = rowStart + n;
    let rows;
    try {
      rows = await parquetReadObjects({ file: buffer, metadata, columns: [field], rowStart, rowEnd, compressors: parquetCompressors() });
    } catch (e) {
      throw new Error(`${file}: cannot decode rows ${rowStart}..${rowEnd - 1} (${(e as Error).message})`);
    }
    for (let i = 0; i < rows.length; i++) {
      const text = rows[i]![field];
      if (typeof text !== 'string') {
        throw new Error(`${file}: row ${rowStart + i}: column "${field}" is ${text === null ? 'null' : typeof text}, expected a string`);
      }
      yield { id: `${file}#${rowStart + i}`, text };
    }
    rowStart = rowEnd;
  }
}

/**
 * Opens a corpus as a stream of documents: `'brown'`, a file, or a folder (files in sorted order,
 * each read by its format). Empty documents are passed through (the caller decides).
 * @throws Error if the input is missing, a file is malformed (see the readers), or the corpus
 *   turns out to contain no documents at all (thrown at the end of iteration)
 */
export async function* openCorpus(opts: CorpusOptions): AsyncGenerator<Document> {
  const format = opts.format ?? 'auto';
  let n = 0;
  if (opts.input === 'brown') {
    for await (const d of brownDocuments(opts.brownLimit !== undefined ? { limit: opts.brownLimit } : {})) {
      n++;
      yield d;
    }
  } else {
    const input = resolve(opts.input);
    const files = await listCorpusFiles(input, format);
    const isDir = (await stat(input)).isDirectory();
    for (const f of files) {
      const fmt = formatOf(f, format);
      if (fmt === 'text') {
        n++;
        const d = await readTextFile(f, isDir ? input : f, format === 'auto');
        yield isDir ? d : { id: opts.input, text: d.text };
        continue;
      }
      const it = fmt === 'jsonl' ? readJsonl(f, { textField: opts.textField ?? 'text' }) : readParquet(f, { textField: opts.textField ?? 'text' });
      for await (const d of it) {
        n++;
        yield d;
      }
    }
  }
  if (n === 0) {
    throw new Error(`the corpus ${opts.input} is empty: no documents found${opts.input === 'brown' ? '' : ' (no files, or files without records)'}`);
  }
}
