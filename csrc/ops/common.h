// Torch-side helpers shared by every op's glue: argument checks, dtype mapping, device routing.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "kexue/common.h"

// The CUDA launchers serve CUDA tensors, and in a build with the SIMT emulator (KEXUE_WITH_SIMT,
// never together with real CUDA kernels) CPU tensors while the emulator is the CPU backend: the
// same checks, workspace sizes and launch-error path as on a GPU.
#if defined(KEXUE_WITH_CUDA) || defined(KEXUE_WITH_SIMT)
#define KX_GPU_LAUNCHERS 1
#include "cuda/kernels.h"
#endif
#ifdef KEXUE_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
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

// Every op's outputs are contiguous, whatever the inputs' layout; the fake kernels promise the same.
inline at::Tensor empty_output(const at::Tensor& like) { return at::empty(like.sizes(), like.options()); }
inline at::Tensor zeros_output(const at::Tensor& like) { return at::zeros(like.sizes(), like.options()); }

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

// Which kernels run for CPU tensors: "cpu" (the CPU kernels) or "simt" (the CUDA kernels on the
// emulator, in builds that have it). Set through kexue._C.set_cpu_backend.
bool simt_backend();

// Whether a call on tensors like `t` goes to the CUDA launchers.
inline bool gpu_launchers(const at::Tensor& t) {
#if defined(KEXUE_WITH_CUDA)
  return t.is_cuda();
#elif defined(KEXUE_WITH_SIMT)
  return t.is_cpu() && simt_backend();
#else
  (void)t;
  return false;
#endif
}

#ifdef KX_GPU_LAUNCHERS
// The device context of a launch: the tensor's CUDA device and its current stream; for the
// emulator, which runs every launch to completion on the calling thread, nothing.
class LaunchScope {
 public:
#ifdef KEXUE_WITH_CUDA
  explicit LaunchScope(const at::Tensor& t)
      : guard_(t.device()), stream_(c10::cuda::getCurrentCUDAStream(t.device().index()).stream()) {}
#else
  explicit LaunchScope(const at::Tensor&) {}
#endif
  void* stream() const { return stream_; }

 private:
#ifdef KEXUE_WITH_CUDA
  c10::cuda::CUDAGuard guard_;
#endif
  void* stream_ = nullptr;
};

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
