// The built-in chat page, end to end: the real server with the tiny random checkpoint, driven through Debian's
// Chromium (or VL3_CHROMIUM) by playwright-core. Missing Chromium skips these tests, except in CI, where it fails.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type Page, type Request } from 'playwright-core';
import { VideoLLaMA3 } from '../src/api/videollama3.js';
import { startServer } from '../src/server/server.js';
import { FIXTURES_MISSING, fixturesDir, repoRoot, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const chromiumPath = process.env.VL3_CHROMIUM || '/usr/bin/chromium';
const hasChromium = existsSync(chromiumPath);
if (!hasChromium && process.env.CI) {
  throw new Error(`Chromium not found at ${chromiumPath} (install Debian's chromium or set VL3_CHROMIUM; required when CI is set)`);
}
const NO_CHROMIUM = `Chromium not found at ${chromiumPath} (apt-get install chromium, or set VL3_CHROMIUM); skipped`;

const MODEL_ID = 'videollama3-tiny-random';
const SCREENSHOT = join(repoRoot(), 'test-output', 'web-chat.png');

/** Request bodies and log lines as they came, checked field by field. */
type Json = any;

/** The statistics shown under the last answer, by key, as the numbers behind the text. */
async function lastStats(page: Page): Promise<Record<string, number>> {
  const answer = page.getByRole('article', { name: 'Assistant' }).last();
  const dl = answer.getByRole('definition');
  const out: Record<string, number> = {};
  for (const dd of await dl.all()) {
    const key = await dd.getAttribute('data-stat');
    const value = await dd.getAttribute('data-value');
    if (key && value !== null) out[key] = Number(value);
  }
  return out;
}

/** The concatenated deltas and the usage chunk of a finished server-sent event stream. */
function parseSse(body: string): { text: string; usage?: Json; done: boolean; chunks: number } {
  let text = '';
  let usage: Json;
  let done = false;
  let chunks = 0;
  for (const line of body.split('\n')) {
    if (!line.startsWith('data: ')) continue;
    const data = line.slice(6);
    if (data === '[DONE]') {
      done = true;
      continue;
    }
    const chunk = JSON.parse(data);
    chunks++;
    text += chunk.choices?.[0]?.delta?.content ?? '';
    if (chunk.usage) usage = chunk.usage;
  }
  return { text, usage, done, chunks };
}

/** Width and height from a PNG's IHDR, after checking the signature. */
function pngSize(png: Buffer): { width: number; height: number } {
  assert.ok(png.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])), 'PNG signature');
  assert.equal(png.toString('latin1', 12, 16), 'IHDR');
  return { width: png.readUInt32BE(16), height: png.readUInt32BE(20) };
}

describe('the web chat page', { skip: (!fixtures && FIXTURES_MISSING) || (!hasChromium && NO_CHROMIUM) }, () => {
  let model: VideoLLaMA3;
  let server: Awaited<ReturnType<typeof startServer>>;
  let browser: Browser;
  let page: Page;
  let scratch: string;
  /** Bodies of the page's chat requests, in order. */
  const chatRequests: Json[] = [];
  const otherHosts: string[] = [];
  const pageErrors: string[] = [];
  /** The server's request log, one object per finished request. */
  const serverLog: Json[] = [];

  const send = async (question: string) => {
    const input = page.getByRole('textbox', { name: 'Message', exact: true });
    await input.fill(question);
    await input.press('Enter');
  };
  const answers = () => page.getByRole('article', { name: 'Assistant' });
  const answerText = async (n: number) => (await answers().nth(n).locator('.answer').textContent()) ?? '';
  /** The next chat response; a test that fails before awaiting it must not leave an unhandled rejection behind. */
  const nextChatResponse = () => {
    const response = page.waitForResponse((r) => r.url().endsWith('/v1/chat/completions'));
    response.catch(() => {});
    return response;
  };
  /** Waits until `n` answers exist and the last one is no longer streaming. */
  const settled = async (n: number) => {
    await answers().nth(n - 1).waitFor();
    await page.waitForFunction(
      (count) => {
        const all = document.querySelectorAll('article[aria-label="Assistant"]');
        return all.length === count && all[count - 1]!.getAttribute('aria-busy') !== 'true';
      },
      n,
      { timeout: 120_000 },
    );
  };

  before(async () => {
    scratch = mkdtempSync(join(tmpdir(), 'vl3-web-'));
    model = await VideoLLaMA3.load(join(fixtures!, TINY_CHECKPOINT));
    server = await startServer({ model, modelId: MODEL_ID, host: '127.0.0.1', port: 0, log: (line) => serverLog.push(line) });
    browser = await chromium.launch({ executablePath: chromiumPath, headless: true });
    page = await browser.newPage({ viewport: { width: 1100, height: 860 } });
    page.setDefaultTimeout(60_000);
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('request', (r: Request) => {
      const url = new URL(r.url());
      if (!['blob:', 'data:'].includes(url.protocol) && url.origin !== new URL(server.url).origin) otherHosts.push(r.url());
      if (r.method() === 'POST' && url.pathname === '/v1/chat/completions') chatRequests.push(r.postDataJSON());
    });
  });

  after(async () => {
    await browser?.close();
    await server?.close();
    await model?.close();
    rmSync(scratch, { recursive: true, force: true });
  });

  it('loads from the server root and names the model in the header', async () => {
    const response = await page.goto(server.url.replace(/\/?$/, '/'));
    assert.equal(response?.status(), 200);
    assert.match(response!.headers()['content-type'] ?? '', /text\/html/);
    await page.getByRole('banner').getByText(MODEL_ID, { exact: true }).waitFor();
    assert.match(await page.title(), new RegExp(MODEL_ID));
    for (const name of ['Send', 'New chat']) assert.ok(await page.getByRole('button', { name, exact: true }).isVisible(), name);
    assert.equal(await page.getByRole('button', { name: 'Stop' }).isVisible(), false);
  });

  it('attaches by paste and drop, refuses wrong types and oversized files, removes attachments', async () => {
    // Synthetic clipboard and drag events carry real File objects, as a user's paste or drop does.
    await page.evaluate(() => {
      const pasted = new DataTransfer();
      pasted.items.add(new File([new Uint8Array([0x89, 0x50, 0x4e, 0x47])], 'pasted.png', { type: 'image/png' }));
      document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: pasted, bubbles: true, cancelable: true }));
      const dropped = new DataTransfer();
      dropped.items.add(new File(['hello'], 'notes.txt', { type: 'text/plain' }));
      dropped.items.add(new File([new Uint8Array(21 * 1024 * 1024)], 'huge.png', { type: 'image/png' }));
      dropped.items.add(new File([new Uint8Array(16)], 'clip.mkv', { type: '' }));
      const target = document.querySelector('main')!;
      target.dispatchEvent(new DragEvent('dragenter', { dataTransfer: dropped, bubbles: true, cancelable: true }));
      target.dispatchEvent(new DragEvent('drop', { dataTransfer: dropped, bubbles: true, cancelable: true }));
    });
    const list = page.getByRole('list', { name: 'Attachments' });
    const removeButtons = list.getByRole('button', { name: /^Remove / });
    assert.equal(await list.getByRole('listitem').count(), 2);
    assert.deepEqual(
      await Promise.all((await removeButtons.all()).map((b) => b.getAttribute('aria-label'))),
      ['Remove pasted.png', 'Remove clip.mkv'],
    );
    const problem = await page.getByRole('alert').first().innerText();
    assert.match(problem, /notes\.txt: not a supported image or video/);
    assert.match(problem, /huge\.png is too large \(21\.0 MB\)/);
    assert.equal(await page.locator('#drop-overlay').isVisible(), false, 'the drop overlay goes away after the drop');

    await page.getByRole('button', { name: 'Remove pasted.png' }).click();
    await page.getByRole('button', { name: 'Remove clip.mkv' }).click();
    assert.equal(await list.getByRole('listitem').count(), 0);
    assert.equal(chatRequests.length, 0, 'attaching sends nothing');
  });

  it('answers a question about an attached image, streaming, with token counts and timings', async () => {
    await page.getByLabel('Attach images or videos').setInputFiles(join(fixtures!, 'media', 'cat.jpg'));
    await page.getByRole('list', { name: 'Attachments' }).getByText('cat.jpg').waitFor();
    assert.equal(await page.getByRole('alert').filter({ hasText: /\S/ }).count(), 0, 'the earlier attachment problems are cleared');

    await page.getByText('Settings').click();
    await page.getByLabel('Max tokens').fill('200');
    // Greedy, so that replaying the page's request from here must give the very text the page shows.
    await page.getByLabel('Temperature').fill('0');

    // Records the answer's length at every DOM change while it is marked busy: streaming means several of them.
    await page.evaluate(() => {
      const seen: number[] = [];
      (window as unknown as { streamLengths: number[] }).streamLengths = seen;
      new MutationObserver(() => {
        const answer = [...document.querySelectorAll('article[aria-label="Assistant"]')].at(-1);
        if (answer?.getAttribute('aria-busy') === 'true') seen.push(answer.querySelector('.answer')?.textContent?.length ?? 0);
      }).observe(document.getElementById('log')!, { subtree: true, childList: true, characterData: true });
    });
    const responsePromise = nextChatResponse();
    await send('What animal is in this picture?');
    await page.getByRole('button', { name: 'Stop' }).waitFor({ state: 'visible' });
    const response = await responsePromise;
    assert.equal(response.status(), 200);
    assert.match(response.headers()['content-type'] ?? '', /text\/event-stream/);
    await settled(1);

    const lengths = await page.evaluate(() => (window as unknown as { streamLengths: number[] }).streamLengths);
    const partial = new Set(lengths.filter((n) => n > 0));
    assert.ok(partial.size >= 2, `the answer grew in several steps while streaming (lengths seen: ${lengths.join(',')})`);

    const request = chatRequests.at(-1);
    // Chromium keeps no body of a streamed response for the test to read, so the same request is made again here.
    const replay = await fetch(new URL('/v1/chat/completions', server.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(request),
    });
    assert.equal(replay.status, 200);
    const sse = parseSse(await replay.text());
    assert.ok(sse.done, 'the stream ended with [DONE]');
    assert.ok(sse.chunks > 2);
    const shown = await answerText(-1);
    assert.ok(sse.text.length > 0);
    assert.equal(shown.trim(), sse.text.trim(), 'the page shows exactly the streamed text');

    assert.equal(request.model, MODEL_ID);
    assert.equal(request.stream, true);
    assert.equal(request.max_tokens, 200);
    assert.equal(request.temperature, 0);
    assert.deepEqual(request.stream_options, { include_usage: true });
    assert.equal(request.messages.length, 1);
    const parts = request.messages[0].content;
    assert.equal(parts[0].type, 'image_url');
    // The label comes from the file name (cat.jpg holds WebP bytes); the server goes by the bytes, which must be the file's.
    const dataUrl = /^data:image\/jpeg;base64,(.*)$/.exec(parts[0].image_url.url);
    assert.ok(dataUrl, `a JPEG data URL: ${parts[0].image_url.url.slice(0, 40)}…`);
    assert.ok(Buffer.from(dataUrl[1]!, 'base64').equals(readFileSync(join(fixtures!, 'media', 'cat.jpg'))), 'the data URL holds the file');
    assert.deepEqual(parts[1], { type: 'text', text: 'What animal is in this picture?' });

    const stats = await lastStats(page);
    assert.equal(stats.prompt_tokens, sse.usage.prompt_tokens);
    assert.equal(stats.visual_tokens, sse.usage.visual_tokens);
    assert.equal(stats.completion_tokens, sse.usage.completion_tokens);
    assert.ok(stats.visual_tokens! > 0 && stats.visual_tokens! < stats.prompt_tokens!, JSON.stringify(stats));
    assert.ok(stats.completion_tokens! >= 1 && stats.completion_tokens! <= 200, JSON.stringify(stats));
    assert.ok(stats.ttft_ms! > 0 && stats.ttft_ms! < 120_000, JSON.stringify(stats));
    assert.ok(stats.prefill_ms! > 0 && stats.decode_ms! >= 0 && stats.tokens_per_second! > 0, JSON.stringify(stats));
    const statsText = await answers().last().getByRole('definition').allInnerTexts();
    assert.ok(statsText.some((s) => /tok\/s$/.test(s)) && statsText.some((s) => /^\d[\d.]* s$/.test(s)), statsText.join(' | '));
    assert.equal(await page.getByRole('button', { name: 'Send' }).isEnabled(), true);
  });

  it('sends the whole conversation, image included, on the second turn', async () => {
    const first = await lastStats(page);
    const firstAnswer = await answerText(-1);
    await send('Describe its colours.');
    await settled(2);
    const request = chatRequests.at(-1);
    assert.equal(request.messages.length, 3);
    assert.deepEqual(
      request.messages.map((m: Json) => m.role),
      ['user', 'assistant', 'user'],
    );
    assert.deepEqual(request.messages[0], chatRequests.at(-2).messages[0], 'the first question is re-sent as it was, with its image');
    assert.equal(request.messages[1].content.trim(), firstAnswer.trim());
    assert.deepEqual(request.messages[2].content, [{ type: 'text', text: 'Describe its colours.' }]);
    const second = await lastStats(page);
    assert.equal(second.visual_tokens, first.visual_tokens, 'the same image again');
    // The first answer comes back in the prompt (re-tokenized, so not necessarily token for token).
    assert.ok(second.prompt_tokens! > first.prompt_tokens! + first.completion_tokens! / 2, `${JSON.stringify(first)} -> ${JSON.stringify(second)}`);
  });

  it('shows the server\'s error for a corrupt image inline and stays usable', async () => {
    const broken = join(scratch, 'broken.png');
    writeFileSync(broken, Buffer.concat([Buffer.from('garbage'), randomBytes(41)]));
    await page.getByLabel('Attach images or videos').setInputFiles(broken);
    const responsePromise = nextChatResponse();
    await send('What is this?');
    const response = await responsePromise;
    assert.equal(response.status(), 400);
    const message: string = (await response.json()).error.message;
    assert.ok(message.length > 0);
    await settled(3);
    const alert = answers().last().getByRole('alert');
    const shownError = await alert.innerText();
    assert.ok(shownError.startsWith('Error: ') && shownError.includes(message) && shownError.includes('HTTP 400'), shownError);
    assert.equal(await page.getByRole('list', { name: 'Attachments' }).getByRole('listitem').count(), 0);

    // The failed turn is left out: the next question goes with the two good turns only.
    await page.getByLabel('Max tokens').fill('40');
    await send('Is the cat still there?');
    await settled(4);
    const request = chatRequests.at(-1);
    assert.equal(request.messages.length, 5);
    const images = request.messages.flatMap((m: Json) => (Array.isArray(m.content) ? m.content : [])).filter((p: Json) => p.type === 'image_url');
    assert.equal(images.length, 1, 'only the cat is re-sent');
    assert.ok((await lastStats(page)).completion_tokens! >= 1);
    assert.equal(await answers().last().getByRole('alert').count(), 0);

    mkdirSync(join(repoRoot(), 'test-output'), { recursive: true });
    const png = await page.screenshot({ path: SCREENSHOT });
    assert.deepEqual(pngSize(png), { width: 1100, height: 860 });
    assert.ok(png.length > 30_000, `a screenshot with content (${png.length} bytes)`);
    assert.ok(readFileSync(SCREENSHOT).equals(png));
  });

  it('Stop ends a long answer early and keeps what arrived', async () => {
    await page.getByLabel('Max tokens').fill('8000');
    const started = Date.now();
    await send('Tell me a very long story.');
    await page.waitForFunction(() => {
      const a = document.querySelectorAll('article[aria-label="Assistant"]')[4];
      return (a?.querySelector('.answer')?.textContent?.length ?? 0) > 20;
    });
    const loggedBefore = serverLog.length;
    await page.getByRole('button', { name: 'Stop' }).click();
    const clicked = Date.now();
    await settled(5);
    const stoppedAfter = clicked - started;
    // The server sees the client go away and ends the generation: its request finishes, logged as aborted.
    while (!serverLog.slice(loggedBefore).some((l) => l.path === '/v1/chat/completions' && l.aborted)) {
      assert.ok(Date.now() - clicked < 10_000, `no aborted request in the server log: ${JSON.stringify(serverLog.slice(loggedBefore))}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    await answers().nth(4).getByText('Stopped.', { exact: true }).waitFor();
    assert.equal(await answers().nth(4).getByRole('definition').count(), 0, 'no statistics for a stopped answer');
    const partial = await answerText(4);
    await page.waitForTimeout(500);
    assert.equal(await answerText(4), partial, 'nothing arrives after Stop');
    assert.ok(partial.length > 20);
    assert.equal(await page.getByRole('button', { name: 'Send' }).isVisible(), true);

    // The stopped turn counts: its partial answer goes with the next question.
    await page.getByLabel('Max tokens').fill('8');
    await send('Shorter, please.');
    await settled(6);
    const request = chatRequests.at(-1);
    // Two answered turns, the one after the error, the stopped one, and the new question (the failed turn is left out).
    assert.equal(request.messages.length, 9);
    assert.equal(request.messages[7].role, 'assistant');
    assert.equal(request.messages[7].content.trim(), partial.trim());
    const stats = await lastStats(page);
    assert.ok(stats.completion_tokens! <= 8);
    assert.ok(stoppedAfter < 60_000, `stopped after ${stoppedAfter} ms`);
  });

  it('New chat clears the conversation, even in the middle of an answer', async () => {
    await page.getByLabel('Max tokens').fill('8000');
    await send('Keep going.');
    await page.waitForFunction(() => {
      const all = document.querySelectorAll('article[aria-label="Assistant"]');
      return (all[all.length - 1]?.querySelector('.answer')?.textContent?.length ?? 0) > 0;
    });
    await page.getByRole('button', { name: 'New chat' }).click();
    assert.equal(await answers().count(), 0);
    assert.equal(await page.getByRole('button', { name: 'Send' }).isVisible(), true);
    await page.getByLabel('Max tokens').fill('8');
    const sent = chatRequests.length;
    const input = page.getByRole('textbox', { name: 'Message', exact: true });
    await input.pressSequentially('Hello');
    await input.press('Shift+Enter');
    await input.pressSequentially('there');
    assert.equal(await input.inputValue(), 'Hello\nthere', 'Shift+Enter is a new line');
    assert.equal(chatRequests.length, sent, 'and sends nothing');
    await input.press('Enter');
    await settled(1);
    assert.deepEqual(chatRequests.at(-1).messages, [{ role: 'user', content: [{ type: 'text', text: 'Hello\nthere' }] }]);
    assert.equal(await input.inputValue(), '');
  });

  it('works with a server that needs an API key, once the key is entered', async () => {
    const guarded = await startServer({ model, modelId: MODEL_ID, host: '127.0.0.1', port: 0, apiKey: 'sesame' });
    const second = await browser.newPage();
    try {
      second.on('pageerror', (e) => pageErrors.push(e.message));
      await second.goto(`${guarded.url}/`);
      await second.getByRole('banner').getByText('API key needed').waitFor();
      const key = second.getByLabel('API key');
      assert.ok(await key.isVisible(), 'the settings open by themselves');
      await key.fill('sesame');
      await key.blur();
      await second.getByRole('banner').getByText(MODEL_ID, { exact: true }).waitFor();
      await second.getByLabel('Max tokens').fill('4');
      await second.getByRole('textbox', { name: 'Message', exact: true }).fill('Hi');
      await second.getByRole('button', { name: 'Send' }).click();
      await second.getByRole('article', { name: 'Assistant' }).getByRole('definition').first().waitFor();
      assert.equal(await second.getByRole('alert').filter({ hasText: /\S/ }).count(), 0);
    } finally {
      await second.close();
      await guarded.close();
    }
    assert.deepEqual(pageErrors, [], 'no script errors in the pages');
    assert.deepEqual(otherHosts, [], 'the page requests nothing from other hosts');
  });
});
