/**
 * The training loop: AdamW with warm-up + cosine LR, gradient clipping and accumulation, periodic
 * evaluation, a JSON-lines metrics log, atomic checkpoints and exact resume.
 * The loop knows nothing of SSD phases: a `StepHook` (the SSD controller) may change the model
 * between steps and store its own state in the checkpoint.
 *
 * Data parallel (`TrainOptions.collective`, one process per rank, see src/parallel): every rank draws the
 * same global batch of batch_size × world_size windows and trains on its own batch_size rows of it;
 * the gradients are summed over the ranks before clipping and the update, so every rank applies the
 * same update and keeps the same parameters (the kernels are deterministic). A run of world_size N is
 * thus the run of batch_size × N in one process, up to the order of the sums. Rank 0 alone writes the
 * logs and checkpoints; evaluation batches are shared out over the ranks.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Backend, Collective } from '../backend/contract.js';
import { RandomBatchSampler, evalBatches, type Dataset, type SamplerState } from '../data/index.js';
import { sameTokenizer } from '../data/tokenizer/index.js';
import { makeConfig, type GPTConfig } from '../nn/config.js';
import { GPT, flopsPerToken } from '../nn/gpt.js';
import * as T from '../tensor/index.js';
import { loadCheckpoint, restoreTensors, saveCheckpoint } from './checkpoint.js';
import type { TrainConfig } from './config.js';
import { AdamW, gradNorm } from './optim.js';
import { allReduceNumbers, GradientSync } from '../parallel/gradient-sync.js';
import { learningRate } from './schedule.js';

/** One logged training step (also a line of metrics.jsonl). */
export interface StepMetrics {
  step: number;
  tokens: number;
  loss: number;
  lr: number;
  grad_norm: number;
  tokens_per_s: number;
  /** Achieved model FLOP/s (6N + attention, PaLM convention; sparse phases count only what they compute). */
  flops_per_s: number;
  /** Model FLOPs utilisation: flops_per_s over the peak of all the ranks' devices (when the backend knows its peak). */
  mfu?: number;
  val_loss?: number;
  phase?: string;
  elapsed_s: number;
}

export interface TrainSummary {
  steps: number;
  tokens: number;
  final_loss: number;
  val_loss: number;
  val_unigram_entropy: number;
  elapsed_s: number;
  tokens_per_s: number;
  flops_per_s: number;
  /** flops_per_s over the devices' peak (see StepMetrics.mfu). */
  mfu?: number;
  /** Model FLOPs actually computed, and what dense training of the same tokens would have cost. */
  flops_actual: number;
  flops_dense_equivalent: number;
  params: number;
  run_dir: string;
  checkpoint: string;
  hook?: Record<string, number>;
}

/** Lets another layer (the SSD controller) act around steps and persist its state. */
export interface StepHook {
  /** Called before each optimizer step's forward passes. */
  beforeStep?(step: number, ctx: TrainContext): void;
  /** Called after the update. */
  afterStep?(step: number, ctx: TrainContext): void;
  /** A label shown on the progress line (e.g. the phase). */
  label?(): string;
  /** Model FLOPs per trained token now (default: the dense model's). */
  flopsPerToken?(c: GPTConfig): number;
  /** Called after the last update, before the final evaluation and checkpoint. */
  finish?(ctx: TrainContext): void;
  /** Figures for the run summary. */
  summary?(): Record<string, number>;
  state?(): unknown;
  /** Extra keys for the checkpoint's `extra` (besides the hook state). */
  extra?(): Record<string, unknown>;
  restore?(state: unknown, ctx: TrainContext): void;
}

export interface TrainContext {
  model: GPT;
  optimizer: AdamW;
  dataset: Dataset;
  config: TrainConfig;
}

export interface TrainOptions {
  /** Resume from this checkpoint directory or run directory. */
  resume?: string;
  hook?: StepHook;
  onStep?: (m: StepMetrics) => void;
  onEval?: (step: number, valLoss: number) => void;
  onCheckpoint?: (dir: string) => void;
  /** The data-parallel group this process is a rank of (its size must be the config's world_size). */
  collective?: Collective;
}

/** The model config a training config implies for a dataset's vocabulary. */
export function modelConfigFor(cfg: TrainConfig, vocabSize: number): GPTConfig {
  const o: Partial<GPTConfig> & { vocab_size: number } = { vocab_size: vocabSize, activation: cfg.activation, ffn_bias: cfg.ffn_bias, dropout: cfg.dropout };
  for (const k of ['n_layer', 'n_head', 'd_model', 'd_ff', 'seq_len'] as const) if (cfg[k] !== undefined) o[k] = cfg[k];
  return makeConfig(cfg.model, o);
}

/**
 * Mean validation loss (nats/token) over the first `maxBatches` fixed validation batches of `batchSize`
 * rows. With a `collective`, each rank evaluates its share of every batch's rows and the sums are
 * combined over the ranks: every rank returns the loss of the whole batches.
 */
export function evaluate(model: GPT, tokens: Dataset['val'], batchSize: number, seqLen: number, maxBatches: number,
  collective?: Collective): number {
  let total = 0, count = 0;
  for (const b of evalBatches(tokens, { batchSize, seqLen, maxBatches })) {
    const share = Math.ceil(b.batchSize / (collective?.size ?? 1));
    const from = Math.min((collective?.rank ?? 0) * share, b.batchSize), rows = Math.min(share, b.batchSize - from);
    if (rows === 0) continue;
    total += T.tidy(() => T.noGrad(() => {
      const x = T.tensor(b.x.subarray(from * seqLen, (from + rows) * seqLen), [rows, seqLen], { dtype: 'i32', backend: model.backend });
      const y = T.tensor(b.y.subarray(from * seqLen, (from + rows) * seqLen), [rows, seqLen], { dtype: 'i32', backend: model.backend });
      return model.forward(x, { targets: y }).loss!.item();
    })) * rows;
    count += rows;
  }
  if (collective) [total, count] = allReduceNumbers(model.backend, collective, [total, count]) as [number, number];
  return total / count;
}

/**
 * Trains a GPT on `dataset` per `cfg` and returns a summary. Throws with a clear message on a NaN/inf
 * loss (the last checkpoint stays intact), on a checkpoint from another model or tokenizer, or when
 * the sequence length exceeds the data.
 */
export function train(cfg: TrainConfig, dataset: Dataset, backend: Backend, opts: TrainOptions = {}): TrainSummary {
  const mc = modelConfigFor(cfg, dataset.tokenizer.vocabSize);
  const seqLen = mc.seq_len;
  const group = opts.collective, world = group?.size ?? 1, rank = group?.rank ?? 0, lead = rank === 0;
  if (world !== cfg.world_size) {
    throw new Error(`world_size is ${cfg.world_size} but this process trains in a group of ${world}: start data-parallel runs with ssd train --world-size N`);
  }
  // Data checks first: they fail fast (sequence longer than the data) before any allocation.
  let sampler = new RandomBatchSampler(dataset.train, { batchSize: cfg.batch_size * world, seqLen, seed: cfg.seed });
  evalBatches(dataset.val, { batchSize: cfg.batch_size * world, seqLen, maxBatches: 1 }).next();
  const model = new GPT(mc, backend, cfg.seed);
  const optimizer = new AdamW([...model.params.values()], {
    lr: cfg.lr, beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weightDecay: cfg.weight_decay,
    noDecay: (p) => GPT.noDecay(p.name ?? ''),
  });
  const ctx: TrainContext = { model, optimizer, dataset, config: cfg };
  let startStep = 0;

  if (opts.resume) {
    const ck = loadCheckpoint(opts.resume);
    if (JSON.stringify(ck.state.model_config) !== JSON.stringify(mc)) {
      throw new Error(`cannot resume from ${ck.dir}: it was trained with model config ${JSON.stringify(ck.state.model_config)}, ` +
        `but this run builds ${JSON.stringify(mc)}; use the same model flags or a new --out`);
    }
    if (!sameTokenizer(ck.state.tokenizer as never, dataset.tokenizer)) {
      throw new Error(`cannot resume from ${ck.dir}: its tokenizer differs from the dataset's (${dataset.dir}); use the same data and tokenizer`);
    }
    // The hook first (it may add parameters, e.g. the routers of a sparse phase), then the tensors.
    if (opts.hook?.restore) opts.hook.restore(ck.state.extra.hook, ctx);
    restoreTensors(model.params, ck.params, `resume from ${ck.dir}`);
    restoreTensors(momentMap(optimizer, model), ck.moments, `resume from ${ck.dir} (optimizer)`);
    optimizer.step = ck.state.optimizer_step;
    sampler = RandomBatchSampler.fromState(dataset.train, ck.state.extra.sampler as SamplerState);
    if (sampler.batchSize !== cfg.batch_size * world) {
      throw new Error(`cannot resume from ${ck.dir}: it drew global batches of ${sampler.batchSize} windows, this run draws ` +
        `${cfg.batch_size * world} (batch_size ${cfg.batch_size} × world_size ${world}); keep batch_size × world_size`);
    }
    startStep = ck.state.step;
    if (startStep >= cfg.steps) {
      throw new Error(`the run in ${ck.dir} already finished (step ${startStep} of ${cfg.steps}); start a new run with another --out`);
    }
    if (lead) truncateLogs(cfg.out, startStep);
  }

  if (lead) fs.mkdirSync(cfg.out, { recursive: true });
  const metricsFile = path.join(cfg.out, 'metrics.jsonl');
  const flopsTok = flopsPerToken(mc, seqLen);
  const tokensPerStep = cfg.batch_size * seqLen * cfg.grad_accum * world;
  // This rank's share of each global batch (B·world, T): rows rank·B … (rank+1)·B − 1, as token offsets.
  const from = rank * cfg.batch_size * seqLen, to = from + cfg.batch_size * seqLen;
  const sync = group ? new GradientSync(group, backend, {
    params: () => optimizer.params, isOptimized: (t) => optimizer.m.has(t), label: () => opts.hook?.label?.() ?? '',
  }) : null;
  const t0 = Date.now();
  let lastLog = { t: t0, step: startStep };
  let lastLoss = NaN, lastVal = NaN, lastCkpt = '';
  let flopsActual = 0, flopsDense = 0, windowFlops = 0;

  const checkpoint = (step: number) => {
    if (!lead) return;
    lastCkpt = saveCheckpoint(cfg.out, model.params, momentMap(optimizer, model), {
      step, model_config: mc, tokenizer: dataset.tokenizer.toJSON(), train_config: cfg, optimizer_step: optimizer.step,
      extra: { sampler: sampler.state(), hook: opts.hook?.state?.() ?? null, val_loss: lastVal, ...(opts.hook?.extra?.() ?? {}) },
    }, cfg.keep_checkpoints);
    opts.onCheckpoint?.(lastCkpt);
  };

  try {
    for (let step = startStep; step < cfg.steps; step++) {
      opts.hook?.beforeStep?.(step, ctx);
      const stepFlops = (opts.hook?.flopsPerToken?.(mc) ?? flopsTok) * tokensPerStep;
      flopsActual += stepFlops;
      flopsDense += flopsTok * tokensPerStep;
      windowFlops += stepFlops;
      let loss = 0;
      for (let micro = 0; micro < cfg.grad_accum; micro++) {
        const b = sampler.next();
        loss += T.tidy(() => {
          const x = T.tensor(b.x.subarray(from, to), [cfg.batch_size, seqLen], { dtype: 'i32', backend });
          const y = T.tensor(b.y.subarray(from, to), [cfg.batch_size, seqLen], { dtype: 'i32', backend });
          const seed = step * cfg.grad_accum + micro + cfg.seed * 7919 + rank * 104729;
          const l = model.forward(x, { targets: y, train: true, seed }).loss!;
          // Data parallel: the last pass may start summing complete gradients over the ranks.
          T.backward(l, undefined, micro === cfg.grad_accum - 1 ? sync?.lastPassHook() : undefined);
          return l.item();
        }) / cfg.grad_accum;
      }
      // The rest of the gradients' sums, and the loss averaged over the ranks (checked below on every rank alike).
      if (sync) loss = sync.finish(loss, step);
      if (!Number.isFinite(loss)) {
        throw new Error(`training diverged: the loss is ${loss} at step ${step}; ` +
          `${lastCkpt ? `the last good checkpoint (${lastCkpt}) is intact` : 'no checkpoint was written yet'}; ` +
          `try a lower --lr or more --warmup-steps`);
      }
      // Gradients hold the sum over micro-batches (and ranks) of per-micro means: average, then clip.
      const norm = gradNorm(optimizer.params) / (cfg.grad_accum * world);
      if (!Number.isFinite(norm)) {
        throw new Error(`training diverged: the gradient norm is ${norm} at step ${step} (loss ${loss}); no update was applied; ` +
          `${lastCkpt ? `the last good checkpoint (${lastCkpt}) is intact` : 'no checkpoint was written yet'}; ` +
          `try a lower --lr or more --warmup-steps`);
      }
      const clip = cfg.grad_clip > 0 && norm > cfg.grad_clip ? cfg.grad_clip / norm : 1;
      const lr = learningRate(step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio);
      optimizer.update(lr, clip / (cfg.grad_accum * world));
      optimizer.zeroGrad();
      opts.hook?.afterStep?.(step, ctx);
      lastLoss = loss;

      const done = step + 1;
      if (done === cfg.steps) opts.hook?.finish?.(ctx);
      const isEval = done % cfg.eval_interval === 0 || done === cfg.steps;
      if (isEval) {
        lastVal = evaluate(model, dataset.val, cfg.batch_size * world, seqLen, cfg.eval_batches, group);
        opts.onEval?.(done, lastVal);
      }
      if (done % cfg.log_interval === 0 || isEval || done === 1) {
        const now = Date.now();
        const dt = Math.max(now - lastLog.t, 1) / 1000;
        const tps = ((done - lastLog.step) * tokensPerStep) / dt;
        const m: StepMetrics = {
          step: done, tokens: done * tokensPerStep, loss, lr, grad_norm: norm, tokens_per_s: tps,
          flops_per_s: windowFlops / dt, elapsed_s: (now - t0) / 1000,
          ...(backend.peakFlops ? { mfu: windowFlops / dt / (backend.peakFlops * world) } : {}),
          ...(isEval ? { val_loss: lastVal } : {}), ...(opts.hook?.label ? { phase: opts.hook.label() } : {}),
        };
        if (lead) fs.appendFileSync(metricsFile, JSON.stringify(m) + '\n');
        opts.onStep?.(m);
        lastLog = { t: now, step: done };
        windowFlops = 0;
      }
      if (done % cfg.ckpt_interval === 0 || done === cfg.steps) checkpoint(done);
    }
    const elapsed = (Date.now() - t0) / 1000;
    const trained = (cfg.steps - startStep) * tokensPerStep;
    const summary: TrainSummary = {
      steps: cfg.steps, tokens: cfg.steps * tokensPerStep, final_loss: lastLoss, val_loss: lastVal,
      val_unigram_entropy: dataset.meta.unigramEntropy.val, elapsed_s: elapsed,
      tokens_per_s: trained / elapsed, flops_per_s: flopsActual / elapsed, flops_actual: flopsActual,
      ...(backend.peakFlops ? { mfu: flopsActual / elapsed / (backend.peakFlops * world) } : {}),
      flops_dense_equivalent: flopsDense, params: model.numParams(), run_dir: cfg.out, checkpoint: lastCkpt,
      ...(opts.hook?.summary ? { hook: opts.hook.summary() } : {}),
    };
    if (lead) fs.writeFileSync(path.join(cfg.out, 'summary.json'), JSON.stringify(summary, null, 1));
    return summary;
  } finally {
    optimizer.dispose();
    model.dispose();
  }
}

/**
 * Drops the lines with `step` > `step` from every JSON-lines log of a run directory: an interrupted run
 * wrote them after the checkpoint that is being resumed, and the resumed run writes them again.
 */
function truncateLogs(runDir: string, step: number): void {
  if (!fs.existsSync(runDir)) return;
  for (const f of fs.readdirSync(runDir).filter((n) => n.endsWith('.jsonl'))) {
    const file = path.join(runDir, f);
    const kept = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l && !((JSON.parse(l) as { step?: number }).step! > step));
    fs.writeFileSync(file, kept.length ? kept.join('\n') + '\n' : '');
  }
}

/** Optimizer moments keyed `m.<param>` / `v.<param>` for every optimized parameter, for checkpoints. */
function momentMap(opt: AdamW, model: GPT): Map<string, T.Tensor> {
  const m = new Map<string, T.Tensor>();
  for (const [n, p] of model.params) {
    if (!opt.m.has(p)) continue;
    m.set(`m.${n}`, opt.m.get(p)!);
    m.set(`v.${n}`, opt.v.get(p)!);
  }
  return m;
}
