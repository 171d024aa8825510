// Own op drivers: blocking, threading and the online softmax are written once and instantiated per ISA, so the scalar fallback keeps the AVX2 path's structure and memory bounds.
// Include exactly once per translation unit, after an isa_*.h, with VL3_ISA naming that header's namespace and
// VL3_ISA_NAME its display name. Everything lands in an anonymous namespace inside vl3::VL3_ISA. The ISA header
// gives the GEMM's tile (MR×NR) and blocking (KC, MC, NB), the GEMV cut-off kGemvMaxM, the tiled attention's panel
// height kAttnMR, and its primitives; with VL3_BF16_DOT set to 1 it also gives the bf16 dot-product GEMM and GEMV
// (packABf16, packBBf16, tileBf16, gemvRowsBf16, the k per dot step kDotK that packed panels are padded to, their K
// blocking KCDot and GEMV cut-off kGemvMaxMDot) that Compute::Bf16 then runs on.
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels.h"
#include "pool.h"
#include "quant.h"

#ifndef VL3_BF16_DOT
#define VL3_BF16_DOT 0
#endif
// Set by an ISA header that gives groupDotT (the quantized weights' integer dot over whole chunks, see quantMatmulInt).
#ifndef VL3_QUANT_DOT
#define VL3_QUANT_DOT 0
#endif
// Set by an ISA header that gives groupsDotT (groupDotT for one row of x against several groups).
#ifndef VL3_QUANT_GROUPS_DOT
#define VL3_QUANT_GROUPS_DOT 0
#endif
// Set by an ISA header that gives groupsRowsDotT (groupDotT for two groups at once).
#ifndef VL3_QUANT_PAIR_DOT
#define VL3_QUANT_PAIR_DOT 0
#endif
// Set by an ISA header that gives quantizeActivationRowVec (quant::quantizeActivationRow's results, vectorized).
#ifndef VL3_QUANT_ACTIVATIONS
#define VL3_QUANT_ACTIVATIONS 0
#endif

namespace vl3 {
namespace VL3_ISA {
namespace {

inline long cdiv(long a, long b) { return (a + b - 1) / b; }
inline long roundUp(long a, long b) { return cdiv(a, b) * b; }
inline long lmin(long a, long b) { return a < b ? a : b; }
inline long lmax(long a, long b) { return a > b ? a : b; }

// Splits [0, n) into contiguous ranges run on the pool; small problems stay on the calling thread, where a fork
// would cost more than it saves.
template <class F>
inline void forRange(long n, long grain, const F& f) {
  const int threads = poolThreads();
  long tasks = threads == 1 ? 1 : lmin(cdiv(n, grain), 4L * threads);
  if (tasks <= 1) {
    if (n > 0) f(0L, n, 0);
    return;
  }
  parallelTasks(tasks, [&](long t, int tid) { f(n * t / tasks, n * (t + 1) / tasks, tid); });
}

// ---------------------------------------------------------------------------------------------------------------
// Matmul: out[M,N] = x[M,K]·w[N,K]ᵀ (+bias).

// Rows [0, mc) of x into A panels of MR rows, [kc][MR] each, zero rows past mc; rounded to bf16 values for
// Compute::Bf16 on tiers that multiply in f32.
inline void packA(const float* x, long ldx, long mc, long kc, float* dst, bool round) {
  for (long i0 = 0; i0 < mc; i0 += MR) {
    float* d = dst + i0 * kc;
    for (long r = 0; r < MR; r++) {
      if (i0 + r < mc) {
        const float* s = x + (i0 + r) * ldx;
        if (round) for (long k = 0; k < kc; k++) d[k * MR + r] = roundBf16(s[k]);
        else for (long k = 0; k < kc; k++) d[k * MR + r] = s[k];
      } else {
        for (long k = 0; k < kc; k++) d[k * MR + r] = 0.0f;
      }
    }
  }
}

// The backward passes' operand layouts: A read transposed (element (m, k) at x[k·lda + m]: dyᵀ for dw = dyᵀ·x), B
// read transposed (element (n, k) at w[k·ldb + n]: wᵀ for dx = dy·w, xᵀ for dw), and C added to (parameter gradients
// accumulate). Both transposed f32 packs read rows contiguously, so they cost less than the forward's; the bf16-dot
// packs go through a transposed f32 copy of the block (transposeBlock), so every tier's own pair/quad layout serves.
struct GemmLayout {
  bool aT = false;
  long lda = 0;
  bool bT = false;
  long ldb = 0;
  bool accumulate = false;
};

// B read transposed (dx = dy·w), optionally added to C.
inline GemmLayout layoutBT(long ldb, bool accumulate = false) {
  GemmLayout L;
  L.bT = true;
  L.ldb = ldb;
  L.accumulate = accumulate;
  return L;
}

// Both read transposed and added to C: a parameter gradient dw += dyᵀ·x.
inline GemmLayout layoutTransposedAdd(long lda, long ldb) {
  GemmLayout L = layoutBT(ldb, true);
  L.aT = true;
  L.lda = lda;
  return L;
}

// Packs A as packA does from Aᵀ stored row-major: k-th row of the panel is MR consecutive elements of row k.
inline void packAT(const float* x, long lda, long mc, long kc, float* dst, bool round) {
  for (long i0 = 0; i0 < mc; i0 += MR) {
    float* d = dst + i0 * kc;
    const long mr = lmin(MR, mc - i0);
    for (long k = 0; k < kc; k++) {
      const float* s = x + k * lda + i0;
      long r = 0;
      if (round) for (; r < mr; r++) d[k * MR + r] = roundBf16(s[r]);
      else for (; r < mr; r++) d[k * MR + r] = s[r];
      for (; r < MR; r++) d[k * MR + r] = 0.0f;
    }
  }
}

// A B panel [kc][NR] from Bᵀ stored row-major (f32 or bf16, widened): row k of the panel is nr consecutive elements.
inline void packBT(const void* w, WType type, long ldb, int nr, long kc, float* dst, bool round) {
  for (long k = 0; k < kc; k++) {
    float* d = dst + k * NR;
    if (type == WType::BF16) widenBf16(static_cast<const uint16_t*>(w) + k * ldb, d, nr);
    else if (round) for (int j = 0; j < nr; j++) d[j] = roundBf16(static_cast<const float*>(w)[k * ldb + j]);
    else std::memcpy(d, static_cast<const float*>(w) + k * ldb, nr * sizeof(float));
    for (int j = nr; j < NR; j++) d[j] = 0.0f;
  }
}

// dst[r·kc + k] = src[k·ld + r] for r < rows, k < kc (bf16 widened exactly): a transposed operand block laid out as
// the bf16-dot packs read a plain one. Blocks of 16×16 keep both sides' lines in L1.
inline void transposeBlock(const void* src, WType type, long ld, long rows, long kc, float* dst) {
  constexpr long kTile = 16;
  for (long k0 = 0; k0 < kc; k0 += kTile)
    for (long r0 = 0; r0 < rows; r0 += kTile)
      for (long k = k0; k < lmin(kc, k0 + kTile); k++) {
        const long r1 = lmin(rows, r0 + kTile);
        if (type == WType::BF16) {
          const uint16_t* s = static_cast<const uint16_t*>(src) + k * ld;
          for (long r = r0; r < r1; r++) dst[r * kc + k] = bf16ToF32(s[r]);
        } else {
          const float* s = static_cast<const float*>(src) + k * ld;
          for (long r = r0; r < r1; r++) dst[r * kc + k] = s[r];
        }
      }
}

// A micro-tile that may be cut by the edge of C: full tiles go straight to the micro-kernel, edge tiles through a
// local buffer.
inline void tile(long kc, const float* A, const float* B, float* C, long ldc, long mr, long nr, bool accumulate,
                 const float* bias) {
  if (mr == MR && nr == NR) {
    microKernel(kc, A, B, NR, C, ldc, accumulate, bias);
    return;
  }
  alignas(64) float t[MR * NR];
  microKernel(kc, A, B, NR, t, NR, false, bias);
  for (long i = 0; i < mr; i++)
    for (long j = 0; j < nr; j++) C[i * ldc + j] = accumulate ? C[i * ldc + j] + t[i * NR + j] : t[i * NR + j];
}

inline long wBytes(WType t) { return t == WType::BF16 ? 2 : 4; }

// Packed A of one GEMM super-block (all of K for up to this many bytes of rows) is shared by every task: packing it
// once rather than once per column task (N splits into 4 tasks per thread) took the vision encoder in exact mode from
// about 66 % to 72 % of the zmm peak on 2 threads (the bf16 packing, already vectorized, gained less). The bound
// keeps the buffer a fixed budget for any M.
constexpr long kPackedABytes = 32L << 20;

// The packed GEMM. Blocking (KC, MC, NB: the ISA's): a KC×NR panel of B stays in L1 while an MC×KC block of A stays
// in L2, and each task's KC×(≤NB) slice of packed B is read from L2/L3. Rows are taken in super-blocks whose packed A
// (every K block) fits kPackedABytes; each super-block's A is packed once, in parallel, before the column tasks run.
// DOT: the operands are packed as bf16 pairs for the ISA's bf16 dot-product micro-kernel (Compute::Bf16 on such a
// tier); otherwise as f32, rounded to bf16 values first when `round` (Compute::Bf16 elsewhere).
template <bool DOT>
void gemm(const MatmulArgs& a, const float* bias, bool round, const GemmLayout& L = GemmLayout()) {
  const long M = a.M, N = a.N, K = a.K, esz = wBytes(a.wType);
  const long nPanels = cdiv(N, NR);
  const int threads = poolThreads();
  // Panel elements: f32, or bf16 with k padded to whole dot steps (pairs for vdpbf16ps, quads for BFMMLA), whose
  // panels take the ISA's own K blocking.
  const long elt = DOT ? 2 : 4;
#if VL3_BF16_DOT
  const long stepK = DOT ? kDotK : 1;
  const long kcMax = DOT ? KCDot : KC;
#else
  const long stepK = 1;
  const long kcMax = KC;
#endif
  // Equal K blocks: a ragged last block (1152 = 512 + 512 + 128) loads and stores C for a few dot steps only.
  const long kBlocks = cdiv(K, kcMax), kcBlock = roundUp(cdiv(K, kBlocks), stepK), kpMax = kcBlock;
  // Packed A layout per super-block: K block kb at kb·rows·kpMax, its MR-row groups kp·MR elements apart.
  const long superRows = lmax(roundUp(MC, MR), kPackedABytes / (kBlocks * kpMax * elt) / MR * MR);
  const long rowsMax = lmin(superRows, roundUp(M, MR));
  char* packed = static_cast<char*>(scratch(0, kSlotPackedA, kBlocks * rowsMax * kpMax * elt));

  for (long s0 = 0; s0 < M; s0 += superRows) {
    const long sM = lmin(superRows, M - s0), sRows = roundUp(sM, MR);
    auto blockA = [&](long kb, long r0) { return packed + (kb * sRows * kpMax + r0 * roundUp(lmin(kcBlock, K - kb * kcBlock), stepK)) * elt; };
    // Pack: K blocks × chunks of MC rows, spread over the pool.
    const long rowChunks = cdiv(sM, MC);
    parallelTasks(kBlocks * rowChunks, [&](long task, int tid) {
      const long kb = task / rowChunks, r0 = (task % rowChunks) * MC;
      const long pc = kb * kcBlock, kc = lmin(kcBlock, K - pc), mc = lmin(MC, sM - r0);
      if (L.aT) {
        const float* xT = a.x + pc * L.lda + s0 + r0;
#if VL3_BF16_DOT
        if (DOT) {
          // kSlotB is free here: the column tasks below take it only after every pack task is done.
          float* t = static_cast<float*>(scratch(tid, kSlotB, mc * kc * sizeof(float)));
          transposeBlock(xT, WType::F32, L.lda, mc, kc, t);
          packABf16(t, kc, mc, kc, reinterpret_cast<uint16_t*>(blockA(kb, r0)));
          return;
        }
#endif
        packAT(xT, L.lda, mc, kc, reinterpret_cast<float*>(blockA(kb, r0)), round);
        return;
      }
      const float* x = a.x + (s0 + r0) * K + pc;
#if VL3_BF16_DOT
      if (DOT) {
        packABf16(x, K, mc, kc, reinterpret_cast<uint16_t*>(blockA(kb, r0)));
        return;
      }
#endif
      packA(x, K, mc, kc, reinterpret_cast<float*>(blockA(kb, r0)), round);
    });

    // Split N first (each task packs only its own columns of w); split M too when N alone gives too few tasks.
    long nTn = threads == 1 ? cdiv(N, NB) : lmax(threads * cdiv(N, threads * NB), 4L * threads);
    nTn = lmin(nTn, nPanels);
    long nTm = 1;
    if (threads > 1 && nTn < 4L * threads) nTm = lmin(cdiv(sM, MR), cdiv(4L * threads, nTn));
    const long mChunk = roundUp(cdiv(sM, nTm), MR);
    nTm = cdiv(sM, mChunk);
    parallelTasks(nTn * nTm, [&](long task, int tid) {
      const long tn = task % nTn, tm = task / nTn;
      const long p0 = tn * nPanels / nTn, p1 = (tn + 1) * nPanels / nTn;
      const long m0 = tm * mChunk, m1 = lmin(sM, m0 + mChunk);
      if (p0 >= p1 || m0 >= m1) return;
      char* bp = static_cast<char*>(scratch(tid, kSlotB, (p1 - p0) * kpMax * NR * elt));
      const long mBlocks = cdiv(m1 - m0, MC);
      const long mc0 = roundUp(cdiv(m1 - m0, mBlocks), MR);  // equal A blocks rather than a ragged last one
      for (long kb = 0; kb < kBlocks; kb++) {
        const long pc = kb * kcBlock, kc = lmin(kcBlock, K - pc), kp = roundUp(kc, stepK);
        for (long p = p0; p < p1; p++) {
          const void* w = static_cast<const char*>(a.w) + (L.bT ? pc * L.ldb + p * NR : p * NR * K + pc) * esz;
          const int nr = static_cast<int>(lmin(NR, N - p * NR));
          char* dst = bp + (p - p0) * kp * NR * elt;
#if VL3_BF16_DOT
          if (DOT) {
            if (L.bT) {
              float* t = static_cast<float*>(scratch(tid, kSlotC, NR * kc * sizeof(float)));
              transposeBlock(w, a.wType, L.ldb, nr, kc, t);
              packBBf16(t, WType::F32, kc, nr, kc, reinterpret_cast<uint16_t*>(dst));
            } else {
              packBBf16(w, a.wType, K, nr, kc, reinterpret_cast<uint16_t*>(dst));
            }
            continue;
          }
#endif
          if (L.bT) packBT(w, a.wType, L.ldb, nr, kc, reinterpret_cast<float*>(dst), round);
          else packB(w, a.wType, K, nr, kc, reinterpret_cast<float*>(dst), round);
        }
        for (long ic = m0; ic < m1; ic += mc0) {
          const long mc = lmin(mc0, m1 - ic);
          const char* ap = blockA(kb, ic);
          for (long p = p0; p < p1; p++) {
            const long nr = lmin(NR, N - p * NR);
            const char* b = bp + (p - p0) * kp * NR * elt;
            for (long ir = 0; ir < mc; ir += MR) {
              float* c = a.out + (s0 + ic + ir) * N + p * NR;
              const long mr = lmin(MR, mc - ir);
              const float* bb = pc == 0 && bias ? bias + p * NR : nullptr;
#if VL3_BF16_DOT
              if (DOT) {
                tileBf16(kp, reinterpret_cast<const uint16_t*>(ap + ir * kp * elt), reinterpret_cast<const uint16_t*>(b),
                         c, N, mr, nr, pc > 0 || L.accumulate, bb);
                continue;
              }
#endif
              tile(kc, reinterpret_cast<const float*>(ap + ir * kc * elt), reinterpret_cast<const float*>(b), c, N, mr,
                   nr, pc > 0 || L.accumulate, bb);
            }
          }
        }
      }
    });
  }
}

// Weight rows [n0, n1) for the GEMV as bf16: in place when stored so, else (f32 weights under Compute::Bf16) rounded
// into `buf` (rows of K), at most kRoundRows rows at a time so the copy stays in L2.
constexpr long kRoundRows = 32;

inline const uint16_t* bf16Rows(const MatmulArgs& a, long n0, long n1, uint16_t* buf) {
  if (a.wType == WType::BF16) return static_cast<const uint16_t*>(a.w) + n0 * a.K;
  const float* w = static_cast<const float*>(a.w) + n0 * a.K;
  for (long i = 0; i < (n1 - n0) * a.K; i++) buf[i] = f32ToBf16(w[i]);
  return buf;
}

// Small M: the ISA's gemvRows reads w in place (no packing) and from memory only once. Up to kGemvMaxM rows of x
// (set per ISA, where it measured faster than packing) this is the whole matmul. Under Compute::Bf16, x is rounded
// once into scratch (to bf16 words for a bf16-dot tier, to bf16 values in f32 elsewhere), and f32 weights are
// rounded kRoundRows rows at a time.
// Up to kBatchRows rows the GEMV serves every matmul, whose rows each get the bits they get alone (kernels.h).
static_assert(kGemvMaxM >= kBatchRows, "the GEMV must serve every batch of up to kBatchRows rows");
#if VL3_BF16_DOT
static_assert(kGemvMaxMDot >= kBatchRows, "the bf16 dot GEMV must serve every batch of up to kBatchRows rows");
#endif

void gemv(const MatmulArgs& a, const float* bias) {
  const long M = a.M, N = a.N, K = a.K, esz = wBytes(a.wType);
  const bool bf16 = a.compute == Compute::Bf16;
  const int threads = poolThreads();
  const float* x = a.x;
  // Under Compute::Bf16: x as bf16 words for a bf16-dot tier, and for a decode step on a tier whose GEMV takes them
  // (gemvRowBf16X); else x rounded to bf16 values in f32.
#if VL3_BF16_DOT
  constexpr bool wordsX = true;
#elif VL3_GEMV_BF16_X
  const bool wordsX = M == 1;
#else
  constexpr bool wordsX = false;
#endif
  [[maybe_unused]] const uint16_t* xb = nullptr;
  if (bf16 && wordsX) {
    uint16_t* t = static_cast<uint16_t*>(scratch(0, kSlotE, M * K * sizeof(uint16_t)));
    for (long i = 0; i < M * K; i++) t[i] = f32ToBf16(a.x[i]);
    xb = t;
  } else if (bf16) {
    float* t = static_cast<float*>(scratch(0, kSlotE, M * K * sizeof(float)));
    for (long i = 0; i < M * K; i++) t[i] = roundBf16(a.x[i]);
    x = t;
  }
  // Several contiguous row ranges per thread so that one thread slowed by a noisy neighbour does not hold up the
  // others; tiny problems stay on one thread.
  long tasks = threads == 1 || M * N * K < (1L << 15) ? 1 : lmin(cdiv(N, 16), 4L * threads);
  auto body = [&](long t, int tid) {
    const long n0 = N * t / tasks, n1 = N * (t + 1) / tasks;
    if (!bf16) {
      gemvRows(x, static_cast<int>(M), K, static_cast<const char*>(a.w) + n0 * K * esz, a.wType, n1 - n0, a.out + n0,
               N, bias ? bias + n0 : nullptr);
      return;
    }
    const long step = a.wType == WType::BF16 ? n1 - n0 : kRoundRows;
    uint16_t* buf =
        a.wType == WType::BF16 ? nullptr : static_cast<uint16_t*>(scratch(tid, kSlotD, kRoundRows * K * sizeof(uint16_t)));
    for (long r0 = n0; r0 < n1; r0 += step) {
      const long r1 = lmin(n1, r0 + step);
      const uint16_t* w = bf16Rows(a, r0, r1, buf);
#if VL3_BF16_DOT
      gemvRowsBf16(xb, static_cast<int>(M), K, w, r1 - r0, a.out + r0, N, bias ? bias + r0 : nullptr);
#else
#if VL3_GEMV_BF16_X
      if (xb) {
        gemvRowBf16X(xb, K, w, r1 - r0, a.out + r0, bias ? bias + r0 : nullptr);
        continue;
      }
#endif
      gemvRows(x, static_cast<int>(M), K, w, WType::BF16, r1 - r0, a.out + r0, N, bias ? bias + r0 : nullptr);
#endif
    }
  };
  if (tasks == 1) body(0, 0);
  else parallelTasks(tasks, body);
}

void matmul(const MatmulArgs& a);

// Quantized weights under Compute::Exact: chunks of rows dequantized into scratch and multiplied as f32 weights (the
// same GEMV/GEMM), each chunk's columns then copied into out. Slow by design: this is the numerics reference. A chunk
// takes at most 8 MiB of dequantized weights and 16 MiB of partial output, whatever M and K.
void quantMatmulExact(const MatmulArgs& a, const float* bias) {
  const long M = a.M, N = a.N, K = a.K;
  const long fit = lmin((8L << 20) / (K * 4), (16L << 20) / (M * 4)) / quant::kGroupRows * quant::kGroupRows;
  const long rows = lmax(quant::kGroupRows, lmin(roundUp(N, quant::kGroupRows), fit));
  float* w = static_cast<float*>(scratch(0, kSlotC, rows * K * sizeof(float)));
  float* part = static_cast<float*>(scratch(0, kSlotD, M * rows * sizeof(float)));
  const uint8_t* packed = static_cast<const uint8_t*>(a.w);
  for (long n0 = 0; n0 < N; n0 += rows) {
    const long nc = lmin(rows, N - n0);
    forRange(nc, 16, [&](long r0, long r1, int) {
      for (long r = r0; r < r1; r++) quant::dequantizeRow(a.wType, packed, N, K, n0 + r, w + r * K);
    });
    MatmulArgs sub = a;
    sub.w = w;
    sub.wType = WType::F32;
    sub.bias = nullptr;
    sub.biasType = WType::None;
    sub.out = part;
    sub.N = nc;
    matmul(sub);
    for (long m = 0; m < M; m++)
      for (long j = 0; j < nc; j++) a.out[m * N + n0 + j] = part[m * nc + j] + (bias ? bias[n0 + j] : 0.0f);
  }
}

#if VL3_QUANT_DOT
// The ISA's groupDotT<format, activation rows> for a full group; a matrix's last group may be short and goes the
// generic way.
template <WType T>
inline long groupDotRows(const uint8_t* g, const quant::QuantizedRows& A, long m0, int mt, float (*res)[quant::kGroupRows]) {
  switch (mt) {
    case 1: return groupDotT<T, 1>(g, A, m0, res);
    case 2: return groupDotT<T, 2>(g, A, m0, res);
    case 3: return groupDotT<T, 3>(g, A, m0, res);
    default: return groupDotT<T, 4>(g, A, m0, res);
  }
}

inline long groupDot(WType t, const uint8_t* g, int rows, const quant::QuantizedRows& A, long m0, int mt,
                     float (*res)[quant::kGroupRows]) {
  if (rows != quant::kGroupRows) return 0;
  if (t == WType::Int8) return groupDotRows<WType::Int8>(g, A, m0, mt, res);
  if (t == WType::Int4) return groupDotRows<WType::Int4>(g, A, m0, mt, res);
  return groupDotRows<WType::Int4m>(g, A, m0, mt, res);
}
#endif

#if VL3_QUANT_PAIR_DOT
// The ISA's groupsRowsDotT for two full groups `apart` bytes apart: res[h · mt + i].
template <WType T>
inline long groupPairRows(const uint8_t* g, long apart, const quant::QuantizedRows& A, long m0, int mt, float (*res)[quant::kGroupRows]) {
  switch (mt) {
    case 1: return groupsRowsDotT<T, 1, 2>(g, apart, A, m0, res);
    case 2: return groupsRowsDotT<T, 2, 2>(g, apart, A, m0, res);
    case 3: return groupsRowsDotT<T, 3, 2>(g, apart, A, m0, res);
    default: return groupsRowsDotT<T, 4, 2>(g, apart, A, m0, res);
  }
}

inline long groupPairDot(WType t, const uint8_t* g, long apart, const quant::QuantizedRows& A, long m0, int mt, float (*res)[quant::kGroupRows]) {
  if (t == WType::Int8) return groupPairRows<WType::Int8>(g, apart, A, m0, mt, res);
  if (t == WType::Int4) return groupPairRows<WType::Int4>(g, apart, A, m0, mt, res);
  return groupPairRows<WType::Int4m>(g, apart, A, m0, mt, res);
}
#endif

#if VL3_QUANT_GROUPS_DOT
// How many groups a decode step's matmul streams at once: the ISA's choice for k up to 2048 (its
// kStreamedGroupsShortK), else the most.
constexpr int kMaxStreamedGroups = 4;
static_assert(kStreamedGroupsShortK <= kMaxStreamedGroups, "");
inline int streamedGroups(long K) { return K <= 2048 ? kStreamedGroupsShortK : kMaxStreamedGroups; }

// Tasks per thread over a quantized matmul's weight groups (for each block of x's rows). Where two groups stream at once
// (rows of up to 2048 on the AVX-512 tiers) one: those matrices are small (the 2B's o projection is 1.3 MB of int4),
// and on two Zen 5 vCPUs each further task's start cost more than its balancing bought (BENCHMARKS.md run 17: int4
// q/k/v and o 9-18 % faster, a whole int4 decode 2.7 %; run 18: int8 with its two streams, 8 %). Four elsewhere: at
// one, the down projection (k = 8960) measured 7 % slower; and more tasks let a thread the host slows hand work to the
// other (with 4 streams at k = 1536, one task a thread measured 0.98× on Zen 3, run 26).
inline long quantTasksPerThread(long K) { return streamedGroups(K) == 2 ? 1 : 4; }

template <WType T>
inline long groupsDot(int G, const uint8_t* g, long apart, const quant::QuantizedRows& A, long m, float (*res)[quant::kGroupRows]) {
  if (G == 2) return groupsDotT<T, 2>(g, apart, A, m, res);
  if (G == 3) return groupsDotT<T, 3>(g, apart, A, m, res);
  return groupsDotT<T, 4>(g, apart, A, m, res);
}

inline long groupsDot(WType t, int G, const uint8_t* g, long apart, const quant::QuantizedRows& A, long m, float (*res)[quant::kGroupRows]) {
  if (t == WType::Int8) return groupsDot<WType::Int8>(G, g, apart, A, m, res);
  if (t == WType::Int4) return groupsDot<WType::Int4>(G, g, apart, A, m, res);
  return groupsDot<WType::Int4m>(G, g, apart, A, m, res);
}
#else
inline long quantTasksPerThread(long) { return 4; }
#endif

// Quantized weights under Compute::Bf16 (kernels.h): x quantized once per call into scratch, then tasks of (row
// block of x, range of 4-row weight groups). A row block of x (its codes, scales and block sums, under 2 bytes per k, at most
// kQuantBlockBytes, at most 64 rows) stays in L2 while its tasks stream the weights, read once per row block:
// decode reads them exactly once.
constexpr long kQuantBlockBytes = 192L << 10;

// x quantized per block into the call's scratch (kSlotE), in parallel over rows.
inline quant::QuantizedRows quantizeX(const MatmulArgs& a) {
  const long M = a.M, K = a.K, nb = K / quant::kBlock;
  const WType t = a.wType;
  char* s = static_cast<char*>(scratch(0, kSlotE, M * K + M * nb * 12 + 64));
  int8_t* q = reinterpret_cast<int8_t*>(s);
  float* d = reinterpret_cast<float*>(s + roundUp(M * K, 64));
  float* dsum = d + M * nb;
  int32_t* blockInit = reinterpret_cast<int32_t*>(dsum + M * nb);
  forRange(M, lmax(1, (1L << 15) / K), [&](long m0, long m1, int) {
    for (long m = m0; m < m1; m++) {
#if VL3_QUANT_ACTIVATIONS
      quantizeActivationRowVec(t, a.x + m * K, K, q + m * K, d + m * nb, blockInit + m * nb, dsum + m * nb);
#else
      quant::quantizeActivationRow(t, a.x + m * K, K, q + m * K, d + m * nb, blockInit + m * nb, dsum + m * nb);
#endif
    }
  });
  return {q, d, blockInit, dsum, K};
}

// Rows of x in one block of quantMatmulInt's tasks.
inline long quantRowsM(long K) {
  return lmax(quant::kGroupRows, lmin(64, kQuantBlockBytes / (2 * K) / quant::kGroupRows * quant::kGroupRows));
}

// Weight groups [g0, g1) against row block mb of x: every output of those rows and groups.
inline void quantGroups(const MatmulArgs& a, const quant::QuantizedRows& A, const float* bias, long mb, long g0, long g1) {
  const long M = a.M, N = a.N, rowsM = quantRowsM(a.K);
  const long gBytes = quant::kGroupRows * quant::rowBytes(a.wType, a.K);
  const long mEnd = lmin(M, (mb + 1) * rowsM);
#if VL3_QUANT_GROUPS_DOT
  // One row of x (decode): the range's full groups in G equal parts, one group of each at a time (see groupsDotT).
  if (mEnd - mb * rowsM == 1) {
    const int G = streamedGroups(a.K);
    const long m = mb * rowsM, part = (lmin(g1, N / quant::kGroupRows) - g0) / G;
    for (long i = 0; i < part; i++) {
      const uint8_t* first = static_cast<const uint8_t*>(a.w) + (g0 + i) * gBytes;
      float res[kMaxStreamedGroups][quant::kGroupRows] = {};
      const long done = groupsDot(a.wType, G, first, part * gBytes, A, m, res);
      for (int h = 0; h < G; h++) {
        quant::groupDotGeneric(a.wType, first + h * part * gBytes, quant::kGroupRows, done, A, m, 1, &res[h]);
        for (int r = 0; r < quant::kGroupRows; r++) {
          const long n = (g0 + h * part + i) * quant::kGroupRows + r;
          a.out[m * N + n] = res[h][r] + (bias ? bias[n] : 0.0f);
        }
      }
    }
    g0 += G * part;
  }
#endif
  // res[i][r]: x row m0 + i against row r of group g.
  auto store = [&](long g, int rows, long m0, int mt, const float (*res)[quant::kGroupRows]) {
    for (int i = 0; i < mt; i++)
      for (int r = 0; r < rows; r++) {
        const long n = g * quant::kGroupRows + r;
        a.out[(m0 + i) * N + n] = res[i][r] + (bias ? bias[n] : 0.0f);
      }
  };
  for (long g = g0; g < g1; g++) {
    const int rows = static_cast<int>(lmin(quant::kGroupRows, N - g * quant::kGroupRows));
    const uint8_t* grp = static_cast<const uint8_t*>(a.w) + g * gBytes;
#if VL3_QUANT_PAIR_DOT
    // Two full groups at once where the ISA has it (groupsRowsDotT).
    if (g + 1 < g1 && (g + 2) * quant::kGroupRows <= N) {
      for (long m0 = mb * rowsM; m0 < mEnd; m0 += quant::kGroupRows) {
        const int mt = static_cast<int>(lmin(quant::kGroupRows, mEnd - m0));
        float res[2 * quant::kGroupRows][quant::kGroupRows] = {};
        const long done = groupPairDot(a.wType, grp, gBytes, A, m0, mt, res);
        for (int h = 0; h < 2; h++) {
          quant::groupDotGeneric(a.wType, grp + h * gBytes, quant::kGroupRows, done, A, m0, mt, res + h * mt);
          store(g + h, quant::kGroupRows, m0, mt, res + h * mt);
        }
      }
      g++;
      continue;
    }
#endif
    for (long m0 = mb * rowsM; m0 < mEnd; m0 += quant::kGroupRows) {
      const int mt = static_cast<int>(lmin(quant::kGroupRows, mEnd - m0));
      float res[quant::kGroupRows][quant::kGroupRows] = {};
#if VL3_QUANT_DOT
      const long done = groupDot(a.wType, grp, rows, A, m0, mt, res);
#else
      const long done = 0;
#endif
      quant::groupDotGeneric(a.wType, grp, rows, done, A, m0, mt, res);
      store(g, rows, m0, mt, res);
    }
  }
}

// Tasks over `units` weight groups, for each of mBlocks row blocks of x.
inline long quantUnitTasks(long K, long units, long mBlocks, int threads) {
  if (threads == 1) return 1;
  return lmax(1, lmin(units, cdiv(quantTasksPerThread(K) * threads, mBlocks)));
}

void quantMatmulInt(const MatmulArgs& a, const float* bias) {
  const long M = a.M, N = a.N, K = a.K;
  const quant::QuantizedRows A = quantizeX(a);
  const long groups = cdiv(N, quant::kGroupRows), mBlocks = cdiv(M, quantRowsM(K));
  const int threads = poolThreads();
  const long gTasks = M * N * K < (1L << 15) ? 1 : quantUnitTasks(K, groups, mBlocks, threads);
  auto body = [&](long task, int) {
    const long gt = task % gTasks;
    quantGroups(a, A, bias, task / gTasks, groups * gt / gTasks, groups * (gt + 1) / gTasks);
  };
  if (gTasks * mBlocks == 1) body(0, 0);
  else parallelTasks(gTasks * mBlocks, body);
}

// a's bias widened to f32 and padded to whole panels in b (roundUp(N, NR) floats): N values, negligible beside the
// weights. Null without a bias.
inline const float* widenBias(const MatmulArgs& a, float* b) {
  if (!a.bias) return nullptr;
  if (a.biasType == WType::BF16) widenBf16(static_cast<const uint16_t*>(a.bias), b, a.N);
  else std::memcpy(b, a.bias, a.N * sizeof(float));
  for (long i = a.N; i < roundUp(a.N, NR); i++) b[i] = 0.0f;
  return b;
}

void matmul(const MatmulArgs& a) {
  if (a.M == 0 || a.N == 0) return;
  const float* bias = a.bias ? widenBias(a, static_cast<float*>(scratch(0, kSlotShared, roundUp(a.N, NR) * sizeof(float)))) : nullptr;
  if (a.K == 0) {
    for (long m = 0; m < a.M; m++)
      for (long n = 0; n < a.N; n++) a.out[m * a.N + n] = bias ? bias[n] : 0.0f;
    return;
  }
  const bool bf16 = a.compute == Compute::Bf16;
  if (quant::isQuantized(a.wType)) {
    if (bf16) quantMatmulInt(a, bias);
    else quantMatmulExact(a, bias);
    return;
  }
#if VL3_BF16_DOT
  if (bf16) {
    if (a.M <= kGemvMaxMDot) gemv(a, bias);
    else gemm<true>(a, bias, false);
    return;
  }
#endif
  if (a.M <= kGemvMaxM) gemv(a, bias);
  else gemm<false>(a, bias, bf16);
}

// Matmuls of one x by several weights (a layer's q, k and v projections; gate and up) as one job where they take
// the decode kernels (quantized or bf16 weights, bf16 compute, at most kBatchRows rows): every weight is a stream of its
// own, and on small weights starting one costs about as much as reading it (BENCHMARKS.md run 10), so the rows of all
// are split into tasks together. Parts share K and format, so a row (a 4-row group when quantized) costs the same
// bytes in each and tasks are balanced by counting them. Every output gets the bits of its own matmul.
// At most this many parts per job (a layer has 3 at most); more run as several jobs. Fixed arrays rather than
// std::vector: this header is compiled into every tier's object, where no exception-handling code may appear (the
// linker could pick one tier's copy of a shared symbol for another).
constexpr int kMaxMatmulParts = 8;

void matmulMany(const MatmulArgs* parts, int count) {
  if (count > kMaxMatmulParts) {
    for (int first = 0; first < count; first += kMaxMatmulParts) matmulMany(parts + first, count - first < kMaxMatmulParts ? count - first : kMaxMatmulParts);
    return;
  }
  const MatmulArgs& a0 = parts[0];
  const bool quantized = quant::isQuantized(a0.wType);
  bool fused = count > 1 && a0.M > 0 && a0.M <= kBatchRows && a0.K > 0 && a0.compute == Compute::Bf16 &&
               (quantized || (VL3_BF16_DOT && a0.wType == WType::BF16));
  for (int i = 1; i < count && fused; i++) fused = parts[i].wType == a0.wType && parts[i].N > 0;
  if (!fused) {
    for (int i = 0; i < count; i++) matmul(parts[i]);
    return;
  }
  const long M = a0.M, K = a0.K;
  const float* bias[kMaxMatmulParts];
  long unitEnd[kMaxMatmulParts];  // the parts' units laid end to end: part i ends at unitEnd[i]
  long biasFloats = 0, units = 0;
  for (int i = 0; i < count; i++) biasFloats += roundUp(parts[i].N, NR);
  float* biasBuf = static_cast<float*>(scratch(0, kSlotShared, biasFloats * sizeof(float)));
  for (int i = 0; i < count; i++) {
    bias[i] = widenBias(parts[i], biasBuf);
    biasBuf += roundUp(parts[i].N, NR);
    units += quantized ? cdiv(parts[i].N, quant::kGroupRows) : parts[i].N;
    unitEnd[i] = units;
  }
  // Units [u0, u1) of the concatenation, part by part, with rows block mb of x (quantized) or all of them.
  auto run = [&](long mb, long u0, long u1, const quant::QuantizedRows* A, const uint16_t* xb) {
    for (int i = 0; i < count && u0 < u1; i++) {
      const long start = unitEnd[i] - (quantized ? cdiv(parts[i].N, quant::kGroupRows) : parts[i].N);
      const long a = lmax(u0, start), b = lmin(u1, unitEnd[i]);
      if (a >= b) continue;
      const MatmulArgs& p = parts[i];
      if (quantized) {
        quantGroups(p, *A, bias[i], mb, a - start, b - start);
      } else {
#if VL3_BF16_DOT
        const long r0 = a - start;
        gemvRowsBf16(xb, static_cast<int>(M), K, static_cast<const uint16_t*>(p.w) + r0 * K, b - a, p.out + r0, p.N,
                     bias[i] ? bias[i] + r0 : nullptr);
#else
        (void)xb;
#endif
      }
    }
  };
  const int threads = poolThreads();
  if (quantized) {
    const quant::QuantizedRows A = quantizeX(a0);
    const long mBlocks = cdiv(M, quantRowsM(K));
    const long uTasks = quantUnitTasks(K, units, mBlocks, threads);
    parallelTasks(uTasks * mBlocks, [&](long task, int) {
      const long ut = task % uTasks;
      run(task / uTasks, units * ut / uTasks, units * (ut + 1) / uTasks, &A, nullptr);
    });
    return;
  }
  uint16_t* xb = static_cast<uint16_t*>(scratch(0, kSlotE, M * K * sizeof(uint16_t)));
  for (long i = 0; i < M * K; i++) xb[i] = f32ToBf16(a0.x[i]);
  const long tasks = threads == 1 ? 1 : lmin(cdiv(units, 16), 4L * threads);
  parallelTasks(tasks, [&](long t, int) { run(0, units * t / tasks, units * (t + 1) / tasks, nullptr, xb); });
}

// ---------------------------------------------------------------------------------------------------------------
// Elementwise and row ops: memory-bound, threaded only when large.

constexpr long kGrain = 1L << 15;  // elements per task below which a fork costs more than it saves

void add(const float* a, const float* b, float* out, long n, long bLen) {
  if (bLen == n) {
    forRange(n, kGrain, [&](long i0, long i1, int) {
      for (long i = i0; i < i1; i++) out[i] = a[i] + b[i];
    });
    return;
  }
  forRange(n / bLen, lmax(1, kGrain / bLen), [&](long r0, long r1, int) {
    for (long r = r0; r < r1; r++) {
      const float* ar = a + r * bLen;
      float* o = out + r * bLen;
      for (long j = 0; j < bLen; j++) o[j] = ar[j] + b[j];
    }
  });
}

void mul(const float* a, const float* b, float* out, long n, long bLen) {
  if (bLen == n) {
    forRange(n, kGrain, [&](long i0, long i1, int) {
      for (long i = i0; i < i1; i++) out[i] = a[i] * b[i];
    });
    return;
  }
  forRange(n / bLen, lmax(1, kGrain / bLen), [&](long r0, long r1, int) {
    for (long r = r0; r < r1; r++) {
      const float* ar = a + r * bLen;
      float* o = out + r * bLen;
      for (long j = 0; j < bLen; j++) o[j] = ar[j] * b[j];
    }
  });
}

void rmsNorm(const float* x, const void* w, WType wType, float eps, float* out, long rows, long cols) {
  const float* wf = static_cast<const float*>(w);
  if (wType == WType::BF16) {
    float* t = static_cast<float*>(scratch(0, kSlotShared, cols * sizeof(float)));
    widenBf16(static_cast<const uint16_t*>(w), t, cols);
    wf = t;
  }
  forRange(rows, lmax(1, kGrain / lmax(1, cols)), [&](long r0, long r1, int) {
    for (long r = r0; r < r1; r++) {
      const float* xr = x + r * cols;
      float* o = out + r * cols;
      // Sum of squares in double: four partial sums, so the loop is not one serial chain.
      double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      long j = 0;
      for (; j + 4 <= cols; j += 4) {
        s0 += static_cast<double>(xr[j]) * xr[j];
        s1 += static_cast<double>(xr[j + 1]) * xr[j + 1];
        s2 += static_cast<double>(xr[j + 2]) * xr[j + 2];
        s3 += static_cast<double>(xr[j + 3]) * xr[j + 3];
      }
      for (; j < cols; j++) s0 += static_cast<double>(xr[j]) * xr[j];
      const float inv = static_cast<float>(1.0 / std::sqrt((s0 + s1 + s2 + s3) / cols + eps));
      for (long c = 0; c < cols; c++) o[c] = (xr[c] * inv) * wf[c];
    }
  });
}

void layerNorm(const float* x, const void* w, WType wType, const void* b, WType bType, float eps, float* out,
               long rows, long cols) {
  // Weight and bias widened once per call into one scratch buffer when stored as bf16.
  float* t = static_cast<float*>(scratch(0, kSlotShared, 2 * cols * sizeof(float)));
  const float* wf = static_cast<const float*>(w);
  const float* bf = static_cast<const float*>(b);
  if (wType == WType::BF16) {
    widenBf16(static_cast<const uint16_t*>(w), t, cols);
    wf = t;
  }
  if (bType == WType::BF16) {
    widenBf16(static_cast<const uint16_t*>(b), t + cols, cols);
    bf = t + cols;
  }
  forRange(rows, lmax(1, kGrain / lmax(1, cols)), [&](long r0, long r1, int) {
    for (long r = r0; r < r1; r++) {
      const float* xr = x + r * cols;
      float* o = out + r * cols;
      // Two passes in double (mean, then the biased variance about it): no cancellation for rows with a large mean.
      double s0 = 0, s1 = 0;
      long j = 0;
      for (; j + 2 <= cols; j += 2) {
        s0 += xr[j];
        s1 += xr[j + 1];
      }
      for (; j < cols; j++) s0 += xr[j];
      const double mean = (s0 + s1) / cols;
      double v0 = 0, v1 = 0;
      for (j = 0; j + 2 <= cols; j += 2) {
        const double d0 = xr[j] - mean, d1 = xr[j + 1] - mean;
        v0 += d0 * d0;
        v1 += d1 * d1;
      }
      for (; j < cols; j++) v0 += (xr[j] - mean) * (xr[j] - mean);
      const float inv = static_cast<float>(1.0 / std::sqrt((v0 + v1) / cols + eps));
      const float mf = static_cast<float>(mean);
      for (long c = 0; c < cols; c++) o[c] = (xr[c] - mf) * inv * wf[c] + bf[c];
    }
  });
}

void gelu(const float* x, float* out, long n, bool erf) {
  forRange(n, kGrain / 4, [&](long i0, long i1, int) {
    if (erf) geluErfRange(x + i0, out + i0, i1 - i0);
    else geluTanhRange(x + i0, out + i0, i1 - i0);
  });
}

void mergeBlocks(const float* x, float* out, long rows, long cols, int m) {
  if (m == 1) {
    forRange(rows * cols, kGrain, [&](long i0, long i1, int) { std::memcpy(out + i0, x + i0, (i1 - i0) * sizeof(float)); });
    return;
  }
  // m = 2: 0.5·(0.5a + 0.5b) + 0.5·(0.5c + 0.5d). Halving is exact, so each sum rounds once, as in the reference.
  forRange(rows, lmax(1, kGrain / lmax(1, cols)), [&](long r0, long r1, int) {
    for (long r = r0; r < r1; r++) {
      const float* a = x + r * 4 * cols;
      const float *b = a + cols, *c = b + cols, *d = c + cols;
      float* o = out + r * cols;
      for (long j = 0; j < cols; j++) {
        const float top = 0.5f * a[j] + 0.5f * b[j];
        const float bottom = 0.5f * c[j] + 0.5f * d[j];
        o[j] = 0.5f * top + 0.5f * bottom;
      }
    }
  });
}

void siluMul(const float* gate, const float* up, float* out, long n) {
  // Tasks split at multiples of 16, so that where a tier's vector and scalar tail differ in the last bit, an element
  // takes the same path in a batch's rows as in one row alone (rows are multiples of 16 wide in every model).
  forRange(cdiv(n, 16), kGrain / 64, [&](long u0, long u1, int) {
    const long i0 = u0 * 16, i1 = lmin(n, u1 * 16);
    siluMulRange(gate + i0, up + i0, out + i0, i1 - i0);
  });
}

void softmax(const float* x, float* out, long rows, long cols) {
  forRange(rows, lmax(1, kGrain / 4 / lmax(1, cols)), [&](long r0, long r1, int) {
    for (long r = r0; r < r1; r++) {
      const float* xr = x + r * cols;
      float* o = out + r * cols;
      const float m = maxOf(xr, cols);
      if (o != xr) std::memcpy(o, xr, cols * sizeof(float));
      // Chunk sums in f32, their total in double: a 150k-entry vocabulary row would otherwise drift by ~1e-5.
      double sum = 0;
      for (long c = 0; c < cols; c += 1024) sum += expSubSum(o + c, lmin(1024, cols - c), m);
      const float inv = static_cast<float>(1.0 / sum);
      for (long c = 0; c < cols; c++) o[c] *= inv;
    }
  });
}

inline void ropeRow(const float* __restrict x, const float* __restrict c, const float* __restrict s,
                    float* __restrict o, long half) {
  for (long j = 0; j < half; j++) {
    const float a = x[j], b = x[j + half];
    o[j] = a * c[j] - b * s[j];
    o[j + half] = b * c[j] + a * s[j];
  }
}

void rope(const float* x, const float* cos, const float* sin, float* out, long T, long H, long D) {
  const long half = D / 2;
  forRange(T * H, lmax(1, kGrain / lmax(1, D)), [&](long r0, long r1, int tid) {
    float* tmp = x == out ? static_cast<float*>(scratch(tid, kSlotA, D * sizeof(float))) : nullptr;
    for (long r = r0; r < r1; r++) {
      const long t = r / H;
      const float* src = x + r * D;
      if (tmp) {  // in place: read from a copy so the loop can be vectorized without aliasing checks
        std::memcpy(tmp, src, D * sizeof(float));
        src = tmp;
      }
      ropeRow(src, cos + t * half, sin + t * half, out + r * D, half);
    }
  });
}

void embedding(const void* table, WType type, const int32_t* ids, float* out, long T, long D, long V) {
  forRange(T, lmax(1, kGrain / lmax(1, D)), [&](long t0, long t1, int) {
    for (long t = t0; t < t1; t++) {
      const long row = ids[t];
      if (quant::isQuantized(type)) quant::dequantizeRow(type, static_cast<const uint8_t*>(table), V, D, row, out + t * D);
      else if (type == WType::BF16) widenBf16(static_cast<const uint16_t*>(table) + row * D, out + t * D, D);
      else std::memcpy(out + t * D, static_cast<const float*>(table) + row * D, D * sizeof(float));
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Attention for few query rows (short chunks, and decode where attentionDecode in attn_decode.h does not take it;
// attentionTiled below takes the rest): flash-style with an online softmax over blocks of BK keys. A task is one tile
// of queries for one KV head or for all KV heads (decode-sized tiles), optionally one slice of the keys; the query
// heads sharing a KV head are rows of the same tile, so each K/V block is packed once for all of them. A task's memory
// is a few tiles of rows × (BK or D) floats: scores never exist for more than BK keys at a time.

constexpr long BK = 64;             // keys per block: a packed 64×128 K block (32 KiB) stays in L1/L2
constexpr long kRowsPerTile = 48;  // query rows (queries × grouped heads) per tile: 8 micro-tile rows
// A tile of at most this many rows is decode-like: one task then covers every KV head of its key range, so K and V
// are read as whole contiguous rows instead of one head's interleaved slices (decode is bound by that stream).
constexpr long kDecodeRows = 12;
constexpr long kMaxSplits = 64;  // key ranges of one decode step (bounds the merge's stack arrays)

// Scratch of one task, in floats: per KV head handled, packed Q, the output accumulator and the running max and sum
// of each row; shared by the heads, one packed K block, a ragged-V panel, the scores (a block's for each head under
// attnDots), the packed probabilities, and the current key block's K and V rows for the task's heads.
struct AttnLayout {
  long headStride, qp, o, m, l;  // offsets within a head's share
  long kp, vp, sc, pp, kraw, vraw;  // offsets after the heads' shares
  long total;
};

inline AttnLayout attnLayout(long D, long Dp, long rowsP, long heads) {
  AttnLayout L{};
  long off = 0;
  auto take = [&](long n) {
    long at = off;
    off += roundUp(n, 16);  // 64-byte aligned
    return at;
  };
  L.qp = take(rowsP * D);
  L.o = take(rowsP * Dp);
  L.m = take(rowsP);
  L.l = take(rowsP);
  L.headStride = off;
  off = heads * L.headStride;
  L.kp = take(BK * D);
  L.vp = take(NR * BK);
  L.sc = take(heads * rowsP * BK);
  L.pp = take(rowsP * BK);
  L.kraw = take(BK * heads * D);
  L.vraw = take(BK * heads * D);
  L.total = off;
  return L;
}

struct AttnTile {
  const AttentionArgs* a;
  long R, D, Dp;
  long t0, nRows, rowsP;  // row i is query t0 + i / R of head g·R + i % R
  float *kp, *vp, *sc, *pp;
  const float *kBlock, *vBlock;  // the current key block's rows for this task's heads, ld floats apart
  long ld, g0;                   // g0: the first of those heads
  bool dots;                     // decode: scores as dot products of Q rows with the block's K rows (attnDots)
};

struct AttnHead {
  long g;
  float *qp, *o, *m, *l;
};

inline void attnBegin(const AttnTile& t, const AttnHead& h) {
  const AttentionArgs& a = *t.a;
  // Rows [nRows][D] for attnDots, else A panels [D][MR]; the scale folded in either way.
  for (long i = 0; i < (t.dots ? t.nRows : t.rowsP); i++) {
    float* d = t.dots ? h.qp + i * t.D : h.qp + i / MR * MR * t.D + i % MR;
    const long step = t.dots ? 1 : MR;
    if (i >= t.nRows) {
      for (long k = 0; k < t.D; k++) d[k * step] = 0.0f;
      continue;
    }
    const float* src = a.q + ((t.t0 + i / t.R) * a.Hq + h.g * t.R + i % t.R) * t.D;
    for (long k = 0; k < t.D; k++) d[k * step] = src[k] * a.scale;
  }
  std::memset(h.o, 0, t.rowsP * t.Dp * sizeof(float));
  for (long i = 0; i < t.rowsP; i++) {
    h.m[i] = -INFINITY;
    h.l[i] = 0.0f;
  }
}

// A head's scores for keys [0, nb) of the block: rows of BK floats at sc.
inline float* attnScoresOf(const AttnTile& t, const AttnHead& h) { return t.dots ? t.sc + (h.g - t.g0) * t.rowsP * BK : t.sc; }

// Decode's scores for keys [0, nb) of the block, every head of the task: each row of the block's K copy is read once,
// in memory order, as the GEMV reads a weight row. Packing K as a GEMM panel instead (a transposing copy of every key
// block) cost more than the products at a few query rows per head: 49 → 33 µs a layer with the KV in cache.
template <class Head>
inline void attnDots(const AttnTile& t, const Head& head, long count, long nb) {
  for (long j = 0; j < nb; j++)
    for (long gi = 0; gi < count; gi++) {
      const AttnHead h = head(gi);
      gemvRows(h.qp, static_cast<int>(t.nRows), t.D, t.kBlock + j * t.ld + (h.g - t.g0) * t.D, WType::F32, 1,
               attnScoresOf(t, h) + j, BK, nullptr);
    }
}

// Keys [j0, j0 + nb) for one KV head: scores (unless attnDots made them), online-softmax update, then O += P·V.
inline void attnBlock(const AttnTile& t, const AttnHead& h, long j0, long nb) {
  const AttentionArgs& a = *t.a;
  const long D = t.D, Dp = t.Dp, rowsP = t.rowsP;
  float* sc = attnScoresOf(t, h);
  if (!t.dots) {
    const long kPanels = cdiv(nb, NR);
    const float* kRows = t.kBlock + (h.g - t.g0) * D;
    for (long p = 0; p < kPanels; p++)
      packB(kRows + p * NR * t.ld, WType::F32, t.ld, static_cast<int>(lmin(NR, nb - p * NR)), D, t.kp + p * D * NR,
            false);
    for (long i0 = 0; i0 < rowsP; i0 += MR)
      for (long p = 0; p < kPanels; p++)
        microKernel(D, h.qp + i0 * D, t.kp + p * D * NR, NR, sc + i0 * BK + p * NR, BK, false, nullptr);
  }

  for (long i = 0; i < rowsP; i++) {
    float* s = sc + i * BK;
    long vis = 0;
    if (i < t.nRows) {
      const long lim = a.causal ? lmin(a.S, a.queryOffset + t.t0 + i / t.R + 1) : a.S;
      vis = lmax(0, lmin(nb, lim - j0));
    }
    if (vis > 0) {
      const float mx = maxOf(s, vis);
      const float mNew = mx > h.m[i] ? mx : h.m[i];
      const float corr = expScalar(h.m[i] - mNew);
      h.l[i] = h.l[i] * corr + expSubSum(s, vis, mNew);
      h.m[i] = mNew;
      if (corr != 1.0f) {
        float* orow = h.o + i * Dp;
        for (long d = 0; d < Dp; d++) orow[d] *= corr;
      }
    }
    for (long j = vis; j < nb; j++) s[j] = 0.0f;
  }

  // P as A panels [nb][MR]; V rows read in place 16 columns at a time, a ragged last group (D not a multiple of 16)
  // copied into a zero-padded panel.
  for (long i0 = 0; i0 < rowsP; i0 += MR) {
    float* d = t.pp + i0 * BK;
    for (long j = 0; j < nb; j++)
      for (long r = 0; r < MR; r++) d[j * MR + r] = sc[(i0 + r) * BK + j];
  }
  const float* vBlock = t.vBlock + (h.g - t.g0) * D;
  const long dFull = D / NR * NR;
  if (dFull < Dp) {
    for (long j = 0; j < nb; j++) {
      const float* src = vBlock + j * t.ld + dFull;
      for (long c = 0; c < NR; c++) t.vp[j * NR + c] = c < D - dFull ? src[c] : 0.0f;
    }
  }
  for (long i0 = 0; i0 < rowsP; i0 += MR) {
    for (long dp = 0; dp < dFull; dp += NR)
      microKernel(nb, t.pp + i0 * BK, vBlock + dp, t.ld, h.o + i0 * Dp + dp, Dp, true, nullptr);
    if (dFull < Dp) microKernel(nb, t.pp + i0 * BK, t.vp, NR, h.o + i0 * Dp + dFull, Dp, true, nullptr);
  }
}

inline void attnFinish(const AttnTile& t, const AttnHead& h) {
  const AttentionArgs& a = *t.a;
  for (long i = 0; i < t.nRows; i++) {
    float* dst = a.out + ((t.t0 + i / t.R) * a.Hq + h.g * t.R + i % t.R) * t.D;
    const float inv = 1.0f / h.l[i];
    for (long d = 0; d < t.D; d++) dst[d] = h.o[i * t.Dp + d] * inv;
  }
}

// Combines the partial softmaxes of one row from `splits` key ranges: each holds an unnormalized output row, its
// running max and its sum (zero when the range held no key the row may see).
inline void attnMerge(const float* const* o, const float* m, const float* l, long splits, long D, float* dst) {
  float mMax = -INFINITY;
  for (long sp = 0; sp < splits; sp++)
    if (l[sp] > 0.0f && m[sp] > mMax) mMax = m[sp];
  for (long d = 0; d < D; d++) dst[d] = 0.0f;
  float lSum = 0.0f;
  for (long sp = 0; sp < splits; sp++) {
    if (l[sp] <= 0.0f) continue;
    const float w = expScalar(m[sp] - mMax);
    lSum += l[sp] * w;
    for (long d = 0; d < D; d++) dst[d] += o[sp][d] * w;
  }
  const float inv = 1.0f / lSum;
  for (long d = 0; d < D; d++) dst[d] *= inv;
}

void attentionRows(const AttentionArgs& a) {
  const long T = a.T, S = a.S, D = a.D, Hkv = a.Hkv;
  const long R = a.Hq / Hkv;
  const long Tq = lmin(T, lmax(1, kRowsPerTile / R));
  const long rowsP = roundUp(Tq * R, MR);
  const long qTiles = cdiv(T, Tq);
  const long kvEnd = a.causal ? lmin(S, a.queryOffset + T) : S;  // no query sees keys at or past kvEnd
  const long Dp = roundUp(D, NR);
  const bool decode = qTiles == 1 && Tq * R <= kDecodeRows;
  const long gPer = decode ? Hkv : 1;  // KV heads per task
  const long hGroups = Hkv / gPer;
  const AttnLayout L = attnLayout(D, Dp, rowsP, gPer);

  // Fewer (heads, tile) tasks than threads (decode): split the keys too and merge the partial softmaxes afterwards.
  const int threads = poolThreads();
  const long base = hGroups * qTiles;
  long splits = 1;
  // A split as short as one key block (16 keys under attnDots, which needs no whole panel): a decode step at a few
  // hundred keys reads its KV rows from DRAM (the weights' stream evicted them), and one thread alone took ~100 µs a
  // layer for 0.6 MB.
  const long splitUnit = decode ? 16 : BK;
  if (threads > 1 && base < 2L * threads)
    splits = lmax(1, lmin(lmin(cdiv(2L * threads, base), kvEnd / splitUnit), kMaxSplits));
  const long splitLen = roundUp(cdiv(kvEnd, splits), splitUnit);
  splits = lmax(1, cdiv(kvEnd, splitLen));
  // Partial results per task: each head's O rows, then its maxima and sums.
  const long partHead = rowsP * (Dp + 2), partTask = gPer * partHead;
  float* partial =
      splits > 1 ? static_cast<float*>(scratch(0, kSlotShared, base * splits * partTask * sizeof(float))) : nullptr;

  parallelTasks(base * splits, [&](long task, int tid) {
    const long sp = task % splits, rest = task / splits;
    const long hg = rest % hGroups;
    // Later query tiles see more keys under a causal mask; handing them out first keeps the tail of the job short.
    const long qt = qTiles - 1 - rest / hGroups;
    float* buf = static_cast<float*>(scratch(tid, kSlotC, L.total * sizeof(float)));
    AttnTile t{&a, R, D, Dp, qt * Tq, (lmin(T, qt * Tq + Tq) - qt * Tq) * R, rowsP,
               buf + L.kp, buf + L.vp, buf + L.sc, buf + L.pp, nullptr, nullptr, gPer * D, hg * gPer, decode};
    float* kRaw = buf + L.kraw;
    float* vRaw = buf + L.vraw;
    auto head = [&](long gi) {
      float* hb = buf + gi * L.headStride;
      return AttnHead{hg * gPer + gi, hb + L.qp, hb + L.o, hb + L.m, hb + L.l};
    };
    for (long gi = 0; gi < gPer; gi++) attnBegin(t, head(gi));
    const long tileEnd = a.causal ? lmin(S, a.queryOffset + t.t0 + t.nRows / R) : S;
    const long kb = sp * splitLen, ke = lmin(lmin(kvEnd, kb + splitLen), tileEnd);
    const long ldkv = Hkv * D, span = gPer * D;
    for (long j0 = kb; j0 < ke; j0 += BK) {
      const long nb = lmin(BK, ke - j0);
      // Copied row by row first: in decode this is one sequential read of the whole block (every head), which the
      // hardware prefetcher follows, instead of the transposing loads and 16-column sweeps of the kernels below.
      const float* kSrc = a.k + j0 * ldkv + t.g0 * D;
      const float* vSrc = a.v + j0 * ldkv + t.g0 * D;
      if (span == ldkv) {
        std::memcpy(kRaw, kSrc, nb * span * sizeof(float));
        std::memcpy(vRaw, vSrc, nb * span * sizeof(float));
      } else {
        for (long j = 0; j < nb; j++) std::memcpy(kRaw + j * span, kSrc + j * ldkv, span * sizeof(float));
        for (long j = 0; j < nb; j++) std::memcpy(vRaw + j * span, vSrc + j * ldkv, span * sizeof(float));
      }
      t.kBlock = kRaw;
      t.vBlock = vRaw;
      if (decode) attnDots(t, head, gPer, nb);
      for (long gi = 0; gi < gPer; gi++) attnBlock(t, head(gi), j0, nb);
    }
    for (long gi = 0; gi < gPer; gi++) {
      const AttnHead h = head(gi);
      if (!partial) {
        attnFinish(t, h);
        continue;
      }
      float* part = partial + (rest * splits + sp) * partTask + gi * partHead;
      std::memcpy(part, h.o, rowsP * Dp * sizeof(float));
      std::memcpy(part + rowsP * Dp, h.m, rowsP * sizeof(float));
      std::memcpy(part + rowsP * Dp + rowsP, h.l, rowsP * sizeof(float));
    }
  });

  if (!partial) return;
  // Only decode-sized problems get here: a few rows per head, merged serially.
  float* oPtrs[kMaxSplits];
  float mv[kMaxSplits], lv[kMaxSplits];
  for (long rest = 0; rest < base; rest++) {
    const long hg = rest % hGroups, qt = qTiles - 1 - rest / hGroups;
    const long t0 = qt * Tq, nRows = (lmin(T, t0 + Tq) - t0) * R;
    for (long gi = 0; gi < gPer; gi++) {
      const long g = hg * gPer + gi;
      for (long i = 0; i < nRows; i++) {
        for (long sp = 0; sp < splits; sp++) {
          float* part = partial + (rest * splits + sp) * partTask + gi * partHead;
          oPtrs[sp] = part + i * Dp;
          mv[sp] = part[rowsP * Dp + i];
          lv[sp] = part[rowsP * Dp + rowsP + i];
        }
        attnMerge(oPtrs, mv, lv, splits, D, a.out + ((t0 + i / R) * a.Hq + g * R + i % R) * D);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Tiled attention for many query rows (vision encoder, prefill chunks). Everything runs transposed, one column per
// query row: the register tile produces scores as Sᵀ[keys][16 rows], so the online softmax is vertical vector math
// with no reductions across lanes, and the probabilities are already the B operand of Oᵀ[D][16 rows] += Vᵀ·Pᵀ.
// K and V are packed once per call (per round of KV heads), into the layouts the tile reads as its A operand: K in
// panels of kAttnMR keys × D, V in panels of up to kAttnMR output rows × keys. Every query tile then streams them from L2/L3
// with unit stride. On the vision shapes, reading V in place instead (a head's rows are Hkv·D floats apart) measured
// ~10 points of FMA peak slower, and packing V per query tile ~20. A task is up to kTilePanels panels of 16 query
// rows of one KV head; as in attentionRows, the query heads sharing a KV head are rows of the same tile, so one pass
// over K and V serves all of them. Memory: one round's packed K and V (kPackBudget, or one head's if larger) and a
// few tiles of rows × (D or BKT) floats per thread.

// Packing K and V costs about as much as 1/rows of the arithmetic (rows = queries × grouped heads): below ~64 rows
// attentionRows measured faster, for 1 and 6 query heads per KV head alike. Decode (T = 1) never comes here.
constexpr long kTiledMinRows = 64;
constexpr long BKT = 16 * kAttnMR;  // keys per block: the panel's scores (6-12 KiB) stay in L1 between the two products
constexpr long kTilePanels = 8;   // 128 query rows per task
constexpr long kPackKeys = 4 * BKT;  // keys per packing task
constexpr long kPackBudget = 16L << 20;  // bytes of packed K and V per round of heads: about the L3, whatever S

// Output rows [d0, D) are covered by V panels of kAttnMR rows while that leaves no awkward rest, then two halves
// (4 + 4 rather than 6 + 2, 4 + 3 rather than 6 + 1), so that the tile keeps enough accumulators in flight. No
// division by a variable: this runs per key while packing V.
inline int dTile(long rest) {
  if (rest <= kAttnMR) return static_cast<int>(rest);
  if (rest < kAttnMR + kAttnMR / 2) return static_cast<int>((rest + 1) / 2);
  return static_cast<int>(kAttnMR);
}

// Keys [j0, j1) of KV head g (j0 a multiple of BKT): K into panels [Sp/kAttnMR][D][kAttnMR]; V block-major, each block of BKT
// keys one contiguous [D][BKT] region made of panels [BKT][m] (the group of output rows starting at d0 at d0·BKT), so
// a block's V is one stream however many heads sit between two of its rows in memory. Zero past kvEnd.
inline void attnPack(const AttentionArgs& a, long g, long j0, long j1, long kvEnd, float* kp, float* vp) {
  const long D = a.D, ld = a.Hkv * D;
  for (long j = j0; j < j1; j += kAttnMR)
    attnPackK(a.k + j * ld + g * D, ld, static_cast<int>(lmax(0, lmin(kAttnMR, kvEnd - j))), D, kp + j * D);
  for (long j = j0; j < j1; j++) {
    const float* src = a.v + j * ld + g * D;
    float* blk = vp + (j / BKT) * BKT * D;
    const long jb = j % BKT;
    for (long d0 = 0; d0 < D;) {
      const int mt = dTile(D - d0);
      if (j < kvEnd) attnCopySmall(src + d0, mt, blk + d0 * BKT + jb * mt);
      else for (int r = 0; r < mt; r++) blk[d0 * BKT + jb * mt + r] = 0.0f;
      d0 += mt;
    }
  }
}

void attentionTiled(const AttentionArgs& a) {
  const long T = a.T, S = a.S, D = a.D, Hkv = a.Hkv, Hq = a.Hq, R = Hq / Hkv;
  const long kvEnd = a.causal ? lmin(S, a.queryOffset + T) : S;  // no query sees keys at or past kvEnd
  const long Sp = roundUp(kvEnd, BKT);
  const long headFloats = 2 * Sp * D;  // packed K then packed V
  const long maxHeads = lmax(1, lmin(Hkv, kPackBudget / static_cast<long>(sizeof(float)) / headFloats));
  const long rounds = cdiv(Hkv, maxHeads), roundHeads = cdiv(Hkv, rounds);  // equal rounds balance better
  float* packed = static_cast<float*>(scratch(0, kSlotShared, roundHeads * headFloats * sizeof(float)));

  const float qScale = static_cast<float>(a.scale * 1.4426950408889634);  // log2 e: the softmax works in base 2
  const long rows = T * R;  // per KV head: row i is query i / R of query head g·R + i % R
  const long panelsPerHead = cdiv(rows, 16);
  const int threads = poolThreads();
  // Smaller tiles only when the big ones would leave threads idle.
  const long tilePanels = lmax(1, lmin(kTilePanels, cdiv(roundHeads * panelsPerHead, 4L * threads)));
  const long qTiles = cdiv(panelsPerHead, tilePanels);
  const long rowsP = tilePanels * 16;
  long off = 0;
  auto take = [&](long n) {
    const long at = off;
    off += roundUp(n, 16);  // 64-byte aligned
    return at;
  };
  const long oQt = take(rowsP * D), oOt = take(rowsP * D), oM = take(rowsP), oL = take(rowsP), oLim = take(rowsP),
             oCorr = take(16), oSc = take(BKT * 16), total = off;

  for (long g0 = 0; g0 < Hkv; g0 += roundHeads) {
    const long nh = lmin(roundHeads, Hkv - g0);
    const long packTasks = cdiv(Sp, kPackKeys);
    parallelTasks(nh * packTasks, [&](long task, int) {
      const long gi = task / packTasks, j0 = task % packTasks * kPackKeys;
      float* kp = packed + gi * headFloats;
      attnPack(a, g0 + gi, j0, lmin(Sp, j0 + kPackKeys), kvEnd, kp, kp + Sp * D);
    });

    parallelTasks(nh * qTiles, [&](long task, int tid) {
      const long gi = task % nh, g = g0 + gi;
      // Under a causal mask later tiles see more keys; handing them out first keeps the tail of the job short.
      const long qt = qTiles - 1 - task / nh;
      const long r0 = qt * rowsP, nRows = lmin(rows, r0 + rowsP) - r0, nPanels = cdiv(nRows, 16);
      float* buf = static_cast<float*>(scratch(tid, kSlotC, total * sizeof(float)));
      float *qt16 = buf + oQt, *ot16 = buf + oOt, *m = buf + oM, *l = buf + oL, *corr = buf + oCorr, *sc = buf + oSc;
      int32_t* lim = reinterpret_cast<int32_t*>(buf + oLim);  // per row: the first key it may not see

      // Qᵀ panels [D][16], scaled; rows past the end are zero queries that see what the last real row sees, so they
      // stay finite and change nothing.
      auto rowOf = [&](long i) {  // offset of tile row i in q and out
        const long t = (r0 + i) / R, h = g * R + (r0 + i) % R;
        return (t * Hq + h) * D;
      };
      for (long p = 0; p < nPanels; p++) {
        const float* src[16];
        for (long c = 0; c < 16; c++) {
          const long i = p * 16 + c;
          src[c] = i < nRows ? a.q + rowOf(i) : nullptr;
          lim[i] = i < nRows ? static_cast<int32_t>(a.causal ? lmin(S, a.queryOffset + (r0 + i) / R + 1) : S)
                             : lim[nRows - 1];
          m[i] = -FLT_MAX;
          l[i] = 0.0f;
        }
        attnLoadPanel(src, D, qScale, qt16 + p * 16 * D);
      }
      std::memset(ot16, 0, nPanels * 16 * D * sizeof(float));

      const float* kHead = packed + gi * headFloats;
      const float* vHead = kHead + Sp * D;
      const long tileEnd = lim[nPanels * 16 - 1];  // rows are in query order, so the last one sees the most
      for (long j0 = 0; j0 < tileEnd; j0 += BKT) {
        for (long p = 0; p < nPanels; p++) {
          const int32_t* limP = lim + p * 16;
          // Only the keys the panel's last row may see; a block past all of them is skipped outright.
          const long cnt = lmin(BKT, limP[15] - j0);
          if (cnt <= 0) continue;
          const float* qp = qt16 + p * 16 * D;
          float* op = ot16 + p * 16 * D;
          for (long grp = 0; grp < cdiv(cnt, kAttnMR); grp++)
            attnTile(kAttnMR, D, kHead + (j0 + grp * kAttnMR) * D, kAttnMR, qp, 16, sc + grp * kAttnMR * 16, 16,
                     nullptr);
          attnSoftmax16(sc, cnt, j0, j0 + cnt > limP[0] ? limP : nullptr, m + p * 16, l + p * 16, corr);
          for (long d0 = 0; d0 < D;) {
            const int mt = dTile(D - d0);
            attnTile(mt, cnt, vHead + j0 * D + d0 * BKT, mt, sc, 16, op + d0 * 16, 16, corr);
            d0 += mt;
          }
        }
      }

      for (long p = 0; p < nPanels; p++) {
        float* dst[16];
        float inv[16];
        const int n = static_cast<int>(lmin(16, nRows - p * 16));
        for (int c = 0; c < n; c++) {
          dst[c] = a.out + rowOf(p * 16 + c);
          inv[c] = 1.0f / l[p * 16 + c];
        }
        attnStorePanel(ot16 + p * 16 * D, D, inv, dst, n);
      }
    });
  }
}

#include "attn_decode.h"

void attention(const AttentionArgs& a) {
  if (a.T == 0 || a.D == 0) return;
  if (attnDecodeFits(a)) attentionDecode(a);
  else if (a.T > 1 && a.T * (a.Hq / a.Hkv) >= kTiledMinRows) attentionTiled(a);
  else attentionRows(a);
}

#include "grad_impl.h"

double fmaLoopK(long iters, float* sink) { return fmaLoop(iters, sink); }
float sumK(const float* p, long n) { return sumRange(p, n); }

// In KernelTable's field order.
const KernelTable table = {
    VL3_ISA_NAME, VL3_BF16_DOT != 0, &matmul,    &matmulMany, &add,  &mul,      &rmsNorm,   &layerNorm, &gelu, &mergeBlocks,
    &siluMul,     &softmax,   &rope, &attention, &embedding,
    &matmulBackward, &attentionBackward, &crossEntropy, &rmsNormBackward, &layerNormBackward, &geluBackward,
    &siluMulBackward, &ropeBackward, &mergeBlocksBackward, &embeddingBackward, &adamw, &fmaLoopK,  &sumK,
};

}  // namespace
}  // namespace VL3_ISA
}  // namespace vl3
