// N-API surface of the cpu backend: thin wrappers taking typed arrays (zero-copy) and numbers.
// Sizes are validated in TypeScript (src/backend/cpu/index.ts); here only types and cheap length
// checks, so that a wrong call throws instead of corrupting memory.
#include <napi.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "auction.h"
#include "gemm.h"
#include "kernels.h"
#include "parallel.h"
#include "vmath.h"
#include "napi_errors.h"

namespace {

using namespace ssd;

using ssd_napi::ArgError;
using ssd_napi::wrap;

template <class T>
struct View {
  T* p;
  int64_t n;
};

napi_typedarray_type expected_type(double*) { return napi_float64_array; }
napi_typedarray_type expected_type(float*) { return napi_float32_array; }
napi_typedarray_type expected_type(int32_t*) { return napi_int32_array; }
napi_typedarray_type expected_type(uint16_t*) { return napi_uint16_array; }
const char* type_name(napi_typedarray_type t) {
  switch (t) {
    case napi_float64_array: return "Float64Array";
    case napi_float32_array: return "Float32Array";
    case napi_int32_array: return "Int32Array";
    case napi_uint16_array: return "Uint16Array";
    default: return "another typed array";
  }
}

template <class T>
View<T> arr(const Napi::CallbackInfo& info, size_t i, const char* fn, int64_t need = -1) {
  Napi::Value v = info[i];
  if (!v.IsTypedArray()) throw ArgError(std::string(fn) + ": argument " + std::to_string(i) + " must be a typed array");
  auto ta = v.As<Napi::TypedArray>();
  napi_typedarray_type want = expected_type((T*)nullptr);
  if (ta.TypedArrayType() != want)
    throw ArgError(std::string(fn) + ": argument " + std::to_string(i) + " must be a " + type_name(want) + ", got " +
                   type_name(ta.TypedArrayType()));
  auto buf = ta.ArrayBuffer();
  T* p = reinterpret_cast<T*>(static_cast<uint8_t*>(buf.Data()) + ta.ByteOffset());
  int64_t n = (int64_t)ta.ElementLength();
  if (need >= 0 && n < need)
    throw ArgError(std::string(fn) + ": argument " + std::to_string(i) + " has " + std::to_string(n) +
                   " elements, needs " + std::to_string(need));
  return {p, n};
}

int64_t i64(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) throw ArgError(std::string(fn) + ": argument " + std::to_string(i) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d == std::floor(d)) || std::fabs(d) > 9007199254740991.0)
    throw ArgError(std::string(fn) + ": argument " + std::to_string(i) + " must be an integer, got " + std::to_string(d));
  return (int64_t)d;
}
int64_t dim(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  int64_t v = i64(info, i, fn);
  if (v < 0) throw ArgError(std::string(fn) + ": argument " + std::to_string(i) + " must be >= 0");
  return v;
}
double num(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) throw ArgError(std::string(fn) + ": argument " + std::to_string(i) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}
bool flag(const Napi::CallbackInfo& info, size_t i) { return info[i].ToBoolean().Value(); }
std::vector<int64_t> ints(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  Napi::Value v = info[i];
  if (!v.IsArray()) throw ArgError(std::string(fn) + ": argument " + std::to_string(i) + " must be an array");
  auto a = v.As<Napi::Array>();
  std::vector<int64_t> r(a.Length());
  for (uint32_t k = 0; k < a.Length(); ++k) {
    Napi::Value e = a.Get(k);
    if (!e.IsNumber()) throw ArgError(std::string(fn) + ": argument " + std::to_string(i) + " must hold numbers");
    r[k] = (int64_t)e.As<Napi::Number>().DoubleValue();
  }
  return r;
}


Napi::Value Undef(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }

// ---------------------------------------------------------------- runtime
Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  int64_t n = i64(info, 0, "setThreads");
  set_num_threads((int)n);
  gemm_set_threads(pool().size());
  return Napi::Number::New(info.Env(), pool().size());
}
Napi::Value GetThreads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), pool().size()); }
// parentDeathSignal(signal): asks the kernel to send `signal` to this process when its parent exits
// (Linux prctl PR_SET_PDEATHSIG; the ranks of a data-parallel run, whose training loop never yields to
// an event that could notice). Returns false where unsupported.
Napi::Value ParentDeathSignal(const Napi::CallbackInfo& info) {
#ifdef __linux__
  const int sig = (int)i64(info, 0, "parentDeathSignal");
  return Napi::Boolean::New(info.Env(), prctl(PR_SET_PDEATHSIG, sig) == 0);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}
Napi::Value GemmInit(const Napi::CallbackInfo& info) {
  gemm_init();
  return Napi::String::New(info.Env(), gemm_provider());
}
Napi::Value GemmProvider(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), gemm_provider()); }
Napi::Value GemmProviders(const Napi::CallbackInfo& info) {
  auto names = gemm_available();
  auto a = Napi::Array::New(info.Env(), names.size());
  for (size_t i = 0; i < names.size(); ++i) a.Set((uint32_t)i, Napi::String::New(info.Env(), names[i]));
  return a;
}
Napi::Value SetGemmProvider(const Napi::CallbackInfo& info) {
  if (!info[0].IsString()) throw ArgError("setGemmProvider: argument 0 must be a string");
  gemm_set_provider(info[0].As<Napi::String>().Utf8Value());
  return Napi::String::New(info.Env(), gemm_provider());
}
Napi::Value Simd(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), cpu_has_avx512() ? "avx512" : "avx2");
}

// ---------------------------------------------------------------- data movement
Napi::Value Fill(const Napi::CallbackInfo& info) {
  const char* fn = "fill";
  Napi::Value v = info[0];
  if (!v.IsTypedArray()) throw ArgError("fill: argument 0 must be a typed array");
  double value = num(info, 1, fn);
  switch (v.As<Napi::TypedArray>().TypedArrayType()) {
    case napi_float32_array: {
      auto o = arr<float>(info, 0, fn);
      fill_f32(o.p, o.n, (float)value);
      break;
    }
    case napi_uint16_array: {
      auto o = arr<uint16_t>(info, 0, fn);
      fill_u16(o.p, o.n, f32_to_bf16((float)value));
      break;
    }
    case napi_int32_array: {
      auto o = arr<int32_t>(info, 0, fn);
      fill_i32(o.p, o.n, (int32_t)value);
      break;
    }
    default: throw ArgError("fill: unsupported typed array");
  }
  return Undef(info);
}

Napi::Value Cast(const Napi::CallbackInfo& info) {
  const char* fn = "cast";
  if (!info[0].IsTypedArray() || !info[1].IsTypedArray()) throw ArgError("cast: arguments must be typed arrays");
  auto tx = info[0].As<Napi::TypedArray>().TypedArrayType(), to = info[1].As<Napi::TypedArray>().TypedArrayType();
  if (tx == napi_float32_array && to == napi_uint16_array) {
    auto x = arr<float>(info, 0, fn);
    auto o = arr<uint16_t>(info, 1, fn, x.n);
    cast_f32_bf16(x.p, o.p, x.n);
  } else if (tx == napi_uint16_array && to == napi_float32_array) {
    auto x = arr<uint16_t>(info, 0, fn);
    auto o = arr<float>(info, 1, fn, x.n);
    cast_bf16_f32(x.p, o.p, x.n);
  } else if (tx == to) {
    auto a = info[0].As<Napi::TypedArray>(), b = info[1].As<Napi::TypedArray>();
    if (b.ByteLength() < a.ByteLength()) throw ArgError("cast: output too small");
    copy_bytes(static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset(),
               static_cast<uint8_t*>(b.ArrayBuffer().Data()) + b.ByteOffset(), (int64_t)a.ByteLength());
  } else {
    throw ArgError("cast: unsupported dtype pair");
  }
  return Undef(info);
}

Napi::Value CopyStrided(const Napi::CallbackInfo& info) {
  const char* fn = "copyStrided";
  if (!info[0].IsTypedArray() || !info[3].IsTypedArray()) throw ArgError("copyStrided: src and dst must be typed arrays");
  auto t = info[0].As<Napi::TypedArray>().TypedArrayType();
  if (info[3].As<Napi::TypedArray>().TypedArrayType() != t) throw ArgError("copyStrided: src and dst dtypes differ");
  int64_t so = i64(info, 1, fn), dO = i64(info, 4, fn);
  auto ss = ints(info, 2, fn), ds = ints(info, 5, fn), shape = ints(info, 6, fn);
  bool acc = flag(info, 7);
  if (ss.size() != shape.size() || ds.size() != shape.size()) throw ArgError("copyStrided: stride/shape rank mismatch");
  // Bounds: extreme offsets reached by each operand.
  auto check = [&](int64_t off, const std::vector<int64_t>& st, int64_t n, const char* what) {
    int64_t lo = off, hi = off;
    for (size_t d = 0; d < shape.size(); ++d) {
      if (shape[d] <= 0) return;
      int64_t e = (shape[d] - 1) * st[d];
      if (e < 0) lo += e; else hi += e;
    }
    if (lo < 0 || hi >= n) throw ArgError(std::string("copyStrided: ") + what + " range [" + std::to_string(lo) + ", " +
                                          std::to_string(hi) + "] outside buffer of " + std::to_string(n));
  };
  switch (t) {
    case napi_float32_array: {
      auto s = arr<float>(info, 0, fn);
      auto d = arr<float>(info, 3, fn);
      check(so, ss, s.n, "src");
      check(dO, ds, d.n, "dst");
      copy_strided(Elem::f32, s.p, so, ss, d.p, dO, ds, shape, acc);
      break;
    }
    case napi_int32_array: {
      auto s = arr<int32_t>(info, 0, fn);
      auto d = arr<int32_t>(info, 3, fn);
      check(so, ss, s.n, "src");
      check(dO, ds, d.n, "dst");
      copy_strided(Elem::i32, s.p, so, ss, d.p, dO, ds, shape, acc);
      break;
    }
    case napi_uint16_array: {
      auto s = arr<uint16_t>(info, 0, fn);
      auto d = arr<uint16_t>(info, 3, fn);
      check(so, ss, s.n, "src");
      check(dO, ds, d.n, "dst");
      copy_strided(Elem::bf16, s.p, so, ss, d.p, dO, ds, shape, acc);
      break;
    }
    default: throw ArgError("copyStrided: unsupported typed array");
  }
  return Undef(info);
}

// ---------------------------------------------------------------- elementwise
Napi::Value UnaryFn(const Napi::CallbackInfo& info) {
  const char* fn = "unary";
  int64_t op = i64(info, 0, fn);
  if (op < 0 || op > 7) throw ArgError("unary: bad op code");
  auto x = arr<float>(info, 1, fn);
  auto o = arr<float>(info, 2, fn, x.n);
  unary((Unary)op, x.p, o.p, x.n);
  return Undef(info);
}
Napi::Value UnaryBackwardFn(const Napi::CallbackInfo& info) {
  const char* fn = "unaryBackward";
  int64_t op = i64(info, 0, fn);
  if (op < 0 || op > 7) throw ArgError("unaryBackward: bad op code");
  auto x = arr<float>(info, 1, fn);
  auto gy = arr<float>(info, 2, fn, x.n);
  auto gx = arr<float>(info, 3, fn, x.n);
  unary_backward((Unary)op, x.p, gy.p, gx.p, x.n);
  return Undef(info);
}
Napi::Value AffineFn(const Napi::CallbackInfo& info) {
  const char* fn = "affine";
  auto x = arr<float>(info, 0, fn);
  auto o = arr<float>(info, 1, fn, x.n);
  affine(x.p, o.p, x.n, num(info, 2, fn), num(info, 3, fn));
  return Undef(info);
}
Napi::Value BinaryFn(const Napi::CallbackInfo& info) {
  const char* fn = "binary";
  int64_t op = i64(info, 0, fn);
  if (op < 0 || op > 3) throw ArgError("binary: bad op code");
  auto a = arr<float>(info, 1, fn);
  auto as = ints(info, 2, fn);
  auto b = arr<float>(info, 3, fn);
  auto bs = ints(info, 4, fn);
  auto shape = ints(info, 6, fn);
  if (as.size() != shape.size() || bs.size() != shape.size()) throw ArgError("binary: stride/shape rank mismatch");
  int64_t total = 1, amax = 0, bmax = 0;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] < 0) throw ArgError("binary: negative shape");
    total *= shape[d];
    if (as[d] < 0 || bs[d] < 0) throw ArgError("binary: negative stride");
    if (shape[d] > 0) {
      amax += (shape[d] - 1) * as[d];
      bmax += (shape[d] - 1) * bs[d];
    }
  }
  auto o = arr<float>(info, 5, fn, total);
  if (total > 0 && (amax >= a.n || bmax >= b.n)) throw ArgError("binary: strides reach outside an operand");
  binary((Binary)op, a.p, as, b.p, bs, o.p, shape);
  return Undef(info);
}
Napi::Value ReduceSumFn(const Napi::CallbackInfo& info) {
  const char* fn = "reduceSum";
  int64_t outer = dim(info, 2, fn), mid = dim(info, 3, fn), inner = dim(info, 4, fn);
  auto x = arr<float>(info, 0, fn, outer * mid * inner);
  auto o = arr<float>(info, 1, fn, outer * inner);
  reduce_sum(x.p, o.p, outer, mid, inner);
  return Undef(info);
}
Napi::Value SumSquaresFn(const Napi::CallbackInfo& info) {
  auto x = arr<float>(info, 0, "sumSquares");
  return Napi::Number::New(info.Env(), sum_squares(x.p, x.n));
}

// ---------------------------------------------------------------- linear algebra
Napi::Value MatmulFn(const Napi::CallbackInfo& info) {
  const char* fn = "matmul";
  auto A = arr<float>(info, 0, fn);
  auto Bm = arr<float>(info, 1, fn);
  auto C = arr<float>(info, 2, fn);
  int64_t batch = dim(info, 3, fn), m = dim(info, 4, fn), n = dim(info, 5, fn), k = dim(info, 6, fn);
  bool ta = flag(info, 7), tb = flag(info, 8);
  int64_t sA = dim(info, 9, fn), sB = dim(info, 10, fn), sC = dim(info, 11, fn);
  float alpha = (float)num(info, 12, fn), beta = (float)num(info, 13, fn);
  // Epilogue (MatmulArgs.bias / relu): bias (n) or null, then the ReLU flag.
  const bool has_bias = info.Length() > 14 && !info[14].IsNull() && !info[14].IsUndefined();
  View<float> bias{nullptr, 0};
  if (has_bias) bias = arr<float>(info, 14, fn, n);
  const bool relu = flag(info, 15);
  // biasGrad (m) or null: the sums of op(A)'s rows (batch 1, checked by the caller).
  if (info.Length() > 16 && !info[16].IsNull() && !info[16].IsUndefined()) {
    auto gb = arr<float>(info, 16, fn, m);
    if (k > 0 && (batch - 1) * sA + m * k > A.n) throw ArgError("matmul: A too small");
    row_sums(A.p, ta, m, k, gb.p);
  }
  if (batch == 0 || m == 0 || n == 0) return Undef(info);
  if (batch > 1 && sC < m * n) throw ArgError("matmul: strideC < m*n");
  if ((batch - 1) * sC + m * n > C.n) throw ArgError("matmul: C too small");
  if (k > 0) {
    if ((batch - 1) * sA + m * k > A.n) throw ArgError("matmul: A too small");
    if ((batch - 1) * sB + k * n > Bm.n) throw ArgError("matmul: B too small");
  }
  const int64_t lda = ta ? m : k, ldb = tb ? k : n;
  for (int64_t b = 0; b < batch; ++b)
    sgemm(ta, tb, m, n, k, alpha, A.p + b * sA, lda, Bm.p + b * sB, ldb, beta, C.p + b * sC, n);
  if (has_bias || relu) bias_act(C.p, sC, batch, m, n, has_bias ? bias.p : nullptr, relu);
  return Undef(info);
}
// groupedBiasAct(C, problems, bias | null, stride, relu): the grouped product's epilogue; the problems and
// the bias extents were checked by the product and checkGroupedEpilogue.
Napi::Value GroupedBiasActFn(const Napi::CallbackInfo& info) {
  const char* fn = "groupedBiasAct";
  auto C = arr<float>(info, 0, fn);
  auto P = arr<int32_t>(info, 1, fn);
  if (P.n % 9 != 0) throw ArgError("groupedBiasAct: problems length must be a multiple of 9");
  const bool has_bias = !info[2].IsNull() && !info[2].IsUndefined();
  View<float> bias{nullptr, 0};
  if (has_bias) bias = arr<float>(info, 2, fn);
  const int64_t G = P.n / 9, stride = dim(info, 3, fn);
  for (int64_t g = 0; g < G; ++g) {
    const int32_t* p = P.p + 9 * g;
    if (p[0] > 0 && p[1] > 0 && (int64_t)p[7] + (int64_t)(p[0] - 1) * p[8] + p[1] > C.n) throw ArgError("groupedBiasAct: C too small");
    if (has_bias && p[1] > 0 && g * stride + p[1] > bias.n) throw ArgError("groupedBiasAct: bias too small");
  }
  grouped_bias_act(C.p, P.p, G, has_bias ? bias.p : nullptr, stride, flag(info, 4));
  return Undef(info);
}
// Optional i32 index argument (null or undefined: absent). An empty array is present, with no entries
// (its data pointer may be null, so presence is a separate flag).
struct Index {
  View<int32_t> v{nullptr, 0};
  bool present = false;
};
Index opt_index(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  if (info.Length() <= i || info[i].IsNull() || info[i].IsUndefined()) return {};
  static int32_t no_entries = 0;
  Index r{arr<int32_t>(info, i, fn), true};
  if (!r.v.p) r.v.p = &no_entries;
  return r;
}

Napi::Value GroupedMatmulFn(const Napi::CallbackInfo& info) {
  const char* fn = "groupedMatmul";
  auto A = arr<float>(info, 0, fn);
  auto Bm = arr<float>(info, 1, fn);
  auto C = arr<float>(info, 2, fn);
  auto P = arr<int32_t>(info, 3, fn);
  bool ta = flag(info, 4), tb = flag(info, 5);
  float alpha = (float)num(info, 6, fn), beta = (float)num(info, 7, fn);
  const Index RA = opt_index(info, 8, fn), RB = opt_index(info, 9, fn), RC = opt_index(info, 10, fn);
  if (P.n % 9 != 0) throw ArgError("groupedMatmul: problems length must be a multiple of 9");
  if (RC.present && beta != 1.f) throw ArgError("groupedMatmul: a scattered C (rows.c) accumulates, beta must be 1");
  const int64_t G = P.n / 9;
  // Validate every group before running any (the rules of GroupedMatmulArgs, as the ref backend applies
  // them): a stored block (rows × cols from element `off`, leading dimension ld) lies inside its buffer;
  // through an index, the groups that use the operand share one ld, the block's columns fit in it, and
  // its index positions exist. Then every entry of each index must be a whole row of its buffer.
  int64_t shared_ld[3] = {-1, -1, -1};  // A, B, C
  auto check = [&](const std::string& tag, int which, int64_t rows, int64_t cols, int64_t off, int64_t ld, int64_t size,
                   const Index& idx) {
    const char* what = which == 0 ? "A" : which == 1 ? "B" : "C";
    if (ld < cols) throw ArgError(tag + what + ": leading dimension < columns");
    if (!idx.present) {
      if (off + (rows - 1) * ld + cols > size) throw ArgError(tag + what + " out of range");
      return;
    }
    if (shared_ld[which] >= 0 && shared_ld[which] != ld)
      throw ArgError(tag + "indexed " + what + " needs one leading dimension for all groups (" +
                     std::to_string(shared_ld[which]) + " and " + std::to_string(ld) + ")");
    shared_ld[which] = ld;
    const int64_t r0 = off / ld, c0 = off % ld;
    if (c0 + cols > ld) throw ArgError(tag + what + ": columns run past the leading dimension");
    if (r0 + rows > idx.v.n) throw ArgError(tag + what + ": needs index entries up to " + std::to_string(r0 + rows) +
                                            ", the index has " + std::to_string(idx.v.n));
  };
  for (int64_t g = 0; g < G; ++g) {
    const int32_t* p = P.p + 9 * g;
    int64_t m = p[0], n = p[1], k = p[2], oa = p[3], lda = p[4], ob = p[5], ldb = p[6], oc = p[7], ldc = p[8];
    std::string tag = "groupedMatmul: group " + std::to_string(g) + ": ";
    if (m < 0 || n < 0 || k < 0 || oa < 0 || ob < 0 || oc < 0) throw ArgError(tag + "negative size or offset");
    if (m == 0 || n == 0) continue;
    check(tag, 2, m, n, oc, ldc, C.n, RC);
    if (k == 0) continue;
    check(tag, 0, ta ? k : m, ta ? m : k, oa, lda, A.n, RA);
    check(tag, 1, tb ? n : k, tb ? k : n, ob, ldb, Bm.n, RB);
  }
  const struct { const Index& idx; int64_t size; const char* what; } indexed[3] = {{RA, A.n, "A"}, {RB, Bm.n, "B"}, {RC, C.n, "C"}};
  for (int w = 0; w < 3; ++w) {
    if (!indexed[w].idx.present || shared_ld[w] < 0) continue;
    const int64_t rows_in_buffer = indexed[w].size / shared_ld[w];
    for (int64_t r = 0; r < indexed[w].idx.v.n; ++r)
      if (indexed[w].idx.v.p[r] < 0 || indexed[w].idx.v.p[r] >= rows_in_buffer)
        throw ArgError(std::string("groupedMatmul: rows.") + (char)('a' + w) + " entry " + std::to_string(r) + " = " +
                       std::to_string(indexed[w].idx.v.p[r]) + " is outside the " + std::to_string(rows_in_buffer) +
                       " rows of " + indexed[w].what);
  }
  sgemm_grouped(ta, tb, P.p, G, A.p, Bm.p, C.p, alpha, beta,
                GemmRows{RA.present ? RA.v.p : nullptr, RB.present ? RB.v.p : nullptr, RC.present ? RC.v.p : nullptr});
  return Undef(info);
}

// ---------------------------------------------------------------- NN kernels
Napi::Value SoftmaxFn(const Napi::CallbackInfo& info) {
  const char* fn = "softmax";
  int64_t r = dim(info, 2, fn), c = dim(info, 3, fn);
  auto x = arr<float>(info, 0, fn, r * c);
  auto o = arr<float>(info, 1, fn, r * c);
  softmax(x.p, o.p, r, c);
  return Undef(info);
}
Napi::Value SoftmaxBackwardFn(const Napi::CallbackInfo& info) {
  const char* fn = "softmaxBackward";
  int64_t r = dim(info, 3, fn), c = dim(info, 4, fn);
  auto y = arr<float>(info, 0, fn, r * c);
  auto gy = arr<float>(info, 1, fn, r * c);
  auto gx = arr<float>(info, 2, fn, r * c);
  softmax_backward(y.p, gy.p, gx.p, r, c);
  return Undef(info);
}
Napi::Value LayerNormFn(const Napi::CallbackInfo& info) {
  const char* fn = "layerNorm";
  int64_t r = dim(info, 6, fn), c = dim(info, 7, fn);
  auto x = arr<float>(info, 0, fn, r * c);
  auto g = arr<float>(info, 1, fn, c);
  auto b = arr<float>(info, 2, fn, c);
  auto y = arr<float>(info, 3, fn, r * c);
  auto mean = arr<float>(info, 4, fn, r);
  auto rstd = arr<float>(info, 5, fn, r);
  layer_norm(x.p, g.p, b.p, y.p, mean.p, rstd.p, r, c, num(info, 8, fn));
  return Undef(info);
}
Napi::Value LayerNormBackwardFn(const Napi::CallbackInfo& info) {
  const char* fn = "layerNormBackward";
  int64_t r = dim(info, 8, fn), c = dim(info, 9, fn);
  auto x = arr<float>(info, 0, fn, r * c);
  auto g = arr<float>(info, 1, fn, c);
  auto mean = arr<float>(info, 2, fn, r);
  auto rstd = arr<float>(info, 3, fn, r);
  auto gy = arr<float>(info, 4, fn, r * c);
  auto gx = arr<float>(info, 5, fn, r * c);
  auto gg = arr<float>(info, 6, fn, c);
  auto gb = arr<float>(info, 7, fn, c);
  layer_norm_backward(x.p, g.p, mean.p, rstd.p, gy.p, gx.p, gg.p, gb.p, r, c);
  return Undef(info);
}
Napi::Value EmbeddingFn(const Napi::CallbackInfo& info) {
  const char* fn = "embedding";
  int64_t n = dim(info, 3, fn), vocab = dim(info, 4, fn), d = dim(info, 5, fn);
  auto t = arr<float>(info, 0, fn, vocab * d);
  auto ids = arr<int32_t>(info, 1, fn, n);
  auto o = arr<float>(info, 2, fn, n * d);
  embedding(t.p, ids.p, o.p, n, vocab, d);
  return Undef(info);
}
Napi::Value EmbeddingBackwardFn(const Napi::CallbackInfo& info) {
  const char* fn = "embeddingBackward";
  int64_t n = dim(info, 3, fn), vocab = dim(info, 4, fn), d = dim(info, 5, fn);
  auto gy = arr<float>(info, 0, fn, n * d);
  auto ids = arr<int32_t>(info, 1, fn, n);
  auto gt = arr<float>(info, 2, fn, vocab * d);
  embedding_backward(gy.p, ids.p, gt.p, n, vocab, d);
  return Undef(info);
}
Napi::Value AttentionFn(const Napi::CallbackInfo& info) {
  const char* fn = "attention";
  int64_t B = dim(info, 3, fn), T = dim(info, 4, fn), H = dim(info, 5, fn), D = dim(info, 6, fn);
  auto qkv = arr<float>(info, 0, fn, B * T * 3 * H * D);
  auto o = arr<float>(info, 1, fn, B * T * H * D);
  auto lse = arr<float>(info, 2, fn, B * H * T);
  attention(qkv.p, o.p, lse.p, B, T, H, D, flag(info, 7), (float)num(info, 8, fn));
  return Undef(info);
}
Napi::Value AttentionCachedFn(const Napi::CallbackInfo& info) {
  const char* fn = "attentionCached";
  int64_t B = dim(info, 5, fn), T = dim(info, 6, fn), H = dim(info, 7, fn), D = dim(info, 8, fn), Tm = dim(info, 9, fn);
  auto qkv = arr<float>(info, 0, fn, B * T * 3 * H * D);
  auto kc = arr<float>(info, 1, fn, B * H * Tm * D);
  auto vc = arr<float>(info, 2, fn, B * H * Tm * D);
  auto o = arr<float>(info, 3, fn, B * T * H * D);
  auto pos = arr<int32_t>(info, 4, fn, B);
  for (int64_t b = 0; b < B; ++b)
    if (pos.p[b] < 0 || pos.p[b] + T > Tm) throw ArgError("attentionCached: position outside the cache");
  attention_cached(qkv.p, kc.p, vc.p, o.p, pos.p, B, T, H, D, Tm, (float)num(info, 10, fn));
  return Undef(info);
}
Napi::Value AttentionBackwardFn(const Napi::CallbackInfo& info) {
  const char* fn = "attentionBackward";
  int64_t B = dim(info, 5, fn), T = dim(info, 6, fn), H = dim(info, 7, fn), D = dim(info, 8, fn);
  auto qkv = arr<float>(info, 0, fn, B * T * 3 * H * D);
  auto o = arr<float>(info, 1, fn, B * T * H * D);
  auto lse = arr<float>(info, 2, fn, B * H * T);
  auto go = arr<float>(info, 3, fn, B * T * H * D);
  auto g = arr<float>(info, 4, fn, B * T * 3 * H * D);
  attention_backward(qkv.p, o.p, lse.p, go.p, g.p, B, T, H, D, flag(info, 9), (float)num(info, 10, fn));
  return Undef(info);
}
Napi::Value DropoutFn(const Napi::CallbackInfo& info) {
  const char* fn = "dropout";
  auto x = arr<float>(info, 0, fn);
  auto o = arr<float>(info, 1, fn, x.n);
  double p = num(info, 2, fn);
  double seed = num(info, 3, fn);
  // seed taken modulo 2^32 like `seed >>> 0` in TS
  double sm = std::fmod(std::trunc(seed), 4294967296.0);
  if (sm < 0) sm += 4294967296.0;
  dropout(x.p, o.p, x.n, p, (uint32_t)sm);
  return Undef(info);
}
Napi::Value CrossEntropyFn(const Napi::CallbackInfo& info) {
  const char* fn = "crossEntropy";
  int64_t N = dim(info, 4, fn), V = dim(info, 5, fn);
  auto x = arr<float>(info, 0, fn, N * V);
  auto t = arr<int32_t>(info, 1, fn, N);
  auto l = arr<float>(info, 2, fn, N);
  auto lse = arr<float>(info, 3, fn, N);
  cross_entropy(x.p, t.p, l.p, lse.p, N, V);
  return Undef(info);
}
Napi::Value CrossEntropyBackwardFn(const Napi::CallbackInfo& info) {
  const char* fn = "crossEntropyBackward";
  int64_t N = dim(info, 5, fn), V = dim(info, 6, fn);
  auto x = arr<float>(info, 0, fn, N * V);
  auto t = arr<int32_t>(info, 1, fn, N);
  auto lse = arr<float>(info, 2, fn, N);
  auto gl = arr<float>(info, 3, fn, N);
  auto gx = arr<float>(info, 4, fn, N * V);
  cross_entropy_backward(x.p, t.p, lse.p, gl.p, gx.p, N, V);
  return Undef(info);
}
Napi::Value AdamWFn(const Napi::CallbackInfo& info) {
  const char* fn = "adamw";
  auto p = arr<float>(info, 0, fn);
  auto g = arr<float>(info, 1, fn, p.n);
  auto m = arr<float>(info, 2, fn, p.n);
  auto v = arr<float>(info, 3, fn, p.n);
  AdamW a{num(info, 4, fn), num(info, 5, fn), num(info, 6, fn), num(info, 7, fn),
          num(info, 8, fn), num(info, 9, fn), num(info, 10, fn)};
  adamw(p.p, g.p, m.p, v.p, p.n, a);
  return Undef(info);
}
Napi::Value TopkFn(const Napi::CallbackInfo& info) {
  const char* fn = "topk";
  int64_t r = dim(info, 3, fn), c = dim(info, 4, fn), k = dim(info, 5, fn);
  if (k > c) throw ArgError("topk: k > cols");
  auto x = arr<float>(info, 0, fn, r * c);
  auto v = arr<float>(info, 1, fn, r * k);
  auto ix = arr<int32_t>(info, 2, fn, r * k);
  topk(x.p, v.p, ix.p, r, c, k);
  return Undef(info);
}
Napi::Value TopkBackwardFn(const Napi::CallbackInfo& info) {
  const char* fn = "topkBackward";
  int64_t r = dim(info, 3, fn), c = dim(info, 4, fn), k = dim(info, 5, fn);
  auto g = arr<float>(info, 0, fn, r * k);
  auto idx = arr<int32_t>(info, 1, fn, r * k);
  auto o = arr<float>(info, 2, fn, r * c);
  topk_backward(g.p, idx.p, o.p, r, c, k);
  return Undef(info);
}
Napi::Value GatherRowsFn(const Napi::CallbackInfo& info) {
  const char* fn = "gatherRows";
  int64_t m = dim(info, 3, fn), n = dim(info, 4, fn), d = dim(info, 5, fn);
  auto x = arr<float>(info, 0, fn, n * d);
  auto idx = arr<int32_t>(info, 1, fn, m);
  auto o = arr<float>(info, 2, fn, m * d);
  gather_rows(x.p, idx.p, o.p, m, n, d);
  return Undef(info);
}
Napi::Value ScatterAddRowsFn(const Napi::CallbackInfo& info) {
  const char* fn = "scatterAddRows";
  int64_t m = dim(info, 3, fn), n = dim(info, 4, fn), d = dim(info, 5, fn);
  auto s = arr<float>(info, 0, fn, m * d);
  auto idx = arr<int32_t>(info, 1, fn, m);
  auto o = arr<float>(info, 2, fn, n * d);
  scatter_add_rows(s.p, idx.p, o.p, m, n, d);
  return Undef(info);
}
Napi::Value RowDotFn(const Napi::CallbackInfo& info) {
  const char* fn = "rowDot";
  int64_t r = dim(info, 3, fn), c = dim(info, 4, fn);
  auto a = arr<float>(info, 0, fn, r * c);
  auto b = arr<float>(info, 1, fn, r * c);
  auto o = arr<float>(info, 2, fn, r);
  row_dot(a.p, b.p, o.p, r, c);
  return Undef(info);
}
Napi::Value ActivationBitsFn(const Napi::CallbackInfo& info) {
  const char* fn = "activationBits";
  int64_t r = dim(info, 2, fn), c = dim(info, 3, fn);
  auto x = arr<float>(info, 0, fn, r * c);
  auto o = arr<int32_t>(info, 1, fn, r * ((c + 31) / 32));
  activation_bits(x.p, o.p, r, c);
  return Undef(info);
}

Napi::Value BalancedAuctionFn(const Napi::CallbackInfo& info) {
  const char* fn = "balancedAuction";
  int64_t n = dim(info, 1, fn), E = dim(info, 2, fn);
  if (E < 1 || n < 1 || n % E != 0) throw ArgError("balancedAuction: n must be a positive multiple of E >= 1");
  auto score = arr<double>(info, 0, fn, n * E);
  auto price = arr<double>(info, 3, fn, n);
  auto holder = arr<int32_t>(info, 4, fn, n);
  double eps = num(info, 5, fn), eps_final = num(info, 6, fn), factor = num(info, 7, fn);
  if (!(eps_final > 0) || !(eps >= eps_final) || !(factor > 1) || !std::isfinite(eps) || !std::isfinite(factor))
    throw ArgError("balancedAuction: needs finite eps >= eps_final > 0 and finite factor > 1");
  int64_t bids = balanced_auction(score.p, n, E, price.p, holder.p, eps, eps_final, factor);
  return Napi::Number::New(info.Env(), (double)bids);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto def = [&](const char* name, Napi::Value (*f)(const Napi::CallbackInfo&)) {
    exports.Set(name, Napi::Function::New(env, f, name));
  };
  def("setThreads", wrap<SetThreads>);
  def("getThreads", wrap<GetThreads>);
  def("parentDeathSignal", wrap<ParentDeathSignal>);
  def("gemmInit", wrap<GemmInit>);
  def("gemmProvider", wrap<GemmProvider>);
  def("gemmProviders", wrap<GemmProviders>);
  def("setGemmProvider", wrap<SetGemmProvider>);
  def("simd", wrap<Simd>);
  def("fill", wrap<Fill>);
  def("cast", wrap<Cast>);
  def("copyStrided", wrap<CopyStrided>);
  def("unary", wrap<UnaryFn>);
  def("unaryBackward", wrap<UnaryBackwardFn>);
  def("affine", wrap<AffineFn>);
  def("binary", wrap<BinaryFn>);
  def("reduceSum", wrap<ReduceSumFn>);
  def("sumSquares", wrap<SumSquaresFn>);
  def("matmul", wrap<MatmulFn>);
  def("groupedMatmul", wrap<GroupedMatmulFn>);
  def("groupedBiasAct", wrap<GroupedBiasActFn>);
  def("softmax", wrap<SoftmaxFn>);
  def("softmaxBackward", wrap<SoftmaxBackwardFn>);
  def("layerNorm", wrap<LayerNormFn>);
  def("layerNormBackward", wrap<LayerNormBackwardFn>);
  def("embedding", wrap<EmbeddingFn>);
  def("embeddingBackward", wrap<EmbeddingBackwardFn>);
  def("attention", wrap<AttentionFn>);
  def("attentionCached", wrap<AttentionCachedFn>);
  def("attentionBackward", wrap<AttentionBackwardFn>);
  def("dropout", wrap<DropoutFn>);
  def("crossEntropy", wrap<CrossEntropyFn>);
  def("crossEntropyBackward", wrap<CrossEntropyBackwardFn>);
  def("adamw", wrap<AdamWFn>);
  def("topk", wrap<TopkFn>);
  def("topkBackward", wrap<TopkBackwardFn>);
  def("gatherRows", wrap<GatherRowsFn>);
  def("scatterAddRows", wrap<ScatterAddRowsFn>);
  def("rowDot", wrap<RowDotFn>);
  def("activationBits", wrap<ActivationBitsFn>);
  def("balancedAuction", wrap<BalancedAuctionFn>);
  return exports;
}

}  // namespace

NODE_API_MODULE(ssd_cpu, Init)
