// Dynamic routing on the CPU: one task per sample (at::parallel_for over the batch), each with
// its own scratch; every sum runs in a fixed order, so results do not depend on the thread count.
// The per-sample loops are in cpu/capsules_loops.h, fp32/fp64 built per instruction set.
#include <ATen/Parallel.h>

#include <vector>

#include "cpu/capsules_loops.h"
#include "cpu/kernels.h"
#include "cpu/type_map.h"
#include "kexue/dispatch.h"

namespace kx {
namespace cpu {
namespace {

template <typename T> capsloops::Loops loops_for(DType d) {
  if constexpr (std::is_same<T, float>::value || std::is_same<T, double>::value) {
    switch (active_isa()) {
#ifdef KEXUE_CPU_MULTI_ISA
      case Isa::Avx512: return avx512::capsules_loops(d);
      case Isa::Avx2: return avx2::capsules_loops(d);
#endif
      default: return base::capsules_loops(d);
    }
  } else {
    return capsloops::make_loops<T>();
  }
}

template <typename T> void forward_impl(const caps::Args& a) {
  using A = acc_t<T>;
  const int64_t NN = a.n_in * a.n_out, P = a.n_out * a.dim;
  const capsloops::Loops loops = loops_for<T>(a.dtype);
  at::parallel_for(0, a.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> scratch(caps::forward_scratch(a.n_in, a.n_out, a.dim));
    const int64_t state = caps::state_size(a.iterations, a.n_in, a.n_out, a.dim);
    for (int64_t b = begin; b < end; ++b)
      loops.forward(a, static_cast<const T*>(a.u) + b * NN * a.dim, static_cast<T*>(a.v) + b * P,
                    static_cast<T*>(a.c) + b * NN, a.state ? static_cast<A*>(a.state) + b * state : nullptr,
                    scratch.data());
  });
}

template <typename T> void backward_impl(const caps::GradArgs& a) {
  using A = acc_t<T>;
  const int64_t NN = a.n_in * a.n_out, P = a.n_out * a.dim;
  const capsloops::Loops loops = loops_for<T>(a.dtype);
  const bool stream = streaming::worth_it(a.batch * NN * a.dim * static_cast<int64_t>(sizeof(T)));
  at::parallel_for(0, a.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> scratch(caps::backward_scratch(a.iterations, a.n_in, a.n_out, a.dim));
    const int64_t state = caps::state_size(a.iterations, a.n_in, a.n_out, a.dim);
    for (int64_t b = begin; b < end; ++b)
      loops.backward(a, static_cast<const T*>(a.u) + b * NN * a.dim, static_cast<const T*>(a.grad_v) + b * P,
                     static_cast<T*>(a.grad_u) + b * NN * a.dim,
                     a.state ? static_cast<const A*>(a.state) + b * state : nullptr, scratch.data(), stream);
  });
}

}  // namespace

void dynamic_routing_forward(const caps::Args& a) {
  if (a.batch == 0) return;
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] { forward_impl<T>(a); });
}

void dynamic_routing_backward(const caps::GradArgs& a) {
  if (a.batch == 0) return;
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] { backward_impl<T>(a); });
}

}  // namespace cpu
}  // namespace kx
