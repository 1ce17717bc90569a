// Fused multi-head self-attention (FlashAttention-2 style) on a packed qkv (B, T, 3, H, D).
// Forward: tasks (b, h, 64-query block) in parallel; keys in blocks of 64 with an online softmax; the
// score matrix never exists beyond one 64×64 tile per thread. Backward: tasks (b, h) in parallel, each
// owning all of its gq, gk, gv (deterministic whatever the thread count); probabilities are recomputed
// from the saved lse, dS = P ⊙ (dP − rowsum(gout ⊙ out)).
// Fast paths for D in {16, 32, 64, 128}: AVX-512 (4 query rows or keys per register block; functions
// with a target attribute, used only after a run-time CPU check) or AVX2/FMA (x86-64-v3, one row per
// block); a scalar path covers other D.
// GCC 12 false positive: _mm512_undefined_ps() inside the AVX-512 reduce intrinsics trips
// -Wmaybe-uninitialized once inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "gemm.h"
#include "kernels.h"
#include "parallel.h"
#include "vmath.h"

namespace ssd {

namespace {

constexpr int BQ = 64;  // query rows per tile
constexpr int BK = 64;  // keys per tile
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Layout {
  int64_t T, H, D;
  int64_t rowStride() const { return 3 * H * D; }  // between consecutive t in qkv
  const float* q(const float* qkv, int64_t b, int64_t t, int64_t h) const { return qkv + ((b * T + t) * 3) * H * D + h * D; }
  const float* k(const float* qkv, int64_t b, int64_t t, int64_t h) const { return q(qkv, b, t, h) + H * D; }
  const float* v(const float* qkv, int64_t b, int64_t t, int64_t h) const { return q(qkv, b, t, h) + 2 * H * D; }
  int64_t o(int64_t b, int64_t t, int64_t h) const { return (b * T + t) * H * D + h * D; }
};

// exp on 8 lanes: the same operations as vexpf (vmath.h), so the same bits.
inline __m256 exp256(__m256 x) {
  __m256 xc = _mm256_max_ps(x, _mm256_set1_ps(-104.0f));  // NaN -> -104 (patched below)
  xc = _mm256_min_ps(xc, _mm256_set1_ps(89.0f));
  const __m256 magic = _mm256_set1_ps(12582912.0f);
  __m256 n = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)), magic), magic);
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693359375f), xc);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  __m256i ni = _mm256_cvttps_epi32(n);
  __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  y = _mm256_mul_ps(_mm256_mul_ps(y, s1), s2);
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

inline float hmax256(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}
inline float hsum256(__m256 v) {
  __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_add_ps(m, _mm_movehl_ps(m, m));
  m = _mm_add_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

// acc[c] (keys 8c..8c+7 of the tile) = scale · Σ_d q[d] · kt[d·64 + j]  (kt: D×64 packed, zero-padded);
// keys j >= valid are set to -inf.
template <int D>
inline void scores_row(const float* q, const float* kt, float scale, int valid, __m256 acc[8]) {
  for (int c = 0; c < 8; ++c) acc[c] = _mm256_setzero_ps();
  for (int d = 0; d < D; ++d) {
    __m256 a = _mm256_broadcast_ss(q + d);
    const float* r = kt + d * BK;
    for (int c = 0; c < 8; ++c) acc[c] = _mm256_fmadd_ps(a, _mm256_loadu_ps(r + 8 * c), acc[c]);
  }
  __m256 sc = _mm256_set1_ps(scale);
  for (int c = 0; c < 8; ++c) acc[c] = _mm256_mul_ps(acc[c], sc);
  if (valid < BK) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i vv = _mm256_set1_epi32(valid);
    const __m256 ninf = _mm256_set1_ps(kNegInf);
    for (int c = 0; c < 8; ++c) {
      __m256i idx = _mm256_add_epi32(lane, _mm256_set1_epi32(8 * c));
      __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(vv, idx));
      acc[c] = _mm256_blendv_ps(ninf, acc[c], keep);
    }
  }
}

// o[0..D) = alpha · o + Σ_{j<n} p[j] · rows[j·stride + d]
template <int D>
inline void accum_rows(float* o, float alpha, const float* p, const float* rows, int64_t stride, int n) {
  constexpr int NV = D / 8;
  __m256 acc[NV];
  __m256 al = _mm256_set1_ps(alpha);
  for (int c = 0; c < NV; ++c) acc[c] = _mm256_mul_ps(_mm256_loadu_ps(o + 8 * c), al);
  for (int j = 0; j < n; ++j) {
    __m256 pj = _mm256_set1_ps(p[j]);
    const float* r = rows + j * stride;
    for (int c = 0; c < NV; ++c) acc[c] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(r + 8 * c), acc[c]);
  }
  for (int c = 0; c < NV; ++c) _mm256_storeu_ps(o + 8 * c, acc[c]);
}

// Transposes a packed n×D tile (rows contiguous) into kt (D×64), zero-padding columns n..63.
inline void pack_t(const float* rows, int n, int64_t D, float* kt) {
  if (n < BK)
    for (int64_t d = 0; d < D; ++d) std::fill(kt + d * BK + n, kt + (d + 1) * BK, 0.0f);
  for (int j = 0; j < n; ++j) {
    const float* r = rows + j * D;
    for (int64_t d = 0; d < D; ++d) kt[d * BK + j] = r[d];
  }
}

// Copies rows [0, n) (stride `stride`) into a contiguous n×D tile: the rows of qkv are 3·H·D apart,
// which aliases in L1 and the TLB when read directly.
inline void pack_rows(const float* base, int64_t stride, int n, int64_t D, float* dst) {
  for (int j = 0; j < n; ++j) std::copy(base + j * stride, base + j * stride + D, dst + j * D);
}

// ---------------------------------------------------------------- forward
template <int D>
void fwd_tile(const float* qkv, float* out, float* lse, const Layout& L, int64_t b, int64_t h, int64_t i0, int nq,
              bool causal, float scale, float* kt, float* vp, float* O, float* s) {
  const int64_t rs = L.rowStride();
  float m[BQ], l[BQ];
  for (int i = 0; i < nq; ++i) {
    m[i] = kNegInf;
    l[i] = 0.0f;
  }
  std::fill(O, O + BQ * D, 0.0f);
  const int64_t jend = causal ? i0 + nq : L.T;
  for (int64_t j0 = 0; j0 < jend; j0 += BK) {
    const int nk = (int)std::min<int64_t>(BK, jend - j0);
    pack_rows(L.k(qkv, b, j0, h), rs, nk, D, vp);
    pack_t(vp, nk, D, kt);
    pack_rows(L.v(qkv, b, j0, h), rs, nk, D, vp);
    const float* vb = vp;
    for (int i = 0; i < nq; ++i) {
      const int64_t t = i0 + i;
      int valid = nk;
      if (causal) valid = (int)std::min<int64_t>(nk, t - j0 + 1);
      __m256 sv[8];
      scores_row<D>(L.q(qkv, b, t, h), kt, scale, valid, sv);
      __m256 mv = sv[0];
      for (int c = 1; c < 8; ++c) mv = _mm256_max_ps(mv, sv[c]);
      const float tmax = hmax256(mv);
      const float mx = tmax > m[i] ? tmax : m[i];
      const float alpha = vexpf(m[i] - mx);  // exp(-inf) = 0 on the first tile
      const __m256 mxv = _mm256_set1_ps(mx);
      __m256 sum = _mm256_setzero_ps();
      for (int c = 0; c < 8; ++c) {
        __m256 p = exp256(_mm256_sub_ps(sv[c], mxv));  // masked keys: exp(-inf) = 0
        _mm256_storeu_ps(s + 8 * c, p);
        sum = _mm256_add_ps(sum, p);
      }
      l[i] = l[i] * alpha + hsum256(sum);
      m[i] = mx;
      accum_rows<D>(O + i * D, alpha, s, vb, D, valid);
    }
  }
  for (int i = 0; i < nq; ++i) {
    const int64_t t = i0 + i;
    float* o = out + L.o(b, t, h);
    const float inv = 1.0f / l[i];
    for (int d = 0; d < D; ++d) o[d] = O[i * D + d] * inv;
    lse[(b * L.H + h) * L.T + t] = m[i] + std::log(l[i]);
  }
}

template <int D>
void attention_fast(const float* qkv, float* out, float* lse, int64_t B, int64_t T, int64_t H, bool causal,
                    float scale) {
  const Layout L{T, H, D};
  const int64_t nqb = (T + BQ - 1) / BQ;
  parallel_for(B * H * nqb, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> kt((size_t)D * BK), vp((size_t)BK * D), O((size_t)BQ * D), s(BK);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t qb = task % nqb, bh = task / nqb, h = bh % H, b = bh / H;
      const int64_t i0 = qb * BQ;
      const int nq = (int)std::min<int64_t>(BQ, T - i0);
      fwd_tile<D>(qkv, out, lse, L, b, h, i0, nq, causal, scale, kt.data(), vp.data(), O.data(), s.data());
    }
  });
}

// ---------------------------------------------------------------- forward, AVX-512 (4 query rows at a time)
#define SSD_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))

SSD_AVX512 inline __m512 exp512(__m512 x) {  // same operations as vexpf
  __m512 xc = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
  xc = _mm512_min_ps(xc, _mm512_set1_ps(89.0f));
  const __m512 magic = _mm512_set1_ps(12582912.0f);
  __m512 n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)), magic), magic);
  __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), xc);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  __m512i ni = _mm512_cvttps_epi32(n);
  __m512i n1 = _mm512_srai_epi32(ni, 1), n2 = _mm512_sub_epi32(ni, n1);
  const __m512i bias = _mm512_set1_epi32(127);
  __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n1, bias), 23));
  __m512 s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n2, bias), 23));
  y = _mm512_mul_ps(_mm512_mul_ps(y, s1), s2);
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), y, x);
}

// lanes 16c .. 16c+15 that are < valid
SSD_AVX512 inline __mmask16 valid_mask(int valid, int c) {
  int k = valid - 16 * c;
  if (k >= 16) return (__mmask16)0xFFFF;
  if (k <= 0) return (__mmask16)0;
  return (__mmask16)((1u << k) - 1u);
}

// Scores of 4 query rows against a 64-key tile: acc[k][c] holds keys 16c..16c+15 of row k.
template <int D>
SSD_AVX512 inline void scores4(const float* const q[4], const float* kt, __m512 acc[4][4]) {
  #pragma GCC unroll 8
  for (int k = 0; k < 4; ++k)
    #pragma GCC unroll 8
    for (int c = 0; c < 4; ++c) acc[k][c] = _mm512_setzero_ps();
  for (int d = 0; d < D; ++d) {
    const float* r = kt + d * BK;
    __m512 kv[4];
    #pragma GCC unroll 8
    for (int c = 0; c < 4; ++c) kv[c] = _mm512_loadu_ps(r + 16 * c);
    #pragma GCC unroll 8
    for (int k = 0; k < 4; ++k) {
      __m512 a = _mm512_set1_ps(q[k][d]);
      #pragma GCC unroll 8
      for (int c = 0; c < 4; ++c) acc[k][c] = _mm512_fmadd_ps(a, kv[c], acc[k][c]);
    }
  }
}

// o_k[0..D) = alpha_k · o_k + Σ_{j<n} w[k·64 + j] · rows[j·D + d] for 4 rows (o_k = O + row[k]·D);
// only rows k < nr are stored.
template <int D>
SSD_AVX512 inline void accum4(float* O, const int row[4], int nr, const float alpha[4], const float* w, const float* rows,
                              int n, int64_t wk = BK, int64_t wj = 1) {
  constexpr int NZ = D / 16;
  constexpr int NC = NZ < 4 ? NZ : 4;
  for (int c0 = 0; c0 < NZ; c0 += NC) {
    __m512 o[4][NC];
    #pragma GCC unroll 8
    for (int k = 0; k < 4; ++k) {
      __m512 al = _mm512_set1_ps(alpha[k]);
      #pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) o[k][c] = _mm512_mul_ps(_mm512_loadu_ps(O + row[k] * D + 16 * (c0 + c)), al);
    }
    for (int j = 0; j < n; ++j) {
      __m512 v[NC];
      #pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) v[c] = _mm512_loadu_ps(rows + j * D + 16 * (c0 + c));
      #pragma GCC unroll 8
      for (int k = 0; k < 4; ++k) {
        __m512 p = _mm512_set1_ps(w[k * wk + j * wj]);
        #pragma GCC unroll 8
        for (int c = 0; c < NC; ++c) o[k][c] = _mm512_fmadd_ps(p, v[c], o[k][c]);
      }
    }
    #pragma GCC unroll 8
    for (int k = 0; k < nr; ++k)
      #pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) _mm512_storeu_ps(O + row[k] * D + 16 * (c0 + c), o[k][c]);
  }
}

template <int D>
SSD_AVX512 void fwd_tile512(const float* qkv, float* out, float* lse, const Layout& L, int64_t b, int64_t h, int64_t i0,
                            int nq, bool causal, float scale, float* kt, float* vp, float* O, float* s) {
  const int64_t rs = L.rowStride();
  float m[BQ], l[BQ];
  for (int i = 0; i < nq; ++i) {
    m[i] = kNegInf;
    l[i] = 0.0f;
  }
  std::fill(O, O + BQ * D, 0.0f);
  const int64_t jend = causal ? i0 + nq : L.T;
  const __m512 sc = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(kNegInf);
  for (int64_t j0 = 0; j0 < jend; j0 += BK) {
    const int nk = (int)std::min<int64_t>(BK, jend - j0);
    pack_rows(L.k(qkv, b, j0, h), rs, nk, D, vp);
    pack_t(vp, nk, D, kt);
    pack_rows(L.v(qkv, b, j0, h), rs, nk, D, vp);
    for (int i = 0; i < nq; i += 4) {
      const int nr = std::min(4, nq - i);
      const float* q[4];
      int row[4], valid[4];
      int maxvalid = 0;
      #pragma GCC unroll 8
      for (int k = 0; k < 4; ++k) {
        row[k] = i + std::min(k, nr - 1);
        q[k] = L.q(qkv, b, i0 + row[k], h);
        valid[k] = causal ? (int)std::min<int64_t>(nk, i0 + row[k] - j0 + 1) : nk;
        maxvalid = std::max(maxvalid, valid[k]);
      }
      __m512 acc[4][4];
      scores4<D>(q, kt, acc);
      float alpha[4];
      #pragma GCC unroll 8
      for (int k = 0; k < 4; ++k) {
        __m512 mv = ninf;
        #pragma GCC unroll 8
        for (int c = 0; c < 4; ++c) {
          acc[k][c] = _mm512_mask_blend_ps(valid_mask(valid[k], c), ninf, _mm512_mul_ps(acc[k][c], sc));
          mv = _mm512_max_ps(mv, acc[k][c]);
        }
        const float tmax = _mm512_reduce_max_ps(mv);
        const float mold = m[row[k]];
        const float mx = tmax > mold ? tmax : mold;
        alpha[k] = vexpf(mold - mx);
        const __m512 mxv = _mm512_set1_ps(mx);
        __m512 sum = _mm512_setzero_ps();
        #pragma GCC unroll 8
        for (int c = 0; c < 4; ++c) {
          __m512 p = exp512(_mm512_sub_ps(acc[k][c], mxv));
          _mm512_storeu_ps(s + k * BK + 16 * c, p);
          sum = _mm512_add_ps(sum, p);
        }
        if (k < nr) {
          l[row[k]] = l[row[k]] * alpha[k] + _mm512_reduce_add_ps(sum);
          m[row[k]] = mx;
        }
      }
      accum4<D>(O, row, nr, alpha, s, vp, maxvalid);
    }
  }
  for (int i = 0; i < nq; ++i) {
    const int64_t t = i0 + i;
    float* o = out + L.o(b, t, h);
    const float inv = 1.0f / l[i];
    for (int d = 0; d < D; ++d) o[d] = O[i * D + d] * inv;
    lse[(b * L.H + h) * L.T + t] = m[i] + std::log(l[i]);
  }
}

template <int D>
void attention_fast512(const float* qkv, float* out, float* lse, int64_t B, int64_t T, int64_t H, bool causal,
                       float scale) {
  const Layout L{T, H, D};
  const int64_t nqb = (T + BQ - 1) / BQ;
  parallel_for(B * H * nqb, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> kt((size_t)D * BK), vp((size_t)BK * D), O((size_t)BQ * D), s(4 * BK);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t qb = task % nqb, bh = task / nqb, h = bh % H, b = bh / H;
      const int64_t i0 = qb * BQ;
      const int nq = (int)std::min<int64_t>(BQ, T - i0);
      fwd_tile512<D>(qkv, out, lse, L, b, h, i0, nq, causal, scale, kt.data(), vp.data(), O.data(), s.data());
    }
  });
}

// ---------------------------------------------------------------- backward
// o[0..D) += Σ_{i<n} w[i·ws] · rows[i·D + d]   (w strided: a column of a 64×64 tile)
template <int D>
inline void accum_col(float* o, const float* w, int64_t ws, const float* rows, int n) {
  constexpr int NV = D / 8;
  __m256 acc[NV];
  for (int c = 0; c < NV; ++c) acc[c] = _mm256_loadu_ps(o + 8 * c);
  for (int i = 0; i < n; ++i) {
    __m256 wi = _mm256_broadcast_ss(w + i * ws);
    const float* r = rows + i * D;
    for (int c = 0; c < NV; ++c) acc[c] = _mm256_fmadd_ps(wi, _mm256_loadu_ps(r + 8 * c), acc[c]);
  }
  for (int c = 0; c < NV; ++c) _mm256_storeu_ps(o + 8 * c, acc[c]);
}

struct BwdScratch {
  std::vector<float> kt, vt, kp, qp, gp, P, dS, dK, dV, dQ, Dv;
  BwdScratch(int64_t T, int64_t D)
      : kt((size_t)(D * BK)), vt((size_t)(D * BK)), kp((size_t)(BK * D)), qp((size_t)(BQ * D)), gp((size_t)(BQ * D)),
        P((size_t)(BQ * BK)), dS((size_t)(BQ * BK)), dK((size_t)(BK * D)), dV((size_t)(BK * D)), dQ((size_t)(T * D)),
        Dv((size_t)T) {}
};

// One (b, h): key tiles outer; for each, query tiles inner: P and dS tiles (64×64) from recomputed
// scores, then dQ += dS·K row by row and dK += dSᵀ·Q, dV += Pᵀ·gout column by column, each with
// register accumulators.
template <int D>
void bwd_head(const float* qkv, const float* out, const float* lse, const float* gout, float* gqkv, const Layout& L,
              int64_t b, int64_t h, bool causal, float scale, BwdScratch& w) {
  const int64_t T = L.T, rs = L.rowStride();
  const float* lrow = lse + (b * L.H + h) * T;
  float* Dv = w.Dv.data();
  float* dQ = w.dQ.data();
  for (int64_t t = 0; t < T; ++t) {
    const float* g = gout + L.o(b, t, h);
    const float* o = out + L.o(b, t, h);
    double acc = 0;
    for (int d = 0; d < D; ++d) acc += (double)g[d] * (double)o[d];
    Dv[t] = (float)acc;
  }
  std::fill(dQ, dQ + T * D, 0.0f);
  float *kt = w.kt.data(), *vt = w.vt.data(), *kp = w.kp.data(), *qp = w.qp.data(), *gp = w.gp.data();
  float *P = w.P.data(), *dS = w.dS.data(), *dK = w.dK.data(), *dV = w.dV.data();
  const __m256 sc = _mm256_set1_ps(scale);
  for (int64_t j0 = 0; j0 < T; j0 += BK) {
    const int nk = (int)std::min<int64_t>(BK, T - j0);
    pack_rows(L.v(qkv, b, j0, h), rs, nk, D, kp);
    pack_t(kp, nk, D, vt);
    pack_rows(L.k(qkv, b, j0, h), rs, nk, D, kp);
    pack_t(kp, nk, D, kt);
    std::fill(dK, dK + BK * D, 0.0f);
    std::fill(dV, dV + BK * D, 0.0f);
    for (int64_t i0 = causal ? j0 : 0; i0 < T; i0 += BQ) {  // tiles are aligned (BQ == BK)
      const int nq = (int)std::min<int64_t>(BQ, T - i0);
      pack_rows(L.q(qkv, b, i0, h), rs, nq, D, qp);
      for (int i = 0; i < nq; ++i) std::copy(gout + L.o(b, i0 + i, h), gout + L.o(b, i0 + i, h) + D, gp + i * D);
      for (int i = 0; i < nq; ++i) {
        const int64_t t = i0 + i;
        int valid = nk;
        if (causal) valid = (int)std::min<int64_t>(nk, t - j0 + 1);
        float* pr = P + i * BK;
        float* dr = dS + i * BK;
        {
          __m256 sv[8];
          scores_row<D>(qp + i * D, kt, scale, valid, sv);
          const __m256 lt = _mm256_set1_ps(lrow[t]);
          for (int c = 0; c < 8; ++c) _mm256_storeu_ps(pr + 8 * c, exp256(_mm256_sub_ps(sv[c], lt)));  // P (0 if masked)
        }
        {
          __m256 dv[8];
          scores_row<D>(gp + i * D, vt, 1.0f, BK, dv);
          const __m256 dt = _mm256_set1_ps(Dv[t]);
          for (int c = 0; c < 8; ++c) {  // scale · dS = scale · P ⊙ (dP − D)
            __m256 p = _mm256_loadu_ps(pr + 8 * c);
            _mm256_storeu_ps(dr + 8 * c, _mm256_mul_ps(_mm256_mul_ps(p, _mm256_sub_ps(dv[c], dt)), sc));
          }
        }
        accum_rows<D>(dQ + t * D, 1.0f, dr, kp, D, valid);  // dQ += scale · dS K
      }
      for (int j = 0; j < nk; ++j) {
        accum_col<D>(dV + j * D, P + j, BK, gp, nq);   // dV += Pᵀ gout
        accum_col<D>(dK + j * D, dS + j, BK, qp, nq);  // dK += scale · dSᵀ q
      }
    }
    for (int j = 0; j < nk; ++j) {
      float* gk = gqkv + ((b * T + j0 + j) * 3 + 1) * L.H * D + h * D;
      float* gv = gk + L.H * D;
      std::copy(dK + j * D, dK + (j + 1) * D, gk);
      std::copy(dV + j * D, dV + (j + 1) * D, gv);
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    float* gq = gqkv + ((b * T + t) * 3) * L.H * D + h * D;
    std::copy(dQ + t * D, dQ + (t + 1) * D, gq);
  }
}

// AVX-512 backward for one (b, h): same structure as bwd_head, 4 rows (or keys) at a time.
template <int D>
SSD_AVX512 void bwd_head512(const float* qkv, const float* out, const float* lse, const float* gout, float* gqkv,
                            const Layout& L, int64_t b, int64_t h, bool causal, float scale, BwdScratch& w) {
  const int64_t T = L.T, rs = L.rowStride();
  const float* lrow = lse + (b * L.H + h) * T;
  float* Dv = w.Dv.data();
  float* dQ = w.dQ.data();
  for (int64_t t = 0; t < T; ++t) {
    const float* g = gout + L.o(b, t, h);
    const float* o = out + L.o(b, t, h);
    double acc = 0;
    for (int d = 0; d < D; ++d) acc += (double)g[d] * (double)o[d];
    Dv[t] = (float)acc;
  }
  std::fill(dQ, dQ + T * D, 0.0f);
  float *kt = w.kt.data(), *vt = w.vt.data(), *kp = w.kp.data(), *qp = w.qp.data(), *gp = w.gp.data();
  float *P = w.P.data(), *dS = w.dS.data(), *dK = w.dK.data(), *dV = w.dV.data();
  const __m512 sc = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(kNegInf);
  const float ones[4] = {1.0f, 1.0f, 1.0f, 1.0f};
  for (int64_t j0 = 0; j0 < T; j0 += BK) {
    const int nk = (int)std::min<int64_t>(BK, T - j0);
    pack_rows(L.v(qkv, b, j0, h), rs, nk, D, kp);
    pack_t(kp, nk, D, vt);
    pack_rows(L.k(qkv, b, j0, h), rs, nk, D, kp);
    pack_t(kp, nk, D, kt);
    std::fill(dK, dK + BK * D, 0.0f);
    std::fill(dV, dV + BK * D, 0.0f);
    for (int64_t i0 = causal ? j0 : 0; i0 < T; i0 += BQ) {
      const int nq = (int)std::min<int64_t>(BQ, T - i0);
      pack_rows(L.q(qkv, b, i0, h), rs, nq, D, qp);
      for (int i = 0; i < nq; ++i) std::copy(gout + L.o(b, i0 + i, h), gout + L.o(b, i0 + i, h) + D, gp + i * D);
      for (int i = 0; i < nq; i += 4) {
        const int nr = std::min(4, nq - i);
        const float* q[4];
        const float* g[4];
        int row[4], valid[4];
        int maxvalid = 0;
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) {
          row[k] = i + std::min(k, nr - 1);
          q[k] = qp + row[k] * D;
          g[k] = gp + row[k] * D;
          valid[k] = causal ? (int)std::min<int64_t>(nk, i0 + row[k] - j0 + 1) : nk;
          maxvalid = std::max(maxvalid, valid[k]);
        }
        {
          __m512 acc[4][4];
          scores4<D>(q, kt, acc);
#pragma GCC unroll 4
          for (int k = 0; k < 4; ++k) {
            const __m512 lt = _mm512_set1_ps(lrow[i0 + row[k]]);
#pragma GCC unroll 4
            for (int c = 0; c < 4; ++c) {
              __m512 sv = _mm512_mask_blend_ps(valid_mask(valid[k], c), ninf, _mm512_mul_ps(acc[k][c], sc));
              _mm512_storeu_ps(P + (i + k) * BK + 16 * c, exp512(_mm512_sub_ps(sv, lt)));  // P (0 if masked)
            }
          }
        }
        {
          __m512 acc[4][4];
          scores4<D>(g, vt, acc);
#pragma GCC unroll 4
          for (int k = 0; k < 4; ++k) {
            const __m512 dt = _mm512_set1_ps(Dv[i0 + row[k]]);
#pragma GCC unroll 4
            for (int c = 0; c < 4; ++c) {  // scale · dS = scale · P ⊙ (dP − D)
              __m512 p = _mm512_loadu_ps(P + (i + k) * BK + 16 * c);
              _mm512_storeu_ps(dS + (i + k) * BK + 16 * c, _mm512_mul_ps(_mm512_mul_ps(p, _mm512_sub_ps(acc[k][c], dt)), sc));
            }
          }
        }
        accum4<D>(dQ + i0 * D, row, nr, ones, dS + i * BK, kp, maxvalid);  // dQ += scale · dS K
      }
      for (int j = 0; j < nk; j += 4) {
        const int nr = std::min(4, nk - j);
        int row[4];
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) row[k] = j + std::min(k, nr - 1);
        accum4<D>(dV, row, nr, ones, P + j, gp, nq, 1, BK);   // dV += Pᵀ gout
        accum4<D>(dK, row, nr, ones, dS + j, qp, nq, 1, BK);  // dK += scale · dSᵀ q
      }
    }
    for (int j = 0; j < nk; ++j) {
      float* gk = gqkv + ((b * T + j0 + j) * 3 + 1) * L.H * D + h * D;
      float* gv = gk + L.H * D;
      std::copy(dK + j * D, dK + (j + 1) * D, gk);
      std::copy(dV + j * D, dV + (j + 1) * D, gv);
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    float* gq = gqkv + ((b * T + t) * 3) * L.H * D + h * D;
    std::copy(dQ + t * D, dQ + (t + 1) * D, gq);
  }
}

template <int D>
void attention_backward_fast512(const float* qkv, const float* out, const float* lse, const float* gout, float* gqkv,
                                int64_t B, int64_t T, int64_t H, bool causal, float scale) {
  const Layout L{T, H, D};
  parallel_for(B * H, 1, [&](int64_t t0, int64_t t1) {
    BwdScratch w(T, D);
    for (int64_t bh = t0; bh < t1; ++bh) {
      const int64_t h = bh % H, b = bh / H;
      bwd_head512<D>(qkv, out, lse, gout, gqkv, L, b, h, causal, scale, w);
    }
  });
}

template <int D>
void attention_backward_fast(const float* qkv, const float* out, const float* lse, const float* gout, float* gqkv,
                             int64_t B, int64_t T, int64_t H, bool causal, float scale) {
  const Layout L{T, H, D};
  parallel_for(B * H, 1, [&](int64_t t0, int64_t t1) {
    BwdScratch w(T, D);
    for (int64_t bh = t0; bh < t1; ++bh) {
      const int64_t h = bh % H, b = bh / H;
      bwd_head<D>(qkv, out, lse, gout, gqkv, L, b, h, causal, scale, w);
    }
  });
}

// ---------------------------------------------------------------- scalar path (any D)
void attention_scalar(const float* qkv, float* out, float* lse, int64_t B, int64_t T, int64_t H, int64_t D, bool causal,
                      float scale) {
  const Layout L{T, H, D};
  parallel_for(B * H * T, 16, [&](int64_t t0, int64_t t1) {
    std::vector<float> s((size_t)T);
    std::vector<double> o((size_t)D);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t t = task % T, bh = task / T, h = bh % H, b = bh / H;
      const int64_t n = causal ? t + 1 : T;
      const float* q = L.q(qkv, b, t, h);
      float mx = kNegInf;
      for (int64_t j = 0; j < n; ++j) {
        const float* k = L.k(qkv, b, j, h);
        float acc = 0.0f;
        for (int64_t d = 0; d < D; ++d) acc = std::fma(q[d], k[d], acc);
        s[(size_t)j] = acc * scale;
        mx = s[(size_t)j] > mx ? s[(size_t)j] : mx;
      }
      double sum = 0;
      std::fill(o.begin(), o.end(), 0.0);
      for (int64_t j = 0; j < n; ++j) {
        float p = vexpf(s[(size_t)j] - mx);
        sum += p;
        const float* v = L.v(qkv, b, j, h);
        for (int64_t d = 0; d < D; ++d) o[(size_t)d] += (double)p * v[d];
      }
      float* op = out + L.o(b, t, h);
      for (int64_t d = 0; d < D; ++d) op[d] = (float)(o[(size_t)d] / sum);
      lse[(b * H + h) * T + t] = (float)((double)mx + std::log(sum));
    }
  });
}

void attention_backward_scalar(const float* qkv, const float* out, const float* lse, const float* gout, float* gqkv,
                               int64_t B, int64_t T, int64_t H, int64_t D, bool causal, float scale) {
  const Layout L{T, H, D};
  parallel_for(B * H, 1, [&](int64_t t0, int64_t t1) {
    std::vector<double> dq((size_t)(T * D)), dk((size_t)(T * D)), dv((size_t)(T * D));
    for (int64_t bh = t0; bh < t1; ++bh) {
      const int64_t h = bh % H, b = bh / H;
      std::fill(dq.begin(), dq.end(), 0.0);
      std::fill(dk.begin(), dk.end(), 0.0);
      std::fill(dv.begin(), dv.end(), 0.0);
      for (int64_t t = 0; t < T; ++t) {
        const float* q = L.q(qkv, b, t, h);
        const float* g = gout + L.o(b, t, h);
        const float* o = out + L.o(b, t, h);
        double Dt = 0;
        for (int64_t d = 0; d < D; ++d) Dt += (double)g[d] * o[d];
        const float lt = lse[(b * H + h) * T + t];
        const int64_t n = causal ? t + 1 : T;
        for (int64_t j = 0; j < n; ++j) {
          const float* k = L.k(qkv, b, j, h);
          const float* v = L.v(qkv, b, j, h);
          float acc = 0.0f, dpa = 0.0f;
          for (int64_t d = 0; d < D; ++d) {
            acc = std::fma(q[d], k[d], acc);
            dpa = std::fma(g[d], v[d], dpa);
          }
          const double p = vexpf(acc * scale - lt);
          const double ds = p * ((double)dpa - Dt) * scale;
          for (int64_t d = 0; d < D; ++d) {
            dv[(size_t)(j * D + d)] += p * g[d];
            dk[(size_t)(j * D + d)] += ds * q[d];
            dq[(size_t)(t * D + d)] += ds * k[d];
          }
        }
      }
      for (int64_t t = 0; t < T; ++t) {
        float* gq = gqkv + ((b * T + t) * 3) * H * D + h * D;
        for (int64_t d = 0; d < D; ++d) {
          gq[d] = (float)dq[(size_t)(t * D + d)];
          gq[H * D + d] = (float)dk[(size_t)(t * D + d)];
          gq[2 * H * D + d] = (float)dv[(size_t)(t * D + d)];
        }
      }
    }
  });
}

// ---------------------------------------------------------------- KV-cache attention (inference)
inline float dot8(const float* a, const float* b, int64_t D) {
  __m256 acc = _mm256_setzero_ps();
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), acc);
  float s = hsum256(acc);
  for (; d < D; ++d) s = std::fma(a[d], b[d], s);
  return s;
}

// o[0:D] += p · v[0:D]
inline void axpy8(float* o, float p, const float* v, int64_t D) {
  const __m256 pv = _mm256_set1_ps(p);
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) _mm256_storeu_ps(o + d, _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + d), _mm256_loadu_ps(o + d)));
  for (; d < D; ++d) o[d] = std::fma(p, v[d], o[d]);
}

// One query row over keys 0 .. n−1 of a (Tmax, D) cache slice: two passes (scores, then weights).
void cached_row(const float* q, const float* Kc, const float* Vc, int64_t n, int64_t D, float scale, float* s, float* o) {
  float mx = kNegInf;
  for (int64_t j = 0; j < n; ++j) {
    s[j] = dot8(q, Kc + j * D, D) * scale;
    mx = s[j] > mx ? s[j] : mx;
  }
  double sum = 0;
  std::fill(o, o + D, 0.0f);
  for (int64_t j = 0; j < n; ++j) {
    const float p = vexpf(s[j] - mx);
    sum += p;
    axpy8(o, p, Vc + j * D, D);
  }
  const float inv = (float)(1.0 / sum);
  for (int64_t d = 0; d < D; ++d) o[d] *= inv;
}

}  // namespace

void attention_cached(const float* qkv, float* kc, float* vc, float* out, const int32_t* pos, int64_t B, int64_t T,
                      int64_t H, int64_t D, int64_t Tmax, float scale) {
  if (B <= 0 || T <= 0 || H <= 0 || D <= 0) return;
  const Layout L{T, H, D};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t c = ((b * H + h) * Tmax + pos[b] + t) * D;
        std::copy(L.k(qkv, b, t, h), L.k(qkv, b, t, h) + D, kc + c);
        std::copy(L.v(qkv, b, t, h), L.v(qkv, b, t, h) + D, vc + c);
      }
  // A prefill from position 0 sees exactly the new tokens: the fused causal kernel gives the same bits
  // as a full forward pass.
  bool fresh = true;
  for (int64_t b = 0; b < B; ++b) fresh = fresh && pos[b] == 0;
  if (fresh && T > 1) {
    std::vector<float> lse((size_t)(B * H * T));
    attention(qkv, out, lse.data(), B, T, H, D, true, scale);
    return;
  }
  parallel_for(B * H * T, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> s((size_t)Tmax);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t t = task % T, bh = task / T, h = bh % H, b = bh / H;
      const float* cache = kc + (b * H + h) * Tmax * D;
      cached_row(L.q(qkv, b, t, h), cache, vc + (b * H + h) * Tmax * D, pos[b] + t + 1, D, scale, s.data(),
                 out + L.o(b, t, h));
    }
  });
}

void attention(const float* qkv, float* out, float* lse, int64_t B, int64_t T, int64_t H, int64_t D, bool causal,
               float scale) {
  if (B <= 0 || T <= 0 || H <= 0 || D <= 0) return;
  if (cpu_has_avx512()) {
    switch (D) {
      case 16: attention_fast512<16>(qkv, out, lse, B, T, H, causal, scale); return;
      case 32: attention_fast512<32>(qkv, out, lse, B, T, H, causal, scale); return;
      case 64: attention_fast512<64>(qkv, out, lse, B, T, H, causal, scale); return;
      case 128: attention_fast512<128>(qkv, out, lse, B, T, H, causal, scale); return;
      default: break;
    }
  }
  switch (D) {
    case 16: attention_fast<16>(qkv, out, lse, B, T, H, causal, scale); return;
    case 32: attention_fast<32>(qkv, out, lse, B, T, H, causal, scale); return;
    case 64: attention_fast<64>(qkv, out, lse, B, T, H, causal, scale); return;
    case 128: attention_fast<128>(qkv, out, lse, B, T, H, causal, scale); return;
    default: attention_scalar(qkv, out, lse, B, T, H, D, causal, scale); return;
  }
}

void attention_backward(const float* qkv, const float* out, const float* lse, const float* gout, float* gqkv, int64_t B,
                        int64_t T, int64_t H, int64_t D, bool causal, float scale) {
  if (B <= 0 || T <= 0 || H <= 0 || D <= 0) return;
  if (cpu_has_avx512()) {
    switch (D) {
      case 16: attention_backward_fast512<16>(qkv, out, lse, gout, gqkv, B, T, H, causal, scale); return;
      case 32: attention_backward_fast512<32>(qkv, out, lse, gout, gqkv, B, T, H, causal, scale); return;
      case 64: attention_backward_fast512<64>(qkv, out, lse, gout, gqkv, B, T, H, causal, scale); return;
      case 128: attention_backward_fast512<128>(qkv, out, lse, gout, gqkv, B, T, H, causal, scale); return;
      default: break;
    }
  }
  switch (D) {
    case 16: attention_backward_fast<16>(qkv, out, lse, gout, gqkv, B, T, H, causal, scale); return;
    case 32: attention_backward_fast<32>(qkv, out, lse, gout, gqkv, B, T, H, causal, scale); return;
    case 64: attention_backward_fast<64>(qkv, out, lse, gout, gqkv, B, T, H, causal, scale); return;
    case 128: attention_backward_fast<128>(qkv, out, lse, gout, gqkv, B, T, H, causal, scale); return;
    default: attention_backward_scalar(qkv, out, lse, gout, gqkv, B, T, H, D, causal, scale); return;
  }
}

}  // namespace ssd
