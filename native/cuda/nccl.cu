// NCCL (loaded with dlopen at run time, like cuBLAS: no NCCL headers or link-time dependency) for
// data-parallel training: one process per GPU, gradients summed by an all-reduce on the backend's
// stream, or on a second stream beside later work (overlap). The declarations below are NCCL's stable C ABI (nccl.h, 2.x): ncclUniqueId is 128 bytes,
// ncclFloat32 = 7, ncclSum = 0.
#include <dlfcn.h>

#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "common.cuh"
#include "runtime.h"

namespace ssdc {

namespace {
typedef int ncclResult_t;
typedef struct ncclComm* ncclComm_t;
struct ncclUniqueId {
  char internal[kNcclIdBytes];
};
constexpr int kNcclFloat32 = 7;
constexpr int kNcclSum = 0;

struct Nccl {
  void* lib = nullptr;
  std::string desc;
  ncclResult_t (*get_version)(int*) = nullptr;
  ncclResult_t (*get_unique_id)(ncclUniqueId*) = nullptr;
  ncclResult_t (*comm_init_rank)(ncclComm_t*, int, ncclUniqueId, int) = nullptr;
  ncclResult_t (*comm_destroy)(ncclComm_t) = nullptr;
  ncclResult_t (*comm_get_async_error)(ncclComm_t, ncclResult_t*) = nullptr;
  ncclResult_t (*all_reduce)(const void*, void*, size_t, int, int, ncclComm_t, cudaStream_t) = nullptr;
  ncclResult_t (*group_start)() = nullptr;
  ncclResult_t (*group_end)() = nullptr;
  const char* (*error_string)(ncclResult_t) = nullptr;
  const char* (*last_error)(ncclComm_t) = nullptr;  // NCCL ≥ 2.13; may be missing
};
Nccl g_nccl;
std::unordered_map<int64_t, ncclComm_t> g_comms;
int64_t g_next_comm = 1;

// Overlapped sums run on their own stream, after an event of the compute stream (the gradients they
// read are written there); nccl_wait makes the compute stream wait for all of them.
struct Overlap {
  cudaStream_t stream = nullptr;
  cudaEvent_t ready = nullptr, done = nullptr;
  bool pending = false;
};
Overlap g_overlap;

cudaStream_t overlap_stream() {
  if (!g_overlap.stream) {
    check(cudaStreamCreateWithFlags(&g_overlap.stream, cudaStreamNonBlocking), "all-reduce stream");
    check(cudaEventCreateWithFlags(&g_overlap.ready, cudaEventDisableTiming), "all-reduce event");
    check(cudaEventCreateWithFlags(&g_overlap.done, cudaEventDisableTiming), "all-reduce event");
  }
  return g_overlap.stream;
}

void nc_check(ncclResult_t r, const char* what, ncclComm_t comm = nullptr) {
  if (r == 0) return;
  std::string msg = std::string("NCCL ") + what + " failed: " + (g_nccl.error_string ? g_nccl.error_string(r) : "error") +
                    " (" + std::to_string(r) + ")";
  if (g_nccl.last_error) {
    const char* last = g_nccl.last_error(comm);
    if (last && *last) msg += ": " + std::string(last);
  }
  throw CudaError(msg);
}

ncclComm_t comm_of(int64_t id) {
  auto it = g_comms.find(id);
  if (it == g_comms.end()) throw CudaError("NCCL: communicator " + std::to_string(id) + " is not open");
  return it->second;
}
}  // namespace

std::string nccl_load(const std::vector<std::string>& paths) {
  if (g_nccl.lib) return g_nccl.desc;
  std::string tried;
  void* lib = nullptr;
  std::string found;
  for (const auto& p : paths) {
    lib = dlopen(p.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (lib) {
      found = p;
      break;
    }
    const char* e = dlerror();
    tried += "\n  " + p + ": " + (e ? e : "not loadable");
  }
  if (!lib) {
    throw CudaError("NCCL (libnccl.so.2) could not be loaded for data-parallel training; tried:" + tried +
                    "\ninstall it (apt-get install libnccl2, or pip install nvidia-nccl-cu13), or point SSD_NCCL at "
                    "libnccl.so.2, or set SSD_COLLECTIVE=host to sum through host files (slower)");
  }
  auto sym = [&](const char* name, bool required = true) {
    void* f = dlsym(lib, name);
    if (!f && required) throw CudaError(std::string("NCCL: symbol ") + name + " missing in " + found);
    return f;
  };
  Nccl n;
  n.lib = lib;
  n.get_version = (decltype(n.get_version))sym("ncclGetVersion");
  n.get_unique_id = (decltype(n.get_unique_id))sym("ncclGetUniqueId");
  n.comm_init_rank = (decltype(n.comm_init_rank))sym("ncclCommInitRank");
  n.comm_destroy = (decltype(n.comm_destroy))sym("ncclCommDestroy");
  n.comm_get_async_error = (decltype(n.comm_get_async_error))sym("ncclCommGetAsyncError");
  n.all_reduce = (decltype(n.all_reduce))sym("ncclAllReduce");
  n.group_start = (decltype(n.group_start))sym("ncclGroupStart");
  n.group_end = (decltype(n.group_end))sym("ncclGroupEnd");
  n.error_string = (decltype(n.error_string))sym("ncclGetErrorString");
  n.last_error = (decltype(n.last_error))sym("ncclGetLastError", false);
  int v = 0;
  nc_check(n.get_version(&v), "ncclGetVersion");
  // ncclGetVersion: major * 10000 + minor * 100 + patch since 2.9, major * 1000 + minor * 100 + patch before.
  const int major = v >= 10000 ? v / 10000 : v / 1000, minor = v >= 10000 ? v / 100 % 100 : v / 100 % 10;
  n.desc = found + " (NCCL " + std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(v % 100) + ")";
  g_nccl = n;
  return g_nccl.desc;
}

void nccl_unique_id(uint8_t* out) {
  if (!g_nccl.lib) throw CudaError("NCCL is not loaded (nccl_load first)");
  ncclUniqueId id;
  nc_check(g_nccl.get_unique_id(&id), "ncclGetUniqueId");
  std::memcpy(out, id.internal, kNcclIdBytes);
}

int64_t nccl_comm_init(const uint8_t* id_bytes, int nranks, int rank) {
  if (!g_nccl.lib) throw CudaError("NCCL is not loaded (nccl_load first)");
  ncclUniqueId id;
  std::memcpy(id.internal, id_bytes, kNcclIdBytes);
  ncclComm_t comm = nullptr;
  nc_check(g_nccl.comm_init_rank(&comm, nranks, id, rank), "ncclCommInitRank");
  const int64_t h = g_next_comm++;
  g_comms[h] = comm;
  return h;
}

void nccl_all_reduce_sum(int64_t comm_id, const std::vector<float*>& bufs, const std::vector<size_t>& counts, bool overlap) {
  require_not_capturing("an all-reduce");
  ncclComm_t comm = comm_of(comm_id);
  cudaStream_t s = stream();
  if (overlap) {
    s = overlap_stream();
    check(cudaEventRecord(g_overlap.ready, stream()), "all-reduce (event)");
    check(cudaStreamWaitEvent(s, g_overlap.ready, 0), "all-reduce (wait)");
    g_overlap.pending = true;
  } else {
    nccl_wait();
  }
  nc_check(g_nccl.group_start(), "ncclGroupStart", comm);
  for (size_t i = 0; i < bufs.size(); ++i) {
    if (!counts[i]) continue;
    ncclResult_t r = g_nccl.all_reduce(bufs[i], bufs[i], counts[i], kNcclFloat32, kNcclSum, comm, s);
    if (r != 0) {
      g_nccl.group_end();
      nc_check(r, "ncclAllReduce", comm);
    }
  }
  nc_check(g_nccl.group_end(), "ncclAllReduce (group)", comm);
  ncclResult_t async = 0;
  nc_check(g_nccl.comm_get_async_error(comm, &async), "ncclCommGetAsyncError", comm);
  nc_check(async, "ncclAllReduce (asynchronous error)", comm);
}

void nccl_wait() {
  if (!g_overlap.pending) return;
  check(cudaEventRecord(g_overlap.done, g_overlap.stream), "all-reduce (event)");
  check(cudaStreamWaitEvent(stream(), g_overlap.done, 0), "all-reduce (wait)");
  g_overlap.pending = false;
}

void nccl_comm_destroy(int64_t comm_id) {
  ncclComm_t comm = comm_of(comm_id);
  g_comms.erase(comm_id);
  nccl_wait();
  synchronize();
  nc_check(g_nccl.comm_destroy(comm), "ncclCommDestroy");
}

}  // namespace ssdc
