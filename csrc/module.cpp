// The Python module kexue._C: loading it registers the operators (static initialisers in this
// library); build_info() says how it was built.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sstream>
#include <string>

#include <vector>

#include "cpu/diffusion_loops.h"
#include "cpu/isa.h"
#include "cpu/streaming.h"
#include "ops/backend.h"

#if defined(KEXUE_WITH_CUDA) || defined(KEXUE_WITH_SIMT)
#include "cuda/kernels.h"
#include "cuda/ptx_probe.h"
#endif
#ifdef KEXUE_WITH_SIMT
#include "simt/planted_bugs.h"
#include "simt/scheduler.h"
#endif

namespace py = pybind11;

namespace {
py::dict build_info() {
  py::dict d;
  d["version"] = KEXUE_VERSION;
  d["torch_version"] = KEXUE_TORCH_VERSION;
#ifdef KEXUE_WITH_CUDA
  d["cuda"] = true;
#else
  d["cuda"] = false;
#endif
  py::list archs;
  std::stringstream ss(KEXUE_CUDA_ARCHS);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) archs.append(item);
  d["cuda_archs"] = archs;
  d["cpu_isa"] = kx::cpu::isa_name(kx::cpu::active_isa());
  d["simt"] = kx::ops::simt_available();
  return d;
}

using kx::cpu::Isa;
constexpr Isa kIsas[] = {Isa::Base, Isa::Avx2, Isa::Avx512};

py::list cpu_isas() {
  py::list out;
  for (Isa isa : kIsas)
    if (kx::cpu::isa_available(isa)) out.append(kx::cpu::isa_name(isa));
  return out;
}

void set_cpu_isa(const std::string& name) {
  for (Isa isa : kIsas) {
    if (name == kx::cpu::isa_name(isa)) {
      if (!kx::cpu::set_isa(isa))
        throw py::value_error("CPU instruction set '" + name + "' is not supported on this machine");
      return;
    }
  }
  throw py::value_error("unknown CPU instruction set '" + name + "'; expected base, avx2 or avx512");
}

// The first n normals of the in-kernel noise keyed (seed, offset): lets the tests hold the C++
// Philox stream against the numpy reference in kexue/ops/diffusion.py.
std::vector<float> philox_normals(uint64_t seed, uint64_t offset, int64_t n) {
  if (n < 0) throw py::value_error("n must be >= 0");
  std::vector<float> out(static_cast<size_t>((n + 3) / 4 * 4));
  kx::cpu::diffloops::fill_normals(out.data(), 0, n, seed, offset);
  out.resize(static_cast<size_t>(n));
  return out;
}
void set_cpu_backend(const std::string& name) {
  try {
    kx::ops::set_cpu_backend(name);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

#if defined(KEXUE_WITH_CUDA) || defined(KEXUE_WITH_SIMT)
// Runs the PTX probe kernel (csrc/cuda/ptx_probe.cu) on buffers given by address; the caller owns
// them (CUDA memory on a CUDA build, host memory for the emulator) and synchronises.
std::string ptx_probe(uintptr_t a, uintptr_t bt, uintptr_t c, uintptr_t out) {
  const int err = kx::cuda::ptx_probe(reinterpret_cast<const void*>(a), reinterpret_cast<const void*>(bt),
                                      reinterpret_cast<const float*>(c), reinterpret_cast<uint32_t*>(out));
  return err ? kx::cuda::error_string(err) : "";
}
#endif

#ifdef KEXUE_WITH_SIMT
void simt_configure(const std::string& schedule, uint64_t seed, int workers, unsigned max_grid_yz) {
  kx::simt::Config c;
  if (schedule == "forward") c.schedule = kx::simt::Schedule::Forward;
  else if (schedule == "reverse") c.schedule = kx::simt::Schedule::Reverse;
  else if (schedule == "shuffle") c.schedule = kx::simt::Schedule::Shuffle;
  else throw py::value_error("schedule must be 'forward', 'reverse' or 'shuffle', got '" + schedule + "'");
  if (workers < 0) throw py::value_error("workers must be >= 0 (0: one per core)");
  if (max_grid_yz < 1 || max_grid_yz > 65535) throw py::value_error("max_grid_yz must be in [1, 65535]");
  c.seed = seed;
  c.workers = workers;
  c.max_grid_yz = max_grid_yz;
  kx::simt::set_config(c);
}

py::dict simt_config() {
  const kx::simt::Config c = kx::simt::config();
  py::dict d;
  d["schedule"] = c.schedule == kx::simt::Schedule::Forward   ? "forward"
                  : c.schedule == kx::simt::Schedule::Reverse ? "reverse"
                                                              : "shuffle";
  d["seed"] = c.seed;
  d["workers"] = c.workers;
  d["max_grid_yz"] = c.max_grid_yz;
  return d;
}

// What the emulated device reports through the CUDA runtime calls the launchers make.
py::dict simt_device() {
  cudaDeviceProp p;
  cudaGetDeviceProperties(&p, 0);
  int optin = 0;
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
  py::dict d;
  d["name"] = std::string(p.name);
  d["compute_capability"] = py::make_tuple(p.major, p.minor);
  d["multiprocessors"] = p.multiProcessorCount;
  d["shared_memory_per_block"] = p.sharedMemPerBlock;
  d["shared_memory_per_block_optin"] = optin;
  d["registers_per_multiprocessor"] = p.regsPerMultiprocessor;
  d["max_threads_per_block"] = p.maxThreadsPerBlock;
  d["max_grid"] = py::make_tuple(p.maxGridSize[0], p.maxGridSize[1], p.maxGridSize[2]);
  return d;
}

py::dict simt_launched() {
  py::dict d;
  for (const auto& kv : kx::simt::launched_kernels()) d[py::str(kv.first)] = kv.second;
  return d;
}
#endif
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "kexue compiled operators";
  m.def("build_info", &build_info,
        "Version, the torch version this library was built against, whether CUDA kernels are "
        "compiled in, their CUDA architectures, and the CPU instruction set in use.");
  m.def("cpu_isas", &cpu_isas, "CPU instruction sets this build and this CPU can run.");
  m.def("set_cpu_isa", &set_cpu_isa,
        "Run the CPU kernels with this instruction set (base, avx2, avx512); for tests and "
        "benchmarks. The environment variable KEXUE_CPU_ISA sets it at start-up.");
  m.def(
      "_set_cpu_stream_min_bytes",
      [](int64_t bytes) {
        if (bytes < 0) throw py::value_error("bytes must be >= 0");
        return kx::cpu::streaming::set_min_bytes(bytes);
      },
      py::arg("bytes"),
      "Outputs of at least this many bytes are written with non-temporal stores by the CPU kernels "
      "that stream (diffusion steps, q_sample, the dynamic-routing backward). Returns the previous value.");
  m.def("_streaming_copy_errors", &kx::cpu::streaming::active_copy_errors,
        "Bytes that the streaming copy of the CPU instruction set in use gets wrong over every "
        "destination offset and length up to a few lines (0 when it is right). For tests.");
  m.def("set_cpu_backend", &set_cpu_backend, py::arg("name"),
        "Which kernels serve CPU tensors: 'cpu' (the CPU kernels) or 'simt' (the CUDA kernels on the SIMT "
        "emulator, in builds that have it; CPU allocations are then poisoned with NaN). For tests.");
  m.def("cpu_backend", &kx::ops::cpu_backend, "The current CPU backend: 'cpu' or 'simt'.");
#if defined(KEXUE_WITH_CUDA) || defined(KEXUE_WITH_SIMT)
  m.def("_ptx_probe", &ptx_probe, py::arg("a"), py::arg("bt"), py::arg("c"), py::arg("out"),
        "Run the PTX fragment probe kernel on buffers given by address; returns '' or the launch error.");
#endif
#ifdef KEXUE_WITH_SIMT
  m.def("simt_configure", &simt_configure, py::arg("schedule") = "forward", py::arg("seed") = 0,
        py::arg("workers") = 0, py::arg("max_grid_yz") = 65535,
        "The emulator's thread schedule within a block ('forward', 'reverse', 'shuffle' with a seed), its "
        "number of worker threads (0: one per core), and the grid.y/grid.z limit of the device it reports "
        "(65535 like every GPU; lower it to test kernels that stride beyond the limit on small problems).");
  m.def("simt_config", &simt_config, "The emulator's current schedule, seed, workers and grid.y/z limit.");
  m.def("simt_device", &simt_device, "The device the emulator reports to the launchers (an H200).");
  m.def("simt_launched_kernels", &simt_launched,
        "Kernels the emulator has launched in this process: {'file.cu:kernel': launches}.");
  m.def("_simt_planted_bug", &kx::simt::run_planted_bug, py::arg("name"), py::arg("out"), py::arg("n"),
        "Run one of the emulator's planted-bug kernels (csrc/simt/planted_bugs.cu) writing n floats at address "
        "out; returns '' or the error the emulator reported.");
  m.def("_simt_planted_bugs", &kx::simt::planted_bug_names, "Names of the planted-bug kernels.");
#endif
  m.def("_philox_normals", &philox_normals, py::arg("seed"), py::arg("offset"), py::arg("n"),
        "The first n standard normals of the diffusion kernels' Philox noise for (seed, offset).");
}
