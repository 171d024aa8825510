/**
 * AdamW as `torch.optim.AdamW` (torch >= 2.0, the single-tensor CPU path) computes it in float32: the official
 * training runs use `optim="adamw_torch"` (spec 10.2, fixtures/training/README.md "Optimizer and schedule"). The
 * arithmetic is the backend's `adamw` op, one call per parameter tensor (host-gradients.ts defines it and says where
 * torch rounds and fuses; the stored goldens are reproduced bit for bit, test/train-optimizer.test.ts), so the
 * moments live in the backend's memory beside the parameters and the optimizer never reads a tensor's memory itself.
 */
import type { Backend } from '../tensor/backend.js';
import { Tensor } from '../tensor/tensor.js';

export interface AdamWOptions {
  /** (β1, β2); default (0.9, 0.999). */
  betas?: readonly [number, number];
  /** Added to the bias-corrected sqrt of the second moment; default 1e-8. */
  eps?: number;
  /** Decoupled weight decay, the default for groups that set none; default 0 (the official scripts). */
  weightDecay?: number;
}

/** One parameter group: its own learning rate (the scheduler rewrites `lr`) and weight decay. */
export interface ParamGroup {
  readonly name: string;
  lr: number;
  weightDecay: number;
  /** Parameter names of this group, in the order their state is kept. */
  readonly params: readonly string[];
}

export interface ParamGroupInit {
  name: string;
  lr: number;
  weightDecay?: number;
  /** Parameters by name: f32 master copies in the backend's memory, updated in place. */
  params: ReadonlyMap<string, Tensor<'f32'>> | Readonly<Record<string, Tensor<'f32'>>>;
}

/** What `--resume` needs: plain numbers in `meta`, the moments as named f32 host tensors. */
export interface AdamWState {
  meta: { step: number; betas: [number, number]; eps: number; groups: { name: string; lr: number; weightDecay: number; params: string[] }[] };
  /** `exp_avg/<param>` and `exp_avg_sq/<param>` for every parameter. */
  tensors: Record<string, Tensor<'f32'>>;
}

interface Slot {
  param: Tensor<'f32'>;
  expAvg: Tensor<'f32'>;
  expAvgSq: Tensor<'f32'>;
}

/**
 * AdamW over named f32 parameters in groups. The step count is the optimizer's: every parameter gets a gradient at
 * every step (a trainable parameter always has one in this model; a text-only batch gives the vision tower zeros),
 * so torch's per-parameter counts would all be equal anyway.
 */
export class AdamW {
  readonly groups: ParamGroup[];
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  /** Updates taken so far; the next one uses Adam step `step + 1`. */
  step = 0;
  private readonly slots = new Map<string, Slot>();

  /** `backend` holds the parameters, and the moments it allocates for them, and runs every update. */
  constructor(readonly backend: Backend, groups: readonly ParamGroupInit[], options: AdamWOptions = {}) {
    const [beta1, beta2] = options.betas ?? [0.9, 0.999];
    if (!(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1)) throw new Error(`adamw: betas must be in [0, 1), got (${beta1}, ${beta2})`);
    const eps = options.eps ?? 1e-8;
    if (!(eps >= 0)) throw new Error(`adamw: eps must be >= 0, got ${eps}`);
    this.beta1 = beta1;
    this.beta2 = beta2;
    this.eps = eps;
    this.groups = groups.map((g) => {
      const entries = g.params instanceof Map ? [...g.params.entries()] : Object.entries(g.params);
      for (const [name, param] of entries) {
        if (this.slots.has(name)) throw new Error(`adamw: parameter "${name}" is in two groups`);
        if (param.dtype !== 'f32' || param.storage.device !== backend.device) {
          throw new Error(`adamw: parameter "${name}" must be an f32 tensor in the memory of ${backend.name} (${backend.device}), got ${param} on ${param.storage.device}`);
        }
        this.slots.set(name, { param, expAvg: backend.allocate('f32', param.shape), expAvgSq: backend.allocate('f32', param.shape) });
      }
      const weightDecay = g.weightDecay ?? options.weightDecay ?? 0;
      if (!(g.lr >= 0) || !(weightDecay >= 0)) throw new Error(`adamw: group "${g.name}" has lr ${g.lr}, weight decay ${weightDecay}`);
      return { name: g.name, lr: g.lr, weightDecay, params: entries.map(([name]) => name) };
    });
  }

  group(name: string): ParamGroup {
    const found = this.groups.find((g) => g.name === name);
    if (!found) throw new Error(`adamw: no group "${name}" (groups: ${this.groups.map((g) => g.name).join(', ')})`);
    return found;
  }

  /** The moments of a parameter (views of the optimizer's own state). */
  moments(name: string): { expAvg: Tensor<'f32'>; expAvgSq: Tensor<'f32'> } {
    const slot = this.slots.get(name);
    if (!slot) throw new Error(`adamw: no parameter "${name}"`);
    return { expAvg: slot.expAvg, expAvgSq: slot.expAvgSq };
  }

  /**
   * One update of every parameter with `grads` (by parameter name: f32 tensors of the parameters' shapes, in the
   * backend's memory), at each group's current lr.
   */
  update(grads: ReadonlyMap<string, Tensor> | Readonly<Record<string, Tensor>>): void {
    const lookup = grads instanceof Map ? (n: string) => grads.get(n) : (n: string) => (grads as Record<string, Tensor>)[n];
    // All gradients are checked before any parameter moves, so a missing one cannot leave a half-applied step.
    const plan: { slot: Slot; grad: Tensor; group: ParamGroup }[] = [];
    for (const group of this.groups) {
      for (const name of group.params) {
        const slot = this.slots.get(name)!;
        const grad = lookup(name);
        if (grad === undefined) throw new Error(`adamw: no gradient for "${name}"`);
        const shape = slot.param.shape;
        if (grad.dtype !== 'f32' || grad.shape.join() !== shape.join() || grad.storage.device !== this.backend.device) {
          throw new Error(`adamw: gradient of "${name}" is not an f32 [${shape.join(', ')}] tensor on ${this.backend.device}: ${grad} on ${grad.storage.device}`);
        }
        plan.push({ slot, grad, group });
      }
    }
    const t = this.step + 1;
    for (const { slot, grad, group } of plan) {
      this.backend.adamw(slot.param, grad, slot.expAvg, slot.expAvgSq, t, {
        lr: group.lr,
        beta1: this.beta1,
        beta2: this.beta2,
        eps: this.eps,
        weightDecay: group.weightDecay,
      });
    }
    this.step = t;
  }

  toState(): AdamWState {
    const tensors: Record<string, Tensor<'f32'>> = {};
    // Copies, so that the state stays as it was when taken while the optimizer moves on.
    const snapshot = (t: Tensor<'f32'>) => Tensor.f32(t.shape, this.backend.download(t).data);
    for (const [name, slot] of this.slots) {
      tensors[`exp_avg/${name}`] = snapshot(slot.expAvg);
      tensors[`exp_avg_sq/${name}`] = snapshot(slot.expAvgSq);
    }
    return {
      meta: {
        step: this.step,
        betas: [this.beta1, this.beta2],
        eps: this.eps,
        groups: this.groups.map((g) => ({ name: g.name, lr: g.lr, weightDecay: g.weightDecay, params: [...g.params] })),
      },
      tensors,
    };
  }

  /**
   * Restores a saved state into this optimizer, which must have been built over the same groups and parameters (the
   * parameters themselves are restored from the checkpoint, not from here). Lrs come back as saved: the scheduler
   * sets them again before the next update anyway.
   */
  fromState(state: AdamWState): void {
    const { meta, tensors } = state;
    if (!Number.isInteger(meta.step) || meta.step < 0) throw new Error(`adamw state: invalid step ${meta.step}`);
    if (meta.betas[0] !== this.beta1 || meta.betas[1] !== this.beta2 || meta.eps !== this.eps) {
      throw new Error(`adamw state: betas (${meta.betas.join(', ')}) eps ${meta.eps} differ from this optimizer's (${this.beta1}, ${this.beta2}) eps ${this.eps}`);
    }
    const mine = this.groups.map((g) => `${g.name}:${g.params.join(',')}`).join(';');
    const theirs = meta.groups.map((g) => `${g.name}:${g.params.join(',')}`).join(';');
    if (mine !== theirs) throw new Error('adamw state: saved for other parameter groups than this optimizer has');
    const restored = new Map<string, { expAvg: Float32Array; expAvgSq: Float32Array }>();
    for (const [name, slot] of this.slots) {
      const pair = { expAvg: tensors[`exp_avg/${name}`], expAvgSq: tensors[`exp_avg_sq/${name}`] };
      for (const [key, t] of Object.entries(pair)) {
        if (!t || t.dtype !== 'f32' || t.numel !== slot.param.numel || t.shape.join() !== slot.param.shape.join()) {
          throw new Error(`adamw state: ${key} of "${name}" missing or not f32 [${slot.param.shape.join(', ')}]`);
        }
      }
      restored.set(name, { expAvg: pair.expAvg!.data, expAvgSq: pair.expAvgSq!.data });
    }
    const expected = 2 * this.slots.size;
    if (Object.keys(tensors).length !== expected) throw new Error(`adamw state: ${Object.keys(tensors).length} tensors, expected ${expected}`);
    for (const [name, slot] of this.slots) {
      this.backend.write(slot.expAvg, restored.get(name)!.expAvg);
      this.backend.write(slot.expAvgSq, restored.get(name)!.expAvgSq);
    }
    meta.groups.forEach((g, i) => {
      this.groups[i]!.lr = g.lr;
      this.groups[i]!.weightDecay = g.weightDecay;
    });
    this.step = meta.step;
  }
}
