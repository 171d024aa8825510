// Own op drivers: blocking, threading and the online softmax are written once and instantiated per ISA, so the scalar fallback keeps the AVX2 path's structure and memory bounds.
// Include exactly once per translation unit, after an isa_*.h, with VL3_ISA naming that header's namespace and
// VL3_ISA_NAME its display name. Everything lands in an anonymous namespace inside vl3::VL3_ISA.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels.h"
#include "pool.h"

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

// Blocking of the packed GEMM: a KC×NR panel of B (16 KiB) stays in L1 while an MC×KC block of A (144 KiB) stays in
// L2 (512 KiB on Zen 3), and each task's KC×(≤NB) slice of packed B is read from L2/L3.
constexpr long KC = 256;
constexpr long MC = 144;
constexpr long NB = 2048;
// Up to this many rows of x, stream each weight row once (GEMV); packing would cost more than it saves.
constexpr long kGemvMaxM = 4;

// Rows [0, mc) of x into A panels of MR rows, [kc][MR] each, zero rows past mc.
inline void packA(const float* x, long ldx, long mc, long kc, float* dst) {
  for (long i0 = 0; i0 < mc; i0 += MR) {
    float* d = dst + i0 * kc;
    for (long r = 0; r < MR; r++) {
      if (i0 + r < mc) {
        const float* s = x + (i0 + r) * ldx;
        for (long k = 0; k < kc; k++) d[k * MR + r] = s[k];
      } else {
        for (long k = 0; k < kc; k++) d[k * MR + r] = 0.0f;
      }
    }
  }
}

// A micro-tile that may be cut by the edge of C: full tiles go straight to the micro-kernel, edge tiles through a
// local buffer.
inline void tile(long kc, const float* A, const float* B, float* C, long ldc, long mr, long nr, bool accumulate,
                 const float* bias) {
  if (mr == MR && nr == NR) {
    microKernel(kc, A, B, C, ldc, accumulate, bias);
    return;
  }
  alignas(64) float t[MR * NR];
  microKernel(kc, A, B, t, NR, false, bias);
  for (long i = 0; i < mr; i++)
    for (long j = 0; j < nr; j++) C[i * ldc + j] = accumulate ? C[i * ldc + j] + t[i * NR + j] : t[i * NR + j];
}

inline long wBytes(WType t) { return t == WType::BF16 ? 2 : 4; }

void gemm(const MatmulArgs& a, const float* bias) {
  const long M = a.M, N = a.N, K = a.K, esz = wBytes(a.wType);
  const long nPanels = cdiv(N, NR);
  const int threads = poolThreads();
  // Split N first (each task packs only its own columns of w); split M too when N alone gives too few tasks.
  long nTn = threads == 1 ? cdiv(N, NB) : lmax(threads * cdiv(N, threads * NB), 4L * threads);
  nTn = lmin(nTn, nPanels);
  long nTm = 1;
  if (threads > 1 && nTn < 4L * threads) nTm = lmin(cdiv(M, MR), cdiv(4L * threads, nTn));
  const long mChunk = roundUp(cdiv(M, nTm), MR);
  nTm = cdiv(M, mChunk);
  parallelTasks(nTn * nTm, [&](long task, int tid) {
    const long tn = task % nTn, tm = task / nTn;
    const long p0 = tn * nPanels / nTn, p1 = (tn + 1) * nPanels / nTn;
    const long m0 = tm * mChunk, m1 = lmin(M, m0 + mChunk);
    if (p0 >= p1 || m0 >= m1) return;
    float* bp = static_cast<float*>(scratch(tid, kSlotB, (p1 - p0) * KC * NR * sizeof(float)));
    float* ap = static_cast<float*>(scratch(tid, kSlotA, MC * KC * sizeof(float)));
    const long mBlocks = cdiv(m1 - m0, MC);
    const long mc0 = roundUp(cdiv(m1 - m0, mBlocks), MR);  // equal A blocks rather than a ragged last one
    for (long pc = 0; pc < K; pc += KC) {
      const long kc = lmin(KC, K - pc);
      for (long p = p0; p < p1; p++)
        packB(static_cast<const char*>(a.w) + (p * NR * K + pc) * esz, a.wType, K, static_cast<int>(lmin(NR, N - p * NR)),
              kc, bp + (p - p0) * kc * NR);
      for (long ic = m0; ic < m1; ic += mc0) {
        const long mc = lmin(mc0, m1 - ic);
        packA(a.x + ic * K + pc, K, mc, kc, ap);
        for (long p = p0; p < p1; p++) {
          const long nr = lmin(NR, N - p * NR);
          const float* b = bp + (p - p0) * kc * NR;
          for (long ir = 0; ir < mc; ir += MR)
            tile(kc, ap + ir * kc, b, a.out + (ic + ir) * N + p * NR, N, lmin(MR, mc - ir), nr, pc > 0,
                 pc == 0 && bias ? bias + p * NR : nullptr);
        }
      }
    }
  });
}

void gemv(const MatmulArgs& a, const float* bias) {
  const long N = a.N, K = a.K, esz = wBytes(a.wType);
  const int threads = poolThreads();
  // Several contiguous row ranges per thread so that one thread slowed by a noisy neighbour does not hold up the
  // others; tiny problems stay on one thread.
  long tasks = threads == 1 || a.M * N * K < (1L << 15) ? 1 : lmin(cdiv(N, 16), 4L * threads);
  auto body = [&](long t, int) {
    const long n0 = N * t / tasks, n1 = N * (t + 1) / tasks;
    gemvRows(a.x, static_cast<int>(a.M), K, static_cast<const char*>(a.w) + n0 * K * esz, a.wType, n1 - n0,
             a.out + n0, N, bias ? bias + n0 : nullptr);
  };
  if (tasks == 1) body(0, 0);
  else parallelTasks(tasks, body);
}

void matmul(const MatmulArgs& a) {
  if (a.M == 0 || a.N == 0) return;
  const float* bias = nullptr;
  if (a.bias) {
    // Widened and padded to whole panels once per call: N values, negligible beside the weights.
    const long np = roundUp(a.N, NR);
    float* b = static_cast<float*>(scratch(0, kSlotShared, np * sizeof(float)));
    if (a.biasType == WType::BF16) widenBf16(static_cast<const uint16_t*>(a.bias), b, a.N);
    else std::memcpy(b, a.bias, a.N * sizeof(float));
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

void siluMul(const float* gate, const float* up, float* out, long n) {
  forRange(n, kGrain / 4, [&](long i0, long i1, int) { siluMulRange(gate + i0, up + i0, out + i0, i1 - i0); });
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

void embedding(const void* table, WType type, const int32_t* ids, float* out, long T, long D) {
  forRange(T, lmax(1, kGrain / lmax(1, D)), [&](long t0, long t1, int) {
    for (long t = t0; t < t1; t++) {
      const long row = ids[t];
      if (type == WType::BF16) widenBf16(static_cast<const uint16_t*>(table) + row * D, out + t * D, D);
      else std::memcpy(out + t * D, static_cast<const float*>(table) + row * D, D * sizeof(float));
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Attention: flash-style, one task per (KV head, tile of queries[, slice of keys]). The query heads sharing a KV
// head are one tile's rows, so each K/V block is packed once for all of them. Per task memory is a few tiles of
// rows × (BK or D) floats; scores never exist for more than BK keys at a time.

constexpr long BK = 64;          // keys per block: packed K and V blocks of 64×128 floats stay in L1/L2
constexpr long kRowsPerTile = 48;  // query rows (queries × grouped heads) per task: 8 micro-tile rows

struct AttnLayout {
  long D, Dp, rowsP;
  long qp, kp, vp, sc, pp, o, m, l, total;  // float offsets, each 64-byte aligned
};

inline AttnLayout attnLayout(long D, long rowsP) {
  AttnLayout L{};
  L.D = D;
  L.Dp = roundUp(D, NR);
  L.rowsP = rowsP;
  long off = 0;
  auto take = [&](long n) {
    long at = off;
    off += roundUp(n, 16);
    return at;
  };
  L.qp = take(rowsP * D);
  L.kp = take(BK * D);
  L.vp = take(L.Dp * BK);
  L.sc = take(rowsP * BK);
  L.pp = take(rowsP * BK);
  L.o = take(rowsP * L.Dp);
  L.m = take(rowsP);
  L.l = take(rowsP);
  L.total = off;
  return L;
}

void attention(const AttentionArgs& a) {
  const long T = a.T, S = a.S, D = a.D, Hq = a.Hq, Hkv = a.Hkv;
  if (T == 0 || D == 0) return;
  const long R = Hq / Hkv;
  const long Tq = lmin(T, lmax(1, kRowsPerTile / R));
  const long rows = Tq * R, rowsP = roundUp(rows, MR);
  const long qTiles = cdiv(T, Tq);
  const long kvEnd = a.causal ? lmin(S, a.queryOffset + T) : S;  // no query sees keys at or past kvEnd
  const long ldkv = Hkv * D;
  const AttnLayout L = attnLayout(D, rowsP);
  const long Dp = L.Dp;

  // Decode-like problems have fewer (head, tile) tasks than threads: split the keys too and merge the partial
  // softmaxes afterwards (flash-decoding).
  const int threads = poolThreads();
  const long base = Hkv * qTiles;
  long splits = 1;
  if (threads > 1 && base < 2L * threads) splits = lmax(1, lmin(cdiv(2L * threads, base), kvEnd / (4 * BK)));
  const long splitLen = roundUp(cdiv(kvEnd, splits), BK);
  splits = lmax(1, cdiv(kvEnd, splitLen));
  const long partStride = rowsP * (Dp + 2);
  float* partial = splits > 1
      ? static_cast<float*>(scratch(0, kSlotShared, base * splits * partStride * sizeof(float)))
      : nullptr;

  parallelTasks(base * splits, [&](long task, int tid) {
    const long sp = task % splits, rest = task / splits;
    const long g = rest % Hkv;
    // Later query tiles see more keys under a causal mask; handing them out first keeps the tail of the job short.
    const long qt = qTiles - 1 - rest / Hkv;
    const long t0 = qt * Tq, t1 = lmin(T, t0 + Tq);
    const long nRows = (t1 - t0) * R;
    float* buf = static_cast<float*>(scratch(tid, kSlotC, L.total * sizeof(float)));
    float *qp = buf + L.qp, *kp = buf + L.kp, *vp = buf + L.vp, *sc = buf + L.sc, *pp = buf + L.pp, *o = buf + L.o;
    float *mRow = buf + L.m, *lRow = buf + L.l;

    // Row i of the tile is query t0 + i / R of head g·R + i % R; the scale is folded into Q here.
    for (long i0 = 0; i0 < rowsP; i0 += MR) {
      float* d = qp + i0 * D;
      for (long r = 0; r < MR; r++) {
        const long i = i0 + r;
        if (i < nRows) {
          const float* src = a.q + ((t0 + i / R) * Hq + g * R + i % R) * D;
          for (long k = 0; k < D; k++) d[k * MR + r] = src[k] * a.scale;
        } else {
          for (long k = 0; k < D; k++) d[k * MR + r] = 0.0f;
        }
      }
    }
    std::memset(o, 0, rowsP * Dp * sizeof(float));
    for (long i = 0; i < rowsP; i++) {
      mRow[i] = -INFINITY;
      lRow[i] = 0.0f;
    }

    const long tileEnd = a.causal ? lmin(S, a.queryOffset + t1) : S;
    const long kb = sp * splitLen, ke = lmin(lmin(kvEnd, kb + splitLen), tileEnd);
    for (long j0 = kb; j0 < ke; j0 += BK) {
      const long nb = lmin(BK, ke - j0);
      const long kPanels = cdiv(nb, NR);
      for (long p = 0; p < kPanels; p++)
        packB(a.k + (j0 + p * NR) * ldkv + g * D, WType::F32, ldkv, static_cast<int>(lmin(NR, nb - p * NR)), D,
              kp + p * D * NR);
      for (long i0 = 0; i0 < rowsP; i0 += MR)
        for (long p = 0; p < kPanels; p++)
          microKernel(D, qp + i0 * D, kp + p * D * NR, sc + i0 * BK + p * NR, BK, false, nullptr);

      for (long i = 0; i < rowsP; i++) {
        float* s = sc + i * BK;
        long vis = 0;
        if (i < nRows) {
          const long lim = a.causal ? lmin(S, a.queryOffset + t0 + i / R + 1) : S;
          vis = lmax(0, lmin(nb, lim - j0));
        }
        if (vis > 0) {
          const float mx = maxOf(s, vis);
          const float mNew = mx > mRow[i] ? mx : mRow[i];
          const float corr = expScalar(mRow[i] - mNew);
          lRow[i] = lRow[i] * corr + expSubSum(s, vis, mNew);
          mRow[i] = mNew;
          if (corr != 1.0f) {
            float* orow = o + i * Dp;
            for (long d = 0; d < Dp; d++) orow[d] *= corr;
          }
        }
        for (long j = vis; j < nb; j++) s[j] = 0.0f;
      }

      // P·V with P as A panels [nb][MR] and V as B panels [nb][16] (zero-padded past D).
      for (long i0 = 0; i0 < rowsP; i0 += MR) {
        float* d = pp + i0 * BK;
        for (long j = 0; j < nb; j++)
          for (long r = 0; r < MR; r++) d[j * MR + r] = sc[(i0 + r) * BK + j];
      }
      for (long dp = 0; dp < Dp; dp += NR) {
        const long cols = lmin(NR, D - dp);
        float* d = vp + dp * BK;
        for (long j = 0; j < nb; j++) {
          const float* src = a.v + (j0 + j) * ldkv + g * D + dp;
          for (long c = 0; c < cols; c++) d[j * NR + c] = src[c];
          for (long c = cols; c < NR; c++) d[j * NR + c] = 0.0f;
        }
      }
      for (long i0 = 0; i0 < rowsP; i0 += MR)
        for (long dp = 0; dp < Dp; dp += NR)
          microKernel(nb, pp + i0 * BK, vp + dp * BK, o + i0 * Dp + dp, Dp, true, nullptr);
    }

    if (partial) {
      float* part = partial + (rest * splits + sp) * partStride;
      std::memcpy(part, o, rowsP * Dp * sizeof(float));
      std::memcpy(part + rowsP * Dp, mRow, rowsP * sizeof(float));
      std::memcpy(part + rowsP * Dp + rowsP, lRow, rowsP * sizeof(float));
      return;
    }
    for (long i = 0; i < nRows; i++) {
      float* dst = a.out + ((t0 + i / R) * Hq + g * R + i % R) * D;
      const float inv = 1.0f / lRow[i];
      for (long d = 0; d < D; d++) dst[d] = o[i * Dp + d] * inv;
    }
  });

  if (!partial) return;
  for (long rest = 0; rest < base; rest++) {
    const long g = rest % Hkv, qt = qTiles - 1 - rest / Hkv;
    const long t0 = qt * Tq, t1 = lmin(T, t0 + Tq);
    const long nRows = (t1 - t0) * R;
    const float* parts = partial + rest * splits * partStride;
    for (long i = 0; i < nRows; i++) {
      float mMax = -INFINITY;
      for (long sp = 0; sp < splits; sp++) {
        const float* p = parts + sp * partStride + rowsP * Dp;
        if (p[rowsP + i] > 0.0f && p[i] > mMax) mMax = p[i];
      }
      float* dst = a.out + ((t0 + i / R) * Hq + g * R + i % R) * D;
      for (long d = 0; d < D; d++) dst[d] = 0.0f;
      float lSum = 0.0f;
      for (long sp = 0; sp < splits; sp++) {
        const float* p = parts + sp * partStride;
        const float m = p[rowsP * Dp + i], l = p[rowsP * Dp + rowsP + i];
        if (l <= 0.0f) continue;  // this slice held no key the row may see
        const float wgt = expScalar(m - mMax);
        lSum += l * wgt;
        for (long d = 0; d < D; d++) dst[d] += p[i * Dp + d] * wgt;
      }
      const float inv = 1.0f / lSum;
      for (long d = 0; d < D; d++) dst[d] *= inv;
    }
  }
}

double fmaLoopK(long iters, float* sink) { return fmaLoop(iters, sink); }
float sumK(const float* p, long n) { return sumRange(p, n); }

const KernelTable table = {
    VL3_ISA_NAME, &matmul, &add, &mul, &rmsNorm, &siluMul, &softmax, &rope, &attention, &embedding, &fmaLoopK, &sumK,
};

}  // namespace
}  // namespace VL3_ISA
}  // namespace vl3
