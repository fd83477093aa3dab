// What csrc/cuda/*.cu see when the host compiler builds them for the SIMT emulator (KX_SIMT):
// CUDA's types from its own headers, then the execution-space keywords, the built-in variables,
// barriers, warp collectives, atomics and intrinsics implemented on the emulator's fibers.
// Included through csrc/cuda/common.cuh only; the kernel bodies stay the code nvcc compiles.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "simt/scheduler.h"

// The host compiler would read these as attributes it ignores (with a warning each).
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __noinline__
#undef __shared__
#undef __constant__
#undef __launch_bounds__
#undef __align__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __constant__ static
// Static shared memory is declared with KX_STATIC_SHARED (csrc/cuda/common.cuh), which gives each
// block a fresh, poisoned and guarded copy; a plain __shared__ would silently keep the previous
// block's values.
#define __shared__ _Pragma("GCC error \"declare static shared memory with KX_STATIC_SHARED (cuda/common.cuh)\"")
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

#define threadIdx (::kx::simt::current_thread()->idx)
#define blockIdx (::kx::simt::current_block()->block_idx)
#define blockDim (::kx::simt::current_block()->block_dim)
#define gridDim (::kx::simt::current_block()->grid_dim)
#define warpSize 32

// The runtime's kernel-pointer overload (declared by cuda_runtime.h for nvcc only).
template <typename... P>
inline cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}

inline void __syncthreads() { ::kx::simt::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::kx::simt::warp_collective("__syncwarp", mask, nullptr, nullptr);
}
inline void __threadfence() {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  ::kx::simt::fence_point();
}
inline void __threadfence_block() { __threadfence(); }
inline void __nanosleep(unsigned) { ::kx::simt::fence_point(); }
[[noreturn]] inline void __trap() { ::kx::simt::fail("__trap()"); }

namespace kx {
namespace simt {

// ---- shuffles and votes: exchanged when every lane of the mask has arrived ------------------

enum class ShflKind { Idx, Up, Down, Xor };

struct ShflRecord {
  uint64_t in, out;
  int arg, width;
  ShflKind kind;
};

inline void complete_shfl(Thread* const* lanes, unsigned mask) {
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    ShflRecord& r = *static_cast<ShflRecord*>(lanes[l]->record);
    const int w = r.width;
    if (w < 1 || w > 32 || (w & (w - 1)))
      fail("shuffle width " + std::to_string(w) + " is not a power of two in [1, 32]");
    const int seg = l / w * w;  // first lane of l's segment
    int src = l;
    switch (r.kind) {
      case ShflKind::Idx: src = seg + (r.arg % w + w) % w; break;
      case ShflKind::Up: src = l - seg >= r.arg ? l - r.arg : l; break;
      case ShflKind::Down: src = l - seg + r.arg < w ? l + r.arg : l; break;
      case ShflKind::Xor: src = (l ^ r.arg) < seg + w ? (l ^ r.arg) : l; break;
    }
    // A lane outside the mask gives an undefined value: poison (all ones, NaN in float types),
    // which fails a test only if the kernel uses it, as on the hardware.
    r.out = src >= 0 && src < 32 && (mask >> src & 1u) ? static_cast<ShflRecord*>(lanes[src]->record)->in
                                                          : ~uint64_t(0);
  }
}

template <typename T> T shuffle(const char* op, ShflKind kind, unsigned mask, T var, int arg, int width) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffles move up to 8 bytes");
  ShflRecord r{0, 0, arg, width, kind};
  std::memcpy(&r.in, &var, sizeof(T));
  warp_collective(op, mask, &r, &complete_shfl);
  T out;
  std::memcpy(&out, &r.out, sizeof(T));
  return out;
}

struct VoteRecord {
  int predicate;
  unsigned out;
};

inline void complete_ballot(Thread* const* lanes, unsigned mask) {
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && static_cast<VoteRecord*>(lanes[l]->record)->predicate) bits |= 1u << l;
  for (int l = 0; l < 32; ++l)
    if (mask >> l & 1u) static_cast<VoteRecord*>(lanes[l]->record)->out = bits;
}

inline unsigned ballot(const char* op, unsigned mask, int predicate) {
  VoteRecord r{predicate != 0, 0};
  warp_collective(op, mask, &r, &complete_ballot);
  return r.out;
}

// *p = f(*p, v) by compare-and-swap on the bits (floats included); returns the old value.
template <typename T> T atomic_update_bits(T* p, T (*f)(T, T), T v) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomics on 4- and 8-byte values");
  using U = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
  U* q = reinterpret_cast<U*>(p);
  U old = __atomic_load_n(q, __ATOMIC_RELAXED);
  for (;;) {
    T o, n;
    std::memcpy(&o, &old, sizeof(T));
    n = f(o, v);
    U nb;
    std::memcpy(&nb, &n, sizeof(T));
    if (__atomic_compare_exchange_n(q, &old, nb, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return o;
  }
}

}  // namespace simt
}  // namespace kx

template <typename T> T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  return ::kx::simt::shuffle("__shfl_sync", ::kx::simt::ShflKind::Idx, mask, var, src_lane, width);
}
template <typename T> T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ::kx::simt::shuffle("__shfl_up_sync", ::kx::simt::ShflKind::Up, mask, var, static_cast<int>(delta), width);
}
template <typename T> T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ::kx::simt::shuffle("__shfl_down_sync", ::kx::simt::ShflKind::Down, mask, var, static_cast<int>(delta), width);
}
template <typename T> T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  return ::kx::simt::shuffle("__shfl_xor_sync", ::kx::simt::ShflKind::Xor, mask, var, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return ::kx::simt::ballot("__ballot_sync", mask, predicate);
}
inline int __any_sync(unsigned mask, int predicate) { return ::kx::simt::ballot("__any_sync", mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) {
  return ::kx::simt::ballot("__all_sync", mask, predicate) == mask;
}

// ---- atomics: real atomics (blocks run in parallel on several cores); each then lets the other
// threads of the block run, since one of them may be spinning on the value ----------------------

namespace kx {
namespace simt {
template <typename T> uint64_t bits_of(T v) {
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
// old = *p; *p = f(old, v); then a scheduling point.
template <typename T> T fetch_update(T* p, T (*f)(T, T), T v) {
  const T old = atomic_update_bits<T>(p, f, v);
  atomic_point(p, bits_of(old), bits_of(f(old, v)) != bits_of(old));
  return old;
}
template <typename T> T cas(T* p, T compare, T v) {
  const bool swapped = __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  atomic_point(p, bits_of(compare), swapped && bits_of(compare) != bits_of(v));
  return compare;  // the old value either way
}
template <typename T> T add(T a, T b) { return a + b; }
template <typename T> T larger(T a, T b) { return a < b ? b : a; }
template <typename T> T smaller(T a, T b) { return b < a ? b : a; }
template <typename T> T second(T, T b) { return b; }
}  // namespace simt
}  // namespace kx

#define KX_SIMT_ATOMIC(T, NAME, F) \
  inline T NAME(T* p, T v) { return ::kx::simt::fetch_update<T>(p, &::kx::simt::F<T>, v); }
KX_SIMT_ATOMIC(int, atomicAdd, add)
KX_SIMT_ATOMIC(unsigned, atomicAdd, add)
KX_SIMT_ATOMIC(unsigned long long, atomicAdd, add)
KX_SIMT_ATOMIC(float, atomicAdd, add)
KX_SIMT_ATOMIC(double, atomicAdd, add)
KX_SIMT_ATOMIC(int, atomicMax, larger)
KX_SIMT_ATOMIC(unsigned, atomicMax, larger)
KX_SIMT_ATOMIC(int, atomicMin, smaller)
KX_SIMT_ATOMIC(unsigned, atomicMin, smaller)
KX_SIMT_ATOMIC(int, atomicExch, second)
KX_SIMT_ATOMIC(unsigned, atomicExch, second)
KX_SIMT_ATOMIC(float, atomicExch, second)
#undef KX_SIMT_ATOMIC
inline int atomicCAS(int* p, int compare, int v) { return ::kx::simt::cas(p, compare, v); }
inline unsigned atomicCAS(unsigned* p, unsigned compare, unsigned v) { return ::kx::simt::cas(p, compare, v); }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long compare, unsigned long long v) {
  return ::kx::simt::cas(p, compare, v);
}

// ---- arithmetic the device provides globally ---------------------------------------------------

inline int min(int a, int b) { return b < a ? b : a; }
inline unsigned min(unsigned a, unsigned b) { return b < a ? b : a; }
inline long min(long a, long b) { return b < a ? b : a; }
inline unsigned long min(unsigned long a, unsigned long b) { return b < a ? b : a; }
inline long long min(long long a, long long b) { return b < a ? b : a; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return b < a ? b : a; }
inline float min(float a, float b) { return fminf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline int max(int a, int b) { return a < b ? b : a; }
inline unsigned max(unsigned a, unsigned b) { return a < b ? b : a; }
inline long max(long a, long b) { return a < b ? b : a; }
inline unsigned long max(unsigned long a, unsigned long b) { return a < b ? b : a; }
inline long long max(long long a, long long b) { return a < b ? b : a; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a < b ? b : a; }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}
inline int __float_as_int(float f) {
  int i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
template <typename T> T __ldg(const T* p) { return *p; }
