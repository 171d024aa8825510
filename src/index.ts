// The public surface of the package: the library API, the pieces it is built from, and their types.
export {
  VideoLLaMA3,
  DEFAULT_MAX_ACTIVE_REQUESTS,
  DEFAULT_FEATURE_CACHE_BYTES,
  DEFAULT_PREFIX_CACHE_BYTES,
  type ChatInput,
  type ChatOptions,
  type ChatResult,
  type ChatStream,
  type DecodingStats,
  type LoadOptions,
  type LoadProgressEvent,
  type ModelCacheStats,
  type ModelInfo,
  type ModelStats,
  type Timings,
  type Usage,
} from './api/videollama3.js';
export type { ChatModel } from './api/chat-model.js';
export { AbortError, InvalidOptionError, InvalidRequestError } from './api/errors.js';
export { ModelWorker } from './api/model-worker.js';
export {
  compareWeights,
  readComparePrompts,
  defaultComparePrompts,
  type CompareOptions,
  type CompareProgress,
  type ComparePrompt,
  type CompareReport,
  type CompareResult,
} from './api/compare-weights.js';
export type { SchedulerStats } from './engine/scheduler.js';
export type { CacheStats } from './engine/feature-cache.js';
export type { PrefixCacheStats } from './engine/prefix-cache.js';
export type { FinishReason } from './engine/generate.js';
export type { SamplingOptions } from './engine/sampling.js';
export { loadCheckpoint, type Checkpoint } from './model/checkpoint.js';
export { AdapterError, CheckpointError } from './model/errors.js';
export { loadAdapter, saveAdapter, type LoraAdapter } from './model/lora-adapter.js';
export { findAllLinearNames, OFFICIAL_LORA_DEFAULTS, type LoraConfig } from './model/lora.js';
export { writeMergedCheckpoint, type MergeAdapterOptions, type MergeAdapterResult } from './model/merge-adapter.js';
export type { CheckpointQuantization, GenerationConfig, VideoLlama3Config, VisionEncoderConfig } from './model/config.js';
export { writeRandomCheckpoint } from './model/random-checkpoint.js';
export { writeQuantizedCheckpoint, type QuantizeCheckpointOptions, type QuantizeCheckpointResult } from './model/quantize-checkpoint.js';
export type { WeightFormats } from './model/weight-formats.js';
export { WEIGHT_FORMATS, type QuantFormat, type WeightFormat } from './tensor/dtype.js';
export { SafetensorsFile, SafetensorsCheckpoint, writeSafetensors } from './model/safetensors.js';
export type { ContentPart, Conversation, Message, Role } from './processing/conversation.js';
export { ImageLoadError, loadImage, type LoadedImage } from './processing/image.js';
export type { ProcessedRequest, ProgressEvent } from './processing/processor.js';
export { PromptTooLongError, Tokenizer, type EncodePromptOptions } from './processing/tokenizer.js';
export { createBackend, Tensor, type Backend, type BackendName, type DType } from './tensor/index.js';
export { startServer, SERVER_DEFAULTS, type RunningServer, type ServerOptions } from './server/server.js';
export {
  HubError,
  listCachedModels,
  parseModelRef,
  pullModel,
  resolveModel,
  type CachedModel,
  type CachedSnapshot,
  type DownloadProgressEvent,
  type HubErrorCode,
  type HubOptions,
  type ModelRef,
  type PullResult,
} from './hub/index.js';
export { train, TRAIN_LOG, type StepLog, type TrainOptions, type TrainPlan, type TrainResult } from './train/trainer.js';
export { STAGES, stageConfig, type ModuleGroup, type StageConfig, type StageOptions } from './train/stages.js';
