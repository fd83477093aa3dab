// The coupling inner loops over one contiguous run of a sample, torch-free so that they can be
// compiled once per instruction set (csrc/cpu/isa/) as well as for the half types in the driver.
#pragma once
#include "kexue/coupling.h"
#include "kexue/dispatch.h"

namespace kx {
namespace cpu {
namespace loops {

using coupling::Scale;

// Returns this run's log-det contribution (in double: the caller adds runs without losing bits).
using ForwardFn = double (*)(const void* x, const void* s, const void* t, const uint8_t* mask,
                             void* y, int64_t len, double clamp);
using BackwardFn = void (*)(const void* g, double gl, const void* x, const void* s, const void* t,
                            const uint8_t* mask, void* gx, void* gs, void* gt, int64_t len,
                            double clamp);

template <typename T, Scale K, bool Reverse, bool Masked, bool HasT>
static double forward_run(const void* xv, const void* sv, const void* tv, const uint8_t* mask,
                          void* yv, int64_t len, double clamp_d) {
  using A = acc_t<T>;
  const T* __restrict__ x = static_cast<const T*>(xv);
  const T* __restrict__ s = static_cast<const T*>(sv);
  const T* __restrict__ t = static_cast<const T*>(tv);
  const uint8_t* __restrict__ m = mask;
  T* __restrict__ y = static_cast<T*>(yv);
  const A clamp = static_cast<A>(clamp_d);
  A ld = A(0);
#pragma omp simd reduction(+ : ld)
  for (int64_t j = 0; j < len; ++j) {
    const A sj = K == Scale::None ? A(0) : static_cast<A>(s[j]);
    const A tj = HasT ? static_cast<A>(t[j]) : A(0);
    const bool masked = Masked ? m[j] != 0 : false;
    y[j] = static_cast<T>(
        coupling::forward_elem<K, Reverse>(static_cast<A>(x[j]), sj, tj, masked, clamp, ld));
  }
  return static_cast<double>(ld);
}

template <typename T, Scale K, bool Reverse, bool Masked, bool HasT>
static void backward_run(const void* gv, double gl_d, const void* xv, const void* sv,
                         const void* tv, const uint8_t* mask, void* gxv, void* gsv, void* gtv,
                         int64_t len, double clamp_d) {
  using A = acc_t<T>;
  const T* __restrict__ g = static_cast<const T*>(gv);
  const T* __restrict__ x = static_cast<const T*>(xv);
  const T* __restrict__ s = static_cast<const T*>(sv);
  const T* __restrict__ t = static_cast<const T*>(tv);
  const uint8_t* __restrict__ m = mask;
  T* __restrict__ gx = static_cast<T*>(gxv);
  T* __restrict__ gs = static_cast<T*>(gsv);
  T* __restrict__ gt = static_cast<T*>(gtv);
  const A gl = static_cast<A>(gl_d), clamp = static_cast<A>(clamp_d);
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    const A sj = K == Scale::None ? A(0) : static_cast<A>(s[j]);
    const A tj = HasT ? static_cast<A>(t[j]) : A(0);
    const bool masked = Masked ? m[j] != 0 : false;
    const auto r = coupling::backward_elem<K, Reverse>(static_cast<A>(g[j]), gl,
                                                       static_cast<A>(x[j]), sj, tj, masked, clamp);
    gx[j] = static_cast<T>(r.gx);
    gs[j] = static_cast<T>(r.gs);
    gt[j] = static_cast<T>(r.gt);
  }
}

// The instantiation for a given problem, as plain function pointers.
template <typename T>
static ForwardFn forward_fn(Scale scale, bool reverse, bool masked, bool has_t) {
  return KX_SCALE_SWITCH(scale, K, [&] {
    return KX_BOOL_SWITCH(reverse, R, [&] {
      return KX_BOOL_SWITCH(masked, M, [&] {
        return KX_BOOL_SWITCH(has_t, HT, [&] { return &forward_run<T, K, R, M, HT>; });
      });
    });
  });
}

template <typename T>
static BackwardFn backward_fn(Scale scale, bool reverse, bool masked, bool has_t) {
  return KX_SCALE_SWITCH(scale, K, [&] {
    return KX_BOOL_SWITCH(reverse, R, [&] {
      return KX_BOOL_SWITCH(masked, M, [&] {
        return KX_BOOL_SWITCH(has_t, HT, [&] { return &backward_run<T, K, R, M, HT>; });
      });
    });
  });
}

}  // namespace loops
}  // namespace cpu
}  // namespace kx
