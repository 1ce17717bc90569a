// Stream, caching device allocator, host <-> device copies (asynchronous uploads through pinned
// staging slots) and the host-built scatter plans of index buffers.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include "common.cuh"
#include "runtime.h"

namespace ssdc {

namespace {
cudaStream_t g_stream = nullptr;
int g_cc = 0;  // compute capability of device 0 (major · 10 + minor), set by runtime_init

// Caching allocator: freed blocks are kept in per-size free lists and handed out again. With one
// stream, reuse is stream-ordered and needs no synchronisation.
struct Alloc {
  std::unordered_map<size_t, std::vector<void*>> free_lists;
  std::unordered_map<void*, size_t> sizes;  // live and cached blocks -> rounded size
  size_t live_bytes = 0, cached_bytes = 0, peak_bytes = 0;
  int64_t live_blocks = 0;
};
Alloc g_alloc;

// CUDA graph capture of the stream (graph_begin .. graph_end). While capturing, kernels are recorded,
// not run, so a block freed during the capture may still be written by the graph whenever it is
// launched: such blocks are held (`held`) and belong to the graph, which returns them to the free lists
// when it is destroyed. Allocations still live at the end (the captured step's outputs) stay with
// their owners, who must keep them until the graph is destroyed.
struct Graph {
  cudaGraphExec_t exec;
  std::vector<void*> held;
};
struct Capture {
  bool on = false;
  std::vector<void*> held;
  std::unordered_map<int64_t, Graph> graphs;
  int64_t next_id = 1;
};
Capture g_capture;

void not_capturing(const char* what) {
  if (g_capture.on) {
    throw CudaError(std::string(what) + " cannot run while a CUDA graph is being captured (a captured step must not "
                    "copy between host and device or synchronise)");
  }
}

// Pinned staging for asynchronous uploads: kSlots slots of kSlotBytes, taken round robin (allocated on
// first use); a slot is written again only once the copy that last read it has completed (its event),
// which in practice has long happened: the slots cycle over many uploads.
constexpr size_t kSlotBytes = 4u << 20;
constexpr int kSlots = 16;
struct Staging {
  void* host[kSlots] = {};
  cudaEvent_t done[kSlots] = {};
  int next = 0;
};
Staging g_staging;

// The next slot's host memory, free to be written; its number goes to `slot`.
void* staging_take(int* slot) {
  not_capturing("upload");
  const int s = g_staging.next;
  g_staging.next = (s + 1) % kSlots;
  if (!g_staging.host[s]) {
    check(cudaHostAlloc(&g_staging.host[s], kSlotBytes, cudaHostAllocDefault), "upload (pinned staging memory)");
    check(cudaEventCreateWithFlags(&g_staging.done[s], cudaEventDisableTiming), "upload (event)");
  } else {
    check(cudaEventSynchronize(g_staging.done[s]), "upload (staging slot)");
  }
  *slot = s;
  return g_staging.host[s];
}
// Queues the copy of a slot's first `bytes` to dst and marks the slot busy until it has run.
void staging_send(int slot, void* dst, size_t bytes) {
  check(cudaMemcpyAsync(dst, g_staging.host[slot], bytes, cudaMemcpyHostToDevice, g_stream), "upload");
  check(cudaEventRecord(g_staging.done[slot], g_stream), "upload (event)");
}

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

int device_cc() { return g_cc; }

void require_not_capturing(const char* what) { not_capturing(what); }

std::string runtime_init(int device) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) throw CudaError(std::string("no CUDA device: ") + cudaGetErrorString(e));
  if (n == 0) throw CudaError("no CUDA device: cudaGetDeviceCount reports 0 devices");
  if (device < 0 || device >= n) {
    throw CudaError("CUDA device " + std::to_string(device) + " does not exist: this machine has " + std::to_string(n) +
                    " (SSD_CUDA_DEVICE, or a data-parallel rank, must be below that)");
  }
  if (g_stream) {
    int cur = -1;
    check(cudaGetDevice(&cur), "cudaGetDevice");
    if (cur != device) throw CudaError("the CUDA backend already runs on device " + std::to_string(cur) + " in this process");
  }
  check(cudaSetDevice(device), "cudaSetDevice");
  if (!g_stream) check(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking), "cudaStreamCreate");
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
  g_cc = p.major * 10 + p.minor;
  char s[256];
  snprintf(s, sizeof s, "%s (device %d, sm_%d%d, %.1f GiB, %d SMs)", p.name, device, p.major, p.minor, p.totalGlobalMem / 1073741824.0,
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
  if (g_capture.on) {
    g_capture.held.push_back(p);  // still live: the graph may write it at every launch
    return;
  }
  size_t r = it->second;
  g_alloc.live_bytes -= r;
  g_alloc.live_blocks--;
  g_alloc.free_lists[r].push_back(p);
  g_alloc.cached_bytes += r;
}

void empty_cache() {
  if (g_capture.on) return;  // nothing can be synchronised (and freed) during a capture
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
  not_capturing("upload");
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g_stream), "upload");
  check(cudaStreamSynchronize(g_stream), "upload (synchronize)");
}
void d2h(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  not_capturing("download");
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g_stream), "download");
  check(cudaStreamSynchronize(g_stream), "download (synchronize)");
}
void h2d_async(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  if (bytes > kSlotBytes) {
    h2d(dst, src, bytes);
    return;
  }
  int slot;
  std::memcpy(staging_take(&slot), src, bytes);
  staging_send(slot, dst, bytes);
}

namespace {
// Whether targets idx[0 .. m) in [0, n) are pairwise distinct, in O(m): a stamp per target, written
// with the current generation; the stamps are cleared only when the generation counter wraps.
bool distinct_targets(const int32_t* idx, int64_t m, int64_t n) {
  static std::vector<uint32_t> stamp;
  static uint32_t generation = 0;
  if (m > n) return false;
  if ((int64_t)stamp.size() < n) stamp.resize((size_t)n, 0);
  if (++generation == 0) {
    std::fill(stamp.begin(), stamp.end(), 0u);
    generation = 1;
  }
  for (int64_t i = 0; i < m; ++i) {
    if (stamp[idx[i]] == generation) return false;
    stamp[idx[i]] = generation;
  }
  return true;
}
// Offsets (n + 1) of non-decreasing targets idx[0 .. m) in [0, n): target t's sources are the
// positions off[t] .. off[t + 1].
void run_offsets(const int32_t* idx, int64_t m, int64_t n, int32_t* off) {
  int64_t i = 0;
  for (int64_t t = 0; t <= n; ++t) {
    while (i < m && idx[i] < t) ++i;
    off[t] = (int32_t)i;
  }
}
// Offsets (n + 1) of targets idx[0 .. m) in [0, n) and, into src (m), the sources of each target in
// ascending order: a stable counting sort.
void counting_sort(const int32_t* idx, int64_t m, int64_t n, int32_t* off, int32_t* src) {
  for (int64_t i = 0; i < m; ++i) off[idx[i] + 1]++;
  for (int64_t t = 0; t < n; ++t) off[t + 1] += off[t];
  std::vector<int32_t> pos(off, off + n);
  for (int64_t i = 0; i < m; ++i) src[pos[idx[i]]++] = (int32_t)i;
}
// Appends the chunk tables to a plan whose first n + 1 entries are the offsets, when some target has
// more than kPlanChunk sources (see scatter_plan); returns the number of chunks (0: nothing appended).
int64_t append_chunks(std::vector<int32_t>& h, int64_t n) {
  int64_t longest = 0;
  for (int64_t t = 0; t < n; ++t) longest = std::max<int64_t>(longest, h[t + 1] - h[t]);
  if (longest <= kPlanChunk) return 0;
  const size_t first = h.size();
  h.resize(first + n + 1);
  int64_t chunks = 0;
  for (int64_t t = 0; t < n; ++t) {
    h[first + t] = (int32_t)chunks;
    chunks += (h[t + 1] - h[t] + kPlanChunk - 1) / kPlanChunk;
  }
  h[first + n] = (int32_t)chunks;
  h.reserve(h.size() + chunks + 1);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t b = h[t]; b < h[t + 1]; b += kPlanChunk) h.push_back((int32_t)b);
  }
  h.push_back(h[n]);
  return chunks;
}
}  // namespace

ScatterPlan scatter_plan(const int32_t* idx, int64_t m, int64_t n) {
  bool sorted = true, strict = true;
  for (int64_t i = 1; i < m && sorted; ++i) {
    sorted = idx[i] >= idx[i - 1];
    strict = strict && idx[i] > idx[i - 1];
  }
  if (sorted ? strict : distinct_targets(idx, m, n)) return {PlanKind::kUnique, nullptr, 0};
  std::vector<int32_t> h((size_t)(n + 1 + (sorted ? 0 : m)));
  if (sorted) run_offsets(idx, m, n, h.data());
  else counting_sort(idx, m, n, h.data(), h.data() + n + 1);
  const int64_t chunks = append_chunks(h, n);
  const size_t bytes = h.size() * sizeof(int32_t);
  int32_t* plan = static_cast<int32_t*>(dev_alloc(bytes));
  h2d_async(plan, h.data(), bytes);
  return {sorted ? PlanKind::kSorted : PlanKind::kListed, plan, chunks};
}

void synchronize() {
  not_capturing("synchronize");
  check(cudaStreamSynchronize(g_stream), "synchronize");
}

namespace {
void release(std::vector<void*>& held) {
  for (void* p : held) dev_free(p);
  held.clear();
}
}  // namespace

void graph_begin() {
  if (g_capture.on) throw CudaError("graph capture: a capture is already running");
  // Relaxed: allocations (cudaMalloc) stay allowed; stream work that cannot be captured still fails.
  check(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeRelaxed), "graph capture (begin)");
  g_capture.on = true;
}

int64_t graph_end(bool keep) {
  if (!g_capture.on) throw CudaError("graph capture: no capture is running");
  cudaGraph_t g = nullptr;
  cudaError_t e = cudaStreamEndCapture(g_stream, &g);
  g_capture.on = false;
  std::vector<void*> held = std::move(g_capture.held);
  g_capture.held.clear();
  cudaGraphExec_t exec = nullptr;
  if (e == cudaSuccess && keep) e = cudaGraphInstantiate(&exec, g, 0);
  if (g) cudaGraphDestroy(g);
  if (e != cudaSuccess || !keep) {
    cudaGetLastError();
    release(held);  // nothing captured ever ran on them
    if (!keep) return 0;
    throw CudaError(std::string("graph capture: ") + cudaGetErrorString(e));
  }
  const int64_t id = g_capture.next_id++;
  g_capture.graphs[id] = Graph{exec, std::move(held)};
  return id;
}

void graph_launch(int64_t id) {
  not_capturing("graph launch");
  auto it = g_capture.graphs.find(id);
  if (it == g_capture.graphs.end()) throw CudaError("graph launch: unknown or destroyed graph");
  check(cudaGraphLaunch(it->second.exec, g_stream), "graph launch");
}

void graph_destroy(int64_t id) {
  not_capturing("graph destroy");
  auto it = g_capture.graphs.find(id);
  if (it == g_capture.graphs.end()) return;
  // Queued launches may still use the graph's blocks: wait for them before the blocks are reused.
  check(cudaStreamSynchronize(g_stream), "graph destroy (synchronize)");
  cudaGraphExecDestroy(it->second.exec);
  release(it->second.held);
  g_capture.graphs.erase(it);
}

}  // namespace ssdc
