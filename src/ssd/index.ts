/** SSD: settings from the training config, and the controller hook the trainer runs with. */
import { checkSeqLen, type Dataset } from '../data/index.js';
import { DEFAULT_EXPERT_SIZE, defaultNExpert } from '../moefy/model.js';
import type { GPTConfig } from '../nn/config.js';
import type { TrainConfig } from '../train/config.js';
import { SSDController, validateSSD, type SSDSettings } from './controller.js';

export { SSDController, validateSSD } from './controller.js';
export type { SSDSettings, SSDEvent, Phase } from './controller.js';

/** The SSD settings a training config implies for a model (defaults applied). */
export function ssdSettings(cfg: TrainConfig, mc: GPTConfig): SSDSettings {
  const nExpert = cfg.n_expert ?? (cfg.method === 'dense' && mc.d_ff % DEFAULT_EXPERT_SIZE !== 0 ? 1 : defaultNExpert(mc.d_ff));
  return {
    method: cfg.method, totalSteps: cfg.steps, checkInterval: cfg.check_interval, stableThreshold: cfg.stable_threshold,
    stableDelta: cfg.stable_delta, maxActiveRatio: cfg.max_active_ratio,
    minDenseSteps: cfg.min_dense_steps ?? Math.floor(cfg.steps / 10), sparseSteps: cfg.sparse_steps ?? Math.max(1, Math.floor(cfg.steps / 10)),
    finalDenseFraction: cfg.final_dense_fraction, nExpert, topK: cfg.moe_top_k ?? Math.max(1, Math.round(nExpert * cfg.active_ratio)),
    trainRouter: cfg.train_router, routerInputGrad: cfg.router_input_grad, moefyMaxIter: cfg.moefy_max_iter, moefyMethod: cfg.moefy_method,
    similarity: cfg.similarity, seed: cfg.seed,
  };
}

/**
 * The controller for a run, with its probe set: the first `probe_tokens` validation tokens as windows
 * of seq_len; it logs its events to `runDir`/ssd.jsonl (null: not at all, e.g. on data-parallel ranks
 * other than 0). Throws a clear error at start for settings out of range or an MoE config that does not fit.
 */
export function createSSDController(cfg: TrainConfig, mc: GPTConfig, dataset: Dataset, log?: (line: string) => void,
  runDir: string | null = cfg.out): SSDController {
  const s = ssdSettings(cfg, mc);
  validateSSD(s, mc);
  const T = mc.seq_len;
  checkSeqLen(T, dataset.val.length);
  const batch = Math.max(1, Math.min(Math.ceil(cfg.probe_tokens / T), Math.floor((dataset.val.length - 1) / T)));
  const ids = new Int32Array(batch * T);
  dataset.val.copyTo(0, batch * T, ids);
  return new SSDController(s, { ids, batch, seqLen: T }, runDir, log);
}
