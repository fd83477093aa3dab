// The size above which the CPU kernels stream their outputs (cpu/streaming.h).
#include "cpu/streaming.h"

#include <atomic>

namespace kx {
namespace cpu {
namespace streaming {
namespace {
// Three 32 MiB streams exceed the last-level cache share of a thread on the machines measured;
// below that the plain stores were as fast or faster (cpu/streaming.h).
std::atomic<int64_t> min_bytes{int64_t(32) << 20};
}  // namespace

bool worth_it(int64_t output_bytes) { return output_bytes >= min_bytes.load(std::memory_order_relaxed); }

int64_t set_min_bytes(int64_t bytes) { return min_bytes.exchange(bytes); }

}  // namespace streaming
}  // namespace cpu
}  // namespace kx
