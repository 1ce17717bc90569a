/**
 * The comparison report (`ssd compare`): reads a comparison directory — `compare.json` (setup and
 * the dense / MoEfied evaluations) and one run directory per method (`summary.json`,
 * `metrics.jsonl`, `ssd.jsonl`) — and writes `report.md`, `report.json` and SVG charts under
 * `plots/`. Everything is derived from those files, so a report can be re-rendered without retraining.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { GPTConfig } from '../nn/config.js';
import type { TrainConfig } from '../train/config.js';
import type { StepMetrics, TrainSummary } from '../train/trainer.js';
import type { SSDEvent } from './controller.js';
import { layerChart, lossChart, phaseChart, renderSVG, type LayerPoint, type LossPoint, type PhaseSegment } from './plots.js';
import type { ModelEval } from './sparse-eval.js';

export type Method = TrainConfig['method'];

/** Contents of `<dir>/compare.json`, written by compare() after training and evaluating. */
export interface CompareRecord {
  /** The command line that produced the comparison, when run from the CLI. */
  command: string | null;
  /** ISO time the record was written. */
  created: string;
  methods: Method[];
  ratios: number[];
  /** The base training config (each run differs only in `method` and `out`). */
  config: TrainConfig;
  model_config: GPTConfig;
  n_expert: number;
  backend: string;
  threads: number | null;
  host: { cpu: string; cores: number; node: string; platform: string };
  evals: Partial<Record<Method, ModelEval>>;
}

/** The files of one method's run directory. */
export interface RunData {
  method: Method;
  summary: TrainSummary;
  metrics: StepMetrics[];
  /** Empty for method dense (its controller logs nothing). */
  events: SSDEvent[];
}

/** The SSD targets (dense vs SSD at equal tokens, method page §3.6); `clearlyLessFactor`: the SSD model's MoE loss increase must be at most this share of the dense model's. */
export const TARGETS = { wallclockRatio: 0.8, lossDiffPct: 2, moeRatio: 0.25, moeOwnIncreasePct: 3, clearlyLessFactor: 0.5 } as const;

/** One method's row of figures. */
export interface RunRow {
  method: Method;
  steps: number;
  tokens: number;
  elapsed_s: number;
  tokens_per_s: number;
  /** Share of steps trained sparse, and the number of MoEfications. */
  sparse_share: number;
  moefications: number;
  /** Seconds spent in activation checks and in MoEfication (part of elapsed_s). */
  check_seconds: number;
  moefy_seconds: number;
  flops_actual: number;
  flops_dense_equivalent: number;
  eval: ModelEval;
}

/** A non-dense method against the dense run. */
export interface VersusDense {
  method: Method;
  /** elapsed(method) / elapsed(dense), same tokens. */
  wallclock_ratio: number;
  /** flops_actual / flops_dense_equivalent of the method's run: the wall-clock ratio if time followed FLOPs. */
  flop_ideal: number;
  /** (dense-mode val loss of the method − dense run's) / dense run's, in percent. */
  loss_diff_pct: number;
}

export interface TargetResult {
  id: 'wallclock' | 'loss' | 'moe_own' | 'moe_vs_dense';
  /** The target in words. */
  target: string;
  /** null when the comparison lacks the runs or ratio to measure it. */
  pass: boolean | null;
  value: number | null;
  limit: number | null;
  /** The Markdown line, e.g. "**MISS** … misses by 6.3%". */
  line: string;
}

export interface Report {
  record: Omit<CompareRecord, 'evals'>;
  runs: RunRow[];
  versus_dense: VersusDense[];
  targets: TargetResult[];
  /** Chart file paths relative to the comparison directory, null where there was nothing to plot. */
  plots: Record<PlotName, string | null>;
}

type PlotName = 'val_loss_tokens' | 'val_loss_wallclock' | 'activation_ratio' | 'similarity' | 'phases';

/** Parses a JSON-lines file; throws naming the file and line on bad JSON. */
function readJsonl<T>(file: string): T[] {
  return fs.readFileSync(file, 'utf8').split('\n').flatMap((l, i) => {
    if (!l.trim()) return [];
    try {
      return [JSON.parse(l) as T];
    } catch (e) {
      throw new Error(`${file}:${i + 1}: not valid JSON (${(e as Error).message})`);
    }
  });
}

function readJson<T>(file: string, what: string): T {
  if (!fs.existsSync(file)) throw new Error(`${file} not found: ${what}`);
  return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
}

/** Reads `<dir>/<method>/`. Throws when the run did not finish (no summary.json). */
export function loadRun(dir: string, method: Method): RunData {
  const run = path.join(dir, method);
  const summary = readJson<TrainSummary>(path.join(run, 'summary.json'), `the ${method} run did not finish; run ssd compare again`);
  const ssdLog = path.join(run, 'ssd.jsonl');
  return {
    method, summary, metrics: readJsonl<StepMetrics>(path.join(run, 'metrics.jsonl')),
    events: fs.existsSync(ssdLog) ? readJsonl<SSDEvent>(ssdLog) : [],
  };
}

/** Reads `<dir>/compare.json`. Throws with a hint when `dir` is not a comparison directory. */
export function loadRecord(dir: string): CompareRecord {
  return readJson<CompareRecord>(path.join(dir, 'compare.json'), `${dir} is not a finished comparison (run ssd compare --out ${dir} first)`);
}

/** Phase stretches of a run from its transition events; a run without events was dense throughout. */
export function phaseSegments(method: string, events: SSDEvent[], totalSteps: number): PhaseSegment[] {
  const out: PhaseSegment[] = [];
  let cur: PhaseSegment = { method, phase: 'dense', start: 0, end: totalSteps };
  for (const e of events) {
    if (e.kind !== 'transition' || !e.to) continue;
    if (e.step > cur.start) out.push({ ...cur, end: e.step });
    cur = { method, phase: e.to, start: e.step, end: totalSteps };
  }
  if (totalSteps > cur.start) out.push(cur);
  return out;
}

/** Per-layer values of the 'check' events (`similarity` is absent at the first check). */
export function layerPoints(events: SSDEvent[], key: 'activation_ratio' | 'similarity'): LayerPoint[] {
  return events.filter((e) => e.kind === 'check' && e[key]).flatMap((e) => e[key]!.map((value, layer) => ({ step: e.step, layer, value })));
}

/** Computes every figure, comparison and target verdict from a record and its runs. */
export function buildReport(record: CompareRecord, runs: RunData[]): Omit<Report, 'plots'> {
  const rows = runs.map((r): RunRow => {
    const ev = record.evals[r.method];
    if (!ev) throw new Error(`compare.json has no evaluation of the ${r.method} run`);
    return {
      method: r.method, steps: r.summary.steps, tokens: r.summary.tokens, elapsed_s: r.summary.elapsed_s,
      tokens_per_s: r.summary.tokens_per_s, sparse_share: r.summary.hook?.sparse_share ?? 0,
      moefications: r.summary.hook?.moefications ?? 0, check_seconds: r.summary.hook?.check_seconds ?? 0,
      moefy_seconds: r.summary.hook?.moefy_seconds ?? 0, flops_actual: r.summary.flops_actual,
      flops_dense_equivalent: r.summary.flops_dense_equivalent, eval: ev,
    };
  });
  const dense = rows.find((r) => r.method === 'dense');
  const versus = dense ? rows.filter((r) => r !== dense).map((r): VersusDense => ({
    method: r.method, wallclock_ratio: r.elapsed_s / dense.elapsed_s, flop_ideal: r.flops_actual / r.flops_dense_equivalent,
    loss_diff_pct: (r.eval.dense_val_loss / dense.eval.dense_val_loss - 1) * 100,
  })) : [];
  const { evals: _evals, ...setup } = record;
  return { record: setup, runs: rows, versus_dense: versus, targets: targets(rows, versus) };
}

/** A percentage with its sign, e.g. "+1.50%". */
const signedPct = (x: number) => `${x >= 0 ? '+' : ''}${x.toFixed(2)}%`;

/** The four SSD targets, each PASS / MISS with its margin, or NOT MEASURED. */
function targets(rows: RunRow[], versus: VersusDense[]): TargetResult[] {
  const ssd = versus.find((v) => v.method === 'ssd');
  const moeAt = (m: Method) => rows.find((r) => r.method === m)?.eval.moe.find((e) => Math.abs(e.ratio - TARGETS.moeRatio) < 1e-9);
  const ssdMoe = moeAt('ssd'), denseMoe = moeAt('dense');
  const verdict = (id: TargetResult['id'], target: string, value: number | null, limit: number | null,
    describe: (v: number, l: number) => string, margin: (v: number, l: number) => string, missing: string): TargetResult => {
    if (value === null || limit === null) return { id, target, pass: null, value, limit, line: `**NOT MEASURED** ${target}: ${missing}` };
    const pass = value <= limit;
    return { id, target, pass, value, limit, line: `**${pass ? 'PASS' : 'MISS'}** ${target}: ${describe(value, limit)}; ${pass ? 'passes' : 'misses'} by ${margin(value, limit)}` };
  };
  const pp = (v: number, l: number) => `${Math.abs(v - l).toFixed(2)} percentage points`;
  const moeMissing = `needs methods dense and ssd and ratio ${TARGETS.moeRatio} in --ratios`;
  return [
    verdict('wallclock', `SSD wall-clock ≤ ${TARGETS.wallclockRatio.toFixed(2)}× dense for the same tokens`,
      ssd?.wallclock_ratio ?? null, ssd ? TARGETS.wallclockRatio : null,
      (v) => `${v.toFixed(3)}× (FLOP-based ideal ${ssd!.flop_ideal.toFixed(3)}×)`,
      (v, l) => `${(Math.abs(v / l - 1) * 100).toFixed(1)}%`, 'needs methods dense and ssd'),
    verdict('loss', `SSD final dense-mode validation loss within ${TARGETS.lossDiffPct}% of the dense run's`,
      ssd?.loss_diff_pct ?? null, ssd ? TARGETS.lossDiffPct : null, (v) => `${signedPct(v)} vs dense`, pp, 'needs methods dense and ssd'),
    verdict('moe_own', `SSD model MoEfied at active ratio ${TARGETS.moeRatio} loses ≤ ${TARGETS.moeOwnIncreasePct}% against its own dense mode`,
      ssdMoe?.increase_pct ?? null, ssdMoe ? TARGETS.moeOwnIncreasePct : null,
      (v) => `${signedPct(v)} (top_k ${ssdMoe!.top_k} of ${ssdMoe!.n_expert})`, pp, `needs method ssd and ratio ${TARGETS.moeRatio} in --ratios`),
    verdict('moe_vs_dense', `SSD model's MoE loss increase at ratio ${TARGETS.moeRatio} clearly below the dense-trained model's ` +
      `(at most ${TARGETS.clearlyLessFactor}× it)`,
      ssdMoe && denseMoe ? ssdMoe.increase_pct : null, ssdMoe && denseMoe ? TARGETS.clearlyLessFactor * denseMoe.increase_pct : null,
      (v) => `SSD-trained ${signedPct(v)} vs dense-trained ${signedPct(denseMoe!.increase_pct)}`, pp, moeMissing),
  ];
}

const num = (x: number, d: number) => x.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });

/** FLOPs with a unit, e.g. "1.234 TFLOP". */
function flops(x: number): string {
  const units: [number, string][] = [[1e15, 'PFLOP'], [1e12, 'TFLOP'], [1e9, 'GFLOP'], [1e6, 'MFLOP']];
  const [f, u] = units.find(([f]) => x >= f) ?? [1, 'FLOP'];
  return `${(x / f).toPrecision(4)} ${u}`;
}

/** The Markdown report. */
export function renderMarkdown(r: Report): string {
  const { record: rec, runs } = r;
  const c = rec.config, mc = rec.model_config;
  const tokensPerStep = c.batch_size * mc.seq_len * c.grad_accum;
  const L: string[] = ['# SSD comparison: ' + rec.methods.join(' vs '), ''];
  L.push('## Setup', '');
  if (rec.command) L.push(`- Command: \`${rec.command}\``);
  L.push(`- Model: preset \`${c.model}\` (n_layer ${mc.n_layer}, n_head ${mc.n_head}, d_model ${mc.d_model}, d_ff ${mc.d_ff}, ` +
      `seq_len ${mc.seq_len}, vocab ${mc.vocab_size}, ${mc.activation})`,
    `- Training, identical for every method: ${c.steps} steps × ${tokensPerStep} tokens (batch ${c.batch_size} × seq ${mc.seq_len} × ` +
      `accum ${c.grad_accum}), lr ${c.lr}, seed ${c.seed}, data \`${c.data}\` (tokenizer ${c.tokenizer})`,
    `- SSD: n_expert ${rec.n_expert}, active ratio in sparse phases ${c.moe_top_k !== undefined ? `${c.moe_top_k}/${rec.n_expert}` : c.active_ratio}, ` +
      `check_interval ${c.check_interval}, stable_threshold ${c.stable_threshold}, stable_delta ${c.stable_delta}`,
    `- Evaluation: the first ${c.eval_batches} validation batches (${c.eval_batches * c.batch_size * mc.seq_len} tokens), the same for every model; ` +
      `each final checkpoint MoEfied afresh (balanced k-means, ${c.moefy_max_iter} iterations, centroid routers)`,
    `- Backend \`${rec.backend}\`${rec.threads ? `, ${rec.threads} threads` : ''}; ${rec.host.cpu} (${rec.host.cores} cores), Node ${rec.host.node}, ${rec.created}`, '');

  L.push('## Training', '', '| method | tokens | wall-clock (s) | tokens/s | sparse steps | MoEfications | checks + MoEfy (s) | FLOPs actual | FLOPs dense-equivalent | actual / dense | val loss (dense mode) |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const x of runs) {
    L.push(`| ${x.method} | ${num(x.tokens, 0)} | ${num(x.elapsed_s, 1)} | ${num(x.tokens_per_s, 0)} | ${num(x.sparse_share * 100, 1)}% | ` +
      `${x.moefications} | ${num(x.check_seconds, 1)} + ${num(x.moefy_seconds, 1)} | ${flops(x.flops_actual)} | ${flops(x.flops_dense_equivalent)} | ${(x.flops_actual / x.flops_dense_equivalent).toFixed(3)} | ` +
      `${x.eval.dense_val_loss.toFixed(4)} |`);
  }
  L.push('');

  const ratios = runs[0]?.eval.moe ?? [];
  L.push('## Validation loss: dense mode and MoEfied', '', 'Nats/token; in brackets the increase over the same model in dense mode.', '',
    `| method | dense | ${ratios.map((m) => `k/E = ${m.top_k}/${m.n_expert} (${m.ratio})`).join(' | ')} |`,
    `|---|---:|${ratios.map(() => '---:').join('|')}|`);
  for (const x of runs) {
    L.push(`| ${x.method} | ${x.eval.dense_val_loss.toFixed(4)} | ${x.eval.moe.map((m) => `${m.val_loss.toFixed(4)} (${signedPct(m.increase_pct)})`).join(' | ')} |`);
  }
  L.push('');

  if (r.versus_dense.length) {
    L.push('## Against the dense run', '');
    for (const v of r.versus_dense) {
      L.push(`- ${v.method}: wall-clock **${v.wallclock_ratio.toFixed(3)}×** dense (FLOP-based ideal ${v.flop_ideal.toFixed(3)}×); ` +
        `final dense-mode validation loss **${signedPct(v.loss_diff_pct)}**`);
    }
    L.push('');
  }

  L.push('## Targets', '', ...r.targets.map((t) => `- ${t.line}`), '');

  const titles: Record<PlotName, string> = {
    val_loss_tokens: 'Validation loss vs tokens', val_loss_wallclock: 'Validation loss vs wall-clock',
    activation_ratio: 'Activation ratio per layer', similarity: 'Pattern similarity per layer', phases: 'Phase timeline',
  };
  L.push('## Plots', '');
  for (const [k, file] of Object.entries(r.plots) as [PlotName, string | null][]) {
    L.push(file ? `![${titles[k]}](${file})` : `_${titles[k]}: no data (no run with activation checks)._`, '');
  }
  return L.join('\n');
}

/** The run whose activation checks are plotted: ssd, else the first other method that logged checks. */
function checkedRun(runs: RunData[]): RunData | undefined {
  const withChecks = runs.filter((r) => r.events.some((e) => e.kind === 'check'));
  return withChecks.find((r) => r.method === 'ssd') ?? withChecks[0];
}

/** Renders the charts into `<dir>/plots/` and returns their relative paths. */
async function writePlots(dir: string, runs: RunData[]): Promise<Report['plots']> {
  fs.mkdirSync(path.join(dir, 'plots'), { recursive: true });
  const loss: LossPoint[] = runs.flatMap((r) => r.metrics.filter((m) => m.val_loss !== undefined)
    .map((m) => ({ method: r.method, tokens: m.tokens, elapsed_s: m.elapsed_s, val_loss: m.val_loss! })));
  const checked = checkedRun(runs);
  const totalSteps = Math.max(...runs.map((r) => r.summary.steps));
  const checkedPhases = checked ? phaseSegments(checked.method, checked.events, checked.summary.steps) : [];
  const specs = {
    val_loss_tokens: lossChart(loss, 'tokens'),
    val_loss_wallclock: lossChart(loss, 'elapsed_s'),
    activation_ratio: checked ? layerChart(layerPoints(checked.events, 'activation_ratio'), {
      title: `Activation ratio per layer (${checked.method} run, probe set)`, yTitle: 'share of FFN activations > 0', yDomain: [0, 1],
      phases: checkedPhases, totalSteps: checked.summary.steps,
    }) : null,
    similarity: checked && layerPoints(checked.events, 'similarity').length ? layerChart(layerPoints(checked.events, 'similarity'), {
      title: `Activation-pattern similarity per layer (${checked.method} run, Jaccard vs previous check)`, yTitle: 'similarity',
      phases: checkedPhases, totalSteps: checked.summary.steps,
    }) : null,
    phases: phaseChart(runs.flatMap((r) => phaseSegments(r.method, r.events, r.summary.steps)), totalSteps),
  };
  const out = {} as Report['plots'];
  for (const [name, spec] of Object.entries(specs) as [PlotName, typeof specs[PlotName]][]) {
    out[name] = null;
    if (!spec) continue;
    const file = `plots/${name}.svg`;
    fs.writeFileSync(path.join(dir, file), await renderSVG(spec));
    out[name] = file;
  }
  return out;
}

/**
 * Re-renders the report of comparison directory `dir` from its files: writes `report.md`,
 * `report.json` and `plots/*.svg`. Throws when compare.json or a run's summary is missing.
 */
export async function writeReport(dir: string): Promise<{ report: Report; markdown: string; json: string }> {
  const record = loadRecord(dir);
  const runs = record.methods.map((m) => loadRun(dir, m));
  const report: Report = { ...buildReport(record, runs), plots: await writePlots(dir, runs) };
  const markdown = path.join(dir, 'report.md'), json = path.join(dir, 'report.json');
  fs.writeFileSync(markdown, renderMarkdown(report));
  fs.writeFileSync(json, JSON.stringify(report, null, 1));
  return { report, markdown, json };
}
