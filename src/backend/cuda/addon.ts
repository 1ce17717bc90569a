/**
 * Loader and typings for the CUDA addon (build/Release/ssd_cuda.node, built by scripts/build-cuda.mjs
 * from native/cuda when nvcc is present). Device buffers cross the boundary as numbers (device
 * addresses); host data as typed arrays. cuBLAS is found here (search list below) and dlopen'ed natively.
 */
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { packageRoot } from '../cpu/addon.js';

type Ptr = number;
type HostArr = Float32Array | Int32Array | Uint16Array;

/** Bits of `CudaAddon.gemm`'s result (native kGemmBiasGrad, kGemmOnlyC16, kGemmNotDone). */
export const GEMM_BIAS_GRAD = 1, GEMM_ONLY_C16 = 2, GEMM_NOT_DONE = 4;

export interface CudaAddon {
  probe(): { count: number; error: string };
  /** Selects the device (ordinal) and creates the stream; returns its description. */
  init(device: number): string;
  loadCublas(paths: string[]): string;
  /** dlopens the first loadable NCCL of `paths`; returns its path and version. */
  loadNccl(paths: string[]): string;
  /** A new communicator id (128 bytes) for ncclCommInit. */
  ncclUniqueId(): Uint8Array;
  /** Joins the communicator `id` of `nranks` as `rank` (blocks until all have joined); returns its handle. */
  ncclCommInit(id: Uint8Array, nranks: number, rank: number): number;
  /**
   * Sums each f32 buffer (counts[i] elements) over the ranks, in place, on the stream; with overlap on a
   * second stream, beside later work, until ncclWait.
   */
  ncclAllReduceSum(comm: number, ptrs: Ptr[], counts: number[], overlap: boolean): void;
  /** Orders the overlapped sums before all work queued after this call. */
  ncclWait(): void;
  /** Waits for the stream, then frees the communicator. */
  ncclCommDestroy(comm: number): void;
  malloc(bytes: number): Ptr;
  free(p: Ptr): void;
  zero(p: Ptr, bytes: number): void;
  stats(): { liveBytes: number; cachedBytes: number; peakBytes: number; liveBlocks: number };
  emptyCache(): void;
  sync(): void;
  /** Starts capturing the stream into a CUDA graph (see native/cuda/runtime.cu). */
  graphBegin(): void;
  /** Ends the capture: keep → the instantiated graph's id (throws if the capture failed); else discards it, 0. */
  graphEnd(keep: boolean): number;
  graphLaunch(id: number): void;
  /** Waits for the stream, then frees the graph and the blocks it holds. */
  graphDestroy(id: number): void;
  h2d(dst: Ptr, src: HostArr, bytes: number): void;
  /** Queues the upload (src is copied to pinned staging memory at once); large uploads run synchronously. */
  h2dAsync(dst: Ptr, src: HostArr, bytes: number): void;
  d2h(src: Ptr, dst: HostArr, bytes: number): void;
  h2dBf16(dst: Ptr, src: Float32Array): void;
  d2hBf16(src: Ptr, dst: Float32Array): void;

  fill32(p: Ptr, n: number, bits: number): void;
  fill16(p: Ptr, n: number, bits: number): void;
  /** kind: 0 f32->bf16, 1 bf16->f32, 2 i32->f32, 3 f32->i32 */
  cast(kind: number, x: Ptr, out: Ptr, n: number): void;
  copyBytes(src: Ptr, dst: Ptr, bytes: number): void;
  /** (rows, cols) f32 -> (outRows, ld) bf16, padding rows and columns zero (ld even, outRows >= rows). */
  castPad(x: Ptr, out: Ptr, rows: number, cols: number, outRows: number, ld: number): void;
  /** out (rows, cols) f32 = the first cols of each bf16 row of x16, rows ld apart. */
  widenUnpad(x16: Ptr, out: Ptr, rows: number, cols: number, ld: number): void;
  /** `rows` rows of `widthBytes` from src (srcPitch bytes apart) to dst (dstPitch bytes apart). */
  copy2d(src: Ptr, srcPitch: number, dst: Ptr, dstPitch: number, widthBytes: number, rows: number): void;
  copyStrided(kind: number, src: Ptr, srcOff: number, srcStrides: number[], dst: Ptr, dstOff: number,
    dstStrides: number[], shape: number[], acc: boolean): void;

  unary(op: number, x: Ptr, out: Ptr, n: number): void;
  /** gx16: 0, or where gx's bf16 copy is written too; x16 (ReLU only; 0: none): x's bf16 copy, read instead of x. */
  unaryBackward(op: number, x: Ptr, gy: Ptr, gx: Ptr, gx16: Ptr, n: number, x16: Ptr): void;
  affine(x: Ptr, out: Ptr, n: number, scale: number, shift: number): void;
  binary(op: number, a: Ptr, aStrides: number[], b: Ptr, bStrides: number[], out: Ptr, shape: number[]): void;
  reduceSum(x: Ptr, out: Ptr, outer: number, mid: number, inner: number): void;
  /** Σ x² over the buffers (counts[i] f32 elements each), one synchronisation. */
  sumSquares(ptrs: Ptr[], counts: number[]): number;
  dropout(x: Ptr, out: Ptr, n: number, p: number, seed: number): void;
  /** AdamW; with p16 (0: none) also the updated parameters' bf16 copy. */
  adamw(p: Ptr, g: Ptr, m: Ptr, v: Ptr, n: number, lr: number, b1: number, b2: number, eps: number, wd: number,
    step: number, gradScale: number, p16: Ptr): void;

  /**
   * The matmul with its epilogue (bias, relu; 0 / false: none) and, with c16 (0: none; batch 1, beta 0,
   * ldc = n, no biasGrad), C's bf16 copy (a product with a bf16 output adds bias16, the bias's bf16 copy).
   * Returns GEMM_BIAS_GRAD when biasGrad (0: none) was written | GEMM_ONLY_C16 when only c16 was (C not
   * written); with c 0 (only the bf16 output asked for), GEMM_NOT_DONE where that needs C (nothing written).
   */
  gemm(a: Ptr, aType: number, lda: number, sA: number, b: Ptr, bType: number, ldb: number, sB: number, c: Ptr, ldc: number,
    sC: number, batch: number, m: number, n: number, k: number, tA: boolean, tB: boolean, alpha: number, beta: number,
    compute: number, bias: Ptr, relu: boolean, biasGrad: Ptr, c16: Ptr, bias16: Ptr): number;
  /** The matmul epilogue alone, in place: c (batch, m, n; rows ldc, batches sC apart) = act(c + bias); bias 0: none. */
  biasAct(c: Ptr, ldc: number, sC: number, batch: number, m: number, n: number, bias: Ptr, relu: boolean): void;
  /**
   * Built-in grouped GEMM on bf16 operands a16, b16 (fp32 c); rowsA / rowsB: i32 row indices of A / B
   * (GroupedMatmulArgs.rows, validated by the caller), or 0; segments: device segment offsets
   * (GroupedMatmulArgs.segments, validated by the caller; their last entry `total`), or 0. cBf16: c is
   * bf16 (beta 0, not over segments along K), else fp32. bias (0: none), biasStride, relu: the epilogue
   * (GroupedMatmulArgs; validated by the caller).
   */
  groupedGemm(a16: Ptr, rowsA: Ptr, b16: Ptr, rowsB: Ptr, c: Ptr, problems: Int32Array, tA: boolean, tB: boolean,
    alpha: number, beta: number, segments: Ptr, total: number, cBf16: boolean, bias: Ptr, biasStride: number,
    relu: boolean): void;
  /**
   * The MoE routing of experts (N·k entries in [0, E), validated by the caller) into offsets, rowToken,
   * rowSlot, rowExpert (Backend.expertGroups); tokenPlan receives the 'listed' scatter plan of rowToken
   * as targets in [0, N) (N + 1 + N·k ints, and when k > 32 its chunk tables: N + 1 + N·ceil(k / 32) + 1
   * more, N·ceil(k / 32) chunks), expertPlan the bounds of rowExpert plus a chunk flag (E + 2 ints, the
   * plan of `segmentSumBounds`). At most 12288 experts.
   */
  expertGroups(experts: Ptr, N: number, k: number, E: number, offsets: Ptr, rowToken: Ptr, rowSlot: Ptr, rowExpert: Ptr,
    tokenPlan: Ptr, expertPlan: Ptr): void;
  /**
   * out[t] (+)= Σ src[j] for j in [bounds[t], bounds[t + 1]) by the device plan of non-decreasing targets
   * from `expertGroups` (bounds (n + 1), then a chunk flag), in the order `segmentSum` adds a 'sorted'
   * plan's sources; m sources.
   */
  segmentSumBounds(src: Ptr, plan: Ptr, n: number, m: number, out: Ptr, d: number, init: boolean, op: string): void;

  softmax(x: Ptr, out: Ptr, rows: number, cols: number): void;
  softmaxBackward(y: Ptr, gy: Ptr, gx: Ptr, rows: number, cols: number): void;
  /**
   * y16: 0, or where y's bf16 copy is written too. With y16Only (and y16), y is left unwritten where the
   * warp-per-row kernel runs; returns true when y was left unwritten.
   */
  layerNorm(x: Ptr, g: Ptr, b: Ptr, y: Ptr, y16: Ptr, mean: Ptr, rstd: Ptr, rows: number, cols: number, eps: number,
    y16Only: boolean): boolean;
  layerNormBackward(x: Ptr, g: Ptr, mean: Ptr, rstd: Ptr, gy: Ptr, gx: Ptr, gg: Ptr, gb: Ptr, rows: number, cols: number): void;
  /** out (m, d) = rows idx[i] of x (indices validated by the caller). */
  gatherRows(x: Ptr, idx: Ptr, out: Ptr, m: number, d: number, op: string): void;
  /**
   * out[t] (+)= Σ src[j] over the sources j of target t in plan order (a 'sorted' or 'listed' plan of m
   * sources with `chunks` chunks, from scatterPlan; listed: the plan is 'listed'); src (·, d), out (n, d);
   * init: out starts from zeros (every row written) instead of its content. srcBf16: src is bf16 (summed in fp32).
   * bias: a row of d floats added to every row of out first (GroupedMatmulArgs.outBias), or 0.
   */
  segmentSum(src: Ptr, plan: Ptr, n: number, m: number, chunks: number, listed: boolean, out: Ptr, d: number, init: boolean,
    op: string, srcBf16: boolean, bias: Ptr): void;
  /**
   * out[idx[i]] = (init ? 0 : out[idx[i]]) + src[i] for i < m, the targets distinct (a 'unique' plan);
   * src (m, d), out (·, d).
   */
  scatterUnique(src: Ptr, idx: Ptr, m: number, out: Ptr, d: number, init: boolean, op: string): void;
  /**
   * The scatter plan of targets idx (each in [0, n), validated by the caller), built in O(m + n):
   * 'unique' when the targets are distinct (nothing uploaded, ptr 0); else uploaded asynchronously to a
   * new device block (free with `free`): per target its sources in ascending order ('sorted': the
   * targets are non-decreasing, so only each target's range of positions is stored), cut into chunks
   * of at most 32 when some target has more (chunks 0: not chunked).
   */
  scatterPlan(idx: Int32Array, n: number): { kind: 'unique' | 'sorted' | 'listed'; ptr: Ptr; chunks: number };
  /** [smallest, largest] entry of a non-empty array. */
  intRange(a: Int32Array): [number, number];
  /** logits (f32, or bf16 with logitsBf16) rows are `ld` elements apart. */
  crossEntropy(logits: Ptr, ld: number, targets: Ptr, losses: Ptr, lse: Ptr, N: number, V: number, logitsBf16: boolean): void;
  /**
   * logits as for `crossEntropy`; glogits (N, V) f32, or 0 (not written); g16: 0, or where glogits' bf16
   * copy is written, rows ld16 apart (zeros in the padding columns).
   */
  crossEntropyBackward(logits: Ptr, ld: number, targets: Ptr, lse: Ptr, gloss: Ptr, glogits: Ptr, g16: Ptr, ld16: number,
    N: number, V: number, logitsBf16: boolean): void;
  rowDot(a: Ptr, b: Ptr, out: Ptr, rows: number, cols: number): void;
  /**
   * ReLU's backward from its output with row dots (Backend.reluBackwardRowDot); gx16: gx's bf16 copy, or 0;
   * y16 (0: none): y's bf16 copy, read instead of y.
   */
  reluBackwardRowDot(y: Ptr, gy: Ptr, gx: Ptr, gx16: Ptr, dots: Ptr, rows: number, cols: number, y16: Ptr): void;
  activationBits(x: Ptr, out: Ptr, rows: number, cols: number): void;
  topkBackward(g: Ptr, indices: Ptr, gx: Ptr, rows: number, cols: number, k: number): void;
  topk(x: Ptr, values: Ptr, indices: Ptr, rows: number, cols: number, k: number): void;
  /**
   * impl 0: tensor cores on q16, the bf16 copy of qkv (and out's copy written to out16 unless 0); 1: fp32
   * SIMT on qkv (q16, out16 unused, 0).
   */
  attention(qkv: Ptr, q16: Ptr, out: Ptr, lse: Ptr, B: number, T: number, H: number, D: number, causal: boolean,
    scale: number, impl: number, out16: Ptr): void;
  /** As `attention`; go16 is the bf16 copy of gout, gqkv16 receives gqkv's (both 0 for impl 1). */
  attentionBackward(qkv: Ptr, q16: Ptr, out: Ptr, lse: Ptr, gout: Ptr, go16: Ptr, gqkv: Ptr, B: number, T: number,
    H: number, D: number, causal: boolean, scale: number, impl: number, gqkv16: Ptr): void;
  /**
   * out (M, N) f32 = act(alpha · x · wᵀ + bias) for M <= 8 rows: x f32 (or bf16 with xBf16), w (N, K) bf16,
   * bias (N) f32 or 0; one warp per output column (native/cuda/gemv.cu).
   */
  gemv(x: Ptr, xBf16: boolean, ldx: number, w16: Ptr, ldw: number, out: Ptr, ldc: number, bias: Ptr, M: number, N: number,
    K: number, alpha: number, relu: boolean): void;
  attentionCached(qkv: Ptr, kc: Ptr, vc: Ptr, out: Ptr, pos: Ptr, B: number, T: number, H: number, D: number,
    Tmax: number, scale: number): void;
}

let cached: CudaAddon | undefined;

/** Path of the addon file. */
export function cudaAddonPath(): string {
  return join(packageRoot(), 'build', 'Release', 'ssd_cuda.node');
}

/** Loads the addon once; throws an actionable Error when it has not been built. */
export function loadCudaAddon(): CudaAddon {
  if (cached) return cached;
  const path = cudaAddonPath();
  if (!existsSync(path)) {
    throw new Error(`backend 'cuda' is not built (${path} is missing): install the CUDA toolkit (nvcc) and run ` +
      '`npm ci` (or `node scripts/build-cuda.mjs`), or use --backend cpu');
  }
  const require = createRequire(import.meta.url);
  try {
    cached = require(path) as CudaAddon;
  } catch (e) {
    throw new Error(`backend 'cuda' failed to load from ${path}: ${(e as Error).message}; rebuild it with ` +
      '`node scripts/build-cuda.mjs` or use --backend cpu');
  }
  return cached;
}

/**
 * Where a CUDA library `lib<name>.so.<version>` may be: the path in `envVar`, the library path, the CUDA
 * toolkit, the system folders and the NVIDIA pip wheels (`pipDirs` under site-/dist-packages) of the
 * Python installations found; then the bare sonames for the dynamic loader's own search.
 */
function libraryCandidates(name: string, versions: string[], envVar: string, pipDirs: string[]): string[] {
  const out: string[] = [];
  const env = process.env[envVar];
  if (env) out.push(env);
  const dirs = [
    ...(process.env['LD_LIBRARY_PATH'] ?? '').split(':').filter(Boolean),
    ...['CUDA_HOME', 'CUDA_PATH'].flatMap((v) => (process.env[v] ? [join(process.env[v]!, 'lib64')] : [])),
    '/usr/local/cuda/lib64', '/usr/local/cuda/targets/x86_64-linux/lib', '/usr/lib/x86_64-linux-gnu', '/usr/lib64',
  ];
  const pyRoots = ['/usr/local/lib', '/usr/lib', '/opt/conda/lib', join(process.env['HOME'] ?? '/root', '.local', 'lib')];
  for (const r of pyRoots) {
    let names: string[] = [];
    try { names = readdirSync(r).filter((n) => /^python3/.test(n)); } catch { continue; }
    for (const n of names) {
      for (const sp of ['dist-packages', 'site-packages']) for (const sub of pipDirs) dirs.push(join(r, n, sp, sub));
    }
  }
  for (const d of dirs) for (const v of versions) {
    const p = join(d, `lib${name}.so.${v}`);
    if (existsSync(p) && !out.includes(p)) out.push(p);
  }
  out.push(...versions.map((v) => `lib${name}.so.${v}`), `lib${name}.so`);
  return out;
}

/** Where libcublas.so may be (SSD_CUBLAS first; see libraryCandidates). */
export function cublasCandidates(): string[] {
  return libraryCandidates('cublas', ['13', '12'], 'SSD_CUBLAS', ['nvidia/cublas/lib', 'nvidia/cu13/lib', 'nvidia/cu12/lib']);
}

/** Where libnccl.so.2 may be (SSD_NCCL first; see libraryCandidates). */
export function ncclCandidates(): string[] {
  return libraryCandidates('nccl', ['2'], 'SSD_NCCL', ['nvidia/nccl/lib', 'nvidia/cu13/lib', 'nvidia/cu12/lib']);
}
