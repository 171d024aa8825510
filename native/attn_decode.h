// Own decode attention (one query row per head): a decode step reads its whole KV cache once, so this loop is bound by
// that read only if its arithmetic keeps up, which the general row kernel's per-key GEMV calls and copies did not.
// Included by ops_impl.h inside its namespace; written with the compiler's vector type, so each tier gets its width.
//
// A task takes a range of keys for every head, in blocks of kDecodeBlock keys: the block's K rows in memory order (all
// KV heads of a key, then the next key), then its V rows, which the score loop has prefetched. The query heads sharing
// a KV head are scored against a key's K row while it sits in registers; for P·V a tile of query rows × 2·NR columns
// of the output stays in registers over the block's keys. Against the row kernel, on Zen 5 with the KV cache coming
// from DRAM: 1.5-1.7× at 256 keys, 1.3-1.5× at 8192, AVX-512 and AVX2 alike (BENCHMARKS.md run 18).

#if defined(__GNUC__) && !defined(__clang__)
// These inline helpers pass vectors wider than the scalar tier's registers; nothing outside this file calls them, so
// the ABI note GCC gives for that does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

// 2·NR floats of an output row in four vectors: a 512-bit tier's 4 zmm, an AVX2 or NEON tier's 4 ymm or 8 q.
typedef float AttnVec __attribute__((vector_size(NR / 2 * sizeof(float))));
constexpr long kVecFloats = NR / 2;
constexpr long kTileFloats = 4 * kVecFloats;
// Query rows of one P·V tile: 4 vectors each, so 6 rows are 24 of a 512-bit tier's 32 registers, 3 rows 12 of 16.
constexpr int kDecodeTileRows = NR == 32 ? 6 : 3;
constexpr long kDecodeBlock = 64;  // keys per online-softmax step: a block's scores stay in L1
// Keys ahead whose K and V rows the score loop prefetches (and a task's first keys, before its loop): left to the
// hardware prefetcher, a Zen 5 core read an 8192-key cache at 13 GB/s against its 40 GB/s read loop.
constexpr long kDecodePrefetchKeys = 16;

__attribute__((always_inline)) inline AttnVec attnLoad(const float* p) {
  AttnVec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

__attribute__((always_inline)) inline void attnStore(float* p, const AttnVec& v) { std::memcpy(p, &v, sizeof v); }

// The sum of a vector's lanes as a tree of halves, each step one add of vectors half as wide.
typedef float AttnLanes4 __attribute__((vector_size(4 * sizeof(float))));
typedef float AttnLanes8 __attribute__((vector_size(8 * sizeof(float))));
typedef float AttnLanes16 __attribute__((vector_size(16 * sizeof(float))));
__attribute__((always_inline)) inline float attnLaneSum(AttnLanes4 v) { return (v[0] + v[2]) + (v[1] + v[3]); }
__attribute__((always_inline)) inline float attnLaneSum(AttnLanes8 v) {
  const AttnLanes4 lo = {v[0], v[1], v[2], v[3]}, hi = {v[4], v[5], v[6], v[7]};
  return attnLaneSum(lo + hi);
}
__attribute__((always_inline)) inline float attnLaneSum(AttnLanes16 v) {
  const AttnLanes8 lo = {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]};
  const AttnLanes8 hi = {v[8], v[9], v[10], v[11], v[12], v[13], v[14], v[15]};
  return attnLaneSum(lo + hi);
}

// Scores of ROWS query rows (q, D floats apart, scaled) against one K row: sc[r · ldsc].
template <int ROWS>
inline void attnDecodeDots(const float* q, const float* k, long D, float* sc, long ldsc) {
  AttnVec acc[ROWS] = {};
  for (long d = 0; d < D; d += kTileFloats) {
    AttnVec kv[4];
    for (int i = 0; i < 4; i++) kv[i] = attnLoad(k + d + i * kVecFloats);
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; r++)
#pragma GCC unroll 4
      for (int i = 0; i < 4; i++) acc[r] += attnLoad(q + r * D + d + i * kVecFloats) * kv[i];
  }
  for (int r = 0; r < ROWS; r++) sc[r * ldsc] = attnLaneSum(acc[r]);
}

// o[r][0, kTileFloats) += Σ_j p[r][j] · v[j][0, kTileFloats) over nb keys, for ROWS rows (o rows ldo floats apart, p
// rows ldp, v rows ldv).
template <int ROWS>
inline void attnDecodePv(const float* p, long ldp, const float* v, long ldv, long nb, float* o, long ldo) {
  AttnVec acc[ROWS][4];
  for (int r = 0; r < ROWS; r++)
    for (int i = 0; i < 4; i++) acc[r][i] = attnLoad(o + r * ldo + i * kVecFloats);
  for (long j = 0; j < nb; j++) {
    AttnVec vv[4];
    for (int i = 0; i < 4; i++) vv[i] = attnLoad(v + j * ldv + i * kVecFloats);
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; r++) {
      const float pj = p[r * ldp + j];
#pragma GCC unroll 4
      for (int i = 0; i < 4; i++) acc[r][i] += pj * vv[i];
    }
  }
  for (int r = 0; r < ROWS; r++)
    for (int i = 0; i < 4; i++) attnStore(o + r * ldo + i * kVecFloats, acc[r][i]);
}

// Rows [0, rows) in tiles of kDecodeTileRows, the last tile shorter: tile.template run<ROWS>(first row).
template <class Tile>
inline void attnDecodeTiles(long rows, const Tile& tile) {
  long r = 0;
  for (; r + kDecodeTileRows <= rows; r += kDecodeTileRows) tile.template run<kDecodeTileRows>(r);
  switch (rows - r) {
    case 0: break;
    case 1: tile.template run<1>(r); break;
    case 2: tile.template run<2>(r); break;
    case 3: tile.template run<3>(r); break;
    case 4: tile.template run<4>(r); break;
    default: tile.template run<5>(r); break;
  }
}

// One key's scores for the rows of KV head g, and one block's P·V for them, as attnDecodeTiles runs them.
struct AttnDecodeDots {
  const float *q, *kRow;
  float* sc;  // the key's column of the block's scores
  long D;
  template <int ROWS>
  void run(long r0) const { attnDecodeDots<ROWS>(q + r0 * D, kRow, D, sc + r0 * kDecodeBlock, kDecodeBlock); }
};

struct AttnDecodePv {
  const float *p, *v;  // the head's first row of probabilities; the block's V rows from column d
  float* o;            // the head's first output row, from column d
  long D, ldv, nb;
  template <int ROWS>
  void run(long r0) const { attnDecodePv<ROWS>(p + r0 * kDecodeBlock, kDecodeBlock, v, ldv, nb, o + r0 * D, D); }
};

// Key j's K and V rows, every KV head.
inline void attnPrefetchKey(const AttentionArgs& a, long j) {
  const long bytes = a.Hkv * a.D * static_cast<long>(sizeof(float));
  const char* k = reinterpret_cast<const char*>(a.k) + j * bytes;
  const char* v = reinterpret_cast<const char*>(a.v) + j * bytes;
  for (long off = 0; off < bytes; off += 64) {
    __builtin_prefetch(k + off, 0, 3);
    __builtin_prefetch(v + off, 0, 3);
  }
}

// Keys [kb, ke) of a decode step, every head: o (Hq rows of D, unnormalized), m and l (each row's running max and
// sum) as attnMerge takes them. scratch: Hq·(D + kDecodeBlock) floats.
inline void attnDecodeRange(const AttentionArgs& a, long kb, long ke, float* o, float* m, float* l, float* scratch) {
  const long D = a.D, Hq = a.Hq, Hkv = a.Hkv, R = Hq / Hkv, ldkv = Hkv * D;
  float* q = scratch;            // [Hq][D], scaled
  float* sc = scratch + Hq * D;  // [Hq][kDecodeBlock]
  for (long i = 0; i < Hq * D; i++) q[i] = a.q[i] * a.scale;
  std::memset(o, 0, Hq * D * sizeof(float));
  for (long r = 0; r < Hq; r++) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
  }
  for (long j = kb; j < lmin(ke, kb + kDecodePrefetchKeys); j++) attnPrefetchKey(a, j);
  for (long j0 = kb; j0 < ke; j0 += kDecodeBlock) {
    const long nb = lmin(kDecodeBlock, ke - j0);
    for (long j = 0; j < nb; j++) {
      if (j0 + j + kDecodePrefetchKeys < ke) attnPrefetchKey(a, j0 + j + kDecodePrefetchKeys);
      for (long g = 0; g < Hkv; g++)
        attnDecodeTiles(R, AttnDecodeDots{q + g * R * D, a.k + (j0 + j) * ldkv + g * D,
                                          sc + g * R * kDecodeBlock + j, D});
    }
    for (long r = 0; r < Hq; r++) {
      float* s = sc + r * kDecodeBlock;
      const float mx = maxOf(s, nb);
      const float mNew = mx > m[r] ? mx : m[r];
      const float corr = expScalar(m[r] - mNew);
      l[r] = l[r] * corr + expSubSum(s, nb, mNew);
      m[r] = mNew;
      if (corr != 1.0f)
        for (long d = 0; d < D; d++) o[r * D + d] *= corr;
    }
    for (long g = 0; g < Hkv; g++)
      for (long d = 0; d < D; d += kTileFloats)
        attnDecodeTiles(R, AttnDecodePv{sc + g * R * kDecodeBlock, a.v + j0 * ldkv + g * D + d, o + g * R * D + d,
                                        D, ldkv, nb});
  }
}

// Whether attentionDecode takes a problem: one query row per head, a head size of whole output tiles.
inline bool attnDecodeFits(const AttentionArgs& a) {
  return a.T == 1 && a.D % kTileFloats == 0 && (!a.causal || a.queryOffset >= 0);
}

// The keys split into ranges, one task each, merged by attnMerge.
void attentionDecode(const AttentionArgs& a) {
  const long D = a.D, Hq = a.Hq;
  const long kvEnd = a.causal ? lmin(a.S, a.queryOffset + 1) : a.S;
  const int threads = poolThreads();
  // Two ranges a thread (one range alone when one thread), each at least one block of keys.
  const long splits = lmax(1, lmin(threads > 1 ? 2L * threads : 1L, lmin(cdiv(kvEnd, kDecodeBlock), kMaxSplits)));
  const long splitLen = roundUp(cdiv(kvEnd, splits), kDecodeBlock);
  const long used = cdiv(kvEnd, splitLen);
  const long part = Hq * (D + 2);  // a range's o rows, then its maxima and sums
  float* partial = static_cast<float*>(scratch(0, kSlotShared, used * part * sizeof(float)));
  parallelTasks(used, [&](long sp, int tid) {
    float* buf = static_cast<float*>(scratch(tid, kSlotC, Hq * (D + kDecodeBlock) * sizeof(float)));
    float* o = partial + sp * part;
    attnDecodeRange(a, sp * splitLen, lmin(kvEnd, (sp + 1) * splitLen), o, o + Hq * D, o + Hq * D + Hq, buf);
  });
  const float* oPtrs[kMaxSplits];
  float mv[kMaxSplits], lv[kMaxSplits];
  for (long r = 0; r < Hq; r++) {
    for (long sp = 0; sp < used; sp++) {
      const float* o = partial + sp * part;
      oPtrs[sp] = o + r * D;
      mv[sp] = o[Hq * D + r];
      lv[sp] = o[Hq * D + Hq + r];
    }
    attnMerge(oPtrs, mv, lv, used, D, a.out + r * D);
  }
}
