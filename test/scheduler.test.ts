// Fair sharing of one model: admission in arrival order up to a cap, round-robin turns, aborts that leave at once.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ABORTED, Scheduler, Slots } from '../src/engine/scheduler.js';

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('Scheduler', () => {
  it('admits up to maxActive requests, then the waiting ones in arrival order as slots free up', async () => {
    const s = new Scheduler(2);
    const order: string[] = [];
    const a = await s.admit();
    const b = await s.admit();
    const c = s.admit().then((release) => (order.push('c'), release));
    const d = s.admit().then((release) => (order.push('d'), release));
    await tick();
    assert.deepEqual(order, []);
    assert.deepEqual(s.stats, { active: 2, queued: 2 });
    b!();
    b!(); // a second release is ignored
    const releaseC = await c;
    assert.deepEqual(order, ['c']);
    assert.deepEqual(s.stats, { active: 2, queued: 1 });
    a!();
    const releaseD = await d;
    assert.deepEqual(order, ['c', 'd']);
    releaseC!();
    releaseD!();
    assert.deepEqual(s.stats, { active: 0, queued: 0 });
  });

  it('drops a request whose signal aborts while it waits for admission', async () => {
    const s = new Scheduler(1);
    const first = await s.admit();
    const abort = new AbortController();
    const waiting = s.admit(abort.signal);
    const after = s.admit();
    abort.abort();
    assert.equal(await waiting, undefined);
    assert.equal(s.stats.queued, 1);
    first!();
    const release = await after;
    assert.ok(release);
    release();
    assert.deepEqual(s.stats, { active: 0, queued: 0 });
    assert.equal(await s.admit(AbortSignal.abort()), undefined);
  });

  it('gives turns round-robin, so requests of any length interleave step by step', async () => {
    const s = new Scheduler(4);
    const order: string[] = [];
    const run = async (name: string, steps: number) => {
      for (let i = 0; i < steps; i++) await s.step(() => order.push(name));
    };
    await Promise.all([run('a', 4), run('b', 2), run('c', 3)]);
    assert.deepEqual(order.join(''), 'abcabcaca');
  });

  it('never runs two steps at once, even when a step awaits nothing', async () => {
    const s = new Scheduler(4);
    let inside = 0;
    let most = 0;
    const work = () => {
      inside++;
      most = Math.max(most, inside);
      inside--;
      return inside;
    };
    await Promise.all(Array.from({ length: 5 }, () => Promise.all([s.step(work), s.step(work)])));
    assert.equal(most, 1);
  });

  it('skips the work of a request aborted while it waits for its turn, and passes errors through', async () => {
    const s = new Scheduler(4);
    const abort = new AbortController();
    let ran = false;
    const first = s.step(() => abort.abort());
    const second = s.step(() => (ran = true), abort.signal);
    await first;
    assert.equal(await second, ABORTED);
    assert.equal(ran, false);
    await assert.rejects(s.step(() => {
      throw new Error('kernel failed');
    }), /kernel failed/);
    assert.equal(await s.step(() => 7), 7);
  });

  it('lets one request read its prompt at a time, oldest first, while others keep taking turns', async () => {
    const s = new Scheduler(4);
    const order: string[] = [];
    const request = async (name: string) => {
      const endPrompt = await s.beginPrompt();
      for (let i = 0; i < 2; i++) await s.step(() => order.push(`${name}-prefill`));
      endPrompt!();
      for (let i = 0; i < 2; i++) await s.step(() => order.push(`${name}-decode`));
    };
    await Promise.all([request('a'), request('b')]);
    // b starts reading its prompt only once a has its first token; a decodes meanwhile, turn by turn.
    assert.deepEqual(order, ['a-prefill', 'a-prefill', 'a-decode', 'b-prefill', 'a-decode', 'b-prefill', 'b-decode', 'b-decode']);
  });
});

describe('Slots', () => {
  it('rejects a size below one', () => {
    assert.throws(() => new Slots(0), /integer >= 1/);
  });
});
