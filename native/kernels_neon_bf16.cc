// Own arm64 bf16-compute matmul: BFDOT and BFMMLA multiply bf16 weights as stored, with two to four times the products per instruction of f32 FMLA and no widening; no library offers this for our layouts.
// Compiled alone with -march=armv8.2-a+bf16 (binding.gyp, the harness; GCC's bf16 intrinsics need v8.2, and every CPU
// with BF16 has it), so that nothing else is built past baseline ARMv8-A. Everything here sits in an anonymous
// namespace and only unique lambdas instantiate shared templates, so the linker cannot hand a v8.2 copy of shared
// inline code to baseline callers. Reached only through neonBf16Matmul(), which checks the CPU first.
#include "neon_bf16.h"

#if defined(__aarch64__) && defined(__ARM_FEATURE_BF16_VECTOR_ARITHMETIC)
#include <arm_neon.h>

#include <cstdint>
#include <cstring>

#include "pool.h"

namespace vl3 {
namespace neonbf16 {
namespace {

inline long cdiv(long a, long b) { return (a + b - 1) / b; }
inline long roundUp(long a, long b) { return cdiv(a, b) * b; }
inline long lmin(long a, long b) { return a < b ? a : b; }

inline float bf16ToF32(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t toBf16(float f) {
  const bfloat16_t h = vcvth_bf16_f32(f);
  uint16_t u;
  std::memcpy(&u, &h, 2);
  return u;
}

// Four floats rounded to bf16 (BFCVTN: nearest even under the default FPCR, as torch's .to(bfloat16)).
inline uint16x4_t round4(const float* p) { return vreinterpret_u16_bf16(vcvt_bf16_f32(vld1q_f32(p))); }

inline bfloat16x8_t asBf16(uint16x8_t v) { return vreinterpretq_bf16_u16(v); }

// ---------------------------------------------------------------------------------------------------------------
// Few rows of x: BFDOT against weight rows read in place. xb holds x rounded, rows Kp apart (zero padded).

// Below this many rows of x the dot-product path wins: BFMMLA works on pairs of rows, and packing x and w into its
// 2×4 blocks only pays once several rows share each weight. Not measured on hardware.
constexpr long kGemvMaxM = 3;
constexpr int kRows = 4;  // weight rows per tile

// R weight rows against MM rows of x, 16 k per step in two independent accumulator sets (enough chains in flight to
// cover the BFDOT latency): each BFDOT adds four pairs of products into four f32 lanes.
template <int MM, int R>
inline void dotTile(const uint16_t* xb, long Kp, long K, const uint16_t* w, float* out, long ldo, const float* bias) {
  float32x4_t acc[2][MM][R];
  for (int s = 0; s < 2; s++)
    for (int m = 0; m < MM; m++)
      for (int r = 0; r < R; r++) acc[s][m][r] = vdupq_n_f32(0.0f);
  auto step = [&](long k, int s) {
    bfloat16x8_t wv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) wv[r] = asBf16(vld1q_u16(w + r * K + k));
#pragma GCC unroll 4
    for (int m = 0; m < MM; m++) {
      const bfloat16x8_t xv = asBf16(vld1q_u16(xb + m * Kp + k));
#pragma GCC unroll 4
      for (int r = 0; r < R; r++) acc[s][m][r] = vbfdotq_f32(acc[s][m][r], wv[r], xv);
    }
  };
  long k = 0;
  for (; k + 16 <= K; k += 16) {
    step(k, 0);
    step(k + 8, 1);
  }
  if (k + 8 <= K) {
    step(k, 0);
    k += 8;
  }
  for (int m = 0; m < MM; m++) {
    for (int r = 0; r < R; r++) {
      float s = vaddvq_f32(vaddq_f32(acc[0][m][r], acc[1][m][r]));
      for (long kk = k; kk < K; kk++) s += bf16ToF32(w[r * K + kk]) * bf16ToF32(xb[m * Kp + kk]);
      out[m * ldo + r] = bias ? s + bias[r] : s;
    }
  }
}

template <int MM>
inline void dotRows(const uint16_t* xb, long Kp, long K, const uint16_t* w, long nRows, float* out, long ldo,
                    const float* bias) {
  long n = 0;
  for (; n + kRows <= nRows; n += kRows)
    dotTile<MM, kRows>(xb, Kp, K, w + n * K, out + n, ldo, bias ? bias + n : nullptr);
  for (; n < nRows; n++) dotTile<MM, 1>(xb, Kp, K, w + n * K, out + n, ldo, bias ? bias + n : nullptr);
}

void gemv(const MatmulArgs& a, const float* bias) {
  const long M = a.M, N = a.N, K = a.K, Kp = roundUp(K, 8);
  uint16_t* xb = static_cast<uint16_t*>(scratch(0, kSlotShared, M * Kp * sizeof(uint16_t)));
  for (long m = 0; m < M; m++) {
    const float* xr = a.x + m * K;
    uint16_t* d = xb + m * Kp;
    long k = 0;
    for (; k + 4 <= K; k += 4) vst1_u16(d + k, round4(xr + k));
    for (; k < K; k++) d[k] = toBf16(xr[k]);
    for (; k < Kp; k++) d[k] = 0;
  }
  const uint16_t* w = static_cast<const uint16_t*>(a.w);
  const int threads = poolThreads();
  const long tasks = threads == 1 || M * N * K < (1L << 15) ? 1 : lmin(cdiv(N, 16), 4L * threads);
  parallelTasks(tasks, [&](long t, int) {
    const long n0 = N * t / tasks, n1 = N * (t + 1) / tasks;
    const float* b = bias ? bias + n0 : nullptr;
    switch (M) {
      case 1: dotRows<1>(xb, Kp, K, w + n0 * K, n1 - n0, a.out + n0, N, b); break;
      case 2: dotRows<2>(xb, Kp, K, w + n0 * K, n1 - n0, a.out + n0, N, b); break;
      default: dotRows<3>(xb, Kp, K, w + n0 * K, n1 - n0, a.out + n0, N, b); break;
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// More rows: BFMMLA on 8×8 tiles. One BFMMLA multiplies a 2×4 block of x (two rows, four k) by a 4×2 block of wᵀ
// (two weight rows, four k), both one q register as they come out of packing, into a 2×2 block of C. Panels of 8
// rows of x (or of w) are packed per four k as 4 row pairs × [2][4] bf16: 64 bytes per step for each operand.

constexpr int TM = 8, TN = 8;
constexpr long KC = 512;  // k per block: a packed B block of NB columns (64 KiB) stays in L2, an A panel (8 KiB) in L1
constexpr long NB = 64;   // columns per task
constexpr long MB = 128;  // rows per task

// Rows [r0, r0 + 8) of src (n rows in all, ld elements apart, K long) as a panel, k rounded up to a multiple of 4 with
// zeros; rows past n are zero. F32 rows are rounded to bf16 on the way.
template <bool ROUND>
void packPanel(const void* src, long ld, long n, long r0, long K, uint16_t* dst) {
  const long K4 = K / 4 * 4, Kp = roundUp(K, 4);
  for (int p = 0; p < 4; p++) {
    const long ra = r0 + 2 * p, rb = ra + 1;
    for (long k = 0; k < K4; k += 4) {
      uint16x4_t lo = vdup_n_u16(0), hi = vdup_n_u16(0);
      if (ROUND) {
        if (ra < n) lo = round4(static_cast<const float*>(src) + ra * ld + k);
        if (rb < n) hi = round4(static_cast<const float*>(src) + rb * ld + k);
      } else {
        if (ra < n) lo = vld1_u16(static_cast<const uint16_t*>(src) + ra * ld + k);
        if (rb < n) hi = vld1_u16(static_cast<const uint16_t*>(src) + rb * ld + k);
      }
      vst1q_u16(dst + k * 8 + p * 8, vcombine_u16(lo, hi));
    }
    if (K4 < Kp) {
      uint16_t* d = dst + K4 * 8 + p * 8;
      for (int i = 0; i < 8; i++) {
        const long r = i < 4 ? ra : rb, k = K4 + i % 4;
        uint16_t v = 0;
        if (r < n && k < K) {
          v = ROUND ? toBf16(static_cast<const float*>(src)[r * ld + k]) : static_cast<const uint16_t*>(src)[r * ld + k];
        }
        d[i] = v;
      }
    }
  }
}

// C[8×8] (ldc) = or += the product of an A and a B panel over ks steps of four k. acc[p][q] holds rows 2p, 2p+1 ×
// columns 2q, 2q+1 row-major, so two 64-bit transposes give whole rows of C.
inline void mmlaKernel(long ks, const uint16_t* A, const uint16_t* B, float* C, long ldc, bool accumulate,
                       const float* bias) {
  float32x4_t acc[4][4];
  for (int p = 0; p < 4; p++)
    for (int q = 0; q < 4; q++) acc[p][q] = vdupq_n_f32(0.0f);
#pragma GCC unroll 2
  for (long s = 0; s < ks; s++) {
    const bfloat16x8_t a0 = asBf16(vld1q_u16(A)), a1 = asBf16(vld1q_u16(A + 8)), a2 = asBf16(vld1q_u16(A + 16)),
                       a3 = asBf16(vld1q_u16(A + 24));
    const bfloat16x8_t b0 = asBf16(vld1q_u16(B)), b1 = asBf16(vld1q_u16(B + 8)), b2 = asBf16(vld1q_u16(B + 16)),
                       b3 = asBf16(vld1q_u16(B + 24));
    const bfloat16x8_t av[4] = {a0, a1, a2, a3}, bv[4] = {b0, b1, b2, b3};
#pragma GCC unroll 4
    for (int p = 0; p < 4; p++) {
#pragma GCC unroll 4
      for (int q = 0; q < 4; q++) acc[p][q] = vbfmmlaq_f32(acc[p][q], av[p], bv[q]);
    }
    A += 32;
    B += 32;
  }
  for (int p = 0; p < 4; p++) {
    for (int h = 0; h < 2; h++) {  // columns 0-3, then 4-7
      const float64x2_t l = vreinterpretq_f64_f32(acc[p][2 * h]), r = vreinterpretq_f64_f32(acc[p][2 * h + 1]);
      const float32x4_t row0 = vreinterpretq_f32_f64(vtrn1q_f64(l, r)), row1 = vreinterpretq_f32_f64(vtrn2q_f64(l, r));
      float* c0 = C + 2 * p * ldc + 4 * h;
      float* c1 = c0 + ldc;
      if (accumulate) {
        vst1q_f32(c0, vaddq_f32(vld1q_f32(c0), row0));
        vst1q_f32(c1, vaddq_f32(vld1q_f32(c1), row1));
      } else if (bias) {
        const float32x4_t bv = vld1q_f32(bias + 4 * h);
        vst1q_f32(c0, vaddq_f32(row0, bv));
        vst1q_f32(c1, vaddq_f32(row1, bv));
      } else {
        vst1q_f32(c0, row0);
        vst1q_f32(c1, row1);
      }
    }
  }
}

void gemm(const MatmulArgs& a, const float* bias) {
  const long M = a.M, N = a.N, K = a.K, Kp = roundUp(K, 4);
  const long mPanels = cdiv(M, TM), panelElems = Kp * TM;
  // x is rounded and packed once for every column task: panels of 8 rows over the whole K.
  uint16_t* ap = static_cast<uint16_t*>(scratch(0, kSlotShared, mPanels * panelElems * sizeof(uint16_t)));
  parallelTasks(mPanels, [&](long p, int) { packPanel<true>(a.x, K, M, p * TM, K, ap + p * panelElems); });

  const long nTasks = cdiv(N, NB), mTasks = cdiv(M, MB);
  parallelTasks(nTasks * mTasks, [&](long task, int tid) {
    const long n0 = task % nTasks * NB, n1 = lmin(N, n0 + NB);
    const long m0 = task / nTasks * MB, m1 = lmin(M, m0 + MB);
    const long nPanels = cdiv(n1 - n0, TN);
    uint16_t* bp = static_cast<uint16_t*>(scratch(tid, kSlotA, nPanels * KC * TN * sizeof(uint16_t)));
    for (long pc = 0; pc < Kp; pc += KC) {
      const long kc = lmin(KC, Kp - pc), kLen = lmin(kc, K - pc);
      for (long q = 0; q < nPanels; q++)
        packPanel<false>(static_cast<const uint16_t*>(a.w) + pc, K, n1, n0 + q * TN, kLen, bp + q * kc * TN);
      for (long m = m0; m < m1; m += TM) {
        const uint16_t* A = ap + (m / TM) * panelElems + pc * TM;
        for (long q = 0; q < nPanels; q++) {
          const long n = n0 + q * TN, mr = lmin(TM, m1 - m), nr = lmin(TN, n1 - n);
          const float* b = pc == 0 && bias ? bias + n : nullptr;
          if (mr == TM && nr == TN) {
            mmlaKernel(kc / 4, A, bp + q * kc * TN, a.out + m * N + n, N, pc > 0, b);
            continue;
          }
          float t[TM * TN];
          mmlaKernel(kc / 4, A, bp + q * kc * TN, t, TN, false, b);
          for (long i = 0; i < mr; i++)
            for (long j = 0; j < nr; j++) {
              float* c = a.out + (m + i) * N + n + j;
              *c = pc > 0 ? *c + t[i * TN + j] : t[i * TN + j];
            }
        }
      }
    }
  });
}

void matmul(const MatmulArgs& a) {
  if (a.wType != WType::BF16) {
    neonKernels()->matmul(a);
    return;
  }
  if (a.M == 0 || a.N == 0) return;
  const float* bias = nullptr;
  if (a.bias) {
    // Padded to whole 8-column tiles, read by the GEMM's epilogue.
    const long np = roundUp(a.N, TN);
    float* b = static_cast<float*>(scratch(0, kSlotE, np * sizeof(float)));
    for (long i = 0; i < a.N; i++)
      b[i] = a.biasType == WType::BF16 ? bf16ToF32(static_cast<const uint16_t*>(a.bias)[i])
                                       : static_cast<const float*>(a.bias)[i];
    for (long i = a.N; i < np; i++) b[i] = 0.0f;
    bias = b;
  }
  if (a.K == 0) {
    for (long m = 0; m < a.M; m++)
      for (long n = 0; n < a.N; n++) a.out[m * a.N + n] = bias ? bias[n] : 0.0f;
    return;
  }
  if (a.M <= kGemvMaxM) gemv(a, bias);
  else gemm(a, bias);
}

}  // namespace
}  // namespace neonbf16

MatmulFn neonBf16MatmulUnchecked() { return &neonbf16::matmul; }

}  // namespace vl3
#else
namespace vl3 {
MatmulFn neonBf16MatmulUnchecked() { return nullptr; }
}  // namespace vl3
#endif
