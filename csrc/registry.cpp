// Every kexue operator schema, in one place. Kernels are attached per dispatch key in
// csrc/ops/*.cpp; autograd and fake (meta) kernels are registered from Python (kexue/ops/*.py).
#include <torch/library.h>

TORCH_LIBRARY(kexue, m) {
  // Flows: coupling layers. Returns (out, logdet[B]); logdet is fp32 for half inputs.
  m.def("coupling(Tensor x, Tensor? s, Tensor? t, Tensor? mask, str scale, bool reverse, "
        "float clamp) -> (Tensor, Tensor)");
  m.def("coupling_backward(Tensor grad_out, Tensor grad_logdet, Tensor x, Tensor? s, Tensor? t, "
        "Tensor? mask, str scale, bool reverse, float clamp, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
  // Flows: ActNorm over dim 1. Parameter gradients come back in fp32 (fp64 for fp64 x).
  m.def("actnorm(Tensor x, Tensor bias, Tensor log_scale, bool reverse) -> (Tensor, Tensor)");
  m.def("actnorm_backward(Tensor grad_out, Tensor grad_logdet, Tensor x, Tensor bias, "
        "Tensor log_scale, bool reverse, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}
