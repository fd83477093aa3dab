// Built once per instruction set with -DKX_ISA_NS=<base|avx2|avx512> and that set's flags.
// Torch-free on purpose: no inline code from other headers gets compiled for a wider ISA than
// the machine that might end up running it.
#include "cpu/isa.h"

namespace kx {
namespace cpu {
namespace KX_ISA_NS {

loops::ForwardFn coupling_forward_fn(DType dtype, coupling::Scale scale, bool reverse,
                                     bool masked, bool has_t) {
  return dtype == DType::F64 ? loops::forward_fn<double>(scale, reverse, masked, has_t)
                             : loops::forward_fn<float>(scale, reverse, masked, has_t);
}

loops::BackwardFn coupling_backward_fn(DType dtype, coupling::Scale scale, bool reverse,
                                       bool masked, bool has_t) {
  return dtype == DType::F64 ? loops::backward_fn<double>(scale, reverse, masked, has_t)
                             : loops::backward_fn<float>(scale, reverse, masked, has_t);
}

}  // namespace KX_ISA_NS
}  // namespace cpu
}  // namespace kx
