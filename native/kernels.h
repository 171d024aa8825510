// Own kernel table: the ISA-specific builds of every op sit behind one struct so that dispatch happens once per call, not per loop.
#pragma once
#include <cstddef>
#include <cstdint>

namespace vl3 {

enum class WType : int { None = 0, F32 = 1, BF16 = 2 };

struct MatmulArgs {
  const float* x;    // [M,K]
  const void* w;     // [N,K], f32 or bf16
  WType wType;
  const void* bias;  // [N] or null
  WType biasType;
  float* out;        // [M,N]
  long M, N, K;
};

struct AttentionArgs {
  const float* q;  // [T,Hq,D]
  const float* k;  // [S,Hkv,D]
  const float* v;  // [S,Hkv,D]
  float* out;      // [T,Hq,D]
  long T, S, Hq, Hkv, D;
  float scale;
  bool causal;
  long queryOffset;  // causal only: query row t sees keys [0, queryOffset + t]
};

struct KernelTable {
  const char* name;
  void (*matmul)(const MatmulArgs&);
  // out = a (op) b, where b has n elements (same shape) or bLen elements broadcast over rows of length bLen.
  void (*add)(const float* a, const float* b, float* out, long n, long bLen);
  void (*mul)(const float* a, const float* b, float* out, long n, long bLen);
  void (*rmsNorm)(const float* x, const void* w, WType wType, float eps, float* out, long rows, long cols);
  void (*layerNorm)(const float* x, const void* w, WType wType, const void* b, WType bType, float eps, float* out,
                    long rows, long cols);
  // erf = false: the tanh approximation (gelu_pytorch_tanh); true: the exact erf form (nn.GELU()).
  void (*gelu)(const float* x, float* out, long n, bool erf);
  // out[r, c] for r < rows = the m×m block of x rows r·m² .. r·m² + m² - 1 merged (m = 1 copies, m = 2 averages
  // as the reference's bilinear ×½ downsample).
  void (*mergeBlocks)(const float* x, float* out, long rows, long cols, int m);
  void (*siluMul)(const float* gate, const float* up, float* out, long n);
  void (*softmax)(const float* x, float* out, long rows, long cols);
  void (*rope)(const float* x, const float* cos, const float* sin, float* out, long T, long H, long D);
  void (*attention)(const AttentionArgs&);
  // Widens rows ids[t] of table[.,D] into out[t,D]; ids were bounds-checked by the caller.
  void (*embedding)(const void* table, WType type, const int32_t* ids, float* out, long T, long D);
  // Measurement loops: `iters` rounds of an FMA-bound body (returns flops done, result kept live via sink), and a
  // read-only sum of n floats.
  double (*fmaLoop)(long iters, float* sink);
  float (*sum)(const float* p, long n);
};

const KernelTable* scalarKernels();
// Null when this build has no AVX2 kernels (non-x86 targets).
const KernelTable* avx2Kernels();
// Null when this build has no NEON kernels (non-aarch64 targets).
const KernelTable* neonKernels();

}  // namespace vl3
