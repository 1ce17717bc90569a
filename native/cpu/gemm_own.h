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

// A stored operand whose row r is at rows[r] when `rows` is given (row pointers: e.g. the token rows
// an MoE layer gathers, read in place), else at p + r · ld. "Row" is a row of the stored matrix: with
// transA a row of A is a column of op(A).
struct GemmOperand {
  const float* p = nullptr;
  int64_t ld = 0;
  const float* const* rows = nullptr;
  const float* row(int64_t r) const { return rows ? rows[r] : p + r * ld; }
};
// The output C (M×N): row i at rows[i] when given (two rows may point at the same memory: with
// beta = 1 both products are added, rows in increasing order: a scatter-add), else at p + i · ld.
struct GemmOutput {
  float* p = nullptr;
  int64_t ld = 0;
  float* const* rows = nullptr;
  float* row(int64_t i) const { return rows ? rows[i] : p + i * ld; }
};
// Rows of K per block of sgemm_own_indexed (a function of K only: it fixes each element's summation
// order); 0 for K <= 0.
int64_t sgemm_own_k_block(int64_t K);
// sgemm_own on operands given as rows (GemmOperand / GemmOutput). Runs single-threaded when called
// inside a parallel region. Per element the arithmetic is that of sgemm_own, so results do not
// depend on the thread count. AVX-512 only (the caller checks cpu_has_avx512()).
void sgemm_own_indexed(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const GemmOperand& A,
                       const GemmOperand& B, float beta, const GemmOutput& C);
}  // namespace ssd
