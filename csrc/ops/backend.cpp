// The CPU backend switch: which kernels serve CPU tensors. "cpu" runs the CPU kernels; "simt"
// (builds with the SIMT emulator) runs the CUDA kernels on the emulator through the glue's CUDA
// path. While "simt" is selected every CPU allocation is poisoned (0xFF bytes: NaN in every
// floating type), so a kernel that reads output or scratch memory it never wrote fails its test:
// the emulator's initcheck.
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>

#include "ops/backend.h"
#include "ops/common.h"

namespace kx {
namespace ops {
namespace {

std::atomic<bool> g_simt{false};

class PoisonAllocator final : public c10::Allocator {
 public:
  explicit PoisonAllocator(c10::Allocator* base) : base_(base) {}
  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr p = base_->allocate(n);
    if (n) std::memset(p.get(), 0xFF, n);
    return p;
  }
  c10::DeleterFnPtr raw_deleter() const override { return base_->raw_deleter(); }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    base_->copy_data(dest, src, count);
  }
  c10::Allocator* base() const { return base_; }

 private:
  c10::Allocator* base_;
};

std::mutex g_mutex;
PoisonAllocator* g_poison = nullptr;  // installed while the emulator is the backend

}  // namespace

bool simt_backend() { return g_simt.load(std::memory_order_relaxed); }

bool simt_available() {
#ifdef KEXUE_WITH_SIMT
  return true;
#else
  return false;
#endif
}

void set_cpu_backend(const std::string& name) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (name == "cpu") {
    if (g_poison) {
      c10::SetCPUAllocator(g_poison->base());
      // Tensors allocated meanwhile free through the base allocator's deleter: the wrapper owns
      // nothing, and is kept (leaked) in case one of them still refers to it.
      g_poison = nullptr;
    }
    g_simt = false;
    return;
  }
  if (name == "simt") {
    if (!simt_available())
      throw std::invalid_argument(
          "this kexue build has no SIMT emulator: rebuild with the CUDA headers present (KEXUE_SIMT=ON)");
    if (!g_poison) {
      g_poison = new PoisonAllocator(c10::GetCPUAllocator());
      c10::SetCPUAllocator(g_poison);
    }
    g_simt = true;
    return;
  }
  throw std::invalid_argument("unknown CPU backend '" + name + "'; expected 'cpu' or 'simt'");
}

std::string cpu_backend() { return simt_backend() ? "simt" : "cpu"; }

}  // namespace ops
}  // namespace kx
