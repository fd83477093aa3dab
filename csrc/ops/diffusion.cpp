// Glue for the diffusion ops: kexue::q_sample (with autograd), kexue::ddpm_step,
// kexue::ddim_step and kexue::ode_step (their autograd, in x_t, eps and the noise, is registered in
// Python through the references: kexue/ops/diffusion.py).
//
// Per-sample scalars (ᾱ, t) come either as host numbers (a CPU tensor of one element: read here,
// baked into the launch, which is what lets a CUDA graph capture a whole sampling loop with no
// copies) or as tensors [batch] on x's device, read by the kernel.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <string>

#include "cpu/kernels.h"
#include "ops/autograd.h"
#include "ops/common.h"

#ifdef KEXUE_WITH_CUDA
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#endif

namespace kx {
namespace ops {
namespace {

struct Shape {
  int64_t batch, per_sample;
};

Shape check_pair(const at::Tensor& x, const char* x_name, const at::Tensor& y, const char* y_name,
                 const char* op) {
  check_device_supported(x, op);
  kx_dtype(x, op, x_name);
  TORCH_CHECK(x.dim() >= 1, op, ": ", x_name, " must be [batch, ...], got a 0-d tensor");
  check_like(x, x_name, y, op, y_name);
  TORCH_CHECK(y.sizes() == x.sizes(), op, ": ", y_name, " must have the shape of ", x_name, " ",
              x.sizes(), ", got ", y.sizes());
  const int64_t b = x.size(0);
  return {b, b == 0 ? 0 : x.numel() / b};
}

bool host_scalar(const at::Tensor& t) { return t.is_cpu() && t.numel() == 1; }

// ᾱ-like argument: a host number, one element on x's device, or [batch] on x's device.
diff::PerSample per_sample(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name,
                           bool allow_zero, at::Tensor& keep) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be a floating tensor (or a Python float), got ", t.scalar_type());
  const int64_t B = x.size(0);
  diff::PerSample p;
  auto check_value = [&](double v) {
    TORCH_CHECK(v <= 1.0 && (allow_zero ? v >= 0.0 : v > 0.0), op, ": ", name, " must be in ",
                allow_zero ? "[0, 1]" : "(0, 1]", ", got ", v);
  };
  if (host_scalar(t)) {
    p.value = t.item<double>();
    check_value(p.value);
    return p;
  }
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be a Python float, a CPU scalar or a tensor on ",
              x.device(), ", got a tensor on ", t.device());
  TORCH_CHECK(t.numel() == 1 || (t.dim() == 1 && t.size(0) == B), op, ": ", name,
              " must have one value or one per sample (shape [", B, "]), got shape ", t.sizes());
  keep = t.reshape({-1}).to(at::kDouble).contiguous();
  if (keep.is_cpu()) {
    // One loop rather than tensor comparisons: at sampling-loop sizes (a 2-D batch) those small
    // ops cost more than the step. Written as "inside the range", so that NaN is refused too.
    // Branch-free (& rather than &&), one plain comparison per bound: an `== 0` alternative in
    // the lower bound (an unordered compare, its NaN test and a cmov per element) took a quarter
    // of a q_sample of 10000 2-D points. GCC keeps the loop scalar either way. Compared with 0
    // itself, not with a denormal bound: with denormals-are-zero on, that bound would read as 0.
    const double* d = keep.data_ptr<double>();
    const int64_t n = keep.numel();
    auto all_inside = [&](auto above_lower_bound) {
      bool inside = true;
      for (int64_t i = 0; i < n; ++i) inside &= above_lower_bound(d[i]) & (d[i] <= 1.0);
      return inside;
    };
    const bool inside = allow_zero ? all_inside([](double v) { return v >= 0.0; })
                                   : all_inside([](double v) { return v > 0.0; });
    TORCH_CHECK(inside, op, ": ", name, " must be in ", allow_zero ? "[0, 1]" : "(0, 1]", ", got values from ",
                keep.min().item<double>(), " to ", keep.max().item<double>());
  }
  p.ptr = keep.data_ptr();
  p.stride = t.numel() == 1 ? 0 : 1;
  return p;
}

bool capturing(const at::Tensor& x) {
#ifdef KEXUE_WITH_CUDA
  return x.is_cuda() && c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
#else
  (void)x;
  return false;
#endif
}

// The step index of a DDPM step and its schedule.
void ddpm_time(diff::StepArgs& a, const at::Tensor& t, const at::Tensor& schedule, const at::Tensor& x,
               const char* op, at::Tensor& keep_t, at::Tensor& keep_schedule) {
  TORCH_CHECK(!at::isFloatingType(t.scalar_type()) && !at::isComplexType(t.scalar_type()) &&
                  t.scalar_type() != at::kBool,
              op, ": t must hold integer step indices (int64), got ", t.scalar_type());
  TORCH_CHECK(at::isFloatingType(schedule.scalar_type()), op,
              ": alphas_cumprod must be a floating tensor, got ", schedule.scalar_type());
  TORCH_CHECK(schedule.dim() == 1 && schedule.size(0) >= 1, op,
              ": alphas_cumprod must be 1-D [T] with T >= 1, got shape ", schedule.sizes());
  TORCH_CHECK(schedule.device() == x.device(), op, ": alphas_cumprod must be on ", x.device(), " like x_t, got ",
              schedule.device());
  const int64_t T = schedule.size(0), B = x.size(0);
  keep_schedule = schedule.to(at::kDouble).contiguous();
  if (keep_schedule.is_cpu()) {
    const at::Tensor& d = keep_schedule;
    TORCH_CHECK(((d > 0) & (d <= 1)).all().item<bool>(), op,
                ": alphas_cumprod must lie in (0, 1], got values from ", d.min().item<double>(), " to ",
                d.max().item<double>());
  }
  a.schedule = keep_schedule.data_ptr();
  if (host_scalar(t)) {
    a.t_value = t.item<int64_t>();
    TORCH_CHECK(a.t_value >= 0 && a.t_value < T, op, ": t must be in [0, ", T, ") for a schedule of length ", T,
                ", got ", a.t_value);
    return;
  }
  TORCH_CHECK(t.device() == x.device(), op, ": t must be an int, a CPU scalar or a tensor on ", x.device(),
              ", got a tensor on ", t.device());
  TORCH_CHECK(t.numel() == 1 || (t.dim() == 1 && t.size(0) == B), op,
              ": t must have one value or one per sample (shape [", B, "]), got shape ", t.sizes());
  keep_t = t.reshape({-1}).to(at::kLong).contiguous();
  // A device tensor costs a synchronisation to check; inside a graph capture it cannot be checked.
  if (!capturing(x)) {
    TORCH_CHECK(!((keep_t < 0) | (keep_t >= T)).any().item<bool>(), op, ": t must be in [0, ", T,
                ") for a schedule of length ", T, ", got values from ", keep_t.min().item<int64_t>(), " to ",
                keep_t.max().item<int64_t>());
  }
  a.t_ptr = keep_t.data_ptr<int64_t>();
  a.t_stride = t.numel() == 1 ? 0 : 1;
}

// Where the noise comes from: an explicit tensor, or Philox in the kernel seeded from a generator.
void noise_source(diff::StepArgs& a, const at::Tensor& x, const std::optional<at::Tensor>& noise,
                  const std::optional<at::Generator>& gen, const char* op, at::Tensor& keep) {
  if (noise.has_value()) {
    TORCH_CHECK(!gen.has_value(), op, ": pass either noise or generator, not both");
    check_like(x, "x_t", *noise, op, "noise");
    TORCH_CHECK(noise->sizes() == x.sizes(), op, ": noise must have the shape of x_t ", x.sizes(), ", got ",
                noise->sizes());
    keep = noise->contiguous();
    a.noise = keep.data_ptr();
    a.noise_kind = diff::Noise::Tensor;
    return;
  }
  a.noise_kind = diff::Noise::Philox;
#ifdef KEXUE_WITH_CUDA
  if (x.is_cuda()) {
    auto* g = at::get_generator_or_default<at::CUDAGeneratorImpl>(gen, at::cuda::detail::getDefaultCUDAGenerator(
                                                                           x.device().index()));
    std::lock_guard<std::mutex> lock(g->mutex_);
    const at::PhiloxCudaState st = g->philox_cuda_state(4);
    if (st.captured_) {
      a.rng.seed_ptr = st.seed_.ptr;
      a.rng.offset_ptr = st.offset_.ptr;
      a.rng.offset_intragraph = st.offset_intragraph_;
    } else {
      a.rng.seed = st.seed_.val;
      a.rng.offset = st.offset_.val;
    }
    return;
  }
#endif
  auto* g = at::get_generator_or_default<at::CPUGeneratorImpl>(gen, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(g->mutex_);
  a.rng.seed = g->random64();
  a.rng.offset = 0;
}

void check_clip(const std::optional<double>& clip, const char* op) {
  TORCH_CHECK(!clip.has_value() || (std::isfinite(*clip) && *clip > 0.0), op, ": clip_x0 must be positive and finite, got ",
              clip.value_or(0.0));
}

// Output and launch shared by every step op.
std::tuple<at::Tensor, at::Tensor> run_step(diff::StepArgs& a, const at::Tensor& xc, const at::Tensor& ec,
                                            const Shape& shape, const std::optional<double>& clip, bool return_x0,
                                            const char* op) {
  at::Tensor out = empty_output(xc);
  at::Tensor x0 = return_x0 ? empty_output(xc) : at::empty({0}, xc.options());
  a.dtype = kx_dtype(xc, op, "x_t");
  a.batch = shape.batch;
  a.per_sample = shape.per_sample;
  a.x = xc.data_ptr();
  a.eps = ec.data_ptr();
  a.out = out.data_ptr();
  a.x0 = return_x0 ? x0.data_ptr() : nullptr;
  a.clip = clip.has_value();
  a.clip_value = clip.value_or(1.0);
  if (xc.numel() == 0) return {out, x0};
#ifdef KX_GPU_LAUNCHERS
  if (gpu_launchers(xc)) {
    LaunchScope launch(xc);
    at::Tensor coeffs;
    a.coeffs = scratch(coeffs, cuda::diffusion_step_workspace(a), xc);
    check_cuda_launch(cuda::diffusion_step(a, launch.stream()), op);
    return {out, x0};
  }
#endif
  cpu::diffusion_step(a);
  return {out, x0};
}

std::tuple<at::Tensor, at::Tensor> ddpm_step(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& t,
                                             const at::Tensor& alphas_cumprod, const std::optional<at::Tensor>& noise,
                                             const std::optional<at::Generator>& generator,
                                             c10::string_view variance, std::optional<double> clip_x0,
                                             bool return_x0) {
  constexpr const char* op = "kexue.ddpm_step";
  const Shape shape = check_pair(x_t, "x_t", eps, "eps", op);
  check_clip(clip_x0, op);
  diff::StepArgs a{};
  a.rule = diff::Rule::DDPM;
  if (variance == "beta")
    a.variance = diff::Variance::Beta;
  else if (variance == "beta_tilde")
    a.variance = diff::Variance::BetaTilde;
  else
    TORCH_CHECK(false, op, ": variance must be \"beta\" or \"beta_tilde\", got \"", std::string(variance), "\"");
  at::Tensor keep_t, keep_sched, keep_noise;
  ddpm_time(a, t, alphas_cumprod, x_t, op, keep_t, keep_sched);
  noise_source(a, x_t, noise, generator, op, keep_noise);
  return run_step(a, x_t.contiguous(), eps.contiguous(), shape, clip_x0, return_x0, op);
}

std::tuple<at::Tensor, at::Tensor> ddim_step(const at::Tensor& x_t, const at::Tensor& eps,
                                             const at::Tensor& alpha_bar_t, const at::Tensor& alpha_bar_prev,
                                             double eta, const std::optional<at::Tensor>& noise,
                                             const std::optional<at::Generator>& generator,
                                             std::optional<double> clip_x0, bool return_x0) {
  constexpr const char* op = "kexue.ddim_step";
  const Shape shape = check_pair(x_t, "x_t", eps, "eps", op);
  check_clip(clip_x0, op);
  TORCH_CHECK(std::isfinite(eta) && eta >= 0.0, op, ": eta must be >= 0 and finite, got ", eta);
  diff::StepArgs a{};
  a.rule = diff::Rule::DDIM;
  a.eta = eta;
  at::Tensor k1, k2, keep_noise;
  a.abar_t = per_sample(alpha_bar_t, x_t, op, "alpha_bar_t", false, k1);
  a.abar_prev = per_sample(alpha_bar_prev, x_t, op, "alpha_bar_prev", false, k2);
  if (eta > 0.0)
    noise_source(a, x_t, noise, generator, op, keep_noise);
  else
    TORCH_CHECK(!noise.has_value() && !generator.has_value(), op,
                ": eta = 0 is deterministic; noise and generator must be None");
  return run_step(a, x_t.contiguous(), eps.contiguous(), shape, clip_x0, return_x0, op);
}

at::Tensor ode_step(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& alpha_bar_t,
                    const at::Tensor& alpha_bar_next, const std::optional<at::Tensor>& eps_next) {
  constexpr const char* op = "kexue.ode_step";
  const Shape shape = check_pair(x_t, "x_t", eps, "eps", op);
  diff::StepArgs a{};
  a.rule = diff::Rule::DDIM;
  at::Tensor k1, k2, e2;
  a.abar_t = per_sample(alpha_bar_t, x_t, op, "alpha_bar_t", false, k1);
  a.abar_prev = per_sample(alpha_bar_next, x_t, op, "alpha_bar_next", false, k2);
  if (eps_next.has_value()) {
    check_pair(x_t, "x_t", *eps_next, "eps_next", op);
    e2 = eps_next->contiguous();
    a.eps2 = e2.data_ptr();
  }
  return std::get<0>(run_step(a, x_t.contiguous(), eps.contiguous(), shape, std::nullopt, false, op));
}

at::Tensor q_sample(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& alpha_bar) {
  constexpr const char* op = "kexue.q_sample";
  const Shape shape = check_pair(x0, "x0", noise, "noise", op);
  at::Tensor keep;
  diff::QSampleArgs a{};
  a.abar = per_sample(alpha_bar, x0, op, "alpha_bar", true, keep);
  const at::Tensor xc = x0.contiguous(), nc = noise.contiguous();
  at::Tensor out = empty_output(xc);
  a.dtype = kx_dtype(x0, op, "x0");
  a.batch = shape.batch;
  a.per_sample = shape.per_sample;
  a.x0 = xc.data_ptr();
  a.noise = nc.data_ptr();
  a.out = out.data_ptr();
  if (out.numel() == 0) return out;
#ifdef KX_GPU_LAUNCHERS
  if (gpu_launchers(xc)) {
    LaunchScope launch(xc);
    check_cuda_launch(cuda::q_sample(a, launch.stream()), op);
    return out;
  }
#endif
  cpu::q_sample(a);
  return out;
}

// The backward of q_sample is three products and a per-sample sum: plain torch ops (training
// calls it only when x0, the noise or ᾱ itself needs a gradient).
class QSampleFunction : public torch::autograd::Function<QSampleFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x0, const at::Tensor& noise,
                            const at::Tensor& alpha_bar) {
    at::AutoDispatchBelowADInplaceOrView below;
    static auto op = kexue_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>("kexue::q_sample");
    ctx->save_for_backward({x0, noise, alpha_bar});
    return op.call(x0, noise, alpha_bar);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x0 = saved[0], &noise = saved[1], &abar = saved[2];
    const at::Tensor& g = grads[0];
    // ᾱ as a column that broadcasts over each sample's elements (one value or one per sample).
    std::vector<int64_t> col(x0.dim(), 1);
    col[0] = -1;
    const at::Tensor ab = abar.to(g.device()).to(acc_dtype(x0.scalar_type())).reshape(col);
    const at::Tensor sa = ab.sqrt(), ss = (1 - ab).clamp_min(0).sqrt();
    at::Tensor gx0, gn, gab;
    if (ctx->needs_input_grad(0)) gx0 = (g * sa).to(x0.scalar_type());
    if (ctx->needs_input_grad(1)) gn = (g * ss).to(noise.scalar_type());
    if (ctx->needs_input_grad(2)) {
      // d/dᾱ [√ᾱ x0 + √(1−ᾱ) ε] = x0/(2√ᾱ) − ε/(2√(1−ᾱ)), summed over what ᾱ broadcast to.
      at::Tensor d = g * (x0 / (2 * sa) - noise / (2 * ss));
      std::vector<int64_t> dims;
      for (int64_t k = 1; k < x0.dim(); ++k) dims.push_back(k);
      if (!dims.empty()) d = d.sum(dims);
      if (abar.dim() == 0 || abar.sym_size(0) == 1) d = d.sum();
      gab = d.reshape_symint(abar.sym_sizes()).to(abar.scalar_type());
    }
    return {gx0, gn, gab};
  }
};

at::Tensor q_sample_autograd(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& alpha_bar) {
  return QSampleFunction::apply(x0, noise, alpha_bar);
}

}  // namespace

TORCH_LIBRARY_IMPL(kexue, Autograd, m) { m.impl("q_sample", &q_sample_autograd); }

TORCH_LIBRARY_IMPL(kexue, CPU, m) {
  m.impl("q_sample", &q_sample);
  m.impl("ddpm_step", &ddpm_step);
  m.impl("ddim_step", &ddim_step);
  m.impl("ode_step", &ode_step);
}
#ifdef KEXUE_WITH_CUDA
TORCH_LIBRARY_IMPL(kexue, CUDA, m) {
  m.impl("q_sample", &q_sample);
  m.impl("ddpm_step", &ddpm_step);
  m.impl("ddim_step", &ddim_step);
  m.impl("ode_step", &ode_step);
}
#endif

}  // namespace ops
}  // namespace kx
