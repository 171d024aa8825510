// Own AArch64 NEON kernels: arm64 CPUs (Linux and macOS) get a hand-blocked build of every op instead of the portable loops; baseline Advanced SIMD only, so it runs on any ARMv8-A.
#include "kernels.h"
#include "neon_bf16.h"

#if defined(__aarch64__)
#include "cpu.h"
#define VL3_ISA neon
#define VL3_ISA_NAME "neon"
#include "isa_neon.h"
#include "ops_impl.h"

namespace vl3 {
const KernelTable* neonBaselineKernels() { return &neon::table; }

// The +bf16+dotprod build may only run where the CPU has both, so the choice is made here, in baseline code.
const KernelTable* neonKernels() {
  static const KernelTable* const t = [] {
    const CpuFeatures f = cpuFeatures();
    return f.bf16 && f.dotprod && neonBf16KernelsUnchecked() ? neonBf16KernelsUnchecked() : &neon::table;
  }();
  return t;
}
}  // namespace vl3
#else
namespace vl3 {
const KernelTable* neonBaselineKernels() { return nullptr; }
const KernelTable* neonKernels() { return nullptr; }
}  // namespace vl3
#endif
