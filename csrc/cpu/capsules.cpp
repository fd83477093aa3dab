// Dynamic routing on the CPU: one task per sample (at::parallel_for over the batch), each with
// its own scratch; every sum runs in a fixed order, so results do not depend on the thread count.
#include <ATen/Parallel.h>

#include <vector>

#include "cpu/kernels.h"
#include "cpu/type_map.h"
#include "kexue/dispatch.h"

namespace kx {
namespace cpu {
namespace {

using caps::Squash;

// s[j, :] += w[j] u[j, :] for one input capsule (u, w its rows)
template <typename T, typename A>
void weighted_sum_add(const T* u, const A* w, A* s, int64_t n_out, int64_t dim) {
  for (int64_t j = 0; j < n_out; ++j) {
    const A c = w[j];
    A* sj = s + j * dim;
    const T* uj = u + j * dim;
    for (int64_t d = 0; d < dim; ++d) sj[d] += c * static_cast<A>(uj[d]);
  }
}

// s[j, :] = Σ_i w[i, j] u[i, j, :]
template <typename T, typename A>
void weighted_sum(const T* u, const A* w, A* s, int64_t n_in, int64_t n_out, int64_t dim) {
  for (int64_t k = 0; k < n_out * dim; ++k) s[k] = A(0);
  for (int64_t i = 0; i < n_in; ++i) weighted_sum_add(u + i * n_out * dim, w + i * n_out, s, n_out, dim);
}

// out[i, j] (+)= u[i, j, :] · x[j, :]
template <typename T, typename A>
void row_dots(const T* u, const A* x, A* out, bool accumulate, int64_t n_in, int64_t n_out,
              int64_t dim) {
  for (int64_t i = 0; i < n_in; ++i) {
    for (int64_t j = 0; j < n_out; ++j) {
      const T* uij = u + (i * n_out + j) * dim;
      const A* xj = x + j * dim;
      A acc = A(0);
      for (int64_t d = 0; d < dim; ++d) acc += static_cast<A>(uij[d]) * xj[d];
      out[i * n_out + j] = accumulate ? out[i * n_out + j] + acc : acc;
    }
  }
}

template <typename A> void squash_rows(const A* s, A* v, int64_t n_out, int64_t dim, A k) {
  for (int64_t j = 0; j < n_out; ++j) caps::squash_row(s + j * dim, v + j * dim, dim, k);
}

template <typename A>
void squash_vjp_rows(const A* s, const A* g, A* gs, int64_t n_out, int64_t dim, A k) {
  for (int64_t j = 0; j < n_out; ++j) caps::squash_vjp_row(s + j * dim, g + j * dim, gs + j * dim, dim, k);
}

// The forward of one sample; c_hist / s_hist / v_hist (R slices each) are filled when given.
// After the first iteration each pass over u is fused: for input capsule i the agreements
// u_ij·v_j update the logits, the softmax gives c_i, and c_ij u_ij is added to s while row i of
// u is still in cache (one stream of u per iteration instead of two).
template <typename T, typename A>
void route(const T* u, int64_t R, Squash sq, int64_t n_in, int64_t n_out, int64_t dim, A* logits,
           A* c, A* s, A* v, A* c_hist, A* s_hist, A* v_hist) {
  const int64_t NN = n_in * n_out, P = n_out * dim;
  const A k = caps::squash_k<A>(sq);
  for (int64_t t = 0; t < NN; ++t) logits[t] = A(0);
  for (int64_t r = 0; r < R; ++r) {
    A* cr = c_hist ? c_hist + r * NN : c;
    A* sr = s_hist ? s_hist + r * P : s;
    A* vr = v_hist ? v_hist + r * P : v;
    if (r == 0) {
      for (int64_t i = 0; i < n_in; ++i) caps::softmax_row(logits + i * n_out, cr + i * n_out, n_out);
      weighted_sum(u, cr, sr, n_in, n_out, dim);
    } else {
      const A* vp = v_hist ? v_hist + (r - 1) * P : v;  // v of the previous iteration
      for (int64_t t = 0; t < P; ++t) sr[t] = A(0);
      for (int64_t i = 0; i < n_in; ++i) {
        const T* ui = u + i * P;
        A* li = logits + i * n_out;
        A* ci = cr + i * n_out;
        row_dots(ui, vp, li, true, 1, n_out, dim);
        caps::softmax_row(li, ci, n_out);
        weighted_sum_add(ui, ci, sr, n_out, dim);
      }
    }
    squash_rows(sr, vr, n_out, dim, k);
  }
}

template <typename T> void forward_impl(const caps::Args& a) {
  using A = acc_t<T>;
  const int64_t NN = a.n_in * a.n_out, P = a.n_out * a.dim;
  at::parallel_for(0, a.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> scratch(caps::forward_scratch(a.n_in, a.n_out, a.dim));
    A *logits = scratch.data(), *c = logits + NN, *s = c + NN, *v = s + P;
    for (int64_t b = begin; b < end; ++b) {
      const T* u = static_cast<const T*>(a.u) + b * NN * a.dim;
      route<T, A>(u, a.iterations, a.squash, a.n_in, a.n_out, a.dim, logits, c, s, v, nullptr,
                  nullptr, nullptr);
      T* vo = static_cast<T*>(a.v) + b * P;
      T* co = static_cast<T*>(a.c) + b * NN;
      for (int64_t t = 0; t < P; ++t) vo[t] = static_cast<T>(v[t]);
      for (int64_t t = 0; t < NN; ++t) co[t] = static_cast<T>(c[t]);
    }
  });
}

template <typename T> void backward_impl(const caps::GradArgs& a) {
  using A = acc_t<T>;
  const int64_t R = a.iterations, NN = a.n_in * a.n_out, P = a.n_out * a.dim;
  const int64_t n_in = a.n_in, n_out = a.n_out, dim = a.dim;
  const A k = caps::squash_k<A>(a.squash);
  at::parallel_for(0, a.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> scratch(caps::backward_scratch(R, n_in, n_out, dim));
    A *logits = scratch.data(), *C = logits + NN, *G = C + R * NN, *S = G + R * NN;
    A *V = S + R * P, *GS = V + R * P, *gv = GS + R * P;
    for (int64_t b = begin; b < end; ++b) {
      const T* u = static_cast<const T*>(a.u) + b * NN * dim;
      const T* g = static_cast<const T*>(a.grad_v) + b * P;
      T* gu = static_cast<T*>(a.grad_u) + b * NN * dim;
      route<T, A>(u, R, a.squash, n_in, n_out, dim, logits, nullptr, nullptr, nullptr, C, S, V);
      for (int64_t t = 0; t < P; ++t) gv[t] = static_cast<A>(g[t]);
      const int64_t r_first = a.detach_routing ? R - 1 : 0;
      // gs^(R-1) from g; then for r = R-1 .. 1, one fused pass over u per iteration: per input
      // capsule i, gc_ij = u_ij·gs^(r)_j, G^(r)_i = softmax vjp (+ G^(r+1)_i), and
      // gv^(r-1)_j += G^(r)_ij u_ij; then gs^(r-1) = squash vjp of gv^(r-1).
      squash_vjp_rows(S + (R - 1) * P, gv, GS + (R - 1) * P, n_out, dim, k);
      for (int64_t r = R - 1; r > r_first; --r) {
        A* Gr = G + r * NN;
        const A* Gnext = r < R - 1 ? G + (r + 1) * NN : nullptr;
        const A* gs = GS + r * P;
        for (int64_t t = 0; t < P; ++t) gv[t] = A(0);
        for (int64_t i = 0; i < n_in; ++i) {
          const T* ui = u + i * P;
          A* gi = Gr + i * n_out;
          row_dots(ui, gs, gi, false, 1, n_out, dim);
          caps::softmax_row_vjp(C + r * NN + i * n_out, gi, Gnext ? Gnext + i * n_out : nullptr, n_out);
          weighted_sum_add(ui, gi, gv, n_out, dim);
        }
        squash_vjp_rows(S + (r - 1) * P, gv, GS + (r - 1) * P, n_out, dim, k);
      }
      // du_ij = Σ_r c^(r)_ij gs^(r)_j + Σ_{r<R-1} G^(r+1)_ij v^(r)_j, vectorised over d
      for (int64_t i = 0; i < n_in; ++i) {
        for (int64_t j = 0; j < n_out; ++j) {
          const int64_t ij = i * n_out + j;
          A* acc = gv;  // free by now: reused as the [dim] accumulator
          for (int64_t d = 0; d < dim; ++d) acc[d] = A(0);
          for (int64_t r = r_first; r < R; ++r) {
            const A cr = C[r * NN + ij];
            const A* gs = GS + r * P + j * dim;
            for (int64_t d = 0; d < dim; ++d) acc[d] += cr * gs[d];
            if (r < R - 1) {
              const A gr = G[(r + 1) * NN + ij];
              const A* vr = V + r * P + j * dim;
              for (int64_t d = 0; d < dim; ++d) acc[d] += gr * vr[d];
            }
          }
          T* out = gu + ij * dim;
          for (int64_t d = 0; d < dim; ++d) out[d] = static_cast<T>(acc[d]);
        }
      }
    }
  });
}

}  // namespace

void dynamic_routing_forward(const caps::Args& a) {
  if (a.batch == 0) return;
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] { forward_impl<T>(a); });
}

void dynamic_routing_backward(const caps::GradArgs& a) {
  if (a.batch == 0) return;
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] { backward_impl<T>(a); });
}

}  // namespace cpu
}  // namespace kx
