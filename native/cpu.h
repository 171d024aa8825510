// Own CPU dispatch: one binary must run on any x86-64 (the best of scalar/AVX2/AVX-512 that the CPU has) and on any arm64 (NEON, built twice: baseline and for CPUs with BF16), and a backend may be pinned to any tier the CPU supports.
#pragma once
#include <string>
#include <vector>

#include "kernels.h"

namespace vl3 {

// What the CPU and OS support (x86: CPUID with the XCR0 state checks; aarch64: getauxval on Linux, sysctl on
// macOS). Field names are shared with the TypeScript side (nativeInfo().features).
struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;
  bool avx512bf16 = false, avx512vnni = false, avxvnni = false;
  bool neon = false, dotprod = false, i8mm = false, bf16 = false;
};

CpuFeatures cpuFeatures();

// Kernel tiers by name, worst first: "scalar", "avx2", "avx512", "avx512bf16", "neon".
const std::vector<const char*>& tierNames();
// The tiers this CPU and build can run, worst first.
std::vector<const char*> supportedTiers();
// The table of a tier, or null with `error` saying why not ("unknown tier", or the CPU features it lacks).
const KernelTable* tierKernels(const std::string& name, std::string& error);
// The tier a context gets when its creator names none: VL3_ISA when set (an error when unknown or unavailable),
// else the best tier this CPU supports.
const KernelTable* defaultKernels(std::string& error);
// The compute mode a context on `table` gets when its creator names none: VL3_COMPUTE when set (an error when it is
// not "exact" or "bf16"), else bf16 where the tier has a bf16 dot-product instruction and exact elsewhere.
bool defaultCompute(const KernelTable& table, Compute& out, std::string& error);
// "exact" / "bf16" to a mode; false for anything else.
bool parseCompute(const std::string& name, Compute& out);
const char* computeName(Compute c);

}  // namespace vl3
