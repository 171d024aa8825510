/**
 * How many chat requests the server works on at once, and how many may wait. The model shares itself between the
 * requests it is given; this bound keeps a burst of clients from piling up media downloads, temporary files and
 * pending work without limit: past `maxQueued` waiting requests, new ones are refused at once (503, Retry-After),
 * as vLLM does when its queue is full. Waiting is first come, first served, as in the model's own scheduler.
 */
import { Slots } from '../engine/scheduler.js';
import { HttpError } from './errors.js';

export class Admission {
  private readonly slots: Slots;

  constructor(
    maxActive: number,
    private readonly maxQueued: number,
    private readonly retryAfterSeconds: number,
  ) {
    this.slots = new Slots(maxActive);
  }

  get stats(): { active: number; queued: number } {
    return { active: this.slots.inUse, queued: this.slots.queued };
  }

  /**
   * Resolves with a release function (call it once, when the request ends) or undefined when `signal` aborted while
   * waiting. Throws a 503 HttpError when the queue is full.
   */
  async enter(signal: AbortSignal): Promise<(() => void) | undefined> {
    const { active, queued } = this.stats;
    const mustWait = active >= this.slots.size || queued > 0;
    if (mustWait && queued >= this.maxQueued) {
      throw new HttpError(503, `the server is busy (${active} requests running, ${queued} waiting); retry later`, null, 'server_busy', {
        'retry-after': String(this.retryAfterSeconds),
      });
    }
    return this.slots.acquire(signal);
  }
}
