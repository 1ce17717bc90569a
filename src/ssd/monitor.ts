/**
 * Activation monitoring for SSD (method page §3.1–3.2): on a fixed probe set, the per-layer activation
 * ratio (share of FFN entries > 0) and the binary activation pattern 1[h > 0], and the similarity of
 * the pattern to the previous check: mean over layers and probe tokens of the Jaccard similarity of
 * the active-neuron sets (default), or the adjusted Rand index of consecutive MoEfication partitions.
 * A check costs one forward pass over the probe set (plus k-means for the ARI metric).
 */
import type { GPT } from '../nn/gpt.js';
import { ffnHidden, ffnOut } from '../nn/ffn.js';
import { balancedKMeans } from '../moefy/kmeans.js';
import { backendDot, routerName } from '../moefy/model.js';
import { capturedActivationMass, expertLoad, route } from '../nn/moe.js';
import * as T from '../tensor/index.js';

export interface CheckResult {
  /** Per-layer share of FFN activations > 0 over the probe tokens. */
  activationRatio: number[];
  /** Mean over layers. */
  meanActivationRatio: number;
  /** Per-layer similarity to the previous check (null at the first check). */
  similarity: number[] | null;
  /** Mean over layers (null at the first check). */
  meanSimilarity: number | null;
  /** Wall time of the check in seconds. */
  seconds: number;
}

/** Bit-packed activation patterns of one check: per layer, (tokens, ceil(d_ff / 32)) u32 words. */
export type Patterns = Uint32Array[];

/** Jaccard similarity |A∩B| / |A∪B| of two packed sets (1 when both are empty). */
export function jaccard(a: Uint32Array, b: Uint32Array, offset: number, words: number): number {
  let inter = 0, union = 0;
  for (let w = offset; w < offset + words; w++) {
    inter += popcount(a[w]! & b[w]!);
    union += popcount(a[w]! | b[w]!);
  }
  return union === 0 ? 1 : inter / union;
}

function popcount(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (Math.imul((x + (x >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24);
}

/**
 * Adjusted Rand index of two partitions of the same items (Hubert & Arabie 1985): 1 for identical
 * partitions (up to relabelling), about 0 for independent ones.
 */
export function adjustedRandIndex(a: Int32Array, b: Int32Array): number {
  if (a.length !== b.length) throw new Error(`adjustedRandIndex: partitions of ${a.length} and ${b.length} items`);
  const n = a.length;
  const ka = Math.max(...a) + 1, kb = Math.max(...b) + 1;
  const table = new Float64Array(ka * kb), ra = new Float64Array(ka), rb = new Float64Array(kb);
  for (let i = 0; i < n; i++) {
    table[a[i]! * kb + b[i]!]!++;
    ra[a[i]!]!++;
    rb[b[i]!]!++;
  }
  const c2 = (x: number) => (x * (x - 1)) / 2;
  const sumIJ = table.reduce((s, x) => s + c2(x), 0), sumA = ra.reduce((s, x) => s + c2(x), 0), sumB = rb.reduce((s, x) => s + c2(x), 0);
  const expected = (sumA * sumB) / c2(n), max = (sumA + sumB) / 2;
  return max === expected ? 1 : (sumIJ - expected) / (max - expected);
}

export interface MonitorOptions {
  /** Probe windows: token ids (B·T) and the shape. */
  probe: { ids: Int32Array; batch: number; seqLen: number };
  metric: 'jaccard' | 'ari';
  /** Experts for the ARI metric's MoEfication. */
  nExpert: number;
  /** Experts per token, for the MoE report. */
  topK: number;
}

/** Runs checks on a fixed probe set and remembers the previous one. */
export class ActivationMonitor {
  private prevPatterns: Patterns | null = null;
  private prevPartitions: Int32Array[] | null = null;

  constructor(readonly o: MonitorOptions) {}

  /** Forward pass over the probe set recording each layer's FFN activations (dense model). */
  check(model: GPT): CheckResult {
    const t0 = performance.now();
    const c = model.config, words = Math.ceil(c.d_ff / 32);
    const N = this.o.probe.batch * this.o.probe.seqLen;
    const patterns: Patterns = [];
    const ratio: number[] = [];
    if (model.ffnOverride) throw new Error('ActivationMonitor.check: the model is in MoE mode; checks run on the dense model');
    model.ffnOverride = (layer, x, p) => {
      const h = ffnHidden(x, p, c.activation); // (N, d_ff)
      const packed = T.activationBits(h).toArray() as Int32Array; // (N, words)
      const bits = new Uint32Array(packed.buffer, packed.byteOffset, packed.length);
      let active = 0;
      for (let w = 0; w < bits.length; w++) active += popcount(bits[w]!);
      patterns[layer] = bits;
      ratio[layer] = active / (N * c.d_ff);
      return ffnOut(h, p);
    };
    try {
      T.tidy(() => T.noGrad(() => {
        model.forward(T.tensor(this.o.probe.ids, [this.o.probe.batch, this.o.probe.seqLen], { dtype: 'i32', backend: model.backend }));
      }));
    } finally {
      model.ffnOverride = null;
    }
    let similarity: number[] | null = null;
    if (this.o.metric === 'jaccard') {
      if (this.prevPatterns) {
        similarity = patterns.map((cur, l) => {
          let s = 0;
          for (let n = 0; n < N; n++) s += jaccard(cur, this.prevPatterns![l]!, n * words, words);
          return s / N;
        });
      }
      this.prevPatterns = patterns;
    } else {
      const { dot, dispose } = backendDot(model.backend);
      let parts: Int32Array[];
      try {
        parts = Array.from({ length: c.n_layer }, (_, l) => balancedKMeans(model.ffnParams(l).w_in.toArray() as Float32Array,
          c.d_ff, c.d_model, { nExpert: this.o.nExpert, seed: l, maxIter: 20, dot }).assignment);
      } finally {
        dispose();
      }
      if (this.prevPartitions) similarity = parts.map((p, l) => adjustedRandIndex(p, this.prevPartitions![l]!));
      this.prevPartitions = parts;
    }
    const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
    return {
      activationRatio: ratio, meanActivationRatio: mean(ratio), similarity, meanSimilarity: similarity ? mean(similarity) : null,
      seconds: (performance.now() - t0) / 1000,
    };
  }

  /**
   * Runs the probe set through the model in MoE mode and reports, per layer, the tokens routed to each
   * expert and the share of positive activation mass the selected experts hold (1 = nothing dropped).
   */
  moeReport(model: GPT, nExpert: number): { load: number[][]; capturedMass: number[] } {
    const moe = model.ffnOverride;
    if (!moe) throw new Error('ActivationMonitor.moeReport: the model is not in MoE mode');
    const load: number[][] = [], capturedMass: number[] = [];
    model.ffnOverride = (layer, x, p) => {
      const { routing } = route(x, model.p(routerName(layer)), this.o.topK);
      load[layer] = [...expertLoad(routing)];
      capturedMass[layer] = capturedActivationMass(x, p, routing, nExpert);
      return moe(layer, x, p);
    };
    try {
      T.tidy(() => T.noGrad(() => {
        model.forward(T.tensor(this.o.probe.ids, [this.o.probe.batch, this.o.probe.seqLen], { dtype: 'i32', backend: model.backend }));
      }));
    } finally {
      model.ffnOverride = moe;
    }
    return { load, capturedMass };
  }

  /**
   * Follows a permutation of each layer's neurons (MoEfication: perm[new] = old), so the next check
   * compares the same neurons.
   */
  permute(perms: Int32Array[]): void {
    const remap = (a: Int32Array | Uint32Array, perm: Int32Array, rows: number, bitsPacked: boolean) => {
      const n = perm.length;
      if (!bitsPacked) return Int32Array.from(perm, (old) => a[old]!);
      const words = Math.ceil(n / 32), out = new Uint32Array(a.length);
      for (let r = 0; r < rows; r++) {
        for (let i = 0; i < n; i++) {
          const old = perm[i]!;
          if ((a[r * words + (old >>> 5)]! >>> (old & 31)) & 1) out[r * words + (i >>> 5)]! |= 1 << (i & 31);
        }
      }
      return out;
    };
    const N = this.o.probe.batch * this.o.probe.seqLen;
    if (this.prevPatterns) this.prevPatterns = this.prevPatterns.map((p, l) => remap(p, perms[l]!, N, true) as Uint32Array);
    if (this.prevPartitions) this.prevPartitions = this.prevPartitions.map((p, l) => remap(p, perms[l]!, 1, false) as Int32Array);
  }

  /** The previous patterns (for checkpoints), base64 per layer. */
  state(): { patterns: string[] | null; partitions: string[] | null } {
    const b64 = (a: Uint32Array | Int32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64');
    return { patterns: this.prevPatterns?.map(b64) ?? null, partitions: this.prevPartitions?.map(b64) ?? null };
  }

  restore(s: { patterns: string[] | null; partitions: string[] | null }): void {
    const dec = (x: string) => { const b = Buffer.from(x, 'base64'); return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength); };
    this.prevPatterns = s.patterns?.map((x) => new Uint32Array(dec(x))) ?? null;
    this.prevPartitions = s.partitions?.map((x) => new Int32Array(dec(x))) ?? null;
  }
}
