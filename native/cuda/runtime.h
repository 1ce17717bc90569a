// Host-only runtime entry points of the CUDA backend (used by the N-API glue).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ssdc {
struct AllocStats {
  size_t live_bytes, cached_bytes, peak_bytes;
  int64_t live_blocks;
};
// Selects device `device` (an ordinal below the device count) and creates the stream; throws "no CUDA
// device: ..." without one, or naming the count when `device` is out of range. Returns a description.
std::string runtime_init(int device);
// Throws naming `what` while a CUDA graph is being captured (copies, synchronisation, collectives).
void require_not_capturing(const char* what);
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
// NCCL through dlopen (nccl.cu), for data-parallel training: nccl_load tries the paths in order and
// returns the one loaded with its version; nccl_unique_id writes the kNcclIdBytes of a new communicator
// id (rank 0 makes it, every rank passes it to nccl_comm_init); nccl_all_reduce_sum replaces each f32
// buffer by its sum over the ranks (every rank gets the same bits), queued on the stream, or with
// `overlap` on a second stream after the work queued so far, so that it runs beside later work until
// nccl_wait (which orders it before everything queued after the wait; a plain sum waits first too).
constexpr int kNcclIdBytes = 128;
std::string nccl_load(const std::vector<std::string>& paths);
void nccl_unique_id(uint8_t* out);
int64_t nccl_comm_init(const uint8_t* id, int nranks, int rank);
void nccl_all_reduce_sum(int64_t comm, const std::vector<float*>& bufs, const std::vector<size_t>& counts, bool overlap);
void nccl_wait();
void nccl_comm_destroy(int64_t comm);
}  // namespace ssdc
