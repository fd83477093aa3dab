// RoPE attention on the GPU. fp16/bf16 with head dim 32/64/96/128 on sm_80+ take the tensor-core
// kernels of attention_tc.cu; everything else this SIMT path (fp16/bf16/fp32 accumulate in fp32,
// fp64 in fp64).
// q and k are rotated once into accumulation-type workspace copies; then one warp owns one query
// row (forward, dQ) or one key row (dK, dV): lanes take 32 keys (queries) at a time for the
// scores, and split the head dimension for the accumulators. Online softmax as in flash-attention;
// key blocks that the structured masks hide entirely are skipped. No L×L buffer.
#include <algorithm>

#include "cuda/attention_tc.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "kexue/attention.h"
#include "kexue/dispatch.h"

namespace kx {
namespace cuda {
namespace {

constexpr int kWarps = 4;  // rows per block
constexpr int kMaxPerLane = 8;  // d ≤ 256

template <typename A> __device__ __forceinline__ A inf_of() { return static_cast<A>(INFINITY); }

// dst = rope_scale·R(±pos)·src: rotates q and k into accumulation-type copies, implements
// apply_rope, and rotates gradients back (inverse).
template <typename Tin, typename Tout, typename A>
__global__ void rope_out_kernel(const Tin* src, Tout* dst, int64_t rows, int64_t Hx, int64_t L, int64_t d,
                                int64_t pos_offset, attn::Rope r, bool inverse) {
  // An odd d (no RoPE then) leaves column d - 1 unpaired: its slot copies it unrotated.
  const int64_t half = d / 2, slots = (d + 1) / 2;
  const int64_t total = rows * slots;
  const A* inv_freq = static_cast<const A*>(r.inv_freq);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = e / slots, p = e % slots;
    if (p == half) {
      store(dst + row * d + d - 1, load<A>(src + row * d + d - 1));
      continue;
    }
    const int64_t lo = attn::pair_lo(p, d, r.interleaved), hi = attn::pair_hi(p, d, r.interleaved);
    A x1 = load<A>(src + row * d + lo), x2 = load<A>(src + row * d + hi);
    if (inv_freq) {
      const int64_t b = row / (Hx * L), l = row % L;
      attn::rotate<A>(x1, x2, attn::position<A>(r, b, l + pos_offset) * inv_freq[p], static_cast<A>(r.scale), inverse);
    }
    store(dst + row * d + lo, x1);
    store(dst + row * d + hi, x2);
  }
}

// Query row i of (sample, head) bh: one warp.
template <typename T, typename A>
__device__ void forward_row(const attn::Args& a, const A* qr, const A* kr, int64_t i, int64_t bh) {
  const int lane = threadIdx.x & 31;
  const int64_t b = bh / a.H, h = bh % a.H, hk = h / (a.H / a.Hkv);
  const int64_t d = a.d, per = (d + 31) / 32;
  const A scale = static_cast<A>(a.scale);
  const A* q = qr + (bh * a.Lq + i) * d;
  const A* K = kr + (b * a.Hkv + hk) * a.Lk * d;
  const T* V = static_cast<const T*>(a.v) + (b * a.Hkv + hk) * a.Lk * d;
  A acc[kMaxPerLane];
  for (int e = 0; e < kMaxPerLane; ++e) acc[e] = A(0);
  A m = -inf_of<A>(), l = A(0);
  const attn::Span span = attn::visible_span(a.mask, b, i, a.Lk);
  for (int64_t j0 = 0; j0 < a.Lk; j0 += 32) {
    const int64_t j1 = min(a.Lk, j0 + 32);
    if (attn::block_hidden(a.mask, b, i, i + 1, j0, j1)) continue;
    const int64_t j = j0 + lane;
    A s = -inf_of<A>();
    if (j < j1 && attn::span_contains(span, j) && attn::dense_visible(a.mask, b, h, i, j)) {
      A t = A(0);
      for (int64_t c = 0; c < d; ++c) t += q[c] * K[j * d + c];
      s = t * scale;
    }
    // fmax ignores NaN: a NaN score must make the row NaN (as softmax does), not masked-looking 0.
    const A mx = __any_sync(0xffffffffu, s != s) ? static_cast<A>(NAN) : max(m, warp_allmax(s));
    if (mx == -inf_of<A>()) continue;
    const A p = s == -inf_of<A>() ? A(0) : exp(s - mx);
    const A alpha = exp(m - mx);
    l = l * alpha + warp_allsum(p);
    m = mx;
    for (int e = 0; e < per; ++e) acc[e] *= alpha;
    for (int c = 0; c < 32 && j0 + c < j1; ++c) {
      const A pc = __shfl_sync(0xffffffffu, p, c);
      if (pc == A(0)) continue;
      for (int e = 0; e < per; ++e) {
        const int64_t col = lane + 32 * e;
        if (col < d) acc[e] += pc * load<A>(V + (j0 + c) * d + col);
      }
    }
  }
  const int64_t row = bh * a.Lq + i;
  const A inv = l == A(0) ? A(0) : A(1) / l;  // l is NaN after NaN scores: it propagates
  T* out = static_cast<T*>(a.out) + row * d;
  for (int e = 0; e < per; ++e) {
    const int64_t col = lane + 32 * e;
    if (col < d) store(out + col, acc[e] * inv);
  }
  if (lane == 0) static_cast<A*>(a.lse)[row] = l == A(0) ? inf_of<A>() : m + log(l);
}

template <typename T, typename A>
__global__ void __launch_bounds__(kWarps * 32) forward_kernel(attn::Args a, const A* qr, const A* kr) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (i >= a.Lq) return;  // whole warps leave together
  for (int64_t bh = blockIdx.y; bh < a.B * a.H; bh += gridDim.y) forward_row<T, A>(a, qr, kr, i, bh);
}

// D_i = dO_i · O_i, one warp per row; dO is also copied to the accumulation type unless go is null.
template <typename T, typename A>
__global__ void __launch_bounds__(kWarps * 32) dot_do_o_kernel(attn::GradArgs g, A* go, A* Dv, int64_t rows) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int64_t d = g.fwd.d;
  const T* gout = static_cast<const T*>(g.grad_out) + row * d;
  const T* out = static_cast<const T*>(g.fwd.out) + row * d;
  A s = A(0);
  for (int64_t c = lane; c < d; c += 32) {
    const A gv = load<A>(gout + c);
    if (go) go[row * d + c] = gv;
    s += gv * load<A>(out + c);
  }
  s = warp_allsum(s);
  if (lane == 0) Dv[row] = s;
}

// P_ij and dS_ij for query row i (its own lane's key j), or 0 when hidden.
template <typename T, typename A>
__device__ __forceinline__ void p_ds(const attn::Args& a, const A* q, const A* kj, const A* go_i, const T* vj,
                                     A lse_i, A D_i, int64_t b, int64_t h, int64_t i, int64_t j, A* p_out,
                                     A* ds_out) {
  *p_out = A(0);
  *ds_out = A(0);
  if (!attn::visible(a.mask, b, h, i, j, a.Lk) || lse_i == inf_of<A>()) return;
  const int64_t d = a.d;
  A s = A(0), dp = A(0);
  for (int64_t c = 0; c < d; ++c) {
    s += q[c] * kj[c];
    dp += go_i[c] * load<A>(vj + c);
  }
  const A p = exp(s * static_cast<A>(a.scale) - lse_i);
  *p_out = p;
  *ds_out = p * (dp - D_i);
}

// dQ: one warp per query row, lanes over 32 keys at a time.
template <typename T, typename A>
__device__ void dq_row(const attn::Args& a, const A* qr, const A* kr, const A* go, const A* Dv, A* dqr, int64_t i,
                       int64_t bh) {
  const int lane = threadIdx.x & 31;
  const int64_t b = bh / a.H, h = bh % a.H, hk = h / (a.H / a.Hkv);
  const int64_t d = a.d, per = (d + 31) / 32, row = bh * a.Lq + i;
  const A* K = kr + (b * a.Hkv + hk) * a.Lk * d;
  const T* V = static_cast<const T*>(a.v) + (b * a.Hkv + hk) * a.Lk * d;
  const A lse_i = static_cast<const A*>(a.lse)[row];
  A acc[kMaxPerLane];
  for (int e = 0; e < kMaxPerLane; ++e) acc[e] = A(0);
  for (int64_t j0 = 0; j0 < a.Lk; j0 += 32) {
    const int64_t j1 = min(a.Lk, j0 + 32);
    if (attn::block_hidden(a.mask, b, i, i + 1, j0, j1)) continue;
    const int64_t j = j0 + lane;
    A p = A(0), ds = A(0);
    if (j < j1) p_ds<T, A>(a, qr + row * d, K + j * d, go + row * d, V + j * d, lse_i, Dv[row], b, h, i, j, &p, &ds);
    for (int c = 0; c < 32 && j0 + c < j1; ++c) {
      const A dsc = __shfl_sync(0xffffffffu, ds, c);
      if (dsc == A(0)) continue;
      for (int e = 0; e < per; ++e) {
        const int64_t col = lane + 32 * e;
        if (col < d) acc[e] += dsc * K[(j0 + c) * d + col];
      }
    }
  }
  for (int e = 0; e < per; ++e) {
    const int64_t col = lane + 32 * e;
    if (col < d) dqr[row * d + col] = acc[e] * static_cast<A>(a.scale);
  }
}

template <typename T, typename A>
__global__ void __launch_bounds__(kWarps * 32) dq_kernel(attn::Args a, const A* qr, const A* kr, const A* go,
                                                         const A* Dv, A* dqr) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (i >= a.Lq) return;
  for (int64_t bh = blockIdx.y; bh < a.B * a.H; bh += gridDim.y) dq_row<T, A>(a, qr, kr, go, Dv, dqr, i, bh);
}

// dK, dV: one warp per key row, lanes over 32 queries at a time, every query head of the group.
template <typename T, typename A>
__device__ void dkv_row(const attn::GradArgs& g, const A* qr, const A* kr, const A* go, const A* Dv, A* dkr,
                        int64_t j, int64_t bhk) {
  const attn::Args& a = g.fwd;
  const int lane = threadIdx.x & 31;
  const int64_t b = bhk / a.Hkv, hk = bhk % a.Hkv, G = a.H / a.Hkv;
  const int64_t d = a.d, per = (d + 31) / 32;
  const A* kj = kr + (bhk * a.Lk + j) * d;
  const T* vj = static_cast<const T*>(a.v) + (bhk * a.Lk + j) * d;
  const A* lse = static_cast<const A*>(a.lse);
  A dk[kMaxPerLane], dv[kMaxPerLane];
  for (int e = 0; e < kMaxPerLane; ++e) dk[e] = dv[e] = A(0);
  for (int64_t h = hk * G; h < (hk + 1) * G; ++h) {
    const int64_t bh = b * a.H + h;
    for (int64_t i0 = 0; i0 < a.Lq; i0 += 32) {
      const int64_t i1 = min(a.Lq, i0 + 32);
      if (attn::block_hidden(a.mask, b, i0, i1, j, j + 1)) continue;
      const int64_t i = i0 + lane, row = bh * a.Lq + i;
      A p = A(0), ds = A(0);
      if (i < i1) p_ds<T, A>(a, qr + row * d, kj, go + row * d, vj, lse[row], Dv[row], b, h, i, j, &p, &ds);
      for (int c = 0; c < 32 && i0 + c < i1; ++c) {
        const A pc = __shfl_sync(0xffffffffu, p, c), dsc = __shfl_sync(0xffffffffu, ds, c);
        if (pc == A(0)) continue;
        const int64_t rc = bh * a.Lq + i0 + c;
        for (int e = 0; e < per; ++e) {
          const int64_t col = lane + 32 * e;
          if (col < d) {
            dv[e] += pc * go[rc * d + col];
            dk[e] += dsc * qr[rc * d + col];
          }
        }
      }
    }
  }
  T* gv = static_cast<T*>(g.grad_v) + (bhk * a.Lk + j) * d;
  for (int e = 0; e < per; ++e) {
    const int64_t col = lane + 32 * e;
    if (col < d) {
      store(gv + col, dv[e]);
      dkr[(bhk * a.Lk + j) * d + col] = dk[e] * static_cast<A>(a.scale);
    }
  }
}

template <typename T, typename A>
__global__ void __launch_bounds__(kWarps * 32) dkv_kernel(attn::GradArgs g, const A* qr, const A* kr, const A* go,
                                                          const A* Dv, A* dkr) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (j >= g.fwd.Lk) return;
  for (int64_t bhk = blockIdx.y; bhk < g.fwd.B * g.fwd.Hkv; bhk += gridDim.y)
    dkv_row<T, A>(g, qr, kr, go, Dv, dkr, j, bhk);
}

unsigned elementwise_grid(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 65535LL * 32)));
}

// q and k rotated into accumulation-type workspace copies (queries at the last Lq key positions).
template <typename T, typename A> void rotate_qk(const attn::Args& a, A* qr, A* kr, cudaStream_t st) {
  const int64_t qrows = a.B * a.H * a.Lq, krows = a.B * a.Hkv * a.Lk;
  KX_LAUNCH(elementwise_grid(qrows * ((a.d + 1) / 2)), kThreads, 0, st, rope_out_kernel<T, A, A>)(
      static_cast<const T*>(a.q), qr, qrows, a.H, a.Lq, a.d, a.Lk - a.Lq, a.rope, false);
  KX_LAUNCH(elementwise_grid(krows * ((a.d + 1) / 2)), kThreads, 0, st, rope_out_kernel<T, A, A>)(
      static_cast<const T*>(a.k), kr, krows, a.Hkv, a.Lk, a.d, 0, a.rope, false);
}

// The tensor-core backward after its row dots. tc::supported admits fp16/bf16 only, whose
// accumulation type is float; the switch instantiates every dtype, each with its own
// accumulation type, so that no kernel template is named without being defined here.
int tc_backward(const attn::GradArgs& g, cudaStream_t st) {
  const attn::Args& a = g.fwd;
  const int64_t qrows = a.B * a.H * a.Lq;
  void* Dv = tc::backward_dots(a);
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
    using A = acc_t<T>;
    if (qrows)
      KX_LAUNCH(static_cast<unsigned>((qrows + kWarps - 1) / kWarps), kWarps * 32, 0, st, dot_do_o_kernel<T, A>)(
          g, nullptr, static_cast<A*>(Dv), qrows);
  });
  return tc::backward(g, st);
}

size_t acc_bytes(DType dt) { return dt == DType::F64 ? 8 : 4; }

}  // namespace

size_t rope_attention_workspace(const attn::Args& a) {
  if (tc::supported(a)) return tc::forward_workspace(a);
  return acc_bytes(a.dtype) * static_cast<size_t>(a.B * a.H * a.Lq * a.d + a.B * a.Hkv * a.Lk * a.d);
}

size_t rope_attention_backward_workspace(const attn::GradArgs& g) {
  const attn::Args& a = g.fwd;
  if (tc::supported(a)) return tc::backward_workspace(a);
  const size_t q = a.B * a.H * a.Lq * a.d, k = a.B * a.Hkv * a.Lk * a.d;
  // qr, kr, dO, D, dqr, dkr
  return acc_bytes(a.dtype) * static_cast<size_t>(2 * q + 2 * k + q + a.B * a.H * a.Lq);
}

int rope_attention_forward(const attn::Args& a, void* stream) {
  if (a.B * a.H * a.Lq == 0) return 0;
  if (a.d > 32 * kMaxPerLane) return static_cast<int>(cudaErrorInvalidValue);
  const auto st = static_cast<cudaStream_t>(stream);
  if (tc::supported(a)) return tc::forward(a, st);  // fp16/bf16 on tensor cores
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
    using A = acc_t<T>;
    A* qr = static_cast<A*>(a.workspace);
    A* kr = qr + a.B * a.H * a.Lq * a.d;
    rotate_qk<T, A>(a, qr, kr, st);
    const dim3 grid(static_cast<unsigned>((a.Lq + kWarps - 1) / kWarps), capped_grid_y(a.B * a.H));
    KX_LAUNCH(grid, kWarps * 32, 0, st, forward_kernel<T, A>)(a, qr, kr);
  });
  return last_error();
}

int rope_attention_backward(const attn::GradArgs& g, void* stream) {
  const attn::Args& a = g.fwd;
  if (a.B * a.H * a.Lq == 0 && a.B * a.Hkv * a.Lk == 0) return 0;
  if (a.d > 32 * kMaxPerLane) return static_cast<int>(cudaErrorInvalidValue);
  const auto st = static_cast<cudaStream_t>(stream);
  if (tc::supported(a)) return tc_backward(g, st);
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
    using A = acc_t<T>;
    const int64_t q = a.B * a.H * a.Lq * a.d, k = a.B * a.Hkv * a.Lk * a.d;
    const int64_t qrows = a.B * a.H * a.Lq, krows = a.B * a.Hkv * a.Lk;
    A* qr = static_cast<A*>(a.workspace);
    A* kr = qr + q;
    A* go = kr + k;
    A* dqr = go + q;
    A* dkr = dqr + q;
    A* Dv = dkr + k;
    rotate_qk<T, A>(a, qr, kr, st);
    const unsigned row_blocks = static_cast<unsigned>((qrows + kWarps - 1) / kWarps);
    if (qrows) KX_LAUNCH(row_blocks, kWarps * 32, 0, st, dot_do_o_kernel<T, A>)(g, go, Dv, qrows);
    if (qrows) {
      const dim3 gq(static_cast<unsigned>((a.Lq + kWarps - 1) / kWarps), capped_grid_y(a.B * a.H));
      KX_LAUNCH(gq, kWarps * 32, 0, st, dq_kernel<T, A>)(a, qr, kr, go, Dv, dqr);
    }
    if (krows) {
      const dim3 gk(static_cast<unsigned>((a.Lk + kWarps - 1) / kWarps), capped_grid_y(a.B * a.Hkv));
      KX_LAUNCH(gk, kWarps * 32, 0, st, dkv_kernel<T, A>)(g, qr, kr, go, Dv, dkr);
    }
    KX_LAUNCH(elementwise_grid(qrows * ((a.d + 1) / 2)), kThreads, 0, st, rope_out_kernel<A, T, A>)(
        dqr, static_cast<T*>(g.grad_q), qrows, a.H, a.Lq, a.d, a.Lk - a.Lq, a.rope, true);
    KX_LAUNCH(elementwise_grid(krows * ((a.d + 1) / 2)), kThreads, 0, st, rope_out_kernel<A, T, A>)(
        dkr, static_cast<T*>(g.grad_k), krows, a.Hkv, a.Lk, a.d, 0, a.rope, true);
  });
  return last_error();
}

int apply_rope(const attn::RopeArgs& r, void* stream) {
  const int64_t rows = r.B * r.H * r.L;
  if (rows == 0) return 0;
  const auto st = static_cast<cudaStream_t>(stream);
  KX_DTYPE_SWITCH(r.dtype, TypeMap, T, [&] {
    KX_LAUNCH(elementwise_grid(rows * ((r.d + 1) / 2)), kThreads, 0, st, rope_out_kernel<T, T, acc_t<T>>)(
        static_cast<const T*>(r.x), static_cast<T*>(r.out), rows, r.H, r.L, r.d, 0, r.rope, r.inverse);
  });
  return last_error();
}

}  // namespace cuda
}  // namespace kx
