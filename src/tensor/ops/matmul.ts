/** Matrix products: batched matmul with transposes and the grouped (per-expert segment) matmul. */
import type { GroupedMatmulArgs } from '../../backend/contract.js';
import { needsGrad, record } from '../autograd.js';
import type { Tensor } from '../tensor.js';
import { shapeSize } from '../tensor.js';
import { gateGrad } from './moe.js';
import { sumTo } from './reduce.js';
import { reshape } from './shape.js';
import { backendOf, expectDtype, expectRank, fmt, out } from './util.js';

export interface MatmulOpts {
  /** Use aᵀ for the last two axes of a. */
  transA?: boolean;
  /** Use bᵀ for the last two axes of b (as in `x · Wᵀ` for a Linear weight W of shape (out, in)). */
  transB?: boolean;
  /**
   * The output only feeds cross-entropy or products: a backend may keep it at bf16 precision
   * (MatmulArgs.bf16Out; the output layer's logits, as autocast computes them).
   */
  bf16Out?: boolean;
}

/**
 * Batched matrix product over the last two axes: op(a) (..., m, k) · op(b) (..., k, n) -> (..., m, n).
 * Leading (batch) axes broadcast when one side has them all equal to 1 or lacks them. A rank-2 `b`
 * with a non-transposed `a` is computed as one GEMM over all rows of `a`.
 * Throws on rank < 2, dtype other than f32, or mismatched inner sizes.
 */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOpts = {}): Tensor {
  const tA = opts.transA ?? false, tB = opts.transB ?? false;
  backendOf('matmul', a, b);
  expectDtype('matmul', a, 'f32', 'a');
  expectDtype('matmul', b, 'f32', 'b');
  if (a.rank < 2 || b.rank < 2) throw new Error(`matmul: operands need rank >= 2, got ${fmt(a)} and ${fmt(b)}`);
  const [am, ak] = tA ? [a.shape[a.rank - 1]!, a.shape[a.rank - 2]!] : [a.shape[a.rank - 2]!, a.shape[a.rank - 1]!];
  const [bk, bn] = tB ? [b.shape[b.rank - 1]!, b.shape[b.rank - 2]!] : [b.shape[b.rank - 2]!, b.shape[b.rank - 1]!];
  if (ak !== bk) {
    throw new Error(`matmul: inner sizes differ: ${fmt(a)}${tA ? 'ᵀ' : ''} · ${fmt(b)}${tB ? 'ᵀ' : ''} (${ak} vs ${bk})`);
  }
  const aLead = a.shape.slice(0, -2), bLead = b.shape.slice(0, -2);
  if (b.rank === 2 && !tA && a.rank > 2) {
    // (..., m, k) -> (rows, k): one GEMM for all batch rows.
    const y2 = bmm(reshape(a, [1, shapeSize(aLead) * am, ak]), reshape(b, [1, ...b.shape]), false, tB, opts.bf16Out);
    return reshape(y2, [...aLead, am, bn]);
  }
  const na = shapeSize(aLead), nb = shapeSize(bLead);
  if (na !== nb && na !== 1 && nb !== 1) {
    throw new Error(`matmul: batch axes of ${fmt(a)} and ${fmt(b)} do not broadcast`);
  }
  const lead = na >= nb ? aLead : bLead;
  const y = bmm(reshape(a, [na, a.shape[a.rank - 2]!, a.shape[a.rank - 1]!]),
    reshape(b, [nb, b.shape[b.rank - 2]!, b.shape[b.rank - 1]!]), tA, tB, opts.bf16Out);
  return reshape(y, [...lead, am, bn]);
}

export interface LinearOpts {
  /** Apply ReLU to the output (fused into the product with the bias). */
  relu?: boolean;
  /**
   * The output only feeds products, attention or ReLU's backward: a backend may keep it at bf16
   * precision (MatmulArgs.bf16Out, autocast's activations), so its values may be bf16-rounded.
   */
  bf16Out?: boolean;
}

/**
 * A linear layer with its epilogue fused into one product (MatmulArgs.bias / relu; cuBLASLt epilogues
 * on cuda): y = act(x · Wᵀ + b). x (..., in), w (out, in), b (out) or null -> y (..., out); act is
 * ReLU with `relu`, else the identity. Only y is kept for the backward pass: ReLU's mask is y > 0,
 * which holds exactly where x · Wᵀ + b > 0; the bias gradient comes out of the weight gradient's
 * product (MatmulArgs.biasGrad). Throws on dtypes other than f32 or mismatched shapes.
 */
export function linear(x: Tensor, w: Tensor, b: Tensor | null, opts: LinearOpts = {}): Tensor {
  const be = backendOf('linear', x, w, ...(b ? [b] : []));
  expectDtype('linear', x, 'f32', 'x');
  expectDtype('linear', w, 'f32', 'w');
  if (b) expectDtype('linear', b, 'f32', 'b');
  if (x.rank < 1 || w.rank !== 2) throw new Error(`linear: x needs rank >= 1 and w rank 2, got ${fmt(x)} and ${fmt(w)}`);
  const [nOut, nIn] = w.shape as [number, number];
  if (x.shape[x.rank - 1] !== nIn) throw new Error(`linear: x ${fmt(x)} has ${x.shape[x.rank - 1]} features, w ${fmt(w)} takes ${nIn}`);
  if (b && (b.rank !== 1 || b.shape[0] !== nOut)) throw new Error(`linear: b ${fmt(b)} must be (${nOut})`);
  const rows = shapeSize(x.shape.slice(0, -1)), relu = opts.relu ?? false;
  const y = out([...x.shape.slice(0, -1), nOut], be);
  be.matmul(x.buf('linear'), w.buf('linear'), y.buf('linear'), {
    batch: 1, m: rows, n: nOut, k: nIn, transA: false, transB: true, strideA: 0, strideB: 0, strideC: rows * nOut,
    alpha: 1, beta: 0, bias: b?.buf('linear'), relu, bf16Out: opts.bf16Out ?? false,
  });
  return record(y, 'linear', b ? [x, w, b] : [x, w], (g) => {
    const gp = relu ? reluGrad(y, g) : g; // (..., out): the gradient before the activation
    const g2 = reshape(gp, [rows, nOut]); // (rows, out)
    const gx = needsGrad(x) ? reshape(matmul(g2, w), x.shape) : null;
    const gb = b && needsGrad(b) ? out(b.shape, be) : null;
    let gw: Tensor | null = null;
    if (needsGrad(w)) {
      // gW = gᵀ · x (out, in), and the bias gradient Σ_rows g beside it (the product's biasGrad epilogue).
      gw = out(w.shape, be);
      be.matmul(g2.buf('linear'), reshape(x, [rows, nIn]).buf('linear'), gw.buf('linear'), {
        batch: 1, m: nOut, n: nIn, k: rows, transA: true, transB: false, strideA: 0, strideB: 0, strideC: nOut * nIn,
        alpha: 1, beta: 0, biasGrad: gb?.buf('linear'),
      });
    } else if (gb) {
      be.reduceSum(g2.buf('linear'), gb.buf('linear'), 1, rows, nOut);
    }
    return b ? [gx, gw, gb] : [gx, gw];
  });
}

/** The gradient before a fused ReLU from its output y and the gradient g after it: g where y > 0, else 0. */
function reluGrad(y: Tensor, g: Tensor): Tensor {
  const be = backendOf('relu backward', y, g), gx = out(y.shape, be);
  be.unaryBackward('relu', y.buf('relu backward'), g.buf('relu backward'), gx.buf('relu backward'));
  return gx;
}

/** Rank-3 batched product; batch sizes equal or one of them 1 (broadcast); bf16Out: MatmulOpts.bf16Out. */
function bmm(a: Tensor, b: Tensor, tA: boolean, tB: boolean, bf16Out = false): Tensor {
  const be = backendOf('matmul', a, b);
  const [na, nb] = [a.shape[0]!, b.shape[0]!];
  const batch = Math.max(na, nb);
  const m = tA ? a.shape[2]! : a.shape[1]!, k = tA ? a.shape[1]! : a.shape[2]!;
  const n = tB ? b.shape[1]! : b.shape[2]!;
  const y = out([batch, m, n], be);
  be.matmul(a.buf('matmul'), b.buf('matmul'), y.buf('matmul'), {
    batch, m, n, k, transA: tA, transB: tB,
    strideA: na === 1 ? 0 : m * k, strideB: nb === 1 ? 0 : k * n, strideC: m * n, alpha: 1, beta: 0, bf16Out,
  });
  return record(y, 'matmul', [a, b], (g) => {
    // Gradients of C = op(A)·op(B) for each transpose case (only for operands that need one, e.g. not
    // for the detached input of an MoE router), then summed over broadcast batches.
    const ga = !needsGrad(a) ? null : !tA ? bmm(g, b, false, !tB) : bmm(b, g, tB, true);
    const gb = !needsGrad(b) ? null : !tB ? bmm(a, g, !tA, false) : bmm(g, a, true, tA);
    return [ga && reduceBatch(ga, a), gb && reduceBatch(gb, b)];
  });
}

/** Sums a (batch, r, c) gradient over the batch when the operand was broadcast (batch 1). */
function reduceBatch(g: Tensor, operand: Tensor): Tensor {
  return operand.shape[0] === 1 && g.shape[0] !== 1 ? sumTo(g, operand.shape) : g;
}

/**
 * Where each expert's matrix lives inside a weight tensor: op(w_e) is (k, n); w_e is stored row-major
 * (n, k) when `transB`, else (k, n), starting at element e·stride with leading dimension `ld`.
 * Example: experts as row blocks of W_in (d_ff, d_model): { k: d_model, n: s, stride: s·d_model,
 * ld: d_model, transB: true }; as column blocks of W_out (d_model, d_ff): { k: s, n: d_model, stride: s,
 * ld: d_ff, transB: true }.
 */
export interface ExpertLayout {
  nExpert: number;
  k: number;
  n: number;
  stride: number;
  ld: number;
  transB: boolean;
}

/**
 * Token rows of a grouped product (the MoE gather and scatter fused into it, MegaBlocks-style).
 * `gather`: i32 (total): product row r reads row gather[r] of x, which may have any number of rows.
 * `scatter`: i32 (total): product row r is added to output row scatter[r]; the output has `outRows`
 * rows (rows several product rows hit get their sum, in product-row order).
 */
export interface SegmentRows {
  gather?: Tensor;
  scatter?: Tensor;
  outRows?: number;
}

/**
 * The epilogue of an expert product (GroupedMatmulArgs.bias / relu): expert e's bias row added to its
 * product rows, then ReLU — the MoE's first product with its bias and activation fused in.
 */
export interface SegmentEpilogue {
  /** (E, n): expert e's bias. Needs `rowExpert`. */
  bias?: Tensor;
  /**
   * i32 (total): the expert of each product row, for the bias gradient: `expertGroups`' rowExpert from
   * the same grouping as `offsets` (not checked against them: that would need the offsets on the host).
   */
  rowExpert?: Tensor;
  relu?: boolean;
  /**
   * With ReLU: the router's straight-through weight 1 + s − stopgrad(s) on each product row (see
   * `routerGate`): exactly the ReLU output in value; in the backward ReLU's gradient and the gate's row
   * dots are one pass (Backend.reluBackwardRowDot). s (N, k) f32; rowSlot i32 (total) = n·k + j of each
   * row, from the same grouping as `offsets`.
   */
  gate?: { s: Tensor; rowSlot: Tensor };
  /**
   * With rows.scatter: (n) added once to every output row (the MoE's output bias, fused into the
   * scatter-add: GroupedMatmulArgs.outBias).
   */
  outBias?: Tensor;
  /**
   * Without a scatter: the output only feeds expert products and ReLU's backward, so a backend may keep it
   * at bf16 precision (GroupedMatmulArgs.bf16Out; the MoE's hidden layer).
   */
  bf16Out?: boolean;
}

/**
 * Grouped matmul over contiguous row segments (the MoE expert kernel, MegaBlocks-style):
 * y[seg_e] = x[seg_e] · op(w_e) for product rows offsets[e] .. offsets[e+1], total = offsets[E];
 * x (total, k) -> y (total, n), or with `rows` x read through `rows.gather` and y (outRows, n)
 * scattered through `rows.scatter`. `offsets` is an i32 tensor of E + 1 non-decreasing row offsets
 * from 0 on the backend (as `expertGroups` writes them: the group sizes never visit the host). The
 * weight gradient is written only inside the experts' regions (zero elsewhere). The input gradient is
 * the same product with gather and scatter swapped. With `epi` (not with a scatter), y = act(product +
 * bias[expert]); ReLU's gradient mask is then y > 0; with ReLU also the router gate (`epi.gate`: y in
 * value, a gradient for s). With a scatter, `epi.outBias` is added to every output row. Throws on
 * mismatched shapes here (also a gate without ReLU, or whose s is not (N, k) or rowSlot not one entry per
 * product row; an outBias without a scatter or not of n entries), and on offsets that decrease or
 * overrun the rows in the backend.
 */
export function segmentMatmul(x: Tensor, w: Tensor, offsets: Tensor, L: ExpertLayout, rows: SegmentRows = {},
  epi: SegmentEpilogue = {}): Tensor {
  const be = backendOf('segmentMatmul', x, w, offsets);
  expectRank('segmentMatmul', x, 2, 'x');
  expectDtype('segmentMatmul', x, 'f32', 'x');
  expectDtype('segmentMatmul', w, 'f32', 'w');
  expectDtype('segmentMatmul', offsets, 'i32', 'offsets');
  const E = L.nExpert, { k, n } = L;
  if (offsets.size !== E + 1) throw new Error(`segmentMatmul: offsets ${fmt(offsets)} must have ${E + 1} entries (n_expert + 1)`);
  if (x.shape[1] !== k) throw new Error(`segmentMatmul: x ${fmt(x)} has ${x.shape[1]} columns, the experts take ${k}`);
  const rowsStored = L.transB ? n : k, colsStored = L.transB ? k : n;
  if (colsStored > L.ld || (E - 1) * L.stride + (rowsStored - 1) * L.ld + colsStored > w.size) {
    throw new Error(`segmentMatmul: ${E} experts of (${rowsStored}, ${colsStored}) with stride ${L.stride}, ld ${L.ld} do not fit w ${fmt(w)}`);
  }
  const total = rows.gather ? rows.gather.size : x.shape[0]!;
  for (const [name, idx] of [['gather', rows.gather], ['scatter', rows.scatter]] as const) {
    if (!idx) continue;
    expectDtype('segmentMatmul', idx, 'i32', name);
    if (idx.size !== total) throw new Error(`segmentMatmul: rows.${name} ${fmt(idx)} must have ${total} entries`);
  }
  if (rows.scatter && !(Number.isInteger(rows.outRows) && rows.outRows! >= 0)) {
    throw new Error(`segmentMatmul: rows.scatter needs outRows, a non-negative integer (got ${rows.outRows})`);
  }
  const { bias, rowExpert, gate, outBias } = epi, relu = epi.relu ?? false;
  if (outBias) {
    if (!rows.scatter) throw new Error('segmentMatmul: an output bias needs a scattered output (rows.scatter)');
    backendOf('segmentMatmul', x, outBias);
    expectDtype('segmentMatmul', outBias, 'f32', 'outBias');
    if (outBias.rank !== 1 || outBias.size !== n) throw new Error(`segmentMatmul: outBias ${fmt(outBias)} must be (${n})`);
  }
  if (gate && !relu) throw new Error('segmentMatmul: a router gate epilogue needs relu');
  if (gate) {
    backendOf('segmentMatmul', x, gate.s, gate.rowSlot);
    expectRank('segmentMatmul', gate.s, 2, 'gate.s');
    expectDtype('segmentMatmul', gate.s, 'f32', 'gate.s');
    expectDtype('segmentMatmul', gate.rowSlot, 'i32', 'gate.rowSlot');
    if (gate.rowSlot.size !== total) throw new Error(`segmentMatmul: gate.rowSlot ${fmt(gate.rowSlot)} must have ${total} entries`);
  }
  if ((bias || relu) && rows.scatter) throw new Error('segmentMatmul: a bias or ReLU epilogue needs an unscattered output');
  if (bias) {
    expectDtype('segmentMatmul', bias, 'f32', 'bias');
    if (bias.rank !== 2 || bias.shape[0] !== E || bias.shape[1] !== n) throw new Error(`segmentMatmul: bias ${fmt(bias)} must be (${E}, ${n})`);
    if (!rowExpert || rowExpert.size !== total) throw new Error(`segmentMatmul: a bias needs rowExpert, the expert of each of the ${total} rows`);
    expectDtype('segmentMatmul', rowExpert, 'i32', 'rowExpert');
  }
  const y = out([rows.scatter ? rows.outRows! : total, n], be);
  // Expert e's problem; its row count and row offsets come from `offsets` (GroupedMatmulArgs.segments).
  const problems = new Int32Array(9 * E);
  for (let e = 0; e < E; e++) problems.set([0, n, k, 0, k, e * L.stride, L.ld, 0, n], 9 * e);
  be.groupedMatmul(x.buf('segmentMatmul'), w.buf('segmentMatmul'), y.buf('segmentMatmul'), {
    problems, transA: false, transB: L.transB, alpha: 1, beta: rows.scatter ? 1 : 0,
    rows: bufs({ a: rows.gather, c: rows.scatter }), segments: offsets.buf('segmentMatmul'),
    bias: bias?.buf('segmentMatmul'), biasStride: n, relu, outBias: outBias?.buf('segmentMatmul'),
    bf16Out: (epi.bf16Out ?? false) && !rows.scatter,
  });
  const inputs = [x, w, ...(bias ? [bias] : []), ...(gate ? [gate.s] : []), ...(outBias ? [outBias] : [])];
  return record(y, 'segmentMatmul', inputs, (gy) => {
    // The gradient before the epilogue: ReLU's mask y > 0 (with the gate's row dots); the bias gradient
    // its rows summed per expert.
    let g = gy, gs: Tensor | null = null;
    if (gate && needsGrad(gate.s)) {
      g = out(y.shape, be);
      const dots = out([total, 1], be);
      be.reluBackwardRowDot(y.buf('segmentMatmul'), gy.buf('segmentMatmul'), g.buf('segmentMatmul'), dots.buf('segmentMatmul'), total, n);
      gs = gateGrad('segmentMatmul', dots, gate.s, gate.rowSlot);
    } else if (relu) {
      g = reluGrad(y, gy);
    }
    let gb: Tensor | null = null;
    if (bias && needsGrad(bias)) {
      gb = out(bias.shape, be);
      be.scatterAddRows(g.buf('segmentMatmul'), rowExpert!.buf('segmentMatmul'), gb.buf('segmentMatmul'), total, E, n);
    }
    // The output bias's gradient: gy's rows summed.
    const gob = outBias && needsGrad(outBias) ? sumTo(gy, outBias.shape) : null;
    const grads = (gx: Tensor | null, gw: Tensor | null) =>
      [gx, gw, ...(bias ? [gb] : []), ...(gate ? [gs] : []), ...(outBias ? [gob] : [])];
    // gx = g[seg_e] · op(w_e)ᵀ: the same memory read with the transpose flipped, gather and scatter swapped.
    const gx = !needsGrad(x) ? null : segmentMatmul(g, w, offsets, { ...L, k: n, n: k, transB: !L.transB },
      { gather: rows.scatter, scatter: rows.gather, outRows: x.shape[0] });
    if (!needsGrad(w)) return grads(gx, null);
    // gw_e = (x[seg_e]ᵀ · g[seg_e]) (k, n), stored transposed (n, k) when transB; both read through their
    // rows, the segment along the reduction (token) dimension.
    const gw = out(w.shape, be);
    const p = new Int32Array(9 * E);
    for (let e = 0; e < E; e++) {
      p.set(L.transB ? [n, k, 0, 0, n, 0, k, e * L.stride, L.ld] : [k, n, 0, 0, k, 0, n, e * L.stride, L.ld], 9 * e);
    }
    const [A, B, rowsA, rowsB] = L.transB ? [g, x, rows.scatter, rows.gather] : [x, g, rows.gather, rows.scatter];
    be.groupedMatmul(A.buf('segmentMatmul'), B.buf('segmentMatmul'), gw.buf('segmentMatmul'), {
      problems: p, transA: true, transB: false, alpha: 1, beta: 0, rows: bufs({ a: rowsA, b: rowsB }),
      segments: offsets.buf('segmentMatmul'),
    });
    return grads(gx, gw);
  });
}

/** The backend buffers of the given index tensors, or undefined when none is given. */
function bufs(r: { a?: Tensor | undefined; b?: Tensor | undefined; c?: Tensor | undefined }): GroupedMatmulArgs['rows'] {
  if (!r.a && !r.b && !r.c) return undefined;
  return { a: r.a?.buf('segmentMatmul'), b: r.b?.buf('segmentMatmul'), c: r.c?.buf('segmentMatmul') };
}
