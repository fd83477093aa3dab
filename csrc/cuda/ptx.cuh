// Warp-level matrix instructions for the tensor-core kernels, one small wrapper each: inline PTX
// under nvcc, the SIMT emulator's warp-collective versions (csrc/simt/ptx.h) under the host
// compiler. The emulator follows the per-lane fragment layouts of the PTX ISA exactly, and the
// probe kernel in csrc/cuda/ptx_probe.cu lets a test hold both (and a GPU) to those layouts.
//
// - mma_m16n8k16<T>: D[16×8] (fp32) = A[16×16] · B[16×8] + C, A row-major and B column-major
//   16-bit (T = __half or __nv_bfloat16) fragments: A in 4 registers, B in 2, C and D in 4 floats.
// - ldmatrix<N> / ldmatrix_trans<N>: N = 1, 2 or 4 8×8 matrices of 16-bit elements from shared
//   memory; lanes 8m..8m+7 give the row addresses of matrix m (16-byte aligned rows).
// - cp_async<Bytes>: an asynchronous global -> shared copy of 4, 8 or 16 bytes (the last
//   Bytes - src_bytes zero-filled); cp_async_commit closes a group, cp_async_wait<N> waits until
//   at most N groups are still in flight.
// WMMA (nvcuda::wmma) comes from here too: the toolkit's <mma.h>, or the emulator's. The asm
// statements that touch memory say so ("memory"), so the compiler keeps shared-memory accesses
// on their side of them.
#pragma once
#include <cstdint>

#include "cuda/common.cuh"

#if defined(KX_SIMT)
#include "simt/ptx.h"
#include "simt/wmma.h"
#else
#include <mma.h>
#endif

namespace kx {
namespace cuda {
namespace ptx {

#if defined(KX_SIMT)

template <typename T>
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  simt::ptx::mma_m16n8k16<T>(d, a, b, c);
}
template <int N> inline void ldmatrix(uint32_t (&r)[N], const void* smem_row) {
  simt::ptx::ldmatrix<N, false>(r, smem_row);
}
template <int N> inline void ldmatrix_trans(uint32_t (&r)[N], const void* smem_row) {
  simt::ptx::ldmatrix<N, true>(r, smem_row);
}
template <int Bytes> inline void cp_async(void* smem, const void* gmem, int src_bytes = Bytes) {
  simt::cp_async(smem, gmem, Bytes, src_bytes);
}
inline void cp_async_commit() { simt::cp_async_commit(); }
template <int N> inline void cp_async_wait() { simt::cp_async_wait(N); }

#else

__device__ __forceinline__ unsigned smem_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                             const float (&c)[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  } else {
    static_assert(std::is_same<T, __half>::value, "mma_m16n8k16: T is __half or __nv_bfloat16");
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  }
#else
  __trap();  // sm_80+ only; callers check the compute capability
#endif
}

template <int N, bool Trans> __device__ __forceinline__ void ldmatrix_any(uint32_t (&r)[N], const void* smem_row) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned p = smem_address(smem_row);
  uint32_t x[4];
#define KX_LDMATRIX(SHAPE, REGS, ADDR, ...) \
  asm volatile("ldmatrix.sync.aligned.m8n8." SHAPE ".shared.b16 " REGS ", [" ADDR "];\n" : __VA_ARGS__ : "r"(p) : "memory")
  if constexpr (N == 1 && Trans)
    KX_LDMATRIX("x1.trans", "{%0}", "%1", "=r"(x[0]));
  else if constexpr (N == 1)
    KX_LDMATRIX("x1", "{%0}", "%1", "=r"(x[0]));
  else if constexpr (N == 2 && Trans)
    KX_LDMATRIX("x2.trans", "{%0,%1}", "%2", "=r"(x[0]), "=r"(x[1]));
  else if constexpr (N == 2)
    KX_LDMATRIX("x2", "{%0,%1}", "%2", "=r"(x[0]), "=r"(x[1]));
  else if constexpr (Trans)
    KX_LDMATRIX("x4.trans", "{%0,%1,%2,%3}", "%4", "=r"(x[0]), "=r"(x[1]), "=r"(x[2]), "=r"(x[3]));
  else
    KX_LDMATRIX("x4", "{%0,%1,%2,%3}", "%4", "=r"(x[0]), "=r"(x[1]), "=r"(x[2]), "=r"(x[3]));
#undef KX_LDMATRIX
  for (int i = 0; i < N; ++i) r[i] = x[i];
#else
  __trap();
#endif
}

template <int N> __device__ __forceinline__ void ldmatrix(uint32_t (&r)[N], const void* smem_row) {
  ldmatrix_any<N, false>(r, smem_row);
}
template <int N> __device__ __forceinline__ void ldmatrix_trans(uint32_t (&r)[N], const void* smem_row) {
  ldmatrix_any<N, true>(r, smem_row);
}

template <int Bytes> __device__ __forceinline__ void cp_async(void* smem, const void* gmem, int src_bytes = Bytes) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (Bytes == 16)  // .cg: bypass L1, the usual choice for tiles read once per block
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem)), "l"(gmem),
                 "r"(src_bytes)
                 : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_address(smem)), "l"(gmem),
                 "n"(Bytes), "r"(src_bytes)
                 : "memory");
#else
  __trap();
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int N> __device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

#endif

}  // namespace ptx
}  // namespace cuda
}  // namespace kx
