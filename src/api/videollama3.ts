import { DecodeBatcher } from '../engine/decode-batch.js';
import { DEFAULT_PREFILL_CHUNK, generateTokens, type FinishReason } from '../engine/generate.js';
import { FeatureCache, featureKey, type CacheStats } from '../engine/feature-cache.js';
import { KVCache } from '../engine/kv-cache.js';
import { PrefixCache, turnBreaks, type PrefixCacheStats } from '../engine/prefix-cache.js';
import { positionKeys, visualPositions, type VisualPositions } from '../engine/visual-tokens.js';
import { validateSampling, type SamplingOptions } from '../engine/sampling.js';
import { ABORTED, Scheduler, type SchedulerStats } from '../engine/scheduler.js';
import { resolveModel, type HubOptions } from '../hub/index.js';
import { loadCheckpoint, type Checkpoint } from '../model/checkpoint.js';
import { adapterMerge, loadAdapter } from '../model/lora-adapter.js';
import type { Qwen2Model } from '../model/qwen2.js';
import { VideoLLaMA3Model, type FeaturePlacement } from '../model/videollama3.js';
import { FormattedWeights, type WeightFormats } from '../model/weight-formats.js';
import { checkpointWeightSpecs, decoderWeights, flattenSpecs } from '../model/weight-names.js';
import type { EncodeOptions } from '../model/vision-encoder.js';
import type { Conversation, Message } from '../processing/conversation.js';
import { describeValue } from '../processing/describe.js';
import { DEFAULT_MAX_PIXELS } from '../processing/image.js';
import { InputError } from '../processing/input-error.js';
import { Processor, type ProcessedRequest, type ProcessOptions, type ProgressEvent } from '../processing/processor.js';
import { Tokenizer } from '../processing/tokenizer.js';
import type { Tensor } from '../tensor/tensor.js';
import { WEIGHT_FORMATS, type WeightFormat } from '../tensor/dtype.js';
import type { ChatModel } from './chat-model.js';
import { backendForDevice, createBackend, DEVICE_NAMES, type Backend, type BackendName, type ComputeMode, type DeviceName, type Isa } from '../tensor/index.js';
import { ChatStreamSource } from './chat-stream.js';
import { AbortError, InvalidOptionError, InvalidRequestError } from './errors.js';
import { CHAT_RULES, checkBudgets, checkNumbers, LOAD_RULES } from './options.js';
import { StopStrings } from './stop-strings.js';
import { TrimmedText } from './trimmed-text.js';

export interface LoadOptions {
  /** Kernel threads; default: the cores available to the process. */
  threads?: number;
  /** 'native' (default), 'reference' (plain TypeScript, slow; for checking), or a backend of your own making. */
  backend?: BackendName | Backend;
  /**
   * Where the model runs: 'cpu' (the `backend` named), 'webgpu' (weights uploaded once to the GPU, activations and KV
   * caches kept there), or 'auto': webgpu where an adapter is a real GPU (not llvmpipe/lavapipe or SwiftShader, which
   * the CPU outruns), else cpu. Default: $VL3_DEVICE, else 'cpu'. `vl3 info` shows the adapters and auto's choice.
   */
  device?: DeviceName;
  /**
   * How matmul multiplies: 'exact' (f32 activations, the fixtures' numerics) or 'bf16' (activations rounded to bf16,
   * products summed in f32: the official model's numerics in bf16, and the fast path of CPUs with bf16 dot
   * products). Default: $VL3_COMPUTE, else the fastest mode this CPU has.
   */
  compute?: ComputeMode;
  /** The native kernel tier (scalar, avx2, avxvnni, avx512, avx512bf16, neon); default $VL3_ISA, else the best this CPU has. */
  isa?: Isa;
  /**
   * The format of the language model's matmul weights, embedding table and LM head: 'bf16' (as stored), 'int8',
   * 'int4' or 'int4m' (block-quantized as they load, docs/quantization.md; a quantized checkpoint loads in its own
   * format). Decode reads every weight once per token: int8 and int4 decode about 1.3× and 2× faster than bf16 on a
   * CPU with AVX512-BF16 (BENCHMARKS.md, run 6), and take about half and a quarter of the memory.
   * Default: $VL3_WEIGHTS, else as the checkpoint stores them.
   */
  weights?: WeightFormat;
  /** The same for the vision encoder's and projector's matmul weights; default $VL3_VISION_WEIGHTS, else as stored. */
  visionWeights?: WeightFormat;
  /**
   * A LoRA adapter folder in PEFT's format (adapter_config.json, adapter_model.safetensors), merged into the weights
   * as they load (W + scaling·B·A in f32, rounded to the stored dtype, then quantized if asked), so that inference
   * runs at the base model's speed. Default: $VL3_ADAPTER, else none.
   */
  adapter?: string;
  /** Default visual token budget of a request (spec 2.3); default: the checkpoint's `max_tokens` (16384). */
  maxVisualTokens?: number;
  minVisualTokens?: number;
  /** Default video sampling (frames per second, most frames); default: the checkpoint's processor config. */
  fps?: number;
  maxFrames?: number;
  /** Requests holding memory (media, features, KV cache) at once; more wait their turn. Default 4. */
  maxActiveRequests?: number;
  /**
   * Bytes of projected image and video features kept for later requests (LRU): a second question about the same
   * media skips its encoding. 0 turns the cache off. Default: $VL3_FEATURE_CACHE_BYTES, else 1 GiB.
   */
  featureCacheBytes?: number;
  /**
   * Bytes of finished requests' KV caches kept (LRU) so that a request sharing the start of its prompt with an
   * earlier one (the next turn of a chat, a client re-sending the history) prefills only the rest: 56 KiB per
   * position for the 2B model, 112 KiB for the 7B. 0 turns the cache off. Default: $VL3_PREFIX_CACHE_BYTES, else
   * 2 GiB.
   */
  prefixCacheBytes?: number;
  /** Largest image, in pixels, a request may decode (read from its header first); default 178,956,970, twice
   * Pillow's MAX_IMAGE_PIXELS, where the reference refuses. A request decodes one image at a time. */
  maxImagePixels?: number;
  /** Where and how a hub id is fetched: cache folder, endpoint, token, offline, download progress. */
  hub?: HubOptions;
  /** Hears the weights being read while the model loads (bytes). */
  onProgress?: (event: LoadProgressEvent) => void;
  /** Hears what loading had to assume (a missing preprocessor config, say); default: `process.emitWarning`. */
  onWarning?: (message: string) => void;
}

/** Weights read from disk so far while loading, in bytes. */
export interface LoadProgressEvent {
  stage: 'load';
  done: number;
  total: number;
}

/** What a loaded model is and allows: for servers that bound requests and commands that show it. */
export interface ModelInfo {
  /** What runs the model: backend name, kernel threads, compute mode (and the native kernel tier, or the WebGPU adapter). */
  backend: { name: string; threads: number; compute: ComputeMode; isa?: string; adapter?: string };
  /** The formats the language model's and the vision side's matmul weights are held in. */
  weights: WeightFormats;
  /** Prompt plus answer, in tokens (the checkpoint's max_position_embeddings). */
  contextLength: number;
  /** Token ids the model scores (the config's vocab_size). */
  vocabSize: number;
  /** UTF-8 bytes of the longest token: a text of more than contextLength × maxTokenBytes bytes cannot fit. */
  maxTokenBytes: number;
  /** The budgets a request gets unless it sets its own (the load options, else the checkpoint's). */
  maxVisualTokens: number;
  minVisualTokens: number;
  fps: number;
  maxFrames: number;
  maxImagePixels: number;
}

export const DEFAULT_MAX_ACTIVE_REQUESTS = 4;
export const DEFAULT_FEATURE_CACHE_BYTES = 2 ** 30;
export const DEFAULT_PREFIX_CACHE_BYTES = 2 ** 31;

/** How the reuse caches of a model have served its requests (`VideoLLaMA3.cacheStats`). */
export interface ModelCacheStats {
  /** Projected image and video features, by the content of the media and the settings that shape them. */
  features: CacheStats;
  /** KV caches of finished requests' prompts, reused by requests that start the same way. */
  prefix: PrefixCacheStats;
}

/** A model's load: requests running and waiting, and its caches. */
export interface ModelStats {
  requests: SchedulerStats;
  caches: ModelCacheStats;
  decoding: DecodingStats;
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
  /** Largest image of this request, in pixels; default: the model's (`LoadOptions.maxImagePixels`). */
  maxImagePixels?: number;
  /**
   * How special-token strings typed in message text (`<|im_end|>`, `<image>`) are read: 'control' makes them the
   * control tokens they spell, as the official processor does (the default); 'plain' reads them as ordinary text,
   * so that text from an untrusted user cannot end its turn or open another role's.
   */
  textSpecialTokens?: 'control' | 'plain';
  /** Long work as it goes: frames decoded, frames encoded, prompt positions prefilled. */
  onProgress?: (event: ProgressEvent) => void;
  /** Generation ends before any of these strings; the text returned stops just before it (finishReason 'stop'). */
  stop?: string[];
  signal?: AbortSignal;
}

export interface Usage {
  promptTokens: number;
  /** Prompt tokens whose keys and values came from the prefix cache rather than prefill (part of promptTokens). */
  cachedTokens: number;
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

export interface DecodingStats {
  tokens: number;
  batches: number;
}

/** Something a chat can be started from: a message list or a conversation object with its own switches. */
export type ChatInput = Message[] | Conversation;

/** A loaded VideoLLaMA3 checkpoint, ready to answer. */
export class VideoLLaMA3 implements ChatModel {
  private readonly scheduler: Scheduler;
  /** Every request's decoding goes through it: requests decoding at the same time advance as one batch. */
  private decoder: DecodeBatcher | undefined;
  private readonly closing = new AbortController();
  private readonly features: FeatureCache;
  private readonly prefixes: PrefixCache;
  /** Token ids of `<|im_start|>assistant\n`, which starts each answer: prefill chunks may end after it. */
  private readonly turnStart: readonly number[];

  private constructor(
    readonly model: VideoLLaMA3Model,
    readonly processor: Processor,
    private readonly defaults: LoadOptions & Omit<ModelInfo, 'contextLength' | 'vocabSize' | 'maxTokenBytes' | 'backend' | 'weights'> & { featureCacheBytes: number; prefixCacheBytes: number },
  ) {
    this.scheduler = new Scheduler(defaults.maxActiveRequests ?? DEFAULT_MAX_ACTIVE_REQUESTS);
    this.features = new FeatureCache(defaults.featureCacheBytes);
    this.prefixes = new PrefixCache(defaults.prefixCacheBytes);
    this.turnStart = processor.tokenizer.encode('<|im_start|>assistant\n');
  }

  /**
   * Loads a checkpoint from a local folder, or from the Hugging Face hub by id (`DAMO-NLP-SG/VideoLLaMA3-2B`,
   * optionally `@revision`), downloading into the shared Hugging Face cache on first use.
   */
  static async load(ref: string, options: LoadOptions = {}): Promise<VideoLLaMA3> {
    const invalid = (option: string, message: string) => new InvalidOptionError(option, message);
    checkNumbers(options, LOAD_RULES, invalid);
    const cacheBytes = {
      featureCacheBytes: cacheBound(options, 'featureCacheBytes', 'VL3_FEATURE_CACHE_BYTES', DEFAULT_FEATURE_CACHE_BYTES),
      prefixCacheBytes: cacheBound(options, 'prefixCacheBytes', 'VL3_PREFIX_CACHE_BYTES', DEFAULT_PREFIX_CACHE_BYTES),
    };
    const named = typeof options.backend === 'string' || options.backend === undefined;
    if (named && options.backend !== undefined && options.backend !== 'native' && options.backend !== 'reference' && options.backend !== 'webgpu') {
      throw invalid('backend', `backend must be 'native', 'reference', 'webgpu' or a Backend, got ${describeValue(options.backend)}`);
    }
    const device = loadDevice(options, named, invalid);
    const folder = await resolveModel(ref, options.hub);
    if (options.compute !== undefined && options.compute !== 'exact' && options.compute !== 'bf16') {
      throw invalid('compute', `compute must be 'exact' or 'bf16', got ${describeValue(options.compute)}`);
    }
    let backend: Backend;
    try {
      const runtime = { threads: options.threads, compute: options.compute, isa: options.isa };
      const name = (options.backend as BackendName | undefined) ?? 'native';
      backend = !named ? (options.backend as Backend) : name === 'webgpu' ? createBackend('webgpu', runtime) : backendForDevice(device, name, runtime);
    } catch (e) {
      // An unknown tier, or one this CPU lacks: the option (or $VL3_ISA) named in the message; or no WebGPU device.
      throw invalid(options.isa !== undefined ? 'isa' : device !== 'cpu' ? 'device' : 'backend', (e as Error).message);
    }
    const formats: Partial<WeightFormats> = {};
    for (const [option, env, part] of [['weights', 'VL3_WEIGHTS', 'language'], ['visionWeights', 'VL3_VISION_WEIGHTS', 'vision']] as const) {
      const value = options[option] ?? (process.env[env] || undefined);
      if (value === undefined) continue;
      if (!(WEIGHT_FORMATS as readonly unknown[]).includes(value)) {
        throw invalid(option, `${option}${options[option] === undefined ? ` ($${env})` : ''} must be one of ${WEIGHT_FORMATS.join(', ')}, got ${describeValue(value)}`);
      }
      formats[part] = value as WeightFormat;
    }
    const adapterDir = options.adapter ?? (process.env.VL3_ADAPTER || undefined);
    if (adapterDir !== undefined && (typeof adapterDir !== 'string' || adapterDir === '')) {
      throw invalid('adapter', `adapter must be the path of an adapter folder, got ${describeValue(adapterDir)}`);
    }
    const checkpoint = loadCheckpoint(folder);
    // B·A is summed in f32 whatever the model computes in: a bf16 backend would round A and B first.
    // The adapter's tensors are host tensors: a device backend merges them on the CPU too.
    const mergeBackend = () => (backend.compute === 'exact' && backend.device === 'host' ? backend : createBackend('native', { compute: 'exact', threads: backend.device === 'host' ? backend.threads : undefined }));
    const merge = adapterDir === undefined ? undefined : adapterMerge(loadAdapter(adapterDir, checkpoint.config), adapterDir, mergeBackend());
    const weights = new FormattedWeights(checkpoint.weights, checkpoint.config.quantization, formats, merge);
    // Every tensor against the config, from the headers: a mismatch fails here, not on the first image request.
    for (const spec of checkpointWeightSpecs(checkpoint.config)) weights.check(spec);
    const tokenizer = await Tokenizer.load(folder);
    const warn = options.onWarning ?? ((message: string) => process.emitWarning(message, { code: 'VL3_CHECKPOINT' }));
    const processor = await Processor.load(folder, tokenizer, (file) => warn(`${file} is missing: the processor uses the released checkpoints' values`));
    const c = processor.config;
    const defaults = {
      ...options,
      ...cacheBytes,
      maxVisualTokens: options.maxVisualTokens ?? c.maxTokens,
      minVisualTokens: options.minVisualTokens ?? c.minTokens,
      fps: options.fps ?? c.fps,
      maxFrames: options.maxFrames ?? c.maxFrames,
      maxImagePixels: options.maxImagePixels ?? DEFAULT_MAX_PIXELS,
    };
    checkBudgets(defaults, checkpoint.config.maxPositionEmbeddings, invalid);
    const progress = options.onProgress;
    if (progress) {
      const total = checkpoint.weights.unreadBytes(flattenSpecs(decoderWeights(checkpoint.config)).map((s) => s.name));
      let done = 0;
      checkpoint.weights.onRead = (bytes) => progress({ stage: 'load', done: (done += bytes), total });
    }
    try {
      return new VideoLLaMA3(new VideoLLaMA3Model(checkpoint, backend, weights), processor, defaults);
    } finally {
      checkpoint.weights.onRead = undefined;
    }
  }

  /** The model's context and vocabulary, and the budgets requests get by default. */
  get info(): ModelInfo {
    const d = this.defaults;
    const b = this.model.backend;
    return {
      backend: {
        name: b.name,
        threads: b.threads,
        compute: b.compute,
        ...('isa' in b && { isa: String(b.isa) }),
        ...('adapter' in b && { adapter: (b.adapter as { name: string }).name }),
      },
      weights: { ...this.model.weights.formats },
      contextLength: this.config.maxPositionEmbeddings,
      vocabSize: this.config.vocabSize,
      maxTokenBytes: this.tokenizer.maxTokenBytes,
      maxVisualTokens: d.maxVisualTokens,
      minVisualTokens: d.minVisualTokens,
      fps: d.fps,
      maxFrames: d.maxFrames,
      maxImagePixels: d.maxImagePixels,
    };
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
      maxImagePixels: options.maxImagePixels ?? this.defaults.maxImagePixels,
      textSpecialTokens: options.textSpecialTokens,
      maxTextTokens: this.config.maxPositionEmbeddings - 1,
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
      // Temperature 0 means greedy, as OpenAI-style clients use it; sampling would divide by zero.
      doSample: options.temperature === 0 ? false : options.greedy === undefined ? g.doSample : !options.greedy,
      temperature: options.temperature ?? g.temperature,
      topK: options.topK ?? g.topK,
      topP: options.topP ?? g.topP,
      repetitionPenalty: options.repetitionPenalty ?? g.repetitionPenalty,
      seed: options.seed,
    };
  }

  /**
   * Answers a conversation, streaming text deltas; `result` settles with the whole answer, usage and timings.
   *
   * Requests share the model fairly (see `Scheduler`): each has its own KV cache, freed when it ends. Aborting
   * `options.signal` (or breaking out of the iteration) ends the request at its next step and frees its memory: a
   * request aborted before its first token rejects with `AbortError`, one aborted later resolves with the text so
   * far and finishReason 'abort'. Bad input rejects with `InvalidRequestError`.
   */
  chat(input: ChatInput, options: ChatOptions = {}): ChatStream {
    const cancel = new AbortController();
    const source = new ChatStreamSource(() => {
      cancel.abort();
      source.fail(new Error('the chat stream was closed before generation finished'));
    });
    if (this.closing.signal.aborted) {
      source.fail(new Error('the model was closed'));
      return source.stream();
    }
    const signal = options.signal ? AbortSignal.any([options.signal, cancel.signal, this.closing.signal]) : AbortSignal.any([cancel.signal, this.closing.signal]);
    this.answer(input, { ...options, signal }, source).catch((e: unknown) => source.fail(e));
    return source.stream();
  }

  /**
   * Reads a conversation into the prefix cache without answering it, so that a later request continuing it (the
   * same messages, then more) prefills only what follows. A chat calls it with the history and the answer just given
   * (`vl3 chat` does, while the user types): the answer's keys and values from decoding are not reused, since their
   * rounding differs from a prefill's and the next answer would then differ from the one without the cache. Media,
   * budgets and switches (`addSystemPrompt`, …) must be those of the later request for its prompt to match; the
   * generation prompt is left off unless `addGenerationPrompt` says otherwise. Runs as a request of its own (admitted,
   * scheduled and abortable like `chat`); resolves with the prompt's size and the part of it that was cached already,
   * or undefined, having done nothing, when the prefix cache is off.
   */
  async cachePrompt(input: ChatInput, options: Omit<ChatOptions, 'maxNewTokens' | 'stop'> = {}): Promise<Pick<Usage, 'promptTokens' | 'cachedTokens'> | undefined> {
    if (!this.prefixes.enabled) return undefined;
    const { usage } = await this.chat(input, { ...options, addGenerationPrompt: options.addGenerationPrompt ?? false, maxNewTokens: 0 }).result;
    return { promptTokens: usage.promptTokens, cachedTokens: usage.cachedTokens };
  }

  /** Aborts running and waiting requests and refuses new ones; the weights are freed when the object is dropped. */
  async close(): Promise<void> {
    this.closing.abort();
    this.tokenizer.close();
  }

  /** Requests admitted and waiting: for a server's queue limits and health reports. */
  get requests(): SchedulerStats {
    return this.scheduler.stats;
  }

  /** Hits, misses, entries and bytes of the feature and prefix caches. */
  get cacheStats(): ModelCacheStats {
    return { features: this.features.stats, prefix: this.prefixes.stats };
  }

  /** `requests`, `cacheStats` and `decoding` together, as `ModelWorker` answers them from its thread. */
  stats(): Promise<ModelStats> {
    return Promise.resolve({ requests: this.requests, caches: this.cacheStats, decoding: this.decoding });
  }

  /** Tokens decoded and the forward passes that decoded them (batches of the requests decoding at the same time). */
  get decoding(): DecodingStats {
    return { tokens: this.decoder?.tokens ?? 0, batches: this.decoder?.batches ?? 0 };
  }

  /** Checks the request's own settings before it waits for anything. */
  private validated(options: ChatOptions): { sampling: SamplingOptions; stops: StopStrings } {
    const invalid = (path: string, message: string) => new InvalidRequestError(message, { path });
    checkNumbers(options, CHAT_RULES, invalid);
    checkBudgets(
      { maxVisualTokens: options.maxVisualTokens ?? this.defaults.maxVisualTokens, minVisualTokens: options.minVisualTokens ?? this.defaults.minVisualTokens },
      this.config.maxPositionEmbeddings,
      invalid,
    );
    if (options.textSpecialTokens !== undefined && options.textSpecialTokens !== 'control' && options.textSpecialTokens !== 'plain') {
      throw invalid('textSpecialTokens', `textSpecialTokens must be 'control' or 'plain', got ${describeValue(options.textSpecialTokens)}`);
    }
    if (options.stop !== undefined && (!Array.isArray(options.stop) || !options.stop.every((s) => typeof s === 'string'))) {
      throw invalid('stop', 'stop must be a list of strings');
    }
    try {
      const sampling = this.samplingFor(options);
      validateSampling(sampling);
      return { sampling, stops: new StopStrings(options.stop ?? []) };
    } catch (e) {
      throw new InvalidRequestError((e as Error).message, { cause: e });
    }
  }

  private async answer(input: ChatInput, options: ChatOptions & { signal: AbortSignal }, out: ChatStreamSource): Promise<void> {
    const { signal } = options;
    const started = performance.now();
    const { sampling, stops } = this.validated(options);
    const release = await this.scheduler.admit(signal);
    if (!release) throw new AbortError();
    try {
      const request = await this.prepare(input, options).catch((e: unknown) => {
        if (signal.aborted) throw new AbortError();
        if (e instanceof InvalidRequestError) throw e;
        throw new InvalidRequestError((e as Error).message, { cause: e, path: e instanceof InputError ? e.path : undefined });
      });
      const context = this.config.maxPositionEmbeddings;
      if (request.llmInputIds.length >= context) {
        // The advice fits the prompt: media budgets cannot shorten a prompt whose text alone is too long.
        const visual = request.visualTokens;
        const advice =
          visual === 0 || request.llmInputIds.length - visual >= context ? 'shorten the text' : 'use fewer or smaller media (maxVisualTokens, fps, maxFrames) or shorten the text';
        throw new InvalidRequestError(`the prompt has ${request.llmInputIds.length} tokens (${visual} of them visual); the model's context is ${context}: ${advice}`);
      }
      const endPrompt = await this.scheduler.beginPrompt(signal);
      if (!endPrompt) throw new AbortError();
      try {
        await this.generate(request, options, sampling, stops, out, endPrompt, started);
      } finally {
        endPrompt();
      }
    } finally {
      release();
    }
  }

  /**
   * Reuses what the caches hold, encodes the media the rest of the prompt needs, prefills and decodes; `endPrompt` is
   * called once the first token is out. The prompt's keys and values go to the prefix cache when it ends.
   */
  private async generate(
    request: ProcessedRequest,
    options: ChatOptions & { signal: AbortSignal },
    sampling: SamplingOptions,
    stops: StopStrings,
    out: ChatStreamSource,
    endPrompt: () => void,
    started: number,
  ): Promise<void> {
    const { signal } = options;
    const progress = options.onProgress;
    const ids = request.llmInputIds;
    const L = ids.length;
    const v = request.visuals;
    const visual = visualPositions(ids, this.model.imageTokenId, v?.numTokens ?? [], request.keepMask);
    const itemKeys = v && (this.features.enabled || this.prefixes.enabled) ? this.featureKeys(request) : undefined;
    const breaks = turnBreaks(ids, this.turnStart, DEFAULT_PREFILL_CHUNK);
    const keys = this.prefixes.enabled ? positionKeys(ids, visual, itemKeys ?? []) : undefined;
    const reuse = keys && this.prefixes.match(keys, { limit: L - 1, chunk: DEFAULT_PREFILL_CHUNK, breaks });
    const P = reuse?.length ?? 0;

    const placements = await this.visualFeatures(request, visual, P, itemKeys, signal, progress);
    const d = this.config;
    const maxNewTokens = options.maxNewTokens ?? 1024;
    const cache = new KVCache(this.model.backend, d.numHiddenLayers, d.numKeyValueHeads, this.llm.headDim, d.maxPositionEmbeddings, L + Math.min(maxNewTokens, 1024));
    let result: ChatResult;
    try {
      if (reuse && (await this.scheduler.step(() => cache.loadPrefix(reuse.prefix, P), signal)) === ABORTED) throw new AbortError();
      // A stop string ends generation the way an abort does, at the next step; it is then reported as 'stop'.
      const stopped = new AbortController();
      const tokens = generateTokens(this.llm, {
        promptEmbeds: this.model.embedTokens(ids.slice(P), placements),
        cache,
        prefillBreaks: breaks,
        onPrefillProgress: progress && ((done, total) => progress({ stage: 'prefill', done, total })),
        maxNewTokens,
        sampling,
        stopTokenIds: this.generationConfig.eosTokenIds,
        signal: AbortSignal.any([signal, stopped.signal]),
        step: (work) => this.scheduler.step(work, signal),
        decoder: (this.decoder ??= new DecodeBatcher(this.llm, (work) => this.scheduler.step(work))),
      });
      result = await this.stream(tokens, request, stops, stopped, out, endPrompt, started, signal);
    } finally {
      // Only prompt positions are kept: the answer's were computed one token at a time, whose float rounding differs
      // from a prefill's, so a later prompt re-reads them (or `cachePrompt` does), and its answer stays bit-exact.
      if (keys) this.prefixes.store(keys, cache.detach(Math.min(cache.length, L)));
      else cache.release();
    }
    // Settled after the store, so that a client's next turn finds this one's prompt in the cache.
    out.finish(result);
  }

  /** The feature cache's key of every visual item of a request. */
  private featureKeys(request: ProcessedRequest): string[] {
    const v = request.visuals!;
    const width = v.pixelValues.dim(1);
    const pixels = v.pixelValues.data;
    const b = this.model.backend;
    let row = 0;
    return v.gridSizes.map((grid, i) => {
      const rows = grid[0] * grid[1] * grid[2];
      const key = featureKey(pixels.subarray(row * width, (row + rows) * width), {
        modality: v.modals[i]!,
        grid,
        mergeSize: v.mergeSizes[i]!,
        visionWeights: this.model.weights.formats.vision,
        compute: b.compute,
        isa: 'isa' in b ? String(b.isa) : undefined,
      });
      row += rows;
      return key;
    });
  }

  /**
   * Features of every item with a visual token at or after prompt position `from` (the rest are in the reused
   * prefix), from the feature cache or encoded, one item per scheduler turn: an item is always encoded alone, so its
   * features are the same bits whichever other items its request has, or whether the cache had them.
   */
  private async visualFeatures(
    request: ProcessedRequest,
    visual: VisualPositions,
    from: number,
    itemKeys: string[] | undefined,
    signal: AbortSignal,
    progress: ChatOptions['onProgress'],
  ): Promise<FeaturePlacement[]> {
    const v = request.visuals;
    if (!v) return [];
    const wanted = new Map<number, { from: number[]; to: number[] }>();
    visual.positions.forEach((p, j) => {
      if (p < from) return;
      const item = visual.items[j]!;
      const rows = wanted.get(item) ?? { from: [], to: [] };
      rows.from.push(visual.rows[j]!);
      rows.to.push(p - from);
      wanted.set(item, rows);
    });
    const firstRow = v.gridSizes.map((_, i) => v.gridSizes.slice(0, i).reduce((n, [t, h, w]) => n + t * h * w, 0));
    const found = new Map<number, Tensor>();
    for (const item of wanted.keys()) {
      const cached = itemKeys && this.features.get(itemKeys[item]!);
      if (cached) found.set(item, cached);
    }
    const toEncode = [...wanted.keys()].filter((item) => !found.has(item));
    const totalFrames = toEncode.reduce((n, item) => n + v.gridSizes[item]![0], 0);
    let framesDone = 0;
    for (const item of toEncode) {
      const [frames, gridH, gridW] = v.gridSizes[item]!;
      const pixels = v.pixelValues.rows(firstRow[item]!, firstRow[item]! + frames * gridH * gridW);
      const encoded = await this.scheduler.step(
        () =>
          this.model.encodeVisuals(pixels, [{ frames, gridH, gridW, mergeSize: v.mergeSizes[item]! }], {
            onProgress: progress && ((done) => progress({ stage: 'encode', done: framesDone + done, total: totalFrames })),
          }),
        signal,
      );
      if (encoded === ABORTED) throw new AbortError();
      framesDone += frames;
      if (itemKeys) this.features.set(itemKeys[item]!, encoded);
      found.set(item, encoded);
    }
    return [...wanted].map(([item, rows]) => ({ features: found.get(item)!, from: Int32Array.from(rows.from), to: Int32Array.from(rows.to) }));
  }

  /** Streams the answer of a running generation into `out`; returns the whole answer with usage and timings. */
  private async stream(
    tokens: ReturnType<typeof generateTokens>,
    request: ProcessedRequest,
    stops: StopStrings,
    stopped: AbortController,
    out: ChatStreamSource,
    endPrompt: () => void,
    started: number,
    signal: AbortSignal,
  ): Promise<ChatResult> {
    const decoder = this.tokenizer.createStreamDecoder({ skipSpecialTokens: true });
    // The answer is trimmed, as the official pipeline returns it; the deltas are trimmed the same way.
    const trimmed = new TrimmedText();
    let next = await tokens.next();
    endPrompt();
    while (!next.done) {
      out.push(trimmed.push(stops.push(decoder.push(next.value))));
      if (stops.stopped) stopped.abort();
      next = await tokens.next();
    }
    out.push(trimmed.push(stops.push(decoder.flush())));
    out.push(trimmed.push(stops.flush()));
    const summary = next.value;
    if (signal.aborted && summary.tokenIds.length === 0) throw new AbortError();
    const { tokenIds } = summary;
    const seconds = (ms: number) => Math.max(ms, 1e-9) / 1000;
    return {
      text: stops.answer.trim(),
      tokenIds,
      finishReason: stops.stopped && !signal.aborted ? 'stop' : summary.finishReason,
      usage: { promptTokens: summary.promptTokens, cachedTokens: summary.cachedTokens, visualTokens: request.visualTokens, completionTokens: tokenIds.length },
      timings: {
        prefillMs: summary.prefillMs,
        decodeMs: summary.decodeMs,
        totalMs: performance.now() - started,
        prefillTokensPerSecond: (summary.promptTokens - summary.cachedTokens) / seconds(summary.prefillMs),
        decodeTokensPerSecond: Math.max(0, tokenIds.length - 1) / seconds(summary.decodeMs),
      },
    };
  }
}

/** A cache bound from its option, else its environment variable, else the default; checked as a byte count. */
function cacheBound(options: LoadOptions, option: 'featureCacheBytes' | 'prefixCacheBytes', env: string, fallback: number): number {
  const given = options[option];
  const raw = given ?? (process.env[env] || undefined);
  if (raw === undefined) return fallback;
  const value = typeof raw === 'string' ? Number(raw) : raw;
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new InvalidOptionError(option, `${option}${given === undefined ? ` ($${env})` : ''} must be an integer number of bytes >= 0, got ${describeValue(raw)}`);
  }
  return value;
}

/** The device option (or $VL3_DEVICE), checked: a Backend object, or the reference backend, decides for itself. */
function loadDevice(options: LoadOptions, named: boolean, invalid: (option: string, message: string) => Error): DeviceName {
  const fromEnv = options.device === undefined;
  const device = options.device ?? (process.env.VL3_DEVICE || undefined);
  if (device === undefined) return 'cpu';
  const source = fromEnv ? 'device ($VL3_DEVICE)' : 'device';
  if (!(DEVICE_NAMES as readonly unknown[]).includes(device)) {
    throw invalid('device', `${source} must be one of ${DEVICE_NAMES.join(', ')}, got ${describeValue(device)}`);
  }
  if (!fromEnv && device !== 'cpu' && (!named || options.backend === 'reference')) {
    throw invalid('device', `device '${device}' cannot be combined with backend ${named ? "'reference'" : 'given as a Backend'}: that backend decides where it runs`);
  }
  if (fromEnv && (!named || options.backend === 'reference')) return 'cpu';
  return device as DeviceName;
}
