// CPU launchers. Same argument structs as the CUDA launchers (csrc/cuda/kernels.h).
#pragma once
#include "kexue/actnorm.h"
#include "kexue/coupling.h"

namespace kx {
namespace cpu {
void coupling_forward(const coupling::Args& a);
void coupling_backward(const coupling::GradArgs& a);
void actnorm_forward(const actnorm::Args& a);
void actnorm_backward(const actnorm::GradArgs& a);
}  // namespace cpu
}  // namespace kx
