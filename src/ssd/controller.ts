/**
 * The SSD phase machine (method page §3): dense → (pattern stable) MoEfy → sparse for `sparse_steps`
 * → merge → dense → … → final dense stretch. Method `moe` MoEfies once when stable and stays sparse
 * (the ablation of never switching back); `dense` never switches. Every transition is logged with its
 * reason and the measured values. The controller acts on the model only at phase boundaries, through
 * moefy/, and its state is part of the checkpoint so a resumed run continues exactly.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { flopsPerToken, type GPT } from '../nn/gpt.js';
import type { GPTConfig } from '../nn/config.js';
import { attachRouters, checkMoEConfig, mergeModel, moefyModel, routerName } from '../moefy/model.js';
import type { Tensor } from '../tensor/index.js';
import * as T from '../tensor/index.js';
import type { StepHook, TrainContext } from '../train/trainer.js';
import { ActivationMonitor, type CheckResult } from './monitor.js';

export type Phase = 'dense' | 'sparse' | 'final';

/** Resolved SSD settings (defaults applied; see train/config.ts for the documented defaults). */
export interface SSDSettings {
  method: 'dense' | 'ssd' | 'moe';
  totalSteps: number;
  checkInterval: number;
  stableThreshold: number;
  stableDelta: number;
  maxActiveRatio: number;
  minDenseSteps: number;
  sparseSteps: number;
  finalDenseFraction: number;
  nExpert: number;
  topK: number;
  trainRouter: boolean;
  /** The router's gradient also reaches the FFN input (see train/config.ts `router_input_grad`). */
  routerInputGrad: boolean;
  moefyMaxIter: number;
  /** Expert split: balanced k-means (default) or a random balanced split (ablation). */
  moefyMethod: 'kmeans' | 'random';
  /** Pattern-stability metric (method page §3.2). */
  similarity: 'jaccard' | 'ari';
  seed: number;
}

/** One logged event: a check or a transition. */
export interface SSDEvent {
  step: number;
  kind: 'check' | 'transition';
  phase: Phase;
  to?: Phase;
  reason?: string;
  activation_ratio?: number[];
  mean_activation_ratio?: number;
  similarity?: number[] | null;
  mean_similarity?: number | null;
  check_seconds?: number;
  moefy_seconds?: number;
  inertia?: number[];
  /** At MoEfication, on the probe set: tokens per expert per layer. */
  expert_load?: number[][];
  /** At MoEfication, on the probe set: share of positive activation mass the selected experts hold, per layer. */
  captured_mass?: number[];
}

interface ControllerState {
  phase: Phase;
  phaseStart: number;
  lastSimilarity: number | null;
  prevSimilarity: number | null;
  moefied: boolean;
  moefications: number;
  sparseStepsDone: number;
  checkSeconds: number;
  moefySeconds: number;
  monitor: ReturnType<ActivationMonitor['state']>;
}

/** Throws a clear error (at start, before training) when settings are out of range or do not fit. */
export function validateSSD(s: SSDSettings, model: GPTConfig): void {
  const bad = (m: string) => { throw new Error(`invalid SSD config: ${m}`); };
  if (!(s.stableThreshold > 0 && s.stableThreshold <= 1)) bad(`stable_threshold must be in (0, 1], got ${s.stableThreshold}`);
  if (!(s.stableDelta >= 0 && s.stableDelta < 1)) bad(`stable_delta must be in [0, 1), got ${s.stableDelta}`);
  if (!(s.maxActiveRatio > 0 && s.maxActiveRatio <= 1)) bad(`max_active_ratio must be in (0, 1], got ${s.maxActiveRatio}`);
  if (!(s.finalDenseFraction >= 0 && s.finalDenseFraction < 1)) bad(`final_dense_fraction must be in [0, 1), got ${s.finalDenseFraction}`);
  if (s.method === 'ssd' && s.sparseSteps >= s.totalSteps * (1 - s.finalDenseFraction)) {
    bad(`a sparse phase of ${s.sparseSteps} steps does not fit before the final dense stretch ` +
      `(${Math.floor(s.totalSteps * (1 - s.finalDenseFraction))} of ${s.totalSteps} steps)`);
  }
  if (s.method !== 'dense') {
    if (model.activation !== 'relu') bad('SSD needs the ReLU activation (exact zeros); set --activation relu');
    try {
      checkMoEConfig(model.d_ff, s.nExpert, s.topK);
    } catch (e) {
      bad((e as Error).message);
    }
  }
}

export class SSDController implements StepHook {
  private phase: Phase = 'dense';
  private phaseStart = 0;
  private lastSimilarity: number | null = null;
  private prevSimilarity: number | null = null;
  private moefied = false;
  private moefications = 0;
  private sparseStepCount = 0;
  private checkSeconds = 0;
  private moefySeconds = 0;
  private routers: Tensor[] = [];
  private readonly monitor: ActivationMonitor;
  private readonly logFile: string | null;

  private readonly check: (model: GPT) => CheckResult;

  /**
   * `probe` is the fixed held-out batch the monitor runs; `check` replaces the monitor (tests script
   * similarity sequences with it); `log` receives one line per transition.
   */
  constructor(readonly s: SSDSettings, probe: { ids: Int32Array; batch: number; seqLen: number }, runDir: string | null,
    private readonly log: (line: string) => void = () => {}, check?: (model: GPT) => CheckResult) {
    this.monitor = new ActivationMonitor({ probe, metric: s.similarity, nExpert: s.nExpert, topK: s.topK });
    this.check = check ?? ((m) => this.monitor.check(m));
    this.logFile = runDir ? path.join(runDir, 'ssd.jsonl') : null;
  }

  /** First step of the final dense stretch. */
  get finalStart(): number {
    return this.s.method === 'ssd' ? Math.floor(this.s.totalSteps * (1 - this.s.finalDenseFraction)) : this.s.totalSteps;
  }

  label(): string {
    return this.phase;
  }

  beforeStep(step: number, ctx: TrainContext): void {
    const s = this.s;
    if (s.method === 'dense') return;
    if (this.phase === 'sparse') {
      if (s.method === 'ssd' && step >= this.finalStart) this.toDense(step, ctx, 'final', `final dense stretch starts at step ${this.finalStart}`);
      else if (s.method === 'ssd' && step - this.phaseStart >= s.sparseSteps) this.toDense(step, ctx, 'dense', `sparse phase of ${s.sparseSteps} steps done`);
    } else if (this.phase === 'dense') {
      if (s.method === 'ssd' && step >= this.finalStart) {
        this.transition(step, 'final', `final dense stretch starts at step ${this.finalStart}`);
      } else if (step > 0 && step % s.checkInterval === 0) {
        this.checkAndMaybeSparsify(step, ctx);
      }
    }
    if (this.phase === 'sparse') this.sparseStepCount++;
  }

  private checkAndMaybeSparsify(step: number, ctx: TrainContext): void {
    const s = this.s;
    const r = this.check(ctx.model);
    this.checkSeconds += r.seconds;
    this.prevSimilarity = this.lastSimilarity;
    this.lastSimilarity = r.meanSimilarity;
    this.record(checkEvent(step, this.phase, r));
    const sim = r.meanSimilarity, prev = this.prevSimilarity;
    const why: string[] = [];
    if (step - this.phaseStart < s.minDenseSteps) why.push(`dense for ${step - this.phaseStart} < min_dense_steps ${s.minDenseSteps}`);
    if (sim === null) why.push('no previous pattern yet');
    const stable = sim !== null && (sim >= s.stableThreshold || (prev !== null && Math.abs(sim - prev) < s.stableDelta));
    if (sim !== null && !stable) why.push(`similarity ${sim.toFixed(4)} < ${s.stableThreshold} and change ${prev === null ? 'unknown' : (sim - prev).toFixed(4)} not within ±${s.stableDelta}`);
    if (r.meanActivationRatio >= s.maxActiveRatio) why.push(`activation ratio ${r.meanActivationRatio.toFixed(3)} ≥ ${s.maxActiveRatio}`);
    if (s.method === 'ssd' && step + s.sparseSteps > this.finalStart) why.push('a sparse phase would not end before the final dense stretch');
    if (why.length) return;
    const reason = `pattern stable: similarity ${sim!.toFixed(4)}${prev !== null ? ` (rise ${(sim! - prev).toFixed(4)})` : ''}, ` +
      `activation ratio ${r.meanActivationRatio.toFixed(3)}`;
    const res = moefyModel(ctx.model, ctx.optimizer, {
      nExpert: s.nExpert, topK: s.topK, warmStart: this.moefied, seed: s.seed + step, maxIter: s.moefyMaxIter, trainRouter: s.trainRouter,
      routerInputGrad: s.routerInputGrad, method: s.moefyMethod,
    });
    this.routers = res.routers;
    this.moefySeconds += res.seconds;
    this.monitor.permute(res.partitions.map((p) => p.perm));
    this.moefied = true;
    this.moefications++;
    const moe = this.monitor.moeReport(ctx.model, s.nExpert);
    this.transition(step, 'sparse', reason, {
      moefy_seconds: res.seconds, inertia: res.partitions.map((p) => p.inertia), expert_load: moe.load, captured_mass: moe.capturedMass,
    });
  }

  private toDense(step: number, ctx: TrainContext, to: Phase, reason: string): void {
    mergeModel(ctx.model, ctx.optimizer, this.routers);
    this.routers = [];
    this.transition(step, to, reason);
  }

  private transition(step: number, to: Phase, reason: string, extra: Partial<SSDEvent> = {}): void {
    this.record({ step, kind: 'transition', phase: this.phase, to, reason, ...extra });
    this.log(`step ${step}: ${this.phase} -> ${to} (${reason})`);
    this.phase = to;
    this.phaseStart = step;
  }

  private record(e: SSDEvent): void {
    if (this.logFile) fs.appendFileSync(this.logFile, JSON.stringify(e) + '\n');
  }

  /** Model FLOPs per trained token in the current phase (the FFN costs top_k / n_expert of dense, plus the router). */
  flopsPerToken(c: GPTConfig): number {
    const dense = flopsPerToken(c);
    if (this.phase !== 'sparse') return dense;
    const ffn = 6 * c.n_layer * 2 * c.d_model * c.d_ff;
    const router = (this.s.trainRouter ? 6 : 2) * c.n_layer * c.d_model * this.s.nExpert; // forward only when frozen
    return dense - ffn * (1 - this.s.topK / this.s.nExpert) + router;
  }

  /** Ends the run: a model still sparse (method `moe`) is merged so it is saved and evaluated dense. */
  finish(ctx: TrainContext): void {
    if (this.phase === 'sparse') this.toDense(this.s.totalSteps, ctx, 'final', 'end of training');
  }

  summary(): Record<string, number> & { sparse_steps: number; sparse_share: number; moefications: number; check_seconds: number; moefy_seconds: number } {
    return {
      sparse_steps: this.sparseStepCount, sparse_share: this.sparseStepCount / this.s.totalSteps,
      moefications: this.moefications, check_seconds: this.checkSeconds, moefy_seconds: this.moefySeconds,
    };
  }

  /** Checkpoint data: the controller state, plus `moe` telling readers the FFN weights are grouped into experts. */
  state(): ControllerState {
    return {
      phase: this.phase, phaseStart: this.phaseStart, lastSimilarity: this.lastSimilarity, prevSimilarity: this.prevSimilarity,
      moefied: this.moefied, moefications: this.moefications, sparseStepsDone: this.sparseStepCount, checkSeconds: this.checkSeconds, moefySeconds: this.moefySeconds,
      monitor: this.monitor.state(),
    };
  }

  extra(): Record<string, unknown> {
    return this.moefied ? { moe: { n_expert: this.s.nExpert } } : {};
  }

  restore(raw: unknown, ctx: TrainContext): void {
    const st = raw as ControllerState | null;
    if (!st) return;
    Object.assign(this, {
      phase: st.phase, phaseStart: st.phaseStart, lastSimilarity: st.lastSimilarity, prevSimilarity: st.prevSimilarity,
      moefied: st.moefied, moefications: st.moefications, sparseStepCount: st.sparseStepsDone, checkSeconds: st.checkSeconds, moefySeconds: st.moefySeconds,
    });
    this.monitor.restore(st.monitor);
    if (st.phase === 'sparse') {
      // Placeholders of the right shape; the trainer then loads their values and moments from the checkpoint.
      const c = ctx.model.config;
      this.routers = Array.from({ length: c.n_layer }, (_, i) =>
        T.parameter(routerName(i), new Float32Array(c.d_model * this.s.nExpert), [c.d_model, this.s.nExpert], ctx.model.backend));
      attachRouters(ctx.model, ctx.optimizer, this.routers, { nExpert: this.s.nExpert, topK: this.s.topK, trainRouter: this.s.trainRouter,
        routerInputGrad: this.s.routerInputGrad });
    }
  }
}

function checkEvent(step: number, phase: Phase, r: CheckResult): SSDEvent {
  return {
    step, kind: 'check', phase, activation_ratio: r.activationRatio, mean_activation_ratio: r.meanActivationRatio,
    similarity: r.similarity, mean_similarity: r.meanSimilarity, check_seconds: r.seconds,
  };
}
