// Host-only runtime entry points of the CUDA backend (used by the N-API glue).
#pragma once
#include <cstdint>
#include <string>

namespace ssdc {
struct AllocStats {
  size_t live_bytes, cached_bytes, peak_bytes;
  int64_t live_blocks;
};
// Selects device 0 and creates the stream; throws "no CUDA device: ..." without one. Returns a description.
std::string runtime_init();
// Device count without throwing; returns the reason when there is none.
std::string device_probe(int* count);
void empty_cache();
AllocStats alloc_stats();
void synchronize();
}  // namespace ssdc
