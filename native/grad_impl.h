// Own backward kernels: training's passes written once over the forward's GEMM and ISA primitives, so every tier trains at native speed with numerics we define (src/tensor/host-gradients.ts is the definition they are tested against).
// Included by ops_impl.h inside vl3::VL3_ISA's anonymous namespace, after the forward ops it reuses (gemm, matmul,
// forRange, the ISA's gemvRows/expSubSum/maxOf/widenBf16). Every product here is exact f32 (kernels.h) whatever the
// context's compute mode, except matmulBackward's: its two GEMMs are most of a training step's work, so under
// Compute::Bf16 they round their operands to bf16 and multiply them with the tier's bf16 dot product, as the forward
// matmul does (the numerics of bf16 training on a GPU; host-gradients.ts defines them the same way).

// ---------------------------------------------------------------------------------------------------------------
// Matmul: out = x·wᵀ (+bias) gives dx = dy·w, dw += dyᵀ·x, dbias += Σ rows of dy. Both products are the forward's
// packed GEMM with transposed packing (GemmLayout), so they run at its speed without a transposed copy in memory.

// dst[n] += Σ_m src[m, n] for n < N, rows summed in double in row order (deterministic for any thread count).
inline void addColumnSums(const float* src, long M, long N, float* dst) {
  constexpr long kCols = 256;
  forRange(cdiv(N, kCols), lmax(1, kGrain / lmax(1, M * kCols)), [&](long b0, long b1, int) {
    for (long n0 = b0 * kCols; n0 < lmin(N, b1 * kCols); n0 += kCols) {
      const long nc = lmin(kCols, N - n0);
      double acc[kCols] = {};
      for (long m = 0; m < M; m++)
        for (long j = 0; j < nc; j++) acc[j] += src[m * N + n0 + j];
      for (long j = 0; j < nc; j++) dst[n0 + j] += static_cast<float>(acc[j]);
    }
  });
}

// The packed GEMM in the compute mode asked for: bf16 dot products on a tier with them, else f32 on (rounded) values.
inline void backwardGemm(const MatmulArgs& a, const GemmLayout& L) {
#if VL3_BF16_DOT
  if (a.compute == Compute::Bf16) {
    gemm<true>(a, nullptr, false, L);
    return;
  }
#endif
  gemm<false>(a, nullptr, a.compute == Compute::Bf16, L);
}

void matmulBackward(const MatmulBackwardArgs& g) {
  const long M = g.M, N = g.N, K = g.K;
  if (M == 0) return;
  if (g.dx && K > 0) {
    if (N == 0) {
      std::memset(g.dx, 0, M * K * sizeof(float));
    } else {
      // dx[M,K] = dy[M,N]·(wᵀ)ᵀ: the GEMM's B operand is wᵀ, element (k, n) at w[n·K + k].
      const MatmulArgs a{g.dy, g.w, g.wType, nullptr, WType::None, g.dx, M, K, N, g.compute};
      backwardGemm(a, layoutBT(K));
    }
  }
  if (g.dw && N > 0 && K > 0) {
    // dw[N,K] += dyᵀ[N,M]·(xᵀ)ᵀ: A is dyᵀ (element (n, m) at dy[m·N + n]), B is xᵀ (element (k, m) at x[m·K + k]).
    const MatmulArgs a{g.dy, g.x, WType::F32, nullptr, WType::None, g.dw, N, K, M, g.compute};
    backwardGemm(a, layoutTransposedAdd(N, K));
  }
  if (g.dbias) addColumnSums(g.dy, M, N, g.dbias);
}

// ---------------------------------------------------------------------------------------------------------------
// Row ops with parameter gradients: each task sums its rows' parameter gradients in its own double buffer, and the
// buffers are added in task order, so the result depends on the thread count only, never on scheduling.

// f(r0, r1, partial): rows [r0, r1) with `width` zeroed doubles of their own; then dst[i] += Σ_tasks partial[i].
template <class F>
void rowsWithPartials(long rows, long cols, long width, float* const* dst, int nDst, const F& f) {
  const int threads = poolThreads();
  const long tasks = threads == 1 ? 1 : lmax(1, lmin(cdiv(rows * cols, kGrain), 4L * threads));
  double* partial = static_cast<double*>(scratch(0, kSlotShared, tasks * width * sizeof(double)));
  std::memset(partial, 0, tasks * width * sizeof(double));
  auto body = [&](long t, int) { f(rows * t / tasks, rows * (t + 1) / tasks, partial + t * width); };
  if (tasks == 1) body(0, 0);
  else parallelTasks(tasks, body);
  for (int d = 0; d < nDst; d++) {
    if (!dst[d]) continue;
    for (long c = 0; c < cols; c++) {
      double s = 0;
      for (long t = 0; t < tasks; t++) s += partial[t * width + d * cols + c];
      dst[d][c] += static_cast<float>(s);
    }
  }
}

// Weights as f32 for the row loops: in place, or widened into the caller's shared scratch.
inline const float* widenedWeight(const void* w, WType type, long cols) {
  if (type != WType::BF16) return static_cast<const float*>(w);
  float* t = static_cast<float*>(scratch(0, kSlotPackedA, cols * sizeof(float)));
  widenBf16(static_cast<const uint16_t*>(w), t, cols);
  return t;
}

// The sums run in double and the per-element arithmetic in double, as the definition does: these are a few passes
// over a row, memory-bound next to the matmuls around them. dx may be dy (each element is read before it is written).
void rmsNormBackward(const float* dy, const float* x, const void* w, WType wType, float eps, float* dx, float* dweight,
                     long rows, long cols) {
  const float* wf = widenedWeight(w, wType, cols);
  float* dst[1] = {dweight};
  rowsWithPartials(rows, cols, cols, dst, 1, [&](long r0, long r1, double* dw) {
    for (long r = r0; r < r1; r++) {
      const float* xr = x + r * cols;
      const float* g = dy + r * cols;
      float* o = dx + r * cols;
      double sq = 0;
      for (long i = 0; i < cols; i++) sq += static_cast<double>(xr[i]) * xr[i];
      // The forward's 1/rms, rounded to f32 as the definition has it.
      const double inv = static_cast<float>(1.0 / std::sqrt(static_cast<double>(static_cast<float>(sq / cols)) + eps));
      double dot = 0;
      for (long i = 0; i < cols; i++) dot += static_cast<double>(g[i]) * wf[i] * xr[i] * inv;
      const double mean = dot / cols;
      for (long i = 0; i < cols; i++) {
        const double n = xr[i] * inv, gi = g[i];
        if (dweight) dw[i] += gi * n;
        o[i] = static_cast<float>(inv * (gi * wf[i] - n * mean));
      }
    }
  });
}

void layerNormBackward(const float* dy, const float* x, const void* w, WType wType, float eps, float* dx,
                       float* dweight, float* dbias, long rows, long cols) {
  const float* wf = widenedWeight(w, wType, cols);
  float* dst[2] = {dweight, dbias};
  rowsWithPartials(rows, cols, 2 * cols, dst, 2, [&](long r0, long r1, double* part) {
    double* dw = part;
    double* db = part + cols;
    for (long r = r0; r < r1; r++) {
      const float* xr = x + r * cols;
      const float* g = dy + r * cols;
      float* o = dx + r * cols;
      double sum = 0;
      for (long i = 0; i < cols; i++) sum += xr[i];
      const double mean = sum / cols;
      double sq = 0;
      for (long i = 0; i < cols; i++) sq += (xr[i] - mean) * (xr[i] - mean);
      const double inv = 1.0 / std::sqrt(sq / cols + eps);
      // With n = (x − μ)·inv and dn = dy·weight: dx = inv·(dn − mean(dn) − n·mean(dn·n)).
      double dnMean = 0, dnDot = 0;
      for (long i = 0; i < cols; i++) {
        const double dn = static_cast<double>(g[i]) * wf[i];
        dnMean += dn;
        dnDot += dn * (xr[i] - mean) * inv;
      }
      dnMean /= cols;
      dnDot /= cols;
      for (long i = 0; i < cols; i++) {
        const double n = (xr[i] - mean) * inv, gi = g[i];
        dw[i] += gi * n;
        db[i] += gi;
        o[i] = static_cast<float>(inv * (gi * wf[i] - dnMean - n * dnDot));
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Elementwise: f32, exp through the ISA's vector exp a chunk at a time (the transcendental is most of the cost).

constexpr long kExpChunk = 256;

// gelu'(u): tanh form as s + 2u·s(1 − s)·c(1 + 3·0.044715u²) with s = σ(2z) = ½(1 + tanh z), which is the
// definition's ½(1 + t) + ½u(1 − t²)·c(…) without 1 ± t cancelling (1 − s is taken as e·s, e = exp(−2z)); erf form
// Φ(u) + u·φ(u), Φ through erfc for the same reason. dx may be dy or x.
void geluBackward(const float* dy, const float* x, float* dx, long n, bool erf) {
  constexpr float c = 0.7978845608028654f, a = 0.044715f;
  forRange(cdiv(n, kExpChunk), lmax(1, kGrain / 4 / kExpChunk), [&](long u0, long u1, int) {
    float e[kExpChunk];
    for (long i0 = u0 * kExpChunk; i0 < lmin(n, u1 * kExpChunk); i0 += kExpChunk) {
      const long len = lmin(kExpChunk, n - i0);
      const float* u = x + i0;
      if (erf) {
        for (long i = 0; i < len; i++) e[i] = -0.5f * u[i] * u[i];
        expSubSum(e, len, 0.0f);
        for (long i = 0; i < len; i++) {
          const float slope = 0.5f * std::erfc(-u[i] * 0.7071067811865476f) + u[i] * e[i] * 0.3989422804014327f;
          dx[i0 + i] = dy[i0 + i] * slope;
        }
      } else {
        for (long i = 0; i < len; i++) e[i] = -2.0f * c * (u[i] + a * u[i] * u[i] * u[i]);
        expSubSum(e, len, 0.0f);
        for (long i = 0; i < len; i++) {
          const float s = 1.0f / (1.0f + e[i]), v = u[i];
          const float slope = s + 2.0f * v * s * (e[i] * s) * c * (1.0f + 3.0f * a * v * v);
          dx[i0 + i] = dy[i0 + i] * slope;
        }
      }
    }
  });
}

// σ(a) = 1/(1 + e), e = exp(−a), and 1 − σ = e·σ without cancelling. dgate and dup may each be dy, gate or up:
// every element's inputs are read before either output is written.
void siluMulBackward(const float* dy, const float* gate, const float* up, float* dgate, float* dup, long n) {
  forRange(cdiv(n, kExpChunk), lmax(1, kGrain / 4 / kExpChunk), [&](long u0, long u1, int) {
    float e[kExpChunk];
    for (long i0 = u0 * kExpChunk; i0 < lmin(n, u1 * kExpChunk); i0 += kExpChunk) {
      const long len = lmin(kExpChunk, n - i0);
      for (long i = 0; i < len; i++) e[i] = -gate[i0 + i];
      expSubSum(e, len, 0.0f);
      for (long i = 0; i < len; i++) {
        const float s = 1.0f / (1.0f + e[i]), g = dy[i0 + i], av = gate[i0 + i], uv = up[i0 + i];
        dup[i0 + i] = g * av * s;
        dgate[i0 + i] = g * uv * s * (1.0f + av * (e[i] * s));
      }
    }
  });
}

// The transpose of the forward's rotation by +θ rotates dy by −θ. dx may be dy.
void ropeBackward(const float* dy, const float* cos, const float* sin, float* dx, long T, long H, long D) {
  const long half = D / 2;
  forRange(T * H, lmax(1, kGrain / lmax(1, D)), [&](long r0, long r1, int) {
    for (long r = r0; r < r1; r++) {
      const float* c = cos + (r / H) * half;
      const float* s = sin + (r / H) * half;
      const float* g = dy + r * D;
      float* o = dx + r * D;
      for (long j = 0; j < half; j++) {
        const float g1 = g[j], g2 = g[j + half];
        o[j] = g1 * c[j] + g2 * s[j];
        o[j + half] = g2 * c[j] - g1 * s[j];
      }
    }
  });
}

// m = 1 copies; m = 2 averaged each block's 4 rows with weight ¼ (exactly: halvings), so each row gets dy/4.
void mergeBlocksBackward(const float* dy, float* dx, long rows, long cols, int m) {
  const long group = static_cast<long>(m) * m;
  const float share = 1.0f / static_cast<float>(group);
  forRange(rows, lmax(1, kGrain / lmax(1, cols * group)), [&](long r0, long r1, int) {
    for (long r = r0; r < r1; r++)
      for (long j = 0; j < group; j++) {
        float* o = dx + (r * group + j) * cols;
        for (long c = 0; c < cols; c++) o[c] = dy[r * cols + c] * share;
      }
  });
}

// dtable[ids[t]] += dy[t]: tasks own column ranges and walk t in order, so repeated ids never race and every row
// sums in the definition's order (bit-identical to it).
void embeddingBackward(const float* dy, const int32_t* ids, float* dtable, long T, long D) {
  constexpr long kCols = 64;
  forRange(cdiv(D, kCols), lmax(1, kGrain / lmax(1, T * kCols)), [&](long b0, long b1, int) {
    const long c0 = b0 * kCols, c1 = lmin(D, b1 * kCols);
    for (long t = 0; t < T; t++) {
      float* o = dtable + static_cast<long>(ids[t]) * D;
      const float* g = dy + t * D;
      for (long c = c0; c < c1; c++) o[c] += g[c];
    }
  });
}

#include "grad_adamw.h"
#include "grad_attention.h"
#include "grad_cross_entropy.h"
