/**
 * MoE primitives: top-k over the last axis, the token permutation by expert, gather rows by index,
 * scatter-add rows, the router gate, and the bit-packed activation pattern that SSD's monitor compares
 * between checks.
 */
import { record } from '../autograd.js';
import { Tensor } from '../tensor.js';
import { backendOf, expectDtype, expectRank, fmt, out } from './util.js';

/**
 * Top-k over the last axis: x (rows, cols) -> values (rows, k) f32 and indices (rows, k) i32, sorted by
 * value descending (ties: lower index first). Gradients flow to x through `values` only.
 * Throws if k is outside [1, cols].
 */
export function topk(x: Tensor, k: number): { values: Tensor; indices: Tensor } {
  const b = backendOf('topk', x);
  expectRank('topk', x, 2);
  expectDtype('topk', x, 'f32');
  const [rows, cols] = x.shape as [number, number];
  if (!Number.isInteger(k) || k < 1 || k > cols) throw new Error(`topk: k = ${k} is outside [1, ${cols}] for ${fmt(x)}`);
  const values = out([rows, k], b), indices = out([rows, k], b, 'i32');
  b.topk(x.buf('topk'), values.buf('topk'), indices.buf('topk'), rows, cols, k);
  record(values, 'topk', [x], (g) => {
    const gx = out(x.shape, b);
    b.topkBackward(g.buf('topk'), indices.buf('topk'), gx.buf('topk'), rows, cols, k);
    return [gx];
  });
  return { values, indices };
}

/** The (N, k) expert choices grouped by expert (see `expertGroups`); all i32, on the backend. */
export interface ExpertGrouping {
  /** Row offsets of each expert's segment in the grouped order, (E + 1). */
  offsets: Tensor;
  /** For each grouped row: its token (N·k). */
  rowToken: Tensor;
  /** For each grouped row: its (token, slot) position n·k + j (N·k). */
  rowSlot: Tensor;
  /** For each grouped row: its expert, non-decreasing (N·k). */
  rowExpert: Tensor;
}

/**
 * Groups the expert choices `experts` (N, k) i32 (as `topk` returns them) of E experts by expert, with a
 * stable counting sort (token order within an expert), on the backend: no host round trip. Not
 * differentiable. Throws if experts is not a 2-D i32 tensor or, on the backend, if an entry is outside
 * [0, E).
 */
export function expertGroups(experts: Tensor, nExpert: number): ExpertGrouping {
  const b = backendOf('expertGroups', experts);
  expectRank('expertGroups', experts, 2);
  expectDtype('expertGroups', experts, 'i32');
  if (!Number.isInteger(nExpert) || nExpert < 1) throw new Error(`expertGroups: n_expert = ${nExpert} is not a positive integer`);
  const [N, k] = experts.shape as [number, number];
  const g: ExpertGrouping = {
    offsets: out([nExpert + 1], b, 'i32'), rowToken: out([N * k], b, 'i32'), rowSlot: out([N * k], b, 'i32'),
    rowExpert: out([N * k], b, 'i32'),
  };
  b.expertGroups(experts.buf('expertGroups'), g.offsets.buf('expertGroups'), g.rowToken.buf('expertGroups'),
    g.rowSlot.buf('expertGroups'), g.rowExpert.buf('expertGroups'), N, k, nExpert);
  return g;
}

/** out[i] = x[idx[i]]: x (n, d), idx i32 (m) -> (m, d). Throws on an index outside [0, n). */
export function gatherRows(x: Tensor, idx: Tensor): Tensor {
  const b = backendOf('gatherRows', x, idx);
  expectRank('gatherRows', x, 2);
  expectDtype('gatherRows', x, 'f32');
  expectDtype('gatherRows', idx, 'i32', 'idx');
  const [n, d] = x.shape as [number, number], m = idx.size;
  const y = out([m, d], b);
  b.gatherRows(x.buf('gatherRows'), idx.buf('gatherRows'), y.buf('gatherRows'), m, n, d);
  return record(y, 'gatherRows', [x, idx], (g) => {
    const gx = out(x.shape, b);
    b.scatterAddRows(g.buf('gatherRows'), idx.buf('gatherRows'), gx.buf('gatherRows'), m, n, d);
    return [gx, null];
  });
}

/** out (n, d) = zeros, then out[idx[i]] += src[i]: src (m, d), idx i32 (m). */
export function scatterAddRows(src: Tensor, idx: Tensor, n: number): Tensor {
  const b = backendOf('scatterAddRows', src, idx);
  expectRank('scatterAddRows', src, 2);
  expectDtype('scatterAddRows', src, 'f32');
  expectDtype('scatterAddRows', idx, 'i32', 'idx');
  const [m, d] = src.shape as [number, number];
  if (idx.size !== m) throw new Error(`scatterAddRows: idx ${fmt(idx)} must have ${m} entries for src ${fmt(src)}`);
  const y = out([n, d], b);
  b.scatterAddRows(src.buf('scatterAddRows'), idx.buf('scatterAddRows'), y.buf('scatterAddRows'), m, n, d);
  return record(y, 'scatterAddRows', [src, idx], (g) => {
    const gs = out(src.shape, b);
    b.gatherRows(g.buf('scatterAddRows'), idx.buf('scatterAddRows'), gs.buf('scatterAddRows'), m, n, d);
    return [gs, null];
  });
}

/**
 * The straight-through router weight of MoEfication (SSD method page §4.5) on expert rows:
 * out[r] = h[r] · w[slot(r)], w = 1 + s − stopgrad(s), which is exactly h[r] in value (a view of h's
 * storage: nothing is computed); the gradient passes to h unchanged and g_s[slot(r)] = Σ g[r] · h[r]
 * reaches the router. Applied to the expert activations (M, d) instead of the (N, d_model) outputs:
 * the outputs are linear in them, and d is the expert size. h (M, d) in grouped order; s (N, k); rowSlot i32 (M) = n·k + j of each row.
 */
export function routerGate(h: Tensor, s: Tensor, rowSlot: Tensor): Tensor {
  const b = backendOf('routerGate', h, s, rowSlot);
  expectRank('routerGate', h, 2, 'h');
  expectRank('routerGate', s, 2, 's');
  expectDtype('routerGate', h, 'f32', 'h');
  expectDtype('routerGate', s, 'f32', 's');
  expectDtype('routerGate', rowSlot, 'i32', 'rowSlot');
  const [M, d] = h.shape as [number, number];
  if (rowSlot.size !== M) throw new Error(`routerGate: ${M} rows but ${rowSlot.size} slots`);
  h.storage.refs++;
  const y = new Tensor(h.storage, [M, d], 'f32'); // (M, d): h itself
  return record(y, 'routerGate', [h, s], (g) => {
    const dots = out([M, 1], b);
    b.rowDot(g.buf('routerGate'), h.buf('routerGate'), dots.buf('routerGate'), M, d);
    return [g, gateGrad('routerGate', dots, s, rowSlot)];
  });
}

/**
 * The router gate's gradient from its row dots (for op `op`): g_s[slot(r)] = dots[r]. dots (M, 1) f32
 * from Σ_c g[r, c] · h[r, c]; s (N, k); rowSlot i32 (M). Returns a tensor shaped like s; throws (from
 * the backend) on a slot outside s.
 */
export function gateGrad(op: string, dots: Tensor, s: Tensor, rowSlot: Tensor): Tensor {
  const b = backendOf(op, dots, s, rowSlot), gs = out(s.shape, b);
  b.scatterAddRows(dots.buf(op), rowSlot.buf(op), gs.buf(op), dots.size, s.size, 1);
  return gs;
}

/**
 * Bit-packed activation pattern: x (rows, cols) f32 -> (rows, ceil(cols / 32)) i32 where bit b of word w
 * of row r is set iff x[r, 32w + b] > 0 (the active-neuron set of a token; SSD method page §3). Not
 * differentiable. Throws if x is not a 2-D f32 tensor.
 */
export function activationBits(x: Tensor): Tensor {
  const b = backendOf('activationBits', x);
  expectRank('activationBits', x, 2);
  expectDtype('activationBits', x, 'f32');
  const [rows, cols] = x.shape as [number, number];
  const y = out([rows, Math.ceil(cols / 32)], b, 'i32');
  b.activationBits(x.buf('activationBits'), y.buf('activationBits'), rows, cols);
  return y;
}
