/**
 * MoEfication of a whole GPT (SSD method page §4) and the way back (merge):
 *  - moefy: per layer, balanced k-means of W_in's normalised rows (or a random balanced split), the
 *    permutation applied in place to W_in rows, b_in, W_out columns and their AdamW moments (the dense
 *    function is unchanged), a centroid router W_g as a new trainable parameter, and the model switched
 *    to the MoE FFN;
 *  - merge: drop the routers and switch back to the dense FFN. The experts are the permuted dense
 *    neurons, so merged weights are the permuted dense model.
 */
import type { Backend } from '../backend/contract.js';
import type { GPT } from '../nn/gpt.js';
import { moeFFN } from '../nn/moe.js';
import * as T from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import type { AdamW } from '../train/optim.js';
import { balancedKMeans, randomBalancedSplit, type DotFn } from './kmeans.js';
import { centroidRouter, partitionPermutation, permuteCols, permuteRows } from './permute.js';

/**
 * Default expert size (neurons per expert), ours: n_expert = d_ff / 64 for training and inference alike.
 * Size 32 measured about 1.5× slower than 64 in MoE prefill (gpt2-small shape, cpu), and sparse
 * training steps are the same grouped products; sizes 64 and 128 measured alike.
 */
export const DEFAULT_EXPERT_SIZE = 64;
/** Default active ratio k / n_expert (ours). */
export const DEFAULT_ACTIVE_RATIO = 0.25;

/** Default n_expert for a d_ff: d_ff / DEFAULT_EXPERT_SIZE. Throws if that does not divide. */
export function defaultNExpert(dff: number): number {
  if (dff % DEFAULT_EXPERT_SIZE !== 0) {
    throw new Error(`d_ff = ${dff} is not a multiple of the default expert size ${DEFAULT_EXPERT_SIZE}; set n_expert (--n-expert)`);
  }
  return dff / DEFAULT_EXPERT_SIZE;
}

export interface MoEfyOptions {
  nExpert: number;
  /** Experts computed per token. */
  topK: number;
  /** 'kmeans' (balanced k-means, default) or 'random' (the ablation baseline). */
  method?: 'kmeans' | 'random';
  maxIter?: number;
  seed?: number;
  /** Warm-start k-means from the current (contiguous) expert blocks, as after an earlier MoEfication. */
  warmStart?: boolean;
  /** Give the routers a gradient (default true). */
  trainRouter?: boolean;
  /** The router's gradient also flows into the FFN input (default false; see `MoEOptions`). */
  routerInputGrad?: boolean;
}

export interface LayerPartition {
  layer: number;
  /** Cluster of each neuron in the order before this MoEfication's permutation. */
  assignment: Int32Array;
  /** perm[new] = old: the permutation applied to the layer's neurons. */
  perm: Int32Array;
  inertia: number;
  iterations: number;
  start: 'warm' | 'random' | 'split';
}

export interface MoEfyResult {
  partitions: LayerPartition[];
  /** Router parameter per layer, (d_model, E), named `h.<i>.mlp.router`. */
  routers: Tensor[];
  seconds: number;
}

/**
 * X·Cᵀ through the backend's GEMM; X is uploaded once and kept until the next X or `dispose()`.
 */
export function backendDot(backend: Backend): { dot: DotFn; dispose: () => void } {
  let lastX: Float32Array | null = null, xT: Tensor | null = null;
  const dot: DotFn = (X, C, n, E, d) => {
    if (X !== lastX) {
      xT?.dispose();
      xT = T.tensor(X, [n, d], { backend }).keep();
      lastX = X;
    }
    return T.tidy(() => T.noGrad(() => T.matmul(xT!, T.tensor(C, [E, d], { backend }), { transB: true }).toArray() as Float32Array));
  };
  return { dot, dispose: () => { xT?.dispose(); xT = null; lastX = null; } };
}

/** Permutes one layer's d_ff-indexed tensors (and their optimizer moments) in place. */
export function permuteLayer(model: GPT, optimizer: AdamW | null, layer: number, perm: Int32Array): void {
  const p = model.ffnParams(layer);
  const [dff, dm] = p.w_in.shape as [number, number];
  const rows = (t: Tensor) => upload(t, permuteRows(t.toArray() as Float32Array, dff, t.size / dff, perm));
  const cols = (t: Tensor) => upload(t, permuteCols(t.toArray() as Float32Array, dm, dff, perm));
  for (const [t, f] of [[p.w_in, rows], [p.b_in, rows], [p.w_out, cols]] as const) {
    if (!t) continue;
    f(t);
    if (optimizer?.m.has(t)) {
      f(optimizer.m.get(t)!);
      f(optimizer.v.get(t)!);
    }
  }
}

function upload(t: Tensor, data: Float32Array): void {
  t.backend.upload(t.buf('moefy'), data);
}

/**
 * MoEfies every FFN layer of `model` (in place), registers the routers with `optimizer` (if given) and
 * switches the model to the MoE FFN. Throws if d_ff is not divisible by n_expert or top_k is out of range.
 */
export function moefyModel(model: GPT, optimizer: AdamW | null, o: MoEfyOptions): MoEfyResult {
  const t0 = performance.now();
  const c = model.config;
  checkMoEConfig(c.d_ff, o.nExpert, o.topK);
  const { dot, dispose } = backendDot(model.backend);
  const s = c.d_ff / o.nExpert;
  const partitions: LayerPartition[] = [];
  const routers: Tensor[] = [];
  try {
    for (let i = 0; i < c.n_layer; i++) {
      const w = model.ffnParams(i).w_in.toArray() as Float32Array;
      let part: Omit<LayerPartition, 'perm' | 'layer'>;
      if (o.method === 'random') {
        part = { assignment: randomBalancedSplit(c.d_ff, o.nExpert, (o.seed ?? 0) + i), inertia: NaN, iterations: 0, start: 'split' };
      } else {
        const previous = o.warmStart ? Int32Array.from({ length: c.d_ff }, (_, n) => Math.floor(n / s)) : undefined;
        part = balancedKMeans(w, c.d_ff, c.d_model, {
          nExpert: o.nExpert, seed: (o.seed ?? 0) + i, dot, ...(o.maxIter !== undefined ? { maxIter: o.maxIter } : {}),
          ...(previous ? { previous } : {}),
        });
      }
      const perm = partitionPermutation(part.assignment, o.nExpert);
      permuteLayer(model, optimizer, i, perm);
      partitions.push({ ...part, perm, layer: i });
      const wg = centroidRouter(model.ffnParams(i).w_in.toArray() as Float32Array, c.d_ff, c.d_model, o.nExpert);
      routers.push(T.parameter(routerName(i), wg, [c.d_model, o.nExpert], model.backend));
    }
  } finally {
    dispose();
  }
  attachRouters(model, optimizer, routers, o);
  return { partitions, routers, seconds: (performance.now() - t0) / 1000 };
}

/** The parameter name of layer i's router. */
export function routerName(i: number): string {
  return `h.${i}.mlp.router`;
}

/**
 * Makes `routers` (one (d_model, E) tensor per layer) part of the model's parameters (so checkpoints
 * hold them) and of the optimizer when trainable, and switches the model to MoE mode.
 */
export function attachRouters(model: GPT, optimizer: AdamW | null, routers: Tensor[],
  o: Pick<MoEfyOptions, 'nExpert' | 'topK' | 'trainRouter' | 'routerInputGrad'>): void {
  routers.forEach((r, i) => {
    model.params.set(routerName(i), r);
    if (o.trainRouter === false) r.requiresGrad = false;
    else optimizer?.addParam(r);
  });
  setMoE(model, routers, o);
}

/**
 * Switches the model's FFNs to MoE mode with the given routers (one per layer). `wOutT` (inference
 * only): per layer W_out transposed, (d_ff, d_model), read instead of W_out (see `MoEOptions.wOutT`).
 */
export function setMoE(model: GPT, routers: Tensor[],
  o: Pick<MoEfyOptions, 'nExpert' | 'topK' | 'trainRouter' | 'routerInputGrad'> & { wOutT?: Tensor[] }): void {
  checkMoEConfig(model.config.d_ff, o.nExpert, o.topK);
  model.ffnOverride = (layer, x, p) => moeFFN(x, p, routers[layer]!, {
    nExpert: o.nExpert, topK: o.topK, activation: model.config.activation, trainRouter: o.trainRouter ?? true, routerInputGrad: o.routerInputGrad ?? false,
    ...(o.wOutT ? { wOutT: o.wOutT[layer]! } : {}),
  }).y;
}

/** Merges back to dense: drops the routers (from the optimizer too) and restores the dense FFN. */
export function mergeModel(model: GPT, optimizer: AdamW | null, routers: Tensor[]): void {
  routers.forEach((r, i) => {
    if (optimizer?.m.has(r)) optimizer.removeParam(r);
    if (model.params.get(routerName(i)) === r) model.params.delete(routerName(i));
    r.dispose();
  });
  model.ffnOverride = null;
}

/** Clear errors for an MoE configuration that does not fit the model. */
export function checkMoEConfig(dff: number, nExpert: number, topK: number): void {
  if (!Number.isInteger(nExpert) || nExpert < 1) throw new Error(`n_expert must be a positive integer, got ${nExpert}`);
  if (dff % nExpert !== 0) throw new Error(`d_ff = ${dff} is not divisible by n_expert = ${nExpert}`);
  if (!Number.isInteger(topK) || topK < 1 || topK > nExpert) throw new Error(`top_k = ${topK} is outside [1, n_expert = ${nExpert}]`);
}
