// EM routing on the GPU: one block per sample (blocks stride over the batch, batch_grid), its
// threads sharing each step of the per-sample EM of csrc/kexue/em_routing.h: the M-step and the
// E-step's backward by pose entry (j, h) (reads of the votes coalesced along j·H + h), the
// E-step logits and the M-step's vote gradients by vote (i, j), softmaxes by input capsule i,
// activations by output capsule j. The history lives in the state when the forward keeps one
// (and the backward then reads it instead of recomputing), otherwise in the block's workspace.
// Each value is computed by one thread in a fixed order (no atomics, no cross-thread sums):
// bitwise reproducible, and the same arithmetic as the CPU's loops.
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace kx {
namespace cuda {
namespace {

// Strides the block's threads over n items.
#define KX_BLOCK_FOR(k, n) for (int64_t k = threadIdx.x; k < (n); k += kThreads)

// The forward EM of one sample into hs (the block's history); ends with a barrier.
template <typename A>
__device__ void block_forward(const em::Problem& p, const A* V, const A* ain, em::History<A> hs) {
  const int64_t T = p.iterations, I = p.n_in, J = p.n_out, H = p.dim, IJ = I * J, JH = J * H;
  const A* bu = static_cast<const A*>(p.beta_u);
  const A* ba = static_cast<const A*>(p.beta_a);
  const A eps = A(p.eps);
  KX_BLOCK_FOR(k, IJ) hs.R[k] = A(1) / A(J);
  __syncthreads();
  for (int64_t t = 0; t < T; ++t) {
    const A* R = hs.R + t * IJ;
    A *mu = hs.mu + t * JH, *var = hs.var + t * JH, *iv = hs.iv + t * JH;
    A *S = hs.S + t * J, *a = hs.a + t * J, *la = hs.la + t * J, *lv = hs.lv + t * J;
    KX_BLOCK_FOR(k, JH) {
      const int64_t j = k / H, h = k % H;
      const A s = em::m_column<1>(V, ain, R, eps, I, J, H, j, h, mu + j * H, var + j * H, iv + j * H);
      if (h == 0) S[j] = s;
    }
    if (H == 0) KX_BLOCK_FOR(j, J) S[j] = A(0);  // as on the CPU: no entry, no thread above
    __syncthreads();
    const A lam = em::lambda_at(A(p.final_lambda), t, T);
    KX_BLOCK_FOR(j, J) em::m_activation(var + j * H, S[j], bu[j], ba[j], lam, H, a + j, la + j, lv + j);
    __syncthreads();
    if (t + 1 == T) break;
    A* Rn = hs.R + (t + 1) * IJ;
    KX_BLOCK_FOR(k, IJ) {
      const int64_t j = k % J;
      Rn[k] = em::e_logit(V + k * H, mu + j * H, iv + j * H, H, la[j], lv[j]);
    }
    __syncthreads();
    KX_BLOCK_FOR(i, I) {
      em::softmax_shift(Rn + i * J, J);
      em::exp_in_place(Rn + i * J, J);
      em::softmax_normalise(Rn + i * J, J);
    }
    __syncthreads();
  }
}

template <typename A> __global__ void __launch_bounds__(kThreads) em_forward_kernel(em::Args p) {
  const int64_t T = p.iterations, I = p.n_in, J = p.n_out, H = p.dim;
  const int64_t hist = em::history_scratch(T, I, J, H);
  for (int64_t b = blockIdx.x; b < p.batch; b += gridDim.x) {
    A* base = p.state ? static_cast<A*>(p.state) + b * hist : static_cast<A*>(p.workspace) + blockIdx.x * hist;
    const em::History<A> hs = em::make_history(base, T, I, J, H);
    block_forward<A>(p, static_cast<const A*>(p.votes) + b * I * J * H, static_cast<const A*>(p.a_in) + b * I, hs);
    A* mu = static_cast<A*>(p.mu) + b * J * H;
    A* ao = static_cast<A*>(p.a_out) + b * J;
    KX_BLOCK_FOR(k, J * H) mu[k] = hs.mu[(T - 1) * J * H + k];
    KX_BLOCK_FOR(j, J) ao[j] = hs.a[(T - 1) * J + j];
    __syncthreads();  // the next sample overwrites the history
  }
}

// The backward of one sample (csrc/kexue/em_routing.h's backward_sample, step by step); scratch
// holds the recomputed history and then the gradients, or only the gradients with a kept state.
template <typename A>
__device__ void block_backward(const em::GradArgs& p, int64_t b, A* scratch) {
  const int64_t T = p.iterations, I = p.n_in, J = p.n_out, H = p.dim, IJ = I * J, JH = J * H;
  const A* V = static_cast<const A*>(p.votes) + b * IJ * H;
  const A* ain = static_cast<const A*>(p.a_in) + b * I;
  const A* bu = static_cast<const A*>(p.beta_u);
  const A* gmu_out = static_cast<const A*>(p.grad_mu) + b * JH;
  const A* ga_out = static_cast<const A*>(p.grad_a) + b * J;
  A* gV = static_cast<A*>(p.grad_votes) + b * IJ * H;
  A* gain = static_cast<A*>(p.grad_a_in) + b * I;
  A* gbu = static_cast<A*>(p.grad_beta_u) + b * J;
  A* gba = static_cast<A*>(p.grad_beta_a) + b * J;
  const A eps = A(p.eps);
  const int64_t hist = em::history_scratch(T, I, J, H);
  const bool saved = p.state != nullptr;
  const em::History<A> hs =
      em::make_history(saved ? const_cast<A*>(static_cast<const A*>(p.state)) + b * hist : scratch, T, I, J, H);
  A* gR = saved ? scratch : scratch + hist;
  A *gmu = gR + IJ, *gvar = gmu + JH, *ga = gvar + JH, *gla = ga + J;
  if (!saved) block_forward<A>(p, V, ain, hs);
  KX_BLOCK_FOR(k, IJ * H) gV[k] = A(0);
  KX_BLOCK_FOR(i, I) gain[i] = A(0);
  KX_BLOCK_FOR(k, JH) {
    gmu[k] = gmu_out[k];
    gvar[k] = A(0);
  }
  KX_BLOCK_FOR(j, J) {
    gbu[j] = gba[j] = A(0);
    ga[j] = ga_out[j];
    gla[j] = A(0);
  }
  __syncthreads();
  for (int64_t t = T - 1; t >= 0; --t) {
    const A *mu = hs.mu + t * JH, *var = hs.var + t * JH, *iv = hs.iv + t * JH, *R = hs.R + t * IJ;
    const A *S = hs.S + t * J, *a = hs.a + t * J, *lv = hs.lv + t * J;
    if (t + 1 < T) {  // E-step t: gR holds dL/dR^(t+1)
      const A* Rn = hs.R + (t + 1) * IJ;
      KX_BLOCK_FOR(i, I) em::softmax_row_grad(Rn + i * J, gR + i * J, J);
      __syncthreads();
      KX_BLOCK_FOR(k, JH) {
        const int64_t j = k / H, h = k % H;
        em::e_column_grad<1>(V, mu + j * H, iv + j * H, gR, I, J, H, j, h, gmu + j * H, gvar + j * H, gV);
      }
      KX_BLOCK_FOR(j, J) {
        A g = gla[j];
        for (int64_t i = 0; i < I; ++i) g += gR[i * J + j];
        gla[j] = g;
      }
      __syncthreads();
    }
    // M-step t: through the costs into each pose entry, then (ga becoming dL/dS, gla 1/D) into
    // each vote.
    const A lam = em::lambda_at(A(p.final_lambda), t, T);
    KX_BLOCK_FOR(k, JH) {
      const int64_t j = k / H;
      em::m_pose_grad(em::cost_grad(ga[j], gla[j], a[j], lam), S[j], mu[k], var[k], gmu + k, gvar + k);
    }
    __syncthreads();
    KX_BLOCK_FOR(j, J) {
      const A gC = em::cost_grad(ga[j], gla[j], a[j], lam);
      gba[j] -= gC;
      gbu[j] += gC * S[j] * A(H);
      ga[j] = gC * (A(H) * bu[j] + lv[j]);
      gla[j] = A(1) / (S[j] + A(em::kDenomEps));
    }
    __syncthreads();
    KX_BLOCK_FOR(k, IJ) {
      const int64_t i = k / J, j = k % J;
      gR[k] = ga[j] + em::m_vote_grad(V + k * H, mu + j * H, var + j * H, gmu + j * H, gvar + j * H, R[k] * ain[i],
                                      gla[j], eps, H, gV + k * H);
    }
    __syncthreads();
    KX_BLOCK_FOR(i, I) {
      A acc = A(0);
      for (int64_t j = 0; j < J; ++j) acc += gR[i * J + j] * R[i * J + j];
      gain[i] += acc;
      for (int64_t j = 0; j < J; ++j) gR[i * J + j] *= ain[i];
    }
    KX_BLOCK_FOR(k, JH) gmu[k] = gvar[k] = A(0);
    KX_BLOCK_FOR(j, J) ga[j] = gla[j] = A(0);
    __syncthreads();
  }
}

KX_HOST_DEVICE int64_t backward_block_entries(const em::GradArgs& p) {
  return p.state ? em::grad_scratch(p.n_in, p.n_out, p.dim) : em::backward_scratch(p.iterations, p.n_in, p.n_out, p.dim);
}

template <typename A> __global__ void __launch_bounds__(kThreads) em_backward_kernel(em::GradArgs p) {
  A* scratch = static_cast<A*>(p.workspace) + blockIdx.x * backward_block_entries(p);
  for (int64_t b = blockIdx.x; b < p.batch; b += gridDim.x) block_backward<A>(p, b, scratch);
}

#undef KX_BLOCK_FOR

size_t em_acc_size(DType d) { return d == DType::F64 ? sizeof(double) : sizeof(float); }

int64_t forward_block_bytes(const em::Args& p) {  // without a state, a history per block
  if (p.state) return 0;
  return em::history_scratch(p.iterations, p.n_in, p.n_out, p.dim) * static_cast<int64_t>(em_acc_size(p.dtype));
}
int64_t backward_block_bytes(const em::GradArgs& p) {
  return backward_block_entries(p) * static_cast<int64_t>(em_acc_size(p.dtype));
}

}  // namespace

size_t em_routing_forward_workspace(const em::Args& a) {
  if (a.batch == 0) return 0;
  const int64_t bytes = forward_block_bytes(a);
  return static_cast<size_t>(batch_grid(a.batch, bytes)) * static_cast<size_t>(bytes);
}

int em_routing_forward(const em::Args& a, void* stream) {
  if (a.batch == 0) return 0;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const unsigned grid = batch_grid(a.batch, forward_block_bytes(a));
  if (a.dtype == DType::F64) KX_LAUNCH(grid, kThreads, 0, st, em_forward_kernel<double>)(a);
  else KX_LAUNCH(grid, kThreads, 0, st, em_forward_kernel<float>)(a);
  return last_error();
}

size_t em_routing_backward_workspace(const em::GradArgs& a) {
  if (a.batch == 0) return 0;
  const int64_t bytes = backward_block_bytes(a);
  return static_cast<size_t>(batch_grid(a.batch, bytes)) * static_cast<size_t>(bytes);
}

int em_routing_backward(const em::GradArgs& a, void* stream) {
  if (a.batch == 0) return 0;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const unsigned grid = batch_grid(a.batch, backward_block_bytes(a));
  if (a.dtype == DType::F64) KX_LAUNCH(grid, kThreads, 0, st, em_backward_kernel<double>)(a);
  else KX_LAUNCH(grid, kThreads, 0, st, em_backward_kernel<float>)(a);
  return last_error();
}

}  // namespace cuda
}  // namespace kx
