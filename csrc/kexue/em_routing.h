// EM routing between matrix capsules (Hinton, Sabour & Frosst 2018): the per-sample math shared by
// the CPU kernel (one at::parallel_for task per sample) and the CUDA kernel (one block per sample).
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
  void* state = nullptr;  // [batch, history_scratch] when given: the history is kept there
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
// for its backward (when asked for, and no larger than the votes).
KX_HOST_DEVICE int64_t history_scratch(int64_t T, int64_t I, int64_t J, int64_t H) {
  return T * (I * J + 3 * J * H + 4 * J);  // R, mu, var, 1/var, S, a, log a, Σ½log var
}
KX_HOST_DEVICE int64_t grad_scratch(int64_t I, int64_t J, int64_t H) {
  return I * J + 2 * J * H + 2 * J;  // gR, gmu, gvar, ga, gla
}
KX_HOST_DEVICE int64_t backward_scratch(int64_t T, int64_t I, int64_t J, int64_t H) {
  return history_scratch(T, I, J, H) + grad_scratch(I, J, H);  // a history recomputed, then gradients
}

template <typename A> struct History {
  A *R, *mu, *var, *iv, *S, *a, *la, *lv;
};
// Carves the per-iteration history out of one sample's scratch.
template <typename A>
KX_HOST_DEVICE History<A> make_history(A* base, int64_t T, int64_t I, int64_t J, int64_t H) {
  History<A> h;
  h.R = base;
  h.mu = h.R + T * I * J;
  h.var = h.mu + T * J * H;
  h.iv = h.var + T * J * H;
  h.S = h.iv + T * J * H;
  h.a = h.S + T * J;
  h.la = h.a + T * J;
  h.lv = h.la + T * J;
  return h;
}

// The parts below are what both loop nests share: the CPU runs them capsule by capsule (a
// capsule's column of votes stays in L1 between its two passes), the GPU block gives each part
// to its own thread (csrc/cuda/em_routing.cu). Sums over inputs i run in order i = 0, 1, ...
// The column parts take W consecutive pose entries from h0 and keep their sums in registers: the
// CPU passes W = 16 (one AVX-512 vector; a running sum through memory would serialise on
// store-to-load forwarding), the tail and the GPU W = 1. Each entry's arithmetic is the same for
// every W.
constexpr int kPoseChunk = 16;

// M-step of output capsule j for pose entries [h0, h0 + W): mu, var (eps added) and 1/var of
// those entries (mu, var, iv point at capsule j's row); returns S_j = Σ_i R_ij a_i.
template <int W, typename A>
KX_HOST_DEVICE A m_column(const A* V, const A* ain, const A* R, A eps, int64_t I, int64_t J, int64_t H, int64_t j,
                          int64_t h0, A* mu, A* var, A* iv) {
  A m[W], q[W];
  for (int k = 0; k < W; ++k) m[k] = q[k] = A(0);
  A S = A(0);
  for (int64_t i = 0; i < I; ++i) {
    const A w = R[i * J + j] * ain[i];
    const A* v = V + (i * J + j) * H + h0;
    S += w;
    KX_SIMD for (int k = 0; k < W; ++k) m[k] += w * v[k];
  }
  const A inv = A(1) / (S + A(kDenomEps));
  for (int k = 0; k < W; ++k) m[k] *= inv;
  for (int64_t i = 0; i < I; ++i) {
    const A w = R[i * J + j] * ain[i];
    const A* v = V + (i * J + j) * H + h0;
    KX_SIMD for (int k = 0; k < W; ++k) {
      const A d = v[k] - m[k];
      q[k] += w * d * d;
    }
  }
  for (int k = 0; k < W; ++k) {
    const A vk = q[k] * inv + eps;
    mu[h0 + k] = m[k];
    var[h0 + k] = vk;
    iv[h0 + k] = A(1) / vk;
  }
  return S;
}

// The activation of capsule j once its whole var row is known: lv = Σ_h ½ log var, a, log a.
template <typename A>
KX_HOST_DEVICE void m_activation(const A* var, A S, A bu, A ba, A lam, int64_t H, A* a, A* la, A* lv) {
  A l = A(0);
  for (int64_t h = 0; h < H; ++h) l += A(0.5) * log_(var[h]);
  *lv = l;
  const A cost = (A(H) * bu + l) * S;
  sigmoid_and_log(lam * (ba - cost), a, la);
}

// E-step logit z_ij of vote v = V_ij against capsule j (mu, iv: its rows).
template <typename A>
KX_HOST_DEVICE A e_logit(const A* v, const A* mu, const A* iv, int64_t H, A la, A lv) {
  const A q = kx::lane_sum<A>(H, [&](int64_t h) {
    const A d = v[h] - mu[h];
    return d * d * iv[h];
  });
  return la - A(0.5) * q - lv - A(H) * A(kHalfLog2Pi);
}

// Row i of R from its logits z, in place: the max-subtracted softmax over j, in three steps so
// that the CPU can run the exponentials of all rows as one vector loop (the GPU gives each row
// to a thread and runs all three).
template <typename A> KX_HOST_DEVICE void softmax_shift(A* z, int64_t J) {
  A m = z[0];
  for (int64_t j = 1; j < J; ++j) m = z[j] > m ? z[j] : m;
  for (int64_t j = 0; j < J; ++j) z[j] -= m;
}
template <typename A> KX_HOST_DEVICE void exp_in_place(A* z, int64_t n) {
  KX_SIMD for (int64_t k = 0; k < n; ++k) z[k] = kx::exp(z[k]);
}
template <typename A> KX_HOST_DEVICE void softmax_normalise(A* e, int64_t J) {
  A sum = A(0);
  for (int64_t j = 0; j < J; ++j) sum += e[j];
  const A inv = A(1) / sum;
  for (int64_t j = 0; j < J; ++j) e[j] *= inv;
}

template <typename A>
KX_HOST_DEVICE void forward_sample(const A* V, const A* ain, const A* bu, const A* ba, int64_t T,
                                   A lam_final, A eps, int64_t I, int64_t J, int64_t H,
                                   History<A> hs) {
  const int64_t IJ = I * J, JH = J * H;
  for (int64_t k = 0; k < IJ; ++k) hs.R[k] = A(1) / A(J);
  for (int64_t t = 0; t < T; ++t) {
    const A lam = lambda_at(lam_final, t, T);
    const A *R = hs.R + t * IJ;
    A *mu = hs.mu + t * JH, *var = hs.var + t * JH, *iv = hs.iv + t * JH;
    for (int64_t j = 0; j < J; ++j) {
      A S = A(0);
      int64_t h0 = 0;
      for (; h0 + kPoseChunk <= H; h0 += kPoseChunk)
        S = m_column<kPoseChunk>(V, ain, R, eps, I, J, H, j, h0, mu + j * H, var + j * H, iv + j * H);
      for (; h0 < H; ++h0) S = m_column<1>(V, ain, R, eps, I, J, H, j, h0, mu + j * H, var + j * H, iv + j * H);
      hs.S[t * J + j] = S;
      m_activation(var + j * H, S, bu[j], ba[j], lam, H, hs.a + t * J + j, hs.la + t * J + j, hs.lv + t * J + j);
    }
    if (t + 1 == T) break;
    A* Rn = hs.R + (t + 1) * IJ;
    for (int64_t j = 0; j < J; ++j)
      for (int64_t i = 0; i < I; ++i)
        Rn[i * J + j] = e_logit(V + (i * J + j) * H, mu + j * H, iv + j * H, H, hs.la[t * J + j], hs.lv[t * J + j]);
    for (int64_t i = 0; i < I; ++i) softmax_shift(Rn + i * J, J);
    exp_in_place(Rn, IJ);
    for (int64_t i = 0; i < I; ++i) softmax_normalise(Rn + i * J, J);
  }
}

// Backward of the E-step, first half: dL/dR^(t+1) of row i becomes dL/dz in place.
template <typename A> KX_HOST_DEVICE void softmax_row_grad(const A* r, A* g, int64_t J) {
  A dot = A(0);
  for (int64_t j = 0; j < J; ++j) dot += r[j] * g[j];
  for (int64_t j = 0; j < J; ++j) g[j] = r[j] * (g[j] - dot);
}

// Backward of the E-step into capsule j's pose entries [h0, h0 + W) through every logit z_ij,
// gz = dL/dz (column j of a row-major [I, J]): gmu, gvar (capsule j's rows) gain their terms;
// dL/dV of each vote loses the same term as gmu.
template <int W, typename A>
KX_HOST_DEVICE void e_column_grad(const A* V, const A* mu, const A* iv, const A* gz, int64_t I, int64_t J,
                                  int64_t H, int64_t j, int64_t h0, A* gmu, A* gvar, A* gV) {
  A m[W], ivl[W], gm[W], gq[W];
  for (int k = 0; k < W; ++k) {
    m[k] = mu[h0 + k];
    ivl[k] = iv[h0 + k];
    gm[k] = gmu[h0 + k];
    gq[k] = gvar[h0 + k];
  }
  for (int64_t i = 0; i < I; ++i) {
    const A g = gz[i * J + j];
    const A* v = V + (i * J + j) * H + h0;
    A* gv = gV + (i * J + j) * H + h0;
    KX_SIMD for (int k = 0; k < W; ++k) {
      const A inv = ivl[k];
      const A d = v[k] - m[k];
      gm[k] += g * d * inv;
      gq[k] += g * (A(0.5) * d * d * inv * inv - A(0.5) * inv);
      gv[k] -= g * d * inv;
    }
  }
  for (int k = 0; k < W; ++k) {
    gmu[h0 + k] = gm[k];
    gvar[h0 + k] = gq[k];
  }
}

// dL/dC_j of M-step t from dL/da_j and dL/dlog a_j (a = sigmoid(lam (beta_a - C))).
template <typename A> KX_HOST_DEVICE A cost_grad(A ga, A gla, A a, A lam) {
  return -lam * (ga * a * (A(1) - a) + gla * (A(1) - a));
}

// Backward of M-step t into capsule j's pose entry h through its cost (gC), before the votes'.
template <typename A>
KX_HOST_DEVICE void m_pose_grad(A gC, A S, A mu, A var, A* gmu, A* gvar) {
  const A invD = A(1) / (S + A(kDenomEps));
  *gvar += gC * S * A(0.5) / var;
  *gmu -= A(2) * *gvar * mu * A(kDenomEps) * invD;
}

// Backward of M-step t into vote V_ij (rows v, mu, var of capsule j; gmu, gvar its full
// gradients): adds to gv and returns dL/dw_ij less dL/dS_j.
template <typename A>
KX_HOST_DEVICE A m_vote_grad(const A* v, const A* mu, const A* var, const A* gmu, const A* gvar, A w, A invD, A eps,
                             int64_t H, A* __restrict__ gv) {
  for (int64_t h = 0; h < H; ++h) gv[h] += w * (A(2) * gvar[h] * (v[h] - mu[h]) + gmu[h]) * invD;
  return invD * kx::lane_sum<A>(H, [&](int64_t h) {
    const A d = v[h] - mu[h];
    return gvar[h] * (d * d - (var[h] - eps)) + gmu[h] * d;
  });
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
    const A *mu = hs.mu + t * JH, *var = hs.var + t * JH, *iv = hs.iv + t * JH, *R = hs.R + t * IJ;
    const A *S = hs.S + t * J, *a = hs.a + t * J;
    if (t + 1 < T) {  // E-step t: gR holds dL/dR^(t+1)
      const A* Rn = hs.R + (t + 1) * IJ;
      for (int64_t i = 0; i < I; ++i) softmax_row_grad(Rn + i * J, gR + i * J, J);
      for (int64_t j = 0; j < J; ++j) {
        for (int64_t i = 0; i < I; ++i) gla[j] += gR[i * J + j];
        int64_t h0 = 0;
        for (; h0 + kPoseChunk <= H; h0 += kPoseChunk)
          e_column_grad<kPoseChunk>(V, mu + j * H, iv + j * H, gR, I, J, H, j, h0, gmu + j * H, gvar + j * H, gV);
        for (; h0 < H; ++h0) e_column_grad<1>(V, mu + j * H, iv + j * H, gR, I, J, H, j, h0, gmu + j * H, gvar + j * H, gV);
      }
    }
    // M-step t. ga is reused for gS_j and gla for 1/D_j once consumed.
    const A lam = lambda_at(lam_final, t, T);
    for (int64_t j = 0; j < J; ++j) {
      const A gC = cost_grad(ga[j], gla[j], a[j], lam);
      gba[j] -= gC;
      gbu[j] += gC * S[j] * A(H);
      for (int64_t h = 0; h < H; ++h)
        m_pose_grad(gC, S[j], mu[j * H + h], var[j * H + h], gmu + j * H + h, gvar + j * H + h);
      ga[j] = gC * (A(H) * bu[j] + hs.lv[t * J + j]);  // gS
      gla[j] = A(1) / (S[j] + A(kDenomEps));
    }
    for (int64_t i = 0; i < I; ++i) {
      A acc = A(0);
      for (int64_t j = 0; j < J; ++j) {
        const A r = R[i * J + j];
        const A gw = ga[j] + m_vote_grad(V + (i * J + j) * H, mu + j * H, var + j * H, gmu + j * H, gvar + j * H,
                                         r * ain[i], gla[j], eps, H, gV + (i * J + j) * H);
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
