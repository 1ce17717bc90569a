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
// 8 elements per step: two 16-byte loads, one 16-byte store (buffers are allocation-aligned), then the tail.
__global__ void k_f32_bf16(const float* __restrict__ x, uint16_t* __restrict__ o, int64_t n) {
  const int64_t n8 = n / 8;
  GRID_STRIDE(i, n8) {
    const float4 a = reinterpret_cast<const float4*>(x)[2 * i], b = reinterpret_cast<const float4*>(x)[2 * i + 1];
    uint4 u;
    u.x = f2bf(a.x) | ((uint32_t)f2bf(a.y) << 16);
    u.y = f2bf(a.z) | ((uint32_t)f2bf(a.w) << 16);
    u.z = f2bf(b.x) | ((uint32_t)f2bf(b.y) << 16);
    u.w = f2bf(b.z) | ((uint32_t)f2bf(b.w) << 16);
    reinterpret_cast<uint4*>(o)[i] = u;
  }
  GRID_STRIDE(i, n - 8 * n8) o[8 * n8 + i] = f2bf(x[8 * n8 + i]);
}
// (rows, cols) f32 -> (out_rows, ld) bf16, zeros outside; ld even. Grid (column pairs, rows): no
// 64-bit division per element, one 4-byte store per thread.
__global__ void k_f32_bf16_pad(const float* __restrict__ x, uint32_t* __restrict__ o, int64_t rows, int64_t cols,
                               int64_t out_rows, int64_t ld) {
  const int64_t half = ld / 2;
  for (int64_t r = blockIdx.y; r < out_rows; r += gridDim.y) {
    const float* xr = x + r * cols;
    for (int64_t c2 = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c2 < half; c2 += (int64_t)gridDim.x * blockDim.x) {
      const int64_t c = 2 * c2;
      const uint32_t lo = r < rows && c < cols ? f2bf(xr[c]) : 0u, hi = r < rows && c + 1 < cols ? f2bf(xr[c + 1]) : 0u;
      o[r * half + c2] = lo | (hi << 16);
    }
  }
}
__global__ void k_bf16_f32(const uint16_t* x, float* o, int64_t n) { GRID_STRIDE(i, n) o[i] = bf2f(x[i]); }
// o (rows, cols) = the bf16 rows of x, ld apart (the reverse of k_f32_bf16_pad's columns).
__global__ void k_bf16_f32_unpad(const uint16_t* __restrict__ x, float* __restrict__ o, int64_t rows, int64_t cols, int64_t ld) {
  GRID_STRIDE(i, rows * cols) {
    const int64_t r = i / cols;
    o[i] = bf2f(x[r * ld + (i - r * cols)]);
  }
}
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

__device__ __forceinline__ float unary_f(int op, float v) {
  switch (op) {
    case 0: return v > 0.f ? v : 0.f;
    case 1: return gelu_f(v);
    case 2: return -v;
    case 3: return expf(v);
    case 4: return logf(v);
    case 5: return sqrtf(v);
    case 6: return v * v;
    default: return tanhf(v);
  }
}
// gy · op'(x); relu selects gy where x > 0 and 0 elsewhere (no multiply, so an infinite gy gives no NaN).
__device__ __forceinline__ float unary_grad(int op, float v, float g) {
  switch (op) {
    case 0: return v > 0.f ? g : 0.f;
    case 1: return g * gelu_d(v);
    case 2: return -g;
    case 3: return g * expf(v);
    case 4: return g * (1.f / v);
    case 5: return g * (0.5f / sqrtf(v));
    case 6: return g * (2.f * v);
    default: { float t = tanhf(v); return g * (1.f - t * t); }
  }
}
// Both kernels: 16-byte accesses over the first n / 4 quads (buffers are allocation-aligned), then the tail.
__global__ void k_unary(int op, const float* __restrict__ x, float* __restrict__ o, int64_t n) {
  const int64_t n4 = n / 4;
  GRID_STRIDE(i, n4) {
    const float4 v = reinterpret_cast<const float4*>(x)[i];
    reinterpret_cast<float4*>(o)[i] = make_float4(unary_f(op, v.x), unary_f(op, v.y), unary_f(op, v.z), unary_f(op, v.w));
  }
  GRID_STRIDE(i, n - 4 * n4) o[4 * n4 + i] = unary_f(op, x[4 * n4 + i]);
}
// With x16 (ReLU only) x is read from its bf16 copy (widened: the same sign).
__global__ void k_unary_bwd(int op, const float* __restrict__ x, const __nv_bfloat16* __restrict__ x16,
                            const float* __restrict__ gy, float* __restrict__ gx, __nv_bfloat16* __restrict__ gx16, int64_t n) {
  const int64_t n4 = n / 4;
  GRID_STRIDE(i, n4) {
    float4 v;
    if (x16) {
      const uint2 u = reinterpret_cast<const uint2*>(x16)[i];
      v = make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                      __uint_as_float(u.y & 0xffff0000u));
    } else {
      v = reinterpret_cast<const float4*>(x)[i];
    }
    const float4 g = reinterpret_cast<const float4*>(gy)[i];
    const float4 r = make_float4(unary_grad(op, v.x, g.x), unary_grad(op, v.y, g.y), unary_grad(op, v.z, g.z),
                                 unary_grad(op, v.w, g.w));
    reinterpret_cast<float4*>(gx)[i] = r;
    if (gx16) {
      __nv_bfloat162 lo = __floats2bfloat162_rn(r.x, r.y), hi = __floats2bfloat162_rn(r.z, r.w);
      uint2 u;
      u.x = *reinterpret_cast<uint32_t*>(&lo);
      u.y = *reinterpret_cast<uint32_t*>(&hi);
      reinterpret_cast<uint2*>(gx16)[i] = u;
    }
  }
  GRID_STRIDE(i, n - 4 * n4) {
    const float r = unary_grad(op, x16 ? __bfloat162float(x16[4 * n4 + i]) : x[4 * n4 + i], gy[4 * n4 + i]);
    gx[4 * n4 + i] = r;
    if (gx16) gx16[4 * n4 + i] = __float2bfloat16(r);
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
__device__ __forceinline__ float4 bin_op4(int op, float4 u, float4 v) {
  return make_float4(bin_op(op, u.x, v.x), bin_op(op, u.y, v.y), bin_op(op, u.z, v.z), bin_op(op, u.w, v.w));
}
// Same-shape operands, 16-byte accesses (buffers are allocation-aligned), then the scalar tail. No
// __restrict__: the output may alias an operand (gradient accumulation a += b).
__global__ void k_binary_flat(int op, const float* a, const float* b, float* o, int64_t n) {
  const int64_t n4 = n / 4;
  GRID_STRIDE(i, n4) {
    reinterpret_cast<float4*>(o)[i] = bin_op4(op, reinterpret_cast<const float4*>(a)[i], reinterpret_cast<const float4*>(b)[i]);
  }
  GRID_STRIDE(i, n - 4 * n4) o[4 * n4 + i] = bin_op(op, a[4 * n4 + i], b[4 * n4 + i]);
}
// a (rows, cols) contiguous, b broadcast along rows: b[j] (the bias-add pattern). Grid (columns, rows):
// no 64-bit modulo per element; 16-byte accesses when cols % 4 == 0.
__global__ void k_binary_rowbcast(int op, const float* a, const float* b, float* o, int64_t rows, int64_t cols) {
  const bool vec = cols % 4 == 0;
  const int64_t w = vec ? cols / 4 : cols;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < w; j += (int64_t)gridDim.x * blockDim.x) {
      if (vec) {
        reinterpret_cast<float4*>(o + r * cols)[j] =
            bin_op4(op, reinterpret_cast<const float4*>(a + r * cols)[j], reinterpret_cast<const float4*>(b)[j]);
      } else {
        o[r * cols + j] = bin_op(op, a[r * cols + j], b[j]);
      }
    }
  }
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

// reduceSum, inner > 1: block (32, 8) sums rows [c*CH, (c+1)*CH) of a strip of 32·W columns, W
// consecutive columns per thread (W = 4: one 16-byte load per row, for inner % 4 == 0); the row loop is
// unrolled so several loads are in flight. Fixed order: deterministic.
template <int W>
__global__ void k_colsum_partial(const float* __restrict__ x, double* __restrict__ part, float* __restrict__ out,
                                 int64_t outer, int64_t mid, int64_t inner, int64_t CH, int64_t nch) {
  __shared__ double sh[8][32 * W + 1];
  const int64_t col = (blockIdx.x * 32LL + threadIdx.x) * W, c = blockIdx.y;
  for (int64_t o = blockIdx.z; o < outer; o += gridDim.z) {
    double acc[W] = {};
    if (col < inner) {
      const int64_t m1 = min(mid, (c + 1) * CH);
#pragma unroll 4
      for (int64_t m = c * CH + threadIdx.y; m < m1; m += 8) {
        const float* p = x + (o * mid + m) * inner + col;
        if constexpr (W == 4) {
          const float4 v = *reinterpret_cast<const float4*>(p);
          acc[0] += v.x; acc[1] += v.y; acc[2] += v.z; acc[3] += v.w;
        } else {
          acc[0] += *p;
        }
      }
    }
#pragma unroll
    for (int w = 0; w < W; ++w) sh[threadIdx.y][threadIdx.x * W + w] = acc[w];
    __syncthreads();
    for (int t = threadIdx.y * 32 + threadIdx.x; t < 32 * W; t += 256) {
      const int64_t cc = blockIdx.x * 32LL * W + t;
      if (cc >= inner) continue;
      double sum = 0;
      for (int y = 0; y < 8; ++y) sum += sh[y][t];
      if (nch == 1) out[o * inner + cc] = (float)sum;
      else part[(o * nch + c) * inner + cc] = sum;
    }
    __syncthreads();
  }
}
// out[o, col] = the sum of the nch partials of column col: block (32, 8) over 32 columns of slice
// blockIdx.y, row y of threads adding chunks y, y + 8, ... (8 loads in flight per column instead of one
// chain of nch), then the 8 sums in order. Fixed order: deterministic.
__global__ void k_colsum_final(const double* __restrict__ part, float* __restrict__ out, int64_t outer, int64_t inner,
                               int64_t nch) {
  __shared__ double sh[8][33];
  const int64_t col = blockIdx.x * 32LL + threadIdx.x;
  for (int64_t o = blockIdx.y; o < outer; o += gridDim.y) {
    double s = 0;
    if (col < inner)
      for (int64_t c = threadIdx.y; c < nch; c += 8) s += part[(o * nch + c) * inner + col];
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < inner) {
      double t = 0;
      for (int y = 0; y < 8; ++y) t += sh[y][threadIdx.x];
      out[o * inner + col] = (float)t;
    }
    __syncthreads();
  }
}
void colsum_final(const double* part, float* out, int64_t outer, int64_t inner, int64_t nch) {
  k_colsum_final<<<dim3((unsigned)((inner + 31) / 32), (unsigned)std::min<int64_t>(outer, 65535)), dim3(32, 8), 0,
                   stream()>>>(part, out, outer, inner, nch);
  check_launch("reduceSum");
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

// The partial sums of several buffers in one launch: block b belongs to buffer i where
// table.start[i] <= b < table.start[i + 1], and runs as block b − start[i] of that buffer's own grid of
// start[i + 1] − start[i] blocks, striding over the buffer by that grid's threads.
struct SumsqTable {
  const float* const* x;
  const int64_t* n;
  const int64_t* start;
  int count;
};
__global__ void k_sumsq_multi(SumsqTable t, double* __restrict__ part) {
  __shared__ double sh[kThreads];
  int lo = 0, hi = t.count - 1;
  const int64_t b = blockIdx.x;
  while (lo < hi) {  // the last buffer whose first block is <= b
    const int mid = (lo + hi + 1) / 2;
    if (t.start[mid] <= b) lo = mid; else hi = mid - 1;
  }
  const float* __restrict__ x = t.x[lo];
  const int64_t n = t.n[lo], stride = (t.start[lo + 1] - t.start[lo]) * kThreads;
  double acc = 0;
  for (int64_t i = (b - t.start[lo]) * kThreads + threadIdx.x; i < n; i += stride) { double v = x[i]; acc += v * v; }
  double s = block_sum_d<kThreads>(acc, sh);
  if (threadIdx.x == 0) part[b] = s;
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

__device__ __forceinline__ void adamw_one(float& p, float g, float& m, float& v, float lr, float b1, float b2, float eps,
                                          float wd, float bc1, float bc2, float gs) {
  const float gi = g * gs;
  const float pi = p - lr * wd * p;
  m = b1 * m + (1.f - b1) * gi;
  v = b2 * v + (1.f - b2) * gi * gi;
  p = pi - lr * (m / bc1) / (sqrtf(v / bc2) + eps);
}
// 16-byte accesses over the first n / 4 quads, then the tail (memory-bound: 28 bytes per element).
// With p16 the updated parameters' bf16 copy is written beside them (the cast the next product would
// otherwise run: it reads p again), with the cast's rounding (f2bf).
__global__ void k_adamw(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
                        uint16_t* __restrict__ p16, int64_t n, float lr, float b1, float b2, float eps, float wd, float bc1,
                        float bc2, float gs) {
  const int64_t n4 = n / 4;
  GRID_STRIDE(i, n4) {
    float4 P = reinterpret_cast<float4*>(p)[i], M = reinterpret_cast<float4*>(m)[i], V = reinterpret_cast<float4*>(v)[i];
    const float4 G = reinterpret_cast<const float4*>(g)[i];
    adamw_one(P.x, G.x, M.x, V.x, lr, b1, b2, eps, wd, bc1, bc2, gs);
    adamw_one(P.y, G.y, M.y, V.y, lr, b1, b2, eps, wd, bc1, bc2, gs);
    adamw_one(P.z, G.z, M.z, V.z, lr, b1, b2, eps, wd, bc1, bc2, gs);
    adamw_one(P.w, G.w, M.w, V.w, lr, b1, b2, eps, wd, bc1, bc2, gs);
    reinterpret_cast<float4*>(p)[i] = P;
    reinterpret_cast<float4*>(m)[i] = M;
    reinterpret_cast<float4*>(v)[i] = V;
    if (p16) reinterpret_cast<uint2*>(p16)[i] = make_uint2(f2bf(P.x) | ((uint32_t)f2bf(P.y) << 16), f2bf(P.z) | ((uint32_t)f2bf(P.w) << 16));
  }
  GRID_STRIDE(i, n - 4 * n4) {
    const int64_t j = 4 * n4 + i;
    adamw_one(p[j], g[j], m[j], v[j], lr, b1, b2, eps, wd, bc1, bc2, gs);
    if (p16) p16[j] = f2bf(p[j]);
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

void fill32(void* out, int64_t n, uint32_t bits) {
  // Zeros (zeroGrad: 148 buffers a step) go through the driver's cudaMemsetAsync.
  if (bits == 0 && n > 0) check(cudaMemsetAsync(out, 0, (size_t)n * 4, stream()), "fill");
  else LAUNCH(k_fill32, n, (uint32_t*)out, n, bits);
}
void fill16(void* out, int64_t n, uint16_t bits) { LAUNCH(k_fill16, n, (uint16_t*)out, n, bits); }
void cast_f32_bf16(const float* x, uint16_t* out, int64_t n) { LAUNCH(k_f32_bf16, (n + 7) / 8, x, out, n); }
void cast_f32_bf16_pad(const float* x, uint16_t* out, int64_t rows, int64_t cols, int64_t out_rows, int64_t ld) {
  if (out_rows == 0 || ld == 0) return;
  if (ld % 2 != 0) throw CudaError("castPad: the padded leading dimension must be even");
  dim3 g(grid_for(ld / 2, kThreads, 64), (unsigned)std::min<int64_t>(out_rows, 65535));
  k_f32_bf16_pad<<<g, kThreads, 0, stream()>>>(x, reinterpret_cast<uint32_t*>(out), rows, cols, out_rows, ld);
  check_launch("castPad");
}
void cast_bf16_f32_unpad(const uint16_t* x, float* out, int64_t rows, int64_t cols, int64_t ld) {
  LAUNCH(k_bf16_f32_unpad, rows * cols, x, out, rows, cols, ld);
}
void copy_2d(const void* src, int64_t src_pitch, void* dst, int64_t dst_pitch, int64_t width, int64_t rows) {
  if (width == 0 || rows == 0) return;
  check(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows, cudaMemcpyDeviceToDevice, stream()), "copy2d");
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

void unary(int op, const float* x, float* out, int64_t n) { LAUNCH(k_unary, (n + 3) / 4, op, x, out, n); }
void unary_backward(int op, const float* x, const uint16_t* x16, const float* gy, float* gx, uint16_t* gx16, int64_t n) {
  if (x16 && op != 0) throw CudaError("unaryBackward: only ReLU reads its input's bf16 copy");
  LAUNCH(k_unary_bwd, (n + 3) / 4, op, x, reinterpret_cast<const __nv_bfloat16*>(x16), gy, gx,
         reinterpret_cast<__nv_bfloat16*>(gx16), n);
}
void affine(const float* x, float* out, int64_t n, float scale, float shift) { LAUNCH(k_affine, n, x, out, n, scale, shift); }

void binary(int op, const float* a, const float* b, float* out, const Dims& d) {
  int64_t total = 1;
  for (int k = 0; k < d.rank; ++k) total *= d.shape[k];
  if (total == 0) return;
  if (d.rank == 1 && d.s0[0] == 1 && d.s1[0] == 1) {
    k_binary_flat<<<grid_for((total + 3) / 4, kThreads), kThreads, 0, stream()>>>(op, a, b, out, total);
    check_launch("binary");
  } else if (d.rank == 2 && d.s0[1] == 1 && d.s0[0] == d.shape[1] && d.s1[0] == 0 && d.s1[1] == 1) {
    const int64_t rows = d.shape[0], cols = d.shape[1], w = cols % 4 == 0 ? cols / 4 : cols;
    dim3 g(grid_for(w, kThreads, 64), (unsigned)std::min<int64_t>(rows, 65535));
    k_binary_rowbcast<<<g, kThreads, 0, stream()>>>(op, a, b, out, rows, cols);
    check_launch("binary");
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
    if (nch > 1) colsum_final(part.as<double>(), out, outer, 1, nch);
    return;
  }
  // Chunks of 256 rows, smaller when that leaves fewer than ~8 blocks per SM of an H100 / H200 (short,
  // wide sums: the partial sums then run with enough loads in flight, and the final one adds its chunks 8
  // at a time). A constant, not the device's SM count, so that the bits do not depend on the GPU.
  const int W = inner % 4 == 0 ? 4 : 1;
  const int64_t bx = (inner + 32 * W - 1) / (32 * W);
  int64_t CH = 256;
  constexpr int64_t want = 8 * 132;
  if (bx * outer * ((mid + CH - 1) / CH) < want) CH = std::max<int64_t>(8, ((mid * bx * outer + want - 1) / want + 7) / 8 * 8);
  int64_t nch = (mid + CH - 1) / CH;
  if (nch > 4096) {
    nch = 4096;
    CH = (mid + nch - 1) / nch;
    nch = (mid + CH - 1) / CH;
  }
  Scratch part(nch > 1 ? outer * nch * inner * sizeof(double) : 0);
  dim3 g((unsigned)bx, (unsigned)nch, (unsigned)std::min<int64_t>(outer, 65535));
  if (W == 4) k_colsum_partial<4><<<g, dim3(32, 8), 0, stream()>>>(x, part.as<double>(), out, outer, mid, inner, CH, nch);
  else k_colsum_partial<1><<<g, dim3(32, 8), 0, stream()>>>(x, part.as<double>(), out, outer, mid, inner, CH, nch);
  check_launch("reduceSum");
  if (nch > 1) colsum_final(part.as<double>(), out, outer, inner, nch);
}

double sum_squares(const std::vector<const float*>& xs, const std::vector<int64_t>& ns) {
  // Each buffer's blocks write their partial sums into consecutive slots, all in one launch (a table of
  // the non-empty buffers: pointers, sizes, first blocks); one kernel adds all the slots, and one copy
  // brings the total back (one synchronisation for all the buffers).
  std::vector<int64_t> table;  // [x (as int64) × m | n × m | start × (m + 1)]
  std::vector<int64_t> ptrs, sizes, starts{0};
  for (size_t i = 0; i < xs.size(); ++i) {
    if (!ns[i]) continue;
    ptrs.push_back((int64_t)(uintptr_t)xs[i]);
    sizes.push_back(ns[i]);
    starts.push_back(starts.back() + std::min<int64_t>(1024, (ns[i] + kThreads - 1) / kThreads));
  }
  const int64_t total = starts.back(), m = (int64_t)ptrs.size();
  if (total == 0) return 0;
  table.insert(table.end(), ptrs.begin(), ptrs.end());
  table.insert(table.end(), sizes.begin(), sizes.end());
  table.insert(table.end(), starts.begin(), starts.end());
  Scratch part((total + 1) * sizeof(double)), dev_table(table.size() * sizeof(int64_t));
  double* pp = part.as<double>();
  int64_t* dt = dev_table.as<int64_t>();
  h2d_async(dt, table.data(), table.size() * sizeof(int64_t));
  const SumsqTable t{reinterpret_cast<const float* const*>(dt), dt + m, dt + 2 * m, (int)m};
  k_sumsq_multi<<<(unsigned)total, kThreads, 0, stream()>>>(t, pp);
  check_launch("sumSquares");
  k_sum_final<<<1, kThreads, 0, stream()>>>(pp, total, pp + total);
  check_launch("sumSquares");
  double r = 0;
  d2h(&r, pp + total, sizeof(double));
  return r;
}

void dropout(const float* x, float* out, int64_t n, float p, uint32_t seed) {
  float inv = p < 1.f ? 1.f / (1.f - p) : 0.f;
  LAUNCH(k_dropout, n, x, out, n, p, inv, seed);
}

void adamw(float* p, const float* g, float* m, float* v, uint16_t* p16, int64_t n, float lr, float b1, float b2, float eps,
           float wd, float bc1, float bc2, float gscale) {
  LAUNCH(k_adamw, (n + 3) / 4, p, g, m, v, p16, n, lr, b1, b2, eps, wd, bc1, bc2, gscale);
}

}  // namespace ssdc
