// Diffusion steps and q_sample on the GPU: one pass over memory, noise drawn in the kernel. A
// thread owns one group of 4 consecutive elements, which is also one Philox block
// (csrc/kexue/philox.h), and moves it with vector loads when every pointer allows. A step's
// float64 coefficients are computed once per sample (a pre-pass into a.coeffs when they vary per
// sample, once per thread when they do not), not once per group of 4 elements.
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "kexue/dispatch.h"

namespace kx {
namespace cuda {
namespace {

template <typename T> struct alignas(4 * sizeof(T)) Pack4 {
  T v[4];
};

template <typename T> __device__ __forceinline__ void load4(const T* p, bool vec, int n, T out[4]) {
  if (vec) {
    const Pack4<T> pk = *reinterpret_cast<const Pack4<T>*>(p);
#pragma unroll
    for (int k = 0; k < 4; ++k) out[k] = pk.v[k];
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (k < n) out[k] = p[k];
  }
}

template <typename T> __device__ __forceinline__ void store4(T* p, bool vec, int n, const T in[4]) {
  if (vec) {
    Pack4<T> pk;
#pragma unroll
    for (int k = 0; k < 4; ++k) pk.v[k] = in[k];
    *reinterpret_cast<Pack4<T>*>(p) = pk;
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (k < n) p[k] = in[k];
  }
}

template <typename T> bool aligned4(const void* p) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % (4 * sizeof(T)) == 0;
}

unsigned grid_for(int64_t groups) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((groups + kThreads - 1) / kThreads, 65535LL * 32)));
}

template <typename A>
__global__ void __launch_bounds__(kThreads) coeffs_kernel(diff::StepArgs a) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; b < a.batch; b += stride)
    static_cast<diff::Coeffs<A>*>(a.coeffs)[b] = diff::sample_coeffs<A>(a, b);
}

template <typename T, bool Clip, diff::Noise N, bool Heun>
__global__ void __launch_bounds__(kThreads) step_kernel(diff::StepArgs a, bool vec) {
  using A = acc_t<T>;
  const int64_t total = a.batch * a.per_sample, groups = (total + 3) / 4;
  const diff::Coeffs<A>* per_sample = static_cast<const diff::Coeffs<A>*>(a.coeffs);
  const diff::Coeffs<A> uniform = per_sample ? diff::Coeffs<A>{} : diff::sample_coeffs<A>(a, 0);
  uint64_t seed = 0, offset = 0;
  if (N == diff::Noise::Philox) philox::resolve(a.rng, &seed, &offset);
  const A clip = static_cast<A>(a.clip_value);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; g < groups; g += stride) {
    const int64_t i = 4 * g;
    const int n = static_cast<int>(min<int64_t>(4, total - i));
    const bool v = vec && n == 4;
    T x[4], e1[4], e2[4], zt[4], out[4], x0[4];
    load4(static_cast<const T*>(a.x) + i, v, n, x);
    load4(static_cast<const T*>(a.eps) + i, v, n, e1);
    if (Heun) load4(static_cast<const T*>(a.eps2) + i, v, n, e2);
    if (N == diff::Noise::Tensor) load4(static_cast<const T*>(a.noise) + i, v, n, zt);
    float zp[4] = {0.f, 0.f, 0.f, 0.f};
    if (N == diff::Noise::Philox) philox::normals4(seed, offset, static_cast<uint64_t>(g), zp);
    int64_t b = i / a.per_sample;
    diff::Coeffs<A> c = per_sample ? per_sample[b] : uniform;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (k >= n) break;
      if (per_sample && (i + k) / a.per_sample != b) {  // the group straddles two samples
        b = (i + k) / a.per_sample;
        c = per_sample[b];
      }
      A e = load<A>(&e1[k]);
      if (Heun) e = A(0.5) * (e + load<A>(&e2[k]));
      A z = A(0);
      if (N == diff::Noise::Tensor) z = load<A>(&zt[k]);
      if (N == diff::Noise::Philox) z = static_cast<A>(zp[k]);
      if (c.sigma == A(0)) z = A(0);
      A xh;
      const A y = diff::step_elem<A, Clip>(load<A>(&x[k]), e, z, c, clip, &xh);
      store(&out[k], y);
      store(&x0[k], xh);
    }
    store4(static_cast<T*>(a.out) + i, v, n, out);
    if (a.x0) store4(static_cast<T*>(a.x0) + i, v, n, x0);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) q_sample_kernel(diff::QSampleArgs a, bool vec) {
  using A = acc_t<T>;
  const int64_t total = a.batch * a.per_sample, groups = (total + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; g < groups; g += stride) {
    const int64_t i = 4 * g;
    const int n = static_cast<int>(min<int64_t>(4, total - i));
    const bool v = vec && n == 4;
    T x0[4], e[4], out[4];
    load4(static_cast<const T*>(a.x0) + i, v, n, x0);
    load4(static_cast<const T*>(a.noise) + i, v, n, e);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (k >= n) break;
      A sa, ss;
      diff::q_sample_factors<A>(a, (i + k) / a.per_sample, &sa, &ss);
      store(&out[k], sa * load<A>(&x0[k]) + ss * load<A>(&e[k]));
    }
    store4(static_cast<T*>(a.out) + i, v, n, out);
  }
}

template <typename T, bool Clip, diff::Noise N>
void launch_heun(const diff::StepArgs& a, bool vec, unsigned grid, cudaStream_t st) {
  if (a.eps2)
    KX_LAUNCH(grid, kThreads, 0, st, step_kernel<T, Clip, N, true>)(a, vec);
  else
    KX_LAUNCH(grid, kThreads, 0, st, step_kernel<T, Clip, N, false>)(a, vec);
}

template <typename T, bool Clip>
void launch_noise(const diff::StepArgs& a, bool vec, unsigned grid, cudaStream_t st) {
  switch (a.noise_kind) {
    case diff::Noise::Tensor: return launch_heun<T, Clip, diff::Noise::Tensor>(a, vec, grid, st);
    case diff::Noise::Philox: return launch_heun<T, Clip, diff::Noise::Philox>(a, vec, grid, st);
    default: return launch_heun<T, Clip, diff::Noise::None>(a, vec, grid, st);
  }
}

}  // namespace

size_t diffusion_step_workspace(const diff::StepArgs& a) {
  if (!diff::per_sample_coeffs(a) || a.batch * a.per_sample == 0) return 0;
  const size_t one = a.dtype == DType::F64 ? sizeof(diff::Coeffs<double>) : sizeof(diff::Coeffs<float>);
  return static_cast<size_t>(a.batch) * one;
}

int diffusion_step(const diff::StepArgs& a, void* stream) {
  const int64_t total = a.batch * a.per_sample;
  if (total == 0) return 0;
  if (diff::per_sample_coeffs(a) && !a.coeffs) return cudaErrorInvalidValue;  // diffusion_step_workspace unmet
  const auto st = static_cast<cudaStream_t>(stream);
  const unsigned grid = grid_for((total + 3) / 4);
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
    if (a.coeffs) KX_LAUNCH(grid_for(a.batch), kThreads, 0, st, coeffs_kernel<acc_t<T>>)(a);
    const bool vec = aligned4<T>(a.x) && aligned4<T>(a.eps) && aligned4<T>(a.eps2) &&
                     aligned4<T>(a.noise) && aligned4<T>(a.out) && aligned4<T>(a.x0);
    if (a.clip)
      launch_noise<T, true>(a, vec, grid, st);
    else
      launch_noise<T, false>(a, vec, grid, st);
  });
  return last_error();
}

int q_sample(const diff::QSampleArgs& a, void* stream) {
  const int64_t total = a.batch * a.per_sample;
  if (total == 0) return 0;
  const auto st = static_cast<cudaStream_t>(stream);
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
    const bool vec = aligned4<T>(a.x0) && aligned4<T>(a.noise) && aligned4<T>(a.out);
    KX_LAUNCH(grid_for((total + 3) / 4), kThreads, 0, st, q_sample_kernel<T>)(a, vec);
  });
  return last_error();
}

}  // namespace cuda
}  // namespace kx
