// Own thread pool: persistent workers so that a decode step of ~200 small ops never pays thread start-up or a second threading runtime; one pool per backend context so that two models on two JS threads never wait on each other.
#include "pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#include <sys/mman.h>
#endif

namespace vl3 {
namespace {

// Workers keep spinning this long after a job before sleeping: long enough to bridge the gaps between the pooled ops
// of a decode step (a JS call is ~1 µs, but a step also runs ops on the caller alone, such as its attention, for
// 30-50 µs), since waking a sleeping worker costs tens of µs on a VM (a 50 µs spin made a 1.3 MB weight's matmul
// take 84 µs instead of 63: BENCHMARKS.md run 10); short enough not to burn a core while JS does something else.
constexpr auto kSpinTime = std::chrono::microseconds(2000);

inline void cpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

struct Arena {
  void* ptr[kSlotCount] = {};
  size_t size[kSlotCount] = {};
};

thread_local int tlsTid = -1;  // >= 0 while this thread runs a pool task
// The pool kernels on this thread use: set by PoolScope, and for good on a pool's own workers.
thread_local Pool* tlsPool = nullptr;

}  // namespace

class Pool {
 public:
  explicit Pool(int n) { start(n); }
  ~Pool() {
    stop();
    for (Arena& a : arenas_)
      for (void* p : a.ptr) std::free(p);
  }

  int threads() const { return threads_; }

  void setThreads(int n) {
    std::lock_guard<std::mutex> lk(dispatch_);
    stop();
    start(n);
  }

  void run(long tasks, TaskFn fn, void* ctx, int each) {
    if (tlsTid >= 0) {  // nested: the outer job already owns every thread
      if (each > 0) fn(ctx, tlsTid, tlsTid);
      else for (long t = 0; t < tasks; t++) fn(ctx, t, tlsTid);
      return;
    }
    std::lock_guard<std::mutex> lk(dispatch_);
    if (threads_ == 1 || (each == 0 && tasks <= 1) || each == 1) {
      tlsTid = 0;
      if (each > 0) fn(ctx, 0, 0);
      else for (long t = 0; t < tasks; t++) fn(ctx, t, 0);
      tlsTid = -1;
      return;
    }
    fn_ = fn;
    ctx_ = ctx;
    tasks_ = tasks;
    each_ = each;
    next_.store(0, std::memory_order_relaxed);
    pending_.store(threads_ - 1, std::memory_order_relaxed);
    {
      // Under the mutex so that a worker between its last check and its wait cannot miss the bump.
      std::lock_guard<std::mutex> g(sleepMutex_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    sleepCv_.notify_all();
    work(0);
    while (pending_.load(std::memory_order_acquire) != 0) cpuRelax();
  }

  size_t scratchBytes() const {
    size_t total = 0;
    for (const Arena& a : arenas_)
      for (size_t b : a.size) total += b;
    return total;
  }

  void* scratch(int tid, int slot, size_t bytes) {
    Arena& a = arenas_[tid];
    if (a.size[slot] >= bytes) return a.ptr[slot];
    std::free(a.ptr[slot]);
    // Grow with headroom so that slowly growing sequences reallocate rarely; big buffers get huge pages, which
    // matters for packed GEMM panels that are swept repeatedly.
    size_t want = bytes + bytes / 4 + 64;
    size_t align = want >= (4u << 20) ? (2u << 20) : 64;
    want = (want + align - 1) / align * align;
    void* p = nullptr;
    if (posix_memalign(&p, align, want) != 0) p = nullptr;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p && align > 64) madvise(p, want, MADV_HUGEPAGE);
#endif
    a.ptr[slot] = p;
    a.size[slot] = p ? want : 0;
    return p;
  }

 private:
  void start(int n) {
    if (n < 1) n = 1;
    if (n > 256) n = 256;
    threads_ = n;
    stopping_.store(false);
    if (arenas_.size() < static_cast<size_t>(n)) arenas_.resize(n);
    uint64_t gen = generation_.load();
    for (int id = 1; id < n; id++) workers_.emplace_back([this, id, gen] { workerLoop(id, gen); });
  }

  void stop() {
    {
      std::lock_guard<std::mutex> g(sleepMutex_);
      stopping_.store(true);
    }
    sleepCv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  void work(int id) {
    tlsTid = id;
    if (each_ > 0) {
      if (id < each_) fn_(ctx_, id, id);
    } else {
      for (long t; (t = next_.fetch_add(1, std::memory_order_relaxed)) < tasks_;) fn_(ctx_, t, id);
    }
    tlsTid = -1;
  }

  void workerLoop(int id, uint64_t seen) {
    tlsPool = this;
    for (;;) {
      auto began = std::chrono::steady_clock::now();
      unsigned spins = 0;
      uint64_t gen;
      while ((gen = generation_.load(std::memory_order_acquire)) == seen) {
        if (stopping_.load(std::memory_order_relaxed)) return;
        cpuRelax();
        if ((++spins & 255) == 0 && std::chrono::steady_clock::now() - began > kSpinTime) {
          std::unique_lock<std::mutex> lk(sleepMutex_);
          sleepCv_.wait(lk, [&] { return generation_.load() != seen || stopping_.load(); });
          began = std::chrono::steady_clock::now();
        }
      }
      seen = gen;
      work(id);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  int threads_ = 1;
  std::vector<std::thread> workers_;
  std::vector<Arena> arenas_;
  std::mutex dispatch_;  // one job at a time, even with several JS threads
  std::mutex sleepMutex_;
  std::condition_variable sleepCv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<long> next_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stopping_{false};
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  long tasks_ = 0;
  int each_ = 0;
};

namespace {

Pool& current() {
  if (!tlsPool) {
    // A kernel reached outside every PoolScope: a bug in the addon, and the wrong pool's scratch would be worse.
    std::fprintf(stderr, "vl3: internal error: a kernel ran without a thread pool (missing PoolScope)\n");
    std::abort();
  }
  return *tlsPool;
}

}  // namespace

void PoolDeleter::operator()(Pool* p) const { delete p; }

PoolPtr makePool(int threads) { return PoolPtr(new Pool(threads)); }
int poolSize(const Pool& p) { return p.threads(); }
void poolResize(Pool& p, int threads) {
  if (threads != p.threads()) p.setThreads(threads);
}
size_t poolScratchBytes(const Pool& p) { return p.scratchBytes(); }

// Never destroyed: the process may exit while JS still holds the module, and joining threads from a static
// destructor at exit buys nothing.
Pool& sharedPool() {
  static Pool* p = new Pool(availableCores());
  return *p;
}

PoolScope::PoolScope(Pool& p) : prev_(tlsPool) { tlsPool = &p; }
PoolScope::~PoolScope() { tlsPool = prev_; }

int availableCores() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

void poolRun(long tasks, TaskFn fn, void* ctx) {
  if (tasks <= 0) return;
  current().run(tasks, fn, ctx, 0);
}

void poolRunEach(int threads, TaskFn fn, void* ctx) {
  Pool& p = current();
  if (threads > p.threads()) threads = p.threads();
  if (threads < 1) threads = 1;
  p.run(threads, fn, ctx, threads);
}

int poolThreads() { return current().threads(); }

void* scratch(int tid, int slot, size_t bytes) { return current().scratch(tid, slot, bytes); }

}  // namespace vl3
