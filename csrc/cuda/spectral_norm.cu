// Spectral normalisation on the GPU.
//
// Power iteration, three launches per iteration whatever the number of weights: every kernel
// walks a flattened task list over all weights (a device-side table of sn::Entry, binary-searched
// by task index; a single weight is passed by value instead):
//   1. rowdot:  one warp per row, t_i = W_i·v (coalesced along the row, shuffle reduction);
//   2. colsum:  one block per (weight, slice of rows, tile of 256 columns): thread j adds
//               (t_i·2^-e)·W_ij over the slice's rows (coalesced over columns), one partial per
//               slice, 2^e the binade of the slice's largest |t_i|;
//   3. finish:  one block per weight: |t|, u, the slices brought to the scale of the largest |t_i|
//               (their exponents recomputed from t) and added in order, w = W^T u, |w|, v, sigma.
// Norms and W^T t are scaled by powers of two so that nothing overflows or underflows where sigma
// fits the type (csrc/kexue/spectral_norm.h). Every sum and max runs in a fixed order: no atomics,
// bitwise reproducible.
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "kexue/dispatch.h"
#include "kexue/spectral_norm.h"

namespace kx {
namespace cuda {
namespace {

using sn::Entry;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxSlices = 32;
constexpr int64_t kMinRowsPerSlice = 32;

__device__ __forceinline__ float dsqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dsqrt(double x) { return sqrt(x); }

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Max over the block (launched with kThreads threads), in every thread. max drops a NaN, which
// reaches the results through the sums instead.
template <typename A> __device__ __forceinline__ A block_max(A v) {
  KX_STATIC_SHARED(A, warp_max, [kWarps]);
  v = warp_allmax(v);
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = v;
  __syncthreads();
  A m = warp_max[0];
  for (int w = 1; w < kWarps; ++w) m = max(m, warp_max[w]);
  __syncthreads();  // warp_max may be reused by the caller's next block_max
  return m;
}

// The weight owning task `task`, where first(e) is the first task of entry e (ascending).
template <typename First>
__device__ __forceinline__ int64_t find_entry(const Entry* table, int64_t count, int64_t task,
                                              First first) {
  int64_t lo = 0, hi = count - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) >> 1;
    if (first(table[mid]) <= task)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    rowdot_kernel(const Entry* table, Entry single, int64_t count, int64_t total_rows,
                  acc_t<T>* t) {
  using A = acc_t<T>;
  const int64_t task = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (task >= total_rows) return;  // whole warps leave together
  const Entry e = table ? table[find_entry(table, count, task, [](const Entry& x) { return x.row_task0; })]
                        : single;
  const int64_t i = task - e.row_task0;
  const T* w = static_cast<const T*>(e.W) + i * e.cols;
  const T* v = static_cast<const T*>(e.v);
  A s = A(0);
#pragma unroll 4
  for (int64_t j = lane; j < e.cols; j += 32) s += load<A>(w + j) * load<A>(v + j);
  s = warp_sum(s);
  if (lane == 0) t[e.t_off + i] = s;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    colsum_kernel(const Entry* table, Entry single, int64_t count, const acc_t<T>* t,
                  acc_t<T>* part) {
  using A = acc_t<T>;
  const int64_t task = blockIdx.x;
  const Entry e = table ? table[find_entry(table, count, task, [](const Entry& x) { return x.col_task0; })]
                        : single;
  const int64_t local = task - e.col_task0;
  const int64_t slice = local / e.col_tiles, tile = local % e.col_tiles;
  const int64_t r0 = slice * e.rows_per_slice, r1 = min(e.rows, r0 + e.rows_per_slice);
  const A* tw = t + e.t_off;
  // The slice's scale: finish_kernel recomputes the same exponent from t to undo it.
  A m = A(0);
  for (int64_t i = r0 + threadIdx.x; i < r1; i += kThreads) m = max(m, kx::abs(tw[i]));
  const A down = sn::ldexp_(A(1), -sn::scale_exponent(block_max(m)));
  const int64_t j = tile * kThreads + threadIdx.x;
  if (j >= e.cols) return;
  const T* w = static_cast<const T*>(e.W) + j;
  A s = A(0);
#pragma unroll 4
  for (int64_t i = r0; i < r1; ++i) s += (tw[i] * down) * load<A>(w + i * e.cols);
  part[e.part_off + slice * e.cols + j] = s;
}

// sn::scaled_norm over a block: Σ (x_i·2^-E)^2 for x[0..n) (valid in thread 0), with
// E = scale_exponent of the largest |x_i| (each thread passes the max of its own entries as m);
// the norm is ldexp_(dsqrt(sum), E).
template <typename A> __device__ A block_scaled_squares(const A* x, int64_t n, A m, int* E) {
  *E = sn::scale_exponent(block_max(m));
  const A down = sn::ldexp_(A(1), -*E);
  A ss = A(0);
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const A y = x[i] * down;
    ss += y * y;
  }
  return block_sum(ss);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    finish_kernel(const Entry* table, Entry single, const acc_t<T>* t, acc_t<T>* part,
                  acc_t<T> eps, acc_t<T>* sigma, bool last) {
  using A = acc_t<T>;
  KX_STATIC_SHARED(A, d1_sh, );
  KX_STATIC_SHARED(A, wn_sh, );
  KX_STATIC_SHARED(A, slice_scale, [kMaxSlices]);  // the planner makes at most kMaxSlices slices
  const Entry e = table ? table[blockIdx.x] : single;
  const A* tw = t + e.t_off;
  A* y = part + e.part_off;
  T* u = static_cast<T*>(e.u);
  T* v = static_cast<T*>(e.v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // |t| = 2^E·sqrt(Σ (t_i·2^-E)^2), 2^E the binade of the largest |t_i|.
  A tmax = A(0);
  for (int64_t i = threadIdx.x; i < e.rows; i += kThreads) tmax = max(tmax, kx::abs(tw[i]));
  int E;
  const A ss = block_scaled_squares(tw, e.rows, tmax, &E);
  if (threadIdx.x == 0) d1_sh = sn::divisor(sn::ldexp_(dsqrt(ss), E), eps);
  // Slice k's partial is 2^-e_k·Σ t_i W_i (colsum_kernel): 2^(e_k - E) brings it to the scale 2^-E.
  for (int64_t k = warp; k < e.slices; k += kWarps) {
    const int64_t r0 = k * e.rows_per_slice, r1 = min(e.rows, r0 + e.rows_per_slice);
    A m = A(0);
    for (int64_t i = r0 + lane; i < r1; i += 32) m = max(m, kx::abs(tw[i]));
    m = warp_allmax(m);
    if (lane == 0) slice_scale[k] = sn::ldexp_(A(1), sn::scale_exponent(m) - E);
  }
  __syncthreads();
  const A d1 = d1_sh, d1_scaled = sn::ldexp_(d1, -E);
  for (int64_t i = threadIdx.x; i < e.rows; i += kThreads) store(u + i, tw[i] / d1);
  // w = W^T u = (2^-E·W^T t) / (2^-E·d1); each thread keeps its columns' w in slice 0's row.
  A wmax = A(0);
  for (int64_t j = threadIdx.x; j < e.cols; j += kThreads) {
    A s = A(0);
    for (int64_t k = 0; k < e.slices; ++k) s += y[k * e.cols + j] * slice_scale[k];
    s = s / d1_scaled;
    y[j] = s;
    wmax = max(wmax, kx::abs(s));
  }
  int Ew;
  const A sw = block_scaled_squares(y, e.cols, wmax, &Ew);
  if (threadIdx.x == 0) wn_sh = sn::ldexp_(dsqrt(sw), Ew);
  __syncthreads();
  const A wn = wn_sh, d2 = sn::divisor(wn, eps);
  for (int64_t j = threadIdx.x; j < e.cols; j += kThreads) store(v + j, y[j] / d2);
  if (last && threadIdx.x == 0) sigma[blockIdx.x] = sn::sigma_from_norm(wn, eps);
}

unsigned blocks_for(int64_t n, int64_t per_block) {
  return static_cast<unsigned>((n + per_block - 1) / per_block);
}

// --- spectral_normalize_weight ------------------------------------------------------------

// r_i = u_i·(W_i·v); with G, also e_i = G_i·W_i (stored at r + rows).
template <typename T, bool WithG>
__global__ void __launch_bounds__(kThreads)
    weighted_rowdot_kernel(const T* W, const T* G, const T* u, const T* v, int64_t rows,
                           int64_t cols, acc_t<T>* r) {
  using A = acc_t<T>;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (i >= rows) return;
  const T* w = W + i * cols;
  const T* g = WithG ? G + i * cols : nullptr;
  A s = A(0), eg = A(0);
#pragma unroll 4
  for (int64_t j = lane; j < cols; j += 32) {
    const A wj = load<A>(w + j);
    s += wj * load<A>(v + j);
    if (WithG) eg += load<A>(g + j) * wj;
  }
  s = warp_sum(s);
  if (WithG) eg = warp_sum(eg);
  if (lane == 0) {
    r[i] = load<A>(u + i) * s;
    if (WithG) r[rows + i] = eg;
  }
}

// One block. Forward: sigma, and the divisor at scalars[0]. Backward: the coefficients a, b of
// grad_W = a·g + b·u v^T at scalars[0], scalars[1].
template <typename A, bool Backward>
__global__ void __launch_bounds__(kThreads)
    normalize_finish_kernel(const A* r, int64_t rows, A coeff, bool exact, const A* grad_sigma,
                            A* sigma_out, A* scalars) {
  A s = A(0), gw = A(0);
  for (int64_t i = threadIdx.x; i < rows; i += kThreads) {
    s += r[i];
    if (Backward) gw += r[rows + i];
  }
  s = block_sum(s);
  if (Backward) gw = block_sum(gw);
  if (threadIdx.x != 0) return;
  if (Backward) {
    const sn::GradCoeffs<A> c = sn::grad_coeffs(s, gw, *grad_sigma, coeff, exact);
    scalars[0] = c.a;
    scalars[1] = c.b;
  } else {
    *sigma_out = s;
    scalars[0] = sn::weight_divisor(s, coeff, exact);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    divide_kernel(const T* W, T* out, int64_t n, const acc_t<T>* scalars) {
  using A = acc_t<T>;
  const A d = scalars[0];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < n; k += stride)
    store(out + k, load<A>(W + k) / d);
}

// One block row per W row (grid-stride over rows), threads over columns.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    rank1_kernel(const T* G, const T* u, const T* v, int64_t rows, int64_t cols,
                 const acc_t<T>* scalars, T* out) {
  using A = acc_t<T>;
  const A a = scalars[0], b = scalars[1];
  for (int64_t i = blockIdx.x; i < rows; i += gridDim.x) {
    const A bu = b * load<A>(u + i);
    const T* g = G + i * cols;
    T* o = out + i * cols;
    for (int64_t j = threadIdx.x; j < cols; j += kThreads)
      store(o + j, a * load<A>(g + j) + bu * load<A>(v + j));
  }
}

constexpr unsigned kMaxGrid = 65535u * 8u;

size_t acc_size(DType d) { return d == DType::F64 ? sizeof(double) : sizeof(float); }

}  // namespace

SnPlan spectral_norm_plan(Entry* entries, int64_t count) {
  SnPlan p{};
  for (int64_t w = 0; w < count; ++w) {
    Entry& e = entries[w];
    e.rows_per_slice = std::max(kMinRowsPerSlice, (e.rows + kMaxSlices - 1) / kMaxSlices);
    e.slices = (e.rows + e.rows_per_slice - 1) / e.rows_per_slice;
    e.col_tiles = (e.cols + kThreads - 1) / kThreads;
    e.t_off = p.t_elems;
    e.part_off = p.part_elems;
    e.row_task0 = p.row_tasks;
    e.col_task0 = p.col_tasks;
    p.t_elems += e.rows;
    p.part_elems += std::max<int64_t>(1, e.slices) * e.cols;
    p.row_tasks += e.rows;
    p.col_tasks += e.slices * e.col_tiles;
  }
  return p;
}

// The weight table travels to the device inside kernel parameters, kTableChunk entries a launch
// (96 B each: well under the 4 KB parameter limit). A captured graph keeps the parameters in its
// kernel nodes, so a replay rebuilds the same table; a pinned host buffer copied with
// cudaMemcpyAsync would instead be read at replay time, after the allocator has reused it.
constexpr int kTableChunk = 32;
struct TableChunk {
  Entry e[kTableChunk];
};

__global__ void __launch_bounds__(kTableChunk) fill_table_kernel(Entry* table, TableChunk chunk, int n) {
  if (static_cast<int>(threadIdx.x) < n) table[threadIdx.x] = chunk.e[threadIdx.x];
}

void upload_table(Entry* table, const Entry* host, int64_t count, cudaStream_t st) {
  for (int64_t first = 0; first < count; first += kTableChunk) {
    const int n = static_cast<int>(std::min<int64_t>(kTableChunk, count - first));
    TableChunk chunk{};
    for (int k = 0; k < n; ++k) chunk.e[k] = host[first + k];
    KX_LAUNCH(1, kTableChunk, 0, st, fill_table_kernel)(table + first, chunk, n);
  }
}

size_t spectral_norm_workspace(const SnPlan& p, DType dtype) {
  return static_cast<size_t>(p.t_elems + p.part_elems) * acc_size(dtype);
}

int spectral_norm_power_iteration(const sn::PowerArgs& a, const SnPlan& p, void* stream) {
  if (a.count == 0) return 0;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const Entry* table = a.count == 1 ? nullptr : a.device_entries;
  if (table) upload_table(a.device_entries, a.entries, a.count, st);
  const Entry single = a.entries[0];
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
    using A = acc_t<T>;
    A* t = static_cast<A*>(a.workspace);
    A* part = t + p.t_elems;
    for (int64_t it = 0; it < a.n_iter; ++it) {
      if (p.row_tasks > 0)
        KX_LAUNCH(blocks_for(p.row_tasks, kWarps), kThreads, 0, st, rowdot_kernel<T>)(
            table, single, a.count, p.row_tasks, t);
      if (p.col_tasks > 0)
        KX_LAUNCH(static_cast<unsigned>(p.col_tasks), kThreads, 0, st, colsum_kernel<T>)(
            table, single, a.count, t, part);
      KX_LAUNCH(static_cast<unsigned>(a.count), kThreads, 0, st, finish_kernel<T>)(
          table, single, t, part, static_cast<A>(a.eps), static_cast<A*>(a.sigma),
          it + 1 == a.n_iter);
    }
  });
  return last_error();
}

size_t spectral_normalize_workspace(const sn::NormalizeArgs& a) {
  return static_cast<size_t>(a.rows + 1) * acc_size(a.dtype);
}

int spectral_normalize_weight(const sn::NormalizeArgs& a, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
    using A = acc_t<T>;
    A* r = static_cast<A*>(a.workspace);
    A* scalars = r + a.rows;
    if (a.rows > 0)
      KX_LAUNCH(blocks_for(a.rows, kWarps), kThreads, 0, st, weighted_rowdot_kernel<T, false>)(
          static_cast<const T*>(a.W), nullptr, static_cast<const T*>(a.u),
          static_cast<const T*>(a.v), a.rows, a.cols, r);
    KX_LAUNCH(1, kThreads, 0, st, normalize_finish_kernel<A, false>)(
        r, a.rows, static_cast<A>(a.coeff), a.exact, nullptr, static_cast<A*>(a.sigma), scalars);
    const int64_t n = a.rows * a.cols;
    if (n > 0)
      KX_LAUNCH(std::min(blocks_for(n, kThreads), kMaxGrid), kThreads, 0, st, divide_kernel<T>)(
          static_cast<const T*>(a.W), static_cast<T*>(a.out), n, scalars);
  });
  return last_error();
}

size_t spectral_normalize_backward_workspace(const sn::NormalizeGradArgs& a) {
  return static_cast<size_t>(2 * a.rows + 2) * acc_size(a.dtype);
}

int spectral_normalize_weight_backward(const sn::NormalizeGradArgs& a, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
    using A = acc_t<T>;
    A* r = static_cast<A*>(a.workspace);
    A* scalars = r + 2 * a.rows;
    const T* u = static_cast<const T*>(a.u);
    const T* v = static_cast<const T*>(a.v);
    if (a.rows > 0)
      KX_LAUNCH(blocks_for(a.rows, kWarps), kThreads, 0, st, weighted_rowdot_kernel<T, true>)(
          static_cast<const T*>(a.W), static_cast<const T*>(a.grad_out), u, v, a.rows, a.cols, r);
    KX_LAUNCH(1, kThreads, 0, st, normalize_finish_kernel<A, true>)(
        r, a.rows, static_cast<A>(a.coeff), a.exact, static_cast<const A*>(a.grad_sigma),
        nullptr, scalars);
    if (a.rows > 0 && a.cols > 0)
      KX_LAUNCH(static_cast<unsigned>(std::min<int64_t>(a.rows, kMaxGrid)), kThreads, 0, st, rank1_kernel<T>)(
          static_cast<const T*>(a.grad_out), u, v, a.rows, a.cols, scalars,
          static_cast<T*>(a.grad_W));
  });
  return last_error();
}

}  // namespace cuda
}  // namespace kx
