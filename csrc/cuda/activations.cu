// act'(h) and act''(h) for the invertible-ResNet log-det ops, on the GPU.
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace kx {
namespace cuda {
namespace {

template <typename A>
__global__ void __launch_bounds__(kThreads) derivatives_kernel(act::Args a) {
  const A* h = static_cast<const A*>(a.h);
  A* d1 = static_cast<A*>(a.d1);
  A* d2 = static_cast<A*>(a.d2);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < a.numel; i += stride) {
    const auto r = act::derivatives(a.kind, h[i]);
    d1[i] = r.d1;
    d2[i] = r.d2;
  }
}

}  // namespace

int activation_derivatives(const act::Args& a, void* stream) {
  if (a.numel == 0) return 0;
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>((a.numel + kThreads - 1) / kThreads, 65535LL * 8));
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (a.dtype == DType::F64)
    KX_LAUNCH(blocks, kThreads, 0, st, derivatives_kernel<double>)(a);
  else
    KX_LAUNCH(blocks, kThreads, 0, st, derivatives_kernel<float>)(a);
  return last_error();
}

}  // namespace cuda
}  // namespace kx
