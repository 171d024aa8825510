// Own portable primitives: the fallback for CPUs without AVX2 or NEON, written as plain loops the compiler can vectorize for the baseline ISA.
// Included only by kernels_scalar.cc, inside an anonymous namespace. Same contracts as isa_avx2.h.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels.h"

namespace vl3 {
namespace scalar {
namespace {

constexpr int MR = 6;
constexpr int NR = 16;
// The GEMM's blocking, as the AVX2 tier's (see ops_impl.h).
constexpr long KC = 256;
constexpr long MC = 144;
constexpr long NB = 2048;
// The scalar GEMV re-reads each weight row once per row of x from L1; it serves up to kBatchRows rows of x all the
// same, so that a batch's rows get the bits they get alone (kernels.h).
constexpr long kGemvMaxM = kBatchRows;
// Keys per K panel and output rows per V panel of the tiled attention.
constexpr long kAttnMR = 6;

inline float bf16ToF32(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float expScalar(float x) { return std::exp(x); }

inline void microKernel(long kc, const float* A, const float* B, long ldb, float* C, long ldc, bool accumulate,
                        const float* bias) {
  float acc[MR][NR] = {};
  for (long k = 0; k < kc; k++) {
    for (int i = 0; i < MR; i++) {
      const float a = A[i];
      for (int j = 0; j < NR; j++) acc[i][j] += a * B[j];
    }
    A += MR;
    B += ldb;
  }
  for (int i = 0; i < MR; i++) {
    float* c = C + i * ldc;
    if (accumulate) for (int j = 0; j < NR; j++) c[j] += acc[i][j];
    else if (bias) for (int j = 0; j < NR; j++) c[j] = acc[i][j] + bias[j];
    else for (int j = 0; j < NR; j++) c[j] = acc[i][j];
  }
}

// The tiled attention's register tile (see isa_avx2.h): C[m×16] = A·B, or C ⊙ corr + A·B with per-column corr.
inline void attnTile(int m, long kc, const float* A, long lda, const float* B, long ldb, float* C, long ldc,
                     const float* corr) {
  float acc[MR][NR] = {};
  for (long k = 0; k < kc; k++) {
    for (int i = 0; i < m; i++) {
      const float a = A[i];
      for (int j = 0; j < NR; j++) acc[i][j] += a * B[j];
    }
    A += lda;
    B += ldb;
  }
  for (int i = 0; i < m; i++) {
    float* c = C + i * ldc;
    if (corr) for (int j = 0; j < NR; j++) c[j] = c[j] * corr[j] + acc[i][j];
    else for (int j = 0; j < NR; j++) c[j] = acc[i][j];
  }
}

// One online-softmax step for 16 query rows over keys j0 .. j0+n-1, scores s[n][16] in base 2 (see isa_avx2.h).
inline void attnSoftmax16(float* s, long n, long j0, const int32_t* lim, float* m, float* l, float* corr) {
  for (int c = 0; c < NR; c++) {
    const long vis = lim ? lim[c] - j0 : n;  // keys [0, vis) of the block are visible to this row
    float mx = m[c];
    for (long j = 0; j < n && j < vis; j++) mx = s[j * NR + c] > mx ? s[j * NR + c] : mx;
    float sum = 0.0f;
    for (long j = 0; j < n; j++) {
      const float p = j < vis ? std::exp2(s[j * NR + c] - mx) : 0.0f;
      s[j * NR + c] = p;
      sum += p;
    }
    corr[c] = std::exp2(m[c] - mx);
    l[c] = l[c] * corr[c] + sum;
    m[c] = mx;
  }
}

// Packs n <= kAttnMR keys (rows ld floats apart) into the tiled attention's K panel [D][kAttnMR], zero keys past n.
inline void attnPackK(const float* src, long ld, int n, long D, float* dst) {
  for (long d = 0; d < D; d++)
    for (int i = 0; i < kAttnMR; i++) dst[d * kAttnMR + i] = i < n ? src[i * ld + d] : 0.0f;
}

// dst[d][c] = rows[c][d]·scale for 16 query rows (null: a zero row).
inline void attnLoadPanel(const float* const rows[16], long D, float scale, float* dst) {
  for (int c = 0; c < 16; c++)
    for (long d = 0; d < D; d++) dst[d * 16 + c] = rows[c] ? rows[c][d] * scale : 0.0f;
}

// rows[c][d] = src[d][c]·inv[c] for the first n of 16 rows.
inline void attnStorePanel(const float* src, long D, const float* inv, float* const rows[16], int n) {
  for (int c = 0; c < n; c++)
    for (long d = 0; d < D; d++) rows[c][d] = src[d * 16 + c] * inv[c];
}

inline void attnCopySmall(const float* src, int m, float* dst) {
  for (int r = 0; r < m; r++) dst[r] = src[r];
}

// `round`: f32 weights are rounded to bf16 values (Compute::Bf16).
inline void packB(const void* w, WType type, long ldw, int nr, long kc, float* dst, bool round) {
  for (int j = 0; j < NR; j++) {
    if (j >= nr) {
      for (long k = 0; k < kc; k++) dst[k * NR + j] = 0.0f;
    } else if (type == WType::BF16) {
      const uint16_t* row = static_cast<const uint16_t*>(w) + j * ldw;
      for (long k = 0; k < kc; k++) dst[k * NR + j] = bf16ToF32(row[k]);
    } else {
      const float* row = static_cast<const float*>(w) + j * ldw;
      if (round) for (long k = 0; k < kc; k++) dst[k * NR + j] = roundBf16(row[k]);
      else for (long k = 0; k < kc; k++) dst[k * NR + j] = row[k];
    }
  }
}

// Several weight rows per pass with several partial sums each, so that the loop is not one long dependency chain.
inline void gemvRows(const float* x, int M, long K, const void* w, WType type, long nRows, float* out, long ldo,
                     const float* bias) {
  constexpr int L = 8;  // partial sums per dot product
  for (long n = 0; n < nRows; n++) {
    for (int m = 0; m < M; m++) {
      const float* xr = x + m * K;
      float part[L] = {};
      long k = 0;
      if (type == WType::BF16) {
        const uint16_t* row = static_cast<const uint16_t*>(w) + n * K;
        for (; k + L <= K; k += L)
          for (int l = 0; l < L; l++) part[l] += bf16ToF32(row[k + l]) * xr[k + l];
        for (; k < K; k++) part[0] += bf16ToF32(row[k]) * xr[k];
      } else {
        const float* row = static_cast<const float*>(w) + n * K;
        for (; k + L <= K; k += L)
          for (int l = 0; l < L; l++) part[l] += row[k + l] * xr[k + l];
        for (; k < K; k++) part[0] += row[k] * xr[k];
      }
      float s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
      out[m * ldo + n] = bias ? s + bias[n] : s;
    }
  }
}

inline float maxOf(const float* x, long n) {
  float m = -INFINITY;
  for (long i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}

inline float expSubSum(float* x, long n, float sub) {
  float sum = 0.0f;
  for (long i = 0; i < n; i++) {
    x[i] = std::exp(x[i] - sub);
    sum += x[i];
  }
  return sum;
}

inline void siluMulRange(const float* g, const float* u, float* out, long n) {
  for (long i = 0; i < n; i++) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

// 0.5·u·(1 + tanh(z)) written as u / (1 + exp(−2z)): the same value without 1 + tanh cancelling for negative u.
inline void geluTanhRange(const float* x, float* out, long n) {
  for (long i = 0; i < n; i++) {
    const float u = x[i];
    out[i] = u / (1.0f + std::exp(-2.0f * 0.7978845608028654f * (u + 0.044715f * u * u * u)));
  }
}

inline void geluErfRange(const float* x, float* out, long n) {
  for (long i = 0; i < n; i++) out[i] = 0.5f * x[i] * std::erfc(-x[i] * 0.7071067811865476f);
}

inline void widenBf16(const uint16_t* src, float* dst, long n) {
  for (long i = 0; i < n; i++) dst[i] = bf16ToF32(src[i]);
}

inline double fmaLoop(long iters, float* sink) {
  float c[16];
  for (int i = 0; i < 16; i++) c[i] = sink[0] + i;
  for (long it = 0; it < iters; it++)
    for (int i = 0; i < 16; i++) c[i] = c[i] * 0.999999f + 1e-6f;
  float s = 0;
  for (int i = 0; i < 16; i++) s += c[i];
  sink[0] = s;
  return static_cast<double>(iters) * 16 * 2;
}

inline float sumRange(const float* p, long n) {
  float part[16] = {};
  long i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; j++) part[j] += p[i + j];
  float s = 0;
  for (int j = 0; j < 16; j++) s += part[j];
  for (; i < n; i++) s += p[i];
  return s;
}

// AdamW has no vector body here: the driver's portable loop (grad_adamw.h) does every element.
inline long adamwVectors(float*, const float*, float*, float*, long, const AdamWScalars&) { return 0; }

}  // namespace
}  // namespace scalar
}  // namespace vl3
