/**
 * safetensors (Hugging Face) reader and writer for f32 / bf16 / i32 tensors held on the host.
 * Format: u64 little-endian header length N, N bytes of JSON
 * `{ name: { dtype, shape, data_offsets: [begin, end] }, __metadata__?: { string: string } }`,
 * then the raw little-endian data. Small enough that a dependency would not pay for itself.
 */
import { readFileSync } from 'node:fs';

export interface HostTensor {
  dtype: 'F32' | 'BF16' | 'I32';
  shape: number[];
  /** Raw little-endian bytes. */
  data: Uint8Array;
}

const BYTES: Record<HostTensor['dtype'], number> = { F32: 4, BF16: 2, I32: 4 };

/** Serialises tensors (sorted by name) and optional string metadata into one buffer. */
export function encodeSafetensors(tensors: Map<string, HostTensor>, metadata: Record<string, string> = {}): Buffer {
  const names = [...tensors.keys()].sort();
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const n of names) {
    const t = tensors.get(n)!;
    const want = t.shape.reduce((a, b) => a * b, 1) * BYTES[t.dtype];
    if (t.data.byteLength !== want) throw new Error(`safetensors: ${n} has ${t.data.byteLength} bytes, shape [${t.shape}] needs ${want}`);
    header[n] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + want] };
    offset += want;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const head = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(8 + head.length + offset);
  out.writeBigUInt64LE(BigInt(head.length), 0);
  head.copy(out, 8);
  let p = 8 + head.length;
  for (const n of names) {
    const d = tensors.get(n)!.data;
    out.set(d, p);
    p += d.byteLength;
  }
  return out;
}

/**
 * Parses a safetensors buffer. Throws an Error naming `what` (e.g. the file path) when the buffer is
 * truncated, the header is not valid JSON, or a tensor's offsets fall outside the data.
 */
export function decodeSafetensors(buf: Uint8Array, what = 'safetensors data'): { tensors: Map<string, HostTensor>; metadata: Record<string, string> } {
  const fail = (why: string): never => {
    throw new Error(`${what}: not a valid safetensors file (${why}); the file is corrupt or truncated`);
  };
  if (buf.byteLength < 8) fail(`${buf.byteLength} bytes`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n = Number(view.getBigUint64(0, true));
  if (n > buf.byteLength - 8) fail(`header length ${n} exceeds the file`);
  let header: Record<string, { dtype: HostTensor['dtype']; shape: number[]; data_offsets: [number, number] }>;
  try {
    header = JSON.parse(Buffer.from(buf.buffer, buf.byteOffset + 8, n).toString('utf8'));
  } catch {
    return fail('header is not JSON');
  }
  const base = 8 + n, dataLen = buf.byteLength - base;
  const tensors = new Map<string, HostTensor>();
  let metadata: Record<string, string> = {};
  for (const [name, e] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = e as unknown as Record<string, string>;
      continue;
    }
    if (!(e.dtype in BYTES)) fail(`tensor ${name} has unsupported dtype ${e.dtype}`);
    const [b, en] = e.data_offsets;
    const want = e.shape.reduce((a, c) => a * c, 1) * BYTES[e.dtype];
    if (!(b >= 0 && en <= dataLen && en - b === want)) fail(`tensor ${name} offsets [${b}, ${en}] do not fit ${dataLen} data bytes`);
    // Copy so the data is aligned for typed-array views.
    tensors.set(name, { dtype: e.dtype, shape: e.shape, data: buf.slice(base + b, base + en) });
  }
  return { tensors, metadata };
}

/** Reads and parses a safetensors file. */
export function readSafetensors(path: string): ReturnType<typeof decodeSafetensors> {
  return decodeSafetensors(readFileSync(path), path);
}

/** Host f32 data as a safetensors entry. */
export function f32Entry(data: Float32Array, shape: readonly number[]): HostTensor {
  return { dtype: 'F32', shape: [...shape], data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}

/** The f32 values of an entry (throws on another dtype). */
export function entryF32(t: HostTensor, name: string): Float32Array {
  if (t.dtype !== 'F32') throw new Error(`safetensors: ${name} is ${t.dtype}, expected F32`);
  return new Float32Array(t.data.buffer, t.data.byteOffset, t.data.byteLength / 4);
}
