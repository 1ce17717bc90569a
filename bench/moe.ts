/**
 * `npm run bench:moe`: the MoE FFN against the dense FFN, forward + backward, on one backend, side by
 * side in one run, at d_model 768, d_ff 3072, 8192 tokens, n_expert 32/48/64/96 and active ratios
 * 1/8, 1/4, 1/2, 1; then the time to MoEfy 12 such layers (balanced k-means by auction).
 * Usage: node dist/bench/moe.js [--backend cpu] [--quick] [--json out.json]
 */
import * as fs from 'node:fs';
import { selectBackend } from '../src/backend/registry.js';
import { balancedKMeans } from '../src/moefy/kmeans.js';
import { backendDot } from '../src/moefy/model.js';
import { centroidRouter } from '../src/moefy/permute.js';
import { ffnDense, type FFNParams } from '../src/nn/ffn.js';
import { normalArray } from '../src/nn/init.js';
import { moeFFN } from '../src/nn/moe.js';
import * as T from '../src/tensor/index.js';

const arg = (name: string) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : undefined);
const quick = process.argv.includes('--quick');
const backend = selectBackend(arg('--backend'));
T.useBackend(backend);
const dm = 768, dff = 3072, N = quick ? 2048 : 8192;

function param(name: string, shape: number[], std: number, seed: number): T.Tensor {
  return T.parameter(name, normalArray(shape.reduce((a, b) => a * b, 1), std, seed), shape, backend);
}

const p: FFNParams = {
  w_in: param('w_in', [dff, dm], 0.02, 1), b_in: param('b_in', [dff], 0.02, 2),
  w_out: param('w_out', [dm, dff], 0.02, 3), b_out: param('b_out', [dm], 0.02, 4),
};
const x = param('x', [N, dm], 1, 5);
const gy = T.tensor(normalArray(N * dm, 1, 6), [N, dm]).keep();

/** One forward + backward; returns its wall time (ms). */
function once(forward: () => T.Tensor, extra: T.Tensor[] = []): number {
  const t0 = performance.now();
  T.tidy(() => T.backward(forward(), gy));
  for (const t of [...Object.values(p), x, ...extra]) {
    if (!t) continue;
    t.grad?.dispose();
    t.grad = null;
  }
  return performance.now() - t0;
}

let denseWarm = false;
/**
 * Best wall times (ms) of the dense FFN and `forward`, run alternately after a warm-up, so both
 * see the same machine state (this host's speed drifts by ±10% over minutes).
 */
function paired(forward: () => T.Tensor, extra: T.Tensor[], reps = quick ? 2 : 3): { dense: number; moe: number } {
  const dense = () => ffnDense(x, p, 'relu');
  if (!denseWarm) once(dense);
  denseWarm = true;
  once(forward, extra); // warm-up
  let best = { dense: Infinity, moe: Infinity };
  for (let r = 0; r < reps; r++) best = { dense: Math.min(best.dense, once(dense)), moe: Math.min(best.moe, once(forward, extra)) };
  return best;
}

console.log(`backend ${backend.name}; FFN d_model ${dm}, d_ff ${dff}, ${N} tokens; forward + backward, best of runs, each MoE row paired with a dense run`);
const rows: Record<string, unknown>[] = [];
const wIn = p.w_in.toArray() as Float32Array;
for (const E of quick ? [32] : [32, 48, 64, 96]) { // 48: the default expert size of 64 neurons
  const router = T.tensor(centroidRouter(wIn, dff, dm, E), [dm, E]).keep();
  router.requiresGrad = true;
  for (const ratio of [1 / 8, 1 / 4, 1 / 2, 1]) {
    const k = Math.round(E * ratio);
    const { dense, moe: ms } = paired(() => moeFFN(x, p, router, { nExpert: E, topK: k, activation: 'relu' }).y, [router]);
    rows.push({ n_expert: E, top_k: k, active_ratio: ratio, ms, dense_ms: dense, vs_dense: ms / dense });
    console.log(`MoE n_expert ${E}, top_k ${k} (ratio ${ratio}): ${ms.toFixed(1)} ms = ${(ms / dense).toFixed(3)}× dense ${dense.toFixed(1)} ms (ideal ${ratio.toFixed(3)}×)`);
  }
  router.dispose();
}

const E0 = Number(arg('--moefy-experts') ?? 96);
const { dot } = backendDot(backend);
const t0 = performance.now();
let iters = 0;
for (let l = 0; l < (quick ? 2 : 12); l++) {
  const w = normalArray(dff * dm, 0.02, 100 + l);
  iters += balancedKMeans(w, dff, dm, { nExpert: E0, seed: l, dot }).iterations;
}
const moefySeconds = (performance.now() - t0) / 1000;
console.log(`MoEfication of ${quick ? 2 : 12} layers (d_ff ${dff} -> ${E0} experts, balanced k-means): ${moefySeconds.toFixed(1)} s (${iters} balanced iterations in total)`);
const out = arg('--json');
if (out) fs.writeFileSync(out, JSON.stringify({ date: new Date().toISOString(), backend: backend.name, N, moe: rows, moefy_seconds: moefySeconds }, null, 1));
