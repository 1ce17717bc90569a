/**
 * Tensor core: autograd semantics, scopes and memory, AdamW, and clear errors on bad input.
 * Runs on every backend in SSD_TEST_BACKENDS (default: ref,cpu).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Backend } from '../src/backend/contract.js';
import { getBackend } from '../src/backend/registry.js';
import * as T from '../src/tensor/index.js';
import { AdamW, gradNorm } from '../src/train/optim.js';
import { relErr, rng } from './helpers.js';

const names = (process.env.SSD_TEST_BACKENDS ?? 'ref,cpu').split(',');

function randomParam(name: string, shape: number[], r: () => number, b: Backend): T.Tensor {
  const n = shape.reduce((a, c) => a * c, 1);
  return T.parameter(name, Float32Array.from({ length: n }, () => (r() - 0.5) * 0.5), shape, b);
}

for (const name of names) {
  const b = getBackend(name);
  describe(`tensor core on ${name}`, () => {
    it('accumulates gradients over repeated use and repeated backward', () => {
      const x = T.parameter('x', [1, 2, 3], [3], b);
      T.tidy(() => {
        const y = T.sum(T.add(T.mul(x, x), x)); // Σ x² + x -> 2x + 1
        T.backward(y);
      });
      assert.deepEqual([...x.grad!.toArray()], [3, 5, 7]);
      T.tidy(() => T.backward(T.sum(x)));
      assert.deepEqual([...x.grad!.toArray()], [4, 6, 8]);
      x.dispose();
    });

    it('matmul computes gradients only for operands that need them (all four transpose cases)', () => {
      // C = op(A)·op(B), loss Σ C: dA = 1·op(B)ᵀ row sums, known in closed form; B is a constant.
      const A = T.parameter('A', [1, 2, 3, 4, 5, 6], [2, 3], b);
      const B = T.tensor([1, -1, 2, 0.5, 3, 1], [3, 2], { backend: b });
      const Bt = T.tensor([1, 2, 3, -1, 0.5, 1], [2, 3], { backend: b });
      const At = T.parameter('At', [1, 4, 2, 5, 3, 6], [3, 2], b);
      for (const [a, bb, transA, transB] of [[A, B, false, false], [A, Bt, false, true], [At, B, true, false], [At, Bt, true, true]] as const) {
        a.grad?.dispose();
        a.grad = null;
        T.tidy(() => T.backward(T.sum(T.matmul(a, bb, { transA, transB }))));
        // d/dA_ik Σ_ij (A B)_ij = Σ_j B_kj = (0, 2.5, 4) for k = 0, 1, 2; transposed storage for At.
        assert.deepEqual([...a.grad!.toArray()], transA ? [0, 0, 2.5, 2.5, 4, 4] : [0, 2.5, 4, 0, 2.5, 4]);
        assert.equal(bb.grad, null);
      }
      for (const t of [A, B, Bt, At]) t.dispose();
    });

    it('records nothing under noGrad and refuses backward without a graph', () => {
      const x = T.parameter('x', [1, 2], [2], b);
      T.tidy(() => {
        const y = T.noGrad(() => T.sum(T.mul(x, x)));
        assert.throws(() => T.backward(y), /backward: .*no graph/);
        const z = T.sum(T.tensor([1, 2], [2], { backend: b }));
        assert.throws(() => T.backward(z), /no graph/);
      });
      x.dispose();
    });

    it('frees everything a tidy scope created except what it returns', () => {
      const before = b.memoryStats();
      const kept = T.tidy(() => {
        const a = T.full([100], 1, b);
        const c = T.add(a, a);
        return T.reshape(c, [10, 10]);
      });
      assert.equal(b.memoryStats().liveBuffers, before.liveBuffers + 1);
      assert.deepEqual([...kept.shape], [10, 10]);
      assert.equal(kept.toArray()[5], 2);
      kept.dispose();
      assert.deepEqual(b.memoryStats(), before);
    });

    it('training steps keep live buffers and bytes flat (MLP + AdamW, 30 steps)', () => {
      const r = rng(7);
      const w1 = randomParam('w1', [16, 8], r, b), b1 = randomParam('b1', [16], r, b);
      const w2 = randomParam('w2', [4, 16], r, b);
      const params = [w1, b1, w2];
      const opt = new AdamW(params, { lr: 5e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, noDecay: (p) => p === b1 });
      const x = T.tensor(Float32Array.from({ length: 32 * 8 }, () => r() - 0.5), [32, 8], { backend: b }).keep();
      const y = T.tensor(Int32Array.from({ length: 32 }, (_, i) => i % 4), [32], { dtype: 'i32', backend: b }).keep();
      const losses: number[] = [];
      let after3 = { liveBuffers: 0, liveBytes: 0 };
      for (let step = 0; step < 30; step++) {
        losses.push(T.tidy(() => {
          const h = T.relu(T.add(T.matmul(x, w1, { transB: true }), b1));
          const loss = T.crossEntropy(T.matmul(h, w2, { transB: true }), y);
          T.backward(loss);
          return loss.item();
        }));
        assert.ok(Number.isFinite(gradNorm(params)));
        opt.update();
        opt.zeroGrad();
        if (step === 2) after3 = b.memoryStats();
      }
      assert.deepEqual(b.memoryStats(), after3, 'live buffers grew across steps');
      assert.ok(losses[29]! < losses[0]! * 0.7, `loss did not fall: ${losses[0]} -> ${losses[29]}`);
      opt.dispose();
      for (const t of [...params, x, y]) t.dispose();
    });

    it('AdamW matches a hand computation of one step', () => {
      const p = T.parameter('p', [1, -2], [2], b);
      T.tidy(() => T.backward(T.sum(T.mul(p, T.tensor([0.5, -1], [2], { backend: b })))));
      const opt = new AdamW([p], { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 });
      opt.update();
      // Step 1: m̂ = g, v̂ = g², so p ← p(1 − lr·wd) − lr·sign(g) (up to eps).
      const want = [1 * (1 - 0.001) - 0.1, -2 * (1 - 0.001) + 0.1];
      assert.ok(relErr(p.toArray(), want) < 1e-6);
      opt.dispose();
      p.dispose();
    });

    it('gives clear errors for bad input', () => {
      T.tidy(() => {
        const a = T.full([2, 3], 1, b), c = T.full([4, 5], 1, b);
        assert.throws(() => T.matmul(a, c), /matmul: inner sizes differ: \[2, 3\] · \[4, 5\]/);
        assert.throws(() => T.add(a, c), /add: shapes \[2,3\] and \[4,5\] cannot be broadcast/);
        const ids = T.tensor([0, 1], [2], { dtype: 'i32', backend: b });
        assert.throws(() => T.relu(ids), /relu: input must be f32, got i32/);
        assert.throws(() => T.embedding(a, T.tensor([0, 7], [2], { dtype: 'i32', backend: b })), /index 7 is outside \[0, 2\)/);
        assert.throws(() => T.crossEntropy(a, T.tensor([0, 3], [2], { dtype: 'i32', backend: b })), /target 3 is outside/);
        assert.throws(() => T.topk(a, 4), /topk: k = 4 is outside \[1, 3\]/);
        assert.throws(() => T.reshape(a, [4, 2]), /reshape: cannot view \[2, 3\]/);
        assert.throws(() => T.tensor([1, 2, 3], [2, 2], { backend: b }), /3 values do not fill shape \[2,2\]/);
        // linear: x (rows, in), w (out, in), b (out)
        assert.throws(() => T.linear(a, c, null), /linear: x \[2, 3\] has 3 features, w \[4, 5\] takes 5/);
        assert.throws(() => T.linear(a, T.full([4, 3], 1, b), T.full([3], 1, b)), /linear: b \[3\] must be \(4\)/);
        assert.throws(() => T.linear(a, T.full([4, 3, 1], 1, b), null), /linear: x needs rank >= 1 and w rank 2/);
        // segmentMatmul's epilogue: a bias of the wrong shape, without rowExpert, or with a scattered output
        const off = T.tensor([0, 1, 2], [3], { dtype: 'i32', backend: b }), rows = T.tensor([0, 1], [2], { dtype: 'i32', backend: b });
        const L = { nExpert: 2, k: 3, n: 2, stride: 6, ld: 3, transB: true };
        const w = T.full([4, 3], 1, b), bias = T.full([2, 2], 0.5, b);
        assert.throws(() => T.segmentMatmul(a, w, off, L, {}, { bias: T.full([2, 3], 1, b), rowExpert: rows }),
          /segmentMatmul: bias \[2, 3\] must be \(2, 2\)/);
        assert.throws(() => T.segmentMatmul(a, w, off, L, {}, { bias }), /a bias needs rowExpert, the expert of each of the 2 rows/);
        assert.throws(() => T.segmentMatmul(a, w, off, L, { scatter: rows, outRows: 2 }, { relu: true }),
          /a bias or ReLU epilogue needs an unscattered output/);
        const y = T.segmentMatmul(a, w, off, L, {}, { bias, rowExpert: rows, relu: true }).toArray();
        assert.deepEqual(Array.from(y), [3.5, 3.5, 3.5, 3.5]);
        // ... a router gate without ReLU, with s not (N, k), or without one slot per product row
        const s = T.full([2, 1], 0.5, b);
        assert.throws(() => T.segmentMatmul(a, w, off, L, {}, { gate: { s, rowSlot: rows } }), /a router gate epilogue needs relu/);
        assert.throws(() => T.segmentMatmul(a, w, off, L, {}, { relu: true, gate: { s: T.full([2], 1, b), rowSlot: rows } }),
          /segmentMatmul: gate.s must have rank 2/);
        assert.throws(() => T.segmentMatmul(a, w, off, L, {}, { relu: true, gate: { s, rowSlot: off } }),
          /gate.rowSlot \[3\] must have 2 entries/);
        // ... an output bias without a scatter, or not of n entries
        assert.throws(() => T.segmentMatmul(a, w, off, L, {}, { outBias: T.full([2], 1, b) }), /an output bias needs a scattered output/);
        assert.throws(() => T.segmentMatmul(a, w, off, L, { scatter: rows, outRows: 2 }, { outBias: T.full([3], 1, b) }),
          /outBias \[3\] must be \(2\)/);
      });
      const freed = T.full([3], 1, b);
      freed.dispose();
      assert.throws(() => T.relu(freed), /relu: use of a freed tensor \(shape \[3\]/);
    });

    it('dropout masks are identical to ref and scale kept values', () => {
      const ref = getBackend('ref');
      const run = (be: Backend) => T.tidy(() => T.noGrad(() => T.dropout(T.full([1000], 2, be), 0.25, 42).toArray()));
      const got = run(b), want = run(ref);
      assert.deepEqual([...got], [...want]);
      const kept = [...got].filter((v) => v !== 0);
      assert.ok(kept.every((v) => Math.abs(v - 2 / 0.75) < 1e-6));
      assert.ok(Math.abs(kept.length / 1000 - 0.75) < 0.05);
    });

    it('top-k indices and bf16 casts agree exactly with ref', () => {
      const ref = getBackend('ref');
      const r = rng(3);
      const data = Float32Array.from({ length: 40 * 33 }, () => Math.round((r() - 0.5) * 40) / 4); // with ties
      const run = (be: Backend) => T.tidy(() => T.noGrad(() => {
        const x = T.tensor(data, [40, 33], { backend: be });
        const { values, indices } = T.topk(x, 5);
        return { v: [...values.toArray()], i: [...indices.toArray()], c: [...T.cast(T.cast(x, 'bf16'), 'f32').toArray()] };
      }));
      assert.deepEqual(run(b), run(ref));
    });
  });
}
