/** Shared checks and output allocation for ops. */
import type { Backend, DType } from '../../backend/contract.js';
import { empty } from '../create.js';
import type { Tensor } from '../tensor.js';

/** All tensors live on one backend and none is freed; returns that backend. */
export function backendOf(op: string, ...ts: Tensor[]): Backend {
  const b = ts[0]!.backend;
  for (const t of ts) {
    t.buf(op);
    if (t.backend !== b) throw new Error(`${op}: tensors on different backends (${b.name} and ${t.backend.name})`);
  }
  return b;
}

export function expectDtype(op: string, t: Tensor, dtype: DType, what = 'input'): void {
  if (t.dtype !== dtype) throw new Error(`${op}: ${what} must be ${dtype}, got ${t.dtype} (shape [${t.shape}])`);
}

export function expectRank(op: string, t: Tensor, rank: number, what = 'input'): void {
  if (t.rank !== rank) throw new Error(`${op}: ${what} must have rank ${rank}, got shape [${t.shape}]`);
}

/** A new zero-filled output tensor on `backend`. */
export function out(shape: readonly number[], backend: Backend, dtype: DType = 'f32'): Tensor {
  return empty(shape, backend, dtype);
}

export function fmt(t: Tensor): string {
  return `[${t.shape.join(', ')}]`;
}
