// Helpers for the C++ autograd kernels of csrc/ops/*.cpp.
//
// Why autograd lives in C++ rather than in torch.library.register_autograd: the Python path
// costs ~35 µs per forward+backward (pytree packing, a Python frame each way), which at the
// models' real sizes (e.g. a Glow step on [64, 12, 16, 16]) is as long as the fused kernels
// themselves. The backward is still a kexue op, called through the dispatcher, so
// torch.compile, fake tensors and opcheck see the same graph either way.
#pragma once
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

namespace kx {
namespace ops {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A typed handle on kexue::<name>, looked up once.
template <typename Signature>
c10::TypedOperatorHandle<Signature> kexue_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

inline at::Tensor value_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? *t : at::Tensor();
}

inline std::optional<at::Tensor> optional_of(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

}  // namespace ops
}  // namespace kx
