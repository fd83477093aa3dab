// The tensor-core path of RoPE attention (fp16/bf16, head dim 32/64/96/128, sm_80+), called by
// csrc/cuda/attention.cu after it has rotated q and k into 16-bit workspace copies.
#pragma once
#include <cuda_runtime.h>

#include "kexue/attention.h"

namespace kx {
namespace cuda {
namespace tc {

// Whether this call can take the tensor-core path on the current device (dtype, head dim,
// 16-byte aligned rows, compute capability, shared memory the kernels need).
bool supported(const attn::Args& a);
bool supported(const attn::GradArgs& g);  // also reads grad_out by 16-byte rows

// qt, kt: q and k rotated (and converted) to the input dtype, [B, H, Lq, d] and [B, Hkv, Lk, d].
int forward(const attn::Args& a, const void* qt, const void* kt, cudaStream_t stream);

// Dv: D_i = dO_i·O_i in fp32. Writes grad_v, and dq, dk in fp32 before the inverse rotation.
int backward(const attn::GradArgs& g, const void* qt, const void* kt, const float* Dv, float* dq, float* dk,
             cudaStream_t stream);

}  // namespace tc
}  // namespace cuda
}  // namespace kx
