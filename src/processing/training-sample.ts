/**
 * One training sample from an annotation entry, built as `LazySupervisedDataset.__getitem__` of the official
 * `train.py` builds it (spec 10.4-10.5): the conversation converted, its media loaded from the data folder and run
 * through the image processor with the `mm_max_length` token budget, every message rendered alone with the training
 * chat template, its `<image>` placeholders expanded, tokenised alone, and labelled.
 */
import { resolve } from 'node:path';
import { pythonFloatRepr } from '../model/random-checkpoint.js';
import { Tensor } from '../tensor/tensor.js';
import { IMAGE_TOKEN } from './chat-template.js';
import { probeImage } from './image.js';
import { preprocessVisuals, type FrameStream, type VisualInput } from './patches.js';
import { expandImageTokens } from './placeholders.js';
import { DEFAULT_PROCESSOR_CONFIG, type ProcessorConfig } from './processor-config.js';
import { numpyRound } from './rounding.js';
import type { Tokenizer } from './tokenizer.js';
import {
  AnnotationError,
  convertConversation,
  keptTurns,
  sampleModal,
  type AnnotationSample,
  type TrainingMessage,
  type TrainingModal,
  type VideoFramesInfo,
} from './training-annotation.js';
import { decodeVideo, planVideo } from './video.js';

import { IGNORE_INDEX } from '../model/qwen2-training.js';

export { IGNORE_INDEX };

/**
 * The training template's generation prompt. The official processor finds it by rendering a message with and
 * without `add_generation_prompt`; its token count (3) is how many leading tokens of an assistant message are not
 * supervised.
 */
export const GENERATION_PROMPT = '<|im_start|>assistant\n';

/** The data arguments of the official training scripts that shape a sample. */
export interface TrainingDataOptions {
  tokenizer: Tokenizer;
  /** Media paths of the annotations are relative to this folder (`--data_folder`). */
  dataFolder: string;
  /** Patch size, normalisation and minimum token count: the checkpoint's (default: the released checkpoints'). */
  processorConfig?: ProcessorConfig;
  /** `--mm_max_length`: the image processor's `max_tokens` during training (10240 in the scripts). */
  mmMaxLength: number;
  /** `--image_merge_size` (1; 2 in stage 4) and `--video_merge_size` (2). */
  imageMergeSize: number;
  videoMergeSize: number;
  /** `--fps` (1) and `--max_frames` (180). */
  fps: number;
  maxFrames: number;
  signal?: AbortSignal;
}

/** One sample before collation. */
export interface TrainingSample {
  modal: TrainingModal;
  messages: TrainingMessage[];
  /** Each message rendered alone, before placeholder expansion. */
  renderedMessages: string[];
  inputIds: Int32Array;
  /** IGNORE_INDEX except the answer tokens and `<|im_end|>` of assistant messages. */
  labels: Int32Array;
  /** [rows, 3*p*p]; for a text-only sample the dummy item's m*m rows of zeros. */
  pixelValues: Tensor<'f32'>;
  gridSizes: [number, number, number][];
  mergeSizes: number[];
  modals: TrainingModal[];
  /** `<image>` ids of each item in `inputIds` (0 for the dummy item, whose feature the model discards). */
  visualTokens: number[];
}

/** `round(1) | string` of the training template on a numpy float64 timestamp of the ffmpeg video path. */
function formatTimestamp(seconds: number): string {
  return pythonFloatRepr(numpyRound(seconds, 1));
}

/**
 * The official training chat template (`DEFAULT_CHAT_TEMPLATE` of videollama3/model/processor.py, spec 5.5) for a
 * single message with no system prompt and no generation prompt, which is the only way the training processor
 * renders it. The parts `_convert_normal` builds are text, image (no `time` key) and video (`num_frames`,
 * `timestamps`).
 */
export function renderTrainingMessage(message: TrainingMessage): string {
  let out = `<|im_start|>${message.role}\n`;
  if (typeof message.content === 'string') return `${out}${message.content}<|im_end|>\n`;
  for (const part of message.content) {
    if (part.type === 'image') {
      out += `${IMAGE_TOKEN}\n`;
    } else if (part.type === 'video') {
      for (let i = 0; i < part.num_frames; i++) {
        out += `Time ${formatTimestamp(part.timestamps[i]!)}s:${IMAGE_TOKEN}${i < part.num_frames - 1 ? ',' : '\n'}`;
      }
    } else {
      out += part.text;
    }
  }
  return `${out}<|im_end|>\n`;
}

function countOccurrences(text: string, token: string): number {
  return text.split(token).length - 1;
}

/**
 * Ids and labels of the messages, each rendered, expanded and tokenised alone (`_process_text_with_label`).
 * `tokensPerPlaceholder` holds one count per image and per video frame, consumed in order of appearance.
 */
async function tokenizeMessages(
  sample: AnnotationSample,
  rendered: readonly string[],
  messages: readonly TrainingMessage[],
  tokensPerPlaceholder: readonly number[],
  tokenizer: Tokenizer,
  signal: AbortSignal | undefined,
): Promise<{ inputIds: Int32Array; labels: Int32Array }> {
  const promptLength = tokenizer.encode(GENERATION_PROMPT).length;
  const ids: number[] = [];
  const labels: number[] = [];
  let next = 0;
  for (const [i, text] of rendered.entries()) {
    const placeholders = countOccurrences(text, IMAGE_TOKEN);
    if (next + placeholders > tokensPerPlaceholder.length) {
      throw new AnnotationError(
        sample.file,
        sample.index,
        'conversations',
        `the messages hold more ${IMAGE_TOKEN} placeholders than the sample's ${tokensPerPlaceholder.length} image(s)/frame(s)`,
      );
    }
    const expanded = expandImageTokens(text, tokensPerPlaceholder.slice(next, next + placeholders));
    next += placeholders;
    const messageIds = await tokenizer.encodePrompt(expanded, { signal });
    ids.push(...messageIds);
    const supervised = messages[i]!.role === 'assistant';
    // The answer and <|im_end|> are supervised; the generation prompt before them and the final "\n" are not.
    messageIds.forEach((id, k) => labels.push(supervised && k >= promptLength && k < messageIds.length - 1 ? id : IGNORE_INDEX));
  }
  if (next !== tokensPerPlaceholder.length) {
    throw new AnnotationError(
      sample.file,
      sample.index,
      'conversations',
      `the messages hold ${next} ${IMAGE_TOKEN} placeholder(s) for the sample's ${tokensPerPlaceholder.length} image(s)/frame(s)`,
    );
  }
  return { inputIds: Int32Array.from(ids), labels: Int32Array.from(labels) };
}

/** Media of a sample, as the image processor's inputs; a video sample also gives its frames' count and times. */
async function loadMedia(sample: AnnotationSample, options: TrainingDataOptions): Promise<{ inputs: VisualInput[]; video?: VideoFramesInfo }> {
  const inFolder = (path: string) => resolve(options.dataFolder, path);
  if (sample.images) {
    const inputs: VisualInput[] = [];
    for (const [k, path] of sample.images.entries()) {
      const field = sample.imageFields![k]!;
      const named = (err: unknown) => new AnnotationError(sample.file, sample.index, field, (err as Error).message, { cause: err });
      // Only the header now, to size the images; each is decoded when preprocessing reaches it.
      const image = await probeImage(inFolder(path)).catch((err: unknown) => Promise.reject(named(err)));
      const stream: FrameStream = {
        width: image.width,
        height: image.height,
        frameCount: 1,
        read: async (onFrame) => onFrame(await image.decode().catch((err: unknown) => Promise.reject(named(err))), 0),
      };
      inputs.push({ modality: 'image', image: stream, mergeSize: options.imageMergeSize });
    }
    return { inputs };
  }
  if (sample.video !== undefined) {
    const named = (err: unknown) => new AnnotationError(sample.file, sample.index, 'video[0]', (err as Error).message, { cause: err });
    const plan = await planVideo(inFolder(sample.video), { fps: options.fps, maxFrames: options.maxFrames, signal: options.signal }).catch(
      (err: unknown) => Promise.reject(named(err)),
    );
    // The loader answers a video too short to give one frame on the ffmpeg path from its frame index instead; the
    // official training loader has no such fallback and fails on it, so it is no training sample.
    if (plan.kind === 'clip') throw named(new Error(`${sample.video}: no frame at ${options.fps} fps on the ffmpeg path (${plan.note ?? 'too short'})`));
    const frames: FrameStream = {
      width: plan.width,
      height: plan.height,
      frameCount: plan.frameCount,
      read: (onFrame) => decodeVideo(plan, onFrame, { signal: options.signal }).catch((err: unknown) => Promise.reject(named(err))),
    };
    return {
      inputs: [{ modality: 'video', frames, mergeSize: options.videoMergeSize }],
      video: { numFrames: plan.frameCount, timestamps: Array.from(plan.timestamps) },
    };
  }
  return { inputs: [] };
}

/** Builds one sample of an annotation file (see the module comment). */
export async function buildTrainingSample(sample: AnnotationSample, options: TrainingDataOptions): Promise<TrainingSample> {
  const config = options.processorConfig ?? DEFAULT_PROCESSOR_CONFIG;
  const modal = sampleModal(sample);
  keptTurns(sample);
  const { inputs, video } = await loadMedia(sample, options);
  const messages = convertConversation(sample, video);
  const rendered = messages.map(renderTrainingMessage);
  const rowWidth = 3 * config.patchSize * config.patchSize;

  if (inputs.length === 0) {
    const { inputIds, labels } = await tokenizeMessages(sample, rendered, messages, [], options.tokenizer, options.signal);
    // The dummy item every text-only sample carries, so that the vision encoder runs on every rank
    // (train.py:354-358); the model discards its feature.
    const m = options.imageMergeSize;
    return {
      modal,
      messages,
      renderedMessages: rendered,
      inputIds,
      labels,
      pixelValues: Tensor.empty('f32', [m * m, rowWidth]),
      gridSizes: [[1, m, m]],
      mergeSizes: [m],
      modals: ['text'],
      visualTokens: [0],
    };
  }

  const visuals = await preprocessVisuals(inputs, { config, maxTokens: options.mmMaxLength });
  const perPlaceholder = visuals.gridSizes.flatMap(([t], i) => Array<number>(t).fill(visuals.tokensPerFrame[i]!));
  const { inputIds, labels } = await tokenizeMessages(sample, rendered, messages, perPlaceholder, options.tokenizer, options.signal);
  return {
    modal,
    messages,
    renderedMessages: rendered,
    inputIds,
    labels,
    pixelValues: visuals.pixelValues,
    gridSizes: visuals.gridSizes,
    mergeSizes: visuals.mergeSizes,
    modals: visuals.modals,
    visualTokens: visuals.numTokens,
  };
}
