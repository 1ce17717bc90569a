// MoE routing on the device (Backend.expertGroups): the token permutation by expert as a stable,
// deterministic counting sort, plus the scatter plans of its outputs, so a MoE layer never waits for
// the host. Also the scatter-add by non-decreasing targets whose bounds live on the device (the
// expert-bias gradient over the expert-sorted rows), in the same two-level order as scatter_plan's.
#include <type_traits>

#include "common.cuh"

namespace ssdc {
namespace {

// Entries of `experts` per warp in the counting passes (one warp per block, E counters in shared memory).
constexpr int kRouteChunk = 1024;

// counts[c · E + e] = entries of chunk c that chose expert e (shared-memory counters: exact, so the
// result is deterministic whatever the order of the atomics).
__global__ void k_route_count(const int32_t* __restrict__ ex, int64_t M, int E, int32_t* __restrict__ counts) {
  extern __shared__ int32_t cnt[];
  for (int e = threadIdx.x; e < E; e += 32) cnt[e] = 0;
  __syncwarp();
  const int64_t c = blockIdx.x, beg = c * kRouteChunk, end = min(M, beg + kRouteChunk);
  for (int64_t i = beg + threadIdx.x; i < end; i += 32) atomicAdd(&cnt[ex[i]], 1);
  __syncwarp();
  for (int e = threadIdx.x; e < E; e += 32) counts[c * E + e] = cnt[e];
}

// Exclusive scan of one value per thread over the block (blockDim.x a multiple of 32, at most 1024).
__device__ int block_exclusive_scan(int v, int* total) {
  __shared__ int warp_sum[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  int incl = v;
  for (int o = 1; o < 32; o <<= 1) {
    const int u = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += u;
  }
  if (lane == 31) warp_sum[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int w = lane < warps ? warp_sum[lane] : 0, wi = w;
    for (int o = 1; o < 32; o <<= 1) {
      const int u = __shfl_up_sync(0xffffffffu, wi, o);
      if (lane >= o) wi += u;
    }
    if (lane < warps) warp_sum[lane] = wi - w;
    if (lane == 31) *total = wi;
  }
  __syncthreads();
  return warp_sum[warp] + incl - v;
}

// One block: offsets (E + 1) = exclusive scan of the expert loads; counts[c · E + e] becomes the first
// grouped row of chunk c's entries for expert e (expert-major, chunk-minor: the stable order); the
// expert plan gets the offsets as its bounds and, after them, whether some expert has more than
// kPlanChunk rows (the chunked two-level sum of scatter_plan). Thread t owns experts [t·per, (t+1)·per).
__global__ void k_route_scan(int32_t* __restrict__ counts, int64_t chunks, int E, int32_t* __restrict__ offsets,
                             int32_t* __restrict__ eplan) {
  __shared__ int total, longest;
  if (threadIdx.x == 0) longest = 0;
  const int per = (E + blockDim.x - 1) / blockDim.x, e0 = min(E, (int)threadIdx.x * per), e1 = min(E, e0 + per);
  int mine = 0, most = 0;
  for (int e = e0; e < e1; ++e) {
    int load = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const int v = counts[c * E + e];
      counts[c * E + e] = load;
      load += v;
    }
    eplan[e] = load;  // the load, until the offsets replace it below
    mine += load;
    most = max(most, load);
  }
  int run = block_exclusive_scan(mine, &total);
  atomicMax(&longest, most);
  for (int e = e0; e < e1; ++e) {
    const int load = eplan[e];
    offsets[e] = run;
    for (int64_t c = 0; c < chunks; ++c) counts[c * E + e] += run;
    run += load;
  }
  __syncthreads();
  if (threadIdx.x == 0) offsets[E] = total;
  __syncthreads();
  for (int e = threadIdx.x; e <= E; e += blockDim.x) eplan[e] = offsets[e];
  if (threadIdx.x == 0) eplan[E + 1] = longest > kPlanChunk ? 1 : 0;
}

// One warp per chunk, 32 entries at a time in order: lanes with the same expert (a match) take
// consecutive rows in lane order after the rows already given to that expert: a stable placement.
__global__ void k_route_place(const int32_t* __restrict__ ex, int64_t M, int k, int E, const int32_t* __restrict__ bases,
                              int32_t* __restrict__ row_token, int32_t* __restrict__ row_slot,
                              int32_t* __restrict__ row_expert, int32_t* __restrict__ slot_row) {
  extern __shared__ int32_t next[];
  const int lane = threadIdx.x;
  const int64_t c = blockIdx.x, beg = c * kRouteChunk, end = min(M, beg + kRouteChunk);
  for (int e = lane; e < E; e += 32) next[e] = bases[c * E + e];
  __syncwarp();
  for (int64_t i0 = beg; i0 < end; i0 += 32) {
    const int64_t i = i0 + lane;
    const bool ok = i < end;
    const int e = ok ? ex[i] : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const int rank = __popc(peers & ((1u << lane) - 1));
    if (ok) {
      const int r = next[e] + rank;
      row_token[r] = (int32_t)(i / k);
      row_slot[r] = (int32_t)i;
      row_expert[r] = e;
      slot_row[i] = r;
    }
    __syncwarp();
    if (ok && rank == 0) next[e] += __popc(peers);
    __syncwarp();
  }
}

// The listed scatter plan of rowToken (see scatter_plan): bounds n·k (N + 1), then each token's k grouped
// rows in ascending order; with C = ceil(k / kPlanChunk) > 1 chunks per token also the first chunk of
// each token (N + 1) and the chunks' source ranges (N·C + 1).
__global__ void k_route_token_plan(const int32_t* __restrict__ slot_row, int64_t N, int k, int64_t C,
                                   int32_t* __restrict__ plan) {
  int32_t* sources = plan + N + 1;
  int32_t* token_chunks = sources + N * k;
  int32_t* chunk_bounds = token_chunks + N + 1;
  for (int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; n <= N; n += (int64_t)gridDim.x * blockDim.x) {
    plan[n] = (int32_t)(n * k);
    if (C > 1) token_chunks[n] = (int32_t)(n * C);
    if (n == N) {
      if (C > 1) chunk_bounds[N * C] = (int32_t)(N * k);
      continue;
    }
    int32_t* s = sources + n * k;
    for (int j = 0; j < k; ++j) {  // insertion sort: k is small
      const int32_t v = slot_row[n * k + j];
      int q = j;
      for (; q > 0 && s[q - 1] > v; --q) s[q] = s[q - 1];
      s[q] = v;
    }
    if (C > 1)
      for (int64_t c = 0; c < C; ++c) chunk_bounds[n * C + c] = (int32_t)(n * k + c * kPlanChunk);
  }
}

// Scatter-add by non-decreasing targets with device bounds: plan = bounds (n + 1), then the chunked
// flag. Chunk slot q of target t (its sources bounds[t] + 32c ..) is q = t + bounds[t] / 32 + c: distinct
// for all (t, c) and below n + m / 32 + 1. Pass 1 sums each chunk into partial[q] (flag set only).
template <int V>
__global__ void k_bounds_chunks(const float* __restrict__ src, const int32_t* __restrict__ plan, int64_t n,
                                int64_t slots, float* __restrict__ partial, int64_t d) {
  using Vec = typename std::conditional<V == 4, float4, float>::type;
  if (plan[n + 1] == 0) return;
  const int64_t vecs = d / V;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < slots * vecs; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t q = i / vecs, c = i - q * vecs;
    int lo = 0, hi = (int)n - 1;  // the last target t with t + bounds[t] / 32 <= q
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (mid + plan[mid] / kPlanChunk <= q) lo = mid;
      else hi = mid - 1;
    }
    const int64_t beg = plan[lo] + (q - lo - plan[lo] / kPlanChunk) * kPlanChunk;
    const int64_t end = beg + kPlanChunk < plan[lo + 1] ? beg + kPlanChunk : (int64_t)plan[lo + 1];
    if (beg >= end) continue;
    float acc[V];
    for (int u = 0; u < V; ++u) acc[u] = 0.f;
    for (int64_t p = beg; p < end; ++p) {
      const Vec v = reinterpret_cast<const Vec*>(src + p * d)[c];
      for (int u = 0; u < V; ++u) acc[u] += reinterpret_cast<const float*>(&v)[u];
    }
    Vec r;
    for (int u = 0; u < V; ++u) reinterpret_cast<float*>(&r)[u] = acc[u];
    reinterpret_cast<Vec*>(partial + q * d)[c] = r;
  }
}
// Pass 2: out[t] (+)= its chunk sums in order (flag set), or its sources in order (flag clear).
template <int V>
__global__ void k_bounds_sum(const float* __restrict__ src, const float* __restrict__ partial,
                             const int32_t* __restrict__ plan, int64_t n, float* __restrict__ out, int64_t d, bool init) {
  using Vec = typename std::conditional<V == 4, float4, float>::type;
  const bool chunked = plan[n + 1] != 0;
  const int64_t vecs = d / V;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n * vecs; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / vecs, c = i - t * vecs;
    const int32_t beg = plan[t], end = plan[t + 1];
    if (beg == end && !init) continue;
    Vec* o = reinterpret_cast<Vec*>(out + t * d) + c;
    float acc[V];
    if (init) {
      for (int u = 0; u < V; ++u) acc[u] = 0.f;
    } else {
      const Vec v = *o;
      for (int u = 0; u < V; ++u) acc[u] = reinterpret_cast<const float*>(&v)[u];
    }
    const float* base = chunked ? partial : src;
    const int64_t first = chunked ? t + beg / kPlanChunk : beg;
    const int64_t count = chunked ? (end - beg + kPlanChunk - 1) / kPlanChunk : end - beg;
    for (int64_t p = first; p < first + count; ++p) {
      const Vec v = reinterpret_cast<const Vec*>(base + p * d)[c];
      for (int u = 0; u < V; ++u) acc[u] += reinterpret_cast<const float*>(&v)[u];
    }
    Vec r;
    for (int u = 0; u < V; ++u) reinterpret_cast<float*>(&r)[u] = acc[u];
    *o = r;
  }
}

template <int V>
void bounds_sum_launch(const float* src, const int32_t* plan, int64_t n, int64_t m, float* out, int64_t d, bool init) {
  constexpr int kT = 256;
  const int64_t slots = n + m / kPlanChunk + 1;
  Scratch partial((size_t)slots * d * sizeof(float));
  k_bounds_chunks<V><<<grid_for(slots * d / V, kT), kT, 0, stream()>>>(src, plan, n, slots, partial.as<float>(), d);
  k_bounds_sum<V><<<grid_for(n * d / V, kT), kT, 0, stream()>>>(src, partial.as<float>(), plan, n, out, d, init);
}

}  // namespace

void expert_groups(const int32_t* experts, int64_t N, int64_t k, int64_t E, int32_t* offsets, int32_t* row_token,
                   int32_t* row_slot, int32_t* row_expert, int32_t* token_plan, int32_t* expert_plan) {
  if (E > kMaxRouteExperts) throw CudaError("expertGroups: more than " + std::to_string(kMaxRouteExperts) + " experts");
  const int64_t M = N * k, chunks = (M + kRouteChunk - 1) / kRouteChunk;
  const size_t shared = (size_t)E * sizeof(int32_t);
  Scratch counts((size_t)std::max<int64_t>(chunks * E, 1) * sizeof(int32_t)), slot_row((size_t)std::max<int64_t>(M, 1) * 4);
  if (chunks > 0) k_route_count<<<(unsigned)chunks, 32, shared, stream()>>>(experts, M, (int)E, counts.as<int32_t>());
  k_route_scan<<<1, 1024, 0, stream()>>>(counts.as<int32_t>(), chunks, (int)E, offsets, expert_plan);
  if (chunks > 0) {
    k_route_place<<<(unsigned)chunks, 32, shared, stream()>>>(experts, M, (int)k, (int)E, counts.as<int32_t>(), row_token,
                                                             row_slot, row_expert, slot_row.as<int32_t>());
  }
  const int64_t C = (k + kPlanChunk - 1) / kPlanChunk;
  k_route_token_plan<<<grid_for(N + 1, 256), 256, 0, stream()>>>(slot_row.as<int32_t>(), N, (int)k, C, token_plan);
  check_launch("expertGroups");
}

void segment_sum_bounds(const float* src, const int32_t* plan, int64_t n, int64_t m, float* out, int64_t d, bool init,
                        const char* op) {
  if (n == 0 || d == 0) return;
  if (d % 4 == 0 && ((uintptr_t)src & 15) == 0 && ((uintptr_t)out & 15) == 0) bounds_sum_launch<4>(src, plan, n, m, out, d, init);
  else bounds_sum_launch<1>(src, plan, n, m, out, d, init);
  check_launch(op);
}

}  // namespace ssdc
