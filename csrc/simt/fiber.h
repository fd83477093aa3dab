// Fibers for the SIMT emulator: one per CUDA thread of the block being run. A fiber runs until it
// reaches a barrier, a warp collective or its end, then switches back to the block's scheduler.
// On x86-64 the switch is a few instructions of our own (callee-saved registers and the stack
// pointer); elsewhere ucontext, ~20x slower but portable.
#pragma once
#include <cstddef>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace kx {
namespace simt {

using FiberEntry = void (*)(void* arg);

// A stack of its own for one fiber, with an inaccessible guard page below it (a kernel that
// overflows its stack faults instead of corrupting the next fiber's).
class FiberStack {
 public:
  explicit FiberStack(size_t bytes);
  ~FiberStack();
  FiberStack(const FiberStack&) = delete;
  FiberStack& operator=(const FiberStack&) = delete;
  char* top() const { return base_ + bytes_; }
  char* bottom() const { return base_; }

 private:
  char* map_ = nullptr;
  char* base_ = nullptr;
  size_t bytes_ = 0, mapped_ = 0;
};

// The saved state of a suspended execution context (a fiber or the scheduler).
struct Context {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

// Prepare `ctx` to start entry(arg) on `stack` at its next switch_to.
void make_context(Context& ctx, FiberStack& stack, FiberEntry entry, void* arg);

// Save the running context into `from` and resume `to`.
void switch_context(Context& from, Context& to);

}  // namespace simt
}  // namespace kx
