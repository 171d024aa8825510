// Own chunked cross-entropy: the LM head's logits exist a vocabulary chunk at a time (a 150k-word vocabulary would otherwise take n·600 KB), each chunk one forward GEMM, and the gradients two backward GEMMs per chunk; we own it because its memory bound and its numerics are training's.
// Included by grad_impl.h (inside vl3::VL3_ISA's anonymous namespace).
//
// Per block of up to kLossRows rows of hidden: a first pass over the chunks keeps each row's running max and sum of
// exp (the chunk's sum in f32 by the ISA's vector exp, the running total in double), giving lse and the loss
// lse − logit[target]; a second pass recomputes each chunk's logits, turns them into dl = scale·(softmax − onehot)
// in place, and adds dl·head_chunk to dhidden and dlᵀ·hidden to the chunk's rows of dhead (the transposed GEMMs of
// matmulBackward). Logits are the exact-mode matmul's, rounded to f32 as the definition's are.

constexpr long kLossChunk = 4096;  // vocabulary rows per chunk
constexpr long kLossRows = 256;    // rows of hidden per block: a block's logits take 4 MiB

void crossEntropy(const CrossEntropyArgs& a) {
  const long n = a.n, H = a.H, V = a.V, esz = wBytes(a.headType);
  if (n == 0) return;
  const long rb = lmin(n, kLossRows);
  float* logits = static_cast<float*>(scratch(0, kSlotShared, rb * kLossChunk * sizeof(float)));
  double* st = static_cast<double*>(scratch(0, kSlotE, 3 * rb * sizeof(double)));
  double *mx = st, *sum = st + rb, *lse = st + 2 * rb;
  const char* head = static_cast<const char*>(a.head);

  auto chunkLogits = [&](long i0, long rows, long v0, long cv) {
    const MatmulArgs m{a.hidden + i0 * H, head + v0 * H * esz, a.headType, nullptr, WType::None, logits,
                       rows, cv, H, Compute::Exact};
    matmul(m);
  };
  auto eachRow = [&](long rows, long cv, const auto& f) {
    forRange(rows, lmax(1, kGrain / 4 / cv), [&](long r0, long r1, int) {
      for (long r = r0; r < r1; r++) f(r, logits + r * cv);
    });
  };

  for (long i0 = 0; i0 < n; i0 += rb) {
    const long rows = lmin(rb, n - i0);
    for (long r = 0; r < rows; r++) {
      mx[r] = -INFINITY;
      sum[r] = 0;
    }
    for (long v0 = 0; v0 < V; v0 += kLossChunk) {
      const long cv = lmin(kLossChunk, V - v0);
      chunkLogits(i0, rows, v0, cv);
      eachRow(rows, cv, [&](long r, float* row) {
        const long id = a.targets[i0 + r] - v0;
        if (id >= 0 && id < cv) a.losses[i0 + r] = -row[id];  // the target's logit; lse is added below
        const float cm = maxOf(row, cv);
        if (cm > mx[r]) {
          sum[r] *= std::exp(mx[r] - cm);
          mx[r] = cm;
        }
        sum[r] += expSubSum(row, cv, static_cast<float>(mx[r]));
      });
    }
    for (long r = 0; r < rows; r++) {
      lse[r] = mx[r] + std::log(sum[r]);
      a.losses[i0 + r] = static_cast<float>(lse[r] + a.losses[i0 + r]);
    }
    if (!a.dhidden && !a.dhead) continue;
    if (a.dhidden) std::memset(a.dhidden + i0 * H, 0, rows * H * sizeof(float));
    for (long v0 = 0; v0 < V; v0 += kLossChunk) {
      const long cv = lmin(kLossChunk, V - v0);
      chunkLogits(i0, rows, v0, cv);
      eachRow(rows, cv, [&](long r, float* row) {
        expSubSum(row, cv, static_cast<float>(lse[r]));
        const long id = a.targets[i0 + r] - v0;
        const float pt = id >= 0 && id < cv ? row[id] : 0.0f;
        for (long j = 0; j < cv; j++) row[j] *= a.scale;
        if (id >= 0 && id < cv) row[id] = a.scale * (pt - 1.0f);
      });
      if (H == 0) continue;
      if (a.dhidden) {
        // dhidden[rows,H] += dl[rows,cv]·head_chunk: B is head_chunkᵀ, element (h, v) at head[v·H + h].
        const MatmulArgs m{logits, head + v0 * H * esz, a.headType, nullptr, WType::None, a.dhidden + i0 * H,
                           rows, H, cv, Compute::Exact};
        gemm<false>(m, nullptr, false, layoutBT(H, true));
      }
      if (a.dhead) {
        // dhead_chunk[cv,H] += dlᵀ[cv,rows]·hidden_block: A is dlᵀ, B is hidden_blockᵀ.
        const MatmulArgs m{logits, a.hidden + i0 * H, WType::F32, nullptr, WType::None, a.dhead + v0 * H,
                           cv, H, rows, Compute::Exact};
        gemm<false>(m, nullptr, false, layoutTransposedAdd(cv, H));
      }
    }
  }
}
