// Messages between `ModelWorker` (the caller's thread) and the worker thread running the model.
import type { ProgressEvent } from '../processing/processor.js';
import { AbortError, InvalidRequestError } from './errors.js';
import type { ChatInput, ChatOptions, ChatResult, LoadOptions } from './videollama3.js';

/** What crosses to the worker: everything but callbacks and signals, which are re-made on its side. */
export type WorkerChatOptions = Omit<ChatOptions, 'signal' | 'onProgress'>;
export type WorkerLoadOptions = Omit<LoadOptions, 'hub'>;

export interface WorkerData {
  folder: string;
  options: WorkerLoadOptions;
}

export type ToWorker =
  | { type: 'chat'; id: number; input: ChatInput; options: WorkerChatOptions; progress: boolean }
  | { type: 'abort'; id: number }
  | { type: 'close' };

export type FromWorker =
  | { type: 'ready' }
  | { type: 'load-error'; error: SerializedError }
  | { type: 'delta'; id: number; text: string }
  | { type: 'progress'; id: number; event: ProgressEvent }
  | { type: 'result'; id: number; result: ChatResult }
  | { type: 'error'; id: number; error: SerializedError };

export interface SerializedError {
  name: string;
  message: string;
  stack?: string;
}

export function serializeError(e: unknown): SerializedError {
  if (e instanceof Error) return { name: e.name, message: e.message, stack: e.stack };
  return { name: 'Error', message: String(e) };
}

/** Re-creates the error classes callers tell apart (bad input, abort); any other error stays a plain Error. */
export function deserializeError(e: SerializedError): Error {
  const error = e.name === 'InvalidRequestError' ? new InvalidRequestError(e.message) : e.name === 'AbortError' ? new AbortError(e.message) : new Error(e.message);
  if (e.stack) error.stack = e.stack;
  return error;
}
