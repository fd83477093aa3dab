// The Python module kexue._C: loading it registers the operators (static initialisers in this
// library); build_info() says how it was built.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sstream>
#include <string>

#include <vector>

#include "cpu/diffusion_loops.h"
#include "cpu/isa.h"

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
  m.def("_philox_normals", &philox_normals, py::arg("seed"), py::arg("offset"), py::arg("n"),
        "The first n standard normals of the diffusion kernels' Philox noise for (seed, offset).");
}
