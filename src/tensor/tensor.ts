import { arrayFor, BYTES_PER_ELEMENT, byteSizeOf, floatReader, isQuantized, type AnyTypedArray, type DType, type TypedArrayFor } from './dtype.js';
import { dequantize } from './quant.js';

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new Error(`invalid tensor shape [${shape.join(', ')}]`);
    n *= d;
  }
  return n;
}

/**
 * Where a tensor's elements live, owned by the backend that made it: host memory for the CPU backends (and for what
 * processing and file I/O produce), a device buffer for a GPU backend. Model code holds storage only through
 * tensors and moves data with the backend's memory ops; only backends and host-side I/O read the bytes.
 */
export interface Storage {
  /** The memory family: 'host' for the CPU backends; a GPU backend names its own. */
  readonly device: string;
  readonly byteLength: number;
  /** The identity of the underlying memory: two storages with the same `memory` may alias each other. */
  readonly memory: object;
}

/** Host memory: one ArrayBuffer (several tensors, and several HostStorage objects, may share it). */
export class HostStorage implements Storage {
  readonly device = 'host';
  constructor(readonly buffer: ArrayBufferLike) {}

  get byteLength(): number {
    return this.buffer.byteLength;
  }

  get memory(): object {
    return this.buffer;
  }
}

/**
 * A dense, row-major, contiguous tensor: a dtype, a shape and a range of a backend's storage.
 *
 * A view (`reshape`, `rows`) is another Tensor over a sub-range of the same storage. Storage is owned by whoever
 * allocated it (a checkpoint read, a Workspace, a backend's `allocate`); views never outlive their meaning because
 * model code only takes them from buffers it holds for the duration of a call. `data` is the elements as a typed
 * array, and exists only for host storage: model and engine code never read it (they use the backend's memory ops,
 * so that the same code runs on a device whose memory the host cannot address).
 */
export class Tensor<D extends DType = DType> {
  readonly dtype: D;
  readonly shape: readonly number[];
  readonly storage: Storage;
  /** Where the first element starts in the storage, in bytes. */
  readonly byteOffset: number;
  readonly numel: number;
  private hostData?: TypedArrayFor<D>;

  /** A tensor over `data` (host memory), or over `storage` from `byteOffset` on. */
  constructor(dtype: D, shape: readonly number[], data: TypedArrayFor<D>);
  constructor(dtype: D, shape: readonly number[], storage: Storage, byteOffset?: number);
  constructor(dtype: D, shape: readonly number[], source: TypedArrayFor<D> | Storage, byteOffset = 0) {
    const n = numelOf(shape);
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.numel = n;
    if (isQuantized(dtype) && (shape.length !== 2 || shape[1]! % 32 !== 0)) {
      throw new Error(`a ${dtype} tensor is a matrix whose rows are whole blocks of 32 values, not [${shape.join(', ')}]`);
    }
    if (ArrayBuffer.isView(source)) {
      const length = isQuantized(dtype) ? byteSizeOf(dtype, n) : n;
      if (source.length !== length) throw new Error(`tensor data has ${source.length} elements but ${dtype} [${shape.join(', ')}] needs ${length}`);
      this.storage = new HostStorage(source.buffer);
      this.byteOffset = source.byteOffset;
      this.hostData = source;
    } else {
      const bytes = byteSizeOf(dtype, n);
      const align = isQuantized(dtype) ? 1 : BYTES_PER_ELEMENT[dtype];
      if (!Number.isInteger(byteOffset) || byteOffset < 0 || byteOffset % align !== 0 || byteOffset + bytes > source.byteLength) {
        throw new Error(`tensor [${shape.join(', ')}] ${dtype} at byte ${byteOffset} does not fit its storage of ${source.byteLength} bytes`);
      }
      this.storage = source;
      this.byteOffset = byteOffset;
    }
  }

  /** A zero-filled host tensor (processing, I/O and tests; model code asks its backend to `allocate`). */
  static empty<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D> {
    return new Tensor(dtype, shape, new HostStorage(new ArrayBuffer(byteSizeOf(dtype, numelOf(shape)))));
  }

  static f32(shape: readonly number[], values?: ArrayLike<number>): Tensor<'f32'> {
    const t = Tensor.empty('f32', shape);
    if (values) t.data.set(values);
    return t;
  }

  static i32(shape: readonly number[], values?: ArrayLike<number>): Tensor<'i32'> {
    const t = Tensor.empty('i32', shape);
    if (values) t.data.set(values);
    return t;
  }

  /** True when the elements are in host memory, where `data` can read them. */
  get isHost(): boolean {
    return this.storage instanceof HostStorage;
  }

  /** The elements, in host memory. A tensor on a device has none here: its backend's `download` brings them. */
  get data(): TypedArrayFor<D> {
    if (this.hostData) return this.hostData;
    if (!(this.storage instanceof HostStorage)) {
      throw new Error(`${this} lives on ${this.storage.device}, not in host memory: read it through its backend's download()`);
    }
    this.hostData = arrayFor(this.dtype, this.storage.buffer, this.byteOffset, this.numel) as TypedArrayFor<D>;
    return this.hostData;
  }

  get rank(): number {
    return this.shape.length;
  }

  get byteLength(): number {
    return byteSizeOf(this.dtype, this.numel);
  }

  /** Size of dimension i; negative i counts from the end. */
  dim(i: number): number {
    const d = this.shape[i < 0 ? this.shape.length + i : i];
    if (d === undefined) throw new Error(`dimension ${i} out of range for shape [${this.shape.join(', ')}]`);
    return d;
  }

  /** Same storage, new shape with the same number of elements. */
  reshape(shape: readonly number[]): Tensor<D> {
    const n = numelOf(shape);
    if (n !== this.numel) throw new Error(`cannot reshape [${this.shape.join(', ')}] (${this.numel} elements) to [${shape.join(', ')}]`);
    if (isQuantized(this.dtype) && shape[1] !== this.shape[1]) throw new Error(`cannot reshape ${this}: its rows are packed in blocks`);
    return new Tensor(this.dtype, shape, this.storage, this.byteOffset);
  }

  /** Rows [start, end) along the first dimension: a view, no copy. Quantized rows are interleaved: none. */
  rows(start: number, end: number): Tensor<D> {
    if (isQuantized(this.dtype)) throw new Error(`rows(${start}, ${end}): the rows of ${this} are packed in groups, not sliceable`);
    const rowSize = this.shape.length === 0 ? 1 : this.numel / this.shape[0]!;
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > this.shape[0]! || start > end) {
      throw new Error(`rows(${start}, ${end}) out of range for shape [${this.shape.join(', ')}]`);
    }
    const offset = this.byteOffset + start * rowSize * BYTES_PER_ELEMENT[this.dtype];
    return new Tensor(this.dtype, [end - start, ...this.shape.slice(1)], this.storage, offset);
  }

  /** Copies the elements into a new Float32Array (widening half floats, dequantizing); host tensors only: tests and output. */
  toFloat32(): Float32Array {
    const data = this.data;
    if (isQuantized(this.dtype)) return dequantize(this.dtype, data as Uint8Array, this.dim(0), this.dim(1));
    if (this.dtype === 'f32') return Float32Array.from(data as Float32Array);
    if (this.dtype === 'i32' || this.dtype === 'u8') return Float32Array.from(data as Int32Array);
    if (this.dtype === 'i64') return Float32Array.from(data as BigInt64Array, Number);
    const read = floatReader(this.dtype, data);
    const out = new Float32Array(this.numel);
    for (let i = 0; i < out.length; i++) out[i] = read(i);
    return out;
  }

  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}])`;
  }
}

export type { AnyTypedArray };
