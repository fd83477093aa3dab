// Dynamic routing between capsules (Sabour, Frosst & Hinton 2017): the math shared by the CPU and
// CUDA kernels. For one sample, u = û [N_in, N_out, D]:
//   b = 0; repeat r times: c_i = softmax_j(b_i); s_j = Σ_i c_ij u_ij; v_j = squash(s_j);
//                          if not last: b_ij += u_ij · v_j
// squash(s) = q/(k + q) · s/sqrt(q + eps), q = |s|², with k = 1 (paper, "sabour") or k = 0.5 (the
// variant of the kexue.fm capsule posts, "post"); eps keeps s = 0 -> 0 (and its gradient finite).
//
// Backward (reverse mode through every iteration), for one sample, given g = dL/dv:
//   c^(r), s^(r), v^(r) (small: [R, N_in, N_out] and [R, N_out, D]) are read from the forward's
//   state, or recomputed; then for r = R-1 .. 0:
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

// The largest iteration count the ops take (every iteration is kept for the backward).
constexpr int64_t kMaxIterations = 1000;

enum class Squash : int { Sabour = 0, Post = 1 };

// e = sqrt(eps), eps = 1e-12 (python SQUASH_EPS) under the square root of |s|: s = 0 gives v = 0
// and a finite gradient. Kept as its root so that n² + eps = e²(1 + (n/e)²) needs no n².
constexpr double kSquashEpsRoot = 1e-6;

template <typename A> KX_HOST_DEVICE A squash_k(Squash sq) {
  return sq == Squash::Post ? A(0.5) : A(1);
}

// squash(s) = f(n)·s for the length n = |s|, with f(n) = n/(k + n²) · n/sqrt(n² + eps).
// Its Jacobian f I + n f'(n) ŝŝᵀ has the eigenvalue f across ŝ = s/n and h'(n) = f·rho along it
// (h = f·n = |v|), where rho = d log h / d log n = 2k/(k + n²) + eps/(n² + eps).
// Everything comes from n without forming q = n²: in fp32 q overflows from n ~ 2e19 and is
// subnormal below n ~ 1e-19. And the textbook gs = f·g + 2f'(q)·(s·g)·s gets the radial
// eigenvalue h' = f + 2q·f'(q) ~ 2k/n³ as the difference of two terms ~1/n, lost to rounding once
// n² ≳ k/ulp (n ~ 4e3 in fp32; k + q then also rounds to q inside f'). Here f and rho are products
// and quotients of positive terms: a few ulps over the whole range.
template <typename A> struct SquashCoeffs {
  A m;    // max_d |s_d| (1 for s = 0): the capsule is scaled as s/m, whose entries are <= 1
  A r;    // |s/m|, in [1, sqrt(dim)], so that n = m·r and ŝ = (s/m)/r
  A f;    // v = f·s
  A rho;  // the radial eigenvalue over f
};

template <typename A> KX_HOST_DEVICE SquashCoeffs<A> squash_coeffs(const A* s, int64_t dim, A k) {
  SquashCoeffs<A> c;
  A m = A(0);
  for (int64_t d = 0; d < dim; ++d) {
    const A a = kx::abs(s[d]);
    m = a > m ? a : m;
  }
  if (!(m > A(0))) {  // s = 0: v = 0 and gs = f(0)·g = 0; NaN entries still reach v and gs
    c.m = c.r = c.rho = A(1);
    c.f = A(0);
    return c;
  }
  A ss = A(0);  // Σ (s_d/m)² in [1, dim]: cannot overflow or underflow
  for (int64_t d = 0; d < dim; ++d) {
    const A x = s[d] / m;
    ss += x * x;
  }
  c.m = m;
  c.r = sqrt_(ss);
  const A n = m * c.r;  // overflows only past the type's range; then f = 0 and rho = 0 (the limits)
  // over = n/(k + n²) and comp = k/(k + n²), with the small one of n²/k, k/n² as the variable.
  A over, comp;
  if (n <= A(1)) {
    const A x = n * n / k;
    over = n / k / (A(1) + x);
    comp = A(1) / (A(1) + x);
  } else {
    const A y = k / n / n;
    over = A(1) / n / (A(1) + y);
    comp = y / (A(1) + y);
  }
  // n/sqrt(n² + eps) and e/sqrt(n² + eps), with the small one of n/e, e/n as the variable.
  const A e = A(kSquashEpsRoot);
  A n_r, e_r;
  if (n >= e) {
    const A t = e / n, w = sqrt_(A(1) + t * t);
    n_r = A(1) / w;
    e_r = t / w;
  } else {
    const A t = n / e, w = sqrt_(A(1) + t * t);
    n_r = t / w;
    e_r = A(1) / w;
  }
  c.f = over * n_r;
  c.rho = A(2) * comp + e_r * e_r;
  return c;
}

// v = squash(s) for one capsule of dim entries.
template <typename A> KX_HOST_DEVICE void squash_row(const A* s, A* v, int64_t dim, A k) {
  const A f = squash_coeffs(s, dim, k).f;
  for (int64_t d = 0; d < dim; ++d) v[d] = f * s[d];
}

// gs = (d squash(s)/ds)ᵀ·g for one capsule (the Jacobian is symmetric): with g split along and
// across ŝ = (s/m)/r, gs = f·(g - p·ŝ) + f·rho·p·ŝ, p = ŝ·g. Each part is scaled by its own
// eigenvalue: f·g + f(rho - 1)·p·ŝ would cancel along ŝ once rho << 1 (|s|² >> k), losing the
// radial part entirely (dim = 1, or g along s).
template <typename A> KX_HOST_DEVICE void squash_vjp_row(const A* s, const A* g, A* gs, int64_t dim, A k) {
  const SquashCoeffs<A> c = squash_coeffs(s, dim, k);
  A p = A(0);
  for (int64_t d = 0; d < dim; ++d) p += s[d] / c.m / c.r * g[d];
  const A f_rho = c.f * c.rho;
  for (int64_t d = 0; d < dim; ++d) {
    const A g_par = p * (s[d] / c.m / c.r);
    gs[d] = c.f * (g[d] - g_par) + f_rho * g_par;
  }
}

// The couplings of the first iteration, softmax of all-zero logits: 1/n_out, exactly what
// softmax_row gives for them (exp(0) = 1, and n_out ones sum exactly).
template <typename A> KX_HOST_DEVICE A first_coupling(int64_t n_out) { return A(1) / static_cast<A>(n_out); }

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
  void* state = nullptr;  // [batch, state_size] acc type, filled when given
};

struct GradArgs : Problem {
  bool detach_routing;
  const void* grad_v;  // [batch, n_out, dim]
  void* grad_u;        // [batch, n_in, n_out, dim]
  const void* state = nullptr;  // the forward's state: the routing is then not recomputed
};

// The per-iteration state the backward needs, per sample in units of the acc type: c^(r)
// [R, n_in, n_out], then s^(r) and v^(r) [R, n_out, dim]. The forward saves it when asked and
// it is no larger than u_hat itself; otherwise the backward recomputes the routing.
KX_HOST_DEVICE int64_t state_size(int64_t R, int64_t n_in, int64_t n_out, int64_t dim) {
  return R * n_in * n_out + 2 * R * n_out * dim;
}

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
