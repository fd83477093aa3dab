// The spectral-norm inner loops over a block of rows of W, torch-free so that the fp32/fp64 ones
// are compiled once per instruction set (csrc/cpu/isa/spectral_norm.cpp) and the half/bf16 ones
// in the driver (csrc/cpu/spectral_norm.cpp). Rows go four at a time: the vector v (or the
// partial sum y) is loaded once per four rows of W and the dot products run as four independent
// SIMD reductions. Reductions run in a fixed order for a given build: bitwise reproducible.
#pragma once
#include "cpu/isa.h"
#include "kexue/spectral_norm.h"

namespace kx {
namespace cpu {
namespace snloops {

// All vectors (v, t, y, e, bu) are in the accumulation type acc_t<T>; W, G, out are T.
struct Loops {
  // t[i] = W_i·v for the block's rows; y = 2^-E·Σ_i t[i]·W_i with 2^E the binade of max_i |t[i]|
  // (sn::scale_exponent), E stored at *y_exp (y is overwritten).
  void (*fused_rows)(const void* W, int64_t rows, int64_t cols, const void* v, void* t, void* y,
                     int* y_exp);
  // t[i] = W_i·v.
  void (*dot_rows)(const void* W, int64_t rows, int64_t cols, const void* v, void* t);
  // t[i] = W_i·v and e[i] = G_i·W_i, reading W and G once.
  void (*dot2_rows)(const void* W, const void* G, int64_t rows, int64_t cols, const void* v,
                    void* t, void* e);
  // out = W / s over n contiguous elements.
  void (*divide)(const void* W, void* out, int64_t n, double s);
  // out_ij = a·G_ij + bu[i]·v[j].
  void (*rank1_rows)(const void* G, void* out, int64_t rows, int64_t cols, double a,
                     const void* bu, const void* v);
};

// t[i] = W_i·v, and with WithY also y = 2^-E·Σ_i t[i]·W_i while the four rows are in cache.
// Σ t_i W_i is ~sigma^2 and overflows fp32 from sigma ~ 2e19, so the rows are added as
// (t_i·2^-E)·W_i with E the running binade of max |t_i| (|t_i·2^-E| < 2); when a block of rows
// raises E, the y so far is rescaled by 2^(E_old - E_new). Powers of two scale exactly, so y is
// the unscaled sum's bits times 2^-E wherever that sum stays a normal number.
template <typename T, bool WithY>
static void rows_times_v(const void* Wp, int64_t rows, int64_t cols, const void* vp, void* tp, void* yp,
                         int* y_exp) {
  using A = acc_t<T>;
  const T* __restrict__ W = static_cast<const T*>(Wp);
  const A* __restrict__ v = static_cast<const A*>(vp);
  A* __restrict__ t = static_cast<A*>(tp);
  A* __restrict__ y = static_cast<A*>(yp);
  int E = sn::ExpRange<A>::lo;
  A down = A(0), up = A(0);  // 2^-E and 2^(E+1), set by the first block of rows
  // Admits a block of rows starting at row i whose largest |t| is m.
  auto admit = [&](int64_t i, A m) {
    if (i > 0 && !(m >= up)) return;  // (a NaN m changes nothing: it reaches y through the sums)
    const int e = sn::scale_exponent(m);
    if (i > 0) {
      const A r = sn::ldexp_(A(1), E - e);
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) y[j] *= r;
    }
    E = e;
    down = sn::ldexp_(A(1), -e);
    up = sn::ldexp_(A(1), e + 1);
  };
  if (WithY) {
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) y[j] = A(0);
  }
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) {
    const T* __restrict__ w0 = W + i * cols;
    const T* __restrict__ w1 = w0 + cols;
    const T* __restrict__ w2 = w1 + cols;
    const T* __restrict__ w3 = w2 + cols;
    A s0 = A(0), s1 = A(0), s2 = A(0), s3 = A(0);
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t j = 0; j < cols; ++j) {
      const A vj = v[j];
      s0 += static_cast<A>(w0[j]) * vj;
      s1 += static_cast<A>(w1[j]) * vj;
      s2 += static_cast<A>(w2[j]) * vj;
      s3 += static_cast<A>(w3[j]) * vj;
    }
    t[i] = s0;
    t[i + 1] = s1;
    t[i + 2] = s2;
    t[i + 3] = s3;
    if (WithY) {
      const A a0 = kx::abs(s0), a1 = kx::abs(s1), a2 = kx::abs(s2), a3 = kx::abs(s3);
      const A m01 = a1 > a0 ? a1 : a0, m23 = a3 > a2 ? a3 : a2;
      admit(i, m23 > m01 ? m23 : m01);
      const A c0 = s0 * down, c1 = s1 * down, c2 = s2 * down, c3 = s3 * down;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j)
        y[j] += (c0 * static_cast<A>(w0[j]) + c1 * static_cast<A>(w1[j])) +
                (c2 * static_cast<A>(w2[j]) + c3 * static_cast<A>(w3[j]));
    }
  }
  for (; i < rows; ++i) {
    const T* __restrict__ w0 = W + i * cols;
    A s0 = A(0);
#pragma omp simd reduction(+ : s0)
    for (int64_t j = 0; j < cols; ++j) s0 += static_cast<A>(w0[j]) * v[j];
    t[i] = s0;
    if (WithY) {
      admit(i, kx::abs(s0));
      const A c0 = s0 * down;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) y[j] += c0 * static_cast<A>(w0[j]);
    }
  }
  if (WithY) *y_exp = E;
}

template <typename T> static void dot_rows(const void* Wp, int64_t rows, int64_t cols, const void* vp, void* tp) {
  rows_times_v<T, false>(Wp, rows, cols, vp, tp, nullptr, nullptr);
}

template <typename T>
static void dot2_rows(const void* Wp, const void* Gp, int64_t rows, int64_t cols, const void* vp,
                      void* tp, void* ep) {
  using A = acc_t<T>;
  const T* __restrict__ W = static_cast<const T*>(Wp);
  const T* __restrict__ G = static_cast<const T*>(Gp);
  const A* __restrict__ v = static_cast<const A*>(vp);
  A* __restrict__ t = static_cast<A*>(tp);
  A* __restrict__ e = static_cast<A*>(ep);
  int64_t i = 0;
  for (; i + 2 <= rows; i += 2) {
    const T* __restrict__ w0 = W + i * cols;
    const T* __restrict__ w1 = w0 + cols;
    const T* __restrict__ g0 = G + i * cols;
    const T* __restrict__ g1 = g0 + cols;
    A s0 = A(0), s1 = A(0), e0 = A(0), e1 = A(0);
#pragma omp simd reduction(+ : s0, s1, e0, e1)
    for (int64_t j = 0; j < cols; ++j) {
      const A vj = v[j];
      const A a0 = static_cast<A>(w0[j]), a1 = static_cast<A>(w1[j]);
      s0 += a0 * vj;
      s1 += a1 * vj;
      e0 += static_cast<A>(g0[j]) * a0;
      e1 += static_cast<A>(g1[j]) * a1;
    }
    t[i] = s0;
    t[i + 1] = s1;
    e[i] = e0;
    e[i + 1] = e1;
  }
  for (; i < rows; ++i) {
    const T* __restrict__ w0 = W + i * cols;
    const T* __restrict__ g0 = G + i * cols;
    A s0 = A(0), e0 = A(0);
#pragma omp simd reduction(+ : s0, e0)
    for (int64_t j = 0; j < cols; ++j) {
      const A a0 = static_cast<A>(w0[j]);
      s0 += a0 * v[j];
      e0 += static_cast<A>(g0[j]) * a0;
    }
    t[i] = s0;
    e[i] = e0;
  }
}

template <typename T>
static void divide(const void* Wp, void* outp, int64_t n, double s_d) {
  using A = acc_t<T>;
  const T* __restrict__ W = static_cast<const T*>(Wp);
  T* __restrict__ out = static_cast<T*>(outp);
  const A s = static_cast<A>(s_d);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<T>(static_cast<A>(W[j]) / s);
}

template <typename T>
static void rank1_rows(const void* Gp, void* outp, int64_t rows, int64_t cols, double a_d,
                       const void* bup, const void* vp) {
  using A = acc_t<T>;
  const T* __restrict__ G = static_cast<const T*>(Gp);
  T* __restrict__ out = static_cast<T*>(outp);
  const A* __restrict__ bu = static_cast<const A*>(bup);
  const A* __restrict__ v = static_cast<const A*>(vp);
  const A a = static_cast<A>(a_d);
  for (int64_t i = 0; i < rows; ++i) {
    const T* __restrict__ g = G + i * cols;
    T* __restrict__ o = out + i * cols;
    const A b = bu[i];
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) o[j] = static_cast<T>(a * static_cast<A>(g[j]) + b * v[j]);
  }
}

template <typename T> static Loops make_loops() {
  Loops l;
  l.fused_rows = &rows_times_v<T, true>;
  l.dot_rows = &dot_rows<T>;
  l.dot2_rows = &dot2_rows<T>;
  l.divide = &divide<T>;
  l.rank1_rows = &rank1_rows<T>;
  return l;
}

}  // namespace snloops

// Entry points of each per-ISA build of csrc/cpu/isa/spectral_norm.cpp (fp32 and fp64 only).
#define KX_DECLARE_SN_ISA(NS) \
  namespace NS {              \
  snloops::Loops spectral_norm_loops(DType dtype); \
  }
KX_DECLARE_SN_ISA(base)
KX_DECLARE_SN_ISA(avx2)
KX_DECLARE_SN_ISA(avx512)
#undef KX_DECLARE_SN_ISA

}  // namespace cpu
}  // namespace kx
