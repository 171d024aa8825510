import { LRUCache } from 'lru-cache';
import type { CacheStats } from './feature-cache.js';
import type { KVPrefix } from './kv-cache.js';

/**
 * What decides a prompt position's keys and values, besides the positions before it: a text token's id, or for a
 * visual token its features' content key and its index among the item's tokens before pruning (so DiffFP's choice
 * of tokens is part of the key), as `"<featureKey>:<index>"`.
 */
export type PositionKey = number | string;

export interface PrefixCacheStats extends CacheStats {
  /** Prompt positions read from the cache instead of prefilled, over all hits. */
  reusedTokens: number;
}

/** The control tokens a chat template frames messages with (`<|im_start|>role\n … <|im_end|>\n`). */
export interface MessageTokens {
  imStart: number;
  imEnd: number;
  newline: number;
}

/**
 * Prompt positions where a message or its header ends: after `<|im_end|>\n` and after `<|im_start|>role\n`. Each is
 * decided by the tokens before it, so a prompt and any longer prompt sharing its first p tokens agree on the breaks
 * up to p. The end of a turn's prompt (`<|im_start|>assistant\n`) is one, which is where the next turn, or a client
 * re-sending the history, resumes.
 */
export function messageBreaks(ids: readonly number[], t: MessageTokens): number[] {
  const breaks: number[] = [];
  for (let p = 2; p <= ids.length; p++) {
    if (ids[p - 1] !== t.newline) continue;
    if (ids[p - 2] === t.imEnd || (p >= 3 && ids[p - 3] === t.imStart)) breaks.push(p);
  }
  return breaks;
}

interface Entry {
  keys: readonly PositionKey[];
  prefix: KVPrefix;
}

/** Most entries held, whatever their bytes: every lookup compares the prompt with each entry. */
const MAX_PREFIX_ENTRIES = 256;

function commonLength(a: readonly PositionKey[], b: readonly PositionKey[], limit: number): number {
  const n = Math.min(a.length, b.length, limit);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/**
 * The KV caches of finished requests, least recently used first out once their bytes pass the bound. A request
 * reuses the longest prefix of its positions some entry holds, cut back to a position where its prefill would have
 * ended a chunk anyway (a multiple of the chunk size or a message break, see `GenerateRequest.prefillBreaks`):
 * resuming there, the rest of the prompt is computed by the same kernel calls on the same rows as without the cache,
 * so the answer is bit for bit the same.
 */
export class PrefixCache {
  private readonly lru?: LRUCache<number, Entry>;
  private nextId = 0;
  private hits = 0;
  private misses = 0;
  private reused = 0;

  /** `maxBytes` 0 turns the cache off. */
  constructor(readonly maxBytes: number) {
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw new RangeError(`the prefix cache bound must be an integer number of bytes >= 0, got ${maxBytes}`);
    if (maxBytes > 0) this.lru = new LRUCache({ maxSize: maxBytes, max: MAX_PREFIX_ENTRIES, sizeCalculation: (e) => Math.max(1, e.prefix.bytes) });
  }

  get enabled(): boolean {
    return this.lru !== undefined;
  }

  /**
   * The entry sharing the most leading positions with `keys`, and how many of them to reuse: at most `limit`, cut
   * back to the largest multiple of `chunk` or member of `breaks` (ascending) not above the shared length. Counts a
   * hit when that is more than 0, a miss otherwise.
   */
  match(keys: readonly PositionKey[], options: { limit: number; chunk: number; breaks: readonly number[] }): { prefix: KVPrefix; length: number } | undefined {
    if (!this.lru) return undefined;
    let best: { id: number; entry: Entry; shared: number } | undefined;
    for (const [id, entry] of this.lru.entries()) {
      const shared = commonLength(keys, entry.keys, Math.min(options.limit, entry.prefix.length));
      if (shared > (best?.shared ?? 0)) best = { id, entry, shared };
    }
    let length = 0;
    if (best) {
      length = Math.floor(best.shared / options.chunk) * options.chunk;
      for (const b of options.breaks) {
        if (b > best.shared) break;
        length = Math.max(length, b);
      }
    }
    if (!best || length === 0) {
      this.misses++;
      return undefined;
    }
    this.lru.get(best.id); // most recently used now
    this.hits++;
    this.reused += length;
    return { prefix: best.entry.prefix, length };
  }

  /**
   * Keeps `prefix`, whose positions are `keys` (one per position). An entry it extends is dropped, since every
   * lookup that entry would serve this one serves as well; when an entry already extends it, nothing is added.
   */
  store(keys: readonly PositionKey[], prefix: KVPrefix): void {
    if (!this.lru || prefix.length === 0 || prefix.bytes > this.maxBytes) return;
    if (keys.length < prefix.length) throw new Error(`PrefixCache.store: ${keys.length} keys for ${prefix.length} positions`);
    const own = keys.length === prefix.length ? keys : keys.slice(0, prefix.length);
    const superseded: number[] = [];
    for (const [id, entry] of this.lru.entries()) {
      const shared = commonLength(own, entry.keys, Math.min(own.length, entry.prefix.length));
      if (shared === own.length) {
        this.lru.get(id);
        return;
      }
      if (shared === entry.prefix.length) superseded.push(id);
    }
    for (const id of superseded) this.lru.delete(id);
    this.lru.set(this.nextId++, { keys: own, prefix });
  }

  get stats(): PrefixCacheStats {
    return {
      hits: this.hits,
      misses: this.misses,
      entries: this.lru?.size ?? 0,
      bytes: this.lru?.calculatedSize ?? 0,
      maxBytes: this.maxBytes,
      reusedTokens: this.reused,
    };
  }
}
