// Own AVX2/FMA kernels: bf16 weights widened in-register, hand-blocked GEMM and attention; compiled alone with -mavx2 -mfma -mf16c so the rest of the module stays baseline x86-64.
#include "kernels.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#define VL3_ISA avx2
#define VL3_ISA_NAME "avx2"
#include "isa_avx2.h"
#include "ops_impl.h"

namespace vl3 {
const KernelTable* avx2Kernels() { return &avx2::table; }
}  // namespace vl3
#else
namespace vl3 {
const KernelTable* avx2Kernels() { return nullptr; }
}  // namespace vl3
#endif
