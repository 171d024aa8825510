import { isAbsolute, resolve } from 'node:path';
import { renderChatTemplate } from './chat-template.js';
import { collectMedia, isDataUrl, parseConversation, withVideoFrames, type Conversation, type MediaItem } from './conversation.js';
import { diffFpMask, pruneImageTokens } from './diffp.js';
import { loadImage } from './image.js';
import { preprocessVisuals, type VisualBatch, type VisualInput } from './patches.js';
import { expandImageTokens } from './placeholders.js';
import { loadProcessorConfig, type ProcessorConfig } from './processor-config.js';
import type { Tokenizer } from './tokenizer.js';
import { decodeVideo, planVideo } from './video.js';

/** Long work a request reports as it goes. */
export interface ProgressEvent {
  stage: 'decode' | 'encode' | 'prefill';
  done: number;
  total: number;
}

export interface ProcessOptions {
  /** Insert the default system prompt when the conversation has none; default: the conversation's own switch. */
  addSystemPrompt?: boolean;
  addGenerationPrompt?: boolean;
  /** Visual token budget of the request (spec 2.3); default: the checkpoint's preprocessor config. */
  minVisualTokens?: number;
  maxVisualTokens?: number;
  /** Refuse images of more pixels than this (header check before decoding). */
  maxImagePixels?: number;
  /** Relative media paths are resolved against this folder (default: the working directory). */
  baseDir?: string;
  /** Prune unchanged video tokens (DiffFP); default true, as `use_token_compression` in the released configs. */
  tokenCompression?: boolean;
  /** Video sampling defaults for items that do not set their own; default: the checkpoint's processor config. */
  fps?: number;
  maxFrames?: number;
  signal?: AbortSignal;
  onProgress?: (event: ProgressEvent) => void;
}

/** What the model needs for one request, built exactly as the official processor builds it. */
export interface ProcessedRequest {
  conversation: Conversation;
  /** The chat template's output (one `<image>` per image and per video frame). */
  prompt: string;
  /** Token ids of the prompt with every `<image>` expanded to its visual token count. */
  inputIds: number[];
  /** Pixel values and grids of the visual items, in order of appearance; absent for text-only requests. */
  visuals?: VisualBatch;
  /** Timestamps (seconds) of the sampled frames of each video, in order of the videos. */
  videoTimestamps: Float64Array[];
  /** DiffFP keep mask over all visual tokens (1 = kept); all ones without videos or with compression off. */
  keepMask?: Uint8Array;
  /** `inputIds` without the pruned image tokens: what the language model reads. */
  llmInputIds: number[];
  /** Visual tokens in `llmInputIds` (after pruning). */
  visualTokens: number;
}

/** Where a media item sits in the conversation, for error messages. */
function where(item: MediaItem): string {
  return `messages[${item.location.messageIndex}].content[${item.location.partIndex}]`;
}

/**
 * The processor: conversation → media loaded and resized → pixel values, prompt text and token ids. It owns no model
 * weights; the same instance serves any number of requests.
 */
export class Processor {
  constructor(
    readonly tokenizer: Tokenizer,
    readonly config: ProcessorConfig,
  ) {}

  static async load(folder: string, tokenizer: Tokenizer): Promise<Processor> {
    return new Processor(tokenizer, await loadProcessorConfig(folder));
  }

  async process(input: unknown, options: ProcessOptions = {}): Promise<ProcessedRequest> {
    const conversation = parseConversation(input);
    const media = collectMedia(conversation.messages);
    const visualInputs: VisualInput[] = [];
    const videos: { numFrames: number; timestamps: number[] }[] = [];
    const videoTimestamps: Float64Array[] = [];
    const totalFrames = { planned: 0, decoded: 0 };
    for (const [index, item] of media.entries()) {
      const source = isDataUrl(item.source) || isAbsolute(item.source) ? item.source : resolve(options.baseDir ?? '.', item.source);
      try {
        if (item.kind === 'image') {
          visualInputs.push({ modality: 'image', image: await loadImage(source, { maxPixels: options.maxImagePixels, index }) });
          continue;
        }
        const plan = await planVideo(source, {
          fps: item.fps ?? options.fps ?? this.config.fps,
          maxFrames: item.maxFrames ?? options.maxFrames ?? this.config.maxFrames,
          startTime: item.startTime,
          endTime: item.endTime,
          signal: options.signal,
        });
        totalFrames.planned += plan.frameCount;
        videos.push({ numFrames: plan.frameCount, timestamps: Array.from(plan.timestamps) });
        videoTimestamps.push(plan.timestamps);
        visualInputs.push({
          modality: 'video',
          frames: {
            width: plan.width,
            height: plan.height,
            frameCount: plan.frameCount,
            // Decoded while preprocessing runs: each frame is resized and patchified as it arrives.
            read: (onFrame) =>
              decodeVideo(plan, (frame, i) => {
                onFrame(frame, i);
                options.onProgress?.({ stage: 'decode', done: ++totalFrames.decoded, total: totalFrames.planned });
              }, { signal: options.signal }),
          },
        });
      } catch (err) {
        throw new Error(`${where(item)}: ${(err as Error).message}`);
      }
    }
    const visuals = visualInputs.length
      ? await preprocessVisuals(visualInputs, { config: this.config, minTokens: options.minVisualTokens, maxTokens: options.maxVisualTokens })
      : undefined;

    const messages = videos.length ? withVideoFrames(conversation.messages, videos) : conversation.messages;
    const prompt = renderChatTemplate(this.tokenizer.chatTemplate, messages, {
      addSystemPrompt: options.addSystemPrompt ?? conversation.addSystemPrompt,
      addGenerationPrompt: options.addGenerationPrompt ?? conversation.addGenerationPrompt,
    });
    // One count per image token of the prompt: one per image, one per video frame.
    const counts = visuals ? visuals.gridSizes.flatMap(([t], i) => Array<number>(t).fill(visuals.tokensPerFrame[i]!)) : [];
    const inputIds = this.tokenizer.encode(expandImageTokens(prompt, counts));

    let keepMask: Uint8Array | undefined;
    let llmInputIds = inputIds;
    if (visuals) {
      keepMask =
        options.tokenCompression === false
          ? new Uint8Array(counts.reduce((a, b) => a + b, 0)).fill(1)
          : diffFpMask(visuals.pixelValues.data, visuals.pixelValues.dim(1), visuals.gridSizes.map(([frames, gridH, gridW], i) => ({ modality: visuals.modals[i]!, frames, gridH, gridW, mergeSize: visuals.mergeSizes[i]! })));
      llmInputIds = pruneImageTokens(inputIds, this.tokenizer.imageTokenId, keepMask);
    }
    const visualTokens = keepMask ? keepMask.reduce((a, b) => a + b, 0) : 0;
    return { conversation, prompt, inputIds, visuals, videoTimestamps, keepMask, llmInputIds, visualTokens };
  }
}
