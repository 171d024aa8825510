/**
 * Fair sharing of one model between concurrent requests.
 *
 * Forward passes are synchronous native calls, so requests cannot overlap; what matters is the order in which they
 * take turns. Every heavy step (encoding a request's media, one prefill chunk, one decoded token) runs as a turn, and
 * turns are granted first come, first served: a request asking for its next turn queues behind every request already
 * waiting, which makes token generation round-robin and lets a long prefill interleave with others' decoding instead
 * of starving them. The event loop runs between turns, so streamed output, new requests and aborts are seen.
 *
 * Admission bounds memory: at most `maxActive` requests hold media, features and a KV cache at once; the rest wait,
 * in arrival order, holding nothing but their input. Among the active ones, one reads its prompt at a time (see
 * `beginPrompt`), as in vLLM's first-come-first-served scheduling with chunked prefill.
 */

/** Returned by `step` instead of running the work when the request was aborted while waiting. */
export const ABORTED: unique symbol = Symbol('aborted');

interface Waiter {
  grant: () => void;
  signal?: AbortSignal;
  onAbort?: () => void;
}

/** A first-come-first-served queue of waiters that leave the queue at once when their signal aborts. */
class FairQueue {
  private readonly waiting: Waiter[] = [];

  get length(): number {
    return this.waiting.length;
  }

  /** Resolves true when granted, false when the signal aborted first (the waiter is gone from the queue). */
  wait(signal?: AbortSignal): Promise<boolean> {
    if (signal?.aborted) return Promise.resolve(false);
    return new Promise((resolve) => {
      const waiter: Waiter = { signal, grant: () => resolve(true) };
      if (signal) {
        waiter.onAbort = () => {
          const i = this.waiting.indexOf(waiter);
          if (i >= 0) this.waiting.splice(i, 1);
          resolve(false);
        };
        signal.addEventListener('abort', waiter.onAbort, { once: true });
      }
      this.waiting.push(waiter);
    });
  }

  /** Grants the longest-waiting waiter; false when none is waiting. */
  grantNext(): boolean {
    const waiter = this.waiting.shift();
    if (!waiter) return false;
    if (waiter.onAbort) waiter.signal!.removeEventListener('abort', waiter.onAbort);
    waiter.grant();
    return true;
  }
}

/** A fixed number of slots, handed out first come, first served; waiters leave at once when their signal aborts. */
export class Slots {
  private taken = 0;
  private readonly waiting = new FairQueue();

  constructor(readonly size: number) {
    if (!Number.isInteger(size) || size < 1) throw new Error(`the number of slots must be an integer >= 1, got ${size}`);
  }

  get inUse(): number {
    return this.taken;
  }

  get queued(): number {
    return this.waiting.length;
  }

  /**
   * Waits for a slot. Resolves with a release function (call it once, when done with the slot), or undefined when
   * the signal aborted first.
   */
  async acquire(signal?: AbortSignal): Promise<(() => void) | undefined> {
    if (signal?.aborted) return undefined;
    if (this.taken >= this.size || this.waiting.length > 0) {
      // A waiter is only ever granted by a release, which hands its slot over: the count stays as it is.
      if (!(await this.waiting.wait(signal))) return undefined;
    } else {
      this.taken++;
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (!this.waiting.grantNext()) this.taken--;
    };
  }
}

export interface SchedulerStats {
  /** Requests admitted and not yet finished. */
  active: number;
  /** Requests waiting for admission. */
  queued: number;
}

export class Scheduler {
  private stepping = false;
  private readonly admissions: Slots;
  private readonly prefills = new Slots(1);
  private readonly turns = new FairQueue();

  constructor(readonly maxActive: number) {
    this.admissions = new Slots(maxActive);
  }

  get stats(): SchedulerStats {
    return { active: this.admissions.inUse, queued: this.admissions.queued };
  }

  /**
   * Waits for a slot among the active requests. Resolves with a release function (call it exactly once when the
   * request ends), or undefined when the signal aborted while waiting.
   */
  admit(signal?: AbortSignal): Promise<(() => void) | undefined> {
    return this.admissions.acquire(signal);
  }

  /**
   * Waits until no other request is reading its prompt (encoding media, prefilling), oldest first; release when the
   * first token is out. Prompts are read one at a time while decoding requests keep taking their turns: requests
   * arriving together then get their first tokens one after another, instead of all at the end of an interleaved
   * prefill, at no cost in throughput.
   */
  beginPrompt(signal?: AbortSignal): Promise<(() => void) | undefined> {
    return this.prefills.acquire(signal);
  }

  /**
   * Runs `work` when this request's turn comes, alone, and returns its result; or returns ABORTED without running
   * it if the signal aborted while waiting (or before).
   */
  async step<T>(work: () => T, signal?: AbortSignal): Promise<T | typeof ABORTED> {
    if (signal?.aborted) return ABORTED;
    if (this.stepping || this.turns.length > 0) {
      if (!(await this.turns.wait(signal))) return ABORTED;
    }
    this.stepping = true;
    try {
      if (signal?.aborted) return ABORTED;
      return work();
    } finally {
      // The next turn starts after the event loop has run once: I/O, timers and aborts are handled between turns.
      setImmediate(() => {
        if (!this.turns.grantNext()) this.stepping = false;
      });
    }
  }
}
