// Hugging Face hub downloads into the cache huggingface_hub uses, shared with Python in both directions.
export { defaultCacheDir } from './paths.js';
export { DEFAULT_INCLUDE } from './patterns.js';
export { parseModelRef, type ModelRef } from './ref.js';
export { HubError, type HubErrorCode } from './errors.js';
export type { ProgressEvent as DownloadProgressEvent } from './download.js';
export { pullModel, resolveModel, type HubOptions, type PullResult } from './pull.js';
export { listCachedModels, type CachedModel, type CachedSnapshot } from './scan.js';
