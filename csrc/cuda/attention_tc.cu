// RoPE attention on tensor cores: flash-attention-2's tiling with WMMA 16×16×16 products on
// fp16/bf16 tiles, fp32 accumulation, fp32 online softmax. Tiles live in shared memory: each warp
// owns 16 rows of the block's tile (queries in the forward and in dQ, keys in dK/dV), so after a
// tile is loaded a warp only syncs with itself. The accumulators (O, dQ, dK, dV) stay in shared
// memory in fp32 because the online softmax rescales them row by row, and WMMA does not say which
// row a fragment element belongs to.
//
// Backward, deterministic and without atomics: one kernel per key block accumulates dK and dV
// over every query (and every query head of its GQA group); one kernel per query block
// accumulates dQ over every key, recomputing the scores.
#include <type_traits>

#include "cuda/attention_tc.h"
#include "cuda/common.cuh"
#include "cuda/ptx.cuh"
#include "kexue/dispatch.h"

namespace kx {
namespace cuda {
namespace tc {
namespace {

using namespace nvcuda;

constexpr int kCols = 64;  // keys (forward, dQ) or queries (dK/dV) per inner tile
constexpr int kPadH = 8;   // row padding of 16-bit tiles: rows stay 16-byte aligned, banks spread
constexpr int kPadF = 4;   // row padding of fp32 tiles

// Shared-memory regions, each rounded up to 128 bytes (WMMA wants 32-byte aligned tiles).
__host__ __device__ constexpr size_t round128(size_t n) { return (n + 127) / 128 * 128; }
__host__ __device__ constexpr size_t half_tile(int rows, int cols) { return round128(size_t(rows) * (cols + kPadH) * 2); }
__host__ __device__ constexpr size_t float_tile(int rows, int cols) { return round128(size_t(rows) * (cols + kPadF) * 4); }

struct Carver {
  unsigned char* p;
  template <typename X> __device__ X* take(size_t bytes) {
    X* out = reinterpret_cast<X*>(p);
    p += bytes;
    return out;
  }
};

template <typename T> __device__ __forceinline__ T to_half(float v);
template <> __device__ __forceinline__ __half to_half<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 to_half<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Rows [row0, row0 + rows) of a row-major [n, D] matrix into a padded tile; rows past n are 0.
// 16-byte loads when the matrix is 16-byte aligned (every row then is: D·2 is a multiple of 64).
template <typename T, int D>
__device__ __forceinline__ void load_rows(T* dst, const T* src, int64_t row0, int64_t n, int rows) {
  if ((reinterpret_cast<uintptr_t>(src) & 15u) == 0) {
    constexpr int kVec = 16 / sizeof(T), per_row = D / kVec;
    for (int e = threadIdx.x; e < rows * per_row; e += blockDim.x) {
      const int r = e / per_row, c = (e % per_row) * kVec;
      uint4 v = make_uint4(0u, 0u, 0u, 0u);
      if (row0 + r < n) v = *reinterpret_cast<const uint4*>(src + (row0 + r) * D + c);
      *reinterpret_cast<uint4*>(dst + r * (D + kPadH) + c) = v;
    }
  } else {
    for (int e = threadIdx.x; e < rows * D; e += blockDim.x) {
      const int r = e / D, c = e % D;
      dst[r * (D + kPadH) + c] = row0 + r < n ? src[(row0 + r) * D + c] : to_half<T>(0.0f);
    }
  }
}

// C[16×N] = X[16×K]·Y[K×N] (or C += when accumulate) for one warp. X is a row-major 16-bit tile;
// Y(k, n) is y[k·ldy + n] (row major) or y[n·ldy + k] (YColMajor: a tile read transposed).
template <typename T, int N, int K, bool YColMajor>
__device__ __forceinline__ void warp_mma(const T* x, int ldx, const T* y, int ldy, float* c, int ldc, bool accumulate) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // never reached: tc::supported refuses devices below sm_80, which lack bf16 WMMA
#else
  using YL = typename std::conditional<YColMajor, wmma::col_major, wmma::row_major>::type;
#pragma unroll
  for (int n = 0; n < N / 16; ++n) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    if (accumulate) {
      wmma::load_matrix_sync(acc, c + n * 16, ldc, wmma::mem_row_major);
    } else {
      wmma::fill_fragment(acc, 0.0f);
    }
#pragma unroll
    for (int k = 0; k < K / 16; ++k) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fx;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, YL> fy;
      wmma::load_matrix_sync(fx, x + k * 16, ldx);
      wmma::load_matrix_sync(fy, YColMajor ? y + n * 16 * ldy + k * 16 : y + k * 16 * ldy + n * 16, ldy);
      wmma::mma_sync(acc, fx, fy, acc);
    }
    wmma::store_matrix_sync(c + n * 16, acc, ldc, wmma::mem_row_major);
  }
#endif
}

__device__ __forceinline__ bool sees(const attn::Args& a, int64_t b, int64_t h, int64_t i, int64_t j) {
  return i < a.Lq && j < a.Lk && attn::visible(a.mask, b, h, i, j, a.Lk);
}

// ---------------------------------------------------------------------------------------------
// Forward: a block owns 64 query rows of one (sample, head); warp w owns rows 16w..16w+15.

constexpr int kFwdWarps = 4, kFwdRows = 16 * kFwdWarps;

template <int D> constexpr size_t forward_smem() {
  return 3 * half_tile(kFwdRows, D) + float_tile(kFwdRows, kCols) + half_tile(kFwdRows, kCols) +
         float_tile(kFwdRows, D) + 3 * round128(kFwdRows * 4);
}

template <typename T, int D>
__device__ void forward_tile(const attn::Args& a, const T* qt, const T* kt, int64_t bh) {
  constexpr int ldh = D + kPadH, ldf = D + kPadF, lds = kCols + kPadF, ldp = kCols + kPadH;
  KX_DYNAMIC_SHARED(unsigned char, smem, 128);
  Carver cv{smem};
  T* Qs = cv.take<T>(half_tile(kFwdRows, D));
  T* Ks = cv.take<T>(half_tile(kFwdRows, D));
  T* Vs = cv.take<T>(half_tile(kFwdRows, D));
  float* Ss = cv.take<float>(float_tile(kFwdRows, kCols));
  T* Ps = cv.take<T>(half_tile(kFwdRows, kCols));
  float* Os = cv.take<float>(float_tile(kFwdRows, D));
  float* m_s = cv.take<float>(round128(kFwdRows * 4));
  float* l_s = cv.take<float>(round128(kFwdRows * 4));
  float* alpha_s = cv.take<float>(round128(kFwdRows * 4));

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r0 = 16 * warp;
  const int64_t b = bh / a.H, h = bh % a.H, bhk = b * a.Hkv + h / (a.H / a.Hkv);
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kFwdRows, i1 = min(a.Lq, i0 + kFwdRows);
  const T* K = kt + bhk * a.Lk * D;
  const T* V = static_cast<const T*>(a.v) + bhk * a.Lk * D;
  const float scale = static_cast<float>(a.scale), inf = INFINITY;

  load_rows<T, D>(Qs, qt + bh * a.Lq * D, i0, a.Lq, kFwdRows);
  for (int e = threadIdx.x; e < kFwdRows * ldf; e += blockDim.x) Os[e] = 0.0f;
  for (int e = threadIdx.x; e < kFwdRows; e += blockDim.x) {
    m_s[e] = -inf;
    l_s[e] = 0.0f;
  }
  __syncthreads();  // rows are initialised by other warps than the ones that own them
  for (int64_t j0 = 0; j0 < a.Lk; j0 += kCols) {
    const int64_t j1 = min(a.Lk, j0 + kCols);
    if (attn::block_hidden(a.mask, b, i0, i1, j0, j1)) continue;  // the same for the whole block
    __syncthreads();  // the previous K and V tiles are consumed
    load_rows<T, D>(Ks, K, j0, a.Lk, kCols);
    load_rows<T, D>(Vs, V, j0, a.Lk, kCols);
    __syncthreads();
    warp_mma<T, kCols, D, true>(Qs + r0 * ldh, ldh, Ks, ldh, Ss + r0 * lds, lds, false);  // S = Q·Kᵀ
    __syncwarp();
    for (int r = r0; r < r0 + 16; ++r) {
      const int64_t i = i0 + r;
      float s[2];
      for (int t = 0; t < 2; ++t) {
        const int c = lane + 32 * t;
        s[t] = sees(a, b, h, i, j0 + c) ? Ss[r * lds + c] * scale : -inf;
      }
      // fmaxf ignores NaN: a NaN score must make the row NaN (as softmax does), not masked-looking 0.
      const bool nan = __any_sync(0xffffffffu, s[0] != s[0] || s[1] != s[1]);
      const float m_old = m_s[r], m_new = nan ? NAN : fmaxf(m_old, warp_allmax(fmaxf(s[0], s[1])));
      float p0 = 0.0f, p1 = 0.0f, alpha = 1.0f;
      if (m_new != -inf) {  // otherwise nothing is visible yet and the row stays 0
        p0 = expf(s[0] - m_new);
        p1 = expf(s[1] - m_new);
        alpha = expf(m_old - m_new);
      }
      const float psum = warp_allsum(p0 + p1);
      Ps[r * ldp + lane] = to_half<T>(p0);
      Ps[r * ldp + lane + 32] = to_half<T>(p1);
      if (lane == 0) {
        l_s[r] = l_s[r] * alpha + psum;
        m_s[r] = m_new;
        alpha_s[r] = alpha;
      }
    }
    __syncwarp();
    for (int e = lane; e < 16 * D; e += 32) Os[(r0 + e / D) * ldf + e % D] *= alpha_s[r0 + e / D];
    __syncwarp();
    warp_mma<T, D, kCols, false>(Ps + r0 * ldp, ldp, Vs, ldh, Os + r0 * ldf, ldf, true);  // O += P·V
  }
  __syncwarp();
  T* out = static_cast<T*>(a.out) + bh * a.Lq * D;
  for (int e = lane; e < 16 * D; e += 32) {
    const int r = r0 + e / D, c = e % D;
    if (i0 + r < a.Lq) {
      const float l = l_s[r];
      out[(i0 + r) * D + c] = to_half<T>(l == 0.0f ? 0.0f : Os[r * ldf + c] / l);  // NaN l propagates
    }
  }
  if (lane < 16 && i0 + r0 + lane < a.Lq) {
    const int r = r0 + lane;
    static_cast<float*>(a.lse)[bh * a.Lq + i0 + r] = l_s[r] == 0.0f ? inf : m_s[r] + logf(l_s[r]);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kFwdWarps * 32) forward_kernel(attn::Args a, const T* qt, const T* kt) {
  // grid.y is capped at 65535: blocks stride over (sample, head) beyond it, the shared memory
  // consumed by every warp before the next one is loaded.
  for (int64_t bh = blockIdx.y; bh < a.B * a.H; bh += gridDim.y) {
    if (bh != blockIdx.y) __syncthreads();
    forward_tile<T, D>(a, qt, kt, bh);
  }
}

// ---------------------------------------------------------------------------------------------
// dK, dV: a block owns 16·W keys of one (sample, kv head); warp w owns keys 16w..16w+15 and
// meets every query of every query head of the group, 64 at a time. With d = 128 two warps keep
// the shared memory within an A100's.

template <int D> __host__ __device__ constexpr int dkdv_warps() { return D > 64 ? 2 : 4; }

template <int D> constexpr size_t dkdv_smem() {
  constexpr int rows = 16 * dkdv_warps<D>();
  return 2 * half_tile(rows, D) + 2 * half_tile(kCols, D) + 2 * float_tile(rows, kCols) + half_tile(rows, kCols) +
         2 * float_tile(rows, D) + 2 * round128(kCols * 4);
}

template <typename T, int D>
__device__ void dkdv_tile(const attn::GradArgs& g, const T* qt, const T* kt, const float* Dv, float* dk,
                          int64_t bhk) {
  constexpr int rows = 16 * dkdv_warps<D>();
  constexpr int ldh = D + kPadH, ldf = D + kPadF, lds = kCols + kPadF, ldp = kCols + kPadH;
  const attn::Args& a = g.fwd;
  KX_DYNAMIC_SHARED(unsigned char, smem, 128);
  Carver cv{smem};
  T* Ks = cv.take<T>(half_tile(rows, D));
  T* Vs = cv.take<T>(half_tile(rows, D));
  T* Qs = cv.take<T>(half_tile(kCols, D));
  T* dOs = cv.take<T>(half_tile(kCols, D));
  float* St = cv.take<float>(float_tile(rows, kCols));   // Sᵀ, then P in fp32
  float* dPt = cv.take<float>(float_tile(rows, kCols));  // (dO·Vᵀ)ᵀ
  T* Ht = cv.take<T>(half_tile(rows, kCols));            // Pᵀ for dV, then dSᵀ for dK
  float* dKs = cv.take<float>(float_tile(rows, D));
  float* dVs = cv.take<float>(float_tile(rows, D));
  float* lse_s = cv.take<float>(round128(kCols * 4));
  float* D_s = cv.take<float>(round128(kCols * 4));

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r0 = 16 * warp;
  const int64_t b = bhk / a.Hkv, hk = bhk % a.Hkv, G = a.H / a.Hkv;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * rows, j1 = min(a.Lk, j0 + rows);
  const float scale = static_cast<float>(a.scale), inf = INFINITY;
  const float* lse = static_cast<const float*>(a.lse);

  load_rows<T, D>(Ks, kt + bhk * a.Lk * D, j0, a.Lk, rows);
  load_rows<T, D>(Vs, static_cast<const T*>(a.v) + bhk * a.Lk * D, j0, a.Lk, rows);
  for (int e = threadIdx.x; e < rows * ldf; e += blockDim.x) dKs[e] = dVs[e] = 0.0f;
  __syncthreads();
  for (int64_t h = hk * G; h < (hk + 1) * G; ++h) {
    const int64_t bh = b * a.H + h;
    for (int64_t i0 = 0; i0 < a.Lq; i0 += kCols) {
      const int64_t i1 = min(a.Lq, i0 + kCols);
      if (attn::block_hidden(a.mask, b, i0, i1, j0, j1)) continue;
      __syncthreads();  // the previous query tiles are consumed
      load_rows<T, D>(Qs, qt + bh * a.Lq * D, i0, a.Lq, kCols);
      load_rows<T, D>(dOs, static_cast<const T*>(g.grad_out) + bh * a.Lq * D, i0, a.Lq, kCols);
      for (int c = threadIdx.x; c < kCols; c += blockDim.x) {
        const bool in = i0 + c < a.Lq;
        lse_s[c] = in ? lse[bh * a.Lq + i0 + c] : inf;  // +inf: P = 0
        D_s[c] = in ? Dv[bh * a.Lq + i0 + c] : 0.0f;
      }
      __syncthreads();
      warp_mma<T, kCols, D, true>(Ks + r0 * ldh, ldh, Qs, ldh, St + r0 * lds, lds, false);    // Sᵀ = K·Qᵀ
      warp_mma<T, kCols, D, true>(Vs + r0 * ldh, ldh, dOs, ldh, dPt + r0 * lds, lds, false);  // dPᵀ = V·dOᵀ
      __syncwarp();
      for (int r = r0; r < r0 + 16; ++r)
        for (int c = lane; c < kCols; c += 32) {
          const float p = sees(a, b, h, i0 + c, j0 + r) ? expf(St[r * lds + c] * scale - lse_s[c]) : 0.0f;
          St[r * lds + c] = p;
          Ht[r * ldp + c] = to_half<T>(p);
        }
      __syncwarp();
      warp_mma<T, D, kCols, false>(Ht + r0 * ldp, ldp, dOs, ldh, dVs + r0 * ldf, ldf, true);  // dV += Pᵀ·dO
      __syncwarp();
      for (int r = r0; r < r0 + 16; ++r)
        for (int c = lane; c < kCols; c += 32)
          Ht[r * ldp + c] = to_half<T>(St[r * lds + c] * (dPt[r * lds + c] - D_s[c]));  // dSᵀ
      __syncwarp();
      warp_mma<T, D, kCols, false>(Ht + r0 * ldp, ldp, Qs, ldh, dKs + r0 * ldf, ldf, true);  // dK += dSᵀ·Q
    }
  }
  __syncwarp();
  T* gv = static_cast<T*>(g.grad_v) + bhk * a.Lk * D;
  for (int e = lane; e < 16 * D; e += 32) {
    const int r = r0 + e / D, c = e % D;
    if (j0 + r < a.Lk) {
      gv[(j0 + r) * D + c] = to_half<T>(dVs[r * ldf + c]);
      dk[(bhk * a.Lk + j0 + r) * D + c] = dKs[r * ldf + c] * scale;
    }
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(dkdv_warps<D>() * 32)
    dkdv_kernel(attn::GradArgs g, const T* qt, const T* kt, const float* Dv, float* dk) {
  for (int64_t bhk = blockIdx.y; bhk < g.fwd.B * g.fwd.Hkv; bhk += gridDim.y) {
    if (bhk != blockIdx.y) __syncthreads();
    dkdv_tile<T, D>(g, qt, kt, Dv, dk, bhk);
  }
}

// ---------------------------------------------------------------------------------------------
// dQ: a block owns 64 query rows of one (sample, head), warp w rows 16w..16w+15, over every key.

constexpr int kDqWarps = 4, kDqRows = 16 * kDqWarps;

template <int D> constexpr size_t dq_smem() {
  return 2 * half_tile(kDqRows, D) + 2 * half_tile(kCols, D) + 2 * float_tile(kDqRows, kCols) +
         half_tile(kDqRows, kCols) + float_tile(kDqRows, D) + 2 * round128(kDqRows * 4);
}

template <typename T, int D>
__device__ void dq_tile(const attn::GradArgs& g, const T* qt, const T* kt, const float* Dv, float* dq, int64_t bh) {
  constexpr int ldh = D + kPadH, ldf = D + kPadF, lds = kCols + kPadF, ldp = kCols + kPadH;
  const attn::Args& a = g.fwd;
  KX_DYNAMIC_SHARED(unsigned char, smem, 128);
  Carver cv{smem};
  T* Qs = cv.take<T>(half_tile(kDqRows, D));
  T* dOs = cv.take<T>(half_tile(kDqRows, D));
  T* Ks = cv.take<T>(half_tile(kCols, D));
  T* Vs = cv.take<T>(half_tile(kCols, D));
  float* Ss = cv.take<float>(float_tile(kDqRows, kCols));
  float* dPs = cv.take<float>(float_tile(kDqRows, kCols));
  T* dSs = cv.take<T>(half_tile(kDqRows, kCols));
  float* dQs = cv.take<float>(float_tile(kDqRows, D));
  float* lse_s = cv.take<float>(round128(kDqRows * 4));
  float* D_s = cv.take<float>(round128(kDqRows * 4));

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r0 = 16 * warp;
  const int64_t b = bh / a.H, h = bh % a.H, bhk = b * a.Hkv + h / (a.H / a.Hkv);
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kDqRows, i1 = min(a.Lq, i0 + kDqRows);
  const float scale = static_cast<float>(a.scale), inf = INFINITY;
  const float* lse = static_cast<const float*>(a.lse);
  const T* K = kt + bhk * a.Lk * D;
  const T* V = static_cast<const T*>(a.v) + bhk * a.Lk * D;

  load_rows<T, D>(Qs, qt + bh * a.Lq * D, i0, a.Lq, kDqRows);
  load_rows<T, D>(dOs, static_cast<const T*>(g.grad_out) + bh * a.Lq * D, i0, a.Lq, kDqRows);
  for (int e = threadIdx.x; e < kDqRows * ldf; e += blockDim.x) dQs[e] = 0.0f;
  for (int r = threadIdx.x; r < kDqRows; r += blockDim.x) {
    const bool in = i0 + r < a.Lq;
    lse_s[r] = in ? lse[bh * a.Lq + i0 + r] : inf;
    D_s[r] = in ? Dv[bh * a.Lq + i0 + r] : 0.0f;
  }
  __syncthreads();
  for (int64_t j0 = 0; j0 < a.Lk; j0 += kCols) {
    const int64_t j1 = min(a.Lk, j0 + kCols);
    if (attn::block_hidden(a.mask, b, i0, i1, j0, j1)) continue;
    __syncthreads();
    load_rows<T, D>(Ks, K, j0, a.Lk, kCols);
    load_rows<T, D>(Vs, V, j0, a.Lk, kCols);
    __syncthreads();
    warp_mma<T, kCols, D, true>(Qs + r0 * ldh, ldh, Ks, ldh, Ss + r0 * lds, lds, false);    // S = Q·Kᵀ
    warp_mma<T, kCols, D, true>(dOs + r0 * ldh, ldh, Vs, ldh, dPs + r0 * lds, lds, false);  // dP = dO·Vᵀ
    __syncwarp();
    for (int r = r0; r < r0 + 16; ++r)
      for (int c = lane; c < kCols; c += 32) {
        const float p = sees(a, b, h, i0 + r, j0 + c) ? expf(Ss[r * lds + c] * scale - lse_s[r]) : 0.0f;
        dSs[r * ldp + c] = to_half<T>(p * (dPs[r * lds + c] - D_s[r]));
      }
    __syncwarp();
    warp_mma<T, D, kCols, false>(dSs + r0 * ldp, ldp, Ks, ldh, dQs + r0 * ldf, ldf, true);  // dQ += dS·K
  }
  __syncwarp();
  for (int e = lane; e < 16 * D; e += 32) {
    const int r = r0 + e / D, c = e % D;
    if (i0 + r < a.Lq) dq[(bh * a.Lq + i0 + r) * D + c] = dQs[r * ldf + c] * scale;
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kDqWarps * 32)
    dq_kernel(attn::GradArgs g, const T* qt, const T* kt, const float* Dv, float* dq) {
  for (int64_t bh = blockIdx.y; bh < g.fwd.B * g.fwd.H; bh += gridDim.y) {
    if (bh != blockIdx.y) __syncthreads();
    dq_tile<T, D>(g, qt, kt, Dv, dq, bh);
  }
}

// ---------------------------------------------------------------------------------------------

template <int D> constexpr size_t most_smem() {
  return forward_smem<D>() > dkdv_smem<D>() ? (forward_smem<D>() > dq_smem<D>() ? forward_smem<D>() : dq_smem<D>())
                                            : (dkdv_smem<D>() > dq_smem<D>() ? dkdv_smem<D>() : dq_smem<D>());
}

// f(std::integral_constant<int, d>) for the head dims the kernels are built for.
template <typename F> int with_head_dim(int64_t d, F&& f) {
  switch (d) {
    case 32: return f(std::integral_constant<int, 32>());
    case 64: return f(std::integral_constant<int, 64>());
    case 96: return f(std::integral_constant<int, 96>());
    case 128: return f(std::integral_constant<int, 128>());
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

bool supported(const attn::Args& a) {
  if (a.dtype != DType::F16 && a.dtype != DType::BF16) return false;
  if (a.d != 32 && a.d != 64 && a.d != 96 && a.d != 128) return false;
  if (!aligned16(a.workspace)) return false;  // the rotated q and k copies are read by 16 bytes
  int dev = 0, major = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return false;
  if (major < 8) return false;
  const size_t need = with_head_dim(a.d, [](auto D) { return static_cast<int>(most_smem<decltype(D)::value>()); });
  return static_cast<size_t>(optin) >= need;
}

int forward(const attn::Args& a, const void* qt, const void* kt, cudaStream_t st) {
  if (a.B * a.H * a.Lq == 0) return 0;
  // Above 48 KB of dynamic shared memory a kernel must opt in; cudaFuncSetAttribute is cheap and
  // idempotent, so it is set before every launch (also while a CUDA graph is being captured).
  return with_head_dim(a.d, [&](auto Dc) {
    constexpr int D = decltype(Dc)::value;
    constexpr size_t smem = forward_smem<D>();
    const dim3 grid(static_cast<unsigned>((a.Lq + kFwdRows - 1) / kFwdRows), capped_grid_y(a.B * a.H));
    KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
      if constexpr (std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value) {
        cudaFuncSetAttribute(forward_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
        KX_LAUNCH(grid, kFwdWarps * 32, smem, st, forward_kernel<T, D>)(a, static_cast<const T*>(qt), static_cast<const T*>(kt));
      }
    });
    return last_error();
  });
}

int backward(const attn::GradArgs& g, const void* qt, const void* kt, const float* Dv, float* dq, float* dk,
             cudaStream_t st) {
  const attn::Args& a = g.fwd;
  return with_head_dim(a.d, [&](auto Dc) {
    constexpr int D = decltype(Dc)::value;
    constexpr int kv_rows = 16 * dkdv_warps<D>();
    KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
      if constexpr (std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value) {
        const T* q16 = static_cast<const T*>(qt);
        const T* k16 = static_cast<const T*>(kt);
        if (a.B * a.Hkv * a.Lk > 0) {
          constexpr size_t smem = dkdv_smem<D>();
          const dim3 grid(static_cast<unsigned>((a.Lk + kv_rows - 1) / kv_rows), capped_grid_y(a.B * a.Hkv));
          cudaFuncSetAttribute(dkdv_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
          KX_LAUNCH(grid, dkdv_warps<D>() * 32, smem, st, dkdv_kernel<T, D>)(g, q16, k16, Dv, dk);
        }
        if (a.B * a.H * a.Lq > 0) {
          constexpr size_t smem = dq_smem<D>();
          const dim3 grid(static_cast<unsigned>((a.Lq + kDqRows - 1) / kDqRows), capped_grid_y(a.B * a.H));
          cudaFuncSetAttribute(dq_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
          KX_LAUNCH(grid, kDqWarps * 32, smem, st, dq_kernel<T, D>)(g, q16, k16, Dv, dq);
        }
      }
    });
    return last_error();
  });
}

}  // namespace tc
}  // namespace cuda
}  // namespace kx
