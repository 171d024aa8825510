import { isAbsolute, resolve } from 'node:path';
import { renderChatTemplate } from './chat-template.js';
import { collectMedia, isDataUrl, parseConversation, withVideoFrames, type ContentPart, type Conversation, type MediaItem, type Message, type VideoMedia } from './conversation.js';
import { diffFpMask, pruneImageTokens } from './diffp.js';
import { DEFAULT_MAX_PIXELS, probeImage } from './image.js';
import { InputError } from './input-error.js';
import { preprocessVisuals, type FrameStream, type VisualBatch, type VisualInput } from './patches.js';
import { expandImageTokens } from './placeholders.js';
import { loadProcessorConfig, type ProcessorConfig } from './processor-config.js';
import { PromptTooLongError, type Tokenizer } from './tokenizer.js';
import { decodeVideo, planVideo, type VideoPlan } from './video.js';
import { framesInRange, groupVideoItems } from './video-groups.js';

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
  /** 'plain': special-token strings in message text are read as ordinary text, not as control tokens. */
  textSpecialTokens?: 'control' | 'plain';
  /** Refuse (early, without tokenising the rest) a prompt of more text tokens than this; visual tokens not counted. */
  maxTextTokens?: number;
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
  /** The chat template's output (one `<image>` per image and per video frame), the special tokens typed in the
   * messages written as they were typed whatever `textSpecialTokens` says. */
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

  /** `onMissing` hears of each processor config file the folder lacks. */
  static async load(folder: string, tokenizer: Tokenizer, onMissing?: (file: string) => void): Promise<Processor> {
    return new Processor(tokenizer, await loadProcessorConfig(folder, onMissing));
  }

  async process(input: unknown, options: ProcessOptions = {}): Promise<ProcessedRequest> {
    const conversation = parseConversation(input);
    const media = collectMedia(conversation.messages);
    const resolveSource = (source: string) => (isDataUrl(source) || isAbsolute(source) ? source : resolve(options.baseDir ?? '.', source));
    const videoMedia = media.filter((m): m is VideoMedia => m.kind === 'video').map((m) => ({ ...m, source: resolveSource(m.source) }));
    const videoInputs = await this.planVideos(videoMedia, options);
    const visualInputs: VisualInput[] = [];
    let video = 0;
    for (const [index, item] of media.entries()) {
      if (item.kind === 'video') {
        visualInputs.push({ modality: 'video', frames: videoInputs[video++]!.frames });
        continue;
      }
      const named = (err: unknown) => new InputError(where(item), (err as Error).message, { cause: err });
      // Only the header is read here; the pixels are decoded when preprocessing reaches the image, one image at a
      // time, so a request never holds more than one full-size image.
      const image = await probeImage(resolveSource(item.source), { maxPixels: options.maxImagePixels, index }).catch((err: unknown) => {
        throw named(err);
      });
      const stream: FrameStream = {
        width: image.width,
        height: image.height,
        frameCount: 1,
        read: async (onFrame) => onFrame(await image.decode().catch((err: unknown) => Promise.reject(named(err))), 0),
      };
      visualInputs.push({ modality: 'image', image: stream });
    }
    const videos = videoInputs.map((v) => ({ numFrames: v.timestamps.length, timestamps: Array.from(v.timestamps) }));
    const videoTimestamps = videoInputs.map((v) => v.timestamps);
    const visuals = visualInputs.length
      ? await preprocessVisuals(visualInputs, { config: this.config, minTokens: options.minVisualTokens, maxTokens: options.maxVisualTokens })
      : undefined;

    const messages = videos.length ? withVideoFrames(conversation.messages, videos) : conversation.messages;
    const render = (list: readonly Message[]) =>
      renderChatTemplate(this.tokenizer.chatTemplate, list, {
        addSystemPrompt: options.addSystemPrompt ?? conversation.addSystemPrompt,
        addGenerationPrompt: options.addGenerationPrompt ?? conversation.addGenerationPrompt,
      });
    const prompt = render(messages);
    // Plain mode: the messages' own text is escaped, so that the special tokens it spells are tokenised as text and
    // only the template's are control tokens. Text without them renders to the same prompt.
    const escaped = options.textSpecialTokens === 'plain' ? this.escapeTexts(messages) : messages;
    const tokenized = escaped === messages ? prompt : render(escaped);
    // One count per image token of the prompt: one per image, one per video frame.
    const counts = visuals ? visuals.gridSizes.flatMap(([t], i) => Array<number>(t).fill(visuals.tokensPerFrame[i]!)) : [];
    const maxTokens = options.maxTextTokens;
    const inputIds = await this.tokenizer
      .encodePrompt(expandImageTokens(tokenized, counts), { maxTokens, countExcept: this.tokenizer.imageTokenId, signal: options.signal })
      .catch((err: unknown) => {
        if (!(err instanceof PromptTooLongError)) throw err;
        throw new InputError('messages', `the prompt has more than ${err.limit} tokens of text, which cannot fit in the model's context of ${err.limit + 1} tokens: shorten the text`, { cause: err });
      });

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

  /** The messages with every text escaped (`Tokenizer.escapeSpecialTokens`); the same array when nothing changed. */
  private escapeTexts(messages: readonly Message[]): readonly Message[] {
    let changed = false;
    const escape = (text: string) => {
      const out = this.tokenizer.escapeSpecialTokens(text);
      if (out !== text) changed = true;
      return out;
    };
    const escaped = messages.map(
      (m): Message => ({
        ...m,
        content: typeof m.content === 'string' ? escape(m.content) : m.content.map((p): ContentPart => (p.type === 'text' ? { ...p, text: escape(p.text) } : p)),
      }),
    );
    return changed ? escaped : messages;
  }

  /**
   * Plans the videos of a request as the reference loads them (spec 3.4): items on the same file with the same
   * sampling share one load over the union of their ranges, and each keeps the loaded frames inside its own range.
   * Frames are decoded when preprocessing reads them, each item streaming its share of the shared plan.
   */
  private async planVideos(items: VideoMedia[], options: ProcessOptions): Promise<{ frames: FrameStream; timestamps: Float64Array }[]> {
    const defaults = { fps: options.fps ?? this.config.fps, maxFrames: options.maxFrames ?? this.config.maxFrames };
    const out: { frames: FrameStream; timestamps: Float64Array }[] = [];
    const progress = { planned: 0, decoded: 0 };
    for (const group of groupVideoItems(items, defaults)) {
      let plan: VideoPlan;
      try {
        plan = await planVideo(group.source, { ...group.options, signal: options.signal });
      } catch (err) {
        throw new InputError(where(items[group.members[0]!.item]!), (err as Error).message, { cause: err });
      }
      const maxPixels = options.maxImagePixels ?? DEFAULT_MAX_PIXELS;
      if (plan.width * plan.height > maxPixels) {
        const item = items[group.members[0]!.item]!;
        throw new InputError(where(item), `${group.source}: frames of ${plan.width}x${plan.height} = ${plan.width * plan.height} pixels are more than the limit of ${maxPixels}`);
      }
      for (const member of group.members) {
        const kept = framesInRange(plan.timestamps, member.start, member.end);
        if (kept.length === 0) {
          throw new InputError(where(items[member.item]!), `no sampled frame of ${group.source} lies between ${member.start} s and ${member.end} s`);
        }
        const keep = new Set(kept);
        progress.planned += kept.length;
        out[member.item] = {
          timestamps: Float64Array.from(kept, (i) => plan.timestamps[i]!),
          frames: {
            width: plan.width,
            height: plan.height,
            frameCount: kept.length,
            read: async (onFrame) => {
              let delivered = 0;
              await decodeVideo(
                plan,
                (frame, i) => {
                  if (!keep.has(i)) return;
                  onFrame(frame, delivered++);
                  options.onProgress?.({ stage: 'decode', done: ++progress.decoded, total: progress.planned });
                },
                { signal: options.signal },
              ).catch((err: unknown) => {
                if (options.signal?.aborted || err instanceof InputError) throw err;
                throw new InputError(where(items[member.item]!), (err as Error).message, { cause: err });
              });
            },
          },
        };
      }
    }
    return out;
  }
}
