// Glue for kexue::coupling and kexue::coupling_backward: argument checks, layout, routing to
// the CPU or CUDA launcher.
#include <torch/library.h>

#include <cmath>

#include "cpu/kernels.h"
#include "ops/autograd.h"
#include "ops/common.h"

namespace kx {
namespace ops {
namespace {

constexpr const char* kOp = "kexue.coupling";

coupling::Scale parse_scale(c10::string_view name) {
  if (name == "exp") return coupling::Scale::Exp;
  if (name == "sigmoid") return coupling::Scale::Sigmoid;
  if (name == "tanh") return coupling::Scale::Tanh;
  if (name == "none") return coupling::Scale::None;
  TORCH_CHECK(false, kOp, ": scale must be one of 'exp', 'sigmoid', 'tanh', 'none', got '",
              std::string(name.data(), name.size()), "'");
  return coupling::Scale::None;
}

// Everything forward and backward share: validated, contiguous operands and their geometry.
struct Operands {
  coupling::Scale scale;
  at::Tensor x, s, t, mask;  // s, t, mask undefined when absent
  bool mask_per_batch = false;
  int64_t batch = 0, numel_per_sample = 0;
};

Operands prepare(const at::Tensor& x, const std::optional<at::Tensor>& s,
                 const std::optional<at::Tensor>& t, const std::optional<at::Tensor>& mask,
                 c10::string_view scale, double clamp) {
  Operands o;
  o.scale = parse_scale(scale);
  check_device_supported(x, kOp);
  kx_dtype(x, kOp, "x");
  TORCH_CHECK(x.dim() >= 1, kOp, ": x must have a batch dimension, got a 0-d tensor");
  TORCH_CHECK(std::isfinite(clamp), kOp, ": clamp must be finite, got ", clamp);
  if (o.scale == coupling::Scale::Tanh)
    TORCH_CHECK(std::isfinite(clamp) && clamp > 0, kOp, ": clamp must be positive and finite for scale='tanh', got ",
                clamp);
  if (o.scale == coupling::Scale::None) {
    TORCH_CHECK(!s.has_value(), kOp, ": scale='none' (additive coupling) takes no s; pass s=None");
  } else {
    TORCH_CHECK(s.has_value(), kOp, ": scale='", std::string(scale.data(), scale.size()),
                "' needs s; only scale='none' runs without it");
  }
  auto operand = [&](const std::optional<at::Tensor>& v, const char* name) {
    if (!v.has_value()) return at::Tensor();
    check_like(x, "x", *v, kOp, name);
    TORCH_CHECK(v->sizes() == x.sizes(), kOp, ": ", name, " must have the shape of x ",
                x.sizes(), ", got ", v->sizes());
    return v->contiguous();
  };
  o.x = x.contiguous();
  o.s = operand(s, "s");
  o.t = operand(t, "t");
  o.batch = x.size(0);
  o.numel_per_sample = 1;
  for (int64_t d = 1; d < x.dim(); ++d) o.numel_per_sample *= x.size(d);
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK(m.device() == x.device(), kOp, ": mask must be on ", x.device(), " like x, got ",
                m.device());
    TORCH_CHECK(m.dim() <= x.dim(), kOp, ": mask ", m.sizes(),
                " has more dimensions than x ", x.sizes());
    for (int64_t d = 0; d < m.dim(); ++d) {
      const int64_t md = m.size(m.dim() - 1 - d), xd = x.size(x.dim() - 1 - d);
      TORCH_CHECK(md == 1 || md == xd, kOp, ": mask ", m.sizes(), " does not broadcast to x ",
                  x.sizes());
    }
    // A mask shared by all samples is stored once ([1, ...]); a per-sample mask in full.
    o.mask_per_batch = m.dim() == x.dim() && m.size(0) != 1;
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    if (!o.mask_per_batch) shape[0] = 1;
    o.mask = m.ne(0).expand(shape).to(at::kByte).contiguous();
  }
  return o;
}

std::tuple<at::Tensor, at::Tensor> coupling_forward(const at::Tensor& x,
                                                    const std::optional<at::Tensor>& s,
                                                    const std::optional<at::Tensor>& t,
                                                    const std::optional<at::Tensor>& mask,
                                                    c10::string_view scale, bool reverse,
                                                    double clamp) {
  Operands o = prepare(x, s, t, mask, scale, clamp);
  at::Tensor y = empty_output(o.x);
  at::Tensor logdet = at::empty({o.batch}, x.options().dtype(acc_dtype(x.scalar_type())));
  if (o.batch == 0) return {y, logdet};

  coupling::Args a{};
  a.dtype = kx_dtype(x, kOp, "x");
  a.scale = o.scale;
  a.reverse = reverse;
  a.clamp = clamp;
  a.batch = o.batch;
  a.numel_per_sample = o.numel_per_sample;
  a.x = o.x.data_ptr();
  a.s = o.s.defined() ? o.s.data_ptr() : nullptr;
  a.t = o.t.defined() ? o.t.data_ptr() : nullptr;
  a.mask = o.mask.defined() ? o.mask.data_ptr<uint8_t>() : nullptr;
  a.mask_per_batch = o.mask_per_batch;
  a.out = y.data_ptr();
  a.logdet = logdet.data_ptr();
#ifdef KX_GPU_LAUNCHERS
  if (gpu_launchers(x)) {
    LaunchScope launch(x);
    at::Tensor ws;
    a.workspace = scratch(ws, cuda::coupling_forward_workspace(a), x);
    check_cuda_launch(cuda::coupling_forward(a, launch.stream()), kOp);
    return {y, logdet};
  }
#endif
  cpu::coupling_forward(a);
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> coupling_backward(
    const at::Tensor& grad_out, const at::Tensor& grad_logdet, const at::Tensor& x,
    const std::optional<at::Tensor>& s, const std::optional<at::Tensor>& t,
    const std::optional<at::Tensor>& mask, c10::string_view scale, bool reverse, double clamp,
    std::array<bool, 3> output_mask) {
  constexpr const char* op = "kexue.coupling_backward";
  Operands o = prepare(x, s, t, mask, scale, clamp);
  check_like(x, "x", grad_out, op, "grad_out");
  TORCH_CHECK(grad_out.sizes() == x.sizes(), op, ": grad_out must have the shape of x ", x.sizes(),
              ", got ", grad_out.sizes());
  TORCH_CHECK(grad_logdet.dim() == 1 && grad_logdet.size(0) == o.batch, op,
              ": grad_logdet must have shape [", o.batch, "], got ", grad_logdet.sizes());
  TORCH_CHECK(grad_logdet.device() == x.device(), op, ": grad_logdet must be on ", x.device());
  const at::Tensor g = grad_out.contiguous();
  const at::Tensor gl = grad_logdet.to(acc_dtype(x.scalar_type())).contiguous();
  auto maybe = [&](bool want) { return want ? empty_output(o.x) : at::empty({0}, x.options()); };
  at::Tensor gx = maybe(output_mask[0]);
  at::Tensor gs = maybe(output_mask[1] && o.s.defined());
  at::Tensor gt = maybe(output_mask[2] && o.t.defined());
  if (o.batch == 0 || o.numel_per_sample == 0) return {gx, gs, gt};

  coupling::GradArgs a{};
  a.dtype = kx_dtype(x, op, "x");
  a.scale = o.scale;
  a.reverse = reverse;
  a.clamp = clamp;
  a.batch = o.batch;
  a.numel_per_sample = o.numel_per_sample;
  a.grad_out = g.data_ptr();
  a.grad_logdet = gl.data_ptr();
  a.x = o.x.data_ptr();
  a.s = o.s.defined() ? o.s.data_ptr() : nullptr;
  a.t = o.t.defined() ? o.t.data_ptr() : nullptr;
  a.mask = o.mask.defined() ? o.mask.data_ptr<uint8_t>() : nullptr;
  a.mask_per_batch = o.mask_per_batch;
  a.grad_x = gx.numel() ? gx.data_ptr() : nullptr;
  a.grad_s = gs.numel() ? gs.data_ptr() : nullptr;
  a.grad_t = gt.numel() ? gt.data_ptr() : nullptr;
#ifdef KX_GPU_LAUNCHERS
  if (gpu_launchers(x)) {
    LaunchScope launch(x);
    check_cuda_launch(cuda::coupling_backward(a, launch.stream()), op);
    return {gx, gs, gt};
  }
#endif
  cpu::coupling_backward(a);
  return {gx, gs, gt};
}

using ForwardSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, c10::string_view, bool, double);
using BackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, c10::string_view, bool,
    double, std::array<bool, 3>);

class CouplingFunction : public torch::autograd::Function<CouplingFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const std::optional<at::Tensor>& s,
                               const std::optional<at::Tensor>& t,
                               const std::optional<at::Tensor>& mask, const std::string& scale,
                               bool reverse, double clamp) {
    at::AutoDispatchBelowADInplaceOrView below;
    static auto op = kexue_op<ForwardSig>("kexue::coupling");
    auto [y, logdet] = op.call(x, s, t, mask, scale, reverse, clamp);
    ctx->save_for_backward(
        {x, value_or_undefined(s), value_or_undefined(t), value_or_undefined(mask)});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["clamp"] = clamp;
    return {y, logdet};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &s = saved[1], &t = saved[2], &mask = saved[3];
    // An output nobody used arrives undefined: its gradient is zero.
    const at::Tensor gy = grads[0].defined() ? grads[0] : zeros_output(x);
    const at::Tensor gl = grads[1].defined()
                              ? grads[1]
                              : at::zeros({x.size(0)}, x.options().dtype(acc_dtype(x.scalar_type())));
    // Absent optional inputs get no autograd edge, so edge indices skip them.
    const size_t s_edge = 1, t_edge = s.defined() ? 2 : 1;
    const std::array<bool, 3> want = {ctx->needs_input_grad(0),
                                      s.defined() && ctx->needs_input_grad(s_edge),
                                      t.defined() && ctx->needs_input_grad(t_edge)};
    static auto op = kexue_op<BackwardSig>("kexue::coupling_backward");
    auto [gx, gs, gt] = op.call(gy, gl, x, optional_of(s), optional_of(t), optional_of(mask),
                                ctx->saved_data["scale"].toStringRef(),
                                ctx->saved_data["reverse"].toBool(),
                                ctx->saved_data["clamp"].toDouble(), want);
    return {want[0] ? gx : at::Tensor(), want[1] ? gs : at::Tensor(),
            want[2] ? gt : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> coupling_autograd(const at::Tensor& x,
                                                     const std::optional<at::Tensor>& s,
                                                     const std::optional<at::Tensor>& t,
                                                     const std::optional<at::Tensor>& mask,
                                                     c10::string_view scale, bool reverse,
                                                     double clamp) {
  auto out = CouplingFunction::apply(x, s, t, mask, std::string(scale.data(), scale.size()),
                                     reverse, clamp);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(kexue, Autograd, m) { m.impl("coupling", &coupling_autograd); }

TORCH_LIBRARY_IMPL(kexue, CPU, m) {
  m.impl("coupling", &coupling_forward);
  m.impl("coupling_backward", &coupling_backward);
}
#ifdef KEXUE_WITH_CUDA
TORCH_LIBRARY_IMPL(kexue, CUDA, m) {
  m.impl("coupling", &coupling_forward);
  m.impl("coupling_backward", &coupling_backward);
}
#endif

}  // namespace ops
}  // namespace kx
