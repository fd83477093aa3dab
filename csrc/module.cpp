// The Python module kexue._C: loading it registers the operators (static initialisers in this
// library); build_info() says how it was built.
#include <pybind11/pybind11.h>

#include <sstream>
#include <string>

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
  return d;
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "kexue compiled operators";
  m.def("build_info", &build_info,
        "Version, the torch version this library was built against, whether CUDA kernels are "
        "compiled in, and their CUDA architectures.");
}
