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

/**
 * The FFN's hidden activations act(x W_inᵀ + b_in): x (N, d_model) -> (N, d_ff); ReLU fused into the
 * product, its output kept at bf16 precision where the backend has bf16 copies (LinearOpts.bf16Out: in
 * training it feeds W_out's product and ReLU's mask only; the SSD monitor's reads widen it, exactly).
 */
export function ffnHidden(x: Tensor, p: FFNParams, activation: 'relu' | 'gelu'): Tensor {
  return activation === 'relu' ? T.linear(x, p.w_in, p.b_in, { relu: true, bf16Out: true }) : T.gelu(T.linear(x, p.w_in, p.b_in));
}

/** The FFN's output from its hidden activations: h (N, d_ff) -> h W_outᵀ + b_out (N, d_model). */
export function ffnOut(h: Tensor, p: FFNParams): Tensor {
  return T.linear(h, p.w_out, p.b_out);
}

/** Dense FFN forward: x (N, d_model) -> (N, d_model). */
export function ffnDense(x: Tensor, p: FFNParams, activation: 'relu' | 'gelu'): Tensor {
  return ffnOut(ffnHidden(x, p, activation), p);
}
