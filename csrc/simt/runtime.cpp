// The few CUDA runtime functions the launchers call, implemented by the emulator with the
// runtime's own signatures (no libcudart is linked): error state, kernel attributes, and the
// properties of the device it stands for, an H200.
#include <cuda_runtime.h>

#include <cstring>
#include <mutex>
#include <string>
#include <deque>

#include "simt/errors.h"
#include "simt/scheduler.h"

namespace kx {
namespace simt {
namespace {

struct ErrorState {
  int pending = 0;
  int last_code = 0;
  std::string last_message;
};
thread_local ErrorState t_errors;

}  // namespace

void record_error(int code, const std::string& message) {
  if (t_errors.pending) return;
  t_errors.pending = code;
  t_errors.last_code = code;
  t_errors.last_message = message;
}
int peek_error() { return t_errors.pending; }
int take_error() {
  const int e = t_errors.pending;
  t_errors.pending = 0;
  return e;
}
const char* error_message(int code) {
  if (code == 0 || code != t_errors.last_code) return nullptr;
  // CUDA's strings live forever; these live for the next 1024 errors (callers copy them at once).
  static std::mutex m;
  static std::deque<std::string>* kept = new std::deque<std::string>();
  std::lock_guard<std::mutex> lock(m);
  if (kept->empty() || kept->back() != t_errors.last_message) kept->push_back(t_errors.last_message);
  if (kept->size() > 1024) kept->pop_front();
  return kept->back().c_str();
}

}  // namespace simt
}  // namespace kx

using kx::simt::error_message;

extern "C" {

cudaError_t cudaGetLastError(void) { return static_cast<cudaError_t>(kx::simt::take_error()); }

cudaError_t cudaPeekAtLastError(void) { return static_cast<cudaError_t>(kx::simt::peek_error()); }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t error) {
  if (const char* m = error_message(static_cast<int>(error))) return m;
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    default: return "unknown error";
  }
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* prop, int device) {
  using namespace kx::simt;
  if (device != 0) return cudaErrorInvalidDevice;
  std::memset(prop, 0, sizeof *prop);
  std::strncpy(prop->name, "NVIDIA H200 (kexue SIMT emulator)", sizeof prop->name - 1);
  prop->totalGlobalMem = size_t(141) << 30;
  prop->sharedMemPerBlock = kSmemPerBlockDefault;
  prop->sharedMemPerBlockOptin = kSmemPerBlockOptin;
  prop->sharedMemPerMultiprocessor = kSmemPerSm;
  prop->regsPerBlock = kRegsPerSm;
  prop->regsPerMultiprocessor = kRegsPerSm;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = kMaxThreadsPerBlock;
  prop->maxThreadsPerMultiProcessor = 2048;
  prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 2147483647;
  prop->maxGridSize[1] = prop->maxGridSize[2] = static_cast<int>(config().max_grid_yz);
  prop->major = kComputeMajor;
  prop->minor = kComputeMinor;
  prop->multiProcessorCount = kSmCount;
  prop->maxBlocksPerMultiProcessor = 32;
  prop->totalConstMem = 64 * 1024;
  prop->l2CacheSize = 50 * 1024 * 1024;
  prop->memoryBusWidth = 6144;
  prop->reservedSharedMemPerBlock = 1024;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize)
    return static_cast<cudaError_t>(kx::simt::set_max_dynamic_smem(func, value));
  return cudaSuccess;  // carveout preferences and the like change nothing the emulator models
}

cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  using namespace kx::simt;
  if (device != 0) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: *value = kComputeMajor; break;
    case cudaDevAttrComputeCapabilityMinor: *value = kComputeMinor; break;
    case cudaDevAttrMultiProcessorCount: *value = kSmCount; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = kSmemPerBlockDefault; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = kSmemPerBlockOptin; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = kSmemPerSm; break;
    case cudaDevAttrMaxRegistersPerMultiprocessor: *value = kRegsPerSm; break;
    case cudaDevAttrMaxRegistersPerBlock: *value = kRegsPerSm; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = kMaxThreadsPerBlock; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 2048; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMaxBlockDimX: *value = 1024; break;
    case cudaDevAttrMaxBlockDimY: *value = 1024; break;
    case cudaDevAttrMaxBlockDimZ: *value = 64; break;
    case cudaDevAttrMaxGridDimX: *value = 2147483647; break;
    case cudaDevAttrMaxGridDimY: *value = static_cast<int>(config().max_grid_yz); break;
    case cudaDevAttrMaxGridDimZ: *value = static_cast<int>(config().max_grid_yz); break;
    default: *value = 0; return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

}  // extern "C"
