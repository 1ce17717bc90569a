// Hopper (sm_90a) warpgroup tensor-core products: PTX wrappers for wgmma.mma_async m64nNk16 (bf16 in,
// fp32 accumulate, both operands in shared memory) and its fences (PTX ISA 8.x, "Asynchronous
// Warpgroup Level Matrix Multiply-Accumulate"). The instructions exist only in the sm_90a target: the
// wrappers (all but wg_desc) are defined only there, with SSDC_WGMMA, and a kernel using them must
// check at run time that its sm_90a code is the one loaded (grouped.cu: wgmma_loaded).
//
// Shared-memory operands use the 128-byte swizzle: an operand tile is made of atoms of 8 rows x 128
// bytes (64 bf16), 1024-byte aligned, in which 16-byte chunk c of row r is stored at chunk c ^ (r % 8).
// A K-major operand (rows along M or N, 64 elements of K per row) advances K by 16 through its start
// address (+32 bytes); its 8-row groups are 1024 bytes apart (SBO). An MN-major operand (rows along K,
// M or N contiguous) keeps 64-column atoms of 64 K rows (8192 bytes) apart (LBO) and its 8-row groups
// 1024 bytes apart (SBO); K advances by 16 rows (+2048 bytes).
#pragma once
#include <cuda_bf16.h>

#include "mma.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SSDC_WGMMA 1
#endif

namespace ssdc {

// The 64-bit shared-memory matrix descriptor (PTX ISA "Matrix Descriptor Format"): start address,
// leading and stride byte offsets (each >> 4), 128-byte swizzle.
__device__ __forceinline__ uint64_t wg_desc(const void* smem, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((smem_addr(smem) & 0x3FFFF) >> 4) | ((uint64_t)(lbo >> 4) << 16) | ((uint64_t)(sbo >> 4) << 32) |
         (1ull << 62);
}

#ifdef SSDC_WGMMA
// Orders this thread's generic-proxy shared-memory writes (st.shared, cp.async) before later reads by
// the async proxy (wgmma).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins accumulator registers at this point (before wg_fence, after wg_wait), so that the compiler
// moves no access to them across the asynchronous products.
template <int J> __device__ __forceinline__ void wg_fence_acc(float (&d)[J][4]) {
#pragma unroll
  for (int j = 0; j < J; ++j)
#pragma unroll
    for (int q = 0; q < 4; ++q) asm volatile("" : "+f"(d[j][q])::"memory");
}

// d (64 x N per warpgroup, fp32; thread layout as N/8 mma.m16n8 accumulators of its warp's 16 rows)
// += A (64 x 16) · B (16 x N), both from shared memory through descriptors; TA / TB: A M-major / B
// N-major (else K-major).
template <int N, bool TA, bool TB> __device__ __forceinline__ void wgmma(float (&d)[N / 8][4], uint64_t a, uint64_t b);

#define SSDC_ACC2(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3]), \
    "+f"(d[j + 1][0]), "+f"(d[j + 1][1]), "+f"(d[j + 1][2]), "+f"(d[j + 1][3])
#define SSDC_ACC8(j) SSDC_ACC2(j), SSDC_ACC2(j + 2), SSDC_ACC2(j + 4), SSDC_ACC2(j + 6)
#define SSDC_REG8(a, b, c, d, e, f, g, h) "%" #a ", %" #b ", %" #c ", %" #d ", %" #e ", %" #f ", %" #g ", %" #h

template <int N, bool TA, bool TB> __device__ __forceinline__ void wgmma(float (&d)[N / 8][4], uint64_t a, uint64_t b) {
  static_assert(N == 96 || N == 128, "wgmma: N is 96 or 128");
  if constexpr (N == 96) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %50, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n96k16.f32.bf16.bf16 {"
        SSDC_REG8(0, 1, 2, 3, 4, 5, 6, 7) ", " SSDC_REG8(8, 9, 10, 11, 12, 13, 14, 15) ", "
        SSDC_REG8(16, 17, 18, 19, 20, 21, 22, 23) ", " SSDC_REG8(24, 25, 26, 27, 28, 29, 30, 31) ", "
        SSDC_REG8(32, 33, 34, 35, 36, 37, 38, 39) ", " SSDC_REG8(40, 41, 42, 43, 44, 45, 46, 47)
        "}, %48, %49, p, 1, 1, %51, %52;\n}\n"
        : SSDC_ACC8(0), SSDC_ACC2(8), SSDC_ACC2(10)
        : "l"(a), "l"(b), "r"(1), "n"((int)TA), "n"((int)TB));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
        SSDC_REG8(0, 1, 2, 3, 4, 5, 6, 7) ", " SSDC_REG8(8, 9, 10, 11, 12, 13, 14, 15) ", "
        SSDC_REG8(16, 17, 18, 19, 20, 21, 22, 23) ", " SSDC_REG8(24, 25, 26, 27, 28, 29, 30, 31) ", "
        SSDC_REG8(32, 33, 34, 35, 36, 37, 38, 39) ", " SSDC_REG8(40, 41, 42, 43, 44, 45, 46, 47) ", "
        SSDC_REG8(48, 49, 50, 51, 52, 53, 54, 55) ", " SSDC_REG8(56, 57, 58, 59, 60, 61, 62, 63)
        "}, %64, %65, p, 1, 1, %67, %68;\n}\n"
        : SSDC_ACC8(0), SSDC_ACC8(8)
        : "l"(a), "l"(b), "r"(1), "n"((int)TA), "n"((int)TB));
  }
}
#undef SSDC_ACC2
#undef SSDC_ACC8
#undef SSDC_REG8
#endif

}  // namespace ssdc
