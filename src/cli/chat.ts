// `vl3 chat`: an interactive conversation in the terminal, keeping its history; media are attached with commands.
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { AbortError } from '../api/errors.js';
import type { ChatOptions, ModelCacheStats, VideoLLaMA3 } from '../api/videollama3.js';
import type { CacheStats } from '../engine/feature-cache.js';
import type { ContentPart, Message } from '../processing/conversation.js';
import { ProgressBars } from './progress.js';

const HELP = `Commands:
  /image PATH   attach an image (file or data URL) to your next message
  /video PATH   attach a video (file, GIF or folder of frames) to your next message
  /reset        forget the conversation and pending attachments
  /stats        how the feature and prefix caches have served this chat
  /help         show this help
  /exit         leave (or Ctrl-D)
Ctrl-C stops an answer; at the prompt it leaves.`;

export interface ChatSession {
  model: VideoLLaMA3;
  /** Options of every answer (sampling, budgets); signal and progress are set per answer. */
  options: ChatOptions;
  /** Video sampling for attached videos. */
  video: { fps?: number; max_frames?: number };
  system?: string;
  input?: NodeJS.ReadableStream;
  output?: NodeJS.WritableStream;
}

/** Runs until /exit or end of input. */
export async function runChat(session: ChatSession): Promise<void> {
  const output = session.output ?? process.stdout;
  const input = session.input ?? process.stdin;
  const rl = createInterface({ input, output, terminal: input === process.stdin && process.stdin.isTTY === true });
  const say = (text: string) => output.write(text + '\n');
  let history: Message[] = session.system ? [{ role: 'system', content: session.system }] : [];
  let pending: ContentPart[] = [];
  let answering: AbortController | undefined;
  // The line iterator buffers lines typed (or piped) while an answer streams; none is lost.
  const lines = rl[Symbol.asyncIterator]();
  // Ctrl-C while answering stops the answer; at the prompt it leaves, as in other REPLs.
  rl.on('SIGINT', () => (answering ? answering.abort() : rl.close()));

  // The history with the last answer, read into the prefix cache while the user types (`cachePrompt`): the next turn
  // then prefills only its new message. It never fails a turn; a turn that comes first waits for it, showing its bars.
  let backlog: { done: Promise<unknown>; stop: AbortController; show?: ProgressBars } | undefined;
  const readBack = (conversation: Message[]) => {
    const stop = new AbortController();
    const { maxNewTokens: _, stop: __, ...options } = session.options;
    const entry: NonNullable<typeof backlog> = { stop, done: Promise.resolve() };
    entry.done = session.model.cachePrompt(conversation, { ...options, signal: stop.signal, onProgress: (e) => entry.show?.update(e) }).catch(() => undefined);
    backlog = entry;
  };
  const finishBacklog = async (bars?: ProgressBars) => {
    if (!backlog) return;
    backlog.show = bars;
    await backlog.done;
    backlog = undefined;
  };
  const dropBacklog = () => {
    backlog?.stop.abort();
    backlog = undefined;
  };

  say('VideoLLaMA3 chat. /help for commands.');
  for (;;) {
    rl.setPrompt(pending.length ? `you (${pending.length} attached)> ` : 'you> ');
    rl.prompt();
    const line = await lines.next();
    if (line.done) break;
    const text = line.value.trim();
    if (!text) continue;
    if (text.startsWith('/')) {
      const [command, ...rest] = text.split(/\s+/);
      const arg = unquote(text.slice(command!.length).trim());
      switch (command) {
        case '/image':
        case '/video': {
          if (!rest.length) {
            say(`usage: ${command} PATH`);
            break;
          }
          const isDataUrl = arg.startsWith('data:');
          const path = isDataUrl ? arg : resolve(arg);
          if (!isDataUrl && !existsSync(path)) {
            say(`no such file: ${path}`);
            break;
          }
          pending.push(command === '/image' ? { type: 'image', image: path } : { type: 'video', video: { video_path: path, ...session.video } });
          say(`attached ${command.slice(1)} ${isDataUrl ? '(data URL)' : path}`);
          break;
        }
        case '/reset':
          dropBacklog();
          history = session.system ? [{ role: 'system', content: session.system }] : [];
          pending = [];
          say('conversation cleared');
          break;
        case '/help':
          say(HELP);
          break;
        case '/stats':
          await finishBacklog();
          say(describeCaches(session.model.cacheStats));
          break;
        case '/exit':
        case '/quit':
          dropBacklog();
          rl.close();
          return;
        default:
          say(`unknown command ${command}; /help lists them`);
      }
      continue;
    }

    // Media first, then the text: the layout of the official examples.
    const message: Message = { role: 'user', content: [...pending, { type: 'text', text }] };
    answering = new AbortController();
    const bars = new ProgressBars();
    answering.signal.addEventListener('abort', () => backlog?.stop.abort(), { once: true });
    await finishBacklog(bars);
    const stream = session.model.chat([...history, message], { ...session.options, signal: answering.signal, onProgress: bars.update });
    // The prefix is written once the bars are gone: removing them clears the line the cursor is on.
    let started = false;
    const start = () => {
      if (started) return;
      started = true;
      bars.stop();
      output.write('assistant> ');
    };
    try {
      for await (const delta of stream) {
        start();
        output.write(delta);
      }
      const result = await stream.result;
      start();
      output.write('\n');
      if (result.finishReason === 'abort') say('(stopped)');
      history.push(message, { role: 'assistant', content: result.text });
      pending = [];
      readBack([...history]);
    } catch (e) {
      bars.stop();
      if (e instanceof AbortError) {
        say(`${started ? '\n' : ''}(stopped)`);
        continue;
      }
      // The message is not kept: the user can fix the attachment (/reset) or retry, and the history stays valid.
      say(`${started ? '\n' : ''}error: ${(e as Error).message}`);
    } finally {
      answering = undefined;
    }
  }
  dropBacklog();
  rl.close();
}

/** Two lines: each cache's hits, misses, entries and bytes held of its bound. */
export function describeCaches(s: ModelCacheStats): string {
  const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
  const line = (name: string, c: CacheStats, extra = '') =>
    c.maxBytes === 0 ? `${name}: off` : `${name}: ${c.hits} hits${extra}, ${c.misses} misses, ${c.entries} entries, ${mib(c.bytes)} of ${mib(c.maxBytes)}`;
  return [line('feature cache', s.features), line('prefix cache', s.prefix, ` (${s.prefix.reusedTokens} prompt tokens reused)`)].join('\n');
}

function unquote(s: string): string {
  return /^(['"]).*\1$/.test(s) ? s.slice(1, -1) : s;
}
