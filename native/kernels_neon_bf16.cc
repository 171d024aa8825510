// Own arm64 bf16 kernels: the neon tier's ops, except that Compute::Bf16 matmuls multiply bf16 as stored with BFMMLA (packed GEMM) and BFDOT (GEMV), two to four times the products per instruction of f32 FMLA and no widening.
// Compiled alone with -march=armv8.2-a+bf16+dotprod (binding.gyp, the harness; GCC's bf16 intrinsics need v8.2, and
// every CPU with BF16 has it; dotprod gives the quantized weights' integer dot SDOT), so that nothing else is built
// past baseline ARMv8-A. Everything here sits in an anonymous
// namespace and only unique lambdas instantiate shared templates, so the linker cannot hand a v8.2 copy of shared
// inline code to baseline callers (test/neon.test.ts checks the object for weak symbols). Reached only through
// neonKernels(), which checks the CPU for both first.
#include "neon_bf16.h"

#if defined(__aarch64__) && defined(__ARM_FEATURE_BF16_VECTOR_ARITHMETIC)
#define VL3_ISA neonbf16
#define VL3_ISA_NAME "neon"
#define VL3_BF16_DOT 1
#include "isa_neon.h"
#include "ops_impl.h"

namespace vl3 {
const KernelTable* neonBf16KernelsUnchecked() { return &neonbf16::table; }
}  // namespace vl3
#else
namespace vl3 {
const KernelTable* neonBf16KernelsUnchecked() { return nullptr; }
}  // namespace vl3
#endif
