/**
 * MoEfication and the MoE FFN: auction optimality, exact balance, function-preserving permutation,
 * MoE(top_k = E) = dense, merge(moefy(model)) = permuted dense model, gradients vs finite differences.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createRefBackend } from '../src/backend/ref/index.js';
import type { Backend } from '../src/backend/contract.js';
import { getBackend } from '../src/backend/registry.js';
import { loadAddon } from '../src/backend/cpu/addon.js';
import { balancedAuction } from '../src/moefy/auction.js';
import { balancedKMeans, randomBalancedSplit } from '../src/moefy/kmeans.js';
import { checkMoEConfig, mergeModel, moefyModel, permuteLayer } from '../src/moefy/model.js';
import { partitionPermutation } from '../src/moefy/permute.js';
import { makeConfig } from '../src/nn/config.js';
import type { FFNParams } from '../src/nn/ffn.js';
import { GPT } from '../src/nn/gpt.js';
import { capturedActivationMass, expertLoad, moeFFN } from '../src/nn/moe.js';
import * as T from '../src/tensor/index.js';
import { relErr, rng } from './helpers.js';

const names = (process.env.SSD_TEST_BACKENDS ?? 'ref,cpu').split(',');

/** Best balanced assignment by brute force (small n only). */
function bruteForce(score: Float64Array, n: number, E: number): number {
  const s = n / E, count = new Int32Array(E);
  let best = -Infinity;
  const rec = (i: number, acc: number) => {
    if (i === n) { best = Math.max(best, acc); return; }
    for (let j = 0; j < E; j++) {
      if (count[j]! < s) { count[j]!++; rec(i + 1, acc + score[i * E + j]!); count[j]!--; }
    }
  };
  rec(0, 0);
  return best;
}

function smallGPT(b: Backend, over: Record<string, unknown> = {}): GPT {
  return new GPT(makeConfig('tiny', { vocab_size: 31, n_layer: 2, d_model: 16, n_head: 2, d_ff: 48, seq_len: 8, ...over }), b, 5);
}

function logits(model: GPT, ids: number[][]): Float32Array {
  return T.tidy(() => T.noGrad(() => model.forward(T.tensor(ids.flat(), [ids.length, ids[0]!.length], { dtype: 'i32', backend: model.backend })).logits.toArray() as Float32Array));
}

describe('balanced assignment (auction)', () => {
  it('matches the brute-force optimum within n·ε with exact balance', () => {
    const r = rng(11);
    for (const [n, E] of [[6, 2], [6, 3], [8, 4], [9, 3], [8, 2], [4, 1]] as const) {
      for (let trial = 0; trial < 5; trial++) {
        const score = Float64Array.from({ length: n * E }, () => -r() * 10);
        const res = balancedAuction(score, n, E);
        const counts = new Int32Array(E);
        for (const a of res.assignment) counts[a]!++;
        assert.ok(counts.every((c) => c === n / E), `unbalanced: ${counts}`);
        const opt = bruteForce(score, n, E);
        assert.ok(res.score >= opt - n * res.epsilon - 1e-9, `n=${n} E=${E}: ${res.score} < optimum ${opt} − n·ε`);
      }
    }
  });

  it('matches the exact optimum of two large clusters (deep slot heaps, tied scores, warm prices)', () => {
    // With E = 2 the optimum gives cluster 0 the n/2 items with the largest score[i,0] − score[i,1].
    const r = rng(5), n = 400;
    const score = Float64Array.from({ length: 2 * n }, () => Math.round(-r() * 20) / 2);
    const gain = Array.from({ length: n }, (_, i) => score[2 * i]! - score[2 * i + 1]!).sort((a, b) => b - a);
    let opt = 0;
    for (let i = 0; i < n; i++) opt += score[2 * i + 1]!;
    for (let i = 0; i < n / 2; i++) opt += gain[i]!;
    const cold = balancedAuction(score, n, 2);
    const warm = balancedAuction(score.map((v, i) => v + 0.01 * (i % 3)), n, 2, { prices: cold.prices, epsilonStart: 1e-3 });
    for (const [res, best] of [[cold, opt], [warm, null]] as const) {
      assert.equal(res.assignment.filter((a) => a === 0).length, n / 2);
      if (best !== null) assert.ok(res.score >= best - n * res.epsilon - 1e-9, `${res.score} < optimum ${best} − n·ε`);
    }
  });

  it('the native bidding equals the TypeScript reference to the bit (ties, E not a multiple of 4, warm prices)', () => {
    assert.equal(typeof loadAddon().balancedAuction, 'function'); // else both runs below would be the reference
    const r = rng(8);
    for (const [n, E, tied] of [[1536, 24, false], [400, 2, true], [99, 3, true], [60, 5, false], [7, 1, false]] as const) {
      const score = Float64Array.from({ length: n * E }, () => (tied ? Math.round(-r() * 20) / 2 : -r() * 3));
      const run = (native: boolean) => {
        const cold = balancedAuction(score, n, E, { native });
        const warm = balancedAuction(score.map((v, i) => v + 0.01 * (i % 7)), n, E, { native, prices: cold.prices, epsilonStart: 1e-3 });
        return [cold, warm].map((x) => ({ assignment: [...x.assignment], prices: [...x.prices], bids: x.bids }));
      };
      assert.deepEqual(run(true), run(false), `n=${n} E=${E}`);
    }
    const score = Float64Array.from({ length: 8 }, (_, i) => -i);
    assert.throws(() => balancedAuction(score.map((v, i) => (i === 5 ? Infinity : v)), 4, 2), /score 5 is Infinity/);
    assert.throws(() => balancedAuction(new Float64Array(0), 0, 2), /0 items cannot be split into 2/);
    assert.throws(() => balancedAuction(score, 4, 2, { prices: new Float64Array(3) }), /warm prices must be 4 finite numbers/);
    assert.throws(() => balancedAuction(score, 4, 2, { scaling: 1 }), /scaling > 1/);
  });

  it('balanced k-means gives equal clusters and beats a random split on clustered data', () => {
    const r = rng(2);
    const n = 64, d = 8, E = 4;
    const W = new Float32Array(n * d);
    for (let i = 0; i < n; i++) for (let k = 0; k < d; k++) W[i * d + k] = (k === (i % E) ? 3 : 0) + (r() - 0.5);
    const km = balancedKMeans(W, n, d, { nExpert: E, seed: 1 });
    const counts = new Int32Array(E);
    for (const a of km.assignment) counts[a]!++;
    assert.deepEqual([...counts], [16, 16, 16, 16]);
    // The planted clusters (i mod 4) are recovered exactly.
    for (let i = 0; i < n; i++) assert.equal(km.assignment[i], km.assignment[i % E]);
    const warm = balancedKMeans(W, n, d, { nExpert: E, seed: 1, previous: randomBalancedSplit(n, E, 3) });
    assert.ok(warm.inertia <= km.inertia + 1e-6);
    assert.throws(() => balancedKMeans(W, n, d, { nExpert: 5 }), /d_ff = 64 is not divisible by n_expert = 5/);
  });
});

for (const name of names) {
  const b = getBackend(name);
  describe(`MoE FFN and MoEfication on ${name}`, () => {
    it('a permuted model computes the same function', () => {
      const model = smallGPT(b);
      const ids = [[1, 5, 7, 2, 30, 0, 4, 9]];
      const before = logits(model, ids);
      const r = rng(4);
      const order = Array.from({ length: 48 }, (_, i) => i).sort(() => r() - 0.5);
      permuteLayer(model, null, 0, Int32Array.from(order));
      permuteLayer(model, null, 1, Int32Array.from(order.reverse()));
      assert.ok(relErr(logits(model, ids), before) < 1e-5);
      model.dispose();
    });

    it('MoE with top_k = n_expert equals the dense FFN; merge(moefy(model)) equals the permuted dense model', () => {
      const model = smallGPT(b);
      const ids = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]];
      const dense = logits(model, ids);
      const res = moefyModel(model, null, { nExpert: 6, topK: 6 });
      assert.ok(relErr(logits(model, ids), dense) < 1e-5, 'MoE(top_k = E) differs from dense');
      const permuted = res.partitions.map((p) => [...p.perm]);
      mergeModel(model, null, res.routers);
      assert.ok(relErr(logits(model, ids), dense) < 1e-5, 'merged model differs');
      // The merged weights are exactly the original weights permuted.
      const fresh = smallGPT(b);
      const w0 = fresh.ffnParams(0).w_in.toArray(), w1 = model.ffnParams(0).w_in.toArray();
      permuted[0]!.forEach((old, i) => assert.deepEqual([...w1.subarray(i * 16, i * 16 + 16)], [...w0.subarray(old * 16, old * 16 + 16)]));
      fresh.dispose();
      model.dispose();
    });

    it('computes only the selected experts: top-1 of 2 equals the dense FFN restricted to that expert; captured activation mass', () => {
      const r = rng(9);
      const N = 5, dm = 4, dff = 6, E = 2;
      const p = randomFFN(b, dm, dff, r);
      const x = T.tensor(Float32Array.from({ length: N * dm }, () => r() - 0.5), [N, dm], { backend: b });
      const router = T.tensor(Float32Array.from({ length: dm * E }, () => r() - 0.5), [dm, E], { backend: b });
      const { y, routing } = T.noGrad(() => moeFFN(x, p, router, { nExpert: E, topK: 1, activation: 'relu' }));
      const X = x.toArray(), Y = y.toArray(), Win = p.w_in.toArray(), Bin = p.b_in!.toArray(), Wout = p.w_out.toArray(), Bout = p.b_out!.toArray();
      const experts = routing.experts.toArray();
      for (let n = 0; n < N; n++) {
        const e = experts[n]!;
        for (let o = 0; o < dm; o++) {
          let acc = Bout[o]!;
          for (let i = e * 3; i < e * 3 + 3; i++) {
            let h = Bin[i]!;
            for (let k = 0; k < dm; k++) h += X[n * dm + k]! * Win[i * dm + k]!;
            acc += Math.max(0, h) * Wout[o * dff + i]!;
          }
          assert.ok(Math.abs(Y[n * dm + o]! - acc) < 1e-5);
        }
      }
      assert.deepEqual([...expertLoad(routing)], [0, 1].map((e) => experts.filter((v) => v === e).length));
      // Captured activation mass: per token, the selected expert's share of Σ relu(h), averaged.
      let share = 0;
      for (let n = 0; n < N; n++) {
        let total = 0, kept = 0;
        for (let i = 0; i < dff; i++) {
          let h = Bin[i]!;
          for (let k = 0; k < dm; k++) h += X[n * dm + k]! * Win[i * dm + k]!;
          total += Math.max(0, h);
          if (Math.floor(i / 3) === experts[n]) kept += Math.max(0, h);
        }
        share += total > 0 ? kept / total : 1;
      }
      assert.ok(Math.abs(capturedActivationMass(x, p, routing, E) - share / N) < 1e-5);
      for (const t of [x, router, y, ...Object.values(p)]) t?.dispose();
    });

    it('gradients match finite differences (experts and inputs; router via its surrogate)', () => {
      const r = rng(21);
      const N = 6, dm = 5, dff = 8, E = 4, k = 2;
      const init = {
        x: Float64Array.from({ length: N * dm }, () => r() - 0.5),
        w_in: Float64Array.from({ length: dff * dm }, () => r() - 0.5),
        b_in: Float64Array.from({ length: dff }, () => (r() - 0.5) * 0.2),
        w_out: Float64Array.from({ length: dm * dff }, () => r() - 0.5),
        b_out: Float64Array.from({ length: dm }, () => r() - 0.5),
        router: Float64Array.from({ length: dm * E }, () => r() - 0.5),
      };
      const shapes = { x: [N, dm], w_in: [dff, dm], b_in: [dff], w_out: [dm, dff], b_out: [dm], router: [dm, E] };
      const W = Float64Array.from({ length: N * dm }, () => r() - 0.5);
      const oracle = createRefBackend({ f64: true });
      const build = (be: Backend, vals: typeof init) => Object.fromEntries(Object.entries(vals).map(([key, v]) =>
        [key, T.tensor(v, shapes[key as keyof typeof shapes], { backend: be })])) as Record<keyof typeof init, T.Tensor>;
      const loss = (t: Record<keyof typeof init, T.Tensor>, trainRouter: boolean) => {
        const { y, routing } = moeFFN(t.x, { w_in: t.w_in, b_in: t.b_in, w_out: t.w_out, b_out: t.b_out }, t.router,
          { nExpert: E, topK: k, activation: 'relu', trainRouter });
        return { l: T.sum(T.mul(y, T.tensor(W, [N, dm], { backend: y.backend }))), routing };
      };
      const lossF64 = (vals: typeof init) => T.tidy(() => T.noGrad(() => oracle.downloadF64(loss(build(oracle, vals), false).l.buf('t'))[0]!));
      const grads = (trainRouter: boolean) => T.tidy(() => {
        const t = build(b, init);
        for (const v of Object.values(t)) v.requiresGrad = true;
        T.backward(loss(t, trainRouter).l);
        const g = Object.fromEntries(Object.entries(t).map(([key, v]) => [key, v.grad ? [...v.grad.toArray()] : null]));
        for (const v of Object.values(t)) v.dispose();
        return g;
      });
      const g = grads(false);
      for (const key of ['x', 'w_in', 'b_in', 'w_out', 'b_out'] as const) {
        const fd = init[key].map((_, i) => {
          const plus = { ...init, [key]: Float64Array.from(init[key]) }, minus = { ...init, [key]: Float64Array.from(init[key]) };
          plus[key][i]! += 1e-6;
          minus[key][i]! -= 1e-6;
          return (lossF64(plus) - lossF64(minus)) / 2e-6;
        });
        assert.ok(relErr(g[key]!, fd) < 2e-4, `${key}: relative error ${relErr(g[key]!, fd)}`);
      }
      // Router: the gradient of 1 + s − stopgrad(s) equals the gradient of Σ s_nj · c_nj with the expert
      // outputs' contributions c_nj held fixed.
      const gr = grads(true).router!;
      const contrib = T.tidy(() => T.noGrad(() => {
        const t = build(oracle, init);
        const perSlot = new Float64Array(N * k);
        const experts = loss(t, false).routing.experts.toArray();
        for (let j = 0; j < k; j++) {
          // y restricted to slot j: route everything through slot j's expert only.
          const single = new Int32Array(N).map((_, n) => experts[n * k + j]!);
          for (let n = 0; n < N; n++) perSlot[n * k + j] = expertOutputDot(init, W, n, single[n]!, dm, dff / E);
        }
        return perSlot;
      }));
      const surrogate = (router: Float64Array) => T.tidy(() => T.noGrad(() => {
        const x = T.tensor(init.x, [N, dm], { backend: oracle }), R = T.tensor(router, [dm, E], { backend: oracle });
        const s = T.softmax(T.topk(T.matmul(x, R), k).values);
        return oracle.downloadF64(T.sum(T.mul(s, T.tensor(contrib, [N, k], { backend: oracle }))).buf('t'))[0]!;
      }));
      const fdr = init.router.map((_, i) => {
        const plus = Float64Array.from(init.router), minus = Float64Array.from(init.router);
        plus[i]! += 1e-6;
        minus[i]! -= 1e-6;
        return (surrogate(plus) - surrogate(minus)) / 2e-6;
      });
      assert.ok(relErr(gr, fdr) < 2e-4, `router: relative error ${relErr(gr, fdr)}`);
    });

    it('the router gradient reaches x only with routerInputGrad', () => {
      const r = rng(5);
      const N = 6, dm = 5, dff = 8, E = 4;
      const p = randomFFN(b, dm, dff, r);
      const xv = Float32Array.from({ length: N * dm }, () => r() - 0.5);
      const router = T.tensor(Float32Array.from({ length: dm * E }, () => r() - 0.5), [dm, E], { backend: b });
      router.requiresGrad = true;
      const gx = (o: { trainRouter: boolean; routerInputGrad?: boolean }) => T.tidy(() => {
        const x = T.tensor(xv, [N, dm], { backend: b });
        x.requiresGrad = true;
        T.backward(T.sum(T.square(moeFFN(x, p, router, { nExpert: E, topK: 2, activation: 'relu', ...o }).y)));
        const g = [...x.grad!.toArray()];
        x.dispose();
        router.grad?.dispose();
        router.grad = null;
        return g;
      });
      const none = gx({ trainRouter: false });
      assert.deepEqual(gx({ trainRouter: true }), none, 'detached by default: x gets only the experts\' gradient');
      assert.ok(relErr(gx({ trainRouter: true, routerInputGrad: true }), none) > 1e-4, 'with routerInputGrad the router path adds to x');
      for (const t of [router, ...Object.values(p)]) t?.dispose();
    });

    it('expertGroups: a known grouping (stable by token), errors for experts out of range and bad segments', () => {
      T.tidy(() => {
        // tokens: 0 -> experts (1, 0), 1 -> (0, 2), 2 -> (2, 1); E = 4 (expert 3 unused)
        const ex = T.tensor(Int32Array.from([1, 0, 0, 2, 2, 1]), [3, 2], { dtype: 'i32', backend: b });
        const g = T.expertGroups(ex, 4);
        assert.deepEqual([...g.offsets.toArray()], [0, 2, 4, 6, 6]);
        assert.deepEqual([...g.rowToken.toArray()], [0, 1, 0, 2, 1, 2]);
        assert.deepEqual([...g.rowSlot.toArray()], [1, 2, 0, 5, 3, 4]);
        assert.deepEqual([...g.rowExpert.toArray()], [0, 0, 1, 1, 2, 2]);
        assert.throws(() => T.expertGroups(ex, 2), /expert 2 of token 1 is outside \[0, 2\)/);
        const o = b.alloc('i32', 5), r1 = b.alloc('i32', 6), r2 = b.alloc('i32', 6);
        assert.throws(() => b.expertGroups(ex.buf('t'), o, r1, r1, r2, 3, 2, 4), /must be distinct buffers/);
        for (const buf of [o, r1, r2]) b.free(buf);
        const x = T.tensor(Float32Array.from({ length: 12 }, (_, i) => i), [6, 2], { backend: b });
        const w = T.tensor(new Float32Array(4 * 2 * 3), [4, 2, 3], { backend: b });
        const layout = { nExpert: 4, k: 2, n: 3, stride: 6, ld: 3, transB: false };
        const bad = (o: number[]) => T.segmentMatmul(x, w, T.tensor(Int32Array.from(o), [5], { dtype: 'i32', backend: b }), layout);
        assert.throws(() => bad([0, 2, 1, 6, 6]), /segments decrease at group 1/);
        assert.throws(() => bad([1, 2, 4, 6, 6]), /segments must start at 0/);
        assert.throws(() => bad([0, 2, 4, 6, 7]), /group 3: (a needs 14 elements, has 12|C out of range)/);
        const seg = T.tensor(Int32Array.from([0, 2, 4, 6, 6]), [5], { dtype: 'i32', backend: b });
        const c = b.alloc('f32', 4 * 3 * 3);
        assert.throws(() => b.groupedMatmul(x.buf('t'), w.buf('t'), c, { problems: new Int32Array(36), transA: true, transB: true,
          alpha: 1, beta: 0, segments: seg.buf('t') }), /segments need transA or transB false/);
        b.free(c);
      });
    });

    it('gives clear errors for MoE configs that do not fit', () => {
      assert.throws(() => checkMoEConfig(3072, 100, 4), /d_ff = 3072 is not divisible by n_expert = 100/);
      assert.throws(() => checkMoEConfig(3072, 32, 33), /top_k = 33 is outside \[1, n_expert = 32\]/);
      assert.throws(() => checkMoEConfig(3072, 32, 0), /top_k = 0/);
      assert.throws(() => partitionPermutation(Int32Array.from([0, 0, 0, 1]), 2), /exactly 2 neurons each/);
      const model = smallGPT(b);
      assert.throws(() => moefyModel(model, null, { nExpert: 5, topK: 1 }), /d_ff = 48 is not divisible by n_expert = 5/);
      model.dispose();
    });
  });
}

function randomFFN(b: Backend, dm: number, dff: number, r: () => number): FFNParams {
  const t = (n: number, shape: number[]) => T.tensor(Float32Array.from({ length: n }, () => r() - 0.5), shape, { backend: b });
  return { w_in: t(dff * dm, [dff, dm]), b_in: t(dff, [dff]), w_out: t(dm * dff, [dm, dff]), b_out: t(dm, [dm]) };
}

/** Σ_o W[n, o] · (expert e's output for token n), computed directly in float64. */
function expertOutputDot(v: { x: Float64Array; w_in: Float64Array; b_in: Float64Array; w_out: Float64Array }, W: Float64Array,
  n: number, e: number, dm: number, s: number): number {
  const dff = v.b_in.length;
  let total = 0;
  for (let o = 0; o < dm; o++) {
    let acc = 0;
    for (let i = e * s; i < (e + 1) * s; i++) {
      let h = v.b_in[i]!;
      for (let k = 0; k < dm; k++) h += v.x[n * dm + k]! * v.w_in[i * dm + k]!;
      acc += Math.max(0, h) * v.w_out[o * dff + i]!;
    }
    total += W[n * dm + o]! * acc;
  }
  return total;
}

