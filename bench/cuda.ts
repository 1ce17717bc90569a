/**
 * `npm run bench:cuda`: the CUDA backend on GPT-2-small (12 layers, d_model 768, context 1024, ReLU FFN,
 * vocabulary 50257, random tokens): dense training tokens/s and MFU; the sparse-phase step (every FFN a
 * MoE of `--experts` experts, top-k at active ratio 1/4) against the dense step, beside the ideal
 * speed-up from FLOPs per step; then MoE vs dense decode tokens/s at batch 1 and 32 (src/infer/bench.ts).
 * Compare with bench/torch_gpt2.py (same model in PyTorch, eager and torch.compile) run on the same card.
 * `--profile` prints per-entry device times of one dense and one sparse-phase step (synchronised after every
 * backend call); `--grouped` only times the MoE's grouped products alone (see `groupedBench`).
 * Usage: node dist/bench/cuda.js [--batch 8] [--steps 10] [--experts 32] [--modes bf16,fast16bf]
 *        [--profile] [--skip-infer] [--grouped [--skew 0]] [--json out.json]
 */
import * as fs from 'node:fs';
import type { Backend, Buf, GroupedMatmulArgs, MatmulArgs } from '../src/backend/contract.js';
import { createCudaBackend, type CudaBackend, type MatmulMode } from '../src/backend/cuda/index.js';
import { profiled } from '../src/backend/profile.js';
import { benchInference } from '../src/infer/bench.js';
import { makeConfig, type GPTConfig } from '../src/nn/config.js';
import { GPT, flopsPerToken } from '../src/nn/gpt.js';
import { moeFFN } from '../src/nn/moe.js';
import { groupExperts } from '../src/backend/segments.js';
import { normalArray } from '../src/nn/init.js';
import * as T from '../src/tensor/index.js';
import { AdamW } from '../src/train/optim.js';

const arg = (name: string) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : undefined);
const batch = Number(arg('--batch') ?? 8), steps = Number(arg('--steps') ?? 10), E = Number(arg('--experts') ?? 32);
const skew = Number(arg('--skew') ?? 0);
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

/** The sparse phase on `model`: every FFN a MoE of E experts with random routers on `be`, top-k = E/4. */
function sparsePhase(be: Backend, model: GPT): { opt: AdamW; k: number; dispose: () => void } {
  const mc = model.config, k = Math.round(E / 4);
  const routers = Array.from({ length: mc.n_layer }, (_, i) =>
    T.parameter(`router${i}`, normalArray(mc.d_model * E, 0.02, 50 + i), [mc.d_model, E], be));
  model.ffnOverride = (i, m, p) => moeFFN(m, p, routers[i]!, { nExpert: E, topK: k, activation: 'relu' }).y;
  const opt = new AdamW([...model.params.values(), ...routers], { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 });
  return {
    opt, k, dispose: () => {
      model.ffnOverride = null;
      for (const r of routers) r.dispose();
      opt.dispose();
    },
  };
}

/**
 * Profile key of a call: the method, with the shapes of GEMMs and scatter-adds and the transposes / row
 * indices of grouped ones.
 */
function profileKey(method: string, args: unknown[]): string {
  if (method === 'scatterAddRows') return `scatterAddRows ${args[3]} rows of ${args[5]} onto ${args[4]}`;
  if (method === 'matmul') {
    const g = args[3] as MatmulArgs;
    return `matmul ${g.batch}x${g.m}x${g.n}x${g.k}${g.transA ? ' tA' : ''}${g.transB ? ' tB' : ''}`;
  }
  if (method === 'groupedMatmul') {
    const g = args[3] as GroupedMatmulArgs;
    const rows = Object.entries(g.rows ?? {}).filter(([, v]) => v).map(([w]) => ` rows.${w}`).join('');
    return `groupedMatmul${g.transA ? ' tA' : ''}${g.transB ? ' tB' : ''}${rows}`;
  }
  return method;
}

/**
 * Per-entry device time: a proxy that synchronises after every backend call (so each call's wall time
 * is its kernels' time plus launch), over `n` training steps of a fresh model (dense, or in the sparse
 * phase); prints the top entries.
 */
function profileSteps(be: CudaBackend, n: number, sparse: boolean): void {
  const { backend: wrapped, profile } = profiled(be, { after: () => be.synchronize(), key: profileKey });
  const entries = profile.entries;
  T.useBackend(wrapped);
  const mc = makeConfig('gpt2-small', { vocab_size: 50257 });
  const model = new GPT(mc, wrapped, 1);
  const phase = sparse ? sparsePhase(wrapped, model) : null;
  const opt = phase?.opt ?? new AdamW([...model.params.values()], { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 });
  trainSteps(be, model, opt, 1);
  profile.reset();
  const t0 = performance.now();
  trainSteps(be, model, opt, n);
  const total = (performance.now() - t0) / (n + 3);
  const rows = [...entries].sort((a, b) => b[1].ms - a[1].ms);
  const sum = rows.reduce((s, [, e]) => s + e.ms, 0) / (n + 3);
  console.log(`profile of the ${sparse ? 'sparse-phase' : 'dense'} step (synchronised after every call): ${total.toFixed(1)} ms/step, ` +
    `of which backend calls ${sum.toFixed(1)} ms`);
  for (const [key, e] of rows.slice(0, 45)) {
    console.log(`  ${key.padEnd(40)} ${(e.ms / (n + 3)).toFixed(2).padStart(8)} ms/step  ${(e.calls / (n + 3)).toFixed(0).padStart(5)} calls/step`);
  }
  if (phase) phase.dispose();
  else opt.dispose();
  model.dispose();
  T.useBackend(be);
}

/**
 * The six grouped products of a sparse-phase MoE layer alone, at the bench's sizes (batch × 1024
 * tokens, d_model 768, E experts of d_ff / E neurons, top-E/4 of a random routing): forward
 * x[tok]·W_inᵀ and h·W_outᵀ scattered onto the tokens, backward gy[tok]·W_out, gy[tok]ᵀ·h (∂W_out),
 * gh·W_in scattered, ghᵀ·x[tok] (∂W_in); then the bias gradient (gh's rows summed per expert). Each
 * product is timed as the model runs it (row indices and segment offsets from `expertGroups` on the
 * device), on contiguous copies with host problems (no indices, no scatter), and as one cuBLAS GEMM of
 * the same FLOPs; 10 calls queued, then one synchronisation. `--skew z` draws experts with weights
 * (e + 1)^-z instead of uniformly (an unbalanced routing, as trained routers give).
 */
function groupedBench(be: CudaBackend): void {
  const N = batch * 1024, d = 768, dff = 3072, s = dff / E, k = Math.round(E / 4), M = N * k;
  let seed = 7;
  const rand = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  // Each token's k distinct experts drawn with weights (e + 1)^-skew (0: uniform).
  const weight = Array.from({ length: E }, (_, e) => (e + 1) ** -skew);
  const experts = new Int32Array(M);
  for (let t = 0; t < N; t++) {
    const left = [...weight];
    for (let j = 0; j < k; j++) {
      let u = rand() * left.reduce((a, w) => a + w, 0), e = 0;
      while (e < E - 1 && (u -= left[e]!) >= 0) e++;
      experts[t * k + j] = e;
      left[e] = 0;
    }
  }
  const off = groupExperts(experts, N, k, E).offsets;
  console.log(`expert loads (skew ${skew}): ${Math.min(...off.subarray(1).map((o, e) => o - off[e]!))} to ` +
    `${Math.max(...off.subarray(1).map((o, e) => o - off[e]!))} rows (mean ${M / E})`);
  const f32 = (n: number) => {
    const b = be.alloc('f32', n);
    be.upload(b, Float32Array.from({ length: n }, () => rand() - 0.5));
    return b;
  };
  // The routing as the model makes it: grouped on the device, the segment offsets never on the host.
  const exIn = be.alloc('i32', M), tok = be.alloc('i32', M), slot = be.alloc('i32', M), ex = be.alloc('i32', M);
  const segments = be.alloc('i32', E + 1);
  be.upload(exIn, experts);
  be.expertGroups(exIn, segments, tok, slot, ex, N, k, E);
  const x = f32(N * d), gy = f32(N * d), h = f32(M * s), gh = f32(M * s), wIn = f32(dff * d), wOut = f32(d * dff);
  const xg = f32(M * d), gyg = f32(M * d), outMd = be.alloc('f32', M * d), outMs = be.alloc('f32', M * s);
  const outNd = be.alloc('f32', N * d), gWin = be.alloc('f32', dff * d), gWout = be.alloc('f32', d * dff), gb = be.alloc('f32', E * s);
  // With device segments a problem gives 0 for the token dimension and the offsets along it.
  const probs = (f: (e: number, m: number, o: number) => number[]) => Int32Array.from(Array.from({ length: E }, (_, e) => f(e, 0, 0)).flat());
  const plainProbs = (f: (e: number, m: number, o: number) => number[]) =>
    Int32Array.from(Array.from({ length: E }, (_, e) => f(e, off[e + 1]! - off[e]!, off[e]!)).flat());
  type Problems = (f: (e: number, m: number, o: number) => number[]) => Int32Array;
  type Case = { name: string; a: Buf; b: Buf; c: Buf; p: (q: Problems) => Int32Array;
    tA: boolean; tB: boolean; rows: GroupedMatmulArgs['rows']; plain: [Buf, Buf, Buf]; dense: [number, number, number, boolean] };
  const cases: Case[] = [
    { name: 'fwd  x[tok]·W_inᵀ', a: x, b: wIn, c: outMs, p: (q) => q((e, m, o) => [m, s, d, o * d, d, e * s * d, d, o * s, s]), tA: false, tB: true,
      rows: { a: tok }, plain: [xg, wIn, outMs], dense: [M, s, d, false] },
    { name: 'fwd  h·W_outᵀ → tok', a: h, b: wOut, c: outNd, p: (q) => q((e, m, o) => [m, d, s, o * s, s, e * s, dff, o * d, d]), tA: false, tB: true,
      rows: { c: tok }, plain: [h, wOut, outMd], dense: [M, d, s, false] },
    { name: 'bwd  gy[tok]·W_out', a: gy, b: wOut, c: outMs, p: (q) => q((e, m, o) => [m, s, d, o * d, d, e * s, dff, o * s, s]), tA: false, tB: false,
      rows: { a: tok }, plain: [gyg, wOut, outMs], dense: [M, s, d, false] },
    { name: 'bwd  gy[tok]ᵀ·h (∂W_out)', a: gy, b: h, c: gWout, p: (q) => q((e, m, o) => [d, s, m, o * d, d, o * s, s, e * s, dff]), tA: true, tB: false,
      rows: { a: tok }, plain: [gyg, h, gWout], dense: [d, s, M, true] },
    { name: 'bwd  gh·W_in → tok', a: gh, b: wIn, c: outNd, p: (q) => q((e, m, o) => [m, d, s, o * s, s, e * s * d, d, o * d, d]), tA: false, tB: false,
      rows: { c: tok }, plain: [gh, wIn, outMd], dense: [M, d, s, false] },
    { name: 'bwd  ghᵀ·x[tok] (∂W_in)', a: gh, b: x, c: gWin, p: (q) => q((e, m, o) => [s, d, m, o * s, s, o * d, d, e * s * d, d]), tA: true, tB: false,
      rows: { b: tok }, plain: [gh, xg, gWin], dense: [s, d, M, true] },
  ];
  const time = (f: () => void) => {
    f();
    be.synchronize();
    const t0 = performance.now();
    for (let i = 0; i < 10; i++) f();
    be.synchronize();
    return ((performance.now() - t0) / 10) * 1000;
  };
  const flops = 2 * M * d * s;
  const fmt = (us: number) => `${us.toFixed(0).padStart(5)} µs ${(flops / us / 1e6).toFixed(0).padStart(4)} TFLOP/s`;
  console.log(`grouped products of one MoE layer (${N} tokens, ${E} experts of ${s}, top-${k}; ${(flops / 1e9).toFixed(2)} GFLOP each):`);
  console.log(`  ${'product'.padEnd(26)} ${'row indices'.padEnd(22)} ${'contiguous'.padEnd(22)} one cuBLAS GEMM`);
  const results: Record<string, number[]> = {};
  for (const q of cases) {
    const beta = q.rows?.c ? 1 : 0;
    const fused = time(() => be.groupedMatmul(q.a, q.b, q.c,
      { problems: q.p(probs), transA: q.tA, transB: q.tB, alpha: 1, beta, rows: q.rows, segments }));
    // The product on contiguous operands: a scattered C's problems already address its (M, d) virtual matrix.
    const plain = time(() => be.groupedMatmul(q.plain[0], q.plain[1], q.plain[2],
      { problems: q.p(plainProbs), transA: q.tA, transB: q.tB, alpha: 1, beta: 0 }));
    const [m, n, kk, tA] = q.dense;
    const dense = time(() => be.matmul(q.plain[0], q.plain[1], tA ? gWout : outMd, { batch: 1, m, n, k: kk, transA: tA, transB: false,
      strideA: 0, strideB: 0, strideC: 0, alpha: 1, beta: 0 }));
    results[q.name] = [fused, plain, dense];
    console.log(`  ${q.name.padEnd(26)} ${fmt(fused)}   ${fmt(plain)}   ${fmt(dense)}`);
  }
  const bias = time(() => be.scatterAddRows(gh, ex, gb, M, E, s));
  console.log(`  bias gradient (scatter-add of ${M} rows of ${s} onto ${E}): ${bias.toFixed(0)} µs`);
  result['grouped'] = { ...results, bias_grad_us: bias };
  for (const b of [exIn, tok, slot, ex, segments, x, gy, h, gh, wIn, wOut, xg, gyg, outMd, outMs, outNd, gWin, gWout, gb]) be.free(b);
}

if (process.argv.includes('--grouped')) {
  const be = createCudaBackend();
  groupedBench(be);
  const out = arg('--json');
  if (out) fs.writeFileSync(out, JSON.stringify(result, null, 1) + '\n');
  process.exit(0);
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
  if (process.argv.includes('--profile') && mode === modes[0]) profileSteps(be, 1, false);

  if (mode === modes[0]) {
    // Sparse phase: every FFN a MoE of E experts (contiguous column blocks; random routers), top-k = E/4.
    const phase = sparsePhase(be, model);
    const sms = trainSteps(be, model, phase.opt, steps);
    const ideal = fpt / sparseFlopsPerToken(mc, phase.k / E, E);
    const got = ms / sms;
    console.log(`sparse-phase step (MoE ${E} experts, top-${phase.k}, active 1/4): ${sms.toFixed(1)} ms/step; speed-up ${got.toFixed(3)}x ` +
      `vs ideal ${ideal.toFixed(3)}x from FLOPs per step = ${(100 * got / ideal).toFixed(1)}% of ideal`);
    result['sparse'] = { n_expert: E, top_k: phase.k, ms_per_step: sms, speedup: got, ideal_speedup: ideal, fraction_of_ideal: got / ideal };
    phase.dispose();
    if (process.argv.includes('--profile')) profileSteps(be, 1, true);
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
