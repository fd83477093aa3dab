// Counter-based Gaussian noise shared by the CPU and CUDA kernels: Philox4x32-10 (Salmon et al.,
// "Parallel random numbers: as easy as 1, 2, 3", SC 2011) and the Box-Muller transform.
//
// Noise element i of a call is a pure function of (seed, offset, i): group g = i / 4 takes one
// Philox block with key = seed and counter = (g_lo, g_hi, offset_lo, offset_hi), and its four
// 32-bit words become four normals. So any split of the work over threads, blocks or devices
// draws the same numbers, and python/kexue/ops/diffusion.py can reproduce them exactly.
#pragma once
#include "kexue/common.h"

namespace kx {
namespace philox {

struct Block {
  uint32_t x, y, z, w;
};

KX_HOST_DEVICE uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

// Ten rounds of Philox4x32 with the Random123 multipliers and Weyl key increments.
KX_HOST_DEVICE Block philox4x32_10(Block c, uint32_t k0, uint32_t k1) {
// Fully unrolled on both sides: the host loop over Philox groups only vectorises without the
// inner loop's control flow.
#if defined(__CUDA_ARCH__)
#pragma unroll
#elif defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC unroll 10
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo(0xD2511F53u, c.x, &hi0);
    const uint32_t lo1 = mulhilo(0xCD9E8D57u, c.z, &hi1);
    c = Block{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

// log(u) for u in (0, 1] in fp32 (branch-free on the host, so the noise loop vectorises).
KX_HOST_DEVICE float log_unit(float u) {
#if defined(__CUDA_ARCH__)
  return ::logf(u);
#else
  return detail::log_f32_host(u);
#endif
}

// (cos 2πv, sin 2πv) for v in [0, 1). On the host: reduce to r = 2π(v − k/4) in [−π/4, π/4]
// with k the nearest quarter turn, evaluate the Cephes minimax polynomials, and rotate by k
// quarter turns with sign/swap masks (branch-free).
KX_HOST_DEVICE void sincos_turns(float v, float* c, float* s) {
#if defined(__CUDA_ARCH__)
  ::sincospif(2.0f * v, s, c);
#else
  const float magic = 12582912.0f;  // round to nearest, as in common.h's exp
  const float kq = (v * 4.0f + magic) - magic;
  const float r = (v - kq * 0.25f) * 6.28318530717958648f;
  const float r2 = r * r;
  float sp = -1.9515295891e-4f;
  sp = sp * r2 + 8.3321608736e-3f;
  sp = sp * r2 - 1.6666654611e-1f;
  const float sr = r + r * r2 * sp;
  float cp = 2.443315711809948e-5f;
  cp = cp * r2 - 1.388731625493765e-3f;
  cp = cp * r2 + 4.166664568298827e-2f;
  const float cr = 1.0f - 0.5f * r2 + r2 * r2 * cp;
  const int32_t q = static_cast<int32_t>(kq) & 3;
  // Quarter turns: q=1: (c,s) = (−sr, cr); q=2: (−cr, −sr); q=3: (sr, −cr).
  const int32_t swap = -(q & 1);
  const int32_t cos_neg = -((q == 1) | (q == 2));
  const int32_t sin_neg = -((q & 2) >> 1);
  const int32_t ci = (detail::float_to_bits(cr) & ~swap) | (detail::float_to_bits(sr) & swap);
  const int32_t si = (detail::float_to_bits(sr) & ~swap) | (detail::float_to_bits(cr) & swap);
  *c = detail::bits_to_float(ci ^ (cos_neg & static_cast<int32_t>(0x80000000u)));
  *s = detail::bits_to_float(si ^ (sin_neg & static_cast<int32_t>(0x80000000u)));
#endif
}

// Two standard normals from two 32-bit words. u1 in (0, 1] keeps log finite; 24 bits each,
// the resolution of an fp32 mantissa.
KX_HOST_DEVICE void box_muller(uint32_t a, uint32_t b, float* z0, float* z1) {
  const float u1 = static_cast<float>((a >> 8) + 1u) * 5.9604644775390625e-8f;  // 2^-24
  const float u2 = static_cast<float>(b >> 8) * 5.9604644775390625e-8f;
  const float r = ::sqrtf(-2.0f * log_unit(u1));
  float c, s;
  sincos_turns(u2, &c, &s);
  *z0 = r * c;
  *z1 = r * s;
}

// The four normals of group g (noise elements 4g .. 4g+3).
KX_HOST_DEVICE void normals4(uint64_t seed, uint64_t offset, uint64_t g, float out[4]) {
  const Block blk = philox4x32_10(
      Block{static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32),
            static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)},
      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  box_muller(blk.x, blk.y, &out[0], &out[1]);
  box_muller(blk.z, blk.w, &out[2], &out[3]);
}

// Where the (seed, offset) of a call come from. On the CPU and in eager CUDA they are values;
// inside a CUDA graph capture torch's generator hands out device pointers that each replay
// advances (its "graph-safe" Philox state), read by the kernel itself.
struct State {
  uint64_t seed = 0, offset = 0;
  const int64_t* seed_ptr = nullptr;    // captured: seed lives here
  const int64_t* offset_ptr = nullptr;  // captured: offset = *offset_ptr + offset_intragraph
  uint64_t offset_intragraph = 0;
};

KX_HOST_DEVICE void resolve(const State& st, uint64_t* seed, uint64_t* offset) {
  if (st.seed_ptr) {
    *seed = static_cast<uint64_t>(*st.seed_ptr);
    *offset = static_cast<uint64_t>(*st.offset_ptr) + st.offset_intragraph;
  } else {
    *seed = st.seed;
    *offset = st.offset;
  }
}

}  // namespace philox
}  // namespace kx
