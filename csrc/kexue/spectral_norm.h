// Spectral normalisation math (Miyato et al. 2018), shared by the CPU and CUDA kernels.
//
// Power iteration for the largest singular value of W [rows = out, cols = in], in torch's order:
//   t = W v,        u = t / max(|t|, eps)
//   w = W^T u,      v = w / max(|w|, eps)
//   sigma = u^T W v = w·v = |w|^2 / max(|w|, eps)
// The last line is exact algebra (v is w rescaled), so sigma costs no extra pass over W; it equals
// |w| whenever |w| >= eps, and |w|^2/eps (tiny, not |w|) in the degenerate case |w| < eps, which is
// still u^T W v for the stored u, v. Since w = W^T t / max(|t|, eps), the kernels form y = W^T t
// in the same pass as t (each row of W is read once, used twice) and rescale y afterwards.
//
// Normalisation (u, v constants): W_sn = W / s with s = sigma (exact) or max(1, sigma/coeff) (soft).
// Gradient (dsigma/dW = u v^T), with g = dL/dW_sn and gs = dL/dsigma:
//   grad_W = a·g + b·u v^T,
//   exact:              a = 1/sigma,     b = gs - <g, W>/sigma^2
//   soft, sigma<=coeff: a = 1,           b = gs
//   soft, sigma>coeff:  a = coeff/sigma, b = gs - coeff·<g, W>/sigma^2
#pragma once
#include "kexue/common.h"

namespace kx {
namespace sn {

// The divisor of a normalisation, like F.normalize: max(|x|, eps). The comparisons in this file
// are written so that a NaN passes through, as it does through torch's clamp_min.
template <typename A> KX_HOST_DEVICE A divisor(A norm, A eps) { return norm < eps ? eps : norm; }

// sigma = u^T W v after the v update, from |w| (w = W^T u).
template <typename A> KX_HOST_DEVICE A sigma_from_norm(A w_norm, A eps) {
  return w_norm * w_norm / divisor(w_norm, eps);
}

// The divisor s of W_sn = W / s.
template <typename A> KX_HOST_DEVICE A weight_divisor(A sigma, A coeff, bool exact) {
  if (exact) return sigma;
  const A r = sigma / coeff;
  return r < A(1) ? A(1) : r;
}

template <typename A> struct GradCoeffs {
  A a, b;  // grad_W = a·g + b·u v^T
};

// gw = <g, W> summed over all elements; gs = dL/dsigma.
template <typename A>
KX_HOST_DEVICE GradCoeffs<A> grad_coeffs(A sigma, A gw, A gs, A coeff, bool exact) {
  GradCoeffs<A> c;
  if (exact) {
    c.a = A(1) / sigma;
    c.b = gs - gw / (sigma * sigma);
  } else if (!(sigma / coeff <= A(1))) {
    c.a = coeff / sigma;
    c.b = gs - coeff * gw / (sigma * sigma);
  } else {
    c.a = A(1);
    c.b = gs;
  }
  return c;
}

// One weight of a (grouped) power iteration. Pointers are raw so that the CPU and CUDA launchers
// share it; u, v are contiguous and of W's dtype, W is row-major contiguous.
struct Entry {
  const void* W;
  void* u;
  void* v;
  int64_t rows, cols;
  // Filled by the CUDA planner (csrc/cuda/spectral_norm.cu): offsets into its workspaces and
  // the first task of this weight in each kernel's flattened grid.
  int64_t t_off, part_off, slices, rows_per_slice, col_tiles, row_task0, col_task0;
};

struct PowerArgs {
  DType dtype;
  int64_t count;        // number of weights
  const Entry* entries;  // host array [count]
  int64_t n_iter;
  double eps;
  void* sigma;  // [count] of acc_t<dtype>
  // CUDA only: the same table in device memory (null when count == 1: the launcher then passes
  // entries[0] by value, so the single op needs no host-to-device copy), and the workspace
  // whose size the planner returned.
  const Entry* device_entries;
  void* workspace;
};

// spectral_normalize_weight and its backward.
struct NormalizeArgs {
  DType dtype;
  int64_t rows, cols;
  const void* W;
  const void* u;
  const void* v;
  double coeff;
  bool exact;
  void* out;    // W_sn
  void* sigma;  // 0-d, acc_t<dtype>
  void* workspace;
};

struct NormalizeGradArgs {
  DType dtype;
  int64_t rows, cols;
  const void* grad_out;
  const void* grad_sigma;  // 0-d, acc_t<dtype>
  const void* W;
  const void* u;
  const void* v;
  double coeff;
  bool exact;
  void* grad_W;
  void* workspace;
};

}  // namespace sn
}  // namespace kx
