// Diffusion sampling steps (MODELS.md D1-D2), shared by the CPU and CUDA kernels.
//
// Every step op is one formula. With x_t = a·x̂0 + s·ε̂ (a = √ᾱ_t, s = √(1−ᾱ_t)):
//     x̂0  = (x_t − s·ε)/a                 then optionally clipped to [−c, c]
//     ε̂   = (x_t − a·x̂0)/s                (= ε when x̂0 is not clipped)
//     out = √ᾱ_prev·x̂0 + q·ε̂ + σ·z
// and the rules differ only in (q, σ):
//   DDPM (Ho et al. 2020): σ² = β_t or β̃_t = β_t(1−ᾱ_{t−1})/(1−ᾱ_t), q = √α_t(1−ᾱ_{t−1})/√(1−ᾱ_t)
//     (the posterior mean (x_t − β_t/√(1−ᾱ_t)·ε)/√α_t rewritten; no noise at t = 0);
//   DDIM (Song et al. 2021): σ = η·√((1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev)), q = √(1−ᾱ_prev−σ²).
// DDIM with η = 0 is the Euler step of the probability-flow ODE dx̄/dσ = ε in x̄ = x/√ᾱ,
// σ = √((1−ᾱ)/ᾱ); Heun's corrector is the same step with ε the mean of the two slopes.
#pragma once
#include "kexue/common.h"
#include "kexue/philox.h"

namespace kx {
namespace diff {

enum class Rule : int { DDPM = 0, DDIM = 1 };
enum class Variance : int { Beta = 0, BetaTilde = 1 };
enum class Noise : int { None = 0, Tensor = 1, Philox = 2 };

// A per-sample scalar: ptr[b·stride] when ptr is set (a float64 array on the data's device),
// otherwise the host value. Schedules and coefficients are float64 whatever the data type:
// 1 − ᾱ_t near t = 0 loses most of its digits in fp32.
struct PerSample {
  const void* ptr = nullptr;
  int64_t stride = 0;
  double value = 0.0;
};

struct StepArgs {
  DType dtype;
  int64_t batch = 0, per_sample = 0;  // x is [batch, per_sample]
  const void* x = nullptr;
  const void* eps = nullptr;
  const void* eps2 = nullptr;  // Heun: the slope at the Euler point; ε is then (eps + eps2)/2
  const void* noise = nullptr;  // Noise::Tensor
  void* out = nullptr;
  void* x0 = nullptr;  // optional: the x̂0 prediction
  Rule rule = Rule::DDIM;
  // DDIM: ᾱ_t and ᾱ_prev per sample. DDPM: the step index t per sample (int64) and the schedule
  // alphas_cumprod [T] (float64); ᾱ_prev = alphas_cumprod[t−1], or 1 at t = 0.
  PerSample abar_t, abar_prev;
  const int64_t* t_ptr = nullptr;
  int64_t t_stride = 0, t_value = 0;
  const void* schedule = nullptr;
  Variance variance = Variance::Beta;
  double eta = 0.0;
  bool clip = false;
  double clip_value = 1.0;
  Noise noise_kind = Noise::None;
  philox::State rng;
  // GPU only: Coeffs<acc_t> [batch], each sample's coefficients computed once by a pre-pass
  // (null when no input varies per sample: every thread then computes the one set itself).
  void* coeffs = nullptr;
};

// q_sample: out = √ᾱ·x0 + √(1−ᾱ)·noise with ᾱ per sample.
struct QSampleArgs {
  DType dtype;
  int64_t batch = 0, per_sample = 0;
  const void* x0 = nullptr;
  const void* noise = nullptr;
  PerSample abar;
  void* out = nullptr;
};

KX_HOST_DEVICE double read(const PerSample& p, int64_t b) {
  return p.ptr ? static_cast<const double*>(p.ptr)[b * p.stride] : p.value;
}

template <typename A> struct Coeffs {
  A a, s;       // √ᾱ_t, √(1−ᾱ_t)
  A inv_a;      // 1/√ᾱ_t
  A inv_s;      // 1/√(1−ᾱ_t), 0 when ᾱ_t = 1 (then ε̂ = ε)
  A p, q, sigma;
};

template <typename A> KX_HOST_DEVICE A clamp01(A v) { return v < A(0) ? A(0) : (v > A(1) ? A(1) : v); }

template <typename A> KX_HOST_DEVICE Coeffs<A> coeffs(A abar, A abar_prev, Rule rule, Variance var,
                                                      A eta, bool last_ddpm_step) {
  Coeffs<A> c;
  c.a = sqrt_(abar);
  c.s = sqrt_(clamp01(A(1) - abar));
  c.inv_a = A(1) / c.a;
  c.inv_s = c.s > A(0) ? A(1) / c.s : A(0);
  c.p = sqrt_(abar_prev);
  const A one_m_prev = clamp01(A(1) - abar_prev);
  const A ratio = abar / abar_prev;  // α_t for adjacent DDPM steps
  // β̃ generalised to any pair of steps: (1−ᾱ_prev)/(1−ᾱ_t)·(1 − ᾱ_t/ᾱ_prev).
  const A tilde = c.s > A(0) ? one_m_prev * (A(1) - ratio) / (c.s * c.s) : A(0);
  if (rule == Rule::DDPM) {
    c.q = c.s > A(0) ? sqrt_(ratio) * one_m_prev / c.s : A(0);
    const A v = var == Variance::Beta ? A(1) - ratio : tilde;
    c.sigma = last_ddpm_step ? A(0) : sqrt_(v > A(0) ? v : A(0));
  } else {
    const A v = eta * eta * (tilde > A(0) ? tilde : A(0));
    c.sigma = sqrt_(v);
    const A qq = one_m_prev - v;
    c.q = sqrt_(qq > A(0) ? qq : A(0));
  }
  return c;
}

// Whether any coefficient input varies over the batch (else every sample has the coefficients of
// sample 0; a one-element tensor, stride 0, such as a sampling loop's step index, counts as one).
KX_HOST_DEVICE bool varies(const PerSample& p) { return p.ptr != nullptr && p.stride != 0; }
KX_HOST_DEVICE bool per_sample_coeffs(const StepArgs& a) {
  return a.rule == Rule::DDPM ? a.t_ptr != nullptr && a.t_stride != 0 : varies(a.abar_t) || varies(a.abar_prev);
}

// The coefficients of sample b, computed in float64 and rounded to the accumulation type.
template <typename A> KX_HOST_DEVICE Coeffs<A> sample_coeffs(const StepArgs& a, int64_t b) {
  Coeffs<double> c;
  if (a.rule == Rule::DDPM) {
    const int64_t t = a.t_ptr ? a.t_ptr[b * a.t_stride] : a.t_value;
    const double* sched = static_cast<const double*>(a.schedule);
    c = coeffs<double>(sched[t], t > 0 ? sched[t - 1] : 1.0, a.rule, a.variance, 0.0, t == 0);
  } else {
    c = coeffs<double>(read(a.abar_t, b), read(a.abar_prev, b), a.rule, a.variance, a.eta, false);
  }
  return Coeffs<A>{static_cast<A>(c.a), static_cast<A>(c.s), static_cast<A>(c.inv_a), static_cast<A>(c.inv_s),
                   static_cast<A>(c.p), static_cast<A>(c.q), static_cast<A>(c.sigma)};
}

// q_sample's two factors (√ᾱ, √(1−ᾱ)) of sample b, the roots taken in the accumulation type: in
// fp32 within 1 ulp of the rounded fp64 root, at a quarter of its cost in the CPU's vector loop
// over many small samples (1 − ᾱ is still formed in fp64: no cancellation near ᾱ = 1).
template <typename A> KX_HOST_DEVICE void q_sample_factors(const QSampleArgs& a, int64_t b, A* sa, A* ss) {
  const double abar = read(a.abar, b);
  *sa = sqrt_(static_cast<A>(abar));
  *ss = sqrt_(static_cast<A>(clamp01(1.0 - abar)));
}

// One element. `e` is ε (already averaged for Heun), `z` the noise (ignored when σ = 0).
template <typename A, bool Clip>
KX_HOST_DEVICE A step_elem(A x, A e, A z, const Coeffs<A>& c, A clip, A* x0_out) {
  A x0 = (x - c.s * e) * c.inv_a;
  if (Clip) {
    x0 = x0 < -clip ? -clip : (x0 > clip ? clip : x0);
    e = c.inv_s > A(0) ? (x - c.a * x0) * c.inv_s : e;
  }
  *x0_out = x0;
  return c.p * x0 + c.q * e + c.sigma * z;
}

}  // namespace diff
}  // namespace kx
