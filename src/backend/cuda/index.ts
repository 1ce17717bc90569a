/**
 * The `cuda` backend: buffers live in device memory (a caching allocator in native/cuda), kernels are
 * launched asynchronously on one stream and the host synchronises only where a value comes back
 * (`download`, `sumSquares`, index validation of gathers / scatters / cross-entropy targets / cache
 * positions when no host copy is current).
 *
 * Mixed precision, autocast style: buffers stay f32 (master weights, optimizer state, activations);
 * `matmul` runs bf16 tensor-core GEMMs (cuBLAS) with fp32 accumulation and fp32 output on bf16 copies
 * of its operands. Each f32 buffer keeps its bf16 shadow and a write version, so a weight is cast once
 * per optimizer step however many products read it, and an activation once for forward and backward.
 * Attention is a fused bf16 tensor-core kernel reading the same shadows of qkv (and of the output
 * gradient); LayerNorm, softmax, cross-entropy and AdamW compute in fp32.
 *
 * Zero-filling is deferred: `alloc` only marks a buffer `zeroPending`, and the zeros are written when
 * something could observe them (the buffer is read, accumulated into, or written in part). A kernel
 * that overwrites its whole output drops the pending fill instead, which is what nearly every output
 * of a training step gets: the contract's zero-filled allocations without a memset per activation.
 * Likewise a large GEMM output with a misaligned row length (the logits over GPT-2's 50257 tokens) is
 * computed into an aligned `twin` (cuBLAS runs several times faster there); cross-entropy reads the
 * twin directly, and anything else that reads the buffer first gets the twin copied into it. An output
 * asked for at bf16 precision (`bf16Out` of matmul, layerNorm and crossEntropyBackward: autocast's
 * precision for activations and gradients that feed products, attention, cross-entropy and ReLU's
 * mask) is written only into its bf16 shadow; those readers take the shadow, and anything that reads
 * the f32 buffer first gets the shadow widened into it.
 *
 * Index buffers (i32) keep a host copy of their content while it is current (taken on upload and on
 * download; any device write makes it stale). Index validation (gathers, embeddings, cross-entropy
 * targets, the row indices of grouped GEMMs) and the scatter plans read it instead of synchronising
 * with the device. A scatter plan is a target -> sources table built on the host and uploaded
 * asynchronously: scatter-adds then sum each target's rows in a fixed order (deterministic, no
 * atomics). Distinct targets (the router-gate backward) need no plan, and non-decreasing
 * ones (an expert-bias gradient) only each target's range of sources.
 *
 * The MoE routing never visits the host: `expertGroups` sorts the top-k experts by expert on the device
 * and leaves on its outputs what the later calls would otherwise ask the host for: the range of each
 * index (as `topk` does for its indices, so validating them needs no download), the total of the
 * segment offsets, and the scatter plans of the token, slot and expert indices, built by the same
 * kernels. Grouped products then read their group sizes from the device offsets
 * (`GroupedMatmulArgs.segments`), and a MoE layer runs without a synchronisation. (At most 12288
 * experts per layer: the routing keeps a shared-memory counter per expert.)
 *
 * The MoE products (`groupedMatmul` with `rows`) run in the built-in grouped kernel, which reads the
 * token rows through their indices while it loads its tiles; a scattered C is computed into a scratch
 * of product rows and then added to C's rows by the scatter plan (deterministic segmented sum). Where
 * rows of C have several sources (a listed plan: a token's k experts) the scratch is bf16, summed in
 * fp32 (the precision of autocast's bf16 product outputs; it halves the traffic of a scratch k times
 * the size of C). Weight gradients over device segments run split-K (see native/cuda/gemm.cu).
 *
 * Products of at most 8 rows with a weight stored (n, k) (decoding) run in a GEMV kernel instead of
 * cuBLAS: it reads A as it is (f32, or its bf16 copy, rounded to bf16 as the GEMM rounds it) and writes
 * an f32 output (a bf16Out request is ignored there).
 *
 * `captureGraph` records the work a function queues as a CUDA graph (decoding replays its decode step
 * from one, see src/infer/decode-step.ts; `SSD_CUDA_GRAPHS=0` turns that off). `attentionCached` reads
 * its positions from a device buffer, validated on the host copy its upload keeps.
 *
 * `joinCollective` sums gradients over the processes of a data-parallel run through NCCL (dlopen'ed;
 * `SSD_NCCL` points at libnccl.so.2); `SSD_CUDA_DEVICE` (or `CudaBackendOptions.device`) picks the GPU.
 *
 * `SSD_CUDA_MATMUL=tf32|f32|fast16bf|own` picks another GEMM mode (own: the built-in kernel, no cuBLAS
 * needed); `SSD_CUDA_GROUPED=auto|cublas|own` the grouped GEMM (auto: cuBLAS per group for at most 4
 * groups without row indices or device segments, else the built-in kernel; cublas reads device
 * segments back, a synchronisation); `SSD_CUDA_ATTN=simt` the plain fp32 attention kernels.
 */
import type { AdamWArgs, Backend, BinaryOp, Buf, CapturedGraph, Collective, DType, GroupedMatmulArgs, HostArray, MatmulArgs, UnaryOp } from '../contract.js';
import { checkCachePositions, checkMatmulEpilogue, checkMatmulOperands, DTYPE_BYTES } from '../contract.js';
import { cublasCandidates, ncclCandidates, GEMM_BIAS_GRAD, GEMM_NOT_DONE, GEMM_ONLY_C16, loadCudaAddon, type CudaAddon } from './addon.js';
import { groupedMatmulByCopies } from '../grouped-rows.js';
import { addOutBias, checkExpertBuffers, checkExperts, checkGroupedEpilogue, checkProblems, checkSegmentLayout, checkSegments, resolveSegments } from '../segments.js';

const UNARY_CODE: Record<UnaryOp, number> = { relu: 0, gelu: 1, neg: 2, exp: 3, log: 4, sqrt: 5, square: 6, tanh: 7 };
const BINARY_CODE: Record<BinaryOp, number> = { add: 0, sub: 1, mul: 2, div: 3 };
const KIND: Record<DType, number> = { f32: 0, bf16: 1, i32: 2 };

export type MatmulMode = 'bf16' | 'tf32' | 'f32' | 'fast16bf' | 'own';
/** Most experts `expertGroups` takes (native kMaxRouteExperts: a shared-memory counter each). */
const MAX_ROUTE_EXPERTS = 12288;
/** Elements from which misaligned GEMM operands are padded (a copy pays off only on large matrices). */
const PAD_MIN = 1 << 22;
/** Most rows of A that a product runs through the GEMV kernel (native kGemvMaxRows). */
const GEMV_MAX_ROWS = 8;
/** Largest i32 buffer (elements) that keeps a host copy of its content. */
const HOST_COPY_MAX = 1 << 24;
export type GroupedRoute = 'auto' | 'cublas' | 'own';
const COMPUTE: Record<Exclude<MatmulMode, 'own'>, number> = { bf16: 0, tf32: 1, f32: 2, fast16bf: 3 };
/** Head sizes of the tensor-core attention kernels (native/cuda/attention.cu `tc_head`); others run SIMT. */
const TC_HEAD_SIZES = new Set([16, 32, 64, 128]);

/**
 * Layout of a padded bf16 shadow: the f32 buffer viewed as (size / cols, cols) is copied into `rows`
 * rows of `ld` elements (ld >= cols, even), zeros in the padding columns and in the rows past the data.
 */
interface PadLayout {
  cols: number;
  ld: number;
  rows: number;
}

/** Elements of a shadow that begin with the plain copy (no column padding), or 0 when it is padded. */
function contiguousElems(l: PadLayout | null, size: number): number {
  if (l === null) return size;
  return l.ld === l.cols ? l.rows * l.ld : 0;
}
/** Whether a shadow laid out as `have` (null: plain copy) holds what a request for `want` needs. */
function serves(have: PadLayout | null, want: PadLayout | null, size: number): boolean {
  if (want === null) return contiguousElems(have, size) >= size;
  if (want.ld === want.cols) return contiguousElems(have, size) >= want.rows * want.ld;
  return have !== null && have.cols === want.cols && have.ld === want.ld && have.rows >= want.rows;
}
function sameLayout(x: PadLayout | null, y: PadLayout | null): boolean {
  return x === y || (x !== null && y !== null && x.cols === y.cols && x.ld === y.ld && x.rows === y.rows);
}
const ceil8 = (x: number) => Math.ceil(x / 8) * 8;

/** An aligned copy of a (rows, cols) f32 buffer's content, rows `ld` apart, standing in for the buffer. */
interface Twin {
  ptr: number;
  rows: number;
  cols: number;
  ld: number;
}

/** A scatter plan on the device (see the file comment and native scatter_plan). */
interface ScatterPlan {
  /**
   * unique: distinct targets, no device plan (ptr 0), each source row is added to its target directly;
   * sorted: non-decreasing targets, the plan holds each target's range of sources; listed: the plan
   * lists each target's sources; bounds: non-decreasing targets whose bounds (and chunk flag) were
   * written on the device by `expertGroups` (native segment_sum_bounds).
   */
  kind: 'unique' | 'sorted' | 'listed' | 'bounds';
  ptr: number;
  /** Chunks of its long segments (0: none). */
  chunks: number;
  version: number;
  count: number;
  n: number;
}

/**
 * For a buffer a graph capture wrote: which of the state kept for its content the capture left current
 * (so every launch rewrites it too). `replay` moves that state to the content's next version; anything
 * else (host copies, a shadow cast later) becomes stale.
 */
function replayer(b: CudaBuf): () => void {
  const v = b.version;
  const shadow = b.shadowVersion === v, known = b.known?.version === v, segments = b.segments?.version === v;
  const plan = b.plan?.version === v;
  return () => {
    if (b.freed) return;
    b.version++;
    if (shadow) b.shadowVersion = b.version;
    if (known) b.known!.version = b.version;
    if (segments) b.segments!.version = b.version;
    if (plan) b.plan!.version = b.version;
  };
}

class CudaBuf implements Buf {
  ptr: number;
  freed = false;
  /** Bumped on every write; a bf16 shadow is valid while its version matches. */
  version = 0;
  shadow = 0;
  shadowVersion = -1;
  /** Layout of the shadow (null: a plain copy of all elements). */
  shadowLayout: PadLayout | null = null;
  /** Allocated but never written: reads as zeros once `settle` fills it (see the file comment). */
  zeroPending = false;
  /** When set, the buffer's content lives here instead (see the file comment). */
  twin: Twin | null = null;
  /**
   * The content is the current shadow's values, widened when first read as f32 (`settle`): an output
   * kept at bf16 precision (MatmulArgs.bf16Out, layerNorm's and crossEntropyBackward's bf16Out), never
   * written in f32 (see the file comment).
   */
  fromShadow = false;
  /** An i32 buffer's content on the host, current while `hostVersion === version` (see the file comment). */
  host: Int32Array | null = null;
  hostVersion = -1;
  /** Smallest and largest entry of `host` (computed on first use). */
  hostRange: [number, number] | null = null;
  /** Device scatter plan of the first `count` entries as targets in [0, n), for content `version`. */
  plan: ScatterPlan | null = null;
  /**
   * Entries [0, count) of an i32 buffer lie in [lo, hi], as the kernel that wrote content `version`
   * guarantees (top-k indices, the MoE routing): they are valid indices without a look at the host.
   */
  known: { version: number; count: number; lo: number; hi: number } | null = null;
  /** Segment offsets (content `version`), checked: `groups` + 1 of them, from 0, non-decreasing, to `total`. */
  segments: { version: number; groups: number; total: number } | null = null;
  /** Allocation number (CudaBackend.allocs when made): tells buffers made before a graph capture. */
  born = 0;
  constructor(readonly dtype: DType, readonly size: number, ptr: number) {
    this.ptr = ptr;
  }
}

function isInt(x: number): boolean {
  return Number.isInteger(x) && x >= 0;
}
function need(op: string, cond: boolean, msg: () => string): void {
  if (!cond) throw new Error(`cuda.${op}: ${msg()}`);
}

/**
 * True if the strides (per axis of `shape`) visit every element of a dense block of shape.product
 * elements exactly once: a permutation of contiguous strides (size-1 axes ignored).
 */
function coversDense(shape: number[], strides: number[]): boolean {
  const axes = shape.map((n, a) => [n, strides[a]!] as const).filter(([n]) => n > 1).sort((x, y) => x[1] - y[1]);
  let expect = 1;
  for (const [n, st] of axes) {
    if (st !== expect) return false;
    expect *= n;
  }
  return true;
}

/**
 * True if the groups' C regions (problem entries m, n, offC, ldc) tile a buffer of `size` elements
 * exactly: every non-empty group writes whole rows of one width ld, and their row ranges cover
 * [0, size / ld) without gaps or overlaps. C is then overwritten whole.
 */
function tilesRows(p: Int32Array, size: number): boolean {
  const ld = p[8]!;
  if (!(ld > 0) || size % ld !== 0) return false;
  const spans: [number, number][] = [];
  for (let q = 0; q < p.length; q += 9) {
    const m = p[q]!, n = p[q + 1]!, off = p[q + 7]!;
    if (m === 0 || n === 0) continue;
    if (p[q + 8] !== ld || n !== ld || off % ld !== 0) return false;
    spans.push([off / ld, off / ld + m]);
  }
  spans.sort((x, y) => x[0] - y[0]);
  let end = 0;
  for (const [from, to] of spans) {
    if (from !== end) return false;
    end = to;
  }
  return end === size / ld;
}

/**
 * `tilesRows` for products whose groups are device segments along M (GroupedMatmulArgs.segments,
 * !transA): the groups cover rows [0, total) of width ld in order when each writes whole rows from its
 * segment start (offC 0, n = ldc = ld), so C is overwritten whole when total · ld is its size.
 */
function segmentsTileRows(p: Int32Array, total: number, size: number): boolean {
  const ld = p[8]!;
  if (!(ld > 0) || total * ld !== size) return false;
  for (let q = 0; q < p.length; q += 9) if (p[q + 1] !== ld || p[q + 7] !== 0 || p[q + 8] !== ld) return false;
  return true;
}

/**
 * Problems that bound every group of a product over device segments (GroupedMatmulArgs.segments): the
 * token dimension of each set to the segments' total, at their common start. Extents that fit these
 * fit every segment.
 */
function boundingProblems(p: Int32Array, transA: boolean, total: number): Int32Array {
  const b = Int32Array.from(p), dim = transA ? 2 : 0;
  for (let q = 0; q < b.length; q += 9) b[q + dim] = total;
  return b;
}

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);
function f32Bits(v: number): number {
  f32buf[0] = v;
  return u32buf[0]!;
}
function bf16Bits(v: number): number {
  f32buf[0] = v;
  const u = u32buf[0]!;
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * Merges adjacent axes that are contiguous for every operand (stride_{d-1} = stride_d · shape_d for
 * each stride list) and drops size-1 axes: fewer index divisions in the kernels.
 */
function collapse(shape: number[], ...strides: number[][]): [number[], number[][]] {
  const s: number[] = [], st: number[][] = strides.map(() => []);
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const last = s.length - 1;
    if (last >= 0 && strides.every((x, j) => st[j]![last] === x[d]! * shape[d]!)) {
      s[last] = s[last]! * shape[d]!;
      strides.forEach((x, j) => (st[j]![last] = x[d]!));
    } else {
      s.push(shape[d]!);
      strides.forEach((x, j) => st[j]!.push(x[d]!));
    }
  }
  if (s.length === 0) return [[1], strides.map(() => [0])];
  return [s, st];
}

/**
 * Dense bf16 tensor-core peak FLOP/s of a GPU, by the name CUDA reports (NVIDIA data sheets, without
 * structured sparsity); undefined for GPUs not listed.
 */
export function bf16PeakFlops(deviceName: string): number | undefined {
  const table: [RegExp, number][] = [
    [/H100 NVL|H200 NVL/, 835e12],
    [/H200|GH200|H100 80GB HBM3|H100 SXM/, 989e12],
    [/H100 PCIe/, 756e12],
    [/A100/, 312e12],
    [/L40S/, 362e12],
  ];
  return table.find(([re]) => re.test(deviceName))?.[1];
}

export interface CudaBackendOptions {
  /** Device ordinal (default SSD_CUDA_DEVICE, else 0; a data-parallel launch sets it to the rank). */
  device?: number;
  matmul?: MatmulMode;
  /** Grouped GEMM route (default SSD_CUDA_GROUPED, else 'auto'; see the file comment). */
  grouped?: GroupedRoute;
  /** 'tc' (tensor cores where the head size allows) or 'simt'. */
  attention?: 'tc' | 'simt';
}

export class CudaBackend implements Backend {
  readonly name = 'cuda';
  readonly device: string;
  readonly gemmLibrary: string;
  readonly peakFlops?: number;
  readonly matmulMode: MatmulMode;
  readonly groupedRoute: GroupedRoute;
  private readonly attnImpl: number;
  private live = 0;
  /** Buffers written during the running graph capture (captureGraph), else null. */
  private captureWrites: Set<CudaBuf> | null = null;
  /** Buffers allocated so far, and the first allocation number of the running capture. */
  private allocs = 0;
  private captureFrom = 0;
  private liveBytes = 0;

  constructor(private readonly nat: CudaAddon, opts: CudaBackendOptions = {}) {
    const ordinal = opts.device ?? Number(process.env['SSD_CUDA_DEVICE'] ?? 0);
    if (!Number.isInteger(ordinal) || ordinal < 0) {
      throw new Error(`cuda: the device must be a non-negative integer, got ${opts.device ?? `SSD_CUDA_DEVICE='${process.env['SSD_CUDA_DEVICE']}'`}`);
    }
    this.device = nat.init(ordinal);
    const envMode = process.env['SSD_CUDA_MATMUL'] as MatmulMode | undefined;
    this.matmulMode = opts.matmul ?? envMode ?? 'bf16';
    if (!['bf16', 'tf32', 'f32', 'fast16bf', 'own'].includes(this.matmulMode)) {
      throw new Error(`cuda: unknown SSD_CUDA_MATMUL '${this.matmulMode}' (bf16, tf32, f32, fast16bf, own)`);
    }
    this.groupedRoute = opts.grouped ?? (process.env['SSD_CUDA_GROUPED'] as GroupedRoute | undefined) ?? 'auto';
    if (!['auto', 'cublas', 'own'].includes(this.groupedRoute)) {
      throw new Error(`cuda: unknown SSD_CUDA_GROUPED '${this.groupedRoute}' (auto, cublas, own)`);
    }
    this.gemmLibrary = this.matmulMode === 'own' ? 'built-in grouped kernel' : nat.loadCublas(cublasCandidates());
    this.attnImpl = (opts.attention ?? process.env['SSD_CUDA_ATTN']) === 'simt' ? 1 : 0;
    const peak = this.matmulMode === 'bf16' ? bf16PeakFlops(this.device) : undefined;
    if (peak) this.peakFlops = peak;
  }

  // ------------------------------------------------------------ buffer access
  private buf(op: string, b: Buf, what: string): CudaBuf {
    if (!(b instanceof CudaBuf)) throw new Error(`cuda.${op}: ${what} is not a cuda buffer`);
    if (b.freed) throw new Error(`cuda.${op}: ${what} was freed (${b.dtype}, size ${b.size})`);
    return b;
  }
  /** A buffer of the given dtype and at least minSize elements. */
  private typed(op: string, b: Buf, what: string, minSize: number, dtype: DType): CudaBuf {
    const c = this.buf(op, b, what);
    if (c.dtype !== dtype) throw new Error(`cuda.${op}: ${what} must be ${dtype}, got ${c.dtype}`);
    if (c.size < minSize) throw new Error(`cuda.${op}: ${what} has ${c.size} elements, needs ${minSize}`);
    return c;
  }
  /**
   * Brings the buffer's memory up to date before anything observes it: its shadow widened (`fromShadow`),
   * its twin copied back, or its deferred zeros.
   */
  private settle(b: CudaBuf): void {
    if (b.fromShadow || b.twin || b.zeroPending) this.notBeforeCapture(b, 'settling');
    if (b.fromShadow) {
      b.fromShadow = false;
      const l = b.shadowLayout;
      if (l && l.ld !== l.cols) this.nat.widenUnpad(b.shadow, b.ptr, b.size / l.cols, l.cols, l.ld);
      else this.nat.cast(1, b.shadow, b.ptr, b.size);
    }
    const t = b.twin;
    if (t) {
      b.twin = null;
      this.nat.copy2d(t.ptr, t.ld * 4, b.ptr, t.cols * 4, t.cols * 4, t.rows);
      this.nat.free(t.ptr);
    }
    if (!b.zeroPending) return;
    b.zeroPending = false;
    this.nat.zero(b.ptr, b.size * DTYPE_BYTES[b.dtype]);
  }
  /** The buffer is about to be overwritten in full: deferred zeros, a twin and `fromShadow` are dropped. */
  private overwritten(b: CudaBuf): void {
    b.zeroPending = false;
    b.fromShadow = false;
    if (b.twin) {
      this.nat.free(b.twin.ptr);
      b.twin = null;
    }
  }
  /**
   * During a graph capture, refuses the deferred work (a zero-fill, a twin's copy, a widening, a bf16
   * cast) of a buffer made before the capture and not written in it: it would only be recorded, yet its
   * state would say done, which an eager fallback after a failed capture would then trust (see
   * captureGraph).
   */
  private notBeforeCapture(b: CudaBuf, what: string): void {
    if (this.captureWrites && b.born < this.captureFrom && !this.captureWrites.has(b)) {
      throw new Error(`cuda.captureGraph: ${what} of a buffer made before the capture would be recorded, not done; ` +
        'run the captured work once before capturing');
    }
  }
  /** Marks a write of b's content (see CudaBuf.version); during a graph capture, remembers b. */
  private bump(b: CudaBuf): void {
    b.version++;
    this.captureWrites?.add(b);
  }
  /** Pointer of an input. */
  private r(op: string, b: Buf, what: string, minSize = 0, dtype: DType = 'f32'): number {
    const c = this.typed(op, b, what, minSize, dtype);
    this.settle(c);
    return c.ptr;
  }
  /** Pointer of an output that is accumulated into or written in part: bumps its version. */
  private w(op: string, b: Buf, what: string, minSize = 0, dtype: DType = 'f32'): number {
    const p = this.r(op, b, what, minSize, dtype);
    this.bump(b as CudaBuf);
    return p;
  }
  /**
   * Pointer of an output whose elements [0, extent) the kernel overwrites without reading them: when
   * that is the whole buffer, its deferred zero-fill is dropped. Take the inputs (`r`) first, so an
   * output that aliases an input is settled before the fill is dropped.
   */
  private o(op: string, b: Buf, what: string, extent: number, dtype: DType = 'f32'): number {
    const c = this.typed(op, b, what, extent, dtype);
    if (c.size === extent) this.overwritten(c);
    else this.settle(c);
    this.bump(c);
    return c.ptr;
  }
  private dims(op: string, v: Record<string, number>): void {
    for (const [k, x] of Object.entries(v)) need(op, isInt(x), () => `${k} must be a non-negative integer, got ${x}`);
  }
  /**
   * bf16 copy of an f32 buffer, cast again only after the buffer was written (a bf16 buffer is its own
   * copy). With `want`, the copy is laid out padded (see PadLayout) for cuBLAS, whose kernels for
   * leading dimensions or reduction lengths that are not multiples of 8 are several times slower
   * (GPT-2's vocabulary of 50257 makes the output layer's operands such). A cached copy serves every
   * request it contains: a row-padded copy also serves plain reads.
   */
  private shadow(b: CudaBuf, want: PadLayout | null = null): number {
    if (b.fromShadow && serves(b.shadowLayout, want, b.size)) return b.shadow;
    this.settle(b);
    if (b.dtype === 'bf16') return b.ptr;
    if (b.shadow !== 0 && b.shadowVersion === b.version && serves(b.shadowLayout, want, b.size)) return b.shadow;
    // A plain read recasts into a row-padded layout it had (the tied embedding alternates between both).
    this.notBeforeCapture(b, 'the bf16 cast');
    const old = b.shadowLayout, pad = want ?? (old !== null && contiguousElems(old, b.size) >= b.size ? old : null);
    const s = this.shadowFor(b, pad);
    if (pad) this.nat.castPad(b.ptr, s, b.size / pad.cols, pad.cols, pad.rows, pad.ld);
    else this.nat.cast(0, b.ptr, s, b.size);
    return s;
  }
  /**
   * The bf16 shadow's memory of an f32 buffer laid out as `pad` (null: a plain copy), marked current for
   * the buffer's present version: the caller queues a kernel that writes it (a cast, or a kernel that
   * writes its f32 output's bf16 copy beside it, so that the products reading it need no cast).
   */
  private shadowFor(b: CudaBuf, pad: PadLayout | null): number {
    if (b.shadow !== 0 && !sameLayout(b.shadowLayout, pad)) { this.nat.free(b.shadow); b.shadow = 0; }
    if (b.shadow === 0) b.shadow = this.nat.malloc(pad ? pad.rows * pad.ld * 2 : Math.max(1, b.size) * 2);
    b.shadowLayout = pad;
    b.shadowVersion = b.version;
    return b.shadow;
  }
  /**
   * Pointer and row stride of a (rows, cols) f32 input: its twin when it has one, its bf16 shadow when it
   * is kept at bf16 precision (`bf16`), else the buffer.
   */
  private rowsIn(op: string, b: Buf, what: string, rows: number, cols: number): { ptr: number; ld: number; bf16: boolean } {
    const c = this.typed(op, b, what, rows * cols, 'f32');
    if (c.twin && c.twin.rows === rows && c.twin.cols === cols) return { ptr: c.twin.ptr, ld: c.twin.ld, bf16: false };
    const l = c.shadowLayout;
    if (c.fromShadow && c.size === rows * cols && (!l || (l.cols === cols && l.rows >= rows))) {
      return { ptr: c.shadow, ld: l?.ld ?? cols, bf16: true };
    }
    this.settle(c);
    return { ptr: c.ptr, ld: cols, bf16: false };
  }

  /** Keeps `host` as the host copy of an i32 buffer's current content (small enough buffers only). */
  private keepHost(b: CudaBuf, host: Int32Array): void {
    if (host.length > HOST_COPY_MAX) return;
    b.host = host;
    b.hostVersion = b.version;
    b.hostRange = null;
  }
  /** An i32 buffer's content on the host: its host copy when current, else downloaded (a synchronisation). */
  private hostInts(b: CudaBuf): Int32Array {
    if (b.host && b.hostVersion === b.version) return b.host;
    const out = this.download(b) as Int32Array;
    return b.host && b.hostVersion === b.version ? b.host : out;
  }
  /**
   * Throws a RangeError unless entries [0, count) of an i32 buffer lie in [lo, hi) (lo = −1: targets
   * of cross-entropy); the message names the first offending entry.
   */
  private checkIndices(op: string, b: CudaBuf, count: number, lo: number, hi: number): void {
    if (count === 0) return;
    const kn = b.known;
    if (kn && kn.version === b.version && count <= kn.count && kn.lo >= lo && kn.hi < hi) return;
    const h = this.hostInts(b);
    if (h === b.host && b.hostRange === null) b.hostRange = this.nat.intRange(h);
    if (h === b.host && b.hostRange![0] >= lo && b.hostRange![1] < hi) return;
    for (let i = 0; i < count; i++) {
      const v = h[i]!;
      if (v >= lo && v < hi) continue;
      throw new RangeError(lo < 0
        ? `${op}: target ${v} is outside [-1, ${hi}) (vocabulary size ${hi})`
        : `${op}: index ${v} is outside [${lo}, ${hi})`);
    }
  }
  /**
   * Device scatter plan (see the file comment) of entries [0, count) of an i32 buffer as targets in
   * [0, n), validated; cached on the buffer while its content is unchanged (the MoE token index serves
   * the forward scatter and the backward one), as is the verdict that no plan is needed.
   */
  private scatterPlan(op: string, b: CudaBuf, count: number, n: number): ScatterPlan {
    const p = b.plan;
    if (p && p.version === b.version && p.count === count && p.n === n) return p;
    this.checkIndices(op, b, count, 0, n);
    const h = this.hostInts(b);
    if (p) this.nat.free(p.ptr);
    b.plan = { ...this.nat.scatterPlan(h.subarray(0, count), n), version: b.version, count, n };
    return b.plan;
  }
  /**
   * out[idx[i]] += src row i for i < count (out (n, d), src rows d apart at device address `src`), in
   * ascending i per row of out (rows with more than 32 sources: in chunks of 32, then the chunk sums in
   * order; a fixed blocking, so still deterministic). Distinct targets are added directly, without a
   * device plan. An output still awaiting its zero-fill is written instead (no memset) when every row
   * is written: always through a plan (rows without sources get zeros), and for distinct targets when
   * there are n of them. `bias`: a row of d added to every row of out (GroupedMatmulArgs.outBias; for
   * distinct or bounds targets added first, which settles a pending zero-fill).
   */
  private scatterAdd(op: string, src: number, idx: Buf, count: number, out: Buf, n: number, d: number, srcBf16 = false,
    bias?: Buf): void {
    const I = this.typed(op, idx, 'idx', count, 'i32');
    const plan = this.scatterPlan(op, I, count, n);
    need(op, !srcBf16 || plan.kind === 'listed', () => 'bf16 sources need a listed plan');
    // A bias row for every row of out (GroupedMatmulArgs.outBias): added by the segment sums as they
    // start a row, else first (the indices are checked by now).
    const fused = bias && (plan.kind === 'listed' || plan.kind === 'sorted');
    if (bias && !fused) addOutBias(this, bias, out);
    const biasPtr = fused ? this.r(op, bias, 'outBias', d) : 0;
    const O = this.typed(op, out, 'out', n * d, 'f32');
    const unique = plan.kind === 'unique';
    const init = O.zeroPending && O.twin === null && O.size === n * d && (!unique || count === n);
    const ix = unique ? this.r(op, I, 'idx', count, 'i32') : 0;
    const o = init ? this.o(op, out, 'out', n * d) : this.w(op, out, 'out', n * d);
    if (unique) this.nat.scatterUnique(src, ix, count, o, d, init, op);
    else if (plan.kind === 'bounds') this.nat.segmentSumBounds(src, plan.ptr, n, count, o, d, init, op);
    else this.nat.segmentSum(src, plan.ptr, n, count, plan.chunks, plan.kind === 'listed', o, d, init, op, srcBf16, biasPtr);
  }

  // ------------------------------------------------------------ memory
  alloc(dtype: DType, size: number): Buf {
    need('alloc', isInt(size), () => `bad size ${size}`);
    need('alloc', dtype in DTYPE_BYTES, () => `bad dtype ${dtype}`);
    const bytes = size * DTYPE_BYTES[dtype];
    const b = new CudaBuf(dtype, size, this.nat.malloc(Math.max(bytes, 1)));
    b.born = ++this.allocs;
    b.zeroPending = bytes > 0;
    this.live++;
    this.liveBytes += bytes;
    return b;
  }
  free(buf: Buf): void {
    if (!(buf instanceof CudaBuf)) throw new Error('cuda.free: not a cuda buffer');
    if (buf.freed) throw new Error(`cuda.free: buffer freed twice (${buf.dtype}, size ${buf.size})`);
    buf.freed = true;
    this.overwritten(buf);
    this.nat.free(buf.ptr);
    if (buf.shadow) this.nat.free(buf.shadow);
    buf.shadow = 0;
    if (buf.plan) this.nat.free(buf.plan.ptr);
    buf.plan = null;
    buf.host = null;
    this.live--;
    this.liveBytes -= buf.size * DTYPE_BYTES[buf.dtype];
  }
  upload(buf: Buf, data: ArrayLike<number>): void {
    const b = this.buf('upload', buf, 'buffer');
    need('upload', data.length === b.size, () => `${data.length} values for a buffer of ${b.size}`);
    this.bump(b);
    this.overwritten(b);
    if (b.size === 0) return;
    if (b.dtype === 'bf16') {
      this.nat.h2dBf16(b.ptr, data instanceof Float32Array ? data : Float32Array.from(data));
    } else if (b.dtype === 'f32') {
      const a = data instanceof Float32Array ? data : Float32Array.from(data);
      this.nat.h2dAsync(b.ptr, a, b.size * 4);
    } else {
      const a = new Int32Array(b.size); // a copy of the caller's data: it becomes the host copy
      a.set(data);
      this.nat.h2dAsync(b.ptr, a, b.size * 4);
      this.keepHost(b, a);
    }
  }
  download(buf: Buf): HostArray {
    const b = this.buf('download', buf, 'buffer');
    this.settle(b);
    if (b.dtype === 'i32') {
      if (b.host && b.hostVersion === b.version) return new Int32Array(b.host);
      const out = new Int32Array(b.size);
      if (b.size) this.nat.d2h(b.ptr, out, b.size * 4);
      this.keepHost(b, new Int32Array(out));
      return out;
    }
    const out = new Float32Array(b.size);
    if (b.size === 0) return out;
    if (b.dtype === 'bf16') this.nat.d2hBf16(b.ptr, out);
    else this.nat.d2h(b.ptr, out, b.size * 4);
    return out;
  }
  memoryStats(): { liveBuffers: number; liveBytes: number } {
    return { liveBuffers: this.live, liveBytes: this.liveBytes };
  }
  /** Device allocator figures (bytes held by live blocks incl. bf16 shadows, cached, peak). */
  deviceMemory(): { liveBytes: number; cachedBytes: number; peakBytes: number; liveBlocks: number } {
    return this.nat.stats();
  }
  /**
   * See Backend.joinCollective: an NCCL communicator (libnccl.so.2 from ncclCandidates, dlopen'ed on the
   * first call); the sums run in place, as one NCCL group per call, on this backend's stream, or with
   * `overlap` on a second stream after the work queued so far (see native/cuda/nccl.cu).
   */
  joinCollective(rank: number, size: number, exchange: (id: Uint8Array | null) => Uint8Array): Collective {
    need('joinCollective', isInt(size) && size >= 1 && isInt(rank) && rank >= 0 && rank < size, () => `rank ${rank} of ${size} is out of range`);
    const lib = this.nat.loadNccl(ncclCandidates());
    const id = exchange(rank === 0 ? this.nat.ncclUniqueId() : null);
    const comm = this.nat.ncclCommInit(id, size, rank);
    let open = true;
    return {
      rank, size, transport: `NCCL, ${lib}`, overlaps: true,
      allReduceSum: (bufs: Buf[], overlap = false) => {
        if (!open) throw new Error('cuda.allReduceSum: the collective was disposed');
        // Each buffer is settled (deferred zeros, shadows) and marked written; its f32 memory is summed.
        const ptrs = bufs.map((b, i) => this.w('allReduceSum', b, `bufs[${i}]`));
        this.nat.ncclAllReduceSum(comm, ptrs, bufs.map((b) => b.size), overlap);
      },
      wait: () => this.nat.ncclWait(),
      dispose: () => {
        if (!open) return;
        open = false;
        this.nat.ncclCommDestroy(comm);
      },
    };
  }

  /**
   * See Backend.captureGraph. The host-side state of a buffer the capture writes describes the content
   * one run leaves (its bf16 shadow current, a routing's index range and scatter plan): each replay
   * leaves the same kind of content, so a launch only moves that state to a new version, which makes
   * host copies (downloads) stale. Such buffers must not be written outside the graph while it lives
   * (the graph would overwrite them, and their state would not say so). Deferred work on buffers made
   * before the capture (a bf16 cast of a weight, a pending zero-fill) is refused: the capture fails
   * instead of recording it. Buffers that outlive the capture are settled inside it (a deferred
   * widening of a bf16-only output is recorded too), so their f32 content is current after each launch.
   */
  captureGraph(fn: () => void): CapturedGraph {
    if (this.captureWrites) throw new Error('cuda.captureGraph: a capture is already running');
    const writes = new Set<CudaBuf>();
    this.nat.graphBegin();
    this.captureWrites = writes;
    this.captureFrom = this.allocs + 1;
    try {
      fn();
      for (const b of writes) if (!b.freed) this.settle(b);
    } catch (e) {
      this.captureWrites = null;
      this.nat.graphEnd(false);
      throw e;
    }
    this.captureWrites = null;
    const id = this.nat.graphEnd(true);
    const replays = [...writes].filter((b) => !b.freed).map(replayer);
    let alive = true;
    return {
      launch: () => {
        if (!alive) throw new Error('cuda.captureGraph: launch of a disposed graph');
        this.nat.graphLaunch(id);
        for (const r of replays) r();
      },
      dispose: () => {
        if (this.captureWrites) throw new Error('cuda.captureGraph: a graph cannot be disposed during a capture');
        if (alive) this.nat.graphDestroy(id);
        alive = false;
      },
    };
  }
  /** Waits for all queued device work (for timing). */
  synchronize(): void {
    this.nat.sync();
  }
  /** Returns the allocator's cached blocks to the device. */
  emptyCache(): void {
    this.nat.emptyCache();
  }

  // ------------------------------------------------------------ data movement
  fill(out: Buf, value: number): void {
    const b = this.buf('fill', out, 'out');
    this.bump(b);
    this.overwritten(b);
    // Zeros are deferred as an allocation's are (a gradient zeroed between steps is then overwritten
    // by its first contribution, see `binary`, instead of filled and added to).
    if (value === 0 && !Object.is(value, -0)) b.zeroPending = b.size > 0;
    else if (b.dtype === 'bf16') this.nat.fill16(b.ptr, b.size, bf16Bits(value));
    else if (b.dtype === 'i32') this.nat.fill32(b.ptr, b.size, value | 0);
    else this.nat.fill32(b.ptr, b.size, f32Bits(value));
  }
  cast(x: Buf, out: Buf): void {
    const s = this.buf('cast', x, 'x'), d = this.buf('cast', out, 'out');
    need('cast', s.size === d.size, () => `sizes ${s.size} and ${d.size} differ`);
    this.settle(s);
    this.bump(d);
    this.overwritten(d);
    if (s.dtype === d.dtype) this.nat.copyBytes(s.ptr, d.ptr, s.size * DTYPE_BYTES[s.dtype]);
    else if (s.dtype === 'f32' && d.dtype === 'bf16') this.nat.cast(0, s.ptr, d.ptr, s.size);
    else if (s.dtype === 'bf16' && d.dtype === 'f32') this.nat.cast(1, s.ptr, d.ptr, s.size);
    else if (s.dtype === 'i32' && d.dtype === 'f32') this.nat.cast(2, s.ptr, d.ptr, s.size);
    else if (s.dtype === 'f32' && d.dtype === 'i32') this.nat.cast(3, s.ptr, d.ptr, s.size);
    else throw new Error(`cuda.cast: unsupported ${s.dtype} -> ${d.dtype}`);
  }
  copyStrided(src: Buf, srcOffset: number, srcStrides: number[], dst: Buf, dstOffset: number,
    dstStrides: number[], shape: number[], accumulate: boolean): void {
    const op = 'copyStrided';
    const s = this.buf(op, src, 'src'), d = this.buf(op, dst, 'dst');
    need(op, s.dtype === d.dtype, () => `src is ${s.dtype} but dst is ${d.dtype}`);
    need(op, srcStrides.length === shape.length && dstStrides.length === shape.length,
      () => `ranks differ: shape ${shape.length}, srcStrides ${srcStrides.length}, dstStrides ${dstStrides.length}`);
    let total = 1;
    for (const x of shape) { need(op, isInt(x), () => `bad shape [${shape}]`); total *= x; }
    for (const x of [...srcStrides, ...dstStrides, srcOffset, dstOffset]) need(op, Number.isInteger(x), () => 'non-integer stride or offset');
    if (total === 0) return;
    // Bounds of both operands.
    const range = (off: number, st: number[]) => {
      let lo = off, hi = off;
      shape.forEach((n, a) => { const e = (n - 1) * st[a]!; if (e < 0) lo += e; else hi += e; });
      return [lo, hi] as const;
    };
    const [slo, shi] = range(srcOffset, srcStrides), [dlo, dhi] = range(dstOffset, dstStrides);
    need(op, slo >= 0 && shi < s.size, () => `source range [${slo}, ${shi}] outside a buffer of ${s.size}`);
    need(op, dlo >= 0 && dhi < d.size, () => `destination range [${dlo}, ${dhi}] outside a buffer of ${d.size}`);
    this.settle(s);
    if (!accumulate && dstOffset === 0 && total === d.size && coversDense(shape, dstStrides)) this.overwritten(d);
    else this.settle(d);
    this.bump(d);
    const [sh, [ss, ds]] = collapse(shape, srcStrides, dstStrides);
    if (!accumulate && sh.length === 1 && ss![0] === 1 && ds![0] === 1) {
      const eb = DTYPE_BYTES[s.dtype];
      this.nat.copyBytes(s.ptr + srcOffset * eb, d.ptr + dstOffset * eb, sh[0]! * eb);
      return;
    }
    need(op, sh.length <= 8, () => `rank ${sh.length} > 8 after merging contiguous axes`);
    this.nat.copyStrided(KIND[s.dtype], s.ptr, srcOffset, ss!, d.ptr, dstOffset, ds!, sh, accumulate);
  }

  // ------------------------------------------------------------ elementwise
  unary(op: UnaryOp, x: Buf, out: Buf): void {
    const code = UNARY_CODE[op];
    need('unary', code !== undefined, () => `unknown op ${op}`);
    const n = this.buf('unary', x, 'x').size;
    need('unary', this.buf('unary', out, 'out').size === n, () => `${op}: sizes differ`);
    this.nat.unary(code, this.r('unary', x, 'x'), this.o('unary', out, 'out', n), n);
  }
  unaryBackward(op: UnaryOp, x: Buf, gy: Buf, gx: Buf): void {
    const code = UNARY_CODE[op], o = 'unaryBackward';
    need(o, code !== undefined, () => `unknown op ${op}`);
    const n = this.buf(o, x, 'x').size;
    need(o, this.buf(o, gy, 'gy').size === n && this.buf(o, gx, 'gx').size === n, () => `${op}: sizes differ`);
    // ReLU's mask from a product output kept at bf16 precision is read from that copy (the same signs).
    const XB = x as CudaBuf, x16 = op === 'relu' && XB.fromShadow && XB !== gx ? this.shadow(XB) : 0;
    const X = x16 ? 0 : this.r(o, x, 'x'), G = this.r(o, gy, 'gy'), out = this.o(o, gx, 'gx', n);
    // ReLU's gradient feeds products (a linear layer's or an expert's backward): its bf16 copy is
    // written beside it.
    const out16 = op === 'relu' && this.matmulMode === 'bf16' ? this.shadowFor(gx as CudaBuf, null) : 0;
    this.nat.unaryBackward(code, X, G, out, out16, n, x16);
  }
  affine(x: Buf, out: Buf, scale: number, shift: number): void {
    const n = this.buf('affine', x, 'x').size;
    need('affine', this.buf('affine', out, 'out').size === n, () => 'sizes differ');
    this.nat.affine(this.r('affine', x, 'x'), this.o('affine', out, 'out', n), n, scale, shift);
  }
  binary(op: BinaryOp, a: Buf, aStrides: number[], b: Buf, bStrides: number[], out: Buf, shape: number[]): void {
    const code = BINARY_CODE[op];
    need('binary', code !== undefined, () => `unknown op ${op}`);
    need('binary', aStrides.length === shape.length && bStrides.length === shape.length,
      () => `${op}: ranks differ: shape [${shape}], aStrides [${aStrides}], bStrides [${bStrides}]`);
    let total = 1;
    for (const s of shape) { need('binary', isInt(s), () => `${op}: bad shape [${shape}]`); total *= s; }
    if (op === 'add' && this.addsToZeros(a, aStrides, b, bStrides, out, shape, total)) return;
    const A = this.r('binary', a, 'a'), B = this.r('binary', b, 'b'), O = this.o('binary', out, 'out', total);
    if (total === 0) return;
    // Output strides are contiguous.
    const os: number[] = new Array(shape.length);
    for (let d = shape.length - 1, s = 1; d >= 0; d--) { os[d] = s; s *= shape[d]!; }
    const [sh, [as, bs]] = collapse(shape, aStrides, bStrides, os);
    need('binary', sh.length <= 8, () => `rank ${sh.length} > 8 after merging contiguous axes`);
    this.nat.binary(code, A, as!, B, bs!, O, sh);
  }
  /**
   * out = a + b where out is a and holds deferred zeros (a gradient accumulated into its zeroed buffer),
   * all of one f32 size and contiguous: a copy of b (0 + x = x; NaN stays NaN, −0 becomes −0 rather
   * than +0). Returns false, doing nothing, in every other case.
   */
  private addsToZeros(a: Buf, aStrides: number[], b: Buf, bStrides: number[], out: Buf, shape: number[], total: number): boolean {
    const A = this.buf('binary', a, 'a'), B = this.buf('binary', b, 'b');
    if (a !== out || b === out || !A.zeroPending || A.twin || A.dtype !== 'f32' || B.dtype !== 'f32') return false;
    if (A.size !== total || B.size !== total || total === 0) return false;
    for (let d = shape.length - 1, s = 1; d >= 0; d--) {
      if (shape[d]! > 1 && (aStrides[d] !== s || bStrides[d] !== s)) return false;
      s *= shape[d]!;
    }
    const src = this.r('binary', b, 'b');
    this.nat.copyBytes(src, this.o('binary', out, 'out', total), total * 4);
    return true;
  }
  reduceSum(x: Buf, out: Buf, outer: number, mid: number, inner: number): void {
    this.dims('reduceSum', { outer, mid, inner });
    const X = this.r('reduceSum', x, 'x', outer * mid * inner), O = this.o('reduceSum', out, 'out', outer * inner);
    this.nat.reduceSum(X, O, outer, mid, inner);
  }
  sumSquares(xs: Buf[]): number {
    return this.nat.sumSquares(xs.map((x, i) => this.r('sumSquares', x, `xs[${i}]`)), xs.map((x) => x.size));
  }

  // ------------------------------------------------------------ linear algebra
  matmul(a: Buf, b: Buf, c: Buf, g: MatmulArgs): void {
    const { batch, m, n, k } = g, op = 'matmul';
    this.dims(op, { batch, m, n, k, strideA: g.strideA, strideB: g.strideB, strideC: g.strideC });
    // Operands are settled where their f32 content is read: in bf16 the products read shadows (a
    // product output kept at bf16 precision is not widened for them).
    const A = this.typed(op, a, 'a', 0, 'f32'), B = this.typed(op, b, 'b', 0, 'f32');
    checkMatmulOperands(a, b, c);
    checkMatmulEpilogue(g);
    const bias = g.bias ? this.r(op, g.bias, 'bias') : 0, relu = g.relu ?? false;
    // The bias gradient: fused (cuBLASLt) where it can be, else summed from A (f32) after the product.
    let biasGrad = 0;
    const sumRows = (fused: boolean) => {
      if (g.biasGrad && !fused) this.reduceSum(a, g.biasGrad, g.transA ? 1 : m, k, g.transA ? m : 1);
    };
    if (batch === 0 || m === 0 || n === 0) {
      this.w(op, c, 'c');
      sumRows(false);
      return;
    }
    need(op, batch === 1 || g.strideC >= m * n, () => `strideC ${g.strideC} < m*n = ${m * n}`);
    const needA = (batch - 1) * g.strideA + m * k, needB = (batch - 1) * g.strideB + k * n;
    const needC = (batch - 1) * g.strideC + m * n;
    need(op, A.size >= needA, () => `a has ${A.size} elements, needs ${needA} (batch ${batch}, m ${m}, k ${k})`);
    need(op, B.size >= needB, () => `b has ${B.size} elements, needs ${needB} (batch ${batch}, k ${k}, n ${n})`);
    need(op, this.buf(op, c, 'c').size >= needC, () => `c has ${c.size} elements, needs ${needC} (batch ${batch}, m ${m}, n ${n})`);
    if (g.biasGrad) biasGrad = this.o(op, g.biasGrad, 'biasGrad', m);
    // beta = 0 and the C_b packed back to back over the whole buffer: C is overwritten, never read.
    const whole = g.beta === 0 && (batch === 1 || g.strideC === m * n) && needC === c.size;
    const C = whole ? this.o(op, c, 'c', needC) : this.w(op, c, 'c');
    const lda = g.transA ? m : k, ldb = g.transB ? k : n;
    if (this.matmulMode === 'own') {
      const p = new Int32Array(9 * batch);
      for (let t = 0; t < batch; t++) p.set([m, n, k, t * g.strideA, lda, t * g.strideB, ldb, t * g.strideC, n], 9 * t);
      this.nat.groupedGemm(this.shadow(A), 0, this.shadow(B), 0, C, p, g.transA, g.transB, g.alpha, g.beta, 0, 0, false, 0, 0,
        false);
      this.nat.biasAct(C, n, g.strideC, batch, m, n, bias, relu);
      sumRows(false);
      return;
    }
    const bf = this.matmulMode === 'bf16';
    if (!bf) {
      this.settle(A);
      this.settle(B);
      sumRows((this.nat.gemm(A.ptr, 0, lda, g.strideA, B.ptr, 0, ldb, g.strideB, C, n, g.strideC, batch, m, n, k, g.transA,
        g.transB, g.alpha, g.beta, COMPUTE[this.matmulMode as Exclude<MatmulMode, 'own'>], bias, relu, biasGrad, 0, 0) & GEMM_BIAS_GRAD) !== 0);
      return;
    }
    // Large single products get misaligned sizes padded to multiples of 8 (zeros in the operands):
    // the reduction length k (zero columns of one operand meet zero rows of the other), the output
    // width n when C is overwritten whole (C is then computed into a twin), and the leading dimension
    // of any large operand.
    const single = batch === 1 && A.size === m * k && B.size === k * n;
    const kk = single && k % 8 !== 0 && A.size + B.size >= PAD_MIN ? ceil8(k) : k;
    const nn = single && whole && n % 8 !== 0 && m * n >= PAD_MIN ? ceil8(n) : n;
    const layout = (x: CudaBuf, rows: number, cols: number, rowsTo: number, colsTo: number): PadLayout | null => {
      const big = batch === 1 && x.size === rows * cols && x.size >= PAD_MIN;
      return rowsTo > rows || colsTo > cols || (big && cols % 8 !== 0) ? { cols, ld: ceil8(cols), rows: rowsTo } : null;
    };
    const lb = g.transB ? layout(B, n, k, nn, kk) : layout(B, k, n, kk, nn);
    // A few rows (a decode step) times a weight stored (n, k): the GEMV kernel streams the weight's
    // bf16 copy once, near the memory bandwidth, and takes A as it is (f32, or its bf16 copy), so A
    // needs no cast; the output is f32 (a bf16Out request may be ignored).
    if (batch === 1 && m <= GEMV_MAX_ROWS && !g.transA && g.transB && g.beta === 0 && whole && !biasGrad) {
      const x = this.rowsIn(op, a, 'a', m, k);
      this.nat.gemv(x.ptr, x.bf16, x.ld, this.shadow(B, lb), lb?.ld ?? k, C, n, bias, m, n, k, g.alpha, relu);
      return;
    }
    const la = g.transA ? layout(A, k, m, kk, m) : layout(A, m, k, m, kk);
    const pa = this.shadow(A, la), pb = this.shadow(B, lb);
    // The epilogue is fused into the product, except over a padded width (the bias has n entries).
    const fused = nn === n;
    // A bf16 output (autocast's precision, bf16 bias included): the product writes C's bf16 shadow (over
    // a padded width: its columns padded as the twin's), and C is widened from it only if something reads
    // C itself (see the file comment).
    const Cb = c as CudaBuf, half = g.bf16Out && whole && batch === 1 && !biasGrad && (fused || (!bias && !relu));
    const c16 = half ? this.shadowFor(Cb, fused ? null : { cols: n, ld: nn, rows: m }) : 0;
    const bias16 = c16 && g.bias ? this.shadow(this.buf(op, g.bias, 'bias')) : 0;
    const gemm = (out: number, ldc: number) => this.nat.gemm(pa, 1, la?.ld ?? lda, g.strideA, pb, 1, lb?.ld ?? ldb, g.strideB,
      out, ldc, g.strideC, batch, m, nn, kk, g.transA, g.transB, g.alpha, g.beta, 0, fused ? bias : 0, fused && relu, biasGrad,
      c16, bias16);
    // Over a padded width the bf16 output alone needs no twin: it is tried first.
    let done = c16 && !fused ? gemm(0, nn) : GEMM_NOT_DONE, out = C, ldc = n;
    if (done & GEMM_NOT_DONE) {
      if (!fused) {
        ldc = nn;
        out = this.nat.malloc(m * nn * 4);
        Cb.twin = { ptr: out, rows: m, cols: n, ld: nn };
      }
      done = gemm(out, ldc);
    }
    sumRows((done & GEMM_BIAS_GRAD) !== 0);
    Cb.fromShadow = (done & GEMM_ONLY_C16) !== 0;
    if (!fused && !Cb.fromShadow) this.nat.biasAct(out, ldc, g.strideC, batch, m, n, bias, relu);
  }
  /**
   * Whether a grouped product of `groups` groups runs as one cuBLAS GEMM per group (see the file
   * comment): under `auto` not with device segments, whose sizes cuBLAS would need on the host.
   */
  private groupedByCublas(groups: number, segments: boolean): boolean {
    if (this.matmulMode === 'own' || this.groupedRoute === 'own') return false;
    return this.groupedRoute === 'cublas' || (groups <= 4 && !segments);
  }
  /**
   * The total of a segments buffer (GroupedMatmulArgs.segments) of `groups` + 1 entries, validated:
   * known without a synchronisation when `expertGroups` wrote it, else read from its host copy or
   * downloaded.
   */
  private segmentTotal(op: string, s: Buf, groups: number): { S: CudaBuf; total: number } {
    const S = this.typed(op, s, 'segments', 0, 'i32');
    need(op, S.size === groups + 1, () => `segments has ${S.size} entries, expected ${groups + 1} (groups + 1)`);
    const known = S.segments;
    if (known && known.version === S.version && known.groups === groups) return { S, total: known.total };
    S.segments = { version: S.version, groups, total: checkSegments(this.hostInts(S), groups) };
    return { S, total: S.segments.total };
  }
  groupedMatmul(a: Buf, b: Buf, c: Buf, g: GroupedMatmulArgs): void {
    const op = 'groupedMatmul';
    const p = g.problems;
    need(op, p instanceof Int32Array, () => 'problems must be an Int32Array');
    need(op, p.length % 9 === 0, () => `problems length ${p.length} is not a multiple of 9`);
    const groups = p.length / 9, rows = g.rows ?? {};
    checkGroupedEpilogue(g);
    if (g.segments) checkSegmentLayout(g);
    const seg = g.segments ? this.segmentTotal(op, g.segments, groups) : null;
    // cuBLAS takes its sizes from the host: device segments go there only when it is asked for
    // (SSD_CUDA_GROUPED=cublas), read back at the cost of a synchronisation.
    if (seg && this.groupedByCublas(groups, true)) {
      this.groupedMatmul(a, b, c, resolveSegments(g, this.hostInts(seg.S)));
      return;
    }
    const indexed = !!(rows.a || rows.b || rows.c);
    // cuBLAS cannot read rows through indices: the generic path gathers copies for it.
    const cublas = this.groupedByCublas(groups, seg !== null);
    if (indexed && cublas) { groupedMatmulByCopies(this, a, b, c, g); return; }
    const A = this.buf(op, a, 'a'), B = this.buf(op, b, 'b'), Cb = this.buf(op, c, 'c');
    need(op, !rows.c || g.beta === 1, () => `a scattered C (rows.c) accumulates, beta must be 1 (got ${g.beta})`);
    /** An indexed operand's index buffer, validated against the rows of `real` (entry `at`: its shared ld). */
    const index = (idx: Buf | undefined, at: number, what: string, real: CudaBuf): CudaBuf | null => {
      if (!idx) return null;
      const I = this.typed(op, idx, `rows.${what}`, 0, 'i32');
      const ld = p[at] ?? 0;
      for (let q = at; q < p.length; q += 9) {
        need(op, p[q] === ld, () => `indexed ${what} needs one leading dimension for all groups (${ld} and ${p[q]})`);
      }
      if (what !== 'c') this.checkIndices(`${op} (rows.${what})`, I, I.size, 0, Math.floor(real.size / ld));
      return I;
    };
    const Ia = index(rows.a, 4, 'a', A), Ib = index(rows.b, 6, 'b', B), Ic = index(rows.c, 8, 'c', Cb);
    // An indexed operand's groups address the virtual matrix of its indexed rows.
    const sizeA = Ia ? Ia.size * p[4]! : A.size, sizeB = Ib ? Ib.size * p[6]! : B.size, sizeC = Ic ? Ic.size * p[8]! : Cb.size;
    // Device segments: the extents are checked on problems that bound every segment.
    checkProblems(`cuda.${op}`, seg ? boundingProblems(p, g.transA, seg.total) : p, g.transA, g.transB, sizeA, sizeB, sizeC);
    if (groups === 0) {
      this.r(op, a, 'a');
      this.r(op, b, 'b');
      if (g.outBias) addOutBias(this, g.outBias, c);
      else this.w(op, c, 'c');
      return;
    }
    const bias = g.bias ? this.r(op, g.bias, 'bias') : 0, stride = g.biasStride ?? 0;
    if (cublas) {
      const bf = this.matmulMode === 'bf16';
      const pa = bf ? this.shadow(A) : this.r(op, a, 'a'), pb = bf ? this.shadow(B) : this.r(op, b, 'b'), eb = bf ? 2 : 4;
      const C = g.beta === 0 && tilesRows(p, Cb.size) ? this.o(op, c, 'c', Cb.size) : this.w(op, c, 'c');
      for (let q = 0; q < p.length; q += 9) {
        const m = p[q]!, n = p[q + 1]!;
        if (m === 0 || n === 0) continue;
        this.nat.gemm(pa + p[q + 3]! * eb, bf ? 1 : 0, p[q + 4]!, 0, pb + p[q + 5]! * eb, bf ? 1 : 0, p[q + 6]!, 0, C + p[q + 7]! * 4,
          p[q + 8]!, 0, 1, m, n, p[q + 2]!, g.transA, g.transB, g.alpha, g.beta, COMPUTE[this.matmulMode as Exclude<MatmulMode, 'own'>],
          bias && bias + (q / 9) * stride * 4, g.relu ?? false, 0, 0, 0);
      }
      return;
    }
    // The built-in kernel on the bf16 copies, row indices and segments read in place.
    const pa = this.shadow(A), pb = this.shadow(B);
    const ra = Ia ? this.r(op, Ia, 'rows.a', 0, 'i32') : 0, rb = Ib ? this.r(op, Ib, 'rows.b', 0, 'i32') : 0;
    const sp = seg ? this.r(op, seg.S, 'segments', groups + 1, 'i32') : 0, total = seg?.total ?? 0;
    /** Whether the groups overwrite all `size` elements of their C. */
    const covers = (size: number) => (seg && !g.transA ? segmentsTileRows(p, total, size) : tilesRows(p, size));
    if (!Ic) {
      const whole = g.beta === 0 && covers(Cb.size), C = whole ? this.o(op, c, 'c', Cb.size) : this.w(op, c, 'c');
      // Kept at bf16 precision (bf16Out): the kernel writes only the bf16 shadow (see the file comment).
      const C16 = g.bf16Out && whole && !g.transA && this.matmulMode === 'bf16' ? this.shadowFor(Cb, null) : 0;
      this.nat.groupedGemm(pa, ra, pb, rb, C16 || C, p, g.transA, g.transB, g.alpha, g.beta, sp, total, C16 !== 0, bias, stride,
        g.relu ?? false);
      Cb.fromShadow = C16 !== 0;
      return;
    }
    // Scattered C: the product rows go to a scratch (the virtual C), then each row of C receives its
    // product rows in ascending order (a scatter plan), deterministically and without atomics. Rows with
    // several sources (a listed plan: the MoE's k experts per token) sum a bf16 scratch in fp32, as
    // autocast's bf16 product outputs would: the scratch is k times the output, and its traffic is
    // most of the product's time.
    const ldc = p[8]!, rowsC = ldc > 0 ? Math.floor(Cb.size / ldc) : 0;
    const half = this.scatterPlan(op, Ic, Ic.size, rowsC).kind === 'listed' && !(seg && g.transA);
    const scratchBytes = sizeC * (half ? 2 : 4);
    const scratch = this.nat.malloc(Math.max(scratchBytes, 1));
    if (!covers(sizeC)) this.nat.zero(scratch, scratchBytes);
    this.nat.groupedGemm(pa, ra, pb, rb, scratch, p, g.transA, g.transB, g.alpha, 0, sp, total, half, 0, 0, false);
    this.scatterAdd(op, scratch, Ic, Ic.size, c, rowsC, ldc, half, g.outBias);
    this.nat.free(scratch);
  }

  // ------------------------------------------------------------ NN kernels
  /** Whether attention with head size D runs on the tensor-core kernels (reading bf16 shadows). */
  private tensorCoreAttention(D: number): boolean {
    return this.attnImpl === 0 && TC_HEAD_SIZES.has(D);
  }
  softmax(x: Buf, out: Buf, rows: number, cols: number): void {
    this.dims('softmax', { rows, cols });
    const n = rows * cols;
    this.nat.softmax(this.r('softmax', x, 'x', n), this.o('softmax', out, 'out', n), rows, cols);
  }
  softmaxBackward(y: Buf, gy: Buf, gx: Buf, rows: number, cols: number): void {
    const op = 'softmaxBackward';
    this.dims(op, { rows, cols });
    const n = rows * cols;
    this.nat.softmaxBackward(this.r(op, y, 'y', n), this.r(op, gy, 'gy', n), this.o(op, gx, 'gx', n), rows, cols);
  }
  layerNorm(x: Buf, gamma: Buf, beta: Buf, y: Buf, mean: Buf, rstd: Buf, rows: number, cols: number, eps: number,
    bf16Out = false): void {
    const op = 'layerNorm';
    this.dims(op, { rows, cols });
    const n = rows * cols;
    const X = this.r(op, x, 'x', n), G = this.r(op, gamma, 'gamma', cols), B = this.r(op, beta, 'beta', cols);
    const out = this.o(op, y, 'y', n), M = this.o(op, mean, 'mean', rows), R = this.o(op, rstd, 'rstd', rows);
    // The output feeds a product (the attention's or FFN's input projection, the output layer): its
    // bf16 copy is written beside it.
    const out16 = this.matmulMode === 'bf16' && y.size === n ? this.shadowFor(y as CudaBuf, null) : 0;
    (y as CudaBuf).fromShadow = this.nat.layerNorm(X, G, B, out, out16, M, R, rows, cols, eps, bf16Out && out16 !== 0);
  }
  layerNormBackward(x: Buf, gamma: Buf, mean: Buf, rstd: Buf, gy: Buf, gx: Buf, ggamma: Buf, gbeta: Buf,
    rows: number, cols: number): void {
    const op = 'layerNormBackward';
    this.dims(op, { rows, cols });
    const n = rows * cols;
    this.nat.layerNormBackward(this.r(op, x, 'x', n), this.r(op, gamma, 'gamma', cols), this.r(op, mean, 'mean', rows),
      this.r(op, rstd, 'rstd', rows), this.r(op, gy, 'gy', n), this.o(op, gx, 'gx', n), this.w(op, ggamma, 'ggamma', cols),
      this.w(op, gbeta, 'gbeta', cols), rows, cols);
  }
  embedding(table: Buf, ids: Buf, out: Buf, n: number, vocab: number, dim: number): void {
    this.dims('embedding', { n, vocab, dim });
    this.gather('embedding', table, ids, out, n, vocab, dim);
  }
  embeddingBackward(gy: Buf, ids: Buf, gtable: Buf, n: number, vocab: number, dim: number): void {
    const op = 'embeddingBackward';
    this.dims(op, { n, vocab, dim });
    this.scatterAdd(op, this.r(op, gy, 'gy', n * dim), ids, n, gtable, vocab, dim);
  }
  attention(qkv: Buf, out: Buf, lse: Buf, B: number, T: number, H: number, D: number, causal: boolean, scale: number): void {
    const op = 'attention';
    this.dims(op, { B, T, H, D });
    const tc = this.tensorCoreAttention(D), nq = B * T * 3 * H * D, no = B * T * H * D;
    // The tensor-core kernels read only the bf16 copy of qkv, and write the output's (the projection's
    // operand) beside it.
    const q16 = tc ? this.shadow(this.typed(op, qkv, 'qkv', nq, 'f32')) : 0, q = tc ? 0 : this.r(op, qkv, 'qkv', nq);
    const o = this.o(op, out, 'out', no), l = this.o(op, lse, 'lse', B * H * T);
    this.nat.attention(q, q16, o, l, B, T, H, D, causal, scale, tc ? 0 : 1, this.copyBeside(tc, out, no));
  }
  /** The bf16 shadow of an output `b` of `n` elements that a tensor-core kernel writes beside it (0: none). */
  private copyBeside(tc: boolean, b: Buf, n: number): number {
    return tc && this.matmulMode === 'bf16' && b.size === n ? this.shadowFor(b as CudaBuf, null) : 0;
  }
  attentionBackward(qkv: Buf, out: Buf, lse: Buf, gout: Buf, gqkv: Buf, B: number, T: number, H: number, D: number,
    causal: boolean, scale: number): void {
    const op = 'attentionBackward';
    this.dims(op, { B, T, H, D });
    const nq = B * T * 3 * H * D, no = B * T * H * D;
    const tc = this.tensorCoreAttention(D);
    const q16 = tc ? this.shadow(this.typed(op, qkv, 'qkv', nq, 'f32')) : 0, q = tc ? 0 : this.r(op, qkv, 'qkv', nq);
    const go = this.r(op, gout, 'gout', no), go16 = tc ? this.shadow(gout as CudaBuf) : 0;
    const g = this.o(op, gqkv, 'gqkv', nq);
    this.nat.attentionBackward(q, q16, this.r(op, out, 'out', no), this.r(op, lse, 'lse', B * H * T), go, go16, g, B, T, H, D,
      causal, scale, tc ? 0 : 1, this.copyBeside(tc, gqkv, nq));
  }
  attentionCached(qkv: Buf, kCache: Buf, vCache: Buf, out: Buf, pos: Buf, B: number, T: number, H: number,
    D: number, Tmax: number, scale: number): void {
    const op = 'attentionCached';
    this.dims(op, { B, T, H, D, Tmax });
    // Validated on the host copy the upload keeps (no synchronisation); the kernels read the device copy.
    const P = this.typed(op, pos, 'pos', B, 'i32');
    checkCachePositions(this.hostInts(P).subarray(0, P.size), B, T, Tmax);
    const nc = B * H * Tmax * D;
    this.nat.attentionCached(this.r(op, qkv, 'qkv', B * T * 3 * H * D), this.w(op, kCache, 'kCache', nc),
      this.w(op, vCache, 'vCache', nc), this.o(op, out, 'out', B * T * H * D), this.r(op, P, 'pos', B, 'i32'), B, T, H, D,
      Tmax, scale);
  }
  dropout(x: Buf, out: Buf, p: number, seed: number): void {
    const n = this.buf('dropout', x, 'x').size;
    need('dropout', this.buf('dropout', out, 'out').size === n, () => 'sizes differ');
    need('dropout', p >= 0 && p <= 1, () => `p must be in [0, 1], got ${p}`);
    this.nat.dropout(this.r('dropout', x, 'x'), this.o('dropout', out, 'out', n), n, p, seed >>> 0);
  }
  dropoutBackward(gy: Buf, gx: Buf, p: number, seed: number): void {
    const op = 'dropoutBackward';
    const n = this.buf(op, gy, 'gy').size;
    need(op, this.buf(op, gx, 'gx').size === n, () => 'sizes differ');
    need(op, p >= 0 && p <= 1, () => `p must be in [0, 1], got ${p}`);
    this.nat.dropout(this.r(op, gy, 'gy'), this.o(op, gx, 'gx', n), n, p, seed >>> 0);
  }
  crossEntropy(logits: Buf, targets: Buf, losses: Buf, lse: Buf, N: number, V: number): void {
    const op = 'crossEntropy';
    this.dims(op, { N, V });
    this.checkIndices(op, this.typed(op, targets, 'targets', N, 'i32'), N, -1, V);
    const x = this.rowsIn(op, logits, 'logits', N, V);
    this.nat.crossEntropy(x.ptr, x.ld, this.r(op, targets, 'targets', N, 'i32'), this.o(op, losses, 'losses', N),
      this.o(op, lse, 'lse', N), N, V, x.bf16);
  }
  crossEntropyBackward(logits: Buf, targets: Buf, lse: Buf, gloss: Buf, glogits: Buf, N: number, V: number,
    bf16Out = false): void {
    const op = 'crossEntropyBackward';
    this.dims(op, { N, V });
    this.checkIndices('crossEntropy', this.typed(op, targets, 'targets', N, 'i32'), N, -1, V);
    need(op, glogits !== logits, () => 'glogits must not be the logits buffer (no in-place backward)');
    const x = this.rowsIn(op, logits, 'logits', N, V);
    const tg = this.r(op, targets, 'targets', N, 'i32'), ls = this.r(op, lse, 'lse', N), gl = this.r(op, gloss, 'gloss', N);
    const out = this.o(op, glogits, 'glogits', N * V);
    // The gradient feeds the output layer's two products: its bf16 copy is written beside it, padded as
    // `matmul` lays out a large operand with rows of V % 8 != 0 elements.
    const pad = V % 8 !== 0 && N * V >= PAD_MIN ? { cols: V, ld: ceil8(V), rows: N } : null;
    const out16 = this.matmulMode === 'bf16' && N * V > 0 && glogits.size === N * V ? this.shadowFor(glogits as CudaBuf, pad) : 0;
    // Kept at bf16 precision (bf16Out), only the copy is written (see the file comment); not over a
    // misaligned V the copy left unpadded (small N), which the products would widen to recast it padded.
    const only16 = bf16Out && out16 !== 0 && (pad !== null || V % 8 === 0);
    this.nat.crossEntropyBackward(x.ptr, x.ld, tg, ls, gl, only16 ? 0 : out, out16, pad?.ld ?? V, N, V, x.bf16);
    (glogits as CudaBuf).fromShadow = only16;
  }
  adamw(p: Buf, g: Buf, m: Buf, v: Buf, a: AdamWArgs): void {
    const op = 'adamw';
    const n = this.buf(op, p, 'p').size;
    need(op, this.buf(op, g, 'g').size === n && this.buf(op, m, 'm').size === n && this.buf(op, v, 'v').size === n,
      () => `sizes differ: p ${n}, g ${g.size}, m ${m.size}, v ${v.size}`);
    need(op, a.step >= 1, () => `step must be >= 1, got ${a.step}`);
    const P = p as CudaBuf, pp = this.w(op, p, 'p');
    // A weight read by products has a bf16 shadow: the update writes it too (no cast before the next
    // product), when its layout starts with the plain copy (a row-padded one keeps its zero rows).
    const p16 = P.shadow !== 0 && contiguousElems(P.shadowLayout, n) >= n ? P.shadow : 0;
    if (p16) P.shadowVersion = P.version;
    this.nat.adamw(pp, this.r(op, g, 'g'), this.w(op, m, 'm'), this.w(op, v, 'v'), n, a.lr, a.beta1, a.beta2,
      a.eps, a.weightDecay, a.step, a.gradScale, p16);
  }

  // ------------------------------------------------------------ MoE primitives
  topk(x: Buf, values: Buf, indices: Buf, rows: number, cols: number, k: number): void {
    const op = 'topk';
    this.dims(op, { rows, cols, k });
    need(op, k <= cols, () => `k ${k} > cols ${cols}`);
    this.nat.topk(this.r(op, x, 'x', rows * cols), this.o(op, values, 'values', rows * k),
      this.o(op, indices, 'indices', rows * k, 'i32'), rows, cols, k);
    const I = indices as CudaBuf;
    I.known = { version: I.version, count: rows * k, lo: 0, hi: cols - 1 };
  }
  topkBackward(g: Buf, indices: Buf, gx: Buf, rows: number, cols: number, k: number): void {
    const op = 'topkBackward';
    this.dims(op, { rows, cols, k });
    this.checkIndices(op, this.typed(op, indices, 'indices', rows * k, 'i32'), rows * k, 0, cols);
    this.nat.topkBackward(this.r(op, g, 'g', rows * k), this.r(op, indices, 'indices', rows * k, 'i32'),
      this.o(op, gx, 'gx', rows * cols), rows, cols, k);
  }
  expertGroups(experts: Buf, offsets: Buf, rowToken: Buf, rowSlot: Buf, rowExpert: Buf, N: number, k: number, E: number): void {
    const op = 'expertGroups';
    this.dims(op, { N, k, E });
    need(op, E >= 1 && E <= MAX_ROUTE_EXPERTS, () => `n_expert ${E} is outside [1, ${MAX_ROUTE_EXPERTS}] on cuda`);
    const M = N * k;
    need(op, M < 2 ** 31, () => `${M} grouped rows exceed the i32 indices`);
    const X = this.typed(op, experts, 'experts', M, 'i32');
    checkExpertBuffers([experts, offsets, rowToken, rowSlot, rowExpert]);
    const kn = X.known;
    if (!(kn && kn.version === X.version && M <= kn.count && kn.lo >= 0 && kn.hi < E)) checkExperts(this.hostInts(X), N, k, E);
    const x = this.r(op, X, 'experts', M, 'i32');
    const C = Math.ceil(k / 32), chunks = C > 1 ? N * C : 0;
    const outs = [[offsets, 'offsets', E + 1], [rowToken, 'rowToken', M], [rowSlot, 'rowSlot', M], [rowExpert, 'rowExpert', M]] as const;
    for (const [b, what, n] of outs) this.typed(op, b, what, n, 'i32');
    const tokenPlan = this.nat.malloc(4 * (N + 1 + M + (chunks > 0 ? N + 1 + chunks + 1 : 0)));
    const expertPlan = this.nat.malloc(4 * (E + 2));
    try {
      const [o, t, sl, ex] = outs.map(([b, what, n]) => this.o(op, b, what, n, 'i32'));
      this.nat.expertGroups(x, N, k, E, o!, t!, sl!, ex!, tokenPlan, expertPlan);
    } catch (e) {
      this.nat.free(tokenPlan);
      this.nat.free(expertPlan);
      throw e;
    }
    /** What the kernels guarantee of an output: entries [0, count) in [0, hi], and its scatter plan (which it owns). */
    const mark = (b: Buf, count: number, hi: number, plan: Omit<ScatterPlan, 'version'> | null) => {
      const B = b as CudaBuf;
      B.known = { version: B.version, count, lo: 0, hi };
      if (!plan) return;
      if (B.plan) this.nat.free(B.plan.ptr);
      B.plan = { ...plan, version: B.version };
    };
    mark(offsets, E + 1, M, null);
    (offsets as CudaBuf).segments = { version: (offsets as CudaBuf).version, groups: E, total: M };
    // rowToken: each token k times (distinct targets when k = 1, as the host would find).
    if (k === 1) this.nat.free(tokenPlan);
    mark(rowToken, M, N - 1, k === 1 ? { kind: 'unique', ptr: 0, chunks: 0, count: M, n: N }
      : { kind: 'listed', ptr: tokenPlan, chunks, count: M, n: N });
    mark(rowSlot, M, M - 1, { kind: 'unique', ptr: 0, chunks: 0, count: M, n: M });
    mark(rowExpert, M, E - 1, { kind: 'bounds', ptr: expertPlan, chunks: 0, count: M, n: E });
  }
  gatherRows(x: Buf, idx: Buf, out: Buf, m: number, n: number, d: number): void {
    this.dims('gatherRows', { m, n, d });
    this.gather('gatherRows', x, idx, out, m, n, d);
  }
  /** out (m, d) = rows idx[i] of x (n, d), indices validated first (gatherRows, embedding). */
  private gather(op: string, x: Buf, idx: Buf, out: Buf, m: number, n: number, d: number): void {
    this.checkIndices(op, this.typed(op, idx, 'idx', m, 'i32'), m, 0, n);
    this.nat.gatherRows(this.r(op, x, 'x', n * d), this.r(op, idx, 'idx', m, 'i32'), this.o(op, out, 'out', m * d), m, d, op);
  }
  scatterAddRows(src: Buf, idx: Buf, out: Buf, m: number, n: number, d: number): void {
    const op = 'scatterAddRows';
    this.dims(op, { m, n, d });
    this.scatterAdd(op, this.r(op, src, 'src', m * d), idx, m, out, n, d);
  }
  reluBackwardRowDot(y: Buf, gy: Buf, gx: Buf, dots: Buf, rows: number, cols: number): void {
    const op = 'reluBackwardRowDot', n = rows * cols;
    this.dims(op, { rows, cols });
    for (const [b, what, size] of [[y, 'y', n], [gy, 'gy', n], [gx, 'gx', n], [dots, 'dots', rows]] as const) {
      need(op, this.buf(op, b, what).size === size, () => `${what} has ${b.size} elements, expected ${size}`);
    }
    // An output kept at bf16 precision (the experts' hidden layer) is read from its copy.
    const YB = y as CudaBuf, y16 = YB.fromShadow && YB !== gx && YB !== dots ? this.shadow(YB) : 0;
    const Y = y16 ? 0 : this.r(op, y, 'y', n), G = this.r(op, gy, 'gy', n), out = this.o(op, gx, 'gx', n);
    // The gradient feeds the experts' backward products: its bf16 copy is written beside it.
    const out16 = this.matmulMode === 'bf16' ? this.shadowFor(gx as CudaBuf, null) : 0;
    this.nat.reluBackwardRowDot(Y, G, out, out16, this.o(op, dots, 'dots', rows), rows, cols, y16);
  }
  rowDot(a: Buf, b: Buf, out: Buf, rows: number, cols: number): void {
    const op = 'rowDot';
    this.dims(op, { rows, cols });
    this.nat.rowDot(this.r(op, a, 'a', rows * cols), this.r(op, b, 'b', rows * cols), this.o(op, out, 'out', rows), rows, cols);
  }
  activationBits(x: Buf, out: Buf, rows: number, cols: number): void {
    const op = 'activationBits';
    this.dims(op, { rows, cols });
    this.nat.activationBits(this.r(op, x, 'x', rows * cols), this.o(op, out, 'out', rows * Math.ceil(cols / 32), 'i32'), rows, cols);
  }
}

/** Why the cuda backend cannot run here, or null when a device is present (does not throw). */
export function cudaUnavailableReason(): string | null {
  let nat: CudaAddon;
  try {
    nat = loadCudaAddon();
  } catch (e) {
    return (e as Error).message;
  }
  const p = nat.probe();
  return p.count > 0 ? null : `backend 'cuda': no usable CUDA device (${p.error}); use --backend cpu`;
}

/**
 * Creates the cuda backend. Throws a clear error when the addon is not built, no device is present,
 * or cuBLAS cannot be loaded.
 */
export function createCudaBackend(opts: CudaBackendOptions = {}): CudaBackend {
  const why = cudaUnavailableReason();
  if (why) throw new Error(why);
  return new CudaBackend(loadCudaAddon(), opts);
}
