/**
 * Trainer: exact resume, checkpoint integrity and clear errors for bad input.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { before, describe, it } from 'node:test';
import { getBackend } from '../src/backend/registry.js';
import { loadDataset, prepare, type Dataset } from '../src/data/index.js';
import * as T from '../src/tensor/index.js';
import { loadCheckpoint, saveCheckpoint } from '../src/train/checkpoint.js';
import { parseTrainConfig, resumeConfig, type TrainConfig } from '../src/train/config.js';
import { loadModel } from '../src/train/load.js';
import { train } from '../src/train/trainer.js';
import { generate } from '../src/infer/generate.js';
import { bf16PeakFlops } from '../src/backend/cuda/index.js';

const backendName = (process.env.SSD_TEST_BACKENDS ?? 'ref,cpu').split(',').includes('cpu') ? 'cpu' : 'ref';
const backend = getBackend(backendName);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ssd-train-'));
let dataset: Dataset;

function cfg(over: Record<string, unknown>): TrainConfig {
  return parseTrainConfig({
    model: 'tiny', n_layer: 2, d_model: 32, n_head: 2, d_ff: 64, seq_len: 32, batch_size: 4, steps: 20, lr: 3e-3,
    eval_interval: 10, eval_batches: 2, ckpt_interval: 10, log_interval: 5, dropout: 0.1, ...over,
  });
}

function weights(run: string): Map<string, number[]> {
  const ck = loadCheckpoint(run);
  return new Map([...ck.params].map(([k, v]) => [k, [...new Uint8Array(v.data)]]));
}

function losses(run: string): number[] {
  return fs.readFileSync(path.join(run, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l))
    .filter((m) => m.step % 5 === 0).map((m) => m.loss);
}

describe(`trainer on ${backendName}`, () => {
  before(async () => {
    T.useBackend(backend);
    await prepare({ input: 'brown', brownLimit: 8, tokenizer: 'byte', outDir: path.join(tmp, 'data') });
    dataset = loadDataset(path.join(tmp, 'data'));
  });

  it('20 steps straight equal 10 + resume + 10 (losses and bit-identical weights)', () => {
    const a = path.join(tmp, 'a'), b = path.join(tmp, 'b');
    train(cfg({ out: a }), dataset, backend);
    // An interrupted run: train b, then drop everything after step 10 and resume from there.
    train(cfg({ out: b }), dataset, backend);
    fs.rmSync(path.join(b, 'step_00000020'), { recursive: true });
    fs.writeFileSync(path.join(b, 'metrics.jsonl'), fs.readFileSync(path.join(b, 'metrics.jsonl'), 'utf8')
      .split('\n').filter((l) => l && JSON.parse(l).step <= 10).join('\n') + '\n');
    train(cfg({ out: b }), dataset, backend, { resume: b });
    assert.deepEqual(losses(b), losses(a));
    assert.deepEqual(weights(b), weights(a));
  });

  it('refuses a checkpoint from a different model, a corrupt file, and an unknown config key', () => {
    const a = path.join(tmp, 'a');
    assert.throws(() => train(cfg({ out: path.join(tmp, 'c'), d_model: 48 }), dataset, backend, { resume: a }),
      /cannot resume .* model config/);
    const bad = path.join(tmp, 'corrupt');
    fs.cpSync(path.join(a, 'step_00000020'), path.join(bad, 'step_00000020'), { recursive: true });
    const f = path.join(bad, 'step_00000020', 'model.safetensors');
    fs.truncateSync(f, fs.statSync(f).size - 100);
    assert.throws(() => loadCheckpoint(bad), /model.safetensors is corrupt or truncated/);
    assert.throws(() => parseTrainConfig({ lerning_rate: 1 }), /unknown key 'lerning_rate'/);
    const stored = loadCheckpoint(a).state.train_config;
    assert.throws(() => resumeConfig(stored, { lr: 1 }, a), /cannot resume with a changed lr \(checkpoint: 0\.003, given: 1\)/);
    assert.equal(resumeConfig(stored, { eval_interval: 7, out: '/elsewhere' }, a).out, a);
    assert.throws(() => train(cfg({ out: path.join(tmp, 'd'), seq_len: 10_000_000 }), dataset, backend), /sequence length|context/);
  });

  it('a full disk while saving loses no earlier checkpoint', () => {
    const a = path.join(tmp, 'a');
    const before = fs.readdirSync(a).sort();
    const { model, state } = loadModel(a, backend);
    const enospc = { writeFileSync: () => { throw Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' }); } };
    assert.throws(() => saveCheckpoint(a, model.params, new Map(), { ...state, step: 30 }, 1, enospc),
      /disk is full.*earlier checkpoints are intact/);
    assert.deepEqual(fs.readdirSync(a).sort(), before);
    assert.ok(loadCheckpoint(a).state.step === 20);
    model.dispose();
  });

  it('stops with a clear error on a NaN loss and keeps the last checkpoint', () => {
    const out = path.join(tmp, 'nan');
    assert.throws(() => train(cfg({ out }), dataset, backend, {
      hook: { beforeStep: (step, ctx) => { if (step === 12) ctx.model.p('ln_f.weight').backend.fill(ctx.model.p('ln_f.weight').buf('test'), NaN); } },
    }), /loss is NaN at step 12; the last good checkpoint .*step_00000010.* is intact/);
    assert.equal(loadCheckpoint(out).state.step, 10);
  });

  it('logs MFU against the backend\'s peak, and knows the peaks of common GPUs', () => {
    const out = path.join(tmp, 'mfu');
    const peaked = Object.create(backend, { peakFlops: { value: 1e9 } }) as typeof backend;
    train(cfg({ out, steps: 4, log_interval: 2 }), dataset, peaked);
    const lines = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    assert.ok(lines.length >= 2);
    for (const m of lines) assert.ok(Math.abs(m.mfu - m.flops_per_s / 1e9) <= 1e-9 * m.mfu, JSON.stringify(m));
    train(cfg({ out: path.join(tmp, 'nomfu'), steps: 2, log_interval: 1 }), dataset, backend);
    assert.ok(!fs.readFileSync(path.join(tmp, 'nomfu', 'metrics.jsonl'), 'utf8').includes('mfu'));
    assert.equal(bf16PeakFlops('NVIDIA H200 (device 0, sm_90, 139.8 GiB, 132 SMs)'), 989e12);
    assert.equal(bf16PeakFlops('NVIDIA H100 PCIe'), 756e12);
    assert.equal(bf16PeakFlops('NVIDIA A100-SXM4-80GB'), 312e12);
    assert.equal(bf16PeakFlops('Tesla T4'), undefined);
  });

  it('greedy generation is deterministic and produces in-vocabulary tokens', () => {
    const { model, tokenizer } = loadModel(path.join(tmp, 'a'), backend);
    const opts = { temperature: 0, topK: 0, topP: 1, seed: 1 };
    const g1 = generate(model, tokenizer.encode('The '), 12, opts);
    const g2 = generate(model, tokenizer.encode('The '), 12, opts);
    assert.deepEqual(g1, g2);
    assert.ok(g1.every((id) => id >= 0 && id < tokenizer.vocabSize));
    assert.throws(() => generate(model, [], 5, opts), /prompt is empty/);
    model.dispose();
  });
});
