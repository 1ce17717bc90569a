/**
 * Loader and typings for the native addon (build/Release/ssd_cpu.node, built by node-gyp from
 * native/cpu). Typed arrays are passed zero-copy; integers are plain numbers.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

type F32 = Float32Array;
type I32 = Int32Array;
type AnyArr = Float32Array | Uint16Array | Int32Array;

export interface NativeAddon {
  setThreads(n: number): number;
  getThreads(): number;
  /** Linux: `signal` is sent to this process when its parent exits (prctl PR_SET_PDEATHSIG); false where unsupported. */
  parentDeathSignal(signal: number): boolean;
  gemmInit(): string;
  gemmProvider(): string;
  gemmProviders(): string[];
  setGemmProvider(name: string): string;
  simd(): string;

  fill(out: AnyArr, value: number): void;
  cast(x: AnyArr, out: AnyArr): void;
  copyStrided(src: AnyArr, srcOffset: number, srcStrides: number[], dst: AnyArr, dstOffset: number,
    dstStrides: number[], shape: number[], accumulate: boolean): void;

  unary(op: number, x: F32, out: F32): void;
  unaryBackward(op: number, x: F32, gy: F32, gx: F32): void;
  affine(x: F32, out: F32, scale: number, shift: number): void;
  binary(op: number, a: F32, aStrides: number[], b: F32, bStrides: number[], out: F32, shape: number[]): void;
  reduceSum(x: F32, out: F32, outer: number, mid: number, inner: number): void;
  sumSquares(x: F32): number;

  matmul(a: F32, b: F32, c: F32, batch: number, m: number, n: number, k: number, transA: boolean, transB: boolean,
    strideA: number, strideB: number, strideC: number, alpha: number, beta: number, bias: F32 | null, relu: boolean,
    biasGrad: F32 | null): void;
  /** GroupedMatmulArgs' epilogue on C after the product: bias (or null), biasStride, relu (problems checked by the product). */
  groupedBiasAct(c: F32, problems: I32, bias: F32 | null, stride: number, relu: boolean): void;
  /** rowsA / rowsB / rowsC: GroupedMatmulArgs.rows (null when absent). */
  groupedMatmul(a: F32, b: F32, c: F32, problems: I32, transA: boolean, transB: boolean, alpha: number,
    beta: number, rowsA: I32 | null, rowsB: I32 | null, rowsC: I32 | null): void;

  softmax(x: F32, out: F32, rows: number, cols: number): void;
  softmaxBackward(y: F32, gy: F32, gx: F32, rows: number, cols: number): void;
  layerNorm(x: F32, gamma: F32, beta: F32, y: F32, mean: F32, rstd: F32, rows: number, cols: number, eps: number): void;
  layerNormBackward(x: F32, gamma: F32, mean: F32, rstd: F32, gy: F32, gx: F32, ggamma: F32, gbeta: F32,
    rows: number, cols: number): void;
  embedding(table: F32, ids: I32, out: F32, n: number, vocab: number, dim: number): void;
  embeddingBackward(gy: F32, ids: I32, gtable: F32, n: number, vocab: number, dim: number): void;
  attention(qkv: F32, out: F32, lse: F32, B: number, T: number, H: number, D: number, causal: boolean,
    scale: number): void;
  attentionCached(qkv: F32, kCache: F32, vCache: F32, out: F32, pos: I32, B: number, T: number, H: number, D: number,
    Tmax: number, scale: number): void;
  attentionBackward(qkv: F32, out: F32, lse: F32, gout: F32, gqkv: F32, B: number, T: number, H: number, D: number,
    causal: boolean, scale: number): void;
  dropout(x: F32, out: F32, p: number, seed: number): void;
  crossEntropy(logits: F32, targets: I32, losses: F32, lse: F32, N: number, V: number): void;
  crossEntropyBackward(logits: F32, targets: I32, lse: F32, gloss: F32, glogits: F32, N: number, V: number): void;
  adamw(p: F32, g: F32, m: F32, v: F32, lr: number, beta1: number, beta2: number, eps: number, weightDecay: number,
    step: number, gradScale: number): void;
  topk(x: F32, values: F32, indices: I32, rows: number, cols: number, k: number): void;
  gatherRows(x: F32, idx: I32, out: F32, m: number, n: number, d: number): void;
  scatterAddRows(src: F32, idx: I32, out: F32, m: number, n: number, d: number): void;
  topkBackward(g: F32, indices: I32, gx: F32, rows: number, cols: number, k: number): void;
  rowDot(a: F32, b: F32, out: F32, rows: number, cols: number): void;
  activationBits(x: F32, out: I32, rows: number, cols: number): void;
  /** The bidding phases of src/moefy/auction.ts (price in/out, holder out); returns the bid count. */
  balancedAuction(score: Float64Array, n: number, E: number, price: Float64Array, holder: I32, eps: number,
    epsFinal: number, factor: number): number;
}

/** Folder holding package.json, walking up from this module's folder. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error(`cpu backend: no package.json above ${dirname(fileURLToPath(import.meta.url))}`);
    dir = up;
  }
}

let cached: NativeAddon | undefined;

/** Loads the addon once; throws an actionable Error when it has not been built. */
export function loadAddon(): NativeAddon {
  if (cached) return cached;
  const root = packageRoot();
  const path = join(root, 'build', 'Release', 'ssd_cpu.node');
  if (!existsSync(path)) {
    throw new Error(`the native cpu backend is not built (${path} is missing); run \`npm ci\` ` +
      '(needs g++ and python3) or use `--backend ref`');
  }
  const require = createRequire(import.meta.url);
  try {
    cached = require(path) as NativeAddon;
  } catch (e) {
    throw new Error(`the native cpu backend failed to load from ${path}: ${(e as Error).message}; ` +
      'rebuild it with `npm ci` (needs g++ and python3) or use `--backend ref`');
  }
  return cached;
}
