/**
 * The loss reduction of gradient accumulation (transformers 4.46 `Trainer`, fixtures/training/README.md "Loss"):
 * every micro-batch of an optimizer step divides its summed token losses by the supervised-token count of the whole
 * step (`num_items_in_batch`), not by its own count, so the summed gradients are those of one mean over all tokens of
 * the step however the tokens fall into micro-batches.
 */

import { IGNORE_INDEX } from '../model/qwen2-training.js';

/** Supervised labels of a collated micro-batch (labels ≠ −100; the collator already set each sample's first to −100). */
export function supervisedCount(labels: ArrayLike<number> | BigInt64Array): number {
  let n = 0;
  for (let i = 0; i < labels.length; i++) if (Number(labels[i]) !== IGNORE_INDEX) n++;
  return n;
}

/** `num_items_in_batch` of an optimizer step: the supervised labels of all its micro-batches. */
export function numItemsInBatch(microBatchLabels: readonly (ArrayLike<number> | BigInt64Array)[]): number {
  return microBatchLabels.reduce((n, labels) => n + supervisedCount(labels), 0);
}

/** A micro-batch's loss: its float32 loss sum over the step's count, one float32 division as in the model's forward. */
export function microBatchLoss(lossSum: number, numItems: number): number {
  if (!Number.isInteger(numItems) || numItems < 1) throw new Error(`accumulation: num_items_in_batch must be a positive integer, got ${numItems}`);
  return Math.fround(Math.fround(lossSum) / numItems);
}

/** The step's loss as the Trainer logs it: the micro-batch losses added one by one into a float32 total. */
export function stepLoss(microBatchLosses: readonly number[]): number {
  return microBatchLosses.reduce((total, loss) => Math.fround(total + loss), 0);
}

/** `into += grad` in float32, as backward adds a micro-batch's gradient to `.grad`. */
export function accumulateGradient(into: Float32Array, grad: Float32Array): void {
  if (into.length !== grad.length) throw new Error(`accumulation: gradient of ${grad.length} elements added to one of ${into.length}`);
  for (let i = 0; i < into.length; i++) into[i] = Math.fround(into[i]! + grad[i]!);
}
