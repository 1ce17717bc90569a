/**
 * `npm run bench:ops`: kernel throughput for `ref` and `cpu`, side by side in one run.
 *  - matmul GFLOP/s at 1024×1024×1024 and 2048×768×3072 (M×K×N), for every GEMM provider the cpu
 *    backend can load (oneDNN, OpenBLAS, own kernel), and the cpu default beside the best of them;
 *  - fused attention forward+backward, softmax-cross-entropy forward+backward;
 *  - the machine's fp32 peak estimate (measured FMA throughput of the own kernel's micro-loop is not
 *    available from JS, so: cores × clock × FLOPs/cycle, printed with its assumptions).
 * Usage: node dist/bench/ops.js [--quick] [--json out.json]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import type { Backend } from '../src/backend/contract.js';
import { cpuBackendInfo, gemmProviders, setGemmProvider } from '../src/backend/cpu/index.js';
import { getBackend } from '../src/backend/registry.js';

const quick = process.argv.includes('--quick');
const jsonOut = process.argv.includes('--json') ? process.argv[process.argv.indexOf('--json') + 1] : undefined;

/** Best wall time (s) of `reps` runs after one warm-up, or of one run when it is slow. */
function time(fn: () => void, reps = 5): number {
  const t0 = performance.now();
  fn();
  const first = (performance.now() - t0) / 1000;
  if (first > 2) return first;
  let best = first;
  for (let i = 0; i < reps; i++) {
    const t = performance.now();
    fn();
    best = Math.min(best, (performance.now() - t) / 1000);
  }
  return best;
}

function randomBuf(b: Backend, n: number): ReturnType<Backend['alloc']> {
  const buf = b.alloc('f32', n);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = Math.sin(i * 12.9898) * 0.5;
  b.upload(buf, data);
  return buf;
}

function matmulGflops(b: Backend, m: number, k: number, n: number): number {
  const A = randomBuf(b, m * k), B = randomBuf(b, k * n), C = b.alloc('f32', m * n);
  const s = time(() => b.matmul(A, B, C, { batch: 1, m, n, k, transA: false, transB: false, strideA: 0, strideB: 0, strideC: m * n, alpha: 1, beta: 0 }));
  for (const x of [A, B, C]) b.free(x);
  return (2 * m * n * k) / s / 1e9;
}

function attentionGflops(b: Backend, B: number, T: number, H: number, D: number): { fwdBwdMs: number; gflops: number } {
  const qkv = randomBuf(b, B * T * 3 * H * D), out = b.alloc('f32', B * T * H * D), lse = b.alloc('f32', B * H * T);
  const gout = randomBuf(b, B * T * H * D), gqkv = b.alloc('f32', B * T * 3 * H * D);
  const scale = 1 / Math.sqrt(D);
  const s = time(() => {
    b.attention(qkv, out, lse, B, T, H, D, true, scale);
    b.attentionBackward(qkv, out, lse, gout, gqkv, B, T, H, D, true, scale);
  }, 3);
  for (const x of [qkv, out, lse, gout, gqkv]) b.free(x);
  // Causal: half of the T×T score matrix. Forward 2 GEMM-like products, backward 5 (FlashAttention-2 count).
  const flops = 7 * 2 * B * H * D * (T * (T + 1)) / 2;
  return { fwdBwdMs: s * 1000, gflops: flops / s / 1e9 };
}

function crossEntropyRate(b: Backend, N: number, V: number): { fwdBwdMs: number; gbPerS: number } {
  const logits = randomBuf(b, N * V), targets = b.alloc('i32', N), losses = b.alloc('f32', N), lse = b.alloc('f32', N);
  b.upload(targets, Int32Array.from({ length: N }, (_, i) => (i * 7919) % V));
  const gloss = b.alloc('f32', N), glogits = b.alloc('f32', N * V);
  b.fill(gloss, 1 / N);
  const s = time(() => {
    b.crossEntropy(logits, targets, losses, lse, N, V);
    b.crossEntropyBackward(logits, targets, lse, gloss, glogits, N, V);
  }, 3);
  for (const x of [logits, targets, losses, lse, gloss, glogits]) b.free(x);
  // Bytes touched: read logits twice, write glogits once.
  return { fwdBwdMs: s * 1000, gbPerS: (3 * 4 * N * V) / s / 1e9 };
}

function peakEstimate(): { gflops: number; note: string } {
  const cores = os.availableParallelism();
  // os.cpus() reports 0 MHz on some VMs; fall back to /proc/cpuinfo (the base clock, not boost).
  let mhz = Math.max(...os.cpus().map((c) => c.speed));
  if (!mhz && fs.existsSync('/proc/cpuinfo')) {
    mhz = Math.round(Number(/cpu MHz\s*:\s*([\d.]+)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 0));
  }
  const amd = /AMD/i.test(os.cpus()[0]?.model ?? '');
  // Zen 4: two 256-bit FMA pipes (AVX-512 is double-pumped) = 32 fp32 FLOP/cycle; Intel server cores
  // with two 512-bit FMA units = 64.
  const perCycle = amd ? 32 : 64;
  return { gflops: (cores * mhz * perCycle) / 1000, note: `${cores} cores × ${mhz} MHz (reported clock) × ${perCycle} FLOP/cycle` };
}

const results: Record<string, unknown> = { date: new Date().toISOString(), cpu: os.cpus()[0]?.model, cores: os.availableParallelism() };
const cpu = getBackend('cpu');
const ref = getBackend('ref');
const info = cpuBackendInfo();
console.log(`cpu backend: GEMM ${info.gemm}, ${info.threads} threads, ${info.simd}`);
const peak = peakEstimate();
console.log(`fp32 peak estimate: ${peak.gflops.toFixed(0)} GFLOP/s (${peak.note})`);
results.peak = peak;

const shapes: [number, number, number][] = [[1024, 1024, 1024], [2048, 768, 3072]];
const matmul: Record<string, Record<string, number>> = {};
const defaultProvider = info.gemm.split(' ')[0]!;
for (const [m, k, n] of shapes) {
  const key = `${m}x${k}x${n}`;
  matmul[key] = {};
  for (const p of gemmProviders()) {
    setGemmProvider(p);
    matmul[key]![p] = matmulGflops(cpu, m, k, n);
  }
  setGemmProvider(defaultProvider);
  matmul[key]!['cpu (default)'] = matmulGflops(cpu, m, k, n);
  if (!quick || m === 1024) matmul[key]!.ref = matmulGflops(ref, m, k, n);
}
console.log('\nmatmul GFLOP/s (M×K×N, fp32, one run, same process)');
for (const [key, row] of Object.entries(matmul)) {
  const libs = Object.entries(row).filter(([p]) => p === 'onednn' || p === 'openblas');
  const best = libs.length ? Math.max(...libs.map(([, v]) => v)) : NaN;
  const cells = Object.entries(row).map(([p, v]) => `${p} ${v.toFixed(1)}`).join(' | ');
  console.log(`  ${key}: ${cells} | cpu/best-library ${(row['cpu (default)']! / best * 100).toFixed(0)}% | own/peak ${((row.own ?? NaN) / peak.gflops * 100).toFixed(0)}%`);
}
results.matmul = matmul;

const att: Record<string, unknown> = {};
console.log('\nattention forward+backward (causal, B=4 T=256 H=12 D=64)');
for (const [name, b] of [['cpu', cpu], ['ref', ref]] as const) {
  if (name === 'ref' && quick) continue;
  const r = name === 'ref' ? attentionGflops(b, 1, 128, 2, 64) : attentionGflops(b, 4, 256, 12, 64);
  att[name] = r;
  console.log(`  ${name}${name === 'ref' ? ' (B=1 T=128 H=2)' : ''}: ${r.fwdBwdMs.toFixed(1)} ms, ${r.gflops.toFixed(1)} GFLOP/s`);
}
results.attention = att;

const ce: Record<string, unknown> = {};
console.log('\nsoftmax-cross-entropy forward+backward (N=1024, V=50257)');
for (const [name, b] of [['cpu', cpu], ['ref', ref]] as const) {
  const N = name === 'ref' ? 64 : 1024;
  const r = crossEntropyRate(b, N, 50257);
  ce[name] = r;
  console.log(`  ${name}${name === 'ref' ? ' (N=64)' : ''}: ${r.fwdBwdMs.toFixed(1)} ms, ${r.gbPerS.toFixed(1)} GB/s`);
}
results.crossEntropy = ce;

if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify(results, null, 1));
