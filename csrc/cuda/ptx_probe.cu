// The PTX probe kernel (see ptx_probe.h). Output words, per lane l:
//   [0, 128)    ldmatrix.x4 of A (matrices: rows 0-7/8-15 × cols 0-7, then × cols 8-15), 4l + m
//   [128, 256)  ldmatrix.x4.trans of the same addresses
//   [256, 288)  ldmatrix.x1 of A rows 0-7, cols 0-7
//   [288, 352)  ldmatrix.x2 of A rows 0-15, cols 0-7, 2l + m
//   [352, 416)  ldmatrix.x2 of Bᵀ (the B fragment of mma.m16n8k16), 2l + m
//   [416, 544)  mma.m16n8k16 D = A·B + C as float bits, 4l + i
//   [544, 672)  cp.async of A's 16-byte chunk l with src-size 4·(l % 5) (zero-filled), 4l + w
#include "cuda/common.cuh"
#include "cuda/ptx.cuh"
#include "cuda/ptx_probe.h"

namespace kx {
namespace cuda {
namespace {

constexpr int kProbeSmem = 512 + 256 + 512;

__global__ void __launch_bounds__(32) probe_kernel(const __nv_bfloat16* a, const __nv_bfloat16* bt, const float* c,
                                                   uint32_t* out) {
  KX_DYNAMIC_SHARED(unsigned char, smem, 128);
  __nv_bfloat16* As = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* Bs = As + 256;
  unsigned char* Cs = smem + 768;
  const int lane = threadIdx.x;
  ptx::cp_async<16>(As + lane * 8, a + lane * 8);
  if (lane < 16) ptx::cp_async<16>(Bs + lane * 8, bt + lane * 8);
  ptx::cp_async<16>(Cs + lane * 16, a + lane * 8, 4 * (lane % 5));
  ptx::cp_async_commit();
  ptx::cp_async_wait<0>();
  __syncthreads();

  uint32_t r4[4], r4t[4], r1[1], r2[2], b[2];
  const __nv_bfloat16* row_x4 = As + (lane % 16) * 16 + (lane / 16) * 8;
  ptx::ldmatrix<4>(r4, row_x4);
  ptx::ldmatrix_trans<4>(r4t, row_x4);
  ptx::ldmatrix<1>(r1, As + (lane % 8) * 16);
  ptx::ldmatrix<2>(r2, As + (lane % 16) * 16);
  ptx::ldmatrix<2>(b, Bs + (lane % 8) * 16 + (lane / 8 % 2) * 8);
  float cf[4], d[4];
  for (int i = 0; i < 4; ++i) cf[i] = c[4 * lane + i];
  ptx::mma_m16n8k16<__nv_bfloat16>(d, r4, b, cf);

  for (int m = 0; m < 4; ++m) {
    out[4 * lane + m] = r4[m];
    out[128 + 4 * lane + m] = r4t[m];
    out[416 + 4 * lane + m] = __float_as_uint(d[m]);
  }
  out[256 + lane] = r1[0];
  for (int m = 0; m < 2; ++m) {
    out[288 + 2 * lane + m] = r2[m];
    out[352 + 2 * lane + m] = b[m];
  }
  const uint32_t* copied = reinterpret_cast<const uint32_t*>(Cs + lane * 16);
  for (int w = 0; w < 4; ++w) out[544 + 4 * lane + w] = copied[w];
}

}  // namespace

int ptx_probe(const void* a, const void* bt, const float* c, uint32_t* out) {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
    return static_cast<int>(cudaErrorInvalidDevice);
  if (major < 8) return static_cast<int>(cudaErrorInvalidDevice);  // bf16 mma and cp.async need sm_80
  KX_LAUNCH(1, 32, kProbeSmem, nullptr, probe_kernel)(static_cast<const __nv_bfloat16*>(a),
                                                      static_cast<const __nv_bfloat16*>(bt), c, out);
  return last_error();
}

}  // namespace cuda
}  // namespace kx
