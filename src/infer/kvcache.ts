/**
 * The key/value cache of incremental decoding. Per layer, K and V buffers (B, H, Tmax, D): one
 * contiguous (Tmax, D) slice per (row, head), so decode attention streams each head's keys and values
 * sequentially and the native kernel parallelises over (row, head). Rows may hold different numbers of
 * tokens (`lengths`), which is how prompts of different lengths are batched: they are right-padded to a
 * common length for one prefill, then each row's length is set back to its own prompt length so that
 * decoding overwrites (and never attends to) the padding.
 */
import type { Backend } from '../backend/contract.js';
import type { GPTConfig } from '../nn/config.js';
import type { AttentionCache } from '../nn/gpt.js';
import * as T from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';

export class KVCache implements AttentionCache {
  /** Per layer, keys (B, H, Tmax, D). */
  readonly k: Tensor[] = [];
  /** Per layer, values (B, H, Tmax, D). */
  readonly v: Tensor[] = [];
  /** Tokens held per row (B); the next token of row b goes to position lengths[b]. */
  readonly lengths: Int32Array;

  /**
   * Allocates an empty cache for `batch` rows of up to `maxLen` tokens (default: the context length).
   * Throws if maxLen exceeds the context length (learned position embeddings end there).
   */
  constructor(readonly config: GPTConfig, backend: Backend, readonly batch: number, readonly maxLen = config.seq_len) {
    if (!Number.isInteger(batch) || batch < 1) throw new Error(`KVCache: batch must be a positive integer, got ${batch}`);
    if (!Number.isInteger(maxLen) || maxLen < 1 || maxLen > config.seq_len) {
      throw new Error(`KVCache: maxLen ${maxLen} is outside [1, context length ${config.seq_len}]`);
    }
    const H = config.n_head, D = config.d_model / H;
    for (let i = 0; i < config.n_layer; i++) {
      this.k.push(T.empty([batch, H, maxLen, D], backend).keep());
      this.v.push(T.empty([batch, H, maxLen, D], backend).keep());
    }
    this.lengths = new Int32Array(batch);
  }

  positions(B: number, Tn: number): Tensor {
    if (B !== this.batch) throw new Error(`KVCache: a batch of ${B} rows for a cache of ${this.batch}`);
    const pos = new Int32Array(B * Tn); // (B, T)
    for (let b = 0; b < B; b++) {
      if (this.lengths[b]! + Tn > this.maxLen) {
        throw new Error(`KVCache: row ${b} holds ${this.lengths[b]} tokens; ${Tn} more exceed the cache of ${this.maxLen} ` +
          `(context length ${this.config.seq_len})`);
      }
      for (let t = 0; t < Tn; t++) pos[b * Tn + t] = this.lengths[b]! + t;
    }
    return T.tensor(pos, [B, Tn], { dtype: 'i32', backend: this.k[0]!.backend });
  }

  attend(layer: number, qkv: Tensor): Tensor {
    return T.attentionCached(qkv, this.k[layer]!, this.v[layer]!, this.lengths, this.config.n_head);
  }

  advance(Tn: number): void {
    for (let b = 0; b < this.batch; b++) this.lengths[b]! += Tn;
  }

  /** Sets row b's length (e.g. back to its prompt length after a right-padded prefill). Throws if out of range. */
  setLength(b: number, n: number): void {
    if (!(b >= 0 && b < this.batch) || !Number.isInteger(n) || n < 0 || n > this.maxLen) {
      throw new Error(`KVCache.setLength: row ${b} / length ${n} outside [0, ${this.batch}) / [0, ${this.maxLen}]`);
    }
    this.lengths[b] = n;
  }

  /** Bytes the cache holds (K and V of every layer). */
  bytes(): number {
    return this.k.reduce((n, t) => n + 2 * t.size * 4, 0);
  }

  dispose(): void {
    for (const t of [...this.k, ...this.v]) t.dispose();
  }
}
