// Glue for kexue::rope_attention (+ backward) and kexue::apply_rope, with C++ autograd.
// The Python wrapper (kexue/ops/attention.py) checks the values that need a look at the data
// (segment ids 0/1 and monotone, on CPU tensors); here: shapes, dtypes, devices.
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <string>

#include "cpu/kernels.h"
#include "ops/autograd.h"
#include "ops/common.h"

namespace kx {
namespace ops {
namespace {

using OptT = std::optional<at::Tensor>;

// Contiguous and 16-byte aligned: the tensor-core kernels copy rows by 16 bytes, so a contiguous
// view at an odd storage offset is copied once.
at::Tensor contiguous_aligned(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 == 0 ? c : c.clone();
}

// Inputs made contiguous and typed for the kernels, kept alive for the launch.
struct Prepared {
  at::Tensor q, k, v, inv_freq, positions, src_len, key_len, dense;
  attn::Args a{};
};

attn::Rule rule_of(c10::string_view rule, const char* op) {
  if (rule == "unilm") return attn::Rule::UniLM;
  if (rule == "uniae") return attn::Rule::UniAE;
  TORCH_CHECK(false, op, ": mask_rule must be \"unilm\" or \"uniae\", got \"", std::string(rule), "\"");
  return attn::Rule::None;
}

void rope_args(attn::Rope& r, at::Tensor& keep_freq, at::Tensor& keep_pos, const OptT& inv_freq, double rope_scale,
               bool interleaved, const OptT& positions, const at::Tensor& x, int64_t B, int64_t L, int64_t d,
               const char* op) {
  const auto acc = acc_dtype(x.scalar_type());
  r.scale = rope_scale;
  r.interleaved = interleaved;
  if (!inv_freq.has_value()) return;
  TORCH_CHECK(std::isfinite(rope_scale) && rope_scale > 0, op, ": rope_scale must be positive and finite, got ",
              rope_scale);
  TORCH_CHECK(d % 2 == 0, op, ": RoPE needs an even head dimension, got ", d);
  TORCH_CHECK(inv_freq->dim() == 1 && inv_freq->size(0) == d / 2, op, ": inv_freq must have shape [", d / 2,
              "] (half the head dimension), got ", inv_freq->sizes());
  TORCH_CHECK(inv_freq->device() == x.device(), op, ": inv_freq must be on ", x.device());
  keep_freq = inv_freq->to(acc).contiguous();
  r.inv_freq = keep_freq.data_ptr();
  if (!positions.has_value()) return;
  const at::Tensor& p = *positions;
  TORCH_CHECK(p.device() == x.device(), op, ": positions must be on ", x.device(), ", got ", p.device());
  TORCH_CHECK(p.scalar_type() != at::kBool && !at::isComplexType(p.scalar_type()), op,
              ": positions must be integer or real, got ", p.scalar_type());
  TORCH_CHECK(!p.requires_grad(), op, ": positions are not differentiable; pass them without requires_grad");
  TORCH_CHECK((p.dim() == 1 && p.size(0) == L) || (p.dim() == 2 && (p.size(0) == B || p.size(0) == 1) && p.size(1) == L),
              op, ": positions must be [", L, "] or [", B, ", ", L, "], got ", p.sizes());
  keep_pos = p.to(acc).contiguous();
  r.positions = keep_pos.data_ptr();
  r.positions_batch_stride = (p.dim() == 2 && p.size(0) == B && B > 1) ? L : 0;
}

Prepared prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptT& inv_freq, double rope_scale,
                 bool interleaved, const OptT& positions, bool causal, const OptT& segment_ids,
                 c10::string_view mask_rule, const OptT& key_lengths, const OptT& attn_mask, double scale,
                 const char* op) {
  check_device_supported(q, op);
  Prepared p;
  attn::Args& a = p.a;
  a.dtype = kx_dtype(q, op, "q");
  TORCH_CHECK(q.dim() == 4, op, ": q must be [batch, heads, len, head_dim], got shape ", q.sizes());
  check_like(q, "q", k, op, "k");
  check_like(q, "q", v, op, "v");
  TORCH_CHECK(k.dim() == 4 && k.sizes() == v.sizes(), op, ": k and v must both be [batch, kv_heads, len, head_dim], got ",
              k.sizes(), " and ", v.sizes());
  a.B = q.size(0);
  a.H = q.size(1);
  a.Lq = q.size(2);
  a.d = q.size(3);
  a.Hkv = k.size(1);
  a.Lk = k.size(2);
  TORCH_CHECK(a.d >= 1, op, ": the head dimension must be at least 1, got 0");
  TORCH_CHECK(k.size(0) == a.B && k.size(3) == a.d, op, ": k must be [", a.B, ", kv_heads, len, ", a.d, "], got ",
              k.sizes());
  TORCH_CHECK(a.Hkv >= 1 && a.H % a.Hkv == 0, op, ": the query heads (", a.H, ") must be a multiple of the kv heads (",
              a.Hkv, ")");
  // Queries sit at the last Lq key positions; with more queries than keys that has a meaning only
  // for masks that compare indices (causal, key lengths, dense), not for positions or segments.
  TORCH_CHECK(a.Lq <= a.Lk || (!inv_freq.has_value() && !segment_ids.has_value()), op,
              ": with RoPE or segment ids, q may not be longer than k, got ", a.Lq, " > ", a.Lk);
  TORCH_CHECK(std::isfinite(scale) && scale > 0, op, ": scale must be positive and finite, got ", scale);
  a.scale = scale;
  p.q = contiguous_aligned(q);
  p.k = contiguous_aligned(k);
  p.v = contiguous_aligned(v);
  a.q = p.q.data_ptr();
  a.k = p.k.data_ptr();
  a.v = p.v.data_ptr();
  rope_args(a.rope, p.inv_freq, p.positions, inv_freq, rope_scale, interleaved, positions, q, a.B, a.Lk, a.d, op);

  attn::Mask& m = a.mask;
  m.causal = causal;
  m.offset = a.Lk - a.Lq;
  if (segment_ids.has_value()) {
    const at::Tensor& s = *segment_ids;
    TORCH_CHECK(s.device() == q.device(), op, ": segment_ids must be on ", q.device());
    TORCH_CHECK(s.dim() == 2 && s.size(0) == a.B && s.size(1) == a.Lk, op, ": segment_ids must be [", a.B, ", ", a.Lk,
                "], got ", s.sizes());
    m.rule = rule_of(mask_rule, op);
    // Monotone 0/1 ids (checked by the Python wrapper) are described by the source length.
    p.src_len = (s == 0).sum(1).to(at::kLong).contiguous();
    m.src_len = p.src_len.data_ptr<int64_t>();
  }
  if (key_lengths.has_value()) {
    const at::Tensor& kl = *key_lengths;
    TORCH_CHECK(kl.device() == q.device(), op, ": key_lengths must be on ", q.device());
    TORCH_CHECK(kl.dim() == 1 && kl.size(0) == a.B, op, ": key_lengths must be [", a.B, "], got ", kl.sizes());
    TORCH_CHECK(!at::isFloatingType(kl.scalar_type()) && kl.scalar_type() != at::kBool &&
                    !at::isComplexType(kl.scalar_type()),
                op, ": key_lengths must be integers, got ", kl.scalar_type());
    p.key_len = kl.to(at::kLong).contiguous();
    m.key_len = p.key_len.data_ptr<int64_t>();
  }
  if (attn_mask.has_value()) {
    at::Tensor am = *attn_mask;
    TORCH_CHECK(am.scalar_type() == at::kBool, op, ": attn_mask must be boolean (True = visible), got ",
                am.scalar_type());
    TORCH_CHECK(am.device() == q.device(), op, ": attn_mask must be on ", q.device());
    if (am.dim() == 2) am = am.reshape({1, 1, am.size(0), am.size(1)});
    TORCH_CHECK(am.dim() == 4 && (am.size(0) == 1 || am.size(0) == a.B) && (am.size(1) == 1 || am.size(1) == a.H) &&
                    am.size(2) == a.Lq && am.size(3) == a.Lk,
                op, ": attn_mask must be [Lq, Lk] or [B or 1, H or 1, Lq, Lk] = [", a.B, ", ", a.H, ", ", a.Lq, ", ",
                a.Lk, "], got ", attn_mask->sizes());
    p.dense = am.to(at::kByte).contiguous();
    m.dense = p.dense.data_ptr<uint8_t>();
    m.dense_sb = am.size(0) == 1 ? 0 : am.size(1) * a.Lq * a.Lk;
    m.dense_sh = am.size(1) == 1 ? 0 : a.Lq * a.Lk;
    m.dense_sq = a.Lk;
    m.dense_sk = 1;
  }
  return p;
}

std::tuple<at::Tensor, at::Tensor> rope_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const OptT& inv_freq, double rope_scale, bool interleaved,
                                                  const OptT& positions, bool causal, const OptT& segment_ids,
                                                  c10::string_view mask_rule, const OptT& key_lengths,
                                                  const OptT& attn_mask, double scale) {
  constexpr const char* op = "kexue.rope_attention";
  Prepared p = prepare(q, k, v, inv_freq, rope_scale, interleaved, positions, causal, segment_ids, mask_rule,
                       key_lengths, attn_mask, scale, op);
  at::Tensor out = empty_output(p.q);
  at::Tensor lse = at::empty({p.a.B, p.a.H, p.a.Lq}, q.options().dtype(acc_dtype(q.scalar_type())));
  p.a.out = out.data_ptr();
  p.a.lse = lse.data_ptr();
  if (out.numel() == 0) return {out, lse};
#ifdef KX_GPU_LAUNCHERS
  if (gpu_launchers(q)) {
    LaunchScope launch(q);
    TORCH_CHECK(p.a.d <= 256, op, ": the CUDA kernels take head dimensions up to 256, got ", p.a.d);
    at::Tensor ws;
    p.a.workspace = scratch(ws, cuda::rope_attention_workspace(p.a), q);
    check_cuda_launch(cuda::rope_attention_forward(p.a, launch.stream()), op);
    return {out, lse};
  }
#endif
  cpu::rope_attention_forward(p.a);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rope_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const OptT& inv_freq, double rope_scale, bool interleaved, const OptT& positions, bool causal,
    const OptT& segment_ids, c10::string_view mask_rule, const OptT& key_lengths, const OptT& attn_mask, double scale) {
  constexpr const char* op = "kexue.rope_attention_backward";
  Prepared p = prepare(q, k, v, inv_freq, rope_scale, interleaved, positions, causal, segment_ids, mask_rule,
                       key_lengths, attn_mask, scale, op);
  check_like(q, "q", grad_out, op, "grad_out");
  check_like(q, "q", out, op, "out");
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(), op,
              ": grad_out and out must have the shape of q ", q.sizes());
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == p.a.B && lse.size(1) == p.a.H && lse.size(2) == p.a.Lq &&
                  lse.scalar_type() == acc_dtype(q.scalar_type()),
              op, ": lse must be the forward's [B, H, Lq] log-sum-exp");
  TORCH_CHECK(lse.device() == q.device(), op, ": lse must be on ", q.device(), " like q, got ", lse.device());
  const at::Tensor g = contiguous_aligned(grad_out), o = out.contiguous(), l = lse.contiguous();
  at::Tensor gq = empty_output(p.q), gk = empty_output(p.k), gv = empty_output(p.v);
  attn::GradArgs ga{};
  ga.fwd = p.a;
  ga.fwd.out = const_cast<void*>(o.data_ptr());
  ga.fwd.lse = const_cast<void*>(l.data_ptr());
  ga.grad_out = g.data_ptr();
  ga.grad_q = gq.data_ptr();
  ga.grad_k = gk.data_ptr();
  ga.grad_v = gv.data_ptr();
  if (q.numel() == 0 && k.numel() == 0) return {gq, gk, gv};
  if (q.numel() == 0) return {gq, gk.zero_(), gv.zero_()};
  if (k.numel() == 0) return {gq.zero_(), gk, gv};  // no keys: the output is the constant 0
#ifdef KX_GPU_LAUNCHERS
  if (gpu_launchers(q)) {
    LaunchScope launch(q);
    at::Tensor ws;
    ga.fwd.workspace = scratch(ws, cuda::rope_attention_backward_workspace(ga), q);
    check_cuda_launch(cuda::rope_attention_backward(ga, launch.stream()), op);
    return {gq, gk, gv};
  }
#endif
  cpu::rope_attention_backward(ga);
  return {gq, gk, gv};
}

at::Tensor apply_rope(const at::Tensor& x, const OptT& positions, const at::Tensor& inv_freq, double rope_scale,
                      bool interleaved, bool inverse) {
  constexpr const char* op = "kexue.apply_rope";
  check_device_supported(x, op);
  attn::RopeArgs r{};
  r.dtype = kx_dtype(x, op, "x");
  TORCH_CHECK(x.dim() >= 2, op, ": x must be [..., len, head_dim], got ", x.sizes());
  const int64_t L = x.size(-2), d = x.size(-1);
  // Leading dims: positions [B, L] index the first one; the rest are heads.
  const int64_t B = x.dim() >= 3 ? x.size(0) : 1;
  int64_t H = 1;  // a product of sizes, not numel / (B·L·d), which would divide by zero for B = 0
  for (int64_t i = 1; i + 2 < x.dim(); ++i) H *= x.size(i);
  at::Tensor keep_freq, keep_pos;
  rope_args(r.rope, keep_freq, keep_pos, inv_freq, rope_scale, interleaved, positions, x, B, L, d, op);
  r.inverse = inverse;
  r.B = B;
  r.H = H;
  r.L = L;
  r.d = d;
  const at::Tensor xc = x.contiguous();
  at::Tensor out = empty_output(xc);
  r.x = xc.data_ptr();
  r.out = out.data_ptr();
  if (out.numel() == 0) return out;
#ifdef KX_GPU_LAUNCHERS
  if (gpu_launchers(x)) {
    LaunchScope launch(x);
    check_cuda_launch(cuda::apply_rope(r, launch.stream()), op);
    return out;
  }
#endif
  cpu::apply_rope(r);
  return out;
}

using FwdSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptT&,
                                                  double, bool, const OptT&, bool, const OptT&, c10::string_view,
                                                  const OptT&, const OptT&, double);
using BwdSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const OptT&, double, bool, const OptT&, bool, const OptT&, c10::string_view, const OptT&, const OptT&, double);

OptT opt(const at::Tensor& t) { return t.defined() ? OptT(t) : std::nullopt; }
at::Tensor def(const OptT& t) { return t.has_value() ? *t : at::Tensor(); }

class AttentionFunction : public torch::autograd::Function<AttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const OptT& inv_freq, double rope_scale, bool interleaved, const OptT& positions,
                               bool causal, const OptT& segment_ids, c10::string_view mask_rule,
                               const OptT& key_lengths, const OptT& attn_mask, double scale) {
    at::AutoDispatchBelowADInplaceOrView below;
    static auto op = kexue_op<FwdSig>("kexue::rope_attention");
    auto [out, lse] = op.call(q, k, v, inv_freq, rope_scale, interleaved, positions, causal, segment_ids, mask_rule,
                              key_lengths, attn_mask, scale);
    ctx->save_for_backward({q, k, v, out, lse, def(inv_freq), def(positions), def(segment_ids), def(key_lengths),
                            def(attn_mask)});
    ctx->saved_data["rope_scale"] = rope_scale;
    ctx->saved_data["interleaved"] = interleaved;
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["mask_rule"] = std::string(mask_rule);
    ctx->saved_data["scale"] = scale;
    ctx->mark_non_differentiable({lse});
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    if (!grads[0].defined()) return variable_list(13);
    static auto op = kexue_op<BwdSig>("kexue::rope_attention_backward");
    const std::string rule = ctx->saved_data["mask_rule"].toStringRef();
    auto [gq, gk, gv] = op.call(grads[0], s[0], s[1], s[2], s[3], s[4], opt(s[5]),
                                ctx->saved_data["rope_scale"].toDouble(), ctx->saved_data["interleaved"].toBool(),
                                opt(s[6]), ctx->saved_data["causal"].toBool(), opt(s[7]), rule, opt(s[8]), opt(s[9]),
                                ctx->saved_data["scale"].toDouble());
    variable_list out(13);
    out[0] = gq;
    out[1] = gk;
    out[2] = gv;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> rope_attention_autograd(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v, const OptT& inv_freq, double rope_scale,
                                                           bool interleaved, const OptT& positions, bool causal,
                                                           const OptT& segment_ids, c10::string_view mask_rule,
                                                           const OptT& key_lengths, const OptT& attn_mask,
                                                           double scale) {
  auto out = AttentionFunction::apply(q, k, v, inv_freq, rope_scale, interleaved, positions, causal, segment_ids,
                                      mask_rule, key_lengths, attn_mask, scale);
  return {out[0], out[1]};
}

using RopeSig = at::Tensor(const at::Tensor&, const OptT&, const at::Tensor&, double, bool, bool);

class RopeFunction : public torch::autograd::Function<RopeFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const OptT& positions, const at::Tensor& inv_freq,
                            double rope_scale, bool interleaved, bool inverse) {
    at::AutoDispatchBelowADInplaceOrView below;
    static auto op = kexue_op<RopeSig>("kexue::apply_rope");
    ctx->save_for_backward({def(positions), inv_freq});
    ctx->saved_data["rope_scale"] = rope_scale;
    ctx->saved_data["interleaved"] = interleaved;
    ctx->saved_data["inverse"] = inverse;
    return op.call(x, positions, inv_freq, rope_scale, interleaved, inverse);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    static auto op = kexue_op<RopeSig>("kexue::apply_rope");
    // The gradient of rope_scale·R·x is rope_scale·Rᵀ·g: the same op with the angle negated.
    at::Tensor gx = op.call(grads[0], opt(s[0]), s[1], ctx->saved_data["rope_scale"].toDouble(),
                            ctx->saved_data["interleaved"].toBool(), !ctx->saved_data["inverse"].toBool());
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor apply_rope_autograd(const at::Tensor& x, const OptT& positions, const at::Tensor& inv_freq,
                               double rope_scale, bool interleaved, bool inverse) {
  return RopeFunction::apply(x, positions, inv_freq, rope_scale, interleaved, inverse);
}

}  // namespace

TORCH_LIBRARY_IMPL(kexue, Autograd, m) {
  m.impl("rope_attention", &rope_attention_autograd);
  m.impl("apply_rope", &apply_rope_autograd);
}

TORCH_LIBRARY_IMPL(kexue, CPU, m) {
  m.impl("rope_attention", &rope_attention);
  m.impl("rope_attention_backward", &rope_attention_backward);
  m.impl("apply_rope", &apply_rope);
}
#ifdef KEXUE_WITH_CUDA
TORCH_LIBRARY_IMPL(kexue, CUDA, m) {
  m.impl("rope_attention", &rope_attention);
  m.impl("rope_attention_backward", &rope_attention_backward);
  m.impl("apply_rope", &apply_rope);
}
#endif

}  // namespace ops
}  // namespace kx
