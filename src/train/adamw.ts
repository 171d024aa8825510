/**
 * AdamW as `torch.optim.AdamW` (torch >= 2.0, the single-tensor CPU path) computes it in float32: the official
 * training runs use `optim="adamw_torch"` (spec 10.2, fixtures/training/README.md "Optimizer and schedule").
 *
 * Every tensor op of torch rounds to float32, and its Python-float scalars (lr, betas, bias corrections) are rounded
 * to float32 when they meet a float32 tensor, so each step below is one `fround` at the same place. The two moment
 * updates round once, as fused multiply-adds: so does the torch build that made the goldens (torch 2.x's vectorised
 * lerp is an explicit fmadd, and FMA builds contract addcmul's `self + value·t1·t2`); with a rounding after each
 * product instead, about half the moments after the second update are one ulp off. As written, the stored goldens are
 * reproduced bit for bit (test/train-optimizer.test.ts).
 */
import { Tensor } from '../tensor/tensor.js';
import { fma32 } from './fma32.js';

const f = Math.fround;

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
  /** Parameters by name: f32 master copies, updated in place. */
  params: ReadonlyMap<string, Tensor<'f32'>> | Readonly<Record<string, Tensor<'f32'>>>;
}

/** What `--resume` needs: plain numbers in `meta`, the moments as named f32 tensors. */
export interface AdamWState {
  meta: { step: number; betas: [number, number]; eps: number; groups: { name: string; lr: number; weightDecay: number; params: string[] }[] };
  /** `exp_avg/<param>` and `exp_avg_sq/<param>` for every parameter. */
  tensors: Record<string, Tensor<'f32'>>;
}

/**
 * The update of one tensor at Adam step `t` (1-based), in place: p, m, v and g have the same length.
 * `lr`, `beta1`, `beta2`, `eps`, `weightDecay` are the double-precision values torch holds as Python floats.
 */
export function adamwUpdate(
  p: Float32Array,
  g: Float32Array,
  m: Float32Array,
  v: Float32Array,
  t: number,
  h: { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number },
): void {
  if (g.length !== p.length || m.length !== p.length || v.length !== p.length) {
    throw new Error(`adamw: parameter of ${p.length} elements with gradient ${g.length}, moments ${m.length} / ${v.length}`);
  }
  // Scalars as torch forms them: in double on the Python side, rounded once where a kernel takes them.
  const decay = f(1 - h.lr * h.weightDecay);
  const w1 = f(1 - h.beta1);
  const b2 = f(h.beta2);
  const w2 = f(1 - h.beta2);
  const stepSize = f(-(h.lr / (1 - h.beta1 ** t)));
  const bc2Sqrt = f(Math.sqrt(1 - h.beta2 ** t));
  const eps = f(h.eps);
  for (let i = 0; i < p.length; i++) {
    const gi = g[i]!;
    // With weight decay 0 the factor is exactly 1: skipping the multiply changes nothing.
    const pi = h.weightDecay === 0 ? p[i]! : f(p[i]! * decay);
    // exp_avg.lerp_(grad, 1 - β1): for weights below 0.5 torch's lerp is m + w·(g − m).
    const mi = fma32(w1, f(gi - m[i]!), m[i]!);
    // exp_avg_sq.mul_(β2).addcmul_(grad, grad, value=1 - β2)
    const vi = fma32(f(w2 * gi), gi, f(v[i]! * b2));
    // denom = (exp_avg_sq.sqrt() / sqrt(bias_correction2)).add_(eps); param.addcdiv_(exp_avg, denom, value=-step_size)
    const denom = f(f(f(Math.sqrt(vi)) / bc2Sqrt) + eps);
    p[i] = f(pi + f(f(stepSize * mi) / denom));
    m[i] = mi;
    v[i] = vi;
  }
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

  constructor(groups: readonly ParamGroupInit[], options: AdamWOptions = {}) {
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
        if (param.dtype !== 'f32' || !param.isHost) throw new Error(`adamw: parameter "${name}" must be an f32 host tensor, got ${param}`);
        this.slots.set(name, { param, expAvg: Tensor.f32(param.shape), expAvgSq: Tensor.f32(param.shape) });
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

  /** One update of every parameter with `grads` (by parameter name, f32, same shapes), at each group's current lr. */
  update(grads: ReadonlyMap<string, Tensor<'f32'> | Float32Array> | Readonly<Record<string, Tensor<'f32'> | Float32Array>>): void {
    const lookup = grads instanceof Map ? (n: string) => grads.get(n) : (n: string) => (grads as Record<string, Tensor<'f32'> | Float32Array>)[n];
    // All gradients are checked before any parameter moves, so a missing one cannot leave a half-applied step.
    const plan: { slot: Slot; grad: Float32Array; group: ParamGroup }[] = [];
    for (const group of this.groups) {
      for (const name of group.params) {
        const slot = this.slots.get(name)!;
        const grad = lookup(name);
        if (grad === undefined) throw new Error(`adamw: no gradient for "${name}"`);
        const data = grad instanceof Float32Array ? grad : grad.dtype === 'f32' ? grad.data : undefined;
        if (!data || data.length !== slot.param.numel) throw new Error(`adamw: gradient of "${name}" is not ${slot.param.numel} f32 values`);
        plan.push({ slot, grad: data, group });
      }
    }
    const t = this.step + 1;
    for (const { slot, grad, group } of plan) {
      adamwUpdate(slot.param.data, grad, slot.expAvg.data, slot.expAvgSq.data, t, {
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
    for (const [name, slot] of this.slots) {
      tensors[`exp_avg/${name}`] = Tensor.f32(slot.expAvg.shape, slot.expAvg.data);
      tensors[`exp_avg_sq/${name}`] = Tensor.f32(slot.expAvgSq.shape, slot.expAvgSq.data);
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
      slot.expAvg.data.set(restored.get(name)!.expAvg);
      slot.expAvgSq.data.set(restored.get(name)!.expAvgSq);
    }
    meta.groups.forEach((g, i) => {
      this.groups[i]!.lr = g.lr;
      this.groups[i]!.weightDecay = g.weightDecay;
    });
    this.step = meta.step;
  }
}
