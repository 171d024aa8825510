// Own CPU dispatch: one binary must run on any x86-64 (AVX2 where present, scalar elsewhere) and on aarch64.
#pragma once
#include "kernels.h"

namespace vl3 {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false, avx512f = false;
  // aarch64: Advanced SIMD (always there on arm64), SDOT/UDOT, SMMLA/UMMLA, BFDOT/BFMMLA/BFCVT.
  bool neon = false, dotprod = false, i8mm = false, bf16 = false;
};

CpuFeatures cpuFeatures();
// The table ops use now: AVX2 when the CPU and OS support it (NEON on aarch64), unless VL3_FORCE_SCALAR=1 or
// setKernel("scalar").
const KernelTable& kernels();
// "auto" or "scalar"; returns false for an unknown name. "avx2" and "neon" are accepted where available.
bool setKernel(const char* name);

}  // namespace vl3
