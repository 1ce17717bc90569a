/**
 * Evaluation of a trained checkpoint in dense mode and MoEfied with top-k routing at several active
 * ratios (method page §3.6): every model gets the same treatment, a fresh balanced k-means
 * MoEfication of its final weights with centroid routers, so dense- and SSD-trained models compare fairly.
 */
import type { Backend } from '../backend/contract.js';
import type { TokenSequence } from '../data/index.js';
import { mergeModel, moefyModel, setMoE } from '../moefy/model.js';
import { loadModel } from '../train/load.js';
import { evaluate } from '../train/trainer.js';

/** Validation loss of the model MoEfied at one active ratio. */
export interface MoEEval {
  /** The requested active ratio k / E. */
  ratio: number;
  top_k: number;
  n_expert: number;
  /** Nats per token. */
  val_loss: number;
  /** Increase over the same model's dense-mode loss, in percent. */
  increase_pct: number;
}

/** One checkpoint's dense-mode and MoEfied validation losses. */
export interface ModelEval {
  checkpoint: string;
  /** Nats per token. */
  dense_val_loss: number;
  moe: MoEEval[];
  /** Wall time of the MoEfication (k-means) in seconds. */
  moefy_seconds: number;
}

export interface SparseEvalSettings {
  batchSize: number;
  seqLen: number;
  /** Number of fixed validation batches (the first ones, the same for every model). */
  maxBatches: number;
  nExpert: number;
  /** Active ratios in (0, 1]; each must be a multiple of 1 / nExpert. */
  ratios: number[];
  /** k-means seed and iterations per start. */
  seed: number;
  maxIter: number;
}

/**
 * Experts per token for an active ratio: ratio × nExpert, which must be a whole number ≥ 1.
 * Throws a clear error for a ratio outside (0, 1] or one that is not a multiple of 1 / nExpert.
 */
export function topKForRatio(ratio: number, nExpert: number): number {
  if (!(ratio > 0 && ratio <= 1)) throw new Error(`active ratio ${ratio} is outside (0, 1]`);
  const k = ratio * nExpert;
  if (Math.abs(k - Math.round(k)) > 1e-6) {
    throw new Error(`active ratio ${ratio} gives top_k = ${+k.toFixed(4)} of n_expert = ${nExpert}, not a whole number; ` +
      `use multiples of 1/${nExpert} or set --n-expert`);
  }
  return Math.round(k);
}

/**
 * Loads the checkpoint (`checkpoint`: checkpoint or run directory) on `backend`, evaluates it dense on
 * the first `maxBatches` validation batches of `val`, MoEfies it once and evaluates it at every ratio.
 * Throws on an unreadable checkpoint or a ratio that does not fit (see topKForRatio).
 */
export function evaluateDenseAndMoE(checkpoint: string, backend: Backend, val: TokenSequence, s: SparseEvalSettings): ModelEval {
  const topKs = s.ratios.map((r) => topKForRatio(r, s.nExpert));
  const { model, dir } = loadModel(checkpoint, backend);
  try {
    const evalLoss = () => evaluate(model, val, s.batchSize, s.seqLen, s.maxBatches);
    const dense = evalLoss();
    // The partition does not depend on k: MoEfy once, then switch top_k per ratio.
    const res = moefyModel(model, null, { nExpert: s.nExpert, topK: topKs[0]!, seed: s.seed, maxIter: s.maxIter, trainRouter: false });
    const moe = s.ratios.map((ratio, i): MoEEval => {
      setMoE(model, res.routers, { nExpert: s.nExpert, topK: topKs[i]!, trainRouter: false });
      const loss = evalLoss();
      return { ratio, top_k: topKs[i]!, n_expert: s.nExpert, val_loss: loss, increase_pct: (loss / dense - 1) * 100 };
    });
    mergeModel(model, null, res.routers);
    return { checkpoint: dir, dense_val_loss: dense, moe, moefy_seconds: res.seconds };
  } finally {
    model.dispose();
  }
}
