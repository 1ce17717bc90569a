/** Reductions: sum over axes, mean, and sumTo (the backward of broadcasting). */
import { record } from '../autograd.js';
import { Tensor, shapeEq, shapeSize } from '../tensor.js';
import { affine, expandTo } from './elementwise.js';
import { reshape, normAxis } from './shape.js';
import { backendOf, expectDtype, fmt, out } from './util.js';

/**
 * Sums over one axis (keepDims keeps it with size 1), or over all elements when axis is undefined
 * (a 1-element tensor of shape []).
 */
export function sum(x: Tensor, axis?: number, keepDims = false): Tensor {
  const b = backendOf('sum', x);
  expectDtype('sum', x, 'f32');
  if (axis === undefined) {
    const y = out([], b);
    b.reduceSum(x.buf('sum'), y.buf('sum'), 1, x.size, 1);
    return record(y, 'sum', [x], (g) => [expandTo(g, x.shape)]);
  }
  const ax = normAxis(axis, x.rank, 'sum');
  const outer = shapeSize(x.shape.slice(0, ax)), mid = x.shape[ax]!, inner = shapeSize(x.shape.slice(ax + 1));
  const kept = x.shape.map((d, i) => (i === ax ? 1 : d));
  const y = out(keepDims ? kept : x.shape.filter((_, i) => i !== ax), b);
  b.reduceSum(x.buf('sum'), y.buf('sum'), outer, mid, inner);
  return record(y, 'sum', [x], (g) => [expandTo(reshape(g, kept), x.shape)]);
}

/** Mean over one axis or all elements. */
export function mean(x: Tensor, axis?: number, keepDims = false): Tensor {
  const n = axis === undefined ? x.size : x.shape[normAxis(axis, x.rank, 'mean')]!;
  return affine(sum(x, axis, keepDims), 1 / n, 0);
}

/**
 * Sums a tensor down to a shape it was broadcast from (`to` must broadcast to x.shape).
 * Used by the backward of broadcasting ops.
 */
export function sumTo(x: Tensor, to: readonly number[]): Tensor {
  if (shapeEq(x.shape, to)) return x;
  const lead = x.rank - to.length;
  if (lead < 0) throw new Error(`sumTo: cannot reduce ${fmt(x)} to [${to}]`);
  let y = x;
  for (let i = 0; i < lead; i++) y = sum(y, 0);
  for (let i = 0; i < to.length; i++) {
    if (to[i] === 1 && y.shape[i] !== 1) y = sum(y, i, true);
    else if (to[i] !== y.shape[i]) throw new Error(`sumTo: cannot reduce ${fmt(x)} to [${to}]`);
  }
  return y;
}
