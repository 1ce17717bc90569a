// Single-precision GEMM front end with run-time selected providers (oneDNN, OpenBLAS, own).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ssd {

// Row-major: C (M×N, ld ldc) = alpha · op(A) · op(B) + beta · C. op(A) is M×K (A stored (K, M) when
// transA), op(B) is K×N (B stored (N, K) when transB). beta == 0: C is not read. M or N == 0: no-op;
// K == 0: C = beta · C (zeros when beta == 0).
void sgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Row indices for a grouped product (each nullptr when that operand is plain). Stored row j of the
// virtual operand is row rows[j] of the real one: a group whose A starts at offA with ld lda reads
// stored rows offA / lda + r (columns from offA % lda on) through `a`, likewise B through `b`; through
// `c` the group's output rows are scatter-added, C[c[j]] += alpha · (op(A)·op(B))[row] (beta must be
// 1), in group order, rows in increasing order (native/cpu/gemm_grouped.cc); with AVX-512 the sum over
// k is added in the own kernel's K blocks (one addition per block of up to 384).
struct GemmRows {
  const int32_t* a = nullptr;
  const int32_t* b = nullptr;
  const int32_t* c = nullptr;
};

// Grouped products (the MoE expert kernel): `problems` holds 9 ints per group,
// [m, n, k, offA, lda, offB, ldb, offC, ldc] (element offsets into A, B, C, or into the virtual
// operands of `rows`; validated by the caller). Output regions of different groups must not overlap
// unless C is scattered. Deterministic whatever the thread count.
void sgemm_grouped(bool transA, bool transB, const int32_t* problems, int64_t G, const float* A, const float* B,
                   float* C, float alpha, float beta, const GemmRows& rows = {});

// Selects the provider from SSD_GEMM or the default order (onednn, openblas, own). Idempotent.
// Throws std::runtime_error when SSD_GEMM names an unknown or unavailable provider.
void gemm_init();
// Provider in use, with version (e.g. "onednn 2.6.3", "openblas 0.3.21", "own-avx512").
std::string gemm_provider();
// Names ("onednn", "openblas", "own") of the providers that can be loaded on this machine.
std::vector<std::string> gemm_available();
// Switches provider by name; throws std::runtime_error if unknown or unavailable.
void gemm_set_provider(const std::string& name);
// Thread count for the providers' own runtimes (OpenMP, OpenBLAS threads).
void gemm_set_threads(int n);
// True when the CPU supports the AVX-512 subset the own GEMM and the AVX-512 attention need (and the
// environment does not set SSD_NO_AVX512=1, a testing switch that forces the AVX2 / portable paths).
bool cpu_has_avx512();

}  // namespace ssd
