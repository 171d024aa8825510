// The library API on the tiny checkpoint: stop strings, cancellation that frees memory at once, fair sharing between
// concurrent requests, typed errors, and the same answers from a model running in a worker thread.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { after, before, describe, it } from 'node:test';
import { AbortError, InvalidRequestError } from '../src/api/errors.js';
import { ModelWorker } from '../src/api/model-worker.js';
import { VideoLLaMA3, type ChatResult } from '../src/api/videollama3.js';
import { KVCache } from '../src/engine/kv-cache.js';
import type { Message } from '../src/processing/conversation.js';
import { fixturesDir, FIXTURES_MISSING, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const ask = (text: string): Message[] => [{ role: 'user', content: text }];
const greedy = { greedy: true, repetitionPenalty: 1 } as const;

describe('VideoLLaMA3 chat', { skip: !fixtures && FIXTURES_MISSING }, () => {
  let model: VideoLLaMA3;
  before(async () => {
    model = await VideoLLaMA3.load(join(fixtures!, TINY_CHECKPOINT), { maxActiveRequests: 2 });
  });

  it('ends before a stop string, streaming nothing of it, with finishReason stop', async () => {
    const full = await model.chat(ask('Describe a cat.'), { ...greedy, maxNewTokens: 24 }).result;
    // A stop string taken from the middle of the unconstrained answer must cut it there.
    const cut = Math.floor(full.text.length / 2);
    const stop = full.text.slice(cut, cut + 3);
    const stream = model.chat(ask('Describe a cat.'), { ...greedy, maxNewTokens: 24, stop: [stop] });
    let streamed = '';
    for await (const delta of stream) streamed += delta;
    const result = await stream.result;
    const expected = full.text.slice(0, full.text.indexOf(stop));
    assert.equal(result.text, expected.trim());
    assert.equal(streamed, expected.trim());
    assert.equal(result.finishReason, 'stop');
    assert.ok(result.tokenIds.length < full.tokenIds.length);
    assert.equal(KVCache.liveBytes, 0);
  });

  it('frees the KV cache as soon as the signal aborts, and keeps the text so far', async () => {
    const abort = new AbortController();
    const stream = model.chat(ask('Count to one hundred.'), { ...greedy, maxNewTokens: 500, signal: abort.signal });
    let deltas = 0;
    let liveWhileRunning = 0;
    for await (const _ of stream) {
      liveWhileRunning = KVCache.liveBytes;
      if (++deltas === 3) abort.abort();
    }
    const result = await stream.result;
    assert.ok(liveWhileRunning > 0);
    assert.equal(KVCache.liveBytes, 0);
    assert.equal(result.finishReason, 'abort');
    assert.ok(result.tokenIds.length >= 3 && result.tokenIds.length < 10, `${result.tokenIds.length} tokens`);
  });

  it('rejects with AbortError when aborted before the first token, also while queued behind other requests', async () => {
    await assert.rejects(model.chat(ask('hi'), { signal: AbortSignal.abort() }).result, AbortError);
    // Two requests fill the model (maxActiveRequests 2); the third waits and is aborted while waiting.
    const busy = [1, 2].map(() => model.chat(ask('Tell me a long story.'), { ...greedy, maxNewTokens: 40 }));
    const abort = new AbortController();
    const queued = model.chat(ask('hi'), { ...greedy, signal: abort.signal });
    assert.deepEqual(model.requests, { active: 2, queued: 1 });
    abort.abort();
    await assert.rejects(queued.result, AbortError);
    assert.equal(model.requests.queued, 0);
    await Promise.all(busy.map((s) => s.result));
    assert.deepEqual(model.requests, { active: 0, queued: 0 });
  });

  it('gives concurrent requests the answers they get alone, interleaving their tokens', async () => {
    const questions = ['What is a cat?', 'Name three colours.', 'Why is the sky blue?', 'Say hello.'];
    const alone: ChatResult[] = [];
    for (const q of questions) alone.push(await model.chat(ask(q), { ...greedy, maxNewTokens: 12 }).result);
    const arrivals: number[] = [];
    const together = await Promise.all(
      questions.map(async (q, i) => {
        const stream = model.chat(ask(q), { ...greedy, maxNewTokens: 12 });
        for await (const _ of stream) arrivals.push(i);
        return stream.result;
      }),
    );
    assert.deepEqual(together.map((r) => r.tokenIds), alone.map((r) => r.tokenIds));
    // Requests 0 and 1 run together (maxActiveRequests 2): their tokens alternate instead of one finishing first.
    const firstTwo = arrivals.filter((i) => i < 2).slice(0, 6);
    assert.ok(firstTwo.includes(0) && firstTwo.includes(1), `arrivals ${arrivals.join(',')}`);
    assert.equal(KVCache.liveBytes, 0);
  });

  it('reports bad input as InvalidRequestError naming the problem', async () => {
    const missing = model.chat([{ role: 'user', content: [{ type: 'image', image: '/nonexistent/x.png' }, 'hi'] }] as Message[]).result;
    await assert.rejects(missing, (e: Error) => e instanceof InvalidRequestError && /\/nonexistent\/x\.png/.test(e.message));
    await assert.rejects(model.chat(ask('hi'), { topP: 2 }).result, (e: Error) => e instanceof InvalidRequestError && /top_p/.test(e.message));
    await assert.rejects(model.chat(ask('hi'), { maxNewTokens: -1 }).result, InvalidRequestError);
    await assert.rejects(model.chat(ask('hi'), { stop: [''] }).result, /stop\[0\]/);
    await assert.rejects(model.chat([{ role: 'robot', content: 'hi' }] as unknown as Message[]).result, InvalidRequestError);
  });

  it('treats temperature 0 as greedy', async () => {
    const a = await model.chat(ask('What is a dog?'), { temperature: 0, repetitionPenalty: 1, maxNewTokens: 8 }).result;
    const b = await model.chat(ask('What is a dog?'), { ...greedy, maxNewTokens: 8 }).result;
    assert.deepEqual(a.tokenIds, b.tokenIds);
  });
});

describe('VideoLLaMA3 close', { skip: !fixtures && FIXTURES_MISSING }, () => {
  it('aborts running requests and refuses new ones', async () => {
    const model = await VideoLLaMA3.load(join(fixtures!, TINY_CHECKPOINT));
    const running = model.chat(ask('Count to one hundred.'), { ...greedy, maxNewTokens: 500 });
    for await (const _ of running) break;
    const other = model.chat(ask('Count to one hundred.'), { ...greedy, maxNewTokens: 500 });
    await model.close();
    const result = await other.result.catch((e: Error) => e);
    assert.ok(result instanceof AbortError || (!(result instanceof Error) && result.finishReason === 'abort'), String(result));
    await assert.rejects(model.chat(ask('hi')).result, /the model was closed/);
    assert.equal(KVCache.liveBytes, 0);
  });
});

describe('ModelWorker', { skip: !fixtures && FIXTURES_MISSING }, () => {
  let worker: ModelWorker;
  let local: VideoLLaMA3;
  before(async () => {
    worker = await ModelWorker.load(join(fixtures!, TINY_CHECKPOINT));
    local = await VideoLLaMA3.load(join(fixtures!, TINY_CHECKPOINT));
  });
  after(() => worker.close());

  it('streams the same answer as the model on this thread, with progress events', async () => {
    const image = join(fixtures!, 'media', 'cat.jpg');
    const messages: Message[] = [{ role: 'user', content: [{ type: 'image', image }, { type: 'text', text: 'What is this?' }] }];
    const expected = await local.chat(messages, { ...greedy, maxNewTokens: 10 }).result;
    const stages = new Set<string>();
    const stream = worker.chat(messages, { ...greedy, maxNewTokens: 10, onProgress: (e) => stages.add(e.stage) });
    let streamed = '';
    for await (const delta of stream) streamed += delta;
    const result = await stream.result;
    assert.deepEqual(result.tokenIds, expected.tokenIds);
    assert.equal(streamed, expected.text);
    assert.deepEqual(result.usage, expected.usage);
    assert.ok(stages.has('encode') && stages.has('prefill'), [...stages].join());
  });

  it('keeps the caller\'s event loop free while the worker computes', async () => {
    // Event-loop utilisation of this thread: near 1 while it computes itself, low while a worker does.
    const busy = async (chatModel: VideoLLaMA3 | ModelWorker) => {
      const start = performance.eventLoopUtilization();
      await chatModel.chat(ask('Write a poem.'), { ...greedy, maxNewTokens: 200 }).result;
      return performance.eventLoopUtilization(start).utilization;
    };
    const onThread = await busy(local);
    const onWorker = await busy(worker);
    assert.ok(onWorker < onThread / 2, `utilisation ${onWorker.toFixed(2)} with the worker, ${onThread.toFixed(2)} without`);
  });

  it('passes aborts and typed errors across the thread boundary', async () => {
    const abort = new AbortController();
    const stream = worker.chat(ask('Count to one hundred.'), { ...greedy, maxNewTokens: 500, signal: abort.signal });
    let n = 0;
    for await (const _ of stream) if (++n === 2) abort.abort();
    assert.equal((await stream.result).finishReason, 'abort');
    await assert.rejects(worker.chat(ask('hi'), { topK: -1 }).result, InvalidRequestError);
    await assert.rejects(worker.chat(ask('hi'), { signal: AbortSignal.abort() }).result, AbortError);
    const early = worker.chat(ask('Count to one hundred.'), { ...greedy, maxNewTokens: 500 });
    for await (const _ of early) break;
    await assert.rejects(early.result, /closed before generation finished/);
    assert.equal((await worker.chat(ask('hi'), { ...greedy, maxNewTokens: 2 }).result).tokenIds.length, 2);
  });
});
