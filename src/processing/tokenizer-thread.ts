/**
 * The caller's side of the worker thread on which a Tokenizer encodes long prompts.
 *
 * One worker, started on first use, serves requests first come first served. It loads tokenizer.json itself and
 * costs about 55 MB (its isolate, the parsed JSON and the BPE tables) and 0.4-1.4 s to start.
 *
 * The worker is referenced only while a request is running, so an idle tokenizer never keeps the process alive.
 * Cancelling sets a shared flag that the worker reads between pieces of text; a single piece with no cut point can
 * take seconds (a megabyte of one letter is one pre-token), so a worker that has not stopped shortly after is
 * terminated and the next request starts a fresh one.
 */
import { Worker } from 'node:worker_threads';
import type { EncoderSummary, PromptLimits } from './prompt-encoder.js';
import { PromptTooLongError } from './prompt-encoder.js';

/** How long a cancelled request may keep the worker before the worker is replaced. */
const CANCEL_GRACE_MS = 100;

export interface TokenizerWorkerData {
  tokenizerFile: string;
  config: Record<string, unknown>;
  /** The caller's encoder: the worker refuses to serve with a different one (a tokenizer.json changed since). */
  expected: EncoderSummary;
}

export interface ToTokenizerWorker extends PromptLimits {
  id: number;
  text: string;
  /** Int32Array over a SharedArrayBuffer: non-zero once the request is cancelled. */
  cancel: Int32Array;
}

export type FromTokenizerWorker =
  | { id: number; type: 'ids'; ids: Int32Array }
  | { id: number; type: 'too-long' }
  | { id: number; type: 'cancelled' }
  | { id: number; type: 'error'; message: string };

interface Job {
  request: ToTokenizerWorker;
  settled: boolean;
  resolve(ids: number[]): void;
  reject(error: unknown): void;
}

export class TokenizerThread {
  private worker: Worker | undefined;
  private readonly queue: Job[] = [];
  private active: Job | undefined;
  private cancelTimer: NodeJS.Timeout | undefined;
  private nextId = 1;
  private closed = false;
  private starts = 0;

  constructor(private readonly data: TokenizerWorkerData) {}

  /** How many workers were started: one, unless some failed or were replaced after a cancellation. */
  get workerStarts(): number {
    return this.starts;
  }

  encode(text: string, limits: PromptLimits, signal?: AbortSignal): Promise<number[]> {
    if (this.closed) return Promise.reject(new Error('the tokenizer is closed'));
    return new Promise<number[]>((resolve, reject) => {
      const cancel = new Int32Array(new SharedArrayBuffer(4));
      const onAbort = () => this.cancel(job, signal!.reason);
      const job: Job = {
        request: { id: this.nextId++, text, maxTokens: limits.maxTokens, countExcept: limits.countExcept, cancel },
        settled: false,
        resolve: (ids) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(ids);
        },
        reject: (error) => {
          signal?.removeEventListener('abort', onAbort);
          reject(error);
        },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.queue.push(job);
      this.next();
    });
  }

  /** Rejects every request and terminates the worker; later requests are refused. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const error = new Error('the tokenizer was closed');
    for (const job of this.queue.splice(0)) this.settle(job, { error });
    if (this.active) this.settle(this.active, { error });
    this.active = undefined;
    clearTimeout(this.cancelTimer);
    void this.worker?.terminate();
    this.worker = undefined;
  }

  private settle(job: Job, outcome: { ids: number[] } | { error: unknown }): void {
    if (job.settled) return;
    job.settled = true;
    if ('ids' in outcome) job.resolve(outcome.ids);
    else job.reject(outcome.error);
  }

  private next(): void {
    if (this.closed) return;
    if (this.active) {
      // A cancelled request may still hold the worker: whoever waits behind it keeps the process alive.
      if (this.queue.length > 0) this.worker?.ref();
      return;
    }
    const job = this.queue.shift();
    if (job === undefined) {
      this.worker?.unref();
      return;
    }
    this.active = job;
    const worker = (this.worker ??= this.spawn());
    worker.ref();
    worker.postMessage(job.request);
  }

  private spawn(): Worker {
    this.starts++;
    // No node options: the worker needs none, and some of the parent's only apply to its main script (`--input-type`
    // makes a worker fail at once).
    const worker = new Worker(new URL('./tokenizer-worker.js', import.meta.url), { workerData: this.data, execArgv: [] });
    worker.on('message', (message: FromTokenizerWorker) => {
      if (worker === this.worker) this.receive(message);
    });
    worker.on('error', (e) => this.lost(worker, new Error(`the tokenizer worker failed: ${e.message}`, { cause: e })));
    worker.on('exit', (code) => this.lost(worker, new Error(`the tokenizer worker exited (code ${code})`)));
    return worker;
  }

  private receive(message: FromTokenizerWorker): void {
    const job = this.active;
    if (job === undefined || message.id !== job.request.id) return;
    this.finishActive();
    switch (message.type) {
      case 'ids':
        this.settle(job, { ids: Array.from(message.ids) });
        break;
      case 'too-long':
        this.settle(job, { error: new PromptTooLongError(job.request.maxTokens!) });
        break;
      case 'cancelled': // already rejected with the signal's reason
        break;
      case 'error':
        this.settle(job, { error: new Error(message.message) });
        break;
    }
    this.next();
  }

  /** The worker failed or exited: its request fails, and the next one gets a new worker. */
  private lost(worker: Worker, error: Error): void {
    if (worker !== this.worker) return;
    this.worker = undefined;
    const job = this.active;
    this.finishActive();
    if (job) this.settle(job, { error });
    this.next();
  }

  private finishActive(): void {
    this.active = undefined;
    clearTimeout(this.cancelTimer);
    this.cancelTimer = undefined;
  }

  private cancel(job: Job, reason: unknown): void {
    this.settle(job, { error: reason });
    const queued = this.queue.indexOf(job);
    if (queued >= 0) {
      this.queue.splice(queued, 1);
      return;
    }
    if (job !== this.active) return;
    Atomics.store(job.request.cancel, 0, 1);
    const worker = this.worker!;
    this.cancelTimer = setTimeout(() => {
      if (this.active !== job || this.worker !== worker) return;
      this.worker = undefined;
      this.finishActive();
      void worker.terminate();
      this.next();
    }, CANCEL_GRACE_MS);
    // Nobody waits for a cancelled request: the process may exit unless another request is queued.
    this.cancelTimer.unref();
    if (this.queue.length === 0) worker.unref();
  }
}
