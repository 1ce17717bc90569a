/**
 * GPT decoder (Radford et al. 2019, as in nanoGPT): token + learned position embeddings, pre-LayerNorm
 * blocks of causal multi-head attention and an FFN, a final LayerNorm, and an output layer tied to the
 * token embedding. Parameters are plain data: a map from stable names (`h.3.mlp.w_in`) to tensors.
 */
import type { Backend } from '../backend/contract.js';
import * as T from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import type { GPTConfig } from './config.js';
import { ffnDense, type FFNParams } from './ffn.js';
import { normalArray, subSeed } from './init.js';

/** Per-layer FFN override (the MoE FFN of a sparse phase): x (N, d_model) -> (N, d_model). */
export type FFNForward = (layer: number, x: Tensor, p: FFNParams) => Tensor;

/**
 * The attention state of incremental decoding (implemented by `infer/kvcache.ts`): positions of the
 * new tokens, attention through cached keys/values, and the commit of the new tokens.
 */
export interface AttentionCache {
  /**
   * Positions of T new tokens per row, (B, T) i32. Throws if they do not fit the cache. For T = 1 this may
   * be the cache's own tensor (its device copy of the lengths, rewritten as they change): neither dispose
   * nor keep it.
   */
  positions(B: number, T: number): Tensor;
  /** Causal attention of layer `layer`'s new tokens over the cache (appending their k, v): qkv (B, T, 3·d_model) -> (B, T, d_model). */
  attend(layer: number, qkv: Tensor): Tensor;
  /** Counts T new tokens per row as cached (after the last layer). */
  advance(T: number): void;
}

export interface ForwardOptions {
  /** Next-token targets (B, T) i32; when given, the mean cross-entropy is returned as `loss`. */
  targets?: Tensor;
  /** Dropout is applied only in training mode. */
  train?: boolean;
  /** Seed of this step's dropout masks. */
  seed?: number;
  /** Incremental decoding: the tokens continue the cached ones (positions offset, attention over the cache). */
  cache?: AttentionCache;
}

export class GPT {
  readonly params = new Map<string, Tensor>();
  /** Replaces the dense FFN of every layer when set (used by sparse phases). */
  ffnOverride: FFNForward | null = null;

  /** Initialises parameters: N(0, 0.02), residual output projections scaled by 1/sqrt(2·n_layer). */
  constructor(readonly config: GPTConfig, readonly backend: Backend, seed = 1337) {
    const c = config;
    const add = (name: string, shape: number[], init: 'normal' | 'proj' | 'zeros' | 'ones') => {
      const n = shape.reduce((a, b) => a * b, 1);
      const std = init === 'proj' ? 0.02 / Math.sqrt(2 * c.n_layer) : 0.02;
      const data = init === 'zeros' ? new Float32Array(n) : init === 'ones' ? new Float32Array(n).fill(1)
        : normalArray(n, std, subSeed(seed, name));
      this.params.set(name, T.parameter(name, data, shape, backend));
    };
    add('wte', [c.vocab_size, c.d_model], 'normal');
    add('wpe', [c.seq_len, c.d_model], 'normal');
    for (let i = 0; i < c.n_layer; i++) {
      const h = `h.${i}`;
      add(`${h}.ln_1.weight`, [c.d_model], 'ones');
      add(`${h}.ln_1.bias`, [c.d_model], 'zeros');
      add(`${h}.attn.w_qkv`, [3 * c.d_model, c.d_model], 'normal');
      add(`${h}.attn.b_qkv`, [3 * c.d_model], 'zeros');
      add(`${h}.attn.w_proj`, [c.d_model, c.d_model], 'proj');
      add(`${h}.attn.b_proj`, [c.d_model], 'zeros');
      add(`${h}.ln_2.weight`, [c.d_model], 'ones');
      add(`${h}.ln_2.bias`, [c.d_model], 'zeros');
      add(`${h}.mlp.w_in`, [c.d_ff, c.d_model], 'normal');
      add(`${h}.mlp.w_out`, [c.d_model, c.d_ff], 'proj');
      if (c.ffn_bias) {
        add(`${h}.mlp.b_in`, [c.d_ff], 'zeros');
        add(`${h}.mlp.b_out`, [c.d_model], 'zeros');
      }
    }
    add('ln_f.weight', [c.d_model], 'ones');
    add('ln_f.bias', [c.d_model], 'zeros');
  }

  /** The named parameter; throws if absent. */
  p(name: string): Tensor {
    const t = this.params.get(name);
    if (!t) throw new Error(`GPT: no parameter '${name}'`);
    return t;
  }

  /** The FFN parameters of layer i. */
  ffnParams(i: number): FFNParams {
    const h = `h.${i}.mlp`;
    return { w_in: this.p(`${h}.w_in`), b_in: this.params.get(`${h}.b_in`) ?? null, w_out: this.p(`${h}.w_out`),
      b_out: this.params.get(`${h}.b_out`) ?? null };
  }

  /** Number of parameters (the tied output layer counted once). */
  numParams(): number {
    let n = 0;
    for (const t of this.params.values()) n += t.size;
    return n;
  }

  /**
   * ids (B, T) i32 -> logits (B, T, vocab_size), and the mean next-token cross-entropy (nats) when
   * targets are given. With targets (training and evaluation) the logits and their gradient may be kept
   * at bf16 precision, as autocast computes them (cuda in bf16: the loss is that of bf16 logits, and the
   * logits returned hold bf16 values); without, the logits keep the backend's full precision.
   * Throws if T exceeds the context length (or, with a cache, the cache's room).
   */
  forward(ids: Tensor, opts: ForwardOptions = {}): { logits: Tensor; loss: Tensor | null } {
    // With targets the logits feed the loss, and their gradient the output layer's products
    // (MatmulOpts.bf16Out, crossEntropy's bf16Grad).
    const logits = this.logits(this.hidden(ids, opts), opts.targets !== undefined); // (B, T, vocab_size)
    const loss = opts.targets ? T.crossEntropy(logits, opts.targets, { bf16Grad: true }) : null;
    return { logits, loss };
  }

  /** The final LayerNorm's output: ids (B, T) i32 -> (B, T, d_model). Options as for `forward` (targets unused). */
  hidden(ids: Tensor, opts: ForwardOptions = {}): Tensor {
    const c = this.config;
    if (ids.rank !== 2) throw new Error(`GPT.forward: ids must be (B, T), got [${ids.shape}]`);
    const [B, Tn] = ids.shape as [number, number];
    if (Tn > c.seq_len) throw new Error(`GPT.forward: sequence of ${Tn} tokens exceeds the context length ${c.seq_len}`);
    const drop = (x: Tensor, site: number) =>
      opts.train && c.dropout > 0 ? T.dropout(x, c.dropout, subSeed(opts.seed ?? 0, `drop${site}`)) : x;
    const pos = opts.cache ? opts.cache.positions(B, Tn) // (B, T)
      : T.tensor(Int32Array.from({ length: Tn }, (_, t) => t), [Tn], { dtype: 'i32', backend: this.backend });
    let x = T.add(T.embedding(this.p('wte'), ids), T.embedding(this.p('wpe'), pos)); // (B, T, d_model)
    x = drop(x, 0);
    for (let i = 0; i < c.n_layer; i++) {
      const h = `h.${i}`;
      // The normalised inputs of the attention and FFN feed their input products only (bf16Out).
      const a = T.layerNorm(x, this.p(`${h}.ln_1.weight`), this.p(`${h}.ln_1.bias`), 1e-5, { bf16Out: true });
      // (B, T, 3·d_model); at bf16 precision where the backend allows (LinearOpts.bf16Out) when only
      // the attention kernel reads it (the KV cache copies it in f32).
      const qkv = T.linear(a, this.p(`${h}.attn.w_qkv`), this.p(`${h}.attn.b_qkv`), { bf16Out: !opts.cache });
      const att = opts.cache ? opts.cache.attend(i, qkv) : T.attention(qkv, c.n_head, true); // (B, T, d_model)
      const proj = T.linear(att, this.p(`${h}.attn.w_proj`), this.p(`${h}.attn.b_proj`)); // (B, T, d_model)
      x = T.add(x, drop(proj, 2 * i + 1));
      const m = T.reshape(T.layerNorm(x, this.p(`${h}.ln_2.weight`), this.p(`${h}.ln_2.bias`), 1e-5, { bf16Out: true }), [B * Tn, c.d_model]);
      const f = this.ffnOverride ? this.ffnOverride(i, m, this.ffnParams(i)) : ffnDense(m, this.ffnParams(i), c.activation);
      x = T.add(x, drop(T.reshape(f, [B, Tn, c.d_model]), 2 * i + 2));
    }
    opts.cache?.advance(Tn);
    return T.layerNorm(x, this.p('ln_f.weight'), this.p('ln_f.bias'));
  }

  /**
   * The output layer tied to the token embedding: hidden (..., d_model) -> logits (..., vocab_size); with
   * bf16Out they may be kept at bf16 precision (MatmulOpts.bf16Out).
   */
  logits(hidden: Tensor, bf16Out = false): Tensor {
    return T.matmul(hidden, this.p('wte'), { transB: true, bf16Out });
  }

  /** Parameters that get no weight decay: biases, LayerNorm weights, embeddings. */
  static noDecay(name: string): boolean {
    return name.endsWith('.bias') || name.includes('.b_') || name.includes('ln_') || name === 'wte' || name === 'wpe';
  }

  /** Frees all parameters (and their gradients). */
  dispose(): void {
    for (const t of this.params.values()) t.dispose();
  }
}

/**
 * Model FLOPs per trained token (forward + backward), PaLM appendix B: 6·N + 12·n_layer·d_model·T,
 * N = non-embedding parameters plus the output layer.
 */
export function flopsPerToken(c: GPTConfig, seqLen = c.seq_len): number {
  const perLayer = 4 * c.d_model * c.d_model + 2 * c.d_model * c.d_ff;
  const n = c.n_layer * perLayer + c.vocab_size * c.d_model;
  return 6 * n + 12 * c.n_layer * c.d_model * seqLen;
}
