import type { DType } from './dtype.js';
import type { Storage, Tensor } from './tensor.js';

export interface AttentionOptions {
  /** Multiplier applied to q·k before the softmax, usually 1/sqrt(headDim). */
  scale: number;
  /** Causal: query row i sees keys 0..queryOffset+i. Otherwise every query sees every key. */
  causal: boolean;
  /** Position of the first query row within the key sequence (causal only). Default: kvLen - qLen. */
  queryOffset?: number;
}

/** One of the matmuls of `Backend.matmuls`: out = x·wᵀ (+ bias). */
export interface MatmulPart {
  w: Tensor;
  bias: Tensor | null;
  out: Tensor;
}

/** One pre-norm decoder layer's weights (Qwen2, Llama): norms [H], projections [N, K] as `matmul` takes them. */
export interface DecoderLayerWeights {
  inputNorm: Tensor;
  qProj: Tensor;
  qBias: Tensor | null;
  kProj: Tensor;
  kBias: Tensor | null;
  vProj: Tensor;
  vBias: Tensor | null;
  oProj: Tensor;
  postNorm: Tensor;
  gateProj: Tensor;
  upProj: Tensor;
  downProj: Tensor;
}

/** The f32 buffers a decoder layer works in, the caller's so that they are reused: h [T,H], q and attn [T,Hq,D], gate and up [T,I]. */
export interface DecoderLayerScratch {
  h: Tensor;
  q: Tensor;
  attn: Tensor;
  gate: Tensor;
  up: Tensor;
}

/** What `Backend.decoderLayer` runs one layer on. */
export interface DecoderLayerStep {
  /** [T, H], f32: the layer's input, replaced by its output. */
  x: Tensor;
  /**
   * [S, Hkv, D], f32, S ≥ T: the sequence's keys and values. Rows S−T .. S−1 receive this layer's (the keys roped);
   * query row t attends causally to rows up to S−T+t.
   */
  keys: Tensor;
  values: Tensor;
  /** [T, D/2], f32: the rotary tables of the T positions (as `rope` takes them). */
  cos: Tensor;
  sin: Tensor;
  /** Both norms' epsilon. */
  eps: number;
  /** Attention's scale, usually 1/√D. */
  scale: number;
  scratch: DecoderLayerScratch;
}

/** What `Backend.decoderLayers` runs a stack of layers on: `DecoderLayerStep` with one keys and one values tensor a layer. */
export interface DecoderLayersStep extends Omit<DecoderLayerStep, 'keys' | 'values'> {
  /** Layer l's keys and values, [S, Hkv, D] each, one S for all. */
  keys: readonly Tensor[];
  values: readonly Tensor[];
}

export interface TopK {
  indices: Int32Array;
  values: Float32Array;
}

/**
 * How matmul multiplies (`Backend.compute`; every other op is f32 in both): 'exact' multiplies f32 activations by the
 * stored weights in f32, the numerics the parity tests check; 'bf16' first rounds activations (and f32 weights) to
 * bf16, round-to-nearest-even, then sums the exact products in f32: the numerics of the official model run in bf16
 * on a GPU, and the fast path of CPUs with bf16 dot-product instructions (native/kernels.h states the contract).
 */
export type ComputeMode = 'exact' | 'bf16';

/**
 * The narrow set of operations model code is written against, and the only way it reaches tensor memory.
 *
 * Memory: a tensor's storage belongs to its backend (host memory for the CPU backends, a buffer on a device later).
 * Model, engine and processing code create, fill and read tensors only through the memory ops below, never through
 * `Tensor.data`, so the same model code runs on a device whose memory the host cannot address.
 *
 * Compute: activations are f32; weights may be f32 or bf16 (widened inside the op, never in memory); every op writes
 * into an `out` tensor its caller allocated, so a caller can reuse buffers; `out` may be the same tensor as an input
 * where the op says so. Every backend's ops are checked by one layer (`CheckedBackend`): shapes, dtypes, storage and
 * aliasing, with the same error for every backend, naming the op and the operand.
 *
 * Why each op is here: the set is what VideoLLaMA3's three parts need and no more. matmul (every linear layer),
 * add/mul (residuals, scaling), rmsNorm/layerNorm (the decoder's and the encoder's norms), gelu (encoder MLP and
 * projector), siluMul (decoder MLP), softmax (sampling), rope (both rotary embeddings, tables from the host),
 * attention (causal with grouped KV heads for the decoder, blocked per frame for the encoder), mergeBlocks (the 2×2
 * video merge), embedding (token lookup), argmax/topK (greedy and sampled decoding, so only ids and a few scores
 * leave the device). Two ops are others run together, for speed only: matmuls (a layer's projections of one input)
 * and decoderLayers (whole decoder layers, one call instead of 12 a layer); a backend without them gets their parts.
 * Memory ops: allocate (activations, caches), upload (weights and pixels, once), write (small host tables: rope
 * angles, ids), download (logits for sampling, outputs), copy (KV appends, cache growth), copyRows (the
 * visual-feature scatter into the prompt), fill.
 *
 * Growing the interface without touching model code:
 * - Quantized weights (done): the block-quantized dtypes ('int8', 'int4', 'int4m'; quant.ts) are accepted for
 *   matmul's `w` and embedding's table only; matmul dispatches on the weight's dtype. Their packed layout is the one
 *   the CPU kernels read, so `upload` keeps it; a device backend would repack it in `upload` under the same dtype.
 *   Model code keeps passing "the weight".
 * - Training: backward ops join this interface beside their forward (matmulBackward returning dX and dW, and so on),
 *   checked by the same layer; a forward that must keep activations for its backward allocates them through
 *   `allocate` like any activation, so saved activations live in the backend's memory too.
 * - A GPU backend: implements `Kernels` over its buffers (Storage with its own `device`), queues work and syncs only
 *   in `download`, `argmax` and `topK`; the checks refuse a tensor from another device's storage by name.
 */
/**
 * The most rows of x for which every backend's matmul gives each row the bits it gets alone (native/kernels.h
 * kBatchRows): the engine decodes at most this many sequences in one batch.
 */
export const BATCH_ROWS = 16;

/**
 * AdamW's hyperparameters for one update (`GradientOps.adamw`): the double-precision values torch holds as Python
 * floats, rounded to float32 only where its kernels round them (host-gradients.ts `adamwScalars`).
 */
export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

/**
 * Backward passes of the ops training uses, and the optimizer's update. Gradients of parameters (`dw`, `dbias`,
 * `dweight`, `dtable`, `dhead`) are added to what their tensors hold, so that micro-batches, and a table used twice (a
 * tied LM head), sum up; gradients of activations (`dx`, `dq`, …) are written. All f32; weights read as f32 or bf16.
 */
export interface GradientOps {
  /**
   * For out = x·wᵀ (+ bias): dx[M,K] = dy[M,N]·w, dw[N,K] += dyᵀ·x, dbias[N] += Σ rows of dy; each optional. The
   * products follow the backend's compute mode as matmul's do (in bf16 mode dy, x and w are rounded to bf16 first).
   */
  matmulBackward(dy: Tensor, x: Tensor, w: Tensor, dx: Tensor | null, dw: Tensor | null, dbias: Tensor | null): void;
  /** For out = rmsNorm(x)·weight (rows of x): dx written, dweight added to (optional). */
  rmsNormBackward(dy: Tensor, x: Tensor, weight: Tensor, eps: number, dx: Tensor, dweight: Tensor | null): void;
  /** For out = layerNorm(x)·weight + bias (rows of x): dx written, dweight and dbias added to (each optional). */
  layerNormBackward(dy: Tensor, x: Tensor, weight: Tensor, eps: number, dx: Tensor, dweight: Tensor | null, dbias: Tensor | null): void;
  /** For out = mergeBlocks(x, mergeSize): dx written (each row of a block gets its share of the block's dy). */
  mergeBlocksBackward(dy: Tensor, mergeSize: number, dx: Tensor): void;
  /** For out = gelu(x, approximation): dx written (dx may be dy itself). */
  geluBackward(dy: Tensor, x: Tensor, dx: Tensor, approximation: 'tanh' | 'erf'): void;
  /** For out = SiLU(gate) ⊙ up: dgate and dup written. */
  siluMulBackward(dy: Tensor, gate: Tensor, up: Tensor, dgate: Tensor, dup: Tensor): void;
  /** For out = rope(x, cos, sin): dx written (the inverse rotation of dy; dx may be dy itself). */
  ropeBackward(dy: Tensor, cos: Tensor, sin: Tensor, dx: Tensor): void;
  /**
   * For out = attention(q, k, v, options): dq, dk, dv written. The probabilities are recomputed from q and k, one
   * query row at a time, never stored for more than one row.
   */
  attentionBackward(q: Tensor, k: Tensor, v: Tensor, dout: Tensor, dq: Tensor, dk: Tensor, dv: Tensor, options: AttentionOptions): void;
  /** For out = rows ids of table: dtable[ids[t]] += dy[t]. */
  embeddingBackward(dy: Tensor, ids: Tensor, dtable: Tensor): void;
  /**
   * Cross-entropy of the logits hidden[n,H]·head[V,H]ᵀ against targets[n] (i32): writes each row's loss into
   * losses[n] and, for the loss scale·Σ losses, dhidden[n,H] (written) and dhead (added to), each optional. The
   * logits are computed a vocabulary chunk at a time and never exist whole.
   */
  crossEntropy(hidden: Tensor, head: Tensor, targets: Tensor, scale: number, losses: Tensor, dhidden: Tensor | null, dhead: Tensor | null): void;
  /**
   * One AdamW update at Adam step `step` (1-based) in torch.optim.AdamW's float32 arithmetic (host-gradients.ts
   * defines it): the parameter p and its moments m (exp_avg) and v (exp_avg_sq) updated in place from the gradient g.
   * All f32 of one shape, no two sharing storage. Every backend gives the definition's bits.
   */
  adamw(p: Tensor, g: Tensor, m: Tensor, v: Tensor, step: number, hyper: AdamWHyper): void;
}

export interface Backend extends GradientOps {
  readonly name: string;
  /** The memory family this backend's tensors live in ('host' for the CPU backends). */
  readonly device: string;
  /** Threads the backend's kernels run on (this instance's own pool). */
  readonly threads: number;
  /** How matmul multiplies; fixed when the backend is made. */
  readonly compute: ComputeMode;

  // -- memory ----------------------------------------------------------------------------------------------------

  /** A new zero-filled tensor in this backend's memory. */
  allocate<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D>;
  /** Raw storage of `bytes` in this backend's memory, for buffers reused under several shapes (Workspace). */
  allocateStorage(bytes: number): Storage;
  /** A tensor in this backend's memory holding a host tensor's values: `host` itself where that is host memory. */
  upload<D extends DType>(host: Tensor<D>): Tensor<D>;
  /** Writes host values into a tensor of this backend (its dtype's numbers, its element count). */
  write(dst: Tensor, values: ArrayLike<number>): void;
  /** A host tensor holding t's values: t itself where t is host memory. Read it, do not write to it. */
  download<D extends DType>(t: Tensor<D>): Tensor<D>;
  /** dst ← src: the same dtype and element count (any shapes). dst must not partly overlap src. */
  copy(src: Tensor, dst: Tensor): void;
  /** Row dstRows[i] of dst ← row srcRows[i] of src (rows along the first dimension, of equal size and dtype). */
  copyRows(src: Tensor, srcRows: Int32Array, dst: Tensor, dstRows: Int32Array): void;
  /** Every element of t ← value. */
  fill(t: Tensor, value: number): void;

  // -- compute ---------------------------------------------------------------------------------------------------

  /**
   * out[M,N] = x[M,K] · w[N,K]ᵀ (+ bias[N]). x f32, w f32|bf16|int8|int4|int4m, bias f32|bf16 or null, out f32.
   * Quantized weights in 'bf16' compute multiply int8-quantized activations (native/kernels.h states the contract).
   * With at most BATCH_ROWS rows, each row of out has the bits it would have in a matmul of that row alone.
   */
  matmul(x: Tensor, w: Tensor, bias: Tensor | null, out: Tensor): void;

  /**
   * Several matmuls of one x: parts[i].out = x·parts[i].wᵀ (+ bias), each with the values `matmul` gives it. The
   * projections a layer takes of one input (q, k and v; gate and up) go through here, so that a backend can run them
   * as one job: the CPU's decode kernels stream their weights together, where each small weight alone pays for
   * starting its stream. No out may overlap x, a weight, a bias or another part's out.
   */
  matmuls(x: Tensor, parts: readonly MatmulPart[]): void;

  /**
   * One pre-norm decoder layer with grouped-query attention and a SwiGLU MLP, exactly the ops `decoderLayerOps`
   * (decoder-layer.ts) spells, with their bits: h = rmsNorm(x); q, k, v = h·W (+ bias), k and v into the last T rows
   * of keys and values; rope on q and k; x += o(attention); h = rmsNorm(x); x += down(silu(gate(h)) ⊙ up(h)). A
   * backend may run it as one call: a decode step spent more time in the JavaScript between a layer's 12 kernel
   * calls, which runs from caches the weights have just swept, than in any op but the matmuls (BENCHMARKS.md run 20).
   * No buffer of `step` may overlap another or a weight.
   */
  decoderLayer(weights: DecoderLayerWeights, step: DecoderLayerStep): void;

  /**
   * `decoderLayer` for each of `layers` in order, layer l with keys[l] and values[l], as one call: a decode step's
   * JavaScript between its layers' calls cost ~5 % of an int8 token, and its kernels ran slower after it
   * (BENCHMARKS.md run 21). All layers' buffers are checked before any layer runs.
   */
  decoderLayers(layers: readonly DecoderLayerWeights[], step: DecoderLayersStep): void;

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

  /** out[T,D] (f32) = rows ids[t] (i32) of table[V,D] (f32|bf16, or quantized: dequantized). An id outside [0,V) throws. */
  embedding(table: Tensor, ids: Tensor, out: Tensor): void;

  /** Index of the largest element of a 1-D f32 tensor; the first one on ties. */
  argmax(x: Tensor): number;

  /** The k largest elements of a 1-D f32 tensor, largest first; ties keep the lower index first. */
  topK(x: Tensor, k: number): TopK;
}

/**
 * What a backend implements: the ops of `Backend` without any checking (the one checking layer, `CheckedBackend`,
 * runs before every call and builds `allocate` on `allocateStorage`), on tensors of its own storage. When a kernel
 * runs its arguments are valid: shapes agree, dtypes are the allowed ones, ids are in range, outputs do not partly
 * overlap inputs, every tensor is in this backend's memory (`upload`'s argument excepted: a host tensor). `matmuls`
 * and `decoderLayers` are optional: without them the checking layer runs one `matmul` per part, and the layers' ops
 * (`decoderLayer` is `decoderLayers` of one layer).
 */
export type Kernels = Omit<Backend, 'allocate' | 'matmuls' | 'decoderLayer' | 'decoderLayers'> & Partial<Pick<Backend, 'matmuls' | 'decoderLayers'>>;
