// N-API surface of the cuda backend. Device buffers are passed as plain numbers (device addresses,
// exact in a double); host data as typed arrays. Sizes are validated in TypeScript
// (src/backend/cuda/index.ts); errors from CUDA, cuBLAS and index checks become JavaScript errors.
#include <napi.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common.cuh"
#include "runtime.h"
#include "napi_errors.h"

namespace {

using namespace ssdc;

using ssd_napi::ArgError;
using ssd_napi::wrap;

double num(const Napi::CallbackInfo& info, size_t i) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) throw ArgError("argument " + std::to_string(i) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}
int64_t i64(const Napi::CallbackInfo& info, size_t i) { return (int64_t)num(info, i); }
void* ptr(const Napi::CallbackInfo& info, size_t i) { return (void*)(uintptr_t)num(info, i); }
float* fp(const Napi::CallbackInfo& info, size_t i) { return (float*)ptr(info, i); }
int32_t* ip(const Napi::CallbackInfo& info, size_t i) { return (int32_t*)ptr(info, i); }
bool flag(const Napi::CallbackInfo& info, size_t i) { return info[i].ToBoolean().Value(); }

struct HostView {
  void* p;
  size_t bytes;
};
HostView host(const Napi::CallbackInfo& info, size_t i) {
  Napi::Value v = info[i];
  if (!v.IsTypedArray()) throw ArgError("argument " + std::to_string(i) + " must be a typed array");
  auto ta = v.As<Napi::TypedArray>();
  return {static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset(), ta.ByteLength()};
}
std::vector<int64_t> ints(const Napi::CallbackInfo& info, size_t i) {
  Napi::Value v = info[i];
  if (!v.IsArray()) throw ArgError("argument " + std::to_string(i) + " must be an array");
  auto a = v.As<Napi::Array>();
  std::vector<int64_t> r(a.Length());
  for (uint32_t k = 0; k < a.Length(); ++k) r[k] = (int64_t)a.Get(k).As<Napi::Number>().DoubleValue();
  return r;
}
Dims dims(const std::vector<int64_t>& shape, const std::vector<int64_t>& s0, const std::vector<int64_t>& s1) {
  if (shape.size() > (size_t)kMaxRank) throw ArgError("rank " + std::to_string(shape.size()) + " > " + std::to_string(kMaxRank));
  Dims d{};
  d.rank = (int)shape.size();
  for (size_t a = 0; a < shape.size(); ++a) {
    d.shape[a] = shape[a];
    d.s0[a] = s0[a];
    d.s1[a] = s1[a];
  }
  return d;
}

uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

Napi::Value U(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }

// ---------------------------------------------------------------- runtime
Napi::Value Probe(const Napi::CallbackInfo& info) {
  int n = 0;
  std::string why = device_probe(&n);
  auto o = Napi::Object::New(info.Env());
  o.Set("count", n);
  o.Set("error", why);
  return o;
}
// init(device)
Napi::Value Init(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), runtime_init((int)i64(info, 0))); }
// An array of strings (library paths).
std::vector<std::string> strings(const Napi::CallbackInfo& info, size_t i) {
  Napi::Value v = info[i];
  if (!v.IsArray()) throw ArgError("argument " + std::to_string(i) + " must be an array of strings");
  auto a = v.As<Napi::Array>();
  std::vector<std::string> r;
  for (uint32_t k = 0; k < a.Length(); ++k) r.push_back(a.Get(k).As<Napi::String>().Utf8Value());
  return r;
}
Napi::Value LoadCublas(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), cublas_load(strings(info, 0))); }
Napi::Value Malloc(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), (double)(uintptr_t)dev_alloc((size_t)i64(info, 0)));
}
Napi::Value Free(const Napi::CallbackInfo& info) { dev_free(ptr(info, 0)); return U(info); }
Napi::Value Zero(const Napi::CallbackInfo& info) {
  int64_t b = i64(info, 1);
  if (b > 0) check(cudaMemsetAsync(ptr(info, 0), 0, (size_t)b, stream()), "memset");
  return U(info);
}
Napi::Value Stats(const Napi::CallbackInfo& info) {
  AllocStats s = alloc_stats();
  auto o = Napi::Object::New(info.Env());
  o.Set("liveBytes", (double)s.live_bytes);
  o.Set("cachedBytes", (double)s.cached_bytes);
  o.Set("peakBytes", (double)s.peak_bytes);
  o.Set("liveBlocks", (double)s.live_blocks);
  return o;
}
Napi::Value EmptyCache(const Napi::CallbackInfo& info) { empty_cache(); return U(info); }
Napi::Value Sync(const Napi::CallbackInfo& info) { synchronize(); return U(info); }
Napi::Value GraphBegin(const Napi::CallbackInfo& info) { graph_begin(); return U(info); }
// graphEnd(keep) -> graph id (0 when discarded)
Napi::Value GraphEnd(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), (double)graph_end(flag(info, 0)));
}
Napi::Value GraphLaunch(const Napi::CallbackInfo& info) { graph_launch(i64(info, 0)); return U(info); }
Napi::Value GraphDestroy(const Napi::CallbackInfo& info) { graph_destroy(i64(info, 0)); return U(info); }

// h2d(dst, typedArray, bytes) / h2dAsync(dst, typedArray, bytes) / d2h(src, typedArray, bytes)
template <bool Async>
Napi::Value H2D(const Napi::CallbackInfo& info) {
  HostView h = host(info, 1);
  size_t b = (size_t)i64(info, 2);
  if (b > h.bytes) throw ArgError("upload: host array too small");
  (Async ? h2d_async : h2d)(ptr(info, 0), h.p, b);
  return U(info);
}
Napi::Value D2H(const Napi::CallbackInfo& info) {
  HostView h = host(info, 1);
  size_t b = (size_t)i64(info, 2);
  if (b > h.bytes) throw ArgError("download: host array too small");
  d2h(h.p, ptr(info, 0), b);
  return U(info);
}
// Float32Array -> bf16 device buffer (round to nearest even on the host).
Napi::Value H2DBf16(const Napi::CallbackInfo& info) {
  HostView h = host(info, 1);
  size_t n = h.bytes / 4;
  std::vector<uint16_t> tmp(n);
  const float* f = (const float*)h.p;
  for (size_t i = 0; i < n; ++i) tmp[i] = f32_to_bf16(f[i]);
  h2d(ptr(info, 0), tmp.data(), n * 2);
  return U(info);
}
Napi::Value D2HBf16(const Napi::CallbackInfo& info) {
  HostView h = host(info, 1);
  size_t n = h.bytes / 4;
  std::vector<uint16_t> tmp(n);
  d2h(tmp.data(), ptr(info, 0), n * 2);
  float* f = (float*)h.p;
  for (size_t i = 0; i < n; ++i) {
    uint32_t u = (uint32_t)tmp[i] << 16;
    std::memcpy(&f[i], &u, 4);
  }
  return U(info);
}

// ---------------------------------------------------------------- data movement
Napi::Value Fill32(const Napi::CallbackInfo& info) { fill32(ptr(info, 0), i64(info, 1), (uint32_t)i64(info, 2)); return U(info); }
Napi::Value Fill16(const Napi::CallbackInfo& info) { fill16(ptr(info, 0), i64(info, 1), (uint16_t)i64(info, 2)); return U(info); }
// cast(kind, x, out, n): 0 f32->bf16, 1 bf16->f32, 2 i32->f32, 3 f32->i32
Napi::Value Cast(const Napi::CallbackInfo& info) {
  int kind = (int)i64(info, 0);
  int64_t n = i64(info, 3);
  switch (kind) {
    case 0: cast_f32_bf16(fp(info, 1), (uint16_t*)ptr(info, 2), n); break;
    case 1: cast_bf16_f32((const uint16_t*)ptr(info, 1), fp(info, 2), n); break;
    case 2: cast_i32_f32(ip(info, 1), fp(info, 2), n); break;
    default: cast_f32_i32(fp(info, 1), ip(info, 2), n); break;
  }
  return U(info);
}
Napi::Value CastPad(const Napi::CallbackInfo& info) {
  cast_f32_bf16_pad(fp(info, 0), (uint16_t*)ptr(info, 1), i64(info, 2), i64(info, 3), i64(info, 4), i64(info, 5));
  return U(info);
}
// widenUnpad(x16, out, rows, cols, ld)
Napi::Value WidenUnpad(const Napi::CallbackInfo& info) {
  cast_bf16_f32_unpad((const uint16_t*)ptr(info, 0), fp(info, 1), i64(info, 2), i64(info, 3), i64(info, 4));
  return U(info);
}
// copy2d(src, srcPitchBytes, dst, dstPitchBytes, widthBytes, rows)
Napi::Value Copy2D(const Napi::CallbackInfo& info) {
  copy_2d(ptr(info, 0), i64(info, 1), ptr(info, 2), i64(info, 3), i64(info, 4), i64(info, 5));
  return U(info);
}
Napi::Value CopyBytes(const Napi::CallbackInfo& info) { copy_bytes(ptr(info, 0), ptr(info, 1), i64(info, 2)); return U(info); }
// copyStrided(kind, src, srcOff, srcStrides, dst, dstOff, dstStrides, shape, acc)
Napi::Value CopyStrided(const Napi::CallbackInfo& info) {
  Dims d = dims(ints(info, 7), ints(info, 3), ints(info, 6));
  copy_strided((int)i64(info, 0), ptr(info, 1), i64(info, 2), ptr(info, 4), i64(info, 5), d, flag(info, 8));
  return U(info);
}

// ---------------------------------------------------------------- elementwise
Napi::Value Unary(const Napi::CallbackInfo& info) { unary((int)i64(info, 0), fp(info, 1), fp(info, 2), i64(info, 3)); return U(info); }
// unaryBackward(op, x, gy, gx, gx16, n, x16)
Napi::Value UnaryBackward(const Napi::CallbackInfo& info) {
  unary_backward((int)i64(info, 0), fp(info, 1), (const uint16_t*)ptr(info, 6), fp(info, 2), fp(info, 3), (uint16_t*)ptr(info, 4),
                 i64(info, 5));
  return U(info);
}
Napi::Value Affine(const Napi::CallbackInfo& info) {
  affine(fp(info, 0), fp(info, 1), i64(info, 2), (float)num(info, 3), (float)num(info, 4));
  return U(info);
}
// binary(op, a, aStrides, b, bStrides, out, shape)
Napi::Value Binary(const Napi::CallbackInfo& info) {
  Dims d = dims(ints(info, 6), ints(info, 2), ints(info, 4));
  binary((int)i64(info, 0), fp(info, 1), fp(info, 3), fp(info, 5), d);
  return U(info);
}
Napi::Value ReduceSum(const Napi::CallbackInfo& info) {
  reduce_sum(fp(info, 0), fp(info, 1), i64(info, 2), i64(info, 3), i64(info, 4));
  return U(info);
}
// sumSquares(ptrs, counts)
Napi::Value SumSquares(const Napi::CallbackInfo& info) {
  std::vector<int64_t> p = ints(info, 0), n = ints(info, 1);
  if (p.size() != n.size()) throw ArgError("ptrs and counts differ in length");
  std::vector<const float*> xs(p.size());
  for (size_t i = 0; i < p.size(); ++i) xs[i] = (const float*)(uintptr_t)p[i];
  return Napi::Number::New(info.Env(), sum_squares(xs, n));
}
Napi::Value Dropout(const Napi::CallbackInfo& info) {
  dropout(fp(info, 0), fp(info, 1), i64(info, 2), (float)num(info, 3), (uint32_t)i64(info, 4));
  return U(info);
}
// adamw(p, g, m, v, n, lr, b1, b2, eps, wd, step, gradScale, p16)
Napi::Value AdamW(const Napi::CallbackInfo& info) {
  double b1 = num(info, 6), b2 = num(info, 7), step = num(info, 10);
  double bc1 = 1 - std::pow(b1, step), bc2 = 1 - std::pow(b2, step);
  adamw(fp(info, 0), fp(info, 1), fp(info, 2), fp(info, 3), (uint16_t*)ptr(info, 12), i64(info, 4), (float)num(info, 5), (float)b1, (float)b2,
        (float)num(info, 8), (float)num(info, 9), (float)bc1, (float)bc2, (float)num(info, 11));
  return U(info);
}

// ---------------------------------------------------------------- GEMM
// gemm(A, aType, lda, sA, B, bType, ldb, sB, C, ldc, sC, batch, m, n, k, tA, tB, alpha, beta, compute, bias, relu,
// biasGrad, c16, bias16) -> kGemmBiasGrad | kGemmOnlyC16 bits (see gemm); bias, biasGrad, c16, bias16 0: none
Napi::Value Gemm(const Napi::CallbackInfo& info) {
  const int done =
      gemm(ptr(info, 0), (int)i64(info, 1), i64(info, 2), i64(info, 3), ptr(info, 4), (int)i64(info, 5), i64(info, 6),
           i64(info, 7), fp(info, 8), i64(info, 9), i64(info, 10), i64(info, 11), i64(info, 12), i64(info, 13),
           i64(info, 14), flag(info, 15), flag(info, 16), (float)num(info, 17), (float)num(info, 18), (int)i64(info, 19),
           fp(info, 20), flag(info, 21), fp(info, 22), (uint16_t*)ptr(info, 23), (const uint16_t*)ptr(info, 24));
  return Napi::Number::New(info.Env(), done);
}
// biasAct(C, ldc, sC, batch, m, n, bias, relu): the matmul epilogue alone (bias 0: none)
Napi::Value BiasAct(const Napi::CallbackInfo& info) {
  bias_act(fp(info, 0), i64(info, 1), i64(info, 2), i64(info, 3), i64(info, 4), i64(info, 5), fp(info, 6), flag(info, 7));
  return U(info);
}
// groupedGemm(A16, rowsA, B16, rowsB, C, problems Int32Array, tA, tB, alpha, beta, segments, total, cBf16, bias,
// biasStride, relu); rows and segments 0: not indexed / sizes in the problems; cBf16: C is bf16; bias 0: none
Napi::Value GroupedGemm(const Napi::CallbackInfo& info) {
  HostView h = host(info, 5);
  grouped_gemm((const uint16_t*)ptr(info, 0), ip(info, 1), (const uint16_t*)ptr(info, 2), ip(info, 3), ptr(info, 4),
               flag(info, 12), (const int32_t*)h.p, (int64_t)(h.bytes / 36), flag(info, 6), flag(info, 7),
               (float)num(info, 8), (float)num(info, 9), ip(info, 10), i64(info, 11), fp(info, 13), i64(info, 14),
               flag(info, 15));
  return U(info);
}

// ---------------------------------------------------------------- NN
Napi::Value Softmax(const Napi::CallbackInfo& info) { softmax(fp(info, 0), fp(info, 1), i64(info, 2), i64(info, 3)); return U(info); }
Napi::Value SoftmaxBackward(const Napi::CallbackInfo& info) {
  softmax_backward(fp(info, 0), fp(info, 1), fp(info, 2), i64(info, 3), i64(info, 4));
  return U(info);
}
// layerNorm(x, g, b, y, y16, mean, rstd, rows, cols, eps, y16Only) -> whether y was left unwritten
Napi::Value LayerNorm(const Napi::CallbackInfo& info) {
  const bool skipped = layer_norm(fp(info, 0), fp(info, 1), fp(info, 2), fp(info, 3), (uint16_t*)ptr(info, 4), fp(info, 5),
                                  fp(info, 6), i64(info, 7), i64(info, 8), (float)num(info, 9), flag(info, 10));
  return Napi::Boolean::New(info.Env(), skipped);
}
Napi::Value LayerNormBackward(const Napi::CallbackInfo& info) {
  layer_norm_backward(fp(info, 0), fp(info, 1), fp(info, 2), fp(info, 3), fp(info, 4), fp(info, 5), fp(info, 6),
                      fp(info, 7), i64(info, 8), i64(info, 9));
  return U(info);
}
// gatherRows(x, idx, out, m, d, opName)
Napi::Value GatherRows(const Napi::CallbackInfo& info) {
  std::string op = info[5].As<Napi::String>().Utf8Value();
  gather_rows(fp(info, 0), ip(info, 1), fp(info, 2), i64(info, 3), i64(info, 4), op.c_str());
  return U(info);
}
// segmentSum(src, plan, n, m, chunks, listed, out, d, init, opName, srcBf16, bias)
Napi::Value SegmentSum(const Napi::CallbackInfo& info) {
  std::string op = info[9].As<Napi::String>().Utf8Value();
  segment_sum(ptr(info, 0), flag(info, 10), ip(info, 1), i64(info, 2), i64(info, 3), i64(info, 4), flag(info, 5), fp(info, 6),
              i64(info, 7), flag(info, 8), fp(info, 11), op.c_str());
  return U(info);
}
// segmentSumBounds(src, plan, n, m, out, d, init, opName)
Napi::Value SegmentSumBounds(const Napi::CallbackInfo& info) {
  std::string op = info[7].As<Napi::String>().Utf8Value();
  segment_sum_bounds(fp(info, 0), ip(info, 1), i64(info, 2), i64(info, 3), fp(info, 4), i64(info, 5), flag(info, 6), op.c_str());
  return U(info);
}
// expertGroups(experts, N, k, E, offsets, rowToken, rowSlot, rowExpert, tokenPlan, expertPlan)
Napi::Value ExpertGroups(const Napi::CallbackInfo& info) {
  expert_groups(ip(info, 0), i64(info, 1), i64(info, 2), i64(info, 3), ip(info, 4), ip(info, 5), ip(info, 6), ip(info, 7),
                ip(info, 8), ip(info, 9));
  return U(info);
}
// scatterUnique(src, idx, m, out, d, init, opName)
Napi::Value ScatterUnique(const Napi::CallbackInfo& info) {
  std::string op = info[6].As<Napi::String>().Utf8Value();
  scatter_unique(fp(info, 0), ip(info, 1), i64(info, 2), fp(info, 3), i64(info, 4), flag(info, 5), op.c_str());
  return U(info);
}
// scatterPlan(idx Int32Array, n) -> { kind, ptr, chunks }: the plan of all entries of idx as targets in [0, n)
// (kind 'unique', 'sorted' or 'listed'; ptr 0 for 'unique').
Napi::Value ScatterPlan(const Napi::CallbackInfo& info) {
  HostView h = host(info, 0);
  const auto p = scatter_plan((const int32_t*)h.p, (int64_t)(h.bytes / 4), i64(info, 1));
  static const char* const kKinds[] = {"unique", "sorted", "listed"};
  auto o = Napi::Object::New(info.Env());
  o.Set("kind", kKinds[(int)p.kind]);
  o.Set("ptr", (double)(uintptr_t)p.ptr);
  o.Set("chunks", (double)p.chunks);
  return o;
}
// intRange(Int32Array) -> [min, max] (the array is not empty).
Napi::Value IntRange(const Napi::CallbackInfo& info) {
  HostView h = host(info, 0);
  const int32_t* a = (const int32_t*)h.p;
  const size_t n = h.bytes / 4;
  int32_t lo = n ? a[0] : 0, hi = n ? a[0] : -1;
  for (size_t i = 1; i < n; ++i) {
    lo = std::min(lo, a[i]);
    hi = std::max(hi, a[i]);
  }
  auto r = Napi::Array::New(info.Env(), 2);
  r.Set(0u, lo);
  r.Set(1u, hi);
  return r;
}
// crossEntropy(logits, ld, targets, losses, lse, N, V, logitsBf16)
Napi::Value CrossEntropy(const Napi::CallbackInfo& info) {
  cross_entropy(ptr(info, 0), flag(info, 7), i64(info, 1), ip(info, 2), fp(info, 3), fp(info, 4), i64(info, 5), i64(info, 6));
  return U(info);
}
// crossEntropyBackward(logits, ld, targets, lse, gloss, glogits, g16, ld16, N, V, logitsBf16); glogits / g16 0: not written
Napi::Value CrossEntropyBackward(const Napi::CallbackInfo& info) {
  cross_entropy_backward(ptr(info, 0), flag(info, 10), i64(info, 1), ip(info, 2), fp(info, 3), fp(info, 4), fp(info, 5),
                         (uint16_t*)ptr(info, 6), i64(info, 7), i64(info, 8), i64(info, 9));
  return U(info);
}
Napi::Value RowDot(const Napi::CallbackInfo& info) {
  row_dot(fp(info, 0), fp(info, 1), fp(info, 2), i64(info, 3), i64(info, 4));
  return U(info);
}
// reluBackwardRowDot(y, gy, gx, gx16, dots, rows, cols, y16)
Napi::Value ReluBackwardRowDot(const Napi::CallbackInfo& info) {
  relu_backward_row_dot(fp(info, 0), (const uint16_t*)ptr(info, 7), fp(info, 1), fp(info, 2), (uint16_t*)ptr(info, 3), fp(info, 4),
                        i64(info, 5), i64(info, 6));
  return U(info);
}
Napi::Value TopKBackward(const Napi::CallbackInfo& info) {
  topk_backward(fp(info, 0), ip(info, 1), fp(info, 2), i64(info, 3), i64(info, 4), i64(info, 5));
  return U(info);
}
Napi::Value ActivationBits(const Napi::CallbackInfo& info) {
  activation_bits(fp(info, 0), ip(info, 1), i64(info, 2), i64(info, 3));
  return U(info);
}
Napi::Value TopK(const Napi::CallbackInfo& info) {
  topk(fp(info, 0), fp(info, 1), ip(info, 2), i64(info, 3), i64(info, 4), i64(info, 5));
  return U(info);
}
// attention(qkv, q16, out, lse, B, T, H, D, causal, scale, impl, out16)
Napi::Value Attention(const Napi::CallbackInfo& info) {
  attention(fp(info, 0), (const uint16_t*)ptr(info, 1), fp(info, 2), (uint16_t*)ptr(info, 11), fp(info, 3), (int)i64(info, 4),
            (int)i64(info, 5), (int)i64(info, 6), (int)i64(info, 7), flag(info, 8), (float)num(info, 9), (int)i64(info, 10));
  return U(info);
}
// attentionBackward(qkv, q16, out, lse, gout, go16, gqkv, B, T, H, D, causal, scale, impl, gqkv16)
Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  attention_backward(fp(info, 0), (const uint16_t*)ptr(info, 1), fp(info, 2), fp(info, 3), fp(info, 4),
                     (const uint16_t*)ptr(info, 5), fp(info, 6), (uint16_t*)ptr(info, 14), (int)i64(info, 7), (int)i64(info, 8),
                     (int)i64(info, 9), (int)i64(info, 10), flag(info, 11), (float)num(info, 12), (int)i64(info, 13));
  return U(info);
}
// gemv(x, xBf16, ldx, w16, ldw, out, ldc, bias, M, N, K, alpha, relu)
Napi::Value Gemv(const Napi::CallbackInfo& info) {
  gemv_bf16(ptr(info, 0), flag(info, 1), i64(info, 2), (const uint16_t*)ptr(info, 3), i64(info, 4), fp(info, 5), i64(info, 6),
            fp(info, 7), i64(info, 8), i64(info, 9), i64(info, 10), (float)num(info, 11), flag(info, 12));
  return U(info);
}

// attentionCached(qkv, kc, vc, out, pos (device, B i32), B, T, H, D, Tmax, scale)
Napi::Value AttentionCached(const Napi::CallbackInfo& info) {
  attention_cached(fp(info, 0), fp(info, 1), fp(info, 2), fp(info, 3), ip(info, 4), (int)i64(info, 5),
                   (int)i64(info, 6), (int)i64(info, 7), (int)i64(info, 8), (int)i64(info, 9), (float)num(info, 10));
  return U(info);
}

// ---------------------------------------------------------------- NCCL
Napi::Value LoadNccl(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), nccl_load(strings(info, 0))); }
Napi::Value NcclUniqueId(const Napi::CallbackInfo& info) {
  auto out = Napi::Uint8Array::New(info.Env(), kNcclIdBytes);
  nccl_unique_id(out.Data());
  return out;
}
// ncclCommInit(id (Uint8Array of kNcclIdBytes), nranks, rank) -> communicator handle
Napi::Value NcclCommInit(const Napi::CallbackInfo& info) {
  HostView id = host(info, 0);
  if (id.bytes != (size_t)kNcclIdBytes) throw ArgError("NCCL id must be " + std::to_string(kNcclIdBytes) + " bytes");
  return Napi::Number::New(info.Env(), (double)nccl_comm_init((const uint8_t*)id.p, (int)i64(info, 1), (int)i64(info, 2)));
}
// ncclAllReduceSum(comm, ptrs (f32 device buffers), counts (elements), overlap)
Napi::Value NcclAllReduceSum(const Napi::CallbackInfo& info) {
  std::vector<int64_t> p = ints(info, 1), n = ints(info, 2);
  if (p.size() != n.size()) throw ArgError("ptrs and counts differ in length");
  std::vector<float*> bufs(p.size());
  std::vector<size_t> counts(n.size());
  for (size_t i = 0; i < p.size(); ++i) {
    bufs[i] = (float*)(uintptr_t)p[i];
    counts[i] = (size_t)n[i];
  }
  nccl_all_reduce_sum(i64(info, 0), bufs, counts, flag(info, 3));
  return U(info);
}
Napi::Value NcclWait(const Napi::CallbackInfo& info) {
  nccl_wait();
  return U(info);
}
Napi::Value NcclCommDestroy(const Napi::CallbackInfo& info) {
  nccl_comm_destroy(i64(info, 0));
  return U(info);
}

#define FN(name, f) exports.Set(name, Napi::Function::New<wrap<f>>(env, name))

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  FN("probe", Probe);
  FN("init", Init);
  FN("loadCublas", LoadCublas);
  FN("loadNccl", LoadNccl);
  FN("ncclUniqueId", NcclUniqueId);
  FN("ncclCommInit", NcclCommInit);
  FN("ncclAllReduceSum", NcclAllReduceSum);
  FN("ncclCommDestroy", NcclCommDestroy);
  FN("ncclWait", NcclWait);
  FN("malloc", Malloc);
  FN("free", Free);
  FN("zero", Zero);
  FN("stats", Stats);
  FN("emptyCache", EmptyCache);
  FN("sync", Sync);
  FN("graphBegin", GraphBegin);
  FN("graphEnd", GraphEnd);
  FN("graphLaunch", GraphLaunch);
  FN("graphDestroy", GraphDestroy);
  FN("h2d", H2D<false>);
  FN("h2dAsync", H2D<true>);
  FN("d2h", D2H);
  FN("h2dBf16", H2DBf16);
  FN("d2hBf16", D2HBf16);
  FN("fill32", Fill32);
  FN("fill16", Fill16);
  FN("cast", Cast);
  FN("copyBytes", CopyBytes);
  FN("castPad", CastPad);
  FN("widenUnpad", WidenUnpad);
  FN("copy2d", Copy2D);
  FN("copyStrided", CopyStrided);
  FN("unary", Unary);
  FN("unaryBackward", UnaryBackward);
  FN("affine", Affine);
  FN("binary", Binary);
  FN("reduceSum", ReduceSum);
  FN("sumSquares", SumSquares);
  FN("dropout", Dropout);
  FN("adamw", AdamW);
  FN("gemm", Gemm);
  FN("biasAct", BiasAct);
  FN("groupedGemm", GroupedGemm);
  FN("softmax", Softmax);
  FN("softmaxBackward", SoftmaxBackward);
  FN("layerNorm", LayerNorm);
  FN("layerNormBackward", LayerNormBackward);
  FN("gatherRows", GatherRows);
  FN("segmentSum", SegmentSum);
  FN("segmentSumBounds", SegmentSumBounds);
  FN("expertGroups", ExpertGroups);
  FN("scatterUnique", ScatterUnique);
  FN("scatterPlan", ScatterPlan);
  FN("intRange", IntRange);
  FN("crossEntropy", CrossEntropy);
  FN("crossEntropyBackward", CrossEntropyBackward);
  FN("topk", TopK);
  FN("activationBits", ActivationBits);
  FN("topkBackward", TopKBackward);
  FN("rowDot", RowDot);
  FN("reluBackwardRowDot", ReluBackwardRowDot);
  FN("attention", Attention);
  FN("attentionBackward", AttentionBackward);
  FN("attentionCached", AttentionCached);
  FN("gemv", Gemv);
  return exports;
}

}  // namespace

NODE_API_MODULE(ssd_cuda, InitModule)
