// EM routing on the GPU: one thread per sample runs the same per-sample EM (csrc/kexue/em_routing.h)
// as the CPU kernel, with its scratch in a global workspace. Every sum runs in a fixed order and
// nothing is shared between threads (no atomics): bitwise reproducible. Simple rather than fast:
// it only parallelises over the batch (see the benchmark for where that stands).
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace kx {
namespace cuda {
namespace {

constexpr int kEmThreads = 64;

unsigned em_blocks(int64_t batch) {
  return static_cast<unsigned>((batch + kEmThreads - 1) / kEmThreads);
}

template <typename A> __global__ void em_forward_kernel(em::Args a) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kEmThreads + threadIdx.x;
  if (b >= a.batch) return;
  const int64_t T = a.iterations, I = a.n_in, J = a.n_out, H = a.dim;
  A* base = static_cast<A*>(a.workspace) + b * em::history_scratch(T, I, J, H);
  em::History<A> hs = em::make_history(base, T, I, J, H);
  em::forward_sample<A>(static_cast<const A*>(a.votes) + b * I * J * H,
                        static_cast<const A*>(a.a_in) + b * I, static_cast<const A*>(a.beta_u),
                        static_cast<const A*>(a.beta_a), T, A(a.final_lambda), A(a.eps), I, J, H,
                        hs);
  A* mu = static_cast<A*>(a.mu) + b * J * H;
  A* ao = static_cast<A*>(a.a_out) + b * J;
  for (int64_t k = 0; k < J * H; ++k) mu[k] = hs.mu[(T - 1) * J * H + k];
  for (int64_t j = 0; j < J; ++j) ao[j] = hs.a[(T - 1) * J + j];
}

template <typename A> __global__ void em_backward_kernel(em::GradArgs a) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kEmThreads + threadIdx.x;
  if (b >= a.batch) return;
  const int64_t T = a.iterations, I = a.n_in, J = a.n_out, H = a.dim;
  A* scratch = static_cast<A*>(a.workspace) + b * em::backward_scratch(T, I, J, H);
  em::backward_sample<A>(
      static_cast<const A*>(a.votes) + b * I * J * H, static_cast<const A*>(a.a_in) + b * I,
      static_cast<const A*>(a.beta_u), static_cast<const A*>(a.beta_a), T, A(a.final_lambda),
      A(a.eps), I, J, H, static_cast<const A*>(a.grad_mu) + b * J * H,
      static_cast<const A*>(a.grad_a) + b * J, scratch,
      static_cast<A*>(a.grad_votes) + b * I * J * H, static_cast<A*>(a.grad_a_in) + b * I,
      static_cast<A*>(a.grad_beta_u) + b * J, static_cast<A*>(a.grad_beta_a) + b * J);
}

size_t em_acc_size(DType d) { return d == DType::F64 ? sizeof(double) : sizeof(float); }

}  // namespace

size_t em_routing_forward_workspace(const em::Args& a) {
  return a.batch * em::history_scratch(a.iterations, a.n_in, a.n_out, a.dim) * em_acc_size(a.dtype);
}

int em_routing_forward(const em::Args& a, void* stream) {
  if (a.batch == 0) return 0;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (a.dtype == DType::F64) KX_LAUNCH(em_blocks(a.batch), kEmThreads, 0, st, em_forward_kernel<double>)(a);
  else KX_LAUNCH(em_blocks(a.batch), kEmThreads, 0, st, em_forward_kernel<float>)(a);
  return last_error();
}

size_t em_routing_backward_workspace(const em::GradArgs& a) {
  return a.batch * em::backward_scratch(a.iterations, a.n_in, a.n_out, a.dim) * em_acc_size(a.dtype);
}

int em_routing_backward(const em::GradArgs& a, void* stream) {
  if (a.batch == 0) return 0;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (a.dtype == DType::F64) KX_LAUNCH(em_blocks(a.batch), kEmThreads, 0, st, em_backward_kernel<double>)(a);
  else KX_LAUNCH(em_blocks(a.batch), kEmThreads, 0, st, em_backward_kernel<float>)(a);
  return last_error();
}

}  // namespace cuda
}  // namespace kx
