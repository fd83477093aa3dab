// ActNorm forward/backward on the CPU. x is [batch, channels, spatial]; per-channel gradients
// are reduced through fixed row blocks (deterministic for any thread count).
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/type_map.h"
#include "kexue/dispatch.h"

namespace kx {
namespace cpu {
namespace {

template <typename A>
std::vector<actnorm::Channel<A>> channels_of(const A* bias, const A* log_s, int64_t C,
                                             bool reverse) {
  std::vector<actnorm::Channel<A>> ch(C);
  for (int64_t c = 0; c < C; ++c) ch[c] = actnorm::channel(bias[c], log_s[c], reverse);
  return ch;
}

int64_t rows_per_task(int64_t row_elems) {
  return std::max<int64_t>(1, kChunk / std::max<int64_t>(1, row_elems));
}

template <typename T, bool Reverse>
void forward_impl(const actnorm::Args& a) {
  using A = acc_t<T>;
  const int64_t B = a.batch, C = a.channels, S = a.spatial;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  T* __restrict__ y = static_cast<T*>(a.out);
  const auto ch = channels_of(static_cast<const A*>(a.bias), static_cast<const A*>(a.log_s), C,
                              Reverse);
  at::parallel_for(0, B, std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, C * S)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        const actnorm::Channel<A> k = ch[c];
        const int64_t off = (n * C + c) * S;
#pragma omp simd
        for (int64_t j = 0; j < S; ++j)
          y[off + j] = static_cast<T>(actnorm::forward_elem(static_cast<A>(x[off + j]), k, Reverse));
      }
    }
  });
  const A ld = actnorm::logdet<A>(static_cast<const A*>(a.log_s), C, S, Reverse);
  A* logdet = static_cast<A*>(a.logdet);
  for (int64_t n = 0; n < B; ++n) logdet[n] = ld;
}

template <typename T, bool Reverse>
void backward_impl(const actnorm::GradArgs& a) {
  using A = acc_t<T>;
  const int64_t B = a.batch, C = a.channels, S = a.spatial;
  const T* __restrict__ g = static_cast<const T*>(a.grad_out);
  const T* __restrict__ x = static_cast<const T*>(a.x);
  T* gx = static_cast<T*>(a.grad_x);
  const auto ch = channels_of(static_cast<const A*>(a.bias), static_cast<const A*>(a.log_s), C,
                              Reverse);
  const int64_t rows = rows_per_task(C * S);
  const int64_t tasks = (B + rows - 1) / rows;
  // partial[task][c] for bias and log_s.
  std::vector<A> pb(tasks * C, A(0)), pls(tasks * C, A(0));
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      A* tb = pb.data() + task * C;
      A* tls = pls.data() + task * C;
      const int64_t n1 = std::min(B, (task + 1) * rows);
      for (int64_t n = task * rows; n < n1; ++n) {
        for (int64_t c = 0; c < C; ++c) {
          const actnorm::Channel<A> k = ch[c];
          const int64_t off = (n * C + c) * S;
          A sb = A(0), sls = A(0);
          if (gx) {
#pragma omp simd reduction(+ : sb, sls)
            for (int64_t j = 0; j < S; ++j) {
              const auto r = actnorm::backward_elem(static_cast<A>(g[off + j]),
                                                    static_cast<A>(x[off + j]), k, Reverse);
              gx[off + j] = static_cast<T>(r.gx);
              sb += r.gb;
              sls += r.gls;
            }
          } else {
#pragma omp simd reduction(+ : sb, sls)
            for (int64_t j = 0; j < S; ++j) {
              const auto r = actnorm::backward_elem(static_cast<A>(g[off + j]),
                                                    static_cast<A>(x[off + j]), k, Reverse);
              sb += r.gb;
              sls += r.gls;
            }
          }
          tb[c] += sb;
          tls[c] += sls;
        }
      }
    }
  });
  A* gb = static_cast<A*>(a.grad_bias);
  A* gls = static_cast<A*>(a.grad_log_s);
  const A from_logdet =
      actnorm::logdet_grad<A>(static_cast<const A*>(a.grad_logdet), B, S, Reverse);
  for (int64_t c = 0; c < C; ++c) {
    A sb = A(0), sls = A(0);
    for (int64_t task = 0; task < tasks; ++task) {
      sb += pb[task * C + c];
      sls += pls[task * C + c];
    }
    gb[c] = sb;
    gls[c] = sls + from_logdet;
  }
}

}  // namespace

void actnorm_forward(const actnorm::Args& a) {
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
    KX_BOOL_SWITCH(a.reverse, R, [&] { forward_impl<T, R>(a); });
  });
}

void actnorm_backward(const actnorm::GradArgs& a) {
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] {
    KX_BOOL_SWITCH(a.reverse, R, [&] { backward_impl<T, R>(a); });
  });
}

}  // namespace cpu
}  // namespace kx
