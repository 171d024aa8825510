/**
 * A VideoLLaMA3 model running in a worker thread.
 *
 * Inference is synchronous native work that holds its thread for up to seconds per step; run on a server's own
 * thread it would stall every other connection. `ModelWorker` keeps the model on a worker and offers the same
 * `chat()` as `VideoLLaMA3`, so the caller's event loop only moves messages: text deltas, progress, results.
 */
import { Worker } from 'node:worker_threads';
import { resolveModel } from '../hub/index.js';
import type { ChatModel } from './chat-model.js';
import { ChatStreamSource } from './chat-stream.js';
import { AbortError, InvalidOptionError } from './errors.js';
import { checkNumbers, LOAD_RULES } from './options.js';
import type { ChatInput, ChatOptions, ChatStream, LoadOptions, ModelInfo, ModelStats } from './videollama3.js';
import { deserializeError, type FromWorker, type ToWorker, type WorkerData } from './worker-protocol.js';

interface Pending {
  source: ChatStreamSource;
  options: ChatOptions;
  detach: () => void;
}

export class ModelWorker implements ChatModel {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly statsAsked = new Map<number, { resolve: (stats: ModelStats) => void; reject: (e: Error) => void }>();
  private exited?: Error;

  private constructor(
    private readonly worker: Worker,
    /** The local checkpoint folder the model was loaded from. */
    readonly folder: string,
    readonly info: ModelInfo,
  ) {
    worker.on('message', (message: FromWorker) => this.receive(message));
    worker.on('error', (e) => this.stop(new Error(`the model worker failed: ${e.message}`)));
    worker.on('exit', (code) => this.stop(new Error(`the model worker exited (code ${code})`)));
  }

  /** Resolves `ref` (folder or hub id; downloads happen on this thread, with progress), then loads it on a worker. */
  static async load(ref: string, options: LoadOptions = {}): Promise<ModelWorker> {
    const { hub, onProgress, onWarning, backend, ...others } = options;
    // Checked here too, so that a bad option fails before a download or a worker start.
    checkNumbers(others, LOAD_RULES, (option, message) => new InvalidOptionError(option, message));
    if (backend !== undefined && typeof backend !== 'string') {
      throw new InvalidOptionError('backend', 'a model in a worker thread takes a backend by name (native or reference): a Backend object cannot cross threads');
    }
    const rest = { ...others, backend };
    const folder = await resolveModel(ref, hub);
    const data: WorkerData = { folder, options: rest, progress: onProgress !== undefined };
    // The caller's own node options are not the worker's: `--input-type` or `-e` code would break it.
    const worker = new Worker(new URL('./worker-thread.js', import.meta.url), { workerData: data, execArgv: [] });
    const warn = onWarning ?? ((message: string) => process.emitWarning(message, { code: 'VL3_CHECKPOINT' }));
    const info = await new Promise<ModelInfo>((resolve, reject) => {
      const onMessage = (message: FromWorker) => {
        if (message.type === 'load-progress') return onProgress?.(message.event);
        if (message.type === 'warning') return warn(message.message);
        if (message.type === 'ready') resolve(message.info);
        else if (message.type === 'load-error') reject(deserializeError(message.error));
        else return;
        worker.off('message', onMessage);
        worker.off('exit', onExit);
      };
      const onExit = (code: number) => reject(new Error(`the model worker exited while loading ${folder} (code ${code})`));
      worker.on('message', onMessage);
      worker.once('exit', onExit);
      worker.once('error', reject);
    }).catch(async (e: unknown) => {
      await worker.terminate();
      throw e;
    });
    return new ModelWorker(worker, folder, info);
  }

  chat(input: ChatInput, options: ChatOptions = {}): ChatStream {
    const id = this.nextId++;
    const source = new ChatStreamSource(() => {
      this.post({ type: 'abort', id });
      source.fail(new Error('the chat stream was closed before generation finished'));
    });
    if (this.exited) {
      source.fail(this.exited);
      return source.stream();
    }
    const { signal, onProgress, ...rest } = options;
    if (signal?.aborted) {
      source.fail(new AbortError());
      return source.stream();
    }
    const onAbort = () => this.post({ type: 'abort', id });
    signal?.addEventListener('abort', onAbort, { once: true });
    this.pending.set(id, { source, options, detach: () => signal?.removeEventListener('abort', onAbort) });
    this.post({ type: 'chat', id, input, options: rest, progress: onProgress !== undefined });
    return source.stream();
  }

  /** Requests and caches as the worker's model counts them. */
  stats(): Promise<ModelStats> {
    if (this.exited) return Promise.reject(this.exited);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.statsAsked.set(id, { resolve, reject });
      this.post({ type: 'stats', id });
    });
  }

  /** Aborts running requests and stops the worker. */
  async close(): Promise<void> {
    if (this.exited) return;
    this.post({ type: 'close' });
    await new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
  }

  private post(message: ToWorker): void {
    if (!this.exited) this.worker.postMessage(message);
  }

  private receive(message: FromWorker): void {
    if (message.type === 'warning') return void process.emitWarning(message.message, { code: 'VL3_CHECKPOINT' });
    if (!('id' in message)) return;
    if (message.type === 'stats') {
      this.statsAsked.get(message.id)?.resolve(message.stats);
      this.statsAsked.delete(message.id);
      return;
    }
    const request = this.pending.get(message.id);
    if (!request) return;
    switch (message.type) {
      case 'delta':
        request.source.push(message.text);
        return;
      case 'progress':
        request.options.onProgress?.(message.event);
        return;
      case 'result':
        request.source.finish(message.result);
        break;
      case 'error':
        request.source.fail(deserializeError(message.error));
        break;
    }
    request.detach();
    this.pending.delete(message.id);
  }

  /** The worker is gone: every request still waiting fails with the reason. */
  private stop(reason: Error): void {
    this.exited ??= reason;
    for (const request of this.pending.values()) {
      request.detach();
      request.source.fail(reason);
    }
    this.pending.clear();
    for (const asked of this.statsAsked.values()) asked.reject(reason);
    this.statsAsked.clear();
  }
}
