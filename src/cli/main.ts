import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { VideoLLaMA3 } from '../api/videollama3.js';
import { writeRandomCheckpoint } from '../model/random-checkpoint.js';
import type { ContentPart, Message } from '../processing/conversation.js';
import { inspectConversation } from './inspect.js';
import { ProgressBars } from './progress.js';

/** Exit codes scripts can rely on. */
export const EXIT = { ok: 0, failure: 1, usage: 2, interrupted: 130 } as const;

const integer = (name: string, min: number) => (value: string) => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
  return n;
};
const number = (name: string) => (value: string) => {
  const n = Number(value);
  if (!Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a number`);
  return n;
};

const positive = (name: string) => (value: string) => {
  const n = Number(value);
  if (!(n > 0) || !Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a number > 0`);
  return n;
};
const seconds = (name: string) => (value: string) => {
  const n = Number(value);
  if (!(n >= 0) || !Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a number of seconds >= 0`);
  return n;
};

/** A flag with its environment twin: --max-new-tokens ↔ VL3_MAX_NEW_TOKENS. */
function flag(flags: string, description: string): Option {
  const long = /--([a-z0-9-]+)/.exec(flags)![1]!;
  return new Option(flags, description).env(`VL3_${long.toUpperCase().replaceAll('-', '_')}`);
}

const modelOptions = (cmd: Command) =>
  cmd
    .addOption(flag('-m, --model <dir>', 'checkpoint folder (Hugging Face layout)').makeOptionMandatory())
    .addOption(flag('-t, --threads <n>', 'kernel threads (default: available cores)').argParser(integer('--threads', 1)))
    .addOption(flag('--max-visual-tokens <n>', 'visual token budget of a request (default: the checkpoint\'s, 16384)').argParser(integer('--max-visual-tokens', 1)))
    .addOption(flag('--min-visual-tokens <n>', 'fewest visual tokens per image (default: the checkpoint\'s, 16)').argParser(integer('--min-visual-tokens', 1)))
    .addOption(flag('--fps <x>', 'video frames sampled per second (default: the checkpoint\'s, 1)').argParser(positive('--fps')))
    .addOption(flag('--max-frames <n>', 'most frames kept per video (default: the checkpoint\'s, 128; the paper uses 180)').argParser(integer('--max-frames', 1)))
    .addOption(flag('--no-token-compression', 'keep every video token (turn the Differential Frame Pruner off)'));

/** Values of a repeatable flag (its environment twin holds one value: a data URL may contain any delimiter). */
const collect = (value: string, previous: string[] = []) => [...previous, value];
const loadOptions = (o: Record<string, number | undefined>) => ({
  threads: o.threads,
  maxVisualTokens: o.maxVisualTokens,
  minVisualTokens: o.minVisualTokens,
  fps: o.fps,
  maxFrames: o.maxFrames,
});

const samplingOptions = (cmd: Command) =>
  cmd
    .addOption(flag('--max-new-tokens <n>', 'most tokens to generate').argParser(integer('--max-new-tokens', 0)).default(1024))
    .addOption(flag('--greedy', 'greedy decoding instead of the checkpoint\'s sampling settings'))
    .addOption(flag('--temperature <x>', 'sampling temperature').argParser(number('--temperature')))
    .addOption(flag('--top-k <n>', 'sample among the k most likely tokens (0: off)').argParser(integer('--top-k', 0)))
    .addOption(flag('--top-p <x>', 'nucleus sampling mass').argParser(number('--top-p')))
    .addOption(flag('--repetition-penalty <x>', 'penalty on generated tokens (1: off)').argParser(number('--repetition-penalty')))
    .addOption(flag('--seed <n>', 'sampling seed').argParser(integer('--seed', 0)));

async function readQuestion(parts: string[]): Promise<string> {
  if (parts.length === 1 && parts[0] === '-') return readFileSync(0, 'utf8').trim();
  return parts.join(' ');
}

export function buildProgram(): Command {
  const program = new Command('vl3')
    .description('VideoLLaMA3 image and video understanding, in TypeScript')
    .showHelpAfterError()
    .exitOverride();

  const ask = program.command('ask').description('ask one question and stream the answer').argument('<question...>', 'the question ("-" reads stdin)');
  modelOptions(ask);
  samplingOptions(ask);
  ask
    .addOption(flag('-i, --image <path>', 'an image (file or data URL) to ask about; repeat for several').argParser(collect))
    .addOption(flag('-v, --video <path>', 'a video file (or GIF, or folder of frames) to ask about; repeat for several').argParser(collect))
    .addOption(flag('--start-time <s>', 'start of the video clips, in seconds').argParser(seconds('--start-time')))
    .addOption(flag('--end-time <s>', 'end of the video clips, in seconds').argParser(seconds('--end-time')))
    .addOption(flag('--system <text>', 'a system message of your own'))
    .addOption(flag('--no-system-prompt', 'do not insert the default VideoLLaMA3 system prompt'))
    .addOption(flag('--json', 'print one JSON object: text, token ids, usage, timings'))
    .action(async (parts: string[], o) => {
      const model = await VideoLLaMA3.load(o.model, loadOptions(o));
      const question = await readQuestion(parts);
      const images: string[] = o.image ?? [];
      const videos: string[] = o.video ?? [];
      const video = (path: string): ContentPart => ({
        type: 'video',
        video: { video_path: path, fps: o.fps, max_frames: o.maxFrames, start_time: o.startTime, end_time: o.endTime },
      });
      // Media first (videos, then images), then the question: the layout of the official examples.
      const content: ContentPart[] = [...videos.map(video), ...images.map((image) => ({ type: 'image' as const, image })), { type: 'text', text: question }];
      const messages: Message[] = [...(o.system ? [{ role: 'system' as const, content: o.system as string }] : []), { role: 'user', content }];
      const abort = new AbortController();
      process.once('SIGINT', () => abort.abort());
      const bars = new ProgressBars();
      const stream = model.chat(messages, {
        onProgress: bars.update,
        tokenCompression: o.tokenCompression === false ? false : undefined,
        maxNewTokens: o.maxNewTokens,
        greedy: o.greedy,
        temperature: o.temperature,
        topK: o.topK,
        topP: o.topP,
        repetitionPenalty: o.repetitionPenalty,
        seed: o.seed,
        addSystemPrompt: o.systemPrompt,
        signal: abort.signal,
      });
      try {
        if (o.json) {
          process.stdout.write(JSON.stringify(await stream.result) + '\n');
        } else {
          let started = false;
          for await (const delta of stream) {
            bars.stop();
            // The official answer is trimmed; trim the stream's start the same way.
            const text = started ? delta : delta.trimStart();
            if (text) started = true;
            process.stdout.write(text);
          }
          process.stdout.write('\n');
          await stream.result;
        }
      } finally {
        bars.stop();
      }
      if (abort.signal.aborted) process.exitCode = EXIT.interrupted;
    });

  const inspect = program
    .command('inspect')
    .description('run one conversation and write what the official implementation can be compared with')
    .addOption(flag('-c, --conversation <file>', 'conversation JSON: a message list or {messages, add_system_prompt, add_generation_prompt}').makeOptionMandatory())
    .addOption(flag('-o, --out <file>', 'output .safetensors').makeOptionMandatory())
    .addOption(flag('--greedy <n>', 'also decode n tokens greedily (greedy_ids)').argParser(integer('--greedy', 0)))
    .addOption(flag('--repetition-penalty <x>', 'override the generation config\'s penalty for --greedy').argParser(number('--repetition-penalty')));
  modelOptions(inspect);
  inspect.action(async (o) => {
    const model = await VideoLLaMA3.load(o.model, loadOptions(o));
    const conversation = JSON.parse(await readFile(o.conversation, 'utf8').catch((e) => {
      throw new Error(`cannot read conversation file ${o.conversation}: ${(e as Error).message}`);
    })) as unknown;
    // Relative media paths in a conversation file are relative to that file, as a user writing it would expect.
    const baseDir = dirname(resolve(o.conversation));
    const summary = await inspectConversation(model, conversation, {
      out: o.out,
      greedy: o.greedy ?? 0,
      repetitionPenalty: o.repetitionPenalty,
      baseDir,
      tokenCompression: o.tokenCompression === false ? false : undefined,
    });
    process.stdout.write(JSON.stringify(summary) + '\n');
  });

  const dev = program.command('dev').description('developer tools');
  dev
    .command('random-checkpoint')
    .description('write a deterministic random-weight checkpoint with the real names, shapes and config (bf16)')
    .addOption(flag('--preset <name>', 'model size').choices(['2b', '7b']).makeOptionMandatory())
    .addOption(flag('-o, --out <dir>', 'output folder').makeOptionMandatory())
    .addOption(flag('--seed <n>', 'weight seed').argParser(integer('--seed', 0)).default(0))
    .addOption(flag('--tokenizer-from <dir>', 'copy the tokenizer files from this checkpoint folder'))
    .action(async (o) => {
      const started = performance.now();
      await writeRandomCheckpoint({ preset: o.preset, out: o.out, seed: o.seed, tokenizerFrom: o.tokenizerFrom });
      process.stderr.write(`wrote ${o.out} in ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
    });

  return program;
}

export async function main(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.ok;
  } catch (e) {
    if (e instanceof CommanderError) {
      // --help and --version exit through here with code 0; usage errors were already printed.
      return e.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    process.stderr.write(`vl3: ${(e as Error).message}\n`);
    if (process.env.VL3_DEBUG) process.stderr.write(`${(e as Error).stack}\n`);
    return EXIT.failure;
  }
}
