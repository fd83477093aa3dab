// Dynamic routing between capsules (Sabour, Frosst & Hinton 2017): the math shared by the CPU and
// CUDA kernels. For one sample, u = û [N_in, N_out, D]:
//   b = 0; repeat r times: c_i = softmax_j(b_i); s_j = Σ_i c_ij u_ij; v_j = squash(s_j);
//                          if not last: b_ij += u_ij · v_j
// squash(s) = q/(k + q) · s/sqrt(q + eps), q = |s|², with k = 1 (paper, "sabour") or k = 0.5 (the
// variant of the kexue.fm capsule posts, "post"); eps keeps s = 0 -> 0 (and its gradient finite).
//
// Backward (reverse mode through every iteration), for one sample, given g = dL/dv:
//   the forward is recomputed keeping c^(r), s^(r), v^(r) (small: [R, N_in, N_out] and
//   [R, N_out, D]); then for r = R-1 .. 0:
//     gv^(r) = g (r = R-1) or Σ_i G^(r+1)_ij u_ij (r < R-1), G^(r) = dL/db^(r)
//     gs^(r) = squash_vjp(s^(r), gv^(r)); gc_ij = u_ij · gs^(r)_j
//     G^(r)_ij = G^(r+1)_ij + c_ij (gc_ij - Σ_k c_ik gc_ik)
//   and finally, in one pass over u:
//     du_ij = Σ_r c^(r)_ij gs^(r)_j + Σ_{r<R-1} G^(r+1)_ij v^(r)_j
// detach_routing: the logits b are constants, so du_ij = c^(R-1)_ij · squash_vjp(s^(R-1), g)_j.
#pragma once
#include "kexue/common.h"

namespace kx {
namespace caps {

enum class Squash : int { Sabour = 0, Post = 1 };

// eps under the square root of |s|: s = 0 gives v = 0 and a finite gradient.
constexpr double kSquashEps = 1e-12;

template <typename A> KX_HOST_DEVICE A squash_k(Squash sq) {
  return sq == Squash::Post ? A(0.5) : A(1);
}

// v = f(q)·s with q = |s|²: f(q) = q / ((k + q)·sqrt(q + eps)).
template <typename A> KX_HOST_DEVICE A squash_factor(A q, A k) {
  return q / ((k + q) * sqrt_(q + A(kSquashEps)));
}

// f'(q) = (k(q + eps) - q(k + q)/2) / ((k + q)² (q + eps)^{3/2}), finite at q = 0.
template <typename A> KX_HOST_DEVICE A squash_factor_deriv(A q, A k) {
  const A qe = q + A(kSquashEps), kq = k + q;
  return (k * qe - A(0.5) * q * kq) / (kq * kq * qe * sqrt_(qe));
}

// The Jacobian of squash is symmetric (f I + 2 f' s sᵀ), so its vjp is its jvp:
//   gs = f(q)·g + 2 f'(q)·(s·g)·s. Returns the two coefficients (of g and of s).
template <typename A> struct SquashVjp {
  A cg, cs;
};
template <typename A> KX_HOST_DEVICE SquashVjp<A> squash_vjp_coeffs(A q, A s_dot_g, A k) {
  SquashVjp<A> r;
  r.cg = squash_factor(q, k);
  r.cs = A(2) * squash_factor_deriv(q, k) * s_dot_g;
  return r;
}

// gs = (d squash(s)/ds)ᵀ·g for one capsule of dim entries.
template <typename A> KX_HOST_DEVICE void squash_vjp_row(const A* s, const A* g, A* gs, int64_t dim, A k) {
  A q = A(0), sg = A(0);
  for (int64_t d = 0; d < dim; ++d) {
    q += s[d] * s[d];
    sg += s[d] * g[d];
  }
  const SquashVjp<A> co = squash_vjp_coeffs(q, sg, k);
  for (int64_t d = 0; d < dim; ++d) gs[d] = co.cg * g[d] + co.cs * s[d];
}

// out[j] = softmax(in)[j] over n entries (max-subtracted). in and out may alias.
template <typename A> KX_HOST_DEVICE void softmax_row(const A* in, A* out, int64_t n) {
  if (n <= 0) return;
  A m = in[0];
  for (int64_t j = 1; j < n; ++j) m = in[j] > m ? in[j] : m;
  A z = A(0);
  for (int64_t j = 0; j < n; ++j) {
    const A e = kx::exp(in[j] - m);
    out[j] = e;
    z += e;
  }
  const A inv = A(1) / z;
  for (int64_t j = 0; j < n; ++j) out[j] *= inv;
}

// In place: gc[j] <- c[j]·(gc[j] - Σ_k c[k] gc[k]) (+ prev[j] when prev is given): the softmax vjp.
template <typename A>
KX_HOST_DEVICE void softmax_row_vjp(const A* c, A* gc, const A* prev, int64_t n) {
  A dot = A(0);
  for (int64_t j = 0; j < n; ++j) dot += c[j] * gc[j];
  for (int64_t j = 0; j < n; ++j) gc[j] = c[j] * (gc[j] - dot) + (prev ? prev[j] : A(0));
}

// What the forward and the backward launch share.
struct Problem {
  DType dtype;
  Squash squash;
  int64_t iterations;
  int64_t batch, n_in, n_out, dim;
  const void* u;  // [batch, n_in, n_out, dim]
  void* workspace;
};

struct Args : Problem {
  void* v;  // [batch, n_out, dim]
  void* c;  // [batch, n_in, n_out], final couplings, same dtype as u
};

struct GradArgs : Problem {
  bool detach_routing;
  const void* grad_v;  // [batch, n_out, dim]
  void* grad_u;        // [batch, n_in, n_out, dim]
};

// Scratch of one sample, in units of the acc type: forward and backward.
KX_HOST_DEVICE int64_t forward_scratch(int64_t n_in, int64_t n_out, int64_t dim) {
  return 2 * n_in * n_out + 2 * n_out * dim;  // logits, c, s, v
}
KX_HOST_DEVICE int64_t backward_scratch(int64_t R, int64_t n_in, int64_t n_out, int64_t dim) {
  // logits; c^(r) and G^(r) [R, n_in, n_out]; s^(r), v^(r), gs^(r) [R, n_out, dim]; gv [n_out, dim]
  return n_in * n_out + 2 * R * n_in * n_out + 3 * R * n_out * dim + n_out * dim;
}

}  // namespace caps
}  // namespace kx
