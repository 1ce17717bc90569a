/** Elementwise ops: broadcasting arithmetic, activations, affine maps, dropout, casts. */
import type { BinaryOp, DType, UnaryOp } from '../../backend/contract.js';
import { record } from '../autograd.js';
import { Tensor, contiguousStrides } from '../tensor.js';
import { sumTo } from './reduce.js';
import { broadcastShapes, broadcastStrides } from './shape.js';
import { backendOf, expectDtype, out } from './util.js';

function binaryOp(op: BinaryOp, a: Tensor, b: Tensor): Tensor {
  const be = backendOf(op, a, b);
  expectDtype(op, a, 'f32', 'left operand');
  expectDtype(op, b, 'f32', 'right operand');
  const shape = broadcastShapes(a.shape, b.shape, op);
  const y = out(shape, be);
  be.binary(op, a.buf(op), broadcastStrides(a.shape, shape), b.buf(op), broadcastStrides(b.shape, shape), y.buf(op), shape);
  return y;
}

/** a + b with numpy broadcasting. */
export function add(a: Tensor, b: Tensor): Tensor {
  return record(binaryOp('add', a, b), 'add', [a, b], (g) => [sumTo(g, a.shape), sumTo(g, b.shape)]);
}

/** a − b with numpy broadcasting. */
export function sub(a: Tensor, b: Tensor): Tensor {
  return record(binaryOp('sub', a, b), 'sub', [a, b], (g) => [sumTo(g, a.shape), sumTo(affine(g, -1, 0), b.shape)]);
}

/** a · b (elementwise) with numpy broadcasting. */
export function mul(a: Tensor, b: Tensor): Tensor {
  return record(binaryOp('mul', a, b), 'mul', [a, b], (g) => [sumTo(binaryOp('mul', g, b), a.shape), sumTo(binaryOp('mul', g, a), b.shape)]);
}

/** a / b (elementwise) with numpy broadcasting. */
export function div(a: Tensor, b: Tensor): Tensor {
  const y = binaryOp('div', a, b);
  return record(y, 'div', [a, b], (g) => {
    const ga = binaryOp('div', g, b);
    // d(a/b)/db = −(a/b)/b
    const gb = affine(binaryOp('mul', ga, binaryOp('div', a, b)), -1, 0);
    return [sumTo(ga, a.shape), sumTo(gb, b.shape)];
  });
}

/** x · scale + shift. */
export function affine(x: Tensor, scale: number, shift: number): Tensor {
  const b = backendOf('affine', x);
  expectDtype('affine', x, 'f32');
  const y = out(x.shape, b);
  b.affine(x.buf('affine'), y.buf('affine'), scale, shift);
  return record(y, 'affine', [x], (g) => [affine(g, scale, 0)]);
}

/** x · s. */
export function scale(x: Tensor, s: number): Tensor {
  return affine(x, s, 0);
}

function unaryOp(op: UnaryOp, x: Tensor): Tensor {
  const b = backendOf(op, x);
  expectDtype(op, x, 'f32');
  const y = out(x.shape, b);
  b.unary(op, x.buf(op), y.buf(op));
  return record(y, op, [x], (g) => {
    if (op === 'neg') return [affine(g, -1, 0)];
    const gx = out(x.shape, b);
    b.unaryBackward(op, x.buf(op), g.buf(op), gx.buf(op));
    return [gx];
  });
}

/** max(x, 0). */
export const relu = (x: Tensor): Tensor => unaryOp('relu', x);
/** GELU, tanh approximation (GPT-2). */
export const gelu = (x: Tensor): Tensor => unaryOp('gelu', x);
export const neg = (x: Tensor): Tensor => unaryOp('neg', x);
export const exp = (x: Tensor): Tensor => unaryOp('exp', x);
export const log = (x: Tensor): Tensor => unaryOp('log', x);
export const sqrt = (x: Tensor): Tensor => unaryOp('sqrt', x);
export const square = (x: Tensor): Tensor => unaryOp('square', x);
export const tanh = (x: Tensor): Tensor => unaryOp('tanh', x);

/**
 * Inverted dropout: zeroes each element with probability p and scales the rest by 1/(1 − p).
 * The mask is a pure function of (seed, element index), identical on every backend. p in [0, 1).
 */
export function dropout(x: Tensor, p: number, seed: number): Tensor {
  if (!(p >= 0 && p < 1)) throw new Error(`dropout: p must be in [0, 1), got ${p}`);
  if (p === 0) return x;
  const b = backendOf('dropout', x);
  expectDtype('dropout', x, 'f32');
  const y = out(x.shape, b);
  b.dropout(x.buf('dropout'), y.buf('dropout'), p, seed >>> 0);
  return record(y, 'dropout', [x], (g) => {
    const gx = out(x.shape, b);
    b.dropoutBackward(g.buf('dropout'), gx.buf('dropout'), p, seed >>> 0);
    return [gx];
  });
}

/** Converts between f32 and bf16 (round to nearest even). The gradient is cast back. */
export function cast(x: Tensor, dtype: DType): Tensor {
  const b = backendOf('cast', x);
  if (x.dtype === 'i32' || dtype === 'i32') throw new Error(`cast: only f32 <-> bf16 is supported, got ${x.dtype} -> ${dtype}`);
  const y = out(x.shape, b, dtype);
  b.cast(x.buf('cast'), y.buf('cast'));
  return record(y, 'cast', [x], (g) => [cast(g, x.dtype)]);
}

/** Broadcasts x to `shape` (a contiguous copy). */
export function expandTo(x: Tensor, shape: readonly number[]): Tensor {
  const b = backendOf('expand', x);
  const s = broadcastShapes(x.shape, shape, 'expand');
  if (s.length !== shape.length || s.some((d, i) => d !== shape[i])) {
    throw new Error(`expand: [${x.shape}] cannot be broadcast to [${shape}]`);
  }
  const y = out(shape, b, x.dtype);
  b.copyStrided(x.buf('expand'), 0, broadcastStrides(x.shape, shape), y.buf('expand'), 0, contiguousStrides(shape), [...shape], false);
  return record(y, 'expand', [x], (g) => [sumTo(g, x.shape)]);
}
