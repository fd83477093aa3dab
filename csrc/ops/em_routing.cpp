// Glue for kexue::em_routing and kexue::em_routing_backward: argument checks, layout, routing to
// the CPU or CUDA launcher, and the C++ autograd kernel (see ops/autograd.h). The backward reads
// the forward's per-iteration history (R, mu, var, a, ...) when the forward kept one (no larger
// than the votes), and otherwise recomputes the EM iterations.
#include <torch/library.h>

#include <cmath>

#include "cpu/kernels.h"
#include "ops/autograd.h"
#include "ops/common.h"

namespace kx {
namespace ops {
namespace {

constexpr const char* kOp = "kexue.em_routing";

struct Shape {
  int64_t B, I, J, H;
};

Shape check_inputs(const at::Tensor& votes, const at::Tensor& a_in, const at::Tensor& beta_u,
                   const at::Tensor& beta_a, int64_t iterations, double final_lambda, double eps, const char* op) {
  check_device_supported(votes, op);
  TORCH_CHECK(votes.scalar_type() == at::kFloat || votes.scalar_type() == at::kDouble, op,
              ": votes must be float32 or float64, got ", votes.scalar_type());
  TORCH_CHECK(votes.dim() == 4, op, ": votes must have shape [B, N_in, N_out, H], got ",
              votes.dim(), "-d tensor of shape ", votes.sizes());
  TORCH_CHECK(iterations >= 1, op, ": iterations must be >= 1, got ", iterations);
  TORCH_CHECK(iterations <= em::kMaxIterations, op, ": iterations must be at most ", em::kMaxIterations,
              " (the backward keeps every iteration), got ", iterations);
  TORCH_CHECK(std::isfinite(eps) && eps > 0, op, ": eps must be positive and finite, got ", eps);
  TORCH_CHECK(std::isfinite(final_lambda) && final_lambda >= 0, op,
              ": final_lambda must be non-negative and finite, got ", final_lambda);
  const Shape s{votes.size(0), votes.size(1), votes.size(2), votes.size(3)};
  check_like(votes, "votes", a_in, op, "a_in");
  check_like(votes, "votes", beta_u, op, "beta_u");
  check_like(votes, "votes", beta_a, op, "beta_a");
  TORCH_CHECK(a_in.dim() == 2 && a_in.size(0) == s.B && a_in.size(1) == s.I, op,
              ": a_in must have shape [", s.B, ", ", s.I, "], got ", a_in.sizes());
  TORCH_CHECK(beta_u.dim() == 1 && beta_u.size(0) == s.J, op, ": beta_u must have shape [", s.J,
              "], got ", beta_u.sizes());
  TORCH_CHECK(beta_a.dim() == 1 && beta_a.size(0) == s.J, op, ": beta_a must have shape [", s.J,
              "], got ", beta_a.sizes());
  return s;
}

DType em_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? DType::F64 : DType::F32;
}

em::Problem problem_of(const Shape& s, const at::Tensor& votes, const at::Tensor& a_in, const at::Tensor& beta_u,
                       const at::Tensor& beta_a, int64_t iterations, double final_lambda, double eps) {
  em::Problem p{};
  p.dtype = em_dtype(votes);
  p.iterations = iterations;
  p.final_lambda = final_lambda;
  p.eps = eps;
  p.batch = s.B;
  p.n_in = s.I;
  p.n_out = s.J;
  p.dim = s.H;
  p.votes = votes.data_ptr();
  p.a_in = a_in.data_ptr();
  p.beta_u = beta_u.data_ptr();
  p.beta_a = beta_a.data_ptr();
  return p;
}

// Whether the forward keeps its history for the backward: asked for, and no larger than the votes
// (python/kexue/ops/em_routing.py's fake kernel applies the same rule).
bool keeps_state(const Shape& s, int64_t iterations, bool save_state) {
  return save_state && em::history_scratch(iterations, s.I, s.J, s.H) <= s.I * s.J * s.H;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> em_routing_forward(const at::Tensor& votes,
                                                                  const at::Tensor& a_in,
                                                                  const at::Tensor& beta_u,
                                                                  const at::Tensor& beta_a, int64_t iterations,
                                                                  double final_lambda, double eps, bool save_state) {
  const Shape s = check_inputs(votes, a_in, beta_u, beta_a, iterations, final_lambda, eps, kOp);
  const at::Tensor V = votes.contiguous(), ain = a_in.contiguous(), bu = beta_u.contiguous(),
                   ba = beta_a.contiguous();
  at::Tensor mu = at::empty({s.B, s.J, s.H}, V.options());
  at::Tensor a_out = at::empty({s.B, s.J}, V.options());
  at::Tensor state = keeps_state(s, iterations, save_state)
                         ? at::empty({s.B, em::history_scratch(iterations, s.I, s.J, s.H)}, V.options())
                         : at::empty({0}, V.options());
  if (s.B == 0 || s.J == 0) return {mu, a_out, state.zero_()};  // unread: the backward returns zeros
  em::Args a{};
  static_cast<em::Problem&>(a) = problem_of(s, V, ain, bu, ba, iterations, final_lambda, eps);
  a.mu = mu.data_ptr();
  a.a_out = a_out.data_ptr();
  a.state = state.numel() ? state.data_ptr() : nullptr;
#ifdef KX_GPU_LAUNCHERS
  if (gpu_launchers(V)) {
    LaunchScope launch(V);
    at::Tensor ws;
    a.workspace = scratch(ws, cuda::em_routing_forward_workspace(a), V);
    check_cuda_launch(cuda::em_routing_forward(a, launch.stream()), kOp);
    return {mu, a_out, state};
  }
#endif
  cpu::em_routing_forward(a);
  return {mu, a_out, state};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> em_routing_backward(
    const at::Tensor& grad_mu, const at::Tensor& grad_a, const at::Tensor& votes,
    const at::Tensor& a_in, const at::Tensor& beta_u, const at::Tensor& beta_a, int64_t iterations,
    double final_lambda, double eps, const std::optional<at::Tensor>& state) {
  constexpr const char* op = "kexue.em_routing_backward";
  const Shape s = check_inputs(votes, a_in, beta_u, beta_a, iterations, final_lambda, eps, op);
  if (state.has_value()) check_like(votes, "votes", *state, op, "state");
  const bool given = state.has_value() && state->numel() > 0;  // empty: the forward kept none
  if (given) {
    const int64_t size = em::history_scratch(iterations, s.I, s.J, s.H);
    TORCH_CHECK(state->dim() == 2 && state->size(0) == s.B && state->size(1) == size, op,
                ": state must be the forward's [", s.B, ", ", size, "] tensor, got ", state->sizes());
  }
  check_like(votes, "votes", grad_mu, op, "grad_mu");
  check_like(votes, "votes", grad_a, op, "grad_a");
  TORCH_CHECK(grad_mu.dim() == 3 && grad_mu.size(0) == s.B && grad_mu.size(1) == s.J &&
                  grad_mu.size(2) == s.H,
              op, ": grad_mu must have shape [", s.B, ", ", s.J, ", ", s.H, "], got ",
              grad_mu.sizes());
  TORCH_CHECK(grad_a.dim() == 2 && grad_a.size(0) == s.B && grad_a.size(1) == s.J, op,
              ": grad_a must have shape [", s.B, ", ", s.J, "], got ", grad_a.sizes());
  const at::Tensor V = votes.contiguous(), ain = a_in.contiguous(), bu = beta_u.contiguous(),
                   ba = beta_a.contiguous(), gmu = grad_mu.contiguous(), ga = grad_a.contiguous();
  const at::Tensor st = given ? state->contiguous() : at::Tensor();
  at::Tensor gV = empty_output(V), gain = empty_output(ain);
  at::Tensor gbu_b = at::empty({s.B, s.J}, V.options()), gba_b = at::empty({s.B, s.J}, V.options());
  if (s.B == 0 || s.J == 0) {
    gV.zero_();
    gain.zero_();
    return {gV, gain, zeros_output(bu), zeros_output(ba)};
  }
  em::GradArgs a{};
  static_cast<em::Problem&>(a) = problem_of(s, V, ain, bu, ba, iterations, final_lambda, eps);
  a.grad_mu = gmu.data_ptr();
  a.grad_a = ga.data_ptr();
  a.grad_votes = gV.data_ptr();
  a.grad_a_in = gain.data_ptr();
  a.grad_beta_u = gbu_b.data_ptr();
  a.grad_beta_a = gba_b.data_ptr();
  a.state = given ? st.data_ptr() : nullptr;
#ifdef KX_GPU_LAUNCHERS
  if (gpu_launchers(V)) {
    LaunchScope launch(V);
    at::Tensor ws;
    a.workspace = scratch(ws, cuda::em_routing_backward_workspace(a), V);
    check_cuda_launch(cuda::em_routing_backward(a, launch.stream()), op);
    return {gV, gain, gbu_b.sum(0), gba_b.sum(0)};
  }
#endif
  cpu::em_routing_backward(a);
  // per-sample beta gradients summed over the batch in a fixed order (no atomics)
  return {gV, gain, gbu_b.sum(0), gba_b.sum(0)};
}

using ForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                  const at::Tensor&, const at::Tensor&,
                                                                  int64_t, double, double, bool);
using BackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, int64_t, double, double, const std::optional<at::Tensor>&);

class EmRoutingFunction : public torch::autograd::Function<EmRoutingFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& votes,
                               const at::Tensor& a_in, const at::Tensor& beta_u,
                               const at::Tensor& beta_a, int64_t iterations, double final_lambda,
                               double eps, bool save_state) {
    at::AutoDispatchBelowADInplaceOrView below;
    static auto op = kexue_op<ForwardSig>("kexue::em_routing");
    auto [mu, a_out, state] = op.call(votes, a_in, beta_u, beta_a, iterations, final_lambda, eps, save_state);
    ctx->save_for_backward({votes, a_in, beta_u, beta_a, state});
    ctx->saved_data["iterations"] = iterations;
    ctx->saved_data["final_lambda"] = final_lambda;
    ctx->saved_data["eps"] = eps;
    ctx->mark_non_differentiable({state});  // for the backward only
    return {mu, a_out, state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &votes = saved[0], &a_in = saved[1], &beta_u = saved[2], &beta_a = saved[3];
    if (!grads[0].defined() && !grads[1].defined())
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
              at::Tensor(), at::Tensor()};
    const int64_t B = votes.size(0), J = votes.size(2), H = votes.size(3);
    const at::Tensor gmu = grads[0].defined() ? grads[0] : at::zeros({B, J, H}, votes.options());
    const at::Tensor ga = grads[1].defined() ? grads[1] : at::zeros({B, J}, votes.options());
    static auto op = kexue_op<BackwardSig>("kexue::em_routing_backward");
    const std::optional<at::Tensor> state = saved[4];  // empty when the forward kept none (its size may be symbolic)
    auto [gV, gain, gbu, gba] =
        op.call(gmu, ga, votes, a_in, beta_u, beta_a, ctx->saved_data["iterations"].toInt(),
                ctx->saved_data["final_lambda"].toDouble(), ctx->saved_data["eps"].toDouble(), state);
    return {gV, gain, gbu, gba, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> em_routing_autograd(const at::Tensor& votes,
                                                                   const at::Tensor& a_in,
                                                                   const at::Tensor& beta_u,
                                                                   const at::Tensor& beta_a, int64_t iterations,
                                                                   double final_lambda, double eps,
                                                                   bool save_state) {
  auto out = EmRoutingFunction::apply(votes, a_in, beta_u, beta_a, iterations, final_lambda, eps, save_state);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(kexue, Autograd, m) { m.impl("em_routing", &em_routing_autograd); }

TORCH_LIBRARY_IMPL(kexue, CPU, m) {
  m.impl("em_routing", &em_routing_forward);
  m.impl("em_routing_backward", &em_routing_backward);
}
#ifdef KEXUE_WITH_CUDA
TORCH_LIBRARY_IMPL(kexue, CUDA, m) {
  m.impl("em_routing", &em_routing_forward);
  m.impl("em_routing_backward", &em_routing_backward);
}
#endif

}  // namespace ops
}  // namespace kx
