import type { Backend } from '../tensor/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { Checkpoint } from './checkpoint.js';
import { Projector } from './projector.js';
import { Qwen2Model } from './qwen2.js';
import { VisionEncoder, type EncodeOptions } from './vision-encoder.js';
import { FormattedWeights } from './weight-formats.js';
import type { VisualGrid } from './vision-rope.js';

/** Visual features [n, hidden] whose rows `from` go to prompt rows `to`. */
export interface FeaturePlacement {
  features: Tensor;
  from: Int32Array;
  to: Int32Array;
}

/**
 * The whole model: vision encoder → merge → projector, and the Qwen2.5 decoder whose `<image>` embeddings are
 * replaced by the projected visual features (spec 8.2). The vision weights are read on first use, so a text-only
 * session never loads them.
 */
export class VideoLLaMA3Model {
  readonly llm: Qwen2Model;
  /** The weights in their load formats (`weights.formats`). */
  readonly weights: FormattedWeights;
  private visionParts?: { encoder: VisionEncoder; projector: Projector };

  /** `weights`: the checkpoint's weights in the formats to load them in; default, as the checkpoint stores them. */
  constructor(
    readonly checkpoint: Checkpoint,
    readonly backend: Backend,
    weights?: FormattedWeights,
  ) {
    this.weights = weights ?? new FormattedWeights(checkpoint.weights, checkpoint.config.quantization);
    this.llm = new Qwen2Model(checkpoint.config, this.weights, backend);
  }

  get imageTokenId(): number {
    return this.checkpoint.config.imageTokenIndex;
  }

  private vision(): { encoder: VisionEncoder; projector: Projector } {
    if (!this.visionParts) {
      const c = this.checkpoint.config;
      const encoder = new VisionEncoder(c.visionEncoderConfig, this.weights, this.backend);
      const projector = new Projector(c.visionEncoderConfig.hiddenSize, c.hiddenSize, this.weights, this.backend, c.mmProjectorType);
      this.visionParts = { encoder, projector };
    }
    return this.visionParts;
  }

  /** pixel values [Σ t·gh·gw, 588] → projected visual features [Σ t·(gh/m)·(gw/m), hidden]. */
  encodeVisuals(pixelValues: Tensor, grids: readonly VisualGrid[], options: EncodeOptions = {}): Tensor<'f32'> {
    const { encoder, projector } = this.vision();
    const pixels = pixelValues.isHost ? this.backend.upload(pixelValues) : pixelValues;
    return projector.project(encoder.encode(pixels, grids, options));
  }

  /**
   * Prompt embeddings [L, hidden]: token embeddings with the `<image>` positions overwritten, in order, by the
   * visual features — only those `keepMask` keeps, when DiffFP pruned some (spec 4.3). Their counts must agree.
   */
  embedPrompt(inputIds: readonly number[], visualFeatures?: Tensor, keepMask?: Uint8Array): Tensor {
    const positions: number[] = [];
    inputIds.forEach((id, i) => id === this.imageTokenId && positions.push(i));
    if (visualFeatures && keepMask && keepMask.length !== visualFeatures.dim(0)) {
      throw new Error(`the keep mask covers ${keepMask.length} visual tokens but ${visualFeatures.dim(0)} were computed`);
    }
    const kept = keepMask ? Array.from(keepMask.keys()).filter((k) => keepMask[k]) : Array.from({ length: visualFeatures?.dim(0) ?? 0 }, (_, k) => k);
    const available = visualFeatures ? kept.length : 0;
    if (positions.length !== available) {
      throw new Error(`the prompt has ${positions.length} image tokens but ${available} visual features were computed`);
    }
    return this.embedTokens(inputIds, visualFeatures ? [{ features: visualFeatures, from: Int32Array.from(kept), to: Int32Array.from(positions) }] : []);
  }

  /** Token embeddings [ids.length, hidden] with rows `from` of each placement's features written at rows `to`. */
  embedTokens(ids: readonly number[], placements: readonly FeaturePlacement[]): Tensor {
    const embeds = this.llm.embed(ids);
    const H = this.checkpoint.config.hiddenSize;
    for (const { features, from, to } of placements) {
      if (features.dim(1) !== H) throw new Error(`visual features have width ${features.dim(1)}, the LLM expects ${H}`);
      this.backend.copyRows(features, from, embeds, to);
    }
    return embeds;
  }
}
