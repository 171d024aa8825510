// Own arm64 bf16-compute entry points: the BFDOT/BFMMLA matmul is compiled in its own translation unit with +bf16 and reached only through a run-time CPU check.
#pragma once
#include "kernels.h"

namespace vl3 {

using MatmulFn = void (*)(const MatmulArgs&);

// The bf16 compute mode's matmul for arm64: x rounded to bf16 (nearest even), bf16 × bf16 products summed in f32 by
// BFDOT (few rows of x) or BFMMLA (more), bias added in f32. f32 weights go to the NEON f32 matmul unchanged.
// Null unless this is an aarch64 build whose compiler has the bf16 intrinsics and the CPU reports BF16
// (HWCAP2_BF16 on Linux, hw.optional.arm.FEAT_BF16 on macOS).
MatmulFn neonBf16Matmul();

// The same function without the CPU check (null only when the build has no bf16 code): for neonBf16Matmul alone,
// since calling it on a CPU without BF16 raises SIGILL.
MatmulFn neonBf16MatmulUnchecked();

}  // namespace vl3
