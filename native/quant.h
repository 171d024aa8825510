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
// of a row may hold fewer): one group's chunk is its rows' scales, then (Int4m) minimums, then codes (codeOffset).
// Whole chunks go in pairs, both chunks' scales (and minimums) first, then both chunks' codes: a 4-row int4 or int8
// chunk is 4.5 cache lines (288 or 544 bytes), so one after the other every second chunk's codes started 32 bytes
// into a line and each of their vector loads took two lines; in pairs, a group that starts on a line keeps every
// row's codes on lines (a chunk's scales and minimums are 32 or 64 bytes). A row's last whole chunk, when the count
// is odd, and its partial chunk stand alone.
constexpr int kGroupRows = 4;
constexpr int kChunkBlocks = 4;

inline bool isQuantized(WType t) { return t == WType::Int8 || t == WType::Int4 || t == WType::Int4m; }
inline long codeBytes(WType t) { return t == WType::Int8 ? 32 : 16; }
inline long paramBytes(WType t) { return t == WType::Int4m ? 4 : 2; }
inline long blockBytes(WType t) { return codeBytes(t) + paramBytes(t); }
inline long rowBytes(WType t, long K) { return K / kBlock * blockBytes(t); }
// How a kernel walks a full group of kGroupRows rows over a row of K: `chunks` whole chunks of kChunkBlocks blocks,
// `chunkBytes` apart, each starting with `paramBytes` of scales (and minimums) before the rows' codes; `blocks` is
// K / kBlock, the stride of a row's activation scales.
struct GroupChunks {
  long blocks, chunks, chunkBytes, paramBytes;
};
inline GroupChunks groupChunks(WType t, long K) {
  const long blocks = K / kBlock;
  return {blocks, blocks / kChunkBlocks, kGroupRows * kChunkBlocks * blockBytes(t), kGroupRows * kChunkBlocks * paramBytes(t)};
}

// Whether whole chunk c of a row of `wholeChunks` is one of a pair (see kChunkBlocks).
inline bool pairedChunk(long c, long wholeChunks) { return (c | 1) < wholeChunks; }

// Where whole chunk c of a full group at g keeps its scales (then Int4m's minimums) and its rows' codes.
struct ChunkPlace {
  const uint8_t* params;
  const uint8_t* codes;
};
inline ChunkPlace chunkPlace(const GroupChunks& gc, const uint8_t* g, long c) {
  if (!pairedChunk(c, gc.chunks)) return {g + c * gc.chunkBytes, g + c * gc.chunkBytes + gc.paramBytes};
  const uint8_t* pair = g + (c & ~1L) * gc.chunkBytes;
  const long odd = c & 1;
  return {pair + odd * gc.paramBytes, pair + 2 * gc.paramBytes + odd * (gc.chunkBytes - gc.paramBytes)};
}

// chunkPlace for G groups `apart` bytes apart from g: each group's scales and codes of its chunk c.
template <int G>
inline void chunkPlaces(const GroupChunks& gc, const uint8_t* g, long apart, long c, const uint8_t* (&params)[G],
                        const uint8_t* (&codes)[G]) {
#pragma GCC unroll 4
  for (int h = 0; h < G; h++) {
    const ChunkPlace place = chunkPlace(gc, g + h * apart, c);
    params[h] = place.params;
    codes[h] = place.codes;
  }
}

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
  const uint8_t* codes;  // the codes of the whole chunk, every row's
  long chunkBlocks;      // blocks in the chunk
  long index;            // the block's index within the chunk
  int rows, row;         // the group's rows, and which of them this block is in
};

inline BlockRef blockRef(WType t, const uint8_t* g, int rows, int r, long blk, long nBlocks) {
  const long c0 = blk / kChunkBlocks * kChunkBlocks, b = nBlocks - c0 < kChunkBlocks ? nBlocks - c0 : kChunkBlocks;
  const long i = blk - c0;
  const uint8_t *params = g + rows * c0 * blockBytes(t), *codes = params + rows * b * paramBytes(t);
  if (pairedChunk(c0 / kChunkBlocks, nBlocks / kChunkBlocks)) {
    const long odd = c0 / kChunkBlocks & 1;
    const uint8_t* pair = g + rows * (c0 - odd * kChunkBlocks) * blockBytes(t);
    params = pair + odd * rows * kChunkBlocks * paramBytes(t);
    codes = pair + rows * kChunkBlocks * (2 * paramBytes(t) + odd * codeBytes(t));
  }
  BlockRef ref;
  ref.d = params + (r * b + i) * 2;
  ref.m = t == WType::Int4m ? params + rows * b * 2 + (r * b + i) * 2 : nullptr;
  ref.codes = codes;
  ref.chunkBlocks = b;
  ref.index = i;
  ref.rows = rows;
  ref.row = r;
  return ref;
}

// A chunk's codes are k-major: 4-byte words, word (s, r, i) holding 4 consecutive elements 4s..4s+3 of row r's block
// i (Int8: s = 0..7; Int4 and Int4m: s = 0..3, elements 4s..4s+3 in the low nibbles and 16+4s..16+4s+3 in the high).
// So in a full group's whole chunk, a 512-bit vector s holds one word per (row, block), in the order of the chunk's
// scales, and an int8 dot instruction sums a whole block into one int32 lane: no shuffle of lanes or scales.
inline long codeOffset(WType t, const BlockRef& ref, long j) {
  const long s = (t == WType::Int8 ? j : j & 15) >> 2;
  return ((s * ref.rows + ref.row) * ref.chunkBlocks + ref.index) * 4 + (j & 3);
}

// The activation codes of a chunk of b blocks likewise: word (s, i) holds elements 4s..4s+3 of block i (s = 0..7),
// the 16 bytes of one s being what every row's word s of the weight codes is multiplied by.
inline long activationOffset(long chunkBlocks, long index, long j) { return ((j >> 2) * chunkBlocks + index) * 4 + (j & 3); }

inline int codeAt(WType t, const BlockRef& ref, long j) {
  const uint8_t byte = ref.codes[codeOffset(t, ref, j)];
  return t == WType::Int8 ? byte : j < 16 ? byte & 15 : byte >> 4;
}

inline void setCode(WType t, uint8_t* codes, const BlockRef& ref, long j, int u) {
  uint8_t& byte = codes[codeOffset(t, ref, j)];
  if (t == WType::Int8)
    byte = static_cast<uint8_t>(u);
  else
    byte = static_cast<uint8_t>(j < 16 ? (byte & 0xf0) | u : (byte & 0x0f) | (u << 4));
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
// [−127, 127], scale amax/127 (0 for an all-zero block). Per row of x: K codes (in each chunk of blocks, in the
// k-major order of activationOffset), K/32 scales, and what each format's correction needs: K/32 block sums −z·Σq
// (Int8, Int4: the integer dot starts from them so that it sums (u − z)·q exactly), or K/32 products scale·Σq (Int4m:
// multiplied by the weight minimum).
struct QuantizedRows {
  const int8_t* q;
  const float* d;
  const int32_t* blockInit;  // Int8, Int4
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
                                                     int32_t* blockInit, float* dsum) {
  VL3_NO_FP_CONTRACT_BODY
  const int z = zeroCode(t);
  const long nb = K / kBlock;
  constexpr float kMagic = 12582912.0f;
  for (long b = 0; b < nb; b++) {
    const float* v = x + b * kBlock;
    float amax = 0.0f;
    for (int j = 0; j < kBlock; j++) amax = std::fabs(v[j]) > amax ? std::fabs(v[j]) : amax;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    d[b] = amax / 127.0f;
    int8_t qb[kBlock];
    int sum = 0;
    for (int j = 0; j < kBlock; j++) {
      // Adding 1.5·2²³ leaves no fraction bits and rounds half to even (|v·inv| ≤ 127, default rounding mode);
      // plain arithmetic, so this loop vectorizes where nearbyint would not.
      const float r = v[j] * inv + kMagic;
      const int qj = static_cast<int>(r - kMagic);
      qb[j] = static_cast<int8_t>(qj);
      sum += qj;
    }
    const long c0 = b / kChunkBlocks * kChunkBlocks, chunkBlocks = nb - c0 < kChunkBlocks ? nb - c0 : kChunkBlocks;
    int8_t* chunk = q + c0 * kBlock;
    for (int s = 0; s < kBlock / 4; s++) std::memcpy(chunk + activationOffset(chunkBlocks, b - c0, 4 * s), qb + 4 * s, 4);
    if (t == WType::Int4m)
      dsum[b] = d[b] * static_cast<float>(sum);
    else
      blockInit[b] = -z * sum;
  }
}

// Σ_k (u − z)·q over one block (Int4m: Σ u·q), exact in int32; qChunk: the activation codes of the block's chunk.
// Word by word (codeOffset, activationOffset): the portable tier's whole matmul runs here.
inline int32_t blockDot(WType t, const BlockRef& ref, const int8_t* qChunk) {
  const int z = zeroCode(t);
  int32_t s = 0;
  for (long j = 0; j < (t == WType::Int8 ? kBlock : kBlock / 2); j += 4) {
    const uint8_t* u = ref.codes + codeOffset(t, ref, j);
    const int8_t* q = qChunk + activationOffset(ref.chunkBlocks, ref.index, j);
    if (t == WType::Int8) {
      for (int e = 0; e < 4; e++) s += (u[e] - z) * q[e];
    } else {
      const int8_t* qHigh = qChunk + activationOffset(ref.chunkBlocks, ref.index, j + 16);
      for (int e = 0; e < 4; e++) s += ((u[e] & 15) - z) * q[e] + ((u[e] >> 4) - z) * qHigh[e];
    }
  }
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
        const int32_t s = blockDot(t, ref, A.q + m * A.K + (blk - ref.index) * kBlock);
        res[i][r] += dw * A.d[m * nb + blk] * static_cast<float>(s);
        if (ref.m) res[i][r] += mw * A.dsum[m * nb + blk];
      }
    }
  }
}

}  // namespace
}  // namespace quant
}  // namespace vl3
