// Dynamic routing on the GPU. One block per sample (blocks stride over the batch): each routing
// iteration streams the sample's û twice (s = Σ c û, then the agreements û·v), keeping the
// logits, couplings and capsule states in a per-block workspace ([N_in, N_out] and [N_out, D]
// slices), or every iteration's couplings and states in the kept state (the backward then reads
// them instead of routing again): nothing of size [N_in, N_out, D] is written except the final
// gradient. All sums run in a fixed order (no atomics): bitwise reproducible.
#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "kexue/dispatch.h"

namespace kx {
namespace cuda {
namespace {

using caps::Squash;

// Blocks stride over the batch (batch_grid): the CapsNet backward that re-routes needs ~330 KB a
// block, so 2048 blocks would take 674 MB; the budget keeps the workspace to 256 MB.

// out[jd] = Σ_i w[i, j] u[i, jd] (jd = j·D + d). For P = N_out·D ≤ kThreads the block is split
// into kThreads/P stripes over i, each thread owning one jd (reads coalesced along jd); the
// stripes' partials are added in stripe order.
template <typename T, typename A>
__device__ void weighted_sum(const T* u, const A* w, A* out, int64_t n_in, int64_t n_out,
                             int64_t dim) {
  KX_STATIC_SHARED(A, partial, [kThreads]);
  const int64_t P = n_out * dim;
  if (P <= kThreads) {
    const int64_t stripes = kThreads / P;
    const int64_t stripe = threadIdx.x / P, jd = threadIdx.x % P, j = jd / dim;
    if (stripe < stripes) {
      A acc = A(0);
      for (int64_t i = stripe; i < n_in; i += stripes) acc += w[i * n_out + j] * load<A>(u + i * P + jd);
      partial[threadIdx.x] = acc;
    }
    __syncthreads();
    if (threadIdx.x < P) {
      A acc = A(0);
      for (int64_t s = 0; s < stripes; ++s) acc += partial[s * P + threadIdx.x];
      out[threadIdx.x] = acc;
    }
  } else {
    for (int64_t jd = threadIdx.x; jd < P; jd += kThreads) {
      const int64_t j = jd / dim;
      A acc = A(0);
      for (int64_t i = 0; i < n_in; ++i) acc += w[i * n_out + j] * load<A>(u + i * P + jd);
      out[jd] = acc;
    }
  }
  __syncthreads();
}

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;  // valid in lane 0
}

// One warp per input capsule i: dots[j] = u[i, j, :]·x[j, :] (lanes over d), then lane 0 runs
// row_op(i, dots) on the row of N_out values (kept in out + i·N_out).
template <typename T, typename A, typename RowOp>
__device__ void row_dots(const T* u, const A* x, A* out, int64_t n_in, int64_t n_out, int64_t dim,
                         RowOp row_op) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = kThreads / 32;
  for (int64_t i = warp; i < n_in; i += warps) {
    A* row = out + i * n_out;
    for (int64_t j = 0; j < n_out; ++j) {
      const T* uij = u + (i * n_out + j) * dim;
      const A* xj = x + j * dim;
      A acc = A(0);
      for (int64_t d = lane; d < dim; d += 32) acc += load<A>(uij + d) * xj[d];
      acc = warp_sum(acc);
      if (lane == 0) row_op(i, j, row, acc);
    }
    if (lane == 0) row_op(i, -1, row, A(0));  // row complete
    __syncwarp();
  }
  __syncthreads();
}

template <typename A>
__device__ void squash_rows(const A* s, A* v, int64_t n_out, int64_t dim, A k) {
  for (int64_t j = threadIdx.x; j < n_out; j += kThreads)
    caps::squash_row(s + j * dim, v + j * dim, dim, k);
  __syncthreads();
}

template <typename A>
__device__ void squash_vjp_rows(const A* s, const A* g, A* gs, int64_t n_out, int64_t dim, A k) {
  for (int64_t j = threadIdx.x; j < n_out; j += kThreads)
    caps::squash_vjp_row(s + j * dim, g + j * dim, gs + j * dim, dim, k);
  __syncthreads();
}

// The routing of one sample; C / S / V hold R slices (history) when hist, else one slice each.
template <typename T, typename A>
__device__ void route(const T* u, int64_t R, Squash sq, int64_t n_in, int64_t n_out, int64_t dim,
                      A* logits, A* C, A* S, A* V, bool hist) {
  const int64_t NN = n_in * n_out, P = n_out * dim;
  const A k = caps::squash_k<A>(sq);
  for (int64_t t = threadIdx.x; t < NN; t += kThreads) logits[t] = A(0);
  const A uniform = caps::first_coupling<A>(n_out);
  for (int64_t r = 0; r < R; ++r) {
    A* cr = hist ? C + r * NN : C;
    A* sr = hist ? S + r * P : S;
    A* vr = hist ? V + r * P : V;
    if (r == 0) {
      for (int64_t t = threadIdx.x; t < NN; t += kThreads) cr[t] = uniform;
      __syncthreads();
    }
    weighted_sum(u, cr, sr, n_in, n_out, dim);
    squash_rows(sr, vr, n_out, dim, k);
    if (r + 1 < R) {
      A* cn = hist ? C + (r + 1) * NN : C;
      row_dots(u, vr, logits, n_in, n_out, dim, [&](int64_t i, int64_t j, A* row, A dot) {
        if (j >= 0)
          row[j] += dot;
        else
          caps::softmax_row(row, cn + i * n_out, n_out);
      });
    }
  }
}

// The forward's workspace per block: caps::forward_scratch (logits, and one slice of c, s, v), or
// only the logits when c, s, v of every iteration go to the kept state.
KX_HOST_DEVICE int64_t forward_block_entries(int64_t n_in, int64_t n_out, int64_t dim, bool kept) {
  return kept ? n_in * n_out : caps::forward_scratch(n_in, n_out, dim);
}

// Kept: the launch has a state to route into (a.state); a separate instantiation, so that the
// kernel without one is the same code as before states existed (register allocation included).
template <typename T, bool Kept>
__global__ void __launch_bounds__(kThreads) forward_kernel(caps::Args a) {
  using A = acc_t<T>;
  const int64_t NN = a.n_in * a.n_out, P = a.n_out * a.dim;
  const int64_t R = a.iterations;
  A* logits = static_cast<A*>(a.workspace) + blockIdx.x * forward_block_entries(a.n_in, a.n_out, a.dim, Kept);
  A *C = logits + NN, *S = C + NN, *V = S + P;  // one slice each, or every iteration's in the state
  for (int64_t b = blockIdx.x; b < a.batch; b += gridDim.x) {
    const T* u = static_cast<const T*>(a.u) + b * NN * a.dim;
    if (Kept) {
      C = static_cast<A*>(a.state) + b * caps::state_size(R, a.n_in, a.n_out, a.dim);
      S = C + R * NN;
      V = S + R * P;
    }
    route<T, A>(u, R, a.squash, a.n_in, a.n_out, a.dim, logits, C, S, V, Kept);
    const A* c_last = Kept ? C + (R - 1) * NN : C;
    const A* v_last = Kept ? V + (R - 1) * P : V;
    T* vo = static_cast<T*>(a.v) + b * P;
    T* co = static_cast<T*>(a.c) + b * NN;
    for (int64_t t = threadIdx.x; t < P; t += kThreads) store(vo + t, v_last[t]);
    for (int64_t t = threadIdx.x; t < NN; t += kThreads) store(co + t, c_last[t]);
    __syncthreads();
  }
}

// The backward's workspace per block: caps::backward_scratch (logits, c^(r), G^(r), s^(r), v^(r),
// gs^(r), gv), or with a kept state only G^(r) [R, n_in, n_out], gs^(r) [R, n_out, dim] and gv.
KX_HOST_DEVICE int64_t kept_backward_entries(int64_t R, int64_t n_in, int64_t n_out, int64_t dim) {
  return R * n_in * n_out + R * n_out * dim + n_out * dim;
}

template <typename T, bool Kept>
__global__ void __launch_bounds__(kThreads) backward_kernel(caps::GradArgs a) {
  using A = acc_t<T>;
  const int64_t R = a.iterations, n_in = a.n_in, n_out = a.n_out, dim = a.dim;
  const int64_t NN = n_in * n_out, P = n_out * dim;
  const A k = caps::squash_k<A>(a.squash);
  A* logits = static_cast<A*>(a.workspace) +
              blockIdx.x * (Kept ? kept_backward_entries(R, n_in, n_out, dim) : caps::backward_scratch(R, n_in, n_out, dim));
  A *C = logits + NN, *G = Kept ? logits : C + R * NN, *S = G + R * NN;  // C, S, V: recomputed, or the state's
  A *V = S + R * P, *GS = Kept ? G + R * NN : V + R * P, *gv = GS + R * P;
  for (int64_t b = blockIdx.x; b < a.batch; b += gridDim.x) {
    const T* u = static_cast<const T*>(a.u) + b * NN * dim;
    const T* g = static_cast<const T*>(a.grad_v) + b * P;
    T* gu = static_cast<T*>(a.grad_u) + b * NN * dim;
    if (Kept) {
      C = const_cast<A*>(static_cast<const A*>(a.state)) + b * caps::state_size(R, n_in, n_out, dim);
      S = C + R * NN;
      V = S + R * P;
    } else {
      route<T, A>(u, R, a.squash, n_in, n_out, dim, logits, C, S, V, true);
    }
    for (int64_t t = threadIdx.x; t < P; t += kThreads) gv[t] = load<A>(g + t);
    __syncthreads();
    const int64_t r_first = a.detach_routing ? R - 1 : 0;
    for (int64_t r = R - 1; r >= r_first; --r) {
      if (r < R - 1) weighted_sum(u, G + (r + 1) * NN, gv, n_in, n_out, dim);
      squash_vjp_rows(S + r * P, gv, GS + r * P, n_out, dim, k);
      if (r == 0 || a.detach_routing) continue;
      A* Gr = G + r * NN;
      const A* Cr = C + r * NN;
      const A* Gnext = r < R - 1 ? G + (r + 1) * NN : nullptr;
      row_dots(u, GS + r * P, Gr, n_in, n_out, dim, [&](int64_t i, int64_t j, A* row, A dot) {
        if (j >= 0)
          row[j] = dot;
        else
          caps::softmax_row_vjp(Cr + i * n_out, row, Gnext ? Gnext + i * n_out : nullptr, n_out);
      });
    }
    for (int64_t t = threadIdx.x; t < NN * dim; t += kThreads) {
      const int64_t ij = t / dim, jd = t % P;
      A acc = A(0);
      for (int64_t r = r_first; r < R; ++r) {
        acc += C[r * NN + ij] * GS[r * P + jd];
        if (r < R - 1) acc += G[(r + 1) * NN + ij] * V[r * P + jd];
      }
      store(gu + t, acc);
    }
    __syncthreads();
  }
}

size_t acc_size(DType d) { return d == DType::F64 ? sizeof(double) : sizeof(float); }

int64_t forward_block_bytes(const caps::Args& a) {
  return forward_block_entries(a.n_in, a.n_out, a.dim, a.state != nullptr) * static_cast<int64_t>(acc_size(a.dtype));
}

int64_t backward_block_bytes(const caps::GradArgs& a) {
  const int64_t entries = a.state ? kept_backward_entries(a.iterations, a.n_in, a.n_out, a.dim)
                                  : caps::backward_scratch(a.iterations, a.n_in, a.n_out, a.dim);
  return entries * static_cast<int64_t>(acc_size(a.dtype));
}

}  // namespace

size_t dynamic_routing_forward_workspace(const caps::Args& a) {
  if (a.batch == 0) return 0;
  const int64_t bytes = forward_block_bytes(a);
  return static_cast<size_t>(batch_grid(a.batch, bytes)) * static_cast<size_t>(bytes);
}

int dynamic_routing_forward(const caps::Args& a, void* stream) {
  if (a.batch == 0) return 0;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
    const unsigned grid = batch_grid(a.batch, forward_block_bytes(a));
    if (a.state) KX_LAUNCH(grid, kThreads, 0, st, forward_kernel<T, true>)(a);
    else KX_LAUNCH(grid, kThreads, 0, st, forward_kernel<T, false>)(a);
  });
  return last_error();
}

size_t dynamic_routing_backward_workspace(const caps::GradArgs& a) {
  if (a.batch == 0) return 0;
  const int64_t bytes = backward_block_bytes(a);
  return static_cast<size_t>(batch_grid(a.batch, bytes)) * static_cast<size_t>(bytes);
}

int dynamic_routing_backward(const caps::GradArgs& a, void* stream) {
  if (a.batch == 0) return 0;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
    const unsigned grid = batch_grid(a.batch, backward_block_bytes(a));
    if (a.state) KX_LAUNCH(grid, kThreads, 0, st, backward_kernel<T, true>)(a);
    else KX_LAUNCH(grid, kThreads, 0, st, backward_kernel<T, false>)(a);
  });
  return last_error();
}

}  // namespace cuda
}  // namespace kx
