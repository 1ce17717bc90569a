// GEMMs: cuBLAS (loaded with dlopen at run time; no cuBLAS headers or link-time dependency) for
// matmul, and a built-in grouped bf16 tensor-core kernel (mma.sync, fp32 accumulation) for the MoE
// expert segments, where a loop of cuBLAS calls over many small experts is launch-bound and leaves
// most of the GPU idle (an expert of 96 neurons is one column of output tiles).
#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "mma.cuh"

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
enum { LT_EPILOGUE_RELU = 2, LT_EPILOGUE_BIAS = 4, LT_EPILOGUE_BGRADB = 512 };
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
// op(A)) into `bias`.
bool gemm_lt(const void* A, int at, int64_t lda, const void* B, int bt, int64_t ldb, float* C, int64_t ldc, int64_t m,
             int64_t n, int64_t k, bool tA, bool tB, float alpha, float beta, int ct, const float* bias, bool relu,
             bool bias_grad) {
  // The heuristics take no alignment hint for the bias vector: its kernels may assume 16 bytes.
  if (!lt_ready() || (bias && alignment(bias) < 16)) return false;
  const uint32_t epi = bias_grad ? LT_EPILOGUE_BGRADB : (bias ? LT_EPILOGUE_BIAS : 0) | (relu ? LT_EPILOGUE_RELU : 0);
  const uint32_t alA = alignment(B), alB = alignment(A), alC = alignment(C), alBias = bias ? alignment(bias) : 0;
  char key[256];
  snprintf(key, sizeof key, "%d %d %d %u %lld %lld %lld %lld %lld %lld %d %d %u %u %u %u %d", at, bt, ct, epi,
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
    cb_check(g_lt.layout_create(&p.lc, CUDA_R_32F_, n, m, ldc), "cublasLtMatrixLayoutCreate");
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

bool gemm(const void* A, int aType, int64_t lda, int64_t sA, const void* B, int bType, int64_t ldb, int64_t sB, float* C,
          int64_t ldc, int64_t sC, int64_t batch, int64_t m, int64_t n, int64_t k, bool tA, bool tB, float alpha,
          float beta, int compute, const float* bias, bool relu, float* bias_grad) {
  if (batch == 0 || m == 0 || n == 0) return false;
  if (k == 0) {
    k_scale_c<<<grid_for(batch * m * n, 256), 256, 0, stream()>>>(C, ldc, sC, batch, m, n, beta);
    check_launch("matmul");
    bias_act(C, ldc, sC, batch, m, n, bias, relu);
    return false;
  }
  if (!g_cublas.h) throw CudaError("matmul: cuBLAS is not loaded");
  int ct = compute == 0 ? COMPUTE_32F : compute == 1 ? COMPUTE_32F_FAST_TF32 : compute == 3 ? COMPUTE_32F_FAST_16BF : COMPUTE_32F;
  int at = aType == 1 ? CUDA_R_16BF_ : CUDA_R_32F_, bt = bType == 1 ? CUDA_R_16BF_ : CUDA_R_32F_;
  if (bias_grad && batch == 1 && alpha == 1.f &&
      gemm_lt(A, at, lda, B, bt, ldb, C, ldc, m, n, k, tA, tB, alpha, beta, ct, bias_grad, false, true))
    return true;
  if ((bias || relu) && batch == 1 &&
      gemm_lt(A, at, lda, B, bt, ldb, C, ldc, m, n, k, tA, tB, alpha, beta, ct, bias, relu, false))
    return false;
  // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ.
  cb_check(g_cublas.gemm_sb(g_cublas.h, tB ? CUBLAS_OP_T : CUBLAS_OP_N, tA ? CUBLAS_OP_T : CUBLAS_OP_N, (int)n, (int)m,
                            (int)k, &alpha, B, bt, (int)ldb, (long long)sB, A, at, (int)lda, (long long)sA, &beta, C,
                            CUDA_R_32F_, (int)ldc, (long long)sC, (int)batch, ct, CUBLAS_GEMM_DEFAULT),
           "cublasGemmStridedBatchedEx");
  bias_act(C, ldc, sC, batch, m, n, bias, relu);
  return false;
}

// ---------------------------------------------------------------- grouped bf16 tensor-core kernel
// One launch covers every group (expert): the grid is the concatenation of the groups' output tiles,
// and a block finds its group by binary search over the groups' first tiles. Operands are bf16 (the
// TypeScript side passes the bf16 copies it keeps of f32 buffers); a row-indexed operand (the MoE
// token gather) reads each stored row of a tile through its index, so no gathered copy is ever made.
// Tiles stream into shared memory through a cp.async pipeline (16-byte chunks, or element loads where
// rows are not 16-byte aligned), ldmatrix feeds register-level mma.sync m16n8k16, and the fp32
// accumulators go straight to C. Each thread copies the same chunk positions of every stage, so it
// looks its rows up once where they do not move along K (the token rows of the MoE forward), and one
// stage ahead where they do (the token rows of a weight gradient): the index loads then overlap the
// products instead of stalling the copies. Three block shapes of 8 warps (128x128, 128x96, 96x128)
// fit the MoE's expert width (96) and model width (768) without padded rows or columns; the launcher
// takes the one with the least padded work.
// With device-held segments (GroupedMatmulArgs.segments: the MoE routing never visits the host), each
// group's token rows come from the segment offsets in device memory: the grid covers an upper bound of
// the work and each block derives the groups' first work items itself (a warp scan of the segment
// lengths); blocks past the last item exit. Along M (the token products) a work item is an output
// tile. Along K (the weight gradients, where an expert chosen by many tokens would leave a few blocks
// running long after the rest) it is an output tile over one chunk of at most KC rows (KC: the mean
// segment): a group of one chunk writes C directly; otherwise each item writes its partial tile to a
// scratch, and a second kernel adds each tile's partials in chunk order (deterministic) into C.
namespace {

constexpr int kMaxGroups = 96;
// Pipeline: stages of BK = 32 along K (64 measured no faster at the MoE shapes and slower for the
// gathered forward product).
constexpr int BK = 32, STAGES = 4;

// Problems travel as a kernel parameter (no copy, no synchronisation): 9 ints per group, then the
// first tile of each group.
struct GroupArgs {
  int32_t prob[9 * kMaxGroups];
  int32_t tile_start[kMaxGroups];
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
// shared tile with rows of W + 8 bf16 (the pad spreads the 8 rows of an ldmatrix over distinct banks),
// in 16-byte chunks; this thread copies chunks tid, tid + NT, ... and keeps their stored rows (after
// the index; -1 past rows_end) in registers.
template <int R, int W, int NT>
struct TileCopy {
  static constexpr int CPR = W / 8, CHUNKS = R * CPR, SLOTS = (CHUNKS + NT - 1) / NT;
  int row[SLOTS];

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
      bf16* d = dst + (e / CPR) * (W + 8) + c;
      if (vec) {
        const bool ok = row[i] >= 0 && col < cols_end;
        cp_async16(d, ok ? v.base + (int64_t)row[i] * v.ld + col : v.base, ok);
      } else {
        load_ragged(d, v, row[i], col, cols_end);
      }
    }
  }
};

// Shared tiles per stage: A as (BM, BK) rows, or (BK, BM) when transA; B as (BK, BN), or (BN, BK) when
// transB; each row padded by 8.
template <int BM, int BN, bool TA, bool TB> struct Smem {
  static constexpr int LDA = (TA ? BM : BK) + 8, LDB = (TB ? BK : BN) + 8;
  static constexpr int SA = (TA ? BK : BM) * LDA, SB = (TB ? BN : BK) * LDB;
  static constexpr size_t bytes = (size_t)STAGES * (SA + SB) * sizeof(bf16);
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

// WM x WN warps, each computing TM x TN mma tiles (16 x 8): a block tile of BM = 16·WM·TM rows and
// BN = 8·WN·TN columns.
template <int WM, int WN, int TM, int TN, bool TA, bool TB>
__global__ void __launch_bounds__(WM * WN * 32, 2)
    k_grouped(const bf16* __restrict__ A, const int32_t* __restrict__ rowsA, const bf16* __restrict__ B,
              const int32_t* __restrict__ rowsB, float* __restrict__ C, const __grid_constant__ GroupArgs ga,
              const int32_t* __restrict__ seg, int groups, bool vecA, bool vecB, bool vecC, float alpha, float beta,
              int KC, float* __restrict__ partial, int32_t* __restrict__ starts_out, bf16* __restrict__ C16,
              const float* __restrict__ bias, int64_t bias_stride, bool relu) {
  constexpr int BM = WM * TM * 16, BN = WN * TN * 8, NT = WM * WN * 32;
  using S = Smem<BM, BN, TA, TB>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* As = reinterpret_cast<bf16*>(smem_raw);
  bf16* Bs = As + STAGES * S::SA;

  // First work items: from the host, or (segments) derived here; blocks past the last item exit. With
  // segments along K (TA) block 0 also leaves them for the reduction of the partial tiles.
  __shared__ int32_t seg_start[kMaxGroups + 1];
  const int32_t* tile_start = ga.tile_start;
  if (seg) {
    if (threadIdx.x < 32) segment_work_starts<BM, BN>(ga, seg, groups, TA ? KC : 0, seg_start);
    __syncthreads();
    if (TA && blockIdx.x == 0)
      for (int g = threadIdx.x; g <= groups; g += blockDim.x) starts_out[g] = seg_start[g];
    if ((int)blockIdx.x >= seg_start[groups]) return;
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
  // Where this block's tile goes: C at offC (rows ldc apart), or, for a chunk of a group that segments
  // along K split into several, its own partial tile (raw sums: the reduction applies alpha and beta).
  bool to_partial = false;
  const int64_t ldc = p[8];
  if (seg) {
    // The group's token rows: L = seg[g + 1] - seg[g] along M (A and C rows) or K (A and B rows; this
    // block takes chunk local / tiles of them).
    int s0 = seg[lo], len = seg[lo + 1] - s0;
    if (TA) {
      const int tiles = group_tiles<BM, BN>(ga, lo, m), chunk = local / tiles;
      to_partial = len > KC;
      s0 += chunk * KC;
      len = min(KC, len - chunk * KC);
      local -= chunk * tiles;
      K = len;
      offB += (int64_t)s0 * p[6];
    } else {
      m = len;
      offC += (int64_t)s0 * p[8];
    }
    offA += (int64_t)s0 * p[4];
  }
  const View va = view_of(A, rowsA, offA, p[4]), vb = view_of(B, rowsB, offB, p[6]);
  const int tiles_n = (n + BN - 1) / BN;
  const int m0 = (local / tiles_n) * BM, n0 = (local % tiles_n) * BN;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm0 = (warp / WN) * TM * 16, wn0 = (warp % WN) * TN * 8;

  // Stored rows run along M (A) / N (B), fixed for the block, or along K (transA / not transB).
  TileCopy<TA ? BK : BM, TA ? BM : BK, NT> ca;
  TileCopy<TB ? BN : BK, TB ? BK : BN, NT> cb;
  if constexpr (!TA) ca.locate(va, m0, m);
  if constexpr (TB) cb.locate(vb, n0, n);
  auto locate_k = [&](int kt) {
    if constexpr (TA) ca.locate(va, kt * BK, K);
    if constexpr (!TB) cb.locate(vb, kt * BK, K);
  };
  auto issue = [&](int st, int kt) {
    const int k0 = kt * BK;
    if constexpr (TA) ca.issue(As + st * S::SA, va, m0, m, vecA);
    else ca.issue(As + st * S::SA, va, k0, K, vecA);
    if constexpr (TB) cb.issue(Bs + st * S::SB, vb, k0, K, vecB);
    else cb.issue(Bs + st * S::SB, vb, n0, n, vecB);
  };

  const int KT = (K + BK - 1) / BK;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < KT) {
      locate_k(s);
      issue(s, s);
    }
    cp_async_commit();
  }
  if (STAGES - 1 < KT) locate_k(STAGES - 1);

  float acc[TM][TN][4];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;

  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<STAGES - 2>();  // stage kt has landed (this thread's copies) ...
    __syncthreads();              // ... for every thread, and stage kt - 1 is free again
    if (kt + STAGES - 1 < KT) issue((kt + STAGES - 1) % STAGES, kt + STAGES - 1);
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
    // Rows of the stage issued next iteration: their index loads overlap this stage's products.
    if (kt + STAGES < KT) locate_k(kt + STAGES);
  }
  cp_async_wait<0>();

  // Accumulator layout: lane = 4·g + c holds rows g and g + 8 of each 16x8 tile, columns 2c and 2c + 1.
  const int g = lane >> 2, c = lane & 3;
  if (!C16) {
    // fp32 C straight from the fragments (4 lanes cover 32 bytes of a row, a whole sector); a partial
    // tile (BM x BN, rows BN apart) is addressed from the block's first row and column. The epilogue
    // (beta 0, no partial tiles): the group's bias, then ReLU.
    const float al = to_partial ? 1.f : alpha, be = to_partial ? 0.f : beta;
    const float* gbias = bias ? bias + lo * bias_stride : nullptr;
    auto epi = [&](float v, int col) {
      v += gbias ? gbias[col] : 0.f;
      return relu && !(v > 0.f) ? 0.f : v;
    };
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = m0 + wm0 + i * 16 + g + 8 * h;
        if (row >= m) continue;
        float* out = to_partial ? partial + (int64_t)bid * BM * BN + (int64_t)(row - m0) * BN - n0 : C + offC + (int64_t)row * ldc;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          const int col = n0 + wn0 + j * 8 + 2 * c;
          float v0 = al * acc[i][j][2 * h], v1 = al * acc[i][j][2 * h + 1];
          if (gbias || relu) {
            if (col < n) v0 = epi(v0, col);
            if (col + 1 < n) v1 = epi(v1, col + 1);
          }
          if (vecC && col + 1 < n) {
            float2* q = reinterpret_cast<float2*>(out + col);
            if (be == 0.f) {
              *q = make_float2(v0, v1);
            } else {
              const float2 o = *q;
              *q = make_float2(v0 + be * o.x, v1 + be * o.y);
            }
          } else {
            if (col < n) out[col] = be == 0.f ? v0 : v0 + be * out[col];
            if (col + 1 < n) out[col + 1] = be == 0.f ? v1 : v1 + be * out[col + 1];
          }
        }
      }
    return;
  }
  // A bf16 C (beta 0: a scattered product's scratch, half the bytes of fp32) goes through shared
  // memory (the pipeline's buffers, free now), so that each thread then writes 8 bytes along a row
  // (a fragment's pair of bf16 would leave half-filled sectors).
  constexpr int LDS = BN + 8;  // (pad: the fragments' float2 stores hit distinct banks per half-warp)
  static_assert((size_t)BM * LDS * sizeof(float) <= S::bytes, "the staged C tile fits the pipeline buffers");
  float* stage = reinterpret_cast<float*>(smem_raw);
  __syncthreads();  // every warp is done reading the last stage
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int j = 0; j < TN; ++j)
        *reinterpret_cast<float2*>(stage + (wm0 + i * 16 + g + 8 * h) * LDS + wn0 + j * 8 + 2 * c) =
            make_float2(alpha * acc[i][j][2 * h], alpha * acc[i][j][2 * h + 1]);
  __syncthreads();
  constexpr int Q = BN / 4;  // 4-column quads per tile row
  for (int e = threadIdx.x; e < BM * Q; e += NT) {
    const int r = e / Q, col = n0 + (e - r * Q) * 4, row = m0 + r;
    if (row >= m || col >= n) continue;
    const float4 v = *reinterpret_cast<const float4*>(stage + r * LDS + (col - n0));
    bf16* out = C16 + offC + (int64_t)row * ldc + col;
    if (vecC && col + 3 < n) {
      __nv_bfloat162 lo2 = __floats2bfloat162_rn(v.x, v.y), hi2 = __floats2bfloat162_rn(v.z, v.w);
      uint2 u;
      u.x = *reinterpret_cast<uint32_t*>(&lo2);
      u.y = *reinterpret_cast<uint32_t*>(&hi2);
      *reinterpret_cast<uint2*>(out) = u;
    } else {
      const float w[4] = {v.x, v.y, v.z, v.w};
      for (int q = 0; q < 4 && col + q < n; ++q) out[q] = __float2bfloat16(w[q]);
    }
  }
}

// The reduction of split-K partial tiles (segments along K): per group its C (m x n at offC, rows ldc
// apart) and its first element in the concatenation of the groups' C.
struct SplitArgs {
  int32_t m[kMaxGroups], n[kMaxGroups], ldc[kMaxGroups];
  int64_t offC[kMaxGroups], elem_start[kMaxGroups + 1];
};
// C[g] (+)= the sum of element (r, c)'s partials in chunk order, scaled by alpha (beta: as the product);
// groups of one chunk were written by their blocks, empty ones get beta · C.
template <int BM, int BN>
__global__ void k_split_reduce(const __grid_constant__ SplitArgs sa, const int32_t* __restrict__ seg, int groups, int KC,
                               const float* __restrict__ partial, const int32_t* __restrict__ starts,
                               float* __restrict__ C, float alpha, float beta) {
  const int64_t total = sa.elem_start[groups];
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int lo = 0, hi = groups - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (sa.elem_start[mid] <= i) lo = mid;
      else hi = mid - 1;
    }
    const int64_t e = i - sa.elem_start[lo];
    const int m = sa.m[lo], n = sa.n[lo], r = (int)(e / n), c = (int)(e - (int64_t)r * n);
    const int tiles_n = (n + BN - 1) / BN, tiles = (m + BM - 1) / BM * tiles_n, t = r / BM * tiles_n + c / BN;
    const int chunks = (seg[lo + 1] - seg[lo] + KC - 1) / KC;
    if (chunks == 1) continue;  // its one block wrote C itself
    const float* p = partial + ((int64_t)starts[lo] + t) * BM * BN + (r % BM) * BN + c % BN;
    float acc = 0.f;
    for (int j = 0; j < chunks; ++j) acc += p[(int64_t)j * tiles * BM * BN];
    float* o = C + sa.offC[lo] + (int64_t)r * sa.ldc[lo] + c;
    *o = beta == 0.f ? alpha * acc : alpha * acc + beta * *o;
  }
}

struct GroupedCall {
  const bf16* A;
  const int32_t* rowsA;
  const bf16* B;
  const int32_t* rowsB;
  float* C;
  bf16* C16;           // or, when set, a bf16 C (beta 0)
  const int32_t* seg;  // device segments (groups + 1) or null
  int64_t total;       // seg: the last offset (bounds the work)
  int KC;              // seg along K (tA): rows per chunk of the split-K products
  bool vecA, vecB, vecC;
  float alpha, beta;
  const float* bias;   // the epilogue: group g's bias at bias + g · bias_stride (or null), then ReLU
  int64_t bias_stride;
  bool relu;
};

// Launches the groups of `problems` (9 ints each) with block tiles of one shape, kMaxGroups at a time.
template <int WM, int WN, int TM, int TN, bool TA, bool TB>
void launch_shape(const GroupedCall& q, const int32_t* problems, int64_t groups) {
  constexpr int BM = WM * TM * 16, BN = WN * TN * 8;
  constexpr size_t smem = Smem<BM, BN, TA, TB>::bytes;
  auto kernel = k_grouped<WM, WN, TM, TN, TA, TB>;
  static bool init = false;
  if (!init) {
    // Two blocks per multiprocessor need most of its shared memory: ask for the largest carveout.
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared),
          "groupedMatmul (carveout)");
    allow_smem(kernel, smem, init, "groupedMatmul (smem)");
  }
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
    const int32_t* seg = q.seg ? q.seg + g0 : nullptr;
    // Segments along M: at most Σ ceil(L_g / BM) <= (total + ng (BM - 1)) / BM row tiles per column tile.
    if (seg && !TA) tiles = (q.total + (int64_t)ng * (BM - 1)) / BM * tiles_n_max;
    if (seg && TA) {
      // Split-K: at most (total + ng (KC - 1)) / KC chunks, each over a group's tiles; then the reduction.
      int64_t most = 0;
      SplitArgs sa;
      sa.elem_start[0] = 0;
      for (int g = 0; g < ng; ++g) {
        const int32_t* p = ga.prob + 9 * g;
        most = std::max<int64_t>(most, (int64_t)((p[0] + BM - 1) / BM) * ((p[1] + BN - 1) / BN));
        sa.m[g] = p[0];
        sa.n[g] = p[1];
        sa.ldc[g] = p[8];
        sa.offC[g] = p[7];
        sa.elem_start[g + 1] = sa.elem_start[g] + (int64_t)p[0] * p[1];
      }
      const int64_t items = std::max<int64_t>(1, (q.total + (int64_t)ng * (q.KC - 1)) / q.KC * most);
      if (items > 0x7fffffff) throw CudaError("groupedMatmul: too many tiles");
      Scratch partial((size_t)items * BM * BN * sizeof(float)), starts((size_t)(ng + 1) * sizeof(int32_t));
      kernel<<<(unsigned)items, WM * WN * 32, smem, stream()>>>(q.A, q.rowsA, q.B, q.rowsB, q.C, ga, seg, ng, q.vecA, q.vecB,
                                                               q.vecC, q.alpha, q.beta, q.KC, partial.as<float>(),
                                                               starts.as<int32_t>(), nullptr, nullptr, 0, false);
      check_launch("groupedMatmul");
      if (sa.elem_start[ng] == 0) continue;
      k_split_reduce<BM, BN><<<grid_for(sa.elem_start[ng], 256), 256, 0, stream()>>>(
          sa, seg, ng, q.KC, partial.as<float>(), starts.as<int32_t>(), q.C, q.alpha, q.beta);
      check_launch("groupedMatmul (split-K reduction)");
      continue;
    }
    if (tiles == 0) continue;
    if (tiles > 0x7fffffff) throw CudaError("groupedMatmul: too many tiles");
    kernel<<<(unsigned)tiles, WM * WN * 32, smem, stream()>>>(q.A, q.rowsA, q.B, q.rowsB, q.C, ga, seg, ng, q.vecA, q.vecB,
                                                             q.vecC, q.alpha, q.beta, 0, nullptr, nullptr, q.C16,
                                                             q.bias ? q.bias + g0 * q.bias_stride : nullptr,
                                                             q.bias_stride, q.relu);
    check_launch("groupedMatmul");
  }
}
template <int WM, int WN, int TM, int TN>
void launch_shape(const GroupedCall& q, const int32_t* problems, int64_t groups, bool tA, bool tB) {
  if (tA && tB) launch_shape<WM, WN, TM, TN, true, true>(q, problems, groups);
  else if (tA) launch_shape<WM, WN, TM, TN, true, false>(q, problems, groups);
  else if (tB) launch_shape<WM, WN, TM, TN, false, true>(q, problems, groups);
  else launch_shape<WM, WN, TM, TN, false, false>(q, problems, groups);
}

// The block shapes (rows x columns), in order of preference on equal padded work.
constexpr int kShapes[3][2] = {{128, 128}, {128, 96}, {96, 128}};

bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }
}  // namespace

void grouped_gemm(const uint16_t* A, const int32_t* rowsA, const uint16_t* B, const int32_t* rowsB, void* C, bool c_bf16,
                  const int32_t* problems, int64_t groups, bool tA, bool tB, float alpha, float beta, const int32_t* seg,
                  int64_t total, const float* bias, int64_t bias_stride, bool relu) {
  if (c_bf16 && (beta != 0.f || (seg && tA))) throw CudaError("groupedMatmul: a bf16 C needs beta 0 and no split-K");
  if ((bias || relu) && (c_bf16 || beta != 0.f || tA)) throw CudaError("groupedMatmul: bias and relu need beta 0, transA false and an fp32 C");
  if (seg && tA && tB) throw CudaError("groupedMatmul: segments need transA or transB false");
  // Split-K chunks of an average segment (balanced groups mostly run in one chunk, written straight to
  // C), in whole BK stages; at least 256 rows.
  const int64_t mean = groups > 0 ? (total + groups - 1) / groups : 0;
  const int KC = (int)std::min<int64_t>(1 << 20, std::max<int64_t>(256, (mean + BK - 1) / BK * BK));
  GroupedCall q{reinterpret_cast<const bf16*>(A), rowsA, reinterpret_cast<const bf16*>(B), rowsB,
                c_bf16 ? nullptr : static_cast<float*>(C), c_bf16 ? static_cast<bf16*>(C) : nullptr, seg, total, KC,
                aligned16(A), aligned16(B), ((uintptr_t)C & 7) == 0, alpha, beta, bias, bias_stride, relu};
  int64_t padded[3] = {0, 0, 0};
  // With segments the token dimension is on the device: the checks and the block shape use its
  // mean (offsets along it are multiples of the leading dimensions checked below).
  const int64_t mean_len = seg && groups > 0 ? (total + groups - 1) / groups : 0;
  for (int64_t g = 0; g < groups; ++g) {
    const int32_t* p = problems + 9 * g;
    const int64_t m = seg && !tA ? mean_len : p[0], n = p[1], k = seg && tA ? mean_len : p[2];
    if (m == 0 || n == 0) continue;
    // 16-byte chunks need every row start and the contiguous extent (k, or m / n when transposed)
    // at multiples of 8 elements; float2 stores need even C offsets, a bf16 C's quads multiples of 4.
    q.vecA = q.vecA && p[3] % 8 == 0 && p[4] % 8 == 0 && (tA ? m : k) % 8 == 0;
    q.vecB = q.vecB && p[5] % 8 == 0 && p[6] % 8 == 0 && (tB ? k : n) % 8 == 0;
    q.vecC = q.vecC && p[7] % (c_bf16 ? 4 : 2) == 0 && p[8] % (c_bf16 ? 4 : 2) == 0;
    for (int s = 0; s < 3; ++s) {
      const int64_t bm = kShapes[s][0], bn = kShapes[s][1];
      padded[s] += (m + bm - 1) / bm * bm * ((n + bn - 1) / bn * bn);
    }
  }
  const int best = (int)(std::min_element(padded, padded + 3) - padded);
  if (best == 0) launch_shape<2, 4, 4, 4>(q, problems, groups, tA, tB);
  else if (best == 1) launch_shape<4, 2, 2, 6>(q, problems, groups, tA, tB);
  else launch_shape<2, 4, 3, 4>(q, problems, groups, tA, tB);
}

}  // namespace ssdc
