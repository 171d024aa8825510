// What the feature and prefix caches save: time to first token of a chat's second turn beside its first's, (a) a
// chat about a video through the library, (b) an image chat through `vl3 serve` with the client re-sending the
// whole history, as OpenAI clients do, (c) an image chat through the library with a long first answer, its second
// turn run before and after the first answer is read back (`cachePrompt`, as `vl3 chat` does while the user types).
// All run with the default cache bounds.
// Usage: node dist/bench/reuse.js <checkpoint-dir> <clip> [threads]   (prints one JSON object)
import { VideoLLaMA3, type ChatResult } from '../src/api/videollama3.js';
import type { Message } from '../src/processing/conversation.js';
import { benchImageDataUrl } from './image.js';
import { startServe, streamChat } from './serve-client.js';
import { round } from './stats.js';

export interface TurnFigures {
  timeToFirstTokenSeconds: number;
  promptTokens: number;
  /** Prompt tokens read from the prefix cache. */
  cachedTokens: number;
}

/** Two turns of one chat; the ratio of their times to first token is the figure. */
export interface TurnPair {
  first: TurnFigures;
  second: TurnFigures;
  secondOverFirst: number;
}

export interface ReuseFigures {
  threads: number;
  video: TurnPair & { frames: number };
  serverImage: TurnPair;
  readBack: ReadBackFigures;
}

/** The same second turn of an image chat, before and after its history was read back with the first answer. */
export interface ReadBackFigures {
  first: TurnFigures & { answerTokens: number };
  /** Seconds `cachePrompt` took to read the history back (while a user types, in `vl3 chat`). */
  readBackSeconds: number;
  before: TurnFigures;
  after: TurnFigures;
  /** Prompt positions prefilled by the second turn before and after the read-back. */
  prefilledBefore: number;
  prefilledAfter: number;
}

/** Long enough that the answer is a large part of what the second turn would read again. */
const READ_BACK_ANSWER_TOKENS = 128;

const MAX_NEW_TOKENS = 16;

/** From the request's start (media decoding included) to its first token. */
const pair = (first: TurnFigures, second: TurnFigures): TurnPair => ({ first, second, secondOverFirst: round(second.timeToFirstTokenSeconds / first.timeToFirstTokenSeconds, 4) });

const turnOf = (r: ChatResult): TurnFigures => ({
  timeToFirstTokenSeconds: round((r.timings.totalMs - r.timings.decodeMs) / 1000, 2),
  promptTokens: r.usage.promptTokens,
  cachedTokens: r.usage.cachedTokens,
});

async function videoChat(dir: string, clip: string, threads: number | undefined): Promise<ReuseFigures['video'] & { threads: number }> {
  const model = await VideoLLaMA3.load(dir, { threads });
  let frames = 0;
  const options = { greedy: true, maxNewTokens: MAX_NEW_TOKENS, onProgress: (e: { stage: string; total: number }) => void (e.stage === 'decode' && (frames = e.total)) };
  const history: Message[] = [{ role: 'user', content: [{ type: 'video', video: { video_path: clip, fps: 1, max_frames: 180 } }, { type: 'text', text: 'What happens in this video?' }] }];
  const first = await model.chat(history, options).result;
  history.push({ role: 'assistant', content: first.text }, { role: 'user', content: 'What colour is the background at the end?' });
  const second = await model.chat(history, options).result;
  await model.close();
  return { threads: model.llm.backend.threads, frames, ...pair(turnOf(first), turnOf(second)) };
}

async function serverImageChat(dir: string, threads: number | undefined): Promise<ReuseFigures['serverImage']> {
  const { url, process: server } = await startServe(dir, threads ? ['--threads', String(threads)] : []);
  try {
    const body = (messages: object[]) => ({ model: 'bench', max_tokens: MAX_NEW_TOKENS, temperature: 0, messages });
    const messages: object[] = [{ role: 'user', content: [{ type: 'image_url', image_url: { url: await benchImageDataUrl() } }, { type: 'text', text: 'Describe this image.' }] }];
    const first = await streamChat(url, body(messages));
    messages.push({ role: 'assistant', content: first.text }, { role: 'user', content: 'What is in its top left corner?' });
    const second = await streamChat(url, body(messages));
    const turn = (t: typeof first): TurnFigures => ({ timeToFirstTokenSeconds: round(t.seconds, 2), promptTokens: t.promptTokens, cachedTokens: t.cachedTokens });
    return pair(turn(first), turn(second));
  } finally {
    server.kill('SIGTERM');
  }
}

async function imageChatReadBack(dir: string, threads: number | undefined): Promise<ReadBackFigures> {
  const model = await VideoLLaMA3.load(dir, { threads });
  try {
    const options = { greedy: true, repetitionPenalty: 1 };
    const history: Message[] = [{ role: 'user', content: [{ type: 'image', image: await benchImageDataUrl() }, { type: 'text', text: 'Describe this image.' }] }];
    const first = await model.chat(history, { ...options, maxNewTokens: READ_BACK_ANSWER_TOKENS }).result;
    history.push({ role: 'assistant', content: first.text });
    const next: Message[] = [...history, { role: 'user', content: 'What is in its top left corner?' }];
    const before = await model.chat(next, { ...options, maxNewTokens: MAX_NEW_TOKENS }).result;
    const started = performance.now();
    await model.cachePrompt(history, options);
    const readBackSeconds = round((performance.now() - started) / 1000, 2);
    const after = await model.chat(next, { ...options, maxNewTokens: MAX_NEW_TOKENS }).result;
    if (after.tokenIds.join() !== before.tokenIds.join()) throw new Error('the second turn answered differently after the read-back');
    const prefilled = (r: ChatResult) => r.usage.promptTokens - r.usage.cachedTokens;
    return {
      first: { ...turnOf(first), answerTokens: first.tokenIds.length },
      readBackSeconds,
      before: turnOf(before),
      after: turnOf(after),
      prefilledBefore: prefilled(before),
      prefilledAfter: prefilled(after),
    };
  } finally {
    await model.close();
  }
}

async function main(): Promise<void> {
  const [dir, clip, threadsArg] = process.argv.slice(2);
  if (!dir || !clip) throw new Error('usage: reuse.js <checkpoint-dir> <clip> [threads]');
  const threads = Number(threadsArg ?? 0) || undefined;
  const { threads: used, ...video } = await videoChat(dir, clip, threads);
  const figures: ReuseFigures = { threads: used, video, serverImage: await serverImageChat(dir, threads), readBack: await imageChatReadBack(dir, threads) };
  process.stdout.write(JSON.stringify(figures) + '\n');
}

await main();
