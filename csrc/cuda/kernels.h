// CUDA launchers, callable from host C++ without CUDA or torch headers. Each returns a
// cudaError_t value (0 = success); error_string() turns it into text for the glue's checks.
#pragma once
#include <cstddef>

#include "kexue/actnorm.h"
#include "kexue/attention.h"
#include "kexue/activations.h"
#include "kexue/capsules.h"
#include "kexue/coupling.h"
#include "kexue/diffusion.h"
#include "kexue/em_routing.h"
#include "kexue/spectral_norm.h"

namespace kx {
namespace cuda {
const char* error_string(int err);

size_t coupling_forward_workspace(const coupling::Args& a);  // bytes, for a.workspace
int coupling_forward(const coupling::Args& a, void* stream);
int coupling_backward(const coupling::GradArgs& a, void* stream);

int actnorm_forward(const actnorm::Args& a, void* stream);
size_t actnorm_backward_workspace(const actnorm::GradArgs& a);  // bytes, for a.workspace
int actnorm_backward(const actnorm::GradArgs& a, void* stream);

// Spectral norm power iteration over a table of weights. The planner fills the CUDA fields of
// each entry (workspace offsets, task ranges) and returns the totals; the glue then copies the
// table to the device (for more than one weight) and allocates the workspace.
struct SnPlan {
  int64_t t_elems, part_elems, row_tasks, col_tasks;
};
SnPlan spectral_norm_plan(sn::Entry* entries, int64_t count);
size_t spectral_norm_workspace(const SnPlan& plan, DType dtype);  // bytes
int spectral_norm_power_iteration(const sn::PowerArgs& a, const SnPlan& plan, void* stream);
size_t spectral_normalize_workspace(const sn::NormalizeArgs& a);  // bytes
int spectral_normalize_weight(const sn::NormalizeArgs& a, void* stream);
size_t spectral_normalize_backward_workspace(const sn::NormalizeGradArgs& a);  // bytes
int spectral_normalize_weight_backward(const sn::NormalizeGradArgs& a, void* stream);

int activation_derivatives(const act::Args& a, void* stream);
size_t dynamic_routing_forward_workspace(const caps::Args& a);  // bytes, for a.workspace
int dynamic_routing_forward(const caps::Args& a, void* stream);
size_t dynamic_routing_backward_workspace(const caps::GradArgs& a);  // bytes
int dynamic_routing_backward(const caps::GradArgs& a, void* stream);

size_t em_routing_forward_workspace(const em::Args& a);  // bytes, for a.workspace
int em_routing_forward(const em::Args& a, void* stream);
size_t em_routing_backward_workspace(const em::GradArgs& a);  // bytes
int em_routing_backward(const em::GradArgs& a, void* stream);

size_t diffusion_step_workspace(const diff::StepArgs& a);  // bytes, for a.coeffs
int diffusion_step(const diff::StepArgs& a, void* stream);
int q_sample(const diff::QSampleArgs& a, void* stream);

size_t rope_attention_workspace(const attn::Args& a);  // bytes, for a.workspace
int rope_attention_forward(const attn::Args& a, void* stream);
size_t rope_attention_backward_workspace(const attn::GradArgs& g);  // bytes, for g.fwd.workspace
int rope_attention_backward(const attn::GradArgs& g, void* stream);
int apply_rope(const attn::RopeArgs& r, void* stream);
}  // namespace cuda
}  // namespace kx
