import type { Backend } from './backend.js';
import { BYTES_PER_ELEMENT, type DType } from './dtype.js';
import { numelOf, Tensor, type Storage } from './tensor.js';

/**
 * Named scratch buffers in a backend's memory that are reused from call to call, so that a long generation
 * allocates nothing per token.
 *
 * `take(name, ...)` returns a tensor over the named buffer, growing it (never shrinking) when a larger shape is asked
 * for. A tensor taken from a workspace is valid until the same name is taken again; model code takes each name at
 * most once per forward pass. `release()` drops every buffer at once, e.g. when a request ends.
 */
export class Workspace {
  private readonly buffers = new Map<string, Storage>();

  constructor(private readonly backend: Pick<Backend, 'allocateStorage'>) {}

  take<D extends DType>(name: string, dtype: D, shape: readonly number[]): Tensor<D> {
    const bytes = numelOf(shape) * BYTES_PER_ELEMENT[dtype];
    let storage = this.buffers.get(name);
    if (!storage || storage.byteLength < bytes) {
      // Grow geometrically so that a sequence growing one token at a time reallocates O(log n) times.
      storage = this.backend.allocateStorage(Math.max(bytes, Math.ceil((storage?.byteLength ?? 0) * 1.5), 64));
      this.buffers.set(name, storage);
    }
    return new Tensor(dtype, shape, storage);
  }

  get bytes(): number {
    let total = 0;
    for (const b of this.buffers.values()) total += b.byteLength;
    return total;
  }

  release(): void {
    this.buffers.clear();
  }
}
