// The feature and prefix caches on the tiny checkpoint: answers with the caches equal the answers without them (greedy,
// bit for bit: the same token ids), in multi-turn image and video chats and when a cached prompt diverges mid-way;
// hits, misses, entries and bytes are counted; the byte bounds evict; a changed setting misses.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ModelWorker } from '../src/api/model-worker.js';
import { VideoLLaMA3, type ChatOptions, type ChatResult } from '../src/api/videollama3.js';
import { FeatureCache, featureKey, type FeatureSettings } from '../src/engine/feature-cache.js';
import { KVCache } from '../src/engine/kv-cache.js';
import { MIN_BREAK_PIECE, PrefixCache, turnBreaks } from '../src/engine/prefix-cache.js';
import type { ContentPart, Message } from '../src/processing/conversation.js';
import { fixturesDir, FIXTURES_MISSING, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const greedy = { greedy: true, repetitionPenalty: 1, maxNewTokens: 12 } as const;
const media = (file: string) => join(fixtures!, 'media', file);
const image = (file: string): ContentPart => ({ type: 'image', image: media(file) });
const video = (file: string, fps = 1, maxFrames = 4): ContentPart => ({ type: 'video', video: { video_path: media(file), fps, max_frames: maxFrames } });
const text = (t: string): ContentPart => ({ type: 'text', text: t });

/** A chat of several user turns, each answered by `model`; returns every turn's result. */
async function converse(model: VideoLLaMA3, turns: ContentPart[][], options: ChatOptions = {}): Promise<ChatResult[]> {
  const history: Message[] = [];
  const results: ChatResult[] = [];
  for (const content of turns) {
    history.push({ role: 'user', content });
    const result = await model.chat(history, { ...greedy, addSystemPrompt: true, ...options }).result;
    history.push({ role: 'assistant', content: result.text });
    results.push(result);
  }
  return results;
}

function assertSameAnswers(cached: ChatResult[], plain: ChatResult[]): void {
  assert.equal(cached.length, plain.length);
  cached.forEach((r, i) => {
    assert.deepEqual(r.tokenIds, plain[i]!.tokenIds, `turn ${i + 1}`);
    assert.equal(r.usage.promptTokens, plain[i]!.usage.promptTokens, `turn ${i + 1}`);
  });
}

describe('feature and prefix caches', { skip: !fixtures && FIXTURES_MISSING }, () => {
  let plain: VideoLLaMA3;
  before(async () => {
    plain = await VideoLLaMA3.load(join(fixtures!, TINY_CHECKPOINT), { featureCacheBytes: 0, prefixCacheBytes: 0 });
  });
  const load = (options: Parameters<typeof VideoLLaMA3.load>[1] = {}) => VideoLLaMA3.load(join(fixtures!, TINY_CHECKPOINT), options);

  it('are on by default, and off at 0 bytes', async () => {
    const model = await load();
    assert.equal(model.cacheStats.features.maxBytes, 2 ** 30);
    assert.equal(model.cacheStats.prefix.maxBytes, 2 ** 31);
    assert.deepEqual(plain.cacheStats, {
      features: { hits: 0, misses: 0, entries: 0, bytes: 0, maxBytes: 0 },
      prefix: { hits: 0, misses: 0, entries: 0, bytes: 0, maxBytes: 0, reusedTokens: 0 },
    });
  });

  it('give a multi-turn image chat the answers it gets without them, prefilling only the new turn', async () => {
    const turns = [[image('cat.jpg'), text('What is in this image?')], [text('And what colour is it?')], [image('desert.jpg'), text('Compare the two images.')]];
    const model = await load();
    const cached = await converse(model, turns);
    assertSameAnswers(cached, await converse(plain, turns));
    assert.equal(cached[0]!.usage.cachedTokens, 0);
    // Turn 2 resumes at the end of turn 1's prompt: it reads turn 1's answer and its own message only. Turn 2 added
    // fewer than MIN_BREAK_PIECE positions, so its end is no chunk end: turn 3 resumes where turn 2 did.
    assert.ok(cached[1]!.usage.promptTokens - cached[0]!.usage.promptTokens < MIN_BREAK_PIECE);
    for (const n of [1, 2]) assert.equal(cached[n]!.usage.cachedTokens, cached[0]!.usage.promptTokens, `turn ${n + 1}`);
    const s = model.cacheStats;
    assert.equal(s.prefix.hits, 2);
    assert.equal(s.prefix.misses, 1);
    assert.equal(s.prefix.reusedTokens, 2 * cached[0]!.usage.promptTokens);
    // Each turn's entry extends the last one, which it replaces.
    assert.equal(s.prefix.entries, 1);
    assert.ok(s.prefix.bytes > 0);
    // cat.jpg was encoded in turn 1 and read from the prefix after; desert.jpg is new in turn 3.
    assert.deepEqual([s.features.hits, s.features.misses, s.features.entries], [0, 2, 2]);
    assert.equal(KVCache.liveBytes, 0, 'requests hold no KV cache once they end');
  });

  it('give a multi-turn video chat the answers it gets without them; the same video later is a feature hit', async () => {
    const turns = [[video('sample_demo_3.mp4'), text('Describe the video.')], [text('What happens at the end?')]];
    const model = await load();
    const cached = await converse(model, turns);
    assertSameAnswers(cached, await converse(plain, turns));
    assert.equal(cached[1]!.usage.cachedTokens, cached[0]!.usage.promptTokens);
    assert.deepEqual([model.cacheStats.features.hits, model.cacheStats.features.misses], [0, 1]);
    // A new conversation about the same clip shares the system prompt only: the video's features come from the cache.
    const other = [[video('sample_demo_3.mp4'), text('How many people are there?')]];
    assertSameAnswers(await converse(model, other, { addSystemPrompt: false }), await converse(plain, other, { addSystemPrompt: false }));
    assert.deepEqual([model.cacheStats.features.hits, model.cacheStats.features.misses], [1, 1]);
    // DiffFP off feeds other visual tokens from the same features: a feature hit, and the same answer as uncached.
    const all = { tokenCompression: false };
    assertSameAnswers(await converse(model, turns.slice(0, 1), all), await converse(plain, turns.slice(0, 1), all));
    assert.equal(model.cacheStats.features.hits, 2);
  });

  it('let a chat read back its history with each answer (cachePrompt), so that the next turn prefills only its new message', async () => {
    const model = await load();
    const long = { ...greedy, maxNewTokens: 80 };
    const turns = [[image('cat.jpg'), text('What is this?')], [text('Tell me more.')], [video('sample_demo_3.mp4'), text('And this video?')], [text('Why?')]];
    const history: Message[] = [];
    const read: number[] = [];
    for (const [n, content] of turns.entries()) {
      history.push({ role: 'user', content });
      const result = await model.chat(history, { ...long, addSystemPrompt: true }).result;
      // Without any cache, from scratch: the same answer, token for token.
      const expected = await plain.chat(history, { ...long, addSystemPrompt: true }).result;
      assert.deepEqual(result.tokenIds, expected.tokenIds, `turn ${n + 1}`);
      assert.ok(result.tokenIds.length >= MIN_BREAK_PIECE, 'answers long enough to end a chunk');
      const message = (await plain.prepare([{ role: 'user', content }], { addGenerationPrompt: true })).llmInputIds.length;
      if (n > 0) {
        // Everything up to the new message came from the cache: what was prefilled is exactly the new message.
        assert.equal(result.usage.cachedTokens, read.at(-1), `turn ${n + 1}`);
        assert.equal(result.usage.promptTokens - result.usage.cachedTokens, message, `turn ${n + 1} prefills its message and the generation prompt`);
      }
      history.push({ role: 'assistant', content: result.text });
      const back = await model.cachePrompt(history, { addSystemPrompt: true });
      assert.equal(back!.promptTokens, (await plain.prepare(history, { addSystemPrompt: true, addGenerationPrompt: false })).llmInputIds.length);
      // The read-back resumes where the turn's prompt ended, prefilling the answer only; after a message too short to
      // end a chunk of its own (the text-only ones), where the turn resumed, prefilling the message with the answer.
      assert.equal(back!.cachedTokens, n === 0 || message >= MIN_BREAK_PIECE ? result.usage.promptTokens : read.at(-1), `read-back ${n + 1}`);
      read.push(back!.promptTokens);
    }
    assert.equal(model.cacheStats.prefix.entries, 1);
    assert.equal(await plain.cachePrompt(history), undefined, 'nothing to do with the prefix cache off');
  });

  it('reuse a cached prompt that diverges mid-prompt up to the last break before the difference', async () => {
    const model = await load();
    // About 700 tokens of text: the first 512 positions are one prefill chunk.
    const long = Array.from({ length: 120 }, (_, i) => `item ${i} is ${(i * 7919) % 1000}`).join(', ');
    const ask = (ending: string): Message[] => [{ role: 'system', content: 'You answer briefly.' }, { role: 'user', content: `${long}. ${ending}` }];
    const first = await model.chat(ask('Which item is largest?'), greedy).result;
    assert.ok(first.usage.promptTokens > 600, `${first.usage.promptTokens} prompt tokens`);
    const second = await model.chat(ask('Which item is smallest?'), greedy).result;
    const expected = await plain.chat(ask('Which item is smallest?'), greedy).result;
    assert.deepEqual(second.tokenIds, expected.tokenIds);
    // The prompts differ near their ends, inside the user message, where no message break is: resumed at the last
    // multiple of the prefill chunk before the difference.
    const [a, b] = [(await plain.prepare(ask('Which item is largest?'))).llmInputIds, (await plain.prepare(ask('Which item is smallest?'))).llmInputIds];
    let shared = 0;
    while (a[shared] === b[shared]) shared++;
    assert.ok(shared > 512);
    assert.equal(second.usage.cachedTokens, Math.floor(shared / 512) * 512);
    // A different user message from its first word on: the shared system message is shorter than a chunk and ends
    // at no turn break, so nothing is reused (and that counts as a miss).
    const misses = model.cacheStats.prefix.misses;
    const other: Message[] = [{ role: 'system', content: 'You answer briefly.' }, { role: 'user', content: 'Hello there.' }];
    const third = await model.chat(other, greedy).result;
    assert.equal(third.usage.cachedTokens, 0);
    assert.equal(model.cacheStats.prefix.misses, misses + 1);
    assert.deepEqual(third.tokenIds, (await plain.chat(other, greedy).result).tokenIds);
    // The same prompt again: its last position must be prefilled for its logits, so it resumes at the chunk end
    // before it.
    const again = await model.chat(ask('Which item is smallest?'), greedy).result;
    assert.deepEqual(again.tokenIds, expected.tokenIds);
    assert.equal(again.usage.cachedTokens, Math.floor((again.usage.promptTokens - 1) / 512) * 512);
  });

  it('evict the least recently used entries beyond their byte bounds', async () => {
    const sizes = async (file: string) => {
      const probe = await load();
      await probe.chat([{ role: 'user', content: [image(file), text('What is this?')] }], greedy).result;
      return probe.cacheStats;
    };
    const [a, b] = [await sizes('cat.jpg'), await sizes('city1.jpg')];
    // Room for either entry of each cache, not for both.
    const room = (x: number, y: number) => Math.max(x, y) + Math.floor(Math.min(x, y) / 2);
    const model = await load({ featureCacheBytes: room(a.features.bytes, b.features.bytes), prefixCacheBytes: room(a.prefix.bytes, b.prefix.bytes) });
    const ask = (file: string) => model.chat([{ role: 'user', content: [image(file), text('What is this?')] }], greedy).result;
    await ask('cat.jpg');
    await ask('city1.jpg');
    const s = model.cacheStats;
    assert.equal(s.features.entries, 1);
    assert.ok(s.features.bytes <= s.features.maxBytes);
    assert.equal(s.prefix.entries, 1);
    assert.ok(s.prefix.bytes <= s.prefix.maxBytes);
    // cat.jpg was evicted from both: asked again, its features are encoded again.
    await ask('cat.jpg');
    assert.deepEqual([model.cacheStats.features.hits, model.cacheStats.features.misses], [0, 3]);
    // Bounds below one entry keep nothing.
    const tiny = await load({ featureCacheBytes: 1, prefixCacheBytes: 1 });
    await tiny.chat([{ role: 'user', content: [image('cat.jpg'), text('What is this?')] }], greedy).result;
    assert.deepEqual([tiny.cacheStats.features.entries, tiny.cacheStats.prefix.entries], [0, 0]);
  });

  it('miss when a setting that changes the features changes: fps, max frames, visual token budget', async () => {
    const model = await load({ prefixCacheBytes: 0 });
    const ask = (part: ContentPart, options: ChatOptions = {}) => model.chat([{ role: 'user', content: [part, text('Describe it.')] }], { ...greedy, maxNewTokens: 1, ...options }).result;
    await ask(video('sample_demo_3.mp4', 1, 4));
    await ask(video('sample_demo_3.mp4', 1, 4));
    assert.deepEqual([model.cacheStats.features.hits, model.cacheStats.features.misses], [1, 1]);
    await ask(video('sample_demo_3.mp4', 0.5, 4));
    await ask(video('sample_demo_3.mp4', 1, 3));
    await ask(image('cat.jpg'));
    await ask(image('cat.jpg'), { maxVisualTokens: 64 });
    assert.deepEqual([model.cacheStats.features.hits, model.cacheStats.features.misses], [1, 5]);
  });

  it('count a ModelWorker\'s caches on its thread', async () => {
    const worker = await ModelWorker.load(join(fixtures!, TINY_CHECKPOINT), { prefixCacheBytes: 123_456_789 });
    try {
      const history: Message[] = [{ role: 'user', content: [image('cat.jpg'), text('What is this?')] }];
      const first = await worker.chat(history, greedy).result;
      const second = await worker.chat([...history, { role: 'assistant', content: first.text }, { role: 'user', content: 'Why?' }], greedy).result;
      assert.equal(second.usage.cachedTokens, first.usage.promptTokens);
      const stats = await worker.stats();
      assert.deepEqual(stats.requests, { active: 0, queued: 0 });
      assert.equal(stats.caches.prefix.maxBytes, 123_456_789);
      assert.deepEqual([stats.caches.prefix.hits, stats.caches.prefix.misses], [1, 1]);
      assert.deepEqual([stats.caches.features.misses, stats.caches.features.entries], [1, 1]);
    } finally {
      await worker.close();
    }
  });

  it('refuse bounds that are not byte counts, from the option or its environment variable', async () => {
    await assert.rejects(load({ featureCacheBytes: -1 }), /featureCacheBytes must be an integer >= 0/);
    process.env.VL3_PREFIX_CACHE_BYTES = '1.5';
    try {
      await assert.rejects(load(), /prefixCacheBytes \(\$VL3_PREFIX_CACHE_BYTES\) must be an integer number of bytes >= 0, got/);
      process.env.VL3_PREFIX_CACHE_BYTES = '4096';
      assert.equal((await load()).cacheStats.prefix.maxBytes, 4096);
    } finally {
      delete process.env.VL3_PREFIX_CACHE_BYTES;
    }
  });
});

describe('cache keys', () => {
  const settings: FeatureSettings = { modality: 'image', grid: [1, 4, 4], mergeSize: 2, visionWeights: 'bf16', compute: 'exact', isa: 'avx2' };
  const pixels = Float32Array.from({ length: 16 * 588 }, (_, i) => Math.sin(i));

  it('key features by the pixels and every setting that changes them', () => {
    const base = featureKey(pixels, settings);
    assert.equal(featureKey(pixels.slice(), { ...settings }), base);
    const changed = pixels.slice();
    changed[1000]! += 1e-6;
    assert.notEqual(featureKey(changed, settings), base);
    for (const other of [{ visionWeights: 'int8' }, { compute: 'bf16' }, { isa: 'avx512' }, { mergeSize: 1 }, { grid: [1, 2, 8] as const }, { modality: 'video' as const }]) {
      assert.notEqual(featureKey(pixels, { ...settings, ...other }), base, JSON.stringify(other));
    }
  });

  it('break prompts after a turn start, when that leaves a long enough piece since the last chunk end', () => {
    const turn = [1, 2, 3]; // <|im_start|> assistant \n
    const user = [1, 4, 3]; // <|im_start|> user \n
    const filler = (n: number) => Array<number>(n).fill(9);
    // Turns start at 67; at 143 (76 after 67); and at 209 (66 after 143). The answers between are shorter than
    // MIN_BREAK_PIECE, so the user messages after them start no chunk.
    const ids = [...filler(64), ...turn, ...filler(40), ...user, ...filler(30), ...turn, ...filler(10), ...user, ...filler(50), ...turn, ...filler(5)];
    assert.equal(ids.length, 214);
    assert.deepEqual(turnBreaks(ids, turn, 256), [67, 143, 209]);
    // With chunks of 200, the turn start at 209 is too close to the chunk end at 200.
    assert.deepEqual(turnBreaks(ids, turn, 200), [67, 143]);
    // Two turn starts 33 positions apart with no message between: the second is too close to the first.
    assert.deepEqual(turnBreaks([...filler(67), ...turn, ...filler(30), ...turn], turn, 256), [70]);
    assert.deepEqual(turnBreaks(ids, [], 256), []);
  });

  it('break prompts where the message after an answer starts, under the same rule', () => {
    const turn = [1, 2, 3]; // <|im_start|> assistant \n
    const user = [1, 4, 3]; // <|im_start|> user \n
    const filler = (n: number) => Array<number>(n).fill(9);
    // A user message, then an answer of 80 (a break at 70 + 80), then a short user message (its turn start at 180 is
    // too close to 150), then an answer of 20 whose end is too close to 150 as well, then the next user message.
    const ids = [...filler(67), ...turn, ...filler(80), ...user, ...filler(24), ...turn, ...filler(20), ...user, ...filler(5)];
    assert.deepEqual(turnBreaks(ids, turn, 512), [70, 150]);
    // A prefix of the prompt agrees on every break before its end, the end being a chunk end anyway.
    assert.deepEqual(turnBreaks(ids.slice(0, 150), turn, 512), [70]);
    // Messages before the first answer end no chunk: a system or user message is not an answer.
    assert.deepEqual(turnBreaks([...user, ...filler(100), ...user, ...filler(5)], turn, 512), []);
  });

  it('count cache hits and misses, and keep nothing at 0 bytes', () => {
    const off = new FeatureCache(0);
    assert.equal(off.get('k'), undefined);
    assert.deepEqual(off.stats, { hits: 0, misses: 0, entries: 0, bytes: 0, maxBytes: 0 });
    const prefixes = new PrefixCache(0);
    assert.equal(prefixes.match([1, 2, 3], { limit: 2, chunk: 512, breaks: [1] }), undefined);
    assert.equal(prefixes.stats.entries, 0);
    assert.throws(() => new FeatureCache(-1), RangeError);
  });
});
