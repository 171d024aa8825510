// Own portable kernels: the build of every op for CPUs without AVX2 or NEON (and for any other architecture), checked against the reference in tests through a backend pinned to isa: "scalar" (or VL3_ISA=scalar).
#define VL3_ISA scalar
#define VL3_ISA_NAME "scalar"
#include "isa_scalar.h"
#include "ops_impl.h"

namespace vl3 {
const KernelTable* scalarKernels() { return &scalar::table; }
}  // namespace vl3
