import { generateTokens, type FinishReason } from '../engine/generate.js';
import type { SamplingOptions } from '../engine/sampling.js';
import { loadCheckpoint, type Checkpoint } from '../model/checkpoint.js';
import { Qwen2Model } from '../model/qwen2.js';
import { renderChatTemplate } from '../processing/chat-template.js';
import { collectMedia, parseConversation, type Conversation, type Message } from '../processing/conversation.js';
import { Tokenizer } from '../processing/tokenizer.js';
import type { Tensor } from '../tensor/tensor.js';
import { createBackend, type BackendName } from '../tensor/index.js';

export interface LoadOptions {
  /** Kernel threads; default: the cores available to the process. */
  threads?: number;
  /** 'native' (default) or 'reference' (plain TypeScript, slow; for checking). */
  backend?: BackendName;
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

export interface PreparedPrompt {
  /** The chat template's output. */
  prompt: string;
  inputIds: number[];
}

/** Something a chat can be started from: a message list or a conversation object with its own switches. */
export type ChatInput = Message[] | Conversation;

/** A loaded VideoLLaMA3 checkpoint, ready to answer. */
export class VideoLLaMA3 {
  private constructor(
    readonly checkpoint: Checkpoint,
    readonly tokenizer: Tokenizer,
    readonly llm: Qwen2Model,
  ) {}

  static async load(folder: string, options: LoadOptions = {}): Promise<VideoLLaMA3> {
    const backend = createBackend(options.backend ?? 'native', options.threads);
    const checkpoint = loadCheckpoint(folder);
    const tokenizer = await Tokenizer.load(folder);
    const llm = new Qwen2Model(checkpoint.config, checkpoint.weights, backend);
    return new VideoLLaMA3(checkpoint, tokenizer, llm);
  }

  get config() {
    return this.checkpoint.config;
  }

  get generationConfig() {
    return this.checkpoint.generationConfig;
  }

  /** Renders and tokenizes a conversation exactly as the official processor does. */
  prepare(input: ChatInput, options: Pick<ChatOptions, 'addSystemPrompt' | 'addGenerationPrompt'> = {}): PreparedPrompt {
    const conversation = parseConversation(input);
    const prompt = renderChatTemplate(this.tokenizer.chatTemplate, conversation.messages, {
      addSystemPrompt: options.addSystemPrompt ?? conversation.addSystemPrompt,
      addGenerationPrompt: options.addGenerationPrompt ?? conversation.addGenerationPrompt,
    });
    const media = collectMedia(conversation.messages);
    if (media.length > 0) {
      throw new Error(`conversation has ${media.length} image/video part(s): this version answers text conversations only`);
    }
    return { prompt, inputIds: this.tokenizer.encode(prompt) };
  }

  /** Prompt embeddings [L, hidden] for prepared ids. */
  embed(inputIds: readonly number[]): Tensor {
    return this.llm.embed(inputIds);
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
      try {
        const started = performance.now();
        const { inputIds } = self.prepare(input, options);
        const tokens = generateTokens(self.llm, {
          promptEmbeds: self.embed(inputIds),
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
        const seconds = (ms: number) => Math.max(ms, 1e-9) / 1000;
        settle.resolve({
          text: self.tokenizer.decode(g.tokenIds, { skipSpecialTokens: true }).trim(),
          tokenIds: g.tokenIds,
          finishReason: g.finishReason,
          usage: { promptTokens: g.promptTokens, visualTokens: 0, completionTokens: g.tokenIds.length },
          timings: {
            prefillMs: g.prefillMs,
            decodeMs: g.decodeMs,
            totalMs: performance.now() - started,
            prefillTokensPerSecond: g.promptTokens / seconds(g.prefillMs),
            decodeTokensPerSecond: Math.max(0, g.tokenIds.length - 1) / seconds(g.decodeMs),
          },
        });
      } catch (e) {
        settle.reject(e);
        throw e;
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
