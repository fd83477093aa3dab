// Kernels with one deliberate bug each (and a correct twin for some), for tests/test_simt.py:
// each bug is one the emulator must catch, by an error or by a result that changes with the
// thread schedule or carries the poison of unwritten memory.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace kx {
namespace simt {

std::vector<std::string> planted_bug_names();
// Runs kernel `name`, writing up to n floats at address `out` (host memory); returns "" or the
// error the emulator reported for the launch.
std::string run_planted_bug(const std::string& name, uintptr_t out, int64_t n);

}  // namespace simt
}  // namespace kx
