/**
 * `npm run bench:train`: training throughput on one backend for the `tiny` preset and a few steps of
 * `gpt2-small` (GPT-2 tokenizer, vocabulary 50257): tokens/s, achieved model GFLOP/s (6N + attention,
 * PaLM convention) and the share of step time spent in matmul kernels.
 * Usage: node dist/bench/train.js [--backend cpu] [--json out.json] [--skip-gpt2]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { profiled } from '../src/backend/profile.js';
import { selectBackend } from '../src/backend/registry.js';
import { RandomBatchSampler } from '../src/data/index.js';
import type { Backend } from '../src/backend/contract.js';
import type { Dataset } from '../src/data/index.js';
import { makeConfig, type GPTConfig, type PresetName } from '../src/nn/config.js';
import { GPT, flopsPerToken } from '../src/nn/gpt.js';
import * as T from '../src/tensor/index.js';
import { parseTrainConfig } from '../src/train/config.js';
import { resolveDataset } from '../src/train/dataset.js';
import { AdamW } from '../src/train/optim.js';

const arg = (name: string) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : undefined);
const base = selectBackend(arg('--backend'));
// Throughput is timed on the plain backend; the matmul share on a profiled twin (its per-call timing
// adds overhead that would distort the small model's tokens/s).
const { backend: traced, profile } = profiled(base);
const cache = path.join(os.tmpdir(), 'ssd-bench-cache');

async function run(preset: PresetName, tokenizer: 'byte' | 'gpt2', batch: number, steps: number) {
  const cfg = parseTrainConfig({ tokenizer, cache_dir: cache, model: preset });
  const data = await resolveDataset(cfg);
  const mc = makeConfig(preset, { vocab_size: data.tokenizer.vocabSize });
  const timed = await measure(base, mc, data, batch, steps);
  const traceSteps = Math.max(1, Math.ceil(steps / 4));
  const trace = await measure(traced, mc, data, batch, traceSteps);
  const mm = ['matmul', 'groupedMatmul'].reduce((a, k) => a + (profile.entries.get(k)?.ms ?? 0), 0);
  const top = [...profile.entries].sort((a, b) => b[1].ms - a[1].ms).slice(0, 5).map(([k, v]) => `${k} ${(v.ms / trace.ms * 100).toFixed(1)}%`);
  const tokens = steps * batch * mc.seq_len;
  const r = {
    preset, params: timed.params, batch, seq_len: mc.seq_len, steps, tokens_per_s: tokens / (timed.ms / 1000),
    gflops: (tokens / (timed.ms / 1000)) * flopsPerToken(mc) / 1e9, matmul_share: mm / trace.ms, ms_per_step: timed.ms / steps, top,
  };
  console.log(`${preset}: ${r.params} params, batch ${batch}×${mc.seq_len}, ${steps} steps: ${r.tokens_per_s.toFixed(0)} tokens/s, ` +
    `${r.gflops.toFixed(1)} GFLOP/s, ${r.ms_per_step.toFixed(0)} ms/step; matmul ${(r.matmul_share * 100).toFixed(1)}% of step time ` +
    `(profiled over ${traceSteps} step${traceSteps > 1 ? 's' : ''})`);
  console.log(`  top kernels by time: ${top.join(', ')}`);
  return r;
}

/** Wall time (ms) of `steps` training steps after one warm-up step, on `backend`. */
async function measure(backend: Backend, mc: GPTConfig, data: Dataset, batch: number, steps: number) {
  T.useBackend(backend);
  const model = new GPT(mc, backend);
  const opt = new AdamW([...model.params.values()], { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 });
  const sampler = new RandomBatchSampler(data.train, { batchSize: batch, seqLen: mc.seq_len });
  const oneStep = () => {
    const b = sampler.next();
    T.tidy(() => {
      const x = T.tensor(b.x, [batch, mc.seq_len], { dtype: 'i32' }), y = T.tensor(b.y, [batch, mc.seq_len], { dtype: 'i32' });
      T.backward(model.forward(x, { targets: y }).loss!);
    });
    opt.update();
    opt.zeroGrad();
  };
  oneStep(); // warm-up (allocations, pools)
  profile.reset();
  const t0 = performance.now();
  for (let s = 0; s < steps; s++) oneStep();
  const ms = performance.now() - t0;
  const params = model.numParams();
  opt.dispose();
  model.dispose();
  return { ms, params };
}

const results = [await run('tiny', 'byte', 32, 20)];
if (!process.argv.includes('--skip-gpt2')) results.push(await run('gpt2-small', 'gpt2', 2, 3));
const out = arg('--json');
if (out) fs.writeFileSync(out, JSON.stringify({ date: new Date().toISOString(), backend: base.name, results }, null, 1));
