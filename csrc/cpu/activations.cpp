// act'(h) and act''(h) for the invertible-ResNet log-det ops, on the CPU.
#include <ATen/Parallel.h>

#include "cpu/kernels.h"
#include "cpu/type_map.h"

namespace kx {
namespace cpu {
namespace {

template <typename A>
void derivatives_impl(const act::Args& a) {
  const A* h = static_cast<const A*>(a.h);
  A* d1 = static_cast<A*>(a.d1);
  A* d2 = static_cast<A*>(a.d2);
  at::parallel_for(0, a.numel, kGrainElems, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const auto r = act::derivatives(a.kind, h[i]);
      d1[i] = r.d1;
      d2[i] = r.d2;
    }
  });
}

}  // namespace

void activation_derivatives(const act::Args& a) {
  if (a.dtype == DType::F64)
    derivatives_impl<double>(a);
  else
    derivatives_impl<float>(a);
}

}  // namespace cpu
}  // namespace kx
