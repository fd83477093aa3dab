// Glue for kexue::actnorm and kexue::actnorm_backward.
#include <torch/library.h>

#include "cpu/kernels.h"
#include "ops/autograd.h"
#include "ops/common.h"

namespace kx {
namespace ops {
namespace {

constexpr const char* kOp = "kexue.actnorm";

struct Geometry {
  int64_t batch, channels, spatial;
};

Geometry check_inputs(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& log_scale,
                      const char* op) {
  check_device_supported(x, op);
  kx_dtype(x, op, "x");
  TORCH_CHECK(x.dim() >= 2, op, ": x must be [batch, channels, ...], got shape ", x.sizes());
  const int64_t C = x.size(1);
  for (auto [p, name] : {std::pair<const at::Tensor&, const char*>{bias, "bias"},
                         std::pair<const at::Tensor&, const char*>{log_scale, "log_scale"}}) {
    check_like(x, "x", p, op, name, /*same_dtype=*/false);
    kx_dtype(p, op, name);
    TORCH_CHECK(p.dim() == 1 && p.size(0) == C, op, ": ", name, " must have shape [", C,
                "] (the channels of x), got ", p.sizes());
  }
  Geometry g{x.size(0), C, 1};
  for (int64_t d = 2; d < x.dim(); ++d) g.spatial *= x.size(d);
  return g;
}

std::tuple<at::Tensor, at::Tensor> actnorm_forward(const at::Tensor& x, const at::Tensor& bias,
                                                   const at::Tensor& log_scale, bool reverse) {
  const Geometry geo = check_inputs(x, bias, log_scale, kOp);
  const auto acc = acc_dtype(x.scalar_type());
  const at::Tensor xc = x.contiguous();
  const at::Tensor b = bias.to(acc).contiguous(), ls = log_scale.to(acc).contiguous();
  at::Tensor y = empty_output(xc);
  at::Tensor logdet = at::empty({geo.batch}, x.options().dtype(acc));
  if (geo.batch == 0) return {y, logdet};
  actnorm::Args a{};
  a.dtype = kx_dtype(x, kOp, "x");
  a.reverse = reverse;
  a.batch = geo.batch;
  a.channels = geo.channels;
  a.spatial = geo.spatial;
  a.x = xc.data_ptr();
  a.bias = b.data_ptr();
  a.log_s = ls.data_ptr();
  a.out = y.data_ptr();
  a.logdet = logdet.data_ptr();
#ifdef KX_GPU_LAUNCHERS
  if (gpu_launchers(x)) {
    LaunchScope launch(x);
    check_cuda_launch(cuda::actnorm_forward(a, launch.stream()), kOp);
    return {y, logdet};
  }
#endif
  cpu::actnorm_forward(a);
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> actnorm_backward(
    const at::Tensor& grad_out, const at::Tensor& grad_logdet, const at::Tensor& x,
    const at::Tensor& bias, const at::Tensor& log_scale, bool reverse,
    std::array<bool, 3> output_mask) {
  constexpr const char* op = "kexue.actnorm_backward";
  const Geometry geo = check_inputs(x, bias, log_scale, op);
  check_like(x, "x", grad_out, op, "grad_out");
  TORCH_CHECK(grad_out.sizes() == x.sizes(), op, ": grad_out must have the shape of x ",
              x.sizes(), ", got ", grad_out.sizes());
  TORCH_CHECK(grad_logdet.dim() == 1 && grad_logdet.size(0) == geo.batch, op,
              ": grad_logdet must have shape [", geo.batch, "], got ", grad_logdet.sizes());
  TORCH_CHECK(grad_logdet.device() == x.device(), op, ": grad_logdet must be on ", x.device());
  const auto acc = acc_dtype(x.scalar_type());
  const at::Tensor xc = x.contiguous(), g = grad_out.contiguous();
  const at::Tensor gl = grad_logdet.to(acc).contiguous();
  const at::Tensor b = bias.to(acc).contiguous(), ls = log_scale.to(acc).contiguous();
  // The per-channel sums are one pass whether or not both are wanted; unwanted ones are empty.
  at::Tensor gx = output_mask[0] ? empty_output(xc) : at::empty({0}, x.options());
  at::Tensor gb = at::empty({geo.channels}, b.options());
  at::Tensor gls = at::empty({geo.channels}, b.options());

  actnorm::GradArgs a{};
  a.dtype = kx_dtype(x, op, "x");
  a.reverse = reverse;
  a.batch = geo.batch;
  a.channels = geo.channels;
  a.spatial = geo.spatial;
  a.grad_out = g.data_ptr();
  a.grad_logdet = gl.data_ptr();
  a.x = xc.data_ptr();
  a.bias = b.data_ptr();
  a.log_s = ls.data_ptr();
  a.grad_x = gx.numel() ? gx.data_ptr() : nullptr;
  a.grad_bias = gb.data_ptr();
  a.grad_log_s = gls.data_ptr();
#ifdef KX_GPU_LAUNCHERS
  if (gpu_launchers(x)) {
    LaunchScope launch(x);
    at::Tensor ws;
    a.workspace = scratch(ws, cuda::actnorm_backward_workspace(a), x);
    check_cuda_launch(cuda::actnorm_backward(a, launch.stream()), op);
  } else
#endif
  {
    cpu::actnorm_backward(a);
  }
  if (!output_mask[1]) gb = at::empty({0}, b.options());
  if (!output_mask[2]) gls = at::empty({0}, b.options());
  return {gx, gb, gls};
}

using ForwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                      const at::Tensor&, bool);
using BackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    bool, std::array<bool, 3>);

class ActNormFunction : public torch::autograd::Function<ActNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& bias,
                               const at::Tensor& log_scale, bool reverse) {
    at::AutoDispatchBelowADInplaceOrView below;
    static auto op = kexue_op<ForwardSig>("kexue::actnorm");
    auto [y, logdet] = op.call(x, bias, log_scale, reverse);
    ctx->save_for_backward({x, bias, log_scale});
    ctx->saved_data["reverse"] = reverse;
    return {y, logdet};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &bias = saved[1], &log_scale = saved[2];
    const at::Tensor gy = grads[0].defined() ? grads[0] : zeros_output(x);
    const at::Tensor gl = grads[1].defined()
                              ? grads[1]
                              : at::zeros({x.size(0)}, x.options().dtype(acc_dtype(x.scalar_type())));
    const std::array<bool, 3> want = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      ctx->needs_input_grad(2)};
    static auto op = kexue_op<BackwardSig>("kexue::actnorm_backward");
    auto [gx, gb, gls] = op.call(gy, gl, x, bias, log_scale, ctx->saved_data["reverse"].toBool(), want);
    // Parameter gradients come back in the accumulation dtype; hand autograd the parameter's own.
    return {want[0] ? gx : at::Tensor(), want[1] ? gb.to(bias.scalar_type()) : at::Tensor(),
            want[2] ? gls.to(log_scale.scalar_type()) : at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> actnorm_autograd(const at::Tensor& x, const at::Tensor& bias,
                                                    const at::Tensor& log_scale, bool reverse) {
  auto out = ActNormFunction::apply(x, bias, log_scale, reverse);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(kexue, Autograd, m) { m.impl("actnorm", &actnorm_autograd); }

TORCH_LIBRARY_IMPL(kexue, CPU, m) {
  m.impl("actnorm", &actnorm_forward);
  m.impl("actnorm_backward", &actnorm_backward);
}
#ifdef KEXUE_WITH_CUDA
TORCH_LIBRARY_IMPL(kexue, CUDA, m) {
  m.impl("actnorm", &actnorm_forward);
  m.impl("actnorm_backward", &actnorm_backward);
}
#endif

}  // namespace ops
}  // namespace kx
