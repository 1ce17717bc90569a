// MoE routing on the device (Backend.expertGroups): the token permutation by expert as a stable,
// deterministic counting sort, plus the scatter plans of its outputs (summed by nn.cu's segment sums),
// so a MoE layer never waits for the host.
#include "common.cuh"

namespace ssdc {
namespace {

// Entries of `experts` per warp in the counting passes (one warp per block, E counters in shared memory):
// 8 steps of 32 in order, so the placement's serial steps stay short.
constexpr int kRouteChunk = 256;
// The routing scan keeps the chunk counts in shared memory up to this size (under the 48 KiB default
// limit with the static shared memory).
constexpr size_t kRouteScanSmem = 46 * 1024;

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
// row of chunk c's entries for expert e counted from the expert's first row (chunk-minor: the stable
// order; k_route_place adds offsets[e]); the expert plan gets the offsets as its bounds and, after
// them, whether some expert has more than kPlanChunk rows (the chunked two-level sum of scatter_plan).
// SMEM: the counts are first copied (coalesced) into shared memory, rows padded to E + 1 entries so
// that a warp's column reads hit distinct banks, scanned there and copied back; else scanned in place.
// Warp w scans the chunks of experts w, w + warps, ... (lanes over chunks); then the loads are scanned
// over the experts: thread t owns experts [t·per, (t+1)·per).
template <bool SMEM>
__global__ void k_route_scan(int32_t* __restrict__ counts, int64_t chunks, int E, int32_t* __restrict__ offsets,
                             int32_t* __restrict__ eplan) {
  extern __shared__ int32_t cs[];
  __shared__ int total, longest;
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  const int64_t ld = SMEM ? E + 1 : E, n = chunks * E;
  int32_t* t = SMEM ? cs : counts;
  if (threadIdx.x == 0) longest = 0;
  if (SMEM) {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) cs[(i / E) * ld + i % E] = counts[i];
    __syncthreads();
  }
  for (int e = threadIdx.x >> 5; e < E; e += warps) {
    int load = 0;  // the expert's rows in the chunks before this round of 32
    for (int64_t c0 = 0; c0 < chunks; c0 += 32) {
      const int64_t c = c0 + lane;
      const int v = c < chunks ? t[c * ld + e] : 0;
      int incl = v;
      for (int o = 1; o < 32; o <<= 1) {
        const int u = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += u;
      }
      if (c < chunks) t[c * ld + e] = load + incl - v;
      load += __shfl_sync(0xffffffffu, incl, 31);
    }
    if (lane == 0) eplan[e] = load;  // the load, until the offsets replace it below
  }
  if (SMEM) {
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) counts[i] = cs[(i / E) * ld + i % E];
  }
  __syncthreads();
  const int per = (E + blockDim.x - 1) / blockDim.x, e0 = min(E, (int)threadIdx.x * per), e1 = min(E, e0 + per);
  int mine = 0, most = 0;
  for (int e = e0; e < e1; ++e) {
    mine += eplan[e];
    most = max(most, eplan[e]);
  }
  int run = block_exclusive_scan(mine, &total);
  atomicMax(&longest, most);
  for (int e = e0; e < e1; ++e) {
    const int load = eplan[e];
    offsets[e] = run;
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
__global__ void k_route_place(const int32_t* __restrict__ ex, int64_t M, int k, int E, const int32_t* __restrict__ offsets,
                              const int32_t* __restrict__ bases,
                              int32_t* __restrict__ row_token, int32_t* __restrict__ row_slot,
                              int32_t* __restrict__ row_expert, int32_t* __restrict__ slot_row) {
  extern __shared__ int32_t next[];
  const int lane = threadIdx.x;
  const int64_t c = blockIdx.x, beg = c * kRouteChunk, end = min(M, beg + kRouteChunk);
  for (int e = lane; e < E; e += 32) next[e] = offsets[e] + bases[c * E + e];
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
// each token (N + 1) and the chunks' source ranges (N·C + 1). A thread per grouped row places it at its
// rank among its token's k rows (distinct); threads M .. M + N write the bounds.
__global__ void k_route_token_plan(const int32_t* __restrict__ slot_row, int64_t N, int k, int64_t C,
                                   int32_t* __restrict__ plan) {
  int32_t* sources = plan + N + 1;
  int32_t* token_chunks = sources + N * k;
  int32_t* chunk_bounds = token_chunks + N + 1;
  const int64_t M = N * k;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i <= M + N; i += (int64_t)gridDim.x * blockDim.x) {
    if (i < M) {
      const int64_t n = i / k;
      const int32_t* s = slot_row + n * k;
      const int32_t v = slot_row[i];
      int rank = 0;
      for (int j = 0; j < k; ++j) rank += s[j] < v ? 1 : 0;
      sources[n * k + rank] = v;
      continue;
    }
    const int64_t n = i - M;
    plan[n] = (int32_t)(n * k);
    if (C > 1) token_chunks[n] = (int32_t)(n * C);
    if (n == N) {
      if (C > 1) chunk_bounds[N * C] = (int32_t)(N * k);
      continue;
    }
    if (C > 1)
      for (int64_t c = 0; c < C; ++c) chunk_bounds[n * C + c] = (int32_t)(n * k + c * kPlanChunk);
  }
}

}  // namespace

void expert_groups(const int32_t* experts, int64_t N, int64_t k, int64_t E, int32_t* offsets, int32_t* row_token,
                   int32_t* row_slot, int32_t* row_expert, int32_t* token_plan, int32_t* expert_plan) {
  if (E > kMaxRouteExperts) throw CudaError("expertGroups: more than " + std::to_string(kMaxRouteExperts) + " experts");
  const int64_t M = N * k, chunks = (M + kRouteChunk - 1) / kRouteChunk;
  const size_t shared = (size_t)E * sizeof(int32_t);
  Scratch counts((size_t)std::max<int64_t>(chunks * E, 1) * sizeof(int32_t)), slot_row((size_t)std::max<int64_t>(M, 1) * 4);
  if (chunks > 0) k_route_count<<<(unsigned)chunks, 32, shared, stream()>>>(experts, M, (int)E, counts.as<int32_t>());
  const size_t scan_smem = (size_t)chunks * (E + 1) * sizeof(int32_t);
  if (scan_smem <= kRouteScanSmem) {
    k_route_scan<true><<<1, 1024, scan_smem, stream()>>>(counts.as<int32_t>(), chunks, (int)E, offsets, expert_plan);
  } else {
    k_route_scan<false><<<1, 1024, 0, stream()>>>(counts.as<int32_t>(), chunks, (int)E, offsets, expert_plan);
  }
  if (chunks > 0) {
    k_route_place<<<(unsigned)chunks, 32, shared, stream()>>>(experts, M, (int)k, (int)E, offsets, counts.as<int32_t>(), row_token,
                                                             row_slot, row_expert, slot_row.as<int32_t>());
  }
  const int64_t C = (k + kPlanChunk - 1) / kPlanChunk;
  k_route_token_plan<<<grid_for(M + N + 1, 256), 256, 0, stream()>>>(slot_row.as<int32_t>(), N, (int)k, C, token_plan);
  check_launch("expertGroups");
}

}  // namespace ssdc
