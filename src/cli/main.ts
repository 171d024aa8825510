import { Command, CommanderError } from 'commander';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { ModelWorker } from '../api/model-worker.js';
import { VideoLLaMA3, type LoadOptions } from '../api/videollama3.js';
import { writeRandomCheckpoint } from '../model/random-checkpoint.js';
import { writeQuantizedCheckpoint } from '../model/quantize-checkpoint.js';
import { writeMergedCheckpoint } from '../model/merge-adapter.js';
import { resolveModel } from '../hub/index.js';
import { DEVICE_NAMES, ISAS, type ComputeMode, type DeviceName, type Isa } from '../tensor/index.js';
import { WEIGHT_FORMATS, type WeightFormat } from '../tensor/dtype.js';
import type { ContentPart, Message } from '../processing/conversation.js';
import { runChat } from './chat.js';
import { byteCount, collect, EXIT, flag, integer, number, positive, seconds } from './flags.js';
import { serve } from './serve.js';
import { addHubCommands } from './hub-commands.js';
import { inspectConversation } from './inspect.js';
import { runCompareWeights, weightFormatList } from './compare-weights.js';
import { DEFAULT_COMPARE_POSITIONS, DEFAULT_GREEDY_TOKENS } from '../api/compare-weights.js';
import { printInfo } from './info.js';
import { addTrainCommand } from './train.js';
import { addEvalCommand } from './eval.js';
import { DownloadBars, ProgressBars } from './progress.js';

export { EXIT } from './flags.js';

const deviceOption = (cmd: Command) =>
  cmd.addOption(flag('--device <name>', 'where the model runs: cpu, webgpu (a GPU through WebGPU), or auto (webgpu on a real GPU, else cpu; `vl3 info` shows the adapters); default: cpu').choices([...DEVICE_NAMES]));

const modelOptions = (cmd: Command) =>
  deviceOption(runtimeOptions(cmd))
    .addOption(flag('-m, --model <ref>', 'checkpoint folder, or hub id ORG/NAME[@revision] (downloaded into the Hugging Face cache)').makeOptionMandatory())
    .addOption(flag('--max-active-requests <n>', 'requests holding memory at once; more wait their turn (default 4)').argParser(integer('--max-active-requests', 1)))
    .addOption(flag('--max-visual-tokens <n>', 'visual token budget of a request (default: the checkpoint\'s, 16384)').argParser(integer('--max-visual-tokens', 1)))
    .addOption(flag('--min-visual-tokens <n>', 'fewest visual tokens per image (default: the checkpoint\'s, 16)').argParser(integer('--min-visual-tokens', 1)))
    .addOption(flag('--fps <x>', 'video frames sampled per second (default: the checkpoint\'s, 1)').argParser(positive('--fps')))
    .addOption(flag('--max-frames <n>', 'most frames kept per video (default: the checkpoint\'s, 128; the paper uses 180)').argParser(integer('--max-frames', 1)))
    .addOption(flag('--max-image-pixels <n>', 'largest image or video frame in pixels, read from its header before decoding (default 178956970; serve: 40000000)').argParser(integer('--max-image-pixels', 1)))
    .addOption(flag('--no-token-compression', 'keep every video token (turn the Differential Frame Pruner off)'))
    .addOption(flag('--weights <format>', 'language model weights: bf16, or int8, int4, int4m quantized at load (faster decode, less memory; default: as the checkpoint stores them)').choices([...WEIGHT_FORMATS]))
    .addOption(flag('--vision-weights <format>', 'vision encoder weights, as --weights (default: as the checkpoint stores them)').choices([...WEIGHT_FORMATS]))
    .addOption(flag('--adapter <dir>', 'a LoRA adapter folder (PEFT format: adapter_config.json, adapter_model.safetensors), merged into the weights at load'))
    .addOption(flag('--feature-cache-bytes <n>', 'image and video features kept for later requests, LRU (e.g. 512MiB; 0: off; default 1GiB, ask and inspect: 0)').argParser(byteCount('--feature-cache-bytes')))
    .addOption(flag('--prefix-cache-bytes <n>', 'prompt KV caches kept so that a later prompt starting the same way prefills only the rest, LRU (0: off; default 2GiB, ask and inspect: 0)').argParser(byteCount('--prefix-cache-bytes')));

const runtimeThreads = (cmd: Command) => cmd.addOption(flag('-t, --threads <n>', 'kernel threads (default: available cores)').argParser(integer('--threads', 1)));

/** How the kernels run: the model commands' flags, and `vl3 info`'s, which shows what they resolve to. */
const runtimeOptions = (cmd: Command) =>
  cmd
    .addOption(flag('-t, --threads <n>', 'kernel threads (default: available cores)').argParser(integer('--threads', 1)))
    .addOption(flag('--compute <mode>', 'matmul numerics: "exact" (f32) or "bf16" (as the official model in bf16; fast where the CPU has bf16 dot products); default: the fastest this CPU has').choices(['exact', 'bf16']))
    .addOption(flag('--isa <tier>', 'kernel tier (default: the best this CPU has; `vl3 info` lists them)').choices([...ISAS]));

const list = (value: string) => value.split(',').map((s) => s.trim()).filter(Boolean);

const loadOptions = (o: Record<string, number | undefined>) => ({
  weights: o.weights as unknown as WeightFormat | undefined,
  visionWeights: o.visionWeights as unknown as WeightFormat | undefined,
  adapter: o.adapter as unknown as string | undefined,
  compute: o.compute as unknown as ComputeMode | undefined,
  isa: o.isa as unknown as Isa | undefined,
  device: o.device as unknown as DeviceName | undefined,
  threads: o.threads,
  maxVisualTokens: o.maxVisualTokens,
  minVisualTokens: o.minVisualTokens,
  fps: o.fps,
  maxFrames: o.maxFrames,
  maxActiveRequests: o.maxActiveRequests,
  maxImagePixels: o.maxImagePixels,
  featureCacheBytes: o.featureCacheBytes,
  prefixCacheBytes: o.prefixCacheBytes,
});

/**
 * Writes a checkpoint derived from a model reference (`vl3 quantize`, `vl3 merge-adapter`): the reference resolved with
 * download bars, then `write` with a progress bar for `stage`; the bars are gone when it returns.
 */
async function rewriteCheckpoint<R>(ref: string, stage: 'quantize' | 'merge', write: (from: string, onProgress: (done: number, total: number) => void) => R): Promise<{ result: R; seconds: number }> {
  const started = performance.now();
  const downloads = new DownloadBars();
  const bars = new ProgressBars();
  try {
    const from = await resolveModel(ref, { onProgress: downloads.update });
    downloads.stop();
    const result = write(from, (done, total) => bars.update({ stage, done, total }));
    return { result, seconds: (performance.now() - started) / 1000 };
  } finally {
    downloads.stop();
    bars.stop();
  }
}

/** One request per process: nothing is asked twice, so the caches would only hold memory (unless asked for). */
const withoutCaches = <T extends Record<string, unknown>>(o: T): T => ({ ...o, featureCacheBytes: o.featureCacheBytes ?? 0, prefixCacheBytes: o.prefixCacheBytes ?? 0 });

/**
 * Loads a model (a folder, or a hub id downloaded with one progress bar per file) with a bar for the weights being
 * read, removing the bars after.
 */
async function withLoadBars<T>(load: (options: LoadOptions) => Promise<T>, o: Record<string, number | undefined>): Promise<T> {
  const downloads = new DownloadBars();
  const loading = new ProgressBars();
  try {
    return await load({
      ...loadOptions(o),
      hub: { onProgress: downloads.update },
      onProgress: (event) => {
        downloads.stop();
        loading.update(event);
      },
    });
  } finally {
    downloads.stop();
    loading.stop();
  }
}
const loadModel = (o: Record<string, number | undefined> & { model?: unknown }) => withLoadBars((options) => VideoLLaMA3.load(String(o.model), options), o);

const samplingOptions = (cmd: Command) =>
  cmd
    .addOption(flag('--max-new-tokens <n>', 'most tokens to generate').argParser(integer('--max-new-tokens', 0)).default(256))
    .addOption(flag('--greedy', 'greedy decoding instead of the checkpoint\'s sampling settings'))
    .addOption(flag('--temperature <x>', 'sampling temperature').argParser(number('--temperature')))
    .addOption(flag('--top-k <n>', 'sample among the k most likely tokens (0: off)').argParser(integer('--top-k', 0)))
    .addOption(flag('--top-p <x>', 'nucleus sampling mass').argParser(number('--top-p')))
    .addOption(flag('--repetition-penalty <x>', 'penalty on generated tokens (1: off)').argParser(number('--repetition-penalty')))
    .addOption(flag('--seed <n>', 'sampling seed').argParser(integer('--seed', 0)));

const samplingFrom = (o: Record<string, unknown>) => ({
  maxNewTokens: o.maxNewTokens as number,
  greedy: o.greedy as boolean | undefined,
  temperature: o.temperature as number | undefined,
  topK: o.topK as number | undefined,
  topP: o.topP as number | undefined,
  repetitionPenalty: o.repetitionPenalty as number | undefined,
  seed: o.seed as number | undefined,
});

async function readQuestion(parts: string[]): Promise<string> {
  if (parts.length === 1 && parts[0] === '-') return readFileSync(0, 'utf8').trim();
  return parts.join(' ');
}

export function buildProgram(): Command {
  const program = new Command('vl3').description('VideoLLaMA3 image and video understanding, in TypeScript').exitOverride();

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
      const model = await loadModel(withoutCaches(o));
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
        ...samplingFrom(o),
        addSystemPrompt: o.systemPrompt,
        signal: abort.signal,
      });
      try {
        if (o.json) {
          process.stdout.write(JSON.stringify(await stream.result) + '\n');
        } else {
          for await (const delta of stream) {
            bars.stop();
            process.stdout.write(delta);
          }
          process.stdout.write('\n');
          await stream.result;
        }
      } finally {
        bars.stop();
      }
      if (abort.signal.aborted) process.exitCode = EXIT.interrupted;
    });

  const chat = program.command('chat').description('talk with the model in the terminal (/image, /video, /reset, /help)');
  modelOptions(chat);
  samplingOptions(chat);
  chat
    .addOption(flag('--system <text>', 'a system message of your own'))
    .addOption(flag('--no-system-prompt', 'do not insert the default VideoLLaMA3 system prompt'))
    .action(async (o) => {
      const model = await loadModel(o);
      await runChat({
        model,
        system: o.system,
        video: { fps: o.fps, max_frames: o.maxFrames },
        options: {
          tokenCompression: o.tokenCompression === false ? false : undefined,
          addSystemPrompt: o.systemPrompt,
          ...samplingFrom(o),
        },
      });
    });

  const serveCommand = program.command('serve').description('serve the OpenAI-compatible API and a chat page');
  modelOptions(serveCommand);
  serveCommand
    .addOption(flag('--host <address>', 'address to listen on').default('127.0.0.1'))
    .addOption(flag('-p, --port <n>', 'port to listen on (0: any free port)').argParser(integer('--port', 0)).default(8080))
    .addOption(flag('--served-model-name <name>', 'the model name clients use (default: the hub id, or the folder name)'))
    .addOption(flag('--api-key <key>', 'require "Authorization: Bearer <key>" on /v1 requests'))
    .addOption(flag('--allowed-local-media-path <dir>', 'folder whose files requests may name by path or file:// URL (default: none)'))
    .addOption(flag('--allowed-media-domains <hosts>', 'comma-separated hosts media URLs may point to (default: any public host)').argParser(list))
    .addOption(flag('--allow-private-network', 'allow media URLs on loopback and private addresses'))
    .addOption(flag('--max-body-bytes <n>', 'largest request body (default 128 MiB)').argParser(integer('--max-body-bytes', 1)))
    .addOption(flag('--max-image-bytes <n>', 'largest image, fetched or inline (default 20 MiB)').argParser(integer('--max-image-bytes', 1)))
    .addOption(flag('--max-video-bytes <n>', 'largest video, fetched or inline (default 256 MiB)').argParser(integer('--max-video-bytes', 1)))
    .addOption(flag('--image-fetch-timeout <s>', 'seconds to download an image URL (default 5)').argParser(positive('--image-fetch-timeout')))
    .addOption(flag('--video-fetch-timeout <s>', 'seconds to download a video URL (default 30)').argParser(positive('--video-fetch-timeout')))
    .addOption(flag('--max-images-per-request <n>', 'most images in one request (default 8)').argParser(integer('--max-images-per-request', 0)))
    .addOption(flag('--max-videos-per-request <n>', 'most videos in one request (default 2)').argParser(integer('--max-videos-per-request', 0)))
    .addOption(flag('--max-queued-requests <n>', 'requests waiting beyond the active ones before 503 (default 32)').argParser(integer('--max-queued-requests', 0)))
    .addOption(flag('--max-messages <n>', 'most messages in one request (default 512)').argParser(integer('--max-messages', 1)))
    .addOption(flag('--max-content-parts <n>', 'most content parts in one request, all messages together (default 2048)').argParser(integer('--max-content-parts', 1)))
    .addOption(flag('--max-buffered-body-bytes <n>', 'request bodies held at once, all requests together, before 503 (default 256 MiB)').argParser(integer('--max-buffered-body-bytes', 1)))
    .addOption(
      flag('--text-special-tokens <mode>', 'special-token strings in message text, e.g. <|im_end|>: "plain" text (default) or "control" tokens as the official processor reads them').choices([
        'plain',
        'control',
      ]),
    )
    .addOption(flag('--log-json', 'log one JSON line per request on stderr'))
    .action(async (o) => {
      const ms = (s: number | undefined) => (s === undefined ? undefined : Math.round(s * 1000));
      await serve(o.model, await withLoadBars((options) => ModelWorker.load(o.model, options), o), o.maxActiveRequests, {
        host: o.host,
        port: o.port,
        modelId: o.servedModelName,
        apiKey: o.apiKey,
        allowedLocalMediaPath: o.allowedLocalMediaPath,
        allowedMediaDomains: o.allowedMediaDomains,
        allowPrivateNetwork: o.allowPrivateNetwork,
        maxBodyBytes: o.maxBodyBytes,
        maxImageBytes: o.maxImageBytes,
        maxVideoBytes: o.maxVideoBytes,
        imageFetchTimeoutMs: ms(o.imageFetchTimeout),
        videoFetchTimeoutMs: ms(o.videoFetchTimeout),
        maxImagesPerRequest: o.maxImagesPerRequest,
        maxVideosPerRequest: o.maxVideosPerRequest,
        maxQueuedRequests: o.maxQueuedRequests,
        maxImagePixels: o.maxImagePixels,
        maxMessages: o.maxMessages,
        maxContentParts: o.maxContentParts,
        maxBufferedBodyBytes: o.maxBufferedBodyBytes,
        textSpecialTokens: o.textSpecialTokens,
        log: o.logJson ? (line) => process.stderr.write(JSON.stringify(line) + '\n') : undefined,
      });
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
    const model = await loadModel(withoutCaches(o));
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

  addHubCommands(program);

  deviceOption(
    runtimeOptions(
      program.command('info').description('show the CPU features found, the kernel tiers this machine can run, the WebGPU adapters, and what a model would use'),
    ),
  )
    .addOption(flag('--json', 'print one JSON object'))
    .action((o) => printInfo({ threads: o.threads, compute: o.compute, isa: o.isa }, o.json === true, o.device as DeviceName | undefined));

  program
    .command('quantize')
    .description('write a copy of a checkpoint with block-quantized weights, which ask, chat and serve load directly (memory-mapped)')
    .addOption(flag('-m, --model <ref>', 'bf16 checkpoint folder, or hub id ORG/NAME[@revision]').makeOptionMandatory())
    .addOption(flag('--weights <format>', 'language model weights (decoder, embeddings, LM head)').choices([...WEIGHT_FORMATS]).makeOptionMandatory())
    .addOption(flag('--vision-weights <format>', 'vision encoder and projector weights').choices([...WEIGHT_FORMATS]).default('bf16'))
    .addOption(flag('-o, --out <dir>', 'output folder (new, or empty)').makeOptionMandatory())
    .action(async (o) => {
      const { result, seconds } = await rewriteCheckpoint(o.model, 'quantize', (from, onProgress) =>
        writeQuantizedCheckpoint({ from, out: o.out, formats: { language: o.weights, vision: o.visionWeights }, onProgress }),
      );
      const gb = (b: number) => (b / 1e9).toFixed(2);
      process.stderr.write(
        `wrote ${o.out}: ${result.quantized} of ${result.tensors} tensors quantized (language ${o.weights}, vision ${o.visionWeights}), ` +
          `${gb(result.bytesIn)} GB → ${gb(result.bytesOut)} GB in ${seconds.toFixed(1)} s\n`,
      );
    });

  addTrainCommand(program);
  addEvalCommand(program, (o) => loadModel(o as Record<string, number | undefined> & { model?: unknown }));

  runtimeThreads(
    program
      .command('merge-adapter')
      .description('write a copy of a checkpoint with a LoRA adapter merged into its weights (W + scaling·B·A), which ask, chat and serve load like any checkpoint'),
  )
    .addOption(flag('-m, --model <ref>', 'bf16 checkpoint folder, or hub id ORG/NAME[@revision]').makeOptionMandatory())
    .addOption(flag('--adapter <dir>', 'LoRA adapter folder (PEFT format: adapter_config.json, adapter_model.safetensors)').makeOptionMandatory())
    .addOption(flag('-o, --out <dir>', 'output folder (new, or empty)').makeOptionMandatory())
    .action(async (o) => {
      const { result, seconds } = await rewriteCheckpoint(o.model, 'merge', (from, onProgress) =>
        writeMergedCheckpoint({ from, adapter: o.adapter, out: o.out, threads: o.threads, onProgress }),
      );
      process.stderr.write(`wrote ${o.out}: adapter merged into ${result.merged} of ${result.tensors} tensors in ${seconds.toFixed(1)} s\n`);
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

  runtimeOptions(
    dev
      .command('compare-weights')
      .description('measure quantized weights against the checkpoint as stored (bf16): KL divergence, top-1 agreement, greedy decodes'),
  )
    .addOption(flag('-m, --model <ref>', 'bf16 checkpoint folder, or hub id ORG/NAME[@revision]').makeOptionMandatory())
    .addOption(flag('--weights <formats>', 'language model format(s) to measure: int8, int4, int4m (or bf16), several joined by commas').argParser(weightFormatList).makeOptionMandatory())
    .addOption(flag('--vision-weights <format>', 'vision encoder format of the measured loads').choices([...WEIGHT_FORMATS]).default('bf16'))
    .addOption(flag('--data <file>', 'prompts, one per line: a text, or a JSON conversation as vl3 inspect takes (default: a built-in set of about 2,300 positions)'))
    .addOption(flag('--positions <n>', 'most prompt positions scored; later prompts are not run').argParser(integer('--positions', 1)).default(DEFAULT_COMPARE_POSITIONS))
    .addOption(flag('--greedy-tokens <n>', 'greedy tokens decoded and compared per prompt').argParser(integer('--greedy-tokens', 0)).default(DEFAULT_GREEDY_TOKENS))
    .addOption(flag('--tmp-dir <dir>', 'where the reference logits go while the command runs (positions × vocabulary × 4 bytes; default: the OS temp folder)'))
    .addOption(flag('--json', 'print one JSON object'))
    .action(async (o) => {
      await runCompareWeights({
        model: o.model,
        weights: o.weights,
        visionWeights: o.visionWeights,
        data: o.data,
        positions: o.positions,
        greedyTokens: o.greedyTokens,
        tmpDir: o.tmpDir,
        threads: o.threads,
        compute: o.compute,
        isa: o.isa,
        json: o.json === true,
      });
    });

  usageHints(program, 'vl3');
  return program;
}

/** A usage error prints its one line and where to read more, not the whole help. */
function usageHints(command: Command, path: string): void {
  command.showHelpAfterError(`(see "${path} --help")`);
  for (const sub of command.commands) usageHints(sub, `${path} ${sub.name()}`);
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
