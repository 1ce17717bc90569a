/**
 * Dense and MoE inference modes of one model. MoE mode needs the FFN neurons grouped into contiguous
 * experts (expert e = neurons e·s .. (e+1)·s − 1) and a router per layer:
 *  - a checkpoint whose state has `extra.moe = { n_expert }` (written by SSD training) already stores
 *    its FFN weights in that order: centroid routers are built from the blocks, no clustering;
 *  - otherwise the model is MoEfied at load (balanced k-means, MoEfication §4; weights permuted in
 *    place, the dense function unchanged), unless MoEfication is disabled, which is then an error.
 * The routing (top_k, i.e. the active ratio k/E) is chosen at run time and can be changed freely;
 * dense mode simply drops the FFN override (the permuted weights compute the same dense function).
 */
import type { Backend } from '../backend/contract.js';
import type { Tokenizer } from '../data/tokenizer/index.js';
import type { GPT } from '../nn/gpt.js';
import { checkMoEConfig, moefyModel, setMoE } from '../moefy/model.js';
import { centroidRouter } from '../moefy/permute.js';
import { DEFAULT_ACTIVE_RATIO, defaultNExpert } from '../moefy/model.js';
export { DEFAULT_ACTIVE_RATIO, DEFAULT_EXPERT_SIZE, defaultNExpert } from '../moefy/model.js';
import * as T from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import type { CheckpointState } from '../train/checkpoint.js';
import { loadModel } from '../train/load.js';

export interface MoEChoice {
  /** Experts per layer (default: the checkpoint's partition, else d_ff / DEFAULT_EXPERT_SIZE). */
  nExpert?: number;
  /** Experts per token; overrides activeRatio. */
  topK?: number;
  /** k / E, rounded to the nearest whole number of experts (default DEFAULT_ACTIVE_RATIO). */
  activeRatio?: number;
  /** MoEfy at load when the checkpoint stores no partition (default true). */
  moefy?: boolean;
  /** Seed of the k-means of MoEfication at load. */
  seed?: number;
}

/** The experts and routers of a model prepared for MoE mode. */
export interface MoEExperts {
  nExpert: number;
  /** Where the partition came from. */
  source: 'checkpoint' | 'moefied' | 'blocks';
  /** One router (d_model, E) per layer. */
  routers: Tensor[];
  /** Per layer W_out transposed, (d_ff, d_model): contiguous expert blocks for decode (the memory of one more W_out). */
  wOutT: Tensor[];
  /** Seconds spent building the partition and routers. */
  seconds: number;
}

/** The partition a checkpoint stores (`extra.moe.n_expert`), or null. Throws on a malformed entry. */
export function storedPartition(state: CheckpointState): { n_expert: number } | null {
  const moe = state.extra?.['moe'] as { n_expert?: unknown } | undefined | null;
  if (moe === undefined || moe === null) return null;
  if (typeof moe.n_expert !== 'number' || !Number.isInteger(moe.n_expert) || moe.n_expert < 1) {
    throw new Error(`checkpoint: extra.moe must be { n_expert: positive integer }, got ${JSON.stringify(moe)}`);
  }
  return { n_expert: moe.n_expert };
}

/** top_k from an explicit top_k or an active ratio (rounded). Throws if it falls outside [1, E]. */
export function resolveTopK(nExpert: number, o: Pick<MoEChoice, 'topK' | 'activeRatio'>): number {
  if (o.topK !== undefined) return o.topK;
  const ratio = o.activeRatio ?? DEFAULT_ACTIVE_RATIO;
  if (!(ratio > 0 && ratio <= 1)) throw new Error(`active ratio must be in (0, 1], got ${ratio}`);
  return Math.max(1, Math.round(ratio * nExpert));
}

/** Centroid routers (d_model, E) of the current contiguous expert blocks of every layer. */
export function blockRouters(model: GPT, nExpert: number): Tensor[] {
  const c = model.config;
  checkMoEConfig(c.d_ff, nExpert, 1);
  return Array.from({ length: c.n_layer }, (_, i) => {
    const wg = centroidRouter(model.ffnParams(i).w_in.toArray() as Float32Array, c.d_ff, c.d_model, nExpert);
    return T.tensor(wg, [c.d_model, nExpert], { backend: model.backend }).keep();
  });
}

/**
 * Prepares `model` for MoE mode: routers from a stored partition (`stored`), or MoEfication in place,
 * or (`source: 'blocks'`, for random-weight benchmarks) routers of the blocks as they are.
 * Throws if there is no stored partition and MoEfication is disabled, if --n-expert contradicts the
 * stored partition, or if n_expert does not divide d_ff.
 */
export function prepareExperts(model: GPT, stored: { n_expert: number } | null, o: MoEChoice & { blocks?: boolean } = {}): MoEExperts {
  const t0 = performance.now();
  const done = (nExpert: number, source: MoEExperts['source'], routers: Tensor[]): MoEExperts => ({
    nExpert, source, routers, seconds: (performance.now() - t0) / 1000,
    wOutT: Array.from({ length: model.config.n_layer }, (_, i) =>
      T.tidy(() => T.noGrad(() => T.transpose(model.ffnParams(i).w_out))).keep()), // (d_ff, d_model)
  });
  if (stored) {
    if (o.nExpert !== undefined && o.nExpert !== stored.n_expert) {
      throw new Error(`the checkpoint stores a partition into ${stored.n_expert} experts; --n-expert ${o.nExpert} differs ` +
        '(drop --n-expert to use the stored partition)');
    }
    return done(stored.n_expert, 'checkpoint', blockRouters(model, stored.n_expert));
  }
  const nExpert = o.nExpert ?? defaultNExpert(model.config.d_ff);
  if (o.blocks) return done(nExpert, 'blocks', blockRouters(model, nExpert));
  if (o.moefy === false) {
    throw new Error('MoE mode: the checkpoint stores no expert partition (state.extra.moe) and MoEfication at load is ' +
      'disabled (--no-moefy); allow it (drop --no-moefy) or use --mode dense');
  }
  const r = moefyModel(model, null, { nExpert, topK: 1, trainRouter: false, seed: o.seed ?? 0 });
  model.ffnOverride = null; // moefyModel switches to MoE; the caller picks top_k with useMoE
  return done(nExpert, 'moefied', r.routers);
}

/** Frees the routers and transposed weights of `experts`. */
export function disposeExperts(experts: MoEExperts): void {
  for (const t of [...experts.routers, ...experts.wOutT]) t.dispose();
}

/** Runs the model's FFNs as MoE with `topK` experts per token (inference: no router gradient). */
export function useMoE(model: GPT, experts: MoEExperts, topK: number): void {
  setMoE(model, experts.routers, { nExpert: experts.nExpert, topK, trainRouter: false, wOutT: experts.wOutT });
}

/** Runs the model's FFNs dense again. */
export function useDense(model: GPT): void {
  model.ffnOverride = null;
}

export interface InferenceModel {
  model: GPT;
  tokenizer: Tokenizer;
  state: CheckpointState;
  dir: string;
  /** The experts in MoE mode, null in dense mode. */
  experts: MoEExperts | null;
  /** Experts per token in MoE mode, null in dense mode. */
  topK: number | null;
  /** Frees the model and the routers. */
  dispose(): void;
}

/**
 * Loads a checkpoint for inference in dense or MoE mode (see the module comment for where the experts
 * come from). Throws on a missing/corrupt checkpoint and on the errors of `prepareExperts`/`resolveTopK`.
 */
export function loadForInference(path: string, backend: Backend, mode: 'dense' | 'moe', o: MoEChoice = {}): InferenceModel {
  const loaded = loadModel(path, backend);
  if (mode === 'dense') return { ...loaded, experts: null, topK: null, dispose: () => loaded.model.dispose() };
  try {
    const experts = prepareExperts(loaded.model, storedPartition(loaded.state), o);
    const topK = resolveTopK(experts.nExpert, o);
    useMoE(loaded.model, experts, topK);
    const dispose = () => {
      loaded.model.dispose();
      disposeExperts(experts);
    };
    return { ...loaded, experts, topK, dispose };
  } catch (e) {
    loaded.model.dispose();
    throw e;
  }
}
