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

// Entries per register row in the loops below: one AVX-512 vector of floats (a capsule's dim is
// typically 16), two AVX2 ones.
constexpr int kRowLanes = 16;

// Entries [d0, d0 + W) of s[j] for the G output capsules j0 .. j0 + G - 1: s[j, d] = Σ_i w[i, j]
// u[i, j, d], summed over i in order in register rows. G rows at once, so that G independent
// sums hide the FMA latency (one at a time, each waited on the last); rows in memory instead
// chained every update through a store and a reload.
template <int G, int W, typename T, typename A>
static inline void weighted_sum_entries(const T* u, const A* w, A* s, int64_t n_in, int64_t n_out, int64_t dim,
                                        int64_t j0, int64_t d0) {
  A acc[G][W];
  for (int g = 0; g < G; ++g) KX_SIMD for (int k = 0; k < W; ++k) acc[g][k] = A(0);
  for (int64_t i = 0; i < n_in; ++i) {
    const T* x = u + (i * n_out + j0) * dim + d0;
    const A* c = w + i * n_out + j0;
    for (int g = 0; g < G; ++g) KX_SIMD for (int k = 0; k < W; ++k) acc[g][k] += c[g] * static_cast<A>(x[g * dim + k]);
  }
  for (int g = 0; g < G; ++g) KX_SIMD for (int k = 0; k < W; ++k) s[(j0 + g) * dim + d0 + k] = acc[g][k];
}

// s[j, :] = Σ_i w[i, j] u[i, j, :], each entry summed over i in order (as adding row after row
// of c_ij u_ij would).
template <int G, typename T, typename A>
static void weighted_sum_rows(const T* u, const A* w, A* s, int64_t n_in, int64_t n_out, int64_t dim, int64_t j) {
  int64_t d = 0;
  for (; d + kRowLanes <= dim; d += kRowLanes) weighted_sum_entries<G, kRowLanes>(u, w, s, n_in, n_out, dim, j, d);
  for (; d < dim; ++d) weighted_sum_entries<G, 1>(u, w, s, n_in, n_out, dim, j, d);
}

template <typename T, typename A>
static void weighted_sum(const T* u, const A* w, A* s, int64_t n_in, int64_t n_out, int64_t dim) {
  int64_t j = 0;
  for (; j + 4 <= n_out; j += 4) weighted_sum_rows<4>(u, w, s, n_in, n_out, dim, j);
  for (; j + 2 <= n_out; j += 2) weighted_sum_rows<2>(u, w, s, n_in, n_out, dim, j);
  for (; j < n_out; ++j) weighted_sum_rows<1>(u, w, s, n_in, n_out, dim, j);
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
// After the first iteration, two passes over u (one sample's u is a few hundred KiB, in L2):
// the agreements u_ij·v_j update the logits and the softmax gives c, input capsule by input
// capsule; then s = Σ_i c_ij u_ij, output capsule by output capsule.
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
      const A uniform = caps::first_coupling<A>(n_out);
      for (int64_t t = 0; t < NN; ++t) cr[t] = uniform;
    } else {
      const A* vp = v_hist ? v_hist + (r - 1) * P : v;  // v of the previous iteration
      for (int64_t i = 0; i < n_in; ++i) {
        A* li = logits + i * n_out;
        row_dots(u + i * P, vp, li, true, 1, n_out, dim);
        caps::softmax_row(li, cr + i * n_out, n_out);
      }
    }
    weighted_sum(u, cr, sr, n_in, n_out, dim);
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

// What du_ij = Σ_r c^(r)_ij gs^(r)_j + Σ_{r<R-1} G^(r+1)_ij v^(r)_j is made of (see backward_sample).
template <typename A> struct DuSource {
  const A *C, *G, *GS, *V;
  int64_t R, r_first, NN, P, n_out, dim;
};

// W entries of du_ij from entry jd = j·dim + d0 of the capsule states, summed in a register row
// (a row kept in memory would chain every update through a store).
template <int W, typename T, typename A>
static inline void du_entries(const DuSource<A>& s, int64_t ij, int64_t jd, T* out) {
  A acc[W];
  KX_SIMD for (int k = 0; k < W; ++k) acc[k] = A(0);
  for (int64_t r = s.r_first; r < s.R; ++r) {
    const A cr = s.C[r * s.NN + ij];
    const A* gs = s.GS + r * s.P + jd;
    KX_SIMD for (int k = 0; k < W; ++k) acc[k] += cr * gs[k];
    if (r < s.R - 1) {
      const A gr = s.G[(r + 1) * s.NN + ij];
      const A* vr = s.V + r * s.P + jd;
      KX_SIMD for (int k = 0; k < W; ++k) acc[k] += gr * vr[k];
    }
  }
  KX_SIMD for (int k = 0; k < W; ++k) out[k] = static_cast<T>(acc[k]);
}

// Entries [e0, e0 + n) of the flat du (rows ij of dim entries) into o[0, n); the span may start or
// end inside a row. A function of its own, with divisions only at its start: inlined into the
// caller's loop, its counters lived on the stack, and a division per row cost as much as the
// row's arithmetic.
template <typename T, typename A>
static __attribute__((noinline)) void du_span(const DuSource<A>& s, int64_t e0, int64_t n, T* o) {
  const int64_t dim = s.dim;
  int64_t ij = e0 / dim, j = ij % s.n_out, d = e0 - ij * dim;
  for (int64_t at = -d; at < n; at += dim, d = 0) {  // o[at + d] is entry d of row ij
    const int64_t d_end = std::min(dim, n - at);
    for (; d + kRowLanes <= d_end; d += kRowLanes) du_entries<kRowLanes>(s, ij, j * dim + d, o + (at + d));
    for (; d < d_end; ++d) du_entries<1>(s, ij, j * dim + d, o + (at + d));
    ++ij;
    j = j + 1 == s.n_out ? 0 : j + 1;
  }
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
  // gs^(R-1) from g; then for r = R-1 .. 1, two passes over u per iteration: per input capsule
  // i, gc_ij = u_ij·gs^(r)_j and G^(r)_i = softmax vjp (+ G^(r+1)_i); then
  // gv^(r-1)_j = Σ_i G^(r)_ij u_ij, and gs^(r-1) = squash vjp of gv^(r-1).
  squash_vjp_rows(S + (R - 1) * P, gv, GS + (R - 1) * P, n_out, dim, k);
  for (int64_t r = R - 1; r > r_first; --r) {
    A* Gr = G + r * NN;
    const A* Gnext = r < R - 1 ? G + (r + 1) * NN : nullptr;
    const A* gs = GS + r * P;
    for (int64_t i = 0; i < n_in; ++i) {
      A* gi = Gr + i * n_out;
      row_dots(u + i * P, gs, gi, false, 1, n_out, dim);
      caps::softmax_row_vjp(C + r * NN + i * n_out, gi, Gnext ? Gnext + i * n_out : nullptr, n_out);
    }
    weighted_sum(u, Gr, gv, n_in, n_out, dim);
    squash_vjp_rows(S + (r - 1) * P, gv, GS + (r - 1) * P, n_out, dim, k);
  }
  // du, through the streaming blocks when the output is large enough
  const DuSource<A> du{C, G, GS, V, R, r_first, NN, P, n_out, dim};
  streaming::write_blocks(NN * dim, stream, gu, static_cast<T*>(nullptr),
                          [&](int64_t e0, int64_t n, T* o, T*) { du_span(du, e0, n, o); });
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
