/**
 * Inference: KV-cache decoding equals a full forward pass (dense and MoE, ref and cpu), batched ragged
 * prompts equal single prompts, greedy decoding is deterministic, MoE with every expert equals dense,
 * stop strings, the decode step (device sampling candidates, positions, a failed graph capture) and the
 * bad-input errors.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Backend } from '../src/backend/contract.js';
import { getBackend } from '../src/backend/registry.js';
import { ByteTokenizer } from '../src/data/tokenizer/index.js';
import { decodeBytesPerToken, prefillFlopsPerToken } from '../src/infer/bench.js';
import { candidateCount, candidatesOf, MAX_DEVICE_CANDIDATES } from '../src/infer/decode-step.js';
import { generateBatch } from '../src/infer/generate.js';
import { sampleToken, seededUniform } from '../src/infer/sample.js';
import { KVCache } from '../src/infer/kvcache.js';
import { disposeExperts, prepareExperts, resolveTopK, storedPartition, useDense, useMoE } from '../src/infer/mode.js';
import { makeConfig } from '../src/nn/config.js';
import { GPT } from '../src/nn/gpt.js';
import * as T from '../src/tensor/index.js';
import type { CheckpointState } from '../src/train/checkpoint.js';
import { relErr, rng } from './helpers.js';

const names = (process.env.SSD_TEST_BACKENDS ?? 'ref,cpu').split(',');

function smallGPT(b: Backend, vocab = 40): GPT {
  const m = new GPT(makeConfig('tiny', { vocab_size: vocab, n_layer: 2, d_model: 32, n_head: 2, d_ff: 64, seq_len: 24 }), b, 11);
  for (const t of m.params.values()) t.requiresGrad = false;
  return m;
}

const greedy = { temperature: 0, topK: 0, topP: 1, seed: 0 };

/** Logits (T, V) of a full forward pass over ids. */
function fullLogits(model: GPT, ids: number[]): Float32Array {
  return T.tidy(() => T.noGrad(() =>
    model.forward(T.tensor(ids, [1, ids.length], { dtype: 'i32', backend: model.backend })).logits.toArray() as Float32Array));
}

/** Logits (T, V) from a prefill of the first `split` ids, then one decode step per remaining id. */
function cachedLogits(model: GPT, ids: number[], split: number): Float32Array {
  const cache = new KVCache(model.config, model.backend, 1);
  try {
    const parts: Float32Array[] = [];
    const step = (chunk: number[]) => parts.push(T.tidy(() => T.noGrad(() =>
      model.forward(T.tensor(chunk, [1, chunk.length], { dtype: 'i32', backend: model.backend }), { cache }).logits.toArray() as Float32Array)));
    step(ids.slice(0, split));
    for (let t = split; t < ids.length; t++) step([ids[t]!]);
    const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
    let o = 0;
    for (const p of parts) { out.set(p, o); o += p.length; }
    return out;
  } finally {
    cache.dispose();
  }
}

const ids = [3, 17, 5, 5, 22, 9, 31, 0, 12, 39, 8, 2, 14];

for (const name of names) {
  describe(`inference on ${name}`, () => {
    const backend = getBackend(name);
    // cuda multiplies in bf16, and the full forward keeps qkv at bf16 precision where decoding cannot.
    const tol = name === 'cuda' ? 1e-2 : 1e-5;

    it('KV-cache decoding gives the logits of a full forward pass (dense and MoE)', () => {
      const model = smallGPT(backend);
      const experts = prepareExperts(model, null, { nExpert: 8, blocks: true });
      try {
        for (const topK of [null, 3]) {
          if (topK === null) useDense(model); else useMoE(model, experts, topK);
          const want = fullLogits(model, ids);
          for (const split of [1, 6]) {
            const e = relErr(cachedLogits(model, ids, split), want);
            assert.ok(e <= tol, `${topK === null ? 'dense' : `moe k=${topK}`}, prefill ${split}: relative error ${e.toExponential(2)}`);
          }
        }
      } finally {
        useDense(model);
        disposeExperts(experts);
        model.dispose();
      }
    });

    it('MoE mode with top_k = n_expert equals dense mode', () => {
      const model = smallGPT(backend);
      const experts = prepareExperts(model, null, { nExpert: 4, blocks: true });
      try {
        const dense = fullLogits(model, ids);
        useMoE(model, experts, 4);
        const e = relErr(fullLogits(model, ids), dense);
        assert.ok(e <= tol, `relative error ${e.toExponential(2)}`);
      } finally {
        disposeExperts(experts);
        model.dispose();
      }
    });

    it('greedy decoding is deterministic, and batched ragged prompts equal single prompts', () => {
      const model = smallGPT(backend);
      try {
        const prompts = [[1, 2, 3], [7, 8, 9, 10, 11, 12], [4]];
        const o = { ...greedy, maxTokens: 8 };
        const a = generateBatch(model, prompts, o), b = generateBatch(model, prompts, o);
        assert.deepEqual(a.tokens, b.tokens);
        assert.deepEqual(a.finish, ['length', 'length', 'length']);
        prompts.forEach((p, i) => assert.deepEqual(generateBatch(model, [p], o).tokens[0], a.tokens[i], `prompt ${i}`));
      } finally {
        model.dispose();
      }
    });

    it('stops at the context length, at a stop string, and at end-of-text', () => {
      const tok = new ByteTokenizer();
      const model = smallGPT(backend, tok.vocabSize);
      const decode = (x: number[]) => tok.decode(x);
      try {
        const long = generateBatch(model, [[65, 66]], { ...greedy, maxTokens: 100, decode });
        assert.equal(long.finish[0], 'context');
        assert.equal(long.tokens[0]!.length, model.config.seq_len - 2);
        const text = long.texts[0]!;
        const stop = text.slice(5, 7);
        let streamed = '';
        const cut = generateBatch(model, [[65, 66]], { ...greedy, maxTokens: 100, decode, stop: [stop] },
          { onText: (_, t) => { streamed += t; } });
        assert.equal(cut.finish[0], 'stop');
        assert.equal(cut.texts[0], text.slice(0, text.indexOf(stop)));
        assert.equal(streamed, cut.texts[0]);
        const eot = generateBatch(model, [[65, 66]], { ...greedy, maxTokens: 100, stopId: long.tokens[0]![3]! });
        assert.equal(eot.finish[0], 'eot');
        assert.ok(eot.tokens[0]!.length <= 3);
      } finally {
        model.dispose();
      }
    });
  });
}

describe('inference: decode step', () => {
  const backend = getBackend(names[0]!);

  it('device candidates (greedy, top-k) sample the same tokens as the full logits, ties included', () => {
    const r = rng(3), B = 4, V = 300;
    // Logits on a coarse grid: many ties, which both paths break towards the lower id.
    const logits = Float32Array.from({ length: B * V }, () => Math.round(r() * 40) / 8);
    // NaN ranks as −∞ (with the −∞ entries, by id), +∞ first; row 3 mostly NaN.
    logits.set([NaN, -Infinity, Infinity, NaN], 0);
    logits.fill(NaN, 3 * V, 3 * V + 290);
    logits[3 * V + 5] = -Infinity;
    for (const o of [{ temperature: 0, topK: 0, topP: 1 }, { temperature: 0.7, topK: 5, topP: 1 }, { temperature: 1.3, topK: 40, topP: 0.8 }]) {
      const width = candidateCount(o, V);
      assert.equal(width, o.temperature <= 0 ? 1 : o.topK);
      const c = T.tidy(() => candidatesOf(T.tensor(logits, [B, V], { backend }), width));
      for (let b = 0; b < B; b++) {
        for (let seed = 0; seed < 20; seed++) {
          const full = sampleToken(logits.subarray(b * V, (b + 1) * V), o, seededUniform(seed));
          const j = sampleToken(c.values.subarray(b * width, (b + 1) * width), o, seededUniform(seed));
          assert.equal(c.ids![b * width + j], full, `row ${b}, seed ${seed}, ${JSON.stringify(o)}`);
        }
      }
    }
    assert.equal(candidateCount({ temperature: 1, topK: 0, topP: 0.9 }, V), V);
    assert.equal(candidateCount({ temperature: 1, topK: V, topP: 1 }, V), V);
    assert.equal(candidateCount({ temperature: 1, topK: V + 5, topP: 1 }, V), V);
    assert.equal(candidateCount({ temperature: 1, topK: MAX_DEVICE_CANDIDATES + 1, topP: 1 }, 5000), 5000);
  });

  it('the cache uploads its lengths as the positions of a decode step when they change', () => {
    const model = smallGPT(backend);
    const cache = new KVCache(model.config, backend, 3, 10);
    try {
      cache.setLength(1, 4);
      assert.deepEqual(Array.from(cache.positions(3, 1).toArray()), [0, 4, 0]);
      cache.advance(1);
      cache.setLength(2, 7);
      assert.deepEqual(Array.from(cache.positions(3, 1).toArray()), [1, 5, 7]);
      assert.deepEqual(Array.from(T.tidy(() => cache.positions(3, 2).toArray())), [1, 2, 5, 6, 7, 8]);
      cache.setLength(2, 9);
      assert.throws(() => cache.positions(3, 2), /row 2 holds 9 tokens; 2 more exceed the cache of 10/);
    } finally {
      cache.dispose();
      model.dispose();
    }
  });

  it('a failed graph capture leaves the decode eager, with the same tokens', () => {
    // A backend whose captureGraph runs the step's work (as a capture records it), then fails.
    const failing = new Proxy(backend, {
      get(t, p, rcv) {
        if (p !== 'captureGraph') return Reflect.get(t, p, rcv);
        return (fn: () => void) => {
          fn();
          throw new Error('capture refused (test)');
        };
      },
    });
    const plain = smallGPT(backend), flaky = smallGPT(failing);
    try {
      const prompts = [[1, 2, 3], [7, 8, 9, 10, 11, 12]];
      for (const o of [{ ...greedy, maxTokens: 6 }, { temperature: 0.9, topK: 4, topP: 1, seed: 5, maxTokens: 6 }]) {
        const want = generateBatch(plain, prompts, o), got = generateBatch(flaky, prompts, o);
        assert.deepEqual(got.tokens, want.tokens);
        assert.equal(got.graphed, false);
        assert.match(got.graphError ?? '', /capture refused \(test\)/);
        assert.equal(want.graphError, null);
      }
    } finally {
      plain.dispose();
      flaky.dispose();
    }
  });
});

describe('inference: bad input and configuration', () => {
  const backend = getBackend(names[0]!);

  it('rejects an empty prompt, a prompt of context length, and ids outside the vocabulary', () => {
    const model = smallGPT(backend);
    try {
      const o = { ...greedy, maxTokens: 4 };
      assert.throws(() => generateBatch(model, [[]], o), /the prompt is empty/);
      assert.throws(() => generateBatch(model, [[1], []], o), /prompt 1 is empty/);
      assert.throws(() => generateBatch(model, [Array(24).fill(1)], o), /24 tokens but the context length is 24/);
      assert.throws(() => generateBatch(model, [[1, 40]], o), /token 40 at position 1 is outside the model's vocabulary \(0..39\)/);
      assert.throws(() => generateBatch(model, [[1]], { ...o, stop: ['x'] }), /need a decode function/);
      assert.throws(() => generateBatch(model, [[1]], { ...o, temperature: 1, topK: 2.5 }), /top-k must be an integer >= 0/);
      assert.throws(() => generateBatch(model, [[1]], { ...o, topP: 0 }), /top-p must be in \(0, 1\]/);
      assert.throws(() => generateBatch(model, [[1]], { ...o, temperature: -1 }), /temperature must be a finite number >= 0/);
      const cache = new KVCache(model.config, backend, 1, 4);
      try {
        assert.throws(() => model.forward(T.tensor([1, 2, 3, 4, 5], [1, 5], { dtype: 'i32', backend }), { cache }), /exceed the cache of 4/);
      } finally {
        cache.dispose();
      }
    } finally {
      model.dispose();
    }
  });

  it('MoE mode without a stored partition and with MoEfication disabled is an error; a stored partition is used as is', () => {
    const model = smallGPT(backend);
    try {
      assert.throws(() => prepareExperts(model, null, { moefy: false }), /no expert partition.*--no-moefy/);
      const state = { extra: { moe: { n_expert: 8 } } } as unknown as CheckpointState;
      assert.deepEqual(storedPartition(state), { n_expert: 8 });
      assert.throws(() => prepareExperts(model, storedPartition(state), { nExpert: 4 }), /stores a partition into 8 experts/);
      const ex = prepareExperts(model, storedPartition(state), { moefy: false });
      assert.equal(ex.source, 'checkpoint');
      assert.equal(ex.nExpert, 8);
      disposeExperts(ex);
      assert.equal(resolveTopK(96, { activeRatio: 0.25 }), 24);
      assert.throws(() => resolveTopK(8, { activeRatio: 0 }), /active ratio/);
    } finally {
      model.dispose();
    }
  });

  it('ideal cost model: MoE at ratio 1/4 reads fewer bytes and does fewer FLOPs than dense', () => {
    const c = makeConfig('gpt2-small', { vocab_size: 8192 });
    const ratio = decodeBytesPerToken(c, 1, 96, 64, false) / decodeBytesPerToken(c, 0.25, 96, 64, true);
    assert.ok(ratio > 1.7 && ratio < 2, `decode ideal ${ratio}`);
    const f = prefillFlopsPerToken(c, 1, 96, 512, false) / prefillFlopsPerToken(c, 0.25, 96, 512, true);
    assert.ok(f > 1.7 && f < 2, `prefill ideal ${f}`);
  });
});
