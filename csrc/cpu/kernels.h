// CPU launchers. Same argument structs as the CUDA launchers (csrc/cuda/kernels.h).
#pragma once
#include "kexue/actnorm.h"
#include "kexue/attention.h"
#include "kexue/activations.h"
#include "kexue/capsules.h"
#include "kexue/coupling.h"
#include "kexue/diffusion.h"
#include "kexue/em_routing.h"
#include "kexue/spectral_norm.h"

namespace kx {
namespace cpu {
void coupling_forward(const coupling::Args& a);
void coupling_backward(const coupling::GradArgs& a);
void actnorm_forward(const actnorm::Args& a);
void actnorm_backward(const actnorm::GradArgs& a);
void spectral_norm_power_iteration(const sn::PowerArgs& a);
void spectral_normalize_weight(const sn::NormalizeArgs& a);
void spectral_normalize_weight_backward(const sn::NormalizeGradArgs& a);
void activation_derivatives(const act::Args& a);
void dynamic_routing_forward(const caps::Args& a);
void dynamic_routing_backward(const caps::GradArgs& a);
void em_routing_forward(const em::Args& a);
void em_routing_backward(const em::GradArgs& a);
void diffusion_step(const diff::StepArgs& a);
void q_sample(const diff::QSampleArgs& a);
void rope_attention_forward(const attn::Args& a);
void rope_attention_backward(const attn::GradArgs& g);
void apply_rope(const attn::RopeArgs& r);
}  // namespace cpu
}  // namespace kx
