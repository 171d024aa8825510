/**
 * Gradient clipping by the global L2 norm, as `torch.nn.utils.clip_grad_norm_`: off in the official runs (the
 * DeepSpeed config has no `gradient_clipping`, fixtures/training/README.md "Optimizer and schedule"), but the Trainer
 * without DeepSpeed clips to `max_grad_norm` 1.0, so a run may ask for it.
 */

/** Σ g² in double: a tensor of millions of f32 squares would lose digits in a float32 sum. */
export function sumOfSquares(grad: Float32Array): number {
  let s = 0;
  for (let i = 0; i < grad.length; i++) s += grad[i]! * grad[i]!;
  return s;
}

export function globalGradNorm(grads: Iterable<Float32Array>): number {
  let s = 0;
  for (const g of grads) s += sumOfSquares(g);
  return Math.sqrt(s);
}

/**
 * Scales all gradients in place by max_norm / (norm + 1e-6) when that is below 1, i.e. when the global norm exceeds
 * max_norm (torch clamps the coefficient at 1 rather than testing the norm). Returns the norm before clipping and the
 * scale applied (1 when none).
 */
export function clipGradNorm(grads: readonly Float32Array[], maxNorm: number): { norm: number; scale: number } {
  if (!(maxNorm > 0)) throw new Error(`clip: max norm must be > 0, got ${maxNorm}`);
  const norm = globalGradNorm(grads);
  if (!Number.isFinite(norm)) throw new Error(`clip: the gradient norm is ${norm}`);
  const coef = maxNorm / (norm + 1e-6);
  if (coef >= 1) return { norm, scale: 1 };
  const scale = Math.fround(coef);
  for (const g of grads) {
    for (let i = 0; i < g.length; i++) g[i] = Math.fround(g[i]! * scale);
  }
  return { norm, scale };
}
