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
  /** Tokens held per row (B): the next token of row b goes to position len[b] (changed through setLength / advance). */
  private readonly len: Int32Array;
  /** Device copy of `lengths`, (B, 1) i32: where each row's new tokens start (attention and decode positions). */
  private readonly start: Tensor;
  private stale = false;

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
    this.len = new Int32Array(batch);
    this.start = T.tensor(this.len, [batch, 1], { dtype: 'i32', backend }).keep();
  }

  /** Tokens held per row (B); the next token of row b goes to position lengths[b]. */
  get lengths(): ArrayLike<number> {
    return this.len;
  }

  /**
   * Positions of Tn new tokens per row, (B, Tn) i32. For one new token they are the device copy of
   * `lengths` itself (uploaded when stale), so a captured decode step reads each replay's positions.
   */
  positions(B: number, Tn: number): Tensor {
    if (B !== this.batch) throw new Error(`KVCache: a batch of ${B} rows for a cache of ${this.batch}`);
    this.checkRoom(Tn);
    this.syncPositions();
    if (Tn === 1) return this.start;
    const pos = new Int32Array(B * Tn); // (B, T)
    for (let b = 0; b < B; b++) for (let t = 0; t < Tn; t++) pos[b * Tn + t] = this.len[b]! + t;
    return T.tensor(pos, [B, Tn], { dtype: 'i32', backend: this.k[0]!.backend });
  }

  /** Throws unless every row has room for Tn more tokens. */
  checkRoom(Tn: number): void {
    for (let b = 0; b < this.batch; b++) {
      if (this.len[b]! + Tn > this.maxLen) {
        throw new Error(`KVCache: row ${b} holds ${this.len[b]} tokens; ${Tn} more exceed the cache of ${this.maxLen} ` +
          `(context length ${this.config.seq_len})`);
      }
    }
  }

  /** Uploads `lengths` to their device copy if they changed since the last upload (asynchronous). */
  syncPositions(): void {
    if (!this.stale) return;
    this.start.set(this.len);
    this.stale = false;
  }

  attend(layer: number, qkv: Tensor): Tensor {
    this.syncPositions();
    return T.attentionCached(qkv, this.k[layer]!, this.v[layer]!, this.start, this.config.n_head);
  }

  advance(Tn: number): void {
    for (let b = 0; b < this.batch; b++) this.len[b]! += Tn;
    this.stale = true;
  }

  /** Sets row b's length (e.g. back to its prompt length after a right-padded prefill). Throws if out of range. */
  setLength(b: number, n: number): void {
    if (!(b >= 0 && b < this.batch) || !Number.isInteger(n) || n < 0 || n > this.maxLen) {
      throw new Error(`KVCache.setLength: row ${b} / length ${n} outside [0, ${this.batch}) / [0, ${this.maxLen}]`);
    }
    this.len[b] = n;
    this.stale = true;
  }

  /** Bytes the cache holds (K and V of every layer). */
  bytes(): number {
    return this.k.reduce((n, t) => n + 2 * t.size * 4, 0);
  }

  dispose(): void {
    for (const t of [...this.k, ...this.v, this.start]) t.dispose();
  }
}
