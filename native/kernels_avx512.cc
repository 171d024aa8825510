// Own AVX-512 kernels: zmm GEMM/GEMV/attention tiles and masked row ops; compiled alone with -mavx512f/bw/dq/vl so the rest of the module stays baseline x86-64.
#include "kernels.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define VL3_ISA avx512
#define VL3_ISA_NAME "avx512"
#include "isa_avx512.h"
#include "ops_impl.h"

namespace vl3 {
const KernelTable* avx512Kernels() { return &avx512::table; }
}  // namespace vl3
#else
namespace vl3 {
const KernelTable* avx512Kernels() { return nullptr; }
}  // namespace vl3
#endif
