// The one way the launchers start a kernel, for nvcc and for the SIMT emulator alike:
//
//   KX_LAUNCH(grid, block, dynamic_smem, stream, kernel<T, ...>)(args...);
//
// nvcc: kernel<<<grid, block, dynamic_smem, stream>>>(args...). Emulator: the scheduler runs the
// grid on the CPU, checking the hardware's launch limits first. Either way the value is the
// launch's error state (cudaPeekAtLastError: not cleared, so the launcher's last_error() still
// reports it). The kernel comes last so template arguments may contain commas; its text and the
// file name identify it in the emulator's messages and launch counts.
#pragma once
#include <cuda_runtime.h>

#include <tuple>
#include <utility>

#if defined(KX_SIMT)
#include "simt/scheduler.h"
#endif

namespace kx {
namespace cuda {

template <typename... P> struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  const char* name;
  const char* file;

#if defined(KX_SIMT)
  struct Payload {
    void (*kernel)(P...);
    std::tuple<P...> args;
  };
  static void run(const void* p) {
    const Payload& pl = *static_cast<const Payload*>(p);
    std::apply(pl.kernel, pl.args);  // every thread gets its own copy of the by-value parameters
  }
  template <typename... A> int operator()(A&&... args) const {
    const Payload pl{kernel, std::tuple<P...>(std::forward<A>(args)...)};
    simt::LaunchSpec spec{reinterpret_cast<const void*>(kernel), name, file, grid, block, smem, &run, &pl};
    return simt::launch(spec);
  }
#else
  template <typename... A> int operator()(A&&... args) const {
    kernel<<<grid, block, smem, stream>>>(std::forward<A>(args)...);
    return static_cast<int>(cudaPeekAtLastError());
  }
#endif
};

template <typename... P>
Launch<P...> make_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                         const char* name, const char* file) {
  return Launch<P...>{kernel, grid, block, smem, stream, name, file};
}

}  // namespace cuda
}  // namespace kx

#define KX_LAUNCH(GRID, BLOCK, SMEM, STREAM, ...) \
  ::kx::cuda::make_launch(__VA_ARGS__, GRID, BLOCK, SMEM, STREAM, #__VA_ARGS__, __FILE__)
