/**
 * `ssd compare`: trains the same model with several methods (dense, ssd, moe) on the same data, seed
 * and token budget, evaluates every final checkpoint in dense mode and MoEfied at several active
 * ratios on the same validation batches, and writes the report (report.ts).
 * Layout of the comparison directory: `<out>/<method>/` (ordinary run directories), `<out>/compare.json`,
 * `<out>/report.md`, `<out>/report.json`, `<out>/plots/*.svg`.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Backend } from '../backend/contract.js';
import type { Dataset } from '../data/index.js';
import { checkMoEConfig } from '../moefy/model.js';
import type { TrainConfig } from '../train/config.js';
import { modelConfigFor, train, type StepMetrics, type TrainSummary } from '../train/trainer.js';
import { createSSDController, ssdSettings } from './index.js';
import { writeReport, type CompareRecord, type Method, type Report } from './report.js';
import { evaluateDenseAndMoE, topKForRatio, type ModelEval } from './sparse-eval.js';

const METHODS: readonly Method[] = ['dense', 'ssd', 'moe'];

/** Parses "dense,ssd[,moe]". Throws on an empty list, an unknown method or a repeated one. */
export function parseMethods(list: string): Method[] {
  const items = list.split(',').map((s) => s.trim()).filter(Boolean);
  if (!items.length) throw new Error(`--methods is empty: give a comma-separated list of ${METHODS.join(', ')}`);
  for (const m of items) if (!METHODS.includes(m as Method)) throw new Error(`unknown method '${m}' in --methods: choose from ${METHODS.join(', ')}`);
  if (new Set(items).size !== items.length) throw new Error(`--methods lists a method twice: ${list}`);
  return items as Method[];
}

/** Parses "0.125,0.25,0.5". Throws on an empty list or a value that is not a number in (0, 1]. */
export function parseRatios(list: string): number[] {
  const items = list.split(',').map((s) => s.trim()).filter(Boolean);
  if (!items.length) throw new Error('--ratios is empty: give active ratios in (0, 1], e.g. 0.125,0.25,0.5');
  return items.map((s) => {
    const r = Number(s);
    if (!(r > 0 && r <= 1)) throw new Error(`active ratio '${s}' in --ratios is not a number in (0, 1]`);
    return r;
  });
}

/** Progress callbacks of a comparison (all optional). */
export interface CompareEvents {
  /** A method's training starts (its config has `method` and `out` set). */
  runStart?(method: Method, cfg: TrainConfig): void;
  step?(method: Method, m: StepMetrics): void;
  /** SSD transition lines. */
  log?(line: string): void;
  runEnd?(method: Method, s: TrainSummary): void;
  evaluated?(method: Method, e: ModelEval): void;
}

export interface CompareOptions {
  /** The base config; `out` is the comparison directory, `method` is ignored. */
  config: TrainConfig;
  methods: Method[];
  /** Active ratios k/E in (0, 1] at which every final model is evaluated MoEfied. */
  ratios: number[];
  dataset: Dataset;
  /** Must be the current backend (T.useBackend) as for train(). */
  backend: Backend;
  /** Recorded in the report (the exact command line). */
  command?: string;
  on?: CompareEvents;
}

export interface CompareResult {
  dir: string;
  summaries: Partial<Record<Method, TrainSummary>>;
  evals: Partial<Record<Method, ModelEval>>;
  report: Report;
  /** Paths of report.md and report.json. */
  markdown: string;
  json: string;
}

/**
 * Runs the comparison. Checks everything before training anything: the method list, every ratio
 * against n_expert (a multiple of 1/n_expert), each method's SSD settings, and that no run directory
 * `<out>/<method>` holds an earlier run (metrics would be appended to it). Throws a clear error on any.
 */
export async function compare(o: CompareOptions): Promise<CompareResult> {
  const dir = o.config.out;
  if (!o.methods.length) throw new Error('compare: no methods given');
  if (new Set(o.methods).size !== o.methods.length) throw new Error(`compare: a method is listed twice (${o.methods.join(', ')})`);
  if (!o.ratios.length) throw new Error('compare: no active ratios given');
  const mc = modelConfigFor(o.config, o.dataset.tokenizer.vocabSize);
  const nExpert = ssdSettings(o.config, mc).nExpert;
  checkMoEConfig(mc.d_ff, nExpert, 1);
  for (const r of o.ratios) topKForRatio(r, nExpert);
  const plans = o.methods.map((method) => {
    const cfg: TrainConfig = { ...o.config, method, out: path.join(dir, method) };
    if (fs.existsSync(cfg.out) && fs.readdirSync(cfg.out).length) {
      throw new Error(`${cfg.out} already holds a run; use a new --out or delete it (re-render with --report-only ${dir})`);
    }
    return { method, cfg, hook: createSSDController(cfg, mc, o.dataset, o.on?.log) };
  });

  const summaries: CompareResult['summaries'] = {}, evals: CompareResult['evals'] = {};
  for (const { method, cfg, hook } of plans) {
    o.on?.runStart?.(method, cfg);
    const s = train(cfg, o.dataset, o.backend, { hook, onStep: (m) => o.on?.step?.(method, m) });
    summaries[method] = s;
    o.on?.runEnd?.(method, s);
    const e = evaluateDenseAndMoE(s.checkpoint, o.backend, o.dataset.val, {
      batchSize: cfg.batch_size, seqLen: mc.seq_len, maxBatches: cfg.eval_batches, nExpert, ratios: o.ratios,
      seed: cfg.seed, maxIter: cfg.moefy_max_iter,
    });
    evals[method] = e;
    o.on?.evaluated?.(method, e);
  }

  const record: CompareRecord = {
    command: o.command ?? null, created: new Date().toISOString(), methods: o.methods, ratios: o.ratios, config: o.config,
    model_config: mc, n_expert: nExpert, backend: o.backend.name,
    threads: o.config.threads ?? (process.env.SSD_THREADS ? Number(process.env.SSD_THREADS) : null),
    host: { cpu: os.cpus()[0]?.model ?? 'unknown', cores: os.cpus().length, node: process.version, platform: `${os.platform()} ${os.arch()}` },
    evals,
  };
  fs.writeFileSync(path.join(dir, 'compare.json'), JSON.stringify(record, null, 1));
  const { report, markdown, json } = await writeReport(dir);
  return { dir, summaries, evals, report, markdown, json };
}
