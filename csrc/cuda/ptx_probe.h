// A probe of the warp-level matrix instructions (csrc/cuda/ptx.cuh): one warp loads a 16×16
// bf16 matrix A and an 8×16 matrix Bᵀ into shared memory with cp.async, reads them back with
// ldmatrix (x1, x2, x4, x4.trans) and multiplies them with mma.sync.m16n8k16, writing every
// lane's registers. A test holds the output to the PTX ISA's documented lane layouts, on the
// emulator in CI and on a GPU in `make gpu-check`: the first GPU run validates the emulator.
#pragma once
#include <cstdint>

namespace kx {
namespace cuda {

constexpr int kPtxProbeWords = 672;  // uint32 words written at `out`; layout in ptx_probe.cu

// a: 256 bf16 (A row-major), bt: 128 bf16 (Bᵀ row-major, [n][k]), c: 128 floats (lane l's C
// fragment at 4l..4l+3). All device memory (host memory for the emulator), 16-byte aligned.
int ptx_probe(const void* a, const void* bt, const float* c, uint32_t* out);

}  // namespace cuda
}  // namespace kx
