/**
 * `ssd compare`: the report from synthetic run directories (numbers, PASS / MISS verdicts, charts),
 * input errors, and one tiny end-to-end comparison.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { before, describe, it } from 'node:test';
import { getBackend } from '../src/backend/registry.js';
import { loadDataset, prepare, type Dataset } from '../src/data/index.js';
import { compare, parseMethods, parseRatios } from '../src/ssd/compare.js';
import type { SSDEvent } from '../src/ssd/controller.js';
import { phaseSegments, writeReport, type CompareRecord, type Method } from '../src/ssd/report.js';
import type { ModelEval } from '../src/ssd/sparse-eval.js';
import * as T from '../src/tensor/index.js';
import { parseTrainConfig } from '../src/train/config.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ssd-compare-'));
const writeJsonl = (file: string, rows: unknown[]) => fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');

/** A finished run directory with the given totals and val-loss curve (50 steps × 100 tokens). */
function fakeRun(dir: string, method: Method, o: { elapsed: number; flopsRatio: number; sparseShare: number; events?: SSDEvent[] }): void {
  const run = path.join(dir, method);
  fs.mkdirSync(run, { recursive: true });
  writeJsonl(path.join(run, 'metrics.jsonl'), [10, 20, 30, 40, 50].map((step) => ({
    step, tokens: step * 100, loss: 3 - step / 50, lr: 1e-3, grad_norm: 1, tokens_per_s: 1000, flops_per_s: 1e9,
    val_loss: 3.1 - step / 50 + (method === 'ssd' ? 0.01 : 0), elapsed_s: (step / 50) * o.elapsed,
  })));
  if (o.events) writeJsonl(path.join(run, 'ssd.jsonl'), o.events);
  fs.writeFileSync(path.join(run, 'summary.json'), JSON.stringify({
    steps: 50, tokens: 5000, final_loss: 2, val_loss: 2, val_unigram_entropy: 4, elapsed_s: o.elapsed, tokens_per_s: 5000 / o.elapsed,
    flops_per_s: 1e9, flops_actual: 1e12 * o.flopsRatio, flops_dense_equivalent: 1e12, params: 1000, run_dir: run, checkpoint: run,
    hook: { sparse_steps: o.sparseShare * 50, sparse_share: o.sparseShare, moefications: o.sparseShare ? 2 : 0, check_seconds: o.sparseShare * 10, moefy_seconds: 1.5 },
  }));
}

function modelEval(dense: number, moe: [number, number][]): ModelEval {
  return {
    checkpoint: 'ck', dense_val_loss: dense, moefy_seconds: 0.1,
    moe: moe.map(([ratio, loss]) => ({ ratio, top_k: ratio * 8, n_expert: 8, val_loss: loss, increase_pct: (loss / dense - 1) * 100 })),
  };
}

function fakeRecord(dir: string, methods: Method[], ratios: number[], evals: CompareRecord['evals']): void {
  const config = parseTrainConfig({ steps: 50, batch_size: 4, seq_len: 25, n_expert: 8, out: dir });
  const record: CompareRecord = {
    command: 'ssd compare --steps 50', created: '2025-01-01T00:00:00Z', methods, ratios, config,
    model_config: { vocab_size: 257, n_layer: 2, n_head: 2, d_model: 32, d_ff: 64, seq_len: 25, activation: 'relu', ffn_bias: true, dropout: 0 } as never,
    n_expert: 8, backend: 'ref', threads: null, host: { cpu: 'test cpu', cores: 2, node: 'v20', platform: 'linux x64' }, evals,
  };
  fs.writeFileSync(path.join(dir, 'compare.json'), JSON.stringify(record));
}

const ssdEvents: SSDEvent[] = [
  { step: 10, kind: 'check', phase: 'dense', activation_ratio: [0.5, 0.4], mean_activation_ratio: 0.45, similarity: null, mean_similarity: null },
  { step: 20, kind: 'check', phase: 'dense', activation_ratio: [0.3, 0.2], mean_activation_ratio: 0.25, similarity: [0.81, 0.92], mean_similarity: 0.865 },
  { step: 20, kind: 'transition', phase: 'dense', to: 'sparse', reason: 'pattern stable' },
  { step: 30, kind: 'transition', phase: 'sparse', to: 'dense', reason: 'sparse phase done' },
  { step: 45, kind: 'transition', phase: 'dense', to: 'final', reason: 'final dense stretch' },
];

describe('compare report', () => {
  it('splits a run into phase segments from its transitions', () => {
    assert.deepEqual(phaseSegments('ssd', ssdEvents, 50).map((s) => [s.phase, s.start, s.end]),
      [['dense', 0, 20], ['sparse', 20, 30], ['dense', 30, 45], ['final', 45, 50]]);
    assert.deepEqual(phaseSegments('dense', [], 50).map((s) => [s.phase, s.start, s.end]), [['dense', 0, 50]]);
  });

  it('renders the figures, the PASS / MISS verdicts with margins, and the charts', async () => {
    const dir = path.join(tmp, 'synthetic');
    fakeRun(dir, 'dense', { elapsed: 100, flopsRatio: 1, sparseShare: 0 });
    fakeRun(dir, 'ssd', { elapsed: 85, flopsRatio: 0.7, sparseShare: 0.2, events: ssdEvents });
    // dense-trained: +10% at ratio 0.25; SSD-trained: 2.03 (+1.5% vs dense), +1.97% at 0.25, +5% at 0.125.
    fakeRecord(dir, ['dense', 'ssd'], [0.125, 0.25], {
      dense: modelEval(2, [[0.125, 2.4], [0.25, 2.2]]),
      ssd: modelEval(2.03, [[0.125, 2.1315], [0.25, 2.07]]),
    });
    const { report, markdown } = await writeReport(dir);
    const md = fs.readFileSync(markdown, 'utf8');
    assert.match(md, /\| dense \| 5,000 \| 100\.0 \| 50 \| 0\.0% \| 0 \| 0\.0 \+ 1\.5 \| 1\.000 TFLOP \| 1\.000 TFLOP \| 1\.000 \| 2\.0000 \|/);
    assert.match(md, /\| ssd \| 5,000 \| 85\.0 \| 59 \| 20\.0% \| 2 \| 2\.0 \+ 1\.5 \| 700\.0 GFLOP \| 1\.000 TFLOP \| 0\.700 \| 2\.0300 \|/);
    assert.match(md, /\| ssd \| 2\.0300 \| 2\.1315 \(\+5\.00%\) \| 2\.0700 \(\+1\.97%\) \|/);
    assert.match(md, /\| dense \| 2\.0000 \| 2\.4000 \(\+20\.00%\) \| 2\.2000 \(\+10\.00%\) \|/);
    assert.match(md, /\*\*MISS\*\* SSD wall-clock ≤ 0\.80× dense.*: 0\.850× \(FLOP-based ideal 0\.700×\); misses by 6\.3%/);
    assert.match(md, /\*\*PASS\*\* SSD final dense-mode validation loss within 2%.*\+1\.50% vs dense; passes by 0\.50 percentage points/);
    assert.match(md, /\*\*PASS\*\* SSD model MoEfied at active ratio 0\.25 loses ≤ 3%.*\+1\.97% \(top_k 2 of 8\); passes by 1\.03 percentage points/);
    assert.match(md, /\*\*PASS\*\* SSD model's MoE loss increase.*SSD-trained \+1\.97% vs dense-trained \+10\.00%; passes by 3\.03 percentage points/);
    assert.deepEqual(report.targets.map((t) => t.pass), [false, true, true, true]);
    assert.ok(fs.existsSync(path.join(dir, 'report.json')));
    const svg = (n: string) => fs.readFileSync(path.join(dir, 'plots', `${n}.svg`), 'utf8');
    for (const n of ['val_loss_tokens', 'val_loss_wallclock']) {
      assert.match(svg(n), /^<svg/);
      assert.match(svg(n), />dense</);
      assert.match(svg(n), />ssd</);
    }
    for (const n of ['activation_ratio', 'similarity']) assert.match(svg(n), /layer 0.*layer 1|layer 1.*layer 0/s);
    assert.match(svg('phases'), />sparse</);
    assert.match(svg('phases'), />final</);
  });

  it('says NOT MEASURED when a run or the ratio 0.25 is missing, and MISS when the SSD model degrades', async () => {
    const dir = path.join(tmp, 'partial');
    fakeRun(dir, 'dense', { elapsed: 100, flopsRatio: 1, sparseShare: 0 });
    fakeRecord(dir, ['dense'], [0.5], { dense: modelEval(2, [[0.5, 2.1]]) });
    const { report } = await writeReport(dir);
    assert.deepEqual(report.targets.map((t) => t.pass), [null, null, null, null]);
    assert.match(fs.readFileSync(path.join(dir, 'report.md'), 'utf8'), /\*\*NOT MEASURED\*\* SSD wall-clock.*needs methods dense and ssd/);
    assert.equal(report.plots.activation_ratio, null);

    const bad = path.join(tmp, 'degraded');
    fakeRun(bad, 'dense', { elapsed: 100, flopsRatio: 1, sparseShare: 0 });
    fakeRun(bad, 'ssd', { elapsed: 70, flopsRatio: 0.7, sparseShare: 0.2, events: ssdEvents });
    fakeRecord(bad, ['dense', 'ssd'], [0.25], { dense: modelEval(2, [[0.25, 2.1]]), ssd: modelEval(2.1, [[0.25, 2.226]]) });
    const r = (await writeReport(bad)).report;
    assert.deepEqual(r.targets.map((t) => t.pass), [true, false, false, false]);
    assert.match(r.targets[1]!.line, /\+5\.00% vs dense; misses by 3\.00 percentage points/);
    assert.match(r.targets[2]!.line, /\+6\.00% .*misses by 3\.00 percentage points/);
  });

  it('refuses bad method and ratio lists, and a missing comparison', async () => {
    assert.deepEqual(parseMethods('dense, ssd,moe'), ['dense', 'ssd', 'moe']);
    assert.throws(() => parseMethods(''), /--methods is empty/);
    assert.throws(() => parseMethods('dense,sdd'), /unknown method 'sdd'/);
    assert.throws(() => parseMethods('ssd,ssd'), /twice/);
    assert.deepEqual(parseRatios('0.125,0.25,1'), [0.125, 0.25, 1]);
    assert.throws(() => parseRatios(','), /--ratios is empty/);
    assert.throws(() => parseRatios('0.25,0'), /'0' .* not a number in \(0, 1\]/);
    assert.throws(() => parseRatios('1.5'), /not a number in \(0, 1\]/);
    assert.throws(() => parseRatios('x'), /not a number in \(0, 1\]/);
    await assert.rejects(writeReport(path.join(tmp, 'nothing')), /not a finished comparison/);
  });
});

const backendName = (process.env.SSD_TEST_BACKENDS ?? 'ref,cpu').split(',').includes('cpu') ? 'cpu' : 'ref';

describe(`compare end to end on ${backendName}`, () => {
  const backend = getBackend(backendName);
  let dataset: Dataset;
  const base = (out: string, over: Record<string, unknown> = {}) => parseTrainConfig({
    model: 'tiny', n_layer: 1, n_head: 2, d_model: 32, d_ff: 64, seq_len: 32, batch_size: 4, steps: 30, lr: 3e-3,
    eval_interval: 10, eval_batches: 2, ckpt_interval: 30, log_interval: 5, check_interval: 5, n_expert: 8,
    max_active_ratio: 1, // an untrained model fires ~70% of its neurons: let it go sparse anyway
    data: path.join(tmp, 'data'), out, ...over,
  });

  before(async () => {
    T.useBackend(backend);
    await prepare({ input: 'brown', brownLimit: 8, tokenizer: 'byte', outDir: path.join(tmp, 'data') });
    dataset = loadDataset(path.join(tmp, 'data'));
  });

  it('checks its input before training anything', async () => {
    const out = path.join(tmp, 'refused');
    await assert.rejects(compare({ config: base(out), methods: [], ratios: [0.25], dataset, backend }), /no methods/);
    await assert.rejects(compare({ config: base(out), methods: ['dense'], ratios: [0.3], dataset, backend }), /top_k = 2\.4 of n_expert = 8/);
    await assert.rejects(compare({ config: base(out), methods: ['dense'], ratios: [], dataset, backend }), /no active ratios/);
    await assert.rejects(compare({ config: base(out, { n_expert: 7 }), methods: ['dense'], ratios: [1], dataset, backend }), /not divisible by n_expert/);
    assert.ok(!fs.existsSync(out));
  });

  it('trains dense and ssd on the same data and seed, evaluates both, writes the report; refuses to overwrite', async () => {
    const out = path.join(tmp, 'e2e');
    const res = await compare({ config: base(out), methods: ['dense', 'ssd'], ratios: [0.125, 0.25, 0.5], dataset, backend, command: 'test' });
    for (const m of ['dense', 'ssd']) {
      for (const f of ['summary.json', 'metrics.jsonl']) assert.ok(fs.existsSync(path.join(out, m, f)), `${m}/${f}`);
    }
    assert.ok(res.summaries.ssd!.hook!.sparse_share! > 0, 'the SSD run trained sparse for some steps');
    // Same seed and data: identical until the SSD run first MoEfies (not before its second check, step 10).
    const early = (m: string) => fs.readFileSync(path.join(out, m, 'metrics.jsonl'), 'utf8').trim().split('\n')
      .map((l) => JSON.parse(l)).filter((x) => x.step <= 5).map((x) => x.loss);
    assert.deepEqual(early('ssd'), early('dense'));
    for (const m of ['dense', 'ssd'] as const) {
      const e = res.evals[m]!;
      assert.deepEqual(e.moe.map((x) => x.top_k), [1, 2, 4]);
      assert.ok(Number.isFinite(e.dense_val_loss) && e.moe.every((x) => Number.isFinite(x.val_loss)));
      assert.equal(res.summaries[m]!.tokens, 30 * 4 * 32);
    }
    const md = fs.readFileSync(res.markdown, 'utf8');
    assert.match(md, /## Targets/);
    assert.match(md, new RegExp(`\\| dense \\| ${res.evals.dense!.dense_val_loss.toFixed(4)} \\|`));
    for (const n of ['val_loss_tokens', 'val_loss_wallclock', 'phases']) assert.ok(fs.existsSync(path.join(out, 'plots', `${n}.svg`)), n);
    await assert.rejects(compare({ config: base(out), methods: ['dense'], ratios: [0.25], dataset, backend }), /already holds a run/);
    // Re-rendering from the files gives the same report.
    const again = await writeReport(out);
    assert.equal(fs.readFileSync(again.markdown, 'utf8'), md);
  });
});
