// Built once per instruction set with -DKX_ISA_NS=<base|avx2|avx512> and that set's flags
// (see csrc/cpu/isa/coupling.cpp). Torch-free on purpose.
#include "cpu/spectral_norm_loops.h"

namespace kx {
namespace cpu {
namespace KX_ISA_NS {

snloops::Loops spectral_norm_loops(DType dtype) {
  return dtype == DType::F64 ? snloops::make_loops<double>() : snloops::make_loops<float>();
}

}  // namespace KX_ISA_NS
}  // namespace cpu
}  // namespace kx
