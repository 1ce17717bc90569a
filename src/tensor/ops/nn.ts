/** Neural-network ops with fused kernels: softmax, LayerNorm, embedding, attention, cross-entropy. */
import { record } from '../autograd.js';
import type { Tensor } from '../tensor.js';
import { shapeSize } from '../tensor.js';
import { backendOf, expectDtype, expectRank, fmt, out } from './util.js';

/** Softmax over the last axis. */
export function softmax(x: Tensor): Tensor {
  const b = backendOf('softmax', x);
  expectDtype('softmax', x, 'f32');
  const cols = x.shape[x.rank - 1] ?? 1, rows = x.size / Math.max(cols, 1);
  const y = out(x.shape, b);
  b.softmax(x.buf('softmax'), y.buf('softmax'), rows, cols);
  return record(y, 'softmax', [x], (g) => {
    const gx = out(x.shape, b);
    b.softmaxBackward(y.buf('softmax'), g.buf('softmax'), gx.buf('softmax'), rows, cols);
    return [gx];
  });
}

/**
 * LayerNorm over the last axis (Ba et al. 2016): x (..., C), gamma (C), beta (C) -> (..., C).
 * Biased variance, `eps` inside the square root. With `bf16Out` (an output that only feeds products)
 * a backend may keep the output at bf16 precision (Backend.layerNorm).
 */
export function layerNorm(x: Tensor, gamma: Tensor, beta: Tensor, eps = 1e-5, opts: { bf16Out?: boolean } = {}): Tensor {
  const b = backendOf('layerNorm', x, gamma, beta);
  const C = x.shape[x.rank - 1]!;
  for (const [t, w] of [[x, 'x'], [gamma, 'gamma'], [beta, 'beta']] as const) expectDtype('layerNorm', t, 'f32', w);
  if (gamma.size !== C || beta.size !== C) {
    throw new Error(`layerNorm: gamma ${fmt(gamma)} and beta ${fmt(beta)} must have ${C} elements for x ${fmt(x)}`);
  }
  const rows = x.size / C;
  const y = out(x.shape, b), mu = out([rows], b), rstd = out([rows], b);
  b.layerNorm(x.buf('layerNorm'), gamma.buf('layerNorm'), beta.buf('layerNorm'), y.buf('layerNorm'),
    mu.buf('layerNorm'), rstd.buf('layerNorm'), rows, C, eps, opts.bf16Out ?? false);
  return record(y, 'layerNorm', [x, gamma, beta], (g) => {
    const gx = out(x.shape, b), gg = out(gamma.shape, b), gb = out(beta.shape, b);
    b.layerNormBackward(x.buf('layerNorm'), gamma.buf('layerNorm'), mu.buf('layerNorm'), rstd.buf('layerNorm'),
      g.buf('layerNorm'), gx.buf('layerNorm'), gg.buf('layerNorm'), gb.buf('layerNorm'), rows, C);
    return [gx, gg, gb];
  });
}

/**
 * Embedding lookup: table (V, C), ids i32 (...) -> (..., C). The backward scatter-adds into the table
 * gradient. Throws if an id is outside [0, V).
 */
export function embedding(table: Tensor, ids: Tensor): Tensor {
  const b = backendOf('embedding', table, ids);
  expectRank('embedding', table, 2, 'table');
  expectDtype('embedding', table, 'f32', 'table');
  expectDtype('embedding', ids, 'i32', 'ids');
  const [V, C] = [table.shape[0]!, table.shape[1]!];
  const y = out([...ids.shape, C], b);
  b.embedding(table.buf('embedding'), ids.buf('embedding'), y.buf('embedding'), ids.size, V, C);
  return record(y, 'embedding', [table, ids], (g) => {
    const gt = out(table.shape, b);
    b.embeddingBackward(g.buf('embedding'), ids.buf('embedding'), gt.buf('embedding'), ids.size, V, C);
    return [gt, null];
  });
}

/**
 * Fused multi-head self-attention (FlashAttention-style on `cpu`): qkv (B, T, 3·H·D) packed as
 * (B, T, 3, H, D) -> (B, T, H·D), softmax(q·kᵀ / sqrt(D)) · v per head; `causal` masks future keys.
 */
export function attention(qkv: Tensor, nHead: number, causal: boolean): Tensor {
  const b = backendOf('attention', qkv);
  expectRank('attention', qkv, 3, 'qkv');
  expectDtype('attention', qkv, 'f32', 'qkv');
  const [B, T, C3] = qkv.shape as [number, number, number];
  if (C3 % (3 * nHead) !== 0) throw new Error(`attention: last axis ${C3} of qkv ${fmt(qkv)} is not 3 · n_head (${nHead}) · d_head`);
  const H = nHead, D = C3 / (3 * H), scale = 1 / Math.sqrt(D);
  const y = out([B, T, H * D], b), lse = out([B, H, T], b);
  b.attention(qkv.buf('attention'), y.buf('attention'), lse.buf('attention'), B, T, H, D, causal, scale);
  return record(y, 'attention', [qkv], (g) => {
    const gq = out(qkv.shape, b);
    b.attentionBackward(qkv.buf('attention'), y.buf('attention'), lse.buf('attention'), g.buf('attention'),
      gq.buf('attention'), B, T, H, D, causal, scale);
    return [gq];
  });
}

/**
 * Causal attention of new tokens over a KV cache (inference only: records no gradient).
 * qkv (B, T, 3·H·D) packed as (B, T, 3, H, D) holds T new tokens per row, row b's at positions
 * pos[b] .. pos[b] + T − 1 (`pos`: i32 with B elements, on the same backend); their k and v are
 * written into kCache and vCache (B, H, Tmax, D) in place,
 * then each new token attends to the cached keys 0 .. its position. Returns (B, T, H·D).
 * Throws if a row's new tokens do not fit the cache, or if the shapes disagree.
 */
export function attentionCached(qkv: Tensor, kCache: Tensor, vCache: Tensor, pos: Tensor, nHead: number): Tensor {
  const b = backendOf('attentionCached', qkv, kCache, vCache, pos);
  expectDtype('attentionCached', pos, 'i32', 'pos');
  if (pos.size !== qkv.shape[0]) throw new Error(`attentionCached: ${pos.size} positions for a batch of ${qkv.shape[0]}`);
  expectRank('attentionCached', qkv, 3, 'qkv');
  for (const [t, w] of [[qkv, 'qkv'], [kCache, 'kCache'], [vCache, 'vCache']] as const) expectDtype('attentionCached', t, 'f32', w);
  const [B, T, C3] = qkv.shape as [number, number, number];
  const H = nHead, D = C3 / (3 * H), Tmax = kCache.shape[2]!;
  for (const [c, w] of [[kCache, 'kCache'], [vCache, 'vCache']] as const) {
    if (c.rank !== 4 || c.shape[0] !== B || c.shape[1] !== H || c.shape[2] !== Tmax || c.shape[3] !== D) {
      throw new Error(`attentionCached: ${w} ${fmt(c)} must be [${B}, ${H}, Tmax, ${D}] for qkv ${fmt(qkv)} and ${H} heads`);
    }
  }
  const y = out([B, T, H * D], b);
  b.attentionCached(qkv.buf('attentionCached'), kCache.buf('attentionCached'), vCache.buf('attentionCached'),
    y.buf('attentionCached'), pos.buf('attentionCached'), B, T, H, D, Tmax, 1 / Math.sqrt(D));
  return y;
}

/**
 * Mean softmax cross-entropy over rows with a target (targets of −1 are ignored):
 * logits (..., V) f32, targets (...) i32 -> a scalar (nats). Fused: the softmax is never stored.
 * With `bf16Grad` (the logits' gradient only feeds products, as the output layer's does) a backend may
 * keep that gradient at bf16 precision (Backend.crossEntropyBackward's bf16Out).
 * Throws if a target is outside [−1, V) or no row has a target.
 */
export function crossEntropy(logits: Tensor, targets: Tensor, opts: { bf16Grad?: boolean } = {}): Tensor {
  const b = backendOf('crossEntropy', logits, targets);
  expectDtype('crossEntropy', logits, 'f32', 'logits');
  expectDtype('crossEntropy', targets, 'i32', 'targets');
  const V = logits.shape[logits.rank - 1]!, N = shapeSize(logits.shape.slice(0, -1));
  if (targets.size !== N) throw new Error(`crossEntropy: targets ${fmt(targets)} do not match logits ${fmt(logits)}`);
  const losses = out([N], b), lse = out([N], b);
  b.crossEntropy(logits.buf('crossEntropy'), targets.buf('crossEntropy'), losses.buf('crossEntropy'), lse.buf('crossEntropy'), N, V);
  const counted = countTargets(targets);
  if (counted === 0) throw new Error('crossEntropy: every target is −1 (ignored); nothing to average');
  const loss = out([], b);
  b.reduceSum(losses.buf('crossEntropy'), loss.buf('crossEntropy'), 1, N, 1);
  b.affine(loss.buf('crossEntropy'), loss.buf('crossEntropy'), 1 / counted, 0);
  losses.dispose();
  return record(loss, 'crossEntropy', [logits, targets], (g) => {
    const gl = out([N], b);
    // d mean / d loss_n = g / counted for every row (ignored rows get zero in the kernel).
    b.copyStrided(g.buf('crossEntropy'), 0, [0], gl.buf('crossEntropy'), 0, [1], [N], false);
    b.affine(gl.buf('crossEntropy'), gl.buf('crossEntropy'), 1 / counted, 0);
    const glogits = out(logits.shape, b);
    b.crossEntropyBackward(logits.buf('crossEntropy'), targets.buf('crossEntropy'), lse.buf('crossEntropy'),
      gl.buf('crossEntropy'), glogits.buf('crossEntropy'), N, V, opts.bf16Grad ?? false);
    return [glogits, null];
  });
}

function countTargets(targets: Tensor): number {
  const t = targets.toArray();
  let n = 0;
  for (let i = 0; i < t.length; i++) if (t[i] !== -1) n++;
  return n;
}
