// Glue for kexue::dynamic_routing and kexue::dynamic_routing_backward: argument checks, layout,
// routing to the CPU or CUDA launcher, and the C++ autograd kernel (see ops/autograd.h).
// The forward keeps its per-iteration state (the [R, N_in, N_out] couplings and the [R, N_out, D]
// s and v per sample) when it is no larger than u_hat, and the backward reads it; otherwise the
// backward recomputes the forward per sample. CPU and CUDA kernels keep the same layout.
#include <torch/library.h>

#include "cpu/kernels.h"
#include "ops/autograd.h"
#include "ops/common.h"

namespace kx {
namespace ops {
namespace {

constexpr const char* kOp = "kexue.dynamic_routing";

caps::Squash parse_squash(c10::string_view name, const char* op) {
  if (name == "sabour") return caps::Squash::Sabour;
  if (name == "post") return caps::Squash::Post;
  TORCH_CHECK(false, op, ": squash must be one of 'sabour', 'post', got '",
              std::string(name.data(), name.size()), "'");
  return caps::Squash::Sabour;
}

void check_u_hat(const at::Tensor& u_hat, int64_t iterations, const char* op) {
  check_device_supported(u_hat, op);
  kx_dtype(u_hat, op, "u_hat");
  TORCH_CHECK(u_hat.dim() == 4, op, ": u_hat must have shape [B, N_in, N_out, D], got ",
              u_hat.dim(), "-d tensor of shape ", u_hat.sizes());
  TORCH_CHECK(iterations >= 1, op, ": iterations must be >= 1, got ", iterations);
  TORCH_CHECK(iterations <= caps::kMaxIterations, op, ": iterations must be at most ", caps::kMaxIterations,
              " (the backward keeps every iteration), got ", iterations);
}

// u: contiguous u_hat [B, N_in, N_out, D], already checked.
caps::Problem problem_of(const at::Tensor& u, caps::Squash squash, int64_t iterations, const char* op) {
  caps::Problem p{};
  p.dtype = kx_dtype(u, op, "u_hat");
  p.squash = squash;
  p.iterations = iterations;
  p.batch = u.size(0);
  p.n_in = u.size(1);
  p.n_out = u.size(2);
  p.dim = u.size(3);
  p.u = u.data_ptr();
  return p;
}

// Whether the forward keeps its per-iteration state for the backward: asked for, and no larger
// than u_hat itself (python/kexue/ops/capsules.py's fake kernel applies the same rule).
bool keeps_state(const at::Tensor& u, int64_t iterations, bool save_state) {
  if (!save_state) return false;
  const int64_t per = caps::state_size(iterations, u.size(1), u.size(2), u.size(3));
  return per * static_cast<int64_t>(c10::elementSize(acc_dtype(u.scalar_type()))) <=
         u.size(1) * u.size(2) * u.size(3) * static_cast<int64_t>(u.element_size());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dynamic_routing_forward(const at::Tensor& u_hat,
                                                                       int64_t iterations,
                                                                       c10::string_view squash,
                                                                       bool detach_routing, bool save_state) {
  (void)detach_routing;  // only changes the gradient
  const caps::Squash sq = parse_squash(squash, kOp);
  check_u_hat(u_hat, iterations, kOp);
  const at::Tensor u = u_hat.contiguous();
  const int64_t B = u.size(0), n_in = u.size(1), n_out = u.size(2), D = u.size(3);
  at::Tensor v = at::empty({B, n_out, D}, u.options());
  at::Tensor c = at::empty({B, n_in, n_out}, u.options());
  const auto acc = u.options().dtype(acc_dtype(u.scalar_type()));
  at::Tensor state = keeps_state(u, iterations, save_state)
                         ? at::empty({B, caps::state_size(iterations, n_in, n_out, D)}, acc)
                         : at::empty({0}, acc);
  if (u.numel() == 0) {  // no predictions: s = 0, so v = 0; c = softmax(0) is uniform
    v.zero_();
    if (n_out > 0) c.fill_(1.0 / static_cast<double>(n_out));
    return {v, c, state.zero_()};  // unread: the backward of an empty u_hat is empty or 0
  }

  caps::Args a{};
  static_cast<caps::Problem&>(a) = problem_of(u, sq, iterations, kOp);
  a.v = v.data_ptr();
  a.c = c.data_ptr();
  a.state = state.numel() ? state.data_ptr() : nullptr;
#ifdef KX_GPU_LAUNCHERS
  if (gpu_launchers(u)) {
    LaunchScope launch(u);
    at::Tensor ws;
    a.workspace = scratch(ws, cuda::dynamic_routing_forward_workspace(a), u);
    check_cuda_launch(cuda::dynamic_routing_forward(a, launch.stream()), kOp);
    return {v, c, state};
  }
#endif
  cpu::dynamic_routing_forward(a);
  return {v, c, state};
}

at::Tensor dynamic_routing_backward(const at::Tensor& grad_v, const at::Tensor& u_hat,
                                    int64_t iterations, c10::string_view squash,
                                    bool detach_routing, const std::optional<at::Tensor>& state) {
  constexpr const char* op = "kexue.dynamic_routing_backward";
  const caps::Squash sq = parse_squash(squash, op);
  check_u_hat(u_hat, iterations, op);
  check_like(u_hat, "u_hat", grad_v, op, "grad_v");
  const int64_t B = u_hat.size(0), n_in = u_hat.size(1), n_out = u_hat.size(2), D = u_hat.size(3);
  TORCH_CHECK(grad_v.dim() == 3 && grad_v.size(0) == B && grad_v.size(1) == n_out &&
                  grad_v.size(2) == D,
              op, ": grad_v must have shape [", B, ", ", n_out, ", ", D, "], got ", grad_v.sizes());
  if (state.has_value()) check_like(u_hat, "u_hat", *state, op, "state", /*same_dtype=*/false);
  const bool given = state.has_value() && state->numel() > 0;  // empty: the forward kept none
  if (given) {
    TORCH_CHECK(state->scalar_type() == acc_dtype(u_hat.scalar_type()) && state->dim() == 2 &&
                    state->size(0) == B && state->size(1) == caps::state_size(iterations, n_in, n_out, D),
                op, ": state must be the forward's [", B, ", ", caps::state_size(iterations, n_in, n_out, D),
                "] ", acc_dtype(u_hat.scalar_type()), " tensor, got ", state->sizes(), " ", state->scalar_type());
  }
  const at::Tensor u = u_hat.contiguous();
  const at::Tensor g = grad_v.contiguous();
  const at::Tensor st = given ? state->contiguous() : at::Tensor();
  at::Tensor gu = empty_output(u);
  if (u.numel() == 0) return gu.zero_();

  caps::GradArgs a{};
  static_cast<caps::Problem&>(a) = problem_of(u, sq, iterations, op);
  a.detach_routing = detach_routing;
  a.grad_v = g.data_ptr();
  a.grad_u = gu.data_ptr();
  a.state = given ? st.data_ptr() : nullptr;
#ifdef KX_GPU_LAUNCHERS
  if (gpu_launchers(u)) {
    LaunchScope launch(u);
    at::Tensor ws;
    a.workspace = scratch(ws, cuda::dynamic_routing_backward_workspace(a), u);
    check_cuda_launch(cuda::dynamic_routing_backward(a, launch.stream()), op);
    return gu;
  }
#endif
  cpu::dynamic_routing_backward(a);
  return gu;
}

using ForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t, c10::string_view,
                                                                  bool, bool);
using BackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, c10::string_view, bool,
                               const std::optional<at::Tensor>&);

class DynamicRoutingFunction : public torch::autograd::Function<DynamicRoutingFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& u_hat, int64_t iterations,
                               const std::string& squash, bool detach_routing, bool save_state) {
    at::AutoDispatchBelowADInplaceOrView below;
    static auto op = kexue_op<ForwardSig>("kexue::dynamic_routing");
    auto [v, c, state] = op.call(u_hat, iterations, squash, detach_routing, save_state);
    ctx->save_for_backward({u_hat, state});
    ctx->saved_data["iterations"] = iterations;
    ctx->saved_data["squash"] = squash;
    ctx->saved_data["detach_routing"] = detach_routing;
    ctx->mark_non_differentiable({c, state});  // couplings for inspection; state for the backward
    return {v, c, state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& u_hat = saved[0];
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    static auto op = kexue_op<BackwardSig>("kexue::dynamic_routing_backward");
    const std::optional<at::Tensor> state = saved[1];  // empty when the forward kept none (its size may be symbolic)
    at::Tensor gu = op.call(grads[0], u_hat, ctx->saved_data["iterations"].toInt(),
                            ctx->saved_data["squash"].toStringRef(),
                            ctx->saved_data["detach_routing"].toBool(), state);
    return {gu, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> dynamic_routing_autograd(const at::Tensor& u_hat,
                                                                        int64_t iterations,
                                                                        c10::string_view squash,
                                                                        bool detach_routing, bool save_state) {
  auto out = DynamicRoutingFunction::apply(u_hat, iterations,
                                           std::string(squash.data(), squash.size()),
                                           detach_routing, save_state);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(kexue, Autograd, m) { m.impl("dynamic_routing", &dynamic_routing_autograd); }

TORCH_LIBRARY_IMPL(kexue, CPU, m) {
  m.impl("dynamic_routing", &dynamic_routing_forward);
  m.impl("dynamic_routing_backward", &dynamic_routing_backward);
}
#ifdef KEXUE_WITH_CUDA
TORCH_LIBRARY_IMPL(kexue, CUDA, m) {
  m.impl("dynamic_routing", &dynamic_routing_forward);
  m.impl("dynamic_routing_backward", &dynamic_routing_backward);
}
#endif

}  // namespace ops
}  // namespace kx
