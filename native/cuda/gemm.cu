// GEMMs: cuBLAS (loaded with dlopen at run time; no cuBLAS headers or link-time dependency) for
// matmul, and a built-in grouped bf16 tensor-core kernel (WMMA, fp32 accumulation) for the MoE expert
// segments, where a loop of cuBLAS calls over many small experts is launch-bound.
#include <cuda_bf16.h>
#include <dlfcn.h>
#include <mma.h>

#include <string>
#include <vector>

#include "common.cuh"

namespace ssdc {

// ---------------------------------------------------------------- cuBLAS through dlopen
namespace {
typedef int cublasStatus_t;
typedef void* cublasHandle_t;
enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum { CUDA_R_32F_ = 0, CUDA_R_16BF_ = 14 };
enum { COMPUTE_32F = 68, COMPUTE_32F_FAST_16BF = 75, COMPUTE_32F_FAST_TF32 = 77 };
enum { CUBLAS_GEMM_DEFAULT = -1 };

struct Cublas {
  void* lib = nullptr;
  void* lt = nullptr;
  cublasHandle_t h = nullptr;
  void* workspace = nullptr;
  cublasStatus_t (*create)(cublasHandle_t*) = nullptr;
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t) = nullptr;
  cublasStatus_t (*set_workspace)(cublasHandle_t, void*, size_t) = nullptr;
  cublasStatus_t (*get_version)(cublasHandle_t, int*) = nullptr;
  cublasStatus_t (*gemm_sb)(cublasHandle_t, int, int, int, int, int, const void*, const void*, int, int, long long,
                            const void*, int, int, long long, const void*, void*, int, int, long long, int, int,
                            int) = nullptr;
  std::string desc;
};
Cublas g_cublas;

const char* status_name(int s) {
  switch (s) {
    case 0: return "CUBLAS_STATUS_SUCCESS";
    case 1: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case 3: return "CUBLAS_STATUS_ALLOC_FAILED";
    case 7: return "CUBLAS_STATUS_INVALID_VALUE";
    case 8: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case 11: return "CUBLAS_STATUS_MAPPING_ERROR";
    case 13: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case 14: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case 15: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}
void cb_check(cublasStatus_t s, const char* what) {
  if (s != 0) throw CudaError(std::string("cuBLAS ") + what + " failed: " + status_name(s) + " (" + std::to_string(s) + ")");
}
}  // namespace

std::string cublas_load(const std::vector<std::string>& paths) {
  if (g_cublas.h) return g_cublas.desc;
  std::string tried;
  for (const auto& p : paths) {
    // libcublas needs libcublasLt: load it first from the same folder so the dependency resolves.
    auto slash = p.rfind('/');
    if (slash != std::string::npos) {
      std::string dir = p.substr(0, slash + 1);
      std::string base = p.substr(slash + 1);
      std::string ver = base.substr(base.find(".so"));
      void* lt = dlopen((dir + "libcublasLt" + ver).c_str(), RTLD_NOW | RTLD_GLOBAL);
      if (lt) g_cublas.lt = lt;
    }
    void* lib = dlopen(p.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (!lib) {
      const char* e = dlerror();
      tried += "\n  " + p + ": " + (e ? e : "not loadable");
      continue;
    }
    g_cublas.lib = lib;
    g_cublas.desc = p;
    break;
  }
  if (!g_cublas.lib) {
    throw CudaError("cuBLAS (libcublas.so / libcublasLt.so, CUDA 12 or 13) could not be loaded; tried:" + tried +
                    "\ninstall the CUDA math libraries (e.g. apt-get install libcublas-13-0, or pip install "
                    "nvidia-cublas), or point SSD_CUBLAS at libcublas.so.N, or set SSD_CUDA_GEMM=own to use the "
                    "built-in (slower) GEMM kernel");
  }
  auto sym = [&](const char* name) {
    void* f = dlsym(g_cublas.lib, name);
    if (!f) throw CudaError(std::string("cuBLAS: symbol ") + name + " missing in " + g_cublas.desc);
    return f;
  };
  g_cublas.create = (decltype(g_cublas.create))sym("cublasCreate_v2");
  g_cublas.set_stream = (decltype(g_cublas.set_stream))sym("cublasSetStream_v2");
  g_cublas.set_workspace = (decltype(g_cublas.set_workspace))sym("cublasSetWorkspace_v2");
  g_cublas.get_version = (decltype(g_cublas.get_version))sym("cublasGetVersion_v2");
  g_cublas.gemm_sb = (decltype(g_cublas.gemm_sb))sym("cublasGemmStridedBatchedEx");
  cb_check(g_cublas.create(&g_cublas.h), "cublasCreate");
  cb_check(g_cublas.set_stream(g_cublas.h, stream()), "cublasSetStream");
  const size_t ws = 32u << 20;
  g_cublas.workspace = dev_alloc(ws);
  cb_check(g_cublas.set_workspace(g_cublas.h, g_cublas.workspace, ws), "cublasSetWorkspace");
  int v = 0;
  g_cublas.get_version(g_cublas.h, &v);
  g_cublas.desc = "cuBLAS " + std::to_string(v) + " (" + g_cublas.desc + ")";
  return g_cublas.desc;
}
bool cublas_ready() { return g_cublas.h != nullptr; }

namespace {
__global__ void k_scale_c(float* C, int64_t ldc, int64_t sC, int64_t batch, int64_t m, int64_t n, float beta) {
  int64_t total = batch * m * n;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t b = i / (m * n), r = (i / n) % m, c = i % n;
    float* p = C + b * sC + r * ldc + c;
    *p = beta == 0.f ? 0.f : beta * *p;
  }
}
}  // namespace

void gemm(const void* A, int aType, int64_t lda, int64_t sA, const void* B, int bType, int64_t ldb, int64_t sB, float* C,
          int64_t ldc, int64_t sC, int64_t batch, int64_t m, int64_t n, int64_t k, bool tA, bool tB, float alpha,
          float beta, int compute) {
  if (batch == 0 || m == 0 || n == 0) return;
  if (k == 0) {
    k_scale_c<<<grid_for(batch * m * n, 256), 256, 0, stream()>>>(C, ldc, sC, batch, m, n, beta);
    check_launch("matmul");
    return;
  }
  if (!g_cublas.h) throw CudaError("matmul: cuBLAS is not loaded");
  int ct = compute == 0 ? COMPUTE_32F : compute == 1 ? COMPUTE_32F_FAST_TF32 : compute == 3 ? COMPUTE_32F_FAST_16BF : COMPUTE_32F;
  int at = aType == 1 ? CUDA_R_16BF_ : CUDA_R_32F_, bt = bType == 1 ? CUDA_R_16BF_ : CUDA_R_32F_;
  // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ.
  cb_check(g_cublas.gemm_sb(g_cublas.h, tB ? CUBLAS_OP_T : CUBLAS_OP_N, tA ? CUBLAS_OP_T : CUBLAS_OP_N, (int)n, (int)m,
                            (int)k, &alpha, B, bt, (int)ldb, (long long)sB, A, at, (int)lda, (long long)sA, &beta, C,
                            CUDA_R_32F_, (int)ldc, (long long)sC, (int)batch, ct, CUBLAS_GEMM_DEFAULT),
           "cublasGemmStridedBatchedEx");
}

// ---------------------------------------------------------------- grouped bf16 tensor-core kernel
namespace {
using namespace nvcuda;
constexpr int BM = 64, BN = 64, BK = 32, LDA_S = BK + 8, LDB_S = BN + 8, LDC_S = BN + 4;

constexpr int kMaxGroups = 96;
// Problems travel as a kernel parameter (no copy, no synchronisation): 9 ints per group, then the
// first tile of each group.
struct GroupArgs {
  int32_t prob[9 * kMaxGroups];
  int32_t tile_start[kMaxGroups];
};

__global__ void __launch_bounds__(128) k_grouped(const float* __restrict__ A, const float* __restrict__ B,
                                                 float* __restrict__ C, const __grid_constant__ GroupArgs ga, int groups,
                                                 bool tA, bool tB, float alpha, float beta) {
  const int32_t* prob = ga.prob;
  const int32_t* tile_start = ga.tile_start;
  __shared__ __align__(32) __nv_bfloat16 As[BM * LDA_S];
  __shared__ __align__(32) __nv_bfloat16 Bs[BK * LDB_S];
  __shared__ __align__(32) float Cs[BM * LDC_S];
  // Which group: the last g with tile_start[g] <= blockIdx.x.
  int lo = 0, hi = groups - 1;
  const int bid = blockIdx.x;
  while (lo < hi) {
    int mid = (lo + hi + 1) >> 1;
    if (tile_start[mid] <= bid) lo = mid;
    else hi = mid - 1;
  }
  const int32_t* p = prob + 9 * lo;
  const int m = p[0], n = p[1], K = p[2];
  const int64_t offA = p[3], lda = p[4], offB = p[5], ldb = p[6], offC = p[7], ldc = p[8];
  const int local = bid - tile_start[lo];
  const int tiles_n = (n + BN - 1) / BN;
  const int m0 = (local / tiles_n) * BM, n0 = (local % tiles_n) * BN;
  const int tid = threadIdx.x, warp = tid >> 5, wm = warp >> 1, wn = warp & 1;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  for (int k0 = 0; k0 < K; k0 += BK) {
    for (int e = tid; e < BM * BK; e += 128) {
      int r, c;
      if (tA) { r = e % BM; c = e / BM; } else { r = e / BK; c = e % BK; }
      int gr = m0 + r, gc = k0 + c;
      float v = 0.f;
      if (gr < m && gc < K) v = tA ? A[offA + (int64_t)gc * lda + gr] : A[offA + (int64_t)gr * lda + gc];
      As[r * LDA_S + c] = __float2bfloat16_rn(v);
    }
    for (int e = tid; e < BK * BN; e += 128) {
      int r, c;  // r: k index, c: n index
      if (tB) { r = e % BK; c = e / BK; } else { r = e / BN; c = e % BN; }
      int gk = k0 + r, gn = n0 + c;
      float v = 0.f;
      if (gk < K && gn < n) v = tB ? B[offB + (int64_t)gn * ldb + gk] : B[offB + (int64_t)gk * ldb + gn];
      Bs[r * LDB_S + c] = __float2bfloat16_rn(v);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb[2];
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], As + (wm * 32 + i * 16) * LDA_S + kk, LDA_S);
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], Bs + kk * LDB_S + wn * 32 + j * 16, LDB_S);
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * LDC_S + wn * 32 + j * 16, acc[i][j], LDC_S, wmma::mem_row_major);
  __syncthreads();
  for (int e = tid; e < BM * BN; e += 128) {
    int r = e / BN, c = e % BN, gr = m0 + r, gc = n0 + c;
    if (gr < m && gc < n) {
      float* out = C + offC + (int64_t)gr * ldc + gc;
      float v = alpha * Cs[r * LDC_S + c];
      *out = beta == 0.f ? v : v + beta * *out;
    }
  }
}
}  // namespace

void grouped_gemm(const float* A, const float* B, float* C, const int32_t* problems, int64_t groups, bool tA, bool tB,
                  float alpha, float beta) {
  for (int64_t g0 = 0; g0 < groups; g0 += kMaxGroups) {
    int ng = (int)std::min<int64_t>(kMaxGroups, groups - g0);
    GroupArgs ga;
    int64_t tiles = 0;
    for (int g = 0; g < ng; ++g) {
      const int32_t* p = problems + 9 * (g0 + g);
      for (int q = 0; q < 9; ++q) ga.prob[9 * g + q] = p[q];
      ga.tile_start[g] = (int32_t)tiles;
      tiles += (int64_t)((p[0] + BM - 1) / BM) * ((p[1] + BN - 1) / BN);
    }
    if (tiles == 0) continue;
    if (tiles > 0x7fffffff) throw CudaError("groupedMatmul: too many tiles");
    k_grouped<<<(unsigned)tiles, 128, 0, stream()>>>(A, B, C, ga, ng, tA, tB, alpha, beta);
    check_launch("groupedMatmul");
  }
}

}  // namespace ssdc
