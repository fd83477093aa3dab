// Diffusion steps and q_sample on the CPU: each sample's elements in fixed chunks, the inner loop
// built for the best instruction set of this CPU (fp32/fp64) or instantiated for the half types.
// Every output element depends only on its own inputs and its flat index, so the split over
// threads never changes a result.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "cpu/diffusion_loops.h"
#include "cpu/isa.h"
#include "cpu/kernels.h"
#include "cpu/streaming.h"
#include "cpu/type_map.h"

namespace kx {
namespace cpu {
namespace {

diffloops::StepFn step_fn(const diff::StepArgs& a) {
  switch (a.dtype) {
    case DType::F16: return diffloops::step_fn<c10::Half>(a);
    case DType::BF16: return diffloops::step_fn<c10::BFloat16>(a);
    default: break;
  }
  switch (active_isa()) {
#ifdef KEXUE_CPU_MULTI_ISA
    case Isa::Avx512: return avx512::diffusion_step_fn(a);
    case Isa::Avx2: return avx2::diffusion_step_fn(a);
#endif
    default: return base::diffusion_step_fn(a);
  }
}

diffloops::QSampleFn q_sample_fn(DType dtype) {
  switch (dtype) {
    case DType::F16: return &diffloops::q_sample_run<c10::Half>;
    case DType::BF16: return &diffloops::q_sample_run<c10::BFloat16>;
    default: break;
  }
  switch (active_isa()) {
#ifdef KEXUE_CPU_MULTI_ISA
    case Isa::Avx512: return avx512::q_sample_fn(dtype);
    case Isa::Avx2: return avx2::q_sample_fn(dtype);
#endif
    default: return base::q_sample_fn(dtype);
  }
}

diffloops::QSampleSamplesFn q_sample_samples_fn(DType dtype) {
  switch (dtype) {
    case DType::F16: return &diffloops::q_sample_samples<c10::Half>;
    case DType::BF16: return &diffloops::q_sample_samples<c10::BFloat16>;
    default: break;
  }
  switch (active_isa()) {
#ifdef KEXUE_CPU_MULTI_ISA
    case Isa::Avx512: return avx512::q_sample_samples_fn(dtype);
    case Isa::Avx2: return avx2::q_sample_samples_fn(dtype);
#endif
    default: return base::q_sample_samples_fn(dtype);
  }
}

// Below this many elements per sample, q_sample with per-sample ᾱ runs whole samples per call.
constexpr int64_t kSmallSample = 64;

// Runs fn(b, j0, j1) over [batch, per_sample] in chunks of at most kChunk elements of one sample.
template <typename F> void for_each_chunk(int64_t batch, int64_t per_sample, F fn) {
  const int64_t chunks = std::max<int64_t>(1, (per_sample + kChunk - 1) / kChunk);
  const int64_t grain =
      std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, std::min(per_sample, kChunk)));
  at::parallel_for(0, batch * chunks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, j0 = (task % chunks) * kChunk;
      fn(b, j0, std::min(per_sample, j0 + kChunk));
    }
  });
}

// Bytes of `outputs` tensors shaped like the op's input.
template <typename Args> int64_t output_bytes(const Args& a, int outputs) {
  return outputs * a.batch * a.per_sample * static_cast<int64_t>(elem_size(a.dtype));
}

// Whether every sample has the same value: one value, or a [batch] tensor of one repeated value
// (a sampling loop's torch.full((B,), t)), which then runs as one set of coefficients (per
// sample they cost about 15 ns each, 14x a 2-D DDIM step's elements). Compared bit for bit, so
// that -0.0 and 0.0 (whose square roots differ in sign) stay apart.
template <typename V> bool same_values(const V* v, int64_t stride, int64_t batch) {
  if (v == nullptr || stride == 0) return true;
  for (int64_t b = 1; b < batch; ++b)
    if (std::memcmp(v + b * stride, v, sizeof(V)) != 0) return false;
  return true;
}

bool uniform(const diff::PerSample& p, int64_t batch) {
  return same_values(static_cast<const double*>(p.ptr), p.stride, batch);
}

// With one set of coefficients for the whole batch, the batch is one long sample: the per-sample
// coefficients are computed once, and small samples (2-D points) run as long vector loops. The
// flat element index, and so the noise, is unchanged.
template <typename Args> Args flattened(const Args& a, bool same_for_all) {
  Args f = a;
  if (same_for_all) {
    f.per_sample = a.batch * a.per_sample;
    f.batch = 1;
  }
  return f;
}

}  // namespace

int64_t streaming::active_copy_errors() {
  switch (active_isa()) {
#ifdef KEXUE_CPU_MULTI_ISA
    case Isa::Avx512: return avx512::streaming_copy_errors();
    case Isa::Avx2: return avx2::streaming_copy_errors();
#endif
    default: return base::streaming_copy_errors();
  }
}

void diffusion_step(const diff::StepArgs& a) {
  const diffloops::StepFn fn = step_fn(a);
  const bool same = a.rule == diff::Rule::DDPM ? same_values(a.t_ptr, a.t_stride, a.batch)
                                               : uniform(a.abar_t, a.batch) && uniform(a.abar_prev, a.batch);
  const diff::StepArgs f = flattened(a, same);
  const bool stream = streaming::worth_it(output_bytes(a, a.x0 != nullptr ? 2 : 1));
  for_each_chunk(f.batch, f.per_sample, [&](int64_t b, int64_t j0, int64_t j1) { fn(f, b, j0, j1, stream); });
}

void q_sample(const diff::QSampleArgs& a) {
  const diffloops::QSampleFn fn = q_sample_fn(a.dtype);
  const diff::QSampleArgs f = flattened(a, uniform(a.abar, a.batch));
  if (f.batch > 1 && f.per_sample < kSmallSample) {  // many small samples, each its own ᾱ
    const diffloops::QSampleSamplesFn run = q_sample_samples_fn(a.dtype);
    at::parallel_for(0, f.batch, std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, f.per_sample)),
                     [&](int64_t b0, int64_t b1) { run(f, b0, b1); });
    return;
  }
  const bool stream = streaming::worth_it(output_bytes(a, 1));
  for_each_chunk(f.batch, f.per_sample, [&](int64_t b, int64_t j0, int64_t j1) { fn(f, b, j0, j1, stream); });
}

}  // namespace cpu
}  // namespace kx
