// Fused causal / full self-attention (flash-attention style: scores never reach device memory).
// Tensor-core path (D a multiple of 16, D <= 128): 64-query x 64-key tiles, q/k/v, P and dS in bf16
// through WMMA, fp32 scores, online softmax statistics and accumulators in fp32. The backward pass
// recomputes P from the saved logsumexp, in two deterministic kernels (dK/dV per key tile, dQ per
// query tile: no atomics). A plain fp32 SIMT path covers every other head size.
#include <cuda_bf16.h>
#include <mma.h>

#include "common.cuh"

namespace ssdc {

namespace {
using namespace nvcuda;
constexpr int TILE = 64;
constexpr int LDS = TILE + 4;  // f32 score tiles
constexpr int LDP = TILE + 8;  // bf16 P / dS tiles

__host__ __device__ constexpr int ldq(int D) { return D + 8; }
__host__ __device__ constexpr int ldo(int D) { return D + 4; }

__device__ __forceinline__ int64_t qkv_at(int b, int t, int which, int h, int d, int T, int H, int D) {
  return ((((int64_t)b * T + t) * 3 + which) * H + h) * (int64_t)D + d;
}

// Tile loads: each of the 128 threads issues all its 16-byte loads first (TILE·D/512 of them), then
// converts to bf16 and stores, so the latency of global memory is paid once per tile, not per element.
template <int D>
__device__ __forceinline__ void store_bf16x4(__nv_bfloat16* dst, float4 v) {
  __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  uint2 u;
  u.x = *reinterpret_cast<uint32_t*>(&lo);
  u.y = *reinterpret_cast<uint32_t*>(&hi);
  *reinterpret_cast<uint2*>(dst) = u;
}
// Loads rows [t0, t0+64) of slot `which` of head (b, h) into a bf16 tile, zero past T.
template <int D>
__device__ void load_tile(__nv_bfloat16* dst, const float* __restrict__ qkv, int b, int h, int which, int t0, int T, int H) {
  constexpr int V4 = D / 4, PER = TILE * V4 / 128;
  float4 v[PER];
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    int e = threadIdx.x + i * 128, r = e / V4, c = e % V4, t = t0 + r;
    v[i] = t < T ? __ldg(reinterpret_cast<const float4*>(qkv + qkv_at(b, t, which, h, c * 4, T, H, D))) : make_float4(0.f, 0.f, 0.f, 0.f);
  }
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    int e = threadIdx.x + i * 128, r = e / V4, c = e % V4;
    store_bf16x4<D>(dst + r * ldq(D) + c * 4, v[i]);
  }
}
// Loads rows of a (B, T, H, D) tensor (out / gout).
template <int D>
__device__ void load_tile_bthd(__nv_bfloat16* dst, const float* __restrict__ x, int b, int h, int t0, int T, int H) {
  constexpr int V4 = D / 4, PER = TILE * V4 / 128;
  float4 v[PER];
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    int e = threadIdx.x + i * 128, r = e / V4, c = e % V4, t = t0 + r;
    v[i] = t < T ? __ldg(reinterpret_cast<const float4*>(x + (((int64_t)b * T + t) * H + h) * D + c * 4)) : make_float4(0.f, 0.f, 0.f, 0.f);
  }
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    int e = threadIdx.x + i * 128, r = e / V4, c = e % V4;
    store_bf16x4<D>(dst + r * ldq(D) + c * 4, v[i]);
  }
}

// S[16 rows of this warp][64] = A (rows w*16.., D) · Bᵀ (64 keys, D), f32 into smem.
template <int D>
__device__ void warp_scores(float* S, const __nv_bfloat16* A, const __nv_bfloat16* Bm, int warp) {
  for (int j = 0; j < TILE / 16; ++j) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.f);
#pragma unroll
    for (int d = 0; d < D; d += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
      wmma::load_matrix_sync(fa, A + warp * 16 * ldq(D) + d, ldq(D));
      wmma::load_matrix_sync(fb, Bm + j * 16 * ldq(D) + d, ldq(D));
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(S + warp * 16 * LDS + j * 16, acc, LDS, wmma::mem_row_major);
  }
}

template <int D>
__global__ void __launch_bounds__(128) k_fwd(const float* __restrict__ qkv, float* __restrict__ out, float* __restrict__ lse,
                                             int B, int T, int H, bool causal, float scale) {
  extern __shared__ __align__(128) unsigned char smem[];
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* Ks = Qs + TILE * ldq(D);
  __nv_bfloat16* Vs = Ks + TILE * ldq(D);
  float* S = reinterpret_cast<float*>(Vs + TILE * ldq(D));
  __nv_bfloat16* P = reinterpret_cast<__nv_bfloat16*>(S + TILE * LDS);
  float* O = reinterpret_cast<float*>(P + TILE * LDP);

  const int qt = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
  const int q0 = qt * TILE, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  load_tile<D>(Qs, qkv, b, h, 0, q0, T, H);
  for (int e = threadIdx.x; e < TILE * ldo(D); e += blockDim.x) O[e] = 0.f;
  const int r = warp * 16 + (lane >> 1), t = q0 + r, cb = (lane & 1) * 32;
  float m = -INFINITY, l = 0.f;
  const int ntile = (T + TILE - 1) / TILE;
  const int nkv = causal ? min(ntile, qt + 1) : ntile;
  for (int kt = 0; kt < nkv; ++kt) {
    const int k0 = kt * TILE;
    __syncthreads();
    load_tile<D>(Ks, qkv, b, h, 1, k0, T, H);
    load_tile<D>(Vs, qkv, b, h, 2, k0, T, H);
    __syncthreads();
    warp_scores<D>(S, Qs, Ks, warp);
    __syncwarp();
    float mx = -INFINITY;
    float* Sr = S + r * LDS + cb;
    for (int c = 0; c < 32; ++c) {
      int key = k0 + cb + c;
      float s = Sr[c] * scale;
      if (key >= T || (causal && key > t)) s = -INFINITY;
      Sr[c] = s;
      mx = fmaxf(mx, s);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float mn = fmaxf(m, mx);
    const float corr = mn == -INFINITY ? 1.f : __expf(m - mn);
    float ps = 0.f;
    __nv_bfloat16* Pr = P + r * LDP + cb;
    for (int c = 0; c < 32; ++c) {
      float p = mn == -INFINITY ? 0.f : __expf(Sr[c] - mn);
      ps += p;
      Pr[c] = __float2bfloat16_rn(p);
    }
    ps += __shfl_xor_sync(0xffffffffu, ps, 1);
    l = l * corr + ps;
    m = mn;
    float* Or = O + r * ldo(D) + (lane & 1) * (D / 2);
    for (int c = 0; c < D / 2; ++c) Or[c] *= corr;
    __syncwarp();
    for (int c = 0; c < D / 16; ++c) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      float* Op = O + warp * 16 * ldo(D) + c * 16;
      wmma::load_matrix_sync(acc, Op, ldo(D), wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < TILE; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
        wmma::load_matrix_sync(fa, P + warp * 16 * LDP + kk, LDP);
        wmma::load_matrix_sync(fb, Vs + kk * ldq(D) + c * 16, ldq(D));
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(Op, acc, ldo(D), wmma::mem_row_major);
    }
    __syncwarp();
  }
  if (t < T) {
    const float inv = 1.f / l;
    const float* Or = O + r * ldo(D) + (lane & 1) * (D / 2);
    float* dst = out + (((int64_t)b * T + t) * H + h) * D + (lane & 1) * (D / 2);
    for (int c = 0; c < D / 2; ++c) dst[c] = Or[c] * inv;
    if ((lane & 1) == 0) lse[(int64_t)bh * T + t] = m + logf(l);
  }
}

// delta[b, h, t] = Σ_d gout · out
__global__ void k_delta(const float* __restrict__ out, const float* __restrict__ gout, float* __restrict__ delta, int B,
                        int T, int H, int D) {
  int64_t n = (int64_t)B * T * H;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t bt = i / H;
    int h = (int)(i % H), b = (int)(bt / T), t = (int)(bt % T);
    const float* o = out + i * D;
    const float* g = gout + i * D;
    float s = 0.f;
    for (int d = 0; d < D; ++d) s += o[d] * g[d];
    delta[((int64_t)b * H + h) * T + t] = s;
  }
}

// P and dS for the 16 query rows of this warp against one 64-key tile (S, dP already in smem).
__device__ __forceinline__ void warp_p_ds(const float* S, const float* dP, __nv_bfloat16* Pb, __nv_bfloat16* dSb,
                                          const float* lse_s, const float* delta_s, int warp, int lane, int q0, int k0,
                                          int T, bool causal, float scale) {
  const int r = warp * 16 + (lane >> 1), t = q0 + r, cb = (lane & 1) * 32;
  const float ls = lse_s[r], dl = delta_s[r];
  for (int c = 0; c < 32; ++c) {
    int key = k0 + cb + c;
    bool valid = t < T && key < T && (!causal || key <= t);
    float p = valid ? __expf(S[r * LDS + cb + c] * scale - ls) : 0.f;
    float ds = p * (dP[r * LDS + cb + c] - dl) * scale;
    if (Pb) Pb[r * LDP + cb + c] = __float2bfloat16_rn(p);
    dSb[r * LDP + cb + c] = __float2bfloat16_rn(ds);
  }
}

template <int D>
__global__ void __launch_bounds__(128) k_bwd_kv(const float* __restrict__ qkv, const float* __restrict__ gout,
                                                const float* __restrict__ lse, const float* __restrict__ delta,
                                                float* __restrict__ gqkv, int B, int T, int H, bool causal, float scale) {
  extern __shared__ __align__(128) unsigned char smem[];
  __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* Vs = Ks + TILE * ldq(D);
  __nv_bfloat16* Qs = Vs + TILE * ldq(D);
  __nv_bfloat16* dOs = Qs + TILE * ldq(D);
  float* S = reinterpret_cast<float*>(dOs + TILE * ldq(D));
  float* dP = S + TILE * LDS;
  __nv_bfloat16* Pb = reinterpret_cast<__nv_bfloat16*>(dP + TILE * LDS);
  __nv_bfloat16* dSb = Pb + TILE * LDP;
  float* stage = reinterpret_cast<float*>(dSb + TILE * LDP);
  float* lse_s = stage + TILE * ldo(D);
  float* delta_s = lse_s + TILE;

  const int kt = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
  const int k0 = kt * TILE, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  load_tile<D>(Ks, qkv, b, h, 1, k0, T, H);
  load_tile<D>(Vs, qkv, b, h, 2, k0, T, H);
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> dV[D / 16], dK[D / 16];
  for (int c = 0; c < D / 16; ++c) { wmma::fill_fragment(dV[c], 0.f); wmma::fill_fragment(dK[c], 0.f); }
  const int ntile = (T + TILE - 1) / TILE;
  for (int qt = causal ? kt : 0; qt < ntile; ++qt) {
    const int q0 = qt * TILE;
    __syncthreads();
    load_tile<D>(Qs, qkv, b, h, 0, q0, T, H);
    load_tile_bthd<D>(dOs, gout, b, h, q0, T, H);
    for (int e = threadIdx.x; e < TILE; e += blockDim.x) {
      int t = q0 + e;
      lse_s[e] = t < T ? lse[(int64_t)bh * T + t] : 0.f;
      delta_s[e] = t < T ? delta[(int64_t)bh * T + t] : 0.f;
    }
    __syncthreads();
    warp_scores<D>(S, Qs, Ks, warp);
    warp_scores<D>(dP, dOs, Vs, warp);
    __syncwarp();
    warp_p_ds(S, dP, Pb, dSb, lse_s, delta_s, warp, lane, q0, k0, T, causal, scale);
    __syncthreads();
    // dV += Pᵀ·dO, dK += dSᵀ·Q for this warp's 16 keys.
#pragma unroll
    for (int kk = 0; kk < TILE; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::col_major> aP, aS;
      wmma::load_matrix_sync(aP, Pb + kk * LDP + warp * 16, LDP);
      wmma::load_matrix_sync(aS, dSb + kk * LDP + warp * 16, LDP);
      for (int c = 0; c < D / 16; ++c) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> bO, bQ;
        wmma::load_matrix_sync(bO, dOs + kk * ldq(D) + c * 16, ldq(D));
        wmma::load_matrix_sync(bQ, Qs + kk * ldq(D) + c * 16, ldq(D));
        wmma::mma_sync(dV[c], aP, bO, dV[c]);
        wmma::mma_sync(dK[c], aS, bQ, dK[c]);
      }
    }
  }
  // Write dK then dV through the staging tile.
  for (int which = 1; which <= 2; ++which) {
    __syncthreads();
    for (int c = 0; c < D / 16; ++c)
      wmma::store_matrix_sync(stage + warp * 16 * ldo(D) + c * 16, which == 1 ? dK[c] : dV[c], ldo(D), wmma::mem_row_major);
    __syncthreads();
    for (int e = threadIdx.x; e < TILE * D; e += blockDim.x) {
      int rr = e / D, d = e % D, key = k0 + rr;
      if (key < T) gqkv[qkv_at(b, key, which, h, d, T, H, D)] = stage[rr * ldo(D) + d];
    }
  }
}

template <int D>
__global__ void __launch_bounds__(128) k_bwd_q(const float* __restrict__ qkv, const float* __restrict__ gout,
                                               const float* __restrict__ lse, const float* __restrict__ delta,
                                               float* __restrict__ gqkv, int B, int T, int H, bool causal, float scale) {
  extern __shared__ __align__(128) unsigned char smem[];
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* dOs = Qs + TILE * ldq(D);
  __nv_bfloat16* Ks = dOs + TILE * ldq(D);
  __nv_bfloat16* Vs = Ks + TILE * ldq(D);
  float* S = reinterpret_cast<float*>(Vs + TILE * ldq(D));
  float* dP = S + TILE * LDS;
  __nv_bfloat16* dSb = reinterpret_cast<__nv_bfloat16*>(dP + TILE * LDS);
  float* stage = reinterpret_cast<float*>(dSb + TILE * LDP);
  float* lse_s = stage + TILE * ldo(D);
  float* delta_s = lse_s + TILE;

  const int qt = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
  const int q0 = qt * TILE, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  load_tile<D>(Qs, qkv, b, h, 0, q0, T, H);
  load_tile_bthd<D>(dOs, gout, b, h, q0, T, H);
  for (int e = threadIdx.x; e < TILE; e += blockDim.x) {
    int t = q0 + e;
    lse_s[e] = t < T ? lse[(int64_t)bh * T + t] : 0.f;
    delta_s[e] = t < T ? delta[(int64_t)bh * T + t] : 0.f;
  }
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> dQ[D / 16];
  for (int c = 0; c < D / 16; ++c) wmma::fill_fragment(dQ[c], 0.f);
  const int ntile = (T + TILE - 1) / TILE;
  const int nkv = causal ? min(ntile, qt + 1) : ntile;
  for (int kt = 0; kt < nkv; ++kt) {
    const int k0 = kt * TILE;
    __syncthreads();
    load_tile<D>(Ks, qkv, b, h, 1, k0, T, H);
    load_tile<D>(Vs, qkv, b, h, 2, k0, T, H);
    __syncthreads();
    warp_scores<D>(S, Qs, Ks, warp);
    warp_scores<D>(dP, dOs, Vs, warp);
    __syncwarp();
    warp_p_ds(S, dP, nullptr, dSb, lse_s, delta_s, warp, lane, q0, k0, T, causal, scale);
    __syncwarp();
#pragma unroll
    for (int kk = 0; kk < TILE; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> aS;
      wmma::load_matrix_sync(aS, dSb + warp * 16 * LDP + kk, LDP);
      for (int c = 0; c < D / 16; ++c) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> bK;
        wmma::load_matrix_sync(bK, Ks + kk * ldq(D) + c * 16, ldq(D));
        wmma::mma_sync(dQ[c], aS, bK, dQ[c]);
      }
    }
  }
  __syncthreads();
  for (int c = 0; c < D / 16; ++c)
    wmma::store_matrix_sync(stage + warp * 16 * ldo(D) + c * 16, dQ[c], ldo(D), wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < TILE * D; e += blockDim.x) {
    int rr = e / D, d = e % D, t = q0 + rr;
    if (t < T) gqkv[qkv_at(b, t, 0, h, d, T, H, D)] = stage[rr * ldo(D) + d];
  }
}

template <int D> constexpr size_t fwd_smem() {
  return 3 * TILE * ldq(D) * 2 + TILE * LDS * 4 + TILE * LDP * 2 + TILE * ldo(D) * 4;
}
template <int D> constexpr size_t bwd_smem() {
  return 4 * TILE * ldq(D) * 2 + 2 * TILE * LDS * 4 + 2 * TILE * LDP * 2 + TILE * ldo(D) * 4 + 2 * TILE * 4;
}

template <int D>
void tc_forward(const float* qkv, float* out, float* lse, int B, int T, int H, bool causal, float scale) {
  static bool init = false;
  const size_t sm = fwd_smem<D>();
  if (!init) {
    check(cudaFuncSetAttribute(k_fwd<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm), "attention (smem)");
    init = true;
  }
  dim3 g((T + TILE - 1) / TILE, B * H);
  k_fwd<D><<<g, 128, sm, stream()>>>(qkv, out, lse, B, T, H, causal, scale);
  check_launch("attention");
}
template <int D>
void tc_backward(const float* qkv, const float* gout, const float* lse, const float* delta, float* gqkv, int B, int T,
                 int H, bool causal, float scale) {
  static bool init = false;
  const size_t sm = bwd_smem<D>();
  if (!init) {
    check(cudaFuncSetAttribute(k_bwd_kv<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm), "attentionBackward (smem)");
    check(cudaFuncSetAttribute(k_bwd_q<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm), "attentionBackward (smem)");
    init = true;
  }
  dim3 g((T + TILE - 1) / TILE, B * H);
  k_bwd_kv<D><<<g, 128, sm, stream()>>>(qkv, gout, lse, delta, gqkv, B, T, H, causal, scale);
  check_launch("attentionBackward");
  k_bwd_q<D><<<g, 128, sm, stream()>>>(qkv, gout, lse, delta, gqkv, B, T, H, causal, scale);
  check_launch("attentionBackward");
}

// ---------------------------------------------------------------- SIMT fp32 path (any D)
__global__ void k_simt_fwd(const float* __restrict__ qkv, float* __restrict__ out, float* __restrict__ lse, int B, int T,
                           int H, int D, bool causal, float scale) {
  int64_t n = (int64_t)B * H * T;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int t = (int)(i % T), bh = (int)(i / T), b = bh / H, h = bh % H;
    int S = causal ? t + 1 : T;
    const float* q = qkv + qkv_at(b, t, 0, h, 0, T, H, D);
    float mx = -INFINITY;
    for (int s = 0; s < S; ++s) {
      const float* k = qkv + qkv_at(b, s, 1, h, 0, T, H, D);
      float dot = 0.f;
      for (int d = 0; d < D; ++d) dot += q[d] * k[d];
      mx = fmaxf(mx, dot * scale);
    }
    float sum = 0.f;
    float* o = out + (((int64_t)b * T + t) * H + h) * D;
    for (int d = 0; d < D; ++d) o[d] = 0.f;
    for (int s = 0; s < S; ++s) {
      const float* k = qkv + qkv_at(b, s, 1, h, 0, T, H, D);
      const float* v = qkv + qkv_at(b, s, 2, h, 0, T, H, D);
      float dot = 0.f;
      for (int d = 0; d < D; ++d) dot += q[d] * k[d];
      float p = expf(dot * scale - mx);
      sum += p;
      for (int d = 0; d < D; ++d) o[d] += p * v[d];
    }
    for (int d = 0; d < D; ++d) o[d] /= sum;
    lse[i] = mx + logf(sum);
  }
}
__global__ void k_simt_bwd_q(const float* __restrict__ qkv, const float* __restrict__ gout, const float* __restrict__ lse,
                             const float* __restrict__ delta, float* __restrict__ gqkv, int B, int T, int H, int D,
                             bool causal, float scale) {
  int64_t n = (int64_t)B * H * T;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int t = (int)(i % T), bh = (int)(i / T), b = bh / H, h = bh % H;
    int S = causal ? t + 1 : T;
    const float* q = qkv + qkv_at(b, t, 0, h, 0, T, H, D);
    const float* go = gout + (((int64_t)b * T + t) * H + h) * D;
    float* gq = gqkv + qkv_at(b, t, 0, h, 0, T, H, D);
    for (int d = 0; d < D; ++d) gq[d] = 0.f;
    for (int s = 0; s < S; ++s) {
      const float* k = qkv + qkv_at(b, s, 1, h, 0, T, H, D);
      const float* v = qkv + qkv_at(b, s, 2, h, 0, T, H, D);
      float dot = 0.f, dp = 0.f;
      for (int d = 0; d < D; ++d) { dot += q[d] * k[d]; dp += go[d] * v[d]; }
      float p = expf(dot * scale - lse[i]);
      float ds = p * (dp - delta[i]) * scale;
      for (int d = 0; d < D; ++d) gq[d] += ds * k[d];
    }
  }
}
__global__ void k_simt_bwd_kv(const float* __restrict__ qkv, const float* __restrict__ gout, const float* __restrict__ lse,
                              const float* __restrict__ delta, float* __restrict__ gqkv, int B, int T, int H, int D,
                              bool causal, float scale) {
  int64_t n = (int64_t)B * H * T;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int s = (int)(i % T), bh = (int)(i / T), b = bh / H, h = bh % H;
    const float* k = qkv + qkv_at(b, s, 1, h, 0, T, H, D);
    const float* v = qkv + qkv_at(b, s, 2, h, 0, T, H, D);
    float* gk = gqkv + qkv_at(b, s, 1, h, 0, T, H, D);
    float* gv = gqkv + qkv_at(b, s, 2, h, 0, T, H, D);
    for (int d = 0; d < D; ++d) { gk[d] = 0.f; gv[d] = 0.f; }
    for (int t = causal ? s : 0; t < T; ++t) {
      const float* q = qkv + qkv_at(b, t, 0, h, 0, T, H, D);
      const float* go = gout + (((int64_t)b * T + t) * H + h) * D;
      int64_t row = (int64_t)bh * T + t;
      float dot = 0.f, dp = 0.f;
      for (int d = 0; d < D; ++d) { dot += q[d] * k[d]; dp += go[d] * v[d]; }
      float p = expf(dot * scale - lse[row]);
      float ds = p * (dp - delta[row]) * scale;
      for (int d = 0; d < D; ++d) { gk[d] += ds * q[d]; gv[d] += p * go[d]; }
    }
  }
}

// ---------------------------------------------------------------- KV-cache attention (inference)
constexpr int kMaxPos = 256;
struct PosArgs {
  int32_t pos[kMaxPos];
};
__global__ void k_cache_write(const float* __restrict__ qkv, float* __restrict__ kc, float* __restrict__ vc,
                              const __grid_constant__ PosArgs pa, int b0, int nb, int T, int H, int D, int Tmax) {
  int64_t n = (int64_t)nb * T * H * D;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int d = (int)(i % D);
    int64_t r = i / D;
    int h = (int)(r % H);
    r /= H;
    int t = (int)(r % T), bl = (int)(r / T), b = b0 + bl;
    int64_t dst = (((int64_t)b * H + h) * Tmax + pa.pos[bl] + t) * D + d;
    kc[dst] = qkv[qkv_at(b, t, 1, h, d, T, H, D)];
    vc[dst] = qkv[qkv_at(b, t, 2, h, d, T, H, D)];
  }
}
// One block per (b, t, h); scores in dynamic smem (Tmax floats) + q (D floats).
__global__ void k_cache_attend(const float* __restrict__ qkv, const float* __restrict__ kc, const float* __restrict__ vc,
                               float* __restrict__ out, const __grid_constant__ PosArgs pa, int b0, int T, int H, int D,
                               int Tmax, float scale) {
  extern __shared__ float sm[];
  float* q = sm;
  float* sc = sm + D;
  __shared__ float red[32];
  const int h = blockIdx.x % H, t = (blockIdx.x / H) % T, bl = blockIdx.x / (H * T), b = b0 + bl;
  const int S = pa.pos[bl] + t + 1;
  for (int d = threadIdx.x; d < D; d += blockDim.x) q[d] = qkv[qkv_at(b, t, 0, h, d, T, H, D)];
  __syncthreads();
  const float* K = kc + ((int64_t)b * H + h) * Tmax * D;
  const float* V = vc + ((int64_t)b * H + h) * Tmax * D;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < S; j += blockDim.x) {
    float dot = 0.f;
    for (int d = 0; d < D; ++d) dot += q[d] * K[(int64_t)j * D + d];
    dot *= scale;
    sc[j] = dot;
    mx = fmaxf(mx, dot);
  }
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
  __syncthreads();
  mx = -INFINITY;
  for (int w = 0; w < (int)(blockDim.x >> 5); ++w) mx = fmaxf(mx, red[w]);
  __syncthreads();
  float s = 0.f;
  for (int j = threadIdx.x; j < S; j += blockDim.x) {
    float p = __expf(sc[j] - mx);
    sc[j] = p;
    s += p;
  }
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
  __syncthreads();
  s = 0.f;
  for (int w = 0; w < (int)(blockDim.x >> 5); ++w) s += red[w];
  const float inv = 1.f / s;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < S; ++j) acc += sc[j] * V[(int64_t)j * D + d];
    out[(((int64_t)b * T + t) * H + h) * D + d] = acc * inv;
  }
}

bool use_tc(int D, int impl) { return impl == 0 && (D == 16 || D == 32 || D == 64 || D == 128); }
}  // namespace

void attention(const float* qkv, float* out, float* lse, int B, int T, int H, int D, bool causal, float scale, int impl) {
  if ((int64_t)B * T * H == 0) return;
  if (D == 0) {
    fill32(lse, (int64_t)B * H * T, 0u);  // degenerate; not used by the model
    return;
  }
  if (use_tc(D, impl)) {
    switch (D) {
      case 16: tc_forward<16>(qkv, out, lse, B, T, H, causal, scale); return;
      case 32: tc_forward<32>(qkv, out, lse, B, T, H, causal, scale); return;
      case 64: tc_forward<64>(qkv, out, lse, B, T, H, causal, scale); return;
      default: tc_forward<128>(qkv, out, lse, B, T, H, causal, scale); return;
    }
  }
  int64_t n = (int64_t)B * H * T;
  k_simt_fwd<<<grid_for(n, 128), 128, 0, stream()>>>(qkv, out, lse, B, T, H, D, causal, scale);
  check_launch("attention");
}

void attention_backward(const float* qkv, const float* out, const float* lse, const float* gout, float* gqkv, int B,
                        int T, int H, int D, bool causal, float scale, int impl) {
  int64_t n = (int64_t)B * H * T;
  if (n == 0 || D == 0) return;
  Scratch delta(n * sizeof(float));
  k_delta<<<grid_for(n, 256), 256, 0, stream()>>>(out, gout, delta.as<float>(), B, T, H, D);
  check_launch("attentionBackward");
  if (use_tc(D, impl)) {
    switch (D) {
      case 16: tc_backward<16>(qkv, gout, lse, delta.as<float>(), gqkv, B, T, H, causal, scale); return;
      case 32: tc_backward<32>(qkv, gout, lse, delta.as<float>(), gqkv, B, T, H, causal, scale); return;
      case 64: tc_backward<64>(qkv, gout, lse, delta.as<float>(), gqkv, B, T, H, causal, scale); return;
      default: tc_backward<128>(qkv, gout, lse, delta.as<float>(), gqkv, B, T, H, causal, scale); return;
    }
  }
  k_simt_bwd_q<<<grid_for(n, 128), 128, 0, stream()>>>(qkv, gout, lse, delta.as<float>(), gqkv, B, T, H, D, causal, scale);
  check_launch("attentionBackward");
  k_simt_bwd_kv<<<grid_for(n, 128), 128, 0, stream()>>>(qkv, gout, lse, delta.as<float>(), gqkv, B, T, H, D, causal, scale);
  check_launch("attentionBackward");
}

void attention_cached(const float* qkv, float* kc, float* vc, float* out, const int32_t* pos_host, int B, int T, int H,
                      int D, int Tmax, float scale) {
  if ((int64_t)B * T * H == 0 || D == 0) return;
  const size_t sm = (size_t)(Tmax + D) * sizeof(float);
  static size_t sm_set = 48 * 1024;
  if (sm > sm_set) {
    check(cudaFuncSetAttribute(k_cache_attend, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm), "attentionCached (smem)");
    sm_set = sm;
  }
  for (int b0 = 0; b0 < B; b0 += kMaxPos) {
    int nb = std::min(kMaxPos, B - b0);
    PosArgs pa;
    for (int i = 0; i < nb; ++i) pa.pos[i] = pos_host[b0 + i];
    int64_t n = (int64_t)nb * T * H * D;
    k_cache_write<<<grid_for(n, 256), 256, 0, stream()>>>(qkv, kc, vc, pa, b0, nb, T, H, D, Tmax);
    check_launch("attentionCached");
    k_cache_attend<<<(unsigned)(nb * T * H), 128, sm, stream()>>>(qkv, kc, vc, out, pa, b0, T, H, D, Tmax, scale);
    check_launch("attentionCached");
  }
}

}  // namespace ssdc
