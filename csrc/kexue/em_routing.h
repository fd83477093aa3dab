// EM routing between matrix capsules (Hinton, Sabour & Frosst 2018): the per-sample math shared by
// the CPU kernel (one at::parallel_for task per sample) and the CUDA kernel (one thread per sample).
// For one sample, V [I, J, H] (I = N_in, J = N_out, H = pose size), a_in [I], beta_u/beta_a [J]:
//   R = 1/J; for t = 0 .. T-1, with lambda_t = final_lambda·(t+1)/T (linear ramp):
//     M-step: w_ij = R_ij a_i; S_j = Σ_i w_ij; D_j = S_j + kDenomEps;
//             mu_jh = Σ_i w_ij V_ijh / D_j; var_jh = Σ_i w_ij (V_ijh - mu_jh)² / D_j + eps;
//             C_j = Σ_h (beta_u_j + ½ log var_jh)·S_j; a_j = sigmoid(lambda_t (beta_a_j - C_j))
//     E-step (t < T-1): z_ij = log a_j + Σ_h [-(V_ijh - mu_jh)²/(2 var_jh) - ½ log var_jh - ½ log 2π];
//             R_ij = softmax_j(z_ij) (max-subtracted; log a_j = log_sigmoid, never log 0)
// kDenomEps keeps D_j > 0 when every R_ij·a_i underflows to 0 (then mu = 0, var = eps: no NaN).
//
// Backward (reverse mode through every iteration), recomputing the forward and keeping per
// iteration R^(t) [I, J], mu^(t), var^(t) [J, H], S, a, log a, Σ_h ½ log var [J]. With
// gmu, gvar (dL/dmu, dL/dvar), ga, gla (dL/da, dL/dlog a) of iteration t:
//   E-step t (t < T-1), from gR = dL/dR^(t+1): gz_ij = R_ij (gR_ij - Σ_k R_ik gR_ik);
//     gla_j += Σ_i gz_ij; with d = V - mu: gmu += gz d/var; gvar += gz (d²/(2var²) - 1/(2var));
//     gV_ijh -= gz d/var.
//   M-step t: gx = ga a(1-a) + gla (1-a); gbeta_a += lambda gx; gC = -lambda gx;
//     gbeta_u += gC S H; gvar += gC S/(2var); gS = gC (H beta_u + Σ_h ½ log var);
//     gmu_tot = gmu + gvar·(-2/D) Σ_i w (V - mu) = gmu - 2 gvar mu kDenomEps / D;
//     gw_ij = gS_j + Σ_h [gvar ((V-mu)² - (var-eps)) + gmu_tot (V - mu)] / D_j;
//     gV_ijh += w_ij (2 gvar (V-mu) + gmu_tot) / D_j; gR^(t)_ij = gw_ij a_i; ga_in_i += Σ_j gw_ij R_ij.
#pragma once
#include "kexue/common.h"

namespace kx {
namespace em {

// The largest iteration count the ops take (every iteration is kept for the backward).
constexpr int64_t kMaxIterations = 1000;

constexpr double kDenomEps = 1e-12;
constexpr double kHalfLog2Pi = 0.91893853320467274178;

KX_HOST_DEVICE float log_(float x) {
#if defined(__CUDA_ARCH__)
  return ::logf(x);
#else
  return std::log(x);
#endif
}
KX_HOST_DEVICE double log_(double x) {
#if defined(__CUDA_ARCH__)
  return ::log(x);
#else
  return std::log(x);
#endif
}

// lambda_t: linear ramp reaching final_lambda at the last iteration.
template <typename A> KX_HOST_DEVICE A lambda_at(A final_lambda, int64_t t, int64_t T) {
  return final_lambda * A(t + 1) / A(T);
}

template <typename A> KX_HOST_DEVICE void sigmoid_and_log(A x, A* s, A* ls) {
  const A z = kx::exp(-kx::abs(x));  // in (0, 1]
  *s = x >= A(0) ? A(1) / (A(1) + z) : z / (A(1) + z);
  *ls = kx::min(x, A(0)) - kx::log1p_unit(z);
}

// What the forward and the backward launch share: the problem and its inputs.
struct Problem {
  DType dtype;  // F32 or F64
  int64_t iterations;
  double final_lambda, eps;
  int64_t batch, n_in, n_out, dim;
  const void* votes;   // [batch, n_in, n_out, dim]
  const void* a_in;    // [batch, n_in]
  const void* beta_u;  // [n_out]
  const void* beta_a;  // [n_out]
  void* workspace;
};

struct Args : Problem {
  void* mu;     // [batch, n_out, dim]
  void* a_out;  // [batch, n_out]
  void* state = nullptr;  // [batch, history_scratch] when given (CPU): the history is kept there
};

struct GradArgs : Problem {
  const void* grad_mu;  // [batch, n_out, dim]
  const void* grad_a;   // [batch, n_out]
  void* grad_votes;     // [batch, n_in, n_out, dim]
  void* grad_a_in;      // [batch, n_in]
  void* grad_beta_u;    // [batch, n_out] per sample (the glue sums over the batch)
  void* grad_beta_a;    // [batch, n_out]
  const void* state = nullptr;  // the forward's history: the EM iterations are then not recomputed
};

// Scratch of one sample in units of the acc type. The history is also the state a forward keeps
// for its backward (when asked for, on the CPU, and no larger than the votes).
KX_HOST_DEVICE int64_t history_scratch(int64_t T, int64_t I, int64_t J, int64_t H) {
  return T * (I * J + 2 * J * H + 4 * J);  // R, mu, var, S, a, log a, Σ½log var
}
KX_HOST_DEVICE int64_t backward_scratch(int64_t T, int64_t I, int64_t J, int64_t H) {
  return history_scratch(T, I, J, H) + I * J + 2 * J * H + 2 * J;  // gR, gmu, gvar, ga, gla
}

template <typename A> struct History {
  A *R, *mu, *var, *S, *a, *la, *lv;
};
// Carves the per-iteration history out of one sample's scratch.
template <typename A>
KX_HOST_DEVICE History<A> make_history(A* base, int64_t T, int64_t I, int64_t J, int64_t H) {
  History<A> h;
  h.R = base;
  h.mu = h.R + T * I * J;
  h.var = h.mu + T * J * H;
  h.S = h.var + T * J * H;
  h.a = h.S + T * J;
  h.la = h.a + T * J;
  h.lv = h.la + T * J;
  return h;
}

template <typename A>
KX_HOST_DEVICE void m_step(const A* V, const A* ain, const A* R, const A* bu, const A* ba, A lam,
                           A eps, int64_t I, int64_t J, int64_t H, A* mu, A* var, A* S, A* a,
                           A* la, A* lv) {
  for (int64_t k = 0; k < J * H; ++k) mu[k] = var[k] = A(0);
  for (int64_t j = 0; j < J; ++j) S[j] = A(0);
  for (int64_t i = 0; i < I; ++i)
    for (int64_t j = 0; j < J; ++j) {
      const A w = R[i * J + j] * ain[i];
      const A* v = V + (i * J + j) * H;
      S[j] += w;
      for (int64_t h = 0; h < H; ++h) mu[j * H + h] += w * v[h];
    }
  for (int64_t j = 0; j < J; ++j) {
    const A inv = A(1) / (S[j] + A(kDenomEps));
    for (int64_t h = 0; h < H; ++h) mu[j * H + h] *= inv;
  }
  for (int64_t i = 0; i < I; ++i)
    for (int64_t j = 0; j < J; ++j) {
      const A w = R[i * J + j] * ain[i];
      const A* v = V + (i * J + j) * H;
      for (int64_t h = 0; h < H; ++h) {
        const A d = v[h] - mu[j * H + h];
        var[j * H + h] += w * d * d;
      }
    }
  for (int64_t j = 0; j < J; ++j) {
    const A inv = A(1) / (S[j] + A(kDenomEps));
    A l = A(0);
    for (int64_t h = 0; h < H; ++h) {
      var[j * H + h] = var[j * H + h] * inv + eps;
      l += A(0.5) * log_(var[j * H + h]);
    }
    lv[j] = l;
    const A cost = (A(H) * bu[j] + l) * S[j];
    sigmoid_and_log(lam * (ba[j] - cost), a + j, la + j);
  }
}

template <typename A>
KX_HOST_DEVICE void e_step(const A* V, const A* mu, const A* var, const A* la, const A* lv,
                           int64_t I, int64_t J, int64_t H, A* Rn) {
  const A c = A(H) * A(kHalfLog2Pi);
  for (int64_t i = 0; i < I; ++i) {
    A* z = Rn + i * J;
    A m = A(0);
    for (int64_t j = 0; j < J; ++j) {
      const A* v = V + (i * J + j) * H;
      A q = A(0);
      for (int64_t h = 0; h < H; ++h) {
        const A d = v[h] - mu[j * H + h];
        q += d * d / var[j * H + h];
      }
      z[j] = la[j] - A(0.5) * q - lv[j] - c;
      m = (j == 0 || z[j] > m) ? z[j] : m;
    }
    A sum = A(0);
    for (int64_t j = 0; j < J; ++j) {
      z[j] = kx::exp(z[j] - m);
      sum += z[j];
    }
    const A inv = A(1) / sum;
    for (int64_t j = 0; j < J; ++j) z[j] *= inv;
  }
}

template <typename A>
KX_HOST_DEVICE void forward_sample(const A* V, const A* ain, const A* bu, const A* ba, int64_t T,
                                   A lam_final, A eps, int64_t I, int64_t J, int64_t H,
                                   History<A> hs) {
  const int64_t IJ = I * J, JH = J * H;
  for (int64_t k = 0; k < IJ; ++k) hs.R[k] = A(1) / A(J);
  for (int64_t t = 0; t < T; ++t) {
    m_step(V, ain, hs.R + t * IJ, bu, ba, lambda_at(lam_final, t, T), eps, I, J, H, hs.mu + t * JH,
           hs.var + t * JH, hs.S + t * J, hs.a + t * J, hs.la + t * J, hs.lv + t * J);
    if (t + 1 < T)
      e_step(V, hs.mu + t * JH, hs.var + t * JH, hs.la + t * J, hs.lv + t * J, I, J, H,
             hs.R + (t + 1) * IJ);
  }
}

// gV, gain, gbu, gba are outputs of this sample (overwritten); gmu_out/ga_out the incoming grads.
template <typename A>
KX_HOST_DEVICE void backward_sample(const A* V, const A* ain, const A* bu, const A* ba, int64_t T,
                                    A lam_final, A eps, int64_t I, int64_t J, int64_t H,
                                    const A* gmu_out, const A* ga_out, A* scratch, A* gV, A* gain,
                                    A* gbu, A* gba, const A* saved = nullptr) {
  // saved: the forward's history of this sample, read only; otherwise it is recomputed here.
  const int64_t IJ = I * J, JH = J * H;
  History<A> hs = make_history(saved ? const_cast<A*>(saved) : scratch, T, I, J, H);
  A* gR = scratch + history_scratch(T, I, J, H);
  A *gmu = gR + IJ, *gvar = gmu + JH, *ga = gvar + JH, *gla = ga + J;
  if (!saved) forward_sample(V, ain, bu, ba, T, lam_final, eps, I, J, H, hs);
  for (int64_t k = 0; k < IJ * H; ++k) gV[k] = A(0);
  for (int64_t i = 0; i < I; ++i) gain[i] = A(0);
  for (int64_t j = 0; j < J; ++j) gbu[j] = gba[j] = A(0);
  for (int64_t k = 0; k < JH; ++k) {
    gmu[k] = gmu_out[k];
    gvar[k] = A(0);
  }
  for (int64_t j = 0; j < J; ++j) {
    ga[j] = ga_out[j];
    gla[j] = A(0);
  }
  for (int64_t t = T - 1; t >= 0; --t) {
    const A *mu = hs.mu + t * JH, *var = hs.var + t * JH, *R = hs.R + t * IJ;
    if (t + 1 < T) {  // E-step t: gR holds dL/dR^(t+1)
      const A* Rn = hs.R + (t + 1) * IJ;
      for (int64_t i = 0; i < I; ++i) {
        A* g = gR + i * J;
        const A* r = Rn + i * J;
        A dot = A(0);
        for (int64_t j = 0; j < J; ++j) dot += r[j] * g[j];
        for (int64_t j = 0; j < J; ++j) {
          const A gz = r[j] * (g[j] - dot);
          gla[j] += gz;
          const A* v = V + (i * J + j) * H;
          A* gv = gV + (i * J + j) * H;
          for (int64_t h = 0; h < H; ++h) {
            const A inv = A(1) / var[j * H + h];
            const A d = v[h] - mu[j * H + h];
            gmu[j * H + h] += gz * d * inv;
            gvar[j * H + h] += gz * (A(0.5) * d * d * inv * inv - A(0.5) * inv);
            gv[h] -= gz * d * inv;
          }
        }
      }
    }
    // M-step t. ga is reused for gS_j and gla for 1/D_j once consumed.
    const A lam = lambda_at(lam_final, t, T);
    for (int64_t j = 0; j < J; ++j) {
      const A a = hs.a[t * J + j], S = hs.S[t * J + j];
      const A gx = ga[j] * a * (A(1) - a) + gla[j] * (A(1) - a);
      gba[j] += lam * gx;
      const A gC = -lam * gx;
      gbu[j] += gC * S * A(H);
      const A invD = A(1) / (S + A(kDenomEps));
      for (int64_t h = 0; h < H; ++h) {
        const int64_t k = j * H + h;
        gvar[k] += gC * S * A(0.5) / var[k];
        gmu[k] -= A(2) * gvar[k] * mu[k] * A(kDenomEps) * invD;
      }
      ga[j] = gC * (A(H) * bu[j] + hs.lv[t * J + j]);  // gS
      gla[j] = invD;
    }
    for (int64_t i = 0; i < I; ++i) {
      A acc = A(0);
      for (int64_t j = 0; j < J; ++j) {
        const A* v = V + (i * J + j) * H;
        A* gv = gV + (i * J + j) * H;
        const A r = R[i * J + j], w = r * ain[i], invD = gla[j];
        A gw = A(0);
        for (int64_t h = 0; h < H; ++h) {
          const int64_t k = j * H + h;
          const A d = v[h] - mu[k];
          gw += gvar[k] * (d * d - (var[k] - eps)) + gmu[k] * d;
          gv[h] += w * (A(2) * gvar[k] * d + gmu[k]) * invD;
        }
        gw = ga[j] + gw * invD;
        gR[i * J + j] = gw * ain[i];
        acc += gw * r;
      }
      gain[i] += acc;
    }
    for (int64_t k = 0; k < JH; ++k) gmu[k] = gvar[k] = A(0);
    for (int64_t j = 0; j < J; ++j) ga[j] = gla[j] = A(0);
  }
}

}  // namespace em
}  // namespace kx
