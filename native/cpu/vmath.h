// Small vectorisable math helpers (plain C++ the compiler auto-vectorises; no -ffast-math needed).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace ssd {

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// exp(x) for float, about 1 ulp, correct overflow (inf), underflow (denormals, 0) and NaN.
// Cody-Waite range reduction + Cephes polynomial; the scale 2^n is applied in two steps so that
// results in the denormal range are rounded once.
inline float vexpf(float x) {
  float xc = x > -104.0f ? x : -104.0f;  // NaN -> -104 (patched at the end)
  xc = xc < 89.0f ? xc : 89.0f;
  const float magic = 12582912.0f;  // 1.5 * 2^23: round to nearest integer
  float n = (xc * 1.44269504088896341f + magic) - magic;
  float r = std::fma(n, -0.693359375f, xc);
  r = std::fma(n, 2.12194440e-4f, r);
  float p = 1.9875691500E-4f;
  p = std::fma(p, r, 1.3981999507E-3f);
  p = std::fma(p, r, 8.3334519073E-3f);
  p = std::fma(p, r, 4.1665795894E-2f);
  p = std::fma(p, r, 1.6666665459E-1f);
  p = std::fma(p, r, 5.0000001201E-1f);
  float y = std::fma(p, r * r, r) + 1.0f;
  int32_t ni = (int32_t)n;  // in [-150, 129]
  int32_t n1 = ni >> 1, n2 = ni - n1;
  float s1 = bits_to_float((uint32_t)(n1 + 127) << 23);
  float s2 = bits_to_float((uint32_t)(n2 + 127) << 23);
  y = (y * s1) * s2;
  return x != x ? x : y;
}

// bf16 <-> f32 (round to nearest even; NaN stays NaN, quietened).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
inline float bf16_to_f32(uint16_t h) { return bits_to_float((uint32_t)h << 16); }

// GELU (tanh approximation) written with a stable logistic: 0.5(1+tanh(u)) = sigmoid(2u).
constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluA = 0.044715f;

inline float gelu_f(float x) {
  float u = kGeluC * (x + kGeluA * x * x * x);
  float a = vexpf(-2.0f * std::fabs(u));  // in (0, 1]
  float q = 1.0f / (1.0f + a);
  float s = u >= 0.0f ? q : a * q;  // sigmoid(2u)
  return x * s;
}

inline float gelu_grad_f(float x) {
  float x2 = x * x;
  float u = kGeluC * (x + kGeluA * x2 * x);
  float a = vexpf(-2.0f * std::fabs(u));
  float q = 1.0f / (1.0f + a);
  float s = u >= 0.0f ? q : a * q;
  // d/dx x·sigmoid(2u) = s + x · 2 s(1−s) · u',  s(1−s) = a q², u' = c (1 + 3 A x²)
  float t = 2.0f * x * kGeluC * (1.0f + 3.0f * kGeluA * x2) * (a * q * q);
  return s + (a > 0.0f ? t : 0.0f);
}

}  // namespace ssd
