// The SIMT emulator's execution model: a launch runs every block of the grid (blocks spread over
// worker threads); inside a block every CUDA thread is a fiber, and the block's scheduler runs
// them in rounds: each runnable fiber runs until it reaches __syncthreads, a warp collective or
// its end. The order of the fibers within a round is the schedule (forward, reverse or a seeded
// shuffle): a kernel whose result depends on it has a race.
//
// The hardware's rules are errors here, reported through the launch's return value and
// cudaGetLastError: launch limits, a barrier that not every thread reaches, a warp collective
// whose mask names a lane that does not take part, out-of-range writes around dynamic shared
// memory, fragments that differ between the lanes of a warp. Torch-free.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "simt/fiber.h"

namespace kx {
namespace simt {

enum class Schedule { Forward, Reverse, Shuffle };

struct Config {
  Schedule schedule = Schedule::Forward;
  uint64_t seed = 0;
  int workers = 0;  // OS threads running blocks; 0 = one per core
  // The largest grid.y and grid.z the emulated device accepts (and reports): 65535 like every GPU;
  // tests lower it to exercise, on small problems, the kernels' striding beyond the limit.
  unsigned max_grid_yz = 65535;
};
void set_config(const Config& c);
Config config();

// What a launch runs: `body(payload)` executes the kernel for the calling CUDA thread.
struct LaunchSpec {
  const void* kernel;  // identity of the kernel (its function pointer), for attributes
  const char* name;    // the kernel expression as written at the launch site
  const char* file;    // the source file of the launch site
  dim3 grid, block;
  size_t dynamic_smem;
  void (*body)(const void* payload);
  const void* payload;
};

// Runs the whole grid before returning; the result is a cudaError_t value (0: success).
int launch(const LaunchSpec& spec);

// Kernels launched so far, "file.cu:kernel" -> launches (the template arguments dropped).
std::vector<std::pair<std::string, int64_t>> launched_kernels();

// cudaFuncAttributeMaxDynamicSharedMemorySize per kernel.
int set_max_dynamic_smem(const void* kernel, int bytes);

// ---- device properties reported by the emulator: an H200 -----------------------------------
constexpr int kComputeMajor = 9, kComputeMinor = 0, kSmCount = 132;
constexpr int kSmemPerBlockDefault = 48 * 1024;
constexpr int kSmemPerBlockOptin = 227 * 1024;
constexpr int kSmemPerSm = 228 * 1024;
constexpr int kRegsPerSm = 64 * 1024;
constexpr int kMaxThreadsPerBlock = 1024;

// ---- what the kernels see ---------------------------------------------------------------------

enum class State : uint8_t { Runnable, Barrier, Warp, Exited };

struct PendingCopy {  // one cp.async, performed at the wait that covers its group
  void* dst;
  const void* src;
  int bytes, src_bytes;
  int64_t group;  // -1 until committed
};

struct Thread {
  uint3 idx;
  int linear, lane, warp;
  State state;
  // the warp collective this thread waits at
  const char* op;
  unsigned mask;
  void* record;
  std::vector<PendingCopy> copies;
  int64_t next_group;
  // spin detection: atomics and fences in a row that neither wrote memory nor saw a new value
  uint64_t spins;
  const void* seen_addr;
  uint64_t seen_value;
  Context ctx;
};

struct Block;
using CompleteFn = void (*)(Thread* const* lanes, unsigned mask);

struct StaticShared {  // one static __shared__ variable of the running block
  const void* tag;
  unsigned char* guard;  // guard bytes from here up to data (the gap left by alignment included)
  unsigned char* data;
  size_t bytes;
};

struct Block {
  uint3 block_idx;
  dim3 block_dim, grid_dim;
  int n_threads, n_warps;
  Thread* threads;
  unsigned char* dynamic_smem;
  size_t dynamic_bytes;
  unsigned char* static_arena;  // static __shared__ variables, carved on first use in the block
  size_t static_capacity, static_used, static_bytes;
  std::vector<StaticShared> statics;
  int dynamic_attribute;  // the kernel's cudaFuncAttributeMaxDynamicSharedMemorySize, -1 if never set
  int at_barrier, exited;
  std::vector<unsigned> warp_waiting;  // per warp: lanes waiting at a collective
  std::vector<unsigned> warp_exited;   // per warp: lanes that have returned
  std::vector<int> ready;              // threads made runnable since the round began
  bool failed;
  std::string error;
  Context scheduler;
  const LaunchSpec* spec;
};

// Marks a waiting thread runnable in the next round.
inline void make_runnable(Block* b, Thread* t) {
  t->state = State::Runnable;
  b->ready.push_back(t->linear);
}

extern thread_local Thread* tl_thread;
extern thread_local Block* tl_block;

inline Thread* current_thread() { return tl_thread; }
inline Block* current_block() { return tl_block; }

// __syncthreads.
void sync_block();
// A warp collective named `op` over the lanes of `mask`: the calling lane posts `record` and
// waits; when every lane of the mask has arrived at the same op with the same mask, the last one
// runs complete(lanes, mask) (lanes[l]: lane l's Thread, its record in ->record).
void warp_collective(const char* op, unsigned mask, void* record, CompleteFn complete);
// Ends the block with an error naming the kernel, the block and the thread. Never returns.
[[noreturn]] void fail(const std::string& message);

// The calling block's dynamic shared memory (poisoned with 0xFF at block start, guarded).
void* dynamic_shared_memory();
// The calling block's copy of the static __shared__ variable identified by `tag`: poisoned and
// guarded like dynamic shared memory, fresh in every block, counted against the limits.
void* static_shared(const void* tag, size_t bytes, size_t align);
// Whether [p, p + bytes) lies inside the calling block's shared memory (dynamic or static).
bool in_shared(const void* p, size_t bytes);
// Points where a spinning thread lets the others run: the hardware schedules warps independently,
// so a kernel may wait for another thread's write. After an atomic at `addr` that returned
// `observed` and wrote memory or not (`wrote`), and after a fence. A thread that makes a million
// such turns in a row without writing or seeing a new value is an error, not a hang. (A spin on a
// plain volatile load has no such point and would hang: kernels wait through atomics.)
void atomic_point(const void* addr, uint64_t observed, bool wrote);
void fence_point();
// A vector access of `bytes` at p must be aligned to `bytes` (the hardware faults otherwise).
void check_aligned(const void* p, size_t bytes, const char* what);

// cp.async: queue a copy; commit closes the current group; wait performs every committed group
// except the newest `pending` ones (pending < 0: every copy, committed or not, as at thread exit).
// Copies land only at the wait, so a kernel that reads its tile before waiting reads poison.
void cp_async(void* dst, const void* src, int bytes, int src_bytes);
void cp_async_commit();
void cp_async_wait(int pending);

}  // namespace simt
}  // namespace kx
