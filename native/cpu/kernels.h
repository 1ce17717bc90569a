// CPU kernels (semantics: src/backend/contract.ts). Sizes are validated by the caller (TS + addon.cc);
// index checks that depend on data (ids, targets, indices) throw std::out_of_range here.
#pragma once
#include <cstdint>
#include <vector>

namespace ssd {

enum class Unary { relu, gelu, neg, exp, log, sqrt, square, tanh };
enum class Binary { add, sub, mul, div };
enum class Elem { f32, bf16, i32 };

void fill_f32(float* out, int64_t n, float v);
void fill_u16(uint16_t* out, int64_t n, uint16_t v);
void fill_i32(int32_t* out, int64_t n, int32_t v);
void cast_f32_bf16(const float* x, uint16_t* out, int64_t n);
void cast_bf16_f32(const uint16_t* x, float* out, int64_t n);
void copy_bytes(const void* x, void* out, int64_t bytes);

void copy_strided(Elem t, const void* src, int64_t srcOff, const std::vector<int64_t>& srcStrides, void* dst,
                  int64_t dstOff, const std::vector<int64_t>& dstStrides, const std::vector<int64_t>& shape, bool accumulate);

void unary(Unary op, const float* x, float* out, int64_t n);
void unary_backward(Unary op, const float* x, const float* gy, float* gx, int64_t n);
void affine(const float* x, float* out, int64_t n, double scale, double shift);
void binary(Binary op, const float* a, const std::vector<int64_t>& aStrides, const float* b,
            const std::vector<int64_t>& bStrides, float* out, const std::vector<int64_t>& shape);
void reduce_sum(const float* x, float* out, int64_t outer, int64_t mid, int64_t inner);
double sum_squares(const float* x, int64_t n);

void softmax(const float* x, float* out, int64_t rows, int64_t cols);
void softmax_backward(const float* y, const float* gy, float* gx, int64_t rows, int64_t cols);
void layer_norm(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd, int64_t rows,
                int64_t cols, double eps);
void layer_norm_backward(const float* x, const float* gamma, const float* mean, const float* rstd, const float* gy,
                         float* gx, float* ggamma, float* gbeta, int64_t rows, int64_t cols);
void embedding(const float* table, const int32_t* ids, float* out, int64_t n, int64_t vocab, int64_t dim);
void embedding_backward(const float* gy, const int32_t* ids, float* gtable, int64_t n, int64_t vocab, int64_t dim);
void dropout(const float* x, float* out, int64_t n, double p, uint32_t seed);
void cross_entropy(const float* logits, const int32_t* targets, float* losses, float* lse, int64_t N, int64_t V);
void cross_entropy_backward(const float* logits, const int32_t* targets, const float* lse, const float* gloss,
                            float* glogits, int64_t N, int64_t V);
struct AdamW {
  double lr, beta1, beta2, eps, weightDecay, step, gradScale;
};
void adamw(float* p, const float* g, float* m, float* v, int64_t n, const AdamW& a);
void topk(const float* x, float* values, int32_t* indices, int64_t rows, int64_t cols, int64_t k);
void topk_backward(const float* g, const int32_t* indices, float* gx, int64_t rows, int64_t cols, int64_t k);
void gather_rows(const float* x, const int32_t* idx, float* out, int64_t m, int64_t n, int64_t d);
void scatter_add_rows(const float* src, const int32_t* idx, float* out, int64_t m, int64_t n, int64_t d);
// The matmul epilogue (MatmulArgs.bias / relu) on C (batch, m, n), batches strideC apart: C = act(C + bias),
// bias (n) or null; act = ReLU when relu (NaN -> 0), else identity.
void bias_act(float* C, int64_t strideC, int64_t batch, int64_t m, int64_t n, const float* bias, bool relu);
// The grouped product's epilogue (GroupedMatmulArgs.bias / relu): group g's C rows (problems: 9 ints per
// group) += bias[g · stride ..] (bias may be null), then ReLU when relu (NaN -> 0).
void grouped_bias_act(float* C, const int32_t* problems, int64_t G, const float* bias, int64_t stride, bool relu);
// out[i] = Σ_p op(A)[i, p] for i < m (the matmul biasGrad epilogue): A stored (m, k), or (k, m) when
// transA; sums in double, in order of p.
void row_sums(const float* A, bool transA, int64_t m, int64_t k, float* out);
void row_dot(const float* a, const float* b, float* out, int64_t rows, int64_t cols);
void activation_bits(const float* x, int32_t* out, int64_t rows, int64_t cols);

void attention(const float* qkv, float* out, float* lse, int64_t B, int64_t T, int64_t H, int64_t D, bool causal,
               float scale);
// Causal attention of T new tokens per row over a KV cache (B, H, Tmax, D); see the backend contract's
// attentionCached. Positions are validated by the caller.
void attention_cached(const float* qkv, float* kc, float* vc, float* out, const int32_t* pos, int64_t B, int64_t T,
                      int64_t H, int64_t D, int64_t Tmax, float scale);
void attention_backward(const float* qkv, const float* out, const float* lse, const float* gout, float* gqkv, int64_t B,
                        int64_t T, int64_t H, int64_t D, bool causal, float scale);

}  // namespace ssd
