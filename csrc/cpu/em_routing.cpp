// EM routing on the CPU: one task per sample (at::parallel_for over the batch), each with its own
// scratch; every sum runs in a fixed order, so results do not depend on the thread count. The
// per-sample loops (cpu/em_routing_loops.h) are built per instruction set.
#include <ATen/Parallel.h>

#include <vector>

#include "cpu/em_routing_loops.h"
#include "cpu/kernels.h"

namespace kx {
namespace cpu {
namespace {

emloops::Loops loops_for(DType d) {
  switch (active_isa()) {
#ifdef KEXUE_CPU_MULTI_ISA
    case Isa::Avx512: return avx512::em_routing_loops(d);
    case Isa::Avx2: return avx2::em_routing_loops(d);
#endif
    default: return base::em_routing_loops(d);
  }
}

template <typename A> void forward_impl(const em::Args& a) {
  const emloops::Loops loops = loops_for(a.dtype);
  at::parallel_for(0, a.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> scratch(em::history_scratch(a.iterations, a.n_in, a.n_out, a.dim));
    for (int64_t b = begin; b < end; ++b) loops.forward(a, b, scratch.data());
  });
}

template <typename A> void backward_impl(const em::GradArgs& a) {
  const emloops::Loops loops = loops_for(a.dtype);
  at::parallel_for(0, a.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> scratch(em::backward_scratch(a.iterations, a.n_in, a.n_out, a.dim));
    for (int64_t b = begin; b < end; ++b) loops.backward(a, b, scratch.data());
  });
}

}  // namespace

void em_routing_forward(const em::Args& a) {
  if (a.batch == 0) return;
  if (a.dtype == DType::F64) forward_impl<double>(a);
  else forward_impl<float>(a);
}

void em_routing_backward(const em::GradArgs& a) {
  if (a.batch == 0) return;
  if (a.dtype == DType::F64) backward_impl<double>(a);
  else backward_impl<float>(a);
}

}  // namespace cpu
}  // namespace kx
