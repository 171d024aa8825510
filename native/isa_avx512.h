// Own AVX-512 primitives: 32 zmm registers hold a GEMM tile twice the AVX2 one's, masks replace scalar tails, and vdpbf16ps multiplies bf16 pairs natively where the CPU has it.
// Included by kernels_avx512.cc and kernels_avx512bf16.cc (compiled with -mavx512f/bw/dq/vl, the latter also with
// -mavx512bf16), inside an anonymous namespace in vl3::VL3_ISA, so nothing here can be picked by the linker for
// another translation unit. VL3_BF16_DOT = 1 adds the bf16 dot-product GEMM and GEMV that Compute::Bf16 runs on.
// Where 512-bit vectors buy nothing (register transposes, copies of query panels) the AVX2 tier's ymm code is reused
// as it is: it compiles to the same instructions here.
#pragma once
#include <immintrin.h>

// GCC 12 reports the _mm512_undefined_* placeholders inside its own intrinsics as uninitialized wherever they are
// inlined (a false positive); the rest of this translation unit's diagnostics stay on.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <cmath>
#include <cstdint>
#include <cstring>

#include "isa_avx2.h"
#include "kernels.h"
#include "quant.h"

namespace vl3 {
namespace VL3_ISA {
namespace {

using avx2::attnLoadPanel;
using avx2::attnStorePanel;
using avx2::bf16ToF32;
using avx2::expScalar;
using avx2::roundBf16x8;
using avx2::transpose8;
using avx2::widenBf16x8;

constexpr int MR = 8;   // rows of a GEMM micro-tile: 16 accumulators, two B vectors and broadcasts in 32 zmm
constexpr int NR = 32;  // columns: two zmm vectors
// A KC×NR f32 panel of B (32 KiB) stays in L1 (48 KiB on Zen 5) while the MC×KC block of A (192 KiB) stays in L2.
constexpr long KC = 256;
constexpr long MC = 192;
constexpr long NB = 2048;
#if VL3_BF16_DOT
// k per vdpbf16ps step: the bf16 panels hold pairs.
constexpr long kDotK = 2;
// The bf16 GEMM's K block: its B panels hold 2-byte values, so twice the depth fills the same 32 KiB of L1 (and
// halves the C-tile updates); measured 2-5 % faster than 256 on Zen 5, and no better at 768 or 1024.
constexpr long KCDot = 512;
#endif
// Up to this many rows of x the unpacked GEMV beat the packed GEMM on the Qwen2 shapes (Zen 5, one thread): the f32
// GEMV runs at ~95 % of the zmm FMA peak up to M = 48-63, where the packed GEMM reached 75-85 %; the bf16-pair GEMV
// (Compute::Bf16 on avx512bf16) at 250-270 GFLOP/s for M = 24-63, which the packed bf16 GEMM passes from M = 32-48.
constexpr long kGemvMaxM = 63;
constexpr long kGemvMaxMDot = 31;
// Keys per K panel and output rows per V panel of the tiled attention: 12 zmm accumulators of 16 query rows.
constexpr long kAttnMR = 12;

inline __mmask16 mask16(long n) { return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1); }
inline __mmask32 mask32(long n) { return n >= 32 ? 0xffffffffu : (1u << n) - 1; }

inline __m512 widenBf16x16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}

inline __m512 widenBf16x16Masked(const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

// f32ToBf16 on 16 lanes, the bf16 words in the low halves (zero high halves).
inline __m512i bf16Bits16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_or_si512(u, _mm512_set1_epi32(0x400000)));
  return _mm512_srli_epi32(r, 16);
}

inline float hsum16(__m512 v) { return _mm512_reduce_add_ps(v); }

// ---------------------------------------------------------------------------------------------------------------
// GEMM

// C[MR×32] (ldc) = or += A·B over kc: A a packed panel [kc][MR]; B 32 floats per k, ldb apart (NR for a packed
// panel, or rows of a matrix read in place). `bias` (32 floats) is added when not accumulating.
inline void microKernel(long kc, const float* A, const float* B, long ldb, float* C, long ldc, bool accumulate,
                        const float* bias) {
  for (int i = 0; i < MR; i++) {
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc + NR - 1), _MM_HINT_T0);
  }
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++) c0[i] = c1[i] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (long k = 0; k < kc; k++) {
    const __m512 b0 = _mm512_loadu_ps(B), b1 = _mm512_loadu_ps(B + 16);
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      const __m512 a = _mm512_set1_ps(A[i]);
      c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
    }
    A += MR;
    B += ldb;
  }
  if (accumulate) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      float* c = C + i * ldc;
      _mm512_storeu_ps(c, _mm512_add_ps(_mm512_loadu_ps(c), c0[i]));
      _mm512_storeu_ps(c + 16, _mm512_add_ps(_mm512_loadu_ps(c + 16), c1[i]));
    }
  } else {
    const __m512 b0 = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
    const __m512 b1 = bias ? _mm512_loadu_ps(bias + 16) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      _mm512_storeu_ps(C + i * ldc, _mm512_add_ps(c0[i], b0));
      _mm512_storeu_ps(C + i * ldc + 16, _mm512_add_ps(c1[i], b1));
    }
  }
}

// Packs nr (<= 32) rows of w (row stride ldw elements, f32 or bf16), kc elements each, into a B panel [kc][32]:
// 8×8 register transposes, widening bf16 on the way; columns nr..31 are zero. `round`: f32 weights are rounded to
// bf16 values (Compute::Bf16 without the dot instruction).
inline void packB(const void* w, WType type, long ldw, int nr, long kc, float* dst, bool round) {
  long k = 0;
  if (nr == NR) {
    for (; k + 8 <= kc; k += 8) {
      for (int q = 0; q < 4; q++) {
        __m256 r[8];
        for (int i = 0; i < 8; i++) {
          const long off = (q * 8 + i) * ldw + k;
          r[i] = type == WType::BF16 ? widenBf16x8(static_cast<const uint16_t*>(w) + off)
                                     : _mm256_loadu_ps(static_cast<const float*>(w) + off);
          if (round && type == WType::F32) r[i] = roundBf16x8(r[i]);
        }
        transpose8(r);
        for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + (k + i) * NR + q * 8, r[i]);
      }
    }
  }
  for (; k < kc; k++) {
    float* d = dst + k * NR;
    for (int j = 0; j < nr; j++) {
      const long off = j * ldw + k;
      const float v = type == WType::BF16 ? bf16ToF32(static_cast<const uint16_t*>(w)[off]) : static_cast<const float*>(w)[off];
      d[j] = round && type == WType::F32 ? roundBf16(v) : v;
    }
    for (int j = nr; j < NR; j++) d[j] = 0.0f;
  }
}

#if VL3_BF16_DOT
// The bf16 GEMM works on pairs: element (i, p) of a panel is one 32-bit word holding k = 2p (low half) and 2p + 1
// (high half), so vdpbf16ps multiplies a broadcast pair of x by a vector of 16 weight pairs. kp: kc rounded up to
// even, the odd tail padded with a zero.

inline uint32_t pairOf(uint16_t lo, uint16_t hi) { return lo | static_cast<uint32_t>(hi) << 16; }

// Rows [0, mc) of x (f32) into A panels of MR rows, [kp/2][MR] pairs each, rounded to bf16; zero rows past mc.
// Sixteen values of each of 8 rows at a time: rounded to 8 pairs per row, then one 8×8 transpose of 32-bit words
// makes them 8 consecutive pair-rows of the panel.
inline void packABf16(const float* x, long ldx, long mc, long kc, uint16_t* dst) {
  const long kp = (kc + 1) / 2 * 2;
  for (long i0 = 0; i0 < mc; i0 += MR) {
    uint32_t* d = reinterpret_cast<uint32_t*>(dst + i0 * kp);
    long k = 0;
    if (i0 + MR <= mc) {
      for (; k + 16 <= kc; k += 16) {
        __m256 r[8];
        for (int i = 0; i < 8; i++)
          r[i] = _mm256_castsi256_ps(_mm512_cvtepi32_epi16(bf16Bits16(_mm512_loadu_ps(x + (i0 + i) * ldx + k))));
        transpose8(r);
        for (int i = 0; i < 8; i++) _mm256_storeu_ps(reinterpret_cast<float*>(d + (k / 2 + i) * MR), r[i]);
      }
    }
    for (; k < kc; k += 2) {
      for (long r = 0; r < MR; r++) {
        const float* s = x + (i0 + r) * ldx;
        const bool row = i0 + r < mc;
        d[k / 2 * MR + r] = row ? pairOf(f32ToBf16(s[k]), k + 1 < kc ? f32ToBf16(s[k + 1]) : 0) : 0;
      }
    }
  }
}

// nr (<= 32) rows of w into a B panel [kp/2][32] pairs; bf16 rows are already pairs in memory, so whole-panel
// packing is 8×8 transposes of 32-bit words; f32 weights are rounded one by one (Compute::Bf16 with f32 weights).
inline void packBBf16(const void* w, WType type, long ldw, int nr, long kc, uint16_t* dst) {
  uint32_t* d = reinterpret_cast<uint32_t*>(dst);
  long k = 0;
  if (nr == NR && type == WType::BF16) {
    const uint16_t* wb = static_cast<const uint16_t*>(w);
    for (; k + 16 <= kc; k += 16) {
      for (int q = 0; q < 4; q++) {
        __m256 r[8];
        for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(reinterpret_cast<const float*>(wb + (q * 8 + i) * ldw + k));
        transpose8(r);
        for (int i = 0; i < 8; i++) _mm256_storeu_ps(reinterpret_cast<float*>(d + (k / 2 + i) * NR + q * 8), r[i]);
      }
    }
  }
  auto at = [&](int j, long kk) -> uint16_t {
    if (kk >= kc) return 0;
    const long off = j * ldw + kk;
    return type == WType::BF16 ? static_cast<const uint16_t*>(w)[off] : f32ToBf16(static_cast<const float*>(w)[off]);
  };
  for (; k < kc; k += 2) {
    uint32_t* row = d + k / 2 * NR;
    for (int j = 0; j < NR; j++) row[j] = j < nr ? pairOf(at(j, k), at(j, k + 1)) : 0;
  }
}

// C[MR×32] = or += A·B over kp/2 pairs (the bf16 twin of microKernel).
inline void microKernelBf16(long kp, const uint16_t* A, const uint16_t* B, float* C, long ldc, bool accumulate,
                            const float* bias) {
  for (int i = 0; i < MR; i++) {
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc + NR - 1), _MM_HINT_T0);
  }
  const uint32_t* a32 = reinterpret_cast<const uint32_t*>(A);
  const __m512i* b = reinterpret_cast<const __m512i*>(B);
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++) c0[i] = c1[i] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (long p = 0; p < kp / 2; p++) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 1);
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(a32[i]));
      c0[i] = _mm512_dpbf16_ps(c0[i], a, b0);
      c1[i] = _mm512_dpbf16_ps(c1[i], a, b1);
    }
    a32 += MR;
    b += 2;
  }
  if (accumulate) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      float* c = C + i * ldc;
      _mm512_storeu_ps(c, _mm512_add_ps(_mm512_loadu_ps(c), c0[i]));
      _mm512_storeu_ps(c + 16, _mm512_add_ps(_mm512_loadu_ps(c + 16), c1[i]));
    }
  } else {
    const __m512 b0 = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
    const __m512 b1 = bias ? _mm512_loadu_ps(bias + 16) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      _mm512_storeu_ps(C + i * ldc, _mm512_add_ps(c0[i], b0));
      _mm512_storeu_ps(C + i * ldc + 16, _mm512_add_ps(c1[i], b1));
    }
  }
}

// A bf16 micro-tile that may be cut by the edge of C (see tile in ops_impl.h).
inline void tileBf16(long kp, const uint16_t* A, const uint16_t* B, float* C, long ldc, long mr, long nr,
                     bool accumulate, const float* bias) {
  if (mr == MR && nr == NR) {
    microKernelBf16(kp, A, B, C, ldc, accumulate, bias);
    return;
  }
  alignas(64) float t[MR * NR];
  microKernelBf16(kp, A, B, t, NR, false, bias);
  for (long i = 0; i < mr; i++)
    for (long j = 0; j < nr; j++) C[i * ldc + j] = accumulate ? C[i * ldc + j] + t[i * NR + j] : t[i * NR + j];
}
#endif  // VL3_BF16_DOT

// ---------------------------------------------------------------------------------------------------------------
// GEMV: w read in place, once, as one sequential stream per block of rows (the structure of the AVX2 tier's, with
// 16-lane vectors and masked tails).

// Prefetching ahead of the weight stream, as on AVX2 (see isa_avx2.h), but farther: a step here reads 128 bytes,
// and 256 bytes ahead measured best of 0-1024 on Zen 5 (about 85 % of the read bandwidth on one thread, best of 5).
constexpr long kGemvPrefetch = 256;

template <WType TYPE>
inline __m512 loadW16(const void* w, long off) {
  if (TYPE == WType::BF16) return widenBf16x16(static_cast<const uint16_t*>(w) + off);
  return _mm512_loadu_ps(static_cast<const float*>(w) + off);
}

template <WType TYPE>
inline __m512 loadW16Masked(const void* w, long off, __mmask16 m) {
  if (TYPE == WType::BF16) return widenBf16x16Masked(static_cast<const uint16_t*>(w) + off, m);
  return _mm512_maskz_loadu_ps(m, static_cast<const float*>(w) + off);
}

// x's elements as f32: stored as f32, or (a decode step under Compute::Bf16, whose x is rounded to bf16 anyway) as bf16
// words, which widen exactly to the same values.
inline __m512 loadX16(const float* x, long k) { return _mm512_loadu_ps(x + k); }
inline __m512 loadX16(const uint16_t* x, long k) { return widenBf16x16(x + k); }
inline __m512 loadX16Masked(const float* x, long k, __mmask16 m) { return _mm512_maskz_loadu_ps(m, x + k); }
inline __m512 loadX16Masked(const uint16_t* x, long k, __mmask16 m) { return widenBf16x16Masked(x + k, m); }

// A weight row's dot from its U accumulators, summed in order: one definition, so that every GEMV shape gives a row
// the same bits.
template <int U>
inline float rowDot(const __m512 (&acc)[U]) {
  __m512 a = acc[0];
  for (int u = 1; u < U; u++) a = _mm512_add_ps(a, acc[u]);
  return hsum16(a);
}

// One weight row against MM activation rows, U vectors of weights per step with U accumulators per activation row,
// rows visited in memory order as one stream. Every output is summed in the same order whatever MM is, so a row of x
// gets the same bits alone (decode) as in a batch of decoding sequences (the engine's batched decode relies on it).
template <int MM, WType TYPE, class X = float>
inline void gemvRow(const X* x, long K, const void* wRow, float* out, long ldo, float bias) {
  constexpr int U = 4;
  constexpr long STEP = 16 * U;
  constexpr long esz = TYPE == WType::BF16 ? 2 : 4;
  const char* wb = static_cast<const char*>(wRow);
  __m512 acc[MM][U];
  for (int m = 0; m < MM; m++)
    for (int u = 0; u < U; u++) acc[m][u] = _mm512_setzero_ps();
  long k = 0;
  for (; k + STEP <= K; k += STEP) {
    for (long off = 0; off < STEP * esz; off += 64) _mm_prefetch(wb + k * esz + off + kGemvPrefetch, _MM_HINT_T0);
    __m512 wv[U];
#pragma GCC unroll 8
    for (int u = 0; u < U; u++) wv[u] = loadW16<TYPE>(wRow, k + 16 * u);
#pragma GCC unroll 8
    for (int m = 0; m < MM; m++)
#pragma GCC unroll 8
      for (int u = 0; u < U; u++) acc[m][u] = _mm512_fmadd_ps(wv[u], loadX16(x + m * K, k + 16 * u), acc[m][u]);
  }
  for (; k < K; k += 16) {
    const __mmask16 mk = mask16(K - k);
    const __m512 wv = loadW16Masked<TYPE>(wRow, k, mk);
    for (int m = 0; m < MM; m++) acc[m][0] = _mm512_fmadd_ps(wv, loadX16Masked(x + m * K, k, mk), acc[m][0]);
  }
  for (int m = 0; m < MM; m++) out[m * ldo] = rowDot<U>(acc[m]) + bias;
}

// Weight rows in blocks of ~128 KiB: the first group of activation rows streams a block from memory, the others find
// it in L2, so w is read from DRAM once for any M. (Tiles of several weight rows, as the bf16 dot GEMV below runs,
// would load less per FMA, but they sum in another order than this one-row kernel does at M = 1, and a batch's rows
// must get the bits they get alone.)
template <class Row>
inline void gemvBlocks(int M, long K, long esz, long nRows, const Row& row) {
  long block = (128L << 10) / (K * esz);
  if (block < 1) block = 1;
  for (long n0 = 0; n0 < nRows; n0 += block) {
    const long nb = n0 + block <= nRows ? block : nRows - n0;
    for (int m0 = 0; m0 < M; m0 += 4) {
      const int mm = M - m0 >= 4 ? 4 : M - m0;
      for (long n = 0; n < nb; n++) row(m0, mm, n0 + n);
    }
  }
}

// gemvRow<1, TYPE> for S weight rows `apart` bytes apart at once (the same operations per row): each x vector
// serves S rows, which are S sequential streams. With k = 8960 (the down projection) x is 35 KiB of f32, past L1, and
// reloading it for every row held one Zen 4 core to 12 GB/s of bf16 weights against 26 at k = 1536.
template <int S, WType TYPE, class X>
inline void gemvRowsFar(const X* x, long K, const char* w, long apart, float* out, long outApart, const float* bias) {
  constexpr int U = 4;
  constexpr long STEP = 16 * U;
  constexpr long esz = TYPE == WType::BF16 ? 2 : 4;
  __m512 acc[S][U];
  for (int s = 0; s < S; s++)
    for (int u = 0; u < U; u++) acc[s][u] = _mm512_setzero_ps();
  long k = 0;
  for (; k + STEP <= K; k += STEP) {
    for (int s = 0; s < S; s++)
      for (long off = 0; off < STEP * esz; off += 64) _mm_prefetch(w + s * apart + k * esz + off + kGemvPrefetch, _MM_HINT_T0);
#pragma GCC unroll 8
    for (int u = 0; u < U; u++) {
      const __m512 xv = loadX16(x, k + 16 * u);
#pragma GCC unroll 8
      for (int s = 0; s < S; s++) acc[s][u] = _mm512_fmadd_ps(loadW16<TYPE>(w + s * apart, k + 16 * u), xv, acc[s][u]);
    }
  }
  for (; k < K; k += 16) {
    const __mmask16 mk = mask16(K - k);
    const __m512 xv = loadX16Masked(x, k, mk);
    for (int s = 0; s < S; s++) acc[s][0] = _mm512_fmadd_ps(loadW16Masked<TYPE>(w + s * apart, k, mk), xv, acc[s][0]);
  }
  for (int s = 0; s < S; s++) out[s * outApart] = rowDot<U>(acc[s]) + (bias ? bias[s * outApart] : 0.0f);
}

// One row of x (decode) against nRows weight rows: S = 4 far-apart rows at a time, the rest one by one.
template <WType TYPE, class X>
inline void gemvOneRow(const X* x, long K, const void* w, long nRows, float* out, const float* bias) {
  constexpr int S = 4;
  constexpr long esz = TYPE == WType::BF16 ? 2 : 4;
  const char* wb = static_cast<const char*>(w);
  const long part = nRows / S;
  for (long n = 0; n < part; n++) gemvRowsFar<S, TYPE>(x, K, wb + n * K * esz, part * K * esz, out + n, part, bias ? bias + n : nullptr);
  for (long n = S * part; n < nRows; n++) gemvRow<1, TYPE>(x, K, wb + n * K * esz, out + n, 1, bias ? bias[n] : 0.0f);
}

template <WType TYPE>
inline void gemvRowsM(const float* x, int M, long K, const void* w, long nRows, float* out, long ldo,
                      const float* bias) {
  constexpr long esz = TYPE == WType::BF16 ? 2 : 4;
  const char* wb = static_cast<const char*>(w);
  if (M == 1) {
    gemvOneRow<TYPE>(x, K, w, nRows, out, bias);
    return;
  }
  auto row = [&](int m0, int mm, long n) {
    const float* xm = x + m0 * K;
    float* om = out + m0 * ldo + n;
    const float b = bias ? bias[n] : 0.0f;
    const char* cur = wb + n * K * esz;
    switch (mm) {
      case 1: gemvRow<1, TYPE>(xm, K, cur, om, ldo, b); break;
      case 2: gemvRow<2, TYPE>(xm, K, cur, om, ldo, b); break;
      case 3: gemvRow<3, TYPE>(xm, K, cur, om, ldo, b); break;
      default: gemvRow<4, TYPE>(xm, K, cur, om, ldo, b); break;
    }
  };
  gemvBlocks(M, K, esz, nRows, row);
}

// out[m, n] = x[m]·w[n] (+bias[n]) for nRows weight rows starting at w; out has row stride ldo.
inline void gemvRows(const float* x, int M, long K, const void* w, WType type, long nRows, float* out, long ldo,
                     const float* bias) {
  if (type == WType::BF16) gemvRowsM<WType::BF16>(x, M, K, w, nRows, out, ldo, bias);
  else gemvRowsM<WType::F32>(x, M, K, w, nRows, out, ldo, bias);
}

// gemvRows for one row of x given as bf16 words and bf16 weights (ops_impl.h gemv, Compute::Bf16 decode on this tier
// without a bf16 dot): the same bits as gemvRows on its widened values, from half the bytes of x.
inline void gemvRowBf16X(const uint16_t* x, long K, const uint16_t* w, long nRows, float* out, const float* bias) {
  gemvOneRow<WType::BF16>(x, K, w, nRows, out, bias);
}
#define VL3_GEMV_BF16_X 1

#if VL3_BF16_DOT
// The same GEMV on bf16 words: x (rounded once by the driver) and w are both bf16, 32 per vector, multiplied in
// pairs by vdpbf16ps; tails are masked loads, so a pair's missing half is zero.
inline __m512bh loadBf16x32(const uint16_t* p) { return (__m512bh)_mm512_loadu_si512(p); }
inline __m512bh loadBf16x32Masked(const uint16_t* p, __mmask32 m) { return (__m512bh)_mm512_maskz_loadu_epi16(m, p); }

// R weight rows against MM rows of x, 32 k per step, one accumulator per (row of x, weight row): each weight vector
// feeds MM products and each x vector R. Every output is summed in one order, one chain over k, whatever MM and R
// are, so a row of x gets the same bits alone (decode) as in a batch (the engine's batched decode relies on it).
// `next` (nextBytes long) is the following tile's block, pulled into L2 in order while this one computes.
template <int MM, int R>
inline void gemvTileBf16(const uint16_t* x, long K, const uint16_t* w, float* out, long ldo, const float* bias,
                         const char* next, long nextBytes) {
  constexpr int linesPerStep = R;  // 32 bf16 per row per step: one line each
  __m512 acc[MM][R];
  for (int m = 0; m < MM; m++)
    for (int r = 0; r < R; r++) acc[m][r] = _mm512_setzero_ps();
  long k = 0, pf = 0;
  for (; k + 32 <= K; k += 32) {
#pragma GCC unroll 8
    for (int i = 0; i < linesPerStep; i++, pf += 64)
      if (pf < nextBytes) _mm_prefetch(next + pf, _MM_HINT_T1);
    __m512bh wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) wv[r] = loadBf16x32(w + r * K + k);
#pragma GCC unroll 4
    for (int m = 0; m < MM; m++) {
      const __m512bh xv = loadBf16x32(x + m * K + k);
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], wv[r], xv);
    }
  }
  if (k < K) {
    const __mmask32 mk = mask32(K - k);
    __m512bh wv[R];
    for (int r = 0; r < R; r++) wv[r] = loadBf16x32Masked(w + r * K + k, mk);
    for (int m = 0; m < MM; m++) {
      const __m512bh xv = loadBf16x32Masked(x + m * K + k, mk);
      for (int r = 0; r < R; r++) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], wv[r], xv);
    }
  }
  for (int m = 0; m < MM; m++)
    for (int r = 0; r < R; r++) out[m * ldo + r] = hsum16(acc[m][r]) + (bias ? bias[r] : 0.0f);
}

// One row of x against S weight rows `apart` elements apart: gemvTileBf16<1, S>'s operations per row (each output one
// chain over k), with S sequential weight streams. Six adjacent rows a tile read 21–23 GB/s from one Zen 4 core whose
// read loop makes 31; six streams far apart make 25–31 (8 or 12 streams were slower; a software prefetch of the next
// rows into L2 was slower at k = 1536 and no faster at 8960).
template <int S>
inline void gemvStreamsTileBf16(const uint16_t* x, long K, const uint16_t* w, long apart, long outApart, float* out,
                                const float* bias) {
  __m512 acc[S];
  for (int s = 0; s < S; s++) acc[s] = _mm512_setzero_ps();
  long k = 0;
  for (; k + 32 <= K; k += 32) {
    const __m512bh xv = loadBf16x32(x + k);
#pragma GCC unroll 8
    for (int s = 0; s < S; s++) acc[s] = _mm512_dpbf16_ps(acc[s], loadBf16x32(w + s * apart + k), xv);
  }
  if (k < K) {
    const __mmask32 mk = mask32(K - k);
    const __m512bh xv = loadBf16x32Masked(x + k, mk);
    for (int s = 0; s < S; s++) acc[s] = _mm512_dpbf16_ps(acc[s], loadBf16x32Masked(w + s * apart + k, mk), xv);
  }
  for (int s = 0; s < S; s++) out[s * outApart] = hsum16(acc[s]) + (bias ? bias[s * outApart] : 0.0f);
}

// gemvRowsBf16 for one row of x (decode): the rows in 6 equal ranges streamed together, the remainder one at a time.
inline void gemvStreamsBf16(const uint16_t* x, long K, const uint16_t* w, long nRows, float* out, const float* bias) {
  constexpr int S = 6;
  const long part = nRows / S;
  for (long n = 0; n < part; n++)
    gemvStreamsTileBf16<S>(x, K, w + n * K, part * K, part, out + n, bias ? bias + n : nullptr);
  for (long n = S * part; n < nRows; n++) gemvTileBf16<1, 1>(x, K, w + n * K, out + n, 1, bias ? bias + n : nullptr, nullptr, 0);
}

// Weight rows in blocks of ~128 KiB, in tiles of 6 (the last ones alone): the first group of up to 4 rows of x
// streams a block from memory, the others find it in L2.
inline void gemvRowsBf16(const uint16_t* x, int M, long K, const uint16_t* w, long nRows, float* out, long ldo,
                         const float* bias) {
  constexpr int R = 6;  // 4·6 accumulators, 6 weight vectors and one x vector in 32 registers
  if (M == 1) return gemvStreamsBf16(x, K, w, nRows, out, bias);
  long block = (128L << 10) / (K * 2) / R * R;
  if (block < R) block = R;
  for (long n0 = 0; n0 < nRows; n0 += block) {
    const long nb = n0 + block <= nRows ? block : nRows - n0;
    for (int m0 = 0; m0 < M; m0 += 4) {
      const int mm = M - m0 >= 4 ? 4 : M - m0;
      const uint16_t* xm = x + m0 * K;
      long n = n0;
      for (; n + R <= n0 + nb; n += R) {
        float* om = out + m0 * ldo + n;
        const float* bb = bias ? bias + n : nullptr;
        const uint16_t* cur = w + n * K;
        const char* next = reinterpret_cast<const char*>(cur + R * K);
        const long nextBytes = (n + 2 * R <= n0 + nb ? R : n0 + nb - n - R) * K * 2;
        switch (mm) {
          case 1: gemvTileBf16<1, R>(xm, K, cur, om, ldo, bb, next, nextBytes); break;
          case 2: gemvTileBf16<2, R>(xm, K, cur, om, ldo, bb, next, nextBytes); break;
          case 3: gemvTileBf16<3, R>(xm, K, cur, om, ldo, bb, next, nextBytes); break;
          default: gemvTileBf16<4, R>(xm, K, cur, om, ldo, bb, next, nextBytes); break;
        }
      }
      for (; n < n0 + nb; n++) {
        float* om = out + m0 * ldo + n;
        const float* bb = bias ? bias + n : nullptr;
        switch (mm) {
          case 1: gemvTileBf16<1, 1>(xm, K, w + n * K, om, ldo, bb, nullptr, 0); break;
          case 2: gemvTileBf16<2, 1>(xm, K, w + n * K, om, ldo, bb, nullptr, 0); break;
          case 3: gemvTileBf16<3, 1>(xm, K, w + n * K, om, ldo, bb, nullptr, 0); break;
          default: gemvTileBf16<4, 1>(xm, K, w + n * K, om, ldo, bb, nullptr, 0); break;
        }
      }
    }
  }
}
#endif  // VL3_BF16_DOT

// ---------------------------------------------------------------------------------------------------------------
// Attention tiles (see ops_impl.h): a panel of 16 query rows is one zmm vector.

// C[M×16] (ldc) = A·B over kc (A: M floats per step, lda apart; B: 16 floats per step, ldb apart), or
// C ⊙ corr + A·B with per-column factors corr.
template <int M>
inline void attnTileT(long kc, const float* A, long lda, const float* B, long ldb, float* C, long ldc,
                      const float* corr) {
  __m512 c[M];
#pragma GCC unroll 12
  for (int i = 0; i < M; i++) c[i] = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (long k = 0; k < kc; k++) {
    const __m512 b = _mm512_loadu_ps(B);
#pragma GCC unroll 12
    for (int i = 0; i < M; i++) c[i] = _mm512_fmadd_ps(_mm512_set1_ps(A[i]), b, c[i]);
    A += lda;
    B += ldb;
  }
  if (corr) {
    const __m512 f = _mm512_loadu_ps(corr);
#pragma GCC unroll 12
    for (int i = 0; i < M; i++) _mm512_storeu_ps(C + i * ldc, _mm512_fmadd_ps(_mm512_loadu_ps(C + i * ldc), f, c[i]));
  } else {
#pragma GCC unroll 12
    for (int i = 0; i < M; i++) _mm512_storeu_ps(C + i * ldc, c[i]);
  }
}

inline void attnTile(int m, long kc, const float* A, long lda, const float* B, long ldb, float* C, long ldc,
                     const float* corr) {
  switch (m) {
    case 1: attnTileT<1>(kc, A, lda, B, ldb, C, ldc, corr); break;
    case 2: attnTileT<2>(kc, A, lda, B, ldb, C, ldc, corr); break;
    case 3: attnTileT<3>(kc, A, lda, B, ldb, C, ldc, corr); break;
    case 4: attnTileT<4>(kc, A, lda, B, ldb, C, ldc, corr); break;
    case 5: attnTileT<5>(kc, A, lda, B, ldb, C, ldc, corr); break;
    case 6: attnTileT<6>(kc, A, lda, B, ldb, C, ldc, corr); break;
    case 7: attnTileT<7>(kc, A, lda, B, ldb, C, ldc, corr); break;
    case 8: attnTileT<8>(kc, A, lda, B, ldb, C, ldc, corr); break;
    case 9: attnTileT<9>(kc, A, lda, B, ldb, C, ldc, corr); break;
    case 10: attnTileT<10>(kc, A, lda, B, ldb, C, ldc, corr); break;
    case 11: attnTileT<11>(kc, A, lda, B, ldb, C, ldc, corr); break;
    default: attnTileT<12>(kc, A, lda, B, ldb, C, ldc, corr); break;
  }
}

// 2^x for x <= 0 on 16 lanes: the AVX2 tier's exp2NonPos8 (same polynomial, same clamp at −126).
inline __m512 exp2NonPos16(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-126.0f), x);
  const __m512i n = _mm512_cvtps_epi32(x);  // round to nearest
  const __m512 r = _mm512_sub_ps(x, _mm512_cvtepi32_ps(n));
  __m512 p = _mm512_set1_ps(1.54697322e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.34100008e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.61803086e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.55029735e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.40226507e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(6.93147242e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), _mm512_slli_epi32(n, 23)));
}

// One online-softmax step for a panel of 16 query rows (the contract of avx2::attnSoftmax16): s[n][16] scores in
// base 2 of keys j0 .. j0+n-1, lim (null: all visible) the first key each row may not see.
template <bool MASKED>
inline void attnSoftmax16T(float* s, long n, long j0, const int32_t* lim, float* m, float* l, float* corr) {
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  __m512 mx = _mm512_loadu_ps(m);
  const __m512 mOld = mx;
  if (MASKED) {
    const __m512i limv = _mm512_loadu_si512(lim);
    for (long j = 0; j < n; j++) {
      const __mmask16 vis = _mm512_cmpgt_epi32_mask(limv, _mm512_set1_epi32(static_cast<int>(j0 + j)));
      const __m512 sv = _mm512_mask_blend_ps(vis, ninf, _mm512_loadu_ps(s + j * 16));
      _mm512_storeu_ps(s + j * 16, sv);
      mx = _mm512_max_ps(mx, sv);
    }
  } else {
    for (long j = 0; j < n; j++) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j * 16));
  }
  __m512 sum = _mm512_setzero_ps();
  for (long j = 0; j < n; j++) {
    const __m512 sv = _mm512_loadu_ps(s + j * 16);
    __m512 p = exp2NonPos16(_mm512_sub_ps(sv, mx));
    if (MASKED) p = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(sv, ninf, _CMP_NEQ_UQ), p);  // exactly 0 where masked
    _mm512_storeu_ps(s + j * 16, p);
    sum = _mm512_add_ps(sum, p);
  }
  const __m512 c = exp2NonPos16(_mm512_sub_ps(mOld, mx));
  _mm512_storeu_ps(corr, c);
  _mm512_storeu_ps(l, _mm512_fmadd_ps(_mm512_loadu_ps(l), c, sum));
  _mm512_storeu_ps(m, mx);
}

inline void attnSoftmax16(float* s, long n, long j0, const int32_t* lim, float* m, float* l, float* corr) {
  if (lim) attnSoftmax16T<true>(s, n, j0, lim, m, l, corr);
  else attnSoftmax16T<false>(s, n, j0, lim, m, l, corr);
}

// Packs n <= 12 keys (rows ld floats apart, D floats each) into a K panel [D][12], zero keys past n: eight values of
// d at a time, keys 0-7 and 8-11 through two register transposes.
inline void attnPackK(const float* src, long ld, int n, long D, float* dst) {
  long d = 0;
  if (n == kAttnMR) {
    for (; d + 8 <= D; d += 8) {
      __m256 lo[8], hi[8];
      for (int i = 0; i < 8; i++) lo[i] = _mm256_loadu_ps(src + i * ld + d);
      for (int i = 0; i < 4; i++) hi[i] = _mm256_loadu_ps(src + (8 + i) * ld + d);
      for (int i = 4; i < 8; i++) hi[i] = _mm256_setzero_ps();
      transpose8(lo);
      transpose8(hi);
      for (int c = 0; c < 8; c++) {
        _mm256_storeu_ps(dst + (d + c) * kAttnMR, lo[c]);
        _mm_storeu_ps(dst + (d + c) * kAttnMR + 8, _mm256_castps256_ps128(hi[c]));
      }
    }
  }
  for (; d < D; d++)
    for (int i = 0; i < kAttnMR; i++) dst[d * kAttnMR + i] = i < n ? src[i * ld + d] : 0.0f;
}

// Copies m <= 16 floats: the pieces of a V row that make up the tiled attention's V panels. The common heights get
// plain moves: through masks this copy was 5 % of a vision image's attention.
inline void attnCopySmall(const float* src, int m, float* dst) {
  switch (m) {
    case 12:
      _mm256_storeu_ps(dst, _mm256_loadu_ps(src));
      _mm_storeu_ps(dst + 8, _mm_loadu_ps(src + 8));
      break;
    case 8: _mm256_storeu_ps(dst, _mm256_loadu_ps(src)); break;
    default: {
      const __mmask16 k = mask16(m);
      _mm512_mask_storeu_ps(dst, k, _mm512_maskz_loadu_ps(k, src));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Row and elementwise primitives, 16 lanes with masked tails.

// exp(x) on 16 lanes: the AVX2 tier's exp8 (Cephes polynomial, clamped to the normal range, NaN propagates).
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-87.3365478515625f), _mm512_min_ps(_mm512_set1_ps(88.3762626647949f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

inline float maxOf(const float* x, long n) {
  __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
  long i = 0;
  for (; i + 64 <= n; i += 64) {
    m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + i));
    m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x + i + 16));
    m2 = _mm512_max_ps(m2, _mm512_loadu_ps(x + i + 32));
    m3 = _mm512_max_ps(m3, _mm512_loadu_ps(x + i + 48));
  }
  for (; i < n; i += 16) m0 = _mm512_max_ps(m0, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), mask16(n - i), x + i));
  return _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
}

// x[i] = exp(x[i] - sub) in place; returns the sum of the results.
inline float expSubSum(float* x, long n, float sub) {
  const __m512 s = _mm512_set1_ps(sub);
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  long i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 e0 = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), s));
    const __m512 e1 = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), s));
    _mm512_storeu_ps(x + i, e0);
    _mm512_storeu_ps(x + i + 16, e1);
    acc0 = _mm512_add_ps(acc0, e0);
    acc1 = _mm512_add_ps(acc1, e1);
  }
  for (; i < n; i += 16) {
    const __mmask16 k = mask16(n - i);
    const __m512 e = _mm512_maskz_mov_ps(k, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), s)));
    _mm512_mask_storeu_ps(x + i, k, e);
    acc0 = _mm512_add_ps(acc0, e);
  }
  return hsum16(_mm512_add_ps(acc0, acc1));
}

// Applies f (16 lanes) to [0, n), the tail through masks.
template <class F>
inline void map16(const float* x, float* out, long n, const F& f) {
  long i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, f(_mm512_loadu_ps(x + i), i, static_cast<__mmask16>(0xffff)));
  if (i < n) {
    const __mmask16 k = mask16(n - i);
    _mm512_mask_storeu_ps(out + i, k, f(_mm512_maskz_loadu_ps(k, x + i), i, k));
  }
}

inline void siluMulRange(const float* g, const float* u, float* out, long n) {
  const __m512 one = _mm512_set1_ps(1.0f), sign = _mm512_set1_ps(-0.0f);
  map16(g, out, n, [&](__m512 gv, long i, __mmask16 k) {
    const __m512 silu = _mm512_div_ps(gv, _mm512_add_ps(one, exp16(_mm512_xor_ps(gv, sign))));
    return _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(k, u + i));
  });
}

// gelu_pytorch_tanh as u / (1 + exp(−2z)), z = √(2/π)·(u + 0.044715·u³) (see isa_avx2.h).
inline void geluTanhRange(const float* x, float* out, long n) {
  const __m512 one = _mm512_set1_ps(1.0f), kk = _mm512_set1_ps(-2.0f * 0.7978845608028654f), c3 = _mm512_set1_ps(0.044715f);
  map16(x, out, n, [&](__m512 u, long, __mmask16) {
    const __m512 inner = _mm512_fmadd_ps(_mm512_mul_ps(c3, u), _mm512_mul_ps(u, u), u);
    return _mm512_div_ps(u, _mm512_add_ps(one, exp16(_mm512_mul_ps(kk, inner))));
  });
}

// erfc(z) for z >= 0: the AVX2 tier's erfcNonNeg8 (Numerical Recipes' erfcc fit, fractional error below 1.2e-7).
inline __m512 erfcNonNeg16(__m512 z) {
  const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(_mm512_set1_ps(0.5f), z, _mm512_set1_ps(1.0f)));
  __m512 p = _mm512_set1_ps(0.17087277f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.82215223f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.48851587f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.13520398f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.27886807f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.18628806f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.09678418f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.37409196f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.00002368f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.26551223f));
  return _mm512_mul_ps(t, exp16(_mm512_fnmadd_ps(z, z, p)));
}

// nn.GELU(): 0.5·u·erfc(−u/√2), with erfc(−y) = 2 − erfc(y) for y > 0.
inline void geluErfRange(const float* x, float* out, long n) {
  const __m512 half = _mm512_set1_ps(0.5f), two = _mm512_set1_ps(2.0f), rs2 = _mm512_set1_ps(0.7071067811865476f);
  map16(x, out, n, [&](__m512 u, long, __mmask16) {
    const __m512 y = _mm512_mul_ps(u, rs2);
    const __m512 e = erfcNonNeg16(_mm512_abs_ps(y));
    const __m512 c = _mm512_mask_sub_ps(e, _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ), two, e);
    return _mm512_mul_ps(_mm512_mul_ps(half, u), c);
  });
}

inline void widenBf16(const uint16_t* src, float* dst, long n) {
  long i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, widenBf16x16(src + i));
  if (i < n) _mm512_mask_storeu_ps(dst + i, mask16(n - i), widenBf16x16Masked(src + i, mask16(n - i)));
}

// 16 independent FMA chains: two 512-bit FMA pipes × 4-cycle latency need 8 in flight; twice that leaves room.
inline double fmaLoop(long iters, float* sink) {
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-6f);
  __m512 c[16];
  for (int i = 0; i < 16; i++) c[i] = _mm512_set1_ps(sink[0] + i);
  for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) c[i] = _mm512_fmadd_ps(c[i], a, b);
  }
  __m512 s = c[0];
  for (int i = 1; i < 16; i++) s = _mm512_add_ps(s, c[i]);
  sink[0] = hsum16(s);
  return static_cast<double>(iters) * 16 * 32;
}

inline float sumRange(const float* p, long n) {
  __m512 a[8];
  for (int i = 0; i < 8; i++) a[i] = _mm512_setzero_ps();
  long i = 0;
  for (; i + 128 <= n; i += 128) {
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) a[j] = _mm512_add_ps(a[j], _mm512_loadu_ps(p + i + 16 * j));
  }
  for (int j = 1; j < 8; j++) a[0] = _mm512_add_ps(a[0], a[j]);
  float s = hsum16(a[0]);
  for (; i < n; i++) s += p[i];
  return s;
}

// AdamW over the whole vectors of 16 in [0, n): the element of grad_adamw.h lane by lane, with the same opaque
// product. Returns the elements done; the driver finishes the rest.
inline long adamwVectors(float* p, const float* g, float* m, float* v, long n, const AdamWScalars& s) {
  const __m512 decay = _mm512_set1_ps(s.decay), w1 = _mm512_set1_ps(s.w1), b2 = _mm512_set1_ps(s.b2);
  const __m512 w2 = _mm512_set1_ps(s.w2), step = _mm512_set1_ps(s.stepSize), bc2 = _mm512_set1_ps(s.bc2Sqrt);
  const __m512 eps = _mm512_set1_ps(s.eps);
  long i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 gi = _mm512_loadu_ps(g + i), m0 = _mm512_loadu_ps(m + i), v0 = _mm512_loadu_ps(v + i);
    __m512 pi = _mm512_mul_ps(_mm512_loadu_ps(p + i), decay);
    VL3_OPAQUE(pi);
    const __m512 mi = _mm512_fmadd_ps(w1, _mm512_sub_ps(gi, m0), m0);
    const __m512 vi = _mm512_fmadd_ps(_mm512_mul_ps(w2, gi), gi, _mm512_mul_ps(v0, b2));
    const __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), bc2), eps);
    _mm512_storeu_ps(p + i, _mm512_add_ps(pi, _mm512_div_ps(_mm512_mul_ps(step, mi), denom)));
    _mm512_storeu_ps(m + i, mi);
    _mm512_storeu_ps(v + i, vi);
  }
  return i;
}

// quant::quantizeActivationRow a block of 32 at a time, with the same codes, scales and sums: x·inv is rounded to f32
// by an explicitly rounded multiply (which no compiler fuses with what follows) and then to the nearest even integer,
// as the portable loop's 1.5·2²³ addition does. A decode step quantizes every matmul's input on one thread while the
// others wait: 9 µs for the 8960 k of the down projection in the portable loop, under 2 here. A whole chunk's four
// blocks are put in k-major order (quant.h activationOffset) by two permutes of 32-bit words.
inline void quantizeActivationRowVec(WType t, const float* x, long K, int8_t* q, float* d, int32_t* blockInit, float* dsum) {
  constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  constexpr int B = quant::kChunkBlocks;
  const long nb = K / quant::kBlock;
  const __m512 absMask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  const int minusZ = -quant::zeroCode(t);
  // Word (s, i) of a chunk, at 4s + i (s < 4) or 4(s − 4) + i, from word s of block i: blocks 0–1 are the first
  // source (word 8i + s), blocks 2–3 the second (16 + 8(i − 2) + s).
  const __m512i firstWords = _mm512_setr_epi32(0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27);
  const __m512i lastWords = _mm512_add_epi32(firstWords, _mm512_set1_epi32(4));
  alignas(64) int8_t blocks[B * quant::kBlock];
  for (long b = 0; b < nb; b++) {
    const __m512 v0 = _mm512_loadu_ps(x + b * quant::kBlock), v1 = _mm512_loadu_ps(x + b * quant::kBlock + 16);
    // max(a, m) keeps m where a is NaN, as the portable loop's `a > m ? a : m` does.
    const __m512 m = _mm512_max_ps(_mm512_and_ps(v1, absMask), _mm512_max_ps(_mm512_and_ps(v0, absMask), _mm512_setzero_ps()));
    const float amax = _mm512_reduce_max_ps(m);
    const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    d[b] = amax / 127.0f;
    const __m512i c0 = _mm512_cvt_roundps_epi32(_mm512_mul_round_ps(v0, inv, kRne), kRne);
    const __m512i c1 = _mm512_cvt_roundps_epi32(_mm512_mul_round_ps(v1, inv, kRne), kRne);
    const long chunk0 = b / B * B, chunkBlocks = nb - chunk0 < B ? nb - chunk0 : B;
    int8_t* own = blocks + (b - chunk0) * quant::kBlock;
    _mm_store_si128(reinterpret_cast<__m128i*>(own), _mm512_cvtepi32_epi8(c0));
    _mm_store_si128(reinterpret_cast<__m128i*>(own + 16), _mm512_cvtepi32_epi8(c1));
    const int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(c0, c1));
    if (t == WType::Int4m)
      dsum[b] = d[b] * static_cast<float>(sum);
    else
      blockInit[b] = minusZ * sum;
    if (b - chunk0 != chunkBlocks - 1) continue;
    int8_t* chunk = q + chunk0 * quant::kBlock;
    if (chunkBlocks == B) {
      const __m512i lo = _mm512_load_si512(blocks), hi = _mm512_load_si512(blocks + 64);
      _mm512_storeu_si512(chunk, _mm512_permutex2var_epi32(lo, firstWords, hi));
      _mm512_storeu_si512(chunk + 64, _mm512_permutex2var_epi32(lo, lastWords, hi));
    } else {
      for (long i = 0; i < chunkBlocks; i++)
        for (int w = 0; w < quant::kBlock / 4; w++)
          std::memcpy(chunk + quant::activationOffset(chunkBlocks, i, 4 * w), blocks + i * quant::kBlock + 4 * w, 4);
    }
  }
}
#define VL3_QUANT_ACTIVATIONS 1

// Quantized weights' integer dot (ops_impl.h quantMatmulInt) for a full group of 4 weight rows and MT rows of x, over
// every whole chunk of 4 blocks (128 k). A chunk's codes are k-major (quant.h codeOffset): code vector s (Int8: 8 of
// them; Int4, Int4m: 4, each two by its nibbles) holds one 32-bit word of 4 codes per (row, block), lane 4·row + block
// as the chunk's scales are ordered, and x's 16 bytes of the same s, broadcast to the 4 rows, are the other operand.
// So each integer lane sums a whole block, and one conversion, one multiply of the scales and one FMA finish the
// group's 16 blocks: no shuffle of lanes or scales. Two integer chains per group (even and odd s; Int4 the low and
// high nibbles) halve the dependency chain of the dot instruction. The integer step differs by instruction set
// (addProducts below). Returns the blocks done; the rest is generic.
struct Chains {
  __m512i a = _mm512_setzero_si512(), b = _mm512_setzero_si512();
};

#if defined(__AVX512VNNI__)
// vpdpbusd multiplies the unsigned codes by the signed activations, and x's −z·Σq per block is added to the sums.
// Int4's high nibbles are taken in place (16·u, masked): their chain sums 16·Σu·q exactly, shifted back at the end.
template <WType T>
constexpr bool kBlockInit = T != WType::Int4m;

// The unsigned operands of code vector s: Int8 the codes (lo); Int4, Int4m the low nibbles (lo) and the high ones (hi).
template <WType T>
inline void codeOperands(const uint8_t* codes, int s, __m512i& lo, __m512i& hi) {
  const __m512i v = _mm512_loadu_si512(codes + 64 * s);
  if (T == WType::Int8) {
    lo = hi = v;
  } else {
    lo = _mm512_and_si512(v, _mm512_set1_epi8(0x0f));
    hi = _mm512_and_si512(v, _mm512_set1_epi8(static_cast<char>(0xf0)));
  }
}

template <WType T>
inline void addProducts(Chains& c, int s, __m512i lo, __m512i hi, const __m512i (&xb)[8]) {
  if (T == WType::Int8) {
    if (s & 1)
      c.b = _mm512_dpbusd_epi32(c.b, lo, xb[s]);
    else
      c.a = _mm512_dpbusd_epi32(c.a, lo, xb[s]);
  } else {
    c.a = _mm512_dpbusd_epi32(c.a, lo, xb[s]);
    c.b = _mm512_dpbusd_epi32(c.b, hi, xb[s + 4]);
  }
}

template <WType T>
inline __m512i blockSums(const Chains& c) {
  return _mm512_add_epi32(c.a, T == WType::Int8 ? c.b : _mm512_srai_epi32(c.b, 4));
}
#else
// Without VNNI (the avx512 tier): vpmaddubsw (u8·s8 pairs summed in int16, saturating) and vpmaddwd by ones (pairs of
// those into int32 lanes of 4 k). Int4 and Int4m codes (≤ 15) keep a pair within 2·15·127, and a block's 8 code
// vectors' pairs within int16 (8·2·15·127), so they add in int16 and widen once. Int8 codes reach 255, past what a
// pair may hold, so its weights are made signed (u XOR 0x80 = u − 128): |u − 128| ≤ 128 is the unsigned operand and
// the activation takes the weight's sign, pairs within 2·128·127; that sums (u − z)·q directly, without block sums.
template <WType T>
constexpr bool kBlockInit = T == WType::Int4;

template <WType T>
inline void codeOperands(const uint8_t* codes, int s, __m512i& lo, __m512i& hi) {
  const __m512i v = _mm512_loadu_si512(codes + 64 * s);
  if (T == WType::Int8) {
    lo = hi = _mm512_xor_si512(v, _mm512_set1_epi8(static_cast<char>(0x80)));
  } else {
    lo = _mm512_and_si512(v, _mm512_set1_epi8(0x0f));
    hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(0x0f));
  }
}

template <WType T>
inline void addProducts(Chains& c, int s, __m512i lo, __m512i hi, const __m512i (&xb)[8]) {
  if (T == WType::Int8) {
    // The sign mask taken at its use: hoisted, 8 of them outnumber the 7 usable mask registers, and their spills
    // through general registers cost a third of the decode rate on streamed weights.
    const __m512i xs = _mm512_mask_sub_epi8(xb[s], _mm512_movepi8_mask(lo), _mm512_setzero_si512(), xb[s]);
    const __m512i pairs = _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(lo), xs), _mm512_set1_epi16(1));
    if (s & 1)
      c.b = _mm512_add_epi32(c.b, pairs);
    else
      c.a = _mm512_add_epi32(c.a, pairs);
  } else {
    c.a = _mm512_add_epi16(c.a, _mm512_maddubs_epi16(lo, xb[s]));
    c.b = _mm512_add_epi16(c.b, _mm512_maddubs_epi16(hi, xb[s + 4]));
  }
}

template <WType T>
inline __m512i blockSums(const Chains& c) {
  if (T == WType::Int8) return _mm512_add_epi32(c.a, c.b);
  return _mm512_madd_epi16(_mm512_add_epi16(c.a, c.b), _mm512_set1_epi16(1));
}
#endif

// Code vectors per chunk: Int8 8, Int4 and Int4m 4 (two operands each).
template <WType T>
constexpr int kCodeVectors = T == WType::Int8 ? 8 : 4;

// x's codes of chunk c of row m as the 8 broadcast operands of code vectors s (and s + 4).
inline void chunkX(const quant::QuantizedRows& A, long m, long c, __m512i (&xb)[8]) {
  const int8_t* xq = A.q + m * A.K + c * 128;
  for (int s = 0; s < 8; s++) xb[s] = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq + 16 * s)));
}

// A group's chunk scales d_w (16 lanes, (row, block)) and Int4m's minimums m_w (d_w elsewhere), from its params.
template <WType T>
inline void chunkScales(const uint8_t* params, __m512& dw, __m512& mw) {
  dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(params)));
  mw = T == WType::Int4m ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(params + 32))) : dw;
}

// acc += one group's chunk c against x row m: its block sums (and x's block init) converted and scaled by d_w·d_x
// (dx: x's 4 block scales in each 128-bit lane); accMin += Int4m's m_w·d_x·Σq. One definition for the prefill and the
// decode kernels, so that a row of x gets the same bits from both.
template <WType T>
inline void addChunk(const Chains& sums, __m512 dw, __m512 mw, __m512 dx, const quant::QuantizedRows& A, long m, long c,
                     __m512& acc, __m512& accMin) {
  const long nb = A.K / quant::kBlock;
  __m512i s = blockSums<T>(sums);
  if (kBlockInit<T>)
    s = _mm512_add_epi32(s, _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(A.blockInit + m * nb + c * 4))));
  acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, dx), acc);
  if (T == WType::Int4m) accMin = _mm512_fmadd_ps(mw, _mm512_broadcast_f32x4(_mm_loadu_ps(A.dsum + m * nb + c * 4)), accMin);
}

// A group's accumulated lanes (and int4m's minimum terms) added to its rows' results: row r's blocks are lanes 4r..4r+3.
template <WType T>
inline void addGroupRows(__m512 acc, __m512 accMin, float* res) {
  alignas(64) float lanes[16], mins[16];
  _mm512_store_ps(lanes, acc);
  _mm512_store_ps(mins, accMin);
  for (int r = 0; r < quant::kGroupRows; r++) {
    res[r] += (lanes[4 * r] + lanes[4 * r + 1]) + (lanes[4 * r + 2] + lanes[4 * r + 3]);
    if (T == WType::Int4m) res[r] += (mins[4 * r] + mins[4 * r + 1]) + (mins[4 * r + 2] + mins[4 * r + 3]);
  }
}

// G groups `apart` bytes apart against MT rows of x: res[h · MT + i] for group h and x row m0 + i. Each x broadcast
// serves G groups: on Zen 4 a loop of one 16-byte broadcast per vpdpbusd ran at 64 % of the instruction's peak, one per
// two at 87 %, and the prefill GEMM on one thread with two groups at 45 % against 41 % with one (BENCHMARKS.md run
// 24). Each group's operations are one group's, so its rows get the same bits whatever G is.
template <WType T, int MT, int G>
inline long groupsRowsDotT(const uint8_t* g, long apart, const quant::QuantizedRows& A, long m0, float (*res)[quant::kGroupRows]) {
  constexpr int V = kCodeVectors<T>;
  const quant::GroupChunks gc = quant::groupChunks(T, A.K);
  const long nb = gc.blocks, chunks = gc.chunks;
  __m512 acc[G][MT], accMin[G][MT];
  for (int h = 0; h < G; h++)
    for (int i = 0; i < MT; i++) acc[h][i] = accMin[h][i] = _mm512_setzero_ps();
  for (long c = 0; c < chunks; c++) {
    __m512 dw[G], mw[G];
    __m512i lo[G][V], hi[G][V];
    for (int h = 0; h < G; h++) {
      const auto [ch, codes] = quant::chunkPlace(gc, g + h * apart, c);
      chunkScales<T>(ch, dw[h], mw[h]);
      for (int s = 0; s < V; s++) codeOperands<T>(codes, s, lo[h][s], hi[h][s]);
    }
    for (int i = 0; i < MT; i++) {
      const long m = m0 + i;
      __m512i xb[8];
      chunkX(A, m, c, xb);
      Chains sums[G];
      for (int s = 0; s < V; s++)
        for (int h = 0; h < G; h++) addProducts<T>(sums[h], s, lo[h][s], hi[h][s], xb);
      const __m512 dx = _mm512_broadcast_f32x4(_mm_loadu_ps(A.d + m * nb + c * 4));
      for (int h = 0; h < G; h++) addChunk<T>(sums[h], dw[h], mw[h], dx, A, m, c, acc[h][i], accMin[h][i]);
    }
  }
  for (int h = 0; h < G; h++)
    for (int i = 0; i < MT; i++) addGroupRows<T>(acc[h][i], accMin[h][i], res[h * MT + i]);
  return chunks * quant::kChunkBlocks;
}

template <WType T, int MT>
inline long groupDotT(const uint8_t* g, const quant::QuantizedRows& A, long m0, float (*res)[quant::kGroupRows]) {
  return groupsRowsDotT<T, MT, 1>(g, 0, A, m0, res);
}
#define VL3_QUANT_DOT 1
#define VL3_QUANT_PAIR_DOT 1

// groupDotT<T, 1> for G groups at once, g, g + apart, g + 2·apart…, with the same operations per group: one activation
// row's loads serve 4·G weight rows, and the groups are G sequential streams. One group at a time, at decode's k = 8960
// the activation's codes, scales and sums (11 KiB) left L1 beside the streamed weights, and reloading them for every
// 4 rows took the weight stream's fill buffers (the down projection streamed at two thirds of the others' rate). The
// streams must be far apart: adjacent groups (a few KiB apart) halved the rate on Zen 4. Within a chunk the streams
// take turns a code vector (one 64-byte line) at a time rather than group by group: a whole group's chunk from one
// stream before the next held a decode's int8 matmuls to 0.81–0.94 of the read loop on Zen 4, turns of a row's codes
// (128 bytes) to 1.07–1.09 (BENCHMARKS.md run 14).
template <WType T, int G>
inline long groupsDotT(const uint8_t* g, long apart, const quant::QuantizedRows& A, long m, float (*res)[quant::kGroupRows]) {
  constexpr int V = kCodeVectors<T>;
  const quant::GroupChunks gc = quant::groupChunks(T, A.K);
  const long nb = gc.blocks, chunks = gc.chunks;
  __m512 acc[G], accMin[G];
  for (int h = 0; h < G; h++) acc[h] = accMin[h] = _mm512_setzero_ps();
  for (long c = 0; c < chunks; c++) {
    const __m512 dx = _mm512_broadcast_f32x4(_mm_loadu_ps(A.d + m * nb + c * 4));
    const uint8_t* params[G];
    const uint8_t* codes[G];
    quant::chunkPlaces<G>(gc, g, apart, c, params, codes);
    Chains sums[G];
#if defined(__AVX512VNNI__)
    // With VNNI each line of codes goes in as two 256-bit halves (lanes 0-7 and 8-15 of the 512-bit code vector), their
    // sums joined once a chunk: on Zen 5, one process alternating this and the 512-bit loop below with a no-op control
    // arm, int8 decoded 1.07-1.15× as fast (three runs: 1.148, 1.067, 1.075; controls 1.020, 1.040, 0.985), int4 1.057×
    // (control 0.993), int4m the same (0.989; 0.979); a 512-bit loop arranged like this one ran int8 at 0.958× of it
    // (BENCHMARKS.md run 29). The integer sums are the same, so are the bits.
    const int8_t* xq = A.q + m * A.K + c * 128;
    // [group][half]: the low nibbles' (Int8: the codes') sums, and the high nibbles' (16·u, as addProducts takes them).
    __m256i low[G][2], high[G][2];
    for (int h = 0; h < G; h++) low[h][0] = low[h][1] = high[h][0] = high[h][1] = _mm256_setzero_si256();
    for (int s = 0; s < V; s++) {
      const __m256i xs = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq + 16 * s)));
      const __m256i xsHigh =
          T == WType::Int8 ? xs : _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq + 16 * (s + 4))));
      for (int h = 0; h < G; h++)
        for (int p = 0; p < 2; p++) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes[h] + 64 * s + 32 * p));
          if (T == WType::Int8) {
            low[h][p] = _mm256_dpbusd_epi32(low[h][p], v, xs);
          } else {
            low[h][p] = _mm256_dpbusd_epi32(low[h][p], _mm256_and_si256(v, _mm256_set1_epi8(0x0f)), xs);
            high[h][p] = _mm256_dpbusd_epi32(high[h][p], _mm256_and_si256(v, _mm256_set1_epi8(static_cast<char>(0xf0))), xsHigh);
          }
        }
    }
    for (int h = 0; h < G; h++) {
      sums[h].a = _mm512_inserti64x4(_mm512_castsi256_si512(low[h][0]), low[h][1], 1);
      sums[h].b = _mm512_inserti64x4(_mm512_castsi256_si512(high[h][0]), high[h][1], 1);
    }
#else
    __m512i xb[8];
    chunkX(A, m, c, xb);
#pragma GCC unroll 8
    for (int s = 0; s < V; s++)
#pragma GCC unroll 4
      for (int h = 0; h < G; h++) {
        __m512i lo, hi;
        codeOperands<T>(codes[h], s, lo, hi);
        addProducts<T>(sums[h], s, lo, hi, xb);
      }
#endif
#pragma GCC unroll 4
    for (int h = 0; h < G; h++) {
      __m512 dw, mw;
      chunkScales<T>(params[h], dw, mw);
      addChunk<T>(sums[h], dw, mw, dx, A, m, c, acc[h], accMin[h]);
    }
  }
  for (int h = 0; h < G; h++) addGroupRows<T>(acc[h], accMin[h], res[h]);
  return chunks * quant::kChunkBlocks;
}
#define VL3_QUANT_GROUPS_DOT 1
// Groups streamed at once where k is short (ops_impl.h streamedGroups; 4 where it is long, more activation bytes per
// group): 2 for every format. On Zen 4, int4 and int4m measured best at 2, int8 at 4 (row by row above; 3 had been best
// group by group, one task a thread not yet tried); on Zen 5, int8 at 2 with one task a thread streamed its short-k
// matrices 11-17 % faster than at 4 with four tasks, a whole int8 decode 8 % (BENCHMARKS.md run 18); with the 256-bit
// decode loop, 4 measured 0.935× beside a control arm's 0.965× (run 29).
constexpr int kStreamedGroupsShortK = 2;

}  // namespace
}  // namespace VL3_ISA
}  // namespace vl3
