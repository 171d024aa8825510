// Own thread pool: one persistent pool per process so that a decode step of ~200 small ops never pays thread start-up or a second threading runtime.
#pragma once
#include <cstddef>

namespace vl3 {

// A task body: `task` in [0, tasks), `tid` in [0, poolThreads()) names the thread running it (0 is the caller).
using TaskFn = void (*)(void* ctx, long task, int tid);

// Runs fn for every task in [0, tasks) on the pool and returns when all have finished. Tasks are claimed
// dynamically, so uneven tasks balance themselves. Called from inside a task, it runs inline on that thread.
void poolRun(long tasks, TaskFn fn, void* ctx);

// Runs fn exactly once on each of the first `threads` pool threads (task == tid), all at the same time.
// For measurements that need one stream per core.
void poolRunEach(int threads, TaskFn fn, void* ctx);

int poolThreads();
void poolSetThreads(int n);
// Cores this process may run on (its affinity mask), at least 1.
int availableCores();

// A per-thread, per-slot scratch buffer of at least `bytes`, 64-byte aligned, kept between calls (contents are
// unspecified). Only thread `tid` may use its slots while a pool job runs.
enum ScratchSlot { kSlotA = 0, kSlotB, kSlotC, kSlotD, kSlotE, kSlotShared, kSlotCount };
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
