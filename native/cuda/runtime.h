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
// CUDA graphs of the stream (see runtime.cu): capture everything queued between graph_begin and
// graph_end; graph_end(keep) instantiates it and returns its id (keep false: discards it, returns 0);
// graph_launch queues one replay; graph_destroy waits for the stream and frees the graph's blocks.
void graph_begin();
int64_t graph_end(bool keep);
void graph_launch(int64_t id);
void graph_destroy(int64_t id);
}  // namespace ssdc
