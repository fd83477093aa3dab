// Shared by the CPU kernels (host C++) and the CUDA kernels (nvcc); includes no torch headers.
#pragma once

// Internal linkage (static) on purpose: the CPU kernels are compiled once per instruction set
// (SSE2, AVX2, AVX-512) and each build must keep its own copy of every inline function rather
// than let the linker merge them into one (which could run AVX-512 code on an AVX2 machine).
#if defined(__CUDACC__)
#define KX_HOST_DEVICE static __host__ __device__ __forceinline__
#else
#define KX_HOST_DEVICE static inline
#endif
// Marks a loop over lanes of registers (a fixed-size local array) for the host's vectoriser; GCC
// otherwise splits such arrays into scalars. Nothing on the device.
#if defined(__CUDACC__)
#define KX_SIMD
#else
#define KX_SIMD _Pragma("omp simd")
#endif

#include <cmath>
#include <cstdint>
#include <cstring>

namespace kx {

// Storage dtypes the kernels are instantiated for; the glue maps torch dtypes onto these.
enum class DType : int { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };

// Accumulation type: fp32 for every storage type narrower than fp64.
template <typename T> struct acc_type { using type = float; };
template <> struct acc_type<double> { using type = double; };
template <typename T> using acc_t = typename acc_type<T>::type;

namespace detail {
KX_HOST_DEVICE float bits_to_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
#endif
}
KX_HOST_DEVICE int32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(f);
#else
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
#endif
}

// Branch-free exp for fp32 on the host: the libm call blocks auto-vectorisation, this does not.
// Cody-Waite range reduction x = k ln2 + r, |r| <= ln2/2, then a degree-6 minimax polynomial
// (Cephes expf coefficients); max error ~2 ulp. Overflow to inf and underflow to 0 come out of
// the two-step scaling by 2^k itself, so the loop needs no selects beyond the clamps (min/max).
static inline float exp_f32_host(float x) {
  x = x < -104.0f ? -104.0f : x;  // exp(-104) rounds to 0; NaN passes through both clamps
  x = x > 89.0f ? 89.0f : x;      // exp(89) overflows to inf
  // Round to nearest by the 1.5·2^23 trick: vectorises without SSE4.1, exact for |x·log2e| < 2^22.
  const float magic = 12582912.0f;
  float k = (x * 1.44269504088896341f + magic) - magic;
  float r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^k in two halves: each factor stays a normal float for k in [-150, 128].
  int32_t ki = static_cast<int32_t>(k);
  int32_t k1 = ki >> 1, k2 = ki - k1;
  return p * bits_to_float((k1 + 127) << 23) * bits_to_float((k2 + 127) << 23);
}

// Branch-free log for fp32 on the host, for positive normal u: log(m·2^e) with m in
// [sqrt(.5), sqrt(2)) and the Cephes logf polynomial. The mantissa fold (m < sqrt(.5): m ← 2m,
// e ← e - 1) uses bit masks rather than selects, so loops calling it vectorise.
static inline float log_f32_host(float u) {
  int32_t bits = float_to_bits(u);
  int32_t e = ((bits >> 23) & 0xff) - 126;
  float m = bits_to_float((bits & 0x007fffff) | 0x3f000000);  // m in [0.5, 1)
  const int32_t small = -static_cast<int32_t>(m < 0.707106781186547524f);  // all ones or 0
  e += small;
  m = m + bits_to_float(float_to_bits(m) & small) - 1.0f;
  float m2 = m * m;
  float p = 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  float y = p * m * m2;
  float fe = static_cast<float>(e);
  y += -2.12194440e-4f * fe;
  y += -0.5f * m2;
  return m + y + 0.693359375f * fe;
}

// Branch-free log1p for fp32 on the host, for z in [0, 1] (all our callers pass e^{-|a|}):
// log(1 + z), with the rounding error of 1 + z corrected by (z - (u - 1))/u so tiny z keep full
// relative accuracy.
static inline float log1p_unit_f32_host(float z) {
  float u = 1.0f + z;
  float corr = (z - (u - 1.0f)) / u;
  return log_f32_host(u) + corr;
}
}  // namespace detail

// exp/log1p used by all kernels. Device code and fp64 use the libm versions; fp32 on the host uses
// the vectorisable versions above.
KX_HOST_DEVICE float exp(float x) {
#if defined(__CUDA_ARCH__)
  return ::expf(x);
#else
  return detail::exp_f32_host(x);
#endif
}
KX_HOST_DEVICE double exp(double x) { return ::exp(x); }

// log(1 + z) for z in [0, 1].
KX_HOST_DEVICE float log1p_unit(float z) {
#if defined(__CUDA_ARCH__)
  return ::log1pf(z);
#else
  return detail::log1p_unit_f32_host(z);
#endif
}
KX_HOST_DEVICE double log1p_unit(double z) { return ::log1p(z); }

// Square root for both accumulation types, on the host and the device.
KX_HOST_DEVICE float sqrt_(float x) {
#if defined(__CUDA_ARCH__)
  return ::sqrtf(x);
#else
  return std::sqrt(x);
#endif
}
KX_HOST_DEVICE double sqrt_(double x) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

// Σ_{h<n} f(h) in one fixed order on the host and the device: eight interleaved partial sums
// (h mod 8) and a fixed pairwise tree. A plain running sum (a dot product over a capsule, say)
// stays scalar on the CPU, since the compiler may not reassociate it; this one is a vector of
// eight lanes.
template <typename A, typename F> KX_HOST_DEVICE A lane_sum(int64_t n, F f) {
  A p[8] = {A(0), A(0), A(0), A(0), A(0), A(0), A(0), A(0)};
  int64_t h = 0;
  for (; h + 8 <= n; h += 8)
    for (int k = 0; k < 8; ++k) p[k] += f(h + k);
  for (int k = 0; k < 8; ++k)  // constant indices keep p in registers on the GPU
    if (h + k < n) p[k] += f(h + k);
  return ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]));
}

template <typename A> KX_HOST_DEVICE A abs(A x) { return x < A(0) ? -x : x; }
template <typename A> KX_HOST_DEVICE A min(A a, A b) { return a < b ? a : b; }

// Numerically safe sigmoid pieces from one exponential: z = e^{-|a|} in (0, 1].
template <typename A> KX_HOST_DEVICE A sigmoid_from(A a, A z) {
  A inv = A(1) / (A(1) + z);
  return a >= A(0) ? inv : z * inv;
}
// log sigmoid(a) = min(a, 0) - log(1 + e^{-|a|})
template <typename A> KX_HOST_DEVICE A log_sigmoid_from(A a, A z) {
  return min(a, A(0)) - log1p_unit(z);
}
// tanh(a) = sign(a)·(1 - e^{-2|a|}) / (1 + e^{-2|a|}), from z = e^{-2|a|}.
template <typename A> KX_HOST_DEVICE A tanh_from(A a, A z) {
  A t = (A(1) - z) / (A(1) + z);
  return a < A(0) ? -t : t;
}

}  // namespace kx
