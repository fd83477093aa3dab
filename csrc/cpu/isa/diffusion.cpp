// Built once per instruction set with -DKX_ISA_NS=<base|avx2|avx512> and that set's flags
// (see csrc/cpu/isa/coupling.cpp). Torch-free on purpose.
#include "cpu/diffusion_loops.h"

namespace kx {
namespace cpu {
namespace KX_ISA_NS {

diffloops::StepFn diffusion_step_fn(const diff::StepArgs& a) {
  return a.dtype == DType::F64 ? diffloops::step_fn<double>(a) : diffloops::step_fn<float>(a);
}

diffloops::QSampleFn q_sample_fn(DType dtype) {
  return dtype == DType::F64 ? &diffloops::q_sample_run<double> : &diffloops::q_sample_run<float>;
}

diffloops::QSampleSamplesFn q_sample_samples_fn(DType dtype) {
  return dtype == DType::F64 ? &diffloops::q_sample_samples<double> : &diffloops::q_sample_samples<float>;
}

int64_t streaming_copy_errors() { return streaming::copy_errors(); }

}  // namespace KX_ISA_NS
}  // namespace cpu
}  // namespace kx
