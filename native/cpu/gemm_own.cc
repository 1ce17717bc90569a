// Own single-precision GEMM: Goto/BLIS structure.
//
//   for jc over N in NC-wide column blocks:
//     for pc over K in KC-deep blocks (fixed, in order: this fixes the summation order):
//       pack op(B)[pc:pc+KC, jc:jc+NC] into NR-wide micro-panels ([k][NR], zero padded)
//       for ic over M in MC-row blocks:
//         pack op(A)[ic:ic+MC, pc:pc+KC] into MR-row micro-panels ([k][MR], zero padded)
//         for jr over NR panels: for ir over MR panels: micro-kernel MR x NR
//
// The AVX-512 micro-kernel keeps an MR x NR accumulator tile in zmm registers (broadcast A,
// vector-load B, FMA). Transposes are absorbed by the packing routines (16x16 in-register
// transposes). Each output element is computed as
//     acc_p = sum_{k in block p} a_ik * b_kj   (sequential fma chain from 0, k ascending)
//     C     = alpha * acc_0 + beta * C          (beta == 0: C = alpha * acc_0, C not read)
//     C     = alpha * acc_p + C                 (p = 1, 2, ...)
// which does not depend on the tile / thread an element lands in, so results are bit-identical
// for any thread count. Threads get contiguous ranges of MR-row groups (or NR-column groups)
// and run the whole blocked algorithm on their sub-matrix with thread-local packing buffers.
//
// Operands may be given by row pointers (GemmOperand / GemmOutput): the MoE layer's gathered token
// rows are packed (or, for skinny products, read by the micro-kernel) in place, and a scattered C is
// added to in place by the micro-kernel's epilogue, once per K block (the formula above with beta 1).
// Skinny products (n <= 2 NR, no transA) read A in place instead of packing it; a panel of at most
// 16 columns runs a one-vector kernel. Neither changes the arithmetic of an element.
//
// Without AVX-512 at runtime, a portable blocked loop (compiled for the baseline target) is used.
#include "gemm_own.h"

// GCC 12 false positive: _mm512_undefined_ps() (used inside many AVX-512 intrinsics) trips
// -Wmaybe-uninitialized once inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <utility>
#include <vector>

#include "parallel.h"

// Blocking parameters (overridable at compile time for tuning from the test harness).
#ifndef SSD_GEMM_MR
#define SSD_GEMM_MR 14
#endif
#ifndef SSD_GEMM_NV
#define SSD_GEMM_NV 2  // NR = 16 * NV
#endif
#ifndef SSD_GEMM_KC
#define SSD_GEMM_KC 384
#endif
#ifndef SSD_GEMM_MC
#define SSD_GEMM_MC (SSD_GEMM_MR * 24)
#endif
#ifndef SSD_GEMM_NC
#define SSD_GEMM_NC 3072
#endif

#define SSD_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma")))

namespace ssd {
namespace gemm_detail {

constexpr int MR = SSD_GEMM_MR;
constexpr int NV = SSD_GEMM_NV;
constexpr int NR = 16 * NV;
constexpr int64_t KC = SSD_GEMM_KC;
constexpr int64_t MC = (SSD_GEMM_MC / MR) * MR;
constexpr int64_t NC = (SSD_GEMM_NC / NR) * NR;
static_assert(MR >= 1 && MR <= 16, "MR must be in [1,16] (A packing uses 16x16 transposes)");
static_assert(MR * NV + NV + 1 <= 32, "accumulator tile does not fit in 32 zmm registers");
static_assert(MC >= MR && NC >= NR && KC >= 1, "bad blocking");

// Grow-only 64-byte aligned buffer; one per thread per role (thread_local), so concurrent calls
// from different threads never share packing memory.
struct AlignedBuf {
  float* p = nullptr;
  size_t cap = 0;
  ~AlignedBuf() { std::free(p); }
  float* get(size_t n) {
    if (n > cap) {
      std::free(p);
      size_t bytes = (n * sizeof(float) + 63) & ~size_t(63);
      p = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!p) throw std::bad_alloc();
      cap = n;
    }
    return p;
  }
};

inline AlignedBuf& buf_a() { static thread_local AlignedBuf b; return b; }
inline AlignedBuf& buf_b() { static thread_local AlignedBuf b; return b; }

// ------------------------------------------------------------------------------------------------
// AVX-512 path
// ------------------------------------------------------------------------------------------------

SSD_AVX512 static inline __mmask16 mask_n(int64_t n) {
  return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

// In-register 16x16 transpose: r[i] lane j  ->  r[j] lane i.
SSD_AVX512 static inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 4; ++i) {
      t[8 * h + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + 4 + i], 0x88);
      t[8 * h + 4 + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + 4 + i], 0xdd);
    }
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
  }
}

// Transposes stored rows s[0 .. rows) (rows <= 16), columns [0, kc), into kc packed rows: packed row k
// (at dst + k * ld) holds s[i][k] in lane i, zero in lanes i >= rows; `store` selects the lanes written.
// 16 x 16 blocks through registers.
SSD_AVX512 static void pack_transposed(const float* const* s, int rows, int64_t kc, float* dst, int64_t ld,
                                       __mmask16 store) {
  for (int64_t kb = 0; kb < kc; kb += 16) {
    const int64_t kn = std::min<int64_t>(16, kc - kb);
    const __mmask16 km = mask_n(kn);
    __m512 r[16];
    for (int i = 0; i < 16; ++i) r[i] = i < rows ? _mm512_maskz_loadu_ps(km, s[i] + kb) : _mm512_setzero_ps();
    transpose16(r);
    for (int t = 0; t < kn; ++t) _mm512_mask_storeu_ps(dst + (kb + t) * ld, store, r[t]);
  }
}

// Pack op(A)[i0:i0+mc, k0:k0+kc] into ceil(mc/MR) micro-panels, each kc x MR ([k][MR]).
SSD_AVX512 static void pack_a_avx512(bool transA, const GemmOperand& A, int64_t i0, int64_t mc, int64_t k0,
                                     int64_t kc, float* dst) {
  const __mmask16 mr_mask = mask_n(MR);
  if (transA) {
    // op(A)(i,k) = A.row(k)[i]: each stored row k gives one k-slice of every panel. Walking the rows
    // in order reads each one as a single sequential run (mc floats), which the hardware prefetchers
    // follow; panel by panel, every row would be touched in MR-float pieces (gathered token rows of a
    // weight-gradient product: a cache miss per piece).
    for (int64_t k = 0; k < kc; ++k) {
      const float* s = A.row(k0 + k) + i0;
      for (int64_t ip = 0; ip < mc; ip += MR) {
        const __m512 v = _mm512_maskz_loadu_ps(mask_n(std::min<int64_t>(MR, mc - ip)), s + ip);
        _mm512_mask_storeu_ps(dst + ip * kc + k * MR, mr_mask, v);  // panel (ip / MR) starts at ip * kc
      }
    }
    return;
  }
  for (int64_t ip = 0; ip < mc; ip += MR) {
    const int64_t mb = std::min<int64_t>(MR, mc - ip);
    float* d = dst + ip * kc;  // panel (ip / MR) starts at (ip / MR) * MR * kc
    // op(A)(i,k) = A.row(i)[k]: transpose 16(k) x MR(i) blocks.
    const float* s[MR];
    for (int i = 0; i < mb; ++i) s[i] = A.row(i0 + ip + i) + k0;
    pack_transposed(s, (int)mb, kc, d, MR, mr_mask);
  }
}

// Pack op(B)[k0:k0+kc, j0:j0+nc] into ceil(nc/NR) micro-panels, each kc x NR ([k][NR]).
SSD_AVX512 static void pack_b_avx512(bool transB, const GemmOperand& B, int64_t k0, int64_t kc, int64_t j0,
                                     int64_t nc, float* dst) {
  for (int64_t jp = 0; jp < nc; jp += NR) {
    const int64_t nb = std::min<int64_t>(NR, nc - jp);
    float* d = dst + jp * kc;
    if (!transB) {
      // op(B)(k,j) = B.row(k)[j]: rows contiguous.
      __mmask16 m[NV];
      for (int v = 0; v < NV; ++v) m[v] = mask_n(nb - 16 * v);
      for (int64_t k = 0; k < kc; ++k) {
        const float* s = B.row(k0 + k) + j0 + jp;
        if (nb == NR) {
          for (int v = 0; v < NV; ++v) _mm512_store_ps(d + k * NR + 16 * v, _mm512_loadu_ps(s + 16 * v));
        } else {
          for (int v = 0; v < NV; ++v) _mm512_store_ps(d + k * NR + 16 * v, _mm512_maskz_loadu_ps(m[v], s + 16 * v));
        }
      }
    } else {
      // op(B)(k,j) = B.row(j)[k]: transpose 16(j) x 16(k) blocks.
      for (int v = 0; v < NV; ++v) {
        const int64_t jn = nb - 16 * v;  // valid columns in this 16-group (may be <= 0)
        const float* s[16];
        const int rows = (int)std::max<int64_t>(0, std::min<int64_t>(16, jn));
        for (int i = 0; i < rows; ++i) s[i] = B.row(j0 + jp + 16 * v + i) + k0;
        pack_transposed(s, rows, kc, d + 16 * v, NR, (__mmask16)0xFFFF);
      }
    }
  }
}

// One micro-kernel call: an m x n tile (m <= MR, n <= NR) of C over kc steps of K.
struct Tile {
  int64_t kc, m, n;
  const float* ap;         // A packed: kc x MR micro-panel ([k][MR]); or null:
  const float* const* ar;  //   op(A)'s m rows in place (no transA), row i at ar[i] (from the block's first k)
  const float* bp;         // B packed: kc x NR micro-panel ([k][NR], 64-byte aligned)
  float* const* cr;        // C's m rows, row i at cr[i] (from the tile's first column)
  float alpha, beta;
  bool beta_zero;          // C = alpha*acc, C not read
};

// R x NR micro-kernel (R == t.m rows, the first V of the NV 16-wide column vectors, V >= ceil(t.n / 16)):
// broadcast A, vector-load B, FMA into an R x 16V tile of zmm accumulators, then
// C = alpha*acc + beta*C (or alpha*acc when beta_zero) on rows [0, t.m) and columns [0, t.n). Rows are
// written in order, so two rows pointing at the same C row (a scatter-add) both land. Per element the
// arithmetic is the same for every R, V and operand layout, so the variant used for a tile never
// changes results.
template <int R, bool InPlaceA, int V>
SSD_AVX512 static void kernel_avx512(const Tile& t) {
  const int64_t kc = t.kc, m = t.m, n = t.n;
  float* const* Cr = t.cr;
  // Prefetch the C tile (read for beta != 0, written in any case) while the FMAs run.
  for (int64_t i = 0; i < m; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(Cr[i]), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(Cr[i] + n - 1), _MM_HINT_T0);
  }
  __mmask16 msk[V];
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) msk[v] = mask_n(n - 16 * v);
  const bool full = (n == 16 * V);
  __m512 acc[R][V];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[i][v] = _mm512_setzero_ps();

  const float* __restrict Ap = t.ap;
  const float* __restrict Bp = t.bp;
  for (int64_t k = 0; k < kc; ++k) {
    __m512 b[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) b[v] = _mm512_load_ps(Bp + 16 * v);
    Bp += NR;
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m512 a = _mm512_set1_ps(InPlaceA ? t.ar[i][k] : Ap[i]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[i][v] = _mm512_fmadd_ps(a, b[v], acc[i][v]);
    }
    if (!InPlaceA) Ap += MR;
  }

  const __m512 va = _mm512_set1_ps(t.alpha);
  const __m512 vb = _mm512_set1_ps(t.beta);
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    if (i >= m) break;
    float* c = Cr[i];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      __m512 r;
      if (t.beta_zero) {
        r = _mm512_mul_ps(va, acc[i][v]);
      } else {
        const __m512 old = full ? _mm512_loadu_ps(c + 16 * v) : _mm512_maskz_loadu_ps(msk[v], c + 16 * v);
        r = _mm512_fmadd_ps(va, acc[i][v], _mm512_mul_ps(vb, old));
      }
      if (full) _mm512_storeu_ps(c + 16 * v, r);
      else _mm512_mask_storeu_ps(c + 16 * v, msk[v], r);
    }
  }
}

// K block size: at most KC, balanced so the last block is not tiny (e.g. K=1024 -> 352,352,320).
// Depends on K only, never on the thread partition.
int64_t k_block(int64_t K) {
  const int64_t nblk = (K + KC - 1) / KC;
  const int64_t kc = ((K + nblk - 1) / nblk + 15) / 16 * 16;
  return std::min<int64_t>(kc, KC);
}

using KernelFn = void (*)(const Tile&);

// KernelRow<V, 1 .. MR>::fn[in-place A][r - 1]: the kernel for r rows and V column vectors.
template <int V, int... Rs>
struct KernelRow {
  static constexpr KernelFn fn[2][sizeof...(Rs)] = {{&kernel_avx512<Rs, false, V>...}, {&kernel_avx512<Rs, true, V>...}};
};
template <int V, int... Rs>
constexpr KernelFn KernelRow<V, Rs...>::fn[2][sizeof...(Rs)];

// The kernel for r rows and v column vectors: v = 1 (a panel of at most 16 columns, e.g. the last
// panel of a 48-neuron expert, runs half the FMAs) or all NV.
template <int... I>
static KernelFn kernel_for(bool in_place_a, int v, int r, std::integer_sequence<int, I...>) {
  return v == 1 ? KernelRow<1, (I + 1)...>::fn[in_place_a][r - 1] : KernelRow<NV, (I + 1)...>::fn[in_place_a][r - 1];
}

// A micro-kernel call on C rows [i0, i0 + m), columns [j0, j0 + n), K steps [k0, k0 + kc) with the
// packed B micro-panel `bp`. A is the packed micro-panel `ap` or, when null, op(A)'s rows read in
// place (no transA).
static inline void run_kernel(int64_t kc, const float* ap, const GemmOperand& A, const float* bp,
                              const GemmOutput& C, int64_t i0, int64_t j0, int64_t k0, int64_t m, int64_t n,
                              float alpha, float beta, bool beta_zero) {
  float* crows[MR];
  const float* arows[MR];
  for (int64_t i = 0; i < m; ++i) crows[i] = C.row(i0 + i) + j0;
  if (!ap)
    for (int64_t i = 0; i < m; ++i) arows[i] = A.row(i0 + i) + k0;
  const Tile t{kc, m, n, ap, arows, bp, crows, alpha, beta, beta_zero};
  kernel_for(ap == nullptr, int((n + 15) / 16), int(m), std::make_integer_sequence<int, MR>{})(t);
}

// Skinny products (few columns: MoE expert products, n = expert size) read A in place instead of
// packing it: each packed A element would serve only n / NR micro-kernel calls, so packing (a 16x16
// transpose per block) cost a quarter of the time at n = 64. Same arithmetic, so same bits. (Reading A
// in place with transA, through a pointer per K row, measured no faster than packing it.)
constexpr int64_t kInPlaceAMaxN = 2 * NR;
// Products this short in K whose packed B block fits in a quarter of L2 (floats) run their tiles row
// by row (see gemm_block_avx512).
constexpr int64_t kShortK = 128;
constexpr int64_t kShortKPackedB = 64 * 1024;
constexpr int64_t kShortKMinC = 256 * 1024;

// Full blocked GEMM on the sub-matrix C[m0:m1, n0:n1] (single thread).
SSD_AVX512 static void gemm_block_avx512(bool transA, bool transB, int64_t m0, int64_t m1, int64_t n0,
                                         int64_t n1, int64_t K, float alpha, const GemmOperand& A,
                                         const GemmOperand& B, float beta, const GemmOutput& C) {
  if (m1 <= m0 || n1 <= n0) return;
  const int64_t kcb = k_block(K);
  const int64_t kc_max = std::min<int64_t>(kcb, K);
  const int64_t nc_max = std::min<int64_t>(NC, ((n1 - n0 + NR - 1) / NR) * NR);
  const int64_t mc_max = std::min<int64_t>(MC, ((m1 - m0 + MR - 1) / MR) * MR);
  const bool in_place_a = !transA && n1 - n0 <= kInPlaceAMaxN;
  float* ap = in_place_a ? nullptr : buf_a().get(size_t(kc_max * mc_max));

  if (m1 - m0 <= MC) {
    // One MC block: pack A once per K block and pack each B micro-panel right before its use
    // (it stays in L1/L2), instead of streaming a whole packed KC x NC panel through L3.
    float* bp = buf_b().get(size_t(kc_max * NR));
    const int64_t mc = m1 - m0;
    for (int64_t pc = 0; pc < K; pc += kcb) {
      const int64_t kc = std::min<int64_t>(kcb, K - pc);
      const bool first = (pc == 0);
      const bool bz = first && beta == 0.0f;
      const float be = first ? beta : 1.0f;
      if (!in_place_a) pack_a_avx512(transA, A, m0, mc, pc, kc, ap);
      for (int64_t jr = n0; jr < n1; jr += NR) {
        const int64_t nr = std::min<int64_t>(NR, n1 - jr);
        pack_b_avx512(transB, B, pc, kc, jr, nr, bp);
        for (int64_t ir = 0; ir < mc; ir += MR) {
          const int64_t mr = std::min<int64_t>(MR, mc - ir);
          run_kernel(kc, in_place_a ? nullptr : ap + ir * kc, A, bp, C, m0 + ir, jr, pc, mr, nr, alpha, be, bz);
        }
      }
    }
    return;
  }

  float* bp = buf_b().get(size_t(kc_max * nc_max));

  for (int64_t jc = n0; jc < n1; jc += NC) {
    const int64_t nc = std::min<int64_t>(NC, n1 - jc);
    for (int64_t pc = 0; pc < K; pc += kcb) {
      const int64_t kc = std::min<int64_t>(kcb, K - pc);
      const bool first = (pc == 0);
      const bool bz = first && beta == 0.0f;
      const float be = first ? beta : 1.0f;
      pack_b_avx512(transB, B, pc, kc, jc, nc, bp);
      for (int64_t ic = m0; ic < m1; ic += MC) {
        const int64_t mc = std::min<int64_t>(MC, m1 - ic);
        if (!in_place_a) pack_a_avx512(transA, A, ic, mc, pc, kc, ap);
        if (kc <= kShortK && kc * nc <= kShortKPackedB && (m1 - m0) * nc >= kShortKMinC) {
          // Short K and a C larger than L2 (the scattered products of small experts over many tokens):
          // C's traffic from L3 / memory dominates; walk each tile row of C along its columns
          // (sequential, prefetchable) with A's micro-panel in L1 and the packed B block in L2. Same
          // tiles, so same bits. (Scattered products of 32- and 64-neuron experts over 8192 tokens of
          // d_model 768: −16% and −5%; with a C that fits in L2 the usual order is faster.)
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int64_t mr = std::min<int64_t>(MR, mc - ir);
            for (int64_t jr = 0; jr < nc; jr += NR)
              run_kernel(kc, in_place_a ? nullptr : ap + ir * kc, A, bp + jr * kc, C, ic + ir, jc + jr, pc, mr,
                         std::min<int64_t>(NR, nc - jr), alpha, be, bz);
          }
          continue;
        }
        // The next A block's rows, prefetched into L2 a slice per tile while this block computes.
        int64_t nk0 = pc, nkc = 0, ni0 = ic + MC, nmc = 0;
        if (transA && A.rows) {
          if (ni0 >= m1) { nk0 = pc + kcb; ni0 = m0; }
          if (nk0 < K) { nkc = std::min<int64_t>(kcb, K - nk0); nmc = std::min<int64_t>(MC, m1 - ni0); }
        }
        const int64_t tiles = (mc + MR - 1) / MR * ((nc + NR - 1) / NR);
        int64_t tile = 0;
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int64_t nr = std::min<int64_t>(NR, nc - jr);
          const float* bpanel = bp + jr * kc;
          for (int64_t ir = 0; ir < mc; ir += MR, ++tile) {
            const int64_t mr = std::min<int64_t>(MR, mc - ir);
            for (int64_t k = nkc * tile / tiles; k < nkc * (tile + 1) / tiles; ++k) {
              // Every 64-byte line holding floats [ni0, ni0 + nmc) of the row.
              const uintptr_t first = reinterpret_cast<uintptr_t>(A.row(nk0 + k) + ni0) & ~uintptr_t(63);
              const uintptr_t last = reinterpret_cast<uintptr_t>(A.row(nk0 + k) + ni0 + nmc - 1);
              for (uintptr_t line = first; line <= last; line += 64)
                _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T1);
            }
            run_kernel(kc, in_place_a ? nullptr : ap + ir * kc, A, bpanel, C, ic + ir, jc + jr, pc, mr, nr, alpha, be,
                       bz);
          }
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Portable fallback (baseline target, auto-vectorised). Same per-element summation structure in
// spirit (sequential k, fixed), bit-identical across thread counts; not necessarily identical to
// the AVX-512 path.
// ------------------------------------------------------------------------------------------------

// Rows [m0, m1) of C. Bk: op(B) as a K x N row-major matrix with leading dim ldbk.
static void gemm_rows_fallback(bool transA, int64_t m0, int64_t m1, int64_t N, int64_t K, float alpha,
                               const float* A, int64_t lda, const float* Bk, int64_t ldbk, float beta,
                               float* C, int64_t ldc) {
  constexpr int RB = 4;      // rows sharing each B row load
  constexpr int64_t CB = 256;  // columns per accumulator strip
  float acc[RB][CB];
  for (int64_t i0 = m0; i0 < m1; i0 += RB) {
    const int rb = (int)std::min<int64_t>(RB, m1 - i0);
    for (int64_t j0 = 0; j0 < N; j0 += CB) {
      const int64_t cb = std::min<int64_t>(CB, N - j0);
      for (int r = 0; r < RB; ++r)
        for (int64_t j = 0; j < cb; ++j) acc[r][j] = 0.0f;
      for (int64_t k = 0; k < K; ++k) {
        const float* brow = Bk + k * ldbk + j0;
        for (int r = 0; r < rb; ++r) {
          const float a = transA ? A[k * lda + i0 + r] : A[(i0 + r) * lda + k];
          float* ar = acc[r];
          for (int64_t j = 0; j < cb; ++j) ar[j] += a * brow[j];
        }
      }
      for (int r = 0; r < rb; ++r) {
        float* c = C + (i0 + r) * ldc + j0;
        if (beta == 0.0f) {
          for (int64_t j = 0; j < cb; ++j) c[j] = alpha * acc[r][j];
        } else {
          for (int64_t j = 0; j < cb; ++j) c[j] = alpha * acc[r][j] + beta * c[j];
        }
      }
    }
  }
}

static void sgemm_fallback(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                           int64_t ldc) {
  const float* Bk = B;
  int64_t ldbk = ldb;
  std::vector<float> bt;
  if (transB) {
    bt.resize(size_t(K * N));
    for (int64_t j = 0; j < N; ++j)
      for (int64_t k = 0; k < K; ++k) bt[size_t(k * N + j)] = B[j * ldb + k];
    Bk = bt.data();
    ldbk = N;
  }
  const double flops = 2.0 * double(M) * double(N) * double(K);
  const int64_t groups = (M + 3) / 4;
  auto body = [&](int64_t g0, int64_t g1) {
    gemm_rows_fallback(transA, g0 * 4, std::min<int64_t>(g1 * 4, M), N, K, alpha, A, lda, Bk, ldbk, beta, C,
                       ldc);
  };
  if (flops < 4e6) body(0, groups);
  else parallel_for(groups, 1, body);
}

static bool have_avx512() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  }();
  return ok;
}

static void sgemm_avx512(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                         const GemmOperand& A, const GemmOperand& B, float beta, const GemmOutput& C) {
  if (N == 1 && C.ld == 1 && M > 1 && !A.rows && !B.rows && !C.rows) {
    // C (M x 1, contiguous) = op(A) op(B)  <=>  C^T (1 x M) = op(B)^T op(A)^T. fma(a, b, c) is
    // symmetric in a and b, so every element gets exactly the same arithmetic; this only avoids
    // wasting NR - 1 of the NR kernel columns.
    sgemm_avx512(!transB, !transA, 1, M, K, alpha, B, A, beta, GemmOutput{C.p, M, nullptr});
    return;
  }
  const double flops = 2.0 * double(M) * double(N) * double(K);
  const int nt = pool().size();
  if (nt <= 1 || flops < 1.0e7 || ThreadPool::in_parallel()) {
    gemm_block_avx512(transA, transB, 0, M, 0, N, K, alpha, A, B, beta, C);
    return;
  }
  // Split the larger output dimension; the other operand's packing is duplicated per thread. Rows of
  // a scattered C may repeat (read-modify-write of one row by two rows of the product), so they are
  // never split between threads.
  if (M >= N && !C.rows) {
    const int64_t groups = (M + MR - 1) / MR;
    parallel_for(groups, 1, [&](int64_t g0, int64_t g1) {
      gemm_block_avx512(transA, transB, g0 * MR, std::min<int64_t>(g1 * MR, M), 0, N, K, alpha, A, B, beta, C);
    });
  } else {
    const int64_t groups = (N + NR - 1) / NR;
    parallel_for(groups, 1, [&](int64_t g0, int64_t g1) {
      gemm_block_avx512(transA, transB, 0, M, g0 * NR, std::min<int64_t>(g1 * NR, N), K, alpha, A, B, beta, C);
    });
  }
}

// C = beta * C (K == 0); beta == 0 writes zeros without reading C.
static void scale_c(int64_t M, int64_t N, float beta, const GemmOutput& C) {
  for (int64_t i = 0; i < M; ++i) {
    float* c = C.row(i);
    if (beta == 0.0f) std::memset(c, 0, size_t(N) * sizeof(float));
    else if (beta != 1.0f)
      for (int64_t j = 0; j < N; ++j) c[j] *= beta;
  }
}

}  // namespace gemm_detail

void sgemm_own(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  using namespace gemm_detail;
  if (have_avx512())
    return sgemm_own_indexed(transA, transB, M, N, K, alpha, GemmOperand{A, lda, nullptr},
                             GemmOperand{B, ldb, nullptr}, beta, GemmOutput{C, ldc, nullptr});
  if (M <= 0 || N <= 0) return;
  if (K <= 0) return scale_c(M, N, beta, GemmOutput{C, ldc, nullptr});
  sgemm_fallback(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

int64_t sgemm_own_k_block(int64_t K) { return K > 0 ? gemm_detail::k_block(K) : 0; }

void sgemm_own_indexed(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const GemmOperand& A,
                       const GemmOperand& B, float beta, const GemmOutput& C) {
  using namespace gemm_detail;
  if (!have_avx512()) throw std::logic_error("sgemm_own_indexed needs AVX-512 (callers check cpu_has_avx512())");
  if (M <= 0 || N <= 0) return;
  if (K <= 0) return scale_c(M, N, beta, C);
  sgemm_avx512(transA, transB, M, N, K, alpha, A, B, beta, C);
}

}  // namespace ssd
