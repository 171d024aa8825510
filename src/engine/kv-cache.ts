import type { Backend } from '../tensor/backend.js';
import type { Tensor } from '../tensor/tensor.js';

/**
 * Keys and values of positions [0, length) of a finished request, taken out of its cache (`KVCache.detach`) to be
 * reused by later requests that share the prefix. Nothing writes to them again: a request copies what it reuses.
 */
export interface KVPrefix {
  readonly keys: readonly Tensor<'f32'>[];
  readonly values: readonly Tensor<'f32'>[];
  readonly length: number;
  /** Bytes the buffers hold (their capacity, which may exceed `length` a little). */
  readonly bytes: number;
}

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
    const end = this.length + k.dim(0);
    this.backend.copy(k, this.keysUpTo(layer, end).rows(this.length, end));
    this.backend.copy(v, this.valuesUpTo(layer, end).rows(this.length, end));
  }

  /**
   * Keys of `layer` for positions [0, end): a view. Rows from `length` on are for a forward pass to compute its
   * positions' keys into (`reserve` first, `advance` after all layers).
   */
  keysUpTo(layer: number, end: number): Tensor<'f32'> {
    return this.keys[layer]!.rows(0, this.withinCapacity(end));
  }

  valuesUpTo(layer: number, end: number): Tensor<'f32'> {
    return this.values[layer]!.rows(0, this.withinCapacity(end));
  }

  private withinCapacity(end: number): number {
    if (end > this.capacity) throw new Error(`KVCache: position ${end - 1} is past its capacity of ${this.capacity}: call reserve() first`);
    return end;
  }

  advance(T: number): void {
    this.length += T;
  }

  /** Forgets positions from `length` on (e.g. to retry from a shared prefix). */
  truncate(length: number): void {
    this.length = Math.min(this.length, length);
  }

  /** Positions [0, length) of `prefix` copied into this (empty) cache, which grows to hold them. */
  loadPrefix(prefix: KVPrefix, length: number): void {
    if (this.length !== 0) throw new Error('KVCache.loadPrefix needs an empty cache');
    if (length > prefix.length) throw new Error(`KVCache.loadPrefix: the prefix holds ${prefix.length} positions, not ${length}`);
    if (prefix.keys.length !== this.layers) throw new Error(`KVCache.loadPrefix: the prefix has ${prefix.keys.length} layers, the cache ${this.layers}`);
    this.reserve(length);
    for (let l = 0; l < this.layers; l++) {
      this.backend.copy(prefix.keys[l]!.rows(0, length), this.keys[l]!.rows(0, length));
      this.backend.copy(prefix.values[l]!.rows(0, length), this.values[l]!.rows(0, length));
    }
    this.length = length;
  }

  /**
   * Hands positions [0, length) over as a KVPrefix and leaves this cache released. The buffers move without a copy
   * unless most of their capacity would be wasted (a prompt with room reserved for a long answer): then the rows are
   * copied into buffers of their own size, so that a cache bounded in bytes holds positions, not spare room.
   */
  detach(length = this.length): KVPrefix {
    const kept = Math.min(length, this.length);
    if (kept > 0 && this.capacity - kept > Math.max(64, kept / 4)) {
      this.length = kept;
      this.grow(kept);
    }
    const prefix: KVPrefix = { keys: this.keys, values: this.values, length: kept, bytes: this.bytes };
    this.release();
    return prefix;
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
