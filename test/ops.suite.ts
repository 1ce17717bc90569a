/**
 * The shared op conformance suite, runnable against any backend:
 *  - forward of every op equals the `ref` backend computed in float64 (f32 relative error ≤ 1e-5);
 *  - backward equals central finite differences computed in float64 on `ref`;
 *  - integer / exact outputs (top-k indices, dropout masks, casts) are bit-identical.
 * A backend's test file calls `opSuite(name, backend)`.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Backend, DType } from '../src/backend/contract.js';
import { createRefBackend } from '../src/backend/ref/index.js';
import type { RefBackend } from '../src/backend/ref/index.js';
import * as T from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { ints, randn, relErr, rng } from './helpers.js';

const oracle = createRefBackend({ f64: true });

interface Input {
  data: ArrayLike<number>;
  shape: number[];
  dtype?: DType;
  /** Excluded from gradient checks (indices, or inputs where FD is ill-posed). */
  noGrad?: boolean;
}

interface OpCase {
  name: string;
  inputs: Input[];
  fn: (xs: Tensor[]) => Tensor;
  /** Skip the gradient check (non-differentiable ops). */
  forwardOnly?: boolean;
  /** Forward tolerance (default 1e-5). */
  tol?: number;
  /** Integer output compared element for element on every backend, whatever its tolerances. */
  exact?: boolean;
}


/** Values away from 0 so ReLU kinks do not spoil finite differences. */
function awayFromZero(a: Float64Array): Float64Array {
  return a.map((x) => (Math.abs(x) < 0.05 ? x + Math.sign(x || 1) * 0.1 : x));
}


function f(shape: number[], r: () => number, scale = 1): Input {
  return { data: randn(r, shape.reduce((a, b) => a * b, 1), scale), shape };
}

function cases(): OpCase[] {
  const r = rng(1234);
  const out: OpCase[] = [];
  // matmul: all transpose combinations, odd sizes, size 1, batch broadcast, rank-2 weight fold.
  for (const [m, k, n] of [[1, 1, 1], [3, 5, 7], [17, 33, 9], [64, 48, 32]] as const) {
    for (const tA of [false, true]) for (const tB of [false, true]) {
      out.push({
        name: `matmul ${m}x${k}x${n} tA=${tA} tB=${tB}`,
        inputs: [f(tA ? [k, m] : [m, k], r), f(tB ? [n, k] : [k, n], r)],
        fn: ([a, b]) => T.matmul(a!, b!, { transA: tA, transB: tB }),
      });
    }
  }
  out.push({ name: 'matmul batched (2,3,4,5)x(2,3,5,6)', inputs: [f([2, 3, 4, 5], r), f([2, 3, 5, 6], r)], fn: ([a, b]) => T.matmul(a!, b!) });
  out.push({ name: 'matmul broadcast a (1,4,5)x(3,5,2)', inputs: [f([1, 4, 5], r), f([3, 5, 2], r)], fn: ([a, b]) => T.matmul(a!, b!) });
  out.push({ name: 'matmul x·Wᵀ (2,3,5)x(4,5)ᵀ', inputs: [f([2, 3, 5], r), f([4, 5], r)], fn: ([a, b]) => T.matmul(a!, b!, { transB: true }) });
  // linear: the bias and ReLU epilogue fused into the product. ReLU's inputs stay away from its kink:
  // small x·Wᵀ against biases of magnitude >= 0.6.
  const bias = (n: number): Input => ({ data: randn(r, n).map((v) => Math.sign(v || 1) * (0.6 + 0.2 * Math.abs(v))), shape: [n] });
  out.push({ name: 'linear (2,3,5)·(4,5)ᵀ + b', inputs: [f([2, 3, 5], r), f([4, 5], r), f([4], r)], fn: ([x, w, b]) => T.linear(x!, w!, b!) });
  out.push({ name: 'linear (3,5)·(7,5)ᵀ, no bias', inputs: [f([3, 5], r), f([7, 5], r)], fn: ([x, w]) => T.linear(x!, w!, null) });
  {
    // ReLU masks mixed within each column: x·Wᵀ ≈ x[:, 0]·W[:, 0] with both of random sign and
    // magnitude >= 0.5, the other terms and the bias small.
    const rows = 12, nIn = 7, nOut = 5, sign = () => (r() < 0.5 ? -1 : 1);
    const x = randn(r, rows * nIn, 0.01), w = randn(r, nOut * nIn, 0.01);
    for (let i = 0; i < rows; i++) x[i * nIn] = sign() * (1 + 0.2 * r());
    for (let j = 0; j < nOut; j++) w[j * nIn] = sign() * (0.6 + 0.2 * r());
    out.push({
      name: 'linear relu, masks mixed within columns (12,7)·(5,7)ᵀ + b',
      inputs: [{ data: x, shape: [rows, nIn] }, { data: w, shape: [nOut, nIn] }, f([nOut], r, 0.02)],
      fn: ([xx, ww, b]) => T.linear(xx!, ww!, b!, { relu: true }),
    });
  }
  for (const [rows, nIn, nOut] of [[17, 33, 9], [2 * 40, 64, 96]] as const) {
    out.push({
      name: `linear relu (${rows},${nIn})·(${nOut},${nIn})ᵀ + b`,
      inputs: [f([rows, nIn], r, 0.02), f([nOut, nIn], r), bias(nOut)],
      fn: ([x, w, b]) => T.linear(x!, w!, b!, { relu: true }),
    });
  }
  // Outputs a backend may keep at bf16 precision (cuda: only the bf16 copy is written; ReLU's mask and
  // attention read it, the f32 values are widened from it when read).
  out.push({
    name: 'linear relu bf16Out (80,64)·(96,64)ᵀ + b',
    inputs: [f([80, 64], r, 0.02), f([96, 64], r), bias(96)],
    fn: ([x, w, b]) => T.linear(x!, w!, b!, { relu: true, bf16Out: true }),
  });
  out.push({
    name: 'attention of a bf16Out linear: B2 T33 H2 D16 causal',
    inputs: [f([2, 33, 24], r), f([96, 24], r, 0.3), f([96], r)],
    fn: ([x, w, b]) => T.attention(T.linear(x!, w!, b!, { bf16Out: true }), 2, true),
  });
  // broadcasting arithmetic
  out.push({ name: 'add broadcast (3,1,5)+(4,1)', inputs: [f([3, 1, 5], r), f([4, 1], r)], fn: ([a, b]) => T.add(a!, b!) });
  out.push({ name: 'sub (7)-(1)', inputs: [f([7], r), f([1], r)], fn: ([a, b]) => T.sub(a!, b!) });
  out.push({ name: 'mul broadcast (2,3,4)*(3,1)', inputs: [f([2, 3, 4], r), f([3, 1], r)], fn: ([a, b]) => T.mul(a!, b!) });
  out.push({
    name: 'div (5,3)/(3)', inputs: [f([5, 3], r), { data: randn(r, 3).map((x) => 1.5 + Math.abs(x)), shape: [3] }],
    fn: ([a, b]) => T.div(a!, b!),
  });
  out.push({ name: 'affine', inputs: [f([4, 5], r)], fn: ([a]) => T.affine(a!, -1.5, 0.25) });
  // activations
  out.push({ name: 'relu', inputs: [{ data: awayFromZero(randn(r, 37)), shape: [37] }], fn: ([a]) => T.relu(a!) });
  out.push({ name: 'gelu', inputs: [f([3, 13], r, 2)], fn: ([a]) => T.gelu(a!) });
  out.push({ name: 'tanh', inputs: [f([11], r)], fn: ([a]) => T.tanh(a!) });
  out.push({ name: 'exp', inputs: [f([11], r)], fn: ([a]) => T.exp(a!) });
  out.push({ name: 'square', inputs: [f([11], r)], fn: ([a]) => T.square(a!) });
  out.push({ name: 'log', inputs: [{ data: randn(r, 9).map((x) => 0.5 + Math.abs(x)), shape: [9] }], fn: ([a]) => T.log(a!) });
  out.push({ name: 'sqrt', inputs: [{ data: randn(r, 9).map((x) => 0.5 + Math.abs(x)), shape: [9] }], fn: ([a]) => T.sqrt(a!) });
  // shape ops and reductions
  out.push({ name: 'permute (2,3,4)->(2,0,1)', inputs: [f([2, 3, 4], r)], fn: ([a]) => T.permute(a!, [2, 0, 1]) });
  out.push({ name: 'slice axis 1', inputs: [f([3, 7, 2], r)], fn: ([a]) => T.slice(a!, 1, 2, 6) });
  out.push({ name: 'concat axis 1', inputs: [f([2, 3], r), f([2, 1], r), f([2, 4], r)], fn: (xs) => T.concat(xs, 1) });
  out.push({ name: 'sum axis 1', inputs: [f([4, 6, 3], r)], fn: ([a]) => T.sum(a!, 1) });
  out.push({ name: 'sum all (size 1)', inputs: [f([1], r)], fn: ([a]) => T.sum(a!) });
  out.push({ name: 'mean all', inputs: [f([5, 9], r)], fn: ([a]) => T.mean(a!) });
  // NN kernels
  for (const [rows, cols] of [[1, 1], [3, 7], [8, 129]] as const) {
    out.push({ name: `softmax ${rows}x${cols}`, inputs: [f([rows, cols], r, 2)], fn: ([a]) => T.softmax(a!) });
    out.push({
      name: `layerNorm ${rows}x${cols}`, inputs: [f([rows, cols], r, 2), f([cols], r), f([cols], r)],
      fn: ([x, g, b]) => T.layerNorm(x!, g!, b!),
    });
  }
  // An output a backend may keep at bf16 precision: rows of 768 (the warp-per-row kernel) and of 7.
  for (const [rows, cols] of [[6, 768], [3, 7]] as const) {
    out.push({
      name: `layerNorm bf16Out ${rows}x${cols}`, inputs: [f([rows, cols], r, 2), f([cols], r), f([cols], r)],
      fn: ([x, g, b]) => T.layerNorm(x!, g!, b!, 1e-5, { bf16Out: true }),
    });
  }
  out.push({
    name: 'embedding (repeated ids)', inputs: [f([11, 6], r), { data: [3, 0, 10, 3, 3, 7, 1], shape: [7], dtype: 'i32', noGrad: true }],
    fn: ([t, ids]) => T.embedding(t!, ids!),
  });
  for (const [B, Tn, H, D, causal] of [[1, 1, 1, 1, true], [2, 5, 3, 4, true], [1, 7, 2, 8, false], [2, 33, 2, 16, true]] as const) {
    out.push({
      name: `attention B${B} T${Tn} H${H} D${D} causal=${causal}`, inputs: [f([B, Tn, 3 * H * D], r)],
      fn: ([x]) => T.attention(x!, H, causal),
    });
  }
  // KV-cache attention (forward only): fresh prefill (the fused path), decode, chunked prefill at an
  // offset, D with a non-SIMD tail; the caches are inputs, updated in place, then returned with out.
  for (const [B, Tn, H, D, Tmax, pos] of [[2, 4, 2, 8, 6, [0, 0]], [2, 1, 2, 8, 9, [5, 0]], [2, 3, 3, 5, 9, [2, 6]],
    [1, 1, 12, 64, 40, [33]]] as const) {
    out.push({
      name: `attentionCached B${B} T${Tn} H${H} D${D} Tmax${Tmax} pos=[${pos}]`, forwardOnly: true,
      inputs: [f([B, Tn, 3 * H * D], r), f([B, H, Tmax, D], r), f([B, H, Tmax, D], r),
        { data: Int32Array.from(pos), shape: [B], dtype: 'i32', noGrad: true }],
      fn: ([x, kc, vc, p]) => {
        const y = T.attentionCached(x!, kc!, vc!, p!, H); // (B, T, H·D)
        return T.concat([T.reshape(y, [-1]), T.reshape(kc!, [-1]), T.reshape(vc!, [-1])], 0);
      },
    });
  }
  for (const [N, V] of [[1, 1], [5, 7], [9, 1000]] as const) {
    const targets = ints(r, N, 0, V);
    if (N > 1) targets[1] = -1;
    out.push({
      name: `crossEntropy N${N} V${V}`, inputs: [f([N, V], r, 3), { data: targets, shape: [N], dtype: 'i32', noGrad: true }],
      fn: ([l, t]) => T.crossEntropy(l!, t!),
    });
  }
  {
    // The output layer as GPT trains it: logits and their gradient may be kept at bf16 precision.
    const targets = ints(r, 6, 0, 50);
    targets[2] = -1;
    out.push({
      name: 'crossEntropy of bf16Out logits (6,16)·(50,16)ᵀ, bf16Grad',
      inputs: [f([6, 16], r), f([50, 16], r, 0.5), { data: targets, shape: [6], dtype: 'i32', noGrad: true }],
      fn: ([h, w, t]) => T.crossEntropy(T.matmul(h!, w!, { transB: true, bf16Out: true }), t!, { bf16Grad: true }),
    });
  }
  // MoE primitives
  out.push({ name: 'topk values', inputs: [f([6, 9], r)], fn: ([x]) => T.topk(x!, 3).values });
  {
    // zeros, negatives, NaN and a last word of 6 columns; exact (bit words compared as integers)
    const x = randn(r, 5 * 70).map((v, i) => (i % 11 === 0 ? 0 : i % 13 === 0 ? NaN : v));
    out.push({ name: 'activationBits (70 columns)', forwardOnly: true, exact: true, inputs: [{ data: x, shape: [5, 70] }],
      fn: ([h]) => T.activationBits(h!) });
  }
  out.push({
    name: 'gatherRows', inputs: [f([7, 5], r), { data: [6, 0, 3, 3, 1], shape: [5], dtype: 'i32', noGrad: true }],
    fn: ([x, i]) => T.gatherRows(x!, i!),
  });
  out.push({
    name: 'scatterAddRows', inputs: [f([5, 4], r), { data: [2, 0, 2, 5, 2], shape: [5], dtype: 'i32', noGrad: true }],
    fn: ([s, i]) => T.scatterAddRows(s!, i!, 6),
  });
  for (const transB of [false, true]) {
    const E = 4, k = 6, n = 5, offsets = index([0, 3, 3, 10, 11]);
    out.push({
      name: `segmentMatmul transB=${transB} (empty segment)`, inputs: [f([11, k], r), f(transB ? [E, n, k] : [E, k, n], r), offsets],
      fn: ([x, w, o]) => T.segmentMatmul(x!, w!, o!, { nExpert: E, k, n, stride: k * n, ld: transB ? k : n, transB }),
    });
  }
  for (const transB of [false, true]) {
    // Token rows gathered into and scattered out of the product (repeated rows, an empty segment).
    const E = 3, k = 4, n = 5, offsets = index([0, 4, 4, 9]);
    const gather = index([2, 0, 6, 2, 1, 3, 3, 5, 0]), scatter = index([1, 4, 1, 0, 3, 3, 2, 1, 5]);
    out.push({
      name: `segmentMatmul gather + scatter transB=${transB}`,
      inputs: [f([7, k], r), f(transB ? [E, n, k] : [E, k, n], r), gather, scatter, offsets],
      fn: ([x, w, g, s, o]) => T.segmentMatmul(x!, w!, o!, { nExpert: E, k, n, stride: k * n, ld: transB ? k : n, transB },
        { gather: g!, scatter: s!, outRows: 6 }),
    });
    // The same with an output bias (added in the scatter-add on backends that fuse it), 7 output rows
    // (the last one no product row hits: it gets the bias alone).
    out.push({
      name: `segmentMatmul gather + scatter + output bias transB=${transB}`,
      inputs: [f([7, k], r), f(transB ? [E, n, k] : [E, k, n], r), f([n], r), gather, scatter, offsets],
      fn: ([x, w, b, g, s, o]) => T.segmentMatmul(x!, w!, o!, { nExpert: E, k, n, stride: k * n, ld: transB ? k : n, transB },
        { gather: g!, scatter: s!, outRows: 7 }, { outBias: b! }),
    });
  }
  out.push({
    // Value only: its router gradient is the straight-through one, checked in test/moefy.test.ts.
    name: 'routerGate (value = h)', forwardOnly: true,
    inputs: [f([6, 3], r), f([3, 2], r), { data: [0, 5, 1, 4, 2, 3], shape: [6], dtype: 'i32', noGrad: true }],
    fn: ([h, s, slot]) => T.routerGate(h!, s!, slot!),
  });
  {
    // Experts as column blocks of a (d_model, d_ff) matrix, as for W_out: x (rows, s) · W[:, e·s:(e+1)·s]ᵀ.
    const E = 3, s = 4, dm = 5, offsets = index([0, 2, 2, 7]);
    out.push({
      name: 'segmentMatmul column-block experts (W_out layout)', inputs: [f([7, s], r), f([dm, E * s], r), offsets],
      fn: ([x, w, o]) => T.segmentMatmul(x!, w!, o!, { nExpert: E, k: s, n: dm, stride: s, ld: E * s, transB: true }),
    });
  }
  {
    // Product rows scattered to distinct output rows that cover only part of the output (5 groups).
    const E = 5, k = 4, n = 3, offsets = index([0, 2, 2, 3, 5, 6]), scatter = index([7, 1, 4, 0, 6, 2]);
    out.push({
      name: 'segmentMatmul scatter to distinct rows (part of the output)', inputs: [f([6, k], r), f([E, n, k], r), scatter, offsets],
      fn: ([x, w, sc, o]) => T.segmentMatmul(x!, w!, o!, { nExpert: E, k, n, stride: k * n, ld: k, transB: true },
        { scatter: sc!, outRows: 9 }),
    });
    out.push({
      name: 'segmentMatmul scatter to distinct rows + output bias', inputs: [f([6, k], r), f([E, n, k], r), f([n], r), scatter, offsets],
      fn: ([x, w, b, sc, o]) => T.segmentMatmul(x!, w!, o!, { nExpert: E, k, n, stride: k * n, ld: k, transB: true },
        { scatter: sc!, outRows: 9 }, { outBias: b! }),
    });
  }
  {
    // An output bias with the other scatter plans: non-decreasing targets with a run beyond a 32-source
    // chunk (and a target with none), and unsorted repeats beyond a chunk; rows of 4 (whole vectors).
    const E = 2, k = 3, n = 4, offsets = index([0, 30, 100]);
    const sorted = [...Array<number>(40).fill(0), ...Array<number>(25).fill(1), ...Array<number>(35).fill(3)];
    const repeats = Array.from(ints(r, 100, 0, 3));
    for (const [name, idx] of [['non-decreasing targets, a run beyond a chunk', sorted], ['unsorted repeats beyond a chunk', repeats]] as const) {
      out.push({
        name: `segmentMatmul scatter + output bias (${name})`, inputs: [f([100, k], r), f([E, n, k], r), f([n], r), index(idx), offsets],
        fn: ([x, w, b, sc, o]) => T.segmentMatmul(x!, w!, o!, { nExpert: E, k, n, stride: k * n, ld: k, transB: true },
          { scatter: sc!, outRows: 4 }, { outBias: b! }),
      });
    }
  }
  out.push(...moeRoutingCases(r));
  out.push(...scatterAddCases(r));
  return out;
}

/** An i32 index input (no gradient). */
function index(data: number[], shape = [data.length]): Input {
  return { data, shape, dtype: 'i32', noGrad: true };
}

/**
 * The MoE routing on the backend: `expertGroups` itself (exact), and a MoE FFN whose grouping never
 * leaves the backend (expertGroups, then gathered and scattered segment products on its offsets; on
 * cuda the indices and offsets are then device-written, not uploaded), forward and gradients.
 */
function moeRoutingCases(r: () => number): OpCase[] {
  // 9 tokens, top-3 of 5 experts (expert 3 unused, expert 0 picked by most tokens).
  const N = 9, k = 3, E = 5, s = 4, dm = 6;
  const experts = [0, 2, 4, 1, 0, 2, 4, 0, 1, 2, 1, 0, 0, 4, 2, 1, 2, 0, 0, 1, 4, 2, 4, 0, 4, 1, 0];
  const groups = (t: Tensor) => T.expertGroups(t, E);
  return [{
    name: 'expertGroups (offsets, rowToken, rowSlot, rowExpert)', forwardOnly: true, exact: true, inputs: [index(experts, [N, k])],
    fn: ([ex]) => {
      const g = groups(ex!);
      return T.concat([g.offsets, g.rowToken, g.rowSlot, g.rowExpert], 0);
    },
  }, {
    name: 'MoE FFN on backend-side routing (expertGroups + gathered / scattered segment products)',
    inputs: [f([N, dm], r), f([E * s, dm], r), f([dm, E * s], r), { ...f([N, k], r), noGrad: true }, index(experts, [N, k])],
    fn: ([x, wIn, wOut, gate, ex]) => {
      const g = groups(ex!);
      const h = T.segmentMatmul(x!, wIn!, g.offsets, { nExpert: E, k: dm, n: s, stride: s * dm, ld: dm, transB: true },
        { gather: g.rowToken });
      const b = T.gatherRows(T.reshape(T.affine(wIn!, 0.5, 0), [E, s * dm]), g.rowExpert); // a per-expert term, (N·k, s·dm)
      // The router gate's value is its input (its straight-through gradient into `gate`, through
      // rowSlot, is computed but not checked: finite differences see 0).
      const hb = T.routerGate(T.add(h, T.sum(T.reshape(b, [N * k, s, dm]), 2)), gate!, g.rowSlot);
      return T.segmentMatmul(hb, wOut!, g.offsets, { nExpert: E, k: s, n: dm, stride: s, ld: E * s, transB: true },
        { scatter: g.rowToken, outRows: N });
    },
  }, ...[false, true].map((relu): OpCase => ({
    // The first product's epilogue: each expert's bias (magnitude >= 0.6 against a small product, away
    // from ReLU's kink), then ReLU.
    name: `MoE first product with its epilogue (expert biases${relu ? ' + ReLU' : ''}) on backend-side routing`,
    inputs: [f([N, dm], r, 0.03), f([E * s, dm], r),
      { data: randn(r, E * s).map((v) => Math.sign(v || 1) * (0.6 + 0.2 * Math.abs(v))), shape: [E, s] }, index(experts, [N, k])],
    fn: ([x, wIn, b, ex]) => {
      const g = groups(ex!);
      return T.segmentMatmul(x!, wIn!, g.offsets, { nExpert: E, k: dm, n: s, stride: s * dm, ld: dm, transB: true },
        { gather: g.rowToken }, { bias: b!, rowExpert: g.rowExpert, relu });
    },
  }))];
}

/**
 * scatterAddRows for each shape of index a backend may treat apart: distinct targets (unsorted and
 * covering part of the output, as the top-k backward; a permutation, as the router-gate backward;
 * ascending), non-decreasing targets with repeats (as an expert-bias gradient: up to 2048 sources on
 * one target, beyond a 32-source chunk, and empty targets between) and unsorted repeats beyond a chunk.
 * Each onto a fresh output (zeros) and added onto a written one (forward only: a backend call).
 */
function scatterAddCases(r: () => number): OpCase[] {
  const runs = (counts: number[]) => counts.flatMap((c, t) => Array<number>(c).fill(t));
  const patterns: [name: string, idx: number[], n: number, d: number][] = [
    ['distinct unsorted, part of the output', [4, 0, 7, 2, 5], 9, 1],
    ['distinct, a permutation', [3, 1, 0, 4, 2], 5, 1],
    ['distinct ascending', [0, 2, 3, 7], 8, 4],
    ['non-decreasing', [0, 0, 1, 3, 3, 3], 5, 3],
    ['non-decreasing, long segments', runs([0, 40, 2048, 0, 1, 0, 33, 0]), 8, 4],
    ['non-decreasing, long segments, d=3', runs([33, 0, 2048, 0]), 4, 3],
    ['unsorted repeats beyond a chunk', Array.from(ints(r, 300, 0, 6), (t) => (t >= 4 ? t + 1 : t)), 8, 3],
  ];
  return patterns.flatMap(([name, idx, n, d]): OpCase[] => {
    const m = idx.length, index: Input = { data: idx, shape: [m], dtype: 'i32', noGrad: true };
    return [{
      name: `scatterAddRows ${name}`, inputs: [f([m, d], r), index],
      fn: ([s, i]) => T.scatterAddRows(s!, i!, n),
    }, {
      name: `scatterAddRows ${name}, added onto data`, forwardOnly: true, inputs: [f([m, d], r), index, f([n, d], r)],
      fn: ([s, i, base]) => {
        const y = T.affine(base!, 1, 0);
        y.backend.scatterAddRows(s!.buf('test'), i!.buf('test'), y.buf('test'), m, n, d);
        return y;
      },
    }];
  });
}

function build(inp: Input, b: Backend): Tensor {
  return T.tensor(inp.data, inp.shape, { dtype: inp.dtype ?? 'f32', backend: b });
}

/** Loss L = Σ fn(xs) ⊙ R for a fixed random R, as a host number computed on `b`. */
function lossValue(c: OpCase, inputs: Input[], weights: Float64Array, b: RefBackend): number {
  return T.tidy(() => T.noGrad(() => {
    const y = c.fn(inputs.map((i) => build(i, b)));
    const yv = b.downloadF64(y.buf('test'));
    let s = 0;
    for (let i = 0; i < yv.length; i++) s += yv[i]! * weights[i]!;
    return s;
  }));
}

/** Gradients of L on backend b, one host array per float input. */
function analyticGrads(c: OpCase, weights: Float64Array, b: Backend): (Float32Array | null)[] {
  return T.tidy(() => {
    const xs = c.inputs.map((i) => {
      const t = build(i, b);
      if (!i.noGrad && (i.dtype ?? 'f32') === 'f32') t.requiresGrad = true;
      return t;
    });
    const y = c.fn(xs);
    const w = T.tensor(Float32Array.from(weights), y.shape, { backend: b });
    T.backward(T.sum(T.mul(y, w)));
    const g = xs.map((t) => (t.requiresGrad ? (t.grad ? (t.grad.toArray() as Float32Array) : new Float32Array(t.size)) : null));
    for (const t of xs) t.dispose();
    return g;
  });
}

/** Tolerances for a backend that computes in reduced precision (e.g. bf16 GEMMs on cuda). */
export interface SuiteOptions {
  /** Forward relative error allowed (at least each case's own tolerance; default 1e-5). */
  forwardTol?: number;
  /** Gradient relative error vs finite differences (default 2e-4). */
  gradTol?: number;
}

export function opSuite(name: string, backend: Backend, opts: SuiteOptions = {}): void {
  const gradTol = opts.gradTol ?? 2e-4;
  describe(`ops on ${name}`, () => {
    for (const c of cases()) {
      it(`${c.name}: forward matches ref (f64)`, () => {
        const got = T.tidy(() => T.noGrad(() => c.fn(c.inputs.map((i) => build(i, backend))).toArray()));
        const want = T.tidy(() => T.noGrad(() => c.fn(c.inputs.map((i) => build(i, oracle))).toArray()));
        assert.equal(got.length, want.length);
        if (c.exact) return assert.deepEqual(Array.from(got), Array.from(want));
        const e = relErr(got, want);
        const tol = Math.max(c.tol ?? 1e-5, opts.forwardTol ?? 0);
        assert.ok(e <= tol, `relative error ${e.toExponential(2)} > ${tol}`);
      });
      if (c.forwardOnly) continue;
      it(`${c.name}: backward matches finite differences (f64 ref)`, () => {
        const r = rng(99);
        const n = T.tidy(() => T.noGrad(() => c.fn(c.inputs.map((i) => build(i, oracle))).size));
        const weights = randn(r, n);
        const grads = analyticGrads(c, weights, backend);
        c.inputs.forEach((inp, k) => {
          const g = grads[k];
          if (!g) return;
          // Central differences on up to 40 coordinates, in float64 on ref.
          const h = 1e-6;
          const coords = inp.data.length <= 40 ? [...Array(inp.data.length).keys()]
            : Array.from({ length: 40 }, () => Math.floor(r() * inp.data.length));
          const fd: number[] = [], an: number[] = [];
          for (const i of coords) {
            const plus = Float64Array.from(inp.data), minus = Float64Array.from(inp.data);
            plus[i]! += h;
            minus[i]! -= h;
            const with_ = (d: Float64Array) => c.inputs.map((x, j) => (j === k ? { ...x, data: d } : x));
            fd.push((lossValue(c, with_(plus), weights, oracle) - lossValue(c, with_(minus), weights, oracle)) / (2 * h));
            an.push(g[i]!);
          }
          const e = relErr(an, fd);
          assert.ok(e <= gradTol, `input ${k}: gradient relative error ${e.toExponential(2)} vs finite differences`);
        });
      });
    }
  });
}
