// Small-M GEMM (M <= kSmallM rows of op(A)): the decode-time products x · Wᵀ of a few tokens, which
// are memory-bound. Each weight element is read once and used for all M rows; no packing of B.
//   transB (B stored (N, K)): C[m, j] = dot(op(A)[m, :], B[j, :]), one row of B at a time (a single
//     sequential stream), K in zmm chunks (masked tail), one horizontal sum per (m, j);
//   !transB (B stored (K, N)): C[m, j0:j1] = Σ_k op(A)[m, k] · B[k, j0:j1], k ascending, into an
//     L1/L2-resident accumulator strip.
// Work is split over blocks of output columns (of all groups at once for a grouped product), so one
// parallel region covers a whole MoE expert layer. Every output element is computed by one task in a
// fixed order, so results do not depend on the thread count.
// Compiled with AVX-512 flags in the own-GEMM static library; called only after the run-time check.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "gemm_small.h"

#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "parallel.h"

namespace ssd {

namespace {

constexpr int64_t kDotCols = 32;    // output columns per task, transB
constexpr int64_t kAxpyCols = 1024;  // output columns per task, !transB (whole d_model rows of an expert block)

inline __mmask16 tail_mask(int64_t n) { return (__mmask16)((1u << n) - 1u); }

inline void store(float* c, float s, float alpha, float beta) { *c = beta == 0.f ? alpha * s : alpha * s + beta * *c; }

// C[0:MR, j] for one column j of a transB product: a single sequential stream through row j of B
// (several interleaved rows measured 40% slower on Zen 4), U independent accumulators per row of A.
// A: MR rows of K (ld lda).
template <int MR, int U>
inline void dot_col(const float* A, int64_t lda, const float* b, int64_t K, float alpha, float beta, float* C,
                    int64_t ldc) {
  __m512 acc[MR][U];
  for (int r = 0; r < MR; ++r)
    for (int u = 0; u < U; ++u) acc[r][u] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 * U <= K; k += 16 * U) {
    __m512 bv[U];
    for (int u = 0; u < U; ++u) bv[u] = _mm512_loadu_ps(b + k + 16 * u);
    for (int r = 0; r < MR; ++r)
      for (int u = 0; u < U; ++u) acc[r][u] = _mm512_fmadd_ps(_mm512_loadu_ps(A + r * lda + k + 16 * u), bv[u], acc[r][u]);
  }
  for (; k < K; k += 16) {
    const __mmask16 m = K - k >= 16 ? (__mmask16)0xFFFF : tail_mask(K - k);
    const __m512 bv = _mm512_maskz_loadu_ps(m, b + k);
    for (int r = 0; r < MR; ++r) acc[r][0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, A + r * lda + k), bv, acc[r][0]);
  }
  for (int r = 0; r < MR; ++r) {
    for (int u = 1; u < U; ++u) acc[r][0] = _mm512_add_ps(acc[r][0], acc[r][u]);
    store(C + r * ldc, _mm512_reduce_add_ps(acc[r][0]), alpha, beta);
  }
}

// Columns [j0, j1) of a transB product.
template <int MR>
void dot_range(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K, float alpha, float beta, float* C,
               int64_t ldc, int64_t j0, int64_t j1) {
  constexpr int U = MR <= 2 ? 4 : 2;
  for (int64_t j = j0; j < j1; ++j) dot_col<MR, U>(A, lda, B + j * ldb, K, alpha, beta, C + j, ldc);
}

// Columns [j0, j1) (at most kAxpyCols) of a !transB product: row k of B is streamed left to right
// into an L1-resident accumulator strip (reading B in long contiguous runs; short column strips with a
// row stride measured 2× slower for MoE expert blocks).
template <int MR>
void axpy_range(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K, float alpha, float beta, float* C,
                int64_t ldc, int64_t j0, int64_t j1) {
  alignas(64) float acc[MR][kAxpyCols];
  const int64_t n = j1 - j0;
  for (int r = 0; r < MR; ++r) std::fill(acc[r], acc[r] + n, 0.f);
  for (int64_t k = 0; k < K; ++k) {
    const float* b = B + k * ldb + j0;
    __m512 a[MR];
    for (int r = 0; r < MR; ++r) a[r] = _mm512_set1_ps(A[r * lda + k]);
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {  // unmasked: masked stores are slow on Zen 4
      const __m512 bv = _mm512_loadu_ps(b + j);
      for (int r = 0; r < MR; ++r) _mm512_store_ps(acc[r] + j, _mm512_fmadd_ps(a[r], bv, _mm512_load_ps(acc[r] + j)));
    }
    if (j < n) {
      const __mmask16 m = tail_mask(n - j);
      const __m512 bv = _mm512_maskz_loadu_ps(m, b + j);
      for (int r = 0; r < MR; ++r)
        _mm512_mask_storeu_ps(acc[r] + j, m, _mm512_fmadd_ps(a[r], bv, _mm512_maskz_loadu_ps(m, acc[r] + j)));
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int64_t j = 0; j < n; ++j) store(C + r * ldc + j0 + j, acc[r][j], alpha, beta);
}

using RangeFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float, float, float*, int64_t, int64_t,
                         int64_t);

template <int MR>
struct Dot {
  static constexpr RangeFn fn = dot_range<MR>;
};
template <int MR>
struct Axpy {
  static constexpr RangeFn fn = axpy_range<MR>;
};

// The kernel instance for M rows (1 <= M <= kSmallM).
template <template <int> class F>
RangeFn pick(int64_t M) {
  switch (M) {
    case 1: return F<1>::fn;
    case 2: return F<2>::fn;
    case 3: return F<3>::fn;
    case 4: return F<4>::fn;
    case 5: return F<5>::fn;
    case 6: return F<6>::fn;
    case 7: return F<7>::fn;
    default: return F<8>::fn;
  }
}

}  // namespace

void sgemm_small_grouped(bool transA, bool transB, const SmallGemm* problems, int64_t G, float alpha, float beta) {
  // op(A) of every group as contiguous (m, k) rows: copied only when A is stored transposed.
  std::vector<float> packed;
  std::vector<const float*> a(G);
  std::vector<int64_t> lda(G);
  if (transA) {
    int64_t total = 0;
    for (int64_t g = 0; g < G; ++g) total += problems[g].m * problems[g].k;
    packed.resize((size_t)total);
  }
  // Column blocks of all groups, numbered consecutively: group g owns blocks [first[g], first[g + 1]).
  const int64_t width = transB ? kDotCols : kAxpyCols;
  std::vector<int64_t> first(G + 1, 0);
  int64_t off = 0;
  for (int64_t g = 0; g < G; ++g) {
    const SmallGemm& p = problems[g];
    if (transA) {
      float* dst = packed.data() + off;
      for (int64_t i = 0; i < p.m; ++i)
        for (int64_t k = 0; k < p.k; ++k) dst[i * p.k + k] = p.a[k * p.lda + i];
      a[g] = dst;
      lda[g] = p.k;
      off += p.m * p.k;
    } else {
      a[g] = p.a;
      lda[g] = p.lda;
    }
    first[g + 1] = first[g] + (p.m > 0 ? (p.n + width - 1) / width : 0);
  }
  parallel_for(first[G], 1, [&](int64_t t0, int64_t t1) {
    int64_t g = std::upper_bound(first.begin(), first.end(), t0) - first.begin() - 1;
    for (int64_t t = t0; t < t1; ++t) {
      while (t >= first[g + 1]) ++g;
      const SmallGemm& p = problems[g];
      const int64_t j0 = (t - first[g]) * width, j1 = std::min(p.n, j0 + width);
      const RangeFn fn = transB ? pick<Dot>(p.m) : pick<Axpy>(p.m);
      fn(a[g], lda[g], p.b, p.ldb, p.k, alpha, beta, p.c, p.ldc, j0, j1);
    }
  });
}

}  // namespace ssd
