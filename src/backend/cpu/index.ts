/**
 * The native `cpu` backend: buffers are host typed arrays (Float32Array for f32, Uint16Array holding
 * bf16 bit patterns, Int32Array for i32) passed zero-copy to the C++ kernels in native/cpu (threads,
 * AVX2/AVX-512, a GEMM provider picked at load time: oneDNN, OpenBLAS or our own kernel).
 * Sizes are validated here, so a bad call throws an Error naming the op instead of reaching native code.
 */
import type { AdamWArgs, Backend, BinaryOp, Buf, DType, GroupedMatmulArgs, HostArray, MatmulArgs, UnaryOp } from '../contract.js';
import { checkCachePositions, checkMatmulEpilogue, checkMatmulOperands, DTYPE_BYTES } from '../contract.js';
import { loadAddon, type NativeAddon } from './addon.js';
import { ArrayPool } from './pool.js';
import { addOutBias, checkExpertBuffers, checkGroupedEpilogue, groupExperts, resolveSegments } from '../segments.js';

type Arr = Float32Array | Uint16Array | Int32Array;

const UNARY_CODE: Record<UnaryOp, number> = { relu: 0, gelu: 1, neg: 2, exp: 3, log: 4, sqrt: 5, square: 6, tanh: 7 };
const BINARY_CODE: Record<BinaryOp, number> = { add: 0, sub: 1, mul: 2, div: 3 };

/** Elements above which fills/copies go through the (multi-threaded) addon rather than JS. */
const NATIVE_MIN = 1 << 15;

class CpuBuf implements Buf {
  /** null once freed. */
  data: Arr | null;
  /**
   * Reused from the pool and not yet written: zeros are filled in when something reads it (`buf`),
   * unless a kernel overwrites the whole buffer first (`out`).
   */
  zeroPending = false;
  constructor(readonly dtype: DType, readonly size: number, data: Arr) {
    this.data = data;
  }
}

function newArray(dtype: DType, size: number): Arr {
  switch (dtype) {
    case 'f32': return new Float32Array(size);
    case 'bf16': return new Uint16Array(size);
    case 'i32': return new Int32Array(size);
  }
}

function isInt(x: number): boolean {
  return Number.isInteger(x) && x >= 0;
}

function need(op: string, cond: boolean, msg: () => string): void {
  if (!cond) throw new Error(`cpu.${op}: ${msg()}`);
}

export interface CpuBackendOptions {
  /** Thread count for kernels and the GEMM provider (default: SSD_THREADS or the core count). */
  threads?: number;
  /** Bytes of freed buffers kept for reuse (default 1 GiB, or SSD_CPU_POOL_MB). */
  poolBytes?: number;
  /**
   * Testing: every f32 allocation is filled with NaN and its zero-fill deferred, so a kernel that reads
   * or skips part of an output it claims to overwrite in full, or a missing deferred fill, shows up as
   * NaN (default false, or SSD_CPU_POISON=1).
   */
  poisonOutputs?: boolean;
}

export class CpuBackend implements Backend {
  readonly name = 'cpu';
  private live = 0;
  private liveBytes = 0;
  private readonly pool: ArrayPool<Arr>;
  private readonly poison: boolean;
  /** Outputs of the running op whose zero-fill `out` skipped (see `kernel`). */
  private readonly claimed: CpuBuf[] = [];

  constructor(private readonly nat: NativeAddon, opts: CpuBackendOptions = {}) {
    const env = process.env['SSD_CPU_POOL_MB']?.trim();
    const mb = env ? Number(env) : 1024;
    if (opts.poolBytes === undefined && !(Number.isFinite(mb) && mb >= 0)) {
      throw new Error(`SSD_CPU_POOL_MB must be a number of MiB >= 0, got '${env}'`);
    }
    this.pool = new ArrayPool(opts.poolBytes ?? mb * 2 ** 20);
    this.poison = opts.poisonOutputs ?? process.env['SSD_CPU_POISON'] === '1';
  }

  // ------------------------------------------------------------ buffer access
  /** A live cpu buffer, its contents as they are (a deferred zero-fill not yet done). */
  private handle(op: string, b: Buf, what: string): CpuBuf {
    if (!(b instanceof CpuBuf)) throw new Error(`cpu.${op}: ${what} is not a cpu buffer`);
    if (b.data === null) throw new Error(`cpu.${op}: ${what} was freed (${b.dtype}, size ${b.size})`);
    return b;
  }
  /** A live cpu buffer whose contents are read (or written in part): its deferred zero-fill is done first. */
  private buf(op: string, b: Buf, what: string): CpuBuf {
    const c = this.handle(op, b, what);
    if (c.zeroPending) {
      c.zeroPending = false;
      this.fillArray(c.data!, 0);
    }
    return c;
  }
  private fillArray(data: Arr, value: number): void {
    if (data instanceof Int32Array || data.length < NATIVE_MIN) data.fill(value);
    else this.nat.fill(data, value);
  }
  /**
   * An f32 output whose elements [0, extent) the kernel overwrites without reading them: when that is
   * the whole buffer, its deferred zero-fill is skipped. Take the inputs first, so an output that is
   * also an input has been filled already. `minSize`: as for `f` (0 where the caller checks sizes).
   */
  private out(op: string, b: Buf, what: string, extent: number, minSize = extent): Float32Array {
    const c = this.handle(op, b, what);
    if (c.size !== extent || !c.zeroPending || c.dtype !== 'f32') return this.f(op, b, what, minSize);
    if (c.size < minSize) throw new Error(`cpu.${op}: ${what} has ${c.size} elements, needs ${minSize}`);
    this.claimed.push(c); // (with poisonOutputs it still holds the NaN that alloc wrote)
    return c.data as Float32Array;
  }
  /**
   * Runs one op whose outputs are taken with `out`: their deferred zero-fills are dropped only once
   * the op has returned; if it throws (bad input), they stay pending and the buffers still read as zeros.
   */
  private kernel(fn: () => void): void {
    this.claimed.length = 0;
    try {
      fn();
      for (const c of this.claimed) c.zeroPending = false;
    } finally {
      this.claimed.length = 0;
    }
  }
  private f(op: string, b: Buf, what: string, minSize = 0): Float32Array {
    const c = this.buf(op, b, what);
    if (c.dtype !== 'f32') throw new Error(`cpu.${op}: ${what} must be f32, got ${c.dtype}`);
    if (c.size < minSize) throw new Error(`cpu.${op}: ${what} has ${c.size} elements, needs ${minSize}`);
    return c.data as Float32Array;
  }
  private i(op: string, b: Buf, what: string, minSize = 0): Int32Array {
    const c = this.buf(op, b, what);
    if (c.dtype !== 'i32') throw new Error(`cpu.${op}: ${what} must be i32, got ${c.dtype}`);
    if (c.size < minSize) throw new Error(`cpu.${op}: ${what} has ${c.size} elements, needs ${minSize}`);
    return c.data as Int32Array;
  }
  private dims(op: string, v: Record<string, number>): void {
    for (const [k, x] of Object.entries(v)) need(op, isInt(x), () => `${k} must be a non-negative integer, got ${x}`);
  }

  // ------------------------------------------------------------ memory
  alloc(dtype: DType, size: number): Buf {
    need('alloc', isInt(size), () => `bad size ${size}`);
    need('alloc', dtype in DTYPE_BYTES, () => `bad dtype ${dtype}`);
    // Zeros are written when something first reads the buffer, unless a kernel overwrites it whole.
    const pooled = this.pool.take(`${dtype}:${size}`);
    const b = new CpuBuf(dtype, size, pooled ?? newArray(dtype, size));
    b.zeroPending = pooled !== undefined || this.poison;
    if (this.poison && dtype === 'f32') this.fillArray(b.data!, NaN); // only the deferred fill may make it zeros
    this.live++;
    this.liveBytes += size * DTYPE_BYTES[dtype];
    return b;
  }
  free(buf: Buf): void {
    if (!(buf instanceof CpuBuf)) throw new Error('cpu.free: not a cpu buffer');
    if (buf.data === null) throw new Error(`cpu.free: buffer freed twice (${buf.dtype}, size ${buf.size})`);
    const data = buf.data;
    buf.data = null;
    this.live--;
    this.liveBytes -= buf.size * DTYPE_BYTES[buf.dtype];
    this.pool.put(`${buf.dtype}:${buf.size}`, data);
  }
  /** Drops the pooled (freed, reusable) arrays so the GC can reclaim them. */
  trimPool(): void {
    this.pool.clear();
  }
  upload(buf: Buf, data: ArrayLike<number>): void {
    const b = this.handle('upload', buf, 'buffer');
    need('upload', data.length === b.size, () => `${data.length} values for a buffer of ${b.size}`);
    b.zeroPending = false;
    if (b.dtype === 'bf16') {
      const tmp = data instanceof Float32Array ? data : Float32Array.from(data);
      this.nat.cast(tmp, b.data!);
    } else {
      (b.data as Float32Array | Int32Array).set(data);
    }
  }
  download(buf: Buf): HostArray {
    const b = this.buf('download', buf, 'buffer');
    if (b.dtype === 'bf16') {
      const out = new Float32Array(b.size);
      this.nat.cast(b.data!, out);
      return out;
    }
    return (b.data as Float32Array | Int32Array).slice();
  }
  memoryStats(): { liveBuffers: number; liveBytes: number } {
    return { liveBuffers: this.live, liveBytes: this.liveBytes };
  }

  // ------------------------------------------------------------ data movement
  fill(out: Buf, value: number): void {
    const b = this.handle('fill', out, 'out');
    b.zeroPending = false;
    if (b.dtype === 'bf16') this.nat.fill(b.data!, value);
    else this.fillArray(b.data!, value);
  }
  cast(x: Buf, out: Buf): void {
    const s = this.buf('cast', x, 'x'), d = this.buf('cast', out, 'out');
    need('cast', s.size === d.size, () => `sizes ${s.size} and ${d.size} differ`);
    if (s.dtype === d.dtype || (s.dtype === 'f32' && d.dtype === 'bf16') || (s.dtype === 'bf16' && d.dtype === 'f32')) {
      this.nat.cast(s.data!, d.data!);
    } else if (s.dtype === 'i32' && d.dtype === 'f32') {
      (d.data as Float32Array).set(s.data as Int32Array);
    } else if (s.dtype === 'f32' && d.dtype === 'i32') {
      (d.data as Int32Array).set(s.data as Float32Array);
    } else {
      throw new Error(`cpu.cast: unsupported ${s.dtype} -> ${d.dtype}`);
    }
  }
  copyStrided(src: Buf, srcOffset: number, srcStrides: number[], dst: Buf, dstOffset: number,
    dstStrides: number[], shape: number[], accumulate: boolean): void {
    const s = this.buf('copyStrided', src, 'src'), d = this.buf('copyStrided', dst, 'dst');
    need('copyStrided', s.dtype === d.dtype, () => `src is ${s.dtype} but dst is ${d.dtype}`);
    need('copyStrided', srcStrides.length === shape.length && dstStrides.length === shape.length,
      () => `ranks differ: shape ${shape.length}, srcStrides ${srcStrides.length}, dstStrides ${dstStrides.length}`);
    for (const x of shape) need('copyStrided', isInt(x), () => `bad shape [${shape}]`);
    for (const x of [...srcStrides, ...dstStrides, srcOffset, dstOffset]) {
      need('copyStrided', Number.isInteger(x), () => `non-integer stride or offset`);
    }
    this.nat.copyStrided(s.data!, srcOffset, srcStrides, d.data!, dstOffset, dstStrides, shape, accumulate);
  }

  // ------------------------------------------------------------ elementwise
  unary(op: UnaryOp, x: Buf, out: Buf): void {
    this.kernel(() => {
      const code = UNARY_CODE[op];
      need('unary', code !== undefined, () => `unknown op ${op}`);
      const a = this.f('unary', x, 'x'), o = this.out('unary', out, 'out', a.length);
      need('unary', a.length === o.length, () => `${op}: sizes ${a.length} and ${o.length} differ`);
      this.nat.unary(code, a, o);
    });
  }
  unaryBackward(op: UnaryOp, x: Buf, gy: Buf, gx: Buf): void {
    this.kernel(() => {
      const code = UNARY_CODE[op];
      need('unaryBackward', code !== undefined, () => `unknown op ${op}`);
      const a = this.f('unaryBackward', x, 'x'), g = this.f('unaryBackward', gy, 'gy');
      const o = this.out('unaryBackward', gx, 'gx', a.length);
      need('unaryBackward', a.length === g.length && a.length === o.length,
        () => `${op}: sizes ${a.length}, ${g.length}, ${o.length} differ`);
      this.nat.unaryBackward(code, a, g, o);
    });
  }
  affine(x: Buf, out: Buf, scale: number, shift: number): void {
    this.kernel(() => {
      const a = this.f('affine', x, 'x'), o = this.out('affine', out, 'out', a.length);
      need('affine', a.length === o.length, () => `sizes ${a.length} and ${o.length} differ`);
      this.nat.affine(a, o, scale, shift);
    });
  }
  binary(op: BinaryOp, a: Buf, aStrides: number[], b: Buf, bStrides: number[], out: Buf, shape: number[]): void {
    this.kernel(() => {
      const code = BINARY_CODE[op];
      need('binary', code !== undefined, () => `unknown op ${op}`);
      need('binary', aStrides.length === shape.length && bStrides.length === shape.length,
        () => `${op}: ranks differ: shape [${shape}], aStrides [${aStrides}], bStrides [${bStrides}]`);
      let total = 1;
      for (const s of shape) {
        need('binary', isInt(s), () => `${op}: bad shape [${shape}]`);
        total *= s;
      }
      const A = this.f('binary', a, 'a'), B = this.f('binary', b, 'b');
      const O = this.out('binary', out, 'out', total);
      this.nat.binary(code, A, aStrides, B, bStrides, O, shape);
    });
  }
  reduceSum(x: Buf, out: Buf, outer: number, mid: number, inner: number): void {
    this.dims('reduceSum', { outer, mid, inner });
    const X = this.f('reduceSum', x, 'x', outer * mid * inner), O = this.f('reduceSum', out, 'out', outer * inner);
    this.nat.reduceSum(X, O, outer, mid, inner);
  }
  sumSquares(xs: Buf[]): number {
    return xs.reduce((s, x, i) => s + this.nat.sumSquares(this.f('sumSquares', x, `xs[${i}]`)), 0);
  }

  // ------------------------------------------------------------ linear algebra
  matmul(a: Buf, b: Buf, c: Buf, g: MatmulArgs): void {
    this.kernel(() => {
      const { batch, m, n, k } = g;
      this.dims('matmul', { batch, m, n, k, strideA: g.strideA, strideB: g.strideB, strideC: g.strideC });
      const A = this.f('matmul', a, 'a'), B = this.f('matmul', b, 'b');
      checkMatmulOperands(a, b, c);
      checkMatmulEpilogue(g);
      const bias = g.bias ? this.f('matmul', g.bias, 'bias') : null;
      const biasGrad = g.biasGrad ? this.out('matmul', g.biasGrad, 'biasGrad', m) : null;
      // beta = 0 over contiguous batches writes every element of (batch, m, n) without reading C
      const C = g.beta === 0 && (batch <= 1 || g.strideC === m * n) ? this.out('matmul', c, 'c', batch * m * n, 0)
        : this.f('matmul', c, 'c');
      if (batch === 0 || m === 0 || n === 0) return;
      need('matmul', batch === 1 || g.strideC >= m * n, () => `strideC ${g.strideC} < m*n = ${m * n}`);
      const needA = (batch - 1) * g.strideA + m * k, needB = (batch - 1) * g.strideB + k * n;
      const needC = (batch - 1) * g.strideC + m * n;
      need('matmul', A.length >= needA, () => `a has ${A.length} elements, needs ${needA} (batch ${batch}, m ${m}, k ${k})`);
      need('matmul', B.length >= needB, () => `b has ${B.length} elements, needs ${needB} (batch ${batch}, k ${k}, n ${n})`);
      need('matmul', C.length >= needC, () => `c has ${C.length} elements, needs ${needC} (batch ${batch}, m ${m}, n ${n})`);
      this.nat.matmul(A, B, C, batch, m, n, k, g.transA, g.transB, g.strideA, g.strideB, g.strideC, g.alpha, g.beta,
        bias, g.relu ?? false, biasGrad);
    });
  }
  groupedMatmul(a: Buf, b: Buf, c: Buf, g: GroupedMatmulArgs): void {
    checkGroupedEpilogue(g);
    if (g.segments) { this.groupedMatmul(a, b, c, resolveSegments(g, this.i('groupedMatmul', g.segments, 'segments'))); return; }
    this.kernel(() => {
      const A = this.f('groupedMatmul', a, 'a'), B = this.f('groupedMatmul', b, 'b');
      need('groupedMatmul', g.problems instanceof Int32Array, () => 'problems must be an Int32Array');
      need('groupedMatmul', g.problems.length % 9 === 0, () => `problems length ${g.problems.length} is not a multiple of 9`);
      // beta = 0 without a scatter writes each group's (m, n) block; the blocks must not overlap, so
      // when their sizes add up to C's, every element of C is written
      let covered = 0;
      for (let i = 0; i < g.problems.length; i += 9) covered += g.problems[i]! * g.problems[i + 1]!;
      const C = g.beta === 0 && !g.rows?.c ? this.out('groupedMatmul', c, 'c', covered, 0) : this.f('groupedMatmul', c, 'c');
      // Per-group bounds, index entries included, are checked natively (before any group runs).
      const idx = (b: Buf | undefined, what: string) => (b ? this.i('groupedMatmul', b, what) : null);
      const bias = g.bias ? this.f('groupedMatmul', g.bias, 'bias') : null;
      this.nat.groupedMatmul(A, B, C, g.problems, g.transA, g.transB, g.alpha, g.beta,
        idx(g.rows?.a, 'rows.a'), idx(g.rows?.b, 'rows.b'), idx(g.rows?.c, 'rows.c'));
      if (bias || g.relu) this.nat.groupedBiasAct(C, g.problems, bias, g.biasStride ?? 0, g.relu ?? false);
    });
    if (g.outBias) addOutBias(this, g.outBias, c);
  }

  // ------------------------------------------------------------ NN kernels
  softmax(x: Buf, out: Buf, rows: number, cols: number): void {
    this.kernel(() => {
      this.dims('softmax', { rows, cols });
      const n = rows * cols;
      const X = this.f('softmax', x, 'x', n);
      this.nat.softmax(X, this.out('softmax', out, 'out', n), rows, cols);
    });
  }
  softmaxBackward(y: Buf, gy: Buf, gx: Buf, rows: number, cols: number): void {
    this.kernel(() => {
      this.dims('softmaxBackward', { rows, cols });
      const n = rows * cols, op = 'softmaxBackward';
      const Y = this.f(op, y, 'y', n), GY = this.f(op, gy, 'gy', n);
      this.nat.softmaxBackward(Y, GY, this.out(op, gx, 'gx', n), rows, cols);
    });
  }
  layerNorm(x: Buf, gamma: Buf, beta: Buf, y: Buf, mean: Buf, rstd: Buf, rows: number, cols: number, eps: number): void {
    this.kernel(() => {
      const op = 'layerNorm';
      this.dims(op, { rows, cols });
      const n = rows * cols;
      const X = this.f(op, x, 'x', n), G = this.f(op, gamma, 'gamma', cols), Bt = this.f(op, beta, 'beta', cols);
      const stats = cols > 0 ? rows : -1; // with cols 0 the kernel writes no mean and rstd: keep their zeros
      this.nat.layerNorm(X, G, Bt, this.out(op, y, 'y', n), this.out(op, mean, 'mean', stats, rows),
        this.out(op, rstd, 'rstd', stats, rows), rows, cols, eps);
    });
  }
  layerNormBackward(x: Buf, gamma: Buf, mean: Buf, rstd: Buf, gy: Buf, gx: Buf, ggamma: Buf, gbeta: Buf,
    rows: number, cols: number): void {
    const op = 'layerNormBackward';
    this.dims(op, { rows, cols });
    const n = rows * cols;
    this.nat.layerNormBackward(this.f(op, x, 'x', n), this.f(op, gamma, 'gamma', cols), this.f(op, mean, 'mean', rows),
      this.f(op, rstd, 'rstd', rows), this.f(op, gy, 'gy', n), this.f(op, gx, 'gx', n), this.f(op, ggamma, 'ggamma', cols),
      this.f(op, gbeta, 'gbeta', cols), rows, cols);
  }
  embedding(table: Buf, ids: Buf, out: Buf, n: number, vocab: number, dim: number): void {
    this.kernel(() => {
      const op = 'embedding';
      this.dims(op, { n, vocab, dim });
      const W = this.f(op, table, 'table', vocab * dim), I = this.i(op, ids, 'ids', n);
      this.nat.embedding(W, I, this.out(op, out, 'out', n * dim), n, vocab, dim);
    });
  }
  embeddingBackward(gy: Buf, ids: Buf, gtable: Buf, n: number, vocab: number, dim: number): void {
    const op = 'embeddingBackward';
    this.dims(op, { n, vocab, dim });
    this.nat.embeddingBackward(this.f(op, gy, 'gy', n * dim), this.i(op, ids, 'ids', n),
      this.f(op, gtable, 'gtable', vocab * dim), n, vocab, dim);
  }
  attention(qkv: Buf, out: Buf, lse: Buf, B: number, T: number, H: number, D: number, causal: boolean, scale: number): void {
    const op = 'attention';
    this.dims(op, { B, T, H, D });
    this.nat.attention(this.f(op, qkv, 'qkv', B * T * 3 * H * D), this.f(op, out, 'out', B * T * H * D),
      this.f(op, lse, 'lse', B * H * T), B, T, H, D, causal, scale);
  }
  attentionCached(qkv: Buf, kCache: Buf, vCache: Buf, out: Buf, posBuf: Buf, B: number, T: number, H: number,
    D: number, Tmax: number, scale: number): void {
    const op = 'attentionCached';
    this.dims(op, { B, T, H, D, Tmax });
    const pos = this.i(op, posBuf, 'pos');
    checkCachePositions(pos, B, T, Tmax);
    const nc = B * H * Tmax * D;
    this.nat.attentionCached(this.f(op, qkv, 'qkv', B * T * 3 * H * D), this.f(op, kCache, 'kCache', nc),
      this.f(op, vCache, 'vCache', nc), this.f(op, out, 'out', B * T * H * D), pos, B, T, H, D, Tmax, scale);
  }
  attentionBackward(qkv: Buf, out: Buf, lse: Buf, gout: Buf, gqkv: Buf, B: number, T: number, H: number, D: number,
    causal: boolean, scale: number): void {
    const op = 'attentionBackward';
    this.dims(op, { B, T, H, D });
    const nq = B * T * 3 * H * D, no = B * T * H * D;
    this.nat.attentionBackward(this.f(op, qkv, 'qkv', nq), this.f(op, out, 'out', no), this.f(op, lse, 'lse', B * H * T),
      this.f(op, gout, 'gout', no), this.f(op, gqkv, 'gqkv', nq), B, T, H, D, causal, scale);
  }
  dropout(x: Buf, out: Buf, p: number, seed: number): void {
    this.kernel(() => {
      const a = this.f('dropout', x, 'x'), o = this.out('dropout', out, 'out', a.length);
      need('dropout', a.length === o.length, () => `sizes ${a.length} and ${o.length} differ`);
      need('dropout', p >= 0 && p <= 1, () => `p must be in [0, 1], got ${p}`);
      this.nat.dropout(a, o, p, seed >>> 0);
    });
  }
  dropoutBackward(gy: Buf, gx: Buf, p: number, seed: number): void {
    this.kernel(() => {
      const a = this.f('dropoutBackward', gy, 'gy'), o = this.out('dropoutBackward', gx, 'gx', a.length);
      need('dropoutBackward', a.length === o.length, () => `sizes ${a.length} and ${o.length} differ`);
      need('dropoutBackward', p >= 0 && p <= 1, () => `p must be in [0, 1], got ${p}`);
      this.nat.dropout(a, o, p, seed >>> 0);
    });
  }
  crossEntropy(logits: Buf, targets: Buf, losses: Buf, lse: Buf, N: number, V: number): void {
    const op = 'crossEntropy';
    this.dims(op, { N, V });
    this.nat.crossEntropy(this.f(op, logits, 'logits', N * V), this.i(op, targets, 'targets', N),
      this.f(op, losses, 'losses', N), this.f(op, lse, 'lse', N), N, V);
  }
  crossEntropyBackward(logits: Buf, targets: Buf, lse: Buf, gloss: Buf, glogits: Buf, N: number, V: number): void {
    this.kernel(() => {
      const op = 'crossEntropyBackward';
      this.dims(op, { N, V });
      const X = this.f(op, logits, 'logits', N * V), Tg = this.i(op, targets, 'targets', N);
      const L = this.f(op, lse, 'lse', N), GL = this.f(op, gloss, 'gloss', N);
      this.nat.crossEntropyBackward(X, Tg, L, GL, this.out(op, glogits, 'glogits', N * V), N, V);
    });
  }
  adamw(p: Buf, g: Buf, m: Buf, v: Buf, a: AdamWArgs): void {
    const op = 'adamw';
    const P = this.f(op, p, 'p'), n = P.length;
    const G = this.f(op, g, 'g'), M = this.f(op, m, 'm'), V = this.f(op, v, 'v');
    need(op, G.length === n && M.length === n && V.length === n,
      () => `sizes differ: p ${n}, g ${G.length}, m ${M.length}, v ${V.length}`);
    need(op, a.step >= 1, () => `step must be >= 1, got ${a.step}`);
    this.nat.adamw(P, G, M, V, a.lr, a.beta1, a.beta2, a.eps, a.weightDecay, a.step, a.gradScale);
  }

  // ------------------------------------------------------------ MoE primitives
  topk(x: Buf, values: Buf, indices: Buf, rows: number, cols: number, k: number): void {
    const op = 'topk';
    this.dims(op, { rows, cols, k });
    need(op, k <= cols, () => `k ${k} > cols ${cols}`);
    this.nat.topk(this.f(op, x, 'x', rows * cols), this.f(op, values, 'values', rows * k),
      this.i(op, indices, 'indices', rows * k), rows, cols, k);
  }
  topkBackward(g: Buf, indices: Buf, gx: Buf, rows: number, cols: number, k: number): void {
    this.kernel(() => {
      const op = 'topkBackward';
      this.dims(op, { rows, cols, k });
      const G = this.f(op, g, 'g', rows * k), I = this.i(op, indices, 'indices', rows * k);
      this.nat.topkBackward(G, I, this.out(op, gx, 'gx', rows * cols), rows, cols, k);
    });
  }
  expertGroups(experts: Buf, offsets: Buf, rowToken: Buf, rowSlot: Buf, rowExpert: Buf, N: number, k: number, E: number): void {
    const op = 'expertGroups';
    this.dims(op, { N, k, E });
    checkExpertBuffers([experts, offsets, rowToken, rowSlot, rowExpert]);
    const g = groupExperts(this.i(op, experts, 'experts', N * k), N, k, E);
    this.i(op, offsets, 'offsets', E + 1).set(g.offsets);
    for (const [b, v, what] of [[rowToken, g.rowToken, 'rowToken'], [rowSlot, g.rowSlot, 'rowSlot'], [rowExpert, g.rowExpert, 'rowExpert']] as const) {
      this.i(op, b, what, N * k).set(v);
    }
  }
  gatherRows(x: Buf, idx: Buf, out: Buf, m: number, n: number, d: number): void {
    this.kernel(() => {
      const op = 'gatherRows';
      this.dims(op, { m, n, d });
      const X = this.f(op, x, 'x', n * d), I = this.i(op, idx, 'idx', m);
      this.nat.gatherRows(X, I, this.out(op, out, 'out', m * d), m, n, d);
    });
  }
  scatterAddRows(src: Buf, idx: Buf, out: Buf, m: number, n: number, d: number): void {
    const op = 'scatterAddRows';
    this.dims(op, { m, n, d });
    this.nat.scatterAddRows(this.f(op, src, 'src', m * d), this.i(op, idx, 'idx', m), this.f(op, out, 'out', n * d),
      m, n, d);
  }
  reluBackwardRowDot(y: Buf, gy: Buf, gx: Buf, dots: Buf, rows: number, cols: number): void {
    const op = 'reluBackwardRowDot', n = rows * cols;
    this.dims(op, { rows, cols });
    for (const [b, what, size] of [[y, 'y', n], [gy, 'gy', n], [gx, 'gx', n], [dots, 'dots', rows]] as const) {
      need(op, b.size === size, () => `${what} has ${b.size} elements, expected ${size}`);
    }
    this.unaryBackward('relu', y, gy, gx);
    this.rowDot(gx, y, dots, rows, cols);
  }
  rowDot(a: Buf, b: Buf, out: Buf, rows: number, cols: number): void {
    const op = 'rowDot';
    this.dims(op, { rows, cols });
    this.nat.rowDot(this.f(op, a, 'a', rows * cols), this.f(op, b, 'b', rows * cols), this.f(op, out, 'out', rows), rows, cols);
  }
  activationBits(x: Buf, out: Buf, rows: number, cols: number): void {
    const op = 'activationBits';
    this.dims(op, { rows, cols });
    this.nat.activationBits(this.f(op, x, 'x', rows * cols), this.i(op, out, 'out', rows * Math.ceil(cols / 32)), rows, cols);
  }
}

/**
 * Creates the native cpu backend. Throws if the addon is not built, or if SSD_GEMM names a provider
 * that is unknown or cannot be loaded.
 */
export function createCpuBackend(opts: CpuBackendOptions = {}): Backend {
  const nat = loadAddon();
  if (opts.threads !== undefined) setThreads(opts.threads);
  nat.gemmInit();
  return new CpuBackend(nat, opts);
}

/** Which GEMM provider, how many threads and which SIMD level the native backend uses. */
export function cpuBackendInfo(): { gemm: string; threads: number; simd: string } {
  const nat = loadAddon();
  return { gemm: nat.gemmProvider(), threads: nat.getThreads(), simd: nat.simd() };
}

/** Sets the native thread count (kernels and GEMM provider); n < 1 restores the default. Returns it. */
export function setThreads(n: number): number {
  if (!Number.isInteger(n)) throw new Error(`setThreads: expected an integer, got ${n}`);
  return loadAddon().setThreads(n);
}

/** GEMM providers loadable on this machine ('onednn', 'openblas', 'own'). */
export function gemmProviders(): string[] {
  return loadAddon().gemmProviders();
}

/** Switches the GEMM provider (for benchmarks / tests); returns the provider description. */
export function setGemmProvider(name: string): string {
  return loadAddon().setGemmProvider(name);
}

/** The typed array behind a cpu buffer (zero-copy; for tests and benchmarks). A deferred zero-fill is done first. */
export function cpuArray(buf: Buf): Float32Array | Uint16Array | Int32Array {
  if (!(buf instanceof CpuBuf) || buf.data === null) throw new Error('cpuArray: not a live cpu buffer');
  if (buf.zeroPending) {
    buf.data.fill(0);
    buf.zeroPending = false;
  }
  return buf.data;
}
