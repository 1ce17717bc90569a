// Small-M GEMM for decode (native/cpu/gemm_small.cc): AVX-512 only (the caller checks the CPU).
#pragma once
#include <cstdint>

namespace ssd {

// Largest M (rows of op(A)) that gemm.cc routes to the small-M kernel.
constexpr int64_t kSmallM = 8;

// One row-major product C (m×n, ld ldc) = alpha · op(A) · op(B) + beta · C with 1 <= m <= kSmallM and
// k >= 1; A stored (m, k) with ld lda, or (k, m) when transA; B stored (k, n), or (n, k) when transB.
struct SmallGemm {
  int64_t m, n, k;
  const float* a;
  int64_t lda;
  const float* b;
  int64_t ldb;
  float* c;
  int64_t ldc;
};

// Runs G independent small products (output regions must not overlap) in one parallel region over
// blocks of output columns. beta == 0: C is not read. Deterministic whatever the thread count.
void sgemm_small_grouped(bool transA, bool transB, const SmallGemm* problems, int64_t G, float alpha, float beta);

}  // namespace ssd
