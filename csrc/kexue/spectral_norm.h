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
// Magnitudes: sigma of an fp32 weight may be anything up to ~3e38, but |t|^2 = Σ t_i^2 overflows
// from |t| ~ 2e19, y = W^T t is ~sigma^2 (overflows from sigma ~ 2e19), and squares of t_i below
// ~1e-19 are subnormal. So every sum of squares is taken of x_i·2^-e and every W^T t of t_i·2^-e,
// 2^e the binade of max|x_i| (scale_exponent), and scaled back at the end:
//   |x| = 2^e·sqrt(Σ (x_i·2^-e)^2),    w = (Σ_i (t_i·2^-e) W_i) / (max(|t|, eps)·2^-e).
// A power of two scales exactly (wherever the values stay normal numbers), so the results are
// bitwise those of the unscaled formulas wherever those did not overflow or underflow.
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

// The largest iteration count the ops take (far beyond convergence; a bound keeps a typo from running for hours).
constexpr int64_t kMaxIterations = 100000;

// The divisor of a normalisation, like F.normalize: max(|x|, eps). The comparisons in this file
// are written so that a NaN passes through, as it does through torch's clamp_min.
template <typename A> KX_HOST_DEVICE A divisor(A norm, A eps) { return norm < eps ? eps : norm; }

// The normal exponents of each accumulation type: 2^e is a normal number for lo <= e <= hi.
template <typename A> struct ExpRange;
template <> struct ExpRange<float> {
  static constexpr int lo = -126, hi = 127;
};
template <> struct ExpRange<double> {
  static constexpr int lo = -1022, hi = 1023;
};

// x·2^e, exact unless the result leaves the normal range.
KX_HOST_DEVICE float ldexp_(float x, int e) {
#if defined(__CUDA_ARCH__)
  return ::ldexpf(x, e);
#else
  return std::ldexp(x, e);
#endif
}
KX_HOST_DEVICE double ldexp_(double x, int e) {
#if defined(__CUDA_ARCH__)
  return ::ldexp(x, e);
#else
  return std::ldexp(x, e);
#endif
}

// floor(log2 |x|) for finite nonzero x; a huge negative value for 0, INT_MAX for inf.
KX_HOST_DEVICE int ilogb_(float x) {
#if defined(__CUDA_ARCH__)
  return ::ilogbf(x);
#else
  return std::ilogb(x);
#endif
}
KX_HOST_DEVICE int ilogb_(double x) {
#if defined(__CUDA_ARCH__)
  return ::ilogb(x);
#else
  return std::ilogb(x);
#endif
}

// The scale of a vector whose largest |entry| is m >= 0: floor(log2 m), clamped to [lo, hi] so
// that 2^e and 2^-e are both finite and nonzero. Then |x_i|·2^-e < 2 for every entry (<= 1 for
// subnormal m), so n squares sum to at most 4n. m = 0 gives lo and m = inf gives hi.
template <typename A> KX_HOST_DEVICE int scale_exponent(A m) {
  const int e = ilogb_(m);
  return e < ExpRange<A>::lo ? ExpRange<A>::lo : e > ExpRange<A>::hi ? ExpRange<A>::hi : e;
}

// |x| over n entries by the scaled formula, summed in S in index order (the CPU sums fp32 squares
// in double, where they are exact; the CUDA finish kernel sums the same terms over a block).
template <typename S, typename A> KX_HOST_DEVICE S scaled_norm(const A* x, int64_t n) {
  A m = A(0);
  for (int64_t i = 0; i < n; ++i) {
    const A a = kx::abs(x[i]);
    m = a > m ? a : m;
  }
  const int e = scale_exponent(m);
  const S down = ldexp_(S(1), -e);
  S ss = S(0);
  for (int64_t i = 0; i < n; ++i) {
    const S y = static_cast<S>(x[i]) * down;
    ss += y * y;
  }
  return ldexp_(sqrt_(ss), e);
}

// sigma = u^T W v after the v update, from |w| (w = W^T u): |w|·(|w|/max(|w|, eps)), which is |w|
// itself when |w| >= eps, without squaring |w| (it may be up to the type's largest value).
template <typename A> KX_HOST_DEVICE A sigma_from_norm(A w_norm, A eps) {
  return w_norm * (w_norm / divisor(w_norm, eps));
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

// gw = <g, W> summed over all elements; gs = dL/dsigma. The quotients by sigma^2 divide twice
// rather than square sigma (overflow from sigma ~ 2e19 in fp32, subnormal below ~1e-19).
template <typename A>
KX_HOST_DEVICE GradCoeffs<A> grad_coeffs(A sigma, A gw, A gs, A coeff, bool exact) {
  GradCoeffs<A> c;
  if (exact) {
    c.a = A(1) / sigma;
    c.b = gs - gw / sigma / sigma;
  } else if (!(sigma / coeff <= A(1))) {
    c.a = coeff / sigma;
    c.b = gs - coeff * (gw / sigma / sigma);
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
  // CUDA only: device memory for the same table, [count] entries, which the launcher fills from
  // `entries` with kernels that carry them as parameters (no host buffer that a CUDA graph replay
  // would read after it is reused); null when count == 1 (entries[0] then goes by value). And the
  // workspace whose size the planner returned.
  Entry* device_entries;
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
