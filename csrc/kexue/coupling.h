// Coupling-layer math (RealNVP / Glow / NICE), one element at a time.
//   forward:  y = x·f(s) + t,          logdet += log f(s)
//   reverse:  x = (y - t) / f(s),      logdet -= log f(s)
// with f chosen by Scale. Masked elements (mask != 0) pass through and add nothing to logdet.
#pragma once
#include "kexue/common.h"

namespace kx {
namespace coupling {

enum class Scale : int {
  Exp = 0,      // f = e^s
  Sigmoid = 1,  // f = sigmoid(s + 2)                (Glow)
  Tanh = 2,     // log f = clamp·tanh(s / clamp)      (soft-clamped exp)
  None = 3,     // f = 1: additive coupling (NICE); s unused
};

// log f(s), f(s) and d log f / ds, sharing one transcendental call where possible.
template <typename A> struct Factor {
  A log_f, f, dlog_f;
};

template <Scale K, typename A> KX_HOST_DEVICE Factor<A> factor(A s, A clamp) {
  Factor<A> r;
  if (K == Scale::Exp) {
    r.log_f = s;
    r.f = kx::exp(s);
    r.dlog_f = A(1);
  } else if (K == Scale::Sigmoid) {
    A a = s + A(2);
    A z = kx::exp(-kx::abs(a));
    A sig = sigmoid_from(a, z);
    r.log_f = log_sigmoid_from(a, z);
    r.f = sig;
    r.dlog_f = A(1) - sig;
  } else if (K == Scale::Tanh) {
    A a = s / clamp;
    A th = tanh_from(a, kx::exp(A(-2) * kx::abs(a)));
    r.log_f = clamp * th;
    r.f = kx::exp(r.log_f);
    r.dlog_f = A(1) - th * th;
  } else {
    r.log_f = A(0);
    r.f = A(1);
    r.dlog_f = A(0);
  }
  return r;
}

// One element of the forward (or reverse) pass: returns the output and adds to logdet_acc.
// Written with selects rather than early returns so the CPU loops vectorise.
template <Scale K, bool Reverse, typename A>
KX_HOST_DEVICE A forward_elem(A x, A s, A t, bool masked, A clamp, A& logdet_acc) {
  Factor<A> fs = factor<K>(s, clamp);
  A out = Reverse ? (x - t) / fs.f : x * fs.f + t;
  A ld = Reverse ? -fs.log_f : fs.log_f;
  logdet_acc += masked ? A(0) : ld;
  return masked ? x : out;
}

// Gradients of one element given dL/d(out) = g and dL/d(logdet) = gl of its sample.
// x is the op's input (x for forward, y for reverse): the output is recomputed, not stored.
template <typename A> struct ElemGrad {
  A gx, gs, gt;
};

template <Scale K, bool Reverse, typename A>
KX_HOST_DEVICE ElemGrad<A> backward_elem(A g, A gl, A x, A s, A t, bool masked, A clamp) {
  Factor<A> fs = factor<K>(s, clamp);
  ElemGrad<A> r;
  if (!Reverse) {
    // y = x f + t: dy/dx = f, dy/dlog f = x f, dlogdet/dlog f = 1
    r.gx = g * fs.f;
    r.gt = g;
    r.gs = (g * x * fs.f + gl) * fs.dlog_f;
  } else {
    // out = (x - t) / f: dout/dx = 1/f, dout/dlog f = -out, dlogdet/dlog f = -1
    A inv = A(1) / fs.f;
    r.gx = g * inv;
    r.gt = -r.gx;
    r.gs = -(g * (x - t) * inv + gl) * fs.dlog_f;
  }
  r.gx = masked ? g : r.gx;
  r.gs = masked ? A(0) : r.gs;
  r.gt = masked ? A(0) : r.gt;
  return r;
}

// What a kernel launch needs; pointers are raw so CPU and CUDA launchers share it.
// The mask (uint8, nonzero = pass-through) is either one per sample (mask_per_batch = false,
// numel_per_sample entries shared by every sample) or one per element of x.
struct Args {
  DType dtype;
  Scale scale;
  bool reverse;
  double clamp;
  int64_t batch, numel_per_sample;
  const void* x;
  const void* s;  // null for Scale::None
  const void* t;  // null: no shift
  const uint8_t* mask;
  bool mask_per_batch;
  void* out;
  void* logdet;  // [batch], acc_t of dtype
  void* workspace;
};

struct GradArgs {
  DType dtype;
  Scale scale;
  bool reverse;
  double clamp;
  int64_t batch, numel_per_sample;
  const void* grad_out;
  const void* grad_logdet;  // [batch], acc_t of dtype
  const void* x;
  const void* s;
  const void* t;
  const uint8_t* mask;
  bool mask_per_batch;
  void* grad_x;  // each may be null when not needed
  void* grad_s;
  void* grad_t;
};

// Scale as a compile-time constant K inside the body.
#define KX_SCALE_SWITCH(SCALE, K, ...)                                            \
  [&] {                                                                           \
    switch (SCALE) {                                                              \
      case ::kx::coupling::Scale::Exp: {                                          \
        constexpr auto K = ::kx::coupling::Scale::Exp;                            \
        return __VA_ARGS__();                                                     \
      }                                                                           \
      case ::kx::coupling::Scale::Sigmoid: {                                      \
        constexpr auto K = ::kx::coupling::Scale::Sigmoid;                        \
        return __VA_ARGS__();                                                     \
      }                                                                           \
      case ::kx::coupling::Scale::Tanh: {                                         \
        constexpr auto K = ::kx::coupling::Scale::Tanh;                           \
        return __VA_ARGS__();                                                     \
      }                                                                           \
      default: {                                                                  \
        constexpr auto K = ::kx::coupling::Scale::None;                           \
        return __VA_ARGS__();                                                     \
      }                                                                           \
    }                                                                             \
  }()

}  // namespace coupling
}  // namespace kx
