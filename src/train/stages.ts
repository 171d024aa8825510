/**
 * The four training stages of the official 2B scripts (spec 10.1, scripts/train/stage{1..4}_2b.sh) as presets, and
 * how a checkpoint's parameters fall into the optimizer groups: a name containing `vision_encoder` is in the vision
 * group, one containing `mm_projector` in the projector group, everything else (the tied embedding included) in the
 * LLM group; a group whose lr is unset is frozen (videollama3_trainer.py builds no optimizer group for it).
 * With LoRA (`--lora_enable`) the adapters (`…lora_A.weight`, `…lora_B.weight`) fall into the groups by the same rule,
 * PEFT freezes every other weight, and the projector is made trainable again (videollama3_arch.py:100-105).
 */
import type { Backend } from '../tensor/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import { AdamW } from './adamw.js';

export type ModuleGroup = 'llm' | 'projector' | 'vision';
/** The order of the groups in the optimizer and in the fixtures' per-group lr arrays. */
export const MODULE_GROUPS: readonly ModuleGroup[] = ['llm', 'projector', 'vision'];

export interface StageConfig {
  /** Per-group lr; null = frozen. */
  lr: Record<ModuleGroup, number | null>;
  imageMergeSize: number;
  videoMergeSize: number;
  /** DiffFP (`use_token_compression`). */
  useTokenCompression: boolean;
  warmupRatio: number;
  betas: readonly [number, number];
  eps: number;
  weightDecay: number;
  /** LoRA: only the adapters and the projector train (in the groups whose lr is set). */
  lora: boolean;
}

export type StageOptions = Partial<Omit<StageConfig, 'lr'>> & { lr?: Partial<Record<ModuleGroup, number | null>> };

const COMMON = { warmupRatio: 0.03, betas: [0.9, 0.999] as const, eps: 1e-8, weightDecay: 0, videoMergeSize: 2, lora: false };
const LATER_LRS = { llm: 1e-5, projector: 1e-5, vision: 2e-6 };

export const STAGES: Readonly<Record<1 | 2 | 3 | 4, Readonly<StageConfig>>> = {
  1: { ...COMMON, lr: { llm: null, projector: 1e-3, vision: 1e-5 }, imageMergeSize: 1, useTokenCompression: false },
  2: { ...COMMON, lr: LATER_LRS, imageMergeSize: 1, useTokenCompression: false },
  3: { ...COMMON, lr: LATER_LRS, imageMergeSize: 1, useTokenCompression: true },
  // "Visual tokens of images are only downsampled in the video-centric stage" [paper]: image merge 2.
  4: { ...COMMON, lr: LATER_LRS, imageMergeSize: 2, useTokenCompression: true },
};

/** A stage's preset with any settings replaced; `lr: { llm: null }` freezes a group, a number unfreezes it. */
export function stageConfig(stage: 1 | 2 | 3 | 4, options: StageOptions = {}): StageConfig {
  const preset = STAGES[stage];
  if (!preset) throw new Error(`training stage must be 1, 2, 3 or 4, got ${stage}`);
  const config: StageConfig = { ...preset, ...options, lr: { ...preset.lr, ...options.lr } };
  for (const g of MODULE_GROUPS) {
    const lr = config.lr[g];
    if (lr !== null && !(Number.isFinite(lr) && lr >= 0)) throw new Error(`stage ${stage}: lr of the ${g} group must be a number >= 0 or null, got ${lr}`);
  }
  for (const key of ['imageMergeSize', 'videoMergeSize'] as const) {
    if (!Number.isInteger(config[key]) || config[key] < 1) throw new Error(`stage ${stage}: ${key} must be a positive integer, got ${config[key]}`);
  }
  return config;
}

export function moduleGroupOf(name: string): ModuleGroup {
  if (name.includes('vision_encoder')) return 'vision';
  if (name.includes('mm_projector')) return 'projector';
  return 'llm';
}

const isLoraParameter = (name: string) => /\.lora_[AB]\.weight$/.test(name);

export interface TrainableGroup {
  group: ModuleGroup;
  lr: number;
  names: string[];
}

/** The trainable parameter names by group (frozen groups left out, names in the given order) and the frozen names. */
export function trainableByGroup(names: readonly string[], config: StageConfig): { groups: TrainableGroup[]; frozen: string[] } {
  const trains = (n: string) => config.lr[moduleGroupOf(n)] !== null && (!config.lora || isLoraParameter(n) || moduleGroupOf(n) === 'projector');
  const groups: TrainableGroup[] = [];
  for (const g of MODULE_GROUPS) {
    const lr = config.lr[g];
    if (lr !== null) groups.push({ group: g, lr, names: names.filter((n) => moduleGroupOf(n) === g && trains(n)) });
  }
  const frozen = names.filter((n) => !trains(n));
  return { groups: groups.filter((g) => g.names.length > 0), frozen };
}

/**
 * AdamW over the stage's trainable parameters (in `backend`'s memory), each group at its base lr (the scheduler
 * scales it per step).
 */
export function stageOptimizer(params: ReadonlyMap<string, Tensor<'f32'>>, config: StageConfig, backend: Backend): AdamW {
  const { groups } = trainableByGroup([...params.keys()], config);
  return new AdamW(
    backend,
    groups.map((g) => ({ name: g.group, lr: g.lr, params: new Map(g.names.map((n) => [n, params.get(n)!])) })),
    { betas: config.betas, eps: config.eps, weightDecay: config.weightDecay },
  );
}

/** Base lrs by group name, as `applyLrMultiplier` takes them. */
export function baseLrs(config: StageConfig): Record<string, number> {
  return Object.fromEntries(MODULE_GROUPS.filter((g) => config.lr[g] !== null).map((g) => [g, config.lr[g]!]));
}
