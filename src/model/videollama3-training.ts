import type { Backend } from '../tensor/backend.js';
import { Tensor } from '../tensor/tensor.js';
import type { VideoLlama3Config } from './config.js';
import { savedBytes, type TrainingForward } from './layer-checkpoint.js';
import type { LinearAdapter } from './lora-linear.js';
import { initialLoraPair, loraParameterName, loraScaling, targetedModules, type LoraConfig, type LoraPair } from './lora.js';
import { ProjectorTraining } from './projector-training.js';
import { packedBounds, Qwen2Training } from './qwen2-training.js';
import { VisionEncoderTraining } from './vision-training.js';
import type { VisualGrid } from './vision-rope.js';
import { decoderWeights, flattenSpecs, loadSpecs, projectorWeights, visionEncoderWeights, type WeightSpec } from './weight-names.js';

/** Reads a checkpoint tensor by spec, as stored (bf16 in every release). */
export interface TrainingWeightSource {
  get(spec: WeightSpec): Tensor;
}

/** One packed micro-batch as the model trains on it: after truncation and (stages 3-4) DiffFP deletion. */
export interface TrainingInputs {
  /** [rows, 588] pixel rows of every item, the text-only dummy's included. */
  pixelValues: Tensor;
  items: readonly VisualGrid[];
  /** Rows of the merged features that fill the sequence's `<image>` positions, in order. */
  visualRows: Int32Array;
  inputIds: ArrayLike<number>;
  labels: ArrayLike<number>;
  /** 0..n-1 per packed sample: a sample starts where its position is 0. */
  positionIds: ArrayLike<number>;
}

/** LoRA on the model (the official `--lora_enable`): adapters on the layers `config.targetModules` select. */
export interface TrainingLora {
  config: LoraConfig;
  /** Starting A and B by module path (an adapter file's); a module without them starts as PEFT initialises it. */
  initial?: ReadonlyMap<string, LoraPair>;
  /** Uniform numbers in [0, 1) for A's initial values and the dropout masks: a seeded generator repeats a run. */
  random: () => number;
}

export interface StepResult {
  /** Σ of the supervised tokens' cross-entropies (unscaled). */
  lossSum: number;
  supervised: number;
  /** Bytes the decoder's and the vision encoder's layers kept from the forward for the backward (`savedBytes`). */
  savedActivationBytes: number;
}

export interface TrainingModelOptions {
  /** Activation checkpointing per layer in the decoder and the vision encoder (`TrainingForward.checkpointLayers`). */
  activationCheckpointing?: boolean;
}

/**
 * The whole model for training (spec 10): vision encoder → merge → projector, the features written over the
 * `<image>` embeddings (the official `embeds·0 + features`: the table gets no gradient there), the decoder, the
 * loss. Trainable parameters are f32 master copies; frozen ones stay as stored (bf16), and their gradients are never
 * computed. `step` runs a forward and backward and adds every trainable gradient. Parameters and gradients are host
 * tensors that the backend uses in place (the CPU backends): an optimizer updating `parameters` updates the model.
 */
export class VideoLLaMA3Training {
  /** The trainable parameters (f32), by checkpoint name. */
  readonly parameters = new Map<string, Tensor<'f32'>>();
  readonly gradients = new Map<string, Tensor<'f32'>>();
  private readonly vision: VisionEncoderTraining;
  private readonly projector: ProjectorTraining;
  private readonly decoder: Qwen2Training;
  /** The adapters' f32 masters by module path (trained or not), in PEFT's naming once saved. */
  readonly loraPairs = new Map<string, LoraPair>();

  /**
   * `trainable(name)` decides for every parameter, the adapters' (`base_model.model.<module>.lora_A.weight`)
   * included; with `lora`, the stage's choice (train/lora.ts) freezes the base weights.
   */
  constructor(
    readonly config: VideoLlama3Config,
    weights: TrainingWeightSource,
    trainable: (name: string) => boolean,
    readonly backend: Backend,
    readonly lora?: TrainingLora,
    readonly options: TrainingModelOptions = {},
  ) {
    const b = backend;
    // By name, so that a tied head (the embedding table under the same name) is one tensor with one gradient.
    const loaded = new Map<string, Tensor>();
    const load = (spec: WeightSpec): Tensor => {
      let t = loaded.get(spec.name);
      if (t) return t;
      const stored = weights.get(spec);
      if (trainable(spec.name)) {
        const master = toF32(stored);
        this.parameters.set(spec.name, master);
        t = b.upload(master);
      } else {
        t = b.upload(stored);
      }
      loaded.set(spec.name, t);
      return t;
    };
    const gradientOf = (spec: WeightSpec): Tensor | null => {
      if (!trainable(spec.name)) return null;
      let grad = this.gradients.get(spec.name);
      if (!grad) {
        grad = Tensor.f32(spec.shape);
        this.gradients.set(spec.name, grad);
      }
      return grad;
    };
    const adapters = lora ? this.makeAdapters(lora, trainable) : new Map<string, LinearAdapter>();
    const adapterOf = (spec: WeightSpec) => adapters.get(spec.name) ?? null;
    const headName = config.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
    this.decoder = new Qwen2Training(config, loadSpecs(decoderWeights(config, headName), load), gradientOf, b, headName, adapterOf);
    const v = config.visionEncoderConfig;
    this.vision = new VisionEncoderTraining(v, loadSpecs(visionEncoderWeights(v), load), gradientOf, b, undefined, adapterOf);
    this.projector = new ProjectorTraining(loadSpecs(projectorWeights(v.hiddenSize, config.hiddenSize), load), gradientOf, b, undefined, adapterOf);
  }

  /** Every parameter name of the model, in load order (what stage presets group); with `lora`, the adapters' last. */
  static parameterNames(config: VideoLlama3Config, lora?: LoraConfig): string[] {
    const v = config.visionEncoderConfig;
    const headName = config.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
    const names = [decoderWeights(config, headName), visionEncoderWeights(v), projectorWeights(v.hiddenSize, config.hiddenSize)].flatMap((s) => flattenSpecs(s).map((x) => x.name));
    const adapters = lora ? targetedModules(config, lora.targetModules).flatMap((l) => [loraParameterName(l.module, 'A'), loraParameterName(l.module, 'B')]) : [];
    return [...new Set(names), ...adapters];
  }

  /** The adapters by the name of the weight they sit beside: f32 masters, with gradients where trained. */
  private makeAdapters(lora: TrainingLora, trainable: (name: string) => boolean): Map<string, LinearAdapter> {
    const { r, dropout } = lora.config;
    const scaling = loraScaling(lora.config);
    const adapters = new Map<string, LinearAdapter>();
    const master = (name: string, t: Tensor<'f32'>) => {
      const copy = Tensor.f32(t.shape, t.data);
      let grad: Tensor<'f32'> | null = null;
      if (trainable(name)) {
        this.parameters.set(name, copy);
        grad = Tensor.f32(t.shape);
        this.gradients.set(name, grad);
      }
      return { copy, grad };
    };
    for (const layer of targetedModules(this.config, lora.config.targetModules)) {
      const given = lora.initial?.get(layer.module);
      if (given && (given.a.dim(0) !== r || given.a.dim(1) !== layer.inFeatures || given.b.dim(0) !== layer.outFeatures || given.b.dim(1) !== r)) {
        throw new Error(`LoRA ${layer.module}: initial A ${given.a} and B ${given.b} do not fit r ${r} on a [${layer.outFeatures}, ${layer.inFeatures}] layer`);
      }
      const pair = given ?? initialLoraPair(layer, r, lora.random);
      const a = master(loraParameterName(layer.module, 'A'), pair.a);
      const bm = master(loraParameterName(layer.module, 'B'), pair.b);
      this.loraPairs.set(layer.module, { a: a.copy, b: bm.copy });
      const b = this.backend;
      adapters.set(layer.weight.name, { a: b.upload(a.copy), b: b.upload(bm.copy), gradA: a.grad, gradB: bm.grad, scaling, dropout, random: lora.random });
    }
    return adapters;
  }

  zeroGradients(): void {
    for (const g of this.gradients.values()) this.backend.fill(g, 0);
  }

  /**
   * Forward and backward of one micro-batch, the loss scaled by `scale` (1 / supervised tokens of the whole step);
   * LoRA dropout applies here (training mode) and not in `loss`.
   */
  step(inputs: TrainingInputs, scale: number): StepResult {
    return this.run(inputs, scale, true);
  }

  /** The forward pass only: the loss of a micro-batch at the current parameters. */
  loss(inputs: TrainingInputs): StepResult {
    return this.run(inputs, 1, false);
  }

  private run(inputs: TrainingInputs, scale: number, backward: boolean): StepResult {
    const b = this.backend;
    const ids = Array.from(inputs.inputIds);
    const L = ids.length;
    const H = this.config.hiddenSize;
    const imageId = this.config.imageTokenIndex;
    const imagePositions = ids.flatMap((id, i) => (id === imageId ? [i] : []));
    if (imagePositions.length !== inputs.visualRows.length) {
      throw new Error(`the sequence has ${imagePositions.length} <image> positions for ${inputs.visualRows.length} visual features`);
    }
    const idTensor = b.allocate('i32', [L]);
    b.write(idTensor, ids);
    const embeds = b.allocate('f32', [L, H]);
    b.embedding(this.decoder.params.embedTokens, idTensor, embeds);

    // Vision only where the sequence reads a feature: a text-only batch's dummy item gives nothing, and its gradients
    // are exactly zero (README of the training fixtures, step 4), which the zeroed gradients already hold.
    const n = imagePositions.length;
    const pass: TrainingForward = { training: backward, checkpointLayers: this.options.activationCheckpointing };
    const visual = n > 0 ? this.encode(inputs, n, pass) : undefined;
    const imageRows = Int32Array.from(imagePositions);
    const ordinal = Int32Array.from(imagePositions.keys());
    if (visual) b.copyRows(visual.projected.out, ordinal, embeds, imageRows);

    const acts = this.decoder.forward(embeds, inputs.positionIds, packedBounds(inputs.positionIds), pass);
    const result = this.decoder.loss(acts, inputs.labels, scale, backward);
    const done: StepResult = {
      lossSum: result.lossSum,
      supervised: result.positions.length,
      savedActivationBytes: savedBytes(acts.layers) + (visual ? savedBytes(visual.acts.layers) : 0),
    };
    if (!backward) return done;

    const dEmbeds = this.decoder.backward(acts, result.dHidden);
    const tableGrad = this.gradients.get('model.embed_tokens.weight');
    if (tableGrad) {
      const text = ids.flatMap((id, i) => (id === imageId ? [] : [i]));
      const dText = b.allocate('f32', [text.length, H]);
      b.copyRows(dEmbeds, Int32Array.from(text), dText, Int32Array.from(text.keys()));
      const textIds = b.allocate('i32', [text.length]);
      b.write(textIds, text.map((i) => ids[i]!));
      b.embeddingBackward(dText, textIds, tableGrad);
    }
    if (visual) {
      const dProjected = b.allocate('f32', visual.projected.out.shape);
      b.copyRows(dEmbeds, imageRows, dProjected, ordinal);
      const dFeatures = this.projector.backward(visual.projected, dProjected);
      if (this.visionTrainable) {
        const dAll = b.allocate('f32', visual.acts.features.shape);
        b.copyRows(dFeatures, ordinal, dAll, inputs.visualRows);
        this.vision.backward(visual.acts, dAll);
      }
    }
    return done;
  }

  private get visionTrainable(): boolean {
    return [...this.gradients.keys()].some((name) => name.includes('vision_encoder'));
  }

  private encode(inputs: TrainingInputs, n: number, pass: TrainingForward) {
    const b = this.backend;
    const acts = this.vision.forward(b.upload(inputs.pixelValues), inputs.items, pass);
    const features = b.allocate('f32', [n, acts.features.dim(1)]);
    b.copyRows(acts.features, inputs.visualRows, features, Int32Array.from({ length: n }, (_, i) => i));
    return { acts, projected: this.projector.forward(features, pass.training) };
  }
}

function toF32(t: Tensor): Tensor<'f32'> {
  if (t.dtype === 'f32') return Tensor.f32(t.shape, Float32Array.from(t.data as Float32Array));
  const out = Tensor.f32(t.shape);
  const bits = t.data as Uint16Array;
  const words = new Uint32Array(out.data.buffer, out.data.byteOffset, out.numel);
  if (t.dtype !== 'bf16') throw new Error(`a trainable parameter must be stored as f32 or bf16, got ${t.dtype}`);
  for (let i = 0; i < bits.length; i++) words[i] = bits[i]! << 16;
  return out;
}

