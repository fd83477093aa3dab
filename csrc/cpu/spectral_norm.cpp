// Spectral normalisation on the CPU.
//
// Power iteration: one pass over W per iteration. Each task owns a fixed block of rows of one
// weight; for every row it forms t_i = W_i·v and, with the row still in cache, adds t_i·W_i to the
// task's partial y = W^T t, kept scaled by a power of two 2^-E_k (E_k: the binade of the task's
// largest |t_i|). The partials are then brought to the weight's common scale and added in task
// order, and the norms taken in double, scaled the same way (csrc/kexue/spectral_norm.h has the
// algebra and why). The split depends only on the shapes, so results are bitwise the same for any
// thread count, and a grouped call equals the single calls.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/spectral_norm_loops.h"
#include "cpu/type_map.h"
#include "kexue/dispatch.h"

namespace kx {
namespace cpu {
namespace {

constexpr int64_t kTaskElems = 1 << 16;  // elements of W per task, roughly

// Rows per task: a multiple of 4 (the loops' row blocking), about kTaskElems elements.
int64_t rows_per_task(int64_t cols) {
  const int64_t r = std::max<int64_t>(1, kTaskElems / std::max<int64_t>(1, cols));
  return (r + 3) / 4 * 4;
}

int64_t tasks_of(int64_t rows, int64_t cols) {
  const int64_t r = rows_per_task(cols);
  return std::max<int64_t>(1, (rows + r - 1) / r);
}

snloops::Loops loops_for(DType d) {
  switch (d) {
    case DType::F16: return snloops::make_loops<c10::Half>();
    case DType::BF16: return snloops::make_loops<c10::BFloat16>();
    default: break;
  }
  switch (active_isa()) {
#ifdef KEXUE_CPU_MULTI_ISA
    case Isa::Avx512: return avx512::spectral_norm_loops(d);
    case Isa::Avx2: return avx2::spectral_norm_loops(d);
#endif
    default: return base::spectral_norm_loops(d);
  }
}

template <typename T, typename A> void to_acc(const void* src, A* dst, int64_t n) {
  const T* s = static_cast<const T*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<A>(s[i]);
}

template <typename T> void power_iteration_impl(const sn::PowerArgs& a) {
  using A = acc_t<T>;
  const snloops::Loops L = loops_for(a.dtype);
  const size_t es = elem_size(a.dtype);
  const int64_t n = a.count;
  // Per weight: first task, offsets of t [rows], partials [tasks, cols] and v [cols].
  std::vector<int64_t> task0(n + 1), t_off(n + 1), p_off(n + 1), v_off(n + 1);
  task0[0] = t_off[0] = p_off[0] = v_off[0] = 0;
  for (int64_t w = 0; w < n; ++w) {
    const sn::Entry& e = a.entries[w];
    const int64_t k = tasks_of(e.rows, e.cols);
    task0[w + 1] = task0[w] + k;
    t_off[w + 1] = t_off[w] + e.rows;
    p_off[w + 1] = p_off[w] + k * e.cols;
    v_off[w + 1] = v_off[w] + e.cols;
  }
  std::vector<A> t(t_off[n]), part(p_off[n]), vacc(v_off[n]);
  std::vector<int> part_exp(task0[n]);  // E_k of each task's partial
  for (int64_t w = 0; w < n; ++w)
    to_acc<T>(a.entries[w].v, vacc.data() + v_off[w], a.entries[w].cols);
  const A eps = static_cast<A>(a.eps);

  for (int64_t it = 0; it < a.n_iter; ++it) {
    // t = W v and the per-task partials of W^T t, one pass over every W.
    at::parallel_for(0, task0[n], 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t w = std::upper_bound(task0.begin(), task0.end(), task) - task0.begin() - 1;
        const sn::Entry& e = a.entries[w];
        const int64_t k = task - task0[w], rpt = rows_per_task(e.cols);
        const int64_t r0 = std::min(e.rows, k * rpt), r1 = std::min(e.rows, r0 + rpt);
        L.fused_rows(static_cast<const char*>(e.W) + r0 * e.cols * es, r1 - r0, e.cols,
                     vacc.data() + v_off[w], t.data() + t_off[w] + r0,
                     part.data() + p_off[w] + k * e.cols, part_exp.data() + task);
      }
    });
    // Per weight: u from t; y = Σ partials at the scale 2^-E of the largest |t_i| (task order);
    // then w = W^T u, v and sigma.
    const bool last = it + 1 == a.n_iter;
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t w = begin; w < end; ++w) {
        const sn::Entry& e = a.entries[w];
        const int64_t k = task0[w + 1] - task0[w], R = e.rows, C = e.cols;
        const A* tw = t.data() + t_off[w];
        const A d1 = sn::divisor(static_cast<A>(sn::scaled_norm<double>(tw, R)), eps);
        T* u = static_cast<T*>(e.u);
        for (int64_t i = 0; i < R; ++i) u[i] = static_cast<T>(tw[i] / d1);
        // The tasks' E_k: their largest is E, the binade of max |t_i|.
        const int* pe = part_exp.data() + task0[w];
        int E = pe[0];
        for (int64_t c = 1; c < k; ++c) E = pe[c] > E ? pe[c] : E;
        A* y = part.data() + p_off[w];
        const A r0 = sn::ldexp_(A(1), pe[0] - E);
#pragma omp simd
        for (int64_t j = 0; j < C; ++j) y[j] *= r0;
        for (int64_t c = 1; c < k; ++c) {
          const A* p = y + c * C;
          const A rc = sn::ldexp_(A(1), pe[c] - E);
#pragma omp simd
          for (int64_t j = 0; j < C; ++j) y[j] += p[j] * rc;
        }
        const A d1_scaled = sn::ldexp_(d1, -E);  // y/d1_scaled = (W^T t)/d1 = W^T u
        for (int64_t j = 0; j < C; ++j) y[j] = y[j] / d1_scaled;
        const A wn = static_cast<A>(sn::scaled_norm<double>(y, C));
        const A d2 = sn::divisor(wn, eps);
        T* v = static_cast<T*>(e.v);
        A* vw = vacc.data() + v_off[w];
        for (int64_t j = 0; j < C; ++j) {
          v[j] = static_cast<T>(y[j] / d2);
          vw[j] = static_cast<A>(v[j]);  // the next pass uses v as stored, like torch
        }
        if (last) static_cast<A*>(a.sigma)[w] = sn::sigma_from_norm(wn, eps);
      }
    });
  }
}

// Row blocks of W for the normalisation passes.
struct RowTasks {
  int64_t rows_per_task, tasks;
};

RowTasks row_tasks(int64_t rows, int64_t cols) {
  const int64_t r = rows_per_task(cols);
  return {r, (rows + r - 1) / r};
}

template <typename T> void normalize_forward_impl(const sn::NormalizeArgs& a) {
  using A = acc_t<T>;
  const snloops::Loops L = loops_for(a.dtype);
  const size_t es = elem_size(a.dtype);
  const int64_t R = a.rows, C = a.cols;
  std::vector<A> uacc(R), vacc(C), t(R);
  to_acc<T>(a.u, uacc.data(), R);
  to_acc<T>(a.v, vacc.data(), C);
  const RowTasks rt = row_tasks(R, C);
  at::parallel_for(0, rt.tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t r0 = k * rt.rows_per_task, r1 = std::min(R, r0 + rt.rows_per_task);
      L.dot_rows(static_cast<const char*>(a.W) + r0 * C * es, r1 - r0, C, vacc.data(),
                 t.data() + r0);
    }
  });
  double s = 0.0;
  for (int64_t i = 0; i < R; ++i) s += static_cast<double>(uacc[i]) * t[i];
  const A sigma = static_cast<A>(s);
  *static_cast<A*>(a.sigma) = sigma;
  const A div = sn::weight_divisor(sigma, static_cast<A>(a.coeff), a.exact);
  at::parallel_for(0, rt.tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t r0 = k * rt.rows_per_task, r1 = std::min(R, r0 + rt.rows_per_task);
      L.divide(static_cast<const char*>(a.W) + r0 * C * es, static_cast<char*>(a.out) + r0 * C * es,
               (r1 - r0) * C, static_cast<double>(div));
    }
  });
}

template <typename T> void normalize_backward_impl(const sn::NormalizeGradArgs& a) {
  using A = acc_t<T>;
  const snloops::Loops L = loops_for(a.dtype);
  const size_t es = elem_size(a.dtype);
  const int64_t R = a.rows, C = a.cols;
  std::vector<A> uacc(R), vacc(C), t(R), e(R), bu(R);
  to_acc<T>(a.u, uacc.data(), R);
  to_acc<T>(a.v, vacc.data(), C);
  const RowTasks rt = row_tasks(R, C);
  const char* W = static_cast<const char*>(a.W);
  const char* G = static_cast<const char*>(a.grad_out);
  // Pass 1: sigma = u^T W v and <g, W>, reading W and g once.
  at::parallel_for(0, rt.tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t r0 = k * rt.rows_per_task, r1 = std::min(R, r0 + rt.rows_per_task);
      L.dot2_rows(W + r0 * C * es, G + r0 * C * es, r1 - r0, C, vacc.data(), t.data() + r0,
                  e.data() + r0);
    }
  });
  double s = 0.0, gw = 0.0;
  for (int64_t i = 0; i < R; ++i) {
    s += static_cast<double>(uacc[i]) * t[i];
    gw += static_cast<double>(e[i]);
  }
  const A gs = *static_cast<const A*>(a.grad_sigma);
  const sn::GradCoeffs<A> cf = sn::grad_coeffs(static_cast<A>(s), static_cast<A>(gw), gs,
                                               static_cast<A>(a.coeff), a.exact);
  for (int64_t i = 0; i < R; ++i) bu[i] = cf.b * uacc[i];
  // Pass 2: grad_W = a·g + (b·u) v^T.
  at::parallel_for(0, rt.tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t r0 = k * rt.rows_per_task, r1 = std::min(R, r0 + rt.rows_per_task);
      L.rank1_rows(G + r0 * C * es, static_cast<char*>(a.grad_W) + r0 * C * es, r1 - r0, C,
                   static_cast<double>(cf.a), bu.data() + r0, vacc.data());
    }
  });
}

}  // namespace

void spectral_norm_power_iteration(const sn::PowerArgs& a) {
  if (a.count == 0) return;
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] { power_iteration_impl<T>(a); });
}

void spectral_normalize_weight(const sn::NormalizeArgs& a) {
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] { normalize_forward_impl<T>(a); });
}

void spectral_normalize_weight_backward(const sn::NormalizeGradArgs& a) {
  KX_DTYPE_SWITCH(a.dtype, TypeMap, T, [&] { normalize_backward_impl<T>(a); });
}

}  // namespace cpu
}  // namespace kx
