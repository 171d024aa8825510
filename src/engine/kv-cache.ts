import type { Backend } from '../tensor/backend.js';
import type { Tensor } from '../tensor/tensor.js';

/**
 * Keys and values of every decoder layer for one sequence, laid out [position, kvHead, headDim] so appending a token
 * is one contiguous copy and the attention op reads a prefix view without copying.
 *
 * Capacity grows geometrically (one copy per doubling), bounded by `maxLength`; `release()` frees it when the request
 * ends so a finished request holds no memory.
 */
export class KVCache {
  private keys: Tensor<'f32'>[] = [];
  private values: Tensor<'f32'>[] = [];
  private capacity = 0;
  length = 0;
  /** Bytes held by every cache of the process not yet released: shows that ended requests hold nothing. */
  static liveBytes = 0;

  constructor(
    private readonly backend: Pick<Backend, 'allocate' | 'copy'>,
    readonly layers: number,
    readonly kvHeads: number,
    readonly headDim: number,
    readonly maxLength: number,
    initialCapacity = 256,
  ) {
    this.grow(Math.min(initialCapacity, maxLength));
  }

  /** Bytes held by the cache buffers (capacity, not length). */
  get bytes(): number {
    return this.capacity * this.layers * 2 * this.kvHeads * this.headDim * 4;
  }

  /** Makes room for `extra` more positions; throws past maxLength so a runaway request fails clearly. */
  reserve(extra: number): void {
    const needed = this.length + extra;
    if (needed > this.maxLength) {
      throw new Error(`sequence of ${needed} tokens exceeds the model's context of ${this.maxLength} tokens`);
    }
    if (needed > this.capacity) this.grow(Math.min(this.maxLength, Math.max(needed, this.capacity * 2)));
  }

  /** Writes k and v [T, kvHeads, headDim] of `layer` at positions [length, length+T). Call `advance(T)` after all layers. */
  write(layer: number, k: Tensor, v: Tensor): void {
    const T = k.dim(0);
    if (this.length + T > this.capacity) throw new Error('KVCache.write past capacity: call reserve() first');
    this.backend.copy(k, this.keys[layer]!.rows(this.length, this.length + T));
    this.backend.copy(v, this.values[layer]!.rows(this.length, this.length + T));
  }

  /** Keys of `layer` for positions [0, end): a view. */
  keysUpTo(layer: number, end: number): Tensor<'f32'> {
    return this.keys[layer]!.rows(0, end);
  }

  valuesUpTo(layer: number, end: number): Tensor<'f32'> {
    return this.values[layer]!.rows(0, end);
  }

  advance(T: number): void {
    this.length += T;
  }

  /** Forgets positions from `length` on (e.g. to retry from a shared prefix). */
  truncate(length: number): void {
    this.length = Math.min(this.length, length);
  }

  release(): void {
    KVCache.liveBytes -= this.bytes;
    this.keys = [];
    this.values = [];
    this.capacity = 0;
    this.length = 0;
  }

  private grow(capacity: number): void {
    KVCache.liveBytes -= this.bytes;
    const shape = [capacity, this.kvHeads, this.headDim];
    for (let l = 0; l < this.layers; l++) {
      const k = this.backend.allocate('f32', shape);
      const v = this.backend.allocate('f32', shape);
      if (this.keys[l]) {
        this.backend.copy(this.keys[l]!.rows(0, this.length), k.rows(0, this.length));
        this.backend.copy(this.values[l]!.rows(0, this.length), v.rows(0, this.length));
      }
      this.keys[l] = k;
      this.values[l] = v;
    }
    this.capacity = capacity;
    KVCache.liveBytes += this.bytes;
  }
}
