import type { Backend } from '../tensor/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import { saveLayer, type DropoutMasks, type SavedLayer, type TrainingForward } from './layer-checkpoint.js';
import { TrainingLinear, type AdapterActivations, type LinearAdapter } from './lora-linear.js';
import type { Qwen2Dims } from './qwen2.js';
import { ropeInverseFrequencies, ropeTables } from './rope.js';
import { decoderWeights, flattenSpecs, loadSpecs, type Loaded, type WeightSpec } from './weight-names.js';

/** The decoder's parameters by role, as `decoderWeights` names them; a tied LM head is the embedding table itself. */
export type DecoderParameters = Loaded<ReturnType<typeof decoderWeights>, Tensor>;
type LayerParameters = DecoderParameters['layers'][number];
/** The same structure holding each parameter's gradient, or null where the parameter is frozen. */
type DecoderGradients = Loaded<ReturnType<typeof decoderWeights>, Tensor | null>;

type Role = 'q' | 'k' | 'v' | 'o' | 'gate' | 'up' | 'down';
type LayerLinears = Record<Role, TrainingLinear>;

/** What one layer's backward needs from its forward (spec 8.2 names in comments). */
interface LayerActivations {
  x: Tensor; // the layer's input (residual stream)
  h1: Tensor; // input_layernorm(x)
  q: Tensor; // rotated queries [L, Hq, D]
  k: Tensor; // rotated keys [L, Hkv, D]
  v: Tensor;
  attn: Tensor; // attention output [L, Hq, D]
  x2: Tensor; // x + o_proj(attn)
  h2: Tensor; // post_attention_layernorm(x2)
  gate: Tensor;
  up: Tensor;
  act: Tensor; // SiLU(gate) ⊙ up
  adapters: Partial<Record<Role, AdapterActivations | null>>; // each LoRA adapter's own
}

/** What every layer of one forward shares: the RoPE tables, the packed samples, whether dropout applies. */
interface PassState {
  cos: Tensor;
  sin: Tensor;
  /** Start of each packed sample, and the total length last. */
  bounds: number[];
  training: boolean;
}

/** A training forward pass's saved state: each layer's activations (or input), the final norm's input, and the pass's. */
export interface DecoderActivations extends PassState {
  layers: SavedLayer<LayerActivations, Role>[];
  beforeNorm: Tensor;
  /** The final normed hidden states [L, H]: the loss reads them. */
  hidden: Tensor;
}

/** The loss of a micro-batch and what its backward starts from. */
export interface LossResult {
  /** Σ over supervised positions of the token's cross-entropy (before any scale). */
  lossSum: number;
  /** The positions i whose hidden state predicts labels[i + 1], and each one's cross-entropy. */
  positions: Int32Array;
  tokenLosses: Float32Array;
  /** d(scale · lossSum) / d(hidden) [L, H]: zero at unsupervised positions. */
  dHidden: Tensor;
}

/** Labels equal to this are not supervised (the official IGNORE_INDEX). */
export const IGNORE_INDEX = -100;

/**
 * The Qwen2.5 decoder for training, its forward and backward side by side: the forward keeps what the backward
 * needs (every layer's activations, f32; or with `checkpointLayers` each layer's input, the layer then run again
 * before its backward), the backward adds each trainable parameter's gradient into its tensor and returns the
 * gradient of the input embeddings. Packed samples (spec 10.5, `use_batch_flattening`) attend only within
 * themselves: attention runs per sample, each causal from its own first position.
 */
export class Qwen2Training {
  readonly headDim: number;
  private readonly invFreq: Float32Array;
  private readonly grads: DecoderGradients;
  private readonly linears: LayerLinears[];

  /**
   * `params`: f32 tensors in the backend's memory; `gradientOf(spec)`: the f32 tensor of the spec's shape that the
   * parameter's gradient is added to, or null for a frozen parameter (its gradient is not computed);
   * `adapterOf(spec)`: the LoRA adapter on the linear layer whose weight `spec` is, or null.
   */
  constructor(
    readonly dims: Qwen2Dims,
    readonly params: DecoderParameters,
    gradientOf: (spec: WeightSpec) => Tensor | null,
    readonly backend: Backend,
    lmHeadName = 'lm_head.weight',
    adapterOf: (spec: WeightSpec) => LinearAdapter | null = () => null,
  ) {
    this.headDim = dims.hiddenSize / dims.numAttentionHeads;
    this.invFreq = ropeInverseFrequencies(this.headDim, dims.ropeTheta);
    const specs = decoderWeights(dims, lmHeadName);
    this.grads = loadSpecs(specs, gradientOf);
    // A tied head shares the embedding table's gradient, which then receives both uses.
    if (params.lmHead === params.embedTokens) this.grads.lmHead = this.grads.embedTokens;
    const adapters = loadSpecs(specs, adapterOf);
    this.linears = params.layers.map((p, l) => {
      const g = this.grads.layers[l]!;
      const a = adapters.layers[l]!;
      const linear = (w: 'qProj' | 'kProj' | 'vProj' | 'oProj' | 'gateProj' | 'upProj' | 'downProj', bias?: 'qBias' | 'kBias' | 'vBias') =>
        new TrainingLinear(backend, p[w], bias ? p[bias] : null, g[w], bias ? g[bias] : null, a[w]);
      return { q: linear('qProj', 'qBias'), k: linear('kProj', 'kBias'), v: linear('vProj', 'vBias'), o: linear('oProj'), gate: linear('gateProj'), up: linear('upProj'), down: linear('downProj') };
    });
  }

  /** Names of the decoder's parameters, in checkpoint order of roles. */
  static parameterNames(dims: Qwen2Dims, lmHeadName = 'lm_head.weight'): string[] {
    return flattenSpecs(decoderWeights(dims, lmHeadName)).map((s) => s.name);
  }

  /**
   * Runs embeds [L, H] at `positions` (restarting at 0 where each packed sample starts; `bounds` lists the starts
   * and ends with L). Nothing is written into `embeds`.
   */
  forward(embeds: Tensor, positions: ArrayLike<number>, bounds: readonly number[], options: TrainingForward = {}): DecoderActivations {
    const { hiddenSize: H, rmsNormEps: eps } = this.dims;
    const D = this.headDim;
    const L = embeds.dim(0);
    checkBounds(bounds, L);
    const b = this.backend;
    const tables = ropeTables(this.invFreq, Array.from(positions));
    const pass: PassState = { cos: b.allocate('f32', [L, D / 2]), sin: b.allocate('f32', [L, D / 2]), bounds: [...bounds], training: options.training ?? false };
    b.write(pass.cos, tables.cos);
    b.write(pass.sin, tables.sin);

    let x: Tensor = b.allocate('f32', [L, H]);
    b.copy(embeds, x);
    const layers = this.params.layers.map((_, l) => {
      const { activations, out } = this.layer(l, x, pass);
      x = out;
      return saveLayer(activations, options.checkpointLayers);
    });
    const hidden = b.allocate('f32', [L, H]);
    b.rmsNorm(x, this.params.finalNorm, eps, hidden);
    return { ...pass, layers, beforeNorm: x, hidden };
  }

  /**
   * Decoder layer l (spec 8.2) on its input x: its output and everything its backward reads. The forward runs it
   * once; a checkpointed layer runs again on the saved input with the saved dropout `masks`, bit for bit the first run.
   */
  private layer(l: number, x: Tensor, pass: PassState, masks?: DropoutMasks<Role>): { activations: LayerActivations; out: Tensor } {
    const { hiddenSize: H, intermediateSize: I, numAttentionHeads: Hq, numKeyValueHeads: Hkv, rmsNormEps: eps } = this.dims;
    const D = this.headDim;
    const L = x.dim(0);
    const b = this.backend;
    const f32 = (shape: number[]) => b.allocate('f32', shape);
    const p = this.params.layers[l]!;
    const linear = this.linears[l]!;
    const { cos, sin, training } = pass;
    const a: LayerActivations = {
      x,
      h1: f32([L, H]),
      q: f32([L, Hq, D]),
      k: f32([L, Hkv, D]),
      v: f32([L, Hkv, D]),
      attn: f32([L, Hq, D]),
      x2: f32([L, H]),
      h2: f32([L, H]),
      gate: f32([L, I]),
      up: f32([L, I]),
      act: f32([L, I]),
      adapters: {},
    };
    const ad = a.adapters;
    b.rmsNorm(a.x, p.inputNorm, eps, a.h1);
    ad.q = linear.q.forward(a.h1, a.q.reshape([L, H]), training, masks?.q);
    ad.k = linear.k.forward(a.h1, a.k.reshape([L, Hkv * D]), training, masks?.k);
    ad.v = linear.v.forward(a.h1, a.v.reshape([L, Hkv * D]), training, masks?.v);
    b.rope(a.q, cos, sin, a.q);
    b.rope(a.k, cos, sin, a.k);
    this.perSample(pass.bounds, (s, e) =>
      b.attention(a.q.rows(s, e), a.k.rows(s, e), a.v.rows(s, e), a.attn.rows(s, e), { scale: 1 / Math.sqrt(D), causal: true, queryOffset: 0 }),
    );
    ad.o = linear.o.forward(a.attn.reshape([L, H]), a.x2, training, masks?.o);
    b.add(a.x, a.x2, a.x2);
    b.rmsNorm(a.x2, p.postNorm, eps, a.h2);
    ad.gate = linear.gate.forward(a.h2, a.gate, training, masks?.gate);
    ad.up = linear.up.forward(a.h2, a.up, training, masks?.up);
    b.siluMul(a.gate, a.up, a.act);
    const out = f32([L, H]);
    ad.down = linear.down.forward(a.act, out, training, masks?.down);
    b.add(a.x2, out, out);
    return { activations: a, out };
  }

  /**
   * The loss of spec 10.5: for every position i with labels[i + 1] ≠ IGNORE_INDEX, the cross-entropy of the LM head's
   * logits of hidden[i] against labels[i + 1]; the backward starts from d(scale · Σ)/d(hidden), and the LM head's
   * gradient (the embedding table's, when tied) is added here. Without `withGradient`, only the losses (dHidden zero).
   */
  loss(acts: DecoderActivations, labels: ArrayLike<number>, scale: number, withGradient = true): LossResult {
    const b = this.backend;
    const L = acts.hidden.dim(0);
    const H = this.dims.hiddenSize;
    if (labels.length !== L) throw new Error(`loss: ${labels.length} labels for ${L} positions`);
    const positions: number[] = [];
    const targets: number[] = [];
    for (let i = 0; i + 1 < L; i++) {
      if (labels[i + 1] === IGNORE_INDEX) continue;
      positions.push(i);
      targets.push(labels[i + 1]!);
    }
    const n = positions.length;
    const rows = Int32Array.from(positions);
    const gathered = b.allocate('f32', [n, H]);
    b.copyRows(acts.hidden, rows, gathered, Int32Array.from(positions.keys()));
    const targetIds = b.allocate('i32', [n]);
    b.write(targetIds, targets);
    const losses = b.allocate('f32', [n]);
    const dRows = b.allocate('f32', [n, H]);
    b.crossEntropy(gathered, this.params.lmHead, targetIds, scale, losses, withGradient ? dRows : null, withGradient ? this.grads.lmHead : null);
    const dHidden = b.allocate('f32', [L, H]);
    b.copyRows(dRows, Int32Array.from(positions.keys()), dHidden, rows);
    const tokenLosses = Float32Array.from(b.download(losses).data as Float32Array);
    return { lossSum: tokenLosses.reduce((s, l) => s + l, 0), positions: rows, tokenLosses, dHidden };
  }

  /** Adds every trainable parameter's gradient; returns d(loss)/d(embeds) [L, H]. */
  backward(acts: DecoderActivations, dHidden: Tensor): Tensor {
    const { hiddenSize: H, numAttentionHeads: Hq, numKeyValueHeads: Hkv, rmsNormEps: eps, intermediateSize: I } = this.dims;
    const D = this.headDim;
    const L = dHidden.dim(0);
    const b = this.backend;
    const f32 = (shape: number[]) => b.allocate('f32', shape);
    // Scratch, reused by every layer: the gradient flowing down the residual stream and the branch gradients.
    let dx = f32([L, H]);
    const dBranch = f32([L, H]);
    const dAct = f32([L, I]);
    const dGate = f32([L, I]);
    const dUp = f32([L, I]);
    const dAttn = f32([L, Hq, D]);
    const dq = f32([L, Hq, D]);
    const dk = f32([L, Hkv, D]);
    const dv = f32([L, Hkv, D]);
    const dNormed = f32([L, H]);

    b.rmsNormBackward(dHidden, acts.beforeNorm, this.params.finalNorm, eps, dx, this.grads.finalNorm);
    for (let l = this.params.layers.length - 1; l >= 0; l--) {
      const p: LayerParameters = this.params.layers[l]!;
      const g = this.grads.layers[l]!;
      const saved = acts.layers[l]!;
      const a = 'activations' in saved ? saved.activations : this.layer(l, saved.input, acts, saved.masks).activations;
      const linear = this.linears[l]!;
      const ad = a.adapters;
      // MLP branch: out = x2 + down(SiLU(gate(h2)) ⊙ up(h2)), h2 = post_norm(x2).
      linear.down.backward(dx, a.act, ad.down ?? null, dAct);
      b.siluMulBackward(dAct, a.gate, a.up, dGate, dUp);
      linear.gate.backward(dGate, a.h2, ad.gate ?? null, dNormed);
      linear.up.backward(dUp, a.h2, ad.up ?? null, dBranch);
      b.add(dNormed, dBranch, dNormed);
      b.rmsNormBackward(dNormed, a.x2, p.postNorm, eps, dBranch, g.postNorm);
      b.add(dx, dBranch, dx);
      // Attention branch: x2 = x + o(attention(rope(q(h1)), rope(k(h1)), v(h1))), h1 = input_norm(x).
      linear.o.backward(dx, a.attn.reshape([L, H]), ad.o ?? null, dAttn.reshape([L, H]));
      this.perSample(acts.bounds, (s, e) =>
        b.attentionBackward(a.q.rows(s, e), a.k.rows(s, e), a.v.rows(s, e), dAttn.rows(s, e), dq.rows(s, e), dk.rows(s, e), dv.rows(s, e), {
          scale: 1 / Math.sqrt(D),
          causal: true,
          queryOffset: 0,
        }),
      );
      b.ropeBackward(dq, acts.cos, acts.sin, dq);
      b.ropeBackward(dk, acts.cos, acts.sin, dk);
      linear.q.backward(dq.reshape([L, H]), a.h1, ad.q ?? null, dNormed);
      linear.k.backward(dk.reshape([L, Hkv * D]), a.h1, ad.k ?? null, dBranch);
      b.add(dNormed, dBranch, dNormed);
      linear.v.backward(dv.reshape([L, Hkv * D]), a.h1, ad.v ?? null, dBranch);
      b.add(dNormed, dBranch, dNormed);
      b.rmsNormBackward(dNormed, a.x, p.inputNorm, eps, dBranch, g.inputNorm);
      const dIn = f32([L, H]);
      b.add(dx, dBranch, dIn);
      dx = dIn;
    }
    return dx;
  }

  private perSample(bounds: readonly number[], run: (start: number, end: number) => void): void {
    for (let i = 0; i + 1 < bounds.length; i++) if (bounds[i + 1]! > bounds[i]!) run(bounds[i]!, bounds[i + 1]!);
  }
}

function checkBounds(bounds: readonly number[], L: number): void {
  const ok = bounds.length >= 2 && bounds[0] === 0 && bounds.at(-1) === L && bounds.every((v, i) => i === 0 || v >= bounds[i - 1]!);
  if (!ok) throw new Error(`packed sample bounds must rise from 0 to the sequence length ${L}, got [${bounds.join(', ')}]`);
}

/** Sample bounds of a packed sequence from its position ids: a sample starts wherever the position is 0. */
export function packedBounds(positions: ArrayLike<number>): number[] {
  const bounds: number[] = [];
  for (let i = 0; i < positions.length; i++) if (i === 0 || positions[i] === 0) bounds.push(i);
  bounds.push(positions.length);
  return bounds;
}
