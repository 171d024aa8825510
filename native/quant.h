// Own block-quantized weight formats: the packed layout is ours (docs/quantization.md), so its encoder, decoder and the portable integer dot live here, shared by every tier and the harness.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels.h"

namespace vl3 {
namespace quant {
// Internal linkage: every kernel tier compiles this header with its own ISA flags, and the linker must never pick one
// tier's copy of a function for another (an AVX-512 body on a CPU without it).
namespace {

// Every format quantizes blocks of 32 consecutive k of one weight row; a block is one f16 scale d (and for Int4m one
// f16 minimum m) and 32 codes u. Values: Int8 d·(u − 128), u in [1, 255]; Int4 d·(u − 8), u in [0, 15];
// Int4m d·u + m, u in [0, 15].
constexpr long kBlock = 32;
// Rows are packed in groups of 4 (the last group of a matrix may hold fewer), blocks in chunks of 4 (the last chunk
// of a row may hold fewer): one group's chunk is its rows' scales, then (Int4m) minimums, then codes, row by row.
constexpr int kGroupRows = 4;
constexpr int kChunkBlocks = 4;

inline bool isQuantized(WType t) { return t == WType::Int8 || t == WType::Int4 || t == WType::Int4m; }
inline long codeBytes(WType t) { return t == WType::Int8 ? 32 : 16; }
inline long paramBytes(WType t) { return t == WType::Int4m ? 4 : 2; }
inline long blockBytes(WType t) { return codeBytes(t) + paramBytes(t); }
inline long rowBytes(WType t, long K) { return K / kBlock * blockBytes(t); }
// The code subtracted before scaling (Int4m has none: its minimum is a separate term).
inline int zeroCode(WType t) { return t == WType::Int8 ? 128 : t == WType::Int4 ? 8 : 0; }

inline float f16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
  uint32_t u;
  if (exp == 0) {
    const float f = static_cast<float>(frac) * 5.9604644775390625e-8f;  // frac · 2⁻²⁴, exact
    std::memcpy(&u, &f, 4);
    u |= sign;
  } else if (exp == 0x1f) {
    u = sign | 0x7f800000u | (frac << 13);
  } else {
    u = sign | ((exp + 112) << 23) | (frac << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round-to-nearest-even f32 → f16; values beyond the largest f16 become ±Inf (the encoder refuses them).
inline uint16_t f32ToF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  const uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) return sign | 0x7c00 | (a > 0x7f800000u ? 0x200 : 0);
  if (a >= 0x477ff000u) return sign | 0x7c00;  // rounds past 65504
  if (a < 0x38800000u) {                        // below the smallest normal f16: a multiple of 2⁻²⁴
    float v;
    std::memcpy(&v, &a, 4);
    return sign | static_cast<uint16_t>(std::nearbyint(v * 16777216.0f));
  }
  const uint32_t r = a + 0xfffu + ((a >> 13) & 1);
  return sign | static_cast<uint16_t>((r - 0x38000000u) >> 13);
}

// Where block `blk` of row r of a group of `rows` rows lies in the packed bytes of that group (which starts at g).
struct BlockRef {
  const uint8_t* d;      // f16 scale
  const uint8_t* m;      // f16 minimum (Int4m) or null
  const uint8_t* codes;  // this row's codes of the whole chunk
  long chunkBlocks;      // blocks in the chunk
  long index;            // the block's index within the chunk
};

inline BlockRef blockRef(WType t, const uint8_t* g, int rows, int r, long blk, long nBlocks) {
  const long c0 = blk / kChunkBlocks * kChunkBlocks, b = nBlocks - c0 < kChunkBlocks ? nBlocks - c0 : kChunkBlocks;
  const long i = blk - c0;
  const uint8_t* chunk = g + rows * c0 * blockBytes(t);
  BlockRef ref;
  ref.d = chunk + (r * b + i) * 2;
  ref.m = t == WType::Int4m ? chunk + rows * b * 2 + (r * b + i) * 2 : nullptr;
  ref.codes = chunk + rows * b * paramBytes(t) + r * b * codeBytes(t);
  ref.chunkBlocks = b;
  ref.index = i;
  return ref;
}

// Code of element j (0..31) of a block: Int8 codes are bytes in k order; Int4 and Int4m chunks of b blocks put k in
// [0, 16b) in the low nibbles of a row's 16b bytes and k in [16b, 32b) in their high nibbles.
inline int codeAt(WType t, const BlockRef& ref, long j) {
  const long k = ref.index * kBlock + j;
  if (t == WType::Int8) return ref.codes[k];
  const long half = 16 * ref.chunkBlocks;
  return k < half ? ref.codes[k] & 15 : ref.codes[k - half] >> 4;
}

inline void setCode(WType t, uint8_t* codes, long chunkBlocks, long k, int u) {
  if (t == WType::Int8) {
    codes[k] = static_cast<uint8_t>(u);
    return;
  }
  const long half = 16 * chunkBlocks;
  if (k < half) codes[k] = static_cast<uint8_t>((codes[k] & 0xf0) | u);
  else codes[k - half] = static_cast<uint8_t>((codes[k - half] & 0x0f) | (u << 4));
}

// Encodes one block of 32 f32 values: scale (and minimum) as f16 bits and codes. False when a value or the scale is
// not finite in f16 (the caller names the tensor).
inline bool encodeBlock(WType t, const float* v, uint16_t& dBits, uint16_t& mBits, int* u) {
  for (int j = 0; j < kBlock; j++)
    if (!std::isfinite(v[j])) return false;
  mBits = 0;
  if (t == WType::Int8) {
    float amax = 0.0f;
    for (int j = 0; j < kBlock; j++) amax = std::fabs(v[j]) > amax ? std::fabs(v[j]) : amax;
    dBits = f32ToF16(amax / 127.0f);
    const float d = f16ToF32(dBits);
    if (!std::isfinite(d)) return false;
    for (int j = 0; j < kBlock; j++) {
      const float q = d == 0.0f ? 0.0f : std::nearbyint(v[j] / d);
      u[j] = static_cast<int>(q < -127.0f ? -127.0f : q > 127.0f ? 127.0f : q) + 128;
    }
  } else if (t == WType::Int4) {
    float vmax = 0.0f;  // the value of largest magnitude (the first such), mapped to code 0 (−8·d)
    for (int j = 0; j < kBlock; j++) vmax = std::fabs(v[j]) > std::fabs(vmax) ? v[j] : vmax;
    dBits = f32ToF16(vmax / -8.0f);
    const float d = f16ToF32(dBits);
    if (!std::isfinite(d)) return false;
    for (int j = 0; j < kBlock; j++) {
      const float q = d == 0.0f ? 0.0f : std::nearbyint(v[j] / d);
      u[j] = static_cast<int>(q < -8.0f ? -8.0f : q > 7.0f ? 7.0f : q) + 8;
    }
  } else {
    float lo = v[0], hi = v[0];
    for (int j = 1; j < kBlock; j++) {
      lo = v[j] < lo ? v[j] : lo;
      hi = v[j] > hi ? v[j] : hi;
    }
    dBits = f32ToF16((hi - lo) / 15.0f);
    mBits = f32ToF16(lo);
    const float d = f16ToF32(dBits), m = f16ToF32(mBits);
    if (!std::isfinite(d) || !std::isfinite(m)) return false;
    for (int j = 0; j < kBlock; j++) {
      const float q = d == 0.0f ? 0.0f : std::nearbyint((v[j] - m) / d);
      u[j] = static_cast<int>(q < 0.0f ? 0.0f : q > 15.0f ? 15.0f : q);
    }
  }
  return true;
}

// The exact dequantized value of a code: d·(u − z) is exact in f32; Int4m's d·u + m is rounded once, as f32.
inline float decode(WType t, float d, float m, int u) {
  return t == WType::Int4m ? d * static_cast<float>(u) + m : d * static_cast<float>(u - zeroCode(t));
}

inline float readF16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16ToF32(h);
}

// Row n of a packed [N, K] matrix, dequantized into out[K].
inline void dequantizeRow(WType t, const uint8_t* w, long N, long K, long n, float* out) {
  const long nb = K / kBlock, g = n / kGroupRows;
  const int rows = static_cast<int>(N - g * kGroupRows < kGroupRows ? N - g * kGroupRows : kGroupRows);
  const uint8_t* grp = w + g * kGroupRows * rowBytes(t, K);
  for (long blk = 0; blk < nb; blk++) {
    const BlockRef ref = blockRef(t, grp, rows, static_cast<int>(n % kGroupRows), blk, nb);
    const float d = readF16(ref.d), m = ref.m ? readF16(ref.m) : 0.0f;
    for (long j = 0; j < kBlock; j++) out[blk * kBlock + j] = decode(t, d, m, codeAt(t, ref, j));
  }
}

// Activations of one matmul quantized per block of 32 for the integer dot: q = round-half-even(x · (127/amax)) in
// [−127, 127], scale amax/127 (0 for an all-zero block). Per row of x: K codes, K/32 scales, and what each format's
// correction needs: K/4 lane sums −z·Σ of 4 consecutive codes (Int8, Int4: added to the integer dot so that it sums
// (u − z)·q exactly), or K/32 products scale·Σq (Int4m: multiplied by the weight minimum).
struct QuantizedRows {
  const int8_t* q;
  const float* d;
  const int32_t* laneInit;  // Int8, Int4
  const float* dsum;        // Int4m
  long K;
};

// The activation codes must be the same integers on every tier and in the TS reference: x·inv is rounded to f32
// before it is rounded to an integer, so the compiler may not fuse the two steps into one FMA.
#if defined(__clang__)
#define VL3_NO_FP_CONTRACT
#define VL3_NO_FP_CONTRACT_BODY _Pragma("clang fp contract(off)")
#elif defined(__GNUC__)
#define VL3_NO_FP_CONTRACT __attribute__((optimize("fp-contract=off")))
#define VL3_NO_FP_CONTRACT_BODY
#else
#define VL3_NO_FP_CONTRACT
#define VL3_NO_FP_CONTRACT_BODY
#endif

VL3_NO_FP_CONTRACT inline void quantizeActivationRow(WType t, const float* x, long K, int8_t* q, float* d,
                                                     int32_t* laneInit, float* dsum) {
  VL3_NO_FP_CONTRACT_BODY
  const int z = zeroCode(t);
  constexpr float kMagic = 12582912.0f;
  for (long b = 0; b < K / kBlock; b++) {
    const float* v = x + b * kBlock;
    float amax = 0.0f;
    for (int j = 0; j < kBlock; j++) amax = std::fabs(v[j]) > amax ? std::fabs(v[j]) : amax;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    d[b] = amax / 127.0f;
    int8_t* qb = q + b * kBlock;
    int sum = 0;
    for (int j = 0; j < kBlock; j++) {
      // Adding 1.5·2²³ leaves no fraction bits and rounds half to even (|v·inv| ≤ 127, default rounding mode);
      // plain arithmetic, so this loop vectorizes where nearbyint would not.
      const float r = v[j] * inv + kMagic;
      const int qj = static_cast<int>(r - kMagic);
      qb[j] = static_cast<int8_t>(qj);
      sum += qj;
    }
    if (t == WType::Int4m) {
      dsum[b] = d[b] * static_cast<float>(sum);
    } else {
      for (int l = 0; l < kBlock / 4; l++) laneInit[b * 8 + l] = -z * (qb[4 * l] + qb[4 * l + 1] + qb[4 * l + 2] + qb[4 * l + 3]);
    }
  }
}

// Σ_k (u − z)·q over one block (Int4m: Σ u·q), exact in int32.
inline int32_t blockDot(WType t, const BlockRef& ref, const int8_t* q) {
  const int z = zeroCode(t);
  int32_t s = 0;
  for (long j = 0; j < kBlock; j++) s += (codeAt(t, ref, j) - z) * q[j];
  return s;
}

// res[i][r] (i < mt, r < rows) += the dot of activation row m0 + i with row r of the group at g, over blocks
// [blk0, nb): Σ_b d_w·d_x·(integer block dot) (+ m_w·dsum for Int4m). The portable kernel, and every tier's tail.
inline void groupDotGeneric(WType t, const uint8_t* g, int rows, long blk0, const QuantizedRows& A, long m0, int mt,
                            float (*res)[kGroupRows]) {
  const long nb = A.K / kBlock;
  for (int r = 0; r < rows; r++) {
    for (long blk = blk0; blk < nb; blk++) {
      const BlockRef ref = blockRef(t, g, rows, r, blk, nb);
      const float dw = readF16(ref.d), mw = ref.m ? readF16(ref.m) : 0.0f;
      for (int i = 0; i < mt; i++) {
        const long m = m0 + i;
        const int32_t s = blockDot(t, ref, A.q + m * A.K + blk * kBlock);
        res[i][r] += dw * A.d[m * nb + blk] * static_cast<float>(s);
        if (ref.m) res[i][r] += mw * A.dsum[m * nb + blk];
      }
    }
  }
}

}  // namespace
}  // namespace quant
}  // namespace vl3
