// Own measurement kernels: the benchmark compares our ops with this machine's FMA peak and DRAM read bandwidth, measured the same way on the same thread pool.
#pragma once
#include <cstddef>

namespace vl3 {

// GFLOP/s of an FMA-bound loop on `threads` pool threads (each runs for about `seconds`).
double peakFlops(int threads, double seconds);
// GB/s of a read-only sum over a `bytes` array split across `threads` pool threads; the best of `repeats` passes.
double readBandwidth(int threads, size_t bytes, int repeats);

}  // namespace vl3
