// Own flash-style attention backward: probabilities are recomputed a tile of keys at a time and never stored whole, and dk/dv are owned per key block so no two threads write one element; we own it because training's memory bound and its numerics are ours to state.
// Included by grad_impl.h (inside vl3::VL3_ISA's anonymous namespace).
//
// Phase 1, a task per (KV head g, tile of queries): the tile's rows are its queries × the R query heads sharing g
// (as in the forward), gathered with their rows of dout. A first sweep over the visible keys gives each row its
// log-sum-exp and δ = Σ_j P·dP (online, rescaled as the max grows); a second recomputes P = exp(s − lse) and
// writes dq = Σ_j dS·k_j with dS = P ⊙ (dP − δ)·scale (Σ_j P·dP equals dout·out, so the forward's output is not
// needed). Each row's lse and δ are kept (2·T·Hq floats) for phase 2.
// Phase 2, a task per (KV head g, block of keys): every query row that sees the block recomputes its P and dS for
// the block only, and the task adds Pᵀ·dout and dSᵀ·q into its own block of dv and dk.
// Scores and their gradients take rows × kGradKeys floats per task; products are the ISA's GEMV (rows of q and dout
// against contiguous copies of the block's keys and values) and plain axpy loops the compiler vectorizes.

constexpr long kGradKeys = 64;  // keys per block: a 64×128 block of K and of V (32 KiB each) stays in L2
constexpr long kGradRows = 64;  // query rows (queries × grouped heads) per tile

struct GradAttnBuffers {
  float *q, *o, *k, *v, *s, *dp, *acc, *dk, *dv, *m, *l, *c;
};

inline GradAttnBuffers gradAttnBuffers(int tid, long rows, long D) {
  const long rD = roundUp(rows * D, 16), kD = roundUp(kGradKeys * D, 16), rK = roundUp(rows * kGradKeys, 16),
             r = roundUp(rows, 16);
  float* b = static_cast<float*>(scratch(tid, kSlotC, (3 * rD + 4 * kD + 2 * rK + 3 * r) * sizeof(float)));
  GradAttnBuffers g{};
  g.q = b;
  g.o = g.q + rD;
  g.acc = g.o + rD;
  g.k = g.acc + rD;
  g.v = g.k + kD;
  g.dk = g.v + kD;
  g.dv = g.dk + kD;
  g.s = g.dv + kD;
  g.dp = g.s + rK;
  g.m = g.dp + rK;
  g.l = g.m + r;
  g.c = g.l + r;
  return g;
}

// Rows i < n of a tile: query t0 + i / R of head g·R + i % R, from a [T, Hq, D] tensor.
inline void gatherRows(const float* src, long t0, long n, long g, long R, long Hq, long D, float* dst) {
  for (long i = 0; i < n; i++) std::memcpy(dst + i * D, src + ((t0 + i / R) * Hq + g * R + i % R) * D, D * sizeof(float));
}

// Keys [j0, j0 + nb) of KV head g from a [S, Hkv, D] tensor, contiguous.
inline void gatherKeys(const float* src, long j0, long nb, long g, long Hkv, long D, float* dst) {
  for (long j = 0; j < nb; j++) std::memcpy(dst + j * D, src + ((j0 + j) * Hkv + g) * D, D * sizeof(float));
}

inline void axpy(float* __restrict y, float a, const float* __restrict x, long n) {
  for (long i = 0; i < n; i++) y[i] += a * x[i];
}

// Scaled scores and dP of the tile's rows against a block of nb keys already in b.k and b.v.
inline void blockScores(const GradAttnBuffers& b, long rows, long D, long nb, float scale) {
  gemvRows(b.q, static_cast<int>(rows), D, b.k, WType::F32, nb, b.s, kGradKeys, nullptr);
  gemvRows(b.o, static_cast<int>(rows), D, b.v, WType::F32, nb, b.dp, kGradKeys, nullptr);
  for (long i = 0; i < rows; i++)
    for (long j = 0; j < nb; j++) b.s[i * kGradKeys + j] *= scale;
}

void attentionBackward(const AttentionBackwardArgs& a) {
  const long T = a.T, S = a.S, D = a.D, Hq = a.Hq, Hkv = a.Hkv, R = Hq / Hkv;
  if (T == 0 || D == 0) {
    if (D > 0) std::memset(a.dk, 0, S * Hkv * D * sizeof(float));
    if (D > 0) std::memset(a.dv, 0, S * Hkv * D * sizeof(float));
    return;
  }
  const long Tq = lmax(1, kGradRows / R), qTiles = cdiv(T, Tq), kBlocks = cdiv(S, kGradKeys);
  auto limit = [&](long t) { return a.causal ? lmin(S, a.queryOffset + t + 1) : S; };  // keys [0, limit) visible
  float* stats = static_cast<float*>(scratch(0, kSlotShared, 2 * T * Hq * sizeof(float)));
  float* lseOf = stats;  // at t·Hq + h
  float* deltaOf = stats + T * Hq;

  parallelTasks(Hkv * qTiles, [&](long task, int tid) {
    const long g = task % Hkv, qt = qTiles - 1 - task / Hkv;  // later tiles see more keys: hand them out first
    const long t0 = qt * Tq, rows = (lmin(T, t0 + Tq) - t0) * R;
    const GradAttnBuffers b = gradAttnBuffers(tid, lmin(Tq, T) * R, D);
    gatherRows(a.q, t0, rows, g, R, Hq, D, b.q);
    gatherRows(a.dout, t0, rows, g, R, Hq, D, b.o);
    for (long i = 0; i < rows; i++) {
      b.m[i] = -INFINITY;
      b.l[i] = 0.0f;
      b.c[i] = 0.0f;
    }
    const long end = limit(t0 + rows / R - 1);  // rows are in query order: the last sees the most keys
    for (long j0 = 0; j0 < end; j0 += kGradKeys) {
      const long nb = lmin(kGradKeys, end - j0);
      gatherKeys(a.k, j0, nb, g, Hkv, D, b.k);
      gatherKeys(a.v, j0, nb, g, Hkv, D, b.v);
      blockScores(b, rows, D, nb, a.scale);
      for (long i = 0; i < rows; i++) {
        const long vis = lmin(nb, limit(t0 + i / R) - j0);
        if (vis <= 0) continue;
        float* s = b.s + i * kGradKeys;
        const float* dp = b.dp + i * kGradKeys;
        const float mx = maxOf(s, vis), mNew = mx > b.m[i] ? mx : b.m[i];
        const float corr = b.m[i] == -INFINITY ? 0.0f : expScalar(b.m[i] - mNew);
        const float sum = expSubSum(s, vis, mNew);
        float cs = 0.0f;
        for (long j = 0; j < vis; j++) cs += s[j] * dp[j];
        b.l[i] = b.l[i] * corr + sum;
        b.c[i] = b.c[i] * corr + cs;
        b.m[i] = mNew;
      }
    }
    for (long i = 0; i < rows; i++) {
      const long at = (t0 + i / R) * Hq + g * R + i % R;
      lseOf[at] = b.m[i] + std::log(b.l[i]);
      deltaOf[at] = b.c[i] / b.l[i];
      b.m[i] = lseOf[at];  // the second sweep reads them from here
      b.l[i] = deltaOf[at];
    }
    std::memset(b.acc, 0, rows * D * sizeof(float));
    for (long j0 = 0; j0 < end; j0 += kGradKeys) {
      const long nb = lmin(kGradKeys, end - j0);
      gatherKeys(a.k, j0, nb, g, Hkv, D, b.k);
      gatherKeys(a.v, j0, nb, g, Hkv, D, b.v);
      blockScores(b, rows, D, nb, a.scale);
      for (long i = 0; i < rows; i++) {
        const long vis = lmin(nb, limit(t0 + i / R) - j0);
        if (vis <= 0) continue;
        float* s = b.s + i * kGradKeys;
        const float* dp = b.dp + i * kGradKeys;
        expSubSum(s, vis, b.m[i]);
        for (long j = 0; j < vis; j++) axpy(b.acc + i * D, s[j] * (dp[j] - b.l[i]) * a.scale, b.k + j * D, D);
      }
    }
    for (long i = 0; i < rows; i++)
      std::memcpy(a.dq + ((t0 + i / R) * Hq + g * R + i % R) * D, b.acc + i * D, D * sizeof(float));
  });

  parallelTasks(Hkv * kBlocks, [&](long task, int tid) {
    const long g = task % Hkv, j0 = task / Hkv * kGradKeys, nb = lmin(kGradKeys, S - j0);
    const GradAttnBuffers b = gradAttnBuffers(tid, lmin(Tq, T) * R, D);
    std::memset(b.dk, 0, nb * D * sizeof(float));
    std::memset(b.dv, 0, nb * D * sizeof(float));
    gatherKeys(a.k, j0, nb, g, Hkv, D, b.k);
    gatherKeys(a.v, j0, nb, g, Hkv, D, b.v);
    // The first query that sees key j0, as a multiple of the tile height so the rows line up with phase 1's.
    const long first = a.causal ? lmax(0, j0 - a.queryOffset) : 0;
    for (long t0 = first / Tq * Tq; t0 < T; t0 += Tq) {
      const long rows = (lmin(T, t0 + Tq) - t0) * R;
      gatherRows(a.q, t0, rows, g, R, Hq, D, b.q);
      gatherRows(a.dout, t0, rows, g, R, Hq, D, b.o);
      blockScores(b, rows, D, nb, a.scale);
      for (long i = 0; i < rows; i++) {
        const long vis = lmin(nb, limit(t0 + i / R) - j0);
        if (vis <= 0) continue;
        const long at = (t0 + i / R) * Hq + g * R + i % R;
        float* s = b.s + i * kGradKeys;
        const float* dp = b.dp + i * kGradKeys;
        expSubSum(s, vis, lseOf[at]);
        for (long j = 0; j < vis; j++) {
          axpy(b.dv + j * D, s[j], b.o + i * D, D);
          axpy(b.dk + j * D, s[j] * (dp[j] - deltaOf[at]) * a.scale, b.q + i * D, D);
        }
      }
    }
    for (long j = 0; j < nb; j++) {
      std::memcpy(a.dk + ((j0 + j) * Hkv + g) * D, b.dk + j * D, D * sizeof(float));
      std::memcpy(a.dv + ((j0 + j) * Hkv + g) * D, b.dv + j * D, D * sizeof(float));
    }
  });
}
