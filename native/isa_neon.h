// Own AArch64 NEON primitives: Advanced SIMD is baseline on every arm64 CPU, and no auto-vectorizer gives us the register-blocked GEMM, the in-register bf16 widening or the transposes of the attention tiles.
// Included by kernels_neon.cc (baseline ARMv8.0-A) and kernels_neon_bf16.cc (-march=armv8.2-a+bf16+dotprod, with
// VL3_BF16_DOT = 1: the bf16 dot-product GEMM and GEMV, BFMMLA and BFDOT, that Compute::Bf16 then runs on), inside an
// anonymous namespace in vl3::VL3_ISA, so nothing here can be picked by the linker for another translation unit. Same
// contracts as isa_avx2.h (the x86 header explains each primitive's role in the drivers of ops_impl.h); this file only
// says where NEON differs.
#pragma once
#include <arm_neon.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels.h"
#include "quant.h"

namespace vl3 {
namespace VL3_ISA {
namespace {

// 6×16 rather than 8×12: the drivers' attention tiles are 16 query columns wide and pack keys in panels of kAttnMR,
// so 6×16 lets the tiled attention and the GEMM share one register budget: 24 accumulators, 4 B vectors and the 6
// A values in one q and one d register make 30 of the 32 vector registers.
constexpr int MR = 6;
constexpr int NR = 16;
// The AVX2 tier's blocking, for the same tile: a KC×NR panel of B (16 KiB) stays in L1 (64 KiB and more on current
// arm64 cores) while an MC×KC block of A (144 KiB) stays in L2 (1 MiB and more), and each task's KC×(≤NB) slice of
// packed B is read from L2/L3. Not measured on arm64 hardware.
constexpr long KC = 256;
constexpr long MC = 144;
constexpr long NB = 2048;
// The register-tiled GEMV (4 weight rows × 4 activation rows, no packing) keeps loads at half the FMAs, as the
// AVX2 one does, so the same crossover is used; it has not been measured on arm64 hardware.
constexpr long kGemvMaxM = 63;
// Keys per K panel and output rows per V panel of the tiled attention: attnTile's 6×16 tile is the GEMM's.
constexpr long kAttnMR = 6;

inline float bf16ToF32(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float32x4_t widenLo(uint16x8_t h) { return vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16)); }
inline float32x4_t widenHi(uint16x8_t h) { return vreinterpretq_f32_u32(vshll_high_n_u16(h, 16)); }
inline float32x4_t widen4(const uint16_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }

// f32ToBf16 on 4 lanes, in integer arithmetic: the same bits whatever FPCR says about subnormals, and baseline
// ARMv8.0 (BFCVTN would need BF16).
inline uint16x4_t bf16Bits4(float32x4_t v) {
  const uint32x4_t u = vreinterpretq_u32_f32(v);
  const uint32x4_t r = vaddq_u32(u, vaddq_u32(vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1)), vdupq_n_u32(0x7fff)));
  const uint32x4_t quiet = vorrq_u32(u, vdupq_n_u32(0x400000));
  const uint32x4_t isNan = vmvnq_u32(vceqq_f32(v, v));
  return vshrn_n_u32(vbslq_u32(isNan, quiet, r), 16);
}

// f32 rounded to the nearest bf16 value, kept as f32 (roundBf16 on 4 lanes).
inline float32x4_t roundBf16x4(float32x4_t v) { return vreinterpretq_f32_u32(vshll_n_u16(bf16Bits4(v), 16)); }

// The 4×4 transpose every packing routine below is built from: on return r[i] holds column i.
inline void transpose4(float32x4_t r[4]) {
  const float32x4_t t0 = vtrn1q_f32(r[0], r[1]), t1 = vtrn2q_f32(r[0], r[1]);
  const float32x4_t t2 = vtrn1q_f32(r[2], r[3]), t3 = vtrn2q_f32(r[2], r[3]);
  r[0] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
  r[1] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
  r[2] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
  r[3] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
}

// exp(x) with the AVX2 path's reduction and coefficients (see exp8 there), so both tiers round alike. FRINTN and
// FCVTNS round to nearest even as the AVX2 conversions do; FMIN/FMAX propagate NaN.
inline float32x4_t exp4(float32x4_t x) {
  x = vmaxq_f32(vdupq_n_f32(-87.3365478515625f), vminq_f32(vdupq_n_f32(88.3762626647949f), x));
  const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
  r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
  float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
  p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
  p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
  p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
  const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

inline float exp1(float x) { return vgetq_lane_f32(exp4(vdupq_n_f32(x)), 0); }

// exp(−inf) must be exactly 0: a row's first visible block rescales its empty history by it.
inline float expScalar(float x) { return x == -INFINITY ? 0.0f : exp1(x); }

// 2^x for x <= 0, as exp2NonPos8 of the AVX2 path (same polynomial): callers clear masked entries themselves.
inline float32x4_t exp2NonPos4(float32x4_t x) {
  x = vmaxq_f32(vdupq_n_f32(-126.0f), x);
  const int32x4_t n = vcvtnq_s32_f32(x);
  const float32x4_t r = vsubq_f32(x, vcvtq_f32_s32(n));
  float32x4_t p = vdupq_n_f32(1.54697322e-4f);
  p = vfmaq_f32(vdupq_n_f32(1.34100008e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(9.61803086e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(5.55029735e-2f), p, r);
  p = vfmaq_f32(vdupq_n_f32(2.40226507e-1f), p, r);
  p = vfmaq_f32(vdupq_n_f32(6.93147242e-1f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  return vreinterpretq_f32_s32(vaddq_s32(vreinterpretq_s32_f32(p), vshlq_n_s32(n, 23)));
}

// C[6×16] (ldc) = or += A·B over kc, A a packed [kc][6] panel, B 16 floats per k (ldb apart). The six A values of a
// step come in with two loads and feed the FMAs by lane, so a step is 6 loads for 24 FMAs.
inline void microKernel(long kc, const float* A, const float* B, long ldb, float* C, long ldc, bool accumulate,
                        const float* bias) {
  for (int i = 0; i < MR; i++) __builtin_prefetch(C + i * ldc, 1, 3);
  float32x4_t c[MR][4];
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < 4; j++) c[i][j] = vdupq_n_f32(0.0f);
#pragma GCC unroll 2
  for (long k = 0; k < kc; k++) {
    const float32x4_t b0 = vld1q_f32(B), b1 = vld1q_f32(B + 4), b2 = vld1q_f32(B + 8), b3 = vld1q_f32(B + 12);
    const float32x4_t a03 = vld1q_f32(A);
    const float32x2_t a45 = vld1_f32(A + 4);
#define VL3_ROW(i, a, lane, fn)            \
  c[i][0] = fn(c[i][0], b0, a, lane);      \
  c[i][1] = fn(c[i][1], b1, a, lane);      \
  c[i][2] = fn(c[i][2], b2, a, lane);      \
  c[i][3] = fn(c[i][3], b3, a, lane);
    VL3_ROW(0, a03, 0, vfmaq_laneq_f32)
    VL3_ROW(1, a03, 1, vfmaq_laneq_f32)
    VL3_ROW(2, a03, 2, vfmaq_laneq_f32)
    VL3_ROW(3, a03, 3, vfmaq_laneq_f32)
    VL3_ROW(4, a45, 0, vfmaq_lane_f32)
    VL3_ROW(5, a45, 1, vfmaq_lane_f32)
#undef VL3_ROW
    A += MR;
    B += ldb;
  }
  if (accumulate) {
    for (int i = 0; i < MR; i++)
      for (int j = 0; j < 4; j++) vst1q_f32(C + i * ldc + 4 * j, vaddq_f32(vld1q_f32(C + i * ldc + 4 * j), c[i][j]));
  } else if (bias) {
    for (int j = 0; j < 4; j++) {
      const float32x4_t bv = vld1q_f32(bias + 4 * j);
      for (int i = 0; i < MR; i++) vst1q_f32(C + i * ldc + 4 * j, vaddq_f32(c[i][j], bv));
    }
  } else {
    for (int i = 0; i < MR; i++)
      for (int j = 0; j < 4; j++) vst1q_f32(C + i * ldc + 4 * j, c[i][j]);
  }
}

// Row I of one step of the attention tile: A[I] broadcast by lane from the q/d registers where the panel is known to
// hold them (M of 4 or 6 values), by a load-and-replicate otherwise, so that no step reads past its M floats.
template <int M, int I>
inline void tileRow(float32x4_t (&c)[6][4], const float* A, float32x4_t lo, float32x2_t hi, const float32x4_t (&b)[4]) {
  if constexpr (I < M) {
    float32x4_t a;
    if constexpr (M >= 4 && I < 4) a = vdupq_laneq_f32(lo, I);
    else if constexpr (M == 6) a = vdupq_lane_f32(hi, I - 4);
    else a = vld1q_dup_f32(A + I);
    c[I][0] = vfmaq_f32(c[I][0], b[0], a);
    c[I][1] = vfmaq_f32(c[I][1], b[1], a);
    c[I][2] = vfmaq_f32(c[I][2], b[2], a);
    c[I][3] = vfmaq_f32(c[I][3], b[3], a);
  }
}

// The tiled attention's register tile: C[M×16] = A·B, or C ⊙ corr + A·B with per-column corr (see isa_avx2.h).
template <int M>
inline void attnTileT(long kc, const float* A, long lda, const float* B, long ldb, float* C, long ldc,
                      const float* corr) {
  float32x4_t c[6][4];
  for (int i = 0; i < M; i++)
    for (int j = 0; j < 4; j++) c[i][j] = vdupq_n_f32(0.0f);
#pragma GCC unroll 2
  for (long k = 0; k < kc; k++) {
    const float32x4_t b[4] = {vld1q_f32(B), vld1q_f32(B + 4), vld1q_f32(B + 8), vld1q_f32(B + 12)};
    float32x4_t lo = vdupq_n_f32(0.0f);
    float32x2_t hi = vdup_n_f32(0.0f);
    if constexpr (M >= 4) lo = vld1q_f32(A);
    if constexpr (M == 6) hi = vld1_f32(A + 4);
    tileRow<M, 0>(c, A, lo, hi, b);
    tileRow<M, 1>(c, A, lo, hi, b);
    tileRow<M, 2>(c, A, lo, hi, b);
    tileRow<M, 3>(c, A, lo, hi, b);
    tileRow<M, 4>(c, A, lo, hi, b);
    tileRow<M, 5>(c, A, lo, hi, b);
    A += lda;
    B += ldb;
  }
  if (corr) {
    const float32x4_t f[4] = {vld1q_f32(corr), vld1q_f32(corr + 4), vld1q_f32(corr + 8), vld1q_f32(corr + 12)};
    for (int i = 0; i < M; i++)
      for (int j = 0; j < 4; j++) vst1q_f32(C + i * ldc + 4 * j, vfmaq_f32(c[i][j], vld1q_f32(C + i * ldc + 4 * j), f[j]));
  } else {
    for (int i = 0; i < M; i++)
      for (int j = 0; j < 4; j++) vst1q_f32(C + i * ldc + 4 * j, c[i][j]);
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

// One online-softmax step for 16 query rows (see isa_avx2.h): four vectors per key row instead of two.
template <bool MASKED>
inline void attnSoftmax16T(float* s, long n, long j0, const int32_t* lim, float* m, float* l, float* corr) {
  const float32x4_t ninf = vdupq_n_f32(-INFINITY);
  float32x4_t mx[4], mOld[4];
  int32x4_t lv[4];
  for (int q = 0; q < 4; q++) {
    mx[q] = mOld[q] = vld1q_f32(m + 4 * q);
    if (MASKED) lv[q] = vld1q_s32(lim + 4 * q);
  }
  for (long j = 0; j < n; j++) {
    float* row = s + j * 16;
    const int32x4_t jv = vdupq_n_s32(static_cast<int32_t>(j0 + j));
    for (int q = 0; q < 4; q++) {
      float32x4_t v = vld1q_f32(row + 4 * q);
      if (MASKED) {
        v = vbslq_f32(vcgtq_s32(lv[q], jv), v, ninf);
        vst1q_f32(row + 4 * q, v);
      }
      mx[q] = vmaxq_f32(mx[q], v);
    }
  }
  // m starts at −FLT_MAX, not −inf, so a row with nothing seen yet gets corr = 2^0 rather than NaN.
  float32x4_t sum[4];
  for (int q = 0; q < 4; q++) sum[q] = vdupq_n_f32(0.0f);
  for (long j = 0; j < n; j++) {
    float* row = s + j * 16;
    for (int q = 0; q < 4; q++) {
      const float32x4_t v = vld1q_f32(row + 4 * q);
      float32x4_t p = exp2NonPos4(vsubq_f32(v, mx[q]));
      if (MASKED)  // exactly 0 where masked, not the clamp's 2^−126
        p = vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(p), vceqq_f32(v, ninf)));
      vst1q_f32(row + 4 * q, p);
      sum[q] = vaddq_f32(sum[q], p);
    }
  }
  for (int q = 0; q < 4; q++) {
    const float32x4_t cq = exp2NonPos4(vsubq_f32(mOld[q], mx[q]));
    vst1q_f32(corr + 4 * q, cq);
    vst1q_f32(l + 4 * q, vfmaq_f32(sum[q], vld1q_f32(l + 4 * q), cq));
    vst1q_f32(m + 4 * q, mx[q]);
  }
}

inline void attnSoftmax16(float* s, long n, long j0, const int32_t* lim, float* m, float* l, float* corr) {
  if (lim) attnSoftmax16T<true>(s, n, j0, lim, m, l, corr);
  else attnSoftmax16T<false>(s, n, j0, lim, m, l, corr);
}

// Packs n <= 6 keys into the K panel [D][6]: four values of d at a time, keys 0-3 through the 4×4 transpose and keys
// 4-5 zipped into pairs, so each d gets one q store and one d store.
inline void attnPackK(const float* src, long ld, int n, long D, float* dst) {
  long d = 0;
  if (n == 6) {
    for (; d + 4 <= D; d += 4) {
      float32x4_t r[4] = {vld1q_f32(src + d), vld1q_f32(src + ld + d), vld1q_f32(src + 2 * ld + d),
                          vld1q_f32(src + 3 * ld + d)};
      transpose4(r);
      const float32x4_t r4 = vld1q_f32(src + 4 * ld + d), r5 = vld1q_f32(src + 5 * ld + d);
      const float32x4_t z0 = vzip1q_f32(r4, r5), z1 = vzip2q_f32(r4, r5);
      const float32x2_t pairs[4] = {vget_low_f32(z0), vget_high_f32(z0), vget_low_f32(z1), vget_high_f32(z1)};
      float* o = dst + d * 6;
      for (int i = 0; i < 4; i++) {
        vst1q_f32(o + i * 6, r[i]);
        vst1_f32(o + i * 6 + 4, pairs[i]);
      }
    }
  }
  for (; d < D; d++)
    for (int i = 0; i < 6; i++) dst[d * 6 + i] = i < n ? src[i * ld + d] : 0.0f;
}

// dst[d][c] = rows[c][d]·scale for 16 query rows (null: a zero row), 4 rows × 4 values per transpose.
inline void attnLoadPanel(const float* const rows[16], long D, float scale, float* dst) {
  const float32x4_t sv = vdupq_n_f32(scale);
  long d = 0;
  for (; d + 4 <= D; d += 4) {
    for (int g = 0; g < 4; g++) {
      float32x4_t r[4];
      for (int i = 0; i < 4; i++) {
        const float* row = rows[g * 4 + i];
        r[i] = row ? vmulq_f32(vld1q_f32(row + d), sv) : vdupq_n_f32(0.0f);
      }
      transpose4(r);
      for (int k = 0; k < 4; k++) vst1q_f32(dst + (d + k) * 16 + g * 4, r[k]);
    }
  }
  for (; d < D; d++)
    for (int c = 0; c < 16; c++) dst[d * 16 + c] = rows[c] ? rows[c][d] * scale : 0.0f;
}

// rows[c][d] = src[d][c]·inv[c] for the first n of 16 rows.
inline void attnStorePanel(const float* src, long D, const float* inv, float* const rows[16], int n) {
  long d = 0;
  for (; d + 4 <= D; d += 4) {
    for (int g = 0; g * 4 < n; g++) {
      float32x4_t r[4];
      for (int k = 0; k < 4; k++) r[k] = vld1q_f32(src + (d + k) * 16 + g * 4);
      transpose4(r);
      for (int i = 0; i < 4 && g * 4 + i < n; i++)
        vst1q_f32(rows[g * 4 + i] + d, vmulq_n_f32(r[i], inv[g * 4 + i]));
    }
  }
  for (; d < D; d++)
    for (int c = 0; c < n; c++) rows[c][d] = src[d * 16 + c] * inv[c];
}

inline void attnCopySmall(const float* src, int m, float* dst) {
  switch (m) {
    case 6:
      vst1q_f32(dst, vld1q_f32(src));
      vst1_f32(dst + 4, vld1_f32(src + 4));
      break;
    case 4: vst1q_f32(dst, vld1q_f32(src)); break;
    default:
      for (int r = 0; r < m; r++) dst[r] = src[r];
  }
}

// nr (<= 16) rows of w into a B panel [kc][16], widening bf16 on the way; columns nr..15 are zero. Full panels go
// four rows × four k at a time through the transpose. `round`: f32 weights are rounded to bf16 values
// (Compute::Bf16).
inline void packB(const void* w, WType type, long ldw, int nr, long kc, float* dst, bool round) {
  const bool roundF32 = round && type == WType::F32;
  long k = 0;
  if (nr == NR) {
    for (; k + 4 <= kc; k += 4) {
      for (int g = 0; g < 4; g++) {
        float32x4_t r[4];
        for (int i = 0; i < 4; i++) {
          const long off = (g * 4 + i) * ldw + k;
          r[i] = type == WType::BF16 ? widen4(static_cast<const uint16_t*>(w) + off)
                                     : vld1q_f32(static_cast<const float*>(w) + off);
          if (roundF32) r[i] = roundBf16x4(r[i]);
        }
        transpose4(r);
        for (int i = 0; i < 4; i++) vst1q_f32(dst + (k + i) * NR + g * 4, r[i]);
      }
    }
  }
  for (; k < kc; k++) {
    float* d = dst + k * NR;
    for (int j = 0; j < nr; j++) {
      const long off = j * ldw + k;
      const float v = type == WType::BF16 ? bf16ToF32(static_cast<const uint16_t*>(w)[off]) : static_cast<const float*>(w)[off];
      d[j] = roundF32 ? roundBf16(v) : v;
    }
    for (int j = nr; j < NR; j++) d[j] = 0.0f;
  }
}

template <WType TYPE>
inline void loadW8(const void* w, long off, float32x4_t& lo, float32x4_t& hi) {
  if constexpr (TYPE == WType::BF16) {
    const uint16x8_t h = vld1q_u16(static_cast<const uint16_t*>(w) + off);
    lo = widenLo(h);
    hi = widenHi(h);
  } else {
    lo = vld1q_f32(static_cast<const float*>(w) + off);
    hi = vld1q_f32(static_cast<const float*>(w) + off + 4);
  }
}

template <WType TYPE>
inline float loadW1(const void* w, long off) {
  if constexpr (TYPE == WType::BF16) return bf16ToF32(static_cast<const uint16_t*>(w)[off]);
  else return static_cast<const float*>(w)[off];
}

// R weight rows (one contiguous block) against MM (1 or 2) activation rows, 8 k per step. Each weight vector feeds
// MM FMAs and each activation vector R, so a step has MM + R loads for MM·R·2 FMAs. Separate accumulators for the two
// halves of a step keep enough FMA chains in flight, and fix the order of the sums whatever MM and R are: a row of x
// gets the same bits alone (decode) as in a batch of decoding sequences (the engine relies on it). `next` (nextBytes)
// is the following tile's block, pulled towards L2 in memory order while this one computes, as in the AVX2 path.
template <int MM, int R, WType TYPE>
inline void gemvTile(const float* x, long K, const void* w, float* out, long ldo, const float* bias, const char* next,
                     long nextBytes) {
  static_assert(MM <= 2, "2·MM·R accumulators and 2·R weight vectors must fit the 32 vector registers");
  constexpr int SETS = 2;
  constexpr long esz = TYPE == WType::BF16 ? 2 : 4;
  constexpr int linesPerStep = (R * esz * 8 + 63) / 64;
  float32x4_t acc[SETS][MM][R];
  for (int s = 0; s < SETS; s++)
    for (int m = 0; m < MM; m++)
      for (int r = 0; r < R; r++) acc[s][m][r] = vdupq_n_f32(0.0f);
  long k = 0, pf = 0;
  for (; k + 8 <= K; k += 8) {
#pragma GCC unroll 2
    for (int i = 0; i < linesPerStep; i++, pf += 64)
      if (pf < nextBytes) __builtin_prefetch(next + pf, 0, 2);
    float32x4_t lo[R], hi[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) loadW8<TYPE>(w, r * K + k, lo[r], hi[r]);
#pragma GCC unroll 4
    for (int m = 0; m < MM; m++) {
      const float32x4_t x0 = vld1q_f32(x + m * K + k), x1 = vld1q_f32(x + m * K + k + 4);
#pragma GCC unroll 4
      for (int r = 0; r < R; r++) {
        acc[0][m][r] = vfmaq_f32(acc[0][m][r], lo[r], x0);
        acc[SETS - 1][m][r] = vfmaq_f32(acc[SETS - 1][m][r], hi[r], x1);
      }
    }
  }
  for (int m = 0; m < MM; m++) {
    for (int r = 0; r < R; r++) {
      float s = vaddvq_f32(SETS == 2 ? vaddq_f32(acc[0][m][r], acc[SETS - 1][m][r]) : acc[0][m][r]);
      for (long kk = k; kk < K; kk++) s += loadW1<TYPE>(w, r * K + kk) * x[m * K + kk];
      out[m * ldo + r] = bias ? s + bias[r] : s;
    }
  }
}

constexpr int kGemvRows = 4;  // weight rows per GEMV tile

template <int MM, WType TYPE>
inline void gemvRowsT(const float* x, long K, const void* w, long nRows, float* out, long ldo, const float* bias) {
  constexpr long esz = TYPE == WType::BF16 ? 2 : 4;
  constexpr int R = kGemvRows;
  const char* wb = static_cast<const char*>(w);
  long n = 0;
  for (; n + R <= nRows; n += R) {
    const long nextBytes = (n + 2 * R <= nRows ? R : nRows - n - R) * K * esz;
    gemvTile<MM, R, TYPE>(x, K, wb + n * K * esz, out + n, ldo, bias ? bias + n : nullptr, wb + (n + R) * K * esz,
                          nextBytes);
  }
  for (; n < nRows; n++)
    gemvTile<MM, 1, TYPE>(x, K, wb + n * K * esz, out + n, ldo, bias ? bias + n : nullptr, nullptr, 0);
}

// Weight rows in blocks of ~128 KiB: the first pair of activation rows streams a block from memory, the others find
// it in L2, so the weights are read from DRAM once for any M and nothing is packed.
template <WType TYPE>
inline void gemvRowsM(const float* x, int M, long K, const void* w, long nRows, float* out, long ldo,
                      const float* bias) {
  constexpr long esz = TYPE == WType::BF16 ? 2 : 4;
  long block = (128L << 10) / (K * esz) / kGemvRows * kGemvRows;
  if (block < kGemvRows) block = kGemvRows;
  for (long n0 = 0; n0 < nRows; n0 += block) {
    const long nb = n0 + block <= nRows ? block : nRows - n0;
    const char* wb = static_cast<const char*>(w) + n0 * K * esz;
    const float* bb = bias ? bias + n0 : nullptr;
    for (int m0 = 0; m0 < M; m0 += 2) {
      const float* xm = x + m0 * K;
      float* om = out + m0 * ldo + n0;
      if (M - m0 >= 2) gemvRowsT<2, TYPE>(xm, K, wb, nb, om, ldo, bb);
      else gemvRowsT<1, TYPE>(xm, K, wb, nb, om, ldo, bb);
    }
  }
}

inline void gemvRows(const float* x, int M, long K, const void* w, WType type, long nRows, float* out, long ldo,
                     const float* bias) {
  if (type == WType::BF16) gemvRowsM<WType::BF16>(x, M, K, w, nRows, out, ldo, bias);
  else gemvRowsM<WType::F32>(x, M, K, w, nRows, out, ldo, bias);
}

#if VL3_BF16_DOT
// ---------------------------------------------------------------------------------------------------------------
// The bf16 dot-product GEMM and GEMV that Compute::Bf16 runs on where the CPU has BF16 (this part exists only in the
// +bf16 build). BFMMLA multiplies a 2×4 block of x (two rows, four k) by a 4×2 block of wᵀ (four k, two weight
// rows) into a 2×2 block of C: twice the products per instruction of BFDOT and four times those of FMLA, with both
// operands one q register as they come out of packing. The GEMV reads w in place, so it pairs k with BFDOT instead.
// Both instructions flush subnormals and round their partial sums to odd (the contract in kernels.h).

// k per BFMMLA step: panels hold kc rounded up to a multiple of 4, zero padded.
constexpr long kDotK = 4;
// A KCDot×16 bf16 panel of B takes the 16 KiB of L1 that a KC×16 f32 panel does, as on the other bf16 tier.
constexpr long KCDot = 512;
// Up to kBatchRows rows of x the BFDOT GEMV, beyond the packed BFMMLA GEMM. By instruction counts (not measured on
// arm64 hardware) the GEMM would pay from 8 rows (a GEMV tile does half the products per instruction of the GEMM's
// and only saves packing), but up to kBatchRows a batch's rows must get the bits they get alone (kernels.h).
constexpr long kGemvMaxMDot = kBatchRows;

inline bfloat16x8_t asBf16(uint16x8_t v) { return vreinterpretq_bf16_u16(v); }

// Values k .. k + 3 of a row as bf16 words (rounded from f32, or as stored), zero from `end` on.
template <WType TYPE>
inline uint16x4_t quadBf16(const void* row, long k, long end) {
  if (k + 4 <= end) {
    if constexpr (TYPE == WType::BF16) return vld1_u16(static_cast<const uint16_t*>(row) + k);
    else return bf16Bits4(vld1q_f32(static_cast<const float*>(row) + k));
  }
  uint16_t q[4] = {0, 0, 0, 0};
  for (long i = k; i < end; i++) {
    if constexpr (TYPE == WType::BF16) q[i - k] = static_cast<const uint16_t*>(row)[i];
    else q[i - k] = f32ToBf16(static_cast<const float*>(row)[i]);
  }
  return vld1_u16(q);
}

// Panel of `pairs` row pairs ([kp/4][pairs][2 rows][4 k]) from rows [0, n) of src (ld elements apart), kc values
// each; rows past n and k past kc are zero.
template <WType TYPE>
inline void packPairs(const void* src, long ld, long n, int pairs, long kc, uint16_t* dst) {
  constexpr long esz = TYPE == WType::BF16 ? 2 : 4;
  const long kp = (kc + kDotK - 1) / kDotK * kDotK;
  const char* s = static_cast<const char*>(src);
  for (int p = 0; p < pairs; p++) {
    const long ra = 2 * p, rb = ra + 1;
    for (long k = 0; k < kp; k += kDotK) {
      const uint16x4_t lo = ra < n ? quadBf16<TYPE>(s + ra * ld * esz, k, kc) : vdup_n_u16(0);
      const uint16x4_t hi = rb < n ? quadBf16<TYPE>(s + rb * ld * esz, k, kc) : vdup_n_u16(0);
      vst1q_u16(dst + k * 2 * pairs + p * 8, vcombine_u16(lo, hi));
    }
  }
}

// Rows [0, mc) of x into A panels of MR rows (MR/2 row pairs), rounded to bf16.
inline void packABf16(const float* x, long ldx, long mc, long kc, uint16_t* dst) {
  const long kp = (kc + kDotK - 1) / kDotK * kDotK;
  for (long i0 = 0; i0 < mc; i0 += MR) packPairs<WType::F32>(x + i0 * ldx, ldx, mc - i0, MR / 2, kc, dst + i0 * kp);
}

// nr (<= 16) rows of w into a B panel of NR/2 column pairs; f32 weights are rounded (Compute::Bf16 with f32 weights).
inline void packBBf16(const void* w, WType type, long ldw, int nr, long kc, uint16_t* dst) {
  if (type == WType::BF16) packPairs<WType::BF16>(w, ldw, nr, NR / 2, kc, dst);
  else packPairs<WType::F32>(w, ldw, nr, NR / 2, kc, dst);
}

// C[6×16] (ldc) = or += A·B over kp/4 steps: 3 × 8 accumulators of 2×2 blocks, a step 11 loads for 24 BFMMLA.
// acc[p][q] holds rows 2p, 2p+1 × columns 2q, 2q+1 row-major, so 64-bit transposes of neighbours give rows of C.
inline void microKernelBf16(long kp, const uint16_t* A, const uint16_t* B, float* C, long ldc, bool accumulate,
                            const float* bias) {
  for (int i = 0; i < MR; i++) __builtin_prefetch(C + i * ldc, 1, 3);
  float32x4_t acc[MR / 2][NR / 2];
  for (int p = 0; p < MR / 2; p++)
    for (int q = 0; q < NR / 2; q++) acc[p][q] = vdupq_n_f32(0.0f);
#pragma GCC unroll 2
  for (long s = 0; s < kp / kDotK; s++) {
    const bfloat16x8_t a0 = asBf16(vld1q_u16(A)), a1 = asBf16(vld1q_u16(A + 8)), a2 = asBf16(vld1q_u16(A + 16));
#pragma GCC unroll 8
    for (int q = 0; q < NR / 2; q++) {
      const bfloat16x8_t b = asBf16(vld1q_u16(B + 8 * q));
      acc[0][q] = vbfmmlaq_f32(acc[0][q], a0, b);
      acc[1][q] = vbfmmlaq_f32(acc[1][q], a1, b);
      acc[2][q] = vbfmmlaq_f32(acc[2][q], a2, b);
    }
    A += kDotK * MR;
    B += kDotK * NR;
  }
  for (int p = 0; p < MR / 2; p++) {
    for (int h = 0; h < NR / 4; h++) {
      const float64x2_t l = vreinterpretq_f64_f32(acc[p][2 * h]), r = vreinterpretq_f64_f32(acc[p][2 * h + 1]);
      float32x4_t row0 = vreinterpretq_f32_f64(vtrn1q_f64(l, r)), row1 = vreinterpretq_f32_f64(vtrn2q_f64(l, r));
      float* c0 = C + 2 * p * ldc + 4 * h;
      float* c1 = c0 + ldc;
      if (accumulate) {
        row0 = vaddq_f32(vld1q_f32(c0), row0);
        row1 = vaddq_f32(vld1q_f32(c1), row1);
      } else if (bias) {
        const float32x4_t bv = vld1q_f32(bias + 4 * h);
        row0 = vaddq_f32(row0, bv);
        row1 = vaddq_f32(row1, bv);
      }
      vst1q_f32(c0, row0);
      vst1q_f32(c1, row1);
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

// R weight rows against MM (1 or 2) rows of x, all bf16 words K apart, 16 k per step: each BFDOT adds four pairs of
// products into four f32 lanes. A second accumulator set for the step's second half covers the BFDOT latency and, as
// in gemvTile, fixes the order of the sums whatever MM and R are; `next` (nextBytes) is pulled towards L2 as in the
// f32 GEMV.
template <int MM, int R>
inline void gemvTileBf16(const uint16_t* x, long K, const uint16_t* w, float* out, long ldo, const float* bias,
                         const char* next, long nextBytes) {
  static_assert(MM <= 2, "2·MM·R accumulators must fit the 32 vector registers");
  constexpr int SETS = 2;
  constexpr int linesPerStep = (R * 16 * 2 + 63) / 64;
  float32x4_t acc[SETS][MM][R];
  for (int s = 0; s < SETS; s++)
    for (int m = 0; m < MM; m++)
      for (int r = 0; r < R; r++) acc[s][m][r] = vdupq_n_f32(0.0f);
  auto step = [&](long k, int set) {
    bfloat16x8_t wv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) wv[r] = asBf16(vld1q_u16(w + r * K + k));
#pragma GCC unroll 4
    for (int m = 0; m < MM; m++) {
      const bfloat16x8_t xv = asBf16(vld1q_u16(x + m * K + k));
#pragma GCC unroll 4
      for (int r = 0; r < R; r++) acc[set][m][r] = vbfdotq_f32(acc[set][m][r], wv[r], xv);
    }
  };
  long k = 0, pf = 0;
  for (; k + 16 <= K; k += 16) {
#pragma GCC unroll 2
    for (int i = 0; i < linesPerStep; i++, pf += 64)
      if (pf < nextBytes) __builtin_prefetch(next + pf, 0, 2);
    step(k, 0);
    step(k + 8, SETS - 1);
  }
  if (k + 8 <= K) {
    step(k, 0);
    k += 8;
  }
  for (int m = 0; m < MM; m++) {
    for (int r = 0; r < R; r++) {
      float s = vaddvq_f32(SETS == 2 ? vaddq_f32(acc[0][m][r], acc[SETS - 1][m][r]) : acc[0][m][r]);
      for (long kk = k; kk < K; kk++) s += bf16ToF32(w[r * K + kk]) * bf16ToF32(x[m * K + kk]);
      out[m * ldo + r] = bias ? s + bias[r] : s;
    }
  }
}

template <int MM>
inline void gemvRowsBf16T(const uint16_t* x, long K, const uint16_t* w, long nRows, float* out, long ldo,
                          const float* bias) {
  constexpr int R = kGemvRows;
  long n = 0;
  for (; n + R <= nRows; n += R) {
    const long nextBytes = (n + 2 * R <= nRows ? R : nRows - n - R) * K * 2;
    gemvTileBf16<MM, R>(x, K, w + n * K, out + n, ldo, bias ? bias + n : nullptr,
                        reinterpret_cast<const char*>(w + (n + R) * K), nextBytes);
  }
  for (; n < nRows; n++) gemvTileBf16<MM, 1>(x, K, w + n * K, out + n, ldo, bias ? bias + n : nullptr, nullptr, 0);
}

// The f32 GEMV's blocking (gemvRowsM) on bf16 words: the weights are read from DRAM once for any M.
inline void gemvRowsBf16(const uint16_t* x, int M, long K, const uint16_t* w, long nRows, float* out, long ldo,
                         const float* bias) {
  long block = (128L << 10) / (K * 2) / kGemvRows * kGemvRows;
  if (block < kGemvRows) block = kGemvRows;
  for (long n0 = 0; n0 < nRows; n0 += block) {
    const long nb = n0 + block <= nRows ? block : nRows - n0;
    const uint16_t* wb = w + n0 * K;
    const float* bb = bias ? bias + n0 : nullptr;
    for (int m0 = 0; m0 < M; m0 += 2) {
      const uint16_t* xm = x + m0 * K;
      float* om = out + m0 * ldo + n0;
      if (M - m0 >= 2) gemvRowsBf16T<2>(xm, K, wb, nb, om, ldo, bb);
      else gemvRowsBf16T<1>(xm, K, wb, nb, om, ldo, bb);
    }
  }
}
#endif  // VL3_BF16_DOT

inline float maxOf(const float* x, long n) {
  long i = 0;
  float m = -INFINITY;
  if (n >= 16) {
    float32x4_t m0 = vld1q_f32(x), m1 = vld1q_f32(x + 4), m2 = vld1q_f32(x + 8), m3 = vld1q_f32(x + 12);
    for (i = 16; i + 16 <= n; i += 16) {
      m0 = vmaxq_f32(m0, vld1q_f32(x + i));
      m1 = vmaxq_f32(m1, vld1q_f32(x + i + 4));
      m2 = vmaxq_f32(m2, vld1q_f32(x + i + 8));
      m3 = vmaxq_f32(m3, vld1q_f32(x + i + 12));
    }
    m = vmaxvq_f32(vmaxq_f32(vmaxq_f32(m0, m1), vmaxq_f32(m2, m3)));
  }
  for (; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}

inline float expSubSum(float* x, long n, float sub) {
  const float32x4_t s = vdupq_n_f32(sub);
  float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
  long i = 0;
  for (; i + 8 <= n; i += 8) {
    const float32x4_t e0 = exp4(vsubq_f32(vld1q_f32(x + i), s));
    const float32x4_t e1 = exp4(vsubq_f32(vld1q_f32(x + i + 4), s));
    vst1q_f32(x + i, e0);
    vst1q_f32(x + i + 4, e1);
    acc0 = vaddq_f32(acc0, e0);
    acc1 = vaddq_f32(acc1, e1);
  }
  float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
  for (; i < n; i++) {
    x[i] = exp1(x[i] - sub);
    sum += x[i];
  }
  return sum;
}

inline void siluMulRange(const float* g, const float* u, float* out, long n) {
  const float32x4_t one = vdupq_n_f32(1.0f);
  long i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t gv = vld1q_f32(g + i);
    const float32x4_t silu = vdivq_f32(gv, vaddq_f32(one, exp4(vnegq_f32(gv))));
    vst1q_f32(out + i, vmulq_f32(silu, vld1q_f32(u + i)));
  }
  for (; i < n; i++) out[i] = g[i] / (1.0f + exp1(-g[i])) * u[i];
}

// gelu_pytorch_tanh as u / (1 + exp(−2z)), the form of the other tiers (no cancellation of 1 + tanh).
inline void geluTanhRange(const float* x, float* out, long n) {
  const float32x4_t one = vdupq_n_f32(1.0f), k = vdupq_n_f32(-2.0f * 0.7978845608028654f), c3 = vdupq_n_f32(0.044715f);
  long i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t u = vld1q_f32(x + i);
    const float32x4_t inner = vfmaq_f32(u, vmulq_f32(c3, u), vmulq_f32(u, u));
    vst1q_f32(out + i, vdivq_f32(u, vaddq_f32(one, exp4(vmulq_f32(k, inner)))));
  }
  for (; i < n; i++) {
    const float u = x[i];
    out[i] = u / (1.0f + exp1(-2.0f * 0.7978845608028654f * (u + 0.044715f * u * u * u)));
  }
}

// erfc(z), z >= 0, by the same Chebyshev fit as the AVX2 path (fractional error below 1.2e-7).
inline float32x4_t erfcNonNeg4(float32x4_t z) {
  const float32x4_t t = vdivq_f32(vdupq_n_f32(1.0f), vfmaq_f32(vdupq_n_f32(1.0f), vdupq_n_f32(0.5f), z));
  float32x4_t p = vdupq_n_f32(0.17087277f);
  p = vfmaq_f32(vdupq_n_f32(-0.82215223f), p, t);
  p = vfmaq_f32(vdupq_n_f32(1.48851587f), p, t);
  p = vfmaq_f32(vdupq_n_f32(-1.13520398f), p, t);
  p = vfmaq_f32(vdupq_n_f32(0.27886807f), p, t);
  p = vfmaq_f32(vdupq_n_f32(-0.18628806f), p, t);
  p = vfmaq_f32(vdupq_n_f32(0.09678418f), p, t);
  p = vfmaq_f32(vdupq_n_f32(0.37409196f), p, t);
  p = vfmaq_f32(vdupq_n_f32(1.00002368f), p, t);
  p = vfmaq_f32(vdupq_n_f32(-1.26551223f), p, t);
  return vmulq_f32(t, exp4(vfmsq_f32(p, z, z)));
}

// nn.GELU() as 0.5·u·erfc(−u/√2), erfc of a negative argument taken as 2 − erfc(|y|).
inline float32x4_t geluErf4(float32x4_t u) {
  const float32x4_t y = vmulq_f32(u, vdupq_n_f32(0.7071067811865476f));
  const float32x4_t e = erfcNonNeg4(vabsq_f32(y));
  const float32x4_t c = vbslq_f32(vcgtq_f32(y, vdupq_n_f32(0.0f)), vsubq_f32(vdupq_n_f32(2.0f), e), e);
  return vmulq_f32(vmulq_f32(vdupq_n_f32(0.5f), u), c);
}

inline void geluErfRange(const float* x, float* out, long n) {
  long i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(out + i, geluErf4(vld1q_f32(x + i)));
  if (i < n) {  // the tail through the same vector code, so every element gets the same approximation
    float in[4] = {}, res[4];
    for (long j = i; j < n; j++) in[j - i] = x[j];
    vst1q_f32(res, geluErf4(vld1q_f32(in)));
    for (long j = i; j < n; j++) out[j] = res[j - i];
  }
}

inline void widenBf16(const uint16_t* src, float* dst, long n) {
  long i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint16x8_t h = vld1q_u16(src + i);
    vst1q_f32(dst + i, widenLo(h));
    vst1q_f32(dst + i + 4, widenHi(h));
  }
  for (; i < n; i++) dst[i] = bf16ToF32(src[i]);
}

// 24 independent FMA chains: the widest arm64 cores issue four 128-bit FMAs per cycle at a latency of 4, so 16 are
// the least that saturates them; 24 leaves headroom and still fits the registers beside the two constants.
inline double fmaLoop(long iters, float* sink) {
  constexpr int kChains = 24;
  const float32x4_t a = vdupq_n_f32(0.999999f), b = vdupq_n_f32(1e-6f);
  float32x4_t c[kChains];
  for (int i = 0; i < kChains; i++) c[i] = vdupq_n_f32(sink[0] + i);
  for (long it = 0; it < iters; it++) {
#pragma GCC unroll 24
    for (int i = 0; i < kChains; i++) c[i] = vfmaq_f32(b, c[i], a);
  }
  float32x4_t s = c[0];
  for (int i = 1; i < kChains; i++) s = vaddq_f32(s, c[i]);
  sink[0] = vaddvq_f32(s);
  return static_cast<double>(iters) * kChains * 4 * 2;
}

inline float sumRange(const float* p, long n) {
  float32x4_t a[8];
  for (int i = 0; i < 8; i++) a[i] = vdupq_n_f32(0.0f);
  long i = 0;
  for (; i + 32 <= n; i += 32) {
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) a[j] = vaddq_f32(a[j], vld1q_f32(p + i + 4 * j));
  }
  for (int j = 1; j < 8; j++) a[0] = vaddq_f32(a[0], a[j]);
  float s = vaddvq_f32(a[0]);
  for (; i < n; i++) s += p[i];
  return s;
}

// AdamW over the whole vectors of 4 in [0, n): the element of grad_adamw.h lane by lane, with the same opaque
// product (vfmaq_f32(a, b, c) is a + b·c rounded once). Returns the elements done; the driver finishes the rest.
inline long adamwVectors(float* p, const float* g, float* m, float* v, long n, const AdamWScalars& s) {
  const float32x4_t decay = vdupq_n_f32(s.decay), w1 = vdupq_n_f32(s.w1), b2 = vdupq_n_f32(s.b2);
  const float32x4_t w2 = vdupq_n_f32(s.w2), step = vdupq_n_f32(s.stepSize), bc2 = vdupq_n_f32(s.bc2Sqrt);
  const float32x4_t eps = vdupq_n_f32(s.eps);
  long i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t gi = vld1q_f32(g + i), m0 = vld1q_f32(m + i), v0 = vld1q_f32(v + i);
    float32x4_t pi = vmulq_f32(vld1q_f32(p + i), decay);
    VL3_OPAQUE(pi);
    const float32x4_t mi = vfmaq_f32(m0, w1, vsubq_f32(gi, m0));
    const float32x4_t vi = vfmaq_f32(vmulq_f32(v0, b2), vmulq_f32(w2, gi), gi);
    const float32x4_t denom = vaddq_f32(vdivq_f32(vsqrtq_f32(vi), bc2), eps);
    vst1q_f32(p + i, vaddq_f32(pi, vdivq_f32(vmulq_f32(step, mi), denom)));
    vst1q_f32(m + i, mi);
    vst1q_f32(v + i, vi);
  }
  return i;
}

// Quantized weights' integer dot (ops_impl.h quantMatmulInt) for a full group of 4 weight rows and MT rows of x, over
// every whole chunk of 4 blocks (128 k). The codes are made signed (Int8: u XOR 0x80 = u − 128, Int4: u − 8; Int4m's
// u ≤ 15 are already), so that signed products sum (u − z)·q directly and the activation's block sums go unused.
// A chunk's codes are k-major (quant.h codeOffset): 16 bytes of code vector s are one row's 32-bit words of 4 codes
// of its 4 blocks, and x's 16 bytes of the same s are the other operand, so each int32 lane sums one block, in the
// order of the chunk's scales. Where the build has dotprod (the +bf16 one) sdot sums 4 products per int32 lane; the
// baseline ARMv8.0 build multiplies into int16 (smull, smlal) as many products as int16 holds exactly, then widens
// pairwise (saddlp, sadalp).
#define VL3_QUANT_DOT 1

inline float32x4_t widenF16x4(const uint8_t* p) { return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p))); }

// The sums over blocks 0–3 of one chunk of a weight row times x's: w[s] is code vector s of the row (Int4, Int4m:
// s < 4 the low nibbles, s ≥ 4 the high ones, which pair with x's s), x the chunk's activation codes.
template <WType T>
inline int32x4_t chunkDot(const int8x16_t (&w)[8], const int8_t* x) {
#if defined(__ARM_FEATURE_DOTPROD)
  int32x4_t a = vdupq_n_s32(0), b = vdupq_n_s32(0);
  for (int s = 0; s < 8; s += 2) {
    a = vdotq_s32(a, w[s], vld1q_s8(x + 16 * s));
    b = vdotq_s32(b, w[s + 1], vld1q_s8(x + 16 * s + 16));
  }
  return vaddq_s32(a, b);
#else
  if (T == WType::Int8) {
    // |(u − 128)·q| ≤ 128·127: two products per int16 lane; lanes of blocks 0–1 (low halves) and 2–3 apart.
    int32x4_t s01 = vdupq_n_s32(0), s23 = vdupq_n_s32(0);
    for (int s = 0; s < 8; s += 2) {
      const int8x16_t x0 = vld1q_s8(x + 16 * s), x1 = vld1q_s8(x + 16 * s + 16);
      s01 = vpadalq_s16(s01, vmlal_s8(vmull_s8(vget_low_s8(w[s]), vget_low_s8(x0)), vget_low_s8(w[s + 1]), vget_low_s8(x1)));
      s23 = vpadalq_s16(s23, vmlal_high_s8(vmull_high_s8(w[s], x0), w[s + 1], x1));
    }
    return vpaddq_s32(s01, s23);
  }
  // |u − z| ≤ 15: a lane gathers 8 products (one per s), a pairwise add 16 (≤ 16·15·127, within int16), and the
  // widening pairwise add makes each block's 32 in one int32 lane.
  int16x8_t p01 = vdupq_n_s16(0), p23 = vdupq_n_s16(0);
  for (int s = 0; s < 8; s++) {
    const int8x16_t xs = vld1q_s8(x + 16 * s);
    p01 = vmlal_s8(p01, vget_low_s8(w[s]), vget_low_s8(xs));
    p23 = vmlal_high_s8(p23, w[s], xs);
  }
  return vpaddlq_s16(vpaddq_s16(p01, p23));
#endif
}

template <WType T, int MT>
inline long groupDotT(const uint8_t* g, const quant::QuantizedRows& A, long m0, float (*res)[quant::kGroupRows]) {
  constexpr int R = quant::kGroupRows, B = quant::kChunkBlocks;
  const long K = A.K;
  const quant::GroupChunks gc = quant::groupChunks(T, K);
  const long nb = gc.blocks, chunks = gc.chunks;
  float32x4_t acc[MT][R];
  for (int i = 0; i < MT; i++)
    for (int r = 0; r < R; r++) acc[i][r] = vdupq_n_f32(0.0f);
  for (long c = 0; c < chunks; c++) {
    const auto [ch, codes] = quant::chunkPlace(gc, g, c);
    for (int r = 0; r < R; r++) {
      int8x16_t w[8];
      if (T == WType::Int8) {
        for (int s = 0; s < 8; s++) w[s] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(codes + 64 * s + 16 * r), vdupq_n_u8(0x80)));
      } else {
        for (int s = 0; s < 4; s++) {
          const uint8x16_t v = vld1q_u8(codes + 64 * s + 16 * r);
          w[s] = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f)));
          w[4 + s] = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
          if (T == WType::Int4) {
            w[s] = vsubq_s8(w[s], vdupq_n_s8(8));
            w[4 + s] = vsubq_s8(w[4 + s], vdupq_n_s8(8));
          }
        }
      }
      const float32x4_t dw = widenF16x4(ch + r * 8);
      for (int i = 0; i < MT; i++) {
        const long m = m0 + i;
        const int32x4_t s = chunkDot<T>(w, A.q + m * K + c * 128);
        acc[i][r] = vfmaq_f32(acc[i][r], vcvtq_f32_s32(s), vmulq_f32(dw, vld1q_f32(A.d + m * nb + c * B)));
        if (T == WType::Int4m)
          acc[i][r] = vfmaq_f32(acc[i][r], widenF16x4(ch + 32 + r * 8), vld1q_f32(A.dsum + m * nb + c * B));
      }
    }
  }
  for (int i = 0; i < MT; i++)
    for (int r = 0; r < R; r++) res[i][r] += vaddvq_f32(acc[i][r]);
  return chunks * B;
}

}  // namespace
}  // namespace VL3_ISA
}  // namespace vl3
