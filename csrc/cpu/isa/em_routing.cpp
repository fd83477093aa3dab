// Built once per instruction set with -DKX_ISA_NS=<base|avx2|avx512> and that set's flags
// (see csrc/cpu/isa/coupling.cpp). Torch-free on purpose.
#include "cpu/em_routing_loops.h"

namespace kx {
namespace cpu {
namespace KX_ISA_NS {

emloops::Loops em_routing_loops(DType dtype) {
  return dtype == DType::F64 ? emloops::make_loops<double>() : emloops::make_loops<float>();
}

}  // namespace KX_ISA_NS
}  // namespace cpu
}  // namespace kx
