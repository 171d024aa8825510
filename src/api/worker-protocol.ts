// Messages between `ModelWorker` (the caller's thread) and the worker thread running the model.
import type { ProgressEvent } from '../processing/processor.js';
import { AdapterError, CheckpointError } from '../model/errors.js';
import type { BackendName } from '../tensor/index.js';
import { AbortError, InvalidOptionError, InvalidRequestError } from './errors.js';
import type { ChatInput, ChatOptions, ChatResult, LoadOptions, LoadProgressEvent, ModelInfo, ModelStats } from './videollama3.js';

/** What crosses to the worker: everything but callbacks and signals, which are re-made on its side. */
export type WorkerChatOptions = Omit<ChatOptions, 'signal' | 'onProgress'>;
export type WorkerLoadOptions = Omit<LoadOptions, 'hub' | 'onProgress' | 'onWarning' | 'backend'> & { backend?: BackendName };

export interface WorkerData {
  folder: string;
  options: WorkerLoadOptions;
  /** Send load progress (the caller listens). */
  progress: boolean;
}

export type ToWorker =
  | { type: 'chat'; id: number; input: ChatInput; options: WorkerChatOptions; progress: boolean }
  | { type: 'abort'; id: number }
  | { type: 'stats'; id: number }
  | { type: 'close' };

export type FromWorker =
  | { type: 'ready'; info: ModelInfo }
  | { type: 'load-error'; error: SerializedError }
  | { type: 'load-progress'; event: LoadProgressEvent }
  | { type: 'warning'; message: string }
  | { type: 'delta'; id: number; text: string }
  | { type: 'progress'; id: number; event: ProgressEvent }
  | { type: 'result'; id: number; result: ChatResult }
  | { type: 'stats'; id: number; stats: ModelStats }
  | { type: 'error'; id: number; error: SerializedError };

export interface SerializedError {
  name: string;
  message: string;
  stack?: string;
  /** Where the error points: a request path, an option, a file and tensor. */
  path?: string;
  option?: string;
  file?: string;
  tensor?: string;
  module?: string;
}

export function serializeError(e: unknown): SerializedError {
  if (!(e instanceof Error)) return { name: 'Error', message: String(e) };
  const { path, option, file, tensor, module } = e as Error & Partial<Record<'path' | 'option' | 'file' | 'tensor' | 'module', string>>;
  return { name: e.name, message: e.message, stack: e.stack, path, option, file, tensor, module };
}

/** Re-creates the error classes callers tell apart (bad input, bad option, bad checkpoint or adapter, abort); others stay Error. */
export function deserializeError(e: SerializedError): Error {
  const error =
    e.name === 'InvalidRequestError'
      ? new InvalidRequestError(e.message, { path: e.path })
      : e.name === 'InvalidOptionError'
        ? new InvalidOptionError(e.option ?? '', e.message)
        : e.name === 'CheckpointError'
          ? new CheckpointError(e.message, e.file, e.tensor)
          : e.name === 'AdapterError'
            ? new AdapterError(e.message, e.file, e.module)
            : e.name === 'AbortError'
              ? new AbortError(e.message)
              : new Error(e.message);
  if (e.stack) error.stack = e.stack;
  return error;
}
