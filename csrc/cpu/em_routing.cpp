// EM routing on the CPU: one task per sample (at::parallel_for over the batch), each with its own
// scratch; every sum runs in a fixed order, so results do not depend on the thread count.
#include <ATen/Parallel.h>

#include <vector>

#include "cpu/kernels.h"

namespace kx {
namespace cpu {
namespace {

template <typename A> void forward_impl(const em::Args& a) {
  const int64_t T = a.iterations, I = a.n_in, J = a.n_out, H = a.dim;
  const A* bu = static_cast<const A*>(a.beta_u);
  const A* ba = static_cast<const A*>(a.beta_a);
  at::parallel_for(0, a.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> scratch(em::history_scratch(T, I, J, H));
    em::History<A> hs = em::make_history(scratch.data(), T, I, J, H);
    for (int64_t b = begin; b < end; ++b) {
      const A* V = static_cast<const A*>(a.votes) + b * I * J * H;
      const A* ain = static_cast<const A*>(a.a_in) + b * I;
      em::forward_sample<A>(V, ain, bu, ba, T, A(a.final_lambda), A(a.eps), I, J, H, hs);
      A* mu = static_cast<A*>(a.mu) + b * J * H;
      A* ao = static_cast<A*>(a.a_out) + b * J;
      for (int64_t k = 0; k < J * H; ++k) mu[k] = hs.mu[(T - 1) * J * H + k];
      for (int64_t j = 0; j < J; ++j) ao[j] = hs.a[(T - 1) * J + j];
    }
  });
}

template <typename A> void backward_impl(const em::GradArgs& a) {
  const int64_t T = a.iterations, I = a.n_in, J = a.n_out, H = a.dim;
  const A* bu = static_cast<const A*>(a.beta_u);
  const A* ba = static_cast<const A*>(a.beta_a);
  at::parallel_for(0, a.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> scratch(em::backward_scratch(T, I, J, H));
    for (int64_t b = begin; b < end; ++b) {
      em::backward_sample<A>(
          static_cast<const A*>(a.votes) + b * I * J * H, static_cast<const A*>(a.a_in) + b * I,
          bu, ba, T, A(a.final_lambda), A(a.eps), I, J, H,
          static_cast<const A*>(a.grad_mu) + b * J * H, static_cast<const A*>(a.grad_a) + b * J,
          scratch.data(), static_cast<A*>(a.grad_votes) + b * I * J * H,
          static_cast<A*>(a.grad_a_in) + b * I, static_cast<A*>(a.grad_beta_u) + b * J,
          static_cast<A*>(a.grad_beta_a) + b * J);
    }
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
