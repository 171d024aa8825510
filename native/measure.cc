// Own measurement kernels: the benchmark compares our ops with this machine's FMA peak and DRAM read bandwidth, measured the same way on the same thread pool.
#include "measure.h"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cpu.h"
#include "pool.h"

namespace vl3 {
namespace {

using Clock = std::chrono::steady_clock;

// The fastest FMA loop this CPU can run, whatever kernel the ops currently use.
const KernelTable& bestTable() {
  CpuFeatures f = cpuFeatures();
  if (avx2Kernels() && f.avx2 && f.fma) return *avx2Kernels();
  if (neonKernels() && f.neon) return *neonKernels();
  return *scalarKernels();
}

// Grows the pool for the duration of a measurement when asked for more threads than it has.
class ThreadsAtLeast {
 public:
  explicit ThreadsAtLeast(int n) : prev_(poolThreads()) {
    if (n > prev_) poolSetThreads(n);
  }
  ~ThreadsAtLeast() {
    if (poolThreads() != prev_) poolSetThreads(prev_);
  }

 private:
  int prev_;
};

void spinBarrier(std::atomic<int>& arrived, int threads) {
  arrived.fetch_add(1);
  while (arrived.load() < threads) {
  }
}

}  // namespace

double peakFlops(int threads, double seconds) {
  if (threads < 1) threads = 1;
  ThreadsAtLeast guard(threads);
  threads = poolThreads() < threads ? poolThreads() : threads;
  const KernelTable& k = bestTable();
  std::vector<double> rate(threads, 0.0);
  std::vector<float> sink(threads * 16, 1.0f);
  std::atomic<int> arrived{0};
  parallelEach(threads, [&](long, int tid) {
    spinBarrier(arrived, threads);
    const auto t0 = Clock::now();
    double flops = 0, elapsed = 0;
    do {
      flops += k.fmaLoop(1L << 15, &sink[tid * 16]);
      elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    } while (elapsed < seconds);
    rate[tid] = flops / elapsed;
  });
  double total = 0;
  for (double r : rate) total += r;
  return total / 1e9;
}

double readBandwidth(int threads, size_t bytes, int repeats) {
  if (threads < 1) threads = 1;
  if (repeats < 1) repeats = 1;
  ThreadsAtLeast guard(threads);
  threads = poolThreads() < threads ? poolThreads() : threads;
  const KernelTable& k = bestTable();
  const long n = static_cast<long>(bytes / sizeof(float)) / 64 * 64;
  if (n <= 0) return 0;
  void* mem = nullptr;
  if (posix_memalign(&mem, 2u << 20, n * sizeof(float)) != 0) return 0;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(mem, n * sizeof(float), MADV_HUGEPAGE);
#endif
  float* data = static_cast<float*>(mem);
  // Each thread first-touches the slice it will read.
  parallelEach(threads, [&](long, int tid) {
    const long b = n * tid / threads, e = n * (tid + 1) / threads;
    for (long i = b; i < e; i++) data[i] = 1.0f;
  });
  std::vector<Clock::time_point> start(threads), end(threads);
  std::vector<float> sums(threads);
  double best = 0;
  for (int rep = 0; rep < repeats; rep++) {
    std::atomic<int> arrived{0};
    parallelEach(threads, [&](long, int tid) {
      const long b = n * tid / threads, e = n * (tid + 1) / threads;
      spinBarrier(arrived, threads);
      start[tid] = Clock::now();
      sums[tid] = k.sum(data + b, e - b);
      end[tid] = Clock::now();
    });
    auto t0 = start[0], t1 = end[0];
    for (int t = 1; t < threads; t++) {
      if (start[t] < t0) t0 = start[t];
      if (end[t] > t1) t1 = end[t];
    }
    const double gbs = n * sizeof(float) / std::chrono::duration<double>(t1 - t0).count() / 1e9;
    if (gbs > best) best = gbs;
  }
  volatile float keep = sums[0];
  (void)keep;
  std::free(mem);
  return best;
}

}  // namespace vl3
