// Stream, caching device allocator and host <-> device copies.
#include <cstdio>
#include <mutex>
#include <unordered_map>

#include "common.cuh"
#include "runtime.h"

namespace ssdc {

namespace {
cudaStream_t g_stream = nullptr;

// Caching allocator: freed blocks are kept in per-size free lists and handed out again. With one
// stream, reuse is stream-ordered and needs no synchronisation.
struct Alloc {
  std::unordered_map<size_t, std::vector<void*>> free_lists;
  std::unordered_map<void*, size_t> sizes;  // live and cached blocks -> rounded size
  size_t live_bytes = 0, cached_bytes = 0, peak_bytes = 0;
  int64_t live_blocks = 0;
};
Alloc g_alloc;

size_t round_size(size_t b) {
  if (b <= 512) return 512;
  if (b <= (1u << 20)) return (b + 511) & ~size_t(511);
  // Above 1 MiB: steps of an eighth of the power of two.
  size_t p = 1;
  while (p * 2 <= b) p *= 2;
  size_t step = p / 8;
  return (b + step - 1) / step * step;
}

std::string mib(size_t b) {
  char s[64];
  snprintf(s, sizeof s, "%.1f MiB", b / 1048576.0);
  return s;
}
}  // namespace

cudaStream_t stream() { return g_stream; }

std::string runtime_init() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) throw CudaError(std::string("no CUDA device: ") + cudaGetErrorString(e));
  if (n == 0) throw CudaError("no CUDA device: cudaGetDeviceCount reports 0 devices");
  check(cudaSetDevice(0), "cudaSetDevice");
  if (!g_stream) check(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking), "cudaStreamCreate");
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties");
  char s[256];
  snprintf(s, sizeof s, "%s (sm_%d%d, %.1f GiB, %d SMs)", p.name, p.major, p.minor, p.totalGlobalMem / 1073741824.0,
           p.multiProcessorCount);
  return s;
}

std::string device_probe(int* count) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    *count = 0;
    return cudaGetErrorString(e);
  }
  *count = n;
  return n ? "" : "no CUDA device found";
}

void* dev_alloc(size_t bytes) {
  size_t r = round_size(bytes);
  auto& fl = g_alloc.free_lists[r];
  void* p = nullptr;
  if (!fl.empty()) {
    p = fl.back();
    fl.pop_back();
    g_alloc.cached_bytes -= r;
  } else {
    cudaError_t e = cudaMalloc(&p, r);
    if (e != cudaSuccess) {
      cudaGetLastError();
      empty_cache();
      e = cudaMalloc(&p, r);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t fr = 0, tot = 0;
      cudaMemGetInfo(&fr, &tot);
      throw CudaError("cuda: out of device memory allocating " + mib(bytes) + " (in use by live buffers: " +
                      mib(g_alloc.live_bytes) + " in " + std::to_string(g_alloc.live_blocks) +
                      " blocks; device free " + mib(fr) + " of " + mib(tot) + ")");
    }
    g_alloc.sizes[p] = r;
  }
  g_alloc.live_bytes += r;
  g_alloc.live_blocks++;
  if (g_alloc.live_bytes > g_alloc.peak_bytes) g_alloc.peak_bytes = g_alloc.live_bytes;
  return p;
}

void dev_free(void* p) {
  if (!p) return;
  auto it = g_alloc.sizes.find(p);
  if (it == g_alloc.sizes.end()) throw CudaError("cuda: free of an unknown device pointer");
  size_t r = it->second;
  g_alloc.live_bytes -= r;
  g_alloc.live_blocks--;
  g_alloc.free_lists[r].push_back(p);
  g_alloc.cached_bytes += r;
}

void empty_cache() {
  if (g_stream) cudaStreamSynchronize(g_stream);
  for (auto& [r, fl] : g_alloc.free_lists) {
    for (void* p : fl) {
      cudaFree(p);
      g_alloc.sizes.erase(p);
    }
    fl.clear();
  }
  g_alloc.cached_bytes = 0;
}

AllocStats alloc_stats() {
  return {g_alloc.live_bytes, g_alloc.cached_bytes, g_alloc.peak_bytes, g_alloc.live_blocks};
}

void h2d(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g_stream), "upload");
  check(cudaStreamSynchronize(g_stream), "upload (synchronize)");
}
void d2h(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g_stream), "download");
  check(cudaStreamSynchronize(g_stream), "download (synchronize)");
}
void synchronize() { check(cudaStreamSynchronize(g_stream), "synchronize"); }

}  // namespace ssdc
