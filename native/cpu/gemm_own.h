// Own single-precision GEMM (row-major), parallelised internally with ssd::parallel_for.
//   C (M×N, ld ldc) = alpha · op(A) · op(B) + beta · C
// op(A) is M×K: A stored (M, K) with ld lda, or (K, M) when transA. op(B) is K×N: B stored (K, N) with
// ld ldb, or (N, K) when transB. beta == 0 means C is not read (NaNs in C do not propagate).
// The caller (gemm.cc) only calls this on CPUs with AVX-512F/BW/VL/DQ, and handles M, N or K == 0.
#pragma once
#include <cstdint>

namespace ssd {
void sgemm_own(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
}  // namespace ssd
