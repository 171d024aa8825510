/**
 * LoRA as the official `--lora_enable` path builds it (train.py:556-572, peft 0.4.0): which linear layers get an
 * adapter, its scaling and initial values, and merging an adapter into a weight. An adapted layer computes
 * `y = x·Wᵀ + b + scaling·B·(A·dropout(x))` with A [r, in] and B [out, r]; scaling = lora_alpha / r.
 */
import type { Backend } from '../tensor/backend.js';
import { f32ToBf16 } from '../tensor/dtype.js';
import { Tensor } from '../tensor/tensor.js';
import type { VideoLlama3Config } from './config.js';
import { AdapterError } from './errors.js';
import { checkpointWeightSpecs, type WeightSpec } from './weight-names.js';

export interface LoraConfig {
  r: number;
  alpha: number;
  /** Dropout on the adapter's input while training (0: none). */
  dropout: number;
  /**
   * PEFT's `target_modules`: a list is matched as suffixes of module paths (`key.endswith(target)`, so `q_proj` also
   * selects the vision encoder's), a string as a regular expression the whole path must match (`re.fullmatch`).
   */
  targetModules: readonly string[] | string;
}

/** The official LoraArguments defaults (train.py:156-161); bias "none" is the only bias mode implemented. */
export const OFFICIAL_LORA_DEFAULTS = { r: 64, alpha: 16, dropout: 0.05 } as const;

export function loraScaling(config: Pick<LoraConfig, 'r' | 'alpha'>): number {
  return config.alpha / config.r;
}

/** A linear layer of the model by its module path (the weight's name without `.weight`, HF checkpoint naming). */
export interface LinearModule {
  module: string;
  weight: WeightSpec;
  inFeatures: number;
  outFeatures: number;
}

const EMBED_TOKENS = 'model.embed_tokens.weight';

/** Every `nn.Linear` of the model: decoder, vision encoder, projector, and the LM head (tied or not). */
export function linearModules(config: VideoLlama3Config): LinearModule[] {
  return checkpointWeightSpecs(config)
    .filter((s) => s.quantizable && s.name !== EMBED_TOKENS && s.name.endsWith('.weight'))
    .map((weight) => ({ module: weight.name.slice(0, -'.weight'.length), weight, outFeatures: weight.shape[0]!, inFeatures: weight.shape[1]! }));
}

/**
 * The official `find_all_linear_names` (videollama3_trainer.py:75-88): the last path component of every linear layer
 * outside the projector and the vision side, without `lm_head`. Sorted (the official set has no order).
 */
export function findAllLinearNames(config: VideoLlama3Config): string[] {
  const outside = linearModules(config).filter((m) => !['mm_projector', 'vision_encoder', 'vision_resampler'].some((k) => m.module.includes(k)));
  const names = new Set(outside.map((m) => m.module.split('.').at(-1)!));
  names.delete('lm_head');
  return [...names].sort();
}

/** The layers PEFT 0.4.0 adapts for `targetModules` (peft/tuners/lora.py:216), sorted by module path. */
export function targetedModules(config: VideoLlama3Config, targetModules: LoraConfig['targetModules']): LinearModule[] {
  const matches =
    typeof targetModules === 'string' ? (m: string) => new RegExp(`^(?:${targetModules})$`).test(m) : (m: string) => targetModules.some((t) => m.endsWith(t));
  const chosen = linearModules(config).filter((l) => matches(l.module));
  // The head shares the embedding table when tied, and an adapter on it is not something the official path makes.
  const head = chosen.find((l) => l.module === 'lm_head');
  if (head) throw new AdapterError(`LoRA target_modules ${JSON.stringify(targetModules)} select lm_head, which this port does not adapt`, undefined, 'lm_head');
  if (chosen.length === 0) throw new AdapterError(`LoRA target_modules ${JSON.stringify(targetModules)} select no linear layer of this model`);
  return chosen.sort((a, b) => (a.module < b.module ? -1 : a.module > b.module ? 1 : 0));
}

/** PEFT's parameter name of an adapter matrix, as `save_pretrained` writes it (the adapter name removed). */
export function loraParameterName(module: string, matrix: 'A' | 'B'): string {
  return `base_model.model.${module}.lora_${matrix}.weight`;
}

/** One module's adapter: A [r, in] and B [out, r]. */
export interface LoraPair {
  a: Tensor<'f32'>;
  b: Tensor<'f32'>;
}

/**
 * PEFT's initial adapter: A from `kaiming_uniform_(a=√5)`, which is uniform in ±1/√in, and B = 0, so that training
 * starts from the base model. `random` gives uniform numbers in [0, 1).
 */
export function initialLoraPair(layer: LinearModule, r: number, random: () => number): LoraPair {
  const bound = 1 / Math.sqrt(layer.inFeatures);
  const a = Tensor.f32([r, layer.inFeatures]);
  for (let i = 0; i < a.numel; i++) a.data[i] = (2 * random() - 1) * bound;
  return { a, b: Tensor.f32([layer.outFeatures, r]) };
}

/**
 * A LoRA adapter to merge into the weights it adapts: A and B by the adapted weight's name, the adapter's scaling, and
 * a backend that multiplies in exact f32 for B·A.
 */
export interface AdapterMerge {
  pairs: ReadonlyMap<string, LoraPair>;
  scaling: number;
  backend: Backend;
  /** The adapter folder, for errors. */
  dir: string;
  /** Whole weights trained beside the adapter (f32), by checkpoint name: they replace the checkpoint's. */
  replacements?: ReadonlyMap<string, Tensor>;
}

/**
 * W + scaling·B·A in f32, rounded back to W's dtype (bf16 or f32): what PEFT's `merge` leaves in the weight. B·A runs
 * as one matmul on `backend`, which must multiply in 'exact' f32.
 */
export function mergeLoraPair(weight: Tensor, pair: LoraPair, scaling: number, backend: Backend): Tensor {
  if (backend.compute !== 'exact') throw new Error(`merging a LoRA adapter needs f32 products, not a backend computing in ${backend.compute}`);
  if (weight.dtype !== 'bf16' && weight.dtype !== 'f32') throw new Error(`a LoRA adapter merges into a bf16 or f32 weight, not ${weight.dtype}`);
  const [out, inFeatures] = weight.shape as [number, number];
  const r = pair.a.dim(0);
  // B·A = B·(Aᵀ)ᵀ: matmul's weight operand is [N, K] = Aᵀ [in, r].
  const aT = Tensor.f32([inFeatures, r]);
  for (let k = 0; k < r; k++) for (let i = 0; i < inFeatures; i++) aT.data[i * r + k] = pair.a.data[k * inFeatures + i]!;
  const delta = backend.allocate('f32', [out, inFeatures]);
  backend.matmul(backend.upload(pair.b), backend.upload(aT), null, delta);
  const d = backend.download(delta).data;
  const w = weight.toFloat32();
  for (let i = 0; i < w.length; i++) w[i] = Math.fround(w[i]! + Math.fround(scaling * d[i]!));
  if (weight.dtype === 'f32') return Tensor.f32(weight.shape, w);
  const merged = Tensor.empty('bf16', weight.shape);
  for (let i = 0; i < w.length; i++) merged.data[i] = f32ToBf16(w[i]!);
  return merged;
}
