// Glue for the spectral-normalisation ops: kexue::spectral_norm_power_iteration(_grouped) (u, v
// updated in place), kexue::spectral_normalize_weight and its backward. Argument checks, layout,
// routing to the CPU or CUDA launcher, and the autograd kernels.
#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <utility>
#include <string>
#include <vector>

#include "cpu/kernels.h"
#include "ops/autograd.h"
#include "ops/common.h"

namespace kx {
namespace ops {
namespace {

constexpr const char* kPowerOp = "kexue.spectral_norm_power_iteration";
constexpr const char* kGroupedOp = "kexue.spectral_norm_power_iteration_grouped";
constexpr const char* kNormOp = "kexue.spectral_normalize_weight";
constexpr const char* kNormBwdOp = "kexue.spectral_normalize_weight_backward";

// Whether a and b may share memory: ATen's exact answer where it has one, else (strided views
// it cannot judge) whether their address ranges intersect.
bool overlaps(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  const auto s = at::get_overlap_status(a, b);
  if (s != at::MemOverlapStatus::TooHard) return s != at::MemOverlapStatus::No;
  auto range = [](const at::Tensor& t) {
    int64_t span = 1;
    for (int64_t d = 0; d < t.dim(); ++d) span += (t.size(d) - 1) * std::abs(t.stride(d));
    const char* p = static_cast<const char*>(t.const_data_ptr());
    return std::make_pair(p, p + span * static_cast<int64_t>(t.element_size()));
  };
  const auto ra = range(a), rb = range(b);
  return ra.first < rb.second && rb.first < ra.second;
}

// W [out, in], u [out], v [in], all of one float dtype on one device. `idx` >= 0 names list items.
void check_triplet(const at::Tensor& W, const at::Tensor& u, const at::Tensor& v, const char* op,
                   int64_t idx = -1) {
  const std::string sfx = idx >= 0 ? "[" + std::to_string(idx) + "]" : "";
  const std::string Wn = (idx >= 0 ? "Ws" : "W") + sfx, un = (idx >= 0 ? "us" : "u") + sfx,
                    vn = (idx >= 0 ? "vs" : "v") + sfx;
  check_device_supported(W, op);
  kx_dtype(W, op, Wn.c_str());
  TORCH_CHECK(W.dim() == 2, op, ": ", Wn, " must be a 2-D matrix [out, in], got shape ",
              W.sizes());
  check_like(W, Wn.c_str(), u, op, un.c_str());
  check_like(W, Wn.c_str(), v, op, vn.c_str());
  TORCH_CHECK(u.dim() == 1 && u.size(0) == W.size(0), op, ": ", un, " must have shape [",
              W.size(0), "] (the rows of ", Wn, " ", W.sizes(), "), got ", u.sizes());
  TORCH_CHECK(v.dim() == 1 && v.size(0) == W.size(1), op, ": ", vn, " must have shape [",
              W.size(1), "] (the columns of ", Wn, " ", W.sizes(), "), got ", v.sizes());
}

// ---- power iteration ------------------------------------------------------------------------

// Runs the power iteration on every (W, u, v), writing sigma[count] (acc dtype). u and v that are
// not contiguous are worked on in contiguous copies and copied back.
void run_power_iteration(at::TensorList Ws, at::TensorList us, at::TensorList vs, int64_t n_iter,
                         double eps, const at::Tensor& sigma, const char* op) {
  const int64_t L = static_cast<int64_t>(Ws.size());
  if (L == 0) return;
  std::vector<at::Tensor> Wc(L), uc(L), vc(L);
  std::vector<sn::Entry> entries(L);
  for (int64_t w = 0; w < L; ++w) {
    Wc[w] = Ws[w].contiguous();
    uc[w] = us[w].contiguous();
    vc[w] = vs[w].contiguous();
    sn::Entry& e = entries[w];
    std::memset(&e, 0, sizeof e);
    e.W = Wc[w].data_ptr();
    e.u = uc[w].data_ptr();
    e.v = vc[w].data_ptr();
    e.rows = Wc[w].size(0);
    e.cols = Wc[w].size(1);
  }
  sn::PowerArgs a{};
  a.dtype = kx_dtype(Ws[0], op, "W");
  a.count = L;
  a.entries = entries.data();
  a.n_iter = n_iter;
  a.eps = eps;
  a.sigma = sigma.data_ptr();
  bool done = false;
#ifdef KX_GPU_LAUNCHERS
  if (gpu_launchers(Ws[0])) {
    LaunchScope launch(Ws[0]);
    const cuda::SnPlan plan = cuda::spectral_norm_plan(entries.data(), L);
    const auto bytes = static_cast<int64_t>(cuda::spectral_norm_workspace(plan, a.dtype));
    at::Tensor ws = at::empty({bytes}, Ws[0].options().dtype(at::kByte));
    a.workspace = bytes ? ws.data_ptr() : nullptr;
    at::Tensor table;
    if (L > 1) {  // device memory for the table of weights; the launcher fills it
      table = at::empty({static_cast<int64_t>(L * sizeof(sn::Entry))}, Ws[0].options().dtype(at::kByte));
      a.device_entries = static_cast<sn::Entry*>(table.data_ptr());
    }
    check_cuda_launch(cuda::spectral_norm_power_iteration(a, plan, launch.stream()), op);
    done = true;
  }
#endif
  if (!done) cpu::spectral_norm_power_iteration(a);
  for (int64_t w = 0; w < L; ++w) {
    if (!uc[w].is_same(us[w])) us[w].copy_(uc[w]);
    if (!vc[w].is_same(vs[w])) vs[w].copy_(vc[w]);
  }
}

void check_iteration_args(int64_t n_iter, double eps, const char* op) {
  TORCH_CHECK(n_iter >= 1, op, ": n_iter must be at least 1, got ", n_iter);
  TORCH_CHECK(n_iter <= sn::kMaxIterations, op, ": n_iter must be at most ", sn::kMaxIterations, ", got ", n_iter);
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and non-negative, got ",
              eps);
}

// u and v are written in place: all of them are checked before the first write.
void check_writable(const at::Tensor& t, const char* op, const std::string& name) {
  TORCH_CHECK(at::has_internal_overlap(t) != at::MemOverlap::Yes, op, ": ", name,
              " is updated in place and must not have internally overlapping memory (e.g. stride 0 from expand)");
}

void check_no_alias(const at::Tensor& W, const at::Tensor& u, const at::Tensor& v, const char* op,
                    const std::string& sfx = "") {
  TORCH_CHECK(!overlaps(u, W) && !overlaps(v, W) && !overlaps(u, v), op, ": u", sfx, " and v",
              sfx, " are updated in place and must not share memory with W", sfx,
              " or with each other");
}

at::Tensor power_iteration(const at::Tensor& W, const at::Tensor& u, const at::Tensor& v,
                           int64_t n_iter, double eps) {
  check_triplet(W, u, v, kPowerOp);
  check_iteration_args(n_iter, eps, kPowerOp);
  check_writable(u, kPowerOp, "u");
  check_writable(v, kPowerOp, "v");
  check_no_alias(W, u, v, kPowerOp);
  at::Tensor sigma = at::empty({}, W.options().dtype(acc_dtype(W.scalar_type())));
  run_power_iteration({W}, {u}, {v}, n_iter, eps, sigma, kPowerOp);
  return sigma;
}

at::Tensor power_iteration_grouped(at::TensorList Ws, at::TensorList us, at::TensorList vs,
                                   int64_t n_iter, double eps) {
  const char* op = kGroupedOp;
  TORCH_CHECK(us.size() == Ws.size() && vs.size() == Ws.size(), op,
              ": Ws, us and vs must have the same length, got ", Ws.size(), ", ", us.size(),
              " and ", vs.size());
  check_iteration_args(n_iter, eps, op);
  const int64_t L = static_cast<int64_t>(Ws.size());
  if (L == 0) return at::empty({0}, at::TensorOptions().dtype(at::kFloat));
  for (int64_t w = 0; w < L; ++w) {
    check_triplet(Ws[w], us[w], vs[w], op, w);
    if (w > 0) {
      const std::string name = "Ws[" + std::to_string(w) + "]";
      check_like(Ws[0], "Ws[0]", Ws[w], op, name.c_str());
    }
    check_writable(us[w], op, "us[" + std::to_string(w) + "]");
    check_writable(vs[w], op, "vs[" + std::to_string(w) + "]");
    check_no_alias(Ws[w], us[w], vs[w], op, "[" + std::to_string(w) + "]");
  }
  for (int64_t a = 0; a < L; ++a)
    for (int64_t b = 0; b < a; ++b)
      TORCH_CHECK(!overlaps(us[a], us[b]) && !overlaps(vs[a], vs[b]) && !overlaps(us[a], vs[b]) &&
                      !overlaps(vs[a], us[b]),
                  op, ": the vectors of weights ", b, " and ", a,
                  " share memory; every u and v is updated in place and must be distinct");
  at::Tensor sigma = at::empty({L}, Ws[0].options().dtype(acc_dtype(Ws[0].scalar_type())));
  run_power_iteration(Ws, us, vs, n_iter, eps, sigma, op);
  return sigma;
}

// The power iteration is not differentiable (like torch's, it runs under no_grad). Its Autograd
// kernel only re-dispatches below autograd; the ADInplaceOrView kernel bumps the version counters
// of the mutated u, v (as torch's own in-place ops do, also inside inference_mode for normal
// tensors), so that autograd notices if they were saved for a backward.
using PowerSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                            double);
using GroupedSig = at::Tensor(at::TensorList, at::TensorList, at::TensorList, int64_t, double);

const c10::TypedOperatorHandle<PowerSig>& power_op() {
  static auto op = kexue_op<PowerSig>("kexue::spectral_norm_power_iteration");
  return op;
}
const c10::TypedOperatorHandle<GroupedSig>& grouped_op() {
  static auto op = kexue_op<GroupedSig>("kexue::spectral_norm_power_iteration_grouped");
  return op;
}

// torch refuses in-place writes into tensors that require grad while grad mode is on; so does the
// power iteration (it is not differentiable: run it under no_grad, as torch's spectral_norm does).
void check_not_recorded(const at::Tensor& t, const char* op, const std::string& name) {
  TORCH_CHECK(!(at::GradMode::is_enabled() && t.requires_grad()), op, ": ", name,
              " requires grad and is updated in place; the power iteration is not differentiable: run it under "
              "torch.no_grad() or pass vectors that do not require grad");
}

at::Tensor power_iteration_autograd(const at::Tensor& W, const at::Tensor& u, const at::Tensor& v,
                                    int64_t n_iter, double eps) {
  check_not_recorded(u, kPowerOp, "u");
  check_not_recorded(v, kPowerOp, "v");
  at::AutoDispatchBelowAutograd below;
  return power_op().call(W, u, v, n_iter, eps);
}

at::Tensor power_iteration_grouped_autograd(at::TensorList Ws, at::TensorList us,
                                            at::TensorList vs, int64_t n_iter, double eps) {
  for (size_t w = 0; w < us.size(); ++w) check_not_recorded(us[w], kGroupedOp, "us[" + std::to_string(w) + "]");
  for (size_t w = 0; w < vs.size(); ++w) check_not_recorded(vs[w], kGroupedOp, "vs[" + std::to_string(w) + "]");
  at::AutoDispatchBelowAutograd below;
  return grouped_op().call(Ws, us, vs, n_iter, eps);
}

at::Tensor power_iteration_inplace_view(const at::Tensor& W, const at::Tensor& u,
                                        const at::Tensor& v, int64_t n_iter, double eps) {
  at::Tensor sigma;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    sigma = power_op().call(W, u, v, n_iter, eps);
  }
  torch::autograd::impl::bump_version(u);
  torch::autograd::impl::bump_version(v);
  return sigma;
}

at::Tensor power_iteration_grouped_inplace_view(at::TensorList Ws, at::TensorList us,
                                                at::TensorList vs, int64_t n_iter, double eps) {
  at::Tensor sigma;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    sigma = grouped_op().call(Ws, us, vs, n_iter, eps);
  }
  for (const auto& t : us) torch::autograd::impl::bump_version(t);
  for (const auto& t : vs) torch::autograd::impl::bump_version(t);
  return sigma;
}

// ---- spectral_normalize_weight -------------------------------------------------------------

void check_coeff(double coeff, const char* op) {
  TORCH_CHECK(std::isfinite(coeff) && coeff > 0, op, ": coeff must be a positive number, got ",
              coeff);
}

std::tuple<at::Tensor, at::Tensor> normalize_weight(const at::Tensor& W, const at::Tensor& u,
                                                    const at::Tensor& v, double coeff, bool exact) {
  check_triplet(W, u, v, kNormOp);
  check_coeff(coeff, kNormOp);
  const at::Tensor Wc = W.contiguous(), uc = u.contiguous(), vc = v.contiguous();
  at::Tensor out = empty_output(Wc);
  at::Tensor sigma = at::empty({}, W.options().dtype(acc_dtype(W.scalar_type())));
  sn::NormalizeArgs a{};
  a.dtype = kx_dtype(W, kNormOp, "W");
  a.rows = Wc.size(0);
  a.cols = Wc.size(1);
  a.W = Wc.data_ptr();
  a.u = uc.data_ptr();
  a.v = vc.data_ptr();
  a.coeff = coeff;
  a.exact = exact;
  a.out = out.data_ptr();
  a.sigma = sigma.data_ptr();
#ifdef KX_GPU_LAUNCHERS
  if (gpu_launchers(W)) {
    LaunchScope launch(W);
    const auto bytes = static_cast<int64_t>(cuda::spectral_normalize_workspace(a));
    at::Tensor ws = at::empty({bytes}, W.options().dtype(at::kByte));
    a.workspace = ws.data_ptr();
    check_cuda_launch(cuda::spectral_normalize_weight(a, launch.stream()), kNormOp);
    return {out, sigma};
  }
#endif
  cpu::spectral_normalize_weight(a);
  return {out, sigma};
}

at::Tensor normalize_weight_backward(const at::Tensor& grad_out, const at::Tensor& grad_sigma,
                                     const at::Tensor& W, const at::Tensor& u, const at::Tensor& v,
                                     double coeff, bool exact) {
  const char* op = kNormBwdOp;
  check_triplet(W, u, v, op);
  check_coeff(coeff, op);
  check_like(W, "W", grad_out, op, "grad_out");
  TORCH_CHECK(grad_out.sizes() == W.sizes(), op, ": grad_out must have the shape of W ",
              W.sizes(), ", got ", grad_out.sizes());
  TORCH_CHECK(grad_sigma.numel() == 1 && grad_sigma.dim() <= 1, op,
              ": grad_sigma must be a scalar (0-d) tensor, got shape ", grad_sigma.sizes());
  check_like(W, "W", grad_sigma, op, "grad_sigma", /*same_dtype=*/false);
  const auto acc = acc_dtype(W.scalar_type());
  const at::Tensor Wc = W.contiguous(), uc = u.contiguous(), vc = v.contiguous();
  const at::Tensor g = grad_out.contiguous();
  const at::Tensor gs = grad_sigma.to(acc).contiguous();
  at::Tensor grad_W = empty_output(Wc);
  sn::NormalizeGradArgs a{};
  a.dtype = kx_dtype(W, op, "W");
  a.rows = Wc.size(0);
  a.cols = Wc.size(1);
  a.grad_out = g.data_ptr();
  a.grad_sigma = gs.data_ptr();
  a.W = Wc.data_ptr();
  a.u = uc.data_ptr();
  a.v = vc.data_ptr();
  a.coeff = coeff;
  a.exact = exact;
  a.grad_W = grad_W.data_ptr();
#ifdef KX_GPU_LAUNCHERS
  if (gpu_launchers(W)) {
    LaunchScope launch(W);
    const auto bytes = static_cast<int64_t>(cuda::spectral_normalize_backward_workspace(a));
    at::Tensor ws = at::empty({bytes}, W.options().dtype(at::kByte));
    a.workspace = ws.data_ptr();
    check_cuda_launch(cuda::spectral_normalize_weight_backward(a, launch.stream()), op);
    return grad_W;
  }
#endif
  cpu::spectral_normalize_weight_backward(a);
  return grad_W;
}

using NormSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                   const at::Tensor&, double, bool);
using NormBwdSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, const at::Tensor&, double, bool);

class SpectralNormalizeFunction : public torch::autograd::Function<SpectralNormalizeFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& W, const at::Tensor& u,
                               const at::Tensor& v, double coeff, bool exact) {
    at::AutoDispatchBelowADInplaceOrView below;
    static auto op = kexue_op<NormSig>("kexue::spectral_normalize_weight");
    auto [out, sigma] = op.call(W, u, v, coeff, exact);
    // u, v are constants of the gradient. Save copies: the next power iteration updates the
    // buffers in place, possibly before this backward runs (a GAN discriminator called on real
    // and fake batches), and must not change this step's gradient.
    if (W.requires_grad())
      ctx->save_for_backward({W, u.clone(), v.clone()});
    ctx->saved_data["coeff"] = coeff;
    ctx->saved_data["exact"] = exact;
    return {out, sigma};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list none(5);
    if (!ctx->needs_input_grad(0)) return none;
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &W = saved[0], &u = saved[1], &v = saved[2];
    const at::Tensor g = grads[0].defined() ? grads[0] : zeros_output(W);
    const at::Tensor gs = grads[1].defined()
                              ? grads[1]
                              : at::zeros({}, W.options().dtype(acc_dtype(W.scalar_type())));
    static auto op = kexue_op<NormBwdSig>("kexue::spectral_normalize_weight_backward");
    none[0] = op.call(g, gs, W, u, v, ctx->saved_data["coeff"].toDouble(),
                      ctx->saved_data["exact"].toBool());
    return none;
  }
};

std::tuple<at::Tensor, at::Tensor> normalize_weight_autograd(const at::Tensor& W,
                                                             const at::Tensor& u,
                                                             const at::Tensor& v, double coeff,
                                                             bool exact) {
  auto out = SpectralNormalizeFunction::apply(W, u, v, coeff, exact);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(kexue, Autograd, m) {
  m.impl("spectral_norm_power_iteration", &power_iteration_autograd);
  m.impl("spectral_norm_power_iteration_grouped", &power_iteration_grouped_autograd);
  m.impl("spectral_normalize_weight", &normalize_weight_autograd);
}

TORCH_LIBRARY_IMPL(kexue, ADInplaceOrView, m) {
  m.impl("spectral_norm_power_iteration", &power_iteration_inplace_view);
  m.impl("spectral_norm_power_iteration_grouped", &power_iteration_grouped_inplace_view);
}

TORCH_LIBRARY_IMPL(kexue, CPU, m) {
  m.impl("spectral_norm_power_iteration", &power_iteration);
  m.impl("spectral_norm_power_iteration_grouped", &power_iteration_grouped);
  m.impl("spectral_normalize_weight", &normalize_weight);
  m.impl("spectral_normalize_weight_backward", &normalize_weight_backward);
}
#ifdef KEXUE_WITH_CUDA
TORCH_LIBRARY_IMPL(kexue, CUDA, m) {
  m.impl("spectral_norm_power_iteration", &power_iteration);
  m.impl("spectral_norm_power_iteration_grouped", &power_iteration_grouped);
  m.impl("spectral_normalize_weight", &normalize_weight);
  m.impl("spectral_normalize_weight_backward", &normalize_weight_backward);
}
#endif

}  // namespace ops
}  // namespace kx
