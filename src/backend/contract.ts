/**
 * The backend contract: memory (alloc, free, upload, download) and one entry per kernel.
 *
 * Conventions shared by every kernel:
 * - Buffers are flat, row-major, contiguous. Shapes are given explicitly as sizes.
 * - `f32` kernels take and produce `f32` buffers; index buffers are `i32`.
 * - Output buffers are written in full (never read) unless the entry says it accumulates.
 * - Kernels are synchronous from the caller's point of view, and deterministic: the same inputs give
 *   the same bits, whatever the thread count (reductions use a fixed blocking that does not depend on
 *   the number of threads).
 * A new backend is a new folder implementing this interface plus a run of the shared op suite
 * (`test/ops.suite.ts`).
 */

export type DType = 'f32' | 'bf16' | 'i32';

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: Record<DType, number> = { f32: 4, bf16: 2, i32: 4 };

/** An opaque device buffer. `size` is in elements. */
export interface Buf {
  readonly dtype: DType;
  readonly size: number;
}

/** Host-side array type for a dtype: f32 and bf16 download as Float32Array, i32 as Int32Array. */
export type HostArray = Float32Array | Int32Array;

/**
 * Validates the positions of an `attentionCached` call: B integers with 0 <= pos[b] and pos[b] + T <= Tmax.
 * Shared by the backends so every one throws the same error.
 */
export function checkCachePositions(pos: Int32Array, B: number, T: number, Tmax: number): void {
  if (pos.length !== B) throw new Error(`attentionCached: ${pos.length} positions for a batch of ${B}`);
  for (let b = 0; b < B; b++) {
    if (pos[b]! < 0 || pos[b]! + T > Tmax) {
      throw new Error(`attentionCached: row ${b}: ${T} new tokens at position ${pos[b]} do not fit a cache of ${Tmax}`);
    }
  }
}

/** Throws unless the matmul's output is a buffer of its own (no backend computes a product in place). */
export function checkMatmulOperands(a: Buf, b: Buf, c: Buf): void {
  if (c === a || c === b) throw new Error('matmul: c must not be a or b (no in-place product)');
}

/**
 * Validates a matmul's epilogue (MatmulArgs.bias, relu, biasGrad). Shared by the backends so every one
 * throws the same error.
 */
export function checkMatmulEpilogue(g: MatmulArgs): void {
  if (g.bias && (g.bias.dtype !== 'f32' || g.bias.size !== g.n)) {
    throw new Error(`matmul: bias must be f32 with one entry per output column (${g.n}), got ${g.bias.dtype} of ${g.bias.size}`);
  }
  if (!g.biasGrad) return;
  if (g.biasGrad.dtype !== 'f32' || g.biasGrad.size !== g.m) {
    throw new Error(`matmul: biasGrad must be f32 with one entry per output row (${g.m}), got ${g.biasGrad.dtype} of ${g.biasGrad.size}`);
  }
  if (g.batch !== 1 || g.bias || g.relu) throw new Error('matmul: biasGrad needs batch 1 and no bias or relu');
}

export type UnaryOp = 'relu' | 'gelu' | 'neg' | 'exp' | 'log' | 'sqrt' | 'square' | 'tanh';
export type BinaryOp = 'add' | 'sub' | 'mul' | 'div';

/**
 * Batched strided GEMM: for each b < batch, C_b = act(alpha · op(A_b) · op(B_b) + beta · C_b + bias),
 * where the epilogue (bias, act) is optional: a linear layer's bias add and ReLU fused into the product
 * (cuBLASLt epilogues on cuda), so its (m, n) output is written once instead of read and written again.
 * The other optional epilogue, biasGrad, is the backward pass's: the bias gradient from the weight
 * gradient's product (the sums of op(A)'s rows), without another pass over A.
 */
export interface MatmulArgs {
  /** Number of independent products. */
  batch: number;
  /** Rows of op(A) and C. */
  m: number;
  /** Columns of op(B) and C. */
  n: number;
  /** Columns of op(A) = rows of op(B). */
  k: number;
  /** If true A_b is stored (k, m) and op(A_b) = A_bᵀ; else stored (m, k). */
  transA: boolean;
  /** If true B_b is stored (n, k) and op(B_b) = B_bᵀ; else stored (k, n). */
  transB: boolean;
  /** Element offset between consecutive A_b (0 broadcasts one A over the batch). */
  strideA: number;
  strideB: number;
  /** Element offset between consecutive C_b (must be >= m*n; C_b never overlap). */
  strideC: number;
  alpha: number;
  /** 0: C is overwritten (not read, NaNs in C do not propagate). 1: accumulate into C. */
  beta: number;
  /** Epilogue: f32 (n) added to every row of every C_b (the same vector for each b). */
  bias?: Buf;
  /** Epilogue: max(·, 0) applied last (after bias); NaN -> 0 on ref and cpu (cuBLASLt's may keep NaN). */
  relu?: boolean;
  /**
   * Epilogue: also writes Σ_p op(A)[i, p] for i < m (f32, m entries, overwritten); e.g. with op(A) = gᵀ
   * (the output gradient, (out, rows)) the bias gradient beside the weight gradient gᵀ·x. Batch 1
   * only, without bias or relu; not scaled by alpha. On cuda in bf16 it sums A's bf16 copy
   * (autocast's precision) where cuBLASLt fuses it, else A itself.
   */
  biasGrad?: Buf;
  /**
   * The output may be kept at bf16 precision, as autocast keeps a product's output (for activations
   * that only feed products, attention, cross-entropy and ReLU's mask): a backend with bf16 copies of its
   * buffers (cuda in bf16) then writes only the copy (adding the bias's bf16 copy, as autocast does), and
   * C's f32 content is the copy's values. Others ignore it, and so does cuda for batch > 1, beta ≠ 0, C
   * not overwritten whole, biasGrad, a bias or ReLU over a padded width, k = 0, or no cuBLASLt
   * algorithm for a bf16 output (C then keeps fp32 precision).
   */
  bf16Out?: boolean;
}

/**
 * Grouped GEMM (the MoE expert kernel): for each group g, with row-major leading dimensions,
 *   C[offC_g ..] (m_g × n_g, ld ldc_g) = alpha · op(A_g) · op(B_g) + beta · C
 * where A_g starts at offA_g with leading dimension lda_g (A_g stored (m_g, k_g), or (k_g, m_g) when
 * transA), and B_g at offB_g with ldb_g (stored (k_g, n_g), or (n_g, k_g) when transB).
 * `problems` holds 9 ints per group: [m, n, k, offA, lda, offB, ldb, offC, ldc]. Groups with m, n or
 * k = 0 are allowed (k = 0 with beta = 0 writes zeros). Output regions of different groups must not
 * overlap (with `rows.c`: in the virtual C; several of its rows may still map to one row of C).
 */
export interface GroupedMatmulArgs {
  problems: Int32Array;
  transA: boolean;
  transB: boolean;
  alpha: number;
  beta: number;
  /**
   * Row-indexed operands (i32 buffers; the MoE token gather and scatter fused into the products).
   * With `rows.a`, A is read as the virtual matrix whose stored row j is A's row rows.a[j]: a group's
   * offA then addresses that virtual matrix (stored row offA / lda, column offA % lda). Likewise B
   * through `rows.b`. With `rows.c`, each output row j of the virtual C is ADDED to C's row rows.c[j]
   * (beta must be 1; several rows may hit one row of C; added in group order, rows ascending). The
   * groups that use an indexed operand (C: m, n > 0; A, B: also k > 0) share one leading dimension,
   * which is also its row length in the real buffer (whose whole rows, floor(size / ld), are the valid
   * indices). Throws when any entry of an index is outside those rows.
   */
  rows?: { a?: Buf; b?: Buf; c?: Buf };
  /**
   * Group sizes held by the backend instead of the host (the MoE routing of `expertGroups`, so no
   * synchronisation is needed): an i32 buffer of groups + 1 offsets, non-decreasing from 0. Group g
   * then covers the token rows segments[g] .. segments[g + 1]: its token dimension (m when !transA, k
   * when transA) is L_g = segments[g + 1] − segments[g] whatever its problem entry says (write 0), and
   * the operands whose rows run along that dimension (A and C when !transA, A and B when transA) start
   * segments[g] rows later: segments[g] · ld is added to their offsets. Not with transA and transB
   * together (B's rows would not run along the segments). Throws if the buffer does not have
   * groups + 1 entries, does not start at 0 or decreases, or with transA and transB.
   */
  segments?: Buf;
  /**
   * Epilogue (with beta 0, transA false and no rows.c): group g adds bias[g · biasStride + j] (f32) to
   * column j of each of its C rows, then ReLU with `relu` (NaN -> 0): the MoE experts' biases and
   * activation fused into their first product. Throws when a group's bias runs past the buffer.
   */
  bias?: Buf;
  biasStride?: number;
  relu?: boolean;
  /**
   * With rows.c: an f32 row of ldc entries added once to every row of C, as are the product rows (the
   * MoE's output bias fused into its scatter-add; rows no product row hits get it too; the order of
   * the adds is the backend's). Throws without rows.c, when not f32, or when a group's ldc is not its
   * size.
   */
  outBias?: Buf;
  /**
   * C may be kept at bf16 precision, as MatmulArgs.bf16Out (the MoE's hidden layer). Honoured by cuda
   * in bf16 for a C without rows.c, with beta 0, written whole by the built-in kernel; ignored elsewhere.
   */
  bf16Out?: boolean;
}

export interface AdamWArgs {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** Decoupled weight decay (Loshchilov & Hutter 2019): p -= lr · wd · p before the Adam update. */
  weightDecay: number;
  /** 1-based step count, for bias correction. */
  step: number;
  /** Gradients are multiplied by this first (used for clipping / accumulation averaging). */
  gradScale: number;
}

/** A replayable recording of device work (`Backend.captureGraph`). */
export interface CapturedGraph {
  /** Queues one replay: the recorded kernels run again on the buffers' current contents. */
  launch(): void;
  /** Frees the recording and the buffers it holds (idempotent). */
  dispose(): void;
}

/**
 * A data-parallel group: one process per rank, each holding the same model and training on its own
 * rows of every batch, the gradients summed over the ranks before each update. Made by
 * `Backend.joinCollective` (cuda: NCCL) or, for any backend, by the host collective of src/parallel.
 */
export interface Collective {
  readonly rank: number;
  readonly size: number;
  /** What carries the sums (e.g. the NCCL library and version, or the host folder). */
  readonly transport: string;
  /** Whether `allReduceSum(bufs, true)` runs beside later device work (else it is done when it returns). */
  readonly overlaps: boolean;
  /**
   * Replaces each f32 buffer by its elementwise sum over the ranks (every rank passes the same list of
   * sizes, in the same order); every rank gets the same bits. Throws on a buffer that is not f32. With
   * `overlap`, the sums may still be running when this returns, beside the device work queued after it
   * (which must not touch `bufs`) until `wait()`; without it they are done first.
   */
  allReduceSum(bufs: Buf[], overlap?: boolean): void;
  /** Orders every overlapped sum before the work queued after this call (no-op where sums are synchronous). */
  wait(): void;
  /** Leaves the group (idempotent). */
  dispose(): void;
}

export interface Backend {
  readonly name: string;
  /**
   * The device's peak dense FLOP/s for the products as this backend runs them (cuda, bf16: the tensor-core
   * peak of known GPUs), for model FLOPs utilisation (MFU); undefined when unknown.
   */
  readonly peakFlops?: number;

  // ---------------------------------------------------------------- memory
  /** Allocates `size` elements, zero-filled. Counts toward `memoryStats`. */
  alloc(dtype: DType, size: number): Buf;
  /** Releases a buffer. Freeing twice is an error. */
  free(buf: Buf): void;
  /** Copies host data into the buffer (length must equal buf.size); bf16 rounds to nearest even. */
  upload(buf: Buf, data: ArrayLike<number>): void;
  /** Copies the buffer to the host (bf16 widens to f32). */
  download(buf: Buf): HostArray;
  /** Live buffers and their bytes (for leak tests and memory reports). */
  memoryStats(): { liveBuffers: number; liveBytes: number };
  /**
   * Optional (cuda: CUDA graphs): records the device work that `fn` queues instead of running it, so
   * that a step of many small kernels can be replayed by one launch, without its host-side cost. `fn`
   * must not upload, download or synchronise (throws); uploads into its inputs before each `launch` are
   * how a replay takes new data. Buffers freed inside `fn` are held by the graph; buffers it allocates
   * and keeps (its outputs) must be kept until the graph is disposed. Host-side state that `fn` sets
   * up (a weight's cached bf16 copy, say) must already exist: run the same work once before capturing.
   * Throws (and records nothing) if `fn` throws or the capture fails.
   */
  captureGraph?(fn: () => void): CapturedGraph;
  /**
   * Optional (cuda: NCCL): joins the data-parallel group of `size` processes as `rank`. `exchange`
   * shares rank 0's communicator id: rank 0 passes its id and gets it back, the others pass null and
   * get rank 0's. Blocks until every rank has joined; throws naming the library when it is missing.
   */
  joinCollective?(rank: number, size: number, exchange: (id: Uint8Array | null) => Uint8Array): Collective;

  // ---------------------------------------------------------------- data movement
  /** out[i] = value for all i. */
  fill(out: Buf, value: number): void;
  /** Converts f32 <-> bf16 (round to nearest even) or copies same-dtype buffers. Sizes equal. */
  cast(x: Buf, out: Buf): void;
  /**
   * N-d strided copy: for every index vector i < shape,
   *   dst[dstOffset + Σ i_d·dstStrides_d] (=|+=) src[srcOffset + Σ i_d·srcStrides_d].
   * Covers transpose/permute, slicing, concatenation and broadcast expansion. With `accumulate` the
   * destination is added to; destination positions must then be distinct (no two i write one place).
   * Works for any dtype (src and dst of the same dtype).
   */
  copyStrided(src: Buf, srcOffset: number, srcStrides: number[], dst: Buf, dstOffset: number,
    dstStrides: number[], shape: number[], accumulate: boolean): void;

  // ---------------------------------------------------------------- elementwise
  /** out = op(x), elementwise; same sizes. gelu is the tanh approximation (GPT-2). */
  unary(op: UnaryOp, x: Buf, out: Buf): void;
  /** gx = gy · op'(x) (for relu: gy where x > 0 else 0). Only relu, gelu, tanh, exp, log, sqrt, square. */
  unaryBackward(op: UnaryOp, x: Buf, gy: Buf, gx: Buf): void;
  /** out = x · scale + shift, elementwise. */
  affine(x: Buf, out: Buf, scale: number, shift: number): void;
  /**
   * Broadcasting binary op over an output of `shape` (contiguous). `aStrides` / `bStrides` give each
   * operand's element stride per output axis (0 on broadcast axes).
   */
  binary(op: BinaryOp, a: Buf, aStrides: number[], b: Buf, bStrides: number[], out: Buf, shape: number[]): void;
  /** Sum over the middle axis: x (outer, mid, inner) -> out (outer, inner). Accumulates in f64. */
  reduceSum(x: Buf, out: Buf, outer: number, mid: number, inner: number): void;
  /**
   * Σ x_i² over all the f32 buffers, accumulated in f64 with fixed blocking per buffer; returned to the
   * host as one number (on cuda: one synchronisation for all the buffers, e.g. a gradient norm).
   */
  sumSquares(xs: Buf[]): number;

  // ---------------------------------------------------------------- linear algebra
  /** See MatmulArgs. c must not be a or b (throws). */
  matmul(a: Buf, b: Buf, c: Buf, args: MatmulArgs): void;
  groupedMatmul(a: Buf, b: Buf, c: Buf, args: GroupedMatmulArgs): void;

  // ---------------------------------------------------------------- NN kernels
  /** Row softmax: x, out (rows, cols). */
  softmax(x: Buf, out: Buf, rows: number, cols: number): void;
  /** gx = y ⊙ (gy − Σ_j gy_j y_j) per row. */
  softmaxBackward(y: Buf, gy: Buf, gx: Buf, rows: number, cols: number): void;
  /**
   * LayerNorm over the last axis: y = (x − mean) · rstd · gamma + beta, rstd = 1/sqrt(var + eps)
   * (biased variance). x, y (rows, cols); gamma, beta (cols); mean, rstd (rows) are written. With
   * bf16Out y may be kept at bf16 precision (see MatmulArgs.bf16Out).
   */
  layerNorm(x: Buf, gamma: Buf, beta: Buf, y: Buf, mean: Buf, rstd: Buf, rows: number, cols: number, eps: number,
    bf16Out?: boolean): void;
  /** gx (rows, cols) written; ggamma, gbeta (cols) ACCUMULATED into. */
  layerNormBackward(x: Buf, gamma: Buf, mean: Buf, rstd: Buf, gy: Buf, gx: Buf, ggamma: Buf, gbeta: Buf,
    rows: number, cols: number): void;
  /**
   * out[i, :] = table[ids[i], :]; ids (n) i32, table (vocab, dim), out (n, dim).
   * Throws if an id is outside [0, vocab).
   */
  embedding(table: Buf, ids: Buf, out: Buf, n: number, vocab: number, dim: number): void;
  /** gtable[ids[i], :] += gy[i, :] (ACCUMULATES; deterministic order). */
  embeddingBackward(gy: Buf, ids: Buf, gtable: Buf, n: number, vocab: number, dim: number): void;
  /**
   * Fused multi-head self-attention on a packed projection.
   * qkv (B, T, 3, H, D) f32; out (B, T, H, D); lse (B, H, T) = logsumexp of each scaled score row
   * (saved for backward). score = scale · q·k; causal masks keys s > t.
   */
  attention(qkv: Buf, out: Buf, lse: Buf, B: number, T: number, H: number, D: number, causal: boolean, scale: number): void;
  /** gqkv (B, T, 3, H, D) written from gout (B, T, H, D) and the saved out and lse. */
  attentionBackward(qkv: Buf, out: Buf, lse: Buf, gout: Buf, gqkv: Buf, B: number, T: number, H: number, D: number,
    causal: boolean, scale: number): void;
  /**
   * Causal attention of new tokens over a KV cache (inference: prefill and incremental decode; no
   * backward). qkv (B, T, 3, H, D) holds the projections of T new tokens per row; the new tokens of row
   * b sit at positions pos[b] .. pos[b] + T − 1 (`pos`: an i32 buffer of B entries, read by the device
   * kernels, so a captured decode step (`captureGraph`) takes new positions by an upload). The kernel first
   * writes their k and v into kCache and vCache (B, H, Tmax, D) at those positions (other positions
   * are left as they are), then for each new token t (position p = pos[b] + t):
   *   out[b, t, h] = softmax_j(scale · q_t · kCache[b, h, j]) · vCache[b, h, j], j = 0 .. p
   * out (B, T, H, D). With all pos = 0 this equals `attention(causal)` over the T tokens.
   * Throws if some pos[b] < 0 or pos[b] + T > Tmax.
   */
  attentionCached(qkv: Buf, kCache: Buf, vCache: Buf, out: Buf, pos: Buf, B: number, T: number, H: number,
    D: number, Tmax: number, scale: number): void;
  /**
   * Inverted dropout with a counter-based hash RNG: keep_i = u(seed, i) >= p, where
   * u(seed, i) = (hash32(seed, i) >>> 8) / 2^24 with hash32 defined in `backend/rng.ts`.
   * out = keep ? x / (1 − p) : 0. The same (seed, i) gives the same mask on every backend.
   */
  dropout(x: Buf, out: Buf, p: number, seed: number): void;
  /** gx = keep ? gy / (1 − p) : 0 with the same mask as the forward call. */
  dropoutBackward(gy: Buf, gx: Buf, p: number, seed: number): void;
  /**
   * Softmax cross-entropy per row: logits (N, V), targets (N) i32; losses (N) and lse (N) written.
   * loss_n = lse_n − logits[n, t_n]; rows whose target is −1 are ignored (loss 0).
   * Throws if a target is outside [−1, V).
   */
  crossEntropy(logits: Buf, targets: Buf, losses: Buf, lse: Buf, N: number, V: number): void;
  /**
   * glogits[n, :] = gloss[n] · (softmax(logits[n]) − onehot(t_n)); zero rows for ignored targets. With
   * bf16Out glogits may be kept at bf16 precision (see MatmulArgs.bf16Out).
   */
  crossEntropyBackward(logits: Buf, targets: Buf, lse: Buf, gloss: Buf, glogits: Buf, N: number, V: number,
    bf16Out?: boolean): void;
  /**
   * Fused AdamW, in place on p, m, v (all f32, same size):
   *   g' = gradScale·g; p -= lr·wd·p; m = b1·m + (1−b1)·g'; v = b2·v + (1−b2)·g'²;
   *   p -= lr · (m / (1 − b1^step)) / (sqrt(v / (1 − b2^step)) + eps)
   */
  adamw(p: Buf, g: Buf, m: Buf, v: Buf, args: AdamWArgs): void;

  // ---------------------------------------------------------------- MoE primitives
  /**
   * Top-k over the last axis: x (rows, cols) -> values (rows, k) f32, indices (rows, k) i32, sorted by
   * value descending, ties broken by the lower index. NaN counts as smallest.
   */
  topk(x: Buf, values: Buf, indices: Buf, rows: number, cols: number, k: number): void;
  /**
   * Top-k backward: gx (rows, cols) = 0, then gx[r, indices[r, j]] += g[r, j] for j ascending; g (rows,
   * k) f32, indices (rows, k) i32 (as topk writes them). Throws on an index outside [0, cols).
   */
  topkBackward(g: Buf, indices: Buf, gx: Buf, rows: number, cols: number, k: number): void;
  /**
   * MoE routing, the token permutation by expert: groups the (N, k) expert choices `experts` (i32, each
   * in [0, E)) by expert with a stable counting sort (an expert's rows keep token order). Writes offsets
   * (E + 1): expert e's rows are offsets[e] .. offsets[e + 1] of the N·k grouped rows; and for each
   * grouped row r: rowToken[r] = its token n, rowSlot[r] = its position n·k + j in `experts`, rowExpert[r]
   * = its expert (non-decreasing). All i32, five distinct buffers. Throws if an expert is outside [0, E).
   */
  expertGroups(experts: Buf, offsets: Buf, rowToken: Buf, rowSlot: Buf, rowExpert: Buf, N: number, k: number, E: number): void;
  /** out[i, :] = x[idx[i], :]; x (n, d), idx (m) i32, out (m, d). Throws on an index outside [0, n). */
  gatherRows(x: Buf, idx: Buf, out: Buf, m: number, n: number, d: number): void;
  /** out[idx[i], :] += src[i, :]; src (m, d), out (n, d) ACCUMULATED; deterministic order (i ascending). */
  scatterAddRows(src: Buf, idx: Buf, out: Buf, m: number, n: number, d: number): void;
  /** out[r] = Σ_c a[r, c] · b[r, c]: a, b (rows, cols), out (rows). Accumulates in f64 (or f32 in order). */
  rowDot(a: Buf, b: Buf, out: Buf, rows: number, cols: number): void;
  /**
   * ReLU's backward from its output y, with the row dots of the router gate on expert activations
   * (one pass on backends that fuse it): gx = gy where y > 0, else 0; dots[r] = Σ_c gx[r, c] · y[r, c]
   * (= Σ_c gy · y, as y >= 0), accumulated as rowDot. y, gy, gx exactly (rows, cols) f32; dots (rows)
   * f32. Throws on other sizes.
   */
  reluBackwardRowDot(y: Buf, gy: Buf, gx: Buf, dots: Buf, rows: number, cols: number): void;
  /**
   * Bit-packed activation pattern (the SSD monitor's active-neuron sets): x (rows, cols) f32 -> out
   * (rows, ceil(cols / 32)) i32; bit b of word w of row r is set iff x[r, 32w + b] > 0 (NaN: not set);
   * the unused high bits of a row's last word are 0.
   */
  activationBits(x: Buf, out: Buf, rows: number, cols: number): void;
}
