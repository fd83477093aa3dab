// Inner loops of the diffusion steps on the CPU: one sample's run of elements at a time, with the
// noise drawn into a small buffer first so both loops vectorise. Torch-free: built once per
// instruction set for float/double (csrc/cpu/isa/diffusion.cpp) and once for the half types.
#pragma once
#include <algorithm>

#include "cpu/streaming.h"
#include "kexue/diffusion.h"

namespace kx {
namespace cpu {
namespace diffloops {

// Elements handled per noise buffer (a multiple of 4: whole Philox groups).
constexpr int64_t kRun = 1024;

// Elements [j0, j1) of sample b; stream: write the outputs with non-temporal stores
// (cpu/streaming.h).
using StepFn = void (*)(const diff::StepArgs& a, int64_t b, int64_t j0, int64_t j1, bool stream);
using QSampleFn = void (*)(const diff::QSampleArgs& a, int64_t b, int64_t j0, int64_t j1, bool stream);
// Whole samples [b0, b1) (few elements each, per-sample ᾱ).
using QSampleSamplesFn = void (*)(const diff::QSampleArgs& a, int64_t b0, int64_t b1);

// normals[k] = noise element first + k, for k < count, where first is a multiple of 4.
static inline __attribute__((noinline)) void fill_normals(float* __restrict__ normals, uint64_t first,
                                                          int64_t count, uint64_t seed, uint64_t offset) {
  const int64_t groups = (count + 3) / 4;
  const uint64_t g0 = first / 4;
#pragma omp simd
  for (int64_t g = 0; g < groups; ++g) philox::normals4(seed, offset, g0 + g, normals + 4 * g);
}

template <typename T, bool Clip, diff::Noise N, bool Heun, bool WriteX0>
static void step_run(const diff::StepArgs& a, int64_t b, int64_t j0, int64_t j1, bool stream) {
  using A = acc_t<T>;
  const diff::Coeffs<A> c = diff::sample_coeffs<A>(a, b);
  const A clip = static_cast<A>(a.clip_value);
  const bool noisy = N != diff::Noise::None && c.sigma != A(0);
  uint64_t seed = 0, offset = 0;
  if (N == diff::Noise::Philox) philox::resolve(a.rng, &seed, &offset);
  alignas(64) float normals[kRun + 8];
  for (int64_t j = j0; j < j1;) {
    const int64_t i = b * a.per_sample + j;  // flat element index
    const int64_t lead = i & 3;              // start the run on a Philox group boundary
    const int64_t len = std::min<int64_t>(j1 - j, kRun - lead);
    if (N == diff::Noise::Philox && noisy)
      fill_normals(normals, static_cast<uint64_t>(i - lead), lead + len, seed, offset);
    const T* __restrict__ x = static_cast<const T*>(a.x) + i;
    const T* __restrict__ e1 = static_cast<const T*>(a.eps) + i;
    const T* __restrict__ e2 = Heun ? static_cast<const T*>(a.eps2) + i : nullptr;
    const T* __restrict__ zt = N == diff::Noise::Tensor ? static_cast<const T*>(a.noise) + i : nullptr;
    const float* __restrict__ zp = normals + lead;
    T* out = static_cast<T*>(a.out) + i;
    T* x0 = WriteX0 ? static_cast<T*>(a.x0) + i : nullptr;
    streaming::write_blocks(len, stream, out, x0, [=](int64_t k0, int64_t n, T* __restrict__ o, T* __restrict__ ox0) {
#pragma omp simd
      for (int64_t k = 0; k < n; ++k) {
        const int64_t m = k0 + k;
        A e = static_cast<A>(e1[m]);
        if (Heun) e = A(0.5) * (e + static_cast<A>(e2[m]));
        A z = A(0);
        if (N == diff::Noise::Tensor) z = static_cast<A>(zt[m]);
        if (N == diff::Noise::Philox) z = noisy ? static_cast<A>(zp[m]) : A(0);
        A xh;
        const A y = diff::step_elem<A, Clip>(static_cast<A>(x[m]), e, z, c, clip, &xh);
        o[k] = static_cast<T>(y);
        if (WriteX0) ox0[k] = static_cast<T>(xh);
      }
    });
    j += len;
  }
  if (stream) streaming::fence();
}

template <typename T>
static void q_sample_run(const diff::QSampleArgs& a, int64_t b, int64_t j0, int64_t j1, bool stream) {
  using A = acc_t<T>;
  A sa, ss;
  diff::q_sample_factors<A>(a, b, &sa, &ss);
  const int64_t off = b * a.per_sample;
  const T* __restrict__ x0 = static_cast<const T*>(a.x0) + off;
  const T* __restrict__ e = static_cast<const T*>(a.noise) + off;
  T* out = static_cast<T*>(a.out) + off + j0;
  streaming::write_blocks(j1 - j0, stream, out, static_cast<T*>(nullptr),
                          [=](int64_t k0, int64_t n, T* __restrict__ o, T*) {
#pragma omp simd
                            for (int64_t k = 0; k < n; ++k) {
                              const int64_t j = j0 + k0 + k;
                              o[k] = static_cast<T>(sa * static_cast<A>(x0[j]) + ss * static_cast<A>(e[j]));
                            }
                          });
  if (stream) streaming::fence();
}

// The elements of n samples of P each (PC: P as a constant, or 0 when not one of those).
template <typename T, typename A, int PC>
static void q_sample_elems(const T* __restrict__ x0, const T* __restrict__ e, const A* sa, const A* ss, int64_t n,
                           int64_t P, T* __restrict__ out) {
  const int64_t p = PC > 0 ? PC : P;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < p; ++j)
      out[i * p + j] = static_cast<T>(sa[i] * static_cast<A>(x0[i * p + j]) + ss[i] * static_cast<A>(e[i * p + j]));
}

// Samples with few elements each (2-D points): the two square roots of a run of samples as one
// vector loop over samples, then the elements; one call per run instead of one per sample.
template <typename T> static void q_sample_samples(const diff::QSampleArgs& a, int64_t b0, int64_t b1) {
  using A = acc_t<T>;
  constexpr int64_t kSamples = 256;
  A sa[kSamples], ss[kSamples];
  const int64_t P = a.per_sample;
  for (int64_t r0 = b0; r0 < b1; r0 += kSamples) {
    const int64_t n = std::min(kSamples, b1 - r0);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const double abar = diff::read(a.abar, r0 + i);
      sa[i] = kx::sqrt_(static_cast<A>(abar));
      ss[i] = kx::sqrt_(static_cast<A>(diff::clamp01(1.0 - abar)));
    }
    const T* x0 = static_cast<const T*>(a.x0) + r0 * P;
    const T* e = static_cast<const T*>(a.noise) + r0 * P;
    T* out = static_cast<T*>(a.out) + r0 * P;
    switch (P) {  // a size known to the compiler lets it vectorise across samples
      case 1: q_sample_elems<T, A, 1>(x0, e, sa, ss, n, P, out); break;
      case 2: q_sample_elems<T, A, 2>(x0, e, sa, ss, n, P, out); break;
      case 3: q_sample_elems<T, A, 3>(x0, e, sa, ss, n, P, out); break;
      case 4: q_sample_elems<T, A, 4>(x0, e, sa, ss, n, P, out); break;
      default: q_sample_elems<T, A, 0>(x0, e, sa, ss, n, P, out);
    }
  }
}

template <typename T, bool Clip, diff::Noise N, bool Heun>
static StepFn pick_x0(bool write_x0) {
  return write_x0 ? &step_run<T, Clip, N, Heun, true> : &step_run<T, Clip, N, Heun, false>;
}

template <typename T, bool Clip, diff::Noise N> static StepFn pick_heun(bool heun, bool write_x0) {
  return heun ? pick_x0<T, Clip, N, true>(write_x0) : pick_x0<T, Clip, N, false>(write_x0);
}

template <typename T, bool Clip> static StepFn pick_noise(diff::Noise n, bool heun, bool write_x0) {
  switch (n) {
    case diff::Noise::Tensor: return pick_heun<T, Clip, diff::Noise::Tensor>(heun, write_x0);
    case diff::Noise::Philox: return pick_heun<T, Clip, diff::Noise::Philox>(heun, write_x0);
    default: return pick_heun<T, Clip, diff::Noise::None>(heun, write_x0);
  }
}

template <typename T> static StepFn step_fn(const diff::StepArgs& a) {
  const bool heun = a.eps2 != nullptr, write_x0 = a.x0 != nullptr;
  return a.clip ? pick_noise<T, true>(a.noise_kind, heun, write_x0)
                : pick_noise<T, false>(a.noise_kind, heun, write_x0);
}

}  // namespace diffloops

#define KX_DECLARE_DIFFUSION_ISA(NS)                                  \
  namespace NS {                                                      \
  diffloops::StepFn diffusion_step_fn(const diff::StepArgs& a);       \
  diffloops::QSampleFn q_sample_fn(DType dtype);                      \
  diffloops::QSampleSamplesFn q_sample_samples_fn(DType dtype);       \
  int64_t streaming_copy_errors();                                   \
  }
KX_DECLARE_DIFFUSION_ISA(base)
KX_DECLARE_DIFFUSION_ISA(avx2)
KX_DECLARE_DIFFUSION_ISA(avx512)
#undef KX_DECLARE_DIFFUSION_ISA

}  // namespace cpu
}  // namespace kx
