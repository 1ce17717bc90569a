/**
 * Binary token shards.
 *
 * Layout (little-endian), header 64 bytes:
 *   [0, 8)   magic "SSDTOK\0\0"
 *   [8, 12)  format version u32 (= 1)
 *   [12, 16) token dtype code u32: 1 = uint16 (vocab ≤ 65536), 2 = uint32
 *   [16, 24) token count u64
 *   [24, 28) vocab size u32 (every token is < this)
 *   [28, 64) zero
 * then `count` tokens of the dtype. Writers stream to `<path>.tmp` and rename on close (atomic).
 */
import { closeSync, fstatSync, fsyncSync, openSync, readSync, renameSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';

/** The 8 magic bytes at the start of every shard. */
export const SHARD_MAGIC = Buffer.from('SSDTOK\0\0', 'latin1');
/** Current shard format version. */
export const SHARD_VERSION = 1;
/** Header size in bytes (tokens start here). */
export const SHARD_HEADER_BYTES = 64;
/** Default maximum tokens per shard (100M). */
export const DEFAULT_SHARD_TOKENS = 100_000_000;

/** Token dtype of a shard. */
export type TokenDtype = 'uint16' | 'uint32';
/** In-memory tokens of a shard. */
export type TokenArray = Uint16Array | Uint32Array;

const DTYPE_CODE: Record<TokenDtype, number> = { uint16: 1, uint32: 2 };
const HINT = 're-run `ssd prepare` to rebuild the dataset';

/** `uint16` when every id fits (vocabSize ≤ 65536), else `uint32`. @throws RangeError if vocabSize < 1 or > 2^32 */
export function dtypeForVocab(vocabSize: number): TokenDtype {
  if (!Number.isInteger(vocabSize) || vocabSize < 1 || vocabSize > 2 ** 32) throw new RangeError(`bad vocab size ${vocabSize}`);
  return vocabSize <= 65536 ? 'uint16' : 'uint32';
}

function headerBytes(dtype: TokenDtype, count: number, vocabSize: number): Buffer {
  const h = Buffer.alloc(SHARD_HEADER_BYTES);
  SHARD_MAGIC.copy(h, 0);
  h.writeUInt32LE(SHARD_VERSION, 8);
  h.writeUInt32LE(DTYPE_CODE[dtype], 12);
  h.writeBigUInt64LE(BigInt(count), 16);
  h.writeUInt32LE(vocabSize >>> 0 === vocabSize ? vocabSize : 0, 24);
  return h;
}

/**
 * Streams tokens into one shard file. Tokens are buffered (`chunkTokens`, default 1M) and flushed
 * in chunks; the file appears at `path` only after {@link close} (written to `path.tmp`, then renamed).
 */
export class ShardWriter {
  readonly path: string;
  readonly dtype: TokenDtype;
  readonly vocabSize: number;
  private fd: number | undefined;
  private buf: TokenArray;
  private fill = 0;
  private written = 0;

  /**
   * @param path final shard path
   * @param vocabSize every token must be an integer in [0, vocabSize)
   * @throws RangeError on a bad vocab size; filesystem errors if the temp file cannot be created
   */
  constructor(path: string, vocabSize: number, chunkTokens = 1 << 20) {
    this.path = path;
    this.vocabSize = vocabSize;
    this.dtype = dtypeForVocab(vocabSize);
    this.buf = this.dtype === 'uint16' ? new Uint16Array(chunkTokens) : new Uint32Array(chunkTokens);
    this.fd = openSync(path + '.tmp', 'w');
    writeSync(this.fd, headerBytes(this.dtype, 0, vocabSize));
  }

  /** Tokens written so far (buffered included). */
  get count(): number {
    return this.written + this.fill;
  }

  /** Appends tokens. @throws RangeError on a token outside [0, vocabSize); Error if closed */
  write(tokens: ArrayLike<number>): void {
    if (this.fd === undefined) throw new Error(`shard ${this.path}: write after close`);
    const V = this.vocabSize;
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i]!;
      if (!(t >= 0 && t < V) || !Number.isInteger(t)) throw new RangeError(`shard ${this.path}: token ${t} is outside the vocabulary [0, ${V})`);
      this.buf[this.fill++] = t;
      if (this.fill === this.buf.length) this.flush();
    }
  }

  private flush(): void {
    if (this.fill === 0 || this.fd === undefined) return;
    const bytes = new Uint8Array(this.buf.buffer, 0, this.fill * this.buf.BYTES_PER_ELEMENT);
    let off = 0;
    while (off < bytes.length) off += writeSync(this.fd, bytes, off, bytes.length - off);
    this.written += this.fill;
    this.fill = 0;
  }

  /** Flushes, writes the final header, fsyncs and renames into place. Returns the path and token count. */
  close(): { path: string; count: number } {
    if (this.fd === undefined) throw new Error(`shard ${this.path}: already closed`);
    this.flush();
    writeSync(this.fd, headerBytes(this.dtype, this.written, this.vocabSize), 0, SHARD_HEADER_BYTES, 0);
    fsyncSync(this.fd);
    closeSync(this.fd);
    this.fd = undefined;
    renameSync(this.path + '.tmp', this.path);
    return { path: this.path, count: this.written };
  }

  /** Discards the shard (closes and deletes the temp file). Safe to call more than once. */
  abort(): void {
    if (this.fd !== undefined) {
      closeSync(this.fd);
      this.fd = undefined;
      rmSync(this.path + '.tmp', { force: true });
    }
  }
}

/**
 * Writes a token stream as a numbered series of shards `<dir>/<prefix>_000000.bin`, `…_000001.bin`, …
 * each holding at most `shardTokens` tokens. At least one shard is written (possibly empty).
 */
export class ShardSetWriter {
  private cur: ShardWriter | undefined;
  private readonly done: { file: string; tokens: number }[] = [];
  private total = 0;

  /**
   * @param dir output folder (must exist)
   * @param prefix shard name prefix, e.g. `train`
   * @param vocabSize token bound (see {@link ShardWriter})
   * @param shardTokens max tokens per shard (default 100M)
   * @throws RangeError if shardTokens < 1
   */
  constructor(
    readonly dir: string,
    readonly prefix: string,
    readonly vocabSize: number,
    readonly shardTokens: number = DEFAULT_SHARD_TOKENS,
  ) {
    if (!Number.isInteger(shardTokens) || shardTokens < 1) throw new RangeError(`shardTokens must be a positive integer (got ${shardTokens})`);
  }

  /** Total tokens written. */
  get count(): number {
    return this.total;
  }

  private open(): ShardWriter {
    const name = `${this.prefix}_${String(this.done.length).padStart(6, '0')}.bin`;
    return new ShardWriter(join(this.dir, name), this.vocabSize);
  }

  /** Appends tokens, rolling over to a new shard when one is full. @throws RangeError on a bad token */
  write(tokens: ArrayLike<number>): void {
    let off = 0;
    while (off < tokens.length) {
      this.cur ??= this.open();
      const room = this.shardTokens - this.cur.count;
      const n = Math.min(room, tokens.length - off);
      this.cur.write(n === tokens.length && off === 0 ? tokens : Array.prototype.slice.call(tokens, off, off + n) as number[]);
      off += n;
      this.total += n;
      if (this.cur.count === this.shardTokens) this.finishCurrent();
    }
  }

  private finishCurrent(): void {
    if (!this.cur) return;
    const { path, count } = this.cur.close();
    this.done.push({ file: path.slice(this.dir.length + 1), tokens: count });
    this.cur = undefined;
  }

  /** Closes the last shard; returns the shard file names (relative to dir) and token counts. */
  close(): { file: string; tokens: number }[] {
    if (this.cur || this.done.length === 0) {
      this.cur ??= this.open();
      this.finishCurrent();
    }
    return this.done.slice();
  }

  /** Discards the shard being written (finished shards stay). */
  abort(): void {
    this.cur?.abort();
    this.cur = undefined;
  }
}

/** Header fields of a shard. */
export interface ShardHeader {
  version: number;
  dtype: TokenDtype;
  count: number;
  vocabSize: number;
}

/**
 * Reads a whole shard into memory.
 * @returns the header and the tokens (Uint16Array or Uint32Array of length `count`)
 * @throws Error naming the file and the problem (missing, bad magic, unsupported version/dtype,
 *   truncated or over-long file), suggesting to re-run `ssd prepare`
 */
export function readShard(path: string): { header: ShardHeader; tokens: TokenArray } {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new Error(`shard ${path} cannot be opened (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); ${HINT}`);
  }
  try {
    const size = fstatSync(fd).size;
    const h = Buffer.alloc(SHARD_HEADER_BYTES);
    const got = size >= SHARD_HEADER_BYTES ? readSync(fd, h, 0, SHARD_HEADER_BYTES, 0) : 0;
    if (got < SHARD_HEADER_BYTES) {
      throw new Error(`shard ${path} is truncated: ${size} bytes, shorter than the ${SHARD_HEADER_BYTES}-byte header; ${HINT}`);
    }
    if (!h.subarray(0, 8).equals(SHARD_MAGIC)) {
      throw new Error(`shard ${path} has a bad magic number (not an ssd token shard, or corrupted); ${HINT}`);
    }
    const version = h.readUInt32LE(8);
    if (version !== SHARD_VERSION) {
      throw new Error(`shard ${path} has format version ${version}, but this ssd reads version ${SHARD_VERSION}; ${HINT}`);
    }
    const code = h.readUInt32LE(12);
    const dtype: TokenDtype | undefined = code === 1 ? 'uint16' : code === 2 ? 'uint32' : undefined;
    if (!dtype) throw new Error(`shard ${path} has an unknown token dtype code ${code}; ${HINT}`);
    const count = Number(h.readBigUInt64LE(16));
    const vocabSize = h.readUInt32LE(24);
    const width = dtype === 'uint16' ? 2 : 4;
    const expected = SHARD_HEADER_BYTES + count * width;
    if (size < expected) {
      throw new Error(`shard ${path} is truncated: the header promises ${count} tokens (${expected} bytes) but the file has ${size} bytes; ${HINT}`);
    }
    if (size > expected) {
      throw new Error(`shard ${path} has ${size - expected} unexpected trailing bytes after ${count} tokens; ${HINT}`);
    }
    const tokens = dtype === 'uint16' ? new Uint16Array(count) : new Uint32Array(count);
    const bytes = new Uint8Array(tokens.buffer);
    let off = 0;
    while (off < bytes.length) {
      const n = readSync(fd, bytes, off, Math.min(bytes.length - off, 1 << 30), SHARD_HEADER_BYTES + off);
      if (n === 0) throw new Error(`shard ${path}: unexpected end of file; ${HINT}`);
      off += n;
    }
    return { header: { version, dtype, count, vocabSize }, tokens };
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes a complete shard from an in-memory token array (atomic). Convenience for tests/tools.
 * @throws RangeError on a token outside [0, vocabSize)
 */
export function writeShard(path: string, tokens: ArrayLike<number>, vocabSize: number): void {
  const w = new ShardWriter(path, vocabSize);
  try {
    w.write(tokens);
  } catch (e) {
    w.abort();
    throw e;
  }
  w.close();
}
