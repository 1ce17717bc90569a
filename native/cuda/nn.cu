// NN kernels: softmax, LayerNorm, row gather / deterministic segmented row sums (scatter-add,
// embedding gradient, MoE token combine), softmax cross-entropy, top-k. Statistics and reductions in
// fp32 (fixed-order tree reductions, so results are deterministic). Index operands are validated by
// the TypeScript side (src/backend/cuda/index.ts) before any of these kernels runs.
#include <cfloat>
#include <cmath>
#include <string>
#include <type_traits>

#include <cuda_bf16.h>

#include "common.cuh"

namespace ssdc {

namespace {
constexpr int kT = 256;
// Rows up to this many columns take the warp-per-row top-k; longer ones a block per row.
constexpr int64_t kWarpTopkCols = 1024;
// Rows of at least this many columns get 1024 threads in k_topk.
constexpr int64_t kLongTopkCols = 16384;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Block-wide (kT threads) sum / max, broadcast to all threads. Fixed order: deterministic.
__device__ float block_sum(float v, float* sh) {
  v = warp_sum(v);
  int w = threadIdx.x >> 5, l = threadIdx.x & 31;
  if (l == 0) sh[w] = v;
  __syncthreads();
  float r = l < (kT / 32) ? sh[l] : 0.f;
  r = warp_sum(r);
  __syncthreads();
  return r;
}
__device__ float block_max(float v, float* sh) {
  v = warp_max(v);
  int w = threadIdx.x >> 5, l = threadIdx.x & 31;
  if (l == 0) sh[w] = v;
  __syncthreads();
  float r = l < (kT / 32) ? sh[l] : -INFINITY;
  r = warp_max(r);
  __syncthreads();
  return r;
}

__global__ void k_softmax(const float* __restrict__ x, float* __restrict__ o, int64_t rows, int64_t cols) {
  __shared__ float sh[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x + r * cols;
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < cols; j += kT) mx = fmaxf(mx, xr[j]);
    mx = block_max(mx, sh);
    float s = 0;
    for (int64_t j = threadIdx.x; j < cols; j += kT) s += expf(xr[j] - mx);
    s = block_sum(s, sh);
    float inv = 1.f / s;
    for (int64_t j = threadIdx.x; j < cols; j += kT) o[r * cols + j] = expf(xr[j] - mx) * inv;
  }
}
__global__ void k_softmax_bwd(const float* __restrict__ y, const float* __restrict__ gy, float* __restrict__ gx,
                              int64_t rows, int64_t cols) {
  __shared__ float sh[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t b = r * cols;
    float d = 0;
    for (int64_t j = threadIdx.x; j < cols; j += kT) d += gy[b + j] * y[b + j];
    d = block_sum(d, sh);
    for (int64_t j = threadIdx.x; j < cols; j += kT) gx[b + j] = y[b + j] * (gy[b + j] - d);
  }
}
// Rows of at most 32 columns (the MoE's top-k scores): a warp per row, a lane per column; the max and
// the sums are xor-shuffle trees (every lane ends with the same bits).
constexpr int64_t kWarpRowCols = 32;
__global__ void k_softmax_warp(const float* __restrict__ x, float* __restrict__ o, int64_t rows, int cols) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t r = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
    const float v = lane < cols ? x[r * cols + lane] : -INFINITY;
    const float mx = warp_max(v), e = lane < cols ? expf(v - mx) : 0.f, s = warp_sum(e);
    if (lane < cols) o[r * cols + lane] = e * (1.f / s);
  }
}
__global__ void k_softmax_bwd_warp(const float* __restrict__ y, const float* __restrict__ gy, float* __restrict__ gx,
                                   int64_t rows, int cols) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t r = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
    const float yv = lane < cols ? y[r * cols + lane] : 0.f, g = lane < cols ? gy[r * cols + lane] : 0.f;
    const float d = warp_sum(g * yv);
    if (lane < cols) gx[r * cols + lane] = yv * (g - d);
  }
}

__global__ void k_layer_norm(const float* __restrict__ x, const float* __restrict__ g, const float* __restrict__ bt,
                             float* __restrict__ y, __nv_bfloat16* __restrict__ y16, float* __restrict__ mean,
                             float* __restrict__ rstd, int64_t rows, int64_t cols, float eps) {
  __shared__ float sh[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x + r * cols;
    float s = 0;
    for (int64_t j = threadIdx.x; j < cols; j += kT) s += xr[j];
    float mu = block_sum(s, sh) / (float)cols;
    float v = 0;
    for (int64_t j = threadIdx.x; j < cols; j += kT) { float d = xr[j] - mu; v += d * d; }
    float rs = rsqrtf(block_sum(v, sh) / (float)cols + eps);
    if (threadIdx.x == 0) { mean[r] = mu; rstd[r] = rs; }
    for (int64_t j = threadIdx.x; j < cols; j += kT) {
      const float v = (xr[j] - mu) * rs * g[j] + bt[j];
      y[r * cols + j] = v;
      if (y16) y16[r * cols + j] = __float2bfloat16(v);
    }
  }
}
// Rows of cols % 4 == 0, cols <= 128·MAXV (GPT-2's 768): a warp per row, the row held in registers
// (float4 loads, read once), mean and variance from xor-shuffle trees (two passes over the registers),
// y (when given) and y16 (when given) written with 16- and 8-byte stores.
template <int MAXV>
__global__ void k_layer_norm_warp(const float* __restrict__ x, const float* __restrict__ g, const float* __restrict__ bt,
                                  float* __restrict__ y, __nv_bfloat16* __restrict__ y16, float* __restrict__ mean,
                                  float* __restrict__ rstd, int64_t rows, int cols, float eps) {
  const int lane = threadIdx.x & 31, c4 = cols / 4;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t r = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
    const float4* xr = reinterpret_cast<const float4*>(x + r * cols);
    float4 xv[MAXV], gv[MAXV], bv[MAXV];
    float s = 0.f;
    // The gain and bias are loaded with the row, ahead of the reductions (one memory latency per row).
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
      const int q = lane + 32 * i;
      const float4 z = make_float4(0.f, 0.f, 0.f, 0.f);
      xv[i] = q < c4 ? xr[q] : z;
      gv[i] = q < c4 ? reinterpret_cast<const float4*>(g)[q] : z;
      bv[i] = q < c4 ? reinterpret_cast<const float4*>(bt)[q] : z;
      s += (xv[i].x + xv[i].y) + (xv[i].z + xv[i].w);
    }
    const float mu = warp_sum(s) / (float)cols;
    float v = 0.f;
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
      if (lane + 32 * i >= c4) continue;
      const float a = xv[i].x - mu, b = xv[i].y - mu, c = xv[i].z - mu, d = xv[i].w - mu;
      v += (a * a + b * b) + (c * c + d * d);
    }
    const float rs = rsqrtf(warp_sum(v) / (float)cols + eps);
    if (lane == 0) {
      mean[r] = mu;
      rstd[r] = rs;
    }
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
      const int q = lane + 32 * i;
      if (q >= c4) continue;
      const float4 gq = gv[i], bq = bv[i];
      const float4 o = make_float4((xv[i].x - mu) * rs * gq.x + bq.x, (xv[i].y - mu) * rs * gq.y + bq.y,
                                   (xv[i].z - mu) * rs * gq.z + bq.z, (xv[i].w - mu) * rs * gq.w + bq.w);
      if (y) reinterpret_cast<float4*>(y + r * cols)[q] = o;
      if (y16) {
        const __nv_bfloat162 lo = __floats2bfloat162_rn(o.x, o.y), hi = __floats2bfloat162_rn(o.z, o.w);
        uint2 u;
        memcpy(&u.x, &lo, 4);
        memcpy(&u.y, &hi, 4);
        reinterpret_cast<uint2*>(y16 + r * cols)[q] = u;
      }
    }
  }
}
__global__ void k_layer_norm_bwd_x(const float* __restrict__ x, const float* __restrict__ g, const float* __restrict__ mean,
                                   const float* __restrict__ rstd, const float* __restrict__ gy, float* __restrict__ gx,
                                   int64_t rows, int64_t cols) {
  __shared__ float sh[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t b = r * cols;
    float mu = mean[r], rs = rstd[r];
    float sd = 0, sdx = 0;
    // __fmul_rn: no FMA contraction, so d − mean(d) is exactly 0 where it should be (cols = 1).
    for (int64_t j = threadIdx.x; j < cols; j += kT) {
      float d = __fmul_rn(gy[b + j], g[j]);
      sd += d;
      sdx += d * __fmul_rn(x[b + j] - mu, rs);
    }
    sd = block_sum(sd, sh) / (float)cols;
    sdx = block_sum(sdx, sh) / (float)cols;
    for (int64_t j = threadIdx.x; j < cols; j += kT) {
      float xh = __fmul_rn(x[b + j] - mu, rs), d = __fmul_rn(gy[b + j], g[j]);
      gx[b + j] = rs * (d - sd - __fmul_rn(xh, sdx));
    }
  }
}
// The backward pass with the gamma / beta partial sums in the same pass over x and gy (rows up to C·kT
// columns): block b takes rows b, b + gridDim.x, ...; thread t its columns t + c·kT, keeping each
// row's values in registers and the column sums of gy·xhat and gy over its rows, written to row b of
// pg / pb at the end (reduced over the blocks by k_layer_norm_bwd_gb_final).
template <int C>
__global__ void k_layer_norm_bwd(const float* __restrict__ x, const float* __restrict__ g, const float* __restrict__ mean,
                                 const float* __restrict__ rstd, const float* __restrict__ gy, float* __restrict__ gx,
                                 float* __restrict__ pg, float* __restrict__ pb, int64_t rows, int64_t cols) {
  __shared__ float sh[32];
  float ag[C], ab[C];
#pragma unroll
  for (int c = 0; c < C; ++c) ag[c] = ab[c] = 0.f;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t b = r * cols;
    const float mu = mean[r], rs = rstd[r];
    float xh[C], d[C], sd = 0, sdx = 0;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int64_t j = threadIdx.x + c * kT;
      xh[c] = d[c] = 0.f;
      if (j < cols) {
        const float gv = gy[b + j];
        // __fmul_rn: no FMA contraction, so d − mean(d) is exactly 0 where it should be (cols = 1).
        xh[c] = __fmul_rn(x[b + j] - mu, rs);
        d[c] = __fmul_rn(gv, g[j]);
        sd += d[c];
        sdx += d[c] * xh[c];
        ag[c] += gv * xh[c];
        ab[c] += gv;
      }
    }
    sd = block_sum(sd, sh) / (float)cols;
    sdx = block_sum(sdx, sh) / (float)cols;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int64_t j = threadIdx.x + c * kT;
      if (j < cols) gx[b + j] = rs * (d[c] - sd - __fmul_rn(xh[c], sdx));
    }
  }
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int64_t j = threadIdx.x + c * kT;
    if (j < cols) {
      pg[blockIdx.x * cols + j] = ag[c];
      pb[blockIdx.x * cols + j] = ab[c];
    }
  }
}
// Column partial sums of gy·xhat and gy over chunks of CH rows: block (32, 8).
__global__ void k_layer_norm_bwd_gb(const float* __restrict__ x, const float* __restrict__ mean,
                                    const float* __restrict__ rstd, const float* __restrict__ gy, float* __restrict__ pg,
                                    float* __restrict__ pb, int64_t rows, int64_t cols, int64_t CH) {
  __shared__ float sg[8][33], sb[8][33];
  int64_t col = blockIdx.x * 32LL + threadIdx.x, c = blockIdx.y;
  float ag = 0, ab = 0;
  if (col < cols) {
    int64_t r1 = min(rows, (c + 1) * CH);
#pragma unroll 4
    for (int64_t r = c * CH + threadIdx.y; r < r1; r += 8) {
      float gv = gy[r * cols + col];
      ag += gv * (x[r * cols + col] - mean[r]) * rstd[r];
      ab += gv;
    }
  }
  sg[threadIdx.y][threadIdx.x] = ag;
  sb[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float s1 = 0, s2 = 0;
    for (int y = 0; y < 8; ++y) { s1 += sg[y][threadIdx.x]; s2 += sb[y][threadIdx.x]; }
    pg[c * cols + col] = s1;
    pb[c * cols + col] = s2;
  }
}
// gg[j] += Σ_c pg[c, j], gb[j] += Σ_c pb[c, j]: block (32, 8) over 32 columns, thread row y summing
// chunks y, y + 8, ... (independent loads in flight), then the 8 partial sums in order.
__global__ void k_layer_norm_bwd_gb_final(const float* __restrict__ pg, const float* __restrict__ pb, float* __restrict__ gg,
                                          float* __restrict__ gb, int64_t cols, int64_t nch) {
  __shared__ float sg[8][33], sb[8][33];
  const int64_t j = blockIdx.x * 32LL + threadIdx.x;
  float s1 = 0, s2 = 0;
  if (j < cols) {
#pragma unroll 4
    for (int64_t c = threadIdx.y; c < nch; c += 8) { s1 += pg[c * cols + j]; s2 += pb[c * cols + j]; }
  }
  sg[threadIdx.y][threadIdx.x] = s1;
  sb[threadIdx.y][threadIdx.x] = s2;
  __syncthreads();
  if (threadIdx.y == 0 && j < cols) {
    float t1 = 0, t2 = 0;
    for (int y = 0; y < 8; ++y) { t1 += sg[y][threadIdx.x]; t2 += sb[y][threadIdx.x]; }
    gg[j] += t1;
    gb[j] += t2;
  }
}

// out row r = x row idx[r], V floats per thread (V = 4: rows 16-byte aligned).
template <int V>
__global__ void k_gather(const float* __restrict__ x, const int32_t* __restrict__ idx, float* __restrict__ o, int64_t m,
                         int64_t d) {
  using Vec = typename std::conditional<V == 4, float4, float>::type;
  const int64_t w = d / V;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < m * w; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / w, j = i - r * w;
    reinterpret_cast<Vec*>(o)[i] = reinterpret_cast<const Vec*>(x + (int64_t)idx[r] * d)[j];
  }
}
// V consecutive source elements as floats: fp32, or bf16 (a scattered product's scratch) widened.
template <int V, class S> struct SrcVec;
template <> struct SrcVec<4, float> {
  __device__ static float4 load(const float* p) { return *reinterpret_cast<const float4*>(p); }
};
template <> struct SrcVec<1, float> {
  __device__ static float load(const float* p) { return *p; }
};
template <> struct SrcVec<4, __nv_bfloat16> {
  __device__ static float4 load(const __nv_bfloat16* p) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
    return make_float4(a.x, a.y, b.x, b.y);
  }
};
template <> struct SrcVec<1, __nv_bfloat16> {
  __device__ static float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
};

// An accumulator of V floats: zeros (init), or the V floats at o; and its store back to o.
template <int V>
__device__ __forceinline__ void acc_begin(float* acc, const float* o, bool init) {
  using Vec = typename std::conditional<V == 4, float4, float>::type;
  if (init) {
    for (int q = 0; q < V; ++q) acc[q] = 0.f;
  } else {
    const Vec v = *reinterpret_cast<const Vec*>(o);
    for (int q = 0; q < V; ++q) acc[q] = reinterpret_cast<const float*>(&v)[q];
  }
}
template <int V>
__device__ __forceinline__ void acc_store(float* o, const float* acc) {
  using Vec = typename std::conditional<V == 4, float4, float>::type;
  Vec r;
  for (int q = 0; q < V; ++q) reinterpret_cast<float*>(&r)[q] = acc[q];
  *reinterpret_cast<Vec*>(o) = r;
}

// out[t] = (init ? 0 : out[t]) (+ bias, a row of d, when given) + Σ src[list[p]] over p in [bounds[t],
// bounds[t + 1]), in order of p (list null: src[p]). One thread per (row t, column chunk of V floats); the loads of 4 rows are
// issued before their in-order adds. The scatter plans (see scatter_plan) run it once (list = the
// sources by target, or null for non-decreasing targets), or for long segments twice: chunks of
// kPlanChunk sources into partial sums, then each target's partials in chunk order. Sources are fp32
// or bf16 (S), the sums fp32.
template <int V, class S, bool BIAS>
__global__ void k_segment_sum(const S* __restrict__ src, const int32_t* __restrict__ list,
                              const int32_t* __restrict__ bounds, int64_t n, float* __restrict__ out, int64_t d,
                              bool init, const float* __restrict__ bias) {
  using Vec = typename std::conditional<V == 4, float4, float>::type;
  const int64_t chunks = d / V;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n * chunks; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / chunks, c = i - t * chunks;
    const int32_t beg = bounds[t], end = bounds[t + 1];
    if (beg == end && !init && !BIAS) continue;
    float* o = out + t * d + c * V;
    float acc[V];
    acc_begin<V>(acc, o, init);
    if constexpr (BIAS)
      for (int q = 0; q < V; ++q) acc[q] += bias[c * V + q];
    auto row = [&](int32_t p) { return SrcVec<V, S>::load(src + (int64_t)(list ? list[p] : p) * d + c * V); };
    int32_t p = beg;
    for (; p + 4 <= end; p += 4) {
      Vec v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) v[u] = row(p + u);
#pragma unroll
      for (int u = 0; u < 4; ++u)
        for (int q = 0; q < V; ++q) acc[q] += reinterpret_cast<const float*>(&v[u])[q];
    }
    for (; p < end; ++p) {
      const Vec v = row(p);
      for (int q = 0; q < V; ++q) acc[q] += reinterpret_cast<const float*>(&v)[q];
    }
    acc_store<V>(o, acc);
  }
}

// out[idx[r]] = (init ? 0 : out[idx[r]]) + src[r] for r < m, the targets distinct (so each element of
// out has at most one writer). One thread per (source row r, column chunk of V floats); the sum is the
// one k_segment_sum computes for a single source.
template <int V>
__global__ void k_scatter_unique(const float* __restrict__ src, const int32_t* __restrict__ idx, int64_t m,
                                 float* __restrict__ out, int64_t d, bool init) {
  using Vec = typename std::conditional<V == 4, float4, float>::type;
  const int64_t chunks = d / V;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < m * chunks; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / chunks, c = i - r * chunks;
    Vec* o = reinterpret_cast<Vec*>(out + (int64_t)idx[r] * d) + c;
    const Vec s = reinterpret_cast<const Vec*>(src + r * d)[c];
    Vec v = init ? Vec{} : *o;
    for (int q = 0; q < V; ++q) reinterpret_cast<float*>(&v)[q] += reinterpret_cast<const float*>(&s)[q];
    *o = v;
  }
}

// One pass over each row: every thread keeps an online (max, Σ exp(x − max)) over its columns, then
// the block combines them (max first, then the rescaled sums); fixed order, so deterministic. Logits
// (X) fp32 or bf16 (a product's output kept at bf16 precision).
template <class X>
__global__ void k_ce(const X* __restrict__ x, int64_t ldx, const int32_t* __restrict__ tg, float* __restrict__ loss,
                     float* __restrict__ lse, int64_t N, int64_t V) {
  __shared__ float sh[32];
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const X* xr = x + n * ldx;
    float m = -INFINITY, s = 0.f;
#pragma unroll 4
    for (int64_t j = threadIdx.x; j < V; j += kT) {
      const float v = SrcVec<1, X>::load(xr + j);
      if (v > m) {
        s = s * expf(m - v) + 1.f;
        m = v;
      } else {
        s += expf(v - m);
      }
    }
    const float mx = block_max(m, sh);
    s = block_sum(m == -INFINITY ? 0.f : s * expf(m - mx), sh);
    if (threadIdx.x == 0) {
      float l = mx + logf(s);
      lse[n] = l;
      int t = tg[n];
      loss[n] = t < 0 ? 0.f : l - SrcVec<1, X>::load(xr + t);
    }
  }
}
// ∂loss/∂logits = gl[n] · (softmax(x[n]) − onehot(t[n])) (zero for an ignored target t < 0), into
// gx (rows V apart, f32, when given) and g16 (bf16, rows ld16 apart, zeros in columns V .. ld16; when
// given). One block per row; warp w takes chunks of U·32·VEC consecutive columns, lane l the VEC
// consecutive columns at l·VEC of each 32·VEC: with VEC = 4 (rows of x 16-byte aligned, of g16 8-byte)
// the loads are float4 and the bf16 stores 8 bytes, and the f32 stores (rows of any alignment) are
// made coalesced by a shuffle (store i of a lane writes column 32i + l of the warp's 128). U loads per
// lane are in flight before their math. The same values as an element per thread: measured 2.5 ->
// 1.25 ms for GPT-2's logits (8192 x 50257) on an H200. Logits (X) fp32 or bf16 (then rows of x 8-byte
// aligned for VEC = 4).
template <int VEC, class X>
__global__ void __launch_bounds__(512) k_ce_bwd(const X* __restrict__ x, int64_t ldx, const int32_t* __restrict__ tg,
                         const float* __restrict__ lse, const float* __restrict__ gl, float* __restrict__ gx,
                         __nv_bfloat16* __restrict__ g16, int64_t ld16, int64_t N, int64_t V) {
  constexpr int U = 4, W = 32 * VEC;
  using Vec = typename std::conditional<VEC == 4, float4, float>::type;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int64_t cols = g16 ? ld16 : V;  // columns written (bf16: through the padding)
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const int t = tg[n];
    const float l = lse[n], g = t < 0 ? 0.f : gl[n];
    const X* xr = x + n * ldx;
    for (int64_t c0 = (int64_t)warp * U * W; c0 < cols; c0 += (int64_t)warps * U * W) {
      Vec xv[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t j = c0 + u * W + VEC * lane;
        xv[u] = j < V ? SrcVec<VEC, X>::load(xr + j) : Vec{};
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t j = c0 + u * W + VEC * lane;
        const float* xs = reinterpret_cast<const float*>(&xv[u]);
        float v[VEC];
#pragma unroll
        for (int q = 0; q < VEC; ++q)
          v[q] = t < 0 || j + q >= V ? 0.f : g * (expf(xs[q] - l) - (j + q == t ? 1.f : 0.f));
        if (g16 && j < cols) {
          if constexpr (VEC == 4) {
            const __nv_bfloat162 a = __floats2bfloat162_rn(v[0], v[1]), b = __floats2bfloat162_rn(v[2], v[3]);
            uint2 w;
            memcpy(&w.x, &a, 4);
            memcpy(&w.y, &b, 4);
            *reinterpret_cast<uint2*>(g16 + n * ld16 + j) = w;
          } else {
            g16[n * ld16 + j] = __float2bfloat16(v[0]);
          }
        }
        if (!gx) continue;
        if constexpr (VEC == 4) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int src = 8 * i + (lane >> 2), q = lane & 3;
            const float s0 = __shfl_sync(0xffffffffu, v[0], src), s1 = __shfl_sync(0xffffffffu, v[1], src);
            const float s2 = __shfl_sync(0xffffffffu, v[2], src), s3 = __shfl_sync(0xffffffffu, v[3], src);
            const int64_t jj = c0 + u * W + 32 * i + lane;
            if (jj < V) gx[n * V + jj] = q == 0 ? s0 : q == 1 ? s1 : q == 2 ? s2 : s3;
          }
        } else if (j < V) {
          gx[n * V + j] = v[0];
        }
      }
    }
  }
}

// out[r] = Σ_c a[r, c]·b[r, c], accumulated in f64: one warp per row (the MoE router gradient has a
// row per expert activation and few columns), lanes over columns, then a fixed xor-shuffle tree.
__global__ void k_rowdot(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ out, int64_t rows,
                         int64_t cols) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t r = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
    double acc = 0;
    for (int64_t j = lane; j < cols; j += 32) acc += (double)a[r * cols + j] * (double)b[r * cols + j];
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) out[r] = (float)acc;
  }
}

// gx[r, c] = the sum of g[r, j] over j with idx[r, j] = c, from zero in j order (the bits of adding each
// g[r, j] to a zeroed row in turn): a warp per row, lanes over columns (rows of at most 256 columns).
constexpr int64_t kWarpTopkBwdCols = 256;
__global__ void k_topk_backward_warp(const float* __restrict__ g, const int32_t* __restrict__ idx, float* __restrict__ gx,
                                     int64_t rows, int64_t cols, int64_t k) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t r = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps)
    for (int64_t c = lane; c < cols; c += 32) {
      float acc = 0.f;
      for (int64_t j = 0; j < k; ++j)
        if (idx[r * k + j] == c) acc += g[r * k + j];
      gx[r * cols + c] = acc;
    }
}
// gx rows zeroed, then gx[r, idx[r, j]] += g[r, j] in j order: one thread per row (k is small).
__global__ void k_topk_backward(const float* __restrict__ g, const int32_t* __restrict__ idx, float* __restrict__ gx,
                                int64_t rows, int64_t cols, int64_t k) {
  for (int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; r < rows; r += (int64_t)gridDim.x * blockDim.x) {
    float* o = gx + r * cols;
    for (int64_t c = 0; c < cols; ++c) o[c] = 0.f;
    for (int64_t j = 0; j < k; ++j) o[idx[r * k + j]] += g[r * k + j];
  }
}

// Bit b of out[r, w] = x[r, 32w + b] > 0: one warp per word, the word is the warp's ballot.
__global__ void k_activation_bits(const float* __restrict__ x, int32_t* __restrict__ out, int64_t rows, int64_t cols) {
  const int lane = threadIdx.x & 31;
  const int64_t words = (cols + 31) / 32, total = rows * words;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t i = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); i < total; i += warps) {
    const int64_t r = i / words, c = (i % words) * 32 + lane;
    const unsigned word = __ballot_sync(0xffffffffu, c < cols && x[r * cols + c] > 0.0f);
    if (lane == 0) out[i] = (int32_t)word;
  }
}

__device__ __forceinline__ bool better(float ka, int ia, float kb, int ib) { return ka > kb || (ka == kb && ia < ib); }
// The warp's best (key bk, index bi) by `better` (bi = INT_MAX: none), left in every lane.
__device__ __forceinline__ void warp_best(float& bk, int& bi) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ok = __shfl_xor_sync(0xffffffffu, bk, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (oi != INT_MAX && (bi == INT_MAX || better(ok, oi, bk, bi))) { bk = ok; bi = oi; }
  }
}
// One block of NT threads per row, k rounds: each round scans the row for the best entry strictly worse
// than the previous round's (a tree reduction over the block). NT = 1024 for long rows (an LM head's
// logits in decoding), which one block then reads in a few microseconds.
template <int NT>
__global__ void __launch_bounds__(NT) k_topk(const float* __restrict__ x, float* __restrict__ vals, int32_t* __restrict__ idx,
                                             int64_t rows, int64_t cols, int64_t k) {
  __shared__ float sk[NT];
  __shared__ int si[NT];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x + r * cols;
    float thk = INFINITY;
    int thi = -1;  // threshold: items must be strictly worse than (thk, thi); none at first
    for (int64_t q = 0; q < k; ++q) {
      float bk = -INFINITY;
      int bi = INT_MAX;
#pragma unroll 4
      for (int64_t j = threadIdx.x; j < cols; j += NT) {
        float v = xr[j];
        float kv = isnan(v) ? -INFINITY : v;
        if (thi >= 0 && !better(thk, thi, kv, (int)j)) continue;
        if (bi == INT_MAX || better(kv, (int)j, bk, bi)) { bk = kv; bi = (int)j; }
      }
      sk[threadIdx.x] = bk;
      si[threadIdx.x] = bi;
      __syncthreads();
      for (int s = NT / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) {
          int o = threadIdx.x + s;
          if (si[o] != INT_MAX && (si[threadIdx.x] == INT_MAX || better(sk[o], si[o], sk[threadIdx.x], si[threadIdx.x]))) {
            sk[threadIdx.x] = sk[o];
            si[threadIdx.x] = si[o];
          }
        }
        __syncthreads();
      }
      thk = sk[0];
      thi = si[0];
      if (threadIdx.x == 0) {
        vals[r * k + q] = xr[thi];
        idx[r * k + q] = thi;
      }
      __syncthreads();
    }
  }
}

// One warp per row for rows of 129 to 1024 columns: the same k rounds as k_topk, each
// a warp argmax by xor shuffles (the order `better` is total, so every lane ends with the same pick).
__global__ void k_topk_warp(const float* __restrict__ x, float* __restrict__ vals, int32_t* __restrict__ idx,
                            int64_t rows, int64_t cols, int64_t k) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t r = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
    const float* xr = x + r * cols;
    float thk = INFINITY;
    int thi = -1;
    for (int64_t q = 0; q < k; ++q) {
      float bk = -INFINITY;
      int bi = INT_MAX;
      for (int64_t j = lane; j < cols; j += 32) {
        const float v = xr[j];
        const float kv = isnan(v) ? -INFINITY : v;
        if (thi >= 0 && !better(thk, thi, kv, (int)j)) continue;
        if (bi == INT_MAX || better(kv, (int)j, bk, bi)) { bk = kv; bi = (int)j; }
      }
      warp_best(bk, bi);
      thk = bk;
      thi = bi;
      if (lane == 0) {
        vals[r * k + q] = xr[thi];
        idx[r * k + q] = thi;
      }
    }
  }
}

// Rows of at most 32 · VPL columns (the MoE router's expert scores): a warp per row, lane l holding
// columns l + 32 · i. Each entry's rank (the entries `better` than it: value descending, index
// ascending, NaN smallest) is counted against every entry of the row by broadcasts; the entries ranked
// below k are written at their rank: the k rounds' result, with no rounds.
template <int VPL>
__global__ void k_topk_rank(const float* __restrict__ x, float* __restrict__ vals, int32_t* __restrict__ idx,
                            int64_t rows, int cols, int64_t k) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t r = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
    float v[VPL], kv[VPL];
    int rank[VPL];
#pragma unroll
    for (int i = 0; i < VPL; ++i) {
      const int c = lane + 32 * i;
      v[i] = c < cols ? x[r * cols + c] : 0.f;
      kv[i] = isnan(v[i]) ? -INFINITY : v[i];
      rank[i] = 0;
    }
#pragma unroll
    for (int s = 0; s < VPL; ++s) {
      const int n = min(32, cols - 32 * s);
      for (int src = 0; src < n; ++src) {
        const float ok = __shfl_sync(0xffffffffu, kv[s], src);
        const int oc = src + 32 * s;
#pragma unroll
        for (int i = 0; i < VPL; ++i) rank[i] += better(ok, oc, kv[i], lane + 32 * i) ? 1 : 0;
      }
    }
#pragma unroll
    for (int i = 0; i < VPL; ++i) {
      const int c = lane + 32 * i;
      if (c < cols && rank[i] < k) {
        vals[r * k + rank[i]] = v[i];
        idx[r * k + rank[i]] = c;
      }
    }
  }
}

unsigned rows_grid(int64_t rows) { return (unsigned)std::max<int64_t>(1, std::min<int64_t>(rows, 1 << 20)); }

}  // namespace

void softmax(const float* x, float* out, int64_t rows, int64_t cols) {
  if (rows == 0 || cols == 0) return;
  if (cols <= kWarpRowCols) k_softmax_warp<<<grid_for(rows, kT / 32), kT, 0, stream()>>>(x, out, rows, (int)cols);
  else k_softmax<<<rows_grid(rows), kT, 0, stream()>>>(x, out, rows, cols);
  check_launch("softmax");
}
void softmax_backward(const float* y, const float* gy, float* gx, int64_t rows, int64_t cols) {
  if (rows == 0 || cols == 0) return;
  if (cols <= kWarpRowCols) k_softmax_bwd_warp<<<grid_for(rows, kT / 32), kT, 0, stream()>>>(y, gy, gx, rows, (int)cols);
  else k_softmax_bwd<<<rows_grid(rows), kT, 0, stream()>>>(y, gy, gx, rows, cols);
  check_launch("softmaxBackward");
}
bool layer_norm(const float* x, const float* g, const float* b, float* y, uint16_t* y16, float* mean, float* rstd,
                int64_t rows, int64_t cols, float eps, bool y16_only) {
  if (rows == 0) return false;
  auto* o16 = reinterpret_cast<__nv_bfloat16*>(y16);
  constexpr int kMaxV = 8;  // float4s per lane: rows of up to 1024
  const bool warp = cols % 4 == 0 && cols > 0 && cols <= 128 * kMaxV && ((uintptr_t)x & 15) == 0 && ((uintptr_t)y & 15) == 0 &&
                    ((uintptr_t)g & 15) == 0 && ((uintptr_t)b & 15) == 0 && ((uintptr_t)y16 & 7) == 0;
  const bool skip = warp && y16_only && y16;
  if (warp) {
    k_layer_norm_warp<kMaxV><<<grid_for(rows, kT / 32), kT, 0, stream()>>>(x, g, b, skip ? nullptr : y, o16, mean, rstd, rows,
                                                                          (int)cols, eps);
  } else {
    k_layer_norm<<<rows_grid(rows), kT, 0, stream()>>>(x, g, b, y, o16, mean, rstd, rows, cols, eps);
  }
  check_launch("layerNorm");
  return skip;
}
void layer_norm_backward(const float* x, const float* g, const float* mean, const float* rstd, const float* gy,
                         float* gx, float* gg, float* gb, int64_t rows, int64_t cols) {
  if (rows == 0 || cols == 0) return;
  if (cols <= 4 * kT) {
    // One pass: at most 512 blocks of rows, their partial sums reduced in block order.
    const int64_t nb = std::min<int64_t>(rows, 512);
    Scratch part(2 * nb * cols * sizeof(float));
    float* pg = part.as<float>();
    float* pb = pg + nb * cols;
    if (cols <= kT) k_layer_norm_bwd<1><<<(unsigned)nb, kT, 0, stream()>>>(x, g, mean, rstd, gy, gx, pg, pb, rows, cols);
    else if (cols <= 2 * kT) k_layer_norm_bwd<2><<<(unsigned)nb, kT, 0, stream()>>>(x, g, mean, rstd, gy, gx, pg, pb, rows, cols);
    else k_layer_norm_bwd<4><<<(unsigned)nb, kT, 0, stream()>>>(x, g, mean, rstd, gy, gx, pg, pb, rows, cols);
    check_launch("layerNormBackward");
    k_layer_norm_bwd_gb_final<<<(unsigned)((cols + 31) / 32), dim3(32, 8), 0, stream()>>>(pg, pb, gg, gb, cols, nb);
    check_launch("layerNormBackward");
    return;
  }
  k_layer_norm_bwd_x<<<rows_grid(rows), kT, 0, stream()>>>(x, g, mean, rstd, gy, gx, rows, cols);
  check_launch("layerNormBackward");
  int64_t CH = 128, nch = (rows + CH - 1) / CH;
  if (nch > 4096) { CH = (rows + 4095) / 4096; nch = (rows + CH - 1) / CH; }
  Scratch part(2 * nch * cols * sizeof(float));
  float* pg = part.as<float>();
  float* pb = pg + nch * cols;
  k_layer_norm_bwd_gb<<<dim3((unsigned)((cols + 31) / 32), (unsigned)nch), dim3(32, 8), 0, stream()>>>(x, mean, rstd, gy, pg, pb, rows, cols, CH);
  check_launch("layerNormBackward");
  k_layer_norm_bwd_gb_final<<<(unsigned)((cols + 31) / 32), dim3(32, 8), 0, stream()>>>(pg, pb, gg, gb, cols, nch);
  check_launch("layerNormBackward");
}

namespace {
// Whether rows of d floats at src and out can be read and written as float4.
bool vec4(const float* src, const float* out, int64_t d) {
  return d % 4 == 0 && ((uintptr_t)src & 15) == 0 && ((uintptr_t)out & 15) == 0;
}
}  // namespace

void gather_rows(const float* x, const int32_t* idx, float* out, int64_t m, int64_t d, const char* op) {
  if (m == 0 || d == 0) return;
  if (vec4(x, out, d)) k_gather<4><<<grid_for(m * d / 4, kT), kT, 0, stream()>>>(x, idx, out, m, d);
  else k_gather<1><<<grid_for(m * d, kT), kT, 0, stream()>>>(x, idx, out, m, d);
  check_launch(op);
}

namespace {
template <class S>
void segment_sum_launch(const S* src, const int32_t* list, const int32_t* bounds, int64_t n, float* out, int64_t d,
                        bool init, const float* bias, const char* op) {
  // The bias is a separate instantiation: a run-time test in the kernel measured 6 µs slower per MoE sum.
  const bool v4 = d % 4 == 0 && ((uintptr_t)src & (4 * sizeof(S) - 1)) == 0 && ((uintptr_t)out & 15) == 0;
  const unsigned threads = kT, grid = grid_for(v4 ? n * d / 4 : n * d, kT);
  if (v4 && bias) k_segment_sum<4, S, true><<<grid, threads, 0, stream()>>>(src, list, bounds, n, out, d, init, bias);
  else if (v4) k_segment_sum<4, S, false><<<grid, threads, 0, stream()>>>(src, list, bounds, n, out, d, init, bias);
  else if (bias) k_segment_sum<1, S, true><<<grid, threads, 0, stream()>>>(src, list, bounds, n, out, d, init, bias);
  else k_segment_sum<1, S, false><<<grid, threads, 0, stream()>>>(src, list, bounds, n, out, d, init, bias);
  check_launch(op);
}
// acc (+)= rows p = first .. first + count − 1 of `base` (rows d floats apart, column vector c), added
// in order of p; 8 rows are loaded before their adds, so a long run is not one load latency per row.
template <int V>
__device__ __forceinline__ void add_rows_in_order(float* acc, const float* __restrict__ base, int64_t first, int64_t count,
                                                  int64_t d, int64_t c) {
  using Vec = typename std::conditional<V == 4, float4, float>::type;
  int64_t p = first;
  for (; p + 8 <= first + count; p += 8) {
    Vec v[8];
#pragma unroll
    for (int q = 0; q < 8; ++q) v[q] = reinterpret_cast<const Vec*>(base + (p + q) * d)[c];
#pragma unroll
    for (int q = 0; q < 8; ++q)
      for (int u = 0; u < V; ++u) acc[u] += reinterpret_cast<const float*>(&v[q])[u];
  }
  for (; p < first + count; ++p) {
    const Vec v = reinterpret_cast<const Vec*>(base + p * d)[c];
    for (int u = 0; u < V; ++u) acc[u] += reinterpret_cast<const float*>(&v)[u];
  }
}

// Scatter-add by non-decreasing targets with device bounds: plan = bounds (n + 1), then the chunked
// flag. Chunk slot q of target t (its sources bounds[t] + 32c ..) is q = t + bounds[t] / 32 + c: distinct
// for all (t, c) and below n + m / 32 + 1. Pass 1 sums each chunk into partial[q] (flag set only).
template <int V>
__global__ void k_bounds_chunks(const float* __restrict__ src, const int32_t* __restrict__ plan, int64_t n,
                                int64_t slots, float* __restrict__ partial, int64_t d) {
  if (plan[n + 1] == 0) return;
  const int64_t vecs = d / V;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < slots * vecs; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t q = i / vecs, c = i - q * vecs;
    int lo = 0, hi = (int)n - 1;  // the last target t with t + bounds[t] / 32 <= q
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (mid + plan[mid] / kPlanChunk <= q) lo = mid;
      else hi = mid - 1;
    }
    const int64_t beg = plan[lo] + (q - lo - plan[lo] / kPlanChunk) * kPlanChunk;
    const int64_t end = beg + kPlanChunk < plan[lo + 1] ? beg + kPlanChunk : (int64_t)plan[lo + 1];
    if (beg >= end) continue;
    float acc[V];
    acc_begin<V>(acc, nullptr, true);
    add_rows_in_order<V>(acc, src, beg, end - beg, d, c);
    acc_store<V>(partial + q * d + c * V, acc);
  }
}
// Pass 2: out[t] (+)= its chunk sums in order (flag set), or its sources in order (flag clear). One warp
// per output vector: the lanes load 32 rows at once, then every lane adds them in order from shuffles
// (the same chain of adds as one thread reading them in turn, without its serial load latencies: the
// MoE's expert-bias gradient has a few outputs of 64 chunk sums each).
template <int V>
__global__ void k_bounds_sum(const float* __restrict__ src, const float* __restrict__ partial,
                             const int32_t* __restrict__ plan, int64_t n, float* __restrict__ out, int64_t d, bool init) {
  using Vec = typename std::conditional<V == 4, float4, float>::type;
  const bool chunked = plan[n + 1] != 0;
  const int lane = threadIdx.x & 31;
  const int64_t vecs = d / V, warps = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t i = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); i < n * vecs; i += warps) {
    const int64_t t = i / vecs, c = i - t * vecs;
    const int32_t beg = plan[t], end = plan[t + 1];
    if (beg == end && !init) continue;
    float* o = out + t * d + c * V;
    float acc[V];
    acc_begin<V>(acc, o, init);
    const float* base = chunked ? partial : src;
    const int64_t first = chunked ? t + beg / kPlanChunk : beg;
    const int64_t count = chunked ? (end - beg + kPlanChunk - 1) / kPlanChunk : end - beg;
    for (int64_t r0 = 0; r0 < count; r0 += 32) {
      Vec v{};
      if (r0 + lane < count) v = reinterpret_cast<const Vec*>(base + (first + r0 + lane) * d)[c];
      const int64_t rows = count - r0 < 32 ? count - r0 : 32;
      for (int j = 0; j < rows; ++j)
#pragma unroll
        for (int q = 0; q < V; ++q) acc[q] += __shfl_sync(0xffffffffu, reinterpret_cast<const float*>(&v)[q], j);
    }
    if (lane == 0) acc_store<V>(o, acc);
  }
}

template <int V>
void bounds_sum_launch(const float* src, const int32_t* plan, int64_t n, int64_t m, float* out, int64_t d, bool init) {
  const int64_t slots = n + m / kPlanChunk + 1;
  Scratch partial((size_t)slots * d * sizeof(float));
  k_bounds_chunks<V><<<grid_for(slots * d / V, kT), kT, 0, stream()>>>(src, plan, n, slots, partial.as<float>(), d);
  k_bounds_sum<V><<<grid_for(n * d / V, kT / 32), kT, 0, stream()>>>(src, partial.as<float>(), plan, n, out, d, init);
}

}  // namespace

void segment_sum(const void* src_, bool src_bf16, const int32_t* plan, int64_t n, int64_t m, int64_t chunks, bool listed,
                 float* out, int64_t d, bool init, const float* bias, const char* op) {
  if (n == 0 || d == 0) return;
  const int32_t* sources = listed ? plan + n + 1 : nullptr;
  const float* src = static_cast<const float*>(src_);
  const __nv_bfloat16* src16 = static_cast<const __nv_bfloat16*>(src_);
  if (chunks == 0) {
    if (src_bf16) segment_sum_launch(src16, sources, plan, n, out, d, init, bias, op);
    else segment_sum_launch(src, sources, plan, n, out, d, init, bias, op);
    return;
  }
  const int32_t* target_chunks = plan + n + 1 + (listed ? m : 0);
  const int32_t* chunk_bounds = target_chunks + n + 1;
  Scratch partial((size_t)chunks * d * sizeof(float));
  if (src_bf16) segment_sum_launch(src16, sources, chunk_bounds, chunks, partial.as<float>(), d, true, nullptr, op);
  else segment_sum_launch(src, sources, chunk_bounds, chunks, partial.as<float>(), d, true, nullptr, op);
  segment_sum_launch(partial.as<float>(), nullptr, target_chunks, n, out, d, init, bias, op);
}

void segment_sum_bounds(const float* src, const int32_t* plan, int64_t n, int64_t m, float* out, int64_t d, bool init,
                        const char* op) {
  if (n == 0 || d == 0) return;
  if (vec4(src, out, d)) bounds_sum_launch<4>(src, plan, n, m, out, d, init);
  else bounds_sum_launch<1>(src, plan, n, m, out, d, init);
  check_launch(op);
}

void scatter_unique(const float* src, const int32_t* idx, int64_t m, float* out, int64_t d, bool init, const char* op) {
  if (m == 0 || d == 0) return;
  if (vec4(src, out, d)) {
    k_scatter_unique<4><<<grid_for(m * d / 4, kT), kT, 0, stream()>>>(src, idx, m, out, d, init);
  } else {
    k_scatter_unique<1><<<grid_for(m * d, kT), kT, 0, stream()>>>(src, idx, m, out, d, init);
  }
  check_launch(op);
}

void cross_entropy(const void* logits, bool bf16, int64_t ld, const int32_t* targets, float* losses, float* lse, int64_t N,
                   int64_t V) {
  if (N == 0) return;
  if (bf16) k_ce<<<rows_grid(N), kT, 0, stream()>>>(static_cast<const __nv_bfloat16*>(logits), ld, targets, losses, lse, N, V);
  else k_ce<<<rows_grid(N), kT, 0, stream()>>>(static_cast<const float*>(logits), ld, targets, losses, lse, N, V);
  check_launch("crossEntropy");
}
namespace {
template <class X>
void ce_backward(const X* x, int64_t ld, const int32_t* targets, const float* lse, const float* gloss, float* glogits,
                 __nv_bfloat16* g16, int64_t ld16, int64_t N, int64_t V) {
  const bool v4 = ld % 4 == 0 && ((uintptr_t)x & (4 * sizeof(X) - 1)) == 0 && (!g16 || (ld16 % 4 == 0 && ((uintptr_t)g16 & 7) == 0));
  if (v4) k_ce_bwd<4, X><<<rows_grid(N), 512, 0, stream()>>>(x, ld, targets, lse, gloss, glogits, g16, ld16, N, V);
  else k_ce_bwd<1, X><<<rows_grid(N), kT, 0, stream()>>>(x, ld, targets, lse, gloss, glogits, g16, ld16, N, V);
}
}  // namespace
void cross_entropy_backward(const void* logits, bool bf16, int64_t ld, const int32_t* targets, const float* lse,
                            const float* gloss, float* glogits, uint16_t* g16, int64_t ld16, int64_t N, int64_t V) {
  if (N == 0) return;
  auto* b16 = reinterpret_cast<__nv_bfloat16*>(g16);
  if (bf16) ce_backward(static_cast<const __nv_bfloat16*>(logits), ld, targets, lse, gloss, glogits, b16, ld16, N, V);
  else ce_backward(static_cast<const float*>(logits), ld, targets, lse, gloss, glogits, b16, ld16, N, V);
  check_launch("crossEntropyBackward");
}
// ReLU's backward from its output y and the router gate's row dots in one pass (Backend.reluBackwardRowDot):
// one warp per row as k_rowdot (f64 sums, the xor-shuffle tree), V consecutive values per lane. y (YT)
// fp32, or bf16 (an output kept at bf16 precision: its values are those).
template <int V, class YT>
__global__ void k_relu_bwd_rowdot(const YT* __restrict__ y, const float* __restrict__ gy, float* __restrict__ gx,
                                  __nv_bfloat16* __restrict__ gx16, float* __restrict__ dots, int64_t rows, int64_t cols) {
  using Vec = typename std::conditional<V == 4, float4, float>::type;
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5), vecs = cols / V;
  for (int64_t r = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
    double acc = 0;
    for (int64_t j = lane; j < vecs; j += 32) {
      const int64_t at = r * vecs + j;
      const Vec yv = SrcVec<V, YT>::load(y + at * V), gv = reinterpret_cast<const Vec*>(gy)[at];
      Vec o;
      const float* ys = reinterpret_cast<const float*>(&yv);
      const float* gs = reinterpret_cast<const float*>(&gv);
      float* os = reinterpret_cast<float*>(&o);
#pragma unroll
      for (int u = 0; u < V; ++u) {
        os[u] = ys[u] > 0.f ? gs[u] : 0.f;
        acc += (double)os[u] * (double)ys[u];
      }
      reinterpret_cast<Vec*>(gx)[at] = o;
      if (gx16) {
        if constexpr (V == 4) {
          __nv_bfloat162 lo = __floats2bfloat162_rn(os[0], os[1]), hi = __floats2bfloat162_rn(os[2], os[3]);
          uint2 u;
          u.x = *reinterpret_cast<uint32_t*>(&lo);
          u.y = *reinterpret_cast<uint32_t*>(&hi);
          reinterpret_cast<uint2*>(gx16)[at] = u;
        } else {
          gx16[at] = __float2bfloat16(os[0]);
        }
      }
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) dots[r] = (float)acc;
  }
}
namespace {
template <class YT>
void relu_bwd_rowdot_launch(const YT* y, const float* gy, float* gx, uint16_t* gx16, float* dots, int64_t rows,
                            int64_t cols) {
  auto* g16 = reinterpret_cast<__nv_bfloat16*>(gx16);
  const bool v4 = cols % 4 == 0 && ((uintptr_t)y & (4 * sizeof(YT) - 1)) == 0 && ((uintptr_t)gy & 15) == 0 &&
                  ((uintptr_t)gx & 15) == 0 && ((uintptr_t)gx16 & 7) == 0;
  if (v4) k_relu_bwd_rowdot<4, YT><<<grid_for(rows, kT / 32), kT, 0, stream()>>>(y, gy, gx, g16, dots, rows, cols);
  else k_relu_bwd_rowdot<1, YT><<<grid_for(rows, kT / 32), kT, 0, stream()>>>(y, gy, gx, g16, dots, rows, cols);
}
}  // namespace
void relu_backward_row_dot(const float* y, const uint16_t* y16, const float* gy, float* gx, uint16_t* gx16, float* dots,
                           int64_t rows, int64_t cols) {
  if (rows == 0) return;
  if (y16) relu_bwd_rowdot_launch(reinterpret_cast<const __nv_bfloat16*>(y16), gy, gx, gx16, dots, rows, cols);
  else relu_bwd_rowdot_launch(y, gy, gx, gx16, dots, rows, cols);
  check_launch("reluBackwardRowDot");
}
void row_dot(const float* a, const float* b, float* out, int64_t rows, int64_t cols) {
  if (rows == 0) return;
  k_rowdot<<<grid_for(rows, kT / 32), kT, 0, stream()>>>(a, b, out, rows, cols);
  check_launch("rowDot");
}
void topk_backward(const float* g, const int32_t* idx, float* gx, int64_t rows, int64_t cols, int64_t k) {
  if (rows == 0 || cols == 0) return;
  if (cols <= kWarpTopkBwdCols) k_topk_backward_warp<<<grid_for(rows, kT / 32), kT, 0, stream()>>>(g, idx, gx, rows, cols, k);
  else k_topk_backward<<<grid_for(rows, kT), kT, 0, stream()>>>(g, idx, gx, rows, cols, k);
  check_launch("topkBackward");
}
void activation_bits(const float* x, int32_t* out, int64_t rows, int64_t cols) {
  if (rows == 0 || cols == 0) return;
  k_activation_bits<<<grid_for(rows * ((cols + 31) / 32), kT / 32), kT, 0, stream()>>>(x, out, rows, cols);
  check_launch("activationBits");
}
void topk(const float* x, float* values, int32_t* indices, int64_t rows, int64_t cols, int64_t k) {
  if (rows == 0 || k == 0) return;
  if (cols <= 32) k_topk_rank<1><<<grid_for(rows, kT / 32), kT, 0, stream()>>>(x, values, indices, rows, (int)cols, k);
  else if (cols <= 64) k_topk_rank<2><<<grid_for(rows, kT / 32), kT, 0, stream()>>>(x, values, indices, rows, (int)cols, k);
  else if (cols <= 128) k_topk_rank<4><<<grid_for(rows, kT / 32), kT, 0, stream()>>>(x, values, indices, rows, (int)cols, k);
  else if (cols <= kWarpTopkCols) k_topk_warp<<<grid_for(rows, kT / 32), kT, 0, stream()>>>(x, values, indices, rows, cols, k);
  else if (cols < kLongTopkCols) k_topk<kT><<<rows_grid(rows), kT, 0, stream()>>>(x, values, indices, rows, cols, k);
  else k_topk<1024><<<rows_grid(rows), 1024, 0, stream()>>>(x, values, indices, rows, cols, k);
  check_launch("topk");
}

}  // namespace ssdc
