// Every kexue operator schema, in one place. Kernels are attached per dispatch key in
// csrc/ops/*.cpp; autograd and fake (meta) kernels are registered from Python (kexue/ops/*.py).
#include <torch/library.h>

TORCH_LIBRARY(kexue, m) {
  // Flows: coupling layers. Returns (out, logdet[B]); logdet is fp32 for half inputs.
  m.def("coupling(Tensor x, Tensor? s, Tensor? t, Tensor? mask, str scale, bool reverse, "
        "float clamp) -> (Tensor, Tensor)");
  m.def("coupling_backward(Tensor grad_out, Tensor grad_logdet, Tensor x, Tensor? s, Tensor? t, "
        "Tensor? mask, str scale, bool reverse, float clamp, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
  // Flows: ActNorm over dim 1. Parameter gradients come back in fp32 (fp64 for fp64 x).
  m.def("actnorm(Tensor x, Tensor bias, Tensor log_scale, bool reverse) -> (Tensor, Tensor)");
  m.def("actnorm_backward(Tensor grad_out, Tensor grad_logdet, Tensor x, Tensor bias, "
        "Tensor log_scale, bool reverse, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");

  // Lipschitz constraints: power iteration for the largest singular value of W [out, in].
  // Updates u [out] and v [in] in place (torch's order: u <- Wv/|Wv|, v <- W^T u/|W^T u|) and
  // returns sigma = u^T W v (a 0-d tensor, fp32 for half W).
  m.def("spectral_norm_power_iteration(Tensor W, Tensor(a!) u, Tensor(b!) v, int n_iter, float eps) "
        "-> Tensor");
  // The same for many weights in one call (one sigma per weight, as a [L] tensor).
  m.def("spectral_norm_power_iteration_grouped(Tensor[] Ws, Tensor(a!)[] us, Tensor(b!)[] vs, int n_iter, "
        "float eps) -> Tensor");
  // W / max(1, sigma/coeff) (soft) or W / sigma (exact) for a given sigma = u^T W v, with u, v
  // treated as constants in the gradient. Returns (W_sn, sigma).
  m.def("spectral_normalize_weight(Tensor W, Tensor u, Tensor v, float coeff, bool exact) -> (Tensor, Tensor)");
  m.def("spectral_normalize_weight_backward(Tensor grad_out, Tensor grad_sigma, Tensor W, Tensor u, "
        "Tensor v, float coeff, bool exact) -> Tensor");

  // Invertible ResNets: sum_{k=1..n} (-1)^{k+1} tr(J^k)/k per sample for J [B, D, D].
  m.def("logdet_power_series(Tensor J, int n_terms) -> Tensor");
  m.def("logdet_power_series_backward(Tensor grad, Tensor J, int n_terms) -> Tensor");
  // Hutchinson estimate sum_k (-1)^{k+1} v^T J^k v / k of log det(I + J_g(x)) for the block
  // g(x) = W2 act(W1 x + b1) + b2; x, v [B, D], W1 [H, D], b1 [H], W2 [D, H], b2 [D].
  // save_state: the forward also returns the products the backward needs (the J^l v, W1 J^l v,
  // act' and act'' as one flat tensor; when the products path runs and they fit in 256 MiB; else
  // an empty tensor), which the backward then reads instead of recomputing them.
  m.def("iresnet_mlp_logdet(Tensor x, Tensor W1, Tensor b1, Tensor W2, Tensor b2, Tensor v, int n_terms, "
        "str activation, bool save_state=False) -> (Tensor, Tensor)");
  m.def("iresnet_mlp_logdet_backward(Tensor grad, Tensor x, Tensor W1, Tensor b1, Tensor W2, Tensor v, "
        "int n_terms, str activation, bool[4] output_mask, Tensor? state=None) -> (Tensor, Tensor, Tensor, Tensor)");

  // Capsules: dynamic routing (Sabour et al. 2017) over u_hat [B, N_in, N_out, D]. Returns
  // (v [B, N_out, D], final couplings c [B, N_in, N_out]); squash is 'sabour' or 'post'. The
  // backward returns dL/du_hat (detach_routing: logits held constant). save_state: the forward
  // also returns its per-iteration state [B, state_size] (CPU, when no larger than u_hat; else
  // an empty tensor), which the backward then reads instead of recomputing the routing.
  m.def("dynamic_routing(Tensor u_hat, int iterations, str squash, bool detach_routing, "
        "bool save_state=False) -> (Tensor, Tensor, Tensor)");
  m.def("dynamic_routing_backward(Tensor grad_v, Tensor u_hat, int iterations, str squash, "
        "bool detach_routing, Tensor? state=None) -> Tensor");

  // Capsules: EM routing (Hinton et al. 2018) over votes [B, N_in, N_out, H], a_in [B, N_in],
  // beta_u, beta_a [N_out]; lambda ramps linearly to final_lambda. Returns (mu [B, N_out, H],
  // a_out [B, N_out], state); the backward returns the gradients of (votes, a_in, beta_u,
  // beta_a). save_state: the forward also returns its per-iteration history [B, history size]
  // (CPU, when no larger than the votes; else an empty tensor), which the backward then reads
  // instead of recomputing the EM iterations.
  m.def("em_routing(Tensor votes, Tensor a_in, Tensor beta_u, Tensor beta_a, int iterations, "
        "float final_lambda, float eps, bool save_state=False) -> (Tensor, Tensor, Tensor)");
  m.def("em_routing_backward(Tensor grad_mu, Tensor grad_a, Tensor votes, Tensor a_in, "
        "Tensor beta_u, Tensor beta_a, int iterations, float final_lambda, float eps, Tensor? state=None) "
        "-> (Tensor, Tensor, Tensor, Tensor)");

  // Diffusion (MODELS.md D1-D2). q_sample: √ᾱ·x0 + √(1−ᾱ)·noise, ᾱ per sample. The steps map
  // x_t [batch, ...] and the predicted noise eps to the next sample; ᾱ and t are host numbers
  // (one-element CPU tensors) or per-sample tensors on x_t's device. Noise is the given tensor or
  // Philox in the kernel, seeded from the generator (the device's default one when None).
  // Each returns (x_prev, x0_prediction); the second is empty unless return_x0.
  m.def("q_sample(Tensor x0, Tensor noise, Tensor alpha_bar) -> Tensor");
  m.def("ddpm_step(Tensor x_t, Tensor eps, Tensor t, Tensor alphas_cumprod, Tensor? noise, "
        "Generator? generator, str variance, float? clip_x0, bool return_x0) -> (Tensor, Tensor)",
        {at::Tag::nondeterministic_seeded});
  m.def("ddim_step(Tensor x_t, Tensor eps, Tensor alpha_bar_t, Tensor alpha_bar_prev, float eta, "
        "Tensor? noise, Generator? generator, float? clip_x0, bool return_x0) -> (Tensor, Tensor)",
        {at::Tag::nondeterministic_seeded});
  // Probability-flow ODE: the Euler step, or Heun's corrector when eps_next (the slope at the
  // Euler point) is given.
  m.def("ode_step(Tensor x_t, Tensor eps, Tensor alpha_bar_t, Tensor alpha_bar_next, Tensor? eps_next) -> Tensor");

  // RoPE attention (MODELS.md E1-E2): q [B, H, Lq, d], k/v [B, Hkv, Lk, d] (GQA), RoPE from
  // inv_freq [d/2] (None: no rotation) at positions ([Lk] or [B, Lk]; None: 0..Lk-1) times
  // rope_scale, in the "half" or interleaved layout; masks: causal, segment_ids [B, Lk] with
  // mask_rule "unilm" or "uniae", key_lengths [B], a boolean attn_mask. Returns (out, lse [B, H, Lq]);
  // lse is +inf on rows with nothing visible (their output is 0).
  m.def("rope_attention(Tensor q, Tensor k, Tensor v, Tensor? inv_freq, float rope_scale, bool interleaved, "
        "Tensor? positions, bool causal, Tensor? segment_ids, str mask_rule, Tensor? key_lengths, "
        "Tensor? attn_mask, float scale) -> (Tensor, Tensor)");
  m.def("rope_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "Tensor? inv_freq, float rope_scale, bool interleaved, Tensor? positions, bool causal, "
        "Tensor? segment_ids, str mask_rule, Tensor? key_lengths, Tensor? attn_mask, float scale) "
        "-> (Tensor, Tensor, Tensor)");
  // The rotation alone on x [..., L, d]; inverse rotates by the negated angle (its backward).
  m.def("apply_rope(Tensor x, Tensor? positions, Tensor inv_freq, float rope_scale, bool interleaved, "
        "bool inverse) -> Tensor");
}
