/**
 * The SSD phase machine on scripted similarity sequences (switch points, minimum dense steps, final
 * dense stretch, the `moe` ablation), start-up validation, and exact resume in the middle of a sparse phase.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { before, describe, it } from 'node:test';
import { getBackend } from '../src/backend/registry.js';
import { loadDataset, prepare, type Dataset } from '../src/data/index.js';
import { makeConfig } from '../src/nn/config.js';
import { GPT } from '../src/nn/gpt.js';
import { SSDController, createSSDController, validateSSD, type SSDSettings } from '../src/ssd/index.js';
import type { CheckResult } from '../src/ssd/monitor.js';
import { ActivationMonitor, adjustedRandIndex, jaccard } from '../src/ssd/monitor.js';
import { ffnHidden, ffnOut } from '../src/nn/ffn.js';
import * as T from '../src/tensor/index.js';
import { loadCheckpoint } from '../src/train/checkpoint.js';
import { loadModel } from '../src/train/load.js';
import { parseTrainConfig } from '../src/train/config.js';
import { AdamW } from '../src/train/optim.js';
import { modelConfigFor, train, type TrainContext } from '../src/train/trainer.js';

const backend = getBackend((process.env.SSD_TEST_BACKENDS ?? 'ref,cpu').split(',').includes('cpu') ? 'cpu' : 'ref');

const base: SSDSettings = {
  method: 'ssd', totalSteps: 100, checkInterval: 10, stableThreshold: 0.9, stableDelta: 0.01, maxActiveRatio: 0.5,
  minDenseSteps: 20, sparseSteps: 15, finalDenseFraction: 0.2, nExpert: 4, topK: 1, trainRouter: true, routerInputGrad: false, moefyMaxIter: 5,
  moefyMethod: 'kmeans', similarity: 'jaccard', seed: 0,
};

/** Runs the controller over all steps with scripted (similarity, activation ratio) per check step. */
function script(s: SSDSettings, checks: Record<number, [number | null, number]>) {
  const model = new GPT(makeConfig('tiny', { vocab_size: 11, n_layer: 1, d_model: 8, n_head: 2, d_ff: 16, seq_len: 4 }), backend, 1);
  const optimizer = new AdamW([...model.params.values()], { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0 });
  const ctx = { model, optimizer } as unknown as TrainContext;
  const lines: string[] = [], phases: string[] = [];
  const check = (): CheckResult => {
    const step = stepNow;
    const [sim, ratio] = checks[step] ?? [null, 0.2];
    return { activationRatio: [ratio], meanActivationRatio: ratio, similarity: sim === null ? null : [sim], meanSimilarity: sim, seconds: 0 };
  };
  let stepNow = 0;
  const c = new SSDController(s, { ids: new Int32Array(4), batch: 1, seqLen: 4 }, null, (l) => lines.push(l), check);
  for (stepNow = 0; stepNow < s.totalSteps; stepNow++) {
    c.beforeStep(stepNow, ctx);
    phases.push(c.label());
    assert.equal(model.ffnOverride !== null, c.label() === 'sparse', `MoE mode and phase disagree at step ${stepNow}`);
  }
  c.finish(ctx);
  const switches = lines.map((l) => l.replace(/ \(.*\)$/, ''));
  optimizer.dispose();
  model.dispose();
  return { switches, phases, lines, summary: c.summary() };
}

describe('SSD controller (scripted)', () => {
  it('switches when stable, respects min_dense_steps and the final dense stretch', () => {
    const r = script(base, { 10: [null, 0.2], 20: [0.5, 0.2], 30: [0.95, 0.2], 50: [0.95, 0.2], 60: [0.95, 0.2], 70: [0.95, 0.2] });
    assert.deepEqual(r.switches, [
      'step 30: dense -> sparse', // stable at 30 (dense for 30 ≥ 20)
      'step 45: sparse -> dense', // after sparse_steps = 15
      'step 80: dense -> final', // 50, 60: dense for < 20; 70: a sparse phase would run past step 80
    ]);
    assert.equal(r.summary.sparse_steps, 15);
    assert.equal(r.phases[99], 'final');
  });

  it('counts a small rise as stable and never switches while the activation ratio is too high', () => {
    const r = script(base, { 10: [null, 0.2], 20: [0.5, 0.2], 30: [0.6, 0.2], 40: [0.605, 0.6], 50: [0.606, 0.2] });
    assert.deepEqual(r.switches, ['step 50: dense -> sparse', 'step 65: sparse -> dense', 'step 80: dense -> final']);
    assert.match(r.lines[0]!, /rise 0\.0010/);
  });

  it('starts no sparse phase that would overlap the final stretch; method moe stays sparse; method dense never switches', () => {
    const late = script({ ...base, checkInterval: 5, minDenseSteps: 0 }, { 70: [null, 0.2], 75: [0.95, 0.2] });
    assert.deepEqual(late.switches, ['step 80: dense -> final']);
    const moe = script({ ...base, method: 'moe' }, { 10: [null, 0.2], 20: [0.95, 0.2] });
    assert.deepEqual(moe.switches, ['step 20: dense -> sparse', 'step 100: sparse -> final']);
    assert.equal(moe.summary.sparse_steps, 80);
    const dense = script({ ...base, method: 'dense' }, { 10: [null, 0.2], 20: [0.99, 0.2] });
    assert.deepEqual(dense.switches, []);
  });

  it('rejects bad settings at start', () => {
    const mc = makeConfig('tiny', { vocab_size: 11, d_ff: 512 });
    assert.throws(() => validateSSD({ ...base, stableThreshold: 1.5 }, mc), /stable_threshold must be in \(0, 1\]/);
    assert.throws(() => validateSSD({ ...base, maxActiveRatio: 0 }, mc), /max_active_ratio/);
    assert.throws(() => validateSSD({ ...base, sparseSteps: 90 }, mc), /sparse phase of 90 steps does not fit/);
    assert.throws(() => validateSSD({ ...base, nExpert: 7 }, mc), /d_ff = 512 is not divisible by n_expert = 7/);
    assert.throws(() => validateSSD({ ...base, topK: 9 }, mc), /top_k = 9 is outside/);
    assert.throws(() => validateSSD(base, { ...mc, activation: 'gelu' }), /needs the ReLU activation/);
  });

  it('a check measures the activation ratio and the mean per-token Jaccard similarity of the active sets', () => {
    // d_ff 70: a last word of 6 neurons. Expected values from the hidden activations directly.
    const model = new GPT(makeConfig('tiny', { vocab_size: 11, n_layer: 2, d_model: 16, n_head: 2, d_ff: 70, seq_len: 8 }), backend, 3);
    const ids = Int32Array.from({ length: 16 }, (_, i) => (i * 7) % 11);
    const mon = new ActivationMonitor({ probe: { ids, batch: 2, seqLen: 8 }, metric: 'jaccard', nExpert: 2, topK: 1 });
    const activeSets = (): Set<number>[][] => {
      const sets: Set<number>[][] = [];
      model.ffnOverride = (layer, x, p) => {
        const h = ffnHidden(x, p, 'relu'), H = h.toArray();
        sets[layer] = Array.from({ length: 16 }, (_, n) => new Set([...Array(70).keys()].filter((j) => H[n * 70 + j]! > 0)));
        return ffnOut(h, p);
      };
      T.tidy(() => T.noGrad(() => model.forward(T.tensor(ids, [2, 8], { dtype: 'i32', backend }))));
      model.ffnOverride = null;
      return sets;
    };
    const first = activeSets(), r1 = mon.check(model);
    assert.equal(r1.similarity, null);
    first.forEach((layer, l) => assert.equal(r1.activationRatio[l], layer.reduce((s, a) => s + a.size, 0) / (16 * 70)));
    const w = model.ffnParams(1).w_in;
    backend.upload(w.buf('test'), Float32Array.from(w.toArray(), (v, i) => v + 0.3 * Math.sin(i)));
    const second = activeSets(), r2 = mon.check(model);
    second.forEach((layer, l) => {
      const want = layer.reduce((s, a, n) => {
        const b = first[l]![n]!, union = new Set([...a, ...b]).size;
        return s + (union === 0 ? 1 : [...a].filter((j) => b.has(j)).length / union);
      }, 0) / 16;
      assert.ok(Math.abs(r2.similarity![l]! - want) < 1e-12, `layer ${l}: ${r2.similarity![l]} vs ${want}`);
    });
    assert.equal(r2.similarity![0], 1);
    assert.ok(r2.similarity![1]! < 1);
  });

  it('similarity metrics: Jaccard and adjusted Rand index known answers', () => {
    const a = Uint32Array.from([0b1011]), b = Uint32Array.from([0b0011]);
    assert.equal(jaccard(a, b, 0, 1), 2 / 3);
    assert.equal(jaccard(new Uint32Array(1), new Uint32Array(1), 0, 1), 1);
    assert.equal(adjustedRandIndex(Int32Array.from([0, 0, 1, 1]), Int32Array.from([1, 1, 0, 0])), 1);
    assert.ok(Math.abs(adjustedRandIndex(Int32Array.from([0, 0, 1, 1]), Int32Array.from([0, 1, 0, 1])) - -0.5) < 1e-12);
  });
});

describe(`SSD training on ${backend.name}`, () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ssd-ssd-'));
  let dataset: Dataset;
  before(async () => {
    T.useBackend(backend);
    await prepare({ input: 'brown', brownLimit: 8, tokenizer: 'byte', outDir: path.join(tmp, 'data') });
    dataset = loadDataset(path.join(tmp, 'data'));
  });
  const cfg = (out: string) => parseTrainConfig({
    model: 'tiny', n_layer: 2, d_model: 32, n_head: 2, d_ff: 64, seq_len: 32, batch_size: 4, steps: 40, lr: 3e-3,
    eval_interval: 20, eval_batches: 2, ckpt_interval: 5, keep_checkpoints: 20, log_interval: 5, out, method: 'ssd',
    check_interval: 5, min_dense_steps: 0, sparse_steps: 10, final_dense_fraction: 0.2, stable_threshold: 0.01, max_active_ratio: 0.9,
    n_expert: 8, moe_top_k: 2, probe_tokens: 64,
  });
  const run = (out: string, resume?: string) => {
    const c = cfg(out);
    const controller = createSSDController(c, modelConfigFor(c, dataset.tokenizer.vocabSize), dataset);
    return train(c, dataset, backend, { hook: controller, ...(resume ? { resume } : {}) });
  };

  it('resuming in the middle of a sparse phase continues exactly', () => {
    const a = path.join(tmp, 'a'), b = path.join(tmp, 'b');
    const sa = run(a);
    assert.ok(sa.hook!.sparse_steps > 0, 'no sparse phase happened');
    run(b);
    const mid = loadCheckpoint(path.join(b, 'step_00000015'));
    assert.equal((mid.state.extra.hook as { phase: string }).phase, 'sparse', 'step 15 is not inside a sparse phase');
    assert.ok(mid.params.has('h.0.mlp.router'), 'the routers are not in the mid-sparse checkpoint');
    for (const d of fs.readdirSync(b)) if (/^step_/.test(d) && Number(d.slice(5)) > 15) fs.rmSync(path.join(b, d), { recursive: true });
    const sb = run(b, path.join(b, 'step_00000015'));
    assert.equal(sb.final_loss, sa.final_loss);
    const wa = loadCheckpoint(a).params, wb = loadCheckpoint(b).params;
    assert.deepEqual([...wb.keys()].sort(), [...wa.keys()].sort());
    for (const [k, v] of wa) assert.deepEqual(Buffer.from(wb.get(k)!.data), Buffer.from(v.data), `${k} differs after resume`);
    assert.deepEqual(loadCheckpoint(a).state.extra.moe, { n_expert: 8 });
    // The logs of the resumed run hold each step once, as the uninterrupted run's do.
    const steps = (dir: string, f: string) => fs.readFileSync(path.join(dir, f), 'utf8').trim().split('\n').map((l) => JSON.parse(l).step);
    for (const f of ['metrics.jsonl', 'ssd.jsonl']) assert.deepEqual(steps(b, f), steps(a, f), `${f} differs after resume`);
    // A checkpoint from inside a sparse phase loads for inference (its routers are not part of the dense model).
    const { model } = loadModel(path.join(b, 'step_00000015'), backend);
    model.dispose();
  });
});
