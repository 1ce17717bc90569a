// GEMMs through cuBLAS / cuBLASLt (loaded with dlopen at run time; no cuBLAS headers or link-time
// dependency). The MoE's grouped products have their own kernels (grouped.cu).
#include <dlfcn.h>

#include <cstdio>
#include <string>
#include <unordered_map>
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

// cuBLASLt (the matmuls with a fused epilogue), from the same dlopen'ed libcublasLt. Enum values and
// the heuristic result's layout are those of cublasLt.h (CUDA 12 and 13).
enum { LT_DESC_TRANSA = 3, LT_DESC_TRANSB = 4, LT_DESC_EPILOGUE = 7, LT_DESC_BIAS_POINTER = 8 };
enum { LT_EPILOGUE_DEFAULT = 1, LT_EPILOGUE_RELU = 2, LT_EPILOGUE_BIAS = 4, LT_EPILOGUE_BGRADB = 512 };
enum { LT_PREF_MAX_WORKSPACE = 1, LT_PREF_ALIGN_A = 5, LT_PREF_ALIGN_B = 6, LT_PREF_ALIGN_C = 7, LT_PREF_ALIGN_D = 8 };
struct LtHeuristic {
  uint64_t algo[8];
  size_t workspace;
  int state;
  float waves;
  int reserved[4];
};
struct CublasLt {
  void* h = nullptr;
  bool tried = false;
  cublasStatus_t (*create)(void**) = nullptr;
  cublasStatus_t (*desc_create)(void**, int, int) = nullptr;
  cublasStatus_t (*desc_destroy)(void*) = nullptr;
  cublasStatus_t (*desc_set)(void*, int, const void*, size_t) = nullptr;
  cublasStatus_t (*layout_create)(void**, int, uint64_t, uint64_t, int64_t) = nullptr;
  cublasStatus_t (*layout_destroy)(void*) = nullptr;
  cublasStatus_t (*pref_create)(void**) = nullptr;
  cublasStatus_t (*pref_destroy)(void*) = nullptr;
  cublasStatus_t (*pref_set)(void*, int, const void*, size_t) = nullptr;
  cublasStatus_t (*heuristic)(void*, void*, void*, void*, void*, void*, void*, int, LtHeuristic*, int*) = nullptr;
  cublasStatus_t (*matmul)(void*, void*, const void*, const void*, void*, const void*, void*, const void*, const void*,
                           void*, void*, void*, const void*, void*, size_t, cudaStream_t) = nullptr;
};
CublasLt g_lt;

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
    const auto slash = p.rfind('/');
    const std::string dir = slash == std::string::npos ? "" : p.substr(0, slash + 1);
    const std::string base = p.substr(dir.size());
    void* lt = nullptr;
    if (base.find(".so") != std::string::npos)
      lt = dlopen((dir + "libcublasLt" + base.substr(base.find(".so"))).c_str(), RTLD_NOW | RTLD_GLOBAL);
    void* lib = dlopen(p.c_str(), RTLD_NOW | RTLD_GLOBAL);
    g_cublas.lt = lib ? lt : nullptr;  // the cuBLASLt beside the cuBLAS in use
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

namespace {
__global__ void k_bias_act(float* C, int64_t ldc, int64_t sC, int64_t batch, int64_t m, int64_t n,
                           const float* __restrict__ bias, bool relu) {
  const int64_t total = batch * m * n;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = i / (m * n), r = (i / n) % m, c = i % n;
    float* p = C + b * sC + r * ldc + c;
    const float v = *p + (bias ? bias[c] : 0.f);
    *p = relu && !(v > 0.f) ? 0.f : v;
  }
}

// Loads the cuBLASLt entry points and creates its handle, once; false where libcublasLt or a symbol is
// missing (the epilogue then runs as its own kernel).
bool lt_ready() {
  if (g_lt.tried) return g_lt.h != nullptr;
  g_lt.tried = true;
  void* lib = g_cublas.lt;
  if (!lib) return false;
  bool all = true;
  auto sym = [&](auto& f, const char* name) {
    f = reinterpret_cast<std::remove_reference_t<decltype(f)>>(dlsym(lib, name));
    all = all && f != nullptr;
  };
  sym(g_lt.create, "cublasLtCreate");
  sym(g_lt.desc_create, "cublasLtMatmulDescCreate");
  sym(g_lt.desc_destroy, "cublasLtMatmulDescDestroy");
  sym(g_lt.desc_set, "cublasLtMatmulDescSetAttribute");
  sym(g_lt.layout_create, "cublasLtMatrixLayoutCreate");
  sym(g_lt.layout_destroy, "cublasLtMatrixLayoutDestroy");
  sym(g_lt.pref_create, "cublasLtMatmulPreferenceCreate");
  sym(g_lt.pref_destroy, "cublasLtMatmulPreferenceDestroy");
  sym(g_lt.pref_set, "cublasLtMatmulPreferenceSetAttribute");
  sym(g_lt.heuristic, "cublasLtMatmulAlgoGetHeuristic");
  sym(g_lt.matmul, "cublasLtMatmul");
  void* h = nullptr;
  if (!all || g_lt.create(&h) != 0) return false;
  g_lt.h = h;
  return true;
}

// One product shape's descriptors and algorithm (ok = false: cuBLASLt has none for it).
struct LtPlan {
  void* desc = nullptr;
  void* la = nullptr;
  void* lb = nullptr;
  void* lc = nullptr;
  LtHeuristic algo{};
  bool ok = false;
};
std::unordered_map<std::string, LtPlan> g_lt_plans;
constexpr size_t kLtWorkspace = 32u << 20;  // the cuBLAS workspace, shared (one stream)

// The largest power of two up to 256 that divides a device address (the heuristics' alignment hint).
uint32_t alignment(const void* p) {
  uint32_t a = 256;
  while (a > 1 && ((uintptr_t)p % a) != 0) a >>= 1;
  return a;
}

// One product with its epilogue through cuBLASLt; false where cuBLASLt or an algorithm for it is
// missing. Plans are cached by shape, types and alignments (at most 512; then they start over).
// The epilogue: bias (+ ReLU) or ReLU, or (bias_grad) BGRADB: the sums over k of cuBLASLt's B (our
// op(A)) into `bias`, or none. C's type ct_out: CUDA_R_32F_, or CUDA_R_16BF_; the bias has C's type
// (cuBLAS 13 on an H200 has no algorithm for a bf16 C with an fp32 bias).
bool gemm_lt(const void* A, int at, int64_t lda, const void* B, int bt, int64_t ldb, void* C, int ct_out, int64_t ldc,
             int64_t m, int64_t n, int64_t k, bool tA, bool tB, float alpha, float beta, int ct, const void* bias,
             bool relu, bool bias_grad) {
  // The heuristics take no alignment hint for the bias vector: its kernels may assume 16 bytes.
  if (!lt_ready() || (bias && alignment(bias) < 16)) return false;
  const uint32_t fused = bias_grad ? LT_EPILOGUE_BGRADB : (bias ? LT_EPILOGUE_BIAS : 0) | (relu ? LT_EPILOGUE_RELU : 0);
  const uint32_t epi = fused ? fused : LT_EPILOGUE_DEFAULT;
  const uint32_t alA = alignment(B), alB = alignment(A), alC = alignment(C), alBias = bias ? alignment(bias) : 0;
  char key[256];
  snprintf(key, sizeof key, "%d %d %d %d %u %lld %lld %lld %lld %lld %lld %d %d %u %u %u %u %d", at, bt, ct, ct_out, epi,
           (long long)lda, (long long)ldb, (long long)ldc, (long long)m, (long long)n, (long long)k, tA, tB, alA, alB,
           alC, alBias, beta != 0.f);
  auto it = g_lt_plans.find(key);
  if (it == g_lt_plans.end()) {
    if (g_lt_plans.size() >= 512) {
      for (auto& [_, p] : g_lt_plans) {
        g_lt.desc_destroy(p.desc);
        g_lt.layout_destroy(p.la);
        g_lt.layout_destroy(p.lb);
        g_lt.layout_destroy(p.lc);
      }
      g_lt_plans.clear();
    }
    // Row-major C (m, n) = op(A)·op(B) is column-major Cᵀ (n, m) = op(B)ᵀ·op(A)ᵀ: cuBLASLt's A is our
    // B, stored column-major (n, k) (or (k, n) transposed), and its B is our A; the bias runs along
    // the rows of column-major D, i.e. along our columns.
    LtPlan p;
    const int32_t opa = tB ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tA ? CUBLAS_OP_T : CUBLAS_OP_N;
    cb_check(g_lt.desc_create(&p.desc, ct, CUDA_R_32F_), "cublasLtMatmulDescCreate");
    cb_check(g_lt.desc_set(p.desc, LT_DESC_TRANSA, &opa, sizeof opa), "cublasLtMatmulDescSetAttribute");
    cb_check(g_lt.desc_set(p.desc, LT_DESC_TRANSB, &opb, sizeof opb), "cublasLtMatmulDescSetAttribute");
    cb_check(g_lt.desc_set(p.desc, LT_DESC_EPILOGUE, &epi, sizeof epi), "cublasLtMatmulDescSetAttribute");
    if (bias) cb_check(g_lt.desc_set(p.desc, LT_DESC_BIAS_POINTER, &bias, sizeof bias), "cublasLtMatmulDescSetAttribute");
    cb_check(g_lt.layout_create(&p.la, bt, tB ? k : n, tB ? n : k, ldb), "cublasLtMatrixLayoutCreate");
    cb_check(g_lt.layout_create(&p.lb, at, tA ? m : k, tA ? k : m, lda), "cublasLtMatrixLayoutCreate");
    cb_check(g_lt.layout_create(&p.lc, ct_out, n, m, ldc), "cublasLtMatrixLayoutCreate");
    void* pref = nullptr;
    cb_check(g_lt.pref_create(&pref), "cublasLtMatmulPreferenceCreate");
    const uint64_t ws = kLtWorkspace;
    g_lt.pref_set(pref, LT_PREF_MAX_WORKSPACE, &ws, sizeof ws);
    g_lt.pref_set(pref, LT_PREF_ALIGN_A, &alA, sizeof alA);
    g_lt.pref_set(pref, LT_PREF_ALIGN_B, &alB, sizeof alB);
    g_lt.pref_set(pref, LT_PREF_ALIGN_C, &alC, sizeof alC);
    g_lt.pref_set(pref, LT_PREF_ALIGN_D, &alC, sizeof alC);
    int count = 0;
    const int st = g_lt.heuristic(g_lt.h, p.desc, p.la, p.lb, p.lc, p.lc, pref, 1, &p.algo, &count);
    g_lt.pref_destroy(pref);
    p.ok = st == 0 && count > 0 && p.algo.state == 0;
    it = g_lt_plans.emplace(key, p).first;
  }
  LtPlan& p = it->second;
  if (!p.ok) return false;
  if (bias) cb_check(g_lt.desc_set(p.desc, LT_DESC_BIAS_POINTER, &bias, sizeof bias), "cublasLtMatmulDescSetAttribute");
  cb_check(g_lt.matmul(g_lt.h, p.desc, &alpha, B, p.la, A, p.lb, &beta, C, p.lc, C, p.lc, p.algo.algo, g_cublas.workspace,
                       kLtWorkspace, stream()),
           "cublasLtMatmul");
  return true;
}
}  // namespace

void bias_act(float* C, int64_t ldc, int64_t sC, int64_t batch, int64_t m, int64_t n, const float* bias, bool relu) {
  if (batch == 0 || m == 0 || n == 0 || (!bias && !relu)) return;
  k_bias_act<<<grid_for(batch * m * n, 256), 256, 0, stream()>>>(C, ldc, sC, batch, m, n, bias, relu);
  check_launch("matmul (bias / ReLU epilogue)");
}

namespace {
int gemm_f32(const void* A, int at, int64_t lda, int64_t sA, const void* B, int bt, int64_t ldb, int64_t sB, float* C,
             int64_t ldc, int64_t sC, int64_t batch, int64_t m, int64_t n, int64_t k, bool tA, bool tB, float alpha,
             float beta, int ct, const float* bias, bool relu, float* bias_grad) {
  if (bias_grad && batch == 1 && alpha == 1.f &&
      gemm_lt(A, at, lda, B, bt, ldb, C, CUDA_R_32F_, ldc, m, n, k, tA, tB, alpha, beta, ct, bias_grad, false, true))
    return kGemmBiasGrad;
  if ((bias || relu) && batch == 1 &&
      gemm_lt(A, at, lda, B, bt, ldb, C, CUDA_R_32F_, ldc, m, n, k, tA, tB, alpha, beta, ct, bias, relu, false))
    return 0;
  // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ.
  cb_check(g_cublas.gemm_sb(g_cublas.h, tB ? CUBLAS_OP_T : CUBLAS_OP_N, tA ? CUBLAS_OP_T : CUBLAS_OP_N, (int)n, (int)m,
                            (int)k, &alpha, B, bt, (int)ldb, (long long)sB, A, at, (int)lda, (long long)sA, &beta, C,
                            CUDA_R_32F_, (int)ldc, (long long)sC, (int)batch, ct, CUBLAS_GEMM_DEFAULT),
           "cublasGemmStridedBatchedEx");
  bias_act(C, ldc, sC, batch, m, n, bias, relu);
  return 0;
}
}  // namespace

int gemm(const void* A, int aType, int64_t lda, int64_t sA, const void* B, int bType, int64_t ldb, int64_t sB, float* C,
         int64_t ldc, int64_t sC, int64_t batch, int64_t m, int64_t n, int64_t k, bool tA, bool tB, float alpha,
         float beta, int compute, const float* bias, bool relu, float* bias_grad, uint16_t* c16, const uint16_t* bias16) {
  if (batch == 0 || m == 0 || n == 0) return 0;
  if (c16 && (batch != 1 || beta != 0.f || ldc != n || bias_grad))
    throw CudaError("matmul: a bf16 copy of C needs batch 1, beta 0, ldc = n and no bias gradient");
  int ct = compute == 0 ? COMPUTE_32F : compute == 1 ? COMPUTE_32F_FAST_TF32 : compute == 3 ? COMPUTE_32F_FAST_16BF : COMPUTE_32F;
  int at = aType == 1 ? CUDA_R_16BF_ : CUDA_R_32F_, bt = bType == 1 ? CUDA_R_16BF_ : CUDA_R_32F_;
  if (k > 0 && c16 && g_cublas.h && (!bias || bias16) &&
      gemm_lt(A, at, lda, B, bt, ldb, c16, CUDA_R_16BF_, ldc, m, n, k, tA, tB, alpha, beta, ct, bias16, relu, false))
    return kGemmOnlyC16;
  if (!C) return kGemmNotDone;  // only the bf16 output was asked for
  int done = 0;
  if (k == 0) {
    k_scale_c<<<grid_for(batch * m * n, 256), 256, 0, stream()>>>(C, ldc, sC, batch, m, n, beta);
    check_launch("matmul");
    bias_act(C, ldc, sC, batch, m, n, bias, relu);
  } else {
    if (!g_cublas.h) throw CudaError("matmul: cuBLAS is not loaded");
    done = gemm_f32(A, at, lda, sA, B, bt, ldb, sB, C, ldc, sC, batch, m, n, k, tA, tB, alpha, beta, ct, bias, relu, bias_grad);
  }
  if (c16) cast_f32_bf16(C, c16, m * n);
  return done;
}

}  // namespace ssdc
