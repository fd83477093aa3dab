// Pointwise activations of invertible residual blocks with their first and second derivatives
// (the log-det estimator needs act'; its gradient needs act'').
#pragma once
#include "kexue/common.h"

namespace kx {
namespace act {

enum class Kind : int {
  Elu = 0,       // x > 0 ? x : e^x - 1                        (i-ResNet)
  LipSwish = 1,  // x·sigmoid(x) / 1.1: 1-Lipschitz swish       (Residual Flows)
  Tanh = 2,
  Softplus = 3,
};

// Swish's Lipschitz constant is about 1.0998; dividing by 1.1 makes it 1-Lipschitz.
constexpr double kLipSwishScale = 1.1;

template <typename A> struct Derivs {
  A d1, d2;
};

template <typename A> KX_HOST_DEVICE Derivs<A> derivatives(Kind k, A x) {
  Derivs<A> r;
  if (k == Kind::Elu) {
    const A e = kx::exp(x < A(0) ? x : A(0));
    r.d1 = x > A(0) ? A(1) : e;
    r.d2 = x > A(0) ? A(0) : e;
  } else if (k == Kind::LipSwish) {
    const A z = kx::exp(-kx::abs(x));
    const A s = sigmoid_from(x, z), ds = s * (A(1) - s);
    const A c = A(1) / static_cast<A>(kLipSwishScale);
    r.d1 = c * (s + x * ds);
    r.d2 = c * ds * (A(2) + x * (A(1) - A(2) * s));
  } else if (k == Kind::Tanh) {
    const A t = tanh_from(x, kx::exp(A(-2) * kx::abs(x)));
    r.d1 = A(1) - t * t;
    r.d2 = A(-2) * t * r.d1;
  } else {  // softplus: d1 = sigmoid(x), d2 = sigmoid'(x)
    const A s = sigmoid_from(x, kx::exp(-kx::abs(x)));
    r.d1 = s;
    r.d2 = s * (A(1) - s);
  }
  return r;
}

// h, d1, d2: numel elements of dtype F32 or F64 (the glue computes in the accumulation dtype).
struct Args {
  DType dtype;
  Kind kind;
  int64_t numel;
  const void* h;
  void* d1;
  void* d2;
};

}  // namespace act
}  // namespace kx
