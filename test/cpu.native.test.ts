/**
 * Tests specific to the native cpu backend: thread-count independence (bit-identical results with 1,
 * 2 and 3 threads), sizes large enough to take the parallel / tiled paths compared against ref, GEMM
 * providers (selection via SSD_GEMM, beta = 0 ignores NaN in C, k = 0), errors, memory accounting,
 * dropout mask and bf16 rounding bit-exactness.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { Backend, Buf } from '../src/backend/contract.js';
import {
  cpuArray, cpuBackendInfo, createCpuBackend, gemmProviders, setGemmProvider, setThreads,
} from '../src/backend/cpu/index.js';
import { createRefBackend } from '../src/backend/ref/index.js';
import { uniform } from '../src/backend/rng.js';
import { groupedRowsRun } from './grouped-rows.cases.js';
import { ints, put, randn, relErr, rng } from './helpers.js';

const cpu = createCpuBackend();
const ref = createRefBackend();
const defaultProvider = cpuBackendInfo().gemm.split(/[ -]/)[0]!;
after(() => {
  setThreads(0);
  setGemmProvider(defaultProvider);
});


/** A kernel run on a backend: returns the downloaded outputs. */
type Run = (b: Backend) => ArrayLike<number>[];

/** Runs `run` on cpu with 1, 2 and 3 threads and asserts bit-identical outputs. */
function sameBits(name: string, run: Run): void {
  it(`${name}: identical bits with 1, 2 and 3 threads`, () => {
    const outs: ArrayLike<number>[][] = [];
    for (const t of [1, 2, 3]) {
      setThreads(t);
      outs.push(run(cpu).map((a) => Float64Array.from(a as ArrayLike<number>)));
    }
    setThreads(0);
    for (let t = 1; t < outs.length; t++) {
      outs[t]!.forEach((o, k) => {
        const a = new Uint8Array(new Float64Array(o as Float64Array).buffer);
        const b = new Uint8Array(new Float64Array(outs[0]![k] as Float64Array).buffer);
        assert.deepEqual(a, b, `output ${k} differs between 1 and ${t + 1} threads`);
      });
    }
  });
}

/** Runs on cpu and on ref (f32) and compares every output at relative error `tol`. */
function matchesRef(name: string, run: Run, tol = 1e-5): void {
  it(`${name}: matches ref`, () => {
    const got = run(cpu), want = run(ref);
    got.forEach((g, k) => {
      const e = relErr(g, want[k]!);
      assert.ok(e <= tol, `output ${k}: relative error ${e.toExponential(2)} > ${tol}`);
    });
  });
}

function withBufs<T>(b: Backend, bufs: Buf[], fn: () => T): T {
  try {
    return fn();
  } finally {
    for (const x of bufs) b.free(x);
  }
}

// ------------------------------------------------------------------ kernel runs (sizes above the parallel grain)
const R = rng(7);
const big = randn(R, 300 * 1024, 2);
const mmA = randn(R, 160 * 96), mmB = randn(R, 96 * 130);

const runs: Record<string, Run> = {
  'matmul 160x130x96 tB': (b) => {
    const a = put(b, mmA), w = put(b, mmB), c = b.alloc('f32', 160 * 130);
    return withBufs(b, [a, w, c], () => {
      b.matmul(a, w, c, { batch: 1, m: 160, n: 130, k: 96, transA: false, transB: true, strideA: 0, strideB: 0, strideC: 0, alpha: 1, beta: 0 });
      return [b.download(c)];
    });
  },
  'matmul epilogue: batch 2, C rows strided, beta 1, bias + ReLU (NaN in C -> 0)': (b) => {
    const m = 70, n = 33, k = 96, sC = m * n + 5;
    const c0 = randn(rng(9), 2 * sC);
    c0[7] = NaN;
    const a = put(b, mmA.subarray(0, 2 * m * k)), w = put(b, mmB.subarray(0, k * n)), c = put(b, c0), bias = put(b, randn(rng(8), n));
    return withBufs(b, [a, w, c, bias], () => {
      b.matmul(a, w, c, { batch: 2, m, n, k, transA: false, transB: false, strideA: m * k, strideB: 0, strideC: sC,
        alpha: 0.5, beta: 1, bias, relu: true });
      return [b.download(c)];
    });
  },
  'matmul biasGrad: weight gradient gᵀ·x with Σ_rows g; and x·W with the row sums of x': (b) => {
    const rows = 160, nOut = 130, nIn = 96;
    const g = put(b, big.subarray(0, rows * nOut).map((v) => v + 0.25)), x = put(b, mmA.subarray(0, rows * nIn));
    const gw = b.alloc('f32', nOut * nIn), gb = b.alloc('f32', nOut), y = b.alloc('f32', rows * nOut), sx = b.alloc('f32', rows);
    const w = put(b, mmB.subarray(0, nIn * nOut));
    return withBufs(b, [g, x, gw, gb, y, sx, w], () => {
      b.matmul(g, x, gw, { batch: 1, m: nOut, n: nIn, k: rows, transA: true, transB: false, strideA: 0, strideB: 0, strideC: 0,
        alpha: 1, beta: 0, biasGrad: gb });
      b.matmul(x, w, y, { batch: 1, m: rows, n: nOut, k: nIn, transA: false, transB: false, strideA: 0, strideB: 0, strideC: 0,
        alpha: 1, beta: 0, biasGrad: sx });
      return [b.download(gw), b.download(gb), b.download(y), b.download(sx)];
    });
  },
  'attention B2 T150 H2 D64 causal fwd+bwd': (b) => attn(b, 2, 150, 2, 64, true),
  'attention B1 T130 H3 D32 non-causal fwd+bwd': (b) => attn(b, 1, 130, 3, 32, false),
  'attention B1 T70 H2 D24 (scalar path) fwd+bwd': (b) => attn(b, 1, 70, 2, 24, true),
  'attention B1 T67 H1 D128 causal fwd+bwd': (b) => attn(b, 1, 67, 1, 128, true),
  'attention B2 T3 H2 D16 non-causal fwd+bwd': (b) => attn(b, 2, 3, 2, 16, false),
  'layerNorm + backward 300x257': (b) => {
    const rows = 300, cols = 257;
    const x = put(b, big.subarray(0, rows * cols)), g = put(b, randn(rng(1), cols)), be = put(b, randn(rng(2), cols));
    const y = b.alloc('f32', rows * cols), mu = b.alloc('f32', rows), rs = b.alloc('f32', rows);
    const gy = put(b, randn(rng(3), rows * cols)), gx = b.alloc('f32', rows * cols);
    const gg = put(b, randn(rng(4), cols)), gb = put(b, randn(rng(5), cols));
    return withBufs(b, [x, g, be, y, mu, rs, gy, gx, gg, gb], () => {
      b.layerNorm(x, g, be, y, mu, rs, rows, cols, 1e-5);
      b.layerNormBackward(x, g, mu, rs, gy, gx, gg, gb, rows, cols);
      return [b.download(y), b.download(mu), b.download(rs), b.download(gx), b.download(gg), b.download(gb)];
    });
  },
  'reduceSum (3, 20000, 1), (1, 900, 100), (2, 5, 7000)': (b) => {
    const x = put(b, big.subarray(0, 90000));
    const o1 = b.alloc('f32', 3), o2 = b.alloc('f32', 100), o3 = b.alloc('f32', 14000);
    return withBufs(b, [x, o1, o2, o3], () => {
      b.reduceSum(x, o1, 3, 20000, 1);
      b.reduceSum(x, o2, 1, 900, 100);
      b.reduceSum(x, o3, 2, 5, 7000);
      return [b.download(o1), b.download(o2), b.download(o3), [b.sumSquares([x]), b.sumSquares([o1, x, b.alloc('f32', 0), o2])]];
    });
  },
  'softmax + backward 70x1000': (b) => {
    const x = put(b, big.subarray(0, 70000)), y = b.alloc('f32', 70000), gy = put(b, big.subarray(1, 70001));
    const gx = b.alloc('f32', 70000);
    return withBufs(b, [x, y, gy, gx], () => {
      b.softmax(x, y, 70, 1000);
      b.softmaxBackward(y, gy, gx, 70, 1000);
      return [b.download(y), b.download(gx)];
    });
  },
  'crossEntropy + backward N12 V5000': (b) => {
    const N = 12, V = 5000;
    const t = ints(rng(9), N, 0, V);
    t[3] = -1;
    const x = put(b, big.subarray(0, N * V)), tg = put(b, t, 'i32'), l = b.alloc('f32', N), lse = b.alloc('f32', N);
    const gl = put(b, randn(rng(10), N)), gx = b.alloc('f32', N * V);
    return withBufs(b, [x, tg, l, lse, gl, gx], () => {
      b.crossEntropy(x, tg, l, lse, N, V);
      b.crossEntropyBackward(x, tg, lse, gl, gx, N, V);
      return [b.download(l), b.download(lse), b.download(gx)];
    });
  },
  'embedding + backward, scatterAddRows (d=128 and d=3), gatherRows': (b) => {
    const n = 700, vocab = 50, dim = 128;
    const ids = ints(rng(11), n, 0, vocab);
    const t = put(b, big.subarray(0, vocab * dim)), id = put(b, ids, 'i32'), o = b.alloc('f32', n * dim);
    const gt = put(b, big.subarray(5, 5 + vocab * dim)), gy = put(b, big.subarray(0, n * dim));
    const small = put(b, big.subarray(0, 30000 * 3)), sid = put(b, ints(rng(12), 30000, 0, 40), 'i32');
    const sout = b.alloc('f32', 40 * 3), g = b.alloc('f32', n * dim);
    return withBufs(b, [t, id, o, gt, gy, small, sid, sout, g], () => {
      b.embedding(t, id, o, n, vocab, dim);
      b.embeddingBackward(gy, id, gt, n, vocab, dim);
      b.scatterAddRows(small, sid, sout, 30000, 40, 3);
      b.gatherRows(gt, id, g, n, vocab, dim);
      return [b.download(o), b.download(gt), b.download(sout), b.download(g)];
    });
  },
  'groupedMatmul with row indices (gather A / B, K- and N-gather, scatter C, several MC blocks, small M)': (b) => groupedRowsRun(b),
  'groupedMatmul edge cases of the own kernel (narrow scatter with repeated rows, K > 384, 16/48-column panels, column offsets, k = 0, weight gradients over several MC blocks, short-K scatter into a C larger than L2)': (b) => {
    const r = rng(41), T = 300;
    const i32 = (a: ArrayLike<number>) => put(b, a, 'i32');
    const P = (...groups: number[][]) => Int32Array.from(groups.flat());
    const x = put(b, randn(r, T * 800)), h = put(b, randn(r, 4096 * 800)), w = put(b, randn(r, 800 * 48));
    const idx = i32(ints(r, 4096, 0, T)), none = b.alloc('i32', 0);
    const c1 = put(b, randn(r, T * 32)), c2 = b.alloc('f32', 500 * 48), c3 = put(b, randn(r, T * 40));
    const c4 = put(b, randn(r, 200 * 16 + 150 * 48)), c5 = put(b, randn(r, 40 * 60)), c6 = put(b, randn(r, 100 * 8 + 5 * 8));
    const c7 = b.alloc('f32', 800 * 40), c8 = b.alloc('f32', 40 * 800);
    const hs = put(b, randn(r, 8192 * 32)), idx8k = i32(ints(r, 8192, 0, T)), c9 = put(b, randn(r, T * 64));
    const args = (problems: Int32Array, transB: boolean, beta: number, rows: { a?: Buf; b?: Buf; c?: Buf }) =>
      ({ problems, transA: false, transB, alpha: 1, beta, rows });
    return withBufs(b, [x, h, w, idx, none, c1, c2, c3, c4, c5, c6, c7, c8, hs, idx8k, c9], () => {
      // all of C in one 32-column block, rows repeated within the group, 16.8 MFLOP (threads split columns only)
      b.groupedMatmul(h, w, c1, args(P([4096, 32, 64, 0, 64, 0, 32, 0, 32]), false, 1, { c: idx }));
      // gathered A with K = 800 (two K blocks read in place), 48 columns (a 32- and a 16-column panel)
      b.groupedMatmul(x, w, c2, args(P([500, 48, 800, 0, 800, 0, 800, 0, 48]), true, 0, { a: idx }));
      // scattered C with K = 800 and 40 columns
      b.groupedMatmul(h, w, c3, args(P([500, 40, 800, 0, 800, 0, 40, 0, 40]), false, 1, { c: idx }));
      // plain 16- and 48-column groups with beta 0.5
      b.groupedMatmul(h, w, c4, args(P([200, 16, 70, 0, 70, 0, 48, 0, 16], [150, 48, 70, 200 * 70, 70, 0, 48, 3200, 48]), false, 0.5, {}));
      // B gathered along N (transB) into columns [5, 45) of a 60-wide C
      b.groupedMatmul(h, x, c5, args(P([40, 40, 100, 0, 800, 0, 800, 5, 60]), true, 0, { b: idx }));
      // a k = 0 group whose (never read) gathered A has an empty index and a far offset, beside a normal group
      b.groupedMatmul(x, w, c6, args(P([100, 8, 30, 0, 800, 0, 800, 0, 8], [5, 8, 0, 2 ** 30, 30, 0, 0, 800, 8]), true, 0, { a: idx }));
      b.groupedMatmul(x, w, c6, args(P([100, 8, 0, 2 ** 30, 30, 0, 0, 0, 8]), true, 0.5, { a: none }));
      // weight gradients over 500 gathered rows (two K blocks) with 800 rows of C (three MC blocks: the next
      // block's gathered rows are prefetched): c7 (800, 40) = x[idx]ᵀ · h (A gathered, transA), and
      // c8 (40, 800) = hᵀ · x[idx] (B gathered: computed as c8ᵀ, whose threads split c8's columns)
      b.groupedMatmul(x, h, c7, { ...args(P([800, 40, 500, 0, 800, 0, 40, 0, 40]), false, 0, { a: idx }), transA: true });
      b.groupedMatmul(h, x, c8, { ...args(P([40, 800, 500, 0, 40, 0, 800, 0, 800]), false, 0, { b: idx }), transA: true });
      // a short-K scattered product whose C outgrows L2 (its tiles run row by row): 8192 rows, K = 32
      b.groupedMatmul(hs, w, c9, args(P([8192, 64, 32, 0, 32, 0, 64, 0, 64]), false, 1, { c: idx8k }));
      return [c1, c2, c3, c4, c5, c6, c7, c8, c9].map((c) => b.download(c));
    });
  },
  'topk 400x300 k=8 (with ties and NaN)': (b) => {
    const x = big.slice(0, 120000).map((v) => Math.round(v * 4) / 4);
    x[5] = NaN;
    x[301] = NaN;
    x[302] = -Infinity;
    const xb = put(b, x), v = b.alloc('f32', 400 * 8), ix = b.alloc('i32', 400 * 8);
    return withBufs(b, [xb, v, ix], () => {
      b.topk(xb, v, ix, 400, 300, 8);
      return [b.download(v), b.download(ix)];
    });
  },
  'top-k backward 3000x24 k=6 (repeated indices accumulate)': (b) => {
    // the last two of each row's six indices are equal
    const idx = Int32Array.from({ length: 3000 * 6 }, (_, i) => ((i - (i % 6 === 5 ? 1 : 0)) * 5) % 24);
    const g = put(b, big.subarray(0, 3000 * 6)), I = b.alloc('i32', 3000 * 6), gx = b.alloc('f32', 3000 * 24);
    b.upload(I, idx);
    return withBufs(b, [g, I, gx], () => {
      b.topkBackward(g, I, gx, 3000, 24, 6);
      return [b.download(gx)];
    });
  },
  'elementwise: gelu fwd/bwd, exp, binary broadcast, affine, copyStrided, adamw, dropout': (b) => {
    const n = 90000;
    const x = put(b, big.subarray(0, n)), y = b.alloc('f32', n), gx = b.alloc('f32', n), gy = put(b, big.subarray(3, 3 + n));
    const e = b.alloc('f32', n), bb = put(b, big.subarray(0, 300)), s = b.alloc('f32', n), af = b.alloc('f32', n);
    const tr = b.alloc('f32', n), p = put(b, big.subarray(0, n)), m = put(b, big.subarray(1, n + 1)), v = put(b, big.subarray(2, n + 2).map(Math.abs));
    const dr = b.alloc('f32', n);
    return withBufs(b, [x, y, gx, gy, e, bb, s, af, tr, p, m, v, dr], () => {
      b.unary('gelu', x, y);
      b.unaryBackward('gelu', x, gy, gx);
      b.unary('exp', x, e);
      b.binary('mul', x, [300, 1], bb, [0, 1], s, [300, 300]);
      b.affine(x, af, 0.3, -1.25);
      b.copyStrided(x, 0, [1, 300], tr, 0, [300, 1], [300, 300], false);
      b.copyStrided(x, 7, [0, 1], tr, 0, [300, 1], [300, 299], true);
      b.copyStrided(x, 5, [3000, 1, 50], tr, 11, [3000, 60, 1], [4, 50, 60], true);
      b.copyStrided(x, 5, [3000, 1, 50], tr, 20000, [3000, 60, 1], [4, 50, 60], false);
      b.adamw(p, gy, m, v, { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step: 3, gradScale: 0.5 });
      b.dropout(x, dr, 0.1, 1234);
      return [b.download(y), b.download(gx), b.download(e), b.download(s), b.download(af), b.download(tr),
        b.download(p), b.download(m), b.download(v), b.download(dr)];
    });
  },
};

function attn(b: Backend, B: number, T: number, H: number, D: number, causal: boolean): ArrayLike<number>[] {
  const r = rng(B * 1000 + T * 10 + D);
  const qkv = put(b, randn(r, B * T * 3 * H * D)), out = b.alloc('f32', B * T * H * D), lse = b.alloc('f32', B * H * T);
  const gout = put(b, randn(r, B * T * H * D)), g = b.alloc('f32', B * T * 3 * H * D);
  return withBufs(b, [qkv, out, lse, gout, g], () => {
    const scale = 1 / Math.sqrt(D);
    b.attention(qkv, out, lse, B, T, H, D, causal, scale);
    b.attentionBackward(qkv, out, lse, gout, g, B, T, H, D, causal, scale);
    return [b.download(out), b.download(lse), b.download(g)];
  });
}

describe('cpu backend: thread-count independence', () => {
  for (const [name, run] of Object.entries(runs)) sameBits(name, run);
  for (const prov of gemmProviders()) {
    sameBits(`matmul via ${prov} (1024x96x160, 64x64x4096)`, (b) => {
      setGemmProvider(prov);
      try {
        const a = put(b, big.subarray(0, 1024 * 96)), w = put(b, mmA), c = b.alloc('f32', 1024 * 160);
        const a2 = put(b, big.subarray(0, 64 * 4096)), w2 = put(b, big.subarray(1, 1 + 64 * 4096)), c2 = b.alloc('f32', 64 * 64);
        return withBufs(b, [a, w, c, a2, w2, c2], () => {
          b.matmul(a, w, c, { batch: 1, m: 1024, n: 160, k: 96, transA: false, transB: false, strideA: 0, strideB: 0, strideC: 0, alpha: 1, beta: 0 });
          b.matmul(a2, w2, c2, { batch: 1, m: 64, n: 64, k: 4096, transA: false, transB: true, strideA: 0, strideB: 0, strideC: 0, alpha: 1, beta: 0 });
          return [b.download(c), b.download(c2)];
        });
      } finally {
        setGemmProvider(defaultProvider);
      }
    });
  }
});

describe('cpu backend: large sizes match ref', () => {
  for (const [name, run] of Object.entries(runs)) {
    if (name.startsWith('topk')) continue; // ranks NaN like -inf, as ref: compared exactly below
    matchesRef(name, run);
  }
  it('matmul: biasGrad of the wrong size, or with batch 2 or a bias, throws the same error on cpu and ref', () => {
    for (const be of [cpu, ref]) {
      const a = be.alloc('f32', 12), w = be.alloc('f32', 30), c = be.alloc('f32', 20), bias = be.alloc('f32', 5);
      const args = { batch: 1, m: 2, n: 5, k: 3, transA: false, transB: false, strideA: 6, strideB: 15, strideC: 10, alpha: 1, beta: 0 };
      const small = be.alloc('f32', 1), gb = be.alloc('f32', 2);
      assert.throws(() => be.matmul(a, w, c, { ...args, biasGrad: small }), /matmul: biasGrad must be f32 with one entry per output row \(2\)/);
      assert.throws(() => be.matmul(a, w, c, { ...args, batch: 2, biasGrad: gb }), /matmul: biasGrad needs batch 1 and no bias or relu/);
      assert.throws(() => be.matmul(a, w, c, { ...args, bias, biasGrad: gb }), /matmul: biasGrad needs batch 1 and no bias or relu/);
      for (const x of [a, w, c, bias, small, gb]) be.free(x);
    }
  });
  it('groupedMatmul: an epilogue with a scattered C, or a bias past its buffer, throws the same error on cpu and ref', () => {
    for (const be of [cpu, ref]) {
      const a = be.alloc('f32', 12), w = be.alloc('f32', 30), c = be.alloc('f32', 40), bias = be.alloc('f32', 9), rc = put(be, [0, 1, 2, 3], 'i32');
      const problems = Int32Array.from([2, 5, 3, 0, 3, 0, 5, 0, 5, 2, 5, 3, 6, 3, 15, 5, 10, 5]);
      const args = { problems, transA: false, transB: false, alpha: 1, beta: 0 };
      assert.throws(() => be.groupedMatmul(a, w, c, { ...args, bias, biasStride: 5 }), /groupedMatmul: group 1: bias needs 10 elements, has 9/);
      assert.throws(() => be.groupedMatmul(a, w, c, { ...args, beta: 1, rows: { c: rc }, relu: true }),
        /groupedMatmul: bias and relu need beta 0, transA false and no rows.c/);
      // an output bias without a scattered C, or not of C's row length
      assert.throws(() => be.groupedMatmul(a, w, c, { ...args, outBias: bias }), /groupedMatmul: outBias needs a scattered C \(rows.c\)/);
      assert.throws(() => be.groupedMatmul(a, w, c, { ...args, beta: 1, rows: { c: rc }, outBias: bias }),
        /groupedMatmul: group 0: outBias has 9 entries, C's row length \(ldc\) is 5/);
      for (const x of [a, w, c, bias, rc]) be.free(x);
    }
  });
  it('matmul: a bias of the wrong size or dtype throws the same error on cpu and ref', () => {
    for (const be of [cpu, ref]) {
      for (const bias of [be.alloc('f32', 4), be.alloc('i32', 5)]) {
        const a = put(be, [1, 2, 3, 4, 5, 6]), w = put(be, Array.from({ length: 15 }, (_, i) => i)), c = put(be, Array(10).fill(7));
        assert.throws(() => be.matmul(a, w, c, { batch: 1, m: 2, n: 5, k: 3, transA: false, transB: false, strideA: 0, strideB: 0,
          strideC: 0, alpha: 1, beta: 0, bias }), /matmul: bias must be f32 with one entry per output column \(5\)/);
        assert.deepEqual(Array.from(be.download(c)), Array(10).fill(7), `${be.name}: C is untouched`);
        for (const x of [a, w, c, bias]) be.free(x);
      }
    }
  });
  it('topk matches ref exactly (ties, NaN, -inf)', () => {
    const got = runs['topk 400x300 k=8 (with ties and NaN)']!(cpu), want = runs['topk 400x300 k=8 (with ties and NaN)']!(ref);
    assert.deepEqual(Array.from(got[1]!), Array.from(want[1]!));
    assert.deepEqual(Array.from(got[0]!), Array.from(want[0]!));
  });
  it('dropout mask is bit-identical to uniform(seed, i) >= p', () => {
    const n = 50000, p = 0.3, seed = 987654321;
    const x = put(cpu, new Float32Array(n).fill(1)), o = cpu.alloc('f32', n);
    cpu.dropout(x, o, p, seed);
    const out = cpu.download(o);
    for (let i = 0; i < n; i++) {
      const keep = uniform(seed, i) >= p;
      assert.equal(out[i], keep ? Math.fround(1 / (1 - p)) : 0, `element ${i}`);
    }
    cpu.free(x);
    cpu.free(o);
  });
});

describe('cpu backend: GEMM providers', () => {
  it('lists providers and reports the one in use', () => {
    const ps = gemmProviders();
    assert.ok(ps.includes('own'));
    const info = cpuBackendInfo();
    assert.ok(ps.some((p) => info.gemm.startsWith(p)), info.gemm);
    assert.ok(info.threads >= 1);
  });
  for (const prov of gemmProviders()) {
    it(`${prov}: beta = 0 ignores NaN in C; k = 0; batched strides; grouped`, () => {
      setGemmProvider(prov);
      try {
        const r = rng(3);
        const m = 37, n = 29, k = 41;
        for (const transA of [false, true]) for (const transB of [false, true]) {
          const A = randn(r, 2 * m * k), Bm = randn(r, k * n);
          const got = (b: Backend, cinit: number) => {
            const a = put(b, A), w = put(b, Bm), c = put(b, new Float32Array(2 * m * n + 5).fill(cinit));
            return withBufs(b, [a, w, c], () => {
              b.matmul(a, w, c, { batch: 2, m, n, k, transA, transB, strideA: m * k, strideB: 0, strideC: m * n + 5, alpha: 0.5, beta: 0 });
              return b.download(c);
            });
          };
          const c1 = got(cpu, NaN), c2 = got(ref, 0);
          const live = (c: ArrayLike<number>) => Array.from(c).filter((_, i) => i % (m * n + 5) < m * n || i >= m * n + 5);
          assert.ok(relErr(live(c1).slice(0, 2 * m * n), live(c2).slice(0, 2 * m * n)) < 1e-5);
        }
        const c = put(cpu, new Float32Array(12).fill(NaN)), e = cpu.alloc('f32', 0);
        cpu.matmul(e, e, c, { batch: 1, m: 3, n: 4, k: 0, transA: false, transB: false, strideA: 0, strideB: 0, strideC: 12, alpha: 1, beta: 0 });
        assert.ok(Array.from(cpu.download(c)).every((v) => v === 0));
        cpu.fill(c, 2);
        cpu.matmul(e, e, c, { batch: 1, m: 3, n: 4, k: 0, transA: false, transB: false, strideA: 0, strideB: 0, strideC: 12, alpha: 1, beta: 1 });
        assert.ok(Array.from(cpu.download(c)).every((v) => v === 2));
        cpu.free(c);
        cpu.free(e);
        // grouped: 3 groups incl. an empty one and k = 0
        const problems = Int32Array.from([4, 5, 6, 0, 6, 0, 5, 0, 5, 0, 5, 6, 24, 6, 30, 5, 20, 5, 3, 5, 0, 24, 6, 30, 5, 20, 5]);
        const run = (b: Backend) => {
          const a = put(b, randn(rng(5), 42)), w = put(b, randn(rng(6), 60)), c = put(b, new Float32Array(35).fill(NaN));
          return withBufs(b, [a, w, c], () => {
            b.groupedMatmul(a, w, c, { problems, transA: false, transB: false, alpha: 1, beta: 0 });
            return b.download(c);
          });
        };
        const g1 = run(cpu), g2 = run(ref);
        const sel = (c: ArrayLike<number>) => Array.from(c).slice(0, 35).map((v, i) => (i < 20 || (i >= 20 && i < 35) ? v : 0));
        assert.ok(relErr(sel(g1).slice(0, 20), sel(g2).slice(0, 20)) < 1e-5);
        assert.ok(Array.from(g1).slice(20, 35).every((v) => v === 0), 'k = 0 group writes zeros');
      } finally {
        setGemmProvider(defaultProvider);
      }
    });
  }
  const script = fileURLToPath(new URL('../src/backend/cpu/index.js', import.meta.url));
  const probe = (env: Record<string, string>) => execFileSync(process.execPath, ['--input-type=module', '-e',
    `import { createCpuBackend, cpuBackendInfo } from ${JSON.stringify(script)}; ` +
    `try { createCpuBackend(); console.log(JSON.stringify(cpuBackendInfo())); } catch (e) { console.log('ERR ' + e.message); }`],
  { env: { ...process.env, ...env }, encoding: 'utf8' }).trim();
  for (const prov of gemmProviders()) {
    it(`SSD_GEMM=${prov} selects it; SSD_THREADS applies`, () => {
      const info = JSON.parse(probe({ SSD_GEMM: prov, SSD_THREADS: '3' })) as { gemm: string; threads: number };
      assert.ok(info.gemm.startsWith(prov), info.gemm);
      assert.equal(info.threads, 3);
    });
  }
  it('SSD_GEMM with an unknown provider throws a clear error', () => {
    assert.match(probe({ SSD_GEMM: 'mkl' }), /^ERR SSD_GEMM=mkl: unknown GEMM provider/);
  });
  it('without AVX-512 (SSD_NO_AVX512=1) the row-indexed grouped products go through the providers and match ref', () => {
    const here = (f: string) => JSON.stringify(fileURLToPath(new URL(f, import.meta.url)));
    const out = execFileSync(process.execPath, ['--input-type=module', '-e',
      `import { createCpuBackend } from ${JSON.stringify(script)}; import { createRefBackend } from ${here('../src/backend/ref/index.js')}; ` +
      `import { groupedRowsRun } from ${here('./grouped-rows.cases.js')}; import { relErr } from ${here('./helpers.js')}; ` +
      'const got = groupedRowsRun(createCpuBackend()), want = groupedRowsRun(createRefBackend()); ' +
      'console.log(Math.max(...got.map((g, i) => relErr(g, want[i]))));'],
    { env: { ...process.env, SSD_NO_AVX512: '1' }, encoding: 'utf8' }).trim();
    assert.ok(Number(out) <= 1e-5, `relative error ${out}`);
  });
});

describe('cpu backend: memory and errors', () => {
  it('alloc is zero-filled (also when reusing pooled arrays); stats; double free throws', () => {
    const before = cpu.memoryStats();
    const a = cpu.alloc('f32', 100000);
    cpuArray(a).fill(3);
    cpu.free(a);
    const b = cpu.alloc('f32', 100000), c = cpu.alloc('bf16', 10), d = cpu.alloc('i32', 7);
    assert.ok(cpuArray(b).every((v) => v === 0));
    assert.deepEqual(cpu.memoryStats(), { liveBuffers: before.liveBuffers + 3, liveBytes: before.liveBytes + 400000 + 20 + 28 });
    cpu.free(b);
    cpu.free(c);
    cpu.free(d);
    assert.deepEqual(cpu.memoryStats(), before);
    assert.throws(() => cpu.free(b), /freed twice/);
    assert.throws(() => cpu.download(b), /freed/);
  });
  it('a reused buffer reads as zeros: after a kernel that overwrote it whole skipped the fill, and after one that threw', () => {
    const t = put(cpu, randn(rng(3), 12)), ids = put(cpu, Int32Array.from([0, 5, 1]), 'i32');
    const a = cpu.alloc('f32', 12);
    cpuArray(a).fill(7);
    cpu.free(a);
    const o = cpu.alloc('f32', 12); // the same array, its zero-fill deferred
    assert.throws(() => cpu.embedding(t, ids, o, 3, 3, 4), /embedding/); // id 5 >= vocab 3: nothing written
    assert.deepEqual(Array.from(cpu.download(o)), new Array(12).fill(0));
    cpu.free(o);
    const o2 = cpu.alloc('f32', 12);
    cpu.unary('neg', t, o2); // overwrites all of o2 without the fill
    assert.deepEqual(Array.from(cpu.download(o2)), Array.from(cpu.download(t), (v) => -v));
    for (const x of [t, ids, o2]) cpu.free(x);
  });
  it('out-of-range ids / targets / indices throw, naming the kernel and the value', () => {
    const t = put(cpu, new Float32Array(12)), o = cpu.alloc('f32', 16);
    const ids = put(cpu, [0, 5, 1], 'i32'), tg = put(cpu, [0, -2], 'i32'), l = cpu.alloc('f32', 2);
    assert.throws(() => cpu.embedding(t, ids, o, 3, 3, 4), /embedding: index 5 is outside \[0, 3\) \(at position 1\)/);
    assert.throws(() => cpu.embeddingBackward(o, ids, t, 3, 3, 4), /embeddingBackward: index 5 is outside/);
    assert.throws(() => cpu.crossEntropy(t, tg, l, l, 2, 6), /crossEntropy: target -2 is outside \[-1, 6\)/);
    assert.throws(() => cpu.gatherRows(t, ids, o, 3, 3, 4), /gatherRows: index 5 is outside/);
    assert.throws(() => cpu.topkBackward(t, ids, o, 1, 4, 3), /topkBackward: index 5 is outside \[0, 4\)/);
    assert.throws(() => cpu.scatterAddRows(o, ids, t, 3, 3, 4), /scatterAddRows: index 5 is outside/);
    assert.throws(() => cpu.softmax(t, o, 4, 4), /cpu.softmax: x has 12 elements, needs 16/);
    // A product into one of its operands (no backend computes in place).
    for (const be of [cpu, ref]) {
      const A = put(be, new Float32Array(4)), B = put(be, new Float32Array(4));
      const args = { batch: 1, m: 2, n: 2, k: 2, transA: false, transB: false, strideA: 0, strideB: 0, strideC: 0, alpha: 1, beta: 0 };
      assert.throws(() => be.matmul(A, B, A, args), /matmul: c must not be a or b/);
      assert.throws(() => be.matmul(A, B, B, args), /matmul: c must not be a or b/);
      be.free(A);
      be.free(B);
    }
    // Row-indexed grouped products: an index entry outside the buffer, too few entries, beta ≠ 1 with a scatter.
    const g = (rows: { a?: Buf; c?: Buf }, beta = 0, m = 3) => cpu.groupedMatmul(t, t, o,
      { problems: Int32Array.from([m, 2, 2, 0, 4, 0, 4, 0, 4]), transA: false, transB: true, alpha: 1, beta, rows });
    assert.throws(() => g({ a: ids }), /groupedMatmul: rows.a entry 1 = 5 is outside the 3 rows of A/);
    assert.throws(() => g({ a: ids }, 0, 4), /group 0: A: needs index entries up to 4, the index has 3/);
    assert.throws(() => g({ c: tg }, 1, 2), /groupedMatmul: rows.c entry 1 = -2 is outside the 4 rows of C/);
    assert.throws(() => g({ c: ids }), /a scattered C \(rows.c\) accumulates, beta must be 1/);
    const none = cpu.alloc('i32', 0);
    assert.throws(() => g({ c: none }, 1), /group 0: C: needs index entries up to 3, the index has 0/);
    cpu.free(none);
    for (const x of [t, o, ids, tg, l]) cpu.free(x);
  });
  it('bf16: upload/cast round to nearest even, NaN and inf preserved', () => {
    const vals = [1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -0, Infinity, -Infinity, NaN, 3.4e38, 1e-40];
    const h = cpu.alloc('bf16', vals.length);
    cpu.upload(h, vals);
    const back = cpu.download(h);
    const want = [1, 1, 1 + 4 * 2 ** -8, 1 + 2 * 2 ** -8, -0, Infinity, -Infinity, NaN];
    want.forEach((w, i) => assert.ok(Object.is(back[i], w), `value ${vals[i]}: got ${back[i]}, want ${w}`));
    const f = put(cpu, vals), h2 = cpu.alloc('bf16', vals.length);
    cpu.cast(f, h2);
    assert.deepEqual(Array.from(cpuArray(h2)), Array.from(cpuArray(h)));
    for (const x of [h, f, h2]) cpu.free(x);
  });
});
