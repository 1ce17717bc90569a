// Grouped bf16 GEMM for the MoE expert segments (fp32 accumulation), where a loop of cuBLAS calls over
// many small experts is launch-bound and leaves most of the GPU idle (an expert of 96 neurons is one
// column of output tiles).
//
// One launch covers every group (expert): the grid is the concatenation of the groups' output tiles,
// and a block finds its group by binary search over the groups' first tiles. Operands are bf16 (the
// TypeScript side passes the bf16 copies it keeps of f32 buffers); a row-indexed operand (the MoE
// token gather) reads each stored row of a tile through its index, so no gathered copy is ever made.
// Tiles stream into shared memory through a cp.async pipeline (16-byte chunks, or element loads where
// rows are not 16-byte aligned). Each thread copies the same chunk positions of every stage, so it
// looks its rows up once where they do not move along K (the token rows of the MoE forward), and one
// stage ahead where they do (the token rows of a weight gradient): the index loads then overlap the
// products instead of stalling the copies.
//
// Two main loops share the work decoding, the operand copies and the epilogue:
// * Hopper (compute capability 9.0, with the sm_90a code loaded): two warpgroups per block, each multiplying 64 rows of a
//   128 x BN tile (BN 96 or 128) with wgmma straight from 128-byte-swizzled shared memory (stages of 64
//   along K); the transposed operands of the weight gradients and the backward products are read
//   M- / N-major by the instruction itself.
// * Elsewhere (and for rows that are not 16-byte aligned): 8 warps of register-level mma.sync m16n8k16
//   fed by ldmatrix from padded tiles (stages of 32 along K); three block shapes (128x128, 128x96,
//   96x128) fit the MoE's expert width (96) and model width (768) without padded rows or columns.
// The launcher takes the block shape with the least padded work. Each path is deterministic (same bits
// on every run); the two may differ in the last bits (summation order, split-K chunk length).
//
// With device-held segments (GroupedMatmulArgs.segments: the MoE routing never visits the host), each
// group's token rows come from the segment offsets in device memory: the grid covers an upper bound of
// the work and each block derives the groups' first work items itself (a warp scan of the segment
// lengths); blocks past the last item exit. Along M (the token products) a work item is an output
// tile. Along K (the weight gradients, where an expert chosen by many tokens would leave a few blocks
// running long after the rest) it is an output tile over one chunk of at most KC rows (KC: the mean
// segment): a group of one chunk writes C directly; otherwise each item writes its partial tile to a
// scratch, and a second kernel adds each tile's partials in chunk order (deterministic) into C.
#include <algorithm>

#include "mma.cuh"
#include "wgmma.cuh"

namespace ssdc {

namespace {

constexpr int kMaxGroups = 96;
constexpr int STAGES = 4;  // mma.sync pipeline depth (stages of BK = 32; 64 measured no faster)

// Problems travel as a kernel parameter (no copy, no synchronisation): 9 ints per group, then the
// first tile of each group.
struct GroupArgs {
  int32_t prob[9 * kMaxGroups];
  int32_t tile_start[kMaxGroups];
};

// One launch's operands and options (device pointers; a launch covers at most kMaxGroups groups).
struct GroupedParams {
  const bf16* A;
  const int32_t* rowsA;
  const bf16* B;
  const int32_t* rowsB;
  float* C;
  bf16* C16;           // or, when set, a bf16 C (beta 0)
  const int32_t* seg;  // device segments (groups + 1) or null
  int groups;
  int KC;              // seg along K (tA): rows per chunk of the split-K products
  bool vecA, vecB, vecC;
  float alpha, beta;
  float* partial;      // split-K: the partial tiles, and each group's first work item (written by block 0)
  int32_t* starts;
  const float* bias;   // the epilogue: group g's bias at bias + g · bias_stride (or null), then ReLU
  int64_t bias_stride;
  bool relu;
};

// A group's operand: stored row r at base + (rows ? rows[r] : r) · ld.
struct View {
  const bf16* base;
  const int32_t* rows;
  int64_t ld;
};
// The view of an operand at element offset `off`; an indexed operand's offset addresses the virtual
// matrix of its indexed rows (row off / ld, column off % ld).
__device__ __forceinline__ View view_of(const bf16* p, const int32_t* rows, int64_t off, int64_t ld) {
  if (rows) return {p + off % ld, rows + off / ld, ld};
  return {p + off, nullptr, ld};
}

// Eight elements of a stored row from column col (those at or past cols_end, or all when row < 0,
// read as zero) into shared memory: the path for rows that are not 16-byte aligned, kept out of line
// so that the pipelined loop stays small.
__device__ __noinline__ void load_ragged(bf16* dst, View v, int row, int col, int cols_end) {
  alignas(16) bf16 tmp[8];
  const bf16* src = v.base + (int64_t)row * v.ld + col;
#pragma unroll
  for (int q = 0; q < 8; ++q) tmp[q] = row >= 0 && col + q < cols_end ? src[q] : __float2bfloat16(0.f);
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(tmp);
}

// One operand's tile copies by one thread: stored rows [r0, r0 + R) x columns [c0, c0 + W) go to a
// shared tile in 16-byte chunks; this thread copies chunks tid, tid + NT, ... and keeps their stored
// rows (after the index; -1 past rows_end) in registers. The shared layout: rows of W + 8 bf16 (the
// pad spreads the 8 rows of an ldmatrix over distinct banks), or (SW, for wgmma) 128-byte swizzled
// atoms of 64 columns x R rows (wgmma.cuh).
template <int R, int W, int NT, bool SW = false>
struct TileCopy {
  static constexpr int CPR = W / 8, CHUNKS = R * CPR, SLOTS = (CHUNKS + NT - 1) / NT;
  int row[SLOTS];

  // The shared element offset of row r, column c (a multiple of 8).
  static __device__ __forceinline__ int offset(int r, int c) {
    if constexpr (SW) return (c >> 6) * (R * 64) + r * 64 + ((((c >> 3) & 7) ^ (r & 7)) << 3);
    else return r * (W + 8) + c;
  }
  __device__ __forceinline__ void locate(const View& v, int r0, int rows_end) {
#pragma unroll
    for (int i = 0; i < SLOTS; ++i) {
      const int e = (int)threadIdx.x + i * NT, r = r0 + e / CPR;
      row[i] = (CHUNKS % NT == 0 || e < CHUNKS) && r < rows_end ? (v.rows ? __ldg(v.rows + r) : r) : -1;
    }
  }
  // Columns at or past cols_end read as zero. vec: cp.async chunks (rows 16-byte aligned, cols_end a
  // multiple of 8), else element loads.
  __device__ __forceinline__ void issue(bf16* dst, const View& v, int c0, int cols_end, bool vec) const {
#pragma unroll
    for (int i = 0; i < SLOTS; ++i) {
      const int e = (int)threadIdx.x + i * NT;
      if (CHUNKS % NT != 0 && e >= CHUNKS) break;
      const int c = (e % CPR) * 8, col = c0 + c;
      bf16* d = dst + offset(e / CPR, c);
      if (vec) {
        const bool ok = row[i] >= 0 && col < cols_end;
        cp_async16(d, ok ? v.base + (int64_t)row[i] * v.ld + col : v.base, ok);
      } else {
        load_ragged(d, v, row[i], col, cols_end);
      }
    }
  }
};

// Output tiles of group g (its m and n from the problems; along M the token rows L_g instead of m).
template <int BM, int BN>
__device__ __forceinline__ int group_tiles(const GroupArgs& ga, int g, int m) {
  return (m + BM - 1) / BM * ((ga.prob[9 * g + 1] + BN - 1) / BN);
}
// First work item of each group (and the total after the last) over device segments: along M
// (KC = 0) its tiles over the L_g token rows; along K its tiles times ceil(L_g / KC) chunks. Run by
// warp 0 alone (threadIdx.x is the lane); lane l scans groups 3l .. 3l + 2.
template <int BM, int BN>
__device__ __forceinline__ void segment_work_starts(const GroupArgs& ga, const int32_t* __restrict__ seg, int groups,
                                                    int KC, int32_t* start) {
  static_assert(kMaxGroups <= 96, "three groups per lane");
  const int lane = threadIdx.x;
  int t[3], sum = 0;
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    const int g = 3 * lane + i, len = g < groups ? seg[g + 1] - seg[g] : 0;
    t[i] = g >= groups ? 0 : KC == 0 ? group_tiles<BM, BN>(ga, g, len) : (len + KC - 1) / KC * group_tiles<BM, BN>(ga, g, ga.prob[9 * g]);
    sum += t[i];
  }
  int incl = sum;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  int run = incl - sum;
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    const int g = 3 * lane + i;
    if (g < groups) start[g] = run;
    run += t[i];
  }
  if (lane == 31) start[groups] = incl;
}

// A block's work item: its group `g`, the problem with its token rows applied (m rows, n columns, K
// along the reduction), the operands' views, and where its BM x BN output tile at (m0, n0) goes: C at
// offC (rows ldc apart), or, for a chunk of a group that segments along K split into several, its own
// partial tile (raw sums: the reduction applies alpha and beta).
struct Work {
  int g, m, n, K, m0, n0;
  int64_t offC, ldc;
  bool to_partial;
  View va, vb;
};

// Decodes this block's work item; false when the block has none (past the last item of device
// segments). With segments along K (TA) block 0 also leaves the groups' first items for the reduction
// of the partial tiles.
template <int BM, int BN, bool TA>
__device__ __forceinline__ bool find_work(const GroupArgs& ga, const GroupedParams& q, Work& w) {
  __shared__ int32_t seg_start[kMaxGroups + 1];
  const int32_t* tile_start = ga.tile_start;
  const int32_t* seg = q.seg;
  const int groups = q.groups;
  if (seg) {
    if (threadIdx.x < 32) segment_work_starts<BM, BN>(ga, seg, groups, TA ? q.KC : 0, seg_start);
    __syncthreads();
    if (TA && blockIdx.x == 0)
      for (int g = threadIdx.x; g <= groups; g += blockDim.x) q.starts[g] = seg_start[g];
    if ((int)blockIdx.x >= seg_start[groups]) return false;
    tile_start = seg_start;
  }
  // Which group: the last g with tile_start[g] <= blockIdx.x (empty groups share the next one's start).
  int lo = 0, hi = groups - 1;
  const int bid = blockIdx.x;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (tile_start[mid] <= bid) lo = mid;
    else hi = mid - 1;
  }
  const int32_t* p = ga.prob + 9 * lo;
  int m = p[0], K = p[2];
  const int n = p[1];
  int64_t offA = p[3], offB = p[5], offC = p[7];
  int local = bid - tile_start[lo];
  bool to_partial = false;
  if (seg) {
    // The group's token rows: L = seg[g + 1] - seg[g] along M (A and C rows) or K (A and B rows; this
    // block takes chunk local / tiles of them).
    int s0 = seg[lo], len = seg[lo + 1] - s0;
    if (TA) {
      const int tiles = group_tiles<BM, BN>(ga, lo, m), chunk = local / tiles;
      to_partial = len > q.KC;
      s0 += chunk * q.KC;
      len = min(q.KC, len - chunk * q.KC);
      local -= chunk * tiles;
      K = len;
      offB += (int64_t)s0 * p[6];
    } else {
      m = len;
      offC += (int64_t)s0 * p[8];
    }
    offA += (int64_t)s0 * p[4];
  }
  const int tiles_n = (n + BN - 1) / BN;
  w = Work{lo, m, n, K, (local / tiles_n) * BM, (local % tiles_n) * BN, offC, p[8], to_partial,
           view_of(q.A, q.rowsA, offA, p[4]), view_of(q.B, q.rowsB, offB, p[6])};
  return true;
}

// The operand copies of a block's tile, for either main loop: stored rows along M (A) / N (B) are
// located once for the block, those along K (transA / not transB) one stage ahead (their index loads
// overlap the products of the stage before).
template <int BM, int BN, int BK, int NT, bool TA, bool TB, bool SW>
struct Operands {
  TileCopy<TA ? BK : BM, TA ? BM : BK, NT, SW> ca;
  TileCopy<TB ? BN : BK, TB ? BK : BN, NT, SW> cb;
  const Work& w;
  bool vecA, vecB;

  __device__ __forceinline__ Operands(const Work& work, bool va, bool vb) : w(work), vecA(va), vecB(vb) {
    if constexpr (!TA) ca.locate(w.va, w.m0, w.m);
    if constexpr (TB) cb.locate(w.vb, w.n0, w.n);
  }
  __device__ __forceinline__ void locate_k(int kt) {
    if constexpr (TA) ca.locate(w.va, kt * BK, w.K);
    if constexpr (!TB) cb.locate(w.vb, kt * BK, w.K);
  }
  // Stage kt's copies into shared tiles as / bs.
  __device__ __forceinline__ void issue(bf16* as, bf16* bs, int kt) const {
    const int k0 = kt * BK;
    if constexpr (TA) ca.issue(as, w.va, w.m0, w.m, vecA);
    else ca.issue(as, w.va, k0, w.K, vecA);
    if constexpr (TB) cb.issue(bs, w.vb, k0, w.K, vecB);
    else cb.issue(bs, w.vb, w.n0, w.n, vecB);
  }
  // Stages 0 .. S - 2 in flight (one cp.async group each, empty past KT) and the rows of stage S - 1
  // located; stage s goes to As + s·SA and Bs + s·SB.
  template <int S> __device__ __forceinline__ void prologue(bf16* As, bf16* Bs, int SA, int SB, int KT) {
#pragma unroll
    for (int s = 0; s < S - 1; ++s) {
      if (s < KT) {
        locate_k(s);
        issue(As + s * SA, Bs + s * SB, s);
      }
      cp_async_commit();
    }
    if (S - 1 < KT) locate_k(S - 1);
  }
};

// The epilogue of a block's tile from mma.m16n8 accumulators (lane = 4·g + c holds rows g and g + 8 of
// each 16x8 tile, columns 2c and 2c + 1): warp tile (wm0, wn0) of TM x TN such tiles, with the bias and
// ReLU epilogue (beta 0, no partial tiles). fp32 C (or a partial tile) straight from the fragments; a
// bf16 C staged through `stage` (SMEM bytes of shared memory, the pipeline's buffers, free once every
// warp is done with them).
template <int BM, int BN, int TM, int TN, int NT, size_t SMEM>
__device__ __forceinline__ void store_tile(const float (&acc)[TM][TN][4], const Work& w, int wm0, int wn0,
                                           const GroupedParams& q, void* stage_mem) {
  const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int m = w.m, n = w.n, m0 = w.m0, n0 = w.n0;
  const float alpha = q.alpha;
  // The epilogue: the group's bias, then ReLU.
  const float* gbias = q.bias ? q.bias + w.g * q.bias_stride : nullptr;
  const bool relu = q.relu;
  auto epi = [&](float v, int col) {
    v += gbias ? gbias[col] : 0.f;
    return relu && !(v > 0.f) ? 0.f : v;
  };
  // A fragment's pair of outputs at columns col, col + 1 (scaled values a, b), through the epilogue.
  auto pair = [&](float a, float b, int col) {
    if (gbias || relu) {
      if (col < n) a = epi(a, col);
      if (col + 1 < n) b = epi(b, col + 1);
    }
    return make_float2(a, b);
  };
  if (!q.C16) {
    // fp32 C from the fragments (4 lanes cover 32 bytes of a row, a whole sector); a partial tile (BM x
    // BN, rows BN apart) is addressed from the block's first row and column.
    const float al = w.to_partial ? 1.f : alpha, be = w.to_partial ? 0.f : q.beta;
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = m0 + wm0 + i * 16 + g + 8 * h;
        if (row >= m) continue;
        float* out = w.to_partial ? q.partial + (int64_t)blockIdx.x * BM * BN + (int64_t)(row - m0) * BN - n0
                                  : q.C + w.offC + (int64_t)row * w.ldc;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          const int col = n0 + wn0 + j * 8 + 2 * c;
          const float2 v = pair(al * acc[i][j][2 * h], al * acc[i][j][2 * h + 1], col);
          const float v0 = v.x, v1 = v.y;
          if (q.vecC && col + 1 < n) {
            float2* o = reinterpret_cast<float2*>(out + col);
            if (be == 0.f) {
              *o = make_float2(v0, v1);
            } else {
              const float2 old = *o;
              *o = make_float2(v0 + be * old.x, v1 + be * old.y);
            }
          } else {
            if (col < n) out[col] = be == 0.f ? v0 : v0 + be * out[col];
            if (col + 1 < n) out[col + 1] = be == 0.f ? v1 : v1 + be * out[col + 1];
          }
        }
      }
    return;
  }
  // A bf16 C (beta 0: a scattered product's scratch, half the bytes of fp32) is staged as bf16 through
  // shared memory, so that each thread then writes 16 bytes along a row (a fragment's pair of bf16
  // would leave half-filled sectors).
  constexpr int LDS = BN + 8;  // staged row in bf16 (pad: the fragments' 4-byte stores hit distinct banks)
  static_assert((size_t)BM * LDS * sizeof(bf16) <= SMEM, "the staged C tile fits the pipeline buffers");
  bf16* stage = static_cast<bf16*>(stage_mem);
  __syncthreads();  // every warp is done reading the last stage
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const float2 v = pair(alpha * acc[i][j][2 * h], alpha * acc[i][j][2 * h + 1], n0 + wn0 + j * 8 + 2 * c);
        *reinterpret_cast<uint32_t*>(stage + (wm0 + i * 16 + g + 8 * h) * LDS + wn0 + j * 8 + 2 * c) = pack_bf16(v.x, v.y);
      }
  __syncthreads();
  constexpr int Q = BN / 8;  // 8-column groups per tile row
  for (int e = threadIdx.x; e < BM * Q; e += NT) {
    const int r = e / Q, col = n0 + (e - r * Q) * 8, row = m0 + r;
    if (row >= m || col >= n) continue;
    const bf16* src = stage + r * LDS + (col - n0);
    bf16* out = q.C16 + w.offC + (int64_t)row * w.ldc + col;
    if (q.vecC && col + 7 < n) *reinterpret_cast<uint4*>(out) = *reinterpret_cast<const uint4*>(src);
    else
      for (int k = 0; k < 8 && col + k < n; ++k) out[k] = src[k];
  }
}

// ---------------------------------------------------------------- mma.sync main loop (sm_80+)
template <int WM, int WN, int TM, int TN, bool TA, bool TB> struct MmaShape {
  static constexpr int BM = WM * TM * 16, BN = WN * TN * 8, BK = 32, NT = WM * WN * 32;
  // Shared tiles per stage: A as (BM, BK) rows, or (BK, BM) when transA; B as (BK, BN), or (BN, BK)
  // when transB; each row padded by 8.
  static constexpr int LDA = (TA ? BM : BK) + 8, LDB = (TB ? BK : BN) + 8;
  static constexpr int SA = (TA ? BK : BM) * LDA, SB = (TB ? BN : BK) * LDB;
  static constexpr size_t smem = (size_t)STAGES * (SA + SB) * sizeof(bf16);
};

// WM x WN warps, each computing TM x TN mma tiles (16 x 8): a block tile of BM = 16·WM·TM rows and
// BN = 8·WN·TN columns.
template <int WM, int WN, int TM, int TN, bool TA, bool TB>
__global__ void __launch_bounds__(WM * WN * 32, 2)
    k_grouped(const __grid_constant__ GroupArgs ga, const __grid_constant__ GroupedParams q) {
  using S = MmaShape<WM, WN, TM, TN, TA, TB>;
  constexpr int BK = S::BK, NT = S::NT;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* As = reinterpret_cast<bf16*>(smem_raw);
  bf16* Bs = As + STAGES * S::SA;

  Work w;
  if (!find_work<S::BM, S::BN, TA>(ga, q, w)) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm0 = (warp / WN) * TM * 16, wn0 = (warp % WN) * TN * 8;
  Operands<S::BM, S::BN, BK, NT, TA, TB, false> ops(w, q.vecA, q.vecB);
  const int KT = (w.K + BK - 1) / BK;
  ops.template prologue<STAGES>(As, Bs, S::SA, S::SB, KT);

  float acc[TM][TN][4];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;

  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<STAGES - 2>();  // stage kt has landed (this thread's copies) ...
    __syncthreads();              // ... for every thread, and stage kt - 1 is free again
    if (kt + STAGES - 1 < KT) ops.issue(As + (kt + STAGES - 1) % STAGES * S::SA, Bs + (kt + STAGES - 1) % STAGES * S::SB, kt + STAGES - 1);
    cp_async_commit();
    const bf16* as = As + (kt % STAGES) * S::SA;
    const bf16* bs = Bs + (kt % STAGES) * S::SB;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      // Fragments (PTX ISA mma.m16n8k16): A 16x16 row-major as four 8x8 matrices (rows 0-7 / 8-15 x
      // k 0-7 / 8-15), B 16x8 "col" (k pairs per column); a tile stored the other way round is read
      // with the transposing ldmatrix.
      uint32_t a[TM][4], b[TN][2];
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const int r0 = wm0 + i * 16;
        if constexpr (TA) ldsm_x4_t(a[i], as + (kk + (lane & 7) + ((lane >> 4) << 3)) * S::LDA + r0 + ((lane >> 3) & 1) * 8);
        else ldsm_x4(a[i], as + (r0 + (lane & 15)) * S::LDA + kk + (lane >> 4) * 8);
      }
#pragma unroll
      for (int j = 0; j < TN; j += 2) {
        const int c0 = wn0 + j * 8;
        uint32_t r[4];
        if constexpr (TB) ldsm_x4(r, bs + (c0 + (lane >> 4) * 8 + (lane & 7)) * S::LDB + kk + ((lane >> 3) & 1) * 8);
        else ldsm_x4_t(r, bs + (kk + ((lane >> 3) & 1) * 8 + (lane & 7)) * S::LDB + c0 + (lane >> 4) * 8);
        b[j][0] = r[0];
        b[j][1] = r[1];
        b[j + 1][0] = r[2];
        b[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) mma(acc[i][j], a[i], b[j][0], b[j][1]);
    }
    if (kt + STAGES < KT) ops.locate_k(kt + STAGES);  // rows of the stage issued next iteration
  }
  cp_async_wait<0>();
  store_tile<S::BM, S::BN, TM, TN, NT, S::smem>(acc, w, wm0, wn0, q, smem_raw);
}

// ---------------------------------------------------------------- wgmma main loop (sm_90a)
// 128 x BN block tiles: warpgroup h multiplies rows 64h .. 64h + 63. Three stages of 64 along K (96 KiB
// for BN = 128), so that two blocks share a multiprocessor: while one block's warpgroups wait for their
// products, the other's copies and products run. (A 128 x 192 tile with four stages and one block per
// multiprocessor, for the model-width outputs, measured slower.)
constexpr int WG_STAGES = 3;
template <int BN_, bool TA, bool TB> struct WgShape {
  static constexpr int BM = 128, BN = BN_, BK = 64, NT = 256;
  // Per stage: A 128 x 64 either way round (K-major: 128 rows of 64; M-major: two 64-column atoms of 64
  // K rows); B K-major BN rows of 64, or N-major ceil(BN / 64) atoms of 64 K rows. Every tile is a
  // whole number of 1024-byte swizzle patterns.
  static constexpr int SA = BM * BK, SB = TB ? BN * BK : (BN + 63) / 64 * 64 * BK;
  static constexpr size_t stages = (size_t)WG_STAGES * (SA + SB) * sizeof(bf16);
  static constexpr size_t smem = stages + 1024;  // + alignment of the dynamic buffer to 1024 bytes
};

template <int BN, bool TA, bool TB>
__global__ void __launch_bounds__(256, 2)
    k_grouped_wg(const __grid_constant__ GroupArgs ga, const __grid_constant__ GroupedParams q) {
#ifdef SSDC_WGMMA
  using S = WgShape<BN, TA, TB>;
  constexpr int BM = S::BM, BK = S::BK, NT = S::NT;
  extern __shared__ __align__(16) unsigned char smem_wg[];
  bf16* As = reinterpret_cast<bf16*>(smem_wg + ((1024 - (smem_addr(smem_wg) & 1023)) & 1023));  // 1024-byte aligned
  bf16* Bs = As + WG_STAGES * S::SA;

  Work w;
  if (!find_work<BM, BN, TA>(ga, q, w)) return;
  const int warp = threadIdx.x >> 5, wg = warp >> 2;
  // K-major tiles: stored rows along M / N, 64 columns of K; M- / N-major tiles: stored rows along K,
  // columns along M / N. Only 16-byte chunks fill them (vecA and vecB).
  Operands<BM, BN, BK, NT, TA, TB, true> ops(w, true, true);
  const int KT = (w.K + BK - 1) / BK;
  ops.template prologue<WG_STAGES>(As, Bs, S::SA, S::SB, KT);

  float acc[1][BN / 8][4];
#pragma unroll
  for (int j = 0; j < BN / 8; ++j) acc[0][j][0] = acc[0][j][1] = acc[0][j][2] = acc[0][j][3] = 0.f;

  // Descriptor strides (bytes): K-major 8-row groups 1024 apart (LBO unused); M- / N-major 64-column
  // atoms 64 rows x 128 bytes apart, 8-row groups 1024 apart.
  constexpr uint32_t LBO_A = TA ? BK * 128 : 16, LBO_B = TB ? 16 : BK * 128, SBO = 1024;
  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<WG_STAGES - 2>();  // stage kt has landed (this thread's copies) ...
    fence_proxy_async();             // ... is visible to the tensor cores ...
    __syncthreads();                 // ... for every thread's copies, and stage kt - 1 is free again
    if (kt + WG_STAGES - 1 < KT)
      ops.issue(As + (kt + WG_STAGES - 1) % WG_STAGES * S::SA, Bs + (kt + WG_STAGES - 1) % WG_STAGES * S::SB, kt + WG_STAGES - 1);
    cp_async_commit();
    // This warpgroup's 64 rows of A: rows 64·wg .. of a K-major tile, or atom wg of an M-major one
    // (4096 elements in).
    const bf16* as = As + (kt % WG_STAGES) * S::SA + wg * 64 * BK;
    const bf16* bs = Bs + (kt % WG_STAGES) * S::SB;
    // Every k16 step, also those of a short last stage (its rows past K are zeros): a condition here
    // would make ptxas serialise the wgmma instructions.
    wg_fence_acc(acc[0]);
    wg_fence();
#pragma unroll
    for (int s = 0; s < BK / 16; ++s) {
      // K advances by 16 elements within a K-major row, or by 16 rows of an M- / N-major tile.
      const uint64_t da = wg_desc(as + (TA ? s * 16 * 64 : s * 16), LBO_A, SBO);
      const uint64_t db = wg_desc(bs + (TB ? s * 16 : s * 16 * 64), LBO_B, SBO);
      wgmma<BN, TA, !TB>(acc[0], da, db);  // (transB: B stored N x K, i.e. K-major)
    }
    wg_commit();
    wg_wait<0>();
    wg_fence_acc(acc[0]);
    if (kt + WG_STAGES < KT) ops.locate_k(kt + WG_STAGES);
  }
  cp_async_wait<0>();
  store_tile<BM, BN, 1, BN / 8, NT, S::stages>(acc, w, warp * 16, 0, q, As);
#else
  __trap();  // launched only where wgmma_loaded() found the sm_90a code
#endif
}

// Writes 1 where the sm_90a code (with wgmma) is the code loaded for this device, else 0.
__global__ void k_wgmma_probe(int* out) {
#ifdef SSDC_WGMMA
  *out = 1;
#else
  *out = 0;
#endif
}
// Whether the wgmma kernels can run: compute capability 9.0 and the sm_90a code loaded (not a build
// without it, nor PTX compiled at load time, CUDA_FORCE_PTX_JIT). Probed once (a synchronisation); the
// answer is kept only once known (a probe that throws is asked again next time).
bool wgmma_loaded() {
  static int loaded = -1;
  if (loaded < 0) {
    int v = 0;
    if (device_cc() == 90) {
      Scratch flag(sizeof(int));
      k_wgmma_probe<<<1, 1, 0, stream()>>>(flag.as<int>());
      check_launch("groupedMatmul (probe)");
      d2h(&v, flag.p, sizeof(int));
    }
    if (device_cc() != 0) loaded = v;
    return v == 1;
  }
  return loaded == 1;
}

// The reduction of split-K partial tiles (segments along K): per group its C (m x n at offC, rows ldc
// apart).
struct SplitArgs {
  int32_t m[kMaxGroups], n[kMaxGroups], ldc[kMaxGroups];
  int64_t offC[kMaxGroups];
};
// Blocks of row y = group g: C[g] (+)= the sum of element (r, c)'s partials in chunk order, scaled by
// alpha (beta: as the product); groups of one chunk were written by their blocks (the whole row of
// blocks returns), empty ones get beta · C.
template <int BM, int BN>
__global__ void k_split_reduce(const __grid_constant__ SplitArgs sa, const int32_t* __restrict__ seg, int KC,
                               const float* __restrict__ partial, const int32_t* __restrict__ starts,
                               float* __restrict__ C, float alpha, float beta) {
  const int g = blockIdx.y;
  const int chunks = (seg[g + 1] - seg[g] + KC - 1) / KC;
  if (chunks == 1) return;
  const int m = sa.m[g], n = sa.n[g];
  const int tiles_n = (n + BN - 1) / BN, tiles = (m + BM - 1) / BM * tiles_n;
  const float* first = partial + (int64_t)starts[g] * BM * BN;
  const int64_t chunk_stride = (int64_t)tiles * BM * BN;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < (int64_t)m * n; e += (int64_t)gridDim.x * blockDim.x) {
    const int r = (int)(e / n), c = (int)(e - (int64_t)r * n);
    const float* p = first + (int64_t)(r / BM * tiles_n + c / BN) * BM * BN + (r % BM) * BN + c % BN;
    float acc = 0.f;
    for (int j = 0; j < chunks; ++j) acc += p[j * chunk_stride];
    float* o = C + sa.offC[g] + (int64_t)r * sa.ldc[g] + c;
    *o = beta == 0.f ? alpha * acc : alpha * acc + beta * *o;
  }
}

// A call as the launcher sees it: GroupedParams for all groups, plus the bound of the device segments.
struct GroupedCall {
  GroupedParams p;
  int64_t total;  // seg: the last offset (bounds the work)
  int64_t mean;   // seg: the mean segment (rounded up)
};

// Launches the groups of `problems` (9 ints each) with one kernel (block tile BM x BN, K stages of BK,
// NT threads, `smem` bytes of dynamic shared memory), kMaxGroups at a time.
template <int BM, int BN, int BK>
void launch(void (*kernel)(GroupArgs, GroupedParams), int NT, size_t smem, bool& init, const GroupedCall& call,
            const int32_t* problems, int64_t groups, bool tA) {
  if (!init) {
    // Two blocks per multiprocessor need most of its shared memory: ask for the largest carveout.
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared),
          "groupedMatmul (carveout)");
    allow_smem(kernel, smem, init, "groupedMatmul (smem)");
  }
  // Split-K chunks of an average segment (balanced groups mostly run in one chunk, written straight to
  // C), in whole stages; at least 256 rows.
  const int KC = (int)std::min<int64_t>(1 << 20, std::max<int64_t>(256, (call.mean + BK - 1) / BK * BK));
  for (int64_t g0 = 0; g0 < groups; g0 += kMaxGroups) {
    const int ng = (int)std::min<int64_t>(kMaxGroups, groups - g0);
    GroupArgs ga;
    int64_t tiles = 0;
    int64_t tiles_n_max = 0;
    for (int g = 0; g < ng; ++g) {
      const int32_t* p = problems + 9 * (g0 + g);
      std::copy(p, p + 9, ga.prob + 9 * g);
      ga.tile_start[g] = (int32_t)tiles;
      tiles += (int64_t)((p[0] + BM - 1) / BM) * ((p[1] + BN - 1) / BN);
      tiles_n_max = std::max<int64_t>(tiles_n_max, (p[1] + BN - 1) / BN);
    }
    GroupedParams q = call.p;
    q.groups = ng;
    q.KC = KC;
    q.seg = q.seg ? q.seg + g0 : nullptr;
    q.bias = q.bias ? q.bias + g0 * q.bias_stride : nullptr;
    // Segments along M: at most Σ ceil(L_g / BM) <= (total + ng (BM - 1)) / BM row tiles per column tile.
    if (q.seg && !tA) tiles = (call.total + (int64_t)ng * (BM - 1)) / BM * tiles_n_max;
    if (q.seg && tA) {
      // Split-K: at most (total + ng (KC - 1)) / KC chunks, each over a group's tiles; then the reduction.
      int64_t most = 0, elems = 0;
      SplitArgs sa;
      for (int g = 0; g < ng; ++g) {
        const int32_t* p = ga.prob + 9 * g;
        most = std::max<int64_t>(most, (int64_t)((p[0] + BM - 1) / BM) * ((p[1] + BN - 1) / BN));
        elems = std::max<int64_t>(elems, (int64_t)p[0] * p[1]);
        sa.m[g] = p[0];
        sa.n[g] = p[1];
        sa.ldc[g] = p[8];
        sa.offC[g] = p[7];
      }
      const int64_t items = std::max<int64_t>(1, (call.total + (int64_t)ng * (KC - 1)) / KC * most);
      if (items > 0x7fffffff) throw CudaError("groupedMatmul: too many tiles");
      Scratch partial((size_t)items * BM * BN * sizeof(float)), starts((size_t)(ng + 1) * sizeof(int32_t));
      q.partial = partial.as<float>();
      q.starts = starts.as<int32_t>();
      kernel<<<(unsigned)items, NT, smem, stream()>>>(ga, q);
      check_launch("groupedMatmul");
      if (elems == 0) continue;
      k_split_reduce<BM, BN><<<dim3(grid_for(elems, 256), ng), 256, 0, stream()>>>(sa, q.seg, KC, q.partial, q.starts, q.C,
                                                                                   q.alpha, q.beta);
      check_launch("groupedMatmul (split-K reduction)");
      continue;
    }
    if (tiles == 0) continue;
    if (tiles > 0x7fffffff) throw CudaError("groupedMatmul: too many tiles");
    kernel<<<(unsigned)tiles, NT, smem, stream()>>>(ga, q);
    check_launch("groupedMatmul");
  }
}

template <int WM, int WN, int TM, int TN, bool TA, bool TB>
void launch_mma(const GroupedCall& call, const int32_t* problems, int64_t groups) {
  using S = MmaShape<WM, WN, TM, TN, TA, TB>;
  static bool init = false;
  launch<S::BM, S::BN, S::BK>(k_grouped<WM, WN, TM, TN, TA, TB>, S::NT, S::smem, init, call, problems, groups, TA);
}
template <int BN, bool TA, bool TB>
void launch_wg(const GroupedCall& call, const int32_t* problems, int64_t groups) {
  using S = WgShape<BN, TA, TB>;
  static bool init = false;
  launch<S::BM, S::BN, S::BK>(k_grouped_wg<BN, TA, TB>, S::NT, S::smem, init, call, problems, groups, TA);
}
// The four transpose cases of one block shape (F: a launcher template over TA, TB).
template <template <bool, bool> class F>
void by_transpose(const GroupedCall& call, const int32_t* problems, int64_t groups, bool tA, bool tB) {
  if (tA && tB) F<true, true>::run(call, problems, groups);
  else if (tA) F<true, false>::run(call, problems, groups);
  else if (tB) F<false, true>::run(call, problems, groups);
  else F<false, false>::run(call, problems, groups);
}
template <int WM, int WN, int TM, int TN> struct Mma {
  template <bool TA, bool TB> struct T {
    static void run(const GroupedCall& c, const int32_t* p, int64_t g) { launch_mma<WM, WN, TM, TN, TA, TB>(c, p, g); }
  };
};
template <int BN> struct Wg {
  template <bool TA, bool TB> struct T {
    static void run(const GroupedCall& c, const int32_t* p, int64_t g) { launch_wg<BN, TA, TB>(c, p, g); }
  };
};

bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }
}  // namespace

void grouped_gemm(const uint16_t* A, const int32_t* rowsA, const uint16_t* B, const int32_t* rowsB, void* C, bool c_bf16,
                  const int32_t* problems, int64_t groups, bool tA, bool tB, float alpha, float beta, const int32_t* seg,
                  int64_t total, const float* bias, int64_t bias_stride, bool relu) {
  if (c_bf16 && (beta != 0.f || (seg && tA))) throw CudaError("groupedMatmul: a bf16 C needs beta 0 and no split-K");
  if ((bias || relu) && (beta != 0.f || tA)) throw CudaError("groupedMatmul: bias and relu need beta 0 and transA false");
  if (seg && tA && tB) throw CudaError("groupedMatmul: segments need transA or transB false");
  // With segments the token dimension is on the device: the checks and the block shape use its
  // mean (offsets along it are multiples of the leading dimensions checked below).
  const int64_t mean = seg && groups > 0 ? (total + groups - 1) / groups : 0;
  GroupedCall call{{reinterpret_cast<const bf16*>(A), rowsA, reinterpret_cast<const bf16*>(B), rowsB,
                    c_bf16 ? nullptr : static_cast<float*>(C), c_bf16 ? static_cast<bf16*>(C) : nullptr, seg, 0, 0,
                    aligned16(A), aligned16(B), ((uintptr_t)C & (c_bf16 ? 15 : 7)) == 0, alpha, beta, nullptr, nullptr, bias,
                    bias_stride, relu},
                   total, mean};
  GroupedParams& q = call.p;
  // Padded work of the block shapes: mma.sync 128x128, 128x96, 96x128; wgmma 128x128, 128x96.
  constexpr int kShapes[5][2] = {{128, 128}, {128, 96}, {96, 128}, {128, 128}, {128, 96}};
  int64_t padded[5] = {0, 0, 0, 0, 0};
  for (int64_t g = 0; g < groups; ++g) {
    const int32_t* p = problems + 9 * g;
    const int64_t m = seg && !tA ? mean : p[0], n = p[1], k = seg && tA ? mean : p[2];
    if (m == 0 || n == 0) continue;
    // 16-byte chunks need every row start and the contiguous extent (k, or m / n when transposed)
    // at multiples of 8 elements; float2 stores need even C offsets, a bf16 C's 16-byte stores multiples
    // of 8.
    q.vecA = q.vecA && p[3] % 8 == 0 && p[4] % 8 == 0 && (tA ? m : k) % 8 == 0;
    q.vecB = q.vecB && p[5] % 8 == 0 && p[6] % 8 == 0 && (tB ? k : n) % 8 == 0;
    q.vecC = q.vecC && p[7] % (c_bf16 ? 8 : 2) == 0 && p[8] % (c_bf16 ? 8 : 2) == 0;
    for (int s = 0; s < 5; ++s) {
      const int64_t bm = kShapes[s][0], bn = kShapes[s][1];
      padded[s] += (m + bm - 1) / bm * bm * ((n + bn - 1) / bn * bn);
    }
  }
  // wgmma needs its sm_90a code loaded and 16-byte rows (its tiles are only filled by cp.async chunks).
  if (q.vecA && q.vecB && wgmma_loaded()) {
    if (padded[3] <= padded[4]) by_transpose<Wg<128>::T>(call, problems, groups, tA, tB);
    else by_transpose<Wg<96>::T>(call, problems, groups, tA, tB);
    return;
  }
  const int best = (int)(std::min_element(padded, padded + 3) - padded);
  if (best == 0) by_transpose<Mma<2, 4, 4, 4>::T>(call, problems, groups, tA, tB);
  else if (best == 1) by_transpose<Mma<4, 2, 2, 6>::T>(call, problems, groups, tA, tB);
  else by_transpose<Mma<2, 4, 3, 4>::T>(call, problems, groups, tA, tB);
}

}  // namespace ssdc
