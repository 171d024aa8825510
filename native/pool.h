// Own thread pool: persistent workers so that a decode step of ~200 small ops never pays thread start-up or a second threading runtime; one pool per backend context so that two models on two JS threads never wait on each other.
#pragma once
#include <cstddef>
#include <memory>

namespace vl3 {

class Pool;
struct PoolDeleter {
  void operator()(Pool* p) const;
};
using PoolPtr = std::unique_ptr<Pool, PoolDeleter>;

// A pool of `threads` threads, the caller's included (threads - 1 workers; clamped to [1, 256]).
PoolPtr makePool(int threads);
int poolSize(const Pool& p);
// Stops and restarts the workers; scratch arenas are kept. Never while a job runs on p.
void poolResize(Pool& p, int threads);
// Bytes held by p's scratch arenas, for the JS engine's external-memory accounting.
size_t poolScratchBytes(const Pool& p);
// The process-wide pool for callers without a backend context (image resize); created on first use with
// availableCores() threads. It has a scratch arena like any pool, but its users must not rely on it: several JS
// threads may run jobs on it one after another.
Pool& sharedPool();

// Makes p the pool that poolThreads/poolRun/scratch below use on this thread until the scope ends (scopes nest). Every
// addon entry point that runs kernels opens one; a pool's own workers always see their pool.
class PoolScope {
 public:
  explicit PoolScope(Pool& p);
  ~PoolScope();
  PoolScope(const PoolScope&) = delete;
  PoolScope& operator=(const PoolScope&) = delete;

 private:
  Pool* prev_;
};

// A task body: `task` in [0, tasks), `tid` in [0, poolThreads()) names the thread running it (0 is the caller).
using TaskFn = void (*)(void* ctx, long task, int tid);

// Runs fn for every task in [0, tasks) on the current pool and returns when all have finished. Tasks are claimed
// dynamically, so uneven tasks balance themselves. Called from inside a task, it runs inline on that thread.
void poolRun(long tasks, TaskFn fn, void* ctx);

// Runs fn exactly once on each of the first `threads` threads of the current pool (task == tid), all at the same
// time. For measurements that need one stream per core.
void poolRunEach(int threads, TaskFn fn, void* ctx);

// Threads of the current pool.
int poolThreads();
// Cores this process may run on (its affinity mask), at least 1.
int availableCores();

// A per-thread, per-slot scratch buffer of the current pool, at least `bytes`, 64-byte aligned, kept between calls
// (contents are unspecified). Only thread `tid` may use its slots while a pool job runs.
// kSlotShared and kSlotPackedA are the caller's (tid 0) buffers that every task of one job reads.
enum ScratchSlot { kSlotA = 0, kSlotB, kSlotC, kSlotD, kSlotE, kSlotShared, kSlotPackedA, kSlotCount };
void* scratch(int tid, int slot, size_t bytes);

template <class F>
struct TaskTrampoline {
  static void run(void* ctx, long task, int tid) { (*static_cast<const F*>(ctx))(task, tid); }
};

// parallelTasks(n, [&](long task, int tid) { ... }): a typed wrapper over poolRun.
template <class F>
inline void parallelTasks(long tasks, const F& f) {
  poolRun(tasks, &TaskTrampoline<F>::run, const_cast<void*>(static_cast<const void*>(&f)));
}

template <class F>
inline void parallelEach(int threads, const F& f) {
  poolRunEach(threads, &TaskTrampoline<F>::run, const_cast<void*>(static_cast<const void*>(&f)));
}

}  // namespace vl3
