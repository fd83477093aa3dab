// Coupling forward/backward on the CPU: one pass over memory, per-sample log-det reduced in
// fixed-size chunks (deterministic), inner loops written to auto-vectorise.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/type_map.h"
#include "kexue/dispatch.h"

namespace kx {
namespace cpu {
namespace {

using coupling::Scale;

struct Tiling {
  int64_t chunks;  // per sample
  int64_t grain;   // tasks per thread at least
};

Tiling tiling(int64_t batch, int64_t n) {
  Tiling t;
  t.chunks = std::max<int64_t>(1, (n + kChunk - 1) / kChunk);
  int64_t per_task = std::min(n, kChunk);
  t.grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, per_task));
  return t;
}

template <typename T, Scale K, bool Reverse, bool Masked, bool HasT>
void forward_impl(const coupling::Args& a) {
  using A = acc_t<T>;
  const int64_t B = a.batch, N = a.numel_per_sample;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ s = static_cast<const T*>(a.s);
  const T* __restrict__ t = static_cast<const T*>(a.t);
  T* __restrict__ y = static_cast<T*>(a.out);
  A* logdet = static_cast<A*>(a.logdet);
  const A clamp = static_cast<A>(a.clamp);
  const Tiling tl = tiling(B, N);
  // Vector lanes sum kSub elements each in A; blocks and chunks are added in double, so fp32
  // log-dets of large images stay as accurate as torch's cascaded sums.
  constexpr int64_t kSub = 1024;
  std::vector<double> partial(B * tl.chunks, 0.0);

  at::parallel_for(0, B * tl.chunks, tl.grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / tl.chunks, j0 = (task % tl.chunks) * kChunk;
      const int64_t len = std::min(N - j0, kChunk);
      const int64_t off = n * N + j0;
      const uint8_t* __restrict__ m = Masked ? a.mask + (a.mask_per_batch ? off : j0) : nullptr;
      double total = 0.0;
      for (int64_t b0 = 0; b0 < len; b0 += kSub) {
        const int64_t b1 = std::min(len, b0 + kSub);
        A ld = A(0);
#pragma omp simd reduction(+ : ld)
        for (int64_t j = b0; j < b1; ++j) {
          const A sj = K == Scale::None ? A(0) : static_cast<A>(s[off + j]);
          const A tj = HasT ? static_cast<A>(t[off + j]) : A(0);
          const bool masked = Masked ? m[j] != 0 : false;
          y[off + j] = static_cast<T>(coupling::forward_elem<K, Reverse>(
              static_cast<A>(x[off + j]), sj, tj, masked, clamp, ld));
        }
        total += static_cast<double>(ld);
      }
      partial[task] = total;
    }
  });
  for (int64_t n = 0; n < B; ++n) {
    double sum = 0.0;
    for (int64_t c = 0; c < tl.chunks; ++c) sum += partial[n * tl.chunks + c];
    logdet[n] = static_cast<A>(sum);
  }
}

template <typename T, Scale K, bool Reverse, bool Masked, bool HasT>
void backward_impl(const coupling::GradArgs& a) {
  using A = acc_t<T>;
  const int64_t B = a.batch, N = a.numel_per_sample;
  const T* __restrict__ g = static_cast<const T*>(a.grad_out);
  const A* __restrict__ gl = static_cast<const A*>(a.grad_logdet);
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ s = static_cast<const T*>(a.s);
  const T* __restrict__ t = static_cast<const T*>(a.t);
  const A clamp = static_cast<A>(a.clamp);
  const Tiling tl = tiling(B, N);

  at::parallel_for(0, B * tl.chunks, tl.grain, [&](int64_t begin, int64_t end) {
    // Gradients nobody asked for land in a scratch chunk, so the loop stays branch-free.
    std::vector<T> scratch;
    auto dest = [&](void* p, int64_t off) -> T* {
      if (p) return static_cast<T*>(p) + off;
      if (scratch.empty()) scratch.resize(kChunk);
      return scratch.data();
    };
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / tl.chunks, j0 = (task % tl.chunks) * kChunk;
      const int64_t len = std::min(N - j0, kChunk);
      const int64_t off = n * N + j0;
      const uint8_t* __restrict__ m = Masked ? a.mask + (a.mask_per_batch ? off : j0) : nullptr;
      T* __restrict__ gx = dest(a.grad_x, off);
      T* __restrict__ gs = dest(a.grad_s, off);
      T* __restrict__ gt = dest(a.grad_t, off);
      const A gln = gl[n];
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) {
        const A sj = K == Scale::None ? A(0) : static_cast<A>(s[off + j]);
        const A tj = HasT ? static_cast<A>(t[off + j]) : A(0);
        const bool masked = Masked ? m[j] != 0 : false;
        const auto r = coupling::backward_elem<K, Reverse>(
            static_cast<A>(g[off + j]), gln, static_cast<A>(x[off + j]), sj, tj, masked, clamp);
        gx[j] = static_cast<T>(r.gx);
        gs[j] = static_cast<T>(r.gs);
        gt[j] = static_cast<T>(r.gt);
      }
    }
  });
}

}  // namespace

void coupling_forward(const coupling::Args& a) {
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
    KX_SCALE_SWITCH(a.scale, K, [&] {
      KX_BOOL_SWITCH(a.reverse, R, [&] {
        KX_BOOL_SWITCH(a.mask != nullptr, M, [&] {
          KX_BOOL_SWITCH(a.t != nullptr, HT, [&] { forward_impl<T, K, R, M, HT>(a); });
        });
      });
    });
  });
}

void coupling_backward(const coupling::GradArgs& a) {
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
    KX_SCALE_SWITCH(a.scale, K, [&] {
      KX_BOOL_SWITCH(a.reverse, R, [&] {
        KX_BOOL_SWITCH(a.mask != nullptr, M, [&] {
          KX_BOOL_SWITCH(a.t != nullptr, HT, [&] { backward_impl<T, K, R, M, HT>(a); });
        });
      });
    });
  });
}

}  // namespace cpu
}  // namespace kx
