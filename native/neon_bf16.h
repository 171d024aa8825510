// Own arm64 tier builds: the neon tier exists twice, a baseline ARMv8.0 build and one compiled with -march=armv8.2-a+bf16+dotprod whose Compute::Bf16 matmul multiplies with BFMMLA/BFDOT (and SDOT for quantized weights); neonKernels() (kernels.h) picks one from the CPU's features.
#pragma once
#include "kernels.h"

namespace vl3 {

// The baseline build (null off aarch64): safe on every arm64 CPU. For neonKernels() and for the kernel harness,
// which checks this build on CPUs with BF16 too.
const KernelTable* neonBaselineKernels();

// The +bf16+dotprod build (VL3_BF16_DOT): null where the build has no such code (not aarch64, or a compiler without
// the bf16 intrinsics). Unchecked: its code raises SIGILL on a CPU without BF16 or dotprod, so only neonKernels()
// calls this, after reading the CPU features.
const KernelTable* neonBf16KernelsUnchecked();

}  // namespace vl3
