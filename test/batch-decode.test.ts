// Batched decoding on the tiny checkpoint: requests decoding at the same time advance as one batch per step, and
// every answer equals the answer the request gets alone (greedy, and sampled with its own seed, penalty and stop
// string), with 1, 2, 4 and 7 concurrent requests of different prompt and answer lengths, requests joining and
// leaving the batch as they start and end, and one aborted in the middle.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { VideoLLaMA3, type ChatOptions, type ChatResult } from '../src/api/videollama3.js';
import { DecodeBatcher } from '../src/engine/decode-batch.js';
import { generateTokens } from '../src/engine/generate.js';
import { KVCache } from '../src/engine/kv-cache.js';
import { Scheduler } from '../src/engine/scheduler.js';
import type { Message } from '../src/processing/conversation.js';
import { fixturesDir, FIXTURES_MISSING, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const greedy = { greedy: true, repetitionPenalty: 1 } as const;

interface Case {
  messages: Message[];
  options: ChatOptions;
}

const text = (t: string): Message[] => [{ role: 'user', content: t }];

describe('batched decoding', { skip: !fixtures && FIXTURES_MISSING }, () => {
  let model: VideoLLaMA3;
  let cases: Case[];
  const alone: ChatResult[] = [];
  before(async () => {
    model = await VideoLLaMA3.load(join(fixtures!, TINY_CHECKPOINT), { maxActiveRequests: 8 });
    const image = join(fixtures!, 'media', 'cat.jpg');
    cases = [
      { messages: text('Describe a cat.'), options: { ...greedy, maxNewTokens: 23 } },
      { messages: text('Write a long story about a dog who learns to fly over the city at night.'), options: { ...greedy, maxNewTokens: 48 } },
      { messages: text('hi'), options: { ...greedy, maxNewTokens: 9 } },
      { messages: [{ role: 'user', content: [{ type: 'image', image }, { type: 'text', text: 'What is in this picture, and why?' }] }], options: { ...greedy, maxNewTokens: 40 } },
      { messages: text('Count to ten.'), options: { temperature: 0.9, topP: 0.95, seed: 7, repetitionPenalty: 1.3, maxNewTokens: 31 } },
      { messages: text('Name three colours.'), options: { temperature: 1.2, topK: 20, seed: 11, maxNewTokens: 17 } },
      { messages: text('Why is the sky blue?'), options: { ...greedy, maxNewTokens: 5 } },
    ];
    for (const c of cases) alone.push(await model.chat(c.messages, c.options).result);
    // A stop string cut from the middle of one sampled answer, so that it ends early in the batch as it does alone.
    const sampled = alone[4]!.text;
    cases[4]!.options.stop = [sampled.slice(Math.floor(sampled.length / 2), Math.floor(sampled.length / 2) + 2)];
    alone[4] = await model.chat(cases[4]!.messages, cases[4]!.options).result;
    assert.equal(alone[4].finishReason, 'stop');
  });
  after(() => model?.close());

  for (const n of [1, 2, 4, 7]) {
    it(`${n} concurrent request(s) answer as they do alone`, async () => {
      const before = model.decoding;
      const results = await Promise.all(cases.slice(0, n).map((c) => model.chat(c.messages, c.options).result));
      results.forEach((r, i) => {
        assert.deepEqual(r.tokenIds, alone[i]!.tokenIds, `request ${i}`);
        assert.equal(r.text, alone[i]!.text);
        assert.equal(r.finishReason, alone[i]!.finishReason);
      });
      const tokens = model.decoding.tokens - before.tokens, batches = model.decoding.batches - before.batches;
      assert.equal(tokens, results.reduce((a, r) => a + r.tokenIds.length - 1, 0), 'one decode step per token after the first');
      // How many steps are shared depends on when each request's media and tokens are ready (worker threads): the
      // engine test below counts them where timing cannot vary.
      if (n === 1) assert.equal(batches, tokens);
      assert.equal(KVCache.liveBytes, 0);
    });
  }

  it('an abort in the middle leaves the others as they are alone', async () => {
    const abort = new AbortController();
    const streams = cases.slice(0, 4).map((c, i) => model.chat(c.messages, { ...c.options, signal: i === 3 ? abort.signal : undefined }));
    let seen = 0;
    for await (const _ of streams[3]!) if (++seen === 4) abort.abort();
    const results = await Promise.all(streams.map((s) => s.result));
    results.slice(0, 3).forEach((r, i) => assert.deepEqual(r.tokenIds, alone[i]!.tokenIds, `request ${i}`));
    assert.equal(results[3]!.finishReason, 'abort');
    assert.deepEqual(results[3]!.tokenIds, alone[3]!.tokenIds.slice(0, results[3]!.tokenIds.length));
    assert.ok(results[3]!.tokenIds.length < alone[3]!.tokenIds.length);
    assert.equal(KVCache.liveBytes, 0);
  });

  it('shares one forward pass per step between the sequences decoding at the same time (engine)', async () => {
    const scheduler = new Scheduler(8);
    const decoder = new DecodeBatcher(model.llm, (work) => scheduler.step(work));
    const lengths = [12, 30, 7, 21];
    const prompts = await Promise.all(lengths.map((_, i) => model.prepare(cases[i % 3]!.messages, {})));
    const sampling = model.samplingFor(greedy);
    const run = async (i: number) => {
      const tokens = generateTokens(model.llm, {
        promptEmbeds: model.embed(prompts[i]!),
        maxNewTokens: lengths[i]!,
        sampling,
        stopTokenIds: [],
        step: (work) => scheduler.step(work),
        decoder,
      });
      const ids: number[] = [];
      for (let next = await tokens.next(); !next.done; next = await tokens.next()) ids.push(next.value);
      return ids;
    };
    const ids = await Promise.all(lengths.map((_, i) => run(i)));
    assert.deepEqual(ids.map((a) => a.length), lengths);
    // Every token after a sequence's first is one decode; the four prompts are read in the first turns, so from then
    // on one pass serves every sequence still running: as many passes as the longest answer needs, plus at most one
    // per sequence for a turn taken while later prompts were still being read.
    assert.equal(decoder.tokens, lengths.reduce((a, n) => a + n - 1, 0));
    assert.ok(decoder.batches <= Math.max(...lengths) - 1 + lengths.length, `${decoder.batches} passes`);
    assert.equal(KVCache.liveBytes, 0);
  });
});
