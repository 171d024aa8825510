import type { Backend } from '../tensor/backend.js';
import { Tensor } from '../tensor/tensor.js';
import { Workspace } from '../tensor/workspace.js';
import type { VisionEncoderConfig } from './config.js';
import type { WeightSource } from './weight-formats.js';
import { visionRopeTables, type VisualGrid } from './vision-rope.js';
import { loadSpecs, visionEncoderWeights } from './weight-names.js';

/** The sizes of the SigLIP-style encoder (spec 6), as the checkpoint's config states them. */
export type VisionDims = Pick<
  VisionEncoderConfig,
  'hiddenSize' | 'intermediateSize' | 'numHiddenLayers' | 'numAttentionHeads' | 'patchSize' | 'numChannels' | 'layerNormEps'
>;

type LinearWeights = { weight: Tensor; bias: Tensor };
type EncoderLayer = Record<'norm1' | 'q' | 'k' | 'v' | 'out' | 'norm2' | 'fc1' | 'fc2', LinearWeights>;

export interface EncodeOptions {
  /** Receives intermediate tensors by the fixtures' names ('patch_embeds', 'encoder_layer{i}_out', 'pre_merge',
   * 'post_merge') for each chunk of whole frames, with the index of the chunk's first patch row. */
  onTensor?: (name: string, rows: Tensor, firstRow: number) => void;
  /** Called after each chunk of frames is encoded, with (frames done, total frames). */
  onProgress?: (framesDone: number, framesTotal: number) => void;
}

/** Patch rows encoded together at most (whole frames are never split): bounds activation memory per chunk. */
export const ENCODER_CHUNK_ROWS = 4096;

/**
 * The vision encoder: patch embedding (a matmul over 588-value patch rows), 2-D RoPE, pre-norm transformer layers
 * with attention restricted to each image or video frame, post-LayerNorm, then the m×m merge. Frames are independent,
 * so they are encoded in chunks of whole frames: memory grows with the largest frame, never with the whole video.
 */
export class VisionEncoder {
  readonly headDim: number;
  private readonly patchEmbed: LinearWeights;
  private readonly layers: EncoderLayer[];
  private readonly postNorm: LinearWeights;
  private readonly ws: Workspace;

  constructor(
    readonly dims: VisionDims,
    weights: WeightSource,
    readonly backend: Backend,
    prefix = 'model.vision_encoder.',
  ) {
    const { hiddenSize: C, numAttentionHeads: heads, patchSize: p, numChannels: ch } = dims;
    if (C % heads !== 0) throw new Error(`vision hidden size ${C} is not divisible by ${heads} heads`);
    this.headDim = C / heads;
    if (this.headDim % 4 !== 0) throw new Error(`vision head dim ${this.headDim} must be a multiple of 4 for 2-D RoPE`);
    this.ws = new Workspace(backend);
    const w = loadSpecs(visionEncoderWeights(dims, prefix), (spec) => backend.upload(weights.get(spec)));
    this.patchEmbed = { weight: w.patchEmbed.weight.reshape([C, ch * p * p]), bias: w.patchEmbed.bias };
    this.layers = w.layers;
    this.postNorm = w.postNorm;
  }

  /** Patch values per row (channels × patch × patch). */
  get patchValues(): number {
    return this.dims.numChannels * this.dims.patchSize * this.dims.patchSize;
  }

  /**
   * pixelValues [Σ t·gh·gw, 588] in block order, items as `grids` → merged features [Σ t·(gh/m)·(gw/m), C] in raster
   * order of each merged grid, items in order.
   */
  encode(pixelValues: Tensor, grids: readonly VisualGrid[], options: EncodeOptions = {}): Tensor<'f32'> {
    const C = this.dims.hiddenSize;
    const frames = grids.flatMap((g) => Array.from({ length: g.frames }, () => g));
    const expectedRows = frames.reduce((n, g) => n + g.gridH * g.gridW, 0);
    if (pixelValues.rank !== 2 || pixelValues.dim(0) !== expectedRows || pixelValues.dim(1) !== this.patchValues) {
      throw new Error(`pixel values [${pixelValues.shape}] do not match the grids: expected [${expectedRows}, ${this.patchValues}]`);
    }
    for (const g of grids) {
      if (g.gridH % g.mergeSize || g.gridW % g.mergeSize) throw new Error(`grid ${g.gridH}×${g.gridW} is not a multiple of merge size ${g.mergeSize}`);
    }
    const mergedRows = frames.reduce((n, g) => n + (g.gridH * g.gridW) / g.mergeSize ** 2, 0);
    const features = this.backend.allocate('f32', [mergedRows, C]);

    let row = 0;
    let merged = 0;
    for (let f = 0; f < frames.length; ) {
      // A chunk: whole frames, at least one, up to ENCODER_CHUNK_ROWS patch rows.
      const chunk = [frames[f]!];
      let rows = frames[f]!.gridH * frames[f]!.gridW;
      while (f + chunk.length < frames.length) {
        const next = frames[f + chunk.length]!;
        if (rows + next.gridH * next.gridW > ENCODER_CHUNK_ROWS) break;
        chunk.push(next);
        rows += next.gridH * next.gridW;
      }
      const hidden = this.encodeFrames(pixelValues.rows(row, row + rows), chunk, row, options);
      let start = 0;
      for (const g of chunk) {
        const n = g.gridH * g.gridW;
        const out = n / g.mergeSize ** 2;
        this.backend.mergeBlocks(hidden.rows(start, start + n), g.mergeSize, features.rows(merged, merged + out));
        options.onTensor?.('post_merge', features.rows(merged, merged + out), merged);
        merged += out;
        start += n;
      }
      row += rows;
      f += chunk.length;
      options.onProgress?.(f, frames.length);
    }
    return features;
  }

  /** Runs whole frames [rows, 588] through the encoder; returns the post-LayerNorm hidden states [rows, C]. */
  private encodeFrames(pixels: Tensor, frames: VisualGrid[], firstRow: number, options: EncodeOptions): Tensor {
    const { hiddenSize: C, intermediateSize: I, numAttentionHeads: heads, layerNormEps: eps } = this.dims;
    const b = this.backend;
    const ws = this.ws;
    const n = pixels.dim(0);
    const D = this.headDim;
    const x = ws.take('x', 'f32', [n, C]);
    const h = ws.take('h', 'f32', [n, C]);
    const q = ws.take('q', 'f32', [n, heads, D]);
    const k = ws.take('k', 'f32', [n, heads, D]);
    const v = ws.take('v', 'f32', [n, heads, D]);
    const attn = ws.take('attn', 'f32', [n, heads, D]);
    const mlp = ws.take('mlp', 'f32', [n, I]);
    const cos = ws.take('cos', 'f32', [n, D / 2]);
    const sin = ws.take('sin', 'f32', [n, D / 2]);
    // The tables of a frame depend on its grid only: computed on the host, written once per chunk.
    const cosHost = new Float32Array(n * (D / 2));
    const sinHost = new Float32Array(n * (D / 2));
    let offset = 0;
    for (const g of frames) {
      const tables = visionRopeTables(g, D);
      cosHost.set(tables.cos, offset * (D / 2));
      sinHost.set(tables.sin, offset * (D / 2));
      offset += g.gridH * g.gridW;
    }
    b.write(cos, cosHost);
    b.write(sin, sinHost);
    const scale = 1 / Math.sqrt(D);

    b.matmul(pixels, this.patchEmbed.weight, this.patchEmbed.bias, x);
    options.onTensor?.('patch_embeds', x, firstRow);
    this.layers.forEach((layer, i) => {
      b.layerNorm(x, layer.norm1.weight, layer.norm1.bias, eps, h);
      b.matmul(h, layer.q.weight, layer.q.bias, q.reshape([n, C]));
      b.matmul(h, layer.k.weight, layer.k.bias, k.reshape([n, C]));
      b.matmul(h, layer.v.weight, layer.v.bias, v.reshape([n, C]));
      b.rope(q, cos, sin, q);
      b.rope(k, cos, sin, k);
      // Attention never crosses an image or frame boundary.
      let s = 0;
      for (const g of frames) {
        const e = s + g.gridH * g.gridW;
        b.attention(q.rows(s, e), k.rows(s, e), v.rows(s, e), attn.rows(s, e), { scale, causal: false });
        s = e;
      }
      b.matmul(attn.reshape([n, C]), layer.out.weight, layer.out.bias, h);
      b.add(x, h, x);
      b.layerNorm(x, layer.norm2.weight, layer.norm2.bias, eps, h);
      b.matmul(h, layer.fc1.weight, layer.fc1.bias, mlp);
      b.gelu(mlp, mlp, 'tanh');
      b.matmul(mlp, layer.fc2.weight, layer.fc2.bias, h);
      b.add(x, h, x);
      options.onTensor?.(`encoder_layer${i}_out`, x, firstRow);
    });
    b.layerNorm(x, this.postNorm.weight, this.postNorm.bias, eps, x);
    options.onTensor?.('pre_merge', x, firstRow);
    return x;
  }

  releaseScratch(): void {
    this.ws.release();
  }
}
