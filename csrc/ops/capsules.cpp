// Glue for kexue::dynamic_routing and kexue::dynamic_routing_backward: argument checks, layout,
// routing to the CPU or CUDA launcher, and the C++ autograd kernel (see ops/autograd.h).
// The backward recomputes the forward (keeping only the [R, N_in, N_out] couplings/logit
// gradients and the [R, N_out, D] capsule states per sample), so nothing is saved but u_hat.
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

std::tuple<at::Tensor, at::Tensor> dynamic_routing_forward(const at::Tensor& u_hat,
                                                           int64_t iterations,
                                                           c10::string_view squash,
                                                           bool detach_routing) {
  (void)detach_routing;  // only changes the gradient
  const caps::Squash sq = parse_squash(squash, kOp);
  check_u_hat(u_hat, iterations, kOp);
  const at::Tensor u = u_hat.contiguous();
  const int64_t B = u.size(0), n_in = u.size(1), n_out = u.size(2), D = u.size(3);
  at::Tensor v = at::empty({B, n_out, D}, u.options());
  at::Tensor c = at::empty({B, n_in, n_out}, u.options());
  if (u.numel() == 0) {  // no predictions: s = 0, so v = 0; c = softmax(0) is uniform
    v.zero_();
    if (n_out > 0) c.fill_(1.0 / static_cast<double>(n_out));
    return {v, c};
  }

  caps::Args a{};
  static_cast<caps::Problem&>(a) = problem_of(u, sq, iterations, kOp);
  a.v = v.data_ptr();
  a.c = c.data_ptr();
#ifdef KX_GPU_LAUNCHERS
  if (gpu_launchers(u)) {
    LaunchScope launch(u);
    at::Tensor ws;
    a.workspace = scratch(ws, cuda::dynamic_routing_forward_workspace(a), u);
    check_cuda_launch(cuda::dynamic_routing_forward(a, launch.stream()), kOp);
    return {v, c};
  }
#endif
  cpu::dynamic_routing_forward(a);
  return {v, c};
}

at::Tensor dynamic_routing_backward(const at::Tensor& grad_v, const at::Tensor& u_hat,
                                    int64_t iterations, c10::string_view squash,
                                    bool detach_routing) {
  constexpr const char* op = "kexue.dynamic_routing_backward";
  const caps::Squash sq = parse_squash(squash, op);
  check_u_hat(u_hat, iterations, op);
  check_like(u_hat, "u_hat", grad_v, op, "grad_v");
  const int64_t B = u_hat.size(0), n_in = u_hat.size(1), n_out = u_hat.size(2), D = u_hat.size(3);
  TORCH_CHECK(grad_v.dim() == 3 && grad_v.size(0) == B && grad_v.size(1) == n_out &&
                  grad_v.size(2) == D,
              op, ": grad_v must have shape [", B, ", ", n_out, ", ", D, "], got ", grad_v.sizes());
  const at::Tensor u = u_hat.contiguous();
  const at::Tensor g = grad_v.contiguous();
  at::Tensor gu = empty_output(u);
  if (u.numel() == 0) return gu.zero_();

  caps::GradArgs a{};
  static_cast<caps::Problem&>(a) = problem_of(u, sq, iterations, op);
  a.detach_routing = detach_routing;
  a.grad_v = g.data_ptr();
  a.grad_u = gu.data_ptr();
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

using ForwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, c10::string_view,
                                                      bool);
using BackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, c10::string_view,
                               bool);

class DynamicRoutingFunction : public torch::autograd::Function<DynamicRoutingFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& u_hat, int64_t iterations,
                               const std::string& squash, bool detach_routing) {
    at::AutoDispatchBelowADInplaceOrView below;
    static auto op = kexue_op<ForwardSig>("kexue::dynamic_routing");
    auto [v, c] = op.call(u_hat, iterations, squash, detach_routing);
    ctx->save_for_backward({u_hat});
    ctx->saved_data["iterations"] = iterations;
    ctx->saved_data["squash"] = squash;
    ctx->saved_data["detach_routing"] = detach_routing;
    ctx->mark_non_differentiable({c});  // the couplings are an output for inspection only
    return {v, c};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& u_hat = saved[0];
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    static auto op = kexue_op<BackwardSig>("kexue::dynamic_routing_backward");
    at::Tensor gu = op.call(grads[0], u_hat, ctx->saved_data["iterations"].toInt(),
                            ctx->saved_data["squash"].toStringRef(),
                            ctx->saved_data["detach_routing"].toBool());
    return {gu, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> dynamic_routing_autograd(const at::Tensor& u_hat,
                                                            int64_t iterations,
                                                            c10::string_view squash,
                                                            bool detach_routing) {
  auto out = DynamicRoutingFunction::apply(u_hat, iterations,
                                           std::string(squash.data(), squash.size()),
                                           detach_routing);
  return {out[0], out[1]};
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
