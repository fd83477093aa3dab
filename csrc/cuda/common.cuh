// Device helpers shared by the kexue CUDA kernels (torch-free).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kexue/common.h"

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

constexpr int kThreads = 256;
static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block_sum assumes whole warps");

// Sum over the block (launched with blockDim.x = kThreads); the result is valid in thread 0.
// Fixed order: deterministic.
template <typename A> __device__ __forceinline__ A block_sum(A v) {
  __shared__ A warp_sums[kThreads / 32];
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
