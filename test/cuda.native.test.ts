/**
 * Tests specific to the cuda backend (skipped without a device): sizes that take the tiled / tensor-core
 * paths (GEMM, grouped GEMM with many groups and with row indices, a MoE layer forward and backward,
 * flash attention at D 32/64/128, KV-cache attention, LayerNorm, cross-entropy over a GPT-2
 * vocabulary, reductions) compared with the cpu backend; determinism (same bits twice); exact ops
 * (top-k with ties and NaN, dropout masks, embedding gradients); errors (bad ids and row indices, out
 * of memory); memory accounting; CUDA graphs (replays, refused uploads, decode from a graph equal to
 * eager decode); NCCL all-reduce (one rank, and two ranks on a machine with two GPUs); and the loss
 * curve of a short training run on cpu and cuda.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import type { Backend, Buf, GroupedMatmulArgs } from '../src/backend/contract.js';
import { createCpuBackend } from '../src/backend/cpu/index.js';
import { groupExperts, resolveSegments } from '../src/backend/segments.js';
import { createCudaBackend, cudaUnavailableReason, type CudaBackend } from '../src/backend/cuda/index.js';
import { loadCudaAddon } from '../src/backend/cuda/addon.js';
import { launchRanks } from '../src/parallel/launch.js';
import { GPT } from '../src/nn/gpt.js';
import { makeConfig } from '../src/nn/config.js';
import { moeFFN } from '../src/nn/moe.js';
import { generateBatch } from '../src/infer/generate.js';
import { disposeExperts, prepareExperts, useDense, useMoE } from '../src/infer/mode.js';
import * as T from '../src/tensor/index.js';
import { AdamW } from '../src/train/optim.js';
import { groupedRowsRun } from './grouped-rows.cases.js';
import { ints, put, randn, relErr, rng } from './helpers.js';

const why = cudaUnavailableReason();

type Run = (b: Backend) => ArrayLike<number>[];

/**
 * A MoE FFN layer (8 experts of 32, top-2) forward and backward on `be`: the output and the gradients
 * of x, W_in, b_in, W_out, b_out and the router. x, the router, W_in and b_in are small multiples of
 * powers of two, so the router scores and the expert pre-activations are exact in bf16: both backends
 * pick the same experts and the same ReLU mask, and only bf16 rounding of the rest differs.
 */
function moeLayer(be: Backend): ArrayLike<number>[] {
  const r = rng(5), N = 300, dm = 64, E = 8, s = 32;
  const q = (n: number, lo: number, hi: number) => Array.from(ints(r, n, lo, hi));
  return T.tidy(() => {
    const leaf = (data: ArrayLike<number>, shape: number[]) => {
      const t = T.tensor(data, shape, { backend: be });
      t.requiresGrad = true;
      return t;
    };
    const x = leaf(q(N * dm, -8, 9).map((v) => v / 4), [N, dm]), router = leaf(q(dm * E, -3, 4), [dm, E]);
    const p = {
      w_in: leaf(q(E * s * dm, -8, 9).map((v) => v / 32), [E * s, dm]), b_in: leaf(q(E * s, -8, 9).map((v) => v / 16), [E * s]),
      w_out: leaf(randn(r, dm * E * s, 0.2), [dm, E * s]), b_out: leaf(randn(r, dm, 0.1), [dm]),
    };
    const { y } = moeFFN(x, p, router, { nExpert: E, topK: 2, activation: 'relu' });
    T.backward(T.sum(T.mul(y, T.tensor(randn(r, N * dm), [N, dm], { backend: be }))));
    return [y, x, p.w_in, p.b_in, p.w_out, p.b_out, router].map((t, i) => (i === 0 ? t : t.grad!).toArray());
  });
}

if (why) {
  describe('cuda backend', () => {
    it('needs a CUDA device', { skip: why }, () => {});
  });
} else {
  const cuda = createCudaBackend() as CudaBackend;
  const cpu = createCpuBackend();

  function close(name: string, run: Run, tol: number, on: Backend = cuda): void {
    it(`${name}: matches cpu (rel. err <= ${tol})`, () => {
      const want = run(cpu), got = run(on);
      got.forEach((g, k) => {
        const e = relErr(g, want[k]!);
        assert.ok(e <= tol, `output ${k}: relative error ${e.toExponential(2)} > ${tol}`);
      });
    });
  }
  /**
   * Runs `fn` on an inference model (random weights, `nExpert` block experts ready for useMoE) on `be`;
   * `graphs(on)` sets SSD_CUDA_GRAPHS for the next generateBatch. Restores the variable and frees all.
   */
  function withDecodeModel(be: Backend, cfg: Parameters<typeof makeConfig>[1], nExpert: number,
    fn: (model: GPT, experts: ReturnType<typeof prepareExperts>, graphs: (on: boolean) => void) => void): void {
    const model = new GPT(makeConfig('tiny', cfg), be, 7);
    for (const t of model.params.values()) t.requiresGrad = false;
    const experts = prepareExperts(model, null, { nExpert, blocks: true });
    const env = process.env['SSD_CUDA_GRAPHS'];
    try {
      fn(model, experts, (on) => { process.env['SSD_CUDA_GRAPHS'] = on ? '1' : '0'; });
    } finally {
      if (env === undefined) delete process.env['SSD_CUDA_GRAPHS']; else process.env['SSD_CUDA_GRAPHS'] = env;
      useDense(model);
      disposeExperts(experts);
      model.dispose();
    }
  }
  function sameTwice(name: string, run: Run, on: Backend = cuda): void {
    it(`${name}: same bits twice`, () => {
      const a = run(on), b = run(on);
      a.forEach((x, k) => assert.deepEqual(Array.from(x), Array.from(b[k]!), `output ${k} differs between runs`));
    });
  }

  describe(`cuda backend (${cuda.device}; ${cuda.gemmLibrary}; matmul ${cuda.matmulMode})`, () => {
    const r = rng(7);
    for (const [m, k, n, tA, tB, batch] of [[256, 768, 3072, false, true, 1], [1000, 96, 130, true, false, 3],
      [33, 17, 65, true, true, 2], [2048, 3072, 768, false, false, 1]] as const) {
      const a = randn(r, batch * m * k), b = randn(r, batch * k * n), c0 = randn(r, batch * m * n);
      close(`matmul ${batch}x${m}x${k}x${n} tA=${tA} tB=${tB} beta=1`, (be) => {
        const A = put(be, a), B = put(be, b), C = put(be, c0);
        be.matmul(A, B, C, { batch, m, n, k, transA: tA, transB: tB, strideA: m * k, strideB: k * n, strideC: m * n,
          alpha: 0.5, beta: 1 });
        const out = be.download(C);
        for (const x of [A, B, C]) be.free(x);
        return [out];
      }, 1e-2);
    }
    {
      // The matmul epilogue (bias, ReLU): fused by cuBLASLt (beta 0 and 1, both transposes), after a
      // strided batch, after a padded width (bias over the n real columns), and in the f32 / built-in
      // GEMM modes.
      const f32 = createCudaBackend({ matmul: 'f32' }), own = createCudaBackend({ matmul: 'own' });
      for (const [m, k, n, tA, tB, batch, beta, relu, on, tol] of [
        [512, 768, 3072, false, true, 1, 0, true, cuda, 1e-2], [1000, 96, 130, true, false, 1, 1, false, cuda, 1e-2],
        [33, 17, 65, true, true, 3, 1, true, cuda, 1e-2], [128, 64, 33333, false, true, 1, 0, true, cuda, 1e-2],
        [300, 200, 72, false, true, 1, 0, true, f32, 1e-5], [300, 200, 72, false, true, 2, 1, true, own, 1e-2],
      ] as const) {
        const a = randn(r, batch * m * k), b = randn(r, batch * k * n), c0 = randn(r, batch * m * n), bias = randn(r, n);
        close(`matmul epilogue ${batch}x${m}x${k}x${n} tA=${tA} tB=${tB} beta=${beta} bias${relu ? ' + ReLU' : ''} (matmul ${(on as CudaBackend).matmulMode})`, (be) => {
          const A = put(be, a), B = put(be, b), C = put(be, c0), bb = put(be, bias);
          be.matmul(A, B, C, { batch, m, n, k, transA: tA, transB: tB, strideA: m * k, strideB: k * n, strideC: m * n,
            alpha: 0.5, beta, bias: bb, relu });
          const res = be.download(C);
          for (const x of [A, B, C, bb]) be.free(x);
          return [res];
        }, tol, on);
      }
    }
    {
      // The biasGrad epilogue: a linear layer's weight gradient gᵀ·x with Σ_rows g (cuBLASLt BGRADB on
      // the bf16 copy of g; rows 8190: the padded reduction), in f32 and built-in modes, and x·W with
      // the row sums of x (the transposed case).
      const f32 = createCudaBackend({ matmul: 'f32' }), own = createCudaBackend({ matmul: 'own' });
      for (const [rows, nOut, nIn, tA, on, tol, alpha] of [[8192, 3072, 768, true, cuda, 1e-2, 1], [8190, 768, 2304, true, cuda, 1e-2, 1],
        [500, 72, 40, true, f32, 1e-5, 1], [500, 72, 40, true, own, 1e-2, 1], [300, 65, 200, false, cuda, 1e-2, 1],
        [1024, 768, 768, true, cuda, 1e-2, 0.5]] as const) {
        const g = randn(r, rows * nOut).map((v) => v + 0.3), x = randn(r, rows * nIn);
        close(`matmul biasGrad ${rows}x${nOut}x${nIn} tA=${tA} alpha=${alpha} (matmul ${(on as CudaBackend).matmulMode})`, (be) => {
          const [m, n, k] = tA ? [nOut, nIn, rows] : [rows, nIn, nOut];
          const G = put(be, g), X = put(be, x), W = be.alloc('f32', m * n), gb = be.alloc('f32', m);
          be.matmul(G, X, W, { batch: 1, m, n, k, transA: tA, transB: false, strideA: 0, strideB: 0, strideC: 0, alpha,
            beta: 0, biasGrad: gb });
          const res = [be.download(W), be.download(gb)];
          for (const t of [G, X, W, gb]) be.free(t);
          return res;
        }, tol, on);
      }
    }
    {
      // The MoE's first product with its epilogue (expert biases, ReLU) at training shapes: 1024 tokens,
      // top-8 of 32 experts of 96, d_model 768; the grouped kernel over device segments, and the cuBLAS
      // route (fp32) over the same problems.
      const N = 1024, k = 8, E = 32, s = 96, dm = 768;
      const x = randn(r, N * dm, 0.1), w = randn(r, E * s * dm, 0.05), bias = randn(r, E * s, 0.5);
      const experts = Int32Array.from({ length: N * k }, (_, i) => (Math.floor(i / k) * 7 + (i % k) * 5) % E);
      const f32 = createCudaBackend({ matmul: 'f32', grouped: 'cublas' });
      for (const [on, tol] of [[cuda, 1e-2], [f32, 1e-5]] as const) {
        close(`MoE first product + expert biases + ReLU (${N} tokens, top-${k} of ${E}; ${(on as CudaBackend).matmulMode})`, (be) => {
          const X = put(be, x), W = put(be, w), Bi = put(be, bias), Ex = put(be, experts, 'i32');
          const off = be.alloc('i32', E + 1), tok = be.alloc('i32', N * k), slot = be.alloc('i32', N * k), rex = be.alloc('i32', N * k);
          be.expertGroups(Ex, off, tok, slot, rex, N, k, E);
          const H = be.alloc('f32', N * k * s), problems = new Int32Array(9 * E);
          for (let e = 0; e < E; e++) problems.set([0, s, dm, 0, dm, e * s * dm, dm, 0, s], 9 * e);
          be.groupedMatmul(X, W, H, { problems, transA: false, transB: true, alpha: 1, beta: 0, rows: { a: tok }, segments: off,
            bias: Bi, biasStride: s, relu: true });
          const res = [be.download(H)];
          for (const t of [X, W, Bi, Ex, off, tok, slot, rex, H]) be.free(t);
          return res;
        }, tol, on);
      }
      // Biases 33 floats apart (those of groups 1-3 not 16-byte aligned) on the cuBLAS route of 4 groups,
      // where cuBLASLt's bias epilogue is skipped for them.
      const cub = createCudaBackend({ grouped: 'cublas' }), G4 = 4, n4 = 33, k4 = 64, m4 = 50;
      const a4 = randn(r, G4 * m4 * k4), b4 = randn(r, G4 * n4 * k4), bias4 = randn(r, G4 * n4);
      close('grouped epilogue on the cuBLAS route, biases 33 floats apart (bias + ReLU)', (be) => {
        const A = put(be, a4), B = put(be, b4), Bi = put(be, bias4), C = be.alloc('f32', G4 * m4 * n4), problems = new Int32Array(9 * G4);
        for (let g = 0; g < G4; g++) problems.set([m4, n4, k4, g * m4 * k4, k4, g * n4 * k4, k4, g * m4 * n4, n4], 9 * g);
        be.groupedMatmul(A, B, C, { problems, transA: false, transB: true, alpha: 1, beta: 0, bias: Bi, biasStride: n4, relu: true });
        const res = [be.download(C)];
        for (const t of [A, B, Bi, C]) be.free(t);
        return res;
      }, 1e-2, cub);
    }
    {
      // The output layer's shapes with an odd vocabulary: misaligned leading dimensions take the padded path.
      const m = 128, d = 64, V = 33333;
      const h = randn(r, m * d), w = randn(r, V * d), gl = randn(r, m * V);
      close('matmul padded path (logits fwd, dHidden, dW with vocabulary 33333)', (be) => {
        const Hh = put(be, h), W = put(be, w), L = be.alloc('f32', m * V), G = put(be, gl);
        const GH = be.alloc('f32', m * d), GW = be.alloc('f32', V * d);
        be.matmul(Hh, W, L, { batch: 1, m, n: V, k: d, transA: false, transB: true, strideA: 0, strideB: 0, strideC: 0, alpha: 1, beta: 0 });
        be.matmul(G, W, GH, { batch: 1, m, n: d, k: V, transA: false, transB: false, strideA: 0, strideB: 0, strideC: 0, alpha: 1, beta: 0 });
        be.matmul(G, Hh, GW, { batch: 1, m: V, n: d, k: m, transA: true, transB: false, strideA: 0, strideB: 0, strideC: 0, alpha: 1, beta: 0 });
        const res = [be.download(L), be.download(GH), be.download(GW)];
        for (const x of [Hh, W, L, G, GH, GW]) be.free(x);
        return res;
      }, 1e-2);
    }
    {
      // The output layer as in training: the logits GEMM writes an aligned twin that cross-entropy reads
      // (fwd and bwd), glogits feeds the dHidden / dW GEMMs through its padded bf16 copy; the logits
      // buffer itself is filled from the twin only when downloaded (last).
      const m = 128, d = 64, V = 33333;
      const h = randn(r, m * d), w = randn(r, V * d, 0.3), tg = ints(r, m, 0, V), gl = randn(r, m);
      tg[3] = -1;
      close('output layer chain: logits twin -> crossEntropy fwd+bwd -> dHidden, dW (vocabulary 33333)', (be) => {
        const Hh = put(be, h), W = put(be, w), Tg = put(be, tg, 'i32'), GLs = put(be, gl);
        const L = be.alloc('f32', m * V), Lo = be.alloc('f32', m), Ls = be.alloc('f32', m), G = be.alloc('f32', m * V);
        const GH = be.alloc('f32', m * d), GW = be.alloc('f32', V * d);
        const mm = (a: Buf, b: Buf, c: Buf, rows: number, n: number, k: number, transA: boolean, transB: boolean) =>
          be.matmul(a, b, c, { batch: 1, m: rows, n, k, transA, transB, strideA: 0, strideB: 0, strideC: 0, alpha: 1, beta: 0 });
        mm(Hh, W, L, m, V, d, false, true);
        be.crossEntropy(L, Tg, Lo, Ls, m, V);
        be.crossEntropyBackward(L, Tg, Ls, GLs, G, m, V);
        mm(G, W, GH, m, d, V, false, false);
        mm(G, Hh, GW, V, d, m, true, false);
        const res = [be.download(Lo), be.download(Ls), be.download(G), be.download(GH), be.download(GW), be.download(L)];
        for (const x of [Hh, W, Tg, GLs, L, Lo, Ls, G, GH, GW]) be.free(x);
        return res;
      }, 1e-2);
    }
    it('matmul: beta = 0 ignores NaN in C; k = 0 writes zeros', () => {
      const A = put(cuda, randn(r, 12)), B = put(cuda, randn(r, 12)), C = put(cuda, new Float32Array(9).fill(NaN));
      cuda.matmul(A, B, C, { batch: 1, m: 3, n: 3, k: 4, transA: false, transB: false, strideA: 12, strideB: 12, strideC: 9, alpha: 1, beta: 0 });
      assert.ok(Array.from(cuda.download(C)).every(Number.isFinite));
      cuda.fill(C, NaN);
      cuda.matmul(A, B, C, { batch: 1, m: 3, n: 3, k: 0, transA: false, transB: false, strideA: 0, strideB: 0, strideC: 9, alpha: 1, beta: 0 });
      assert.deepEqual(Array.from(cuda.download(C)), new Array(9).fill(0));
      for (const x of [A, B, C]) cuda.free(x);
    });

    for (const [groups, tB] of [[40, false], [130, true], [3, true]] as const) {
      // Experts of W (E, k, n) or (E, n, k); segments of x (rows, k), some empty.
      const k = 96, n = 80, rr = rng(groups);
      const sizes = Array.from({ length: groups }, (_, g) => (g % 7 === 3 ? 0 : Math.floor(rr() * 150)));
      const rows = sizes.reduce((s, x) => s + x, 0);
      const x = randn(rr, rows * k), w = randn(rr, groups * k * n);
      const probs = new Int32Array(9 * groups);
      let off = 0;
      sizes.forEach((s, g) => {
        probs.set([s, n, k, off * k, k, g * k * n, tB ? k : n, off * n, n], 9 * g);
        off += s;
      });
      close(`groupedMatmul ${groups} groups tB=${tB}`, (be) => {
        const X = put(be, x), W = put(be, w), Y = be.alloc('f32', rows * n);
        be.groupedMatmul(X, W, Y, { problems: probs, transA: false, transB: tB, alpha: 1, beta: 0 });
        const out = be.download(Y);
        for (const b of [X, W, Y]) be.free(b);
        return [out];
      }, 1e-2);
    }

    // The built-in kernel for every grouped product (auto sends these 3 groups to cuBLAS on gathered copies).
    const fused = createCudaBackend({ grouped: 'own' });
    for (const [k, n] of [[300, 40], [128, 64]] as const) {
      const run: Run = (be) => groupedRowsRun(be, k, n);
      close(`groupedMatmul with row indices, fused (k ${k}, n ${n}${k % 8 ? ': element loads' : ''})`, run, 1e-2, fused);
      if (k % 8 === 0) sameTwice('groupedMatmul with row indices, fused', run, fused);
    }
    close('MoE FFN layer forward + backward (E 8, top-2, N 300)', moeLayer, 3e-2);
    sameTwice('MoE FFN layer forward + backward', moeLayer);
    it('groupedMatmul: row indices outside A, or a scattered C with beta != 1, throw', () => {
      const A = put(fused, randn(r, 40)), B = put(fused, randn(r, 16)), C = fused.alloc('f32', 12), I = put(fused, [0, 12, 2], 'i32');
      const problems = Int32Array.from([3, 4, 4, 0, 4, 0, 4, 0, 4]);
      assert.throws(() => fused.groupedMatmul(A, B, C, { problems, transA: false, transB: false, alpha: 1, beta: 0, rows: { a: I } }),
        /groupedMatmul \(rows\.a\): index 12 is outside \[0, 10\)/);
      assert.throws(() => fused.groupedMatmul(A, B, C, { problems, transA: false, transB: false, alpha: 1, beta: 0, rows: { c: I } }),
        /beta must be 1/);
      for (const x of [A, B, C, I]) fused.free(x);
    });

    for (const [B, Tn, H, D, causal] of [[2, 200, 3, 64, true], [1, 130, 2, 64, false], [2, 77, 2, 32, true],
      [1, 150, 2, 128, true], [1, 40, 2, 24, true]] as const) {
      const qkv = randn(r, B * Tn * 3 * H * D), gout = randn(r, B * Tn * H * D);
      const run: Run = (be) => {
        const X = put(be, qkv), O = be.alloc('f32', B * Tn * H * D), L = be.alloc('f32', B * H * Tn);
        const G = put(be, gout), GX = be.alloc('f32', qkv.length);
        const scale = 1 / Math.sqrt(D);
        be.attention(X, O, L, B, Tn, H, D, causal, scale);
        be.attentionBackward(X, O, L, G, GX, B, Tn, H, D, causal, scale);
        const res = [be.download(O), be.download(L), be.download(GX)];
        for (const b of [X, O, L, G, GX]) be.free(b);
        return res;
      };
      close(`attention fwd+bwd B${B} T${Tn} H${H} D${D} causal=${causal}`, run, 2e-2);
      if (D === 64) sameTwice(`attention fwd+bwd B${B} T${Tn} H${H} D${D}`, run);
    }

    // Products of at most 8 rows with a weight stored (n, k) run in the GEMV kernel: they match cpu, and
    // the GEMM path (the same rows inside a 16-row product) up to the order of the fp32 sums, for rows
    // in f32 and rows kept at bf16 precision (a LayerNorm's bf16Out), K with and without 16-byte rows.
    for (const [M, K, N] of [[1, 768, 2304], [5, 768, 1000], [8, 3072, 768], [3, 50, 37]] as const) {
      const x = randn(r, 16 * K), w = randn(r, N * K, 0.05), bias = randn(r, N), g = randn(r, K);
      const products = (be: Backend, rows: number) => T.tidy(() => {
        const X = T.tensor(x.subarray(0, rows * K), [rows, K], { backend: be }), W = T.tensor(w, [N, K], { backend: be });
        const Bi = T.tensor(bias, [N], { backend: be }), G = T.tensor(g, [K], { backend: be });
        const ln = T.layerNorm(X, G, T.full([K], 0, be), 1e-5, { bf16Out: true });
        return [T.linear(X, W, Bi), T.linear(ln, W, Bi, { relu: true })].map((y) => (y.toArray() as Float32Array).subarray(0, M * N));
      });
      close(`matmul of ${M} rows (GEMV) K${K} N${N}`, (be) => products(be, M), 1e-2);
      it(`matmul of ${M} rows (GEMV) K${K} N${N}: the GEMM path's values up to the order of the sums`, () => {
        const gemv = products(cuda, M), gemm = products(cuda, 16);
        gemv.forEach((y, i) => {
          const e = relErr(y, gemm[i]!);
          assert.ok(e <= 2e-5, `output ${i}: relative error ${e.toExponential(2)}`);
        });
      });
    }

    it('matmul of 2 rows (GEMV) with a weight of padded bf16 rows (K 100, N 50000) and alpha 0.5: the GEMM path\'s values', () => {
      const K = 100, N = 50000, x = randn(r, 16 * K), w = randn(r, N * K, 0.05);
      const W = put(cuda, w);
      const product = (rows: number) => {
        const X = put(cuda, x.subarray(0, rows * K)), C = cuda.alloc('f32', rows * N);
        cuda.matmul(X, W, C, { batch: 1, m: rows, n: N, k: K, transA: false, transB: true, strideA: 0, strideB: 0, strideC: 0,
          alpha: 0.5, beta: 0 });
        const y = (cuda.download(C) as Float32Array).subarray(0, 2 * N);
        cuda.free(X);
        cuda.free(C);
        return y;
      };
      const e = relErr(product(2), product(16));
      cuda.free(W);
      assert.ok(e <= 2e-5, `relative error ${e.toExponential(2)}`);
    });

    // Prefill at offsets, and decode steps (one token: the fused decode kernel) at D 64, 128, 40 and 32;
    // a cache past 48 KiB of scores (shared memory beyond the default) for both kernels.
    for (const [B, H, D, Tmax, Tn, posList] of [[3, 4, 64, 300, 5, [0, 100, 295]], [3, 4, 64, 300, 1, [0, 100, 299]],
      [2, 2, 128, 1100, 1, [1099, 517]], [2, 3, 40, 70, 1, [5, 69]], [2, 2, 32, 50, 1, [0, 49]],
      [1, 1, 64, 12300, 1, [12299]], [1, 1, 64, 12300, 3, [12000]]] as const) {
      const pos = Int32Array.from(posList);
      const qkv = randn(r, B * Tn * 3 * H * D), kc = randn(r, B * H * Tmax * D), vc = randn(r, B * H * Tmax * D);
      close(`attentionCached B${B} T${Tn} D${D} Tmax${Tmax}`, (be) => {
        const X = put(be, qkv), K = put(be, kc), V = put(be, vc), O = be.alloc('f32', B * Tn * H * D), P = be.alloc('i32', B);
        be.upload(P, pos);
        be.attentionCached(X, K, V, O, P, B, Tn, H, D, Tmax, 0.125);
        const res = [be.download(O), be.download(K), be.download(V)];
        for (const b of [X, K, V, O, P]) be.free(b);
        return res;
      }, 1e-5);
    }

    // Widths for each of the one-pass backward's register counts (768: 4 per thread, 300: 2) and for the
    // two-pass one (1500).
    for (const [rows, cols] of [[1000, 768], [600, 300], [70, 1500]] as const) {
      const x = randn(r, rows * cols, 3), g = randn(r, cols), bb = randn(r, cols), gy = randn(r, rows * cols);
      close(`layerNorm fwd+bwd ${rows}x${cols}`, (be) => {
        const X = put(be, x), G = put(be, g), Bt = put(be, bb), Y = be.alloc('f32', rows * cols);
        const M = be.alloc('f32', rows), R = be.alloc('f32', rows), GY = put(be, gy), GX = be.alloc('f32', rows * cols);
        const GG = put(be, new Float32Array(cols).fill(1)), GB = be.alloc('f32', cols);
        be.layerNorm(X, G, Bt, Y, M, R, rows, cols, 1e-5);
        be.layerNormBackward(X, G, M, R, GY, GX, GG, GB, rows, cols);
        const res = [be.download(Y), be.download(M), be.download(R), be.download(GX), be.download(GG), be.download(GB)];
        for (const b of [X, G, Bt, Y, M, R, GY, GX, GG, GB]) be.free(b);
        return res;
      }, 1e-4);
    }

    // V % 4 = 1: rows of any alignment (an element per lane); V % 8 = 0: float4 rows read in place.
    for (const V of [50257, 50000]) {
      const N = 64;
      const logits = randn(r, N * V, 3), tg = ints(r, N, 0, V), gl = randn(r, N);
      tg[5] = -1;
      tg[6] = 0;
      tg[7] = V - 1;
      close(`crossEntropy fwd+bwd N64 V${V}`, (be) => {
        const L = put(be, logits), Tg = put(be, tg, 'i32'), Lo = be.alloc('f32', N), Ls = be.alloc('f32', N);
        const GL = put(be, gl), G = be.alloc('f32', N * V);
        be.crossEntropy(L, Tg, Lo, Ls, N, V);
        be.crossEntropyBackward(L, Tg, Ls, GL, G, N, V);
        const res = [be.download(Lo), be.download(Ls), be.download(G)];
        for (const b of [L, Tg, Lo, Ls, GL, G]) be.free(b);
        return res;
      }, 1e-5);
    }

    for (const [outer, mid, inner] of [[3, 5000, 700], [2, 1_000_000, 1], [1, 70000, 3]] as const) {
      const x = randn(r, outer * mid * inner);
      close(`reduceSum ${outer}x${mid}x${inner}`, (be) => {
        const X = put(be, x), O = be.alloc('f32', outer * inner);
        be.reduceSum(X, O, outer, mid, inner);
        const res = [be.download(O)];
        be.free(X); be.free(O);
        return res;
      }, 1e-6);
    }
    it('sumSquares of 10^7 values, and of several buffers (one empty, one pending zeros) at once, matches cpu', () => {
      const x = randn(r, 10_000_000), y = randn(r, 3001), z = randn(r, 1);
      const a = cpu.sumSquares([put(cpu, x)]), X = put(cuda, x), b = cuda.sumSquares([X]);
      assert.ok(Math.abs(a - b) / a < 1e-9, `${a} vs ${b}`);
      const Y = put(cuda, y), Z = put(cuda, z), E = cuda.alloc('f32', 0), P = cuda.alloc('f32', 77);
      cuda.fill(P, 0);
      const many = cuda.sumSquares([Y, E, X, P, Z]), want = cpu.sumSquares([put(cpu, y), put(cpu, x), put(cpu, z)]);
      assert.ok(Math.abs(many - want) / want < 1e-9, `${many} vs ${want}`);
      assert.equal(cuda.sumSquares([]), 0);
      for (const t of [X, Y, Z, E, P]) cuda.free(t);
    });

    {
      const n = 5000, vocab = 1000, dim = 64;
      const ids = ints(r, n, 0, vocab), gy = randn(r, n * dim), table = randn(r, vocab * dim);
      const run: Run = (be) => {
        const Tb = put(be, table), I = put(be, ids, 'i32'), O = be.alloc('f32', n * dim), GY = put(be, gy);
        const GT = put(be, table);
        be.embedding(Tb, I, O, n, vocab, dim);
        be.embeddingBackward(GY, I, GT, n, vocab, dim);
        const res = [be.download(O), be.download(GT)];
        for (const b of [Tb, I, O, GY, GT]) be.free(b);
        return res;
      };
      close('embedding fwd+bwd n5000 vocab1000', run, 1e-6);
      sameTwice('embeddingBackward', run);
    }

    for (const cols of [20, 32, 48, 100, 1000, 3000, 50257]) {
      const how = cols <= 128 ? 'ranks in a warp' : cols <= 1024 ? 'a warp per row' : cols < 16384 ? 'a block per row'
        : 'a block of 1024 per row';
      for (const k of cols <= 128 ? [7, cols] : [7]) it(`topk with ties and NaN equals cpu exactly (${cols} columns, k ${k}: ${how})`, () => {
        const rows = 50;
        const x = Float32Array.from({ length: rows * cols }, () => Math.round(r() * 20) / 4);
        x[3] = NaN; x[1500] = NaN; x[2000 % x.length] = Infinity;
        x.fill(NaN, 4 * cols, 5 * cols); // a row of NaN only
        const res = [cpu, cuda].map((be) => {
          const X = put(be, x), Vv = be.alloc('f32', rows * k), I = be.alloc('i32', rows * k);
          be.topk(X, Vv, I, rows, cols, k);
          return [Array.from(be.download(Vv)), Array.from(be.download(I))];
        });
        assert.deepEqual(res[1], res[0]);
      });
    }

    it('topkBackward equals cpu exactly (repeated indices accumulate in order; 32, 100 and 300 columns)', () => {
      for (const cols of [32, 100, 300]) {
        const rows = 8192, k = 8;
        const g = randn(r, rows * k), idx = Int32Array.from({ length: rows * k }, (_, i) => ((i - (i % 8 === 7 ? 1 : 0)) * 5) % cols);
        const res = [cpu, cuda].map((be) => {
          const G = put(be, g), I = put(be, idx, 'i32'), O = be.alloc('f32', rows * cols);
          be.topkBackward(G, I, O, rows, cols, k);
          return Array.from(be.download(O));
        });
        assert.deepEqual(res[1], res[0], `${cols} columns`);
      }
    });

    it('activationBits equals cpu exactly (d_ff 1536 and 70 columns, with zeros and NaN)', () => {
      for (const [rows, cols] of [[2048, 1536], [33, 70]] as const) {
        const x = Float32Array.from(randn(r, rows * cols), (v, i) => (i % 17 === 0 ? 0 : i % 19 === 0 ? NaN : v));
        const res = [cpu, cuda].map((be) => {
          const X = put(be, x), O = be.alloc('i32', rows * Math.ceil(cols / 32));
          be.activationBits(X, O, rows, cols);
          return Array.from(be.download(O));
        });
        assert.deepEqual(res[1], res[0]);
      }
    });

    it('reluBackwardRowDot matches cpu (gradients exact; dots in f64; 96 and 70 columns, zeros and negatives)', () => {
      for (const cols of [96, 70]) {
        const rows = 300, y = randn(r, rows * cols).map((v, i) => (i % 7 === 0 ? 0 : v)), gy = randn(r, rows * cols);
        const [want, got] = [cpu, cuda].map((be) => {
          const Y = put(be, y), G = put(be, gy), gx = be.alloc('f32', rows * cols), dots = be.alloc('f32', rows);
          be.reluBackwardRowDot(Y, G, gx, dots, rows, cols);
          const res = [Array.from(be.download(gx)), Array.from(be.download(dots))];
          for (const b of [Y, G, gx, dots]) be.free(b);
          return res;
        });
        assert.deepEqual(got![0], want![0], `gradient (${cols} columns)`);
        assert.ok(relErr(got![1]!, want![1]!) < 1e-6, `dots (${cols} columns): ${relErr(got![1]!, want![1]!)}`);
      }
    });

    it('dropout mask and scatterAddRows (onto zeros, rows of 33; onto data, rows of 64) equal cpu exactly', () => {
      const x = randn(r, 100_003), idx = ints(r, 3000, 0, 50), src = randn(r, 3000 * 64), d0 = randn(r, 50 * 64);
      const res = [cpu, cuda].map((be) => {
        const X = put(be, x), O = be.alloc('f32', x.length);
        be.dropout(X, O, 0.3, 12345);
        const S = put(be, src), I = put(be, idx, 'i32'), D = be.alloc('f32', 50 * 33), D2 = put(be, d0);
        be.scatterAddRows(S, I, D, 3000, 50, 33);
        be.scatterAddRows(S, I, D2, 3000, 50, 64);
        return [Array.from(be.download(O)).map((v) => v === 0), Array.from(be.download(D)), Array.from(be.download(D2))];
      });
      assert.deepEqual(res[1]![0], res[0]![0]);
      assert.ok(relErr(res[1]![1] as number[], res[0]![1] as number[]) < 1e-6);
      assert.ok(relErr(res[1]![2] as number[], res[0]![2] as number[]) < 1e-6);
    });

    it('expertGroups on the device: the reference grouping, its scatter plans and device segments give the host paths\' bits', () => {
      // many chunks of the counting sort, experts with more than 32 rows (chunked sums), more than 96
      // groups (two launches of the grouped kernel), k > 32 (a chunked token plan), GPT-2-small's
      // training routing (256 chunks, scanned in shared memory) and chunk counts too large for it
      for (const [N, k, E] of [[3000, 4, 40], [2000, 2, 100], [300, 40, 64], [500, 1, 8], [8192, 8, 32], [20000, 8, 64]] as const) {
        const M = N * k, d = 24;
        const experts = new Int32Array(M);
        for (let n = 0; n < N; n++) {
          // k = 1: the last expert gets no token (an empty group, also in the split-K weight gradient)
          const used = k === 1 ? E - 1 : E, perm = Array.from({ length: used }, (_, e) => e);
          for (let j = 0; j < k; j++) {
            const q = j + Math.floor(r() * (used - j));
            [perm[j], perm[q]] = [perm[q]!, perm[j]!];
            experts[n * k + j] = perm[j]!;
          }
        }
        const want = groupExperts(experts, N, k, E);
        const X = put(cuda, experts, 'i32'), off = cuda.alloc('i32', E + 1);
        const rows = [cuda.alloc('i32', M), cuda.alloc('i32', M), cuda.alloc('i32', M)] as const; // token, slot, expert
        cuda.expertGroups(X, off, rows[0], rows[1], rows[2], N, k, E);
        assert.deepEqual([...cuda.download(off)], [...want.offsets], `offsets (N ${N}, k ${k}, E ${E})`);
        [want.rowToken, want.rowSlot, want.rowExpert].forEach((w, i) => assert.deepEqual([...cuda.download(rows[i])], [...w]));
        // Scatter-adds through the device plans and through host plans of uploaded copies: same bits.
        const src = put(cuda, randn(r, M * d));
        const scatter = (idx: Buf, n: number) => {
          const o = cuda.alloc('f32', n * d);
          cuda.scatterAddRows(src, idx, o, M, n, d);
          const out = Array.from(cuda.download(o));
          cuda.free(o);
          return out;
        };
        const device = [scatter(rows[0], N), scatter(rows[1], M), scatter(rows[2], E)];
        const host = rows.map((b) => put(cuda, cuda.download(b), 'i32')); // uploaded copies: host-built plans
        assert.deepEqual(device, [scatter(host[0]!, N), scatter(host[1]!, M), scatter(host[2]!, E)]);
        // Onto data (not zeros): the expert plan's bounds path against the host's sorted plan.
        const base = randn(r, E * d);
        const onto = (idx: Buf) => {
          const o = put(cuda, base);
          cuda.scatterAddRows(src, idx, o, M, E, d);
          const out = Array.from(cuda.download(o));
          cuda.free(o);
          return out;
        };
        assert.deepEqual(onto(rows[2]), onto(host[2]!));
        // A gathered product, a scattered one and a weight gradient over device segments vs explicit problems.
        const s = 8, dm = 16, x = put(cuda, randn(r, N * dm)), w = put(cuda, randn(r, E * s * dm)), h = put(cuda, randn(r, M * s));
        const template = (f: (e: number) => number[]) => Int32Array.from(Array.from({ length: E }, (_, e) => f(e)).flat());
        const cases = [
          { a: x, b: w, size: M * s, args: { problems: template((e) => [0, s, dm, 0, dm, e * s * dm, dm, 0, s]), transA: false, transB: true,
            alpha: 1, beta: 0, rows: { a: rows[0] } } },
          { a: h, b: w, size: N * dm, args: { problems: template((e) => [0, dm, s, 0, s, e * s * dm, dm, 0, dm]), transA: false, transB: false,
            alpha: 1, beta: 1, rows: { c: rows[0] } } },
          { a: h, b: x, size: E * s * dm, args: { problems: template((e) => [s, dm, 0, 0, s, 0, dm, e * s * dm, dm]), transA: true, transB: false,
            alpha: 0.5, beta: 1, rows: { b: rows[0] } } },
        ];
        for (const c of cases) {
          const run = (args: GroupedMatmulArgs) => {
            const o = cuda.alloc('f32', c.size);
            cuda.groupedMatmul(c.a, c.b, o, args);
            const out = cuda.download(o);
            cuda.free(o);
            return out;
          };
          const got = run({ ...c.args, segments: off }), ref = run(resolveSegments(c.args, want.offsets));
          // Along M the same tiles in the same order; along K split-K chunks add in another order.
          if (!c.args.transA) assert.deepEqual(got, ref, `rows ${Object.keys(c.args.rows)}: same bits`);
          else assert.ok(relErr(got, ref) <= 1e-6, `weight gradient: ${relErr(got, ref)}`);
        }
        // New content in a routed index drops what expertGroups knew of it: the reversed token index
        // scatters like its uploaded copy.
        const reversed = Int32Array.from(want.rowToken).reverse();
        cuda.upload(rows[0], reversed);
        const fresh = put(cuda, reversed, 'i32');
        assert.deepEqual(scatter(rows[0], N), scatter(fresh, N));
        cuda.free(fresh);
        for (const b of [X, off, ...rows, src, ...host, x, w, h]) cuda.free(b);
      }
    });

    it('a MoE layer forward and backward never waits for the host (no download; 16 experts, and 4 as cuBLAS would take)', () => {
      const download = cuda.download.bind(cuda);
      let calls = 0;
      for (const [E, k] of [[16, 4], [4, 2]] as const) T.tidy(() => {
        const r2 = rng(3), N = 2048, dm = 64, s = 32;
        const leaf = (n: number, shape: number[]) => {
          const t = T.tensor(randn(r2, n, 0.5), shape, { backend: cuda });
          t.requiresGrad = true;
          return t;
        };
        const x = leaf(N * dm, [N, dm]), router = leaf(dm * E, [dm, E]);
        const p = { w_in: leaf(E * s * dm, [E * s, dm]), b_in: leaf(E * s, [E * s]), w_out: leaf(dm * E * s, [dm, E * s]), b_out: leaf(dm, [dm]) };
        cuda.download = (b: Buf) => { calls++; return download(b); };
        try {
          const { y } = moeFFN(x, p, router, { nExpert: E, topK: k, activation: 'relu' });
          T.backward(T.sum(y));
        } finally {
          cuda.download = download;
        }
      });
      assert.equal(calls, 0);
    });

    it('errors: bad ids, bad targets, out of memory', () => {
      const Tb = put(cuda, randn(r, 40)), I = put(cuda, [1, 9, 3], 'i32'), O = cuda.alloc('f32', 12);
      assert.throws(() => cuda.embedding(Tb, I, O, 3, 5, 4), /index 9 is outside \[0, 5\)/);
      const L = put(cuda, randn(r, 10)), Tg = put(cuda, [0, 7], 'i32'), Lo = cuda.alloc('f32', 2), Ls = cuda.alloc('f32', 2);
      assert.throws(() => cuda.crossEntropy(L, Tg, Lo, Ls, 2, 5), /target 7 is outside \[-1, 5\)/);
      const mmArgs = { batch: 1, m: 2, n: 2, k: 2, transA: false, transB: false, strideA: 0, strideB: 0, strideC: 0, alpha: 1, beta: 0 };
      assert.throws(() => cuda.matmul(L, Lo, L, mmArgs), /matmul: c must not be a or b/);
      assert.throws(() => cuda.alloc('f32', 2 ** 40), /out of device memory allocating 4194304\.0 MiB/);
      for (const b of [Tb, I, O, L, Tg, Lo, Ls]) cuda.free(b);
    });

    it('memory accounting returns to the start after alloc/free', () => {
      const before = cuda.memoryStats();
      const bufs = [cuda.alloc('f32', 1000), cuda.alloc('bf16', 77), cuda.alloc('i32', 0)];
      assert.equal(cuda.memoryStats().liveBuffers, before.liveBuffers + 3);
      for (const b of bufs) cuda.free(b);
      assert.deepEqual(cuda.memoryStats(), before);
      assert.throws(() => cuda.free(bufs[0]!), /freed twice/);
      const z = cuda.alloc('f32', 1 << 20);
      assert.ok(Array.from(cuda.download(z)).every((v) => v === 0), 'alloc is zero-filled');
      cuda.free(z);
    });

    it('bf16 buffers round to nearest even on upload and cast', () => {
      const vals = [1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, 65504, 1e-40, Infinity];
      for (const be of [cpu, cuda]) {
        const b = put(be, vals, 'bf16');
        assert.deepEqual(Array.from(be.download(b)), Array.from(cpu.download(put(cpu, vals, 'bf16'))));
      }
    });

    it('fill(0) is deferred: a zeroed accumulator added to takes the addend (a copy), then sums; reads give zeros', () => {
      const g = Float32Array.from([1.5, -2, 0, NaN, 3e-39]), acc = put(cuda, [9, 9, 9, 9, 9]), G = put(cuda, g);
      const add = () => cuda.binary('add', acc, [1], G, [1], acc, [5]);
      cuda.fill(acc, 0);
      assert.deepEqual(Array.from(cuda.download(acc)), [0, 0, 0, 0, 0]);
      add();
      assert.deepEqual(Array.from(cuda.download(acc)), Array.from(g));
      add();
      assert.deepEqual(Array.from(cuda.download(acc)), Array.from(g.map((v) => v + v)));
      cuda.fill(acc, 0);
      cuda.binary('add', G, [1], acc, [1], acc, [5]); // the zeros on the right: the ordinary kernel
      assert.deepEqual(Array.from(cuda.download(acc)), Array.from(g.map((v) => v + 0)));
      cuda.free(acc);
      cuda.free(G);
    });

    it('bf16 copies written beside their f32 outputs (ReLU backward, layerNorm, cross-entropy backward, AdamW) equal a cast', () => {
      const isBf16Value = (v: number) => (new Uint32Array(Float32Array.of(v).buffer)[0]! & 0xffff) === 0;
      // A product reads the copy its producer wrote; the same product of a fresh upload of the f32 output
      // reads a cast: the bits agree exactly.
      const be = createCudaBackend({ matmul: 'bf16' }), r2 = rng(21), rows = 128, cols = 96, V = 33333;
      /** a (m, k) · b (k, n), or · bᵀ with b stored (n, k). */
      const mm = (a: Buf, b: Buf, m: number, k: number, n: number, transB = false) => {
        const c = be.alloc('f32', m * n);
        be.matmul(a, b, c, { batch: 1, m, n, k, transA: false, transB, strideA: 0, strideB: 0, strideC: 0, alpha: 1, beta: 0 });
        const out = be.download(c);
        be.free(c);
        return out;
      };
      const viaCast = (x: Buf, m: number, k: number, b: Buf, n: number) => {
        const fresh = put(be, be.download(x));
        const out = mm(fresh, b, m, k, n);
        be.free(fresh);
        return out;
      };
      const W = put(be, randn(r2, V * cols)), x = put(be, randn(r2, rows * cols)), gy = put(be, randn(r2, rows * cols));
      const g = be.alloc('f32', rows * cols), y = be.alloc('f32', rows * cols), mu = be.alloc('f32', rows), rs = be.alloc('f32', rows);
      const gamma = put(be, randn(r2, cols)), beta = put(be, randn(r2, cols));
      be.unaryBackward('relu', x, gy, g);
      assert.deepEqual(mm(g, W, rows, cols, cols), viaCast(g, rows, cols, W, cols), 'ReLU backward');
      const dots = be.alloc('f32', rows);
      be.reluBackwardRowDot(x, gy, g, dots, rows, cols);
      assert.deepEqual(mm(g, W, rows, cols, cols), viaCast(g, rows, cols, W, cols), 'ReLU backward with row dots');
      be.free(dots);
      be.layerNorm(x, gamma, beta, y, mu, rs, rows, cols, 1e-5);
      assert.deepEqual(mm(y, W, rows, cols, cols), viaCast(y, rows, cols, W, cols), 'layerNorm');
      {
        // Attention (tensor cores, D 32): its output and the backward's gqkv, B 2, T 64 (rows), H 3.
        const Bq = 2, Tq = rows / 2, Hq = 3, Dq = 32, wq = 3 * Hq * Dq, wo = Hq * Dq; // wo = cols
        const qkv = put(be, randn(r2, rows * wq)), out = be.alloc('f32', rows * wo), lse = be.alloc('f32', Bq * Hq * Tq);
        const gq = be.alloc('f32', rows * wq), Wq = put(be, randn(r2, wq * cols));
        be.attention(qkv, out, lse, Bq, Tq, Hq, Dq, true, 0.2);
        assert.deepEqual(mm(out, W, rows, wo, cols), viaCast(out, rows, wo, W, cols), 'attention output');
        be.attentionBackward(qkv, out, lse, gy, gq, Bq, Tq, Hq, Dq, true, 0.2);
        assert.deepEqual(mm(gq, Wq, rows, wq, cols), viaCast(gq, rows, wq, Wq, cols), 'attention backward (gqkv)');
        for (const t of [qkv, out, lse, gq, Wq]) be.free(t);
      }
      const L = put(be, randn(r2, rows * V)), tg = put(be, ints(r2, rows, 0, V), 'i32'), lo = be.alloc('f32', rows);
      const lse = be.alloc('f32', rows), gl = put(be, randn(r2, rows)), gL = be.alloc('f32', rows * V);
      be.crossEntropy(L, tg, lo, lse, rows, V);
      be.crossEntropyBackward(L, tg, lse, gl, gL, rows, V);
      assert.deepEqual(mm(gL, W, rows, V, cols), viaCast(gL, rows, V, W, cols), 'cross-entropy backward (padded copy)');
      {
        // Logits kept at bf16 precision (a padded copy: V = 33333) and a gradient kept so too: the loss
        // and gradient equal those of the widened logits, and the products of the gradient's copy those
        // of the widened gradient.
        const Hh = put(be, randn(r2, rows * cols)), Lb = be.alloc('f32', rows * V), gLb = be.alloc('f32', rows * V);
        be.matmul(Hh, W, Lb, { batch: 1, m: rows, n: V, k: cols, transA: false, transB: true, strideA: 0, strideB: 0, strideC: 0,
          alpha: 1, beta: 0, bf16Out: true });
        const lo2 = be.alloc('f32', rows), lse2 = be.alloc('f32', rows), gF = be.alloc('f32', rows * V);
        const tgs = ints(r2, rows, 0, V);
        tgs[1] = tgs[70] = -1;
        tgs[2] = V - 1;
        const tg = put(be, tgs, 'i32');
        be.crossEntropy(Lb, tg, lo2, lse2, rows, V);
        be.crossEntropyBackward(Lb, tg, lse2, gl, gLb, rows, V, true);
        const prodB = mm(gLb, W, rows, V, cols), lb = be.download(Lb);
        assert.ok(lb.every(isBf16Value), 'bf16Out logits hold bf16 values');
        const Lf = put(be, lb);
        be.crossEntropy(Lf, tg, lo, lse, rows, V);
        be.crossEntropyBackward(Lf, tg, lse, gl, gF, rows, V);
        assert.deepEqual(be.download(lo2), be.download(lo), 'loss from the bf16 copy of the logits');
        assert.deepEqual(prodB, viaCast(gLb, rows, V, W, cols), 'the gradient kept at bf16 precision (padded copy)');
        const gb = be.download(gLb), gf = be.download(gF);
        assert.ok(gb.every(isBf16Value), 'the gradient was written as its bf16 copy only');
        assert.ok(gb.subarray(70 * V, 71 * V).every((v) => v === 0), 'an ignored row has a zero gradient');
        // (Softmax entries below f32's normal range round with bf16's fewer subnormal bits: an absolute floor.)
        for (let i = 0; i < gb.length; i++) {
          assert.ok(Math.abs(gb[i]! - gf[i]!) <= 2 ** -8 * Math.abs(gf[i]!) + 1e-36, `gradient [${i}]: ${gb[i]} vs ${gf[i]}`);
        }
        // The f32 path GPT-2's logits take: an aligned twin from the product (rows of 33336, V % 4 = 1),
        // read a float4 at a time; gx and the padded copy equal those of the same logits read an element
        // at a time from a plain upload, bit for bit.
        const Lt = be.alloc('f32', rows * V), gT = be.alloc('f32', rows * V);
        be.matmul(Hh, W, Lt, { batch: 1, m: rows, n: V, k: cols, transA: false, transB: true, strideA: 0, strideB: 0, strideC: 0,
          alpha: 1, beta: 0 });
        be.crossEntropy(Lt, tg, lo2, lse2, rows, V);
        be.crossEntropyBackward(Lt, tg, lse2, gl, gT, rows, V);
        const prodT = mm(gT, W, rows, V, cols), Lu = put(be, be.download(Lt));
        be.crossEntropy(Lu, tg, lo, lse, rows, V);
        be.crossEntropyBackward(Lu, tg, lse, gl, gF, rows, V);
        assert.deepEqual(be.download(gT), be.download(gF), 'cross-entropy backward: float4 rows (twin) = element rows');
        assert.deepEqual(prodT, viaCast(gT, rows, V, W, cols), 'cross-entropy backward: the float4 path\'s padded copy');
        for (const t of [Hh, Lb, gLb, lo2, lse2, gF, Lf, Lt, gT, Lu, tg]) be.free(t);
      }
      assert.throws(() => be.crossEntropyBackward(L, tg, lse, gl, L, rows, V), /glogits must not be the logits buffer/);
      // AdamW on weights with a copy: W (row-padded: B of products with k = V), and W2 read as the tied
      // output layer reads its table (x2 · W2ᵀ, a row-padded copy: V = 33333 rows of 128).
      const W2 = put(be, randn(r2, V * 128)), x2 = put(be, randn(r2, rows * 128));
      mm(x2, W2, rows, 128, V, true);
      const step = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1, step: 1, gradScale: 0.5 };
      for (const [P, n] of [[W, V * cols], [W2, V * 128]] as const) {
        const G = put(be, randn(r2, n)), M = be.alloc('f32', n), Vs = be.alloc('f32', n);
        be.adamw(P, G, M, Vs, step);
        for (const t of [G, M, Vs]) be.free(t);
      }
      // The same products of fresh uploads of the updated weights read casts.
      const fresh = put(be, be.download(W)), fresh2 = put(be, be.download(W2));
      assert.deepEqual(mm(gL, W, rows, V, cols), mm(gL, fresh, rows, V, cols), 'AdamW, row-padded copy (W, as B of k = V)');
      assert.deepEqual(mm(x2, W2, rows, 128, V, true), mm(x2, fresh2, rows, 128, V, true), 'AdamW, row-padded copy (W2)');
      assert.deepEqual(mm(x, W2, rows, cols, 128), mm(x, fresh2, rows, cols, 128), 'AdamW, row-padded copy read plain');
      for (const t of [W, W2, x2, fresh, fresh2, x, gy, g, y, mu, rs, gamma, beta, L, tg, lo, lse, gl, gL]) be.free(t);
    });

    it('matmul bf16Out writes only the bf16 copy: products, ReLU masks and attention read it, reads of C widen it', () => {
      const be = createCudaBackend({ matmul: 'bf16' }), r2 = rng(22);
      // A qkv-like output: B 2, T 128, H 2, D 32 (3·H·D = 192 columns).
      const B = 2, Tn = 128, H = 2, D = 32, rows = B * Tn, nIn = 64, nOut = 3 * H * D;
      const X = put(be, randn(r2, rows * nIn)), W = put(be, randn(r2, nOut * nIn, 0.3)), bias = put(be, randn(r2, nOut));
      const W2 = put(be, randn(r2, nOut * 64)), gy = put(be, randn(r2, rows * nOut));
      const lin = (relu: boolean, bf16Out: boolean, k = nIn) => {
        const Y = be.alloc('f32', rows * nOut);
        be.matmul(X, W, Y, { batch: 1, m: rows, n: nOut, k, transA: false, transB: true, strideA: 0, strideB: 0, strideC: 0,
          alpha: 1, beta: 0, bias, relu, bf16Out });
        return Y;
      };
      /** What a product, ReLU's backward and attention compute from Y (none reads Y's f32 content). */
      const readers = (Y: Buf) => {
        const P = be.alloc('f32', rows * 64), gx = be.alloc('f32', rows * nOut);
        const out = be.alloc('f32', rows * H * D), lse = be.alloc('f32', B * H * Tn);
        be.matmul(Y, W2, P, { batch: 1, m: rows, n: 64, k: nOut, transA: false, transB: false, strideA: 0, strideB: 0, strideC: 0, alpha: 1, beta: 0 });
        const Q = be.alloc('f32', nOut * nOut); // Yᵀ·Y: Y as both operands, transposed
        be.matmul(Y, Y, Q, { batch: 1, m: nOut, n: nOut, k: rows, transA: true, transB: false, strideA: 0, strideB: 0, strideC: 0, alpha: 1, beta: 0 });
        be.unaryBackward('relu', Y, gy, gx);
        be.attention(Y, out, lse, B, Tn, H, D, true, 1 / Math.sqrt(D));
        return [P, Q, gx, out, lse].map((t) => { const d = be.download(t); be.free(t); return d; });
      };
      const isBf16 = (v: number) => (new Uint32Array(Float32Array.of(v).buffer)[0]! & 0xffff) === 0;
      {
        // layerNorm's bf16Out: rows of 192 run the warp kernel (y not written), rows of 190 the block one.
        for (const c of [nOut, nOut - 2]) {
          const Xn = put(be, randn(r2, rows * c, 2)), g = put(be, randn(r2, c)), bt = put(be, randn(r2, c));
          const Wn = put(be, randn(r2, c * 64)), mu = be.alloc('f32', rows), rs = be.alloc('f32', rows);
          const ln = (bf16Out: boolean) => {
            const Yn = be.alloc('f32', rows * c);
            be.layerNorm(Xn, g, bt, Yn, mu, rs, rows, c, 1e-5, bf16Out);
            return Yn;
          };
          const mm = (a: Buf) => {
            const P = be.alloc('f32', rows * 64);
            be.matmul(a, Wn, P, { batch: 1, m: rows, n: 64, k: c, transA: false, transB: false, strideA: 0, strideB: 0, strideC: 0, alpha: 1, beta: 0 });
            const d = be.download(P);
            be.free(P);
            return d;
          };
          const Yh = ln(true), prod = mm(Yh), yh = be.download(Yh), Yf = ln(false), yf = be.download(Yf);
          if (c % 4 === 0) assert.ok(yh.every(isBf16), `layerNorm ${c}: y holds bf16 values`);
          for (let i = 0; i < yh.length; i++) assert.ok(Math.abs(yh[i]! - yf[i]!) <= 2 ** -8 * Math.abs(yf[i]!) + 1e-6, `layerNorm ${c}: y[${i}]`);
          const fresh = put(be, yh);
          assert.deepEqual(prod, mm(fresh), `layerNorm ${c}: a product of the copy equals one of the widened values`);
          for (const t of [Xn, g, bt, Wn, mu, rs, Yh, Yf, fresh]) be.free(t);
        }
      }
      for (const [relu, k] of [[false, nIn], [true, nIn], [true, 0]] as const) {
        // The readers take the copy (the products as A and, transposed, as B).
        const Y = lin(relu, true, k), got = readers(Y);
        const y = be.download(Y); // widened from the copy (k = 0: C is the bias, written in f32 and cast)
        if (k > 0) assert.ok(y.every(isBf16), `relu ${relu}, k ${k}: C holds bf16 values`);
        // Within bf16 rounding of the f32 product and of the bias (added as its bf16 copy).
        const F = lin(relu, false, k), f32 = be.download(F), b = be.download(bias);
        for (let i = 0; i < y.length; i++) {
          const tol = 2 ** -8 * (Math.abs(f32[i]!) + Math.abs(b[i % nOut]!)) + 1e-6;
          assert.ok(Math.abs(y[i]! - f32[i]!) <= tol, `relu ${relu}, k ${k}: C[${i}] = ${y[i]} vs ${f32[i]} in f32`);
        }
        const fresh = put(be, y);
        assert.deepEqual(got, readers(fresh), `relu ${relu}, k ${k}: the readers of the copy equal those of the widened values`);
        for (const t of [Y, F, fresh]) be.free(t);
      }
      {
        // A grouped product kept at bf16 precision (the MoE's hidden layer; 6 groups: the built-in kernel),
        // read by ReLU's backward with row dots and by a product.
        const E = 6, m = 40, s = 96, Ag = put(be, randn(r2, E * m * nIn)), Bg = put(be, randn(r2, E * s * nIn, 0.3));
        const bg = put(be, randn(r2, E * s)), problems = new Int32Array(9 * E);
        for (let e = 0; e < E; e++) problems.set([m, s, nIn, e * m * nIn, nIn, e * s * nIn, nIn, e * m * s, s], 9 * e);
        const Hg = be.alloc('f32', E * m * s), Wg = put(be, randn(r2, s * 64)), gh = put(be, randn(r2, E * m * s));
        be.groupedMatmul(Ag, Bg, Hg, { problems, transA: false, transB: true, alpha: 1, beta: 0, bias: bg, biasStride: s, relu: true,
          bf16Out: true });
        const readH = (Hx: Buf) => {
          const gx = be.alloc('f32', E * m * s), dots = be.alloc('f32', E * m), P = be.alloc('f32', E * m * 64);
          be.reluBackwardRowDot(Hx, gh, gx, dots, E * m, s);
          be.matmul(Hx, Wg, P, { batch: 1, m: E * m, n: 64, k: s, transA: false, transB: false, strideA: 0, strideB: 0, strideC: 0,
            alpha: 1, beta: 0 });
          return [gx, dots, P].map((t) => { const d = be.download(t); be.free(t); return d; });
        };
        const got = readH(Hg), h = be.download(Hg);
        assert.ok(h.every(isBf16), 'grouped bf16Out: C holds bf16 values');
        const fresh = put(be, h);
        assert.deepEqual(got, readH(fresh), 'grouped bf16Out: the readers of the copy equal those of the widened values');
        for (const t of [Ag, Bg, bg, Hg, Wg, gh, fresh]) be.free(t);
      }
      for (const t of [X, W, bias, W2, gy]) be.free(t);
    });

    it('joinCollective (NCCL): one rank sums to itself, a zero-pending buffer is settled first, a disposed group throws', () => {
      const g = cuda.joinCollective(0, 1, (id) => {
        assert.equal(id!.length, 128);
        return id!;
      });
      assert.match(g.transport, /^NCCL, .*libnccl.*\(NCCL 2\.\d+\.\d+\)/);
      const data = randn(rng(3), 5000), x = put(cuda, data), z = cuda.alloc('f32', 7);
      g.allReduceSum([x, z]);
      assert.deepEqual(Array.from(cuda.download(x)), Array.from(Float32Array.from(data)));
      assert.deepEqual(Array.from(cuda.download(z)), new Array(7).fill(0));
      assert.throws(() => g.allReduceSum([cuda.alloc('bf16', 4)]), /must be f32/);
      g.dispose();
      assert.throws(() => g.allReduceSum([x]), /disposed/);
      for (const b of [x, z]) cuda.free(b);
    });

    it('data parallel on 2 GPUs: the NCCL all-reduce of two ranks, plain and overlapped (skipped with one GPU)', { skip: loadCudaAddon().probe().count < 2 }, async () => {
      const out = fs.mkdtempSync(path.join(os.tmpdir(), 'ssd-nccl-'));
      const fixture = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'parallel-rank.js');
      await launchRanks({ size: 2, script: fixture, args: [], env: { DIST_FIXTURE: 'allreduce', DIST_OUT: out, DIST_BACKEND: 'cuda' } });
      const f = Math.fround, sum = (v: (r: number) => number) => f(f(v(0)) + f(v(1)));
      for (const r of [0, 1]) {
        const got = JSON.parse(fs.readFileSync(path.join(out, `rank${r}.json`), 'utf8'));
        assert.match(got.transport, /^NCCL/);
        assert.deepEqual(got.first.a, Array.from({ length: 1000 }, (_, i) => sum((q) => (q + 1) / (i + 3))));
        const second = [sum((q) => q), sum((q) => -q), sum((q) => 0.1 * q)].map((x) => f(x + x));
        assert.deepEqual(got.second, second);
        assert.deepEqual(got.third, second.map((x) => f(x + x)), 'an overlapped sum (second stream), waited for');
      }
      fs.rmSync(out, { recursive: true, force: true });
    });

    it('captureGraph: a replay recomputes from the inputs\' new contents; uploads inside a capture are refused', () => {
      const n = 4096, x = T.tensor(randn(r, n), [n], { backend: cuda }).keep();
      const before = cuda.deviceMemory().liveBytes;
      let y: T.Tensor | null = null;
      const g = cuda.captureGraph(() => { y = T.tidy(() => T.mul(T.add(x, x), x)).keep(); }); // 2·x², a temporary inside
      try {
        for (let rep = 0; rep < 3; rep++) {
          const data = Float32Array.from(randn(r, n));
          x.set(data);
          g.launch();
          const got = y!.toArray();
          for (let i = 0; i < n; i++) assert.equal(got[i], Math.fround(Math.fround(2 * data[i]!) * data[i]!), `replay ${rep}, element ${i}`);
        }
      } finally {
        g.dispose();
        y!.dispose();
      }
      assert.equal(cuda.deviceMemory().liveBytes, before, 'the graph\'s blocks are returned');
      assert.throws(() => cuda.captureGraph(() => x.set(randn(r, n))), /upload cannot run while a CUDA graph is being captured/);
      assert.throws(() => cuda.captureGraph(() => { T.tidy(() => T.add(x, x).toArray()); }), /download cannot run while a CUDA graph/);
      // The stream works as before after the refused captures.
      const data = Float32Array.from(randn(r, n));
      x.set(data);
      const sum = T.tidy(() => T.add(x, x).toArray());
      for (let i = 0; i < n; i++) assert.equal(sum[i], Math.fround(2 * data[i]!));
      x.dispose();
    });

    it('decode from a CUDA graph gives the eager decode\'s tokens (dense and MoE; greedy and top-k; ragged rows that finish early)', () => {
      withDecodeModel(cuda, { vocab_size: 2000, n_layer: 3, d_model: 128, n_head: 4, d_ff: 512, seq_len: 96 }, 16, (model, experts, graphs) => {
        const prompts = [[5, 6, 7], [100, 200, 300, 400, 500, 600, 700, 800], [42]];
        for (const moe of [false, true]) {
          if (moe) useMoE(model, experts, 4); else useDense(model);
          for (const o of [{ temperature: 0, topK: 0, topP: 1, seed: 0 }, { temperature: 0.8, topK: 20, topP: 0.95, seed: 3 }]) {
            const run = (on: boolean) => {
              graphs(on);
              // Row 2 stops early at its 6th token (as end-of-text), so finished rows re-feed while the others go on.
              const first = generateBatch(model, prompts, { ...o, maxTokens: 30 });
              return generateBatch(model, prompts, { ...o, maxTokens: 30, stopId: first.tokens[2]![5] });
            };
            const eager = run(false), graph = run(true);
            const what = `${moe ? 'MoE 4/16' : 'dense'}, ${o.temperature ? 'top-k' : 'greedy'}`;
            // 10 rows: products of more than 8 rows (cuBLAS, and the logits' twin) inside the graph.
            const many = Array.from({ length: 10 }, (_, b) => [b + 1, 2 * b + 3, 7]);
            const wide = (on: boolean) => {
              graphs(on);
              return generateBatch(model, many, { ...o, maxTokens: 12 });
            };
            const wideGraph = wide(true);
            assert.equal(wideGraph.graphed, true, `${what}, 10 rows`);
            assert.deepEqual(wideGraph.tokens, wide(false).tokens, `${what}, 10 rows`);
            assert.equal(eager.graphed, false, what);
            assert.equal(graph.graphError, null, what);
            assert.equal(graph.graphed, true, what);
            assert.deepEqual(graph.tokens, eager.tokens, what);
            assert.deepEqual(graph.finish, eager.finish, what);
            assert.ok(graph.tokens[2]!.length < graph.tokens[0]!.length, `${what}: row 2 finished early`);
          }
        }
      });
    });

    it('a decode step that cannot be captured (MoE with cuBLAS grouped products, which read sizes back) decodes op by op, same tokens', () => {
      const be = createCudaBackend({ grouped: 'cublas' });
      withDecodeModel(be, { vocab_size: 500, n_layer: 2, d_model: 64, n_head: 2, d_ff: 256, seq_len: 64 }, 4, (model, experts, graphs) => {
        useMoE(model, experts, 2);
        const o = { temperature: 0, topK: 0, topP: 1, seed: 0, maxTokens: 16 }, prompts = [[1, 2, 3], [9, 8]];
        graphs(false);
        const eager = generateBatch(model, prompts, o); // also makes the weights' bf16 copies
        const before = be.deviceMemory().liveBytes;
        graphs(true);
        const tried = generateBatch(model, prompts, o);
        assert.equal(tried.graphed, false);
        assert.match(tried.graphError ?? '', /cannot run while a CUDA graph is being captured/);
        assert.equal(be.deviceMemory().liveBytes, before, 'nothing held after the failed capture');
        assert.deepEqual(tried.tokens, eager.tokens);
      });
    });

    it('a short training run: cpu and cuda loss curves agree within bf16 noise', () => {
      const curves = [cpu, cuda].map((be) => {
        T.useBackend(be);
        const mc = makeConfig('tiny', { vocab_size: 256, seq_len: 64 });
        const model = new GPT(mc, be, 42);
        const opt = new AdamW([...model.params.values()], { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 });
        const rr = rng(3);
        const losses: number[] = [];
        for (let s = 0; s < 12; s++) {
          // A learnable stream: token t+1 = (token t * 7 + 3) mod 256 with noise.
          const xs = new Int32Array(4 * 64), ys = new Int32Array(4 * 64);
          for (let b = 0; b < 4; b++) {
            let t = Math.floor(rr() * 256);
            for (let i = 0; i < 64; i++) {
              xs[b * 64 + i] = t;
              t = rr() < 0.9 ? (t * 7 + 3) % 256 : Math.floor(rr() * 256);
              ys[b * 64 + i] = t;
            }
          }
          T.tidy(() => {
            const x = T.tensor(xs, [4, 64], { dtype: 'i32' }), y = T.tensor(ys, [4, 64], { dtype: 'i32' });
            const loss = model.forward(x, { targets: y }).loss!;
            losses.push(loss.toArray()[0]!);
            T.backward(loss);
          });
          opt.update();
          opt.zeroGrad();
        }
        return losses;
      });
      const [a, b] = curves as [number[], number[]];
      for (let s = 0; s < a.length; s++) {
        assert.ok(Math.abs(a[s]! - b[s]!) <= 0.02 * Math.abs(a[s]!), `step ${s}: cpu ${a[s]} vs cuda ${b[s]}`);
      }
      assert.ok(b[b.length - 1]! < b[0]! - 0.2, `cuda loss did not fall: ${b[0]} -> ${b[b.length - 1]}`);
      console.log(`loss cpu  ${a.map((v) => v.toFixed(4)).join(' ')}\nloss cuda ${b.map((v) => v.toFixed(4)).join(' ')}`);
    });
  });
}
