// Own attention backward: the probabilities of a block of query rows are recomputed and never stored for the whole sequence, and every product is the packed GEMM; we own it because training's memory bound and its numerics are ours to state.
// Included by grad_impl.h (inside vl3::VL3_ISA's anonymous namespace).
//
// Per KV head g, its keys and values are gathered into contiguous [keys, D] arrays with their gradients beside them.
// Then per block of whole queries (rows are queries × the R query heads sharing g, as in the forward): scores
// S = Q·Kᵀ and dP = dO·Vᵀ (two GEMMs, rows × visible keys), each row's softmax in place (P), δ = Σ_j P·dP (which
// equals dout·out, so the forward's output is not needed) and dS = P ⊙ (dP − δ)·scale in place of dP; then
// dQ = dS·K, dV += Pᵀ·dO and dK += dSᵀ·Q, the last two the transposed-operand GEMMs of matmulBackward.
// Memory: the block's two score arrays take at most kGradScoreBytes (fewer rows per block as the keys grow), plus
// the head's K, V and their gradients: the score matrix of a sequence never exists whole.
//
// Under a causal mask a block computes scores up to what its last query sees and masks the rest; blocks of at most
// kGradCausalQueries queries keep that waste (half of one block's square per block) a small share.

constexpr long kGradScoreBytes = 32L << 20;
constexpr long kGradCausalQueries = 128;

// Rows i < n of a tile: query t0 + i / R of head g·R + i % R, from a [T, Hq, D] tensor.
inline void gatherRows(const float* src, long t0, long n, long g, long R, long Hq, long D, float* dst) {
  for (long i = 0; i < n; i++) std::memcpy(dst + i * D, src + ((t0 + i / R) * Hq + g * R + i % R) * D, D * sizeof(float));
}

inline void scatterRows(const float* src, long t0, long n, long g, long R, long Hq, long D, float* dst) {
  for (long i = 0; i < n; i++) std::memcpy(dst + ((t0 + i / R) * Hq + g * R + i % R) * D, src + i * D, D * sizeof(float));
}

// out[M,N] (= or +=) A·Bᵀ in exact f32, with A and B read transposed where asked (GemmLayout).
inline void attnGemm(const float* x, const float* w, float* out, long M, long N, long K, const GemmLayout& L) {
  const MatmulArgs a{x, w, WType::F32, nullptr, WType::None, out, M, N, K, Compute::Exact};
  gemm<false>(a, nullptr, false, L);
}

void attentionBackward(const AttentionBackwardArgs& a) {
  const long T = a.T, S = a.S, D = a.D, Hq = a.Hq, Hkv = a.Hkv, R = Hq / Hkv;
  if (D == 0) return;
  std::memset(a.dk, 0, S * Hkv * D * sizeof(float));
  std::memset(a.dv, 0, S * Hkv * D * sizeof(float));
  if (T == 0) return;
  auto limit = [&](long t) { return a.causal ? lmax(0, lmin(S, a.queryOffset + t + 1)) : S; };  // keys [0, limit)
  const long kvEnd = limit(T - 1);  // no query sees a key past this one
  long qb = lmax(1, kGradScoreBytes / static_cast<long>(2 * sizeof(float) * lmax(1, kvEnd) * R));
  if (a.causal) qb = lmin(qb, kGradCausalQueries);
  qb = lmin(qb, T);
  const long rowsMax = qb * R;
  float* scores = static_cast<float*>(scratch(0, kSlotShared, 2 * rowsMax * lmax(1, kvEnd) * sizeof(float)));
  float* head = static_cast<float*>(scratch(0, kSlotE, (4 * kvEnd * D + 3 * rowsMax * D) * sizeof(float)));
  float *k = head, *v = k + kvEnd * D, *dk = v + kvEnd * D, *dv = dk + kvEnd * D;
  float *q = dv + kvEnd * D, *dout = q + rowsMax * D, *dq = dout + rowsMax * D;

  for (long g = 0; g < Hkv; g++) {
    for (long j = 0; j < kvEnd; j++) {
      std::memcpy(k + j * D, a.k + (j * Hkv + g) * D, D * sizeof(float));
      std::memcpy(v + j * D, a.v + (j * Hkv + g) * D, D * sizeof(float));
    }
    std::memset(dk, 0, 2 * kvEnd * D * sizeof(float));
    for (long t0 = 0; t0 < T; t0 += qb) {
      const long nq = lmin(qb, T - t0), rows = nq * R, nk = limit(t0 + nq - 1);
      if (nk == 0) {
        std::memset(dq, 0, rows * D * sizeof(float));
        scatterRows(dq, t0, rows, g, R, Hq, D, a.dq);
        continue;
      }
      float *p = scores, *ds = scores + rows * nk;
      gatherRows(a.q, t0, rows, g, R, Hq, D, q);
      gatherRows(a.dout, t0, rows, g, R, Hq, D, dout);
      attnGemm(q, k, p, rows, nk, D, GemmLayout());
      attnGemm(dout, v, ds, rows, nk, D, GemmLayout());
      forRange(rows, lmax(1, kGrain / nk), [&](long r0, long r1, int) {
        for (long i = r0; i < r1; i++) {
          float* s = p + i * nk;
          float* d = ds + i * nk;
          const long vis = limit(t0 + i / R);
          for (long j = 0; j < vis; j++) s[j] *= a.scale;
          if (vis > 0) {
            const float inv = 1.0f / expSubSum(s, vis, maxOf(s, vis));
            float delta = 0.0f;
            for (long j = 0; j < vis; j++) {
              s[j] *= inv;
              delta += s[j] * d[j];
            }
            for (long j = 0; j < vis; j++) d[j] = s[j] * (d[j] - delta) * a.scale;
          }
          for (long j = lmax(0, vis); j < nk; j++) s[j] = d[j] = 0.0f;
        }
      });
      attnGemm(ds, k, dq, rows, D, nk, layoutBT(D));
      scatterRows(dq, t0, rows, g, R, Hq, D, a.dq);
      attnGemm(p, dout, dv, nk, D, rows, layoutTransposedAdd(nk, D));
      attnGemm(ds, q, dk, nk, D, rows, layoutTransposedAdd(nk, D));
    }
    for (long j = 0; j < kvEnd; j++) {
      std::memcpy(a.dk + (j * Hkv + g) * D, dk + j * D, D * sizeof(float));
      std::memcpy(a.dv + (j * Hkv + g) * D, dv + j * D, D * sizeof(float));
    }
  }
}
