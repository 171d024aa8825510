// Own measurement kernels: the benchmark compares our ops with this machine's limits (peak of each instruction kind, DRAM read bandwidth), measured the same way on the same kind of thread pool.
#include "measure.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
// GCC 12 reports the _mm512_undefined_* placeholders inside its own reductions as uninitialized (a false positive).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "cpu.h"
#include "pool.h"

namespace vl3 {
namespace {

using Clock = std::chrono::steady_clock;
using Loop = double (*)(long iters, float* sink);

#if defined(__x86_64__)
// The dot-product loops exist only here, so they are compiled for their instruction sets function by function
// rather than as kernel tiers. Each keeps 16 independent accumulators: two pipes × latencies up to 8 cycles.
// Returns the operations done: 16 lanes × 2 bf16 products × 2 (multiply, add) per instruction.
__attribute__((target("avx512f,avx512bf16"))) double bf16DotLoop(long iters, float* sink) {
  const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80);  // (1, 1)
  const __m512bh b = (__m512bh)_mm512_set1_epi32(0x358637bd);  // (1e-6, 1e-6) roughly
  __m512 c[16];
  for (int i = 0; i < 16; i++) c[i] = _mm512_set1_ps(sink[0] + i);
  for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) c[i] = _mm512_dpbf16_ps(c[i], a, b);
  }
  __m512 s = c[0];
  for (int i = 1; i < 16; i++) s = _mm512_add_ps(s, c[i]);
  sink[0] = _mm512_reduce_add_ps(s);
  return static_cast<double>(iters) * 16 * 64;
}

// 16 lanes × 4 u8·s8 products × 2 per instruction.
__attribute__((target("avx512f,avx512vnni"))) double int8DotZmmLoop(long iters, float* sink) {
  const __m512i a = _mm512_set1_epi32(0x01010101), b = _mm512_set1_epi32(0x01010101);
  __m512i c[16];
  for (int i = 0; i < 16; i++) c[i] = _mm512_set1_epi32(static_cast<int>(sink[0]) + i);
  for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) c[i] = _mm512_dpbusd_epi32(c[i], a, b);
  }
  __m512i s = c[0];
  for (int i = 1; i < 16; i++) s = _mm512_add_epi32(s, c[i]);
  sink[0] = static_cast<float>(_mm512_reduce_add_epi32(s));
  return static_cast<double>(iters) * 16 * 128;
}

// 8 lanes × 4 products × 2 per instruction. VEX code has 16 ymm registers: 12 chains and the operand stay in them.
__attribute__((target("avx2,avxvnni"))) double int8DotYmmLoop(long iters, float* sink) {
  const __m256i a = _mm256_set1_epi32(0x01010101);
  __m256i c[12];
  for (int i = 0; i < 12; i++) c[i] = _mm256_set1_epi32(static_cast<int>(sink[0]) + i);
  for (long it = 0; it < iters; it++) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) c[i] = _mm256_dpbusd_avx_epi32(c[i], a, a);
  }
  __m256i s = c[0];
  for (int i = 1; i < 12; i++) s = _mm256_add_epi32(s, c[i]);
  alignas(32) int32_t v[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(v), s);
  sink[0] = static_cast<float>(v[0] + v[7]);
  return static_cast<double>(iters) * 12 * 64;
}
#endif

const KernelTable* tier(const char* name) {
  std::string ignored;
  return tierKernels(name, ignored);
}

// The loop of a kind, or null where this machine cannot run it.
Loop loopOf(const std::string& kind) {
  const KernelTable* t = nullptr;
  if (kind == "fp32-scalar") t = tier("scalar");
  else if (kind == "fp32-ymm") t = tier("avx2");
  else if (kind == "fp32-zmm") t = tier("avx512");
  else if (kind == "fp32-neon") t = tier("neon");
  if (t) return t->fmaLoop;
#if defined(__x86_64__)
  const CpuFeatures f = cpuFeatures();
  if (kind == "bf16-zmm" && f.avx512bf16) return bf16DotLoop;
  if (kind == "int8-zmm" && f.avx512vnni) return int8DotZmmLoop;
  if (kind == "int8-ymm" && f.avxvnni) return int8DotYmmLoop;
#endif
  return nullptr;
}

// A read-only sum of kStreams equal parts of [p, p + S·part) read together, line by line: the order in which the
// decode's matmuls read their weights (4–6 rows far apart per thread). On Zen 5 it read 17 % more than the same bytes
// front to back on one thread, 26 % on two; on Zen 4 no more (BENCHMARKS.md runs 14 and 15): the bound is the better.
// Written once with the compiler's vector type: inlined into a caller built for a wider instruction set, its adds and
// loads take that width.
constexpr int kStreams = 4;
typedef float Lanes16 __attribute__((vector_size(64)));

__attribute__((always_inline)) inline float sumStreamsAt(const float* p, long part) {
  Lanes16 acc[kStreams] = {};
  long i = 0;
  for (; i + 16 <= part; i += 16) {
#pragma GCC unroll 4
    for (int s = 0; s < kStreams; s++) {
      Lanes16 v;
      std::memcpy(&v, p + s * part + i, sizeof v);
      acc[s] += v;
    }
  }
  float total = 0;
  for (int s = 0; s < kStreams; s++) {
    for (int l = 0; l < 16; l++) total += acc[s][l];
    for (long j = i; j < part; j++) total += p[s * part + j];
  }
  return total;
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) float sumStreamsZmm(const float* p, long part) { return sumStreamsAt(p, part); }
__attribute__((target("avx2"))) float sumStreamsYmm(const float* p, long part) { return sumStreamsAt(p, part); }
#endif
float sumStreamsBase(const float* p, long part) { return sumStreamsAt(p, part); }

using StreamsSum = float (*)(const float*, long);
StreamsSum streamsSum() {
#if defined(__x86_64__)
  const CpuFeatures f = cpuFeatures();
  if (f.avx512f) return sumStreamsZmm;
  if (f.avx2) return sumStreamsYmm;
#endif
  return sumStreamsBase;
}

const char* const kKinds[] = {"fp32-scalar", "fp32-ymm", "fp32-zmm", "fp32-neon", "bf16-zmm", "int8-zmm", "int8-ymm"};

void spinBarrier(std::atomic<int>& arrived, int threads) {
  arrived.fetch_add(1);
  while (arrived.load() < threads) {
  }
}

}  // namespace

std::vector<const char*> peakKinds() {
  std::vector<const char*> out;
  for (const char* k : kKinds)
    if (loopOf(k)) out.push_back(k);
  return out;
}

double peakFlops(const std::string& kind, int threads, double seconds, std::string& error) {
  const Loop loop = loopOf(kind);
  if (!loop) {
    error = "kind '" + kind + "' is unknown or not available on this CPU";
    return 0;
  }
  if (threads < 1) threads = 1;
  PoolPtr pool = makePool(threads);
  PoolScope scope(*pool);
  threads = poolThreads();
  std::vector<double> rate(threads, 0.0);
  std::vector<float> sink(threads * 16, 1.0f);
  std::atomic<int> arrived{0};
  // The best 10 ms window of each thread: on a shared machine a neighbour's time slice would otherwise count as ours.
  parallelEach(threads, [&](long, int tid) {
    spinBarrier(arrived, threads);
    const auto t0 = Clock::now();
    for (auto w0 = t0; std::chrono::duration<double>(w0 - t0).count() < seconds;) {
      double flops = 0, elapsed = 0;
      do {
        flops += loop(1L << 12, &sink[tid * 16]);
        elapsed = std::chrono::duration<double>(Clock::now() - w0).count();
      } while (elapsed < 1e-2);
      if (flops / elapsed > rate[tid]) rate[tid] = flops / elapsed;
      w0 = Clock::now();
    }
  });
  double total = 0;
  for (double r : rate) total += r;
  return total / 1e9;
}

double readBandwidth(int threads, size_t bytes, int repeats) {
  if (threads < 1) threads = 1;
  if (repeats < 1) repeats = 1;
  PoolPtr pool = makePool(threads);
  PoolScope scope(*pool);
  threads = poolThreads();
  const KernelTable& k = *tier(supportedTiers().back());  // the widest loads this CPU has
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
  const StreamsSum streams = streamsSum();
  double best = 0;
  for (int rep = 0; rep < repeats; rep++) {
    for (int pattern = 0; pattern < 2; pattern++) {
      std::atomic<int> arrived{0};
      parallelEach(threads, [&](long, int tid) {
        const long b = n * tid / threads, e = n * (tid + 1) / threads;
        spinBarrier(arrived, threads);
        start[tid] = Clock::now();
        sums[tid] = pattern == 0 ? k.sum(data + b, e - b) : streams(data + b, (e - b) / kStreams);
        end[tid] = Clock::now();
      });
      auto t0 = start[0], t1 = end[0];
      for (int t = 1; t < threads; t++) {
        if (start[t] < t0) t0 = start[t];
        if (end[t] > t1) t1 = end[t];
      }
      // The streamed pattern reads whole parts only: at most kStreams - 1 floats of a slice fewer.
      long read = 0;
      for (int t = 0; t < threads; t++) {
        const long len = n * (t + 1) / threads - n * t / threads;
        read += pattern == 0 ? len : len / kStreams * kStreams;
      }
      const double gbs = read * sizeof(float) / std::chrono::duration<double>(t1 - t0).count() / 1e9;
      if (gbs > best) best = gbs;
    }
  }
  volatile float keep = sums[0];
  (void)keep;
  std::free(mem);
  return best;
}

namespace {

// Total length of the union of [begin, end) intervals (seconds), given sorted by begin.
double unionLength(const std::vector<std::pair<double, double>>& gaps) {
  double total = 0, b = 0, e = -1;
  for (const auto& [gb, ge] : gaps) {
    if (gb > e) {
      if (e > b) total += e - b;
      b = gb;
      e = ge;
    } else if (ge > e) {
      e = ge;
    }
  }
  if (e > b) total += e - b;
  return total;
}

}  // namespace

Interruptions measureInterruptions(int threads, double seconds, double minGapUs) {
  if (threads < 1) threads = 1;
  PoolPtr pool = makePool(threads);
  PoolScope scope(*pool);
  threads = poolThreads();
  const double minGap = minGapUs * 1e-6;
  // Gaps as [begin, end) seconds since a start shared by every thread; reserved up front so that recording one never
  // allocates (this host takes ~1,300 gaps a second from a spinning thread: a fifth of this in 10 s).
  std::vector<std::vector<std::pair<double, double>>> gaps(threads);
  for (auto& g : gaps) g.reserve(1 << 16);
  // Every thread spins over the same window, from the moment the last one reaches the start to `seconds` later: a
  // thread that is off its core then counts that time as a gap, and no share can exceed its window.
  std::atomic<int> arrived{0};
  std::atomic<bool> released{false};
  double windowStart = 0;
  const auto origin = Clock::now();
  const auto since = [&] { return std::chrono::duration<double>(Clock::now() - origin).count(); };
  parallelEach(threads, [&](long, int tid) {
    if (arrived.fetch_add(1) == threads - 1) {
      windowStart = since();
      released.store(true, std::memory_order_release);
    } else {
      while (!released.load(std::memory_order_acquire)) {
      }
    }
    auto& mine = gaps[tid];
    const double stop = windowStart + seconds;
    for (double prev = windowStart; prev < stop;) {
      const double t = std::min(since(), stop);
      if (t - prev >= minGap && mine.size() < mine.capacity()) mine.emplace_back(prev, t);
      prev = t;
    }
  });
  Interruptions r;
  std::vector<std::pair<double, double>> all, longOnes;
  for (const auto& g : gaps) {
    double lost = 0;
    for (const auto& [b, e] : g) {
      lost += e - b;
      all.emplace_back(b, e);
      if (e - b >= 1e-3) longOnes.emplace_back(b, e);
    }
    r.lost.push_back(lost / seconds);
  }
  std::sort(all.begin(), all.end());
  std::sort(longOnes.begin(), longOnes.end());
  r.anyLost = unionLength(all) / seconds;
  r.longLost = unionLength(longOnes) / seconds;
  r.gapsPerSecond = static_cast<double>(all.size()) / seconds;
  return r;
}

}  // namespace vl3
