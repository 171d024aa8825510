// Own AdamW update: the optimizer step is a memory-bound pass over p, g, m and v whose bits are specified by a TypeScript definition (host-gradients.ts adamw, torch.optim.AdamW's float32 arithmetic), which no library kernel promises to reproduce.
// Included by grad_impl.h (inside vl3::VL3_ISA's anonymous namespace); the ISA header gives adamwVectors, the same
// element on whole vectors.
//
// Why every tier gets the definition's bits: each operation below is one IEEE float32 operation, correctly rounded,
// in the definition's order (a float32 +, −, ·, / or √ computed in double and rounded to float32, as the TypeScript
// does, is the float32 operation itself); the two moment updates are real fused multiply-adds where the definition
// emulates one (fma32), std::fmaf or the ISA's fma, both exact; and the one product followed by an add (p·decay) is
// made opaque (VL3_OPAQUE), so no -ffp-contract setting can fuse it. The scalars come rounded from TypeScript.

// One element, the definition's statement by statement.
inline void adamwElement(float& p, float g, float& m, float& v, const AdamWScalars& s) {
  float pi = p * s.decay;
  VL3_OPAQUE(pi);
  const float mi = std::fmaf(s.w1, g - m, m);
  const float vi = std::fmaf(s.w2 * g, g, v * s.b2);
  const float denom = std::sqrt(vi) / s.bc2Sqrt + s.eps;
  p = pi + s.stepSize * mi / denom;
  m = mi;
  v = vi;
}

// Elementwise, so any split into tasks gives the same bits; a task of kGrain elements moves about 1 MB.
void adamw(float* p, const float* g, float* m, float* v, long n, const AdamWScalars& s) {
  forRange(n, kGrain, [&](long i0, long i1, int) {
    long i = i0 + adamwVectors(p + i0, g + i0, m + i0, v + i0, i1 - i0, s);
    for (; i < i1; i++) adamwElement(p[i], g[i], m[i], v[i], s);
  });
}
