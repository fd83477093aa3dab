// Torch-side helpers shared by every op's glue: argument checks, dtype mapping, device routing.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "kexue/common.h"

#ifdef KEXUE_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/kernels.h"
#endif

namespace kx {
namespace ops {

inline DType kx_dtype(const at::Tensor& t, const char* op, const char* arg) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::F32;
    case at::kDouble: return DType::F64;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    default:
      TORCH_CHECK(false, op, ": ", arg, " must be float32, float64, float16 or bfloat16, got ",
                  t.scalar_type());
  }
  return DType::F32;
}

// fp32 for half inputs, otherwise the input's own type.
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_like(const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                       const char* op, const char* arg, bool same_dtype = true) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", arg, " must be on ", ref.device(),
              " like ", ref_name, ", got ", t.device());
  TORCH_CHECK(!same_dtype || t.scalar_type() == ref.scalar_type(), op, ": ", arg,
              " must have dtype ", ref.scalar_type(), " like ", ref_name, ", got ",
              t.scalar_type());
}

inline void check_device_supported(const at::Tensor& t, const char* op) {
#ifdef KEXUE_WITH_CUDA
  TORCH_CHECK(t.is_cpu() || t.is_cuda(), op, ": tensors must be on CPU or CUDA, got ",
              t.device());
#else
  TORCH_CHECK(t.is_cpu(), op, ": this kexue build has no CUDA kernels; tensors must be on CPU, got ",
              t.device(), ". Rebuild kexue with a CUDA torch and nvcc to use the GPU.");
#endif
}

#ifdef KEXUE_WITH_CUDA
inline void* stream_of(const at::Tensor& t) {
  return static_cast<void*>(c10::cuda::getCurrentCUDAStream(t.device().index()).stream());
}

// Device scratch for a launcher: `keep` holds the memory until the launch is enqueued (the
// caching allocator keeps it valid for the stream); null when no bytes are needed.
inline void* scratch(at::Tensor& keep, size_t bytes, const at::Tensor& like) {
  if (bytes == 0) return nullptr;
  keep = at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
  return keep.data_ptr();
}

inline void check_cuda_launch(int err, const char* op) {
  TORCH_CHECK(err == 0, op, ": CUDA kernel launch failed: ", cuda::error_string(err));
}
#endif

}  // namespace ops
}  // namespace kx
