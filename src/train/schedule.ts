/**
 * The learning-rate schedule of the official runs: transformers' `get_cosine_schedule_with_warmup` (one half cosine
 * period) with `--warmup_ratio 0.03` (spec 10.2). Like torch's LambdaLR, step s is the number of optimizer updates
 * already taken, so the first update of a run uses the multiplier of step 0, which is 0 with any warm-up.
 */
import type { AdamW } from './adamw.js';

/** transformers' `TrainingArguments.get_warmup_steps`: ceil(T · ratio), in that order of multiplication. */
export function warmupSteps(totalSteps: number, warmupRatio: number): number {
  if (!Number.isInteger(totalSteps) || totalSteps < 1) throw new Error(`schedule: total steps must be a positive integer, got ${totalSteps}`);
  if (!(warmupRatio >= 0 && warmupRatio <= 1)) throw new Error(`schedule: warm-up ratio must be in [0, 1], got ${warmupRatio}`);
  return Math.ceil(totalSteps * warmupRatio);
}

/** The lr multiplier at step `step` of `totalSteps`, linear over `warmup` steps from 0, then a half cosine to 0. */
export function cosineWithWarmup(step: number, warmup: number, totalSteps: number): number {
  if (!Number.isInteger(step) || step < 0) throw new Error(`schedule: step must be a non-negative integer, got ${step}`);
  if (step < warmup) return step / Math.max(1, warmup);
  const progress = (step - warmup) / Math.max(1, totalSteps - warmup);
  // transformers writes cos(π · num_cycles · 2 · progress) with num_cycles 0.5: the factors are exact, so this is it.
  return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progress)));
}

export interface CosineSchedule {
  readonly totalSteps: number;
  readonly warmupSteps: number;
  multiplier(step: number): number;
}

export function cosineSchedule(totalSteps: number, warmupRatio: number): CosineSchedule {
  const warmup = warmupSteps(totalSteps, warmupRatio);
  return { totalSteps, warmupSteps: warmup, multiplier: (step) => cosineWithWarmup(step, warmup, totalSteps) };
}

/** Sets every group's lr to its base lr × `multiplier` (LambdaLR's `base_lr * lambda(step)`). */
export function applyLrMultiplier(optimizer: AdamW, baseLrs: Readonly<Record<string, number>>, multiplier: number): void {
  for (const group of optimizer.groups) {
    const base = baseLrs[group.name];
    if (base === undefined) throw new Error(`schedule: no base lr for group "${group.name}"`);
    group.lr = base * multiplier;
  }
}
