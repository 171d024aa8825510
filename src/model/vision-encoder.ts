import type { Backend } from '../tensor/backend.js';
import { Tensor } from '../tensor/tensor.js';
import { Workspace } from '../tensor/workspace.js';
import type { VisionEncoderConfig } from './config.js';
import type { WeightSource } from './qwen2.js';
import { visionRopeTables, type VisualGrid } from './vision-rope.js';

/** The sizes of the SigLIP-style encoder (spec 6), as the checkpoint's config states them. */
export type VisionDims = Pick<
  VisionEncoderConfig,
  'hiddenSize' | 'intermediateSize' | 'numHiddenLayers' | 'numAttentionHeads' | 'patchSize' | 'numChannels' | 'layerNormEps'
>;

interface EncoderLayer {
  norm1: [Tensor, Tensor];
  q: [Tensor, Tensor];
  k: [Tensor, Tensor];
  v: [Tensor, Tensor];
  out: [Tensor, Tensor];
  norm2: [Tensor, Tensor];
  fc1: [Tensor, Tensor];
  fc2: [Tensor, Tensor];
}

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
  private readonly patchEmbed: [Tensor, Tensor];
  private readonly layers: EncoderLayer[];
  private readonly postNorm: [Tensor, Tensor];
  private readonly ws = new Workspace();

  constructor(
    readonly dims: VisionDims,
    weights: WeightSource,
    readonly backend: Backend,
    prefix = 'model.vision_encoder.',
  ) {
    const { hiddenSize: C, intermediateSize: I, numAttentionHeads: heads, patchSize: p, numChannels: ch } = dims;
    if (C % heads !== 0) throw new Error(`vision hidden size ${C} is not divisible by ${heads} heads`);
    this.headDim = C / heads;
    if (this.headDim % 4 !== 0) throw new Error(`vision head dim ${this.headDim} must be a multiple of 4 for 2-D RoPE`);
    const pair = (name: string, shape: number[]): [Tensor, Tensor] => [
      weights.get(`${prefix}${name}.weight`, shape),
      weights.get(`${prefix}${name}.bias`, [shape[0]!]),
    ];
    const [convW, convB] = pair('embeddings.patch_embedding', [C, ch, p, p]);
    this.patchEmbed = [convW.reshape([C, ch * p * p]), convB];
    this.layers = Array.from({ length: dims.numHiddenLayers }, (_, i) => {
      const l = `encoder.layers.${i}.`;
      return {
        norm1: pair(`${l}layer_norm1`, [C]),
        q: pair(`${l}self_attn.q_proj`, [C, C]),
        k: pair(`${l}self_attn.k_proj`, [C, C]),
        v: pair(`${l}self_attn.v_proj`, [C, C]),
        out: pair(`${l}self_attn.out_proj`, [C, C]),
        norm2: pair(`${l}layer_norm2`, [C]),
        fc1: pair(`${l}mlp.fc1`, [I, C]),
        fc2: pair(`${l}mlp.fc2`, [C, I]),
      };
    });
    this.postNorm = pair('post_layernorm', [C]);
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
    const features = Tensor.empty('f32', [mergedRows, C]);

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
    let offset = 0;
    for (const g of frames) {
      const tables = visionRopeTables(g, D);
      (cos.data as Float32Array).set(tables.cos.data, offset * (D / 2));
      (sin.data as Float32Array).set(tables.sin.data, offset * (D / 2));
      offset += g.gridH * g.gridW;
    }
    const scale = 1 / Math.sqrt(D);

    b.matmul(pixels, this.patchEmbed[0], this.patchEmbed[1], x);
    options.onTensor?.('patch_embeds', x, firstRow);
    this.layers.forEach((layer, i) => {
      b.layerNorm(x, layer.norm1[0], layer.norm1[1], eps, h);
      b.matmul(h, layer.q[0], layer.q[1], q.reshape([n, C]));
      b.matmul(h, layer.k[0], layer.k[1], k.reshape([n, C]));
      b.matmul(h, layer.v[0], layer.v[1], v.reshape([n, C]));
      b.rope(q, cos, sin, q);
      b.rope(k, cos, sin, k);
      // Attention never crosses an image or frame boundary.
      let s = 0;
      for (const g of frames) {
        const e = s + g.gridH * g.gridW;
        b.attention(q.rows(s, e), k.rows(s, e), v.rows(s, e), attn.rows(s, e), { scale, causal: false });
        s = e;
      }
      b.matmul(attn.reshape([n, C]), layer.out[0], layer.out[1], h);
      b.add(x, h, x);
      b.layerNorm(x, layer.norm2[0], layer.norm2[1], eps, h);
      b.matmul(h, layer.fc1[0], layer.fc1[1], mlp);
      b.gelu(mlp, mlp, 'tanh');
      b.matmul(mlp, layer.fc2[0], layer.fc2[1], h);
      b.add(x, h, x);
      options.onTensor?.(`encoder_layer${i}_out`, x, firstRow);
    });
    b.layerNorm(x, this.postNorm[0], this.postNorm[1], eps, x);
    options.onTensor?.('pre_merge', x, firstRow);
    return x;
  }

  releaseScratch(): void {
    this.ws.release();
  }
}
