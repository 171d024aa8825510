import type { ChatInput, ChatOptions, ChatStream, ModelInfo, ModelStats } from './videollama3.js';

/**
 * What a server or a command needs from a loaded model: `VideoLLaMA3` itself (inference on the calling thread) and
 * `ModelWorker` (the same model in a worker thread, so the caller's event loop stays free) both provide it.
 */
export interface ChatModel {
  /** Context, vocabulary and the default request budgets. */
  readonly info: ModelInfo;
  chat(input: ChatInput, options?: ChatOptions): ChatStream;
  /** Requests running and waiting, and how the feature and prefix caches have served them. */
  stats(): Promise<ModelStats>;
  /** Frees the model (and stops its worker, if any). Requests still running are aborted. */
  close(): Promise<void>;
}
