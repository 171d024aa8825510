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

/**
 * Fewest prompt positions since the last chunk end for a turn break to end a chunk. Below this, the native matmul
 * takes its GEMV path, which reads every weight once per call: a short piece as its own chunk would cost nearly as
 * much as a full one, in every prompt, whether or not a cache ever resumes there.
 */
export const MIN_BREAK_PIECE = 64;

/**
 * Prompt positions where a prefill chunk ends besides the multiples of `chunk`: after each occurrence of
 * `turnStart` (the template's `<|im_start|>assistant\n`), where a turn's prompt ends and the next turn, or a client
 * re-sending the history, resumes; and where the message after an assistant message starts (at the next occurrence
 * of turnStart's first token, `<|im_start|>`), where a conversation read back with its answer (`cachePrompt`) ends
 * and the next turn's new message begins. A candidate is dropped when fewer than MIN_BREAK_PIECE positions lie since
 * the last chunk end. Each break at p is decided by the tokens up to p, so a prompt and any longer prompt sharing its
 * first p tokens agree on the breaks before p, and a prompt's end is a chunk end anyway.
 */
export function turnBreaks(ids: readonly number[], turnStart: readonly number[], chunk: number): number[] {
  const breaks: number[] = [];
  const k = turnStart.length;
  if (k === 0) return breaks;
  const messageStart = turnStart[0];
  const lastEnd = (p: number) => Math.max(breaks.at(-1) ?? 0, Math.floor((p - 1) / chunk) * chunk);
  let inAnswer = false;
  for (let p = 1; p <= ids.length; p++) {
    let isTurnStart = p >= k;
    for (let i = 0; i < k && isTurnStart; i++) isTurnStart = ids[p - k + i] === turnStart[i];
    const endsAnswer = inAnswer && ids[p] === messageStart;
    if (isTurnStart) inAnswer = true;
    else if (endsAnswer) inAnswer = false;
    if ((isTurnStart || endsAnswer) && p - lastEnd(p) >= MIN_BREAK_PIECE) breaks.push(p);
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
 * ended a chunk anyway (a multiple of the chunk size or a turn break, see `turnBreaks`):
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
