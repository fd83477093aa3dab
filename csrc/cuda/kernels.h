// CUDA launchers, callable from host C++ without CUDA or torch headers. Each returns a
// cudaError_t value (0 = success); error_string() turns it into text for the glue's checks.
#pragma once
#include <cstddef>

#include "kexue/actnorm.h"
#include "kexue/coupling.h"

namespace kx {
namespace cuda {
const char* error_string(int err);

size_t coupling_forward_workspace(const coupling::Args& a);  // bytes, for a.workspace
int coupling_forward(const coupling::Args& a, void* stream);
int coupling_backward(const coupling::GradArgs& a, void* stream);

int actnorm_forward(const actnorm::Args& a, void* stream);
size_t actnorm_backward_workspace(const actnorm::GradArgs& a);  // bytes, for a.workspace
int actnorm_backward(const actnorm::GradArgs& a, void* stream);
}  // namespace cuda
}  // namespace kx
