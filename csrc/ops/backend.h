// The CPU backend switch (ops/backend.cpp), for the Python module.
#pragma once
#include <string>

namespace kx {
namespace ops {

bool simt_available();
// "cpu" or "simt"; std::invalid_argument for anything else or a build without the emulator.
void set_cpu_backend(const std::string& name);
std::string cpu_backend();

}  // namespace ops
}  // namespace kx
