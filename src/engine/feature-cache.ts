import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { Tensor } from '../tensor/tensor.js';

/** What a cache holds and how it has served: for a server's health report and the library's stats. */
export interface CacheStats {
  /** Lookups that found something to reuse, and those that did not. */
  hits: number;
  misses: number;
  entries: number;
  /** Bytes held now, and the bound (0: the cache is off). */
  bytes: number;
  maxBytes: number;
}

/** Everything besides the pixels that decides an item's projected features. */
export interface FeatureSettings {
  modality: 'image' | 'video';
  /** Frames, patch rows and patch columns of the item. */
  grid: readonly [number, number, number];
  mergeSize: number;
  /** The vision encoder's and projector's weight format, and how the kernels multiply (both change the features' bits). */
  visionWeights: string;
  compute: string;
  isa?: string;
}

/**
 * The content key of an image's or a video's features: sha256 of the pixel values the encoder reads (decoded,
 * sampled, resized and normalised, so the size budget, fps, frame limit and trimming are all in them) and of the
 * settings beside them. Equal keys mean bit-equal features, which is what lets the prefix cache match visual tokens
 * by this key.
 */
export function featureKey(pixels: Float32Array, settings: FeatureSettings): string {
  const hash = createHash('sha256');
  hash.update(JSON.stringify([settings.modality, settings.grid, settings.mergeSize, settings.visionWeights, settings.compute, settings.isa ?? null]));
  hash.update(new Uint8Array(pixels.buffer, pixels.byteOffset, pixels.byteLength));
  return hash.digest('hex');
}

/** Most entries held, whatever their bytes: many tiny images must not make every lookup walk a huge map. */
const MAX_FEATURE_ENTRIES = 4096;

/**
 * Projected visual features of images and videos (before DiffFP, which each request applies with its own settings),
 * by content key, least recently used first out once the bytes pass the bound. A request holding features keeps
 * them alive after an eviction: the bound is on what the cache keeps, not on what requests use.
 */
export class FeatureCache {
  private readonly lru?: LRUCache<string, Tensor>;
  private hits = 0;
  private misses = 0;

  /** `maxBytes` 0 turns the cache off: every lookup misses and nothing is kept. */
  constructor(readonly maxBytes: number) {
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw new RangeError(`the feature cache bound must be an integer number of bytes >= 0, got ${maxBytes}`);
    if (maxBytes > 0) this.lru = new LRUCache({ maxSize: maxBytes, max: MAX_FEATURE_ENTRIES, sizeCalculation: (t) => Math.max(1, t.byteLength) });
  }

  get enabled(): boolean {
    return this.lru !== undefined;
  }

  get(key: string): Tensor | undefined {
    if (!this.lru) return undefined;
    const found = this.lru.get(key);
    if (found) this.hits++;
    else this.misses++;
    return found;
  }

  /** Keeps `features` (f32 [tokens, hidden], not written to again); one larger than the whole bound is not kept. */
  set(key: string, features: Tensor): void {
    if (features.dtype !== 'f32') throw new Error(`the feature cache holds f32 features, got ${features.dtype}`);
    this.lru?.set(key, features);
  }

  get stats(): CacheStats {
    return { hits: this.hits, misses: this.misses, entries: this.lru?.size ?? 0, bytes: this.lru?.calculatedSize ?? 0, maxBytes: this.maxBytes };
  }
}
