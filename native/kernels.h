// Own kernel table: the ISA-specific builds of every op sit behind one struct so that dispatch happens once per call, not per loop.
#pragma once
#include <cstddef>
#include <cstdint>

namespace vl3 {

// Int8, Int4 and Int4m are block-quantized weights in the packed layout of quant.h (matmul weights and embedding
// tables only).
enum class WType : int { None = 0, F32 = 1, BF16 = 2, Int8 = 3, Int4 = 4, Int4m = 5 };

// A context's compute mode; it changes matmul only. Softmax, norms, attention and every other op are f32 in both.
//
// Exact: out[m,n] = Σ_k x[m,k]·w[n,k] (+ bias[n]) with f32 x, w as stored (f32, or bf16 widened exactly), products
// and sums in f32 in an order of the kernel's choosing (so within K·2⁻²⁴·Σ|x·w| of the exact sum).
//
// Bf16: x[m,k] and f32 weights are first rounded to bf16, round-to-nearest-even (ties to even; ±Inf and ±0 kept;
// a NaN stays a quiet NaN with its sign and top payload bits; values beyond the largest bf16 round to ±Inf), bf16
// weights are used as stored. Every product of two bf16 values is exact in f32, and the products are summed in f32
// in an order of the kernel's choosing, then the f32 bias is added: so the result is the exact-mode result for the
// rounded operands, within the same accumulation bound. Tiers with a bf16 dot instruction (avx512bf16: vdpbf16ps;
// neon on a CPU with BF16: BFMMLA and BFDOT) multiply the bf16 values natively; those instructions also treat
// subnormal bf16 operands as zero and flush subnormal partial sums to zero (|values| < 2⁻¹²⁶, far below anything a
// model produces), and the arm64 ones round their partial sums to odd rather than to nearest (within one f32 ulp
// instead of half, so within twice the bound). Other tiers round the same way and run their f32 kernels on the
// rounded values, so their results match the exact arithmetic on the rounded operands up to accumulation order.
//
// Quantized weights (WType::Int8/Int4/Int4m): Exact multiplies f32 x by the exactly dequantized weights (quant.h's
// decode), as above. Bf16 (the fast mode) quantizes each row of x per block of 32 to int8 (quant.h's
// quantizeActivationRow, the same on every tier) and computes Σ_blocks d_w·d_x·(exact integer block dot), plus
// m_w·d_x·Σq for Int4m, summed in f32 in an order of the kernel's choosing. The integer dots use the tier's int8 dot
// instruction (vpdpbusd, sdot) where it has one, exact integer arithmetic elsewhere, so every tier computes the same
// integers.
//
// In both modes, a matmul of at most kBatchRows rows of x gives each row the same bits as a matmul of that row alone
// (every tier sums each output in one order whatever M is): a batch of decoding sequences, one token each, then
// answers exactly as each sequence alone (the engine's batched decode).
enum class Compute : int { Exact = 0, Bf16 = 1 };

constexpr long kBatchRows = 16;

struct MatmulArgs {
  const float* x;    // [M,K]
  const void* w;     // [N,K], f32 or bf16
  WType wType;
  const void* bias;  // [N] or null
  WType biasType;
  float* out;        // [M,N]
  long M, N, K;
  Compute compute;
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

// The backward passes (the GradientOps of src/tensor/backend.ts; host-gradients.ts defines them). Parameter
// gradients (dw, dbias, dweight, dtable, dhead) are added to; activation gradients are written. Products are exact
// f32, except matmulBackward's, which follow the context's compute mode as matmul does (grad_impl.h says why).
struct MatmulBackwardArgs {
  const float* dy;  // [M,N]
  const float* x;   // [M,K]
  const void* w;    // [N,K], f32 or bf16
  WType wType;
  float* dx;     // [M,K] or null
  float* dw;     // [N,K] or null
  float* dbias;  // [N] or null
  long M, N, K;
  // Bf16: dy, x and f32 w rounded to bf16 before their exact products are summed in f32, as matmul's Compute::Bf16.
  Compute compute;
};

struct AttentionBackwardArgs {
  const float *q, *k, *v, *dout;  // as AttentionArgs; dout [T,Hq,D]
  float *dq, *dk, *dv;
  long T, S, Hq, Hkv, D;
  float scale;
  bool causal;
  long queryOffset;
};

// Losses of the logits hidden[n,H]·head[V,H]ᵀ against targets (ids in [0, V)), and for the loss scale·Σ losses,
// dhidden (written) and dhead (added to), each optional.
struct CrossEntropyArgs {
  const float* hidden;
  const void* head;
  WType headType;
  const int32_t* targets;
  float scale;
  float* losses;
  float* dhidden;
  float* dhead;
  long n, H, V;
};

// Makes x opaque to the optimizer: an empty asm that claims to rewrite x's register, so x is rounded as computed and
// cannot be fused with the add that consumes it into one FMA. GCC contracts by default in C++ (-ffp-contract=fast:
// across statements and through intrinsics, _mm256_mul_ps then _mm256_add_ps becomes one vfmadd; binding.gyp sets no
// -ffp-contract), clang when asked to; kernels whose bits are specified mark the products that must stay rounded, so
// that their bits do not depend on compiler or flags. Costs no instruction.
#if defined(__x86_64__)
#define VL3_OPAQUE(x) __asm__("" : "+v"(x))
#elif defined(__aarch64__)
#define VL3_OPAQUE(x) __asm__("" : "+w"(x))
#else
#define VL3_OPAQUE(x) __asm__("" : "+m"(x))
#endif

// One AdamW update's float32 scalars, formed on the TypeScript side (host-gradients.ts adamwScalars) so that no
// pow or sqrt of ours has to agree with JavaScript's.
struct AdamWScalars {
  float decay;     // 1 − lr·wd (exactly 1 without weight decay)
  float w1;        // 1 − β1
  float b2;        // β2
  float w2;        // 1 − β2
  float stepSize;  // −lr / (1 − β1^t)
  float bc2Sqrt;   // √(1 − β2^t)
  float eps;
};

struct KernelTable {
  const char* name;
  // The tier multiplies bf16 values natively, so bf16 compute is faster than exact on it (and its default).
  bool bf16Dot;
  void (*matmul)(const MatmulArgs&);
  // Several matmuls of one x (same M, K, compute): parts[i].out = x·parts[i].wᵀ (+ bias), each with its own matmul's bits.
  void (*matmulMany)(const MatmulArgs* parts, int count);
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
  // Widens (dequantizes) rows ids[t] of table[V,D] into out[t,D]; ids were bounds-checked by the caller.
  void (*embedding)(const void* table, WType type, const int32_t* ids, float* out, long T, long D, long V);
  // Backward passes (see MatmulBackwardArgs). dx may be dy in rmsNorm/layerNorm/gelu/rope; dgate and dup may each
  // be dy, gate or up.
  void (*matmulBackward)(const MatmulBackwardArgs&);
  void (*attentionBackward)(const AttentionBackwardArgs&);
  void (*crossEntropy)(const CrossEntropyArgs&);
  void (*rmsNormBackward)(const float* dy, const float* x, const void* w, WType wType, float eps, float* dx,
                          float* dweight, long rows, long cols);
  void (*layerNormBackward)(const float* dy, const float* x, const void* w, WType wType, float eps, float* dx,
                            float* dweight, float* dbias, long rows, long cols);
  void (*geluBackward)(const float* dy, const float* x, float* dx, long n, bool erf);
  void (*siluMulBackward)(const float* dy, const float* gate, const float* up, float* dgate, float* dup, long n);
  void (*ropeBackward)(const float* dy, const float* cos, const float* sin, float* dx, long T, long H, long D);
  void (*mergeBlocksBackward)(const float* dy, float* dx, long rows, long cols, int m);
  // ids were bounds-checked by the caller.
  void (*embeddingBackward)(const float* dy, const int32_t* ids, float* dtable, long T, long D);
  // AdamW on n elements: p, m, v updated in place from g (none overlapping), bit-identical to host-gradients.ts
  // adamw on every tier (grad_adamw.h says how).
  void (*adamw)(float* p, const float* g, float* m, float* v, long n, const AdamWScalars& s);
  // Measurement loops: `iters` rounds of an FMA-bound body (returns flops done, result kept live via sink), and a
  // read-only sum of n floats.
  double (*fmaLoop)(long iters, float* sink);
  float (*sum)(const float* p, long n);
};

// Round-to-nearest-even f32 -> bf16 bits, as Compute::Bf16 rounds its operands (NaN stays a quiet NaN).
inline uint16_t f32ToBf16(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

// f32 rounded to the nearest bf16 value, kept as f32.
inline float roundBf16(float f) {
  const uint32_t u = static_cast<uint32_t>(f32ToBf16(f)) << 16;
  float r;
  __builtin_memcpy(&r, &u, 4);
  return r;
}

const KernelTable* scalarKernels();
// Each is null when this build has no such kernels (the x86 tiers on aarch64).
const KernelTable* avx2Kernels();
const KernelTable* avxvnniKernels();
const KernelTable* avx512Kernels();
const KernelTable* avx512bf16Kernels();
// Null off aarch64. Where the CPU has BF16 and dotprod, the build whose bf16 compute multiplies with BFMMLA/BFDOT
// (bf16Dot set); elsewhere the baseline ARMv8.0 build, whose bf16 compute rounds and runs the f32 kernels.
const KernelTable* neonKernels();

}  // namespace vl3
