#include "simt/fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <new>
#include <stdexcept>

namespace kx {
namespace simt {

FiberStack::FiberStack(size_t bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  bytes_ = (bytes + page - 1) / page * page;
  mapped_ = bytes_ + page;
  // Reserved, not committed: only the pages a kernel touches become resident.
  void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  map_ = static_cast<char*>(p);
  base_ = map_ + page;
  // Guard page at the low end (stacks grow down). Without it an overflow would silently corrupt
  // the next fiber's stack, so a failure here (the process's map count exhausted) is an error.
  if (mprotect(map_, page, PROT_NONE) != 0) {
    munmap(map_, mapped_);
    map_ = nullptr;
    throw std::runtime_error("SIMT emulator: cannot protect a fiber stack's guard page (too many memory mappings?)");
  }
}

FiberStack::~FiberStack() {
  if (map_) munmap(map_, mapped_);
}

#if defined(__x86_64__)

// kx_simt_switch(void** save_sp, void* load_sp): push the System V callee-saved registers, swap
// stack pointers, pop the other context's registers and return into it. MXCSR and the x87
// control word are not switched: no kernel changes rounding modes.
// kx_simt_start: the first return of a new fiber lands here with entry in r13 and arg in r12.
asm(R"(
  .text
  .p2align 4
  .globl kx_simt_switch
  .hidden kx_simt_switch
  .type kx_simt_switch,@function
kx_simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size kx_simt_switch, .-kx_simt_switch

  .p2align 4
  .globl kx_simt_start
  .hidden kx_simt_start
  .type kx_simt_start,@function
kx_simt_start:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size kx_simt_start, .-kx_simt_start
)");

extern "C" void kx_simt_switch(void** save_sp, void* load_sp);
extern "C" void kx_simt_start();

void make_context(Context& ctx, FiberStack& stack, FiberEntry entry, void* arg) {
  // The frame kx_simt_switch pops: r15, r14, r13, r12, rbx, rbp, return address. After the
  // return, rsp = top - 16 (16-byte aligned), so the call in kx_simt_start enters `entry` with
  // the alignment the ABI promises.
  uintptr_t top = reinterpret_cast<uintptr_t>(stack.top()) & ~uintptr_t(15);
  void** frame = reinterpret_cast<void**>(top - 72);
  frame[0] = nullptr;                                   // r15
  frame[1] = nullptr;                                   // r14
  frame[2] = reinterpret_cast<void*>(entry);            // r13
  frame[3] = arg;                                       // r12
  frame[4] = nullptr;                                   // rbx
  frame[5] = nullptr;                                   // rbp
  frame[6] = reinterpret_cast<void*>(&kx_simt_start);   // return address
  ctx.sp = frame;
}

void switch_context(Context& from, Context& to) { kx_simt_switch(&from.sp, to.sp); }

#else

namespace {
struct Start {
  FiberEntry entry;
  void* arg;
};
void trampoline(unsigned hi, unsigned lo) {
  const uintptr_t p = (static_cast<uintptr_t>(hi) << 32) | lo;
  Start* s = reinterpret_cast<Start*>(p);
  s->entry(s->arg);
  std::abort();  // entries never return: they switch away for good
}
}  // namespace

void make_context(Context& ctx, FiberStack& stack, FiberEntry entry, void* arg) {
  getcontext(&ctx.uc);
  // The start record lives at the top of the fiber's own stack.
  char* top = stack.top() - 64;
  Start* s = reinterpret_cast<Start*>(top);
  s->entry = entry;
  s->arg = arg;
  ctx.uc.uc_stack.ss_sp = stack.bottom();
  ctx.uc.uc_stack.ss_size = static_cast<size_t>(top - stack.bottom());
  ctx.uc.uc_link = nullptr;
  const uintptr_t p = reinterpret_cast<uintptr_t>(s);
  makecontext(&ctx.uc, reinterpret_cast<void (*)()>(&trampoline), 2, static_cast<unsigned>(p >> 32),
              static_cast<unsigned>(p & 0xffffffffu));
}

void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

#endif

}  // namespace simt
}  // namespace kx
