// RoPE attention on the CPU: flash-attention's tiling and online softmax, every tile product on the
// register-blocked kernel of cpu/attention_tiles.h, no L×L buffer. q and k are rotated once into
// accumulation-type copies (O(L·d) extra, from a table of the phases of each position: the sines
// and cosines are shared by all heads); k (and v in the backward) are also kept transposed so
// every product reads its right-hand tile row by row.
//
// Forward: one task per (sample, head, query block). Backward: one task per (sample, kv head,
// run of key blocks) accumulates dK and dV of its keys and dQ of every query it meets, so scores
// are computed once. Small problems split the keys into several runs, each with its own dQ
// buffer, summed in run order afterwards. The split depends only on the sizes: deterministic.
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/attention_tiles.h"
#include "cpu/isa.h"
#include "cpu/kernels.h"
#include "cpu/type_map.h"
#include "kexue/dispatch.h"

namespace kx {
namespace cpu {
namespace {

constexpr int64_t kBlockQ = 64;
constexpr int64_t kBlockK = 64;
constexpr int64_t kMinBackwardTasks = 8;  // below this many (sample, kv head) pairs, split keys

template <typename A> attnloops::TileOps<A> tile_ops();

template <> attnloops::TileOps<float> tile_ops<float>() {
  switch (active_isa()) {
    case Isa::Avx512: return avx512::attention_tile_ops_f32();
    case Isa::Avx2: return avx2::attention_tile_ops_f32();
    default: return base::attention_tile_ops_f32();
  }
}

template <> attnloops::TileOps<double> tile_ops<double>() {
  switch (active_isa()) {
    case Isa::Avx512: return avx512::attention_tile_ops_f64();
    case Isa::Avx2: return avx2::attention_tile_ops_f64();
    default: return base::attention_tile_ops_f64();
  }
}

int64_t row_grain(int64_t d) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, d)); }

// cos and sin of angle pos·inv_freq[p] for every position index (0..len) of every positions row
// (one, or one per sample), pair-major within a position: [rows, len, half, 2].
template <typename A> struct Phases {
  std::vector<A> cs;
  int64_t len = 0, half = 0;
  bool per_sample = false;
  const A* at(int64_t b, int64_t pos_index) const { return cs.data() + ((per_sample ? b : 0) * len + pos_index) * half * 2; }
};

template <typename A> Phases<A> phases(const attn::Rope& r, int64_t B, int64_t len, int64_t d) {
  Phases<A> t;
  if (!r.inv_freq) return t;
  const A* inv_freq = static_cast<const A*>(r.inv_freq);
  t.len = len;
  t.half = d / 2;
  t.per_sample = r.positions && r.positions_batch_stride != 0;
  const int64_t rows = (t.per_sample ? B : 1) * len;
  t.cs.resize(rows * t.half * 2);
  at::parallel_for(0, rows, row_grain(d), [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      const A pos = attn::position<A>(r, row / len, row % len);
      A* o = t.cs.data() + row * t.half * 2;
      for (int64_t p = 0; p < t.half; ++p) attn::sin_cos<A>(pos * inv_freq[p], o + 2 * p + 1, o + 2 * p);
    }
  });
  return t;
}

// dst[row] = rope_scale·R(±pos)·src[row] for rows [B, Hx, L] of width d; row l of sample b sits
// at position index l + pos_offset. Without a rotation the rows are only converted.
template <typename Tin, typename Tout, typename A>
void rope_rows(const Tin* src, Tout* dst, int64_t B, int64_t Hx, int64_t L, int64_t d, int64_t pos_offset,
               const attn::Rope& r, const Phases<A>& ph, bool inverse) {
  const A scale = static_cast<A>(r.scale);
  const int64_t half = d / 2;
  at::parallel_for(0, B * Hx * L, row_grain(d), [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      const Tin* s = src + row * d;
      Tout* o = dst + row * d;
      if (ph.cs.empty()) {
        for (int64_t c = 0; c < d; ++c) o[c] = static_cast<Tout>(static_cast<A>(s[c]));
        continue;
      }
      const A* cs = ph.at(row / (Hx * L), row % L + pos_offset);
      for (int64_t p = 0; p < half; ++p) {
        const int64_t lo = attn::pair_lo(p, d, r.interleaved), hi = attn::pair_hi(p, d, r.interleaved);
        A x1 = static_cast<A>(s[lo]), x2 = static_cast<A>(s[hi]);
        attn::rotate_cs<A>(x1, x2, cs[2 * p], cs[2 * p + 1], scale, inverse);
        o[lo] = static_cast<Tout>(x1);
        o[hi] = static_cast<Tout>(x2);
      }
    }
  });
}

// [N, L, d] → [N, d, L].
template <typename A> std::vector<A> transposed(const A* x, int64_t N, int64_t L, int64_t d) {
  std::vector<A> t(N * L * d);
  at::parallel_for(0, N * d, row_grain(L), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / d, c = r % d;
      const A* src = x + n * L * d + c;
      A* dst = t.data() + r * L;
      for (int64_t l = 0; l < L; ++l) dst[l] = src[l * d];
    }
  });
  return t;
}

template <typename T, typename A> std::vector<A> to_acc(const T* x, int64_t n) {
  std::vector<A> out(n);
  at::parallel_for(0, n, kGrainElems, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] = static_cast<A>(x[i]);
  });
  return out;
}

// Everything both passes read, in the accumulation type.
template <typename A> struct Operands {
  Phases<A> ph;
  std::vector<A> q, k, kt;  // q, k rotated; kt = kᵀ per kv head
  std::vector<A> v_acc;      // v converted, where its type is not the accumulation type
  const A* v = nullptr;      // v as given, or v_acc's data: so never copied, only moved
  Operands() = default;
  Operands(Operands&&) = default;
  Operands(const Operands&) = delete;
  Operands& operator=(const Operands&) = delete;
};

template <typename T, typename A> Operands<A> operands(const attn::Args& a) {
  Operands<A> o;
  o.ph = phases<A>(a.rope, a.B, a.Lk, a.d);
  o.q.resize(a.B * a.H * a.Lq * a.d);
  o.k.resize(a.B * a.Hkv * a.Lk * a.d);
  rope_rows<T, A, A>(static_cast<const T*>(a.q), o.q.data(), a.B, a.H, a.Lq, a.d, a.Lk - a.Lq, a.rope, o.ph, false);
  rope_rows<T, A, A>(static_cast<const T*>(a.k), o.k.data(), a.B, a.Hkv, a.Lk, a.d, 0, a.rope, o.ph, false);
  o.kt = transposed(o.k.data(), a.B * a.Hkv, a.Lk, a.d);
  if constexpr (std::is_same<T, A>::value) {
    o.v = static_cast<const A*>(a.v);
  } else {
    o.v_acc = to_acc<T, A>(static_cast<const T*>(a.v), a.B * a.Hkv * a.Lk * a.d);
    o.v = o.v_acc.data();
  }
  return o;
}

// Sets the scores of keys that query i0 + r cannot see to −inf, for the nq×nk tile at S.
template <typename A>
void mask_tile(const attn::Mask& m, int64_t Lk, int64_t b, int64_t h, int64_t i0, int64_t nq, int64_t j0, int64_t nk,
               A* S) {
  const A neg_inf = -std::numeric_limits<A>::infinity();
  const int64_t j1 = j0 + nk;
  for (int64_t r = 0; r < nq; ++r) {
    A* s = S + r * kBlockK;
    const attn::Span sp = attn::visible_span(m, b, i0 + r, Lk);
    const bool whole = j1 <= sp.a1 || (j0 >= sp.b0 && j1 <= sp.b1);
    if (!whole) {
#pragma omp simd
      for (int64_t c = 0; c < nk; ++c) s[c] = attn::span_contains(sp, j0 + c) ? s[c] : neg_inf;
    }
    if (m.dense)
      for (int64_t c = 0; c < nk; ++c)
        if (!attn::dense_visible(m, b, h, i0 + r, j0 + c)) s[c] = neg_inf;
  }
}

// S·scale tile of queries [i0, i0 + nq) of head h against keys [j0, j0 + nk), masked.
template <typename A>
void score_tile(const attnloops::TileOps<A>& ops, const attn::Args& a, const Operands<A>& o, int64_t b, int64_t h,
                int64_t i0, int64_t nq, int64_t j0, int64_t nk, A* S) {
  const int64_t d = a.d, hk = h / (a.H / a.Hkv);
  const A* Q = o.q.data() + ((b * a.H + h) * a.Lq + i0) * d;
  const A* Kt = o.kt.data() + (b * a.Hkv + hk) * d * a.Lk + j0;
  ops.gemm(nq, nk, d, static_cast<A>(a.scale), Q, d, 1, Kt, a.Lk, false, S, kBlockK);
  mask_tile(a.mask, a.Lk, b, h, i0, nq, j0, nk, S);
}

template <typename T> void forward_impl(const attn::Args& a) {
  using A = acc_t<T>;
  const auto ops = tile_ops<A>();
  const int64_t B = a.B, H = a.H, Hkv = a.Hkv, Lq = a.Lq, Lk = a.Lk, d = a.d, G = H / Hkv;
  const Operands<A> o = operands<T, A>(a);
  T* out = static_cast<T*>(a.out);
  A* lse = static_cast<A*>(a.lse);
  const A neg_inf = -std::numeric_limits<A>::infinity();
  const int64_t qblocks = (Lq + kBlockQ - 1) / kBlockQ;
  at::parallel_for(0, B * H * qblocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<A> S(kBlockQ * kBlockK), acc(kBlockQ * d), m(kBlockQ), l(kBlockQ);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / (H * qblocks), h = (task / qblocks) % H, ib = task % qblocks;
      const int64_t hk = h / G, i0 = ib * kBlockQ, nq = std::min(Lq, i0 + kBlockQ) - i0;
      std::fill(acc.begin(), acc.end(), A(0));
      std::fill(m.begin(), m.end(), neg_inf);
      std::fill(l.begin(), l.end(), A(0));
      for (int64_t j0 = 0; j0 < Lk; j0 += kBlockK) {
        const int64_t nk = std::min(Lk, j0 + kBlockK) - j0;
        if (attn::block_hidden(a.mask, b, i0, i0 + nq, j0, j0 + nk)) continue;
        score_tile(ops, a, o, b, h, i0, nq, j0, nk, S.data());
        bool any = false;
        for (int64_t r = 0; r < nq; ++r) {
          A* s = S.data() + r * kBlockK;
          bool nan = false;  // a NaN score makes the row NaN (as softmax does), never a masked-looking 0
          A mx = ops.row_max(s, nk, m[r], &nan);
          if (nan) mx = std::numeric_limits<A>::quiet_NaN();
          if (mx == neg_inf) {  // nothing visible yet: this row adds nothing
            std::fill(s, s + nk, A(0));
            continue;
          }
          any = true;
          const A alpha = kx::exp(m[r] - mx);
          if (alpha != A(1)) {
            A* arow = acc.data() + r * d;
#pragma omp simd
            for (int64_t c = 0; c < d; ++c) arow[c] *= alpha;
          }
          l[r] = l[r] * alpha + ops.exp_row(s, s, nk, mx);
          m[r] = mx;
        }
        if (any) ops.gemm(nq, d, nk, A(1), S.data(), kBlockK, 1, o.v + ((b * Hkv + hk) * Lk + j0) * d, d, true,
                          acc.data(), d);
      }
      for (int64_t r = 0; r < nq; ++r) {
        const int64_t row = (b * H + h) * Lq + i0 + r;
        const bool empty = l[r] == A(0);  // a NaN l (NaN scores) is not empty: it propagates
        const A inv = empty ? A(0) : A(1) / l[r];
        for (int64_t c = 0; c < d; ++c) out[row * d + c] = static_cast<T>(acc[r * d + c] * inv);
        lse[row] = empty ? std::numeric_limits<A>::infinity() : m[r] + std::log(l[r]);
      }
    }
  });
}

template <typename T> void backward_impl(const attn::GradArgs& g) {
  using A = acc_t<T>;
  const attn::Args& a = g.fwd;
  const auto ops = tile_ops<A>();
  const int64_t B = a.B, H = a.H, Hkv = a.Hkv, Lq = a.Lq, Lk = a.Lk, d = a.d, G = H / Hkv;
  const A scale = static_cast<A>(a.scale);
  const A* lse = static_cast<const A*>(a.lse);
  const Operands<A> o = operands<T, A>(a);
  const std::vector<A> vt = transposed(o.v, B * Hkv, Lk, d);
  std::vector<A> go(B * H * Lq * d), Dv(B * H * Lq);
  const T* gout = static_cast<const T*>(g.grad_out);
  const T* out = static_cast<const T*>(a.out);
  at::parallel_for(0, B * H * Lq, row_grain(d), [&](int64_t r0, int64_t r1) {
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

  const int64_t kblocks = (Lk + kBlockK - 1) / kBlockK, pairs = B * Hkv;
  const int64_t runs = pairs >= kMinBackwardTasks ? 1 : std::min(kblocks, (kMinBackwardTasks + pairs - 1) / pairs);
  const int64_t per_run = (kblocks + runs - 1) / runs, q_elems = B * H * Lq * d;
  std::vector<A> dq(runs * q_elems, A(0)), dk(B * Hkv * Lk * d);
  T* gv_out = static_cast<T*>(g.grad_v);

  at::parallel_for(0, pairs * runs, 1, [&](int64_t t0, int64_t t1) {
    std::vector<A> P(kBlockQ * kBlockK), dS(kBlockQ * kBlockK), dk_blk(kBlockK * d), dv_blk(kBlockK * d);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / (Hkv * runs), hk = (task / runs) % Hkv, run = task % runs;
      const A* K = o.k.data() + (b * Hkv + hk) * Lk * d;
      const A* Vt = vt.data() + (b * Hkv + hk) * d * Lk;
      A* dq_run = dq.data() + run * q_elems;
      for (int64_t jb = run * per_run; jb < std::min(kblocks, (run + 1) * per_run); ++jb) {
        const int64_t j0 = jb * kBlockK, nk = std::min(Lk, j0 + kBlockK) - j0;
        std::fill(dk_blk.begin(), dk_blk.end(), A(0));
        std::fill(dv_blk.begin(), dv_blk.end(), A(0));
        for (int64_t h = hk * G; h < (hk + 1) * G; ++h) {
          for (int64_t i0 = 0; i0 < Lq; i0 += kBlockQ) {
            const int64_t nq = std::min(Lq, i0 + kBlockQ) - i0, row0 = (b * H + h) * Lq + i0;
            if (attn::block_hidden(a.mask, b, i0, i0 + nq, j0, j0 + nk)) continue;
            score_tile(ops, a, o, b, h, i0, nq, j0, nk, P.data());
            A mass = A(0);  // P = exp(S − lse): 0 where masked and on empty rows (lse = +inf)
            for (int64_t r = 0; r < nq; ++r) mass += ops.exp_row(&P[r * kBlockK], &P[r * kBlockK], nk, lse[row0 + r]);
            if (mass == A(0)) continue;
            const A* dO = go.data() + row0 * d;
            ops.gemm(nk, d, nq, A(1), P.data(), 1, kBlockK, dO, d, true, dv_blk.data(), d);  // dV += Pᵀ·dO
            ops.gemm(nq, nk, d, A(1), dO, d, 1, Vt + j0, Lk, false, dS.data(), kBlockK);     // dP = dO·Vᵀ
            for (int64_t r = 0; r < nq; ++r) {
              const A Di = Dv[row0 + r];
              A* ds = &dS[r * kBlockK];
              const A* p = &P[r * kBlockK];
#pragma omp simd
              for (int64_t c = 0; c < nk; ++c) ds[c] = p[c] * (ds[c] - Di);
            }
            const A* Q = o.q.data() + row0 * d;
            ops.gemm(nk, d, nq, scale, dS.data(), 1, kBlockK, Q, d, true, dk_blk.data(), d);  // dK += s·dSᵀ·Q
            ops.gemm(nq, d, nk, scale, dS.data(), kBlockK, 1, K + j0 * d, d, true, dq_run + row0 * d, d);  // dQ += s·dS·K
          }
        }
        const int64_t base = ((b * Hkv + hk) * Lk + j0) * d;
        std::copy(dk_blk.begin(), dk_blk.begin() + nk * d, dk.begin() + base);
        for (int64_t e = 0; e < nk * d; ++e) gv_out[base + e] = static_cast<T>(dv_blk[e]);
      }
    }
  });
  if (runs > 1) {
    at::parallel_for(0, q_elems, kGrainElems, [&](int64_t e0, int64_t e1) {
      for (int64_t run = 1; run < runs; ++run)
        for (int64_t e = e0; e < e1; ++e) dq[e] += dq[run * q_elems + e];
    });
  }
  // Back through the rotation: the gradient of rope_scale·R·x is rope_scale·Rᵀ·g.
  rope_rows<A, T, A>(dq.data(), static_cast<T*>(g.grad_q), B, H, Lq, d, Lk - Lq, a.rope, o.ph, true);
  rope_rows<A, T, A>(dk.data(), static_cast<T*>(g.grad_k), B, Hkv, Lk, d, 0, a.rope, o.ph, true);
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
    using A = acc_t<T>;
    const Phases<A> ph = phases<A>(r.rope, r.B, r.L, r.d);
    rope_rows<T, T, A>(static_cast<const T*>(r.x), static_cast<T*>(r.out), r.B, r.H, r.L, r.d, 0, r.rope, ph,
                       r.inverse);
  });
}

}  // namespace cpu
}  // namespace kx
