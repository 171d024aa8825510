import type { Backend } from './backend.js';
import { NativeBackend } from './native.js';
import { ReferenceBackend } from './reference.js';

export type BackendName = 'native' | 'reference';

/**
 * The backend a model runs on; `threads` defaults to the cores available to the process. The native backend's matmuls
 * compute exactly (f32 activations: the numerics the parity fixtures pin) unless $VL3_COMPUTE says otherwise, although
 * a NativeBackend constructed without options takes the fastest mode the CPU has.
 */
export function createBackend(name: BackendName = 'native', threads?: number): Backend {
  const native = () => new NativeBackend(process.env['VL3_COMPUTE'] ? {} : { compute: 'exact' });
  const backend: Backend = name === 'native' ? native() : new ReferenceBackend();
  if (threads !== undefined) {
    if (!Number.isInteger(threads) || threads < 1) throw new Error(`invalid thread count ${threads}: must be an integer >= 1`);
    backend.threads = threads;
  }
  return backend;
}

export type { AttentionOptions, Backend, TopK } from './backend.js';
export type { DType } from './dtype.js';
export { Tensor } from './tensor.js';
