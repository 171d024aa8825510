// Own AVX2/FMA kernels with AVX-VNNI: the avx2 tier's, except that quantized weights' integer dots use vpdpbusd on ymm (CPUs with AVX-VNNI but no AVX-512, such as Intel's Alder Lake and later client cores); compiled alone with -mavxvnni on top of the avx2 flags.
#include "kernels.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__AVXVNNI__)
#define VL3_ISA avxvnni
#define VL3_AVX2_NS avxvnni
#define VL3_ISA_NAME "avxvnni"
#include "isa_avx2.h"
#include "ops_impl.h"

namespace vl3 {
const KernelTable* avxvnniKernels() { return &avxvnni::table; }
}  // namespace vl3
#else
namespace vl3 {
const KernelTable* avxvnniKernels() { return nullptr; }
}  // namespace vl3
#endif
