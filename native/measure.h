// Own measurement kernels: the benchmark compares our ops with this machine's limits (peak of each instruction kind, DRAM read bandwidth), measured the same way on the same kind of thread pool.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace vl3 {

// The peak kinds this machine can run, of: "fp32-scalar" (the scalar tier's FMA loop, as the compiler vectorizes it
// for the baseline ISA), "fp32-ymm" (AVX2 FMA), "fp32-zmm" (AVX-512 FMA), "fp32-neon" (NEON FMLA), "bf16-zmm"
// (vdpbf16ps), "int8-zmm" (AVX512-VNNI vpdpbusd), "int8-ymm" (AVX-VNNI vpdpbusd).
std::vector<const char*> peakKinds();
// GFLOP/s (GOP/s for the int8 kinds) of a loop of independent chains of that instruction, on `threads` threads of a
// pool of its own (each runs for about `seconds`; the sum of each thread's best 10 ms window); `error` is set for an
// unknown or unavailable kind.
double peakFlops(const std::string& kind, int threads, double seconds, std::string& error);
// GB/s of a read-only sum over a `bytes` array split across `threads` threads of a pool of its own; the best of
// `repeats` passes of each of two orders: each thread's slice front to back, and as 4 parts read together.
double readBandwidth(int threads, size_t bytes, int repeats);

// What the machine takes from threads that never block: `threads` threads of a pool of its own spin reading the clock
// for `seconds`, and every gap of at least `minGapUs` between two reads is time the thread was off its core
// (interrupts, the hypervisor, other tasks). A decode step waits for its slowest thread at every op, so `anyLost`
// (time during which at least one thread was off) is what such a step can lose.
struct Interruptions {
  std::vector<double> lost;  // fraction of the time each thread was off its core
  double anyLost = 0;        // fraction of the time at least one was
  double longLost = 0;       // fraction of the time at least one was off in gaps of 1 ms or more
  double gapsPerSecond = 0;  // gaps of all threads together
};
Interruptions measureInterruptions(int threads, double seconds, double minGapUs);

}  // namespace vl3
