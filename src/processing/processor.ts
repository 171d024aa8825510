import { isAbsolute, resolve } from 'node:path';
import { renderChatTemplate } from './chat-template.js';
import { collectMedia, isDataUrl, parseConversation, type Conversation, type MediaItem } from './conversation.js';
import { loadImage } from './image.js';
import { preprocessVisuals, type VisualBatch, type VisualInput } from './patches.js';
import { expandImageTokens } from './placeholders.js';
import { loadProcessorConfig, type ProcessorConfig } from './processor-config.js';
import type { Tokenizer } from './tokenizer.js';

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
  /** Visual tokens in `inputIds`. */
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
    for (const [index, item] of media.entries()) {
      if (item.kind === 'video') throw new Error(`${where(item)}: video input is not supported yet (images and text are)`);
      const source = isDataUrl(item.source) || isAbsolute(item.source) ? item.source : resolve(options.baseDir ?? '.', item.source);
      try {
        const image = await loadImage(source, { maxPixels: options.maxImagePixels, index });
        visualInputs.push({ modality: 'image', image });
      } catch (err) {
        throw new Error(`${where(item)}: ${(err as Error).message}`);
      }
    }
    const visuals = visualInputs.length
      ? preprocessVisuals(visualInputs, { config: this.config, minTokens: options.minVisualTokens, maxTokens: options.maxVisualTokens })
      : undefined;

    const prompt = renderChatTemplate(this.tokenizer.chatTemplate, conversation.messages, {
      addSystemPrompt: options.addSystemPrompt ?? conversation.addSystemPrompt,
      addGenerationPrompt: options.addGenerationPrompt ?? conversation.addGenerationPrompt,
    });
    // One count per image token of the prompt: one per image, one per video frame.
    const counts = visuals ? visuals.gridSizes.flatMap(([t], i) => Array<number>(t).fill(visuals.tokensPerFrame[i]!)) : [];
    const inputIds = this.tokenizer.encode(expandImageTokens(prompt, counts));
    const visualTokens = counts.reduce((a, b) => a + b, 0);
    return { conversation, prompt, inputIds, visuals, visualTokens };
  }
}
