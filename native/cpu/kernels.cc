// Elementwise, reduction and NN kernels. Plain C++ loops over contiguous memory for the compiler to
// vectorise (-march=x86-64-v3, no -ffast-math, -ffp-contract=off: scalar and vector code give the same
// bits). Parallel partitions are over independent outputs; reductions use fixed blocking, so results
// do not depend on the thread count.
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "parallel.h"
#include "rng.h"
#include "vmath.h"

namespace ssd {

namespace {

constexpr int64_t kGrain = 1 << 15;   // elements per chunk for cheap elementwise work
constexpr int64_t kSumBlock = 1 << 16;  // fixed blocking of long f64 sums

// Σ x (f64) with 8 fixed lanes combined in a fixed order.
template <class F>
inline double dsum8(int64_t n, F f) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += f(i + l);
  for (int l = 0; i < n; ++i, ++l) acc[l] += f(i);
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// Running f64 sum in 8 fixed lanes (lane = position mod 8 within each added run).
struct DAcc8 {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  void add(const float* x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      for (int l = 0; l < 8; ++l) a[l] += (double)x[i + l];
    for (int l = 0; i < n; ++i, ++l) a[l] += (double)x[i];
  }
  double total() const { return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])); }
};

inline double dsum(const float* x, int64_t n) {
  return dsum8(n, [x](int64_t i) { return (double)x[i]; });
}

inline float fmax8(const float* x, int64_t n) {
  const float ninf = -std::numeric_limits<float>::infinity();
  float acc[8] = {ninf, ninf, ninf, ninf, ninf, ninf, ninf, ninf};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) {
      float v = x[i + l];
      acc[l] = v > acc[l] ? v : acc[l];
    }
  for (int l = 0; i < n; ++i, ++l) acc[l] = x[i] > acc[l] ? x[i] : acc[l];
  float m = acc[0];
  for (int l = 1; l < 8; ++l) m = acc[l] > m ? acc[l] : m;
  return m;
}

// ------------------------------------------------------------------ strided iteration
constexpr int kMaxDims = 64;

template <int NOP>
struct Iter {
  int nd = 0;
  int64_t shape[kMaxDims];
  int64_t st[NOP][kMaxDims];
};

// Drops size-1 axes and merges adjacent axes that are contiguous for every operand. Returns false if
// the shape has no elements.
template <int NOP>
bool build_iter(Iter<NOP>& it, const std::vector<int64_t>& shape, const std::vector<int64_t>* const strides[NOP]) {
  if (shape.size() > (size_t)kMaxDims) throw std::invalid_argument("too many dimensions (max 64)");
  it.nd = 0;
  for (size_t d = 0; d < shape.size(); ++d) {
    int64_t s = shape[d];
    if (s == 0) return false;
    if (s == 1) continue;
    if (it.nd > 0) {
      int p = it.nd - 1;
      bool merge = true;
      for (int k = 0; k < NOP; ++k)
        if (it.st[k][p] != s * (*strides[k])[d]) merge = false;
      if (merge) {
        it.shape[p] *= s;
        for (int k = 0; k < NOP; ++k) it.st[k][p] = (*strides[k])[d];
        continue;
      }
    }
    it.shape[it.nd] = s;
    for (int k = 0; k < NOP; ++k) it.st[k][it.nd] = (*strides[k])[d];
    ++it.nd;
  }
  if (it.nd == 0) {
    it.nd = 1;
    it.shape[0] = 1;
    for (int k = 0; k < NOP; ++k) it.st[k][0] = 0;
  }
  return true;
}

// Calls f(off[NOP], n, innerStrides[NOP]) for contiguous runs along the innermost axis.
template <int NOP, class F>
void run_iter(const Iter<NOP>& it, const int64_t base[NOP], F f) {
  const int nd = it.nd;
  const int64_t inner = it.shape[nd - 1];
  int64_t ist[NOP];
  for (int k = 0; k < NOP; ++k) ist[k] = it.st[k][nd - 1];
  int64_t outer = 1;
  for (int d = 0; d < nd - 1; ++d) outer *= it.shape[d];
  if (outer == 1) {
    parallel_for(inner, kGrain, [&](int64_t b, int64_t e) {
      int64_t off[NOP];
      for (int k = 0; k < NOP; ++k) off[k] = base[k] + b * ist[k];
      f(off, e - b, ist);
    });
    return;
  }
  int64_t grain = std::max<int64_t>(1, kGrain / inner);
  parallel_for(outer, grain, [&](int64_t o0, int64_t o1) {
    int64_t idx[kMaxDims];
    int64_t off[NOP];
    int64_t rem = o0;
    for (int d = nd - 2; d >= 0; --d) {
      idx[d] = rem % it.shape[d];
      rem /= it.shape[d];
    }
    for (int k = 0; k < NOP; ++k) {
      off[k] = base[k];
      for (int d = 0; d < nd - 1; ++d) off[k] += idx[d] * it.st[k][d];
    }
    for (int64_t o = o0; o < o1; ++o) {
      f(off, inner, ist);
      for (int d = nd - 2; d >= 0; --d) {
        ++idx[d];
        for (int k = 0; k < NOP; ++k) off[k] += it.st[k][d];
        if (idx[d] < it.shape[d]) break;
        idx[d] = 0;
        for (int k = 0; k < NOP; ++k) off[k] -= it.shape[d] * it.st[k][d];
      }
    }
  });
}

template <class T, class Add>
void copy_strided_t(const T* src, int64_t srcOff, const std::vector<int64_t>& ss, T* dst, int64_t dstOff,
                    const std::vector<int64_t>& ds, const std::vector<int64_t>& shape, bool accumulate, Add add) {
  Iter<2> it;
  const std::vector<int64_t>* strides[2] = {&ss, &ds};
  if (!build_iter<2>(it, shape, strides)) return;
  int64_t base[2] = {srcOff, dstOff};
  const int nd = it.nd;
  if (nd >= 2 && it.st[1][nd - 1] == 1 && it.st[0][nd - 1] != 1 && it.st[0][nd - 2] == 1 && it.shape[nd - 1] >= 16 &&
      it.shape[nd - 2] >= 16) {
    // Transpose of the last two axes: 32×32 tiles so both sides stay in cache.
    constexpr int64_t TB = 32;
    const int64_t R = it.shape[nd - 2], Cn = it.shape[nd - 1], sC = it.st[0][nd - 1], dR = it.st[1][nd - 2];
    int64_t outer = 1;
    for (int d = 0; d < nd - 2; ++d) outer *= it.shape[d];
    const int64_t ntr = (R + TB - 1) / TB;
    parallel_for(outer * ntr, std::max<int64_t>(1, kGrain / (TB * Cn)), [&](int64_t t0, int64_t t1) {
      for (int64_t task = t0; task < t1; ++task) {
        int64_t o = task / ntr, r0 = (task % ntr) * TB, r1 = std::min(R, r0 + TB);
        int64_t so = base[0], dof = base[1];
        for (int d = nd - 3; d >= 0; --d) {
          int64_t i = o % it.shape[d];
          o /= it.shape[d];
          so += i * it.st[0][d];
          dof += i * it.st[1][d];
        }
        for (int64_t c0 = 0; c0 < Cn; c0 += TB) {
          const int64_t c1 = std::min(Cn, c0 + TB);
          for (int64_t r = r0; r < r1; ++r) {
            const T* sp = src + so + r;
            T* dp = dst + dof + r * dR;
            if (accumulate)
              for (int64_t c = c0; c < c1; ++c) dp[c] = add(dp[c], sp[c * sC]);
            else
              for (int64_t c = c0; c < c1; ++c) dp[c] = sp[c * sC];
          }
        }
      }
    });
    return;
  }
  run_iter<2>(it, base, [&](const int64_t* off, int64_t n, const int64_t* st) {
    const T* s = src + off[0];
    T* d = dst + off[1];
    const int64_t a = st[0], b = st[1];
    if (!accumulate) {
      if (a == 1 && b == 1) {
        std::memmove(d, s, (size_t)n * sizeof(T));
      } else if (a == 0 && b == 1) {
        T v = *s;
        for (int64_t i = 0; i < n; ++i) d[i] = v;
      } else if (b == 1) {
        for (int64_t i = 0; i < n; ++i) d[i] = s[i * a];
      } else {
        for (int64_t i = 0; i < n; ++i) d[i * b] = s[i * a];
      }
    } else {
      if (a == 1 && b == 1) {
        for (int64_t i = 0; i < n; ++i) d[i] = add(d[i], s[i]);
      } else if (a == 0 && b == 1) {
        T v = *s;
        for (int64_t i = 0; i < n; ++i) d[i] = add(d[i], v);
      } else if (b == 1) {
        for (int64_t i = 0; i < n; ++i) d[i] = add(d[i], s[i * a]);
      } else {
        for (int64_t i = 0; i < n; ++i) d[i * b] = add(d[i * b], s[i * a]);
      }
    }
  });
}

template <class F>
void elementwise(int64_t n, F f) {
  parallel_for(n, kGrain, [&](int64_t b, int64_t e) { f(b, e); });
}

template <class Op>
void binary_t(const float* a, const std::vector<int64_t>& as, const float* b, const std::vector<int64_t>& bs, float* out,
              const std::vector<int64_t>& shape, Op op) {
  std::vector<int64_t> os(shape.size());
  int64_t s = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    os[d] = s;
    s *= shape[d];
  }
  Iter<3> it;
  const std::vector<int64_t>* strides[3] = {&as, &bs, &os};
  if (!build_iter<3>(it, shape, strides)) return;
  int64_t base[3] = {0, 0, 0};
  run_iter<3>(it, base, [&](const int64_t* off, int64_t n, const int64_t* st) {
    const float* x = a + off[0];
    const float* y = b + off[1];
    float* o = out + off[2];  // innermost output stride is 1 (or the axis is the only one of size 1)
    const int64_t sa = st[0], sb = st[1];
    if (sa == 1 && sb == 1) {
      for (int64_t i = 0; i < n; ++i) o[i] = op(x[i], y[i]);
    } else if (sa == 1 && sb == 0) {
      float v = *y;
      for (int64_t i = 0; i < n; ++i) o[i] = op(x[i], v);
    } else if (sa == 0 && sb == 1) {
      float v = *x;
      for (int64_t i = 0; i < n; ++i) o[i] = op(v, y[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) o[i] = op(x[i * sa], y[i * sb]);
    }
  });
}

[[noreturn]] void bad_index(const char* kernel, const char* what, int64_t value, int64_t pos, int64_t lo, int64_t hi) {
  throw std::out_of_range(std::string(kernel) + ": " + what + " " + std::to_string(value) + " is outside [" +
                          std::to_string(lo) + ", " + std::to_string(hi) + ") (at position " + std::to_string(pos) + ")");
}

void check_indices(const char* kernel, const char* what, const int32_t* idx, int64_t n, int64_t lo, int64_t hi) {
  for (int64_t i = 0; i < n; ++i)
    if (idx[i] < lo || idx[i] >= hi) bad_index(kernel, what, idx[i], i, lo, hi);
}

// out[idx[i], :] += src[i, :] in ascending i for every element (deterministic). idx already checked.
void scatter_add(const float* src, const int32_t* idx, float* out, int64_t m, int64_t n, int64_t d) {
  if (m <= 0 || d <= 0) return;
  if (d >= 64) {
    // Columns in parallel: each thread owns a column range and walks all rows in order.
    int64_t cgrain = std::max<int64_t>(16, kGrain / std::max<int64_t>(1, m));
    parallel_for(d, cgrain, [&](int64_t c0, int64_t c1) {
      for (int64_t i = 0; i < m; ++i) {
        const float* s = src + i * d;
        float* o = out + (int64_t)idx[i] * d;
        for (int64_t c = c0; c < c1; ++c) o[c] += s[c];
      }
    });
  } else {
    // Destination rows in parallel: each thread owns a row range and walks all sources in order.
    int64_t rgrain = std::max<int64_t>(1, n * kGrain / std::max<int64_t>(1, m * d));
    parallel_for(n, rgrain, [&](int64_t r0, int64_t r1) {
      for (int64_t i = 0; i < m; ++i) {
        int64_t r = idx[i];
        if (r < r0 || r >= r1) continue;
        const float* s = src + i * d;
        float* o = out + r * d;
        for (int64_t c = 0; c < d; ++c) o[c] += s[c];
      }
    });
  }
}

void gather(const float* x, const int32_t* idx, float* out, int64_t m, int64_t d) {
  int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, d));
  parallel_for(m, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) std::memcpy(out + i * d, x + (int64_t)idx[i] * d, (size_t)d * sizeof(float));
  });
}

}  // namespace

// ------------------------------------------------------------------ data movement
void fill_f32(float* out, int64_t n, float v) {
  elementwise(n, [&](int64_t b, int64_t e) { std::fill(out + b, out + e, v); });
}
void fill_u16(uint16_t* out, int64_t n, uint16_t v) {
  elementwise(n, [&](int64_t b, int64_t e) { std::fill(out + b, out + e, v); });
}
void fill_i32(int32_t* out, int64_t n, int32_t v) {
  elementwise(n, [&](int64_t b, int64_t e) { std::fill(out + b, out + e, v); });
}
void cast_f32_bf16(const float* x, uint16_t* out, int64_t n) {
  elementwise(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = f32_to_bf16(x[i]);
  });
}
void cast_bf16_f32(const uint16_t* x, float* out, int64_t n) {
  elementwise(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = bf16_to_f32(x[i]);
  });
}
void copy_bytes(const void* x, void* out, int64_t bytes) {
  const char* s = (const char*)x;
  char* d = (char*)out;
  parallel_for(bytes, kGrain * 8, [&](int64_t b, int64_t e) { std::memmove(d + b, s + b, (size_t)(e - b)); });
}

void copy_strided(Elem t, const void* src, int64_t srcOff, const std::vector<int64_t>& ss, void* dst, int64_t dstOff,
                  const std::vector<int64_t>& ds, const std::vector<int64_t>& shape, bool accumulate) {
  switch (t) {
    case Elem::f32:
      copy_strided_t((const float*)src, srcOff, ss, (float*)dst, dstOff, ds, shape, accumulate,
                     [](float a, float b) { return a + b; });
      break;
    case Elem::i32:
      copy_strided_t((const int32_t*)src, srcOff, ss, (int32_t*)dst, dstOff, ds, shape, accumulate,
                     [](int32_t a, int32_t b) { return (int32_t)((uint32_t)a + (uint32_t)b); });
      break;
    case Elem::bf16:
      copy_strided_t((const uint16_t*)src, srcOff, ss, (uint16_t*)dst, dstOff, ds, shape, accumulate,
                     [](uint16_t a, uint16_t b) { return f32_to_bf16(bf16_to_f32(a) + bf16_to_f32(b)); });
      break;
  }
}

// ------------------------------------------------------------------ elementwise
void unary(Unary op, const float* x, float* out, int64_t n) {
  switch (op) {
    case Unary::relu:
      elementwise(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          float v = x[i];
          out[i] = v > 0.f ? v : 0.f;  // NaN -> 0 (like ref)
        }
      });
      break;
    case Unary::gelu:
      elementwise(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) out[i] = gelu_f(x[i]);
      });
      break;
    case Unary::neg:
      elementwise(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) out[i] = -x[i];
      });
      break;
    case Unary::exp:
      elementwise(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) out[i] = vexpf(x[i]);
      });
      break;
    case Unary::log:
      elementwise(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) out[i] = std::log(x[i]);
      });
      break;
    case Unary::sqrt:
      elementwise(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) out[i] = std::sqrt(x[i]);
      });
      break;
    case Unary::square:
      elementwise(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) out[i] = x[i] * x[i];
      });
      break;
    case Unary::tanh:
      elementwise(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) out[i] = std::tanh(x[i]);
      });
      break;
  }
}

void unary_backward(Unary op, const float* x, const float* gy, float* gx, int64_t n) {
  switch (op) {
    case Unary::relu:
      elementwise(n, [&](int64_t b, int64_t e) {
        // gy is loaded unconditionally so the select vectorises (a conditional load compiled to a
        // branch that mispredicts on every other element: 7x slower on random signs).
        for (int64_t i = b; i < e; ++i) {
          const float g = gy[i];
          gx[i] = x[i] > 0.f ? g : 0.f;
        }
      });
      break;
    case Unary::gelu:
      elementwise(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) gx[i] = gy[i] * gelu_grad_f(x[i]);
      });
      break;
    case Unary::neg:
      elementwise(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) gx[i] = -gy[i];
      });
      break;
    case Unary::exp:
      elementwise(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) gx[i] = gy[i] * vexpf(x[i]);
      });
      break;
    case Unary::log:
      elementwise(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) gx[i] = gy[i] / x[i];
      });
      break;
    case Unary::sqrt:
      elementwise(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) gx[i] = gy[i] / (2.0f * std::sqrt(x[i]));
      });
      break;
    case Unary::square:
      elementwise(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) gx[i] = gy[i] * (2.0f * x[i]);
      });
      break;
    case Unary::tanh:
      elementwise(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          float t = std::tanh(x[i]);
          gx[i] = gy[i] * (1.0f - t * t);
        }
      });
      break;
  }
}

void affine(const float* x, float* out, int64_t n, double scale, double shift) {
  elementwise(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = (float)((double)x[i] * scale + shift);
  });
}

void binary(Binary op, const float* a, const std::vector<int64_t>& as, const float* b, const std::vector<int64_t>& bs,
            float* out, const std::vector<int64_t>& shape) {
  switch (op) {
    case Binary::add: binary_t(a, as, b, bs, out, shape, [](float x, float y) { return x + y; }); break;
    case Binary::sub: binary_t(a, as, b, bs, out, shape, [](float x, float y) { return x - y; }); break;
    case Binary::mul: binary_t(a, as, b, bs, out, shape, [](float x, float y) { return x * y; }); break;
    case Binary::div: binary_t(a, as, b, bs, out, shape, [](float x, float y) { return x / y; }); break;
  }
}

void reduce_sum(const float* x, float* out, int64_t outer, int64_t mid, int64_t inner) {
  if (outer <= 0 || inner <= 0) return;
  if (mid <= 0) {
    fill_f32(out, outer * inner, 0.f);
    return;
  }
  if (inner == 1) {
    // Row sums: fixed blocks of kSumBlock, partials summed in order.
    const int64_t nb = (mid + kSumBlock - 1) / kSumBlock;
    std::vector<double> part((size_t)(outer * nb));
    int64_t grain = std::max<int64_t>(1, kGrain / std::min(mid, kSumBlock));
    parallel_for(outer * nb, grain, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        int64_t o = t / nb, blk = t % nb;
        int64_t b = blk * kSumBlock, e = std::min(mid, b + kSumBlock);
        part[(size_t)t] = dsum(x + o * mid + b, e - b);
      }
    });
    for (int64_t o = 0; o < outer; ++o) {
      double s = 0;
      for (int64_t blk = 0; blk < nb; ++blk) s += part[(size_t)(o * nb + blk)];
      out[o] = (float)s;
    }
    return;
  }
  // Column sums: tasks own (outer, column block) and walk mid in order.
  constexpr int64_t CB = 64;
  const int64_t ncb = (inner + CB - 1) / CB;
  int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, mid * std::min(inner, CB)));
  parallel_for(outer * ncb, grain, [&](int64_t t0, int64_t t1) {
    double acc[CB];
    for (int64_t t = t0; t < t1; ++t) {
      int64_t o = t / ncb, c0 = (t % ncb) * CB, nc = std::min(CB, inner - c0);
      for (int64_t c = 0; c < nc; ++c) acc[c] = 0;
      const float* xp = x + o * mid * inner + c0;
      for (int64_t m = 0; m < mid; ++m) {
        const float* r = xp + m * inner;
        for (int64_t c = 0; c < nc; ++c) acc[c] += (double)r[c];
      }
      float* op = out + o * inner + c0;
      for (int64_t c = 0; c < nc; ++c) op[c] = (float)acc[c];
    }
  });
}

double sum_squares(const float* x, int64_t n) {
  if (n <= 0) return 0;
  const int64_t nb = (n + kSumBlock - 1) / kSumBlock;
  std::vector<double> part((size_t)nb);
  parallel_for(nb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      int64_t b = blk * kSumBlock, e = std::min(n, b + kSumBlock);
      const float* p = x + b;
      part[(size_t)blk] = dsum8(e - b, [p](int64_t i) {
        double v = p[i];
        return v * v;
      });
    }
  });
  double s = 0;
  for (double v : part) s += v;
  return s;
}

// ------------------------------------------------------------------ NN kernels
void softmax(const float* x, float* out, int64_t rows, int64_t cols) {
  if (cols <= 0) return;
  int64_t grain = std::max<int64_t>(1, kGrain / cols);
  parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * cols;
      float* o = out + r * cols;
      float m = fmax8(xr, cols);
      for (int64_t j = 0; j < cols; ++j) o[j] = vexpf(xr[j] - m);
      double inv = 1.0 / dsum(o, cols);
      for (int64_t j = 0; j < cols; ++j) o[j] = (float)((double)o[j] * inv);
    }
  });
}

void softmax_backward(const float* y, const float* gy, float* gx, int64_t rows, int64_t cols) {
  if (cols <= 0) return;
  int64_t grain = std::max<int64_t>(1, kGrain / cols);
  parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* yr = y + r * cols;
      const float* g = gy + r * cols;
      float* o = gx + r * cols;
      float dot = (float)dsum8(cols, [yr, g](int64_t j) { return (double)yr[j] * (double)g[j]; });
      for (int64_t j = 0; j < cols; ++j) o[j] = yr[j] * (g[j] - dot);
    }
  });
}

void layer_norm(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd, int64_t rows,
                int64_t cols, double eps) {
  if (cols <= 0) return;
  int64_t grain = std::max<int64_t>(1, kGrain / cols);
  parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * cols;
      float* yr = y + r * cols;
      double mu = dsum(xr, cols) / (double)cols;
      double var = dsum8(cols, [xr, mu](int64_t j) {
                     double d = (double)xr[j] - mu;
                     return d * d;
                   }) /
                   (double)cols;
      const double rs = 1.0 / std::sqrt(var + eps);
      mean[r] = (float)mu;
      rstd[r] = (float)rs;
      for (int64_t j = 0; j < cols; ++j) yr[j] = (float)((((double)xr[j] - mu) * rs) * (double)gamma[j] + (double)beta[j]);
    }
  });
}

void layer_norm_backward(const float* x, const float* gamma, const float* mean, const float* rstd, const float* gy,
                         float* gx, float* ggamma, float* gbeta, int64_t rows, int64_t cols) {
  if (cols <= 0 || rows <= 0) return;
  // gx row by row; the parameter gradients as f64 partials over fixed blocks of RB rows (rows in order
  // within a block), then summed over blocks in order: independent of the thread count.
  constexpr int64_t RB = 32;
  const int64_t nb = (rows + RB - 1) / RB;
  std::vector<double> pg((size_t)(nb * cols)), pb((size_t)(nb * cols));
  int64_t grain = std::max<int64_t>(1, kGrain / (RB * cols));
  parallel_for(nb, grain, [&](int64_t b0, int64_t b1) {
    std::vector<float> xh((size_t)cols), gg((size_t)cols);
    float* xhp = xh.data();
    float* ggp = gg.data();
    for (int64_t blk = b0; blk < b1; ++blk) {
      double* ag = pg.data() + blk * cols;
      double* ab = pb.data() + blk * cols;
      for (int64_t r = blk * RB; r < std::min(rows, (blk + 1) * RB); ++r) {
        const float* xr = x + r * cols;
        const float* g = gy + r * cols;
        float* o = gx + r * cols;
        const float mf = mean[r], rf = rstd[r];
        for (int64_t j = 0; j < cols; ++j) {
          xhp[j] = (xr[j] - mf) * rf;
          ggp[j] = g[j] * gamma[j];
        }
        double a = dsum(ggp, cols) / (double)cols;
        double b = dsum8(cols, [ggp, xhp](int64_t j) { return (double)ggp[j] * (double)xhp[j]; }) / (double)cols;
        const float af = (float)a, bf = (float)b;
        for (int64_t j = 0; j < cols; ++j) o[j] = rf * ((ggp[j] - af) - xhp[j] * bf);
        for (int64_t j = 0; j < cols; ++j) {
          ag[j] += (double)g[j] * (double)xhp[j];
          ab[j] += (double)g[j];
        }
      }
    }
  });
  parallel_for(cols, std::max<int64_t>(8, kGrain / nb), [&](int64_t c0, int64_t c1) {
    const int64_t n = c1 - c0;
    std::vector<double> sg((size_t)n), sb((size_t)n);
    double* sgp = sg.data();
    double* sbp = sb.data();
    for (int64_t blk = 0; blk < nb; ++blk) {
      const double* a = pg.data() + blk * cols + c0;
      const double* b = pb.data() + blk * cols + c0;
      for (int64_t j = 0; j < n; ++j) {
        sgp[j] += a[j];
        sbp[j] += b[j];
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      ggamma[c0 + j] += (float)sgp[j];
      gbeta[c0 + j] += (float)sbp[j];
    }
  });
}

void embedding(const float* table, const int32_t* ids, float* out, int64_t n, int64_t vocab, int64_t dim) {
  check_indices("embedding", "index", ids, n, 0, vocab);
  gather(table, ids, out, n, dim);
}

void embedding_backward(const float* gy, const int32_t* ids, float* gtable, int64_t n, int64_t vocab, int64_t dim) {
  check_indices("embeddingBackward", "index", ids, n, 0, vocab);
  scatter_add(gy, ids, gtable, n, vocab, dim);
}

void dropout(const float* x, float* out, int64_t n, double p, uint32_t seed) {
  // keep_i = (hash32(seed, i) >> 8) / 2^24 >= p  <=>  (hash32 >> 8) >= ceil(p · 2^24)   (exact)
  int64_t thr;
  if (!(p == p)) thr = (int64_t)1 << 25;  // NaN: keep nothing
  else if (p <= 0) thr = 0;
  else if (p > 1) thr = (int64_t)1 << 25;
  else thr = (int64_t)std::ceil(p * 16777216.0);
  const uint32_t t = (uint32_t)thr;
  const double q = 1.0 - p;
  elementwise(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      uint32_t k = hash32(seed, (uint32_t)i) >> 8;
      float v = (float)((double)x[i] / q);
      out[i] = k >= t ? v : 0.0f;
    }
  });
}

void cross_entropy(const float* logits, const int32_t* targets, float* losses, float* lse, int64_t N, int64_t V) {
  check_indices("crossEntropy", "target", targets, N, -1, V);
  if (V <= 0) return;
  int64_t grain = std::max<int64_t>(1, kGrain / V);
  parallel_for(N, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = logits + r * V;
      float m = fmax8(xr, V);
      // exp in chunks into a small buffer (vectorised), summed in f64 lanes
      constexpr int64_t CH = 1024;
      float e[CH];
      DAcc8 acc;
      for (int64_t j0 = 0; j0 < V; j0 += CH) {
        const int64_t nj = std::min(CH, V - j0);
        for (int64_t j = 0; j < nj; ++j) e[j] = vexpf(xr[j0 + j] - m);
        acc.add(e, nj);
      }
      double s = acc.total();
      double l = (double)m + std::log(s);
      lse[r] = (float)l;
      int32_t t = targets[r];
      losses[r] = t < 0 ? 0.0f : (float)(l - (double)xr[t]);
    }
  });
}

void cross_entropy_backward(const float* logits, const int32_t* targets, const float* lse, const float* gloss,
                            float* glogits, int64_t N, int64_t V) {
  check_indices("crossEntropyBackward", "target", targets, N, -1, V);
  if (V <= 0) return;
  int64_t grain = std::max<int64_t>(1, kGrain / V);
  parallel_for(N, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = logits + r * V;
      float* o = glogits + r * V;
      int32_t t = targets[r];
      if (t < 0) {
        std::fill(o, o + V, 0.0f);
        continue;
      }
      const float g = gloss[r], l = lse[r];
      for (int64_t j = 0; j < V; ++j) o[j] = g * vexpf(xr[j] - l);
      o[t] = g * (vexpf(xr[t] - l) - 1.0f);
    }
  });
}

void adamw(float* p, const float* g, float* m, float* v, int64_t n, const AdamW& a) {
  const double b1 = a.beta1, b2 = a.beta2;
  const double bc1 = 1.0 - std::pow(b1, a.step), bc2 = 1.0 - std::pow(b2, a.step);
  const double lr = a.lr, decay = a.lr * a.weightDecay, eps = a.eps, gs = a.gradScale;
  const double c1 = 1.0 - b1, c2 = 1.0 - b2;
  elementwise(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      double gg = gs * (double)g[i];
      double pp = (double)p[i];
      pp -= decay * pp;
      // m and v are rounded to f32 before use, as stored (same as the ref backend)
      double mm = (double)(float)(b1 * (double)m[i] + c1 * gg);
      double vv = (double)(float)(b2 * (double)v[i] + c2 * (gg * gg));
      pp -= lr * (mm / bc1) / (std::sqrt(vv / bc2) + eps);
      p[i] = (float)pp;
      m[i] = (float)mm;
      v[i] = (float)vv;
    }
  });
}

void topk(const float* x, float* values, int32_t* indices, int64_t rows, int64_t cols, int64_t k) {
  if (k <= 0 || rows <= 0) return;
  // a ranks before b: larger value first, NaN last, ties by lower index.
  // NaN ranks like -inf (ties by index), matching the ref backend.
  auto better = [](float va, int64_t ia, float vb, int64_t ib) {
    if (va != va) va = -std::numeric_limits<float>::infinity();
    if (vb != vb) vb = -std::numeric_limits<float>::infinity();
    if (va != vb) return va > vb;
    return ia < ib;
  };
  int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, cols * 4));
  parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> bv((size_t)k);
    std::vector<int64_t> bi((size_t)k);
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * cols;
      int64_t cnt = 0;
      for (int64_t j = 0; j < cols; ++j) {
        float v = xr[j];
        if (cnt == k) {
          // j is larger than every stored index, so it must be strictly better than the last one.
          float w = bv[(size_t)(k - 1)];
          float vk = v != v ? -std::numeric_limits<float>::infinity() : v;
          float wk = w != w ? -std::numeric_limits<float>::infinity() : w;
          if (!(vk > wk)) continue;
        } else {
          ++cnt;
        }
        int64_t pos = cnt - 1;
        while (pos > 0 && better(v, j, bv[(size_t)(pos - 1)], bi[(size_t)(pos - 1)])) {
          bv[(size_t)pos] = bv[(size_t)(pos - 1)];
          bi[(size_t)pos] = bi[(size_t)(pos - 1)];
          --pos;
        }
        bv[(size_t)pos] = v;
        bi[(size_t)pos] = j;
      }
      for (int64_t c = 0; c < k; ++c) {
        values[r * k + c] = bv[(size_t)c];
        indices[r * k + c] = (int32_t)bi[(size_t)c];
      }
    }
  });
}

// gx rows zeroed, then gx[r, indices[r, j]] += g[r, j] in j order (rows in parallel).
void topk_backward(const float* g, const int32_t* indices, float* gx, int64_t rows, int64_t cols, int64_t k) {
  check_indices("topkBackward", "index", indices, rows * k, 0, cols);
  int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, cols));
  parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
    std::fill(gx + r0 * cols, gx + r1 * cols, 0.0f);
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t j = 0; j < k; ++j) gx[r * cols + indices[r * k + j]] += g[r * k + j];
  });
}

void gather_rows(const float* x, const int32_t* idx, float* out, int64_t m, int64_t n, int64_t d) {
  check_indices("gatherRows", "index", idx, m, 0, n);
  gather(x, idx, out, m, d);
}

void scatter_add_rows(const float* src, const int32_t* idx, float* out, int64_t m, int64_t n, int64_t d) {
  check_indices("scatterAddRows", "index", idx, m, 0, n);
  scatter_add(src, idx, out, m, n, d);
}

namespace {
// One row of the matmul epilogue: row = act(row + b) over n columns (b may be null; NaN -> 0 under ReLU,
// like ref).
inline void bias_act_row(float* row, int64_t n, const float* b, bool relu) {
  for (int64_t c = 0; c < n; ++c) {
    const float v = row[c] + (b ? b[c] : 0.f);
    row[c] = relu && !(v > 0.f) ? 0.f : v;
  }
}
}  // namespace

void bias_act(float* C, int64_t strideC, int64_t batch, int64_t m, int64_t n, const float* bias, bool relu) {
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, n));
  for (int64_t b = 0; b < batch; ++b) {
    float* Cb = C + b * strideC;
    parallel_for(m, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) bias_act_row(Cb + r * n, n, bias, relu);
    });
  }
}

void grouped_bias_act(float* C, const int32_t* problems, int64_t G, const float* bias, int64_t stride, bool relu) {
  parallel_for(G, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int32_t* p = problems + 9 * g;
      const float* b = bias ? bias + g * stride : nullptr;
      for (int64_t i = 0; i < p[0]; ++i) bias_act_row(C + p[7] + i * (int64_t)p[8], p[1], b, relu);
    }
  });
}

void row_sums(const float* A, bool transA, int64_t m, int64_t k, float* out) {
  if (!transA) {
    parallel_for(m, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, k)), [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        double s = 0;
        for (int64_t p = 0; p < k; ++p) s += A[i * k + p];
        out[i] = (float)s;
      }
    });
    return;
  }
  // A stored (k, m): column sums, a block of columns per task, rows in order.
  parallel_for(m, std::max<int64_t>(64, kGrain / std::max<int64_t>(1, k)), [&](int64_t c0, int64_t c1) {
    std::vector<double> acc((size_t)(c1 - c0), 0.0);
    for (int64_t p = 0; p < k; ++p) {
      const float* row = A + p * m;
      for (int64_t c = c0; c < c1; ++c) acc[(size_t)(c - c0)] += row[c];
    }
    for (int64_t c = c0; c < c1; ++c) out[c] = (float)acc[(size_t)(c - c0)];
  });
}

// out[r] = sum_c a[r, c] * b[r, c], accumulated in double in column order (rows in parallel).
void row_dot(const float* a, const float* b, float* out, int64_t rows, int64_t cols) {
  int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, cols));
  parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = a + r * cols;
      const float* y = b + r * cols;
      double s = 0;
      for (int64_t c = 0; c < cols; ++c) s += (double)x[c] * (double)y[c];
      out[r] = (float)s;
    }
  });
}

// Bit b of out[r, w] = x[r, 32w + b] > 0 (NaN compares false); rows in parallel.
void activation_bits(const float* x, int32_t* out, int64_t rows, int64_t cols) {
  const int64_t words = (cols + 31) / 32;
  int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, cols));
  parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * cols;
      for (int64_t w = 0; w < words; ++w) {
        const int64_t n = std::min<int64_t>(32, cols - 32 * w);
        uint32_t word = 0;
        for (int64_t b = 0; b < n; ++b) word |= (uint32_t)(xr[32 * w + b] > 0.0f) << b;
        out[r * words + w] = (int32_t)word;
      }
    }
  });
}

}  // namespace ssd
