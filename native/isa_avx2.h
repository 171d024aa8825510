// Own AVX2/FMA primitives: bf16 weights are widened in-register and the GEMM micro-kernel is hand-blocked, which no compiler auto-vectorizer gives us.
// Included by kernels_avx2.cc (compiled with -mavx2 -mfma -mf16c), kernels_avxvnni.cc (the same and -mavxvnni: the
// quantized dot below then uses vpdpbusd; it names the namespace VL3_AVX2_NS) and isa_avx512.h, inside an anonymous
// namespace, so none of this code can be picked by the linker for a baseline translation unit.
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels.h"
#include "quant.h"

#ifndef VL3_AVX2_NS
#define VL3_AVX2_NS avx2
#endif

namespace vl3 {
namespace VL3_AVX2_NS {
namespace {

constexpr int MR = 6;   // rows of a GEMM micro-tile: 12 accumulators + 2 B vectors + 1 broadcast fit in 16 ymm
constexpr int NR = 16;  // columns of a micro-tile: two ymm vectors
// Blocking of the packed GEMM (see ops_impl.h): a KC×NR panel of B (16 KiB) stays in L1 while an MC×KC block of A
// (144 KiB) stays in L2 (512 KiB on Zen 3), and each task's KC×(≤NB) slice of packed B is read from L2/L3.
constexpr long KC = 256;
constexpr long MC = 144;
constexpr long NB = 2048;
// Below 64 rows of x the unpacked register-tiled GEMV path (gemvRows) beat the packed GEMM on the Qwen2 shapes
// (74-77 % of FMA peak at M = 32-64, 1 and 2 threads); packing B only pays off once it is reused by more rows.
constexpr long kGemvMaxM = 63;
// Keys per K panel and output rows per V panel of the tiled attention: 2·6 accumulators fill the 16 ymm registers.
constexpr long kAttnMR = 6;

inline __m256 widenBf16x8(const uint16_t* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// Round-to-nearest-even to bf16 values (low 16 bits cleared), NaN kept quiet: f32ToBf16 on 8 lanes.
inline __m256 roundBf16x8(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
  const __m256i nan = _mm256_or_si256(u, _mm256_set1_epi32(0x400000));
  const __m256 isNan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  const __m256 out = _mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(nan), isNan);
  return _mm256_and_ps(out, _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float bf16ToF32(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// exp(x) for 8 lanes: x = n·ln2 + r with |r| <= ln2/2, exp(r) by a degree-6 minimax polynomial (Cephes
// coefficients), 2^n assembled in the exponent field. About 1 ulp; inputs are clamped to the normal range, so
// tiny results come out as ~1e-38 instead of denormals and huge ones saturate near 2.4e38; NaN propagates.
inline __m256 exp8(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f);
  const __m256 lo = _mm256_set1_ps(-87.3365478515625f);
  x = _mm256_max_ps(lo, _mm256_min_ps(hi, x));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  __m256 r2 = _mm256_mul_ps(r, r);
  p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline float exp1(float x) {
  float in[8] = {x, 0, 0, 0, 0, 0, 0, 0}, out[8];
  _mm256_storeu_ps(out, exp8(_mm256_loadu_ps(in)));
  return out[0];
}

// exp for the online softmax's rescaling factors, where a row's first visible block gives exp(-inf) = 0 exactly.
inline float expScalar(float x) { return x == -INFINITY ? 0.0f : exp1(x); }

// C[6×16] (ldc) = or += A·B over kc: A is a packed panel [kc][6]; B holds 16 floats per k, ldb apart (NR for a
// packed panel, or rows of a matrix read in place). `bias` (16 floats) is added when not accumulating.
inline void microKernel(long kc, const float* A, const float* B, long ldb, float* C, long ldc, bool accumulate,
                        const float* bias) {
  // C is read back (or first written) after kc steps; start pulling its lines in now so the epilogue does not
  // wait on L3 for a tile the previous K block left there.
  for (int i = 0; i < MR; i++) {
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc + NR - 1), _MM_HINT_T0);
  }
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (long k = 0; k < kc; k++) {
    __m256 b0 = _mm256_loadu_ps(B);
    __m256 b1 = _mm256_loadu_ps(B + 8);
    __m256 a;
    a = _mm256_broadcast_ss(A + 0);
    c00 = _mm256_fmadd_ps(a, b0, c00);
    c01 = _mm256_fmadd_ps(a, b1, c01);
    a = _mm256_broadcast_ss(A + 1);
    c10 = _mm256_fmadd_ps(a, b0, c10);
    c11 = _mm256_fmadd_ps(a, b1, c11);
    a = _mm256_broadcast_ss(A + 2);
    c20 = _mm256_fmadd_ps(a, b0, c20);
    c21 = _mm256_fmadd_ps(a, b1, c21);
    a = _mm256_broadcast_ss(A + 3);
    c30 = _mm256_fmadd_ps(a, b0, c30);
    c31 = _mm256_fmadd_ps(a, b1, c31);
    a = _mm256_broadcast_ss(A + 4);
    c40 = _mm256_fmadd_ps(a, b0, c40);
    c41 = _mm256_fmadd_ps(a, b1, c41);
    a = _mm256_broadcast_ss(A + 5);
    c50 = _mm256_fmadd_ps(a, b0, c50);
    c51 = _mm256_fmadd_ps(a, b1, c51);
    A += MR;
    B += ldb;
  }
  __m256 rows[12] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51};
  if (accumulate) {
    for (int i = 0; i < MR; i++) {
      float* c = C + i * ldc;
      _mm256_storeu_ps(c, _mm256_add_ps(_mm256_loadu_ps(c), rows[2 * i]));
      _mm256_storeu_ps(c + 8, _mm256_add_ps(_mm256_loadu_ps(c + 8), rows[2 * i + 1]));
    }
  } else if (bias) {
    __m256 b0 = _mm256_loadu_ps(bias), b1 = _mm256_loadu_ps(bias + 8);
    for (int i = 0; i < MR; i++) {
      _mm256_storeu_ps(C + i * ldc, _mm256_add_ps(rows[2 * i], b0));
      _mm256_storeu_ps(C + i * ldc + 8, _mm256_add_ps(rows[2 * i + 1], b1));
    }
  } else {
    for (int i = 0; i < MR; i++) {
      _mm256_storeu_ps(C + i * ldc, rows[2 * i]);
      _mm256_storeu_ps(C + i * ldc + 8, rows[2 * i + 1]);
    }
  }
}

// The tiled attention's two products share one register tile: C[M×16] (row stride ldc) = A·B over kc steps, A giving
// M floats per step (lda apart: a packed K or V panel) and B 16 floats per step (ldb apart: packed queries, or
// probabilities). With corr (16 per-column factors, the online softmax's rescaling) the tile is
// accumulated as C = C ⊙ corr + A·B, so rescaling the output costs no separate pass. M <= 6 keeps 2·M accumulators,
// two B vectors and a broadcast within the 16 ymm registers.
template <int M>
inline void attnTileT(long kc, const float* A, long lda, const float* B, long ldb, float* C, long ldc,
                      const float* corr) {
  __m256 c0[M], c1[M];
#pragma GCC unroll 6
  for (int i = 0; i < M; i++) c0[i] = c1[i] = _mm256_setzero_ps();
#pragma GCC unroll 2
  for (long k = 0; k < kc; k++) {
    const __m256 b0 = _mm256_loadu_ps(B), b1 = _mm256_loadu_ps(B + 8);
#pragma GCC unroll 6
    for (int i = 0; i < M; i++) {
      const __m256 a = _mm256_broadcast_ss(A + i);
      c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
    }
    A += lda;
    B += ldb;
  }
  if (corr) {
    const __m256 f0 = _mm256_loadu_ps(corr), f1 = _mm256_loadu_ps(corr + 8);
#pragma GCC unroll 6
    for (int i = 0; i < M; i++) {
      float* c = C + i * ldc;
      _mm256_storeu_ps(c, _mm256_fmadd_ps(_mm256_loadu_ps(c), f0, c0[i]));
      _mm256_storeu_ps(c + 8, _mm256_fmadd_ps(_mm256_loadu_ps(c + 8), f1, c1[i]));
    }
  } else {
#pragma GCC unroll 6
    for (int i = 0; i < M; i++) {
      _mm256_storeu_ps(C + i * ldc, c0[i]);
      _mm256_storeu_ps(C + i * ldc + 8, c1[i]);
    }
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
    default: attnTileT<6>(kc, A, lda, B, ldb, C, ldc, corr); break;
  }
}

// 2^x for x <= 0 (the softmax's shifted scores, in base 2): x = n + r with n = round(x), |r| <= 1/2, 2^r by a degree-6
// polynomial fitted here for least relative error (3.9e-9, so ~1 ulp after f32 rounding), and n added straight into
// the exponent field. Cheaper than exp8: no range-reduction multiply, no Cody-Waite split (x − n is exact) and no
// upper clamp. Inputs below −126 give 2^−126 (callers clear masked entries themselves); NaN propagates.
inline __m256 exp2NonPos8(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-126.0f), x);
  const __m256i n = _mm256_cvtps_epi32(x);  // round to nearest
  const __m256 r = _mm256_sub_ps(x, _mm256_cvtepi32_ps(n));
  __m256 p = _mm256_set1_ps(1.54697322e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.34100008e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(9.61803086e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.55029735e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(2.40226507e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(6.93147242e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(n, 23)));
}

template <bool MASKED>
inline void attnSoftmax16T(float* s, long n, long j0, const int32_t* lim, float* m, float* l, float* corr) {
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  __m256 mx0 = _mm256_loadu_ps(m), mx1 = _mm256_loadu_ps(m + 8);
  const __m256 mOld0 = mx0, mOld1 = mx1;
  if (MASKED) {
    const __m256i lim0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lim));
    const __m256i lim1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lim + 8));
    for (long j = 0; j < n; j++) {
      const __m256i jv = _mm256_set1_epi32(static_cast<int>(j0 + j));
      const __m256 s0 = _mm256_blendv_ps(ninf, _mm256_loadu_ps(s + j * 16),
                                         _mm256_castsi256_ps(_mm256_cmpgt_epi32(lim0, jv)));
      const __m256 s1 = _mm256_blendv_ps(ninf, _mm256_loadu_ps(s + j * 16 + 8),
                                         _mm256_castsi256_ps(_mm256_cmpgt_epi32(lim1, jv)));
      _mm256_storeu_ps(s + j * 16, s0);
      _mm256_storeu_ps(s + j * 16 + 8, s1);
      mx0 = _mm256_max_ps(mx0, s0);
      mx1 = _mm256_max_ps(mx1, s1);
    }
  } else {
    for (long j = 0; j < n; j++) {
      mx0 = _mm256_max_ps(mx0, _mm256_loadu_ps(s + j * 16));
      mx1 = _mm256_max_ps(mx1, _mm256_loadu_ps(s + j * 16 + 8));
    }
  }
  // The driver starts m at −FLT_MAX rather than −inf, so a row that has seen nothing yet gets corr = 2^0 = 1 instead
  // of the NaN of −inf − −inf.
  __m256 sum0 = _mm256_setzero_ps(), sum1 = _mm256_setzero_ps();
  for (long j = 0; j < n; j++) {
    const __m256 s0 = _mm256_loadu_ps(s + j * 16), s1 = _mm256_loadu_ps(s + j * 16 + 8);
    __m256 p0 = exp2NonPos8(_mm256_sub_ps(s0, mx0));
    __m256 p1 = exp2NonPos8(_mm256_sub_ps(s1, mx1));
    if (MASKED) {  // exactly 0 where masked, not the clamp's 2^−126
      p0 = _mm256_and_ps(p0, _mm256_cmp_ps(s0, ninf, _CMP_NEQ_UQ));
      p1 = _mm256_and_ps(p1, _mm256_cmp_ps(s1, ninf, _CMP_NEQ_UQ));
    }
    _mm256_storeu_ps(s + j * 16, p0);
    _mm256_storeu_ps(s + j * 16 + 8, p1);
    sum0 = _mm256_add_ps(sum0, p0);
    sum1 = _mm256_add_ps(sum1, p1);
  }
  const __m256 c0 = exp2NonPos8(_mm256_sub_ps(mOld0, mx0)), c1 = exp2NonPos8(_mm256_sub_ps(mOld1, mx1));
  _mm256_storeu_ps(corr, c0);
  _mm256_storeu_ps(corr + 8, c1);
  _mm256_storeu_ps(l, _mm256_fmadd_ps(_mm256_loadu_ps(l), c0, sum0));
  _mm256_storeu_ps(l + 8, _mm256_fmadd_ps(_mm256_loadu_ps(l + 8), c1, sum1));
  _mm256_storeu_ps(m, mx0);
  _mm256_storeu_ps(m + 8, mx1);
}

// One online-softmax step for a panel of 16 query rows: s[n][16] holds the scores of keys j0 .. j0+n-1 in base 2
// (log2 e folded into the queries), one column per row, so the running max and sum are plain vector ops with no
// horizontal reductions. lim (null when the whole block is visible) gives per column the first key the row may not
// see. On return s holds 2^(s − mNew), exactly 0 where masked; m and l the updated running max and sum; corr
// 2^(mOld − mNew), the factor for the output accumulated so far.
inline void attnSoftmax16(float* s, long n, long j0, const int32_t* lim, float* m, float* l, float* corr) {
  if (lim) attnSoftmax16T<true>(s, n, j0, lim, m, l, corr);
  else attnSoftmax16T<false>(s, n, j0, lim, m, l, corr);
}

// Transposes 8 rows of 8 floats in registers: on return r[i] holds column i.
inline void transpose8(__m256 r[8]) {
  __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xee);
  __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xee);
  __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xee);
  __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xee);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// Packs n <= 6 keys (rows ld floats apart, D floats each) into the tiled attention's K panel [D][6], zero keys past
// n. Eight values of d at a time: six rows through the 8×8 register transpose give eight 6-key columns, which are
// consecutive in the panel, so seven overlapping 8-float stores and one of 6 write them without any scalar moves.
inline void attnPackK(const float* src, long ld, int n, long D, float* dst) {
  long d = 0;
  if (n == 6) {
    for (; d + 8 <= D; d += 8) {
      __m256 r[8];
      for (int i = 0; i < 6; i++) r[i] = _mm256_loadu_ps(src + i * ld + d);
      r[6] = r[7] = _mm256_setzero_ps();
      transpose8(r);
      float* o = dst + d * 6;
      for (int c = 0; c < 7; c++) _mm256_storeu_ps(o + c * 6, r[c]);
      _mm_storeu_ps(o + 42, _mm256_castps256_ps128(r[7]));
      _mm_storel_pi(reinterpret_cast<__m64*>(o + 46), _mm256_extractf128_ps(r[7], 1));
    }
  }
  for (; d < D; d++)
    for (int i = 0; i < 6; i++) dst[d * 6 + i] = i < n ? src[i * ld + d] : 0.0f;
}

// Fills a Qᵀ panel: dst[d][c] = rows[c][d]·scale for 16 query rows (null: a zero row), 8 rows × 8 values at a time
// through the register transpose rather than 16-float-strided scalar stores.
inline void attnLoadPanel(const float* const rows[16], long D, float scale, float* dst) {
  const __m256 sv = _mm256_set1_ps(scale);
  long d = 0;
  for (; d + 8 <= D; d += 8) {
    for (int half = 0; half < 2; half++) {
      __m256 r[8];
      for (int i = 0; i < 8; i++) {
        const float* row = rows[half * 8 + i];
        r[i] = row ? _mm256_mul_ps(_mm256_loadu_ps(row + d), sv) : _mm256_setzero_ps();
      }
      transpose8(r);
      for (int k = 0; k < 8; k++) _mm256_storeu_ps(dst + (d + k) * 16 + half * 8, r[k]);
    }
  }
  for (; d < D; d++)
    for (int c = 0; c < 16; c++) dst[d * 16 + c] = rows[c] ? rows[c][d] * scale : 0.0f;
}

// The inverse for the output: rows[c][d] = src[d][c]·inv[c] for the first n of 16 rows.
inline void attnStorePanel(const float* src, long D, const float* inv, float* const rows[16], int n) {
  long d = 0;
  for (; d + 8 <= D; d += 8) {
    for (int half = 0; half * 8 < n; half++) {
      __m256 r[8];
      for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps(src + (d + k) * 16 + half * 8);
      transpose8(r);
      for (int i = 0; i < 8 && half * 8 + i < n; i++)
        _mm256_storeu_ps(rows[half * 8 + i] + d, _mm256_mul_ps(r[i], _mm256_set1_ps(inv[half * 8 + i])));
    }
  }
  for (; d < D; d++)
    for (int c = 0; c < n; c++) rows[c][d] = src[d * 16 + c] * inv[c];
}

// Copies m <= 6 floats: the pieces of a V row that make up the tiled attention's V panels.
inline void attnCopySmall(const float* src, int m, float* dst) {
  switch (m) {
    case 6:
      _mm_storeu_ps(dst, _mm_loadu_ps(src));
      _mm_storel_pi(reinterpret_cast<__m64*>(dst + 4),
                    _mm_loadl_pi(_mm_setzero_ps(), reinterpret_cast<const __m64*>(src + 4)));
      break;
    case 4: _mm_storeu_ps(dst, _mm_loadu_ps(src)); break;
    default:
      for (int r = 0; r < m; r++) dst[r] = src[r];
  }
}

// Packs nr (<= 16) rows of w (row stride ldw elements, f32 or bf16), kc elements each, into a B panel [kc][16]:
// the transpose the micro-kernel wants, widening bf16 on the way; columns nr..15 are zero. `round`: f32 weights are
// rounded to bf16 values (Compute::Bf16).
inline void packB(const void* w, WType type, long ldw, int nr, long kc, float* dst, bool round) {
  long k = 0;
  if (nr == NR) {
    for (; k + 8 <= kc; k += 8) {
      for (int half = 0; half < 2; half++) {
        __m256 r[8];
        for (int i = 0; i < 8; i++) {
          long off = (half * 8 + i) * ldw + k;
          r[i] = type == WType::BF16 ? widenBf16x8(static_cast<const uint16_t*>(w) + off)
                                     : _mm256_loadu_ps(static_cast<const float*>(w) + off);
          if (round && type == WType::F32) r[i] = roundBf16x8(r[i]);
        }
        transpose8(r);
        for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + (k + i) * NR + half * 8, r[i]);
      }
    }
  }
  for (; k < kc; k++) {
    float* d = dst + k * NR;
    for (int j = 0; j < nr; j++) {
      long off = j * ldw + k;
      const float v = type == WType::BF16 ? bf16ToF32(static_cast<const uint16_t*>(w)[off]) : static_cast<const float*>(w)[off];
      d[j] = round && type == WType::F32 ? roundBf16(v) : v;
    }
    for (int j = nr; j < NR; j++) d[j] = 0.0f;
  }
}

inline __m256 loadW(const void* w, WType type, long off) {
  return type == WType::BF16 ? widenBf16x8(static_cast<const uint16_t*>(w) + off)
                             : _mm256_loadu_ps(static_cast<const float*>(w) + off);
}

inline float loadW1(const void* w, WType type, long off) {
  return type == WType::BF16 ? bf16ToF32(static_cast<const uint16_t*>(w)[off]) : static_cast<const float*>(w)[off];
}

// Prefetching the next line of the weight stream measured ~25% faster than none on one thread (the misses start
// before the loads that need them reach the head of the queue); farther distances were slower again.
constexpr long kGemvPrefetch = 64;

// x's elements as f32: stored as f32, or (a decode step under Compute::Bf16, whose x is rounded to bf16 anyway) as bf16
// words, which widen exactly to the same values.
inline __m256 loadX(const float* x, long k) { return _mm256_loadu_ps(x + k); }
inline __m256 loadX(const uint16_t* x, long k) { return widenBf16x8(x + k); }
inline float loadX1(const float* x, long k) { return x[k]; }
inline float loadX1(const uint16_t* x, long k) { return bf16ToF32(x[k]); }

// A weight row's dot with x from its U accumulators (summed in order) and the scalar tail from k on: one definition,
// so that every GEMV shape gives a row the same bits.
template <int U, WType TYPE, class X>
inline float rowDot(const __m256 (&acc)[U], const void* wRow, const X* x, long k, long K) {
  __m256 a = acc[0];
  for (int u = 1; u < U; u++) a = _mm256_add_ps(a, acc[u]);
  float s = hsum(a);
  for (; k < K; k++) s += loadW1(wRow, TYPE, k) * loadX1(x, k);
  return s;
}

// Accumulators per (weight row, activation row) in every GEMV shape below: each takes every other 8 k, so that one
// row's sum has the same order in all of them (rowDot finishes it). Two, not four, so that a step over 4 rows at once
// fits the 16 ymm registers.
constexpr int kGemvAcc = 2;

// One weight row against MM (1 or 2) activation rows, 32 weights per step (one line of bf16) into kGemvAcc
// accumulators per activation row. Visiting rows one after another in memory order makes the whole call one
// sequential stream that the hardware prefetcher follows. Every output is summed in the same order whatever MM is, so
// a row of x gets the same bits alone (decode) as in a batch of decoding sequences (the engine relies on it).
template <int MM, WType TYPE, class X = float>
inline void gemvRow(const X* x, long K, const void* wRow, float* out, long ldo, float bias) {
  constexpr int U = kGemvAcc;
  constexpr long STEP = 32;
  const char* wb = static_cast<const char*>(wRow);
  constexpr long esz = TYPE == WType::BF16 ? 2 : 4;
  __m256 acc[MM][U];
  for (int m = 0; m < MM; m++)
    for (int u = 0; u < U; u++) acc[m][u] = _mm256_setzero_ps();
  long k = 0;
  for (; k + STEP <= K; k += STEP) {
    for (long off = 0; off < STEP * esz; off += 64) _mm_prefetch(wb + k * esz + off + kGemvPrefetch, _MM_HINT_T0);
    __m256 wv[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; v++) wv[v] = loadW(wRow, TYPE, k + 8 * v);
#pragma GCC unroll 2
    for (int m = 0; m < MM; m++) {
#pragma GCC unroll 4
      for (int v = 0; v < 4; v++) acc[m][v % U] = _mm256_fmadd_ps(wv[v], loadX(x + m * K, k + 8 * v), acc[m][v % U]);
    }
  }
  for (; k + 8 <= K; k += 8) {
    __m256 wv = loadW(wRow, TYPE, k);
    for (int m = 0; m < MM; m++) acc[m][0] = _mm256_fmadd_ps(wv, loadX(x + m * K, k), acc[m][0]);
  }
  for (int m = 0; m < MM; m++) out[m * ldo] = rowDot<U, TYPE>(acc[m], wRow, x + m * K, k, K) + bias;
}

// gemvRow<1, TYPE> for R weight rows at once, `apart` bytes apart (R sequential streams), with the same operations
// per row: each x vector serves R rows. With k = 8960 (the down projection) x is 35 KiB of f32, past L1, and reloading
// it for every row held one Zen 4 core to 11 GB/s of bf16 weights against 29 at k = 1536; for every 2 rows, to 16.
template <int R, WType TYPE, class X>
inline void gemvRowsFar(const X* x, long K, const char* w, long apart, float* out, long outApart, const float* bias) {
  constexpr int U = kGemvAcc;
  constexpr long STEP = 32;
  constexpr long esz = TYPE == WType::BF16 ? 2 : 4;
  __m256 acc[R][U];
  for (int r = 0; r < R; r++)
    for (int u = 0; u < U; u++) acc[r][u] = _mm256_setzero_ps();
  long k = 0;
  for (; k + STEP <= K; k += STEP) {
    for (int r = 0; r < R; r++)
      for (long off = 0; off < STEP * esz; off += 64) _mm_prefetch(w + r * apart + k * esz + off + kGemvPrefetch, _MM_HINT_T0);
#pragma GCC unroll 4
    for (int v = 0; v < 4; v++) {
      const __m256 xv = loadX(x, k + 8 * v);
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) acc[r][v % U] = _mm256_fmadd_ps(loadW(w + r * apart, TYPE, k + 8 * v), xv, acc[r][v % U]);
    }
  }
  for (; k + 8 <= K; k += 8) {
    const __m256 xv = loadX(x, k);
    for (int r = 0; r < R; r++) acc[r][0] = _mm256_fmadd_ps(loadW(w + r * apart, TYPE, k), xv, acc[r][0]);
  }
  for (int r = 0; r < R; r++) out[r * outApart] = rowDot<U, TYPE>(acc[r], w + r * apart, x, k, K) + (bias ? bias[r * outApart] : 0.0f);
}

// One row of x (decode) against nRows weight rows: R = 4 far-apart rows at a time, the rest one by one.
template <WType TYPE, class X>
inline void gemvOneRow(const X* x, long K, const void* w, long nRows, float* out, const float* bias) {
  constexpr int R = 4;
  constexpr long esz = TYPE == WType::BF16 ? 2 : 4;
  const long part = nRows / R;
  const char* wb = static_cast<const char*>(w);
  for (long n = 0; n < part; n++) gemvRowsFar<R, TYPE>(x, K, wb + n * K * esz, part * K * esz, out + n, part, bias ? bias + n : nullptr);
  for (long n = R * part; n < nRows; n++) gemvRow<1, TYPE>(x, K, wb + n * K * esz, out + n, 1, bias ? bias[n] : 0.0f);
}

template <WType TYPE>
inline void gemvRowsM(const float* x, int M, long K, const void* w, long nRows, float* out, long ldo,
                      const float* bias) {
  // Weight rows go in blocks of ~128 KiB: the first pair of activation rows streams a block from memory, the other
  // pairs find it in L2. So the weights are read from DRAM once for any M, and nothing is packed. (Tiles of several
  // weight rows would load less per FMA, but they sum in another order than one row at a time, and a batch's rows
  // must get the bits they get alone.)
  const long esz = TYPE == WType::BF16 ? 2 : 4;
  if (M == 1) {
    gemvOneRow<TYPE>(x, K, w, nRows, out, bias);
    return;
  }
  long block = (128L << 10) / (K * esz);
  if (block < 1) block = 1;
  for (long n0 = 0; n0 < nRows; n0 += block) {
    const long nb = n0 + block <= nRows ? block : nRows - n0;
    for (int m0 = 0; m0 < M; m0 += 2) {
      const float* xm = x + m0 * K;
      for (long n = n0; n < n0 + nb; n++) {
        const char* row = static_cast<const char*>(w) + n * K * esz;
        const float b = bias ? bias[n] : 0.0f;
        if (M - m0 >= 2) gemvRow<2, TYPE>(xm, K, row, out + m0 * ldo + n, ldo, b);
        else gemvRow<1, TYPE>(xm, K, row, out + m0 * ldo + n, ldo, b);
      }
    }
  }
}

// out[m, n] = x[m]·w[n] (+bias[n]) for nRows weight rows starting at w; out has row stride ldo.
inline void gemvRows(const float* x, int M, long K, const void* w, WType type, long nRows, float* out, long ldo,
                     const float* bias) {
  if (type == WType::BF16) gemvRowsM<WType::BF16>(x, M, K, w, nRows, out, ldo, bias);
  else gemvRowsM<WType::F32>(x, M, K, w, nRows, out, ldo, bias);
}

// gemvRows for one row of x given as bf16 words and bf16 weights (ops_impl.h gemv, Compute::Bf16 decode): the same
// bits as gemvRows on its widened values, from half the bytes of x, which at k = 8960 (17.5 KiB) stay in L1.
inline void gemvRowBf16X(const uint16_t* x, long K, const uint16_t* w, long nRows, float* out, const float* bias) {
  gemvOneRow<WType::BF16>(x, K, w, nRows, out, bias);
}
#define VL3_GEMV_BF16_X 1

inline float maxOf(const float* x, long n) {
  long i = 0;
  float m = -INFINITY;
  if (n >= 32) {
    __m256 m0 = _mm256_loadu_ps(x), m1 = _mm256_loadu_ps(x + 8), m2 = _mm256_loadu_ps(x + 16),
           m3 = _mm256_loadu_ps(x + 24);
    for (i = 32; i + 32 <= n; i += 32) {
      m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
      m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + i + 8));
      m2 = _mm256_max_ps(m2, _mm256_loadu_ps(x + i + 16));
      m3 = _mm256_max_ps(m3, _mm256_loadu_ps(x + i + 24));
    }
    m = hmax(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
  }
  for (; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}

// x[i] = exp(x[i] - sub) in place; returns the sum of the results.
inline float expSubSum(float* x, long n, float sub) {
  const __m256 s = _mm256_set1_ps(sub);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  long i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    __m256 e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), s));
    _mm256_storeu_ps(x + i, e0);
    _mm256_storeu_ps(x + i + 8, e1);
    acc0 = _mm256_add_ps(acc0, e0);
    acc1 = _mm256_add_ps(acc1, e1);
  }
  float sum = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; i++) {
    x[i] = exp1(x[i] - sub);
    sum += x[i];
  }
  return sum;
}

inline void siluMulRange(const float* g, const float* u, float* out, long n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  long i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 gv = _mm256_loadu_ps(g + i);
    __m256 e = exp8(_mm256_xor_ps(gv, sign));
    __m256 silu = _mm256_div_ps(gv, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(u + i)));
  }
  for (; i < n; i++) out[i] = g[i] / (1.0f + exp1(-g[i])) * u[i];
}

// gelu_pytorch_tanh: 0.5·u·(1 + tanh(z)) with z = √(2/π)·(u + 0.044715·u³) is exactly u / (1 + exp(−2z)), which
// has no cancellation for small z and saturates cleanly for large |z|.
inline void geluTanhRange(const float* x, float* out, long n) {
  const __m256 one = _mm256_set1_ps(1.0f), k = _mm256_set1_ps(-2.0f * 0.7978845608028654f),
               c3 = _mm256_set1_ps(0.044715f);
  long i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 u = _mm256_loadu_ps(x + i);
    const __m256 inner = _mm256_fmadd_ps(_mm256_mul_ps(c3, u), _mm256_mul_ps(u, u), u);
    _mm256_storeu_ps(out + i, _mm256_div_ps(u, _mm256_add_ps(one, exp8(_mm256_mul_ps(k, inner)))));
  }
  for (; i < n; i++) {
    const float u = x[i];
    out[i] = u / (1.0f + exp1(-2.0f * 0.7978845608028654f * (u + 0.044715f * u * u * u)));
  }
}

// erfc(z) for z >= 0 as t·exp(−z² + P(t)), t = 1/(1 + z/2): the Chebyshev fit of Press et al. (Numerical Recipes,
// "erfcc"), fractional error below 1.2e-7. Relative accuracy of erfc is what GELU needs for negative inputs.
inline __m256 erfcNonNeg8(__m256 z) {
  const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(_mm256_set1_ps(0.5f), z, _mm256_set1_ps(1.0f)));
  __m256 p = _mm256_set1_ps(0.17087277f);
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.82215223f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.48851587f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.13520398f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.27886807f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.18628806f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.09678418f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.37409196f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.00002368f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.26551223f));
  return _mm256_mul_ps(t, exp8(_mm256_fnmadd_ps(z, z, p)));
}

// nn.GELU(): 0.5·u·(1 + erf(u/√2)) = 0.5·u·erfc(−u/√2), with erfc(−y) = 2 − erfc(y) for y > 0.
inline void geluErfRange(const float* x, float* out, long n) {
  const __m256 half = _mm256_set1_ps(0.5f), two = _mm256_set1_ps(2.0f), rs2 = _mm256_set1_ps(0.7071067811865476f),
               sign = _mm256_set1_ps(-0.0f);
  long i = 0;
  auto one8 = [&](__m256 u) {
    const __m256 y = _mm256_mul_ps(u, rs2);
    const __m256 e = erfcNonNeg8(_mm256_andnot_ps(sign, y));  // erfc(|y|)
    const __m256 pos = _mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_GT_OQ);
    const __m256 c = _mm256_blendv_ps(e, _mm256_sub_ps(two, e), pos);  // erfc(−y)
    return _mm256_mul_ps(_mm256_mul_ps(half, u), c);
  };
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, one8(_mm256_loadu_ps(x + i)));
  if (i < n) {
    float in[8] = {}, res[8];
    for (long j = i; j < n; j++) in[j - i] = x[j];
    _mm256_storeu_ps(res, one8(_mm256_loadu_ps(in)));
    for (long j = i; j < n; j++) out[j] = res[j - i];
  }
}

inline void widenBf16(const uint16_t* src, float* dst, long n) {
  long i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, widenBf16x8(src + i));
  for (; i < n; i++) dst[i] = bf16ToF32(src[i]);
}

// 12 independent FMA chains: two FMA pipes × 4-cycle latency needs at least 8 in flight.
inline double fmaLoop(long iters, float* sink) {
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-6f);
  __m256 c[12];
  for (int i = 0; i < 12; i++) c[i] = _mm256_set1_ps(sink[0] + i);
  for (long it = 0; it < iters; it++) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) c[i] = _mm256_fmadd_ps(c[i], a, b);
  }
  __m256 s = c[0];
  for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, c[i]);
  sink[0] = hsum(s);
  return static_cast<double>(iters) * 12 * 16;
}

inline float sumRange(const float* p, long n) {
  __m256 a[8];
  for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
  long i = 0;
  for (; i + 64 <= n; i += 64) {
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) a[j] = _mm256_add_ps(a[j], _mm256_loadu_ps(p + i + 8 * j));
  }
  for (int j = 1; j < 8; j++) a[0] = _mm256_add_ps(a[0], a[j]);
  float s = hsum(a[0]);
  for (; i < n; i++) s += p[i];
  return s;
}

// AdamW over the whole vectors of 8 in [0, n): the element of grad_adamw.h lane by lane, with the same opaque
// product. Returns the elements done; the driver finishes the rest.
inline long adamwVectors(float* p, const float* g, float* m, float* v, long n, const AdamWScalars& s) {
  const __m256 decay = _mm256_set1_ps(s.decay), w1 = _mm256_set1_ps(s.w1), b2 = _mm256_set1_ps(s.b2);
  const __m256 w2 = _mm256_set1_ps(s.w2), step = _mm256_set1_ps(s.stepSize), bc2 = _mm256_set1_ps(s.bc2Sqrt);
  const __m256 eps = _mm256_set1_ps(s.eps);
  long i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gi = _mm256_loadu_ps(g + i), m0 = _mm256_loadu_ps(m + i), v0 = _mm256_loadu_ps(v + i);
    __m256 pi = _mm256_mul_ps(_mm256_loadu_ps(p + i), decay);
    VL3_OPAQUE(pi);
    const __m256 mi = _mm256_fmadd_ps(w1, _mm256_sub_ps(gi, m0), m0);
    const __m256 vi = _mm256_fmadd_ps(_mm256_mul_ps(w2, gi), gi, _mm256_mul_ps(v0, b2));
    const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bc2), eps);
    _mm256_storeu_ps(p + i, _mm256_add_ps(pi, _mm256_div_ps(_mm256_mul_ps(step, mi), denom)));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
  }
  return i;
}

// Quantized weights' integer dot (ops_impl.h quantMatmulInt) for a full group of 4 weight rows and MT rows of x, over
// every whole chunk of 4 blocks (128 k). A chunk's codes are k-major (quant.h codeOffset): code vector s (Int8: 8 of
// them; Int4, Int4m: 4, each two by its nibbles) is 64 bytes, one 32-bit word of 4 codes per (row, block) in the order
// of the chunk's scales, so a ymm holds rows 2p and 2p + 1 (half p), and x's 16 bytes of the same s, broadcast to both
// 128-bit lanes, are the other operand: each int32 lane sums a whole block, and one conversion and one FMA finish a
// half's 8 blocks, with no shuffle of lanes or scales. The integer step depends on the instruction set (addProducts).
#define VL3_QUANT_DOT 1

// Code vectors per chunk: Int8 8, Int4 and Int4m 4 (two operands each, the low and high nibbles).
template <WType T>
constexpr int kCodeVectors = T == WType::Int8 ? 8 : 4;

// Every kernel below keeps one integer sum per (half, x row, group): the x rows and groups a step serves give the adds
// their independence, so that 8 sums fit the 16 ymm registers beside a step's operands and x. With two sums per half
// (even and odd code vectors, or the two nibbles) 4 decode streams spilled, and the 2 that fit where k ≤ 2048 decoded
// int8 and int4 about 15 % slower than 4 of one sum on two Zen 3 cores; the GEMM held a chunk's operands for all its x
// rows and spilled them (BENCHMARKS.md run 26).
#if defined(__AVXVNNI__)
// With AVX-VNNI (the avxvnni tier) vpdpbusd multiplies the unsigned codes by the signed activations into int32 lanes,
// as on the AVX-512 VNNI tier: x's block init −z·Σq is added to the sums (Int8, Int4).
template <WType T>
constexpr bool kBlockInit = T != WType::Int4m;

// Half p of code vector s as operands: Int8 the codes (w); Int4, Int4m the low nibbles (w) and the high ones (other).
template <WType T>
inline void codeOperands(const uint8_t* codes, int s, int p, __m256i& w, __m256i& other) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 64 * s + 32 * p));
  if (T == WType::Int8) {
    w = other = v;
  } else {
    const __m256i nibble = _mm256_set1_epi8(0x0f);
    w = _mm256_and_si256(v, nibble);
    other = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
  }
}

// sum + the operands' products with x: xs, x's broadcast of the code vector; xsHigh, of the one 4 further (Int4,
// Int4m: the high nibbles' activations).
template <WType T>
inline __m256i addProducts(__m256i sum, __m256i w, __m256i other, __m256i xs, __m256i xsHigh) {
  if (T == WType::Int8) return _mm256_dpbusd_avx_epi32(sum, w, xs);
  return _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(sum, w, xs), other, xsHigh);
}

// A chunk's sum as one int32 per block.
template <WType T>
inline __m256i blockSums(__m256i sum) {
  return sum;
}
#else
// Without an int8 dot instruction (the avx2 tier), vpmaddubsw (u8·s8 pairs summed in int16, saturating) and vpmaddwd
// by ones give the lanes. Int4 and Int4m codes (≤ 15) keep a pair within 2·15·127 and a block's 8 operands' pairs
// within 8·2·15·127 = 30480, so those add in int16 and widen once; Int4 then adds x's block init −z·Σq so that it sums
// (u − z)·q. Int8 codes reach 255, past what a pair may hold, so its weights are made signed (u XOR 0x80 = u − 128):
// |u − 128| ≤ 128 is the unsigned operand and vpsignb gives the activation the weight's sign (pairs within 2·128·127),
// which sums (u − z)·q directly.
template <WType T>
constexpr bool kBlockInit = T == WType::Int4;

// Half p of code vector s as operands: Int8 |u − 128| (w) and u − 128, whose sign x takes (other); Int4, Int4m the
// low nibbles (w) and the high ones (other).
template <WType T>
inline void codeOperands(const uint8_t* codes, int s, int p, __m256i& w, __m256i& other) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 64 * s + 32 * p));
  if (T == WType::Int8) {
    other = _mm256_xor_si256(v, _mm256_set1_epi8(static_cast<char>(0x80)));
    w = _mm256_abs_epi8(other);
  } else {
    const __m256i nibble = _mm256_set1_epi8(0x0f);
    w = _mm256_and_si256(v, nibble);
    other = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
  }
}

// sum + the operands' products with x: xs, x's broadcast of the code vector; xsHigh, of the one 4 further (Int4,
// Int4m: the high nibbles' activations). Int8 sums int32 lanes, Int4 and Int4m int16 lanes.
template <WType T>
inline __m256i addProducts(__m256i sum, __m256i w, __m256i other, __m256i xs, __m256i xsHigh) {
  if (T == WType::Int8)
    return _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(w, _mm256_sign_epi8(xs, other)), _mm256_set1_epi16(1)));
  return _mm256_add_epi16(sum, _mm256_add_epi16(_mm256_maddubs_epi16(w, xs), _mm256_maddubs_epi16(other, xsHigh)));
}

// A chunk's sum as one int32 per block.
template <WType T>
inline __m256i blockSums(__m256i sum) {
  return T == WType::Int8 ? sum : _mm256_madd_epi16(sum, _mm256_set1_epi16(1));
}
#endif

// x's 16 codes that meet code vector s of a chunk (xq: the chunk's codes), broadcast to both 128-bit lanes.
inline __m256i broadcastX(const int8_t* xq, int s) {
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq + 16 * s)));
}

// acc (half p of a group) += the chunk's block sums s (int32 lanes) times d_w·d_x (+ Int4m's minimum terms); ch: the
// chunk's scales.
template <WType T>
inline __m256 addChunk(__m256i s, const uint8_t* ch, int p, const quant::QuantizedRows& A, long m, long c0, __m256 acc) {
  const long nb = A.K / quant::kBlock;
  if (kBlockInit<T>)
    s = _mm256_add_epi32(s, _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(A.blockInit + m * nb + c0))));
  const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ch + 16 * p)));
  acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_broadcast_ps(reinterpret_cast<const __m128*>(A.d + m * nb + c0))), acc);
  if (T == WType::Int4m) {
    const __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ch + 32 + 16 * p)));
    acc = _mm256_fmadd_ps(mw, _mm256_broadcast_ps(reinterpret_cast<const __m128*>(A.dsum + m * nb + c0)), acc);
  }
  return acc;
}

// res[r] += the group's 4 rows' sums from acc (half p: rows 2p, 2p + 1, lanes 4r'..4r'+3), in one order for every
// kernel shape.
inline void addGroupRows(const __m256 (&acc)[2], float (&res)[quant::kGroupRows]) {
  for (int p = 0; p < 2; p++) {
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, acc[p]);
    res[2 * p] += (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    res[2 * p + 1] += (lanes[4] + lanes[5]) + (lanes[6] + lanes[7]);
  }
}

// The chunk's operands are taken once for the MT rows of x, a code vector at a time (s outermost), and x's broadcasts
// loaded at use: x's 8 broadcasts a row held for the chunk do not fit beside 2·MT sums.
template <WType T, int MT>
inline long groupDotT(const uint8_t* g, const quant::QuantizedRows& A, long m0, float (*res)[quant::kGroupRows]) {
  constexpr int V = kCodeVectors<T>;
  const quant::GroupChunks gc = quant::groupChunks(T, A.K);
  const long chunks = gc.chunks;
  __m256 acc[MT][2];
  for (int i = 0; i < MT; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (long c = 0; c < chunks; c++) {
    const auto [ch, codes] = quant::chunkPlace(gc, g, c);
    __m256i sums[MT][2];
    for (int i = 0; i < MT; i++) sums[i][0] = sums[i][1] = _mm256_setzero_si256();
    for (int s = 0; s < V; s++) {
      __m256i w[2], other[2];
      for (int p = 0; p < 2; p++) codeOperands<T>(codes, s, p, w[p], other[p]);
      for (int i = 0; i < MT; i++) {
        const int8_t* xq = A.q + (m0 + i) * A.K + c * 128;
        const __m256i xs = broadcastX(xq, s), xsHigh = T == WType::Int8 ? xs : broadcastX(xq, s + 4);
        for (int p = 0; p < 2; p++) sums[i][p] = addProducts<T>(sums[i][p], w[p], other[p], xs, xsHigh);
      }
    }
    for (int i = 0; i < MT; i++)
      for (int p = 0; p < 2; p++) acc[i][p] = addChunk<T>(blockSums<T>(sums[i][p]), ch, p, A, m0 + i, c * 4, acc[i][p]);
  }
  for (int i = 0; i < MT; i++) addGroupRows(acc[i], res[i]);
  return chunks * quant::kChunkBlocks;
}

// groupDotT for one row of x (decode) against G groups `apart` bytes apart: G sequential weight streams, which take
// turns a code vector (one 64-byte line) at a time within a chunk, as on the AVX-512 tiers; a group's whole chunk
// (512 bytes of int8) before the next stream's held the int8 decode on this tier to 16 GB/s on two Zen 5 threads
// reading 85 (BENCHMARKS.md run 25). x's broadcasts are loaded at each use: held for the chunk, they and the 2·G sums
// outnumber the 16 ymm registers. Each group's integer sums and float steps are groupDotT's, so its rows get the same
// bits.
template <WType T, int G>
inline long groupsDotT(const uint8_t* g, long apart, const quant::QuantizedRows& A, long m, float (*res)[quant::kGroupRows]) {
  constexpr int V = kCodeVectors<T>;
  const quant::GroupChunks gc = quant::groupChunks(T, A.K);
  const long chunks = gc.chunks;
  __m256 acc[G][2];
  for (int h = 0; h < G; h++) acc[h][0] = acc[h][1] = _mm256_setzero_ps();
  for (long c = 0; c < chunks; c++) {
    const int8_t* xq = A.q + m * A.K + c * 128;
    const uint8_t* params[G];
    const uint8_t* codes[G];
    quant::chunkPlaces<G>(gc, g, apart, c, params, codes);
    __m256i sums[G][2];
    for (int h = 0; h < G; h++) sums[h][0] = sums[h][1] = _mm256_setzero_si256();
    for (int s = 0; s < V; s++) {
      const __m256i xs = broadcastX(xq, s), xsHigh = T == WType::Int8 ? xs : broadcastX(xq, s + 4);
      for (int h = 0; h < G; h++)
        for (int p = 0; p < 2; p++) {
          __m256i w, other;
          codeOperands<T>(codes[h], s, p, w, other);
          sums[h][p] = addProducts<T>(sums[h][p], w, other, xs, xsHigh);
        }
    }
    for (int h = 0; h < G; h++)
      for (int p = 0; p < 2; p++) acc[h][p] = addChunk<T>(blockSums<T>(sums[h][p]), params[h], p, A, m, c * 4, acc[h][p]);
  }
  for (int h = 0; h < G; h++) addGroupRows(acc[h], res[h]);
  return chunks * quant::kChunkBlocks;
}
#define VL3_QUANT_GROUPS_DOT 1
// Groups streamed at once where k is short (ops_impl.h streamedGroups; 4 where it is long): 4 here too, with one sum
// per half. With two (run 25), 4 groups' sums spilled and 2 streamed faster.
constexpr int kStreamedGroupsShortK = 4;

}  // namespace
}  // namespace VL3_AVX2_NS
}  // namespace vl3
