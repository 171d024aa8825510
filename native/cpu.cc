// Own CPU dispatch: one binary must run on any x86-64 (AVX2 where present, scalar elsewhere) and on aarch64.
#include "cpu.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
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

CpuFeatures detect() {
  CpuFeatures f;
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
  return false;
}

}  // namespace vl3
