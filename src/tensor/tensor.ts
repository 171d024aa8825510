import { arrayFor, BYTES_PER_ELEMENT, floatReader, type AnyTypedArray, type DType, type TypedArrayFor } from './dtype.js';

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new Error(`invalid tensor shape [${shape.join(', ')}]`);
    n *= d;
  }
  return n;
}

/**
 * A dense, row-major, contiguous tensor in host memory.
 *
 * `data` is exactly the tensor's elements: a tensor never aliases more than it covers, so a view (`reshape`,
 * `rows`) is another Tensor over a sub-range of the same storage. Storage is owned by whoever allocated it (a
 * checkpoint mapping, a Workspace, or `Tensor.empty`); views never outlive their meaning because model code only
 * takes them from buffers it holds for the duration of a call.
 */
export class Tensor<D extends DType = DType> {
  readonly dtype: D;
  readonly shape: readonly number[];
  readonly data: TypedArrayFor<D>;

  constructor(dtype: D, shape: readonly number[], data: TypedArrayFor<D>) {
    const n = numelOf(shape);
    if (data.length !== n) {
      throw new Error(`tensor data has ${data.length} elements but shape [${shape.join(', ')}] needs ${n}`);
    }
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.data = data;
  }

  static empty<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D> {
    const n = numelOf(shape);
    return new Tensor(dtype, shape, arrayFor(dtype, new ArrayBuffer(n * BYTES_PER_ELEMENT[dtype]), 0, n) as TypedArrayFor<D>);
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

  get numel(): number {
    return this.data.length;
  }

  get rank(): number {
    return this.shape.length;
  }

  get byteLength(): number {
    return this.data.byteLength;
  }

  /** Size of dimension i; negative i counts from the end. */
  dim(i: number): number {
    const d = this.shape[i < 0 ? this.shape.length + i : i];
    if (d === undefined) throw new Error(`dimension ${i} out of range for shape [${this.shape.join(', ')}]`);
    return d;
  }

  /** Same storage, new shape with the same number of elements. */
  reshape(shape: readonly number[]): Tensor<D> {
    return new Tensor(this.dtype, shape, this.data);
  }

  /** Rows [start, end) along the first dimension: a view, no copy. */
  rows(start: number, end: number): Tensor<D> {
    const rowSize = this.shape.length === 0 ? 1 : this.numel / this.shape[0]!;
    if (start < 0 || end > this.shape[0]! || start > end) {
      throw new Error(`rows(${start}, ${end}) out of range for shape [${this.shape.join(', ')}]`);
    }
    const data = this.data.subarray(start * rowSize, end * rowSize) as TypedArrayFor<D>;
    return new Tensor(this.dtype, [end - start, ...this.shape.slice(1)], data);
  }

  /** Copies the elements into a new Float32Array (widening half floats); for tests, sampling and output. */
  toFloat32(): Float32Array {
    if (this.dtype === 'f32') return Float32Array.from(this.data as Float32Array);
    if (this.dtype === 'i32' || this.dtype === 'u8') return Float32Array.from(this.data as Int32Array);
    if (this.dtype === 'i64') return Float32Array.from(this.data as BigInt64Array, Number);
    const read = floatReader(this.dtype, this.data);
    const out = new Float32Array(this.numel);
    for (let i = 0; i < out.length; i++) out[i] = read(i);
    return out;
  }

  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}])`;
  }
}

export function assertShape(name: string, t: Tensor, shape: readonly number[]): void {
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new Error(`${name}: expected shape [${shape.join(', ')}], got [${t.shape.join(', ')}]`);
  }
}

export function assertDType(name: string, t: Tensor, ...dtypes: DType[]): void {
  if (!dtypes.includes(t.dtype)) throw new Error(`${name}: expected dtype ${dtypes.join(' or ')}, got ${t.dtype}`);
}

export type { AnyTypedArray };
