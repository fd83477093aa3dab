// The tensor-core path of RoPE attention (fp16/bf16, head dim 32/64/96/128, sm_80+), called by
// csrc/cuda/attention.cu after it has rotated q and k into 16-bit workspace copies.
#pragma once
#include <cuda_runtime.h>

#include "kexue/attention.h"

namespace kx {
namespace cuda {
namespace tc {

// Whether this call can take the tensor-core path on the current device (dtype, head dim, an
// aligned workspace, compute capability, and the shared memory of the largest of the three
// kernels: forward and backward always take the same path, so the backward recomputes exactly
// the scores whose log-sum-exp the forward saved).
bool supported(const attn::Args& a);

// qt, kt: q and k rotated (and converted) to the input dtype, [B, H, Lq, d] and [B, Hkv, Lk, d].
int forward(const attn::Args& a, const void* qt, const void* kt, cudaStream_t stream);

// Dv: D_i = dO_i·O_i in fp32. Writes grad_v, and dq, dk in fp32 before the inverse rotation.
int backward(const attn::GradArgs& g, const void* qt, const void* kt, const float* Dv, float* dq, float* dk,
             cudaStream_t stream);

}  // namespace tc
}  // namespace cuda
}  // namespace kx
