import { arrayFor, BYTES_PER_ELEMENT, type DType, type TypedArrayFor } from './dtype.js';
import { numelOf, Tensor } from './tensor.js';

/**
 * Named scratch buffers that are reused from call to call, so that a long generation allocates nothing per token.
 *
 * `take(name, ...)` returns a tensor over the named buffer, growing it (never shrinking) when a larger shape is asked
 * for. A tensor taken from a workspace is valid until the same name is taken again; model code takes each name at
 * most once per forward pass. `release()` drops every buffer at once, e.g. when a request ends.
 */
export class Workspace {
  private readonly buffers = new Map<string, ArrayBuffer>();

  take<D extends DType>(name: string, dtype: D, shape: readonly number[]): Tensor<D> {
    const n = numelOf(shape);
    const bytes = n * BYTES_PER_ELEMENT[dtype];
    let buf = this.buffers.get(name);
    if (!buf || buf.byteLength < bytes) {
      // Grow geometrically so that a sequence growing one token at a time reallocates O(log n) times.
      buf = new ArrayBuffer(Math.max(bytes, Math.ceil((buf?.byteLength ?? 0) * 1.5), 64));
      this.buffers.set(name, buf);
    }
    return new Tensor(dtype, shape, arrayFor(dtype, buf, 0, n) as TypedArrayFor<D>);
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
