/**
 * `npm run bench:cuda`: the CUDA backend on GPT-2-small (12 layers, d_model 768, context 1024, ReLU FFN,
 * vocabulary 50257, random tokens): dense training tokens/s and MFU; the sparse-phase step (every FFN a
 * MoE of `--experts` experts, top-k at active ratio 1/4) against the dense step, beside the ideal
 * speed-up from FLOPs per step; then MoE vs dense decode tokens/s at batch 1 and 32 (src/infer/bench.ts).
 * Compare with bench/torch_gpt2.py (same model in PyTorch, eager and torch.compile) run on the same card.
 * Usage: node dist/bench/cuda.js [--batch 8] [--steps 10] [--experts 32] [--modes bf16,fast16bf]
 *        [--skip-infer] [--json out.json]
 */
import * as fs from 'node:fs';
import { createCudaBackend, type CudaBackend, type MatmulMode } from '../src/backend/cuda/index.js';
import { profiled } from '../src/backend/profile.js';
import { benchInference } from '../src/infer/bench.js';
import { makeConfig, type GPTConfig } from '../src/nn/config.js';
import { GPT, flopsPerToken } from '../src/nn/gpt.js';
import { moeFFN } from '../src/nn/moe.js';
import { normalArray } from '../src/nn/init.js';
import * as T from '../src/tensor/index.js';
import { AdamW } from '../src/train/optim.js';

const arg = (name: string) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : undefined);
const batch = Number(arg('--batch') ?? 8), steps = Number(arg('--steps') ?? 10), E = Number(arg('--experts') ?? 32);
const modes = (arg('--modes') ?? 'bf16').split(',') as MatmulMode[];
const PEAK = 989e12; // H200 dense bf16 tensor-core peak, FLOP/s
const result: Record<string, unknown> = { date: new Date().toISOString(), batch, seq_len: 1024, steps };

/** Model FLOPs per token of the sparse phase: the FFN at the active ratio, plus the routers. */
function sparseFlopsPerToken(c: GPTConfig, ratio: number, nExpert: number): number {
  const perLayer = 4 * c.d_model * c.d_model + 2 * c.d_model * c.d_ff * ratio + c.d_model * nExpert;
  const n = c.n_layer * perLayer + c.vocab_size * c.d_model;
  return 6 * n + 12 * c.n_layer * c.d_model * c.seq_len;
}

function trainSteps(be: CudaBackend, model: GPT, opt: AdamW, n: number): number {
  const mc = model.config;
  let s = 1;
  const toks = () => Int32Array.from({ length: batch * mc.seq_len }, () => (s = (s * 1103515245 + 12345) >>> 0) % mc.vocab_size);
  const one = () => {
    T.tidy(() => {
      const x = T.tensor(toks(), [batch, mc.seq_len], { dtype: 'i32' }), y = T.tensor(toks(), [batch, mc.seq_len], { dtype: 'i32' });
      T.backward(model.forward(x, { targets: y }).loss!);
    });
    opt.update();
    opt.zeroGrad();
  };
  for (let i = 0; i < 3; i++) one(); // warm-up: allocator pools, cuBLAS heuristics, bf16 shadows
  be.synchronize();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) one();
  be.synchronize();
  return (performance.now() - t0) / n;
}

/**
 * Per-entry device time: a proxy that synchronises after every backend call (so each call's wall time
 * is its kernels' time plus launch), over `n` training steps of a fresh model; prints the top entries.
 */
function profileSteps(be: CudaBackend, n: number): void {
  const { backend: wrapped, profile } = profiled(be, {
    after: () => be.synchronize(),
    key: (method, args) => {
      if (method !== 'matmul') return method;
      const g = args[3] as { m: number; n: number; k: number; batch: number; transA: boolean; transB: boolean };
      return `matmul ${g.batch}x${g.m}x${g.n}x${g.k}${g.transA ? ' tA' : ''}${g.transB ? ' tB' : ''}`;
    },
  });
  const entries = profile.entries;
  T.useBackend(wrapped);
  const mc = makeConfig('gpt2-small', { vocab_size: 50257 });
  const model = new GPT(mc, wrapped, 1);
  const opt = new AdamW([...model.params.values()], { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 });
  trainSteps(be, model, opt, 1);
  profile.reset();
  const t0 = performance.now();
  trainSteps(be, model, opt, n);
  const total = (performance.now() - t0) / (n + 3);
  const rows = [...entries].sort((a, b) => b[1].ms - a[1].ms);
  const sum = rows.reduce((s, [, e]) => s + e.ms, 0) / (n + 3);
  console.log(`profile (synchronised after every call): ${total.toFixed(1)} ms/step, of which backend calls ${sum.toFixed(1)} ms`);
  for (const [k, e] of rows.slice(0, 25)) {
    console.log(`  ${k.padEnd(40)} ${(e.ms / (n + 3)).toFixed(2).padStart(8)} ms/step  ${(e.calls / (n + 3)).toFixed(0).padStart(5)} calls/step`);
  }
  model.dispose();
  opt.dispose();
  T.useBackend(be);
}

for (const mode of modes) {
  const be = createCudaBackend({ matmul: mode });
  T.useBackend(be);
  console.log(`device ${be.device}; GEMM ${be.gemmLibrary}; matmul ${mode}`);
  const mc = makeConfig('gpt2-small', { vocab_size: 50257 });
  const model = new GPT(mc, be, 1);
  const opt = new AdamW([...model.params.values()], { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 });
  const ms = trainSteps(be, model, opt, steps);
  const tps = (batch * mc.seq_len) / (ms / 1000);
  const fpt = flopsPerToken(mc);
  const mfu = (tps * fpt) / PEAK;
  console.log(`dense GPT-2-small train (B ${batch} x T ${mc.seq_len}): ${ms.toFixed(1)} ms/step, ${Math.round(tps)} tokens/s, ` +
    `${(tps * fpt / 1e12).toFixed(1)} TFLOP/s, MFU ${(100 * mfu).toFixed(1)}% (of ${PEAK / 1e12} TFLOP/s)`);
  console.log(`  device memory: peak ${(be.deviceMemory().peakBytes / 2 ** 30).toFixed(1)} GiB`);
  result[`dense_${mode}`] = { ms_per_step: ms, tokens_per_s: tps, flops_per_token: fpt, mfu };
  if (process.argv.includes('--profile') && mode === modes[0]) profileSteps(be, 1);

  if (mode === modes[0]) {
    // Sparse phase: every FFN a MoE of E experts (contiguous column blocks; random routers), top-k = E/4.
    const k = Math.round(E / 4);
    const routers = Array.from({ length: mc.n_layer }, (_, i) => {
      const r = T.parameter(`router${i}`, normalArray(mc.d_model * E, 0.02, 50 + i), [mc.d_model, E], be);
      return r;
    });
    model.ffnOverride = (i, m, p) => moeFFN(m, p, routers[i]!, { nExpert: E, topK: k, activation: 'relu' }).y;
    const opt2 = new AdamW([...model.params.values(), ...routers], { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 });
    const sms = trainSteps(be, model, opt2, steps);
    const ideal = fpt / sparseFlopsPerToken(mc, k / E, E);
    const got = ms / sms;
    console.log(`sparse-phase step (MoE ${E} experts, top-${k}, active 1/4): ${sms.toFixed(1)} ms/step; speed-up ${got.toFixed(3)}x ` +
      `vs ideal ${ideal.toFixed(3)}x from FLOPs per step = ${(100 * got / ideal).toFixed(1)}% of ideal`);
    result['sparse'] = { n_expert: E, top_k: k, ms_per_step: sms, speedup: got, ideal_speedup: ideal, fraction_of_ideal: got / ideal };
    model.ffnOverride = null;
    for (const r of routers) r.dispose();
    opt2.dispose();
  }
  model.dispose();
  opt.dispose();
  be.emptyCache();
}

if (!process.argv.includes('--skip-infer')) {
  const be = createCudaBackend();
  T.useBackend(be);
  const report = benchInference(be, { vocab: 50257, ratios: [0.25], batches: [1, 32], rounds: 2, log: (l) => console.log(l) });
  result['infer'] = report;
}
const out = arg('--json');
if (out) fs.writeFileSync(out, JSON.stringify(result, null, 1) + '\n');
