import { Tensor } from '../tensor/tensor.js';
import type { AdapterActivations } from './lora-linear.js';

/** How a training forward runs. */
export interface TrainingForward {
  /** Apply the LoRA adapters' dropout: a training step (an evaluation has none). */
  training?: boolean;
  /**
   * Activation checkpointing per layer: keep only each layer's input (and the dropout masks its adapters drew) for
   * the backward, which runs that layer's forward again from them just before the layer's backward. Activation
   * memory falls from every layer's activations to one layer's plus every layer's input, for one more forward per
   * layer; the gradients are the same bits, as the recompute is the same ops on the same inputs.
   */
  checkpointLayers?: boolean;
}

/** The dropout masks one layer's adapters drew, by role (null: none), for a recompute to use again. */
export type DropoutMasks<Role extends string> = Partial<Record<Role, Tensor | null>>;

/** What the forward keeps of one layer for the backward: all its activations, or (checkpointed) what rebuilds them. */
export type SavedLayer<Activations, Role extends string> = { activations: Activations } | { input: Tensor; masks: DropoutMasks<Role> };

/** A layer's activations as the forward keeps them under `checkpointLayers` or not. */
export function saveLayer<Role extends string, A extends { x: Tensor; adapters: Partial<Record<Role, AdapterActivations | null>> }>(
  activations: A,
  checkpointLayers: boolean | undefined,
): SavedLayer<A, Role> {
  if (!checkpointLayers) return { activations };
  const masks: DropoutMasks<Role> = {};
  for (const role of Object.keys(activations.adapters) as Role[]) masks[role] = activations.adapters[role]?.mask ?? null;
  return { input: activations.x, masks };
}

/**
 * Bytes of backend memory that saved layers hold, each storage once (a reshaped view shares its tensor's): what a
 * forward keeps alive for the backward, the figure checkpointing lowers.
 */
export function savedBytes(layers: readonly SavedLayer<object, string>[]): number {
  const storages = new Set<Tensor['storage']>();
  const visit = (value: unknown): void => {
    if (value instanceof Tensor) storages.add(value.storage);
    else if (value && typeof value === 'object') for (const v of Object.values(value)) visit(v);
  };
  visit(layers);
  let bytes = 0;
  for (const s of storages) bytes += s.byteLength;
  return bytes;
}
