// RoPE attention on the CPU: tiled, online softmax (flash-attention's recurrence), no L×L buffer.
// q and k are rotated once into accumulation-type copies (O(L·d) extra); query blocks run in
// parallel. The backward recomputes the scores: one pass over key blocks accumulates dK and dV,
// one pass over query blocks accumulates dQ, so no two tasks write the same row (deterministic).
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/type_map.h"
#include "kexue/dispatch.h"

namespace kx {
namespace cpu {
namespace {

constexpr int64_t kBlockQ = 32;
constexpr int64_t kBlockK = 64;

template <typename A> A dot(const A* __restrict__ a, const A* __restrict__ b, int64_t d) {
  A s = A(0);
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < d; ++c) s += a[c] * b[c];
  return s;
}

template <typename A> void axpy(A* __restrict__ y, A alpha, const A* __restrict__ x, int64_t d) {
#pragma omp simd
  for (int64_t c = 0; c < d; ++c) y[c] += alpha * x[c];
}

// dst[row] = rope_scale·R(±pos)·src[row] for rows [B, Hx, L] of width d; row l of sample b sits
// at position index l + pos_offset.
template <typename Tin, typename Tout, typename A>
void rope_rows(const Tin* src, Tout* dst, int64_t B, int64_t Hx, int64_t L, int64_t d, int64_t pos_offset,
               const attn::Rope& r, bool inverse) {
  const A* inv_freq = static_cast<const A*>(r.inv_freq);
  const A scale = static_cast<A>(r.scale);
  const int64_t rows = B * Hx * L, half = d / 2;
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, d)), [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      const Tin* s = src + row * d;
      Tout* o = dst + row * d;
      if (!inv_freq) {
        for (int64_t c = 0; c < d; ++c) o[c] = static_cast<Tout>(static_cast<A>(s[c]));
        continue;
      }
      const int64_t b = row / (Hx * L), l = row % L;
      const A pos = attn::position<A>(r, b, l + pos_offset);
      for (int64_t p = 0; p < half; ++p) {
        const int64_t lo = attn::pair_lo(p, d, r.interleaved), hi = attn::pair_hi(p, d, r.interleaved);
        A x1 = static_cast<A>(s[lo]), x2 = static_cast<A>(s[hi]);
        attn::rotate<A>(x1, x2, pos * inv_freq[p], scale, inverse);
        o[lo] = static_cast<Tout>(x1);
        o[hi] = static_cast<Tout>(x2);
      }
    }
  });
}

// q and k rotated into accumulation-type copies (queries at the last Lq key positions).
template <typename T, typename A> void rotate_qk(const attn::Args& a, std::vector<A>& qr, std::vector<A>& kr) {
  qr.resize(a.B * a.H * a.Lq * a.d);
  kr.resize(a.B * a.Hkv * a.Lk * a.d);
  rope_rows<T, A, A>(static_cast<const T*>(a.q), qr.data(), a.B, a.H, a.Lq, a.d, a.Lk - a.Lq, a.rope, false);
  rope_rows<T, A, A>(static_cast<const T*>(a.k), kr.data(), a.B, a.Hkv, a.Lk, a.d, 0, a.rope, false);
}

// Scores of a (query block, key block) tile, −inf where masked; returns whether any is visible.
template <typename A>
bool tile_scores(const attn::Args& a, const A* qr, const A* kr, int64_t b, int64_t h, int64_t hk, int64_t i0,
                 int64_t i1, int64_t j0, int64_t j1, A* S) {
  const int64_t d = a.d;
  const A scale = static_cast<A>(a.scale), neg_inf = -std::numeric_limits<A>::infinity();
  bool any = false;
  for (int64_t i = i0; i < i1; ++i) {
    const A* qrow = qr + ((b * a.H + h) * a.Lq + i) * d;
    A* srow = S + (i - i0) * kBlockK;
    for (int64_t j = j0; j < j1; ++j) {
      if (attn::visible(a.mask, b, h, i, j)) {
        srow[j - j0] = dot(qrow, kr + ((b * a.Hkv + hk) * a.Lk + j) * d, d) * scale;
        any = true;
      } else {
        srow[j - j0] = neg_inf;
      }
    }
  }
  return any;
}

template <typename A> A exp_acc(A x) { return kx::exp(x); }

// v in the accumulation type, converted once rather than once per (query, key) pair.
template <typename T, typename A> std::vector<A> to_acc(const T* x, int64_t n) {
  std::vector<A> out(n);
  at::parallel_for(0, n, kGrainElems, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] = static_cast<A>(x[i]);
  });
  return out;
}

template <typename T> void forward_impl(const attn::Args& a) {
  using A = acc_t<T>;
  const int64_t B = a.B, H = a.H, Hkv = a.Hkv, Lq = a.Lq, Lk = a.Lk, d = a.d, G = H / Hkv;
  std::vector<A> qr, kr;
  rotate_qk<T, A>(a, qr, kr);
  const std::vector<A> vr = to_acc<T, A>(static_cast<const T*>(a.v), B * Hkv * Lk * d);
  T* out = static_cast<T*>(a.out);
  A* lse = static_cast<A*>(a.lse);
  const int64_t qblocks = (Lq + kBlockQ - 1) / kBlockQ;
  at::parallel_for(0, B * H * qblocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<A> S(kBlockQ * kBlockK), acc(kBlockQ * d), m(kBlockQ), l(kBlockQ);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / (H * qblocks), h = (task / qblocks) % H, ib = task % qblocks;
      const int64_t hk = h / G, i0 = ib * kBlockQ, i1 = std::min(Lq, i0 + kBlockQ), nq = i1 - i0;
      std::fill(acc.begin(), acc.end(), A(0));
      std::fill(m.begin(), m.end(), -std::numeric_limits<A>::infinity());
      std::fill(l.begin(), l.end(), A(0));
      for (int64_t j0 = 0; j0 < Lk; j0 += kBlockK) {
        const int64_t j1 = std::min(Lk, j0 + kBlockK);
        if (attn::block_hidden(a.mask, b, i0, i1, j0, j1)) continue;
        if (!tile_scores(a, qr.data(), kr.data(), b, h, hk, i0, i1, j0, j1, S.data())) continue;
        for (int64_t r = 0; r < nq; ++r) {
          const A* srow = S.data() + r * kBlockK;
          A mx = m[r];
          for (int64_t c = 0; c < j1 - j0; ++c) mx = std::max(mx, srow[c]);
          if (mx == -std::numeric_limits<A>::infinity()) continue;  // nothing visible yet
          const A alpha = exp_acc(m[r] - mx);
          A* arow = acc.data() + r * d;
          for (int64_t c = 0; c < d; ++c) arow[c] *= alpha;
          A sum = A(0);
          for (int64_t c = 0; c < j1 - j0; ++c) {
            const A p = exp_acc(srow[c] - mx);
            if (p == A(0)) continue;
            sum += p;
            axpy(arow, p, vr.data() + ((b * Hkv + hk) * Lk + j0 + c) * d, d);
          }
          l[r] = l[r] * alpha + sum;
          m[r] = mx;
        }
      }
      for (int64_t r = 0; r < nq; ++r) {
        const int64_t row = (b * H + h) * Lq + i0 + r;
        const bool empty = l[r] == A(0);
        const A inv = empty ? A(0) : A(1) / l[r];
        for (int64_t c = 0; c < d; ++c) out[row * d + c] = static_cast<T>(acc[r * d + c] * inv);
        lse[row] = empty ? std::numeric_limits<A>::infinity() : m[r] + std::log(l[r]);
      }
    }
  });
}

// P and dS of one tile: P = exp(S − lse), dS = P ∘ (dO·Vᵀ − D). Returns false when all P are 0.
template <typename A>
bool tile_grads(const attn::Args& a, const A* qr, const A* kr, const A* vr, const A* go, const A* Dv, int64_t b,
                int64_t h, int64_t hk, int64_t i0, int64_t i1, int64_t j0, int64_t j1, A* P, A* dS) {
  if (!tile_scores(a, qr, kr, b, h, hk, i0, i1, j0, j1, P)) return false;
  const int64_t d = a.d;
  const A* lse = static_cast<const A*>(a.lse);
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t row = (b * a.H + h) * a.Lq + i;
    A* prow = P + (i - i0) * kBlockK;
    A* dsrow = dS + (i - i0) * kBlockK;
    for (int64_t j = j0; j < j1; ++j) {
      const A p = exp_acc(prow[j - j0] - lse[row]);  // exp(−inf) = 0 for masked or empty rows
      prow[j - j0] = p;
      if (p == A(0)) {
        dsrow[j - j0] = A(0);
        continue;
      }
      dsrow[j - j0] = p * (dot(go + row * d, vr + ((b * a.Hkv + hk) * a.Lk + j) * d, d) - Dv[row]);
    }
  }
  return true;
}

template <typename T> void backward_impl(const attn::GradArgs& g) {
  using A = acc_t<T>;
  const attn::Args& a = g.fwd;
  const int64_t B = a.B, H = a.H, Hkv = a.Hkv, Lq = a.Lq, Lk = a.Lk, d = a.d, G = H / Hkv;
  const A scale = static_cast<A>(a.scale);
  std::vector<A> qr, kr, go(B * H * Lq * d), Dv(B * H * Lq);
  rotate_qk<T, A>(a, qr, kr);
  const std::vector<A> vr = to_acc<T, A>(static_cast<const T*>(a.v), B * Hkv * Lk * d);
  const T* gout = static_cast<const T*>(g.grad_out);
  const T* out = static_cast<const T*>(a.out);
  at::parallel_for(0, B * H * Lq, std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, d)), [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      A s = A(0);
      for (int64_t c = 0; c < d; ++c) {
        const A gv = static_cast<A>(gout[row * d + c]);
        go[row * d + c] = gv;
        s += gv * static_cast<A>(out[row * d + c]);
      }
      Dv[row] = s;  // D_i = dO_i · O_i
    }
  });
  const int64_t qblocks = (Lq + kBlockQ - 1) / kBlockQ, kblocks = (Lk + kBlockK - 1) / kBlockK;
  std::vector<A> dkr(B * Hkv * Lk * d, A(0)), dqr(B * H * Lq * d, A(0));
  T* gv_out = static_cast<T*>(g.grad_v);

  // dK, dV: each task owns one key block of one kv head, over every query head of its group.
  at::parallel_for(0, B * Hkv * kblocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<A> P(kBlockQ * kBlockK), dS(kBlockQ * kBlockK), dv(kBlockK * d);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / (Hkv * kblocks), hk = (task / kblocks) % Hkv, jb = task % kblocks;
      const int64_t j0 = jb * kBlockK, j1 = std::min(Lk, j0 + kBlockK);
      std::fill(dv.begin(), dv.end(), A(0));
      for (int64_t h = hk * G; h < (hk + 1) * G; ++h) {
        for (int64_t i0 = 0; i0 < Lq; i0 += kBlockQ) {
          const int64_t i1 = std::min(Lq, i0 + kBlockQ);
          if (attn::block_hidden(a.mask, b, i0, i1, j0, j1)) continue;
          if (!tile_grads<A>(a, qr.data(), kr.data(), vr.data(), go.data(), Dv.data(), b, h, hk, i0, i1, j0, j1, P.data(),
                                dS.data()))
            continue;
          for (int64_t i = i0; i < i1; ++i) {
            const int64_t row = (b * H + h) * Lq + i;
            for (int64_t j = j0; j < j1; ++j) {
              const A p = P[(i - i0) * kBlockK + j - j0], ds = dS[(i - i0) * kBlockK + j - j0];
              if (p == A(0)) continue;
              axpy(dv.data() + (j - j0) * d, p, go.data() + row * d, d);
              axpy(dkr.data() + ((b * Hkv + hk) * Lk + j) * d, ds * scale, qr.data() + row * d, d);
            }
          }
        }
      }
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t c = 0; c < d; ++c)
          gv_out[((b * Hkv + hk) * Lk + j) * d + c] = static_cast<T>(dv[(j - j0) * d + c]);
    }
  });

  // dQ: each task owns one query block of one head.
  at::parallel_for(0, B * H * qblocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<A> P(kBlockQ * kBlockK), dS(kBlockQ * kBlockK);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / (H * qblocks), h = (task / qblocks) % H, ib = task % qblocks;
      const int64_t hk = h / G, i0 = ib * kBlockQ, i1 = std::min(Lq, i0 + kBlockQ);
      for (int64_t j0 = 0; j0 < Lk; j0 += kBlockK) {
        const int64_t j1 = std::min(Lk, j0 + kBlockK);
        if (attn::block_hidden(a.mask, b, i0, i1, j0, j1)) continue;
        if (!tile_grads<A>(a, qr.data(), kr.data(), vr.data(), go.data(), Dv.data(), b, h, hk, i0, i1, j0, j1, P.data(),
                              dS.data()))
          continue;
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = j0; j < j1; ++j) {
            const A ds = dS[(i - i0) * kBlockK + j - j0];
            if (ds != A(0))
              axpy(dqr.data() + ((b * H + h) * Lq + i) * d, ds * scale, kr.data() + ((b * Hkv + hk) * Lk + j) * d, d);
          }
      }
    }
  });
  // Back through the rotation: the gradient of rope_scale·R·x is rope_scale·Rᵀ·g.
  rope_rows<A, T, A>(dqr.data(), static_cast<T*>(g.grad_q), B, H, Lq, d, Lk - Lq, a.rope, true);
  rope_rows<A, T, A>(dkr.data(), static_cast<T*>(g.grad_k), B, Hkv, Lk, d, 0, a.rope, true);
}

}  // namespace

void rope_attention_forward(const attn::Args& a) {
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] { forward_impl<T>(a); });
}

void rope_attention_backward(const attn::GradArgs& g) {
  KX_DTYPE_SWITCH(g.fwd.dtype, TypeMap, T, [&] { backward_impl<T>(g); });
}

void apply_rope(const attn::RopeArgs& r) {
  KX_DTYPE_SWITCH(r.dtype, TypeMap, T, [&] {
    rope_rows<T, T, acc_t<T>>(static_cast<const T*>(r.x), static_cast<T*>(r.out), r.B, r.H, r.L, r.d, 0, r.rope,
                              r.inverse);
  });
}

}  // namespace cpu
}  // namespace kx
