// Generation behaviour on the tiny checkpoint: stop ids, max_new_tokens, abort, streaming text, bounded memory.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { VideoLLaMA3 } from '../src/api/videollama3.js';
import { generateTokens, type GenerationResult } from '../src/engine/generate.js';
import { fixturesDir, FIXTURES_MISSING, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const question = [{ role: 'user' as const, content: 'What is the color of bananas?' }];
// The first greedy token of this prompt (case e_text_only with the system prompt).
const FIRST_GREEDY = 86665;

async function drain(tokens: AsyncGenerator<number, GenerationResult>): Promise<{ ids: number[]; result: GenerationResult }> {
  const ids: number[] = [];
  let next = await tokens.next();
  while (!next.done) {
    ids.push(next.value);
    next = await tokens.next();
  }
  return { ids, result: next.value };
}

describe('generation', { skip: !fixtures && FIXTURES_MISSING }, () => {
  let model: VideoLLaMA3;
  before(async () => {
    model = await VideoLLaMA3.load(join(fixtures!, TINY_CHECKPOINT));
  });

  const greedy = () => model.samplingFor({ greedy: true, repetitionPenalty: 1 });
  const prompt = async () => model.embed(await model.prepare(question, { addSystemPrompt: true }));

  it('stops on a stop id, reporting it, and at max_new_tokens otherwise', async () => {
    const stopped = await drain(generateTokens(model.llm, { promptEmbeds: await prompt(), maxNewTokens: 10, sampling: greedy(), stopTokenIds: [FIRST_GREEDY] }));
    assert.deepEqual(stopped.ids, [FIRST_GREEDY]);
    assert.equal(stopped.result.finishReason, 'stop');

    const capped = await drain(generateTokens(model.llm, { promptEmbeds: await prompt(), maxNewTokens: 3, sampling: greedy(), stopTokenIds: [] }));
    assert.equal(capped.ids.length, 3);
    assert.equal(capped.result.finishReason, 'length');
    assert.equal(capped.result.promptTokens, 45);

    const none = await drain(generateTokens(model.llm, { promptEmbeds: await prompt(), maxNewTokens: 0, sampling: greedy(), stopTokenIds: [] }));
    assert.deepEqual(none.ids, []);
  });

  it('stops when aborted and reports abort', async () => {
    const abort = new AbortController();
    const tokens = generateTokens(model.llm, { promptEmbeds: await prompt(), maxNewTokens: 50, sampling: greedy(), stopTokenIds: [], signal: abort.signal });
    const ids: number[] = [];
    let next = await tokens.next();
    while (!next.done) {
      ids.push(next.value);
      if (ids.length === 2) abort.abort();
      next = await tokens.next();
    }
    assert.equal(ids.length, 2);
    assert.equal(next.value.finishReason, 'abort');
  });

  it('streams text deltas that add up to the final answer, with usage and timings', async () => {
    const stream = model.chat(question, { greedy: true, maxNewTokens: 16, addSystemPrompt: true });
    let streamed = '';
    for await (const delta of stream) streamed += delta;
    const result = await stream.result;
    assert.equal(streamed, result.text);
    assert.equal(result.tokenIds.length, 16);
    assert.deepEqual(result.usage, { promptTokens: 45, cachedTokens: 0, visualTokens: 0, completionTokens: 16 });
    assert.ok(result.timings.prefillMs > 0 && result.timings.decodeMs > 0);
    assert.equal(result.text, model.tokenizer.decode(result.tokenIds, { skipSpecialTokens: true }).trim());
  });

  it('frees the request when the caller stops iterating early, and says so through result', async () => {
    const stream = model.chat(question, { greedy: true, maxNewTokens: 50 });
    for await (const _ of stream) break;
    await assert.rejects(stream.result, /closed before generation finished/);
  });

  it('runs when only the result is awaited, and samples reproducibly for a seed', async () => {
    const a = await model.chat(question, { maxNewTokens: 8, seed: 5 }).result;
    const b = await model.chat(question, { maxNewTokens: 8, seed: 5 }).result;
    assert.deepEqual(a.tokenIds, b.tokenIds);
    assert.equal(a.tokenIds.length, 8);
  });

  it('names the message part of an image it cannot read', async () => {
    const stream = model.chat([{ role: 'user', content: [{ type: 'text', text: 'hi' }, { type: 'image', image: '/nonexistent/x.png' }] }]);
    await assert.rejects(stream.result, /messages\[0\]\.content\[1\]: \/nonexistent\/x\.png: cannot read image: file not found/);
  });

  it('keeps scratch memory flat over a long generation', async () => {
    const run = async (n: number) => {
      await drain(generateTokens(model.llm, { promptEmbeds: await prompt(), maxNewTokens: n, sampling: greedy(), stopTokenIds: [] }));
      return model.llm.scratchBytes;
    };
    const after20 = await run(20);
    const after300 = await run(300);
    assert.equal(after300, after20, `scratch grew from ${after20} to ${after300} bytes`);
  });
});
