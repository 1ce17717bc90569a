// Fills, casts, strided copies, elementwise ops, deterministic reductions, dropout and AdamW.
#include <cuda_bf16.h>

#include "common.cuh"

namespace ssdc {

namespace {
constexpr int kThreads = 256;

#define GRID_STRIDE(i, n) for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

__device__ __forceinline__ uint16_t f2bf(float x) {
  __nv_bfloat16 h = __float2bfloat16_rn(x);
  return *reinterpret_cast<uint16_t*>(&h);
}
__device__ __forceinline__ float bf2f(uint16_t b) { return __uint_as_float(((uint32_t)b) << 16); }

__global__ void k_fill32(uint32_t* o, int64_t n, uint32_t v) { GRID_STRIDE(i, n) o[i] = v; }
__global__ void k_fill16(uint16_t* o, int64_t n, uint16_t v) { GRID_STRIDE(i, n) o[i] = v; }
__global__ void k_f32_bf16(const float* x, uint16_t* o, int64_t n) { GRID_STRIDE(i, n) o[i] = f2bf(x[i]); }
__global__ void k_f32_bf16_pad(const float* __restrict__ x, uint16_t* __restrict__ o, int64_t rows, int64_t cols,
                               int64_t ld) {
  GRID_STRIDE(i, rows * ld) {
    int64_t r = i / ld, c = i - r * ld;
    o[i] = c < cols ? f2bf(x[r * cols + c]) : (uint16_t)0;
  }
}
__global__ void k_bf16_f32(const uint16_t* x, float* o, int64_t n) { GRID_STRIDE(i, n) o[i] = bf2f(x[i]); }
__global__ void k_i32_f32(const int32_t* x, float* o, int64_t n) { GRID_STRIDE(i, n) o[i] = (float)x[i]; }
__global__ void k_f32_i32(const float* x, int32_t* o, int64_t n) { GRID_STRIDE(i, n) o[i] = (int32_t)x[i]; }

template <class T> __device__ __forceinline__ T add_vals(T a, T b) { return a + b; }
template <> __device__ __forceinline__ uint16_t add_vals<uint16_t>(uint16_t a, uint16_t b) { return f2bf(bf2f(a) + bf2f(b)); }

template <class T>
__global__ void k_copy_strided(const T* __restrict__ src, int64_t so, T* __restrict__ dst, int64_t dof, Dims d, int64_t total,
                               bool acc) {
  GRID_STRIDE(i, total) {
    int64_t rem = i, si = so, di = dof;
    for (int a = d.rank - 1; a >= 0; --a) {
      int64_t idx = rem % d.shape[a];
      rem /= d.shape[a];
      si += idx * d.s0[a];
      di += idx * d.s1[a];
    }
    dst[di] = acc ? add_vals<T>(dst[di], src[si]) : src[si];
  }
}

__device__ __forceinline__ float gelu_f(float x) {
  const float c = 0.7978845608028654f;
  return 0.5f * x * (1.f + tanhf(c * (x + 0.044715f * x * x * x)));
}
__device__ __forceinline__ float gelu_d(float x) {
  const float c = 0.7978845608028654f;
  float th = tanhf(c * (x + 0.044715f * x * x * x));
  return 0.5f * (1.f + th) + 0.5f * x * (1.f - th * th) * c * (1.f + 3.f * 0.044715f * x * x);
}

__global__ void k_unary(int op, const float* __restrict__ x, float* __restrict__ o, int64_t n) {
  GRID_STRIDE(i, n) {
    float v = x[i], r;
    switch (op) {
      case 0: r = v > 0.f ? v : 0.f; break;
      case 1: r = gelu_f(v); break;
      case 2: r = -v; break;
      case 3: r = expf(v); break;
      case 4: r = logf(v); break;
      case 5: r = sqrtf(v); break;
      case 6: r = v * v; break;
      default: r = tanhf(v); break;
    }
    o[i] = r;
  }
}
__global__ void k_unary_bwd(int op, const float* __restrict__ x, const float* __restrict__ gy, float* __restrict__ gx,
                            int64_t n) {
  GRID_STRIDE(i, n) {
    float v = x[i], d;
    switch (op) {
      case 0: d = v > 0.f ? 1.f : 0.f; break;
      case 1: d = gelu_d(v); break;
      case 2: d = -1.f; break;
      case 3: d = expf(v); break;
      case 4: d = 1.f / v; break;
      case 5: d = 0.5f / sqrtf(v); break;
      case 6: d = 2.f * v; break;
      default: { float t = tanhf(v); d = 1.f - t * t; } break;
    }
    gx[i] = op == 0 ? (v > 0.f ? gy[i] : 0.f) : gy[i] * d;
  }
}
__global__ void k_affine(const float* __restrict__ x, float* __restrict__ o, int64_t n, float s, float t) {
  GRID_STRIDE(i, n) o[i] = x[i] * s + t;
}

__device__ __forceinline__ float bin_op(int op, float u, float v) {
  switch (op) {
    case 0: return u + v;
    case 1: return u - v;
    case 2: return u * v;
    default: return u / v;
  }
}
__global__ void k_binary(int op, const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ o, Dims d,
                         int64_t total) {
  GRID_STRIDE(i, total) {
    int64_t rem = i, ia = 0, ib = 0;
    for (int k = d.rank - 1; k >= 0; --k) {
      int64_t idx = rem % d.shape[k];
      rem /= d.shape[k];
      ia += idx * d.s0[k];
      ib += idx * d.s1[k];
    }
    o[i] = bin_op(op, a[ia], b[ib]);
  }
}
__global__ void k_binary_flat(int op, const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ o,
                              int64_t n) {
  GRID_STRIDE(i, n) o[i] = bin_op(op, a[i], b[i]);
}
// a (rows, cols) contiguous, b broadcast along rows: b[j] (the bias-add pattern).
__global__ void k_binary_rowbcast(int op, const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ o,
                                  int64_t n, int64_t cols) {
  GRID_STRIDE(i, n) o[i] = bin_op(op, a[i], b[i % cols]);
}

// Fixed-order block reduction of doubles (blockDim.x threads, power of two).
template <int N>
__device__ double block_sum_d(double v, double* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = N / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  double r = sh[0];
  __syncthreads();
  return r;
}

// reduceSum, inner > 1: block (32, 8) sums rows [c*CH, (c+1)*CH) of one 32-wide column strip.
__global__ void k_colsum_partial(const float* __restrict__ x, double* __restrict__ part, float* __restrict__ out,
                                 int64_t outer, int64_t mid, int64_t inner, int64_t CH, int64_t nch) {
  __shared__ double sh[8][33];
  int64_t col = blockIdx.x * 32LL + threadIdx.x;
  int64_t c = blockIdx.y;
  for (int64_t o = blockIdx.z; o < outer; o += gridDim.z) {
    double acc = 0;
    if (col < inner) {
      int64_t m1 = min(mid, (c + 1) * CH);
      for (int64_t m = c * CH + threadIdx.y; m < m1; m += 8) acc += (double)x[(o * mid + m) * inner + col];
    }
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < inner) {
      double s = 0;
      for (int y = 0; y < 8; ++y) s += sh[y][threadIdx.x];
      if (nch == 1) out[o * inner + col] = (float)s;
      else part[(o * nch + c) * inner + col] = s;
    }
    __syncthreads();
  }
}
__global__ void k_colsum_final(const double* __restrict__ part, float* __restrict__ out, int64_t outer, int64_t inner,
                               int64_t nch) {
  GRID_STRIDE(i, outer * inner) {
    int64_t o = i / inner, col = i % inner;
    double s = 0;
    for (int64_t c = 0; c < nch; ++c) s += part[(o * nch + c) * inner + col];
    out[i] = (float)s;
  }
}
// reduceSum, inner == 1: block per (row, chunk).
__global__ void k_rowsum_partial(const float* __restrict__ x, double* __restrict__ part, float* __restrict__ out,
                                 int64_t rows, int64_t len, int64_t CH, int64_t nch) {
  __shared__ double sh[kThreads];
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    int64_t c = blockIdx.x;
    int64_t m1 = min(len, (c + 1) * CH);
    double acc = 0;
    for (int64_t m = c * CH + threadIdx.x; m < m1; m += kThreads) acc += (double)x[r * len + m];
    double s = block_sum_d<kThreads>(acc, sh);
    if (threadIdx.x == 0) {
      if (nch == 1) out[r] = (float)s;
      else part[r * nch + c] = s;
    }
  }
}

__global__ void k_sumsq_partial(const float* __restrict__ x, int64_t n, double* __restrict__ part) {
  __shared__ double sh[kThreads];
  double acc = 0;
  GRID_STRIDE(i, n) { double v = x[i]; acc += v * v; }
  double s = block_sum_d<kThreads>(acc, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}
__global__ void k_sum_final(const double* __restrict__ part, int64_t n, double* __restrict__ out) {
  __shared__ double sh[kThreads];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) acc += part[i];
  double s = block_sum_d<kThreads>(acc, sh);
  if (threadIdx.x == 0) *out = s;
}

__device__ __forceinline__ uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
  return x;
}
__device__ __forceinline__ uint32_t hash32(uint32_t seed, uint32_t i) {
  uint32_t x = (i * 0x9e3779b1u) ^ seed;
  return lowbias32(lowbias32(x) + seed);
}
__global__ void k_dropout(const float* __restrict__ x, float* __restrict__ o, int64_t n, float p, float inv, uint32_t seed) {
  GRID_STRIDE(i, n) {
    float u = (float)(hash32(seed, (uint32_t)i) >> 8) * (1.0f / 16777216.0f);
    o[i] = u >= p ? x[i] * inv : 0.f;
  }
}

__global__ void k_adamw(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
                        int64_t n, float lr, float b1, float b2, float eps, float wd, float bc1, float bc2, float gs) {
  GRID_STRIDE(i, n) {
    float gi = g[i] * gs;
    float pi = p[i] - lr * wd * p[i];
    float mi = b1 * m[i] + (1.f - b1) * gi;
    float vi = b2 * v[i] + (1.f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
  }
}
}  // namespace

#define LAUNCH(kernel, n, ...)                                                 \
  do {                                                                         \
    if ((n) > 0) {                                                             \
      kernel<<<grid_for((n), kThreads), kThreads, 0, stream()>>>(__VA_ARGS__); \
      check_launch(#kernel);                                                   \
    }                                                                          \
  } while (0)

void fill32(void* out, int64_t n, uint32_t bits) { LAUNCH(k_fill32, n, (uint32_t*)out, n, bits); }
void fill16(void* out, int64_t n, uint16_t bits) { LAUNCH(k_fill16, n, (uint16_t*)out, n, bits); }
void cast_f32_bf16(const float* x, uint16_t* out, int64_t n) { LAUNCH(k_f32_bf16, n, x, out, n); }
void cast_f32_bf16_pad(const float* x, uint16_t* out, int64_t rows, int64_t cols, int64_t ld) {
  LAUNCH(k_f32_bf16_pad, rows * ld, x, out, rows, cols, ld);
}
void cast_bf16_f32(const uint16_t* x, float* out, int64_t n) { LAUNCH(k_bf16_f32, n, x, out, n); }
void cast_i32_f32(const int32_t* x, float* out, int64_t n) { LAUNCH(k_i32_f32, n, x, out, n); }
void cast_f32_i32(const float* x, int32_t* out, int64_t n) { LAUNCH(k_f32_i32, n, x, out, n); }
void copy_bytes(const void* src, void* dst, int64_t bytes) {
  if (bytes > 0) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()), "copy");
}

void copy_strided(int kind, const void* src, int64_t so, void* dst, int64_t dof, const Dims& d, bool acc) {
  int64_t total = 1;
  for (int a = 0; a < d.rank; ++a) total *= d.shape[a];
  if (total == 0) return;
  unsigned g = grid_for(total, kThreads);
  switch (kind) {
    case 0: k_copy_strided<float><<<g, kThreads, 0, stream()>>>((const float*)src, so, (float*)dst, dof, d, total, acc); break;
    case 1: k_copy_strided<uint16_t><<<g, kThreads, 0, stream()>>>((const uint16_t*)src, so, (uint16_t*)dst, dof, d, total, acc); break;
    default: k_copy_strided<int32_t><<<g, kThreads, 0, stream()>>>((const int32_t*)src, so, (int32_t*)dst, dof, d, total, acc); break;
  }
  check_launch("copyStrided");
}

void unary(int op, const float* x, float* out, int64_t n) { LAUNCH(k_unary, n, op, x, out, n); }
void unary_backward(int op, const float* x, const float* gy, float* gx, int64_t n) { LAUNCH(k_unary_bwd, n, op, x, gy, gx, n); }
void affine(const float* x, float* out, int64_t n, float scale, float shift) { LAUNCH(k_affine, n, x, out, n, scale, shift); }

void binary(int op, const float* a, const float* b, float* out, const Dims& d) {
  int64_t total = 1;
  for (int k = 0; k < d.rank; ++k) total *= d.shape[k];
  if (total == 0) return;
  if (d.rank == 1 && d.s0[0] == 1 && d.s1[0] == 1) {
    LAUNCH(k_binary_flat, total, op, a, b, out, total);
  } else if (d.rank == 2 && d.s0[1] == 1 && d.s0[0] == d.shape[1] && d.s1[0] == 0 && d.s1[1] == 1) {
    LAUNCH(k_binary_rowbcast, total, op, a, b, out, total, d.shape[1]);
  } else {
    LAUNCH(k_binary, total, op, a, b, out, d, total);
  }
}

void reduce_sum(const float* x, float* out, int64_t outer, int64_t mid, int64_t inner) {
  if (outer == 0 || inner == 0) return;
  if (mid == 0) {
    fill32(out, outer * inner, 0u);
    return;
  }
  if (inner == 1) {
    int64_t CH = 8192;
    int64_t nch = (mid + CH - 1) / CH;
    Scratch part(nch > 1 ? outer * nch * sizeof(double) : 0);
    dim3 g((unsigned)nch, (unsigned)std::min<int64_t>(outer, 65535));
    k_rowsum_partial<<<g, kThreads, 0, stream()>>>(x, part.as<double>(), out, outer, mid, CH, nch);
    check_launch("reduceSum");
    if (nch > 1) LAUNCH(k_colsum_final, outer, part.as<double>(), out, outer, 1, nch);
    return;
  }
  int64_t CH = 256;
  int64_t nch = (mid + CH - 1) / CH;
  if (nch > 4096) {
    nch = 4096;
    CH = (mid + nch - 1) / nch;
    nch = (mid + CH - 1) / CH;
  }
  Scratch part(nch > 1 ? outer * nch * inner * sizeof(double) : 0);
  dim3 g((unsigned)((inner + 31) / 32), (unsigned)nch, (unsigned)std::min<int64_t>(outer, 65535));
  k_colsum_partial<<<g, dim3(32, 8), 0, stream()>>>(x, part.as<double>(), out, outer, mid, inner, CH, nch);
  check_launch("reduceSum");
  if (nch > 1) LAUNCH(k_colsum_final, outer * inner, part.as<double>(), out, outer, inner, nch);
}

double sum_squares(const float* x, int64_t n) {
  if (n == 0) return 0;
  const int64_t blocks = std::min<int64_t>(1024, (n + kThreads - 1) / kThreads);
  Scratch part((blocks + 1) * sizeof(double));
  double* pp = part.as<double>();
  k_sumsq_partial<<<(unsigned)blocks, kThreads, 0, stream()>>>(x, n, pp);
  check_launch("sumSquares");
  k_sum_final<<<1, kThreads, 0, stream()>>>(pp, blocks, pp + blocks);
  check_launch("sumSquares");
  double r = 0;
  d2h(&r, pp + blocks, sizeof(double));
  return r;
}

void dropout(const float* x, float* out, int64_t n, float p, uint32_t seed) {
  float inv = p < 1.f ? 1.f / (1.f - p) : 0.f;
  LAUNCH(k_dropout, n, x, out, n, p, inv, seed);
}

void adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float b1, float b2, float eps, float wd,
           float bc1, float bc2, float gscale) {
  LAUNCH(k_adamw, n, p, g, m, v, n, lr, b1, b2, eps, wd, bc1, bc2, gscale);
}

}  // namespace ssdc
