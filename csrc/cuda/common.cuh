// Device helpers shared by the kexue CUDA kernels (torch-free).
//
// The same sources build with nvcc for the GPU and with the host compiler for the SIMT emulator
// (KX_SIMT, csrc/simt/): this header, the launch helper (cuda/launch.cuh) and the instruction
// wrappers (cuda/ptx.cuh) are the only places that tell the two apart.
#pragma once
#if defined(KX_SIMT)
#include "simt/device.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include "cuda/launch.cuh"
#include "kexue/common.h"

// The block's dynamic shared memory as `TYPE NAME[]`, aligned to ALIGN bytes; a static shared
// variable `TYPE NAME DIMS` (DIMS: array bounds such as [32], or empty), which the emulator gives
// each block fresh, poisoned and guarded.
#if defined(KX_SIMT)
#define KX_STATIC_SHARED(TYPE, NAME, DIMS)                                                          \
  static char kx_static_shared_tag_##NAME;                                                          \
  TYPE(&NAME) DIMS = *static_cast<TYPE(*) DIMS>(                                                    \
      ::kx::simt::static_shared(&kx_static_shared_tag_##NAME, sizeof(TYPE DIMS), alignof(TYPE)))
#define KX_DYNAMIC_SHARED(TYPE, NAME, ALIGN) \
  TYPE* const NAME = static_cast<TYPE*>(::kx::simt::dynamic_shared_memory())
// A vector load or store of BYTES at P: the hardware faults when P is not aligned to BYTES.
#define KX_ALIGNED_ACCESS(P, BYTES) ::kx::simt::check_aligned((P), (BYTES), "vector access")
#else
#define KX_STATIC_SHARED(TYPE, NAME, DIMS) __shared__ TYPE NAME DIMS
#define KX_DYNAMIC_SHARED(TYPE, NAME, ALIGN) extern __shared__ __align__(ALIGN) TYPE NAME[]
#define KX_ALIGNED_ACCESS(P, BYTES) ((void)0)
#endif

namespace kx {
namespace cuda {

template <DType D> struct TypeMap;
template <> struct TypeMap<DType::F32> { using type = float; };
template <> struct TypeMap<DType::F64> { using type = double; };
template <> struct TypeMap<DType::F16> { using type = __half; };
template <> struct TypeMap<DType::BF16> { using type = __nv_bfloat16; };

template <typename A, typename T> __device__ __forceinline__ A load(const T* p) {
  return static_cast<A>(*p);
}
template <typename T, typename A> __device__ __forceinline__ void store(T* p, A v) {
  *p = static_cast<T>(v);
}
// The half types convert through float (there is no direct double conversion on every arch).
template <> __device__ __forceinline__ float load<float, __half>(const __half* p) {
  return __half2float(*p);
}
template <> __device__ __forceinline__ float load<float, __nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}
template <> __device__ __forceinline__ void store<__half, float>(__half* p, float v) {
  *p = __float2half_rn(v);
}
template <> __device__ __forceinline__ void store<__nv_bfloat16, float>(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}

// grid.y and grid.z are at most 65535 on every GPU so far: kernels whose y index can exceed the
// limit launch that many blocks along y and stride over the rest. Asked of the device (cheap: the
// runtime caches it) rather than hard-coded, so the emulator can lower it in tests.
inline unsigned capped_grid_y(int64_t n) {
  int dev = 0, limit = 65535;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&limit, cudaDevAttrMaxGridDimY, dev) != cudaSuccess)
    limit = 65535;
  return static_cast<unsigned>(n < limit ? n : limit);
}

constexpr int kThreads = 256;

// Grid for kernels whose blocks stride over the batch, each block with its own workspace slice
// of block_bytes: at most kMaxBatchBlocks blocks, and no more than keep the whole workspace
// within kBatchScratchBudget unless that leaves fewer than kMinBatchBlocks.
constexpr int64_t kMaxBatchBlocks = 2048;
constexpr int64_t kMinBatchBlocks = 264;  // two per SM of an H200
constexpr int64_t kBatchScratchBudget = int64_t(256) << 20;

inline unsigned batch_grid(int64_t batch, int64_t block_bytes) {
  int64_t by_budget = kBatchScratchBudget / (block_bytes > 1 ? block_bytes : 1);
  by_budget = by_budget > kMinBatchBlocks ? by_budget : kMinBatchBlocks;
  int64_t n = batch < kMaxBatchBlocks ? batch : kMaxBatchBlocks;
  n = n < by_budget ? n : by_budget;
  return static_cast<unsigned>(n > 1 ? n : 1);
}
static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block_sum assumes whole warps");

// Sum over the block (launched with blockDim.x = kThreads); the result is valid in thread 0.
// Fixed order: deterministic.
template <typename A> __device__ __forceinline__ A block_sum(A v) {
  KX_STATIC_SHARED(A, warp_sums, [kThreads / 32]);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = A(0);
  if (warp == 0) {
    v = lane < (blockDim.x >> 5) ? warp_sums[lane] : A(0);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  }
  __syncthreads();  // warp_sums may be reused by the caller's next block_sum
  return v;
}

// Max and sum over the warp, the result in every lane.
template <typename A> __device__ __forceinline__ A warp_allmax(A v) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <typename A> __device__ __forceinline__ A warp_allsum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

inline int last_error() { return static_cast<int>(cudaGetLastError()); }

}  // namespace cuda
}  // namespace kx
