// Tokenizer.encodePrompt and escapeSpecialTokens: the ids of encode() inline and on the worker, user text kept plain
// inside the chat template, the token limit, a free event loop, cancellation, close() and a process that can exit.
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { Rng } from '../src/engine/rng.js';
import { renderChatTemplate } from '../src/processing/chat-template.js';
import type { Message } from '../src/processing/conversation.js';
import { PromptTooLongError, SPECIAL_TOKEN_ESCAPE as ESC, Tokenizer } from '../src/processing/tokenizer.js';
import { FIXTURES_MISSING, fixturesDir, readJson, repoRoot, TINY_CHECKPOINT } from './fixtures.js';
import { ADDED, ADDED_PATTERN, FRAGMENTS, randomText, repositoryText } from './text-samples.js';

const fixtures = fixturesDir();
const skip = fixtures ? false : FIXTURES_MISSING;
const checkpoint = fixtures ? join(fixtures, TINY_CHECKPOINT) : '';

describe('Tokenizer.encodePrompt', { skip }, () => {
  let tokenizer: Tokenizer;
  before(async () => {
    tokenizer = await Tokenizer.load(checkpoint);
  });
  after(() => tokenizer.close());

  it('gives the ids of encode() for golden strings, short random texts (inline) and long ones (worker)', async () => {
    const { cases } = readJson<{ cases: { name: string; text: string; ids: number[] }[] }>(join(fixtures!, 'tokenizer', 'golden_tokenization.json'));
    for (const c of cases) assert.deepEqual(await tokenizer.encodePrompt(c.text), c.ids, c.name);
    const rng = new Rng(20250602);
    for (let i = 0; i < 200; i++) {
      const text = randomText(rng, 1 + Math.floor(rng.next() * 120));
      assert.deepEqual(await tokenizer.encodePrompt(text), tokenizer.encode(text), JSON.stringify(text));
    }
    for (const text of [randomText(rng, 12_000), repositoryText(500_000), `<|im_start|>user\n${'<image>'.repeat(16384)}\nWhat is it?`]) {
      assert.deepEqual(await tokenizer.encodePrompt(text), tokenizer.encode(text));
    }
    assert.equal(tokenizer.maxTokenBytes, 128);
  });

  it('keeps escaped user text plain inside the chat template: only the template makes control tokens', async () => {
    const json = readJson<Record<string, unknown>>(join(checkpoint, 'tokenizer.json'));
    const reference = new HfTokenizer({ ...json, added_tokens: [] }, readJson<Record<string, unknown>>(join(checkpoint, 'tokenizer_config.json')));
    const plain = (text: string) => (text.length === 0 ? [] : reference.encode(text, { add_special_tokens: false }).ids);
    const render = (contents: string[]) => {
      const messages: Message[] = contents.map((content, i) => ({ role: i % 2 === 0 ? 'user' : 'assistant', content }));
      return renderChatTemplate(tokenizer.chatTemplate, messages, { addSystemPrompt: true, addGenerationPrompt: true });
    };
    const rng = new Rng(13);
    const fragments = [...FRAGMENTS, ESC, `${ESC}<`, `${ESC}${ESC}`, `${ESC}\u{10FF00}`, '<', '<image><image>', '<|im_end|>\n<|im_start|>system\n'];
    for (let i = 0; i < 60; i++) {
      const contents = Array.from({ length: 1 + (i % 4) }, (_, j) => randomText(rng, i === 59 && j === 0 ? 15_000 : 30, fragments));
      // Expected: the template rendered around placeholders, split at its own added tokens, with the user texts put
      // back into the plain text between them.
      const placeholders = contents.map((_, j) => `\u0000${j}\u0000`);
      const expected: number[] = [];
      for (const part of render(placeholders).split(new RegExp(`(${ADDED_PATTERN.source})`))) {
        if (ADDED.includes(part)) expected.push(tokenizer.tokenId(part));
        else expected.push(...plain(placeholders.reduce((text, p, j) => text.replace(p, () => contents[j]), part)));
      }
      const escaped = render(contents.map((c) => tokenizer.escapeSpecialTokens(c)));
      assert.deepEqual(await tokenizer.encodePrompt(escaped), expected);
      // Typed <image>s are gone from the text, so counting placeholders (expandImageTokens) sees only the template's.
      assert.equal(escaped.split('<image>').length, render(contents.map(() => 'x')).split('<image>').length);
    }
    assert.equal(tokenizer.escapeSpecialTokens('What is <b>this</b>?'), 'What is <b>this</b>?');
  });

  it('rejects past maxTokens (not counting countExcept ids), bad options and an aborted signal', async () => {
    const image = tokenizer.imageTokenId;
    for (const text of [`Look: ${'<image>'.repeat(300)}`, `<image>${repositoryText(30_000)}`]) {
      const ids = tokenizer.encode(text);
      const counted = ids.filter((id) => id !== image).length;
      assert.deepEqual(await tokenizer.encodePrompt(text, { maxTokens: counted, countExcept: image }), ids);
      await assert.rejects(tokenizer.encodePrompt(text, { maxTokens: counted - 1, countExcept: image }), (e: unknown) => {
        return e instanceof PromptTooLongError && e.limit === counted - 1 && e.message === `the prompt has more than ${counted - 1} tokens`;
      });
    }
    await assert.rejects(tokenizer.encodePrompt('x', { maxTokens: -1 }), RangeError);
    await assert.rejects(tokenizer.encodePrompt('x', { maxTokens: 1.5 }), RangeError);
    await assert.rejects(tokenizer.encodePrompt('x', { countExcept: Number.NaN }), RangeError);
    const reason = new Error('gone');
    await assert.rejects(tokenizer.encodePrompt('x', { signal: AbortSignal.abort(reason) }), (e) => e === reason);
  });

  it('stops early: 3 MB of text passes 32768 tokens in a small fraction of the time of encoding it whole', async () => {
    const text = repositoryText(3_000_000);
    await tokenizer.encodePrompt(text.slice(0, 20_000)); // starts the worker
    let start = performance.now();
    tokenizer.encode(text);
    const whole = performance.now() - start;
    start = performance.now();
    await assert.rejects(tokenizer.encodePrompt(text, { maxTokens: 32768 }), PromptTooLongError);
    const bounded = performance.now() - start;
    assert.ok(bounded < whole / 5, `bounded ${bounded.toFixed(0)} ms, whole ${whole.toFixed(0)} ms`);
  });

  it('keeps the event loop running during 2 MB of one letter, and an abort frees the worker at once', async () => {
    const ticks: number[] = [];
    const timer = setInterval(() => ticks.push(performance.now()), 5);
    const abort = new AbortController();
    const pending = tokenizer.encodePrompt('a'.repeat(2 << 20), { signal: abort.signal });
    let settled = false;
    const done = () => (settled = true);
    pending.then(done, done);
    await sleep(1000);
    clearInterval(timer);
    assert.equal(settled, false, 'a 2 MB pre-token takes seconds');
    const gaps = ticks.slice(1).map((t, i) => t - ticks[i]);
    assert.ok(ticks.length > 50 && Math.max(...gaps) < 150, `${ticks.length} ticks, longest gap ${Math.max(...gaps).toFixed(0)} ms`);

    const reason = new Error('client went away');
    const aborted = performance.now();
    abort.abort(reason);
    await assert.rejects(pending, (e) => e === reason);
    assert.ok(performance.now() - aborted < 50);
    // The piece cannot be interrupted, so the worker is replaced: the next prompt does not wait for it.
    const text = repositoryText(20_000);
    const next = performance.now();
    assert.deepEqual(await tokenizer.encodePrompt(text), tokenizer.encode(text));
    assert.ok(performance.now() - next < 6000, `the next prompt took ${(performance.now() - next).toFixed(0)} ms`);
  });

  it('close() rejects the prompts in progress and later ones, and can be repeated', async () => {
    const closing = await Tokenizer.load(checkpoint);
    const running = closing.encodePrompt(repositoryText(3_000_000));
    await sleep(50);
    closing.close();
    await assert.rejects(running, /the tokenizer was closed/);
    await assert.rejects(closing.encodePrompt('short'), /the tokenizer is closed/);
    closing.close();
    assert.deepEqual(closing.encode('still encodes'), tokenizer.encode('still encodes'));
  });
});

describe('Tokenizer.encodePrompt in a process', { skip }, () => {
  /** Runs an ES module in a new node process. */
  function runModule(source: string) {
    const started = performance.now();
    const result = spawnSync(process.execPath, ['--input-type=module', '-e', source], { encoding: 'utf8', timeout: 60_000 });
    return { ...result, seconds: (performance.now() - started) / 1000 };
  }
  const importTokenizer = () => `import { Tokenizer } from ${JSON.stringify(pathToFileURL(join(repoRoot(), 'dist', 'src', 'processing', 'tokenizer.js')).href)};`;

  it('waits for a prompt on the worker, and exits once it is done without close()', () => {
    const result = runModule(`${importTokenizer()}
      const tokenizer = await Tokenizer.load(${JSON.stringify(checkpoint)});
      const text = 'A word. '.repeat(5000);
      const ids = await tokenizer.encodePrompt(text);
      console.log(ids.length, JSON.stringify(ids) === JSON.stringify(tokenizer.encode(text)));`);
    assert.equal(result.signal, null, `killed after ${result.seconds.toFixed(1)} s: the worker kept the process alive`);
    assert.equal(result.status, 0, result.stderr);
    assert.equal(result.stdout.trim(), '15001 true');
  });

  it('exits while a cancelled prompt still holds the worker', () => {
    const result = runModule(`${importTokenizer()}
      const tokenizer = await Tokenizer.load(${JSON.stringify(checkpoint)});
      const pending = tokenizer.encodePrompt(' '.repeat(2 << 20), { signal: AbortSignal.timeout(1500) });
      await pending.catch((e) => console.log(e.name));`);
    assert.equal(result.signal, null, `killed after ${result.seconds.toFixed(1)} s`);
    assert.equal(result.status, 0, result.stderr);
    assert.equal(result.stdout.trim(), 'TimeoutError');
    assert.ok(result.seconds < 15, `${result.seconds.toFixed(1)} s`);
  });
});
