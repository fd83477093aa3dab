// Tile kernels of the CPU attention: a register-blocked matrix product (scores Q·Kᵀ, outputs P·V
// and the four backward products are all this one shape) and the exponentials of a score row.
// Torch-free: built once per instruction set (csrc/cpu/isa/attention.cpp) for float and double,
// with the vector width of that set. Every function is static (see cpu/isa.h).
#pragma once
#include <cstring>

#include "kexue/common.h"

namespace kx {
namespace cpu {
namespace attnloops {

template <typename A> struct TileOps {
  // C[M×N] (row stride ldc) = alpha·X·Y, or C += alpha·X·Y when accumulate, where X(m, k) is
  // x[m·x_rs + k·x_cs] (any strides: a transposed tile costs nothing) and Y(k, n) is y[k·ldy + n].
  void (*gemm)(int64_t M, int64_t N, int64_t K, A alpha, const A* x, int64_t x_rs, int64_t x_cs, const A* y,
               int64_t ldy, bool accumulate, A* c, int64_t ldc);
  // p[n] = exp(s[n] − shift) for n < count (s and p may alias); returns Σ p.
  A (*exp_row)(const A* s, A* p, int64_t count, A shift);
  // max(init, s[0..count)), ignoring NaN, and *nan = whether any s[n] is NaN.
  A (*row_max)(const A* s, int64_t count, A init, bool* nan);
};

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

template <typename A> struct Vec {
  typedef A type __attribute__((vector_size(kVecBytes)));
};
template <typename A> static constexpr int width() { return kVecBytes / static_cast<int>(sizeof(A)); }

// Rows of C per block, and vectors of C per row: MR·NV accumulators stay in registers (16 of the
// 32 zmm registers with AVX-512; 8 of the 16 ymm/xmm registers otherwise, leaving room for the
// loaded row of Y and the broadcast).
constexpr int kMR = 4;
constexpr int kNV = kVecBytes == 64 ? 4 : 2;

template <typename V> static inline V load_vec(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename V> static inline void store_vec(void* p, V v) { std::memcpy(p, &v, sizeof v); }

// x in every lane: one broadcast. (V{} + x costs a scalar add first, on the ports the FMAs need:
// 0 + x is not x for x = −0, so the compiler may not drop it; x − 0 is x for every x.)
template <typename V, typename A> static inline V splat(A x) { return x - V{}; }

// One MR×(NV·width) block of C at column n0; the k loop carries all of it in registers.
template <typename A, int MR, int NV>
static inline void block(int64_t K, A alpha, const A* x, int64_t x_rs, int64_t x_cs, const A* y, int64_t ldy,
                         bool accumulate, A* c, int64_t ldc) {
  using V = typename Vec<A>::type;
  constexpr int W = width<A>();
  V acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) acc[m][v] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V yv[NV];
    for (int v = 0; v < NV; ++v) yv[v] = load_vec<V>(y + k * ldy + v * W);
    for (int m = 0; m < MR; ++m) {
      const V xm = splat<V>(x[m * x_rs + k * x_cs]);
      for (int v = 0; v < NV; ++v) acc[m][v] += xm * yv[v];
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) {
      A* cp = c + m * ldc + v * W;
      const V r = acc[m][v] * alpha;
      store_vec(cp, accumulate ? load_vec<V>(cp) + r : r);
    }
}

// Columns past the last whole vector: plain loops.
template <typename A>
static void columns_tail(int64_t M, int64_t n0, int64_t N, int64_t K, A alpha, const A* x, int64_t x_rs,
                         int64_t x_cs, const A* y, int64_t ldy, bool accumulate, A* c, int64_t ldc) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = n0; n < N; ++n) {
      A s = A(0);
      for (int64_t k = 0; k < K; ++k) s += x[m * x_rs + k * x_cs] * y[k * ldy + n];
      c[m * ldc + n] = accumulate ? c[m * ldc + n] + alpha * s : alpha * s;
    }
}

// Rows [m0, m0 + MR) over all whole-vector columns.
template <typename A, int MR>
static void row_block(int64_t m0, int64_t N, int64_t K, A alpha, const A* x, int64_t x_rs, int64_t x_cs, const A* y,
                      int64_t ldy, bool accumulate, A* c, int64_t ldc) {
  constexpr int W = width<A>();
  const A* xr = x + m0 * x_rs;
  A* cr = c + m0 * ldc;
  int64_t n = 0;
  for (; n + kNV * W <= N; n += kNV * W) block<A, MR, kNV>(K, alpha, xr, x_rs, x_cs, y + n, ldy, accumulate, cr + n, ldc);
  for (; n + W <= N; n += W) block<A, MR, 1>(K, alpha, xr, x_rs, x_cs, y + n, ldy, accumulate, cr + n, ldc);
}

template <typename A>
static void gemm(int64_t M, int64_t N, int64_t K, A alpha, const A* x, int64_t x_rs, int64_t x_cs, const A* y,
                 int64_t ldy, bool accumulate, A* c, int64_t ldc) {
  constexpr int W = width<A>();
  int64_t m = 0;
  for (; m + kMR <= M; m += kMR) row_block<A, kMR>(m, N, K, alpha, x, x_rs, x_cs, y, ldy, accumulate, c, ldc);
  for (; m < M; ++m) row_block<A, 1>(m, N, K, alpha, x, x_rs, x_cs, y, ldy, accumulate, c, ldc);
  const int64_t whole = N / W * W;
  if (whole < N) columns_tail<A>(M, whole, N, K, alpha, x, x_rs, x_cs, y, ldy, accumulate, c, ldc);
}

template <typename A> static A exp_row(const A* s, A* p, int64_t count, A shift) {
  A sum = A(0);
#pragma omp simd reduction(+ : sum)
  for (int64_t n = 0; n < count; ++n) {
    const A e = kx::exp(s[n] - shift);
    p[n] = e;
    sum += e;
  }
  return sum;
}

// In 16 lanes: a running max (or an OpenMP max reduction, which GCC leaves scalar here) is a
// chain of count dependent maxes, and took a quarter of the forward's time.
template <typename A> static A row_max(const A* s, int64_t count, A init, bool* nan) {
  constexpr int kLanes = 16;
  A lane_max[kLanes];
  int lane_nan[kLanes];
  for (int k = 0; k < kLanes; ++k) {
    lane_max[k] = init;
    lane_nan[k] = 0;
  }
  int64_t n = 0;
  for (; n + kLanes <= count; n += kLanes) {
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) {
      const A x = s[n + k];
      lane_max[k] = x > lane_max[k] ? x : lane_max[k];
      lane_nan[k] |= x != x;
    }
  }
  A m = init;
  int any_nan = 0;
  for (; n < count; ++n) {
    m = s[n] > m ? s[n] : m;
    any_nan |= s[n] != s[n];
  }
  for (int k = 0; k < kLanes; ++k) {
    m = lane_max[k] > m ? lane_max[k] : m;
    any_nan |= lane_nan[k];
  }
  *nan = any_nan != 0;
  return m;
}

template <typename A> static TileOps<A> tile_ops() {
  TileOps<A> t;
  t.gemm = &gemm<A>;
  t.exp_row = &exp_row<A>;
  t.row_max = &row_max<A>;
  return t;
}

}  // namespace attnloops

// Entry points of each per-ISA build of csrc/cpu/isa/attention.cpp.
#define KX_DECLARE_ATTENTION_ISA(NS)                      \
  namespace NS {                                          \
  attnloops::TileOps<float> attention_tile_ops_f32();     \
  attnloops::TileOps<double> attention_tile_ops_f64();    \
  }
KX_DECLARE_ATTENTION_ISA(base)
KX_DECLARE_ATTENTION_ISA(avx2)
KX_DECLARE_ATTENTION_ISA(avx512)
#undef KX_DECLARE_ATTENTION_ISA

}  // namespace cpu
}  // namespace kx
