// Shared declarations of the CUDA backend (native/cuda). Everything runs on one stream (`stream()`),
// launched asynchronously; host-visible results synchronise explicitly. Errors are C++ exceptions
// (CudaError) that the N-API glue turns into JavaScript errors naming the op.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace ssdc {

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw CudaError(std::string("cuda: ") + what + ": " + cudaGetErrorString(e));
}
// After a kernel launch: launch-configuration errors (not asynchronous faults) surface here.
inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

cudaStream_t stream();
// Compute capability of the device in use (major · 10 + minor; 0 before the runtime is initialised).
int device_cc();

// ---------------------------------------------------------------- device memory (caching allocator)
void* dev_alloc(size_t bytes);  // throws CudaError naming the sizes on out-of-memory
void dev_free(void* p);
// A scratch buffer freed when it goes out of scope (stream-ordered reuse keeps this safe).
struct Scratch {
  void* p = nullptr;
  explicit Scratch(size_t bytes) : p(bytes ? dev_alloc(bytes) : nullptr) {}
  ~Scratch() { if (p) dev_free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class T> T* as() const { return static_cast<T*>(p); }
};

// Synchronous host <-> device copies through the stream.
void h2d(void* dst, const void* src, size_t bytes);
void d2h(void* dst, const void* src, size_t bytes);
// Asynchronous upload: `src` is copied to pinned staging memory at once (the caller may reuse it), the
// device copy is queued on the stream. Uploads larger than a staging slot fall back to h2d.
void h2d_async(void* dst, const void* src, size_t bytes);
// Sources per chunk of a scatter plan: a target with more sources is summed in two levels.
constexpr int64_t kPlanChunk = 32;
// How a scatter plan routes sources to targets: distinct targets need no plan (scatter_unique adds each
// source row to its target); non-decreasing targets own contiguous runs of sources, so a plan of
// offsets alone (no source list) describes them; any other targets get the full plan.
enum class PlanKind : int { kUnique = 0, kSorted = 1, kListed = 2 };
struct ScatterPlan {
  PlanKind kind;
  int32_t* ptr;    // device block (freed with dev_free); null for kUnique
  int64_t chunks;  // 0 when the plan is not chunked
};
// The scatter plan of targets idx[0 .. m) in [0, n) (validated by the caller), built on the host in
// O(m + n) and uploaded asynchronously into a new device block: offsets[t] (n + 1); for kListed then
// the positions i with idx[i] = t for each t in ascending order (a stable counting sort), the order
// segment_sum adds them in (kSorted: target t's sources are the positions offsets[t] .. offsets[t + 1]).
// When a target has more than kPlanChunk sources, the sources are also cut into chunks of at most
// kPlanChunk within each target: then follow the first chunk of each target (n + 1) and the source
// range of each chunk (chunks + 1). kUnique (the targets are distinct) uploads nothing.
ScatterPlan scatter_plan(const int32_t* idx, int64_t m, int64_t n);

inline unsigned grid_for(int64_t n, int threads, int64_t cap = 65535LL * 32) {
  int64_t g = (n + threads - 1) / threads;
  if (g < 1) g = 1;
  if (g > cap) g = cap;
  return (unsigned)g;
}

constexpr int kMaxRank = 8;
struct Dims {
  int rank;
  int64_t shape[kMaxRank];
  int64_t s0[kMaxRank];
  int64_t s1[kMaxRank];
};

// ---------------------------------------------------------------- kernels (launchers)
// elementwise.cu
void fill32(void* out, int64_t n, uint32_t bits);
void fill16(void* out, int64_t n, uint16_t bits);
void cast_f32_bf16(const float* x, uint16_t* out, int64_t n);
void cast_bf16_f32(const uint16_t* x, float* out, int64_t n);
// (rows, cols) f32 -> (out_rows, ld) bf16, zero in the padding rows and columns (aligned operands for
// cuBLAS); ld even, out_rows >= rows.
void cast_f32_bf16_pad(const float* x, uint16_t* out, int64_t rows, int64_t cols, int64_t out_rows, int64_t ld);
// out (rows, cols) f32 = the first cols of each bf16 row of x, rows ld apart (a padded copy widened).
void cast_bf16_f32_unpad(const uint16_t* x, float* out, int64_t rows, int64_t cols, int64_t ld);
// rows of `width` bytes from src (rows src_pitch bytes apart) to dst (dst_pitch apart).
void copy_2d(const void* src, int64_t src_pitch, void* dst, int64_t dst_pitch, int64_t width, int64_t rows);
void cast_i32_f32(const int32_t* x, float* out, int64_t n);
void cast_f32_i32(const float* x, int32_t* out, int64_t n);
void copy_bytes(const void* src, void* dst, int64_t bytes);
// kind: 0 f32, 1 bf16, 2 i32
void copy_strided(int kind, const void* src, int64_t so, void* dst, int64_t dof, const Dims& d, bool acc);
void unary(int op, const float* x, float* out, int64_t n);
// gx = gy · f'(x), and its bf16 copy gx16 (or null; rounded to nearest even, as a cast); x16 (or null;
// ReLU only): x's bf16 copy, read for ReLU's mask instead of x (an output kept at bf16 precision).
void unary_backward(int op, const float* x, const uint16_t* x16, const float* gy, float* gx, uint16_t* gx16, int64_t n);
void affine(const float* x, float* out, int64_t n, float scale, float shift);
void binary(int op, const float* a, const float* b, float* out, const Dims& d);
void reduce_sum(const float* x, float* out, int64_t outer, int64_t mid, int64_t inner);
// Σ x² over all the buffers xs[i] (ns[i] elements each), f64 with fixed blocking per buffer; one synchronisation.
double sum_squares(const std::vector<const float*>& xs, const std::vector<int64_t>& ns);
void dropout(const float* x, float* out, int64_t n, float p, uint32_t seed);
// AdamW on n parameters; with p16 (or null) also their bf16 copy.
void adamw(float* p, const float* g, float* m, float* v, uint16_t* p16, int64_t n, float lr, float b1, float b2, float eps,
           float wd, float bc1, float bc2, float gscale);

// nn.cu
void softmax(const float* x, float* out, int64_t rows, int64_t cols);
void softmax_backward(const float* y, const float* gy, float* gx, int64_t rows, int64_t cols);
// y16 (or null): y's bf16 copy, written beside it; with y16_only (and y16) y itself is not written
// where the warp-per-row kernel runs (rows of cols % 4 == 0, at most 1024; x, y, g, b 16-byte and y16
// 8-byte aligned): returns whether it was skipped.
bool layer_norm(const float* x, const float* g, const float* b, float* y, uint16_t* y16, float* mean, float* rstd,
                int64_t rows, int64_t cols, float eps, bool y16_only);
void layer_norm_backward(const float* x, const float* g, const float* mean, const float* rstd, const float* gy,
                         float* gx, float* gg, float* gb, int64_t rows, int64_t cols);
// out (m, d) = rows idx[i] of x (indices validated by the caller).
void gather_rows(const float* x, const int32_t* idx, float* out, int64_t m, int64_t d, const char* op);
// Deterministic scatter-add by a kSorted or kListed plan of m sources over n targets with `chunks`
// chunks (scatter_plan; listed: whether it lists the sources): out[t] (+)= Σ src[j] over the sources j
// of target t, in plan order (in chunks of kPlanChunk, then the chunk sums in order, when the plan is
// chunked); src (·, d) fp32, or bf16 with src_bf16 (summed in fp32), out (n, d). init: out starts from
// zeros (every row written) instead of its content; bias (d floats, or null) is added to every row
// first.
void segment_sum(const void* src, bool src_bf16, const int32_t* plan, int64_t n, int64_t m, int64_t chunks, bool listed,
                 float* out, int64_t d, bool init, const float* bias, const char* op);
// Deterministic scatter-add of m sources onto n non-decreasing targets whose bounds (n + 1) and chunk
// flag live on the device (expert_groups' expert_plan): the sums segment_sum makes with the kSorted
// plan scatter_plan would build for the same targets, bit for bit.
void segment_sum_bounds(const float* src, const int32_t* plan, int64_t n, int64_t m, float* out, int64_t d, bool init,
                        const char* op);
// out[idx[i]] = (init ? 0 : out[idx[i]]) + src[i] for i < m, the targets idx distinct (a kUnique plan:
// each row of out has at most one source, so the result is that of segment_sum); src (m, d), out (·, d).
void scatter_unique(const float* src, const int32_t* idx, int64_t m, float* out, int64_t d, bool init, const char* op);
// logits: fp32, or bf16 (a product output kept at bf16 precision), rows ld >= V elements apart (an
// aligned twin or copy of the logits buffer, or the buffer itself).
void cross_entropy(const void* logits, bool bf16, int64_t ld, const int32_t* targets, float* losses, float* lse, int64_t N,
                   int64_t V);
// glogits (or null: only the copy) fp32; g16 (or null): glogits' bf16 copy, rows ld16 >= V apart, zeros in
// columns V .. ld16.
void cross_entropy_backward(const void* logits, bool bf16, int64_t ld, const int32_t* targets, const float* lse,
                            const float* gloss, float* glogits, uint16_t* g16, int64_t ld16, int64_t N, int64_t V);
void row_dot(const float* a, const float* b, float* out, int64_t rows, int64_t cols);
// gx = gy where y > 0 else 0 (and its bf16 copy gx16 unless null); dots[r] = Σ_c gx[r, c]·y[r, c] in f64.
// y16 (or null): y's bf16 copy, read instead of y (an output kept at bf16 precision).
void relu_backward_row_dot(const float* y, const uint16_t* y16, const float* gy, float* gx, uint16_t* gx16, float* dots,
                           int64_t rows, int64_t cols);
void activation_bits(const float* x, int32_t* out, int64_t rows, int64_t cols);
void topk_backward(const float* g, const int32_t* idx, float* gx, int64_t rows, int64_t cols, int64_t k);
void topk(const float* x, float* values, int32_t* indices, int64_t rows, int64_t cols, int64_t k);

// moe.cu
// Most experts expertGroups takes (a shared-memory counter each).
constexpr int64_t kMaxRouteExperts = 12288;
// The MoE routing (Backend.expertGroups) of experts (N·k, each in [0, E), validated by the caller):
// offsets (E + 1), rowToken / rowSlot / rowExpert (N·k); token_plan gets the kListed scatter plan of
// rowToken as targets in [0, N) (N + 1 + N·k ints, plus N + 1 + N·C + 1 when C = ceil(k / kPlanChunk) > 1:
// then chunked into N·C chunks), expert_plan the bounds of rowExpert (E + 1) and then whether some
// expert has more than kPlanChunk rows (the plan of segment_sum_bounds).
void expert_groups(const int32_t* experts, int64_t N, int64_t k, int64_t E, int32_t* offsets, int32_t* row_token,
                   int32_t* row_slot, int32_t* row_expert, int32_t* token_plan, int32_t* expert_plan);

// gemm.cu
// compute: 0 bf16 tensor cores (operands bf16), 1 tf32, 2 plain f32. aType/bType: 0 f32, 1 bf16.
std::string cublas_load(const std::vector<std::string>& paths);
bool cublas_ready();
// bias (n floats, or null) and relu: the epilogue C = act(alpha·op(A)·op(B) + beta·C + bias) (MatmulArgs),
// fused through cuBLASLt where it has an algorithm for the product, else run by bias_act after it.
// bias_grad (m floats, or null; batch 1, no bias or relu): Σ_p op(A)[i, p] through cuBLASLt's BGRADB
// epilogue (alpha 1 only). c16 (or null; batch 1, beta 0, ldc = n, no bias_grad): C's bf16 copy,
// written by the product itself (with bias16, the bias's bf16 copy, as autocast adds it) where
// cuBLASLt has an algorithm for a bf16 output (C is then not written), else cast from C. Returns
// kGemmBiasGrad when bias_grad was written (else the caller sums) | kGemmOnlyC16 when only c16 was; with
// C null (only c16 asked for) kGemmNotDone where the product needs C (nothing was written).
constexpr int kGemmBiasGrad = 1, kGemmOnlyC16 = 2, kGemmNotDone = 4;
int gemm(const void* A, int aType, int64_t lda, int64_t sA, const void* B, int bType, int64_t ldb, int64_t sB, float* C,
         int64_t ldc, int64_t sC, int64_t batch, int64_t m, int64_t n, int64_t k, bool tA, bool tB, float alpha,
         float beta, int compute, const float* bias, bool relu, float* bias_grad, uint16_t* c16, const uint16_t* bias16);
// The epilogue alone, in place on C (batch, m, n; rows ldc, batches sC apart): C = act(C + bias); NaN
// -> 0 under ReLU.
void bias_act(float* C, int64_t ldc, int64_t sC, int64_t batch, int64_t m, int64_t n, const float* bias, bool relu);
// grouped.cu. Grouped GEMM with the built-in tensor-core kernels (wgmma on Hopper, mma.sync elsewhere)
// on bf16 operands (fp32 C); problems: 9 ints per group (GroupedMatmulArgs). rowsA / rowsB (or null):
// row indices of A / B, device i32, validated by the caller (the virtual-matrix addressing of
// GroupedMatmulArgs.rows). seg (or null): device segment offsets (groups + 1, validated by the caller,
// the last = total): GroupedMatmulArgs.segments. c_bf16: C is bf16 (rounded to nearest even; beta must
// be 0), else fp32. bias (or null), bias_stride, relu: the epilogue of GroupedMatmulArgs (beta 0, !tA;
// checked by the caller).
void grouped_gemm(const uint16_t* A, const int32_t* rowsA, const uint16_t* B, const int32_t* rowsB, void* C, bool c_bf16,
                  const int32_t* problems, int64_t groups, bool tA, bool tB, float alpha, float beta, const int32_t* seg,
                  int64_t total, const float* bias, int64_t bias_stride, bool relu);

// attention.cu. impl 0: tensor cores (D in {16, 32, 64, 128}), reading the bf16 copies q16 of qkv and
// go16 of gout; impl 1: plain fp32 SIMT kernels on qkv / gout (the bf16 pointers unused, may be null).
// out16 / gqkv16 (or null; the tensor-core path only): the output's bf16 copy, written beside it.
void attention(const float* qkv, const uint16_t* q16, float* out, uint16_t* out16, float* lse, int B, int T, int H, int D,
               bool causal, float scale, int impl);
void attention_backward(const float* qkv, const uint16_t* q16, const float* out, const float* lse, const float* gout,
                        const uint16_t* go16, float* gqkv, uint16_t* gqkv16, int B, int T, int H, int D, bool causal,
                        float scale, int impl);
// out (M, N) f32, rows ldc apart = act(alpha · x · wᵀ + bias) for M <= kGemvMaxRows rows of x (f32, or
// bf16 with x_bf16; rows ldx apart) and w (N, K) bf16 (rows ldw apart); bias (N) or null; act: ReLU or
// none. Operands rounded to bf16, fp32 sums (gemv.cu).
constexpr int64_t kGemvMaxRows = 8;
void gemv_bf16(const void* x, bool x_bf16, int64_t ldx, const uint16_t* w, int64_t ldw, float* out, int64_t ldc,
               const float* bias, int64_t M, int64_t N, int64_t K, float alpha, bool relu);
void attention_cached(const float* qkv, float* kc, float* vc, float* out, const int32_t* pos, int B, int T, int H,
                      int D, int Tmax, float scale);

}  // namespace ssdc
