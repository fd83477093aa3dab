// Coupling forward/backward on the CPU: one pass over memory, work split into fixed-size runs
// (so the per-sample log-det sums are the same for any thread count), each run handled by the
// inner loop built for the best instruction set of this CPU (csrc/cpu/isa.h).
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/isa.h"
#include "cpu/kernels.h"
#include "cpu/type_map.h"

namespace kx {
namespace cpu {
namespace {

// Runs of kRun elements: the vector lanes sum a run in the acc type, runs add up in double, so
// fp32 log-dets of large images stay as accurate as torch's cascaded sums.
constexpr int64_t kRun = 1024;

loops::ForwardFn forward_fn(const coupling::Args& a) {
  const bool masked = a.mask != nullptr, has_t = a.t != nullptr;
  switch (a.dtype) {
    case DType::F16:
      return loops::forward_fn<c10::Half>(a.scale, a.reverse, masked, has_t);
    case DType::BF16:
      return loops::forward_fn<c10::BFloat16>(a.scale, a.reverse, masked, has_t);
    default:
      break;
  }
  switch (active_isa()) {
#ifdef KEXUE_CPU_MULTI_ISA
    case Isa::Avx512: return avx512::coupling_forward_fn(a.dtype, a.scale, a.reverse, masked, has_t);
    case Isa::Avx2: return avx2::coupling_forward_fn(a.dtype, a.scale, a.reverse, masked, has_t);
#endif
    default: return base::coupling_forward_fn(a.dtype, a.scale, a.reverse, masked, has_t);
  }
}

loops::BackwardFn backward_fn(const coupling::GradArgs& a) {
  const bool masked = a.mask != nullptr, has_t = a.t != nullptr;
  switch (a.dtype) {
    case DType::F16:
      return loops::backward_fn<c10::Half>(a.scale, a.reverse, masked, has_t);
    case DType::BF16:
      return loops::backward_fn<c10::BFloat16>(a.scale, a.reverse, masked, has_t);
    default:
      break;
  }
  switch (active_isa()) {
#ifdef KEXUE_CPU_MULTI_ISA
    case Isa::Avx512: return avx512::coupling_backward_fn(a.dtype, a.scale, a.reverse, masked, has_t);
    case Isa::Avx2: return avx2::coupling_backward_fn(a.dtype, a.scale, a.reverse, masked, has_t);
#endif
    default: return base::coupling_backward_fn(a.dtype, a.scale, a.reverse, masked, has_t);
  }
}

struct Tiling {
  int64_t chunks;  // tasks per sample
  int64_t grain;   // tasks a thread takes at least
};

Tiling tiling(int64_t n) {
  Tiling t;
  t.chunks = std::max<int64_t>(1, (n + kChunk - 1) / kChunk);
  t.grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, std::min(n, kChunk)));
  return t;
}

}  // namespace

void coupling_forward(const coupling::Args& a) {
  const loops::ForwardFn fn = forward_fn(a);
  const int64_t B = a.batch, N = a.numel_per_sample;
  const size_t es = elem_size(a.dtype);
  const char* x = static_cast<const char*>(a.x);
  const char* s = static_cast<const char*>(a.s);
  const char* t = static_cast<const char*>(a.t);
  char* y = static_cast<char*>(a.out);
  const Tiling tl = tiling(N);
  std::vector<double> partial(B * tl.chunks, 0.0);

  at::parallel_for(0, B * tl.chunks, tl.grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / tl.chunks, j0 = (task % tl.chunks) * kChunk;
      const int64_t j1 = std::min(N, j0 + kChunk);
      double total = 0.0;
      for (int64_t j = j0; j < j1; j += kRun) {
        const int64_t off = n * N + j, len = std::min(j1 - j, kRun);
        const uint8_t* m = a.mask ? a.mask + (a.mask_per_batch ? off : j) : nullptr;
        total += fn(x + off * es, s ? s + off * es : nullptr, t ? t + off * es : nullptr, m,
                    y + off * es, len, a.clamp);
      }
      partial[task] = total;
    }
  });
  const bool f64 = a.dtype == DType::F64;
  for (int64_t n = 0; n < B; ++n) {
    double sum = 0.0;
    for (int64_t c = 0; c < tl.chunks; ++c) sum += partial[n * tl.chunks + c];
    if (f64)
      static_cast<double*>(a.logdet)[n] = sum;
    else
      static_cast<float*>(a.logdet)[n] = static_cast<float>(sum);
  }
}

void coupling_backward(const coupling::GradArgs& a) {
  const loops::BackwardFn fn = backward_fn(a);
  const int64_t B = a.batch, N = a.numel_per_sample;
  const size_t es = elem_size(a.dtype);
  const bool f64 = a.dtype == DType::F64;
  const char* g = static_cast<const char*>(a.grad_out);
  const char* x = static_cast<const char*>(a.x);
  const char* s = static_cast<const char*>(a.s);
  const char* t = static_cast<const char*>(a.t);
  const Tiling tl = tiling(N);

  at::parallel_for(0, B * tl.chunks, tl.grain, [&](int64_t begin, int64_t end) {
    // Gradients nobody asked for go to a per-thread scratch run: the loop stays branch-free.
    std::vector<char> scratch;
    auto dest = [&](void* p, int64_t off, int slot) -> void* {
      if (p) return static_cast<char*>(p) + off * es;
      if (scratch.empty()) scratch.resize(3 * kRun * es);
      return scratch.data() + slot * kRun * es;
    };
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / tl.chunks, j0 = (task % tl.chunks) * kChunk;
      const int64_t j1 = std::min(N, j0 + kChunk);
      const double gl = f64 ? static_cast<const double*>(a.grad_logdet)[n]
                            : static_cast<const float*>(a.grad_logdet)[n];
      for (int64_t j = j0; j < j1; j += kRun) {
        const int64_t off = n * N + j, len = std::min(j1 - j, kRun);
        const uint8_t* m = a.mask ? a.mask + (a.mask_per_batch ? off : j) : nullptr;
        fn(g + off * es, gl, x + off * es, s ? s + off * es : nullptr,
           t ? t + off * es : nullptr, m, dest(a.grad_x, off, 0), dest(a.grad_s, off, 1),
           dest(a.grad_t, off, 2), len, a.clamp);
      }
    }
  });
}

}  // namespace cpu
}  // namespace kx
