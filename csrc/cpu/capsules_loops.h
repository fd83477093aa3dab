// The per-sample loops of dynamic routing (csrc/kexue/capsules.h has the math), torch-free so
// that the fp32/fp64 ones are compiled once per instruction set (csrc/cpu/isa/capsules.cpp; a
// capsule's dim = 8 or 16 entries is one AVX2 or AVX-512 vector) and the half/bf16 ones in the
// driver (csrc/cpu/capsules.cpp). Every sum runs in a fixed order: bitwise reproducible for a
// given build.
#pragma once
#include "cpu/isa.h"
#include "cpu/streaming.h"
#include "kexue/capsules.h"

namespace kx {
namespace cpu {
namespace capsloops {

using caps::Squash;

struct Loops {
  // One sample each; scratch: caps::forward_scratch / backward_scratch entries of acc_t<T>.
  // state: caps::state_size entries of this sample, written by the forward (when not null) and
  // read by the backward instead of recomputing the routing (when not null). stream: write gu
  // with non-temporal stores (cpu/streaming.h).
  void (*forward)(const caps::Problem& p, const void* u, void* v, void* c, void* state, void* scratch);
  void (*backward)(const caps::GradArgs& a, const void* u, const void* g, void* gu, const void* state,
                   void* scratch, bool stream);
};

// s[j, :] += w[j] u[j, :] for one input capsule (u, w its rows)
template <typename T, typename A>
static void weighted_sum_add(const T* u, const A* w, A* s, int64_t n_out, int64_t dim) {
  for (int64_t j = 0; j < n_out; ++j) {
    const A c = w[j];
    A* sj = s + j * dim;
    const T* uj = u + j * dim;
    for (int64_t d = 0; d < dim; ++d) sj[d] += c * static_cast<A>(uj[d]);
  }
}

// s[j, :] = Σ_i w[i, j] u[i, j, :]
template <typename T, typename A>
static void weighted_sum(const T* u, const A* w, A* s, int64_t n_in, int64_t n_out, int64_t dim) {
  for (int64_t k = 0; k < n_out * dim; ++k) s[k] = A(0);
  for (int64_t i = 0; i < n_in; ++i) weighted_sum_add(u + i * n_out * dim, w + i * n_out, s, n_out, dim);
}

// out[i, j] (+)= u[i, j, :] · x[j, :]
template <typename T, typename A>
static void row_dots(const T* u, const A* x, A* out, bool accumulate, int64_t n_in, int64_t n_out,
              int64_t dim) {
  for (int64_t i = 0; i < n_in; ++i) {
    for (int64_t j = 0; j < n_out; ++j) {
      const T* uij = u + (i * n_out + j) * dim;
      const A* xj = x + j * dim;
      const A acc = lane_sum<A>(dim, [&](int64_t d) { return static_cast<A>(uij[d]) * xj[d]; });
      out[i * n_out + j] = accumulate ? out[i * n_out + j] + acc : acc;
    }
  }
}

template <typename A> static void squash_rows(const A* s, A* v, int64_t n_out, int64_t dim, A k) {
  for (int64_t j = 0; j < n_out; ++j) caps::squash_row(s + j * dim, v + j * dim, dim, k);
}

template <typename A>
static void squash_vjp_rows(const A* s, const A* g, A* gs, int64_t n_out, int64_t dim, A k) {
  for (int64_t j = 0; j < n_out; ++j) caps::squash_vjp_row(s + j * dim, g + j * dim, gs + j * dim, dim, k);
}

// The forward of one sample; c_hist / s_hist / v_hist (R slices each) are filled when given.
// After the first iteration each pass over u is fused: for input capsule i the agreements
// u_ij·v_j update the logits, the softmax gives c_i, and c_ij u_ij is added to s while row i of
// u is still in cache (one stream of u per iteration instead of two).
template <typename T, typename A>
static void route(const T* u, int64_t R, Squash sq, int64_t n_in, int64_t n_out, int64_t dim, A* logits,
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

// The forward of one sample: v [n_out, dim] and c [n_in, n_out] in T; scratch of
// caps::forward_scratch accumulation-type entries.
template <typename T>
static void forward_sample(const caps::Problem& p, const void* up, void* vp, void* cp, void* statep, void* scratch) {
  using A = acc_t<T>;
  const int64_t R = p.iterations, NN = p.n_in * p.n_out, P = p.n_out * p.dim;
  A *logits = static_cast<A*>(scratch), *c = logits + NN, *s = c + NN, *v = s + P;
  A* state = static_cast<A*>(statep);  // c^(r), s^(r), v^(r) of every iteration when given
  route<T, A>(static_cast<const T*>(up), R, p.squash, p.n_in, p.n_out, p.dim, logits, c, s, v, state,
              state ? state + R * NN : nullptr, state ? state + R * NN + R * P : nullptr);
  if (state) {
    c = state + (R - 1) * NN;
    v = state + R * NN + R * P + (R - 1) * P;
  }
  T* vo = static_cast<T*>(vp);
  T* co = static_cast<T*>(cp);
  for (int64_t t = 0; t < P; ++t) vo[t] = static_cast<T>(v[t]);
  for (int64_t t = 0; t < NN; ++t) co[t] = static_cast<T>(c[t]);
}

// W entries of du_ij from entry jd = j·dim + d0 of the capsule states (see backward_sample).
constexpr int kDuChunk = 8;
template <int W, typename T, typename A>
static void du_entries(const A* C, const A* G, const A* GS, const A* V, int64_t R, int64_t r_first, int64_t NN,
                       int64_t P, int64_t ij, int64_t jd, T* out) {
  A acc[W];
  KX_SIMD for (int k = 0; k < W; ++k) acc[k] = A(0);
  for (int64_t r = r_first; r < R; ++r) {
    const A cr = C[r * NN + ij];
    const A* gs = GS + r * P + jd;
    KX_SIMD for (int k = 0; k < W; ++k) acc[k] += cr * gs[k];
    if (r < R - 1) {
      const A gr = G[(r + 1) * NN + ij];
      const A* vr = V + r * P + jd;
      KX_SIMD for (int k = 0; k < W; ++k) acc[k] += gr * vr[k];
    }
  }
  KX_SIMD for (int k = 0; k < W; ++k) out[k] = static_cast<T>(acc[k]);
}

// The backward of one sample: gu [n_in, n_out, dim] in T from u and g = dL/dv; scratch of
// caps::backward_scratch accumulation-type entries.
template <typename T>
static void backward_sample(const caps::GradArgs& a, const void* up, const void* gp, void* gup, const void* statep,
                            void* scratch, bool stream) {
  using A = acc_t<T>;
  const int64_t R = a.iterations, NN = a.n_in * a.n_out, P = a.n_out * a.dim;
  const int64_t n_in = a.n_in, n_out = a.n_out, dim = a.dim;
  const A k = caps::squash_k<A>(a.squash);
  A *logits = static_cast<A*>(scratch), *C = logits + NN, *G = C + R * NN, *S = G + R * NN;
  A *V = S + R * P, *GS = V + R * P, *gv = GS + R * P;
  const T* u = static_cast<const T*>(up);
  const T* g = static_cast<const T*>(gp);
  T* gu = static_cast<T*>(gup);
  if (statep) {  // the forward's c^(r), s^(r), v^(r): read only
    C = const_cast<A*>(static_cast<const A*>(statep));
    S = C + R * NN;
    V = S + R * P;
  } else {
    route<T, A>(u, R, a.squash, n_in, n_out, dim, logits, nullptr, nullptr, nullptr, C, S, V);
  }
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
  // du_ij = Σ_r c^(r)_ij gs^(r)_j + Σ_{r<R-1} G^(r+1)_ij v^(r)_j, vectorised over d in register
  // rows of kDuChunk entries (a row kept in memory would chain every update through a store).
  // Entries [e0, e0 + n) of the flat gu go to o; a block may start or end inside a row.
  streaming::write_blocks(NN * dim, stream, gu, static_cast<T*>(nullptr), [&](int64_t e0, int64_t n, T* o, T*) {
    for (int64_t e = e0; e < e0 + n;) {
      const int64_t ij = e / dim, j = ij % n_out;
      const int64_t d_end = std::min(e0 + n, (ij + 1) * dim) - ij * dim;
      int64_t d = e - ij * dim;
      for (; d + kDuChunk <= d_end; d += kDuChunk)
        du_entries<kDuChunk>(C, G, GS, V, R, r_first, NN, P, ij, j * dim + d, o + (ij * dim + d - e0));
      for (; d < d_end; ++d) du_entries<1>(C, G, GS, V, R, r_first, NN, P, ij, j * dim + d, o + (ij * dim + d - e0));
      e = ij * dim + d_end;
    }
  });
  if (stream) streaming::fence();
}

template <typename T> static Loops make_loops() {
  Loops l;
  l.forward = &forward_sample<T>;
  l.backward = &backward_sample<T>;
  return l;
}

}  // namespace capsloops

// Entry points of each per-ISA build of csrc/cpu/isa/capsules.cpp (fp32 and fp64 only).
#define KX_DECLARE_CAPS_ISA(NS) \
  namespace NS {                \
  capsloops::Loops capsules_loops(DType dtype); \
  }
KX_DECLARE_CAPS_ISA(base)
KX_DECLARE_CAPS_ISA(avx2)
KX_DECLARE_CAPS_ISA(avx512)
#undef KX_DECLARE_CAPS_ISA

}  // namespace cpu
}  // namespace kx
