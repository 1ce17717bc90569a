// Counter-based RNG shared with src/backend/rng.ts (bit-identical).
#pragma once
#include <cstdint>

namespace ssd {
inline uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
  return x;
}
inline uint32_t hash32(uint32_t seed, uint32_t i) {
  uint32_t x = (i * 0x9e3779b1u) ^ seed;
  return lowbias32(lowbias32(x) + seed);
}
inline float uniform01(uint32_t seed, uint32_t i) { return (float)(hash32(seed, i) >> 8) * (1.0f / 16777216.0f); }
}  // namespace ssd
