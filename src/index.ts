// The public surface of the package: the library API, the pieces it is built from, and their types.
export {
  VideoLLaMA3,
  type ChatInput,
  type ChatOptions,
  type ChatResult,
  type ChatStream,
  type LoadOptions,
  type Timings,
  type Usage,
} from './api/videollama3.js';
export type { FinishReason } from './engine/generate.js';
export type { SamplingOptions } from './engine/sampling.js';
export { loadCheckpoint, type Checkpoint } from './model/checkpoint.js';
export type { GenerationConfig, VideoLlama3Config, VisionEncoderConfig } from './model/config.js';
export { writeRandomCheckpoint } from './model/random-checkpoint.js';
export { SafetensorsFile, SafetensorsCheckpoint, writeSafetensors } from './model/safetensors.js';
export type { ContentPart, Conversation, Message, Role } from './processing/conversation.js';
export { ImageLoadError, loadImage, type LoadedImage } from './processing/image.js';
export type { ProcessedRequest, ProgressEvent } from './processing/processor.js';
export { Tokenizer } from './processing/tokenizer.js';
export { createBackend, Tensor, type Backend, type BackendName, type DType } from './tensor/index.js';
