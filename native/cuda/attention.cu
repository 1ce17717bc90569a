// Fused causal / full self-attention (flash-attention 2 style: scores never reach device memory).
// Tensor-core path (D = 16, 32, 64 or 128): q/k/v (and the output gradient) are read from bf16 copies
// that the TypeScript side keeps (`shadow`), tiles of 64 rows stream into shared memory with cp.async
// (double-buffered, so the next tile loads while this one is multiplied), and every product is a
// register-level mma.sync m16n8k16 (bf16 in, fp32 accumulate). Each warp owns 16 rows of its block: its
// scores, softmax statistics and accumulators never leave registers, and the fp32 accumulator layout of
// one product is repacked in registers as the bf16 A operand of the next (P·V, dS·K, ...). The backward
// pass recomputes P from the saved logsumexp in two deterministic kernels (dK/dV per key tile, dQ per
// query tile: no atomics, same bits every run). A plain fp32 SIMT path covers every other head size.
#include "mma.cuh"

namespace ssdc {

namespace {
constexpr int TILE = 64;           // rows of every query / key tile (4 warps x 16)
constexpr int kWarps = TILE / 16;  // warps per block
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ int64_t qkv_at(int b, int t, int which, int h, int d, int T, int H, int D) {
  return ((((int64_t)b * T + t) * 3 + which) * H + h) * (int64_t)D + d;
}

// ---------------------------------------------------------------- warp-level tile products
// Fragment layout (PTX ISA, mma.m16n8k16): lane = 4·g + c; an accumulator s[j] of a 16x8 tile holds
// rows g (s[j][0..1]) and g + 8 (s[j][2..3]), columns 8j + 2c, 8j + 2c + 1. Shared tiles are row-major
// with rows of LD = D + 8 bf16 (the pad puts the 8 rows of each ldmatrix in distinct bank groups).
template <int D> __host__ __device__ constexpr int ld() { return D + 8; }

// A operand (16 rows from `rows`, all D columns) of a row-major shared tile, one fragment per 16 columns.
template <int D>
__device__ __forceinline__ void load_a(uint32_t (&a)[D / 16][4], const bf16* rows, int lane) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) ldsm_x4(a[kk], rows + (lane & 15) * ld<D>() + kk * 16 + (lane >> 4) * 8);
}
// s (16x64) = a (16xD) · Bᵀ, B a shared [64][D] tile (the keys of a score tile).
template <int D>
__device__ __forceinline__ void mma_abt(float (&s)[8][4], const uint32_t (&a)[D / 16][4], const bf16* B, int lane) {
#pragma unroll
  for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
  for (int j = 0; j < 8; j += 2) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t b[4];
      ldsm_x4(b, B + (j * 8 + (lane >> 4) * 8 + (lane & 7)) * ld<D>() + kk * 16 + ((lane >> 3) & 1) * 8);
      mma(s[j], a[kk], b[0], b[1]);
      mma(s[j + 1], a[kk], b[2], b[3]);
    }
  }
}
// o (16xD) += p (16x64, as A fragments) · B, B a shared [64][D] tile (values, or q / k / dO rows).
template <int D>
__device__ __forceinline__ void mma_ab(float (&o)[D / 8][4], const uint32_t (&p)[4][4], const bf16* B, int lane) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
    for (int j = 0; j < D / 8; j += 2) {
      uint32_t b[4];
      ldsm_x4_t(b, B + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * ld<D>() + j * 8 + (lane >> 4) * 8);
      mma(o[j], p[kk], b[0], b[1]);
      mma(o[j + 1], p[kk], b[2], b[3]);
    }
  }
}
// An accumulator tile (16x64 f32) repacked as the bf16 A operand over its 64 columns.
__device__ __forceinline__ void to_a(uint32_t (&p)[4][4], const float (&s)[8][4]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    p[kk][0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
    p[kk][1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
    p[kk][2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    p[kk][3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
  }
}

// Issues the async copy of rows [t0, t0 + 64) of a (T, D) bf16 slice whose rows are `stride` apart
// (`src` points at row 0); rows past T are zero-filled.
template <int D>
__device__ __forceinline__ void tile_async(bf16* dst, const bf16* src, int64_t stride, int t0, int T) {
  constexpr int CH = D / 8;  // 16-byte chunks per row
#pragma unroll
  for (int e = threadIdx.x; e < TILE * CH; e += kWarps * 32) {
    const int r = e / CH, c = e % CH;
    const bool ok = t0 + r < T;
    cp_async16(dst + r * ld<D>() + c * 8, src + (ok ? (int64_t)(t0 + r) * stride + c * 8 : 0), ok);
  }
}
// Async copy of 64 per-row statistics (lse or delta of rows t0 ..), zero past T.
__device__ __forceinline__ void stats_async(float* dst, const float* src, int t0, int T) {
  if (threadIdx.x < TILE) {
    const bool ok = t0 + (int)threadIdx.x < T;
    cp_async4(dst + threadIdx.x, src + (ok ? t0 + threadIdx.x : 0), ok);
  }
}

// Shared-memory bytes of a kernel holding `tiles` bf16 tiles and `stats` floats.
template <int D> constexpr size_t smem_bytes(int tiles, int stats) {
  return (size_t)tiles * TILE * ld<D>() * sizeof(bf16) + (size_t)stats * sizeof(float);
}

// Two consecutive outputs at element `at` of o (f32) and, where the bf16 copy is kept (o16 not null),
// of o16: the copy a product reads, written by its producer (no cast pass).
__device__ __forceinline__ void put2(float* __restrict__ o, bf16* __restrict__ o16, int64_t at, float x, float y) {
  *reinterpret_cast<float2*>(o + at) = make_float2(x, y);
  if (o16) *reinterpret_cast<__nv_bfloat162*>(o16 + at) = __floats2bfloat162_rn(x, y);
}

// ---------------------------------------------------------------- forward
// Grid (query tiles, B·H); causal grids run the longest rows first. q16 is the bf16 copy of qkv; out16
// (or null) receives out's.
template <int D>
__global__ void __launch_bounds__(kWarps * 32) k_fwd(const bf16* __restrict__ q16, float* __restrict__ out,
                                                     bf16* __restrict__ out16, float* __restrict__ lse, int T, int H,
                                                     bool causal, float scale) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* Ks = Qs + TILE * ld<D>();       // 2 stages
  bf16* Vs = Ks + 2 * TILE * ld<D>();   // 2 stages
  const int bh = blockIdx.y, b = bh / H, h = bh % H;
  const int qt = causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x, q0 = qt * TILE;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int64_t rs = 3LL * H * D;  // row stride of q / k / v
  const bf16* qb = q16 + qkv_at(b, 0, 0, h, 0, T, H, D);
  const int ntile = (T + TILE - 1) / TILE, nkv = causal ? qt + 1 : ntile;
  const float sl = scale * kLog2e;  // scores in log2 units: exp2 instead of exp

  tile_async<D>(Qs, qb, rs, q0, T);
  tile_async<D>(Ks, qb + H * D, rs, 0, T);
  tile_async<D>(Vs, qb + 2 * H * D, rs, 0, T);
  cp_async_commit();

  uint32_t qf[D / 16][4];
  float o[D / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  const int row0 = q0 + warp * 16 + g;  // this thread's rows: row0, row0 + 8

  for (int kt = 0; kt < nkv; ++kt) {
    const int st = kt & 1, k0 = kt * TILE;
    if (kt + 1 < nkv) {
      tile_async<D>(Ks + (st ^ 1) * TILE * ld<D>(), qb + H * D, rs, k0 + TILE, T);
      tile_async<D>(Vs + (st ^ 1) * TILE * ld<D>(), qb + 2 * H * D, rs, k0 + TILE, T);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (kt == 0) load_a<D>(qf, Qs + warp * 16 * ld<D>(), lane);

    float s[8][4];
    mma_abt<D>(s, qf, Ks + st * TILE * ld<D>(), lane);
    const bool mask = (causal && kt == qt) || k0 + TILE > T;
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + j * 8 + 2 * c + (e & 1), row = row0 + (e >> 1) * 8;
        float v = s[j][e] * sl;
        if (mask && (key >= T || (causal && key > row))) v = -INFINITY;
        s[j][e] = v;
        mx[e >> 1] = fmaxf(mx[e >> 1], v);
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
    }
    // Every row sees at least one valid key per tile (tiles are aligned and the diagonal tile holds
    // key = row), so mx is finite; the guard keeps exp2 away from (-inf) - (-inf) regardless.
    float base[2], corr[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      base[i] = mx[i] == -INFINITY ? 0.f : mx[i];
      corr[i] = exp2f(m[i] - base[i]);
      m[i] = mx[i];
      l[i] *= corr[i];
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f(s[j][e] - base[e >> 1]);
        s[j][e] = p;
        l[e >> 1] += p;  // per-thread partial row sum; the quad's four are added at the end
      }
    }
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      o[j][0] *= corr[0]; o[j][1] *= corr[0];
      o[j][2] *= corr[1]; o[j][3] *= corr[1];
    }
    uint32_t pf[4][4];
    to_a(pf, s);
    mma_ab<D>(o, pf, Vs + st * TILE * ld<D>(), lane);
    __syncthreads();  // this stage is refilled by the next iteration's copies
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    const int t = row0 + i * 8;
    if (t >= T) continue;
    const float inv = 1.f / l[i];
    const int64_t at = (((int64_t)b * T + t) * H + h) * D + 2 * c;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) put2(out, out16, at + j * 8, o[j][2 * i] * inv, o[j][2 * i + 1] * inv);
    if (c == 0) lse[(int64_t)bh * T + t] = m[i] / kLog2e + logf(l[i]);
  }
}

// ---------------------------------------------------------------- backward
// delta[b, h, t] = Σ_d gout · out (fp32), one warp per (b, t, h) row.
__global__ void k_delta(const float* __restrict__ out, const float* __restrict__ gout, float* __restrict__ delta, int T,
                        int H, int D, int64_t rows) {
  const int lane = threadIdx.x & 31;
  for (int64_t i = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5; i < rows; i += ((int64_t)gridDim.x * blockDim.x) >> 5) {
    const float* o = out + i * D;
    const float* g = gout + i * D;
    float s = 0.f;
    for (int d = lane; d < D; d += 32) s += o[d] * g[d];
    for (int k = 16; k > 0; k >>= 1) s += __shfl_xor_sync(0xffffffffu, s, k);
    if (lane == 0) {
      const int64_t bt = i / H;
      const int h = (int)(i % H), b = (int)(bt / T), t = (int)(bt % T);
      delta[((int64_t)b * H + h) * T + t] = s;
    }
  }
}

// dK, dV of one key tile (grid: key tiles, B·H). Each warp owns 16 keys and works on transposed score
// tiles: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (16 keys x 64 queries), then dV += Pᵀ·dO and dK += dSᵀ·Q, with Pᵀ and
// dSᵀ repacked in registers. Query tiles (q, dO, lse, delta) are double-buffered.
template <int D>
__global__ void __launch_bounds__(kWarps * 32) k_bwd_kv(const bf16* __restrict__ q16, const bf16* __restrict__ go16,
                                                        const float* __restrict__ lse, const float* __restrict__ delta,
                                                        float* __restrict__ gqkv, bf16* __restrict__ g16, int T, int H,
                                                        bool causal, float scale) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + TILE * ld<D>();
  bf16* Qs = Vs + TILE * ld<D>();        // 2 stages
  bf16* dOs = Qs + 2 * TILE * ld<D>();   // 2 stages
  float* Ls = reinterpret_cast<float*>(dOs + 2 * TILE * ld<D>());  // 2 stages of lse
  float* Dl = Ls + 2 * TILE;                                        // 2 stages of delta
  const int bh = blockIdx.y, b = bh / H, h = bh % H, kt = blockIdx.x, k0 = kt * TILE;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int64_t rs = 3LL * H * D;
  const bf16* qb = q16 + qkv_at(b, 0, 0, h, 0, T, H, D);
  const bf16* gb = go16 + ((int64_t)b * T * H + h) * D;
  const float* lb = lse + (int64_t)bh * T;
  const float* db = delta + (int64_t)bh * T;
  const int ntile = (T + TILE - 1) / TILE, qbeg = causal ? kt : 0;
  const float sl = scale * kLog2e;

  tile_async<D>(Ks, qb + H * D, rs, k0, T);
  tile_async<D>(Vs, qb + 2 * H * D, rs, k0, T);
  auto load_q = [&](int qt, int st) {
    tile_async<D>(Qs + st * TILE * ld<D>(), qb, rs, qt * TILE, T);
    tile_async<D>(dOs + st * TILE * ld<D>(), gb, (int64_t)H * D, qt * TILE, T);
    stats_async(Ls + st * TILE, lb, qt * TILE, T);
    stats_async(Dl + st * TILE, db, qt * TILE, T);
  };
  load_q(qbeg, 0);
  cp_async_commit();

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[j][e] = dv[j][e] = 0.f;
  const int key0 = k0 + warp * 16 + g;  // this thread's keys: key0, key0 + 8

  for (int qt = qbeg; qt < ntile; ++qt) {
    const int st = (qt - qbeg) & 1, q0 = qt * TILE;
    if (qt + 1 < ntile) load_q(qt + 1, st ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const bf16* Q = Qs + st * TILE * ld<D>();
    const bf16* dO = dOs + st * TILE * ld<D>();
    const float* L = Ls + st * TILE;
    const float* Dd = Dl + st * TILE;

    float s[8][4], dp[8][4];
    {
      uint32_t af[D / 16][4];
      load_a<D>(af, Ks + warp * 16 * ld<D>(), lane);
      mma_abt<D>(s, af, Q, lane);
      load_a<D>(af, Vs + warp * 16 * ld<D>(), lane);
      mma_abt<D>(dp, af, dO, lane);
    }
    const bool mask = (causal && qt == kt) || q0 + TILE > T || k0 + TILE > T;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qi = j * 8 + 2 * c + (e & 1), q = q0 + qi, key = key0 + (e >> 1) * 8;
        const bool valid = !mask || (q < T && key < T && (!causal || key <= q));
        const float p = valid ? exp2f(s[j][e] * sl - L[qi] * kLog2e) : 0.f;
        s[j][e] = p;
        dp[j][e] = p * (dp[j][e] - Dd[qi]) * scale;
      }
    }
    uint32_t pf[4][4];
    to_a(pf, s);
    mma_ab<D>(dv, pf, dO, lane);
    to_a(pf, dp);
    mma_ab<D>(dk, pf, Q, lane);
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int key = key0 + i * 8;
    if (key >= T) continue;
    const int64_t gk = qkv_at(b, key, 1, h, 2 * c, T, H, D), gv = qkv_at(b, key, 2, h, 2 * c, T, H, D);
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      put2(gqkv, g16, gk + j * 8, dk[j][2 * i], dk[j][2 * i + 1]);
      put2(gqkv, g16, gv + j * 8, dv[j][2 * i], dv[j][2 * i + 1]);
    }
  }
}

// dQ of one query tile (grid: query tiles, B·H; causal grids run the longest rows first): S = Q·Kᵀ,
// dP = dO·Vᵀ, dQ += dS·K over the key tiles, which are double-buffered.
template <int D>
__global__ void __launch_bounds__(kWarps * 32) k_bwd_q(const bf16* __restrict__ q16, const bf16* __restrict__ go16,
                                                       const float* __restrict__ lse, const float* __restrict__ delta,
                                                       float* __restrict__ gqkv, bf16* __restrict__ g16, int T, int H,
                                                       bool causal, float scale) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* dOs = Qs + TILE * ld<D>();
  bf16* Ks = dOs + TILE * ld<D>();      // 2 stages
  bf16* Vs = Ks + 2 * TILE * ld<D>();   // 2 stages
  const int bh = blockIdx.y, b = bh / H, h = bh % H;
  const int qt = causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x, q0 = qt * TILE;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int64_t rs = 3LL * H * D;
  const bf16* qb = q16 + qkv_at(b, 0, 0, h, 0, T, H, D);
  const int ntile = (T + TILE - 1) / TILE, nkv = causal ? qt + 1 : ntile;
  const float sl = scale * kLog2e;

  tile_async<D>(Qs, qb, rs, q0, T);
  tile_async<D>(dOs, go16 + ((int64_t)b * T * H + h) * D, (int64_t)H * D, q0, T);
  tile_async<D>(Ks, qb + H * D, rs, 0, T);
  tile_async<D>(Vs, qb + 2 * H * D, rs, 0, T);
  cp_async_commit();

  const int row0 = q0 + warp * 16 + g;
  float l2[2], dl[2];  // lse (log2 units) and delta of rows row0, row0 + 8
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int t = row0 + i * 8;
    l2[i] = t < T ? lse[(int64_t)bh * T + t] * kLog2e : 0.f;
    dl[i] = t < T ? delta[(int64_t)bh * T + t] : 0.f;
  }
  uint32_t qf[D / 16][4], of[D / 16][4];
  float dq[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.f;

  for (int kt = 0; kt < nkv; ++kt) {
    const int st = kt & 1, k0 = kt * TILE;
    if (kt + 1 < nkv) {
      tile_async<D>(Ks + (st ^ 1) * TILE * ld<D>(), qb + H * D, rs, k0 + TILE, T);
      tile_async<D>(Vs + (st ^ 1) * TILE * ld<D>(), qb + 2 * H * D, rs, k0 + TILE, T);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (kt == 0) {
      load_a<D>(qf, Qs + warp * 16 * ld<D>(), lane);
      load_a<D>(of, dOs + warp * 16 * ld<D>(), lane);
    }
    const bf16* K = Ks + st * TILE * ld<D>();
    float s[8][4], dp[8][4];
    mma_abt<D>(s, qf, K, lane);
    mma_abt<D>(dp, of, Vs + st * TILE * ld<D>(), lane);
    const bool mask = (causal && kt == qt) || k0 + TILE > T;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + j * 8 + 2 * c + (e & 1), row = row0 + (e >> 1) * 8;
        const bool valid = !mask || (key < T && (!causal || key <= row));
        const float p = valid ? exp2f(s[j][e] * sl - l2[e >> 1]) : 0.f;
        dp[j][e] = p * (dp[j][e] - dl[e >> 1]) * scale;
      }
    }
    uint32_t pf[4][4];
    to_a(pf, dp);
    mma_ab<D>(dq, pf, K, lane);
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int t = row0 + i * 8;
    if (t >= T) continue;
    const int64_t at = qkv_at(b, t, 0, h, 2 * c, T, H, D);
#pragma unroll
    for (int j = 0; j < D / 8; ++j) put2(gqkv, g16, at + j * 8, dq[j][2 * i], dq[j][2 * i + 1]);
  }
}

template <int D>
void tc_forward(const bf16* q16, float* out, bf16* out16, float* lse, int B, int T, int H, bool causal, float scale) {
  static bool init = false;
  const size_t sm = smem_bytes<D>(5, 0);
  allow_smem(k_fwd<D>, sm, init, "attention (smem)");
  dim3 g((T + TILE - 1) / TILE, B * H);
  k_fwd<D><<<g, kWarps * 32, sm, stream()>>>(q16, out, out16, lse, T, H, causal, scale);
  check_launch("attention");
}
template <int D>
void tc_backward(const bf16* q16, const bf16* go16, const float* lse, const float* delta, float* gqkv, bf16* g16, int B,
                 int T, int H, bool causal, float scale) {
  static bool init_kv = false, init_q = false;
  const size_t sm_kv = smem_bytes<D>(6, 4 * TILE), sm_q = smem_bytes<D>(6, 0);
  allow_smem(k_bwd_kv<D>, sm_kv, init_kv, "attentionBackward (smem)");
  allow_smem(k_bwd_q<D>, sm_q, init_q, "attentionBackward (smem)");
  dim3 g((T + TILE - 1) / TILE, B * H);
  k_bwd_kv<D><<<g, kWarps * 32, sm_kv, stream()>>>(q16, go16, lse, delta, gqkv, g16, T, H, causal, scale);
  check_launch("attentionBackward");
  k_bwd_q<D><<<g, kWarps * 32, sm_q, stream()>>>(q16, go16, lse, delta, gqkv, g16, T, H, causal, scale);
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
// Row b's new tokens sit at positions pos[b] .. pos[b] + T − 1 (pos: B entries in device memory, so a
// captured decode step reads the positions of each replay).
__global__ void k_cache_write(const float* __restrict__ qkv, float* __restrict__ kc, float* __restrict__ vc,
                              const int32_t* __restrict__ pos, int B, int T, int H, int D, int Tmax) {
  int64_t n = (int64_t)B * T * H * D;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int d = (int)(i % D);
    int64_t r = i / D;
    int h = (int)(r % H);
    r /= H;
    int t = (int)(r % T), b = (int)(r / T);
    int64_t dst = (((int64_t)b * H + h) * Tmax + pos[b] + t) * D + d;
    kc[dst] = qkv[qkv_at(b, t, 1, h, d, T, H, D)];
    vc[dst] = qkv[qkv_at(b, t, 2, h, d, T, H, D)];
  }
}
// One new token per row (a decode step), one block of kDecWarps warps per (b, h). The block first
// writes the token's k and v into the cache at pos[b] (visible to the block after the barrier); thread t
// then scores keys t, t + blockDim, ... (its key row in 16-byte loads, all in flight together when D is
// a compile-time DT), and warp w sums its keys' share of the output (lanes over d, coalesced), the
// warps' shares added in shared memory. q and the scores live in dynamic smem (D + Tmax floats).
// D <= 32 · kDecPerLane; DT = D (32, 64, 128) or 0 (any D, element loads).
constexpr int kDecWarps = 4, kDecPerLane = 4;
template <int DT>
__global__ void __launch_bounds__(kDecWarps * 32) k_cache_decode(const float* __restrict__ qkv, float* __restrict__ kc,
                                                                float* __restrict__ vc, float* __restrict__ out,
                                                                const int32_t* __restrict__ pos, int H, int Drt, int Tmax,
                                                                float scale) {
  extern __shared__ __align__(16) float sm[];
  __shared__ float red[kDecWarps], part[kDecWarps][32 * kDecPerLane];
  const int D = DT ? DT : Drt;
  float* qs = sm;
  float* sc = sm + D;
  const int h = blockIdx.x % H, b = blockIdx.x / H, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int p = pos[b], S = p + 1;
  float* K = kc + ((int64_t)b * H + h) * Tmax * D;
  float* V = vc + ((int64_t)b * H + h) * Tmax * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    K[(int64_t)p * D + d] = qkv[qkv_at(b, 0, 1, h, d, 1, H, D)];
    V[(int64_t)p * D + d] = qkv[qkv_at(b, 0, 2, h, d, 1, H, D)];
    qs[d] = qkv[qkv_at(b, 0, 0, h, d, 1, H, D)];
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < S; j += blockDim.x) {
    const float* kr = K + (int64_t)j * D;
    float dot = 0.f;
    if constexpr (DT > 0) {
      float4 kk[DT / 4];
#pragma unroll
      for (int d4 = 0; d4 < DT / 4; ++d4) kk[d4] = reinterpret_cast<const float4*>(kr)[d4];
#pragma unroll
      for (int d4 = 0; d4 < DT / 4; ++d4) {
        const float4 qq = reinterpret_cast<const float4*>(qs)[d4];
        dot = fmaf(qq.x, kk[d4].x, dot);
        dot = fmaf(qq.y, kk[d4].y, dot);
        dot = fmaf(qq.z, kk[d4].z, dot);
        dot = fmaf(qq.w, kk[d4].w, dot);
      }
    } else {
      for (int d = 0; d < D; ++d) dot = fmaf(qs[d], kr[d], dot);
    }
    dot *= scale;
    sc[j] = dot;
    mx = fmaxf(mx, dot);
  }
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = red[0];
  for (int w = 1; w < kDecWarps; ++w) mx = fmaxf(mx, red[w]);
  __syncthreads();
  float acc[kDecPerLane] = {}, sum = 0.f;
#pragma unroll 4
  for (int j = warp; j < S; j += kDecWarps) {
    const float e = __expf(sc[j] - mx);
    sum += e;
    const float* vr = V + (int64_t)j * D;
#pragma unroll
    for (int i = 0; i < kDecPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < D) acc[i] = fmaf(e, vr[d], acc[i]);
    }
  }
  if (lane == 0) red[warp] = sum;
#pragma unroll
  for (int i = 0; i < kDecPerLane; ++i) part[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  sum = red[0];
  for (int w = 1; w < kDecWarps; ++w) sum += red[w];
  const float inv = 1.f / sum;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float o = part[0][d];
    for (int w = 1; w < kDecWarps; ++w) o += part[w][d];
    out[((int64_t)b * H + h) * D + d] = o * inv;
  }
}

// One block per (b, t, h); scores in dynamic smem (Tmax floats) + q (D floats).
__global__ void k_cache_attend(const float* __restrict__ qkv, const float* __restrict__ kc, const float* __restrict__ vc,
                               float* __restrict__ out, const int32_t* __restrict__ pos, int T, int H, int D, int Tmax,
                               float scale) {
  extern __shared__ float sm[];
  float* q = sm;
  float* sc = sm + D;
  __shared__ float red[32];
  const int h = blockIdx.x % H, t = (blockIdx.x / H) % T, b = blockIdx.x / (H * T);
  const int S = pos[b] + t + 1;
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

// Lets `kernel` take `dynamic` bytes of dynamic shared memory: past the default (48 KiB less the
// kernel's static shared memory) through the opt-in attribute. `allowed`: the size already allowed.
template <class Kernel>
void allow_smem(Kernel kernel, size_t dynamic, size_t& allowed) {
  if (dynamic <= allowed) return;
  cudaFuncAttributes a{};
  check(cudaFuncGetAttributes(&a, kernel), "attentionCached (smem)");
  if (dynamic + a.sharedSizeBytes > 48 * 1024) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)dynamic), "attentionCached (smem)");
  }
  allowed = dynamic;
}

template <int DT>
void cache_decode(const float* qkv, float* kc, float* vc, float* out, const int32_t* pos, int B, int H, int D, int Tmax,
                  float scale) {
  const size_t sm = (size_t)(D + Tmax) * sizeof(float);
  static size_t allowed = 0;  // one per instantiation
  allow_smem(k_cache_decode<DT>, sm, allowed);
  k_cache_decode<DT><<<(unsigned)(B * H), kDecWarps * 32, sm, stream()>>>(qkv, kc, vc, out, pos, H, D, Tmax, scale);
  check_launch("attentionCached");
}

// The tensor-core kernels' head sizes (kept in step with TC_HEAD_SIZES in src/backend/cuda/index.ts).
bool tc_head(int D) { return D == 16 || D == 32 || D == 64 || D == 128; }
}  // namespace

void attention(const float* qkv, const uint16_t* q16, float* out, uint16_t* out16, float* lse, int B, int T, int H, int D,
               bool causal, float scale, int impl) {
  if ((int64_t)B * T * H == 0) return;
  if (D == 0) {
    fill32(lse, (int64_t)B * H * T, 0u);  // degenerate; not used by the model
    return;
  }
  if (impl == 0) {
    if (!tc_head(D) || !q16) throw CudaError("attention: the tensor-core path needs D in {16, 32, 64, 128} and a bf16 copy");
    const bf16* q = reinterpret_cast<const bf16*>(q16);
    bf16* o16 = reinterpret_cast<bf16*>(out16);
    switch (D) {
      case 16: tc_forward<16>(q, out, o16, lse, B, T, H, causal, scale); return;
      case 32: tc_forward<32>(q, out, o16, lse, B, T, H, causal, scale); return;
      case 64: tc_forward<64>(q, out, o16, lse, B, T, H, causal, scale); return;
      default: tc_forward<128>(q, out, o16, lse, B, T, H, causal, scale); return;
    }
  }
  int64_t n = (int64_t)B * H * T;
  k_simt_fwd<<<grid_for(n, 128), 128, 0, stream()>>>(qkv, out, lse, B, T, H, D, causal, scale);
  check_launch("attention");
}

void attention_backward(const float* qkv, const uint16_t* q16, const float* out, const float* lse, const float* gout,
                        const uint16_t* go16, float* gqkv, uint16_t* gqkv16, int B, int T, int H, int D, bool causal,
                        float scale, int impl) {
  int64_t n = (int64_t)B * H * T;
  if (n == 0 || D == 0) return;
  if (impl == 0 && (!tc_head(D) || !q16 || !go16)) {
    throw CudaError("attentionBackward: the tensor-core path needs D in {16, 32, 64, 128} and bf16 copies");
  }
  Scratch delta(n * sizeof(float));
  k_delta<<<grid_for(n * 32, 256), 256, 0, stream()>>>(out, gout, delta.as<float>(), T, H, D, n);
  check_launch("attentionBackward");
  if (impl == 0) {
    const bf16 *q = reinterpret_cast<const bf16*>(q16), *go = reinterpret_cast<const bf16*>(go16);
    bf16* g16 = reinterpret_cast<bf16*>(gqkv16);
    switch (D) {
      case 16: tc_backward<16>(q, go, lse, delta.as<float>(), gqkv, g16, B, T, H, causal, scale); return;
      case 32: tc_backward<32>(q, go, lse, delta.as<float>(), gqkv, g16, B, T, H, causal, scale); return;
      case 64: tc_backward<64>(q, go, lse, delta.as<float>(), gqkv, g16, B, T, H, causal, scale); return;
      default: tc_backward<128>(q, go, lse, delta.as<float>(), gqkv, g16, B, T, H, causal, scale); return;
    }
  }
  k_simt_bwd_q<<<grid_for(n, 128), 128, 0, stream()>>>(qkv, gout, lse, delta.as<float>(), gqkv, B, T, H, D, causal, scale);
  check_launch("attentionBackward");
  k_simt_bwd_kv<<<grid_for(n, 128), 128, 0, stream()>>>(qkv, gout, lse, delta.as<float>(), gqkv, B, T, H, D, causal, scale);
  check_launch("attentionBackward");
}

void attention_cached(const float* qkv, float* kc, float* vc, float* out, const int32_t* pos, int B, int T, int H, int D,
                      int Tmax, float scale) {
  if ((int64_t)B * T * H == 0 || D == 0) return;
  if (T == 1 && D <= 32 * kDecPerLane) {
    switch (D) {
      case 32: cache_decode<32>(qkv, kc, vc, out, pos, B, H, D, Tmax, scale); return;
      case 64: cache_decode<64>(qkv, kc, vc, out, pos, B, H, D, Tmax, scale); return;
      case 128: cache_decode<128>(qkv, kc, vc, out, pos, B, H, D, Tmax, scale); return;
      default: cache_decode<0>(qkv, kc, vc, out, pos, B, H, D, Tmax, scale); return;
    }
  }
  const size_t sm = (size_t)(Tmax + D) * sizeof(float);
  static size_t allowed = 0;
  allow_smem(k_cache_attend, sm, allowed);
  const int64_t n = (int64_t)B * T * H * D;
  k_cache_write<<<grid_for(n, 256), 256, 0, stream()>>>(qkv, kc, vc, pos, B, T, H, D, Tmax);
  check_launch("attentionCached");
  k_cache_attend<<<(unsigned)(B * T * H), 128, sm, stream()>>>(qkv, kc, vc, out, pos, T, H, D, Tmax, scale);
  check_launch("attentionCached");
}

}  // namespace ssdc
