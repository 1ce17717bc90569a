/** Shape ops: reshape (a view), permute/transpose, slice, concat, broadcasting helpers. */
import { record } from '../autograd.js';
import { Tensor, contiguousStrides, shapeSize } from '../tensor.js';
import { backendOf, fmt, out } from './util.js';

/** x as a view that gradients do not flow through (stopgrad): the same storage, no graph. */
export function detach(x: Tensor): Tensor {
  backendOf('detach', x);
  x.storage.refs++;
  return new Tensor(x.storage, x.shape, x.dtype);
}

/**
 * A view of `x` with a new shape (same storage, no copy). One dimension may be -1 (inferred).
 * Throws if the sizes do not match.
 */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  backendOf('reshape', x);
  const s = [...shape];
  const inferred = s.indexOf(-1);
  if (inferred >= 0) {
    const known = s.reduce((a, d, i) => (i === inferred ? a : a * d), 1);
    if (known === 0 || x.size % known !== 0) throw new Error(`reshape: cannot infer -1 in [${shape}] for ${fmt(x)}`);
    s[inferred] = x.size / known;
  }
  if (shapeSize(s) !== x.size || s.some((d) => !Number.isInteger(d) || d < 0)) {
    throw new Error(`reshape: cannot view ${fmt(x)} (${x.size} elements) as [${shape}]`);
  }
  x.storage.refs++;
  const y = new Tensor(x.storage, s, x.dtype);
  return record(y, 'reshape', [x], (g) => [reshape(g, x.shape)]);
}

/** Permutes axes: y.shape[i] = x.shape[perm[i]] (a contiguous copy). */
export function permute(x: Tensor, perm: readonly number[]): Tensor {
  const b = backendOf('permute', x);
  if (perm.length !== x.rank || [...perm].sort().some((p, i) => p !== i)) {
    throw new Error(`permute: [${perm}] is not a permutation of the ${x.rank} axes of ${fmt(x)}`);
  }
  const xs = contiguousStrides(x.shape);
  const shape = perm.map((p) => x.shape[p]!);
  const y = out(shape, b, x.dtype);
  b.copyStrided(x.buf('permute'), 0, perm.map((p) => xs[p]!), y.buf('permute'), 0, contiguousStrides(shape), shape, false);
  const inverse = new Array<number>(perm.length);
  perm.forEach((p, i) => (inverse[p] = i));
  return record(y, 'permute', [x], (g) => [permute(g, inverse)]);
}

/** Swaps two axes (negative axes count from the end). */
export function transpose(x: Tensor, a = -2, b = -1): Tensor {
  const perm = x.shape.map((_, i) => i);
  const i = normAxis(a, x.rank, 'transpose'), j = normAxis(b, x.rank, 'transpose');
  [perm[i], perm[j]] = [perm[j]!, perm[i]!];
  return permute(x, perm);
}

/** x[..., start:end, ...] along `axis` (a contiguous copy). */
export function slice(x: Tensor, axis: number, start: number, end: number): Tensor {
  const b = backendOf('slice', x);
  const ax = normAxis(axis, x.rank, 'slice');
  if (!(0 <= start && start <= end && end <= x.shape[ax]!)) {
    throw new Error(`slice: range [${start}, ${end}) out of bounds for axis ${ax} of ${fmt(x)}`);
  }
  const shape = [...x.shape];
  shape[ax] = end - start;
  const xs = contiguousStrides(x.shape);
  const y = out(shape, b, x.dtype);
  b.copyStrided(x.buf('slice'), start * xs[ax]!, xs, y.buf('slice'), 0, contiguousStrides(shape), shape, false);
  return record(y, 'slice', [x], (g) => {
    const gx = out(x.shape, b, g.dtype);
    b.copyStrided(g.buf('slice'), 0, contiguousStrides(shape), gx.buf('slice'), start * xs[ax]!, xs, shape, false);
    return [gx];
  });
}

/** Concatenates tensors along `axis`; other axes must agree. */
export function concat(xs: Tensor[], axis: number): Tensor {
  if (xs.length === 0) throw new Error('concat: no tensors');
  const b = backendOf('concat', ...xs);
  const ax = normAxis(axis, xs[0]!.rank, 'concat');
  for (const t of xs) {
    if (t.rank !== xs[0]!.rank || t.shape.some((d, i) => i !== ax && d !== xs[0]!.shape[i])) {
      throw new Error(`concat: shapes ${xs.map(fmt).join(', ')} differ outside axis ${ax}`);
    }
  }
  const shape = [...xs[0]!.shape];
  shape[ax] = xs.reduce((a, t) => a + t.shape[ax]!, 0);
  const y = out(shape, b, xs[0]!.dtype);
  const ys = contiguousStrides(shape);
  let offset = 0;
  for (const t of xs) {
    b.copyStrided(t.buf('concat'), 0, contiguousStrides(t.shape), y.buf('concat'), offset * ys[ax]!, ys, [...t.shape], false);
    offset += t.shape[ax]!;
  }
  return record(y, 'concat', xs, (g) => {
    let o = 0;
    return xs.map((t) => {
      const piece = slice(g, ax, o, o + t.shape[ax]!);
      o += t.shape[ax]!;
      return piece;
    });
  });
}

export function normAxis(axis: number, rank: number, op: string): number {
  const a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) throw new Error(`${op}: axis ${axis} out of range for rank ${rank}`);
  return a;
}

/** The numpy broadcast of two shapes; throws naming the op if they are incompatible. */
export function broadcastShapes(a: readonly number[], b: readonly number[], op: string): number[] {
  const n = Math.max(a.length, b.length);
  const s = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const da = a[a.length - n + i] ?? 1, db = b[b.length - n + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) throw new Error(`${op}: shapes [${a}] and [${b}] cannot be broadcast`);
    s[i] = da === 1 ? db : da;
  }
  return s;
}

/** Strides to read a tensor of `shape` as if it had the (broadcast) shape `to` (0 on broadcast axes). */
export function broadcastStrides(shape: readonly number[], to: readonly number[]): number[] {
  const st = contiguousStrides(shape);
  const off = to.length - shape.length;
  return to.map((d, i) => (i < off || (shape[i - off] === 1 && d !== 1) ? 0 : st[i - off]!));
}
