// The CPU instruction sets the fp32/fp64 inner loops are compiled for, and the choice among them.
#pragma once
#include "cpu/coupling_loops.h"

namespace kx {
namespace cpu {

enum class Isa : int { Base = 0, Avx2 = 1, Avx512 = 2 };

// The best set this CPU supports, lowered by set_isa() (tests, or KEXUE_CPU_ISA=base|avx2|avx512).
Isa active_isa();
const char* isa_name(Isa isa);
// Returns false (and changes nothing) when the CPU or this build lacks that set.
bool set_isa(Isa isa);
bool isa_available(Isa isa);

// Entry points of each per-ISA build of csrc/cpu/isa/*.cpp (fp32 and fp64 only). Every function
// of the loops headers those builds include must be static: the builds instantiate the same
// templates, and non-static instantiations are weak symbols the linker folds into one build's
// code (the base one, or the AVX-512 one on a CPU that lacks it).
#define KX_DECLARE_ISA(NS)                                                                  \
  namespace NS {                                                                            \
  loops::ForwardFn coupling_forward_fn(DType dtype, coupling::Scale scale, bool reverse,    \
                                       bool masked, bool has_t);                            \
  loops::BackwardFn coupling_backward_fn(DType dtype, coupling::Scale scale, bool reverse,  \
                                         bool masked, bool has_t);                          \
  }
KX_DECLARE_ISA(base)
KX_DECLARE_ISA(avx2)
KX_DECLARE_ISA(avx512)
#undef KX_DECLARE_ISA

}  // namespace cpu
}  // namespace kx
