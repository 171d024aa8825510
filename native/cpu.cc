// Own CPU dispatch: one binary must run on any x86-64 (the best of scalar/AVX2/AVX-512 that the CPU has) and on any arm64 (NEON, built twice: baseline and for CPUs with BF16), and a backend may be pinned to any tier the CPU supports.
#include "cpu.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#endif
// On aarch64 the ID registers are privileged, so the OS reports the features: hwcaps on Linux, sysctl on macOS.
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace vl3 {
namespace {

#if defined(__x86_64__)
uint64_t xgetbv0() {
  uint32_t lo, hi;
  asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}
#endif

#if defined(__aarch64__) && defined(__APPLE__)
bool sysctlFlag(const char* name) {
  int v = 0;
  size_t len = sizeof(v);
  return sysctlbyname(name, &v, &len, nullptr, 0) == 0 && v != 0;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27);
  const bool avx = c & (1u << 28);
  const bool fma = c & (1u << 12);
  const bool f16c = c & (1u << 29);
  // The OS must save the YMM (and for AVX-512 the ZMM/opmask) state, or using those registers faults.
  const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  const bool osYmm = avx && (xcr0 & 0x6) == 0x6;
  const bool osZmm = osYmm && (xcr0 & 0xe6) == 0xe6;
  f.fma = fma && osYmm;
  f.f16c = f16c && osYmm;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    const unsigned maxSub = a;
    f.avx2 = (b & (1u << 5)) && osYmm;
    f.avx512f = (b & (1u << 16)) && osZmm;
    f.avx512dq = (b & (1u << 17)) && f.avx512f;
    f.avx512bw = (b & (1u << 30)) && f.avx512f;
    f.avx512vl = (b & (1u << 31)) && f.avx512f;
    f.avx512vnni = (c & (1u << 11)) && f.avx512f;
    if (maxSub >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) {
      f.avxvnni = (a & (1u << 4)) && osYmm;
      f.avx512bf16 = (a & (1u << 5)) && f.avx512f;
    }
  }
#elif defined(__aarch64__) && defined(__linux__)
  // Bits of AT_HWCAP / AT_HWCAP2 (linux/arch/arm64/include/uapi/asm/hwcap.h), spelled out for old headers.
  const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
  f.neon = hw & (1ul << 1);      // HWCAP_ASIMD
  f.dotprod = hw & (1ul << 20);  // HWCAP_ASIMDDP
  f.i8mm = hw2 & (1ul << 13);    // HWCAP2_I8MM
  f.bf16 = hw2 & (1ul << 14);    // HWCAP2_BF16
#elif defined(__aarch64__) && defined(__APPLE__)
  f.neon = true;  // every Apple arm64 CPU
  f.dotprod = sysctlFlag("hw.optional.arm.FEAT_DotProd");
  f.i8mm = sysctlFlag("hw.optional.arm.FEAT_I8MM");
  f.bf16 = sysctlFlag("hw.optional.arm.FEAT_BF16");
#elif defined(__aarch64__)
  f.neon = true;  // Advanced SIMD is part of every ARMv8-A core
#endif
  return f;
}

struct Need {
  const char* feature;
  bool CpuFeatures::*flag;
};

struct Tier {
  const char* name;
  const KernelTable* (*kernels)();  // null: this build has none
  std::vector<Need> needs;
};

// Worst first. avxvnni is avx2 with AVX-VNNI's vpdpbusd for quantized weights: the best tier of the CPUs that have
// it without AVX-512 (Intel client cores since Alder Lake). The AVX-512 tiers are compiled with -mavx512f/bw/dq/vl
// (Skylake-SP's set, which every AVX-512 core since has), on top of AVX2/FMA/F16C. neon needs only Advanced SIMD: where the CPU also has BF16 and dotprod,
// neonKernels() gives its +bf16+dotprod build, whose bf16Dot makes bf16 the default compute mode as on avx512bf16.
const std::vector<Tier>& tiers() {
  static const std::vector<Need> avx2 = {{"avx2", &CpuFeatures::avx2}, {"fma", &CpuFeatures::fma}, {"f16c", &CpuFeatures::f16c}};
  static const std::vector<Need> avx512 = [] {
    std::vector<Need> n = avx2;
    n.insert(n.end(), {{"avx512f", &CpuFeatures::avx512f}, {"avx512bw", &CpuFeatures::avx512bw},
                       {"avx512dq", &CpuFeatures::avx512dq}, {"avx512vl", &CpuFeatures::avx512vl}});
    return n;
  }();
  static const std::vector<Tier> t = {
      {"scalar", &scalarKernels, {}},
      {"avx2", &avx2Kernels, avx2},
      {"avxvnni", &avxvnniKernels, [] {
         std::vector<Need> n = avx2;
         n.push_back({"avxvnni", &CpuFeatures::avxvnni});
         return n;
       }()},
      {"avx512", &avx512Kernels, avx512},
      {"avx512bf16", &avx512bf16Kernels, [] {
         std::vector<Need> n = avx512;
         n.push_back({"avx512bf16", &CpuFeatures::avx512bf16});
         n.push_back({"avx512vnni", &CpuFeatures::avx512vnni});
         return n;
       }()},
      {"neon", &neonKernels, {{"neon", &CpuFeatures::neon}}},
  };
  return t;
}

std::string listNames() {
  std::string s;
  const auto& t = tiers();
  for (size_t i = 0; i < t.size(); i++) s += std::string(i == 0 ? "" : i + 1 == t.size() ? " or " : ", ") + t[i].name;
  return s;
}

}  // namespace

CpuFeatures cpuFeatures() {
  static const CpuFeatures f = detect();
  return f;
}

const std::vector<const char*>& tierNames() {
  static const std::vector<const char*> names = [] {
    std::vector<const char*> n;
    for (const Tier& t : tiers()) n.push_back(t.name);
    return n;
  }();
  return names;
}

const KernelTable* tierKernels(const std::string& name, std::string& error) {
  for (const Tier& t : tiers()) {
    if (name != t.name) continue;
    const CpuFeatures f = cpuFeatures();
    std::string missing;
    for (const Need& n : t.needs)
      if (!(f.*n.flag)) missing += std::string(missing.empty() ? "" : ", ") + n.feature;
    const KernelTable* k = t.kernels ? t.kernels() : nullptr;
    if (!missing.empty()) error = "isa '" + name + "' is not available: this CPU lacks " + missing;
    else if (!k) error = "isa '" + name + "' is not available: this build has no " + name + " kernels";
    else return k;
    return nullptr;
  }
  error = "isa '" + name + "' is unknown (expected " + listNames() + ")";
  return nullptr;
}

std::vector<const char*> supportedTiers() {
  std::vector<const char*> out;
  std::string ignored;
  for (const Tier& t : tiers())
    if (tierKernels(t.name, ignored)) out.push_back(t.name);
  return out;
}

const KernelTable* defaultKernels(std::string& error) {
  const char* env = std::getenv("VL3_ISA");
  if (env && env[0]) {
    const KernelTable* k = tierKernels(env, error);
    if (!k) error = std::string("VL3_ISA=") + env + ": " + error;
    return k;
  }
  return tierKernels(supportedTiers().back(), error);
}

bool parseCompute(const std::string& name, Compute& out) {
  if (name == "exact") out = Compute::Exact;
  else if (name == "bf16") out = Compute::Bf16;
  else return false;
  return true;
}

const char* computeName(Compute c) { return c == Compute::Bf16 ? "bf16" : "exact"; }

bool defaultCompute(const KernelTable& table, Compute& out, std::string& error) {
  const char* env = std::getenv("VL3_COMPUTE");
  if (env && env[0]) {
    if (parseCompute(env, out)) return true;
    error = std::string("VL3_COMPUTE=") + env + ": expected 'exact' or 'bf16'";
    return false;
  }
  out = table.bf16Dot ? Compute::Bf16 : Compute::Exact;
  return true;
}

}  // namespace vl3
