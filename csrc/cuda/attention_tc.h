// The tensor-core path of RoPE attention (fp16/bf16, head dim 32/64/96/128, sm_80+), called by
// csrc/cuda/attention.cu. The kernels read q, k, v as given and rotate tiles as they load them.
#pragma once
#include <cuda_runtime.h>

#include "kexue/attention.h"

namespace kx {
namespace cuda {
namespace tc {

// Whether this call can take the tensor-core path on the current device (dtype, head dim, 16-byte
// aligned q, k, v, compute capability, and the shared memory of the largest of the three
// kernels: forward and backward always take the same path, so the backward recomputes exactly
// the scores whose log-sum-exp the forward saved).
bool supported(const attn::Args& a);

// Workspace bytes: the RoPE cos/sin table, and in the backward the row dots D_i after it.
size_t forward_workspace(const attn::Args& a);
size_t backward_workspace(const attn::Args& a);

// Where the backward expects D_i = dO_i·O_i (fp32, [B, H, Lq]) in a.workspace.
float* backward_dots(const attn::Args& a);

int forward(const attn::Args& a, cudaStream_t stream);

// Writes grad_q, grad_k, grad_v; D_i must be in backward_dots(g.fwd).
int backward(const attn::GradArgs& g, cudaStream_t stream);

}  // namespace tc
}  // namespace cuda
}  // namespace kx
