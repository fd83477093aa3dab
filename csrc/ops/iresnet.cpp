// Glue for the invertible-ResNet log-det ops. Both are built from batched matrix products
// (at::bmm / at::mm: MKL or cuBLAS) arranged to need as few of them as the math allows, plus
// the fused activation-derivative kernel (csrc/kexue/activations.h); no Python loop anywhere.
#include <torch/library.h>

#include <vector>

#include "cpu/kernels.h"
#include "ops/autograd.h"
#include "ops/common.h"

namespace kx {
namespace ops {
namespace {

// c_k = (-1)^{k+1} / k: the coefficients of log(1 + x) = sum_k c_k x^k.
double series_coeff(int64_t k) { return (k % 2 ? 1.0 : -1.0) / static_cast<double>(k); }

// More terms than this are no use to a series that must converge geometrically, and the backward's
// n × n coefficient table would not fit in memory long before n reached int64's range.
constexpr int64_t kMaxTerms = 1024;

void check_terms(int64_t n, const char* op) {
  TORCH_CHECK(n >= 1 && n <= kMaxTerms, op, ": n_terms must be in [1, ", kMaxTerms, "], got ", n);
}

// ---------------------------------------------------------------------------------------------
// logdet_power_series(J [B, D, D], n): sum_{k=1..n} c_k tr(J^k).
// Only J^1..J^m (m = ceil(n/2)) are formed; tr(J^{a+b}) = <J^a, (J^b)^T>_F gives every trace up
// to 2m from them: m - 1 matrix products instead of n - 1.

constexpr const char* kSeries = "kexue.logdet_power_series";

at::Tensor check_jacobian(const at::Tensor& J, const char* op) {
  check_device_supported(J, op);
  kx_dtype(J, op, "J");
  TORCH_CHECK(J.dim() == 3 && J.size(1) == J.size(2), op,
              ": J must be a batch of square matrices [B, D, D], got ", J.sizes());
  return J.to(acc_dtype(J.scalar_type())).contiguous();
}

std::vector<at::Tensor> powers(const at::Tensor& J, int64_t m) {
  std::vector<at::Tensor> p(m + 1);
  p[0] = at::eye(J.size(1), J.options()).expand_as(J);
  if (m >= 1) p[1] = J;
  for (int64_t k = 2; k <= m; ++k) p[k] = at::bmm(p[k - 1], J);
  return p;
}

at::Tensor trace_of_product(const at::Tensor& a, const at::Tensor& b) {  // tr(a b) per sample
  return (a * b.transpose(1, 2)).sum({1, 2});
}

at::Tensor logdet_power_series(const at::Tensor& J_in, int64_t n) {
  check_terms(n, kSeries);
  const at::Tensor J = check_jacobian(J_in, kSeries);
  const int64_t m = (n + 1) / 2;
  const auto p = powers(J, m);
  at::Tensor out = at::zeros({J.size(0)}, J.options());
  for (int64_t k = 1; k <= n; ++k) {
    const int64_t a = std::min(k, m), b = k - a;
    const at::Tensor tr = b == 0 ? p[a].diagonal(0, 1, 2).sum(1) : trace_of_product(p[a], p[b]);
    out.add_(tr, series_coeff(k));
  }
  return out;
}

// d/dJ sum_k c_k tr(J^k) = (sum_{j<n} (-1)^j J^j)^T: the polynomial is evaluated in blocks of m
// powers, Horner in J^m between blocks (one more product for n <= 2m).
at::Tensor logdet_power_series_backward(const at::Tensor& grad, const at::Tensor& J_in, int64_t n) {
  constexpr const char* op = "kexue.logdet_power_series_backward";
  check_terms(n, op);
  const at::Tensor J = check_jacobian(J_in, op);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == J.size(0), op, ": grad must have shape [",
              J.size(0), "], got ", grad.sizes());
  TORCH_CHECK(grad.device() == J.device(), op, ": grad must be on ", J.device(), " like J, got ", grad.device());
  const int64_t m = (n + 1) / 2;
  const auto p = powers(J, m);
  const int64_t blocks = (n + m - 1) / m;
  at::Tensor s;
  for (int64_t q = blocks - 1; q >= 0; --q) {
    at::Tensor block = zeros_output(J);
    for (int64_t r = 0; r < m && q * m + r < n; ++r)
      block.add_(p[r], (q * m + r) % 2 ? -1.0 : 1.0);
    s = s.defined() ? block + at::bmm(p[m], s) : block;
  }
  return (s.transpose(1, 2) * grad.to(J.scalar_type()).view({-1, 1, 1})).to(J_in.scalar_type()).contiguous();
}

// ---------------------------------------------------------------------------------------------
// iresnet_mlp_logdet: Hutchinson estimate of log det(I + J) for g(x) = W2 act(W1 x + b1) + b2,
// J = W2 diag(act'(h)) W1, as sum_k c_k v^T J^k v with J^k v from repeated Jacobian-vector
// products (two matrix products each, over the whole batch at once).

constexpr const char* kMlp = "kexue.iresnet_mlp_logdet";

act::Kind parse_activation(c10::string_view name, const char* op) {
  if (name == "elu") return act::Kind::Elu;
  if (name == "lipswish") return act::Kind::LipSwish;
  if (name == "tanh") return act::Kind::Tanh;
  if (name == "softplus") return act::Kind::Softplus;
  TORCH_CHECK(false, op, ": activation must be one of 'elu', 'lipswish', 'tanh', 'softplus', got '",
              std::string(name.data(), name.size()), "'");
  return act::Kind::Elu;
}

// act'(h) and act''(h) in one pass, on the CPU or the GPU.
void activation_derivatives(const at::Tensor& h, at::Tensor& d1, at::Tensor& d2, act::Kind kind, const char* op) {
  act::Args a{};
  a.dtype = kx_dtype(h, op, "h");
  a.kind = kind;
  a.numel = h.numel();
  a.h = h.data_ptr();
  a.d1 = d1.data_ptr();
  a.d2 = d2.data_ptr();
#ifdef KX_GPU_LAUNCHERS
  if (gpu_launchers(h)) {
    LaunchScope launch(h);
    check_cuda_launch(cuda::activation_derivatives(a, launch.stream()), op);
    return;
  }
#endif
  cpu::activation_derivatives(a);
}

struct Mlp {
  at::Tensor x, W1, b1, W2, v;  // in the accumulation dtype
  at::Tensor d1, d2;            // act'(h), act''(h): [B, H]
};

// b2 is checked when given (the forward); the backward needs no b2. derivatives: also act'(h) and
// act''(h) (a backward reading the forward's state has them).
Mlp prepare_mlp(const at::Tensor& x, const at::Tensor& W1, const at::Tensor& b1, const at::Tensor& W2,
                const std::optional<at::Tensor>& b2, const at::Tensor& v, c10::string_view activation, const char* op,
                bool derivatives = true) {
  check_device_supported(x, op);
  kx_dtype(x, op, "x");
  TORCH_CHECK(x.dim() == 2, op, ": x must be [B, D], got ", x.sizes());
  const int64_t D = x.size(1);
  TORCH_CHECK(W1.dim() == 2 && W1.size(1) == D, op, ": W1 must be [H, ", D, "], got ", W1.sizes());
  const int64_t H = W1.size(0);
  TORCH_CHECK(b1.dim() == 1 && b1.size(0) == H, op, ": b1 must be [", H, "], got ", b1.sizes());
  TORCH_CHECK(W2.dim() == 2 && W2.size(0) == D && W2.size(1) == H, op, ": W2 must be [", D, ", ", H,
              "], got ", W2.sizes());
  if (b2.has_value())
    TORCH_CHECK(b2->dim() == 1 && b2->size(0) == D, op, ": b2 must be [", D, "], got ", b2->sizes());
  TORCH_CHECK(v.sizes() == x.sizes(), op, ": v must have the shape of x ", x.sizes(), ", got ", v.sizes());
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&W1, "W1"}, {&b1, "b1"}, {&W2, "W2"},
                                {b2.has_value() ? &*b2 : nullptr, "b2"}, {&v, "v"}}) {
    if (t == nullptr) continue;
    check_like(x, "x", *t, op, name, /*same_dtype=*/false);
    kx_dtype(*t, op, name);
  }
  const auto acc = acc_dtype(x.scalar_type());
  Mlp m{x.to(acc).contiguous(), W1.to(acc).contiguous(), b1.to(acc).contiguous(),
        W2.to(acc).contiguous(), v.to(acc).contiguous(), {}, {}};
  const act::Kind kind = parse_activation(activation, op);
  if (!derivatives) return m;
  const at::Tensor h = at::addmm(m.b1, m.x, m.W1.t()).contiguous();
  m.d1 = empty_output(h);
  m.d2 = empty_output(h);
  activation_derivatives(h, m.d1, m.d2, kind, op);
  return m;
}

// Which way J is applied: formed per sample up to D = n, then by W1 and W2 each time (below).
bool uses_products(int64_t D, int64_t n) { return D > n; }

// The forward's state for the products path: w_l = J^l v [n, B, D], A_l = W1 w_l [n, B, H],
// act'(h), act''(h) [B, H], in one flat tensor of the accumulation type.
constexpr int64_t kStateBudget = int64_t(256) << 20;  // bytes
int64_t state_numel(int64_t B, int64_t D, int64_t H, int64_t n) { return n * B * (D + H) + 2 * B * H; }

bool keeps_state(const at::Tensor& x, int64_t H, int64_t n, bool save_state) {
  const int64_t B = x.size(0), D = x.size(1);
  return save_state && uses_products(D, n) &&
         state_numel(B, D, H, n) * static_cast<int64_t>(c10::elementSize(acc_dtype(x.scalar_type()))) <=
             kStateBudget;
}

struct StateViews {
  at::Tensor W, A, d1, d2;
};
StateViews state_views(const at::Tensor& s, int64_t B, int64_t D, int64_t H, int64_t n) {
  const int64_t w = n * B * D, a = n * B * H;
  return {s.narrow(0, 0, w).view({n, B, D}), s.narrow(0, w, a).view({n, B, H}), s.narrow(0, w + a, B * H).view({B, H}),
          s.narrow(0, w + a + B * H, B * H).view({B, H})};
}

// Two ways to apply J: form it per sample (B·D²·H multiply-adds once, then D² per product) or
// apply W1 and W2 each time (2·B·D·H per product). Forming it wins for low-dimensional flows
// (2-D toys: 4× faster at D = 2, n = 10, where the products are all call overhead); measured on
// CPU the products are faster again from D ≈ n, so that is the switch.
at::Tensor explicit_jacobian(const Mlp& m, int64_t n) {
  if (uses_products(m.x.size(1), n)) return at::Tensor();
  return at::matmul(m.W2.unsqueeze(0) * m.d1.unsqueeze(1), m.W1);  // [B, D, D] = W2 diag(d1) W1
}

at::Tensor batched_matvec(const at::Tensor& J, const at::Tensor& w) {
  return at::bmm(J, w.unsqueeze(2)).squeeze(2);
}

std::tuple<at::Tensor, at::Tensor> iresnet_mlp_logdet(const at::Tensor& x, const at::Tensor& W1,
                                                      const at::Tensor& b1, const at::Tensor& W2,
                                                      const at::Tensor& b2, const at::Tensor& v, int64_t n,
                                                      c10::string_view activation, bool save_state) {
  check_terms(n, kMlp);
  const Mlp m = prepare_mlp(x, W1, b1, W2, b2, v, activation, kMlp);
  const int64_t B = x.size(0), D = x.size(1), H = W1.size(0);
  at::Tensor w = m.v, out = at::zeros({B}, m.x.options());
  if (keeps_state(x, H, n, save_state)) {  // the products path, its w_l and A_l written in place
    at::Tensor state = at::empty({state_numel(B, D, H, n)}, m.x.options());
    const StateViews s = state_views(state, B, D, H, n);
    s.d1.copy_(m.d1);
    s.d2.copy_(m.d2);
    s.W[0].copy_(m.v);
    at::Tensor last = at::empty({B, D}, m.x.options()), tmp = at::empty({B, H}, m.x.options());
    const at::Tensor W1t = m.W1.t(), W2t = m.W2.t();
    for (int64_t k = 0; k < n; ++k) {
      at::Tensor a = s.A[k], next = k + 1 < n ? s.W[k + 1] : last;
      at::mm_out(a, s.W[k], W1t);
      at::mm_out(next, at::mul_out(tmp, a, m.d1), W2t);  // w_{k+1} = J w_k
      out.add_((m.v * next).sum(1), series_coeff(k + 1));
    }
    return {out, state};
  }
  const at::Tensor J = explicit_jacobian(m, n);
  for (int64_t k = 1; k <= n; ++k) {
    w = J.defined() ? batched_matvec(J, w) : at::mm(at::mm(w, m.W1.t()).mul_(m.d1), m.W2.t());  // w <- J w
    out.add_((m.v * w).sum(1), series_coeff(k));
  }
  return {out, at::empty({0}, m.x.options())};
}

// With forward vectors w_l = J^l v, A_l = W1 w_l and backward vectors r_j = (J^T)^j v,
// B_j = W2^T r_j, the derivative of sum_k c_k v^T J^k v pairs (j, l) with j + l = k - 1:
//   dW2 = sum r_j (d1 * A_l)^T,  dW1 = sum (d1 * B_j) w_l^T,  dh = d2 * sum B_j * A_l
// weighted by C[j, l] = c_{j+l+1}; the sums over l (or j) are one small matrix product.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> iresnet_mlp_logdet_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& W1, const at::Tensor& b1,
    const at::Tensor& W2, const at::Tensor& v, int64_t n, c10::string_view activation,
    std::array<bool, 4> output_mask, const std::optional<at::Tensor>& state) {
  constexpr const char* op = "kexue.iresnet_mlp_logdet_backward";
  check_terms(n, op);
  const bool given = state.has_value() && state->numel() > 0;  // empty: the forward kept none
  Mlp m = prepare_mlp(x, W1, b1, W2, std::nullopt, v, activation, op, /*derivatives=*/!given);
  const int64_t B = x.size(0), D = x.size(1), H = W1.size(0);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == B, op, ": grad must have shape [", B, "], got ", grad.sizes());
  TORCH_CHECK(grad.device() == x.device(), op, ": grad must be on ", x.device(), " like x, got ", grad.device());
  if (state.has_value()) check_like(m.x, "x", *state, op, "state (in x's accumulation dtype)");
  TORCH_CHECK(!given || (uses_products(D, n) && state->dim() == 1 && state->size(0) == state_numel(B, D, H, n)), op,
              ": state must be the forward's [", uses_products(D, n) ? state_numel(B, D, H, n) : 0, "] tensor, got ",
              state.has_value() ? state->sizes() : at::IntArrayRef{});
  StateViews saved;
  if (given) {
    saved = state_views(state->contiguous(), B, D, H, n);
    m.d1 = saved.d1;
    m.d2 = saved.d2;
  }
  const at::Tensor g = grad.to(m.x.scalar_type()).view({1, B, 1});

  std::vector<double> coeff(n * n, 0.0);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t l = 0; l + j < n; ++l) coeff[j * n + l] = series_coeff(j + l + 1);
  const at::Tensor C = at::tensor(coeff).view({n, n}).to(m.x.options());
  auto empty = [&](at::Tensor t) { return t.defined() ? t : at::empty({0}, x.options()); };

  const at::Tensor J = explicit_jacobian(m, n);
  if (J.defined()) {
    // G = dE/dJ = sum_j r_j S_j^T with S_j = sum_l C[j,l] w_l; then through J = W2 diag(d1) W1.
    std::vector<at::Tensor> ws, rs;
    at::Tensor w = m.v, r = m.v;
    const at::Tensor Jt = J.transpose(1, 2);
    for (int64_t k = 0; k < n; ++k) {
      ws.push_back(w);
      rs.push_back(r);
      if (k + 1 < n) {
        w = batched_matvec(J, w);
        r = batched_matvec(Jt, r);
      }
    }
    const at::Tensor S = at::mm(C, at::stack(ws).view({n, B * D})).view({n, B, D});
    const at::Tensor G = at::bmm(at::stack(rs).permute({1, 2, 0}), S.permute({1, 0, 2})) * g.view({B, 1, 1});
    const at::Tensor M = at::matmul(G, m.W1.t());  // [B, D, H]
    const at::Tensor gh = (m.W2.unsqueeze(0) * M).sum(1).mul_(m.d2);
    at::Tensor gx, gW1, gb1, gW2;
    if (output_mask[3]) gW2 = (M * m.d1.unsqueeze(1)).sum(0).to(W2.scalar_type());
    if (output_mask[1])
      gW1 = (at::matmul(m.W2.t(), G) * m.d1.unsqueeze(2)).sum(0).add_(at::mm(gh.t(), m.x)).to(W1.scalar_type());
    if (output_mask[2]) gb1 = gh.sum(0).to(b1.scalar_type());
    if (output_mask[0]) gx = at::mm(gh, m.W1).to(x.scalar_type());
    return {empty(gx), empty(gW1), empty(gb1), empty(gW2)};
  }

  // w_l, A_l, r_j, B_j for l, j < n, written in place into stacked buffers; the per-sample grad
  // is folded into the [B, H] factors (it scales whole rows), and every [n, B, H] product is
  // formed once and scaled in place: at these sizes the step is bound by memory traffic and
  // fresh allocations as much as by the matrix products.
  // With the forward's state the w_l and A_l are read, not recomputed.
  const auto opts = m.x.options();
  at::Tensor W = given ? saved.W : at::empty({n, B, D}, opts), A = given ? saved.A : at::empty({n, B, H}, opts);
  at::Tensor R = at::empty({n, B, D}, opts), Bt = at::empty({n, B, H}, opts), tmp = at::empty({B, H}, opts);
  if (!given) W[0].copy_(m.v);
  R[0].copy_(m.v);
  const at::Tensor W1t = m.W1.t(), W2t = m.W2.t();
  for (int64_t k = 0; k < n; ++k) {
    at::Tensor a = A[k], bk = Bt[k];
    if (!given) at::mm_out(a, W[k], W1t);
    at::mm_out(bk, R[k], m.W2);
    if (k + 1 < n) {
      at::Tensor wn = W[k + 1], rn = R[k + 1];
      if (!given) at::mm_out(wn, at::mul_out(tmp, a, m.d1), W2t);
      at::mm_out(rn, at::mul_out(tmp, bk, m.d1), m.W1);
    }
  }
  const at::Tensor S = at::mm(C, A.view({n, B * H})).view({n, B, H});       // S_j = sum_l C[j,l] A_l
  const at::Tensor T = at::mm(C.t(), Bt.view({n, B * H})).view({n, B, H});  // T_l = sum_j C[j,l] B_j

  const at::Tensor gcol = g.view({B, 1});
  at::Tensor gh = at::zeros({B, H}, opts);
  for (int64_t j = 0; j < n; ++j) gh.addcmul_(Bt[j], S[j]);
  gh.mul_(m.d2).mul_(gcol);
  const at::Tensor gd1 = m.d1 * gcol;
  at::Tensor gx, gW1, gb1, gW2;
  if (output_mask[3]) gW2 = at::mm(R.view({n * B, D}).t(), S.mul_(gd1).view({n * B, H})).to(W2.scalar_type());
  if (output_mask[1])
    gW1 = at::addmm(at::mm(gh.t(), m.x), T.mul_(gd1).view({n * B, H}).t(), W.view({n * B, D})).to(W1.scalar_type());
  if (output_mask[2]) gb1 = gh.sum(0).to(b1.scalar_type());
  if (output_mask[0]) gx = at::mm(gh, m.W1).to(x.scalar_type());
  return {empty(gx), empty(gW1), empty(gb1), empty(gW2)};
}

// ---------------------------------------------------------------------------------------------
// Autograd (C++, see ops/autograd.h).

using SeriesSig = at::Tensor(const at::Tensor&, int64_t);
using SeriesBackSig = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t);

class SeriesFunction : public torch::autograd::Function<SeriesFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& J, int64_t n) {
    at::AutoDispatchBelowADInplaceOrView below;
    static auto op = kexue_op<SeriesSig>("kexue::logdet_power_series");
    ctx->save_for_backward({J});
    ctx->saved_data["n"] = n;
    return {op.call(J, n)};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = kexue_op<SeriesBackSig>("kexue::logdet_power_series_backward");
    const at::Tensor J = ctx->get_saved_variables()[0];
    return {op.call(grads[0], J, ctx->saved_data["n"].toInt()), at::Tensor()};
  }
};

at::Tensor series_autograd(const at::Tensor& J, int64_t n) { return SeriesFunction::apply(J, n)[0]; }

using MlpSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                  const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                                  c10::string_view, bool);
using MlpBackSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, int64_t, c10::string_view, std::array<bool, 4>, const std::optional<at::Tensor>&);

class MlpFunction : public torch::autograd::Function<MlpFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& W1,
                               const at::Tensor& b1, const at::Tensor& W2, const at::Tensor& b2,
                               const at::Tensor& v, int64_t n, const std::string& activation, bool save_state) {
    at::AutoDispatchBelowADInplaceOrView below;
    static auto op = kexue_op<MlpSig>("kexue::iresnet_mlp_logdet");
    auto [out, state] = op.call(x, W1, b1, W2, b2, v, n, activation, save_state);
    ctx->save_for_backward({x, W1, b1, W2, v, state});
    ctx->saved_data["n"] = n;
    ctx->saved_data["activation"] = activation;
    ctx->mark_non_differentiable({state});  // for the backward only
    return {out, state};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = kexue_op<MlpBackSig>("kexue::iresnet_mlp_logdet_backward");
    const auto s = ctx->get_saved_variables();
    const std::array<bool, 4> want = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      ctx->needs_input_grad(2), ctx->needs_input_grad(3)};
    const std::optional<at::Tensor> state = s[5];  // empty when the forward kept none (its size may be symbolic)
    auto [gx, gW1, gb1, gW2] = op.call(grads[0], s[0], s[1], s[2], s[3], s[4], ctx->saved_data["n"].toInt(),
                                       ctx->saved_data["activation"].toStringRef(), want, state);
    // b2 shifts g without changing its Jacobian; v is a probe, not a parameter.
    return {want[0] ? gx : at::Tensor(), want[1] ? gW1 : at::Tensor(), want[2] ? gb1 : at::Tensor(),
            want[3] ? gW2 : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> mlp_autograd(const at::Tensor& x, const at::Tensor& W1, const at::Tensor& b1,
                                                const at::Tensor& W2, const at::Tensor& b2, const at::Tensor& v,
                                                int64_t n, c10::string_view activation, bool save_state) {
  auto out = MlpFunction::apply(x, W1, b1, W2, b2, v, n, std::string(activation.data(), activation.size()),
                                save_state);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(kexue, Autograd, m) {
  m.impl("logdet_power_series", &series_autograd);
  m.impl("iresnet_mlp_logdet", &mlp_autograd);
}

// Device-generic ATen calls plus the activation kernel: the same functions serve CPU and CUDA.
#define KX_IRESNET_IMPLS(m)                                                  \
  m.impl("logdet_power_series", &logdet_power_series);                      \
  m.impl("logdet_power_series_backward", &logdet_power_series_backward);    \
  m.impl("iresnet_mlp_logdet", &iresnet_mlp_logdet);                        \
  m.impl("iresnet_mlp_logdet_backward", &iresnet_mlp_logdet_backward)

TORCH_LIBRARY_IMPL(kexue, CPU, m) { KX_IRESNET_IMPLS(m); }
#ifdef KEXUE_WITH_CUDA
TORCH_LIBRARY_IMPL(kexue, CUDA, m) { KX_IRESNET_IMPLS(m); }
#endif

}  // namespace ops
}  // namespace kx
