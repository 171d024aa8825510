/**
 * Every weight of a VideoLLaMA3 checkpoint by name and shape, derived from its config: the one place where weight
 * names live. The model parts load their tensors from these specs, and the loader checks all of them against the
 * safetensors headers at load, so that a config that disagrees with its weights fails at once, naming the tensor,
 * instead of on the first image request (the vision weights are read only when first needed).
 */
import type { VideoLlama3Config, VisionEncoderConfig } from './config.js';

export interface WeightSpec {
  name: string;
  shape: readonly number[];
  /** A matmul weight or embedding table [N, K]: it may be stored or loaded block-quantized (weight-formats.ts). */
  quantizable?: boolean;
}

/** A structure of specs with each spec replaced by what `load` made of it. */
export type Loaded<T, R> = T extends WeightSpec ? R : { [K in keyof T]: Loaded<T[K], R> };

const isSpec = (v: unknown): v is WeightSpec => typeof v === 'object' && v !== null && 'name' in v && 'shape' in v;

/** Maps every spec of a structure (objects and arrays of specs) through `load`, keeping the structure. */
export function loadSpecs<T, R>(specs: T, load: (spec: WeightSpec) => R): Loaded<T, R> {
  if (isSpec(specs)) return load(specs) as Loaded<T, R>;
  if (Array.isArray(specs)) return specs.map((s: unknown) => loadSpecs(s, load)) as Loaded<T, R>;
  return Object.fromEntries(Object.entries(specs as object).map(([k, v]) => [k, loadSpecs(v, load)])) as Loaded<T, R>;
}

/** Every spec of a structure, in order. */
export function flattenSpecs(specs: unknown): WeightSpec[] {
  if (isSpec(specs)) return [specs];
  return Object.values(specs as object).flatMap(flattenSpecs);
}

const spec = (name: string, shape: number[]): WeightSpec => ({ name, shape });
const linear = (name: string, shape: number[]): WeightSpec => ({ name, shape, quantizable: true });

/** The sizes of the Qwen2.5 decoder's weights. */
export type DecoderShape = Pick<VideoLlama3Config, 'vocabSize' | 'hiddenSize' | 'intermediateSize' | 'numHiddenLayers' | 'numAttentionHeads' | 'numKeyValueHeads'>;

/** The Qwen2.5 decoder (spec 8.1). A tied `lm_head` is resolved to the embeddings by the weight source. */
export function decoderWeights(d: DecoderShape, lmHead = 'lm_head.weight') {
  const { vocabSize: V, hiddenSize: H, intermediateSize: I } = d;
  const kv = d.numKeyValueHeads * (H / d.numAttentionHeads);
  return {
    embedTokens: linear('model.embed_tokens.weight', [V, H]),
    lmHead: linear(lmHead, [V, H]),
    finalNorm: spec('model.norm.weight', [H]),
    layers: Array.from({ length: d.numHiddenLayers }, (_, i) => {
      const p = `model.layers.${i}.`;
      return {
        inputNorm: spec(`${p}input_layernorm.weight`, [H]),
        qProj: linear(`${p}self_attn.q_proj.weight`, [H, H]),
        qBias: spec(`${p}self_attn.q_proj.bias`, [H]),
        kProj: linear(`${p}self_attn.k_proj.weight`, [kv, H]),
        kBias: spec(`${p}self_attn.k_proj.bias`, [kv]),
        vProj: linear(`${p}self_attn.v_proj.weight`, [kv, H]),
        vBias: spec(`${p}self_attn.v_proj.bias`, [kv]),
        oProj: linear(`${p}self_attn.o_proj.weight`, [H, H]),
        postNorm: spec(`${p}post_attention_layernorm.weight`, [H]),
        gateProj: linear(`${p}mlp.gate_proj.weight`, [I, H]),
        upProj: linear(`${p}mlp.up_proj.weight`, [I, H]),
        downProj: linear(`${p}mlp.down_proj.weight`, [H, I]),
      };
    }),
  };
}

export type VisionShape = Pick<VisionEncoderConfig, 'hiddenSize' | 'intermediateSize' | 'numHiddenLayers' | 'patchSize' | 'numChannels'>;

/** A norm layer's weight and bias, or (`linear`) a linear layer's; the bias has the weight's first dimension. */
const withBias = (name: string, shape: number[], isLinear = false) => ({
  weight: (isLinear ? linear : spec)(`${name}.weight`, shape),
  bias: spec(`${name}.bias`, [shape[0]!]),
});

/** The SigLIP-style vision encoder (spec 6). The patch embedding is stored as a convolution [C, ch, p, p]. */
export function visionEncoderWeights(d: VisionShape, prefix = 'model.vision_encoder.') {
  const { hiddenSize: C, intermediateSize: I, patchSize: p, numChannels: ch } = d;
  return {
    patchEmbed: withBias(`${prefix}embeddings.patch_embedding`, [C, ch, p, p]),
    layers: Array.from({ length: d.numHiddenLayers }, (_, i) => {
      const l = `${prefix}encoder.layers.${i}.`;
      return {
        norm1: withBias(`${l}layer_norm1`, [C]),
        q: withBias(`${l}self_attn.q_proj`, [C, C], true),
        k: withBias(`${l}self_attn.k_proj`, [C, C], true),
        v: withBias(`${l}self_attn.v_proj`, [C, C], true),
        out: withBias(`${l}self_attn.out_proj`, [C, C], true),
        norm2: withBias(`${l}layer_norm2`, [C]),
        fc1: withBias(`${l}mlp.fc1`, [I, C], true),
        fc2: withBias(`${l}mlp.fc2`, [C, I], true),
      };
    }),
    postNorm: withBias(`${prefix}post_layernorm`, [C]),
  };
}

/** The `mlp2x_gelu` projector (spec 7): Linear(C→H), GELU, Linear(H→H). */
export function projectorWeights(visionSize: number, outputSize: number, prefix = 'model.mm_projector.readout.') {
  return {
    fc1: withBias(`${prefix}0`, [outputSize, visionSize], true),
    fc2: withBias(`${prefix}2`, [outputSize, outputSize], true),
  };
}

/** Every weight the model reads from a checkpoint with this config. */
export function checkpointWeightSpecs(config: VideoLlama3Config): WeightSpec[] {
  return [
    ...flattenSpecs(decoderWeights(config)),
    ...flattenSpecs(visionEncoderWeights(config.visionEncoderConfig)),
    ...flattenSpecs(projectorWeights(config.visionEncoderConfig.hiddenSize, config.hiddenSize)),
  ];
}
