// Own AVX-512 + AVX512_BF16 kernels: the avx512 tier's, except that Compute::Bf16 matmuls multiply bf16 pairs with vdpbf16ps; compiled alone with -mavx512bf16 on top of the avx512 flags.
#include "kernels.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BF16__)
#define VL3_ISA avx512bf16
#define VL3_ISA_NAME "avx512bf16"
#define VL3_BF16_DOT 1
#include "isa_avx512.h"
#include "ops_impl.h"

namespace vl3 {
const KernelTable* avx512bf16Kernels() { return &avx512bf16::table; }
}  // namespace vl3
#else
namespace vl3 {
const KernelTable* avx512bf16Kernels() { return nullptr; }
}  // namespace vl3
#endif
