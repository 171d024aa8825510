// Own CPU dispatch: one binary must run on any x86-64 (AVX2 where present, scalar elsewhere) and on aarch64.
#include "cpu.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

// On aarch64 the ID registers are privileged, so the OS reports the features: hwcaps on Linux, sysctl on macOS.
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1UL << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1UL << 13)
#endif
#ifndef HWCAP2_BF16
#define HWCAP2_BF16 (1UL << 14)
#endif
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
#if defined(__aarch64__) && defined(__linux__)
  const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
  f.neon = hw & HWCAP_ASIMD;
  f.dotprod = hw & HWCAP_ASIMDDP;
  f.i8mm = hw2 & HWCAP2_I8MM;
  f.bf16 = hw2 & HWCAP2_BF16;
#elif defined(__aarch64__) && defined(__APPLE__)
  f.neon = true;  // every Apple arm64 CPU
  f.dotprod = sysctlFlag("hw.optional.arm.FEAT_DotProd");
  f.i8mm = sysctlFlag("hw.optional.arm.FEAT_I8MM");
  f.bf16 = sysctlFlag("hw.optional.arm.FEAT_BF16");
#endif
#if defined(__x86_64__)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  bool osxsave = c & (1u << 27);
  bool avx = c & (1u << 28);
  bool fma = c & (1u << 12);
  bool f16c = c & (1u << 29);
  // The OS must save the YMM (and for AVX-512 the ZMM/opmask) state, or using those registers faults.
  uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  bool osYmm = (xcr0 & 0x6) == 0x6;
  bool osZmm = (xcr0 & 0xe6) == 0xe6;
  bool avx2 = false, avx512f = false;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    avx2 = b & (1u << 5);
    avx512f = b & (1u << 16);
  }
  f.avx2 = avx && avx2 && osYmm;
  f.fma = fma && avx && osYmm;
  f.f16c = f16c && avx && osYmm;
  f.avx512f = avx512f && osZmm;
#endif
  return f;
}

const KernelTable* autoTable() {
  CpuFeatures f = cpuFeatures();
  const char* force = std::getenv("VL3_FORCE_SCALAR");
  bool forced = force && force[0] && std::strcmp(force, "0") != 0;
  const KernelTable* avx2 = avx2Kernels();
  if (!forced && avx2 && f.avx2 && f.fma && f.f16c) return avx2;
  if (!forced && neonKernels() && f.neon) return neonKernels();
  return scalarKernels();
}

std::atomic<const KernelTable*> active{nullptr};

}  // namespace

CpuFeatures cpuFeatures() {
  static const CpuFeatures f = detect();
  return f;
}

const KernelTable& kernels() {
  const KernelTable* t = active.load(std::memory_order_acquire);
  if (!t) {
    t = autoTable();
    active.store(t, std::memory_order_release);
  }
  return *t;
}

bool setKernel(const char* name) {
  if (std::strcmp(name, "auto") == 0) {
    active.store(autoTable());
    return true;
  }
  if (std::strcmp(name, "scalar") == 0) {
    active.store(scalarKernels());
    return true;
  }
  if (std::strcmp(name, "avx2") == 0) {
    CpuFeatures f = cpuFeatures();
    if (!avx2Kernels() || !f.avx2 || !f.fma || !f.f16c) return false;
    active.store(avx2Kernels());
    return true;
  }
  if (std::strcmp(name, "neon") == 0) {
    if (!neonKernels() || !cpuFeatures().neon) return false;
    active.store(neonKernels());
    return true;
  }
  return false;
}

}  // namespace vl3
