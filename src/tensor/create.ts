/**
 * Tensor creation on a backend: from host data, filled with a constant, or uninitialised (zeros).
 * The default backend comes from `device.ts`.
 */
import type { Backend, DType } from '../backend/contract.js';
import { defaultBackend } from './device.js';
import { Storage, Tensor, checkShape, shapeSize } from './tensor.js';

/** A new zero-filled tensor. */
export function empty(shape: readonly number[], backend: Backend = defaultBackend(), dtype: DType = 'f32'): Tensor {
  const s = checkShape(shape, 'empty');
  return new Tensor(new Storage(backend, backend.alloc(dtype, shapeSize(s))), s, dtype);
}

/** A new tensor filled with `value`. */
export function full(shape: readonly number[], value: number, backend: Backend = defaultBackend(), dtype: DType = 'f32'): Tensor {
  const t = empty(shape, backend, dtype);
  if (value !== 0) backend.fill(t.buf('full'), value);
  return t;
}

/**
 * A new tensor holding `data` (row-major, length = product of shape).
 * Throws if the length does not match the shape or an i32 value is not an integer.
 */
export function tensor(data: ArrayLike<number>, shape: readonly number[], opts: { dtype?: DType; backend?: Backend } = {}): Tensor {
  const dtype = opts.dtype ?? 'f32';
  const s = checkShape(shape, 'tensor');
  if (data.length !== shapeSize(s)) {
    throw new Error(`tensor: ${data.length} values do not fill shape [${s}] (${shapeSize(s)} elements)`);
  }
  if (dtype === 'i32') {
    for (let i = 0; i < data.length; i++) {
      if (!Number.isInteger(data[i])) throw new Error(`tensor: i32 value ${data[i]} at ${i} is not an integer`);
    }
  }
  const t = empty(s, opts.backend, dtype);
  t.backend.upload(t.buf('tensor'), data);
  return t;
}

/** A parameter: a long-lived tensor that requires gradients, with a stable name. */
export function parameter(name: string, data: ArrayLike<number>, shape: readonly number[], backend?: Backend): Tensor {
  const t = tensor(data, shape, backend ? { backend } : {}).keep();
  t.requiresGrad = true;
  t.name = name;
  return t;
}
