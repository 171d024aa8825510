import type { Backend, ComputeMode } from './backend.js';
import { NativeBackend, type Isa } from './native.js';
import { ReferenceBackend } from './reference.js';

export type BackendName = 'native' | 'reference';

export interface BackendOptions {
  /** Kernel threads of this backend's own pool; default: the cores available to the process. */
  threads?: number;
  /**
   * How matmul multiplies. Default for the native backend: $VL3_COMPUTE, else the fastest mode this CPU has ('bf16'
   * where it has a bf16 dot-product instruction); for the reference backend 'exact'.
   */
  compute?: ComputeMode;
  /** The native kernel tier; default $VL3_ISA, else the best this CPU supports. */
  isa?: Isa;
}

/** A backend for a model: the native CPU kernels, or the TypeScript reference (slow; for checking). */
export function createBackend(name: BackendName = 'native', options: BackendOptions = {}): Backend {
  const { threads, compute, isa } = options;
  if (threads !== undefined && (!Number.isInteger(threads) || threads < 1)) throw new Error(`invalid thread count ${threads}: must be an integer >= 1`);
  if (name === 'reference') {
    if (isa !== undefined) throw new Error(`the reference backend has no kernel tiers (isa ${isa})`);
    return new ReferenceBackend({ compute });
  }
  return new NativeBackend({ threads, compute, isa });
}

export { CheckedBackend } from './checked.js';
export type { AttentionOptions, Backend, ComputeMode, Kernels, MatmulPart, TopK } from './backend.js';
export type { DType } from './dtype.js';
export type { Isa } from './native.js';
export { HostStorage, Tensor, type Storage } from './tensor.js';
