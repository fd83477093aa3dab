// mma.sync.m16n8k16 and ldmatrix as warp collectives with the per-lane fragment layouts of the
// PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type", "ldmatrix"). Each lane
// holds only its own registers, exactly as on the hardware, so a kernel that assumes another
// layout computes wrong results here too. With groupID = lane / 4 and tig = lane % 4:
//   A (16×16, row): element i of 8 (register i/2, low half first): row groupID + 8·((i/2)%2),
//                   column 2·tig + i%2 + 8·(i/4)
//   B (16×8, col):  element i of 4: row (k) 2·tig + i%2 + 8·(i/2), column (n) groupID
//   C, D (16×8):    element i of 4: row groupID + 8·(i/2), column 2·tig + i%2
//   ldmatrix:       register m of lane l holds row l/4, columns 2·(l%4) and +1 of matrix m;
//                   with .trans, column l/4, rows 2·(l%4) and +1.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "simt/scheduler.h"

namespace kx {
namespace simt {
namespace ptx {

struct MmaLayout {
  static int a_row(int lane, int i) { return lane / 4 + 8 * ((i / 2) % 2); }
  static int a_col(int lane, int i) { return 2 * (lane % 4) + i % 2 + 8 * (i / 4); }
  static int b_row(int lane, int i) { return 2 * (lane % 4) + i % 2 + 8 * (i / 2); }
  static int b_col(int lane, int) { return lane / 4; }
  static int c_row(int lane, int i) { return lane / 4 + 8 * (i / 2); }
  static int c_col(int lane, int i) { return 2 * (lane % 4) + i % 2; }
};

template <typename T> float half_bits_to_float(uint16_t bits) {
  T h;
  std::memcpy(&h, &bits, sizeof h);
  if constexpr (std::is_same<T, __half>::value)
    return __half2float(h);
  else
    return __bfloat162float(h);
}

inline uint16_t half_of(uint32_t reg, int which) { return static_cast<uint16_t>(which ? reg >> 16 : reg & 0xffffu); }

struct MmaRecord {
  const uint32_t* a;
  const uint32_t* b;
  const float* c;
  float* d;
};

template <typename T> void complete_mma(Thread* const* lanes, unsigned) {
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const MmaRecord& r = *static_cast<MmaRecord*>(lanes[l]->record);
    for (int i = 0; i < 8; ++i)
      A[MmaLayout::a_row(l, i)][MmaLayout::a_col(l, i)] = half_bits_to_float<T>(half_of(r.a[i / 2], i % 2));
    for (int i = 0; i < 4; ++i) {
      B[MmaLayout::b_row(l, i)][MmaLayout::b_col(l, i)] = half_bits_to_float<T>(half_of(r.b[i / 2], i % 2));
      C[MmaLayout::c_row(l, i)][MmaLayout::c_col(l, i)] = r.c[i];
    }
  }
  for (int l = 0; l < 32; ++l) {
    const MmaRecord& r = *static_cast<MmaRecord*>(lanes[l]->record);
    for (int i = 0; i < 4; ++i) {
      const int row = MmaLayout::c_row(l, i), col = MmaLayout::c_col(l, i);
      float acc = C[row][col];
      for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];  // products of 16-bit values are exact in fp32
      r.d[i] = acc;
    }
  }
}

template <typename T>
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value,
                "mma_m16n8k16 takes __half or __nv_bfloat16 inputs");
  float out[4];
  MmaRecord r{a, b, c, out};
  warp_collective("mma.sync.m16n8k16", 0xffffffffu, &r, &complete_mma<T>);
  for (int i = 0; i < 4; ++i) d[i] = out[i];  // d may alias c: written after every lane has read
}

struct LdmatrixRecord {
  const void* row;
  uint32_t* r;
};

template <int N, bool Trans> void complete_ldmatrix(Thread* const* lanes, unsigned) {
  uint16_t M[N][8][8];
  for (int m = 0; m < N; ++m)
    for (int row = 0; row < 8; ++row) {
      const void* p = static_cast<LdmatrixRecord*>(lanes[8 * m + row]->record)->row;
      if (!in_shared(p, 16))
        fail("ldmatrix: lane " + std::to_string(8 * m + row) + " gives a row address outside the block's shared memory");
      check_aligned(p, 16, "ldmatrix row address");
      std::memcpy(M[m][row], p, 16);
    }
  for (int l = 0; l < 32; ++l) {
    uint32_t* r = static_cast<LdmatrixRecord*>(lanes[l]->record)->r;
    for (int m = 0; m < N; ++m) {
      const int a = l / 4, b = 2 * (l % 4);
      const uint16_t lo = Trans ? M[m][b][a] : M[m][a][b];
      const uint16_t hi = Trans ? M[m][b + 1][a] : M[m][a][b + 1];
      r[m] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
    }
  }
}

template <int N, bool Trans> void ldmatrix(uint32_t (&r)[N], const void* smem_row) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
  uint32_t out[N];
  LdmatrixRecord rec{smem_row, out};
  warp_collective(Trans ? "ldmatrix.trans" : "ldmatrix", 0xffffffffu, &rec, &complete_ldmatrix<N, Trans>);
  for (int m = 0; m < N; ++m) r[m] = out[m];
}

}  // namespace ptx
}  // namespace simt
}  // namespace kx
