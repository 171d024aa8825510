import { generateTokens, type FinishReason, type GenerationResult } from '../engine/generate.js';
import type { SamplingOptions } from '../engine/sampling.js';
import { loadCheckpoint, type Checkpoint } from '../model/checkpoint.js';
import type { Qwen2Model } from '../model/qwen2.js';
import { VideoLLaMA3Model } from '../model/videollama3.js';
import type { EncodeOptions } from '../model/vision-encoder.js';
import type { Conversation, Message } from '../processing/conversation.js';
import { Processor, type ProcessedRequest, type ProcessOptions, type ProgressEvent } from '../processing/processor.js';
import { Tokenizer } from '../processing/tokenizer.js';
import type { Tensor } from '../tensor/tensor.js';
import { createBackend, type BackendName } from '../tensor/index.js';

export interface LoadOptions {
  /** Kernel threads; default: the cores available to the process. */
  threads?: number;
  /** 'native' (default) or 'reference' (plain TypeScript, slow; for checking). */
  backend?: BackendName;
  /** Default visual token budget of a request (spec 2.3); default: the checkpoint's `max_tokens` (16384). */
  maxVisualTokens?: number;
  minVisualTokens?: number;
  /** Default video sampling (frames per second, most frames); default: the checkpoint's processor config. */
  fps?: number;
  maxFrames?: number;
}

export interface ChatOptions {
  /** Default 1024. */
  maxNewTokens?: number;
  /** Greedy decoding (argmax); default: the checkpoint's generation config (`do_sample`). */
  greedy?: boolean;
  temperature?: number;
  topK?: number;
  topP?: number;
  /** Applied to generated tokens only, as the official `generate` does. Default: the generation config's. */
  repetitionPenalty?: number;
  seed?: number;
  /** Insert the default VideoLLaMA3 system prompt when the conversation has none. Default false. */
  addSystemPrompt?: boolean;
  /** End the prompt with `<|im_start|>assistant\n`. Default true. */
  addGenerationPrompt?: boolean;
  /** Visual token budget of this request; default: the model's. */
  maxVisualTokens?: number;
  minVisualTokens?: number;
  /** Relative media paths are resolved against this folder (default: the working directory). */
  baseDir?: string;
  /** Video sampling for items that do not set their own: frames per second and most frames kept. */
  fps?: number;
  maxFrames?: number;
  /** Prune unchanged video tokens (DiffFP); default: the checkpoint's `use_token_compression`. */
  tokenCompression?: boolean;
  /** Long work as it goes: frames decoded, frames encoded, prompt positions prefilled. */
  onProgress?: (event: ProgressEvent) => void;
  signal?: AbortSignal;
}

export interface Usage {
  promptTokens: number;
  visualTokens: number;
  completionTokens: number;
}

export interface Timings {
  prefillMs: number;
  decodeMs: number;
  totalMs: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
}

export interface ChatResult {
  /** The answer, decoded without special tokens and trimmed, as the official pipeline returns it. */
  text: string;
  tokenIds: number[];
  finishReason: FinishReason;
  usage: Usage;
  timings: Timings;
}

/** Text deltas as they are generated; `result` settles when generation ends. */
export interface ChatStream extends AsyncIterable<string> {
  readonly result: Promise<ChatResult>;
}

/** Something a chat can be started from: a message list or a conversation object with its own switches. */
export type ChatInput = Message[] | Conversation;

/** A loaded VideoLLaMA3 checkpoint, ready to answer. */
export class VideoLLaMA3 {
  private constructor(
    readonly model: VideoLLaMA3Model,
    readonly processor: Processor,
    private readonly defaults: LoadOptions,
  ) {}

  static async load(folder: string, options: LoadOptions = {}): Promise<VideoLLaMA3> {
    const backend = createBackend(options.backend ?? 'native', options.threads);
    const checkpoint = loadCheckpoint(folder);
    const tokenizer = await Tokenizer.load(folder);
    const processor = await Processor.load(folder, tokenizer);
    return new VideoLLaMA3(new VideoLLaMA3Model(checkpoint, backend), processor, options);
  }

  get checkpoint(): Checkpoint {
    return this.model.checkpoint;
  }

  get config() {
    return this.checkpoint.config;
  }

  get generationConfig() {
    return this.checkpoint.generationConfig;
  }

  get tokenizer(): Tokenizer {
    return this.processor.tokenizer;
  }

  get llm(): Qwen2Model {
    return this.model.llm;
  }

  /** Loads the media, renders and tokenizes a conversation exactly as the official processor does. */
  prepare(input: ChatInput, options: ChatOptions = {}): Promise<ProcessedRequest> {
    const processOptions: ProcessOptions = {
      addSystemPrompt: options.addSystemPrompt,
      addGenerationPrompt: options.addGenerationPrompt,
      maxVisualTokens: options.maxVisualTokens ?? this.defaults.maxVisualTokens,
      minVisualTokens: options.minVisualTokens ?? this.defaults.minVisualTokens,
      baseDir: options.baseDir,
      fps: options.fps ?? this.defaults.fps,
      maxFrames: options.maxFrames ?? this.defaults.maxFrames,
      tokenCompression: options.tokenCompression ?? this.config.useTokenCompression,
      signal: options.signal,
      onProgress: options.onProgress,
    };
    return this.processor.process(input, processOptions);
  }

  /** Projected features of every visual token of a prepared request (before pruning), or undefined without media. */
  encodeVisuals(request: ProcessedRequest, options?: EncodeOptions): Tensor | undefined {
    const v = request.visuals;
    if (!v) return undefined;
    const grids = v.gridSizes.map(([frames, gridH, gridW], i) => ({ frames, gridH, gridW, mergeSize: v.mergeSizes[i]! }));
    return this.model.encodeVisuals(v.pixelValues, grids, options);
  }

  /** Prompt embeddings [L', hidden] of a prepared request: its pruned ids, kept visual features in place. */
  embed(request: ProcessedRequest, visualFeatures = this.encodeVisuals(request)): Tensor {
    return this.model.embedPrompt(request.llmInputIds, visualFeatures, request.keepMask);
  }

  /** The sampling settings a chat uses: the checkpoint's generation config, overridden by the options. */
  samplingFor(options: ChatOptions): SamplingOptions {
    const g = this.generationConfig;
    return {
      doSample: options.greedy === undefined ? g.doSample : !options.greedy,
      temperature: options.temperature ?? g.temperature,
      topK: options.topK ?? g.topK,
      topP: options.topP ?? g.topP,
      repetitionPenalty: options.repetitionPenalty ?? g.repetitionPenalty,
      seed: options.seed,
    };
  }

  chat(input: ChatInput, options: ChatOptions = {}): ChatStream {
    let settle!: { resolve: (r: ChatResult) => void; reject: (e: unknown) => void };
    const result = new Promise<ChatResult>((resolve, reject) => (settle = { resolve, reject }));
    result.catch(() => {}); // a caller who only iterates sees the error there
    const self = this;
    async function* deltas(): AsyncGenerator<string> {
      let tokens: AsyncGenerator<number, GenerationResult> | undefined;
      let settled = false;
      try {
        const started = performance.now();
        const request = await self.prepare(input, options);
        const progress = options.onProgress;
        const features = self.encodeVisuals(request, { onProgress: progress && ((done, total) => progress({ stage: 'encode', done, total })) });
        tokens = generateTokens(self.llm, {
          promptEmbeds: self.embed(request, features),
          onPrefillProgress: progress && ((done, total) => progress({ stage: 'prefill', done, total })),
          maxNewTokens: options.maxNewTokens ?? 1024,
          sampling: self.samplingFor(options),
          stopTokenIds: self.generationConfig.eosTokenIds,
          signal: options.signal,
        });
        const decoder = self.tokenizer.createStreamDecoder({ skipSpecialTokens: true });
        let next = await tokens.next();
        while (!next.done) {
          const delta = decoder.push(next.value);
          if (delta) yield delta;
          next = await tokens.next();
        }
        const tail = decoder.flush();
        if (tail) yield tail;
        const g = next.value;
        settled = true;
        const seconds = (ms: number) => Math.max(ms, 1e-9) / 1000;
        settle.resolve({
          text: self.tokenizer.decode(g.tokenIds, { skipSpecialTokens: true }).trim(),
          tokenIds: g.tokenIds,
          finishReason: g.finishReason,
          usage: { promptTokens: g.promptTokens, visualTokens: request.visualTokens, completionTokens: g.tokenIds.length },
          timings: {
            prefillMs: g.prefillMs,
            decodeMs: g.decodeMs,
            totalMs: performance.now() - started,
            prefillTokensPerSecond: g.promptTokens / seconds(g.prefillMs),
            decodeTokensPerSecond: Math.max(0, g.tokenIds.length - 1) / seconds(g.decodeMs),
          },
        });
      } catch (e) {
        settled = true;
        settle.reject(e);
        throw e;
      } finally {
        if (!settled) {
          // The caller stopped iterating early: end generation now so its KV cache is freed at once.
          await tokens?.return(undefined as never);
          settle.reject(new Error('the chat stream was closed before generation finished'));
        }
      }
    }
    const iterator = deltas();
    let iterated = false;
    return {
      // Awaiting `result` without iterating still runs the generation (the deltas are then dropped).
      get result() {
        if (!iterated) {
          iterated = true;
          void (async () => {
            try {
              for await (const _ of iterator);
            } catch {
              // reported through `result`
            }
          })();
        }
        return result;
      },
      [Symbol.asyncIterator]: () => {
        if (iterated) throw new Error('a chat stream can be iterated once');
        iterated = true;
        return iterator;
      },
    };
  }
}
