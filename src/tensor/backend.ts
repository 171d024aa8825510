import type { Tensor } from './tensor.js';

export interface AttentionOptions {
  /** Multiplier applied to q·k before the softmax, usually 1/sqrt(headDim). */
  scale: number;
  /** Causal: query row i sees keys 0..queryOffset+i. Otherwise every query sees every key. */
  causal: boolean;
  /** Position of the first query row within the key sequence (causal only). Default: kvLen - qLen. */
  queryOffset?: number;
}

export interface TopK {
  indices: Int32Array;
  values: Float32Array;
}

/**
 * The narrow set of operations model code is written against.
 *
 * Conventions shared by every op: activations are f32; weights may be f32 or bf16 (widened inside the op, never in
 * memory); every op writes into an `out` tensor its caller allocated, so a caller can reuse buffers; `out` may be the
 * same tensor as an input where the op says so. Shapes are checked and a mismatch throws an error naming the op and
 * the operand. A GPU backend implements the same interface over its own storage; backward ops join it for training.
 */
export interface Backend {
  readonly name: string;
  /** Worker threads used by the backend's kernels. */
  threads: number;

  /** out[M,N] = x[M,K] · w[N,K]ᵀ (+ bias[N]). x f32, w f32|bf16, bias f32|bf16 or null, out f32. */
  matmul(x: Tensor, w: Tensor, bias: Tensor | null, out: Tensor): void;

  /** out = a + b. b has a's shape, or is a vector broadcast over a's last dimension. out may be a. */
  add(a: Tensor, b: Tensor, out: Tensor): void;

  /** out = a ⊙ b with the same broadcasting rule as add. out may be a. */
  mul(a: Tensor, b: Tensor, out: Tensor): void;

  /** Per row of the last dimension: out = x · rsqrt(mean(x²) + eps) ⊙ weight. weight f32|bf16. out may be x. */
  rmsNorm(x: Tensor, weight: Tensor, eps: number, out: Tensor): void;

  /** Per row of the last dimension: out = (x − mean) / sqrt(var + eps) ⊙ weight + bias, biased variance. out may be x. */
  layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps: number, out: Tensor): void;

  /**
   * GELU, elementwise. 'tanh': 0.5·u·(1 + tanh(√(2/π)·(u + 0.044715·u³))) (gelu_pytorch_tanh);
   * 'erf': 0.5·u·(1 + erf(u/√2)) (nn.GELU()). out may be x.
   */
  gelu(x: Tensor, out: Tensor, approximation: 'tanh' | 'erf'): void;

  /** out = silu(gate) ⊙ up, the SwiGLU gate of a Qwen2 MLP. out may be gate or up. */
  siluMul(gate: Tensor, up: Tensor, out: Tensor): void;

  /** Softmax over the last dimension. out may be x. */
  softmax(x: Tensor, out: Tensor): void;

  /**
   * Rotary embedding in the half-split layout: x[T,H,D], cos and sin [T,D/2] (one angle set per row, shared by
   * all heads): out[..., j] = x_j·cos_j − x_{j+D/2}·sin_j and out[..., j+D/2] = x_{j+D/2}·cos_j + x_j·sin_j.
   * out may be x.
   */
  rope(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor): void;

  /**
   * Scaled dot-product attention with grouped KV heads: q[T,Hq,D], k and v [S,Hkv,D], out[T,Hq,D], query head h
   * reads KV head floor(h / (Hq/Hkv)). Softmax in f32. Memory is bounded by a tile of queries, never T×S.
   */
  attention(q: Tensor, k: Tensor, v: Tensor, out: Tensor, options: AttentionOptions): void;

  /**
   * Spatial merge of m×m patch blocks whose rows are consecutive (block order): x[n·m², C] → out[n, C]. m = 1 copies;
   * m = 2 is the reference's bilinear ×½ downsample (align_corners=False), which for each block a b / c d is
   * 0.5·(0.5·a + 0.5·b) + 0.5·(0.5·c + 0.5·d) in f32. Other m are refused.
   */
  mergeBlocks(x: Tensor, mergeSize: number, out: Tensor): void;

  /** out[T,D] (f32) = rows ids[t] (i32) of table[V,D] (f32|bf16). An id outside [0,V) throws. */
  embedding(table: Tensor, ids: Tensor, out: Tensor): void;

  /** Index of the largest element of a 1-D f32 tensor; the first one on ties. */
  argmax(x: Tensor): number;

  /** The k largest elements of a 1-D f32 tensor, largest first; ties keep the lower index first. */
  topK(x: Tensor, k: number): TopK;
}
