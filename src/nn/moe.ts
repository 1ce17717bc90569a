/**
 * The MoE feed-forward layer of a MoEfied FFN (MoEfication, Zhang et al. 2022; SSD method page §4.5).
 * Experts are contiguous blocks of the (permuted) dense FFN: expert e owns neurons e·s .. (e+1)·s − 1,
 * i.e. rows of W_in / b_in and columns of W_out. Per token the router scores x · W_g pick the top-k
 * experts; only those experts are computed, in forward and backward:
 *   tokens are grouped by expert and multiplied by each expert's W_in block (one grouped GEMM that
 *   gathers the token rows itself), activated, multiplied by the expert's W_out block and scatter-added
 *   back (a grouped GEMM that adds into the token rows).
 * Output weights are 1 + s − stopgrad(s) with s = softmax of the selected scores: exactly 1 in the
 * forward pass, while the router still receives a gradient (switchable off).
 */
import * as T from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import type { FFNParams } from './ffn.js';

export interface MoEOptions {
  nExpert: number;
  topK: number;
  activation: 'relu' | 'gelu';
  /** Give the router a gradient through 1 + s − stopgrad(s) (default true). */
  trainRouter?: boolean;
  /**
   * Let that gradient also flow through the scores x · W_g into x, i.e. into the layers below
   * (default false: x is detached for routing, so only W_g learns from it; measured better for SSD).
   */
  routerInputGrad?: boolean;
  /**
   * W_out transposed, (d_ff, d_model), for inference: each expert's output weights become one
   * contiguous block of rows instead of a column block with stride d_ff, which decode reads 3× faster
   * (a strided column block touches a new page per row). Same function as W_out.
   */
  wOutT?: Tensor;
}

/**
 * The routing of one batch: which experts each token uses and how rows are grouped by expert. All i32
 * tensors on the model's backend (the grouping runs there: no host round trip per layer).
 */
export interface Routing extends T.ExpertGrouping {
  /** Selected experts per token, (N, k), best first. */
  experts: Tensor;
}

/** Tokens routed to each expert, (E), read from the routing's offsets (a download). */
export function expertLoad(r: Routing): Int32Array {
  const off = r.offsets.toArray() as Int32Array;
  return off.subarray(1).map((o, e) => o - off[e]!);
}

/**
 * Top-k experts per token from router scores x · W_g: x (N, d_model), router (d_model, E). With
 * `inputGrad` false the scores take no gradient into x (only into the router).
 */
export function route(x: Tensor, router: Tensor, topK: number, inputGrad = true): { values: Tensor; routing: Routing } {
  const E = router.shape[1]!;
  if (!Number.isInteger(topK) || topK < 1 || topK > E) throw new Error(`MoE: top_k = ${topK} is outside [1, ${E}]`);
  const scores = T.matmul(inputGrad ? x : T.detach(x), router); // (N, E)
  const { values, indices } = T.topk(scores, topK); // (N, k)
  return { values, routing: { experts: indices, ...T.expertGroups(indices, E) } };
}

/**
 * MoE FFN forward: x (N, d_model) -> (N, d_model), computing only the selected experts.
 * Throws if d_ff is not divisible by n_expert or top_k is out of range.
 */
export function moeFFN(x: Tensor, p: FFNParams, router: Tensor, o: MoEOptions): { y: Tensor; routing: Routing } {
  const [dff, dm] = p.w_in.shape as [number, number];
  const E = o.nExpert, k = o.topK, N = x.shape[0]!;
  if (dff % E !== 0) throw new Error(`MoE: d_ff = ${dff} is not divisible by n_expert = ${E}`);
  if (router.shape[0] !== dm || router.shape[1] !== E) {
    throw new Error(`MoE: router has shape [${router.shape}], expected [${dm}, ${E}]`);
  }
  const s = dff / E;
  const { values, routing } = route(x, router, k, o.routerInputGrad ?? false);
  const { offsets, rowToken } = routing;
  // Token rows are gathered inside the first grouped product and scatter-added inside the second:
  // no (N·k, d_model) copy of the input or output exists. The experts' biases and ReLU are the first
  // product's epilogue, and so is the router gate with ReLU (its backward then one pass with ReLU's).
  // Output weights 1 + s − stopgrad(s), s = softmax of the selected scores: 1 in value, router gradient via s.
  const relu = o.activation === 'relu', bias = p.b_in ? T.reshape(p.b_in, [E, s]) : undefined;
  const gate = (o.trainRouter ?? true) && T.isGradEnabled() ? { s: T.softmax(values), rowSlot: routing.rowSlot } : undefined;
  // With ReLU h feeds only the second product and ReLU's backward: kept at bf16 precision where the
  // backend allows (SegmentEpilogue.bf16Out).
  let h = T.segmentMatmul(x, p.w_in, offsets, { nExpert: E, k: dm, n: s, stride: s * dm, ld: dm, transB: true },
    { gather: rowToken }, { bias, rowExpert: routing.rowExpert, relu, gate: relu ? gate : undefined, bf16Out: relu }); // (N·k, s), grouped by expert
  if (!relu) {
    h = T.gelu(h);
    if (gate) h = T.routerGate(h, gate.s, gate.rowSlot);
  }
  // The output bias is added in the scatter-add.
  const scatter = { scatter: rowToken, outRows: N }, out = { outBias: p.b_out ?? undefined };
  const y = o.wOutT // (N, d_model)
    ? T.segmentMatmul(h, o.wOutT, offsets, { nExpert: E, k: s, n: dm, stride: s * dm, ld: dm, transB: false }, scatter, out)
    : T.segmentMatmul(h, p.w_out, offsets, { nExpert: E, k: s, n: dm, stride: s, ld: dff, transB: true }, scatter, out);
  return { y, routing };
}

/**
 * Share of the positive activation mass Σ relu(h) that the selected experts hold, averaged over tokens
 * (1 means the MoE drops nothing). Costs a dense first FFN matmul. x (N, d_model).
 */
export function capturedActivationMass(x: Tensor, p: FFNParams, routing: Routing, nExpert: number): number {
  return T.tidy(() => T.noGrad(() => {
    const h = T.linear(x, p.w_in, p.b_in, { relu: true }); // relu(x W_inᵀ + b_in) (N, d_ff)
    const [N, dff] = h.shape as [number, number];
    // Positive mass per token and expert: (N, d_ff) viewed as (N, E, d_ff / E), summed over each expert's neurons.
    const mass = T.sum(T.reshape(h, [N, nExpert, dff / nExpert]), 2).toArray(); // (N, E)
    const experts = routing.experts.toArray(), k = experts.length / N;
    let share = 0;
    for (let n = 0; n < N; n++) {
      let total = 0, kept = 0;
      for (let e = 0; e < nExpert; e++) total += mass[n * nExpert + e]!;
      for (let j = 0; j < k; j++) kept += mass[n * nExpert + experts[n * k + j]!]!;
      share += total > 0 ? kept / total : 1;
    }
    return share / N;
  }));
}
