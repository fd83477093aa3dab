// RoPE attention on tensor cores in flash-attention-2's structure: mma.sync.m16n8k16 on fp16/bf16
// fragments with fp32 accumulators in registers, operands read from shared memory by ldmatrix,
// the streamed K/V (Q/dO in the dK/dV pass) tiles double-buffered with cp.async, and the online
// softmax on the accumulator fragments (a row lives in one quad of lanes: max and sum by two
// xor-shuffles). A block owns 64 rows (4 warps × 16): queries in the forward and in dQ, keys in
// dK/dV. Every instruction goes through cuda/ptx.cuh, so the emulator runs these kernels as is.
//
// RoPE is applied in fp32 as tiles land in shared memory, from a cos/sin table of the call's
// positions (computed once per call, Bp·Lk·d floats), and the inverse rotation of dQ and dK is
// applied to the accumulator fragments in the epilogue: no rotated copy of q or k exists.
//
// Shared-memory rows are padded by 16 bytes: a row is then an odd number of 16-byte chunks for
// every head dim built (32, 64, 96, 128), so the 8 rows of an ldmatrix phase fall on 8 distinct
// chunk positions modulo 128 bytes and never share a bank. (An XOR swizzle would save the
// padding but needs a power-of-two number of chunks per row, which d = 96 does not have.)
//
// Masks per tile: a tile that the structured masks hide from the whole block is skipped (no
// loads); a warp skips the products of a tile hidden from its 16 rows; a tile visible everywhere
// skips the per-element test; only boundary tiles evaluate it. Rows that see nothing get 0.
//
// Backward, deterministic and without atomics: one kernel per key block accumulates dK and dV in
// registers over every query (and every query head of its GQA group); one kernel per query block
// accumulates dQ over every key, recomputing the scores.
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "cuda/attention_tc.h"
#include "cuda/common.cuh"
#include "cuda/ptx.cuh"
#include "kexue/dispatch.h"

namespace kx {
namespace cuda {
namespace tc {
namespace {

constexpr int kWarps = 4;
constexpr int kRows = 16 * kWarps;  // rows a block owns
constexpr int kPad = 8;             // elements of padding per shared-memory row
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Rows of the streamed tile: 64, and 32 in the backward with d > 64, where the dK and dV (or dQ)
// accumulators already take 2·d/2 registers per thread.
constexpr int kFwdCols = 64;
template <int D> __host__ __device__ constexpr int bwd_cols() { return D > 64 ? 32 : 64; }

template <int D> __host__ __device__ constexpr size_t tile_bytes(int rows) { return size_t(rows) * (D + kPad) * 2; }

template <typename T> __device__ __forceinline__ T to_half(float v);
template <> __device__ __forceinline__ __half to_half<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 to_half<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Two floats rounded to T, packed as an mma operand register (the first in the low half).
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const T h[2] = {to_half<T>(lo), to_half<T>(hi)};
  uint32_t u;
  memcpy(&u, h, sizeof u);
  return u;
}

// Two adjacent outputs: one 32-bit store when aligned (always, for tensors the glue hands over).
template <typename T> __device__ __forceinline__ void store2(T* p, float x0, float x1) {
  if ((reinterpret_cast<uintptr_t>(p) & 3u) == 0) {
    *reinterpret_cast<uint32_t*>(p) = pack2<T>(x0, x1);
  } else {
    p[0] = to_half<T>(x0);
    p[1] = to_half<T>(x1);
  }
}

// Rows [row0, row0 + rows) of a row-major [n, D] matrix into a padded shared tile, 16 bytes per
// cp.async; rows past n are zero-filled (from a valid address, as the hardware wants).
template <typename T, int D>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t row0, int64_t n, int rows) {
  constexpr int kChunks = D * 2 / 16;
  for (int e = threadIdx.x; e < rows * kChunks; e += blockDim.x) {
    const int r = e / kChunks, c = e % kChunks;
    const bool in = row0 + r < n;
    ptx::cp_async<16>(dst + r * (D + kPad) + c * 8, src + (in ? (row0 + r) * D + c * 8 : 0), in ? 16 : 0);
  }
}

// Key tile t (N keys) of K and V into buffer buf of the double-buffered Ks/Vs ([2][N][D + kPad]).
template <typename T, int D, int N>
__device__ __forceinline__ void load_kv(T* Ks, T* Vs, const T* K, const T* V, int64_t t, int64_t Lk, int buf) {
  load_tile<T, D>(Ks + buf * N * (D + kPad), K, t * N, Lk, N);
  load_tile<T, D>(Vs + buf * N * (D + kPad), V, t * N, Lk, N);
}

// The RoPE of one call: cos and sin of every (position, pair), and how pairs are laid out.
struct Rot {
  const float2* cs = nullptr;  // [Lk, d/2] rows of this sample; null: no rotation
  float scale = 1.0f;
  bool interleaved = false;
};

__device__ __forceinline__ Rot rot_of(const attn::Args& a, const float2* table, int64_t b) {
  Rot r;
  if (table) r.cs = table + (a.rope.positions_batch_stride ? b : 0) * a.Lk * (a.d / 2);
  r.scale = static_cast<float>(a.rope.scale);
  r.interleaved = a.rope.interleaved;
  return r;
}

// Rotates the first `valid` rows of a landed tile in place; row r sits at position index pos0 + r.
template <typename T, int D>
__device__ __forceinline__ void rotate_tile(T* tile, int rows, int64_t valid, const Rot& r, int64_t pos0) {
  constexpr int P = D / 2;
  const int n = static_cast<int>(valid < rows ? valid : rows) * P;
  for (int e = threadIdx.x; e < n; e += blockDim.x) {
    const int row = e / P, p = e % P;
    const int lo = r.interleaved ? 2 * p : p, hi = r.interleaved ? 2 * p + 1 : p + P;
    T* x = tile + row * (D + kPad);
    const float2 cs = r.cs[(pos0 + row) * P + p];
    float x1 = load<float>(x + lo), x2 = load<float>(x + hi);
    attn::rotate_cs(x1, x2, cs.x, cs.y, r.scale, false);
    x[lo] = to_half<T>(x1);
    x[hi] = to_half<T>(x2);
  }
}

// The inverse rotation of an accumulator [16 × D] of C fragments (acc[n][i]: row g + 8·(i/2),
// column 8n + 2·tig + i%2). pos[h] is the position index of row g + 8h, negative when the row is
// outside the matrix (left as is: it is not written).
template <int D> __device__ __forceinline__ void unrotate(float (&acc)[D / 8][4], const Rot& r, const int64_t (&pos)[2]) {
  constexpr int P = D / 2;
  const int tig = threadIdx.x & 3;
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    if (pos[hr] < 0) continue;
    const float2* cs = r.cs + pos[hr] * P;
    if (r.interleaved) {  // the pair is the two columns of one register pair
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const float2 c = cs[4 * n + tig];
        attn::rotate_cs(acc[n][2 * hr], acc[n][2 * hr + 1], c.x, c.y, r.scale, true);
      }
    } else {  // column p pairs with p + d/2: the same slot d/16 fragments further
#pragma unroll
      for (int n = 0; n < D / 16; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float2 c = cs[8 * n + 2 * tig + e];
          attn::rotate_cs(acc[n][2 * hr + e], acc[n + D / 16][2 * hr + e], c.x, c.y, r.scale, true);
        }
    }
  }
}

// A gradient's epilogue: the accumulator times scale, rotated back when rot is given (row r at
// position index row[r] + pos_offset), stored as T to dst + row·D; row[r] < 0: outside the matrix.
template <typename T, int D>
__device__ __forceinline__ void store_grad(T* dst, float (&acc)[D / 8][4], const int64_t (&row)[2], float scale,
                                           const Rot* rot, int64_t pos_offset) {
  const int tig = threadIdx.x & 3;
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] *= scale;
  if (rot && rot->cs) {
    const int64_t pos[2] = {row[0] < 0 ? -1 : row[0] + pos_offset, row[1] < 0 ? -1 : row[1] + pos_offset};
    unrotate<D>(acc, *rot, pos);
  }
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    if (row[hr] < 0) continue;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) store2(dst + row[hr] * D + 8 * n + 2 * tig, acc[n][2 * hr], acc[n][2 * hr + 1]);
  }
}

// A fragments of rows [0, 16) × columns [16k, 16k + 16) of a padded tile.
template <int D, typename T> __device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int k) {
  const int lane = threadIdx.x & 31;
  ptx::ldmatrix<4>(a, tile + (lane & 15) * (D + kPad) + 16 * k + 8 * (lane >> 4));
}

// B fragments of two n8 tiles for X·Yᵀ, Y stored row-major with rows n: rows [n0, n0 + 16),
// columns (k) [16k, 16k + 16). b[0..1] is the n tile n0, b[2..3] the tile n0 + 8.
template <int D, typename T> __device__ __forceinline__ void load_bt(uint32_t (&b)[4], const T* tile, int n0, int k) {
  const int lane = threadIdx.x & 31;
  ptx::ldmatrix<4>(b, tile + (n0 + (lane & 7) + 8 * (lane >> 4)) * (D + kPad) + 16 * k + 8 * ((lane >> 3) & 1));
}

// B fragments of two n8 tiles for X·Y, Y stored row-major with rows k: rows (k) [16k, 16k + 16),
// columns (n) [n0, n0 + 16), read transposed.
template <int D, typename T> __device__ __forceinline__ void load_b(uint32_t (&b)[4], const T* tile, int k, int n0) {
  const int lane = threadIdx.x & 31;
  ptx::ldmatrix_trans<4>(b, tile + (16 * k + (lane & 7) + 8 * ((lane >> 3) & 1)) * (D + kPad) + n0 + 8 * (lane >> 4));
}

template <typename T> __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const uint32_t b[2] = {b0, b1};
  ptx::mma_m16n8k16<T>(c, a, b, c);
}

// acc[16 × 8N] = X[16 × D]·Y[8N × D]ᵀ, X a 16-row tile (A), Y an 8N-row tile; acc is zeroed first.
template <typename T, int D, int N>
__device__ __forceinline__ void mma_xyt(float (&acc)[N][4], const T* x, const T* y) {
#pragma unroll
  for (int n = 0; n < N; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[n][i] = 0.0f;
#pragma unroll
  for (int k = 0; k < D / 16; ++k) {
    uint32_t a[4];
    load_a<D>(a, x, k);
#pragma unroll
    for (int n = 0; n < N; n += 2) {
      uint32_t b[4];
      load_bt<D>(b, y, 8 * n, k);
      mma<T>(acc[n], a, b[0], b[1]);
      mma<T>(acc[n + 1], a, b[2], b[3]);
    }
  }
}

// acc[16 × D] += P[16 × 8N]·Y[8N × D], P given as C fragments (rounded to T here: the register
// layout of a C fragment pair is the A fragment's), Y a row-major tile.
template <typename T, int D, int N>
__device__ __forceinline__ void mma_py(float (&acc)[D / 8][4], const float (&p)[N][4], const T* y) {
#pragma unroll
  for (int k = 0; k < N / 2; ++k) {
    const uint32_t a[4] = {pack2<T>(p[2 * k][0], p[2 * k][1]), pack2<T>(p[2 * k][2], p[2 * k][3]),
                           pack2<T>(p[2 * k + 1][0], p[2 * k + 1][1]), pack2<T>(p[2 * k + 1][2], p[2 * k + 1][3])};
#pragma unroll
    for (int n = 0; n < D / 8; n += 2) {
      uint32_t b[4];
      load_b<D>(b, y, k, 8 * n);
      mma<T>(acc[n], a, b[0], b[1]);
      mma<T>(acc[n + 1], a, b[2], b[3]);
    }
  }
}

// Sum over the quad of lanes that shares a fragment row.
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ bool quad_any(bool v) {
  int x = v;
  x |= __shfl_xor_sync(0xffffffffu, x, 1);
  return (x | __shfl_xor_sync(0xffffffffu, x, 2)) != 0;
}

// How a warp meets a tile of the mask.
enum class Cover { Hidden, Full, Partial };

// Queries [i0, i1) against keys [j0, j1), whichever of them are a warp's rows; `inside`: the
// tile lies within [0, Lq) × [0, Lk) (a tile cut by an end is never Full).
__device__ __forceinline__ Cover cover(const attn::Mask& m, int64_t b, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                                       bool inside) {
  if (i0 >= i1 || j0 >= j1 || attn::block_hidden(m, b, i0, i1, j0, j1)) return Cover::Hidden;
  return inside && attn::block_visible(m, b, i0, i1, j0, j1) ? Cover::Full : Cover::Partial;
}

// Whether key j is visible to query i (element test of a boundary tile; indices past the ends
// are hidden).
__device__ __forceinline__ bool sees(const attn::Args& a, int64_t b, int64_t h, int64_t i, int64_t j) {
  return i < a.Lq && j < a.Lk && attn::visible(a.mask, b, h, i, j, a.Lk);
}

// The next tile index at or after t that the structured masks do not hide from rows [r0, r1):
// key tiles of `cols` for query rows (forward, dQ).
__device__ __forceinline__ int64_t next_key_tile(const attn::Args& a, int64_t b, int64_t i0, int64_t i1, int64_t t,
                                                 int cols) {
  for (; t * cols < a.Lk; ++t)
    if (!attn::block_hidden(a.mask, b, i0, i1, t * cols, min(a.Lk, (t + 1) * cols))) return t;
  return -1;
}

__device__ __forceinline__ int64_t kv_head_of(const attn::Args& a, int64_t bh) {
  return (bh / a.H) * a.Hkv + (bh % a.H) / (a.H / a.Hkv);
}

// ---------------------------------------------------------------------------------------------
// Forward: a block owns 64 query rows of one (sample, head); warp w owns rows 16w..16w+15 and
// keeps their Q fragments in registers.

template <int D> constexpr size_t forward_smem() { return tile_bytes<D>(kRows) + 4 * tile_bytes<D>(kFwdCols); }

template <typename T, int D>
__device__ void forward_tile(const attn::Args& a, const float2* table, int64_t bh) {
  constexpr int N = kFwdCols, LD = D + kPad, NT = N / 8, DT = D / 8;
  KX_DYNAMIC_SHARED(unsigned char, smem, 128);
  T* Qs = reinterpret_cast<T*>(smem);
  T* Ks = Qs + kRows * LD;  // [2][N][LD]
  T* Vs = Ks + 2 * N * LD;  // [2][N][LD]

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
  const int64_t b = bh / a.H, h = bh % a.H, bhk = kv_head_of(a, bh);
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kRows, i1 = min(a.Lq, i0 + kRows);
  const int64_t wi0 = i0 + 16 * warp, wi1 = min(a.Lq, wi0 + 16);
  const T* K = static_cast<const T*>(a.k) + bhk * a.Lk * D;
  const T* V = static_cast<const T*>(a.v) + bhk * a.Lk * D;
  const Rot rot = rot_of(a, table, b);
  const float scale_log2 = static_cast<float>(a.scale) * kLog2e, inf = INFINITY;

  float o[DT][4] = {};
  float m[2] = {-inf, -inf}, l[2] = {0.0f, 0.0f};  // rows g and g + 8, m in log2 units
  uint32_t qf[D / 16][4];
  const attn::Span span[2] = {attn::visible_span(a.mask, b, wi0 + g, a.Lk), attn::visible_span(a.mask, b, wi0 + g + 8, a.Lk)};

  load_tile<T, D>(Qs, static_cast<const T*>(a.q) + bh * a.Lq * D, i0, a.Lq, kRows);
  int64_t t = next_key_tile(a, b, i0, i1, 0, N);
  if (t >= 0) load_kv<T, D, N>(Ks, Vs, K, V, t, a.Lk, 0);
  ptx::cp_async_commit();
  for (int buf = 0, first = 1; t >= 0; buf ^= 1, first = 0) {
    const int64_t next = next_key_tile(a, b, i0, i1, t + 1, N), j0 = t * N;
    // the other buffer was released by the barrier closing the previous tile
    if (next >= 0) load_kv<T, D, N>(Ks, Vs, K, V, next, a.Lk, buf ^ 1);
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();  // this tile (and Q) landed for this thread's copies
    __syncthreads();          // ... and for everyone's
    T* Kt = Ks + buf * N * LD;
    const T* Vt = Vs + buf * N * LD;
    if (rot.cs) {
      rotate_tile<T, D>(Kt, N, a.Lk - j0, rot, j0);
      if (first) rotate_tile<T, D>(Qs, kRows, a.Lq - i0, rot, i0 + a.mask.offset);
      __syncthreads();
    }
    if (first)
#pragma unroll
      for (int k = 0; k < D / 16; ++k) load_a<D>(qf[k], Qs + 16 * warp * LD, k);

    const Cover c = cover(a.mask, b, wi0, wi1, j0, min(a.Lk, j0 + N), j0 + N <= a.Lk && wi1 == wi0 + 16);
    if (c != Cover::Hidden) {
      float s[NT][4] = {};
#pragma unroll
      for (int k = 0; k < D / 16; ++k)
#pragma unroll
        for (int n = 0; n < NT; n += 2) {
          uint32_t bf[4];
          load_bt<D>(bf, Kt, 8 * n, k);
          mma<T>(s[n], qf[k], bf[0], bf[1]);
          mma<T>(s[n + 1], qf[k], bf[2], bf[3]);
        }
      float mx[2] = {m[0], m[1]};
      bool nan[2] = {false, false};
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int hr = e >> 1;
          const int64_t j = j0 + 8 * n + 2 * tig + (e & 1);
          float v = s[n][e] * scale_log2;
          if (c == Cover::Partial && !(j < a.Lk && wi0 + g + 8 * hr < a.Lq && attn::span_contains(span[hr], j) &&
                                       attn::dense_visible(a.mask, b, h, wi0 + g + 8 * hr, j)))
            v = -inf;
          s[n][e] = v;
          nan[hr] |= v != v;
          mx[hr] = fmaxf(mx[hr], v);  // fmaxf ignores NaN: the flag makes the row NaN, as softmax does
        }
      float alpha[2];
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const float quad = quad_max(mx[hr]);  // every lane shuffles, whatever its row holds
        mx[hr] = quad_any(nan[hr]) ? NAN : quad;
        alpha[hr] = mx[hr] == -inf ? 1.0f : exp2f(m[hr] - mx[hr]);  // -inf: nothing visible yet
        m[hr] = mx[hr];
        l[hr] *= alpha[hr];
      }
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int hr = e >> 1;
          const float p = mx[hr] == -inf ? 0.0f : exp2f(s[n][e] - mx[hr]);
          s[n][e] = p;
          l[hr] += p;
        }
#pragma unroll
      for (int n = 0; n < DT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[n][e] *= alpha[e >> 1];
      mma_py<T, D, NT>(o, s, Vt);
    }
    __syncthreads();  // every warp is done with this buffer before it is refilled
    t = next;
  }
  ptx::cp_async_wait<0>();  // nothing in flight when the block moves on or exits

  T* out = static_cast<T*>(a.out) + bh * a.Lq * D;
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const float lsum = quad_sum(l[hr]);
    const int64_t i = wi0 + g + 8 * hr;
    if (i >= a.Lq) continue;
    const float inv = lsum == 0.0f ? 0.0f : 1.0f / lsum;  // a NaN sum propagates
#pragma unroll
    for (int n = 0; n < DT; ++n) store2(out + i * D + 8 * n + 2 * tig, o[n][2 * hr] * inv, o[n][2 * hr + 1] * inv);
    if (tig == 0)
      static_cast<float*>(a.lse)[bh * a.Lq + i] = lsum == 0.0f ? inf : (m[hr] + log2f(lsum)) * kLn2;
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32) forward_kernel(attn::Args a, const float2* table) {
  // grid.y is capped at 65535: blocks stride over (sample, head) beyond it, the shared memory
  // consumed by every warp before the next one is loaded.
  for (int64_t bh = blockIdx.y; bh < a.B * a.H; bh += gridDim.y) {
    if (bh != blockIdx.y) __syncthreads();
    forward_tile<T, D>(a, table, bh);
  }
}

// ---------------------------------------------------------------------------------------------
// dK, dV: a block owns 64 keys of one (sample, kv head), warp w keys 16w..16w+15, and meets every
// query tile of every query head of the group; Q and dO tiles (with their lse and D) stream in.

template <int D> constexpr size_t dkdv_smem() {
  return 2 * tile_bytes<D>(kRows) + 4 * tile_bytes<D>(bwd_cols<D>()) + 4 * bwd_cols<D>() * sizeof(float);
}

template <typename T, int D>
__device__ void dkdv_tile(const attn::GradArgs& gr, const float2* table, const float* Dv, int64_t bhk) {
  constexpr int M = bwd_cols<D>(), LD = D + kPad, MT = M / 8, DT = D / 8;
  const attn::Args& a = gr.fwd;
  KX_DYNAMIC_SHARED(unsigned char, smem, 128);
  T* Ks = reinterpret_cast<T*>(smem);
  T* Vs = Ks + kRows * LD;
  T* Qs = Vs + kRows * LD;   // [2][M][LD]
  T* dOs = Qs + 2 * M * LD;  // [2][M][LD]
  float* lse_s = reinterpret_cast<float*>(dOs + 2 * M * LD);  // [2][M], log2 units
  float* D_s = lse_s + 2 * M;                                 // [2][M]

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
  const int64_t b = bhk / a.Hkv, hk = bhk % a.Hkv, G = a.H / a.Hkv, nq = (a.Lq + M - 1) / M;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kRows, j1 = min(a.Lk, j0 + kRows);
  const int64_t wj0 = j0 + 16 * warp, wj1 = min(a.Lk, wj0 + 16);
  const Rot rot = rot_of(a, table, b);
  const float scale_log2 = static_cast<float>(a.scale) * kLog2e, inf = INFINITY;
  const float* lse = static_cast<const float*>(a.lse);

  // Step s of the loop is query tile s % nq of head hk·G + s / nq; hidden steps are skipped.
  auto next_step = [&](int64_t s) -> int64_t {
    for (; s < G * nq; ++s) {
      const int64_t q0 = (s % nq) * M;
      if (!attn::block_hidden(a.mask, b, q0, min(a.Lq, q0 + M), j0, j1)) return s;
    }
    return -1;
  };
  auto load_step = [&](int64_t s, int buf) {
    const int64_t bh = b * a.H + hk * G + s / nq, q0 = (s % nq) * M;
    load_tile<T, D>(Qs + buf * M * LD, static_cast<const T*>(a.q) + bh * a.Lq * D, q0, a.Lq, M);
    load_tile<T, D>(dOs + buf * M * LD, static_cast<const T*>(gr.grad_out) + bh * a.Lq * D, q0, a.Lq, M);
    for (int c = threadIdx.x; c < M; c += blockDim.x) {  // plain stores: this buffer is free too
      const bool in = q0 + c < a.Lq;
      lse_s[buf * M + c] = in ? lse[bh * a.Lq + q0 + c] * kLog2e : inf;  // +inf: P = 0
      D_s[buf * M + c] = in ? Dv[bh * a.Lq + q0 + c] : 0.0f;
    }
  };

  float dk[DT][4] = {}, dv[DT][4] = {};
  load_tile<T, D>(Ks, static_cast<const T*>(a.k) + bhk * a.Lk * D, j0, a.Lk, kRows);
  load_tile<T, D>(Vs, static_cast<const T*>(a.v) + bhk * a.Lk * D, j0, a.Lk, kRows);
  int64_t s = next_step(0);
  if (s >= 0) load_step(s, 0);
  ptx::cp_async_commit();
  for (int buf = 0, first = 1; s >= 0; buf ^= 1, first = 0) {
    const int64_t next = next_step(s + 1);
    if (next >= 0) load_step(next, buf ^ 1);
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();
    __syncthreads();
    const int64_t h = hk * G + s / nq, q0 = (s % nq) * M;
    T* Qt = Qs + buf * M * LD;
    const T* dOt = dOs + buf * M * LD;
    const float* lse_t = lse_s + buf * M;
    const float* D_t = D_s + buf * M;
    if (rot.cs) {
      rotate_tile<T, D>(Qt, M, a.Lq - q0, rot, q0 + a.mask.offset);
      if (first) rotate_tile<T, D>(Ks, kRows, a.Lk - j0, rot, j0);
      __syncthreads();
    }
    const Cover c = cover(a.mask, b, q0, min(a.Lq, q0 + M), wj0, wj1, q0 + M <= a.Lq && wj1 == wj0 + 16);
    if (c != Cover::Hidden) {
      float p[MT][4], ds[MT][4];
      mma_xyt<T, D, MT>(p, Ks + 16 * warp * LD, Qt);     // Sᵀ = K·Qᵀ: rows keys, columns queries
      mma_xyt<T, D, MT>(ds, Vs + 16 * warp * LD, dOt);   // dPᵀ = V·dOᵀ
#pragma unroll
      for (int n = 0; n < MT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = 8 * n + 2 * tig + (e & 1);
          const int64_t i = q0 + col, j = wj0 + g + 8 * (e >> 1);
          const bool vis = c == Cover::Full || sees(a, b, h, i, j);
          const float pv = vis ? exp2f(p[n][e] * scale_log2 - lse_t[col]) : 0.0f;
          p[n][e] = pv;
          ds[n][e] = pv * (ds[n][e] - D_t[col]);
        }
      mma_py<T, D, MT>(dv, p, dOt);  // dV += Pᵀ·dO
      mma_py<T, D, MT>(dk, ds, Qt);  // dK += dSᵀ·Q
    }
    __syncthreads();
    s = next;
  }
  ptx::cp_async_wait<0>();

  const int64_t rows[2] = {wj0 + g < a.Lk ? wj0 + g : -1, wj0 + g + 8 < a.Lk ? wj0 + g + 8 : -1};
  store_grad<T, D>(static_cast<T*>(gr.grad_k) + bhk * a.Lk * D, dk, rows, static_cast<float>(a.scale), &rot, 0);
  store_grad<T, D>(static_cast<T*>(gr.grad_v) + bhk * a.Lk * D, dv, rows, 1.0f, nullptr, 0);
}

template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32)
    dkdv_kernel(attn::GradArgs g, const float2* table, const float* Dv) {
  for (int64_t bhk = blockIdx.y; bhk < g.fwd.B * g.fwd.Hkv; bhk += gridDim.y) {
    if (bhk != blockIdx.y) __syncthreads();
    dkdv_tile<T, D>(g, table, Dv, bhk);
  }
}

// ---------------------------------------------------------------------------------------------
// dQ: a block owns 64 query rows of one (sample, head), warp w rows 16w..16w+15, over every key.

template <int D> constexpr size_t dq_smem() { return 2 * tile_bytes<D>(kRows) + 4 * tile_bytes<D>(bwd_cols<D>()); }

template <typename T, int D>
__device__ void dq_tile(const attn::GradArgs& gr, const float2* table, const float* Dv, int64_t bh) {
  constexpr int N = bwd_cols<D>(), LD = D + kPad, NT = N / 8, DT = D / 8;
  const attn::Args& a = gr.fwd;
  KX_DYNAMIC_SHARED(unsigned char, smem, 128);
  T* Qs = reinterpret_cast<T*>(smem);
  T* dOs = Qs + kRows * LD;
  T* Ks = dOs + kRows * LD;  // [2][N][LD]
  T* Vs = Ks + 2 * N * LD;   // [2][N][LD]

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
  const int64_t b = bh / a.H, h = bh % a.H, bhk = kv_head_of(a, bh);
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kRows, i1 = min(a.Lq, i0 + kRows);
  const int64_t wi0 = i0 + 16 * warp, wi1 = min(a.Lq, wi0 + 16);
  const T* K = static_cast<const T*>(a.k) + bhk * a.Lk * D;
  const T* V = static_cast<const T*>(a.v) + bhk * a.Lk * D;
  const Rot rot = rot_of(a, table, b);
  const float scale_log2 = static_cast<float>(a.scale) * kLog2e, inf = INFINITY;
  float lse_r[2], D_r[2];
  for (int hr = 0; hr < 2; ++hr) {
    const int64_t i = wi0 + g + 8 * hr;
    lse_r[hr] = i < a.Lq ? static_cast<const float*>(a.lse)[bh * a.Lq + i] * kLog2e : inf;
    D_r[hr] = i < a.Lq ? Dv[bh * a.Lq + i] : 0.0f;
  }

  float dq[DT][4] = {};
  load_tile<T, D>(Qs, static_cast<const T*>(a.q) + bh * a.Lq * D, i0, a.Lq, kRows);
  load_tile<T, D>(dOs, static_cast<const T*>(gr.grad_out) + bh * a.Lq * D, i0, a.Lq, kRows);
  int64_t t = next_key_tile(a, b, i0, i1, 0, N);
  if (t >= 0) load_kv<T, D, N>(Ks, Vs, K, V, t, a.Lk, 0);
  ptx::cp_async_commit();
  for (int buf = 0, first = 1; t >= 0; buf ^= 1, first = 0) {
    const int64_t next = next_key_tile(a, b, i0, i1, t + 1, N), j0 = t * N;
    if (next >= 0) load_kv<T, D, N>(Ks, Vs, K, V, next, a.Lk, buf ^ 1);
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();
    __syncthreads();
    T* Kt = Ks + buf * N * LD;
    const T* Vt = Vs + buf * N * LD;
    if (rot.cs) {
      rotate_tile<T, D>(Kt, N, a.Lk - j0, rot, j0);
      if (first) rotate_tile<T, D>(Qs, kRows, a.Lq - i0, rot, i0 + a.mask.offset);
      __syncthreads();
    }
    const Cover c = cover(a.mask, b, wi0, wi1, j0, min(a.Lk, j0 + N), j0 + N <= a.Lk && wi1 == wi0 + 16);
    if (c != Cover::Hidden) {
      float p[NT][4], ds[NT][4];
      mma_xyt<T, D, NT>(p, Qs + 16 * warp * LD, Kt);    // S = Q·Kᵀ
      mma_xyt<T, D, NT>(ds, dOs + 16 * warp * LD, Vt);  // dP = dO·Vᵀ
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int hr = e >> 1;
          const int64_t i = wi0 + g + 8 * hr, j = j0 + 8 * n + 2 * tig + (e & 1);
          const bool vis = c == Cover::Full || sees(a, b, h, i, j);
          const float pv = vis ? exp2f(p[n][e] * scale_log2 - lse_r[hr]) : 0.0f;
          ds[n][e] = pv * (ds[n][e] - D_r[hr]);
        }
      mma_py<T, D, NT>(dq, ds, Kt);  // dQ += dS·K
    }
    __syncthreads();
    t = next;
  }
  ptx::cp_async_wait<0>();

  const int64_t rows[2] = {wi0 + g < a.Lq ? wi0 + g : -1, wi0 + g + 8 < a.Lq ? wi0 + g + 8 : -1};
  store_grad<T, D>(static_cast<T*>(gr.grad_q) + bh * a.Lq * D, dq, rows, static_cast<float>(a.scale), &rot,
                   a.mask.offset);
}

template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32) dq_kernel(attn::GradArgs g, const float2* table, const float* Dv) {
  for (int64_t bh = blockIdx.y; bh < g.fwd.B * g.fwd.H; bh += gridDim.y) {
    if (bh != blockIdx.y) __syncthreads();
    dq_tile<T, D>(g, table, Dv, bh);
  }
}

// cos and sin of position·inv_freq for every (sample row of positions, key index, pair): the
// angle and its sine and cosine in fp32, as the rotation kernels compute them.
__global__ void rope_table_kernel(attn::Rope r, float2* cs, int64_t rows, int64_t Lk, int64_t pairs) {
  const float* inv_freq = static_cast<const float*>(r.inv_freq);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < rows * pairs;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = e / pairs, p = e % pairs;
    float s, c;
    attn::sin_cos<float>(attn::position<float>(r, row / Lk, row % Lk) * inv_freq[p], &s, &c);
    cs[e] = make_float2(c, s);
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

int64_t table_rows(const attn::Args& a) {
  return a.rope.inv_freq == nullptr ? 0 : (a.rope.positions && a.rope.positions_batch_stride ? a.B : 1) * a.Lk;
}
size_t table_bytes(const attn::Args& a) { return (static_cast<size_t>(table_rows(a) * (a.d / 2)) * 8 + 15) / 16 * 16; }

// Fills the table at the start of the workspace; null without RoPE.
const float2* make_table(const attn::Args& a, cudaStream_t st) {
  const int64_t rows = table_rows(a);
  if (rows == 0) return nullptr;
  float2* cs = static_cast<float2*>(a.workspace);
  const int64_t n = rows * (a.d / 2);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535LL * 32));
  KX_LAUNCH(blocks, kThreads, 0, st, rope_table_kernel)(a.rope, cs, rows, a.Lk, a.d / 2);
  return cs;
}

template <typename K> void allow_smem(K kernel, size_t bytes) {
  // Above 48 KB of dynamic shared memory a kernel must opt in; cudaFuncSetAttribute is cheap and
  // idempotent, so it is set before every launch (also while a CUDA graph is being captured).
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

}  // namespace

bool supported(const attn::Args& a) {
  if (a.dtype != DType::F16 && a.dtype != DType::BF16) return false;
  if (a.d != 32 && a.d != 64 && a.d != 96 && a.d != 128) return false;
  if (!aligned16(a.q) || !aligned16(a.k) || !aligned16(a.v)) return false;  // tiles are copied by 16 bytes
  int dev = 0, major = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return false;
  if (major < 8) return false;
  const size_t need = with_head_dim(a.d, [](auto D) { return static_cast<int>(most_smem<decltype(D)::value>()); });
  return static_cast<size_t>(optin) >= need;
}

size_t forward_workspace(const attn::Args& a) { return table_bytes(a); }

size_t backward_workspace(const attn::Args& a) {
  return table_bytes(a) + static_cast<size_t>(a.B * a.H * a.Lq) * sizeof(float);
}

float* backward_dots(const attn::Args& a) {
  return reinterpret_cast<float*>(static_cast<unsigned char*>(a.workspace) + table_bytes(a));
}

int forward(const attn::Args& a, cudaStream_t st) {
  if (a.B * a.H * a.Lq == 0) return 0;
  const float2* table = make_table(a, st);
  return with_head_dim(a.d, [&](auto Dc) {
    constexpr int D = decltype(Dc)::value;
    constexpr size_t smem = forward_smem<D>();
    const dim3 grid(static_cast<unsigned>((a.Lq + kRows - 1) / kRows), capped_grid_y(a.B * a.H));
    KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
      if constexpr (std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value) {
        allow_smem(forward_kernel<T, D>, smem);
        KX_LAUNCH(grid, kWarps * 32, smem, st, forward_kernel<T, D>)(a, table);
      }
    });
    return last_error();
  });
}

int backward(const attn::GradArgs& g, cudaStream_t st) {
  const attn::Args& a = g.fwd;
  if (!aligned16(g.grad_out)) return static_cast<int>(cudaErrorMisalignedAddress);  // the glue aligns it
  const float2* table = make_table(a, st);
  const float* Dv = backward_dots(a);
  return with_head_dim(a.d, [&](auto Dc) {
    constexpr int D = decltype(Dc)::value;
    KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
      if constexpr (std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value) {
        if (a.B * a.Hkv * a.Lk > 0) {
          constexpr size_t smem = dkdv_smem<D>();
          const dim3 grid(static_cast<unsigned>((a.Lk + kRows - 1) / kRows), capped_grid_y(a.B * a.Hkv));
          allow_smem(dkdv_kernel<T, D>, smem);
          KX_LAUNCH(grid, kWarps * 32, smem, st, dkdv_kernel<T, D>)(g, table, Dv);
        }
        if (a.B * a.H * a.Lq > 0) {
          constexpr size_t smem = dq_smem<D>();
          const dim3 grid(static_cast<unsigned>((a.Lq + kRows - 1) / kRows), capped_grid_y(a.B * a.H));
          allow_smem(dq_kernel<T, D>, smem);
          KX_LAUNCH(grid, kWarps * 32, smem, st, dq_kernel<T, D>)(g, table, Dv);
        }
      }
    });
    return last_error();
  });
}

}  // namespace tc
}  // namespace cuda
}  // namespace kx
