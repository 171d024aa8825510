import type { Backend } from '../tensor/backend.js';
import type { Tensor } from '../tensor/tensor.js';

/** An adapter's matrices on one layer as training uses them, their gradients (null: frozen), and its settings. */
export interface LinearAdapter {
  a: Tensor; // [r, in]
  b: Tensor; // [out, r]
  gradA: Tensor | null;
  gradB: Tensor | null;
  scaling: number;
  /** Dropout probability on the adapter's input while training, and the uniform [0, 1) numbers it draws from. */
  dropout: number;
  random: () => number;
}

/** What an adapted layer's backward needs beyond its input: A·x' [M, r] and the dropout mask (already scaled). */
export interface AdapterActivations {
  u: Tensor;
  mask: Tensor | null;
}

/**
 * A linear layer for training, `y = x·Wᵀ + b`, that may carry a LoRA adapter (PEFT 0.4.0 `lora.Linear.forward`):
 * `y += (B·(A·dropout(x))) · scaling`. W and b stay as given (frozen or trained with their own gradients); A and B
 * get theirs through the same matmul backward. Forward and backward side by side.
 */
export class TrainingLinear {
  private scale: Tensor | null = null;

  constructor(
    private readonly backend: Backend,
    readonly weight: Tensor,
    readonly bias: Tensor | null,
    private readonly gradWeight: Tensor | null,
    private readonly gradBias: Tensor | null,
    readonly adapter: LinearAdapter | null,
  ) {}

  /**
   * out = the layer of x; `training` applies the adapter's dropout. Returns what the backward needs, if anything.
   * `drawn`: the mask an earlier forward of this layer on the same x drew (null: it drew none), used instead of a new
   * one, so that a checkpointed layer run again for its backward is the same function and the random stream is not
   * advanced a second time.
   */
  forward(x: Tensor, out: Tensor, training: boolean, drawn?: Tensor | null): AdapterActivations | null {
    const b = this.backend;
    b.matmul(x, this.weight, this.bias, out);
    const ad = this.adapter;
    if (!ad) return null;
    const M = x.dim(0);
    let input = x;
    const mask = drawn !== undefined ? drawn : training && ad.dropout > 0 ? this.drawMask(x.shape, ad) : null;
    if (mask) {
      input = b.allocate('f32', x.shape);
      b.mul(x, mask, input);
    }
    const u = b.allocate('f32', [M, ad.a.dim(0)]);
    b.matmul(input, ad.a, null, u);
    const t = b.allocate('f32', out.shape);
    b.matmul(u, ad.b, null, t);
    b.mul(t, this.scaling(), t);
    b.add(out, t, out);
    return { u, mask };
  }

  /** Adds the gradients of W, b, A, B (those that are trained); writes d(loss)/dx into dx when given. */
  backward(dy: Tensor, x: Tensor, saved: AdapterActivations | null, dx: Tensor | null): void {
    const b = this.backend;
    b.matmulBackward(dy, x, this.weight, dx, this.gradWeight, this.gradBias);
    const ad = this.adapter;
    if (!ad || !saved) return;
    const dt = b.allocate('f32', dy.shape);
    b.mul(dy, this.scaling(), dt);
    const du = b.allocate('f32', saved.u.shape);
    b.matmulBackward(dt, saved.u, ad.b, du, ad.gradB, null);
    let input = x;
    if (saved.mask) {
      input = b.allocate('f32', x.shape);
      b.mul(x, saved.mask, input);
    }
    const dInput = dx ? b.allocate('f32', x.shape) : null;
    b.matmulBackward(du, input, ad.a, dInput, ad.gradA, null);
    if (!dx || !dInput) return;
    if (saved.mask) b.mul(dInput, saved.mask, dInput);
    b.add(dx, dInput, dx);
  }

  /** nn.Dropout's mask: keep with probability 1 − p, kept values scaled by 1/(1 − p). */
  private drawMask(shape: readonly number[], ad: LinearAdapter): Tensor {
    const keep = 1 / (1 - ad.dropout);
    const mask = this.backend.allocate('f32', shape);
    this.backend.write(mask, Float32Array.from({ length: mask.numel }, () => (ad.random() < ad.dropout ? 0 : keep)));
    return mask;
  }

  /** The scaling as a vector over the output features (mul broadcasts it over rows). */
  private scaling(): Tensor {
    if (!this.scale) {
      const out = this.weight.dim(0);
      this.scale = this.backend.allocate('f32', [out]);
      this.backend.fill(this.scale, this.adapter!.scaling);
    }
    return this.scale;
  }
}
