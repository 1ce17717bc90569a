// Products of a few rows with a weight matrix (decode: 1 to kGemvMaxRows tokens per step), where
// cuBLAS runs a split-K tile kernel plus a reduction at a fraction of the memory bandwidth. Each warp
// computes one output column n: it streams row n of W (bf16, 16-byte loads) once for all M rows of x,
// so the kernel reads W at close to the memory bandwidth. The operands are rounded to bf16 as the GEMM
// path rounds them (x may be f32, rounded on load, or already bf16) and the products summed in fp32:
// the GEMM's numerics up to the order of the sums (fixed: deterministic).
#include <cuda_bf16.h>

#include "common.cuh"

namespace ssdc {

namespace {
constexpr int kWarps = 8;

__device__ __forceinline__ float bf_lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf_hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }
__device__ __forceinline__ float round_bf16(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

// Eight consecutive x values of row m at column k as floats rounded to bf16.
template <bool XBF16>
__device__ __forceinline__ void load_x8(const void* x, int64_t ldx, int m, int64_t k, float v[8]) {
  if (XBF16) {
    const uint4 u = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(x) + m * ldx + k);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) { v[2 * j] = bf_lo(w[j]); v[2 * j + 1] = bf_hi(w[j]); }
  } else {
    const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(x) + m * ldx + k);
    const float4 a = p[0], b = p[1];
    const float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = round_bf16(f[j]);
  }
}
template <bool XBF16>
__device__ __forceinline__ float load_x1(const void* x, int64_t ldx, int m, int64_t k) {
  return XBF16 ? __uint_as_float((uint32_t)static_cast<const uint16_t*>(x)[m * ldx + k] << 16)
               : round_bf16(static_cast<const float*>(x)[m * ldx + k]);
}

// out[m, n] = act(alpha · Σ_k x[m, k] · w[n, k] + bias[n]) for m < M, one warp per n. VEC: K, ldx and
// ldw multiples of 8 (16-byte loads of aligned rows); otherwise element by element.
template <int M, bool XBF16, bool VEC>
__global__ void __launch_bounds__(kWarps * 32) k_gemv(const void* __restrict__ x, int64_t ldx,
                                                      const uint16_t* __restrict__ w, int64_t ldw, float* __restrict__ out,
                                                      int64_t ldc, const float* __restrict__ bias, int64_t N, int64_t K,
                                                      float alpha, bool relu) {
  const int lane = threadIdx.x & 31;
  const int64_t n = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (n >= N) return;
  const uint16_t* wr = w + n * ldw;
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.f;
  if (VEC) {
    // kUnroll chunks of 8 per lane per step, their weight loads issued together (latency, not
    // bandwidth, bounds a warp's few loads).
    constexpr int kUnroll = 4;
    for (int64_t k0 = (int64_t)lane * 8; k0 < K; k0 += 32 * 8 * kUnroll) {
      uint4 u[kUnroll];
#pragma unroll
      for (int c = 0; c < kUnroll; ++c) {
        const int64_t k = k0 + (int64_t)c * 32 * 8;
        u[c] = k < K ? *reinterpret_cast<const uint4*>(wr + k) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int c = 0; c < kUnroll; ++c) {
        const int64_t k = k0 + (int64_t)c * 32 * 8;
        if (k >= K) break;
        const uint32_t q[4] = {u[c].x, u[c].y, u[c].z, u[c].w};
        float wv[8];
#pragma unroll
        for (int j = 0; j < 4; ++j) { wv[2 * j] = bf_lo(q[j]); wv[2 * j + 1] = bf_hi(q[j]); }
#pragma unroll
        for (int m = 0; m < M; ++m) {
          float xv[8];
          load_x8<XBF16>(x, ldx, m, k, xv);
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[m] = fmaf(xv[j], wv[j], acc[m]);
        }
      }
    }
  } else {
    for (int64_t k = lane; k < K; k += 32) {
      const float wv = __uint_as_float((uint32_t)wr[k] << 16);
#pragma unroll
      for (int m = 0; m < M; ++m) acc[m] = fmaf(load_x1<XBF16>(x, ldx, m, k), wv, acc[m]);
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
    for (int o = 16; o > 0; o >>= 1) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], o);
  }
  if (lane < M) {
    float v = acc[0];
#pragma unroll
    for (int m = 1; m < M; ++m) if (lane == m) v = acc[m];
    v *= alpha;
    if (bias) v += bias[n];
    if (relu) v = fmaxf(v, 0.f);
    out[lane * ldc + n] = v;
  }
}

template <int M>
void launch(const void* x, bool x_bf16, int64_t ldx, const uint16_t* w, int64_t ldw, float* out, int64_t ldc,
            const float* bias, int64_t N, int64_t K, float alpha, bool relu) {
  const bool vec = K % 8 == 0 && ldx % 8 == 0 && ldw % 8 == 0;
  const unsigned grid = (unsigned)((N + kWarps - 1) / kWarps);
  const int threads = kWarps * 32;
  if (x_bf16) {
    if (vec) k_gemv<M, true, true><<<grid, threads, 0, stream()>>>(x, ldx, w, ldw, out, ldc, bias, N, K, alpha, relu);
    else k_gemv<M, true, false><<<grid, threads, 0, stream()>>>(x, ldx, w, ldw, out, ldc, bias, N, K, alpha, relu);
  } else {
    if (vec) k_gemv<M, false, true><<<grid, threads, 0, stream()>>>(x, ldx, w, ldw, out, ldc, bias, N, K, alpha, relu);
    else k_gemv<M, false, false><<<grid, threads, 0, stream()>>>(x, ldx, w, ldw, out, ldc, bias, N, K, alpha, relu);
  }
}
}  // namespace

void gemv_bf16(const void* x, bool x_bf16, int64_t ldx, const uint16_t* w, int64_t ldw, float* out, int64_t ldc,
               const float* bias, int64_t M, int64_t N, int64_t K, float alpha, bool relu) {
  if (M == 0 || N == 0) return;
  switch (M) {
    case 1: launch<1>(x, x_bf16, ldx, w, ldw, out, ldc, bias, N, K, alpha, relu); break;
    case 2: launch<2>(x, x_bf16, ldx, w, ldw, out, ldc, bias, N, K, alpha, relu); break;
    case 3: launch<3>(x, x_bf16, ldx, w, ldw, out, ldc, bias, N, K, alpha, relu); break;
    case 4: launch<4>(x, x_bf16, ldx, w, ldw, out, ldc, bias, N, K, alpha, relu); break;
    case 5: launch<5>(x, x_bf16, ldx, w, ldw, out, ldc, bias, N, K, alpha, relu); break;
    case 6: launch<6>(x, x_bf16, ldx, w, ldw, out, ldc, bias, N, K, alpha, relu); break;
    case 7: launch<7>(x, x_bf16, ldx, w, ldw, out, ldc, bias, N, K, alpha, relu); break;
    case 8: launch<8>(x, x_bf16, ldx, w, ldw, out, ldc, bias, N, K, alpha, relu); break;
    default: throw CudaError("gemv: " + std::to_string(M) + " rows (at most " + std::to_string(kGemvMaxRows) + ")");
  }
  check_launch("matmul (gemv)");
}

}  // namespace ssdc
