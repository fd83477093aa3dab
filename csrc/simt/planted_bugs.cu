// Planted bugs for the emulator's own tests (built only for the emulator, never by nvcc): each
// kernel breaks one rule of the hardware, the way a real kernel might, and the emulator must
// catch it. The "_fixed" twins show that the catch comes from the bug, not from the harness.
#include "simt/planted_bugs.h"

#include <atomic>
#include <functional>
#include <map>

#include "cuda/common.cuh"
#include "cuda/ptx.cuh"

namespace kx {
namespace simt {
namespace {

using cuda::ptx::cp_async;
using cuda::ptx::cp_async_commit;
using cuda::ptx::cp_async_wait;

// A write to shared memory read back by another thread: without the barrier the result depends on
// which thread runs first (threads that read too early see poison, or on a GPU an earlier
// launch's values, salted away by `salt`).
template <bool Barrier> __global__ void exchange_kernel(float* out, float salt) {
  KX_STATIC_SHARED(float, s, [64]);
  const int t = threadIdx.x;
  s[t] = salt + static_cast<float>(t);
  if (Barrier) __syncthreads();
  out[t] = s[63 - t];
  out[64 + t] = salt;  // lets the test compute the right answer, salt + 63 - t
}

__global__ void static_write_past_end_kernel(float* out) {
  KX_STATIC_SHARED(float, s, [32]);
  s[threadIdx.x + 1] = 1.0f;  // thread 31 writes the 33rd float
  out[threadIdx.x] = 0.0f;
}

__global__ void static_write_before_start_kernel(float* out) {
  KX_STATIC_SHARED(float, s, [32]);
  s[static_cast<int>(threadIdx.x) - 1] = 1.0f;  // thread 0 writes the float before the array
  out[threadIdx.x] = 0.0f;
}

// Every block reads its static shared variable before writing it: fresh poison in each block, never
// the previous block's value (which a plain `static thread_local` would keep).
__global__ void static_read_before_write_kernel(float* out) {
  KX_STATIC_SHARED(float, s, );
  if (threadIdx.x == 0) {
    out[blockIdx.x] = s;
    s = 1000.0f + blockIdx.x;
  }
}

// Not a bug: 256 threads add 1 ten thousand times each, with no barrier in between (the emulator's
// spin detection must not mistake this for waiting).
__global__ void atomic_counter_kernel(float* out) {
  KX_STATIC_SHARED(unsigned, count, );
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  for (int i = 0; i < 10000; ++i) atomicAdd(&count, 1u);
  __syncthreads();
  if (threadIdx.x == 0) out[0] = static_cast<float>(count);
}

// Thread 0 waits for a flag thread 1 sets; without the write (the bug) it would wait forever.
template <bool Set> __global__ void spin_kernel(float* out) {
  KX_STATIC_SHARED(int, flag, );
  if (threadIdx.x == 0) flag = 0;
  __syncthreads();
  if (threadIdx.x == 1 && Set) atomicExch(&flag, 1);
  if (threadIdx.x == 0) {
    while (atomicAdd(&flag, 0) == 0) {
    }
    out[0] = 1.0f;
  }
}

__global__ void write_past_end_kernel(float* out) {
  KX_DYNAMIC_SHARED(float, s, 16);
  s[threadIdx.x + 1] = 1.0f;  // 64 floats of dynamic shared memory: thread 63 writes the 65th
  out[threadIdx.x] = 0.0f;
}

// Scratch written only at even indices, then read everywhere: the odd ones are the poison the
// glue's allocations carry under the emulator.
template <bool WriteAll> __global__ void scratch_kernel(float* out, float* scratch, int n) {
  const int t = threadIdx.x;
  if (t < n && (WriteAll || t % 2 == 0)) scratch[t] = static_cast<float>(t);
  __syncthreads();
  if (t < n) out[t] = scratch[t];
}

__global__ void trivial_kernel(float* out) {
  if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0) out[0] = 1.0f;
}

// Lane 20 is not in the mask: the value read is undefined (the emulator's is NaN).
__global__ void shfl_outside_mask_kernel(float* out) {
  const int lane = threadIdx.x & 31;
  if (lane < 16) out[lane] = __shfl_sync(0x0000ffffu, static_cast<float>(lane), 20);
}

__global__ void shfl_exited_lane_kernel(float* out) {
  const int lane = threadIdx.x & 31;
  if (lane >= 16) return;
  out[lane] = __shfl_sync(0xffffffffu, static_cast<float>(lane), 0);  // lanes 16-31 have left
}

__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 32) __syncthreads();
  out[threadIdx.x] = 1.0f;
}

__global__ void deadlock_kernel(float* out) {
  const int lane = threadIdx.x & 31;
  if (lane == 31)
    __syncthreads();
  else
    out[lane] = __shfl_sync(0xffffffffu, 1.0f, 0);  // waits for lane 31, which waits at the barrier
}

// Two instances: the attribute set for the fixed twin must not leak into the bug's launch.
template <int Instance> __global__ void big_smem_kernel(float* out) {
  KX_DYNAMIC_SHARED(float, s, 16);
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

__global__ void misaligned_kernel(float* out) {
  const float* p = out + 1;
  KX_ALIGNED_ACCESS(p, 16);  // a float4 load from an address 4 bytes past a 16-byte boundary
  out[threadIdx.x] = 0.0f;
}

__global__ void wmma_lane_fragment_kernel(float* out) {
  using namespace nvcuda;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  acc.x[0] = static_cast<float>(threadIdx.x);  // assumes lane l holds element 0 of some row
  wmma::store_matrix_sync(out, acc, 16, wmma::mem_row_major);
}

alignas(16) const float kSource[128] = {
    1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
    23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66,
    67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88,
    89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110,
    111, 112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, 128};

// Each thread copies 4 floats with cp.async and reads one back: before the wait (the bug) it
// reads the poisoned shared memory.
template <bool WaitFirst> __global__ void cp_async_kernel(float* out, const float* src) {
  KX_DYNAMIC_SHARED(float, s, 16);
  const int t = threadIdx.x;
  cp_async<16>(s + 4 * t, src + 4 * t);
  cp_async_commit();
  float v = 0.0f;
  if (!WaitFirst) v = s[4 * t];
  cp_async_wait<0>();
  if (WaitFirst) v = s[4 * t];
  out[t] = v;
}

std::atomic<int> g_salt{0};

using Runner = std::function<int(float*, int64_t)>;

const std::map<std::string, Runner>& runners() {
  static const std::map<std::string, Runner> table = {
      {"missing_syncthreads",
       [](float* o, int64_t) { return KX_LAUNCH(1, 64, 0, nullptr, exchange_kernel<false>)(o, 1000.0f * ++g_salt); }},
      {"missing_syncthreads_fixed",
       [](float* o, int64_t) { return KX_LAUNCH(1, 64, 0, nullptr, exchange_kernel<true>)(o, 1000.0f * ++g_salt); }},
      {"shared_write_past_end",
       [](float* o, int64_t) { return KX_LAUNCH(1, 64, 64 * sizeof(float), nullptr, write_past_end_kernel)(o); }},
      {"static_shared_write_past_end",
       [](float* o, int64_t) { return KX_LAUNCH(1, 32, 0, nullptr, static_write_past_end_kernel)(o); }},
      {"static_shared_write_before_start",
       [](float* o, int64_t) { return KX_LAUNCH(1, 32, 0, nullptr, static_write_before_start_kernel)(o); }},
      {"static_shared_read_before_write",
       [](float* o, int64_t) { return KX_LAUNCH(8, 32, 0, nullptr, static_read_before_write_kernel)(o); }},
      {"atomic_counter_fixed",
       [](float* o, int64_t) { return KX_LAUNCH(1, 256, 0, nullptr, atomic_counter_kernel)(o); }},
      {"spins_forever", [](float* o, int64_t) { return KX_LAUNCH(1, 32, 0, nullptr, spin_kernel<false>)(o); }},
      {"spins_forever_fixed", [](float* o, int64_t) { return KX_LAUNCH(1, 32, 0, nullptr, spin_kernel<true>)(o); }},
      {"reads_unwritten_scratch",
       [](float* o, int64_t n) {
         return KX_LAUNCH(1, 64, 0, nullptr, scratch_kernel<false>)(o, o + n / 2, static_cast<int>(n / 2));
       }},
      {"reads_unwritten_scratch_fixed",
       [](float* o, int64_t n) {
         return KX_LAUNCH(1, 64, 0, nullptr, scratch_kernel<true>)(o, o + n / 2, static_cast<int>(n / 2));
       }},
      {"grid_y_70000", [](float* o, int64_t) { return KX_LAUNCH(dim3(1, 70000), 32, 0, nullptr, trivial_kernel)(o); }},
      {"grid_y_70000_fixed",
       [](float* o, int64_t) { return KX_LAUNCH(dim3(1, 65535), 32, 0, nullptr, trivial_kernel)(o); }},
      {"block_2048_threads", [](float* o, int64_t) { return KX_LAUNCH(1, 2048, 0, nullptr, trivial_kernel)(o); }},
      {"shuffle_reads_lane_outside_mask",
       [](float* o, int64_t) { return KX_LAUNCH(1, 32, 0, nullptr, shfl_outside_mask_kernel)(o); }},
      {"shuffle_mask_names_exited_lane",
       [](float* o, int64_t) { return KX_LAUNCH(1, 32, 0, nullptr, shfl_exited_lane_kernel)(o); }},
      {"barrier_in_divergent_branch",
       [](float* o, int64_t) { return KX_LAUNCH(1, 64, 0, nullptr, divergent_barrier_kernel)(o); }},
      {"shuffle_waits_for_lane_at_barrier",
       [](float* o, int64_t) { return KX_LAUNCH(1, 32, 0, nullptr, deadlock_kernel)(o); }},
      {"dynamic_smem_above_attribute",
       [](float* o, int64_t) { return KX_LAUNCH(1, 64, 64 * 1024, nullptr, big_smem_kernel<0>)(o); }},
      {"dynamic_smem_above_attribute_fixed",
       [](float* o, int64_t) {
         if (int e = cudaFuncSetAttribute(big_smem_kernel<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024))
           return e;
         return KX_LAUNCH(1, 64, 64 * 1024, nullptr, big_smem_kernel<1>)(o);
       }},
      {"dynamic_smem_above_device_limit",
       [](float*, int64_t) {
         return static_cast<int>(
             cudaFuncSetAttribute(big_smem_kernel<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024));
       }},
      {"misaligned_vector_access",
       [](float* o, int64_t) { return KX_LAUNCH(1, 32, 0, nullptr, misaligned_kernel)(o); }},
      {"wmma_fragment_differs_between_lanes",
       [](float* o, int64_t) { return KX_LAUNCH(1, 32, 0, nullptr, wmma_lane_fragment_kernel)(o); }},
      {"cp_async_read_before_wait",
       [](float* o, int64_t) { return KX_LAUNCH(1, 32, 512, nullptr, cp_async_kernel<false>)(o, kSource); }},
      {"cp_async_read_before_wait_fixed",
       [](float* o, int64_t) { return KX_LAUNCH(1, 32, 512, nullptr, cp_async_kernel<true>)(o, kSource); }},
  };
  return table;
}

}  // namespace

std::vector<std::string> planted_bug_names() {
  std::vector<std::string> names;
  for (const auto& kv : runners()) names.push_back(kv.first);
  return names;
}

std::string run_planted_bug(const std::string& name, uintptr_t out, int64_t n) {
  auto it = runners().find(name);
  if (it == runners().end()) return "unknown planted bug '" + name + "'";
  if (n < 256) return "the output buffer must hold at least 256 floats";
  cudaGetLastError();  // start clean
  it->second(reinterpret_cast<float*>(out), n);
  const int err = static_cast<int>(cudaGetLastError());
  return err ? cudaGetErrorString(static_cast<cudaError_t>(err)) : "";
}

}  // namespace simt
}  // namespace kx
