// Coupling forward/backward on the GPU. One block per (sample, chunk): each block streams its
// chunk once and reduces its share of the sample's log-det; a second tiny kernel adds the
// chunks of a sample in fixed order (no atomics: bitwise reproducible).
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "kexue/dispatch.h"

namespace kx {
namespace cuda {
namespace {

using coupling::Scale;
constexpr int kChunk = kThreads * 16;

int64_t chunks_per_sample(int64_t n) { return std::max<int64_t>(1, (n + kChunk - 1) / kChunk); }

// Enough blocks to fill any current GPU many times over; more tasks loop inside the kernels.
unsigned task_grid(int64_t tasks) { return static_cast<unsigned>(std::min<int64_t>(tasks, 65535LL * 32)); }

template <typename T, Scale K, bool Reverse, bool Masked, bool HasT>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(coupling::Args a, int64_t chunks, acc_t<T>* partial) {
  using A = acc_t<T>;
  const int64_t N = a.numel_per_sample;
  // Blocks stride over the (sample, chunk) tasks: the grid is capped, the batch is not. The
  // loop bound is uniform across a block, so block_sum inside it is safe.
  for (int64_t task = blockIdx.x; task < a.batch * chunks; task += gridDim.x) {
  const int64_t n = task / chunks, j0 = (task % chunks) * kChunk;
  const int64_t len = min(N - j0, static_cast<int64_t>(kChunk)), off = n * N + j0;
  const T* x = static_cast<const T*>(a.x) + off;
  const T* s = static_cast<const T*>(a.s) + off;
  const T* t = static_cast<const T*>(a.t) + off;
  const uint8_t* m = Masked ? a.mask + (a.mask_per_batch ? off : j0) : nullptr;
  T* y = static_cast<T*>(a.out) + off;
  const A clamp = static_cast<A>(a.clamp);
  A ld = A(0);
#pragma unroll 4
  for (int64_t j = threadIdx.x; j < len; j += kThreads) {
    const A sj = K == Scale::None ? A(0) : load<A>(s + j);
    const A tj = HasT ? load<A>(t + j) : A(0);
    const bool masked = Masked ? m[j] != 0 : false;
    store(y + j, coupling::forward_elem<K, Reverse>(load<A>(x + j), sj, tj, masked, clamp, ld));
  }
  ld = block_sum(ld);
  if (threadIdx.x == 0) {
    if (chunks == 1)
      static_cast<A*>(a.logdet)[n] = ld;
    else
      partial[task] = ld;
  }
  }
}

template <typename A>
__global__ void sum_chunks_kernel(const A* partial, int64_t chunks, int64_t batch, A* logdet) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= batch) return;
  A sum = A(0);
  for (int64_t c = 0; c < chunks; ++c) sum += partial[n * chunks + c];
  logdet[n] = sum;
}

template <typename T, Scale K, bool Reverse, bool Masked, bool HasT>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(coupling::GradArgs a, int64_t chunks) {
  using A = acc_t<T>;
  const int64_t N = a.numel_per_sample;
  for (int64_t task = blockIdx.x; task < a.batch * chunks; task += gridDim.x) {
  const int64_t n = task / chunks, j0 = (task % chunks) * kChunk;
  const int64_t len = min(N - j0, static_cast<int64_t>(kChunk)), off = n * N + j0;
  const T* g = static_cast<const T*>(a.grad_out) + off;
  const T* x = static_cast<const T*>(a.x) + off;
  const T* s = static_cast<const T*>(a.s) + off;
  const T* t = static_cast<const T*>(a.t) + off;
  const uint8_t* m = Masked ? a.mask + (a.mask_per_batch ? off : j0) : nullptr;
  T* gx = a.grad_x ? static_cast<T*>(a.grad_x) + off : nullptr;
  T* gs = a.grad_s ? static_cast<T*>(a.grad_s) + off : nullptr;
  T* gt = a.grad_t ? static_cast<T*>(a.grad_t) + off : nullptr;
  const A gl = static_cast<const A*>(a.grad_logdet)[n];
  const A clamp = static_cast<A>(a.clamp);
#pragma unroll 4
  for (int64_t j = threadIdx.x; j < len; j += kThreads) {
    const A sj = K == Scale::None ? A(0) : load<A>(s + j);
    const A tj = HasT ? load<A>(t + j) : A(0);
    const bool masked = Masked ? m[j] != 0 : false;
    const auto r =
        coupling::backward_elem<K, Reverse>(load<A>(g + j), gl, load<A>(x + j), sj, tj, masked, clamp);
    if (gx) store(gx + j, r.gx);
    if (gs) store(gs + j, r.gs);
    if (gt) store(gt + j, r.gt);
  }
  }
}

}  // namespace

size_t coupling_forward_workspace(const coupling::Args& a) {
  const int64_t chunks = chunks_per_sample(a.numel_per_sample);
  if (chunks == 1) return 0;
  const size_t elem = a.dtype == DType::F64 ? sizeof(double) : sizeof(float);
  return static_cast<size_t>(a.batch * chunks) * elem;
}

int coupling_forward(const coupling::Args& a, void* stream) {
  if (a.batch == 0) return 0;
  const int64_t chunks = chunks_per_sample(a.numel_per_sample);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
    using A = acc_t<T>;
    A* partial = static_cast<A*>(a.workspace);
    KX_SCALE_SWITCH(a.scale, K, [&] {
      KX_BOOL_SWITCH(a.reverse, R, [&] {
        KX_BOOL_SWITCH(a.mask != nullptr, M, [&] {
          KX_BOOL_SWITCH(a.t != nullptr, HT, [&] {
            KX_LAUNCH(task_grid(a.batch * chunks), kThreads, 0, st, forward_kernel<T, K, R, M, HT>)(a, chunks, partial);
          });
        });
      });
    });
    if (chunks > 1) {
      const unsigned blocks = task_grid((a.batch + kThreads - 1) / kThreads);
      KX_LAUNCH(blocks, kThreads, 0, st, sum_chunks_kernel<A>)(partial, chunks, a.batch,
                                                        static_cast<A*>(a.logdet));
    }
  });
  return last_error();
}

int coupling_backward(const coupling::GradArgs& a, void* stream) {
  if (a.batch == 0 || a.numel_per_sample == 0) return 0;
  const int64_t chunks = chunks_per_sample(a.numel_per_sample);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
    KX_SCALE_SWITCH(a.scale, K, [&] {
      KX_BOOL_SWITCH(a.reverse, R, [&] {
        KX_BOOL_SWITCH(a.mask != nullptr, M, [&] {
          KX_BOOL_SWITCH(a.t != nullptr, HT, [&] {
            KX_LAUNCH(task_grid(a.batch * chunks), kThreads, 0, st, backward_kernel<T, K, R, M, HT>)(a, chunks);
          });
        });
      });
    });
  });
  return last_error();
}

const char* error_string(int err) { return cudaGetErrorString(static_cast<cudaError_t>(err)); }

}  // namespace cuda
}  // namespace kx
