// The per-sample EM routing of csrc/kexue/em_routing.h, torch-free so that it is compiled once
// per instruction set (csrc/cpu/isa/em_routing.cpp; a 16-entry pose is one AVX-512 vector); the
// driver (csrc/cpu/em_routing.cpp) runs the samples in parallel and picks the build.
#pragma once
#include "cpu/isa.h"
#include "kexue/em_routing.h"

namespace kx {
namespace cpu {
namespace emloops {

struct Loops {
  // Sample b of the batch; scratch: em::history_scratch (forward) or em::backward_scratch
  // (backward) entries of the accumulation type. With a.state the forward keeps its history
  // there and the backward reads it instead of recomputing the iterations.
  void (*forward)(const em::Args& a, int64_t b, void* scratch);
  void (*backward)(const em::GradArgs& a, int64_t b, void* scratch);
};

template <typename A> static void forward_one(const em::Args& a, int64_t b, void* scratch) {
  const int64_t T = a.iterations, I = a.n_in, J = a.n_out, H = a.dim;
  A* base = a.state ? static_cast<A*>(a.state) + b * em::history_scratch(T, I, J, H) : static_cast<A*>(scratch);
  em::History<A> hs = em::make_history(base, T, I, J, H);
  em::forward_sample<A>(static_cast<const A*>(a.votes) + b * I * J * H, static_cast<const A*>(a.a_in) + b * I,
                        static_cast<const A*>(a.beta_u), static_cast<const A*>(a.beta_a), T, A(a.final_lambda),
                        A(a.eps), I, J, H, hs);
  A* mu = static_cast<A*>(a.mu) + b * J * H;
  A* ao = static_cast<A*>(a.a_out) + b * J;
  for (int64_t k = 0; k < J * H; ++k) mu[k] = hs.mu[(T - 1) * J * H + k];
  for (int64_t j = 0; j < J; ++j) ao[j] = hs.a[(T - 1) * J + j];
}

template <typename A> static void backward_one(const em::GradArgs& a, int64_t b, void* scratch) {
  const int64_t T = a.iterations, I = a.n_in, J = a.n_out, H = a.dim;
  em::backward_sample<A>(
      static_cast<const A*>(a.votes) + b * I * J * H, static_cast<const A*>(a.a_in) + b * I,
      static_cast<const A*>(a.beta_u), static_cast<const A*>(a.beta_a), T, A(a.final_lambda), A(a.eps), I, J, H,
      static_cast<const A*>(a.grad_mu) + b * J * H, static_cast<const A*>(a.grad_a) + b * J, static_cast<A*>(scratch),
      static_cast<A*>(a.grad_votes) + b * I * J * H, static_cast<A*>(a.grad_a_in) + b * I,
      static_cast<A*>(a.grad_beta_u) + b * J, static_cast<A*>(a.grad_beta_a) + b * J,
      a.state ? static_cast<const A*>(a.state) + b * em::history_scratch(T, I, J, H) : nullptr);
}

template <typename A> static Loops make_loops() {
  Loops l;
  l.forward = &forward_one<A>;
  l.backward = &backward_one<A>;
  return l;
}

}  // namespace emloops

// Entry points of each per-ISA build of csrc/cpu/isa/em_routing.cpp (fp32 and fp64).
#define KX_DECLARE_EM_ISA(NS) \
  namespace NS {              \
  emloops::Loops em_routing_loops(DType dtype); \
  }
KX_DECLARE_EM_ISA(base)
KX_DECLARE_EM_ISA(avx2)
KX_DECLARE_EM_ISA(avx512)
#undef KX_DECLARE_EM_ISA

}  // namespace cpu
}  // namespace kx
