// ActNorm math (Glow): per-channel affine with a log-scale.
//   forward: y = (x + b)·e^{log_s},   logdet = (spatial size)·Σ_c log_s
//   reverse: x = y·e^{-log_s} - b,    logdet = -(spatial size)·Σ_c log_s
#pragma once
#include "kexue/common.h"

namespace kx {
namespace actnorm {

// Per-channel constants, computed once per channel rather than per element.
template <typename A> struct Channel {
  A b, scale;  // scale = e^{±log_s}
};

template <typename A> KX_HOST_DEVICE Channel<A> channel(A bias, A log_s, bool reverse) {
  Channel<A> c;
  c.b = bias;
  c.scale = kx::exp(reverse ? -log_s : log_s);
  return c;
}

template <typename A> KX_HOST_DEVICE A forward_elem(A x, const Channel<A>& c, bool reverse) {
  return reverse ? x * c.scale - c.b : (x + c.b) * c.scale;
}

// Per-element contributions to the gradients, given dL/dout = g.
//   gx        = g·scale
//   gbias    += forward: g·scale         reverse: -g
//   glog_s   += forward: g·y             reverse: -g·y·scale   (plus the logdet term, per channel)
template <typename A> struct ElemGrad {
  A gx, gb, gls;
};

template <typename A>
KX_HOST_DEVICE ElemGrad<A> backward_elem(A g, A x, const Channel<A>& c, bool reverse) {
  ElemGrad<A> r;
  r.gx = g * c.scale;
  if (!reverse) {
    r.gb = r.gx;
    r.gls = r.gx * (x + c.b);
  } else {
    r.gb = -g;
    r.gls = -r.gx * x;
  }
  return r;
}

// logdet of every sample: ±(spatial size)·Σ_c log_s_c (summed in channel order: deterministic).
template <typename A, typename T>
KX_HOST_DEVICE A logdet(const T* log_s, int64_t channels, int64_t spatial, bool reverse) {
  A sum = A(0);
  for (int64_t c = 0; c < channels; ++c) sum += static_cast<A>(log_s[c]);
  sum *= static_cast<A>(spatial);
  return reverse ? -sum : sum;
}

// d logdet_n / d log_s_c = ±(spatial size), so log_s collects ±spatial·Σ_n dL/dlogdet_n.
template <typename A, typename T>
KX_HOST_DEVICE A logdet_grad(const T* grad_logdet, int64_t batch, int64_t spatial, bool reverse) {
  A sum = A(0);
  for (int64_t n = 0; n < batch; ++n) sum += static_cast<A>(grad_logdet[n]);
  sum *= static_cast<A>(spatial);
  return reverse ? -sum : sum;
}

// x viewed as [batch, channels, spatial]. bias and log_s are [channels] in acc_t of dtype (the
// parameters of a mixed-precision model stay fp32 while activations are bf16/fp16); their
// gradients come back in acc_t too.
struct Args {
  DType dtype;
  bool reverse;
  int64_t batch, channels, spatial;
  const void* x;
  const void* bias;
  const void* log_s;
  void* out;
  void* logdet;  // [batch], acc_t of dtype
};

struct GradArgs {
  DType dtype;
  bool reverse;
  int64_t batch, channels, spatial;
  const void* grad_out;
  const void* grad_logdet;  // [batch], acc_t of dtype
  const void* x;
  const void* bias;
  const void* log_s;
  void* grad_x;     // may be null
  void* grad_bias;  // [channels], acc_t
  void* grad_log_s;
  void* workspace;  // CUDA: per-block partial sums
};

}  // namespace actnorm
}  // namespace kx
