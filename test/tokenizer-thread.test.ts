// TokenizerThread, the worker that encodes long prompts: order, cancellation (by flag, or by replacing a worker stuck
// in a long piece), the token limit, load failures and close().
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Rng } from '../src/engine/rng.js';
import { PromptEncoder, PromptTooLongError, type EncoderSummary } from '../src/processing/prompt-encoder.js';
import { TokenizerThread, type TokenizerWorkerData } from '../src/processing/tokenizer-thread.js';
import { FIXTURES_MISSING, fixturesDir, readJson, TINY_CHECKPOINT } from './fixtures.js';
import { randomText, repositoryText } from './text-samples.js';

const fixtures = fixturesDir();
const skip = fixtures ? false : FIXTURES_MISSING;
const checkpoint = fixtures ? join(fixtures, TINY_CHECKPOINT) : '';

describe('TokenizerThread', { skip }, () => {
  let encoder: PromptEncoder;
  let data: TokenizerWorkerData;
  let thread: TokenizerThread;

  before(() => {
    const config = readJson<Record<string, unknown>>(join(checkpoint, 'tokenizer_config.json'));
    encoder = PromptEncoder.fromJson(readJson<Record<string, unknown>>(join(checkpoint, 'tokenizer.json')), config);
    data = { tokenizerFile: join(checkpoint, 'tokenizer.json'), config, expected: encoder.summary };
    thread = new TokenizerThread(data);
  });
  after(() => thread.close());

  it('serves requests first come first served, with the ids of the encoder; a queued one can be aborted alone', async () => {
    const texts = [repositoryText(200_000), randomText(new Rng(5), 10_000), repositoryText(30_000).toUpperCase()];
    const abort = new AbortController();
    const order: number[] = [];
    const requests = texts.map((text, i) =>
      thread.encode(text, {}, i === 1 ? abort.signal : undefined).then((ids) => {
        order.push(i);
        return ids;
      }),
    );
    abort.abort();
    await assert.rejects(requests[1], { name: 'AbortError' });
    assert.deepEqual(await requests[0], encoder.encode(texts[0]));
    assert.deepEqual(await requests[2], encoder.encode(texts[2]));
    assert.deepEqual(order, [0, 2]);
  });

  it('rejects with PromptTooLongError past maxTokens', async () => {
    const text = repositoryText(100_000);
    const count = encoder.encode(text).length;
    assert.equal((await thread.encode(text, { maxTokens: count })).length, count);
    await assert.rejects(thread.encode(text, { maxTokens: count - 1 }), (e: unknown) => e instanceof PromptTooLongError && e.limit === count - 1);
  });

  it('stops ordinary text at the next piece when cancelled, keeping its worker', async () => {
    const text = repositoryText(3_000_000);
    await thread.encode('warm up '.repeat(2000), {});
    const starts = thread.workerStarts;
    const abort = new AbortController();
    const pending = thread.encode(text, {}, abort.signal);
    await sleep(200);
    const reason = new Error('cancelled');
    abort.abort(reason);
    await assert.rejects(pending, (e) => e === reason);
    const next = performance.now();
    await thread.encode(text.slice(0, 10_000), {});
    assert.equal(thread.workerStarts, starts, 'the worker stopped by itself');
    assert.ok(performance.now() - next < 1000);
  });

  it('replaces a worker held by a piece it cannot interrupt (2 MB of spaces is one pre-token)', async () => {
    await thread.encode('warm up '.repeat(2000), {});
    const starts = thread.workerStarts;
    const abort = new AbortController();
    const pending = thread.encode(' '.repeat(2 << 20), {}, abort.signal);
    await sleep(500);
    abort.abort();
    await assert.rejects(pending, { name: 'AbortError' });
    const text = repositoryText(20_000);
    assert.deepEqual(await thread.encode(text, {}), encoder.encode(text));
    assert.equal(thread.workerStarts, starts + 1);
  });

  it('fails a request whose worker cannot load, and starts a new worker for the next', async () => {
    const broken = new TokenizerThread({ ...data, tokenizerFile: join(checkpoint, 'no-such-tokenizer.json') });
    await assert.rejects(broken.encode('x', {}), /the tokenizer worker failed: .*no-such-tokenizer.json/);
    await assert.rejects(broken.encode('x', {}), /no-such-tokenizer.json/);
    assert.equal(broken.workerStarts, 2);
    broken.close();
  });

  it('refuses to serve with a tokenizer.json other than the one the caller loaded', async () => {
    const expected: EncoderSummary = { ...encoder.summary, maxTokenBytes: 64 };
    const stale = new TokenizerThread({ ...data, expected });
    await assert.rejects(stale.encode('x', {}), /tokenizer.json has changed since the tokenizer was loaded/);
    stale.close();
  });

  it('close() rejects running and queued requests and refuses later ones; it can be repeated', async () => {
    const closing = new TokenizerThread(data);
    const running = closing.encode(repositoryText(3_000_000), {});
    const queued = closing.encode('queued', {});
    await sleep(50);
    closing.close();
    await assert.rejects(running, /the tokenizer was closed/);
    await assert.rejects(queued, /the tokenizer was closed/);
    await assert.rejects(closing.encode('later', {}), /the tokenizer is closed/);
    closing.close();
  });
});
