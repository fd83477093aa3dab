// ActNorm forward/backward on the GPU. x is [batch, channels, spatial].
// Backward: blocks own (channel, slice of that channel's batch × spatial elements); each writes
// the channel's partial gradient sums for its slice, and a finishing kernel adds the slices in
// fixed order. Slicing the flattened batch × spatial range (not whole samples) keeps every block
// busy for one large image as for many small ones.
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "kexue/dispatch.h"

namespace kx {
namespace cuda {
namespace {

constexpr int64_t kSliceElems = kThreads * 16;  // elements of one channel per block, roughly
constexpr int64_t kMaxSlices = 1024;

template <typename T, bool Reverse>
__global__ void __launch_bounds__(kThreads) forward_kernel(actnorm::Args a) {
  using A = acc_t<T>;
  const int64_t total = a.batch * a.channels * a.spatial;
  const A* bias = static_cast<const A*>(a.bias);
  const A* log_s = static_cast<const A*>(a.log_s);
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.out);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total; i += stride) {
    const int64_t c = (i / a.spatial) % a.channels;
    const auto ch = actnorm::channel(bias[c], log_s[c], Reverse);
    store(y + i, actnorm::forward_elem(load<A>(x + i), ch, Reverse));
  }
  // Every sample's log-det is the same number.
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; n < a.batch; n += stride)
    static_cast<A*>(a.logdet)[n] = actnorm::logdet<A>(log_s, a.channels, a.spatial, Reverse);
}

int64_t slices_of(const actnorm::GradArgs& a) {
  const int64_t per_channel = a.batch * a.spatial;
  return std::min<int64_t>(kMaxSlices, std::max<int64_t>(1, per_channel / kSliceElems));
}

template <typename T, bool Reverse>
__global__ void __launch_bounds__(kThreads) backward_kernel(actnorm::GradArgs a, int64_t slices) {
  using A = acc_t<T>;
  const int64_t C = a.channels, S = a.spatial;
  const int64_t per_channel = a.batch * S;
  const int64_t chunk = (per_channel + slices - 1) / slices;
  const int64_t slice = blockIdx.x, k0 = slice * chunk, k1 = min(per_channel, k0 + chunk);
  const T* g = static_cast<const T*>(a.grad_out);
  const T* x = static_cast<const T*>(a.x);
  T* gx = static_cast<T*>(a.grad_x);
  A* part_b = static_cast<A*>(a.workspace);
  A* part_ls = part_b + slices * C;
  for (int64_t c = blockIdx.y; c < C; c += gridDim.y) {
    const auto ch = actnorm::channel(static_cast<const A*>(a.bias)[c],
                                     static_cast<const A*>(a.log_s)[c], Reverse);
    A sb = A(0), sls = A(0);
    for (int64_t k = k0 + threadIdx.x; k < k1; k += kThreads) {
      const int64_t n = k / S, j = k % S;
      const int64_t i = (n * C + c) * S + j;
      const auto r = actnorm::backward_elem(load<A>(g + i), load<A>(x + i), ch, Reverse);
      if (gx) store(gx + i, r.gx);
      sb += r.gb;
      sls += r.gls;
    }
    sb = block_sum(sb);
    sls = block_sum(sls);
    if (threadIdx.x == 0) {
      part_b[slice * C + c] = sb;
      part_ls[slice * C + c] = sls;
    }
  }
}

template <typename A>
__global__ void finish_kernel(actnorm::GradArgs a, int64_t slices, bool reverse) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= a.channels) return;
  const A* part_b = static_cast<const A*>(a.workspace);
  const A* part_ls = part_b + slices * a.channels;
  A sb = A(0), sls = A(0);
  for (int64_t k = 0; k < slices; ++k) {
    sb += part_b[k * a.channels + c];
    sls += part_ls[k * a.channels + c];
  }
  static_cast<A*>(a.grad_bias)[c] = sb;
  static_cast<A*>(a.grad_log_s)[c] =
      sls + actnorm::logdet_grad<A>(static_cast<const A*>(a.grad_logdet), a.batch, a.spatial, reverse);
}

unsigned grid_for(int64_t total) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, 65535 * 8)));
}

}  // namespace

int actnorm_forward(const actnorm::Args& a, void* stream) {
  if (a.batch == 0) return 0;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const int64_t total = std::max(a.batch * a.channels * a.spatial, a.batch);
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
    KX_BOOL_SWITCH(a.reverse, R, [&] {
      KX_LAUNCH(grid_for(total), kThreads, 0, st, forward_kernel<T, R>)(a);
    });
  });
  return last_error();
}

size_t actnorm_backward_workspace(const actnorm::GradArgs& a) {
  const size_t elem = a.dtype == DType::F64 ? sizeof(double) : sizeof(float);
  return 2 * static_cast<size_t>(slices_of(a) * a.channels) * elem;
}

int actnorm_backward(const actnorm::GradArgs& a, void* stream) {
  if (a.channels == 0) return 0;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const int64_t slices = slices_of(a);
  const dim3 grid(static_cast<unsigned>(slices),
                  capped_grid_y(a.channels));
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
    using A = acc_t<T>;
    KX_BOOL_SWITCH(a.reverse, R, [&] { KX_LAUNCH(grid, kThreads, 0, st, backward_kernel<T, R>)(a, slices); });
    const unsigned blocks = static_cast<unsigned>((a.channels + kThreads - 1) / kThreads);
    KX_LAUNCH(blocks, kThreads, 0, st, finish_kernel<A>)(a, slices, a.reverse);
  });
  return last_error();
}

}  // namespace cuda
}  // namespace kx
