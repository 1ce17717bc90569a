/**
 * The Transformer feed-forward network: act(x W_inᵀ + b_in) W_outᵀ + b_out with ReLU by default
 * (SSD relies on ReLU's exact zeros). W_in (d_ff, d_model): row i holds neuron i's input weights;
 * W_out (d_model, d_ff): column i its output weights.
 */
import * as T from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';

export interface FFNParams {
  w_in: Tensor;
  b_in: Tensor | null;
  w_out: Tensor;
  b_out: Tensor | null;
}

/** The FFN's hidden activations act(x W_inᵀ + b_in): x (N, d_model) -> (N, d_ff). */
export function ffnHidden(x: Tensor, p: FFNParams, activation: 'relu' | 'gelu'): Tensor {
  let h = T.matmul(x, p.w_in, { transB: true }); // (N, d_ff)
  if (p.b_in) h = T.add(h, p.b_in);
  return activation === 'relu' ? T.relu(h) : T.gelu(h);
}

/** The FFN's output from its hidden activations: h (N, d_ff) -> h W_outᵀ + b_out (N, d_model). */
export function ffnOut(h: Tensor, p: FFNParams): Tensor {
  const y = T.matmul(h, p.w_out, { transB: true }); // (N, d_model)
  return p.b_out ? T.add(y, p.b_out) : y;
}

/** Dense FFN forward: x (N, d_model) -> (N, d_model). */
export function ffnDense(x: Tensor, p: FFNParams, activation: 'relu' | 'gelu'): Tensor {
  return ffnOut(ffnHidden(x, p, activation), p);
}
