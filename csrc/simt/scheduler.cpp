#include "simt/scheduler.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "simt/errors.h"

namespace kx {
namespace simt {

thread_local Thread* tl_thread = nullptr;
thread_local Block* tl_block = nullptr;

namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kGuardBytes = 1024;
constexpr size_t kStaticGuardBytes = 64;  // around each static __shared__ variable
constexpr size_t kStaticArenaBytes = 2 * kSmemPerBlockDefault;  // 48 KB of variables, guards and padding
constexpr uint64_t kMaxSpins = 1'000'000;
constexpr unsigned char kGuardByte = 0xA5;
constexpr unsigned char kPoisonByte = 0xFF;  // NaN in every floating type

std::mutex g_config_mutex;
Config g_config;

std::mutex g_launch_mutex;  // one launch at a time (launches are synchronous anyway)
std::mutex g_registry_mutex;
std::map<std::string, int64_t> g_launched;
std::unordered_map<const void*, int> g_max_dynamic_smem;

std::string dim_text(dim3 d) {
  std::ostringstream s;
  s << "(" << d.x << ", " << d.y << ", " << d.z << ")";
  return s.str();
}

// "file.cu:kernel" from the launch site: the kernel expression without template arguments.
std::string kernel_key(const LaunchSpec& spec) {
  std::string name(spec.name);
  const size_t cut = name.find_first_of("<( ");
  if (cut != std::string::npos) name.resize(cut);
  std::string file(spec.file);
  const size_t slash = file.find_last_of('/');
  if (slash != std::string::npos) file = file.substr(slash + 1);
  return file + ":" + name;
}

std::string where(const Block& b, const Thread* t) {
  std::ostringstream s;
  s << "kernel " << b.spec->name << " (" << kernel_key(*b.spec) << "), block "
    << dim_text(dim3(b.block_idx.x, b.block_idx.y, b.block_idx.z));
  if (t) s << ", thread " << dim_text(dim3(t->idx.x, t->idx.y, t->idx.z)) << " (warp " << t->warp << ", lane " << t->lane << ")";
  return s.str();
}

std::string lanes_text(unsigned mask) {
  std::ostringstream s;
  bool first = true;
  for (int l = 0; l < 32;) {
    if (!(mask >> l & 1u)) {
      ++l;
      continue;
    }
    int e = l;
    while (e + 1 < 32 && (mask >> (e + 1) & 1u)) ++e;
    s << (first ? "" : ",") << l;
    if (e > l) s << "-" << e;
    first = false;
    l = e + 1;
  }
  return s.str();
}

// ---- one worker: the fibers, stacks and shared memory of the block it runs ----------------

class Worker {
 public:
  Worker() : smem_(kSmemPerBlockOptin + 2 * kGuardBytes + 128), static_arena_(kStaticArenaBytes + 128) {}

  // Runs one block; false (with `error`) when it failed.
  bool run_block(const LaunchSpec& spec, uint3 block_idx, uint64_t block_linear, std::string& error);

 private:
  static void fiber_main(void* arg);
  void prepare(const LaunchSpec& spec, uint3 block_idx);
  void order_round(uint64_t block_linear, uint64_t round);
  std::string deadlock_text() const;
  bool guards_intact(std::string& error) const;

  std::vector<std::unique_ptr<FiberStack>> stacks_;
  std::vector<Thread> threads_;
  std::vector<int> order_;
  std::vector<unsigned char> smem_;
  std::vector<unsigned char> static_arena_;
  Block block_{};
  Schedule schedule_ = Schedule::Forward;
  uint64_t seed_ = 0;
};

void Worker::fiber_main(void* arg) {
  Thread* t = static_cast<Thread*>(arg);
  Block* b = tl_block;
  try {
    b->spec->body(b->spec->payload);
  } catch (const std::exception& e) {  // the emulator's own failures (memory), never the kernel's
    fail(std::string("the emulator failed: ") + e.what());
  }
  cp_async_wait(-1);  // every copy still in flight lands before the thread is gone
  // A lane that leaves while its warp waits for it in a collective, or the last thread to
  // arrive (by leaving) at a barrier others wait at: the hardware would hang or misbehave.
  const unsigned waiting = b->warp_waiting[t->warp];
  for (int l = 0; l < 32; ++l) {
    if (!(waiting >> l & 1u)) continue;
    const Thread& o = b->threads[t->warp * 32 + l];
    if (o.mask >> t->lane & 1u)
      fail(std::string("exits while lane ") + std::to_string(l) + " of its warp waits for it in " + o.op +
           " (mask lanes " + lanes_text(o.mask) + ")");
  }
  t->state = State::Exited;
  ++b->exited;
  b->warp_exited[t->warp] |= 1u << t->lane;
  if (b->at_barrier > 0 && b->at_barrier + b->exited == b->n_threads)
    fail("exits while " + std::to_string(b->at_barrier) + " of the block's " + std::to_string(b->n_threads) +
         " threads wait at __syncthreads: a barrier not every thread reaches (divergent code)");
  switch_context(t->ctx, b->scheduler);
}

void Worker::prepare(const LaunchSpec& spec, uint3 block_idx) {
  const Config cfg = config();
  schedule_ = cfg.schedule;
  seed_ = cfg.seed;
  const int n = static_cast<int>(spec.block.x * spec.block.y * spec.block.z);
  while (static_cast<int>(stacks_.size()) < n) stacks_.push_back(std::make_unique<FiberStack>(kStackBytes));
  if (static_cast<int>(threads_.size()) < n) threads_.resize(n);
  Block& b = block_;
  b.block_idx = block_idx;
  b.block_dim = spec.block;
  b.grid_dim = spec.grid;
  b.n_threads = n;
  b.n_warps = (n + 31) / 32;
  b.threads = threads_.data();
  b.at_barrier = 0;
  b.exited = 0;
  b.warp_waiting.assign(b.n_warps, 0u);
  b.warp_exited.assign(b.n_warps, 0u);
  b.ready.clear();
  b.failed = false;
  b.error.clear();
  b.spec = &spec;
  // Dynamic shared memory: 128-byte aligned, poisoned, with guard bytes on both sides.
  uintptr_t base = reinterpret_cast<uintptr_t>(smem_.data()) + kGuardBytes;
  base = (base + 127) & ~uintptr_t(127);
  b.dynamic_smem = reinterpret_cast<unsigned char*>(base);
  b.dynamic_bytes = spec.dynamic_smem;
  std::memset(b.dynamic_smem - kGuardBytes, kGuardByte, kGuardBytes);
  std::memset(b.dynamic_smem, kPoisonByte, b.dynamic_bytes);
  std::memset(b.dynamic_smem + b.dynamic_bytes, kGuardByte, kGuardBytes);
  uintptr_t sbase = (reinterpret_cast<uintptr_t>(static_arena_.data()) + 127) & ~uintptr_t(127);
  b.static_arena = reinterpret_cast<unsigned char*>(sbase);
  b.static_capacity = kStaticArenaBytes;
  b.static_used = 0;
  b.static_bytes = 0;
  b.statics.clear();
  b.dynamic_attribute = -1;
  {
    std::lock_guard<std::mutex> lock(g_registry_mutex);
    auto it = g_max_dynamic_smem.find(spec.kernel);
    if (it != g_max_dynamic_smem.end()) b.dynamic_attribute = it->second;
  }
  const unsigned bx = spec.block.x, by = spec.block.y;
  for (int i = 0; i < n; ++i) {
    Thread& t = threads_[i];
    t.idx = make_uint3(i % bx, (i / bx) % by, i / (bx * by));
    t.linear = i;
    t.lane = i & 31;
    t.warp = i >> 5;
    t.state = State::Runnable;
    t.op = nullptr;
    t.mask = 0;
    t.record = nullptr;
    t.copies.clear();
    t.next_group = 0;
    t.spins = 0;
    t.seen_addr = nullptr;
    t.seen_value = 0;
    make_context(t.ctx, *stacks_[i], &Worker::fiber_main, &t);
    b.ready.push_back(i);
  }
}

void Worker::order_round(uint64_t block_linear, uint64_t round) {
  order_.swap(block_.ready);
  block_.ready.clear();
  std::sort(order_.begin(), order_.end());
  if (schedule_ == Schedule::Reverse) {
    std::reverse(order_.begin(), order_.end());
  } else if (schedule_ == Schedule::Shuffle) {
    // Seeded by (seed, block, round) only: the same permutation whichever worker runs the block.
    std::mt19937_64 rng(seed_ * 0x9E3779B97F4A7C15ull ^ (block_linear + 1) * 0xBF58476D1CE4E5B9ull ^ round);
    for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng() % i]);
  }
}

std::string Worker::deadlock_text() const {
  const Block& b = block_;
  std::ostringstream s;
  s << "no thread can proceed: " << b.at_barrier << " wait at __syncthreads, " << b.exited << " have exited";
  for (int w = 0; w < b.n_warps; ++w) {
    const unsigned waiting = b.warp_waiting[w];
    if (!waiting) continue;
    // Group the waiting lanes by (op, mask).
    unsigned seen = 0;
    for (int l = 0; l < 32; ++l) {
      if (!(waiting >> l & 1u) || (seen >> l & 1u)) continue;
      const Thread& t = threads_[w * 32 + l];
      unsigned group = 0;
      for (int m = l; m < 32; ++m) {
        const Thread& o = threads_[w * 32 + m];
        if ((waiting >> m & 1u) && o.op == t.op && o.mask == t.mask) group |= 1u << m;
      }
      seen |= group;
      s << "; warp " << w << " lanes " << lanes_text(group) << " wait in " << t.op << " for lanes "
        << lanes_text(t.mask & ~group) << " of its mask (mask lanes " << lanes_text(t.mask) << ")";
    }
  }
  return s.str();
}

bool Worker::guards_intact(std::string& error) const {
  const Block& b = block_;
  auto intact = [](const unsigned char* p, size_t n) {
    for (size_t i = 0; i < n; ++i)
      if (p[i] != kGuardByte) return i;
    return n;
  };
  const unsigned char* lo = b.dynamic_smem - kGuardBytes;
  const unsigned char* hi = b.dynamic_smem + b.dynamic_bytes;
  const std::string dyn = " of its " + std::to_string(b.dynamic_bytes) + " bytes of dynamic shared memory";
  if (size_t i = intact(lo, kGuardBytes); i < kGuardBytes) {
    error = where(b, nullptr) + ": out-of-range shared memory write " + std::to_string(kGuardBytes - i) +
            " bytes before the start" + dyn;
    return false;
  }
  if (size_t i = intact(hi, kGuardBytes); i < kGuardBytes) {
    error = where(b, nullptr) + ": out-of-range shared memory write at byte " + std::to_string(b.dynamic_bytes + i) + dyn;
    return false;
  }
  for (size_t v = 0; v < b.statics.size(); ++v) {
    const StaticShared& st = b.statics[v];
    const std::string var = " of static shared variable " + std::to_string(v) + " (" + std::to_string(st.bytes) + " bytes)";
    const size_t before = static_cast<size_t>(st.data - st.guard);
    if (intact(st.guard, before) < before) {
      error = where(b, nullptr) + ": out-of-range shared memory write before the start" + var;
      return false;
    }
    if (size_t i = intact(st.data + st.bytes, kStaticGuardBytes); i < kStaticGuardBytes) {
      error = where(b, nullptr) + ": out-of-range shared memory write at byte " + std::to_string(st.bytes + i) + var;
      return false;
    }
  }
  return true;
}

bool Worker::run_block(const LaunchSpec& spec, uint3 block_idx, uint64_t block_linear, std::string& error) {
  prepare(spec, block_idx);
  Block& b = block_;
  Block* const saved_block = tl_block;
  tl_block = &b;
  bool ok = true;
  for (uint64_t round = 0;; ++round) {
    order_round(block_linear, round);
    if (order_.empty()) {
      if (b.exited == b.n_threads) break;
      b.failed = true;
      b.error = where(b, nullptr) + ": deadlock: " + deadlock_text();
      break;
    }
    for (int i : order_) {
      Thread& t = threads_[i];
      if (t.state != State::Runnable) continue;
      tl_thread = &t;
      switch_context(b.scheduler, t.ctx);
      if (b.failed) break;
    }
    if (b.failed) break;
  }
  tl_thread = nullptr;
  tl_block = saved_block;
  if (b.failed) {
    error = b.error;
    ok = false;
  } else if (!guards_intact(error)) {
    ok = false;
  }
  return ok;
}

// ---- the pool of workers -------------------------------------------------------------------

class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

  Worker& worker(int id) {
    while (static_cast<int>(workers_.size()) <= id) workers_.push_back(std::make_unique<Worker>());
    return *workers_[id];
  }

  // fn(id) for id in [0, n): id 0 on the calling thread, the others on the pool's threads.
  void run(int n, const std::function<void(int)>& fn) {
    for (int id = 0; id < n; ++id) worker(id);
    if (n <= 1) {
      fn(0);
      return;
    }
    while (static_cast<int>(threads_.size()) < n - 1) {
      const int id = static_cast<int>(threads_.size()) + 1;
      threads_.emplace_back([this, id] { loop(id); });
    }
    {
      std::lock_guard<std::mutex> lock(m_);
      job_ = &fn;
      active_ = n;
      remaining_ = n - 1;
      ++generation_;
    }
    cv_.notify_all();
    // The other workers use fn and what it refers to: wait for them even if fn(0) throws.
    std::exception_ptr failure;
    try {
      fn(0);
    } catch (...) {
      failure = std::current_exception();
    }
    std::unique_lock<std::mutex> lock(m_);
    done_.wait(lock, [&] { return remaining_ == 0; });
    job_ = nullptr;
    if (failure) std::rethrow_exception(failure);
  }

 private:
  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int)>* job;
      {
        std::unique_lock<std::mutex> lock(m_);
        cv_.wait(lock, [&] { return stop_ || (generation_ != seen && id < active_); });
        if (stop_) return;
        seen = generation_;
        job = job_;
      }
      (*job)(id);
      {
        std::lock_guard<std::mutex> lock(m_);
        --remaining_;
      }
      done_.notify_all();
    }
  }

  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;
  std::mutex m_;
  std::condition_variable cv_, done_;
  const std::function<void(int)>* job_ = nullptr;
  uint64_t generation_ = 0;
  int active_ = 0, remaining_ = 0;
  bool stop_ = false;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: workers may outlive static destruction order
  return *p;
}

// Every worker keeps a stack (two memory mappings: the stack and its guard page) per thread of
// the largest block it ran, so the default stays well below Linux's 65530 mappings per process.
constexpr int kMaxDefaultWorkers = 16;

int workers_for(uint64_t blocks) {
  int w = config().workers;
  if (w <= 0)
    w = std::min(kMaxDefaultWorkers, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  return static_cast<int>(std::min<uint64_t>(static_cast<uint64_t>(w), blocks));
}

// The launch configuration rules of the hardware; "" when the launch may run.
std::string check_launch(const LaunchSpec& s, int* code) {
  *code = cudaErrorInvalidConfiguration;
  const uint64_t threads = uint64_t(s.block.x) * s.block.y * s.block.z;
  std::ostringstream m;
  if (s.block.x == 0 || s.block.y == 0 || s.block.z == 0 || s.grid.x == 0 || s.grid.y == 0 || s.grid.z == 0) {
    m << "grid " << dim_text(s.grid) << " and block " << dim_text(s.block) << " must be positive in every dimension";
  } else if (threads > kMaxThreadsPerBlock || s.block.x > 1024 || s.block.y > 1024 || s.block.z > 64) {
    m << "block " << dim_text(s.block) << " = " << threads
      << " threads; a block holds at most 1024 threads, with x, y <= 1024 and z <= 64";
  } else if (s.grid.x > 2147483647u || s.grid.y > config().max_grid_yz || s.grid.z > config().max_grid_yz) {
    const unsigned yz = config().max_grid_yz;
    m << "grid " << dim_text(s.grid) << " exceeds the limits grid.x <= 2^31-1, grid.y <= " << yz << ", grid.z <= " << yz;
  } else {
    int limit = kSmemPerBlockDefault;
    {
      std::lock_guard<std::mutex> lock(g_registry_mutex);
      auto it = g_max_dynamic_smem.find(s.kernel);
      if (it != g_max_dynamic_smem.end()) limit = it->second;
    }
    if (s.dynamic_smem > static_cast<size_t>(limit)) {
      *code = cudaErrorInvalidValue;
      m << s.dynamic_smem << " bytes of dynamic shared memory exceed the kernel's limit of " << limit << " bytes"
        << (limit == kSmemPerBlockDefault
                ? " (above 48 KB a kernel must opt in with cudaFuncSetAttribute(kernel, "
                  "cudaFuncAttributeMaxDynamicSharedMemorySize, bytes))"
                : "");
    }
  }
  return m.str();
}

}  // namespace

void set_config(const Config& c) {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  g_config = c;
}

Config config() {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  return g_config;
}

int set_max_dynamic_smem(const void* kernel, int bytes) {
  if (bytes < 0 || bytes > kSmemPerBlockOptin) {
    record_error(cudaErrorInvalidValue,
                 "cudaFuncSetAttribute: cudaFuncAttributeMaxDynamicSharedMemorySize = " + std::to_string(bytes) +
                     " bytes is outside [0, " + std::to_string(kSmemPerBlockOptin) + "] (the H200's opt-in limit)");
    return cudaErrorInvalidValue;
  }
  std::lock_guard<std::mutex> lock(g_registry_mutex);
  g_max_dynamic_smem[kernel] = bytes;
  return cudaSuccess;
}

std::vector<std::pair<std::string, int64_t>> launched_kernels() {
  std::lock_guard<std::mutex> lock(g_registry_mutex);
  return {g_launched.begin(), g_launched.end()};
}

int launch(const LaunchSpec& spec) {
  std::lock_guard<std::mutex> serial(g_launch_mutex);
  {
    std::lock_guard<std::mutex> lock(g_registry_mutex);
    ++g_launched[kernel_key(spec)];
  }
  // A kernel after a failed one would run on its garbage: it is skipped until the error is read.
  if (int pending = peek_error()) return pending;
  int code = 0;
  const std::string bad = check_launch(spec, &code);
  if (!bad.empty()) {
    record_error(code, std::string("launch of ") + spec.name + " (" + kernel_key(spec) + "): " + bad);
    return code;
  }
  const uint64_t gx = spec.grid.x, gy = spec.grid.y, gz = spec.grid.z;
  const uint64_t blocks = gx * gy * gz;
  const Schedule schedule = config().schedule;
  std::vector<uint64_t> shuffled;
  if (schedule == Schedule::Shuffle && blocks <= (1u << 22)) {
    shuffled.resize(blocks);
    for (uint64_t i = 0; i < blocks; ++i) shuffled[i] = i;
    std::mt19937_64 rng(config().seed * 0x94D049BB133111EBull + 7);
    for (uint64_t i = blocks; i > 1; --i) std::swap(shuffled[i - 1], shuffled[rng() % i]);
  }
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::string first_error;
  pool().run(workers_for(blocks), [&](int id) {
    Worker& w = pool().worker(id);
    std::string error;
    for (;;) {
      const uint64_t k = next.fetch_add(1);
      if (k >= blocks || failed.load(std::memory_order_relaxed)) return;
      uint64_t linear = k;
      if (!shuffled.empty()) linear = shuffled[k];
      else if (schedule == Schedule::Reverse) linear = blocks - 1 - k;
      const uint3 idx = make_uint3(static_cast<unsigned>(linear % gx), static_cast<unsigned>(linear / gx % gy),
                                   static_cast<unsigned>(linear / (gx * gy)));
      bool ok = false;
      try {
        ok = w.run_block(spec, idx, linear, error);
      } catch (const std::exception& e) {  // e.g. no memory for fiber stacks: an error, not a crash
        error = std::string("launch of ") + spec.name + ": the emulator failed: " + e.what();
      } catch (...) {
        error = std::string("launch of ") + spec.name + ": the emulator failed";
      }
      if (!ok) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!failed.exchange(true)) first_error = error;
        return;
      }
    }
  });
  if (failed) {
    record_error(cudaErrorLaunchFailure, first_error);
    return cudaErrorLaunchFailure;
  }
  return cudaSuccess;
}

// ---- called from the fibers ----------------------------------------------------------------

void fail(const std::string& message) {
  Block* b = tl_block;
  Thread* t = tl_thread;
  b->failed = true;
  b->error = where(*b, t) + ": " + message;
  if (t) {
    t->state = State::Exited;
    switch_context(t->ctx, b->scheduler);
  }
  std::abort();  // unreachable: a failed fiber is never resumed
}

void sync_block() {
  Thread* t = tl_thread;
  Block* b = tl_block;
  t->state = State::Barrier;
  ++b->at_barrier;
  if (b->at_barrier + b->exited == b->n_threads) {
    if (b->exited > 0)
      fail("reaches __syncthreads as the last of " + std::to_string(b->at_barrier) + " threads while " +
           std::to_string(b->exited) + " of the block's threads have exited: a barrier not every thread reaches");
    for (int i = 0; i < b->n_threads; ++i)
      if (b->threads[i].state == State::Barrier) make_runnable(b, &b->threads[i]);
    b->at_barrier = 0;
  }
  switch_context(t->ctx, b->scheduler);
}

void warp_collective(const char* op, unsigned mask, void* record, CompleteFn complete) {
  Thread* t = tl_thread;
  Block* b = tl_block;
  const int w = t->warp;
  const int in_warp = std::min(32, b->n_threads - 32 * w);
  const unsigned exists = in_warp == 32 ? 0xffffffffu : ((1u << in_warp) - 1u);
  if (!(mask >> t->lane & 1u))
    fail(std::string(op) + " with mask lanes " + lanes_text(mask) + " that does not name the calling lane");
  if (mask & ~exists)
    fail(std::string(op) + ": its mask names lanes " + lanes_text(mask & ~exists) + ", which do not exist (warp " +
         std::to_string(w) + " has " + std::to_string(in_warp) + " threads)");
  Thread* lanes = b->threads + 32 * w;
  if (const unsigned gone = mask & b->warp_exited[w])
    fail(std::string(op) + ": its mask names lane " + std::to_string(__builtin_ctz(gone)) + ", which has exited");
  t->state = State::Warp;
  t->op = op;
  t->mask = mask;
  t->record = record;
  unsigned& waiting = b->warp_waiting[w];
  waiting |= 1u << t->lane;
  if ((waiting & mask) == mask) {
    bool same = true;
    for (int l = 0; l < in_warp && same; ++l)
      if (mask >> l & 1u) same = lanes[l].op == op && lanes[l].mask == mask;
    if (same) {
      Thread* ptrs[32] = {};
      for (int l = 0; l < in_warp; ++l)
        if (mask >> l & 1u) ptrs[l] = &lanes[l];
      if (complete) complete(ptrs, mask);
      for (int l = 0; l < in_warp; ++l)
        if (mask >> l & 1u) make_runnable(b, &lanes[l]);
      waiting &= ~mask;
    }
  }
  switch_context(t->ctx, b->scheduler);
}

void* dynamic_shared_memory() { return tl_block->dynamic_smem; }

void* static_shared(const void* tag, size_t bytes, size_t align) {
  Block* b = tl_block;
  for (const StaticShared& st : b->statics)
    if (st.tag == tag) return st.data;
  b->static_bytes += bytes;
  // The hardware's rules: static shared memory alone at most 48 KB; with dynamic shared memory at
  // most 48 KB together, or, once the kernel opted in to more, static + the opted-in size at most
  // the device's 227 KB.
  const std::string sizes = std::to_string(b->static_bytes) + " bytes of static shared memory";
  if (b->static_bytes > static_cast<size_t>(kSmemPerBlockDefault)) fail(sizes + " exceed the 48 KB limit");
  if (b->dynamic_attribute < 0 && b->static_bytes + b->dynamic_bytes > static_cast<size_t>(kSmemPerBlockDefault))
    fail(sizes + " and " + std::to_string(b->dynamic_bytes) + " of dynamic shared memory exceed 48 KB (above it a "
         "kernel must opt in with cudaFuncAttributeMaxDynamicSharedMemorySize)");
  if (b->dynamic_attribute >= 0 &&
      b->static_bytes + static_cast<size_t>(b->dynamic_attribute) > static_cast<size_t>(kSmemPerBlockOptin))
    fail(sizes + " and the " + std::to_string(b->dynamic_attribute) +
         " opted-in bytes of dynamic shared memory exceed the H200's 227 KB per block");
  align = std::max<size_t>(align, 16);
  unsigned char* guard = b->static_arena + b->static_used;
  uintptr_t at = reinterpret_cast<uintptr_t>(guard) + kStaticGuardBytes;
  at = (at + align - 1) / align * align;  // the absolute address, whatever the arena's alignment
  unsigned char* data = reinterpret_cast<unsigned char*>(at);
  if (data + bytes + kStaticGuardBytes > b->static_arena + b->static_capacity)
    fail("static shared memory: the emulator's arena of " + std::to_string(b->static_capacity) +
         " bytes cannot hold the variables with their alignment and guards");
  std::memset(guard, kGuardByte, static_cast<size_t>(data - guard));
  std::memset(data, kPoisonByte, bytes);
  std::memset(data + bytes, kGuardByte, kStaticGuardBytes);
  b->static_used = static_cast<size_t>(data + bytes - b->static_arena);
  b->statics.push_back(StaticShared{tag, guard, data, bytes});
  return data;
}

bool in_shared(const void* p, size_t bytes) {
  const Block* b = tl_block;
  const unsigned char* c = static_cast<const unsigned char*>(p);
  if (c >= b->dynamic_smem && c + bytes <= b->dynamic_smem + b->dynamic_bytes) return true;
  for (const StaticShared& st : b->statics)
    if (c >= st.data && c + bytes <= st.data + st.bytes) return true;
  return false;
}

namespace {
[[noreturn]] void spin_failure() {
  fail("spins: " + std::to_string(kMaxSpins) +
       " atomics or fences in a row that neither wrote memory nor saw a value change; it waits for a "
       "write no thread of this block will make (the emulator runs the blocks of a launch "
       "independently, so waiting on another block never ends)");
}

void yield_to_others(Thread* t, Block* b) {
  make_runnable(b, t);
  switch_context(t->ctx, b->scheduler);
}
}  // namespace

void atomic_point(const void* addr, uint64_t observed, bool wrote) {
  Thread* t = tl_thread;
  const bool progress = wrote || addr != t->seen_addr || observed != t->seen_value;
  t->seen_addr = addr;
  t->seen_value = observed;
  if (progress)
    t->spins = 0;
  else if (++t->spins > kMaxSpins)
    spin_failure();
  yield_to_others(t, tl_block);
}

void fence_point() {
  Thread* t = tl_thread;
  if (++t->spins > kMaxSpins) spin_failure();
  yield_to_others(t, tl_block);
}

void check_aligned(const void* p, size_t bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % bytes != 0) {
    std::ostringstream s;
    s << what << ": misaligned address " << p << " for a " << bytes << "-byte access (the hardware faults)";
    fail(s.str());
  }
}

void cp_async(void* dst, const void* src, int bytes, int src_bytes) {
  if (bytes != 4 && bytes != 8 && bytes != 16) fail("cp.async copies 4, 8 or 16 bytes, got " + std::to_string(bytes));
  if (src_bytes < 0 || src_bytes > bytes)
    fail("cp.async: src-size " + std::to_string(src_bytes) + " outside [0, " + std::to_string(bytes) + "]");
  if (!in_shared(dst, static_cast<size_t>(bytes)))
    fail("cp.async: the destination is not inside the block's shared memory");
  check_aligned(dst, static_cast<size_t>(bytes), "cp.async destination");
  check_aligned(src, static_cast<size_t>(bytes), "cp.async source");
  tl_thread->copies.push_back(PendingCopy{dst, src, bytes, src_bytes, -1});
}

void cp_async_commit() {
  Thread* t = tl_thread;
  for (PendingCopy& c : t->copies)
    if (c.group < 0) c.group = t->next_group;
  ++t->next_group;
}

void cp_async_wait(int pending) {
  Thread* t = tl_thread;
  const int64_t last_done = t->next_group - 1 - pending;  // committed groups up to this one land
  size_t kept = 0;
  for (PendingCopy& c : t->copies) {
    if (pending >= 0 && (c.group < 0 || c.group > last_done)) {
      t->copies[kept++] = c;
      continue;
    }
    std::memcpy(c.dst, c.src, static_cast<size_t>(c.src_bytes));
    std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, static_cast<size_t>(c.bytes - c.src_bytes));
  }
  t->copies.resize(kept);
}

}  // namespace simt
}  // namespace kx
