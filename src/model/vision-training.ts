import type { Backend } from '../tensor/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import { saveLayer, type DropoutMasks, type SavedLayer, type TrainingForward } from './layer-checkpoint.js';
import { TrainingLinear, type AdapterActivations, type LinearAdapter } from './lora-linear.js';
import type { VisionDims } from './vision-encoder.js';
import { visionRopeTables, type VisualGrid } from './vision-rope.js';
import { loadSpecs, visionEncoderWeights, type Loaded, type WeightSpec } from './weight-names.js';

export type VisionParameters = Loaded<ReturnType<typeof visionEncoderWeights>, Tensor>;
type VisionGradients = Loaded<ReturnType<typeof visionEncoderWeights>, Tensor | null>;

type Role = 'q' | 'k' | 'v' | 'out' | 'fc1' | 'fc2';
type LayerLinears = Record<Role, TrainingLinear>;

/** What one encoder layer's backward needs from its forward. */
interface LayerActivations {
  x: Tensor; // the layer's input
  h1: Tensor; // layer_norm1(x)
  q: Tensor; // rotated [n, heads, D]
  k: Tensor;
  v: Tensor;
  attn: Tensor;
  x2: Tensor; // x + out_proj(attn)
  h2: Tensor; // layer_norm2(x2)
  pre: Tensor; // fc1(h2), before the GELU
  act: Tensor; // GELU(pre)
  adapters: Partial<Record<Role, AdapterActivations | null>>; // each LoRA adapter's own
}

/** What every layer of one forward shares: each patch row's RoPE angles, the frames, whether dropout applies. */
interface PassState {
  cos: Tensor;
  sin: Tensor;
  /** One grid per frame, in patch-row order: attention stays inside each. */
  frames: VisualGrid[];
  training: boolean;
}

export interface VisionActivations extends PassState {
  pixels: Tensor;
  /** Per layer its activations, or with checkpointing its input. */
  layers: SavedLayer<LayerActivations, Role>[];
  beforeNorm: Tensor;
  /** Merged features [Σ t·(gh/m)·(gw/m), C], items in order: what the projector reads. */
  features: Tensor;
}

/**
 * The vision encoder (spec 6) for training: patch embedding, 2-D RoPE, pre-norm layers with attention inside each
 * image or frame, post-LayerNorm and the m×m merge; the forward keeps every layer's activations for the backward
 * beside it (or with `checkpointLayers` each layer's input, the layer then run again before its backward). All
 * frames of a micro-batch run as one sequence of patch rows (training inputs are small by `mm_max_length`);
 * attention still never crosses a frame.
 */
export class VisionEncoderTraining {
  readonly headDim: number;
  private readonly grads: VisionGradients;
  private readonly patchWeight: Tensor;
  private readonly patchGrad: Tensor | null;
  private readonly linears: LayerLinears[];

  /** `adapterOf(spec)`: the LoRA adapter on the linear layer whose weight `spec` is, or null. */
  constructor(
    readonly dims: VisionDims,
    readonly params: VisionParameters,
    gradientOf: (spec: WeightSpec) => Tensor | null,
    readonly backend: Backend,
    prefix = 'model.vision_encoder.',
    adapterOf: (spec: WeightSpec) => LinearAdapter | null = () => null,
  ) {
    const { hiddenSize: C, numAttentionHeads: heads, patchSize: p, numChannels: ch } = dims;
    this.headDim = C / heads;
    const specs = visionEncoderWeights(dims, prefix);
    this.grads = loadSpecs(specs, gradientOf);
    const adapters = loadSpecs(specs, adapterOf);
    this.linears = params.layers.map((layer, l) => {
      const g = this.grads.layers[l]!;
      const a = adapters.layers[l]!;
      const linear = (r: Role) => new TrainingLinear(backend, layer[r].weight, layer[r].bias, g[r].weight, g[r].bias, a[r].weight);
      return { q: linear('q'), k: linear('k'), v: linear('v'), out: linear('out'), fc1: linear('fc1'), fc2: linear('fc2') };
    });
    // The patch embedding is stored as a convolution [C, ch, p, p]; on 588-value patch rows it is a matmul.
    this.patchWeight = params.patchEmbed.weight.reshape([C, ch * p * p]);
    this.patchGrad = this.grads.patchEmbed.weight?.reshape([C, ch * p * p]) ?? null;
  }

  forward(pixels: Tensor, grids: readonly VisualGrid[], options: TrainingForward = {}): VisionActivations {
    const { hiddenSize: C, layerNormEps: eps } = this.dims;
    const b = this.backend;
    const n = pixels.dim(0);
    const frames = grids.flatMap((g) => Array.from({ length: g.frames }, () => g));
    const pass: PassState = { ...this.ropeTables(frames, n), frames, training: options.training ?? false };

    let x: Tensor = b.allocate('f32', [n, C]);
    b.matmul(pixels, this.patchWeight, this.params.patchEmbed.bias, x);
    const layers = this.params.layers.map((_, l) => {
      const { activations, out } = this.layer(l, x, pass);
      x = out;
      return saveLayer(activations, options.checkpointLayers);
    });
    const normed = b.allocate('f32', [n, C]);
    b.layerNorm(x, this.params.postNorm.weight, this.params.postNorm.bias, eps, normed);
    const merged = frames.reduce((m, g) => m + (g.gridH * g.gridW) / g.mergeSize ** 2, 0);
    const features = b.allocate('f32', [merged, C]);
    this.perFrame(frames, (s, e, g, m) => b.mergeBlocks(normed.rows(s, e), g.mergeSize, features.rows(m, m + (e - s) / g.mergeSize ** 2)));
    return { ...pass, pixels, layers, beforeNorm: x, features };
  }

  /**
   * Encoder layer l on its input x: its output and everything its backward reads. The forward runs it once; a
   * checkpointed layer runs again on the saved input with the saved dropout `masks`, bit for bit the first run.
   */
  private layer(l: number, x: Tensor, pass: PassState, masks?: DropoutMasks<Role>): { activations: LayerActivations; out: Tensor } {
    const { hiddenSize: C, intermediateSize: I, numAttentionHeads: heads, layerNormEps: eps } = this.dims;
    const D = this.headDim;
    const b = this.backend;
    const n = x.dim(0);
    const f32 = (shape: number[]) => b.allocate('f32', shape);
    const p = this.params.layers[l]!;
    const linear = this.linears[l]!;
    const { cos, sin, training } = pass;
    const a: LayerActivations = {
      x,
      h1: f32([n, C]),
      q: f32([n, heads, D]),
      k: f32([n, heads, D]),
      v: f32([n, heads, D]),
      attn: f32([n, heads, D]),
      x2: f32([n, C]),
      h2: f32([n, C]),
      pre: f32([n, I]),
      act: f32([n, I]),
      adapters: {},
    };
    const ad = a.adapters;
    b.layerNorm(a.x, p.norm1.weight, p.norm1.bias, eps, a.h1);
    ad.q = linear.q.forward(a.h1, a.q.reshape([n, C]), training, masks?.q);
    ad.k = linear.k.forward(a.h1, a.k.reshape([n, C]), training, masks?.k);
    ad.v = linear.v.forward(a.h1, a.v.reshape([n, C]), training, masks?.v);
    b.rope(a.q, cos, sin, a.q);
    b.rope(a.k, cos, sin, a.k);
    this.perFrame(pass.frames, (s, e) => b.attention(a.q.rows(s, e), a.k.rows(s, e), a.v.rows(s, e), a.attn.rows(s, e), { scale: 1 / Math.sqrt(D), causal: false }));
    ad.out = linear.out.forward(a.attn.reshape([n, C]), a.x2, training, masks?.out);
    b.add(a.x, a.x2, a.x2);
    b.layerNorm(a.x2, p.norm2.weight, p.norm2.bias, eps, a.h2);
    ad.fc1 = linear.fc1.forward(a.h2, a.pre, training, masks?.fc1);
    b.gelu(a.pre, a.act, 'tanh');
    const out = f32([n, C]);
    ad.fc2 = linear.fc2.forward(a.act, out, training, masks?.fc2);
    b.add(a.x2, out, out);
    return { activations: a, out };
  }

  /** Adds the trainable parameters' gradients, from d(loss)/d(features). */
  backward(acts: VisionActivations, dFeatures: Tensor): void {
    const { hiddenSize: C, intermediateSize: I, numAttentionHeads: heads, layerNormEps: eps } = this.dims;
    const D = this.headDim;
    const b = this.backend;
    const n = acts.pixels.dim(0);
    const f32 = (shape: number[]) => b.allocate('f32', shape);
    const dNormed = f32([n, C]);
    this.perFrame(acts.frames, (s, e, g, m) => b.mergeBlocksBackward(dFeatures.rows(m, m + (e - s) / g.mergeSize ** 2), g.mergeSize, dNormed.rows(s, e)));
    let dx = f32([n, C]);
    const post = this.grads.postNorm;
    b.layerNormBackward(dNormed, acts.beforeNorm, this.params.postNorm.weight, eps, dx, post.weight, post.bias);
    const dBranch = f32([n, C]);
    const dAct = f32([n, I]);
    const dAttn = f32([n, heads, D]);
    const dq = f32([n, heads, D]);
    const dk = f32([n, heads, D]);
    const dv = f32([n, heads, D]);
    for (let l = this.params.layers.length - 1; l >= 0; l--) {
      const p = this.params.layers[l]!;
      const g = this.grads.layers[l]!;
      const saved = acts.layers[l]!;
      const a = 'activations' in saved ? saved.activations : this.layer(l, saved.input, acts, saved.masks).activations;
      const linear = this.linears[l]!;
      const ad = a.adapters;
      // MLP branch: out = x2 + fc2(GELU(fc1(norm2(x2)))).
      linear.fc2.backward(dx, a.act, ad.fc2 ?? null, dAct);
      b.geluBackward(dAct, a.pre, dAct, 'tanh');
      linear.fc1.backward(dAct, a.h2, ad.fc1 ?? null, dBranch);
      b.layerNormBackward(dBranch, a.x2, p.norm2.weight, eps, dNormed, g.norm2.weight, g.norm2.bias);
      b.add(dx, dNormed, dx);
      // Attention branch: x2 = x + out(attention per frame(rope(q(h1)), rope(k(h1)), v(h1))), h1 = norm1(x).
      linear.out.backward(dx, a.attn.reshape([n, C]), ad.out ?? null, dAttn.reshape([n, C]));
      this.perFrame(acts.frames, (s, e) =>
        b.attentionBackward(a.q.rows(s, e), a.k.rows(s, e), a.v.rows(s, e), dAttn.rows(s, e), dq.rows(s, e), dk.rows(s, e), dv.rows(s, e), {
          scale: 1 / Math.sqrt(D),
          causal: false,
        }),
      );
      b.ropeBackward(dq, acts.cos, acts.sin, dq);
      b.ropeBackward(dk, acts.cos, acts.sin, dk);
      linear.q.backward(dq.reshape([n, C]), a.h1, ad.q ?? null, dNormed);
      linear.k.backward(dk.reshape([n, C]), a.h1, ad.k ?? null, dBranch);
      b.add(dNormed, dBranch, dNormed);
      linear.v.backward(dv.reshape([n, C]), a.h1, ad.v ?? null, dBranch);
      b.add(dNormed, dBranch, dNormed);
      b.layerNormBackward(dNormed, a.x, p.norm1.weight, eps, dBranch, g.norm1.weight, g.norm1.bias);
      const dIn = f32([n, C]);
      b.add(dx, dBranch, dIn);
      dx = dIn;
    }
    // The pixels are data: only the patch embedding's own gradients are wanted.
    b.matmulBackward(dx, acts.pixels, this.patchWeight, null, this.patchGrad, this.grads.patchEmbed.bias);
  }

  /** The 2-D RoPE tables of every patch row: each frame's depend on its grid only. */
  private ropeTables(frames: VisualGrid[], n: number): { cos: Tensor; sin: Tensor } {
    const half = this.headDim / 2;
    const cosHost = new Float32Array(n * half);
    const sinHost = new Float32Array(n * half);
    let offset = 0;
    for (const g of frames) {
      const tables = visionRopeTables(g, this.headDim);
      cosHost.set(tables.cos, offset * half);
      sinHost.set(tables.sin, offset * half);
      offset += g.gridH * g.gridW;
    }
    const cos = this.backend.allocate('f32', [n, half]);
    const sin = this.backend.allocate('f32', [n, half]);
    this.backend.write(cos, cosHost);
    this.backend.write(sin, sinHost);
    return { cos, sin };
  }

  /** Runs `run(start, end, grid, mergedStart)` for each frame's patch rows and its first merged row. */
  private perFrame(frames: readonly VisualGrid[], run: (start: number, end: number, grid: VisualGrid, merged: number) => void): void {
    let s = 0;
    let m = 0;
    for (const g of frames) {
      const e = s + g.gridH * g.gridW;
      run(s, e, g, m);
      m += (e - s) / g.mergeSize ** 2;
      s = e;
    }
  }
}
