#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>
#include <initializer_list>

namespace kx {
namespace cpu {
namespace {

bool cpu_supports(Isa isa) {
#if defined(__x86_64__) && defined(KEXUE_CPU_MULTI_ISA)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::Base: return true;
    case Isa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
  return false;
#else
  return isa == Isa::Base;
#endif
}

Isa initial_isa() {
  Isa best = Isa::Base;
  for (Isa isa : {Isa::Avx2, Isa::Avx512})
    if (cpu_supports(isa)) best = isa;
  if (const char* env = std::getenv("KEXUE_CPU_ISA")) {
    for (Isa isa : {Isa::Base, Isa::Avx2, Isa::Avx512})
      if (std::strcmp(env, isa_name(isa)) == 0 && static_cast<int>(isa) <= static_cast<int>(best))
        best = isa;
  }
  return best;
}

Isa& current() {
  static Isa isa = initial_isa();
  return isa;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    default: return "base";
  }
}

bool isa_available(Isa isa) { return cpu_supports(isa); }

Isa active_isa() { return current(); }

bool set_isa(Isa isa) {
  if (!cpu_supports(isa)) return false;
  current() = isa;
  return true;
}

}  // namespace cpu
}  // namespace kx
