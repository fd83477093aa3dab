// Built once per instruction set with -DKX_ISA_NS=<base|avx2|avx512> and that set's flags
// (see csrc/cpu/isa/coupling.cpp). Torch-free on purpose.
#include "cpu/capsules_loops.h"

namespace kx {
namespace cpu {
namespace KX_ISA_NS {

capsloops::Loops capsules_loops(DType dtype) {
  return dtype == DType::F64 ? capsloops::make_loops<double>() : capsloops::make_loops<float>();
}

}  // namespace KX_ISA_NS
}  // namespace cpu
}  // namespace kx
