import type { Backend, ComputeMode } from './backend.js';
import { NativeBackend } from './native.js';
import { ReferenceBackend } from './reference.js';

export type BackendName = 'native' | 'reference';

export interface BackendOptions {
  /** Kernel threads of this backend; default: the cores available to the process. */
  threads?: number;
  /** How matmul multiplies; default: 'exact'. */
  compute?: ComputeMode;
}

/** A backend for a model: the native CPU kernels, or the TypeScript reference (slow; for checking). */
export function createBackend(name: BackendName = 'native', options: BackendOptions = {}): Backend {
  const { threads, compute } = options;
  if (threads !== undefined && (!Number.isInteger(threads) || threads < 1)) throw new Error(`invalid thread count ${threads}: must be an integer >= 1`);
  return name === 'native' ? new NativeBackend({ threads }) : new ReferenceBackend({ compute });
}

export { CheckedBackend } from './checked.js';
export type { AttentionOptions, Backend, ComputeMode, Kernels, TopK } from './backend.js';
export type { DType } from './dtype.js';
export { HostStorage, Tensor, type Storage } from './tensor.js';
