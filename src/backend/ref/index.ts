/**
 * The `ref` backend: plain TypeScript kernels, written for reading, not speed. Every other backend is
 * tested against it. With `{ f64: true }` all floating-point buffers are stored and computed in
 * float64, which the finite-difference gradient checks use.
 */
import type { AdamWArgs, Backend, BinaryOp, Buf, DType, GroupedMatmulArgs, HostArray, MatmulArgs, UnaryOp } from '../contract.js';
import { checkCachePositions, checkMatmulEpilogue, checkMatmulOperands, DTYPE_BYTES } from '../contract.js';
import { uniform } from '../rng.js';
import { groupedMatmulByCopies } from '../grouped-rows.js';
import { checkExpertBuffers, checkGroupedEpilogue, checkProblems, groupedEpilogue, groupExperts, resolveSegments } from '../segments.js';
import { roundBf16 } from './bf16.js';

type F = Float32Array | Float64Array;

class RefBuf implements Buf {
  freed = false;
  constructor(readonly dtype: DType, readonly size: number, readonly data: F | Int32Array) {}
}

const GELU_C = Math.sqrt(2 / Math.PI);

function geluTanhArg(x: number): number {
  return GELU_C * (x + 0.044715 * x * x * x);
}

/** Creates a `ref` backend; `f64` stores floating-point buffers in float64. */
export function createRefBackend(opts: { f64?: boolean } = {}): RefBackend {
  return new RefBackend(opts.f64 ?? false);
}

export class RefBackend implements Backend {
  readonly name: string;
  private live = 0;
  private liveBytes = 0;

  constructor(private readonly f64: boolean) {
    this.name = f64 ? 'ref-f64' : 'ref';
  }

  private f(b: Buf): F {
    const r = this.check(b);
    if (r.dtype === 'i32') throw new Error(`ref: expected a floating-point buffer, got i32 (size ${r.size})`);
    return r.data as F;
  }
  private i(b: Buf): Int32Array {
    const r = this.check(b);
    if (r.dtype !== 'i32') throw new Error(`ref: expected an i32 buffer, got ${r.dtype} (size ${r.size})`);
    return r.data as Int32Array;
  }
  private check(b: Buf): RefBuf {
    if (!(b instanceof RefBuf)) throw new Error(`ref: buffer belongs to another backend`);
    if (b.freed) throw new Error(`ref: use of a freed buffer (${b.dtype}, size ${b.size})`);
    return b;
  }

  alloc(dtype: DType, size: number): Buf {
    if (!Number.isInteger(size) || size < 0) throw new Error(`ref.alloc: bad size ${size}`);
    const data = dtype === 'i32' ? new Int32Array(size) : this.f64 ? new Float64Array(size) : new Float32Array(size);
    this.live++;
    this.liveBytes += size * DTYPE_BYTES[dtype];
    return new RefBuf(dtype, size, data);
  }
  free(buf: Buf): void {
    const b = this.check(buf);
    b.freed = true;
    this.live--;
    this.liveBytes -= b.size * DTYPE_BYTES[b.dtype];
  }
  upload(buf: Buf, data: ArrayLike<number>): void {
    const b = this.check(buf);
    if (data.length !== b.size) throw new Error(`ref.upload: ${data.length} values for a buffer of ${b.size}`);
    if (b.dtype === 'bf16') for (let i = 0; i < b.size; i++) b.data[i] = roundBf16(data[i]!);
    else b.data.set(data);
  }
  download(buf: Buf): HostArray {
    const b = this.check(buf);
    return b.dtype === 'i32' ? Int32Array.from(b.data) : Float32Array.from(b.data);
  }
  /** The buffer's values at full storage precision (float64 in f64 mode), for gradient checks. */
  downloadF64(buf: Buf): Float64Array {
    return Float64Array.from(this.check(buf).data);
  }
  memoryStats() {
    return { liveBuffers: this.live, liveBytes: this.liveBytes };
  }

  fill(out: Buf, value: number): void {
    const b = this.check(out);
    b.data.fill(b.dtype === 'bf16' ? roundBf16(value) : value);
  }
  cast(x: Buf, out: Buf): void {
    const s = this.check(x), d = this.check(out);
    if (s.size !== d.size) throw new Error(`ref.cast: sizes ${s.size} and ${d.size} differ`);
    for (let i = 0; i < s.size; i++) d.data[i] = d.dtype === 'bf16' ? roundBf16(s.data[i]!) : s.data[i]!;
  }
  copyStrided(src: Buf, srcOffset: number, srcStrides: number[], dst: Buf, dstOffset: number,
    dstStrides: number[], shape: number[], accumulate: boolean): void {
    const s = this.check(src).data, d = this.check(dst).data;
    forEachIndex(shape, (idx) => {
      let si = srcOffset, di = dstOffset;
      for (let a = 0; a < shape.length; a++) {
        si += idx[a]! * srcStrides[a]!;
        di += idx[a]! * dstStrides[a]!;
      }
      d[di] = accumulate ? d[di]! + s[si]! : s[si]!;
    });
  }

  unary(op: UnaryOp, x: Buf, out: Buf): void {
    const a = this.f(x), o = this.f(out);
    for (let i = 0; i < a.length; i++) o[i] = unaryFn(op, a[i]!);
  }
  unaryBackward(op: UnaryOp, x: Buf, gy: Buf, gx: Buf): void {
    const a = this.f(x), g = this.f(gy), o = this.f(gx);
    for (let i = 0; i < a.length; i++) o[i] = g[i]! * unaryDeriv(op, a[i]!);
  }
  affine(x: Buf, out: Buf, scale: number, shift: number): void {
    const a = this.f(x), o = this.f(out);
    for (let i = 0; i < a.length; i++) o[i] = a[i]! * scale + shift;
  }
  binary(op: BinaryOp, a: Buf, aStrides: number[], b: Buf, bStrides: number[], out: Buf, shape: number[]): void {
    const x = this.f(a), y = this.f(b), o = this.f(out);
    let k = 0;
    forEachIndex(shape, (idx) => {
      let ia = 0, ib = 0;
      for (let d = 0; d < shape.length; d++) {
        ia += idx[d]! * aStrides[d]!;
        ib += idx[d]! * bStrides[d]!;
      }
      const u = x[ia]!, v = y[ib]!;
      o[k++] = op === 'add' ? u + v : op === 'sub' ? u - v : op === 'mul' ? u * v : u / v;
    });
  }
  reduceSum(x: Buf, out: Buf, outer: number, mid: number, inner: number): void {
    const a = this.f(x), o = this.f(out);
    for (let p = 0; p < outer; p++) {
      for (let q = 0; q < inner; q++) {
        let s = 0;
        for (let m = 0; m < mid; m++) s += a[(p * mid + m) * inner + q]!;
        o[p * inner + q] = s;
      }
    }
  }
  sumSquares(xs: Buf[]): number {
    let s = 0;
    for (const x of xs) {
      const a = this.f(x);
      for (let i = 0; i < a.length; i++) s += a[i]! * a[i]!;
    }
    return s;
  }

  matmul(a: Buf, b: Buf, c: Buf, g: MatmulArgs): void {
    checkMatmulOperands(a, b, c);
    checkMatmulEpilogue(g);
    const A = this.f(a), B = this.f(b), C = this.f(c);
    const lda = g.transA ? g.m : g.k, ldb = g.transB ? g.k : g.n;
    for (let t = 0; t < g.batch; t++) {
      gemm(g.transA, g.transB, g.m, g.n, g.k, g.alpha, A, t * g.strideA, lda, B, t * g.strideB, ldb, g.beta, C, t * g.strideC, g.n);
    }
    if (g.biasGrad) {
      const gb = this.f(g.biasGrad);
      for (let i = 0; i < g.m; i++) {
        let s = 0;
        for (let p = 0; p < g.k; p++) s += g.transA ? A[p * lda + i]! : A[i * lda + p]!;
        gb[i] = s;
      }
    }
    if (!g.bias && !g.relu) return;
    // The batches as groups sharing one bias (stride 0).
    const p = new Int32Array(9 * g.batch);
    for (let t = 0; t < g.batch; t++) p.set([g.m, g.n, 0, 0, 0, 0, 0, t * g.strideC, g.n], 9 * t);
    groupedEpilogue(C, p, g.bias ? this.f(g.bias) : null, 0, g.relu ?? false);
  }
  groupedMatmul(a: Buf, b: Buf, c: Buf, g: GroupedMatmulArgs): void {
    checkGroupedEpilogue(g);
    if (g.segments) { this.groupedMatmul(a, b, c, resolveSegments(g, this.i(g.segments))); return; }
    if (g.rows) { groupedMatmulByCopies(this, a, b, c, g); return; }
    const A = this.f(a), B = this.f(b), C = this.f(c);
    const p = g.problems;
    if (p.length % 9 !== 0) throw new Error(`ref.groupedMatmul: problems length ${p.length} is not a multiple of 9`);
    checkProblems('ref.groupedMatmul', p, g.transA, g.transB, A.length, B.length, C.length);
    for (let q = 0; q < p.length; q += 9) {
      gemm(g.transA, g.transB, p[q]!, p[q + 1]!, p[q + 2]!, g.alpha, A, p[q + 3]!, p[q + 4]!, B, p[q + 5]!, p[q + 6]!,
        g.beta, C, p[q + 7]!, p[q + 8]!);
    }
    if (g.bias || g.relu) groupedEpilogue(C, p, g.bias ? this.f(g.bias) : null, g.biasStride ?? 0, g.relu ?? false);
  }

  softmax(x: Buf, out: Buf, rows: number, cols: number): void {
    const a = this.f(x), o = this.f(out);
    for (let r = 0; r < rows; r++) {
      const base = r * cols;
      let mx = -Infinity;
      for (let j = 0; j < cols; j++) mx = Math.max(mx, a[base + j]!);
      let s = 0;
      for (let j = 0; j < cols; j++) s += Math.exp(a[base + j]! - mx);
      for (let j = 0; j < cols; j++) o[base + j] = Math.exp(a[base + j]! - mx) / s;
    }
  }
  softmaxBackward(y: Buf, gy: Buf, gx: Buf, rows: number, cols: number): void {
    const Y = this.f(y), G = this.f(gy), O = this.f(gx);
    for (let r = 0; r < rows; r++) {
      const base = r * cols;
      let dot = 0;
      for (let j = 0; j < cols; j++) dot += G[base + j]! * Y[base + j]!;
      for (let j = 0; j < cols; j++) O[base + j] = Y[base + j]! * (G[base + j]! - dot);
    }
  }
  layerNorm(x: Buf, gamma: Buf, beta: Buf, y: Buf, mean: Buf, rstd: Buf, rows: number, cols: number, eps: number): void {
    const X = this.f(x), Gm = this.f(gamma), Bt = this.f(beta), Y = this.f(y), M = this.f(mean), R = this.f(rstd);
    for (let r = 0; r < rows; r++) {
      const base = r * cols;
      let mu = 0;
      for (let j = 0; j < cols; j++) mu += X[base + j]!;
      mu /= cols;
      let v = 0;
      for (let j = 0; j < cols; j++) v += (X[base + j]! - mu) ** 2;
      const rs = 1 / Math.sqrt(v / cols + eps);
      M[r] = mu;
      R[r] = rs;
      for (let j = 0; j < cols; j++) Y[base + j] = (X[base + j]! - mu) * rs * Gm[j]! + Bt[j]!;
    }
  }
  layerNormBackward(x: Buf, gamma: Buf, mean: Buf, rstd: Buf, gy: Buf, gx: Buf, ggamma: Buf, gbeta: Buf,
    rows: number, cols: number): void {
    const X = this.f(x), Gm = this.f(gamma), M = this.f(mean), R = this.f(rstd), GY = this.f(gy), GX = this.f(gx);
    const GG = this.f(ggamma), GB = this.f(gbeta);
    for (let r = 0; r < rows; r++) {
      const base = r * cols, mu = M[r]!, rs = R[r]!;
      // dxhat = gy·gamma; gx = rstd · (dxhat − mean(dxhat) − xhat · mean(dxhat · xhat))
      let sumD = 0, sumDX = 0;
      for (let j = 0; j < cols; j++) {
        const xh = (X[base + j]! - mu) * rs, d = GY[base + j]! * Gm[j]!;
        sumD += d;
        sumDX += d * xh;
      }
      for (let j = 0; j < cols; j++) {
        const xh = (X[base + j]! - mu) * rs, d = GY[base + j]! * Gm[j]!;
        GX[base + j] = rs * (d - sumD / cols - xh * (sumDX / cols));
      }
    }
    for (let j = 0; j < cols; j++) {
      let sg = 0, sb = 0;
      for (let r = 0; r < rows; r++) {
        const xh = (X[r * cols + j]! - M[r]!) * R[r]!;
        sg += GY[r * cols + j]! * xh;
        sb += GY[r * cols + j]!;
      }
      GG[j] = GG[j]! + sg;
      GB[j] = GB[j]! + sb;
    }
  }
  embedding(table: Buf, ids: Buf, out: Buf, n: number, vocab: number, dim: number): void {
    const T = this.f(table), I = this.i(ids), O = this.f(out);
    for (let r = 0; r < n; r++) {
      const id = checkIndex('embedding', I[r]!, vocab);
      for (let j = 0; j < dim; j++) O[r * dim + j] = T[id * dim + j]!;
    }
  }
  embeddingBackward(gy: Buf, ids: Buf, gtable: Buf, n: number, vocab: number, dim: number): void {
    const G = this.f(gy), I = this.i(ids), GT = this.f(gtable);
    for (let r = 0; r < n; r++) {
      const id = checkIndex('embeddingBackward', I[r]!, vocab);
      for (let j = 0; j < dim; j++) GT[id * dim + j] = GT[id * dim + j]! + G[r * dim + j]!;
    }
  }
  attention(qkv: Buf, out: Buf, lse: Buf, B: number, T: number, H: number, D: number, causal: boolean, scale: number): void {
    const X = this.f(qkv), O = this.f(out), L = this.f(lse);
    const at = qkvIndexer(T, H, D);
    const p = new Float64Array(T);
    for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let t = 0; t < T; t++) {
      const S = causal ? t + 1 : T;
      let mx = -Infinity;
      for (let s = 0; s < S; s++) {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += X[at(b, t, 0, h, d)]! * X[at(b, s, 1, h, d)]!;
        p[s] = dot * scale;
        mx = Math.max(mx, p[s]!);
      }
      let sum = 0;
      for (let s = 0; s < S; s++) sum += Math.exp(p[s]! - mx);
      const l = mx + Math.log(sum);
      L[(b * H + h) * T + t] = l;
      for (let d = 0; d < D; d++) {
        let acc = 0;
        for (let s = 0; s < S; s++) acc += Math.exp(p[s]! - l) * X[at(b, s, 2, h, d)]!;
        O[((b * T + t) * H + h) * D + d] = acc;
      }
    }
  }
  attentionBackward(qkv: Buf, out: Buf, lse: Buf, gout: Buf, gqkv: Buf, B: number, T: number, H: number, D: number,
    causal: boolean, scale: number): void {
    const X = this.f(qkv), O = this.f(out), L = this.f(lse), GO = this.f(gout), GX = this.f(gqkv);
    const at = qkvIndexer(T, H, D);
    GX.fill(0);
    for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let t = 0; t < T; t++) {
      const S = causal ? t + 1 : T;
      const o = ((b * T + t) * H + h) * D, l = L[(b * H + h) * T + t]!;
      let delta = 0; // Σ_d gout·out
      for (let d = 0; d < D; d++) delta += GO[o + d]! * O[o + d]!;
      for (let s = 0; s < S; s++) {
        let dot = 0, dp = 0;
        for (let d = 0; d < D; d++) {
          dot += X[at(b, t, 0, h, d)]! * X[at(b, s, 1, h, d)]!;
          dp += GO[o + d]! * X[at(b, s, 2, h, d)]!;
        }
        const pr = Math.exp(dot * scale - l);
        const ds = pr * (dp - delta) * scale;
        for (let d = 0; d < D; d++) {
          GX[at(b, s, 2, h, d)] = GX[at(b, s, 2, h, d)]! + pr * GO[o + d]!;
          GX[at(b, t, 0, h, d)] = GX[at(b, t, 0, h, d)]! + ds * X[at(b, s, 1, h, d)]!;
          GX[at(b, s, 1, h, d)] = GX[at(b, s, 1, h, d)]! + ds * X[at(b, t, 0, h, d)]!;
        }
      }
    }
  }
  attentionCached(qkv: Buf, kCache: Buf, vCache: Buf, out: Buf, posBuf: Buf, B: number, T: number, H: number,
    D: number, Tmax: number, scale: number): void {
    const X = this.f(qkv), K = this.f(kCache), V = this.f(vCache), O = this.f(out), pos = this.i(posBuf);
    checkCachePositions(pos, B, T, Tmax);
    const at = qkvIndexer(T, H, D);
    const cache = (b: number, h: number, j: number, d: number) => ((b * H + h) * Tmax + j) * D + d;
    for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) {
      for (let d = 0; d < D; d++) {
        K[cache(b, h, pos[b]! + t, d)] = X[at(b, t, 1, h, d)]!;
        V[cache(b, h, pos[b]! + t, d)] = X[at(b, t, 2, h, d)]!;
      }
    }
    const p = new Float64Array(Tmax);
    for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let t = 0; t < T; t++) {
      const S = pos[b]! + t + 1; // keys 0 .. pos[b] + t
      let mx = -Infinity;
      for (let j = 0; j < S; j++) {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += X[at(b, t, 0, h, d)]! * K[cache(b, h, j, d)]!;
        p[j] = dot * scale;
        mx = Math.max(mx, p[j]!);
      }
      let sum = 0;
      for (let j = 0; j < S; j++) sum += Math.exp(p[j]! - mx);
      for (let d = 0; d < D; d++) {
        let acc = 0;
        for (let j = 0; j < S; j++) acc += Math.exp(p[j]! - mx) * V[cache(b, h, j, d)]!;
        O[((b * T + t) * H + h) * D + d] = acc / sum;
      }
    }
  }
  dropout(x: Buf, out: Buf, p: number, seed: number): void {
    const X = this.f(x), O = this.f(out);
    for (let i = 0; i < X.length; i++) O[i] = uniform(seed, i) >= p ? X[i]! / (1 - p) : 0;
  }
  dropoutBackward(gy: Buf, gx: Buf, p: number, seed: number): void {
    this.dropout(gy, gx, p, seed);
  }
  crossEntropy(logits: Buf, targets: Buf, losses: Buf, lse: Buf, N: number, V: number): void {
    const X = this.f(logits), T = this.i(targets), Lo = this.f(losses), Ls = this.f(lse);
    for (let n = 0; n < N; n++) {
      const t = checkTarget(T[n]!, V);
      let mx = -Infinity;
      for (let j = 0; j < V; j++) mx = Math.max(mx, X[n * V + j]!);
      let s = 0;
      for (let j = 0; j < V; j++) s += Math.exp(X[n * V + j]! - mx);
      const l = mx + Math.log(s);
      Ls[n] = l;
      Lo[n] = t < 0 ? 0 : l - X[n * V + t]!;
    }
  }
  crossEntropyBackward(logits: Buf, targets: Buf, lse: Buf, gloss: Buf, glogits: Buf, N: number, V: number): void {
    const X = this.f(logits), T = this.i(targets), Ls = this.f(lse), GL = this.f(gloss), G = this.f(glogits);
    for (let n = 0; n < N; n++) {
      const t = checkTarget(T[n]!, V);
      for (let j = 0; j < V; j++) {
        G[n * V + j] = t < 0 ? 0 : GL[n]! * (Math.exp(X[n * V + j]! - Ls[n]!) - (j === t ? 1 : 0));
      }
    }
  }
  adamw(p: Buf, g: Buf, m: Buf, v: Buf, a: AdamWArgs): void {
    const P = this.f(p), G = this.f(g), M = this.f(m), Vv = this.f(v);
    const bc1 = 1 - a.beta1 ** a.step, bc2 = 1 - a.beta2 ** a.step;
    for (let i = 0; i < P.length; i++) {
      const gi = G[i]! * a.gradScale;
      let pi = P[i]! - a.lr * a.weightDecay * P[i]!;
      M[i] = a.beta1 * M[i]! + (1 - a.beta1) * gi;
      Vv[i] = a.beta2 * Vv[i]! + (1 - a.beta2) * gi * gi;
      pi -= a.lr * (M[i]! / bc1) / (Math.sqrt(Vv[i]! / bc2) + a.eps);
      P[i] = pi;
    }
  }

  topkBackward(g: Buf, indices: Buf, gx: Buf, rows: number, cols: number, k: number): void {
    const G = this.f(g), I = this.i(indices), O = this.f(gx);
    O.fill(0, 0, rows * cols);
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < k; j++) O[r * cols + checkIndex('topkBackward', I[r * k + j]!, cols)] += G[r * k + j]!;
    }
  }
  topk(x: Buf, values: Buf, indices: Buf, rows: number, cols: number, k: number): void {
    const X = this.f(x), Vl = this.f(values), I = this.i(indices);
    const order = Array.from({ length: cols }, (_, j) => j);
    for (let r = 0; r < rows; r++) {
      const val = (j: number) => { const v = X[r * cols + j]!; return Number.isNaN(v) ? -Infinity : v; };
      order.sort((p, q) => val(q) - val(p) || p - q);
      for (let j = 0; j < k; j++) {
        Vl[r * k + j] = X[r * cols + order[j]!]!;
        I[r * k + j] = order[j]!;
      }
      order.sort((p, q) => p - q);
    }
  }
  expertGroups(experts: Buf, offsets: Buf, rowToken: Buf, rowSlot: Buf, rowExpert: Buf, N: number, k: number, E: number): void {
    checkExpertBuffers([experts, offsets, rowToken, rowSlot, rowExpert]);
    const g = groupExperts(this.i(experts), N, k, E);
    this.i(offsets).set(g.offsets);
    this.i(rowToken).set(g.rowToken);
    this.i(rowSlot).set(g.rowSlot);
    this.i(rowExpert).set(g.rowExpert);
  }
  gatherRows(x: Buf, idx: Buf, out: Buf, m: number, n: number, d: number): void {
    const X = this.f(x), I = this.i(idx), O = this.f(out);
    for (let r = 0; r < m; r++) {
      const s = checkIndex('gatherRows', I[r]!, n);
      for (let j = 0; j < d; j++) O[r * d + j] = X[s * d + j]!;
    }
  }
  reluBackwardRowDot(y: Buf, gy: Buf, gx: Buf, dots: Buf, rows: number, cols: number): void {
    this.unaryBackward('relu', y, gy, gx);
    this.rowDot(gx, y, dots, rows, cols);
  }
  rowDot(a: Buf, b: Buf, out: Buf, rows: number, cols: number): void {
    const A = this.f(a), B = this.f(b), O = this.f(out);
    for (let r = 0; r < rows; r++) {
      let s = 0;
      for (let c = 0; c < cols; c++) s += A[r * cols + c]! * B[r * cols + c]!;
      O[r] = s;
    }
  }
  activationBits(x: Buf, out: Buf, rows: number, cols: number): void {
    const X = this.f(x), O = this.i(out), words = Math.ceil(cols / 32);
    for (let r = 0; r < rows; r++) {
      for (let w = 0; w < words; w++) {
        let word = 0;
        for (let b = 0; b < 32 && 32 * w + b < cols; b++) if (X[r * cols + 32 * w + b]! > 0) word |= 1 << b;
        O[r * words + w] = word;
      }
    }
  }
  scatterAddRows(src: Buf, idx: Buf, out: Buf, m: number, n: number, d: number): void {
    const S = this.f(src), I = this.i(idx), O = this.f(out);
    for (let r = 0; r < m; r++) {
      const t = checkIndex('scatterAddRows', I[r]!, n);
      for (let j = 0; j < d; j++) O[t * d + j] = O[t * d + j]! + S[r * d + j]!;
    }
  }
}

/** Row-major GEMM with leading dimensions, accumulated in float64. */
function gemm(transA: boolean, transB: boolean, m: number, n: number, k: number, alpha: number,
  A: F, offA: number, lda: number, B: F, offB: number, ldb: number, beta: number, C: F, offC: number, ldc: number): void {
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) {
        const a = transA ? A[offA + p * lda + i]! : A[offA + i * lda + p]!;
        const b = transB ? B[offB + j * ldb + p]! : B[offB + p * ldb + j]!;
        s += a * b;
      }
      const c = offC + i * ldc + j;
      C[c] = alpha * s + (beta === 0 ? 0 : beta * C[c]!);
    }
  }
}

/** Flat index into a packed (B, T, 3, H, D) projection. */
function qkvIndexer(T: number, H: number, D: number) {
  return (b: number, t: number, which: number, h: number, d: number) => (((b * T + t) * 3 + which) * H + h) * D + d;
}

function forEachIndex(shape: number[], fn: (idx: number[]) => void): void {
  const total = shape.reduce((a, b) => a * b, 1);
  if (total === 0) return;
  const idx = new Array<number>(shape.length).fill(0);
  for (let c = 0; c < total; c++) {
    fn(idx);
    for (let a = shape.length - 1; a >= 0; a--) {
      if (++idx[a]! < shape[a]!) break;
      idx[a] = 0;
    }
  }
}

function checkIndex(op: string, i: number, n: number): number {
  if (i < 0 || i >= n) throw new Error(`${op}: index ${i} is outside [0, ${n})`);
  return i;
}
function checkTarget(t: number, V: number): number {
  if (t < -1 || t >= V) throw new Error(`crossEntropy: target ${t} is outside [-1, ${V}) (vocabulary size ${V})`);
  return t;
}

function unaryFn(op: UnaryOp, x: number): number {
  switch (op) {
    case 'relu': return x > 0 ? x : 0;
    case 'gelu': return 0.5 * x * (1 + Math.tanh(geluTanhArg(x)));
    case 'neg': return -x;
    case 'exp': return Math.exp(x);
    case 'log': return Math.log(x);
    case 'sqrt': return Math.sqrt(x);
    case 'square': return x * x;
    case 'tanh': return Math.tanh(x);
  }
}
function unaryDeriv(op: UnaryOp, x: number): number {
  switch (op) {
    case 'relu': return x > 0 ? 1 : 0;
    case 'gelu': {
      const th = Math.tanh(geluTanhArg(x));
      return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * GELU_C * (1 + 3 * 0.044715 * x * x);
    }
    case 'neg': return -1;
    case 'exp': return Math.exp(x);
    case 'log': return 1 / x;
    case 'sqrt': return 0.5 / Math.sqrt(x);
    case 'square': return 2 * x;
    case 'tanh': { const t = Math.tanh(x); return 1 - t * t; }
  }
}
