/**
 * The caller's side of a chat: text deltas as an async iterable, and the final result as a promise.
 *
 * The producer (generation on this thread, or messages from a worker) pushes; the consumer pulls at its own pace.
 * Work does not wait for the consumer: deltas are small and buffered, so a caller may await only `result`. A
 * consumer that stops iterating early (break, return) cancels the request through `onClose`, which frees its memory.
 */
import type { ChatResult, ChatStream } from './videollama3.js';

export class ChatStreamSource {
  private readonly buffered: string[] = [];
  private ended = false;
  private error: unknown;
  private wake?: () => void;
  private iterated = false;
  private settle!: { resolve: (r: ChatResult) => void; reject: (e: unknown) => void };
  readonly result: Promise<ChatResult>;

  /** `onClose` runs when the consumer stops iterating before the end. */
  constructor(private readonly onClose: () => void) {
    this.result = new Promise<ChatResult>((resolve, reject) => (this.settle = { resolve, reject }));
    this.result.catch(() => {}); // a caller who only iterates sees the error there
  }

  push(delta: string): void {
    if (this.ended || !delta) return;
    this.buffered.push(delta);
    this.wakeConsumer();
  }

  finish(result: ChatResult): void {
    if (this.ended) return;
    this.ended = true;
    this.settle.resolve(result);
    this.wakeConsumer();
  }

  fail(error: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    this.settle.reject(error);
    this.wakeConsumer();
  }

  private wakeConsumer(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  stream(): ChatStream {
    const source = this;
    async function* deltas(): AsyncGenerator<string> {
      let complete = false;
      try {
        for (;;) {
          while (source.buffered.length > 0) yield source.buffered.shift()!;
          if (source.ended) break;
          await new Promise<void>((resolve) => (source.wake = resolve));
        }
        complete = true;
        if (source.error !== undefined) throw source.error;
      } finally {
        if (!complete && !source.ended) source.onClose();
      }
    }
    return {
      result: this.result,
      [Symbol.asyncIterator]: () => {
        if (source.iterated) throw new Error('a chat stream can be iterated once');
        source.iterated = true;
        return deltas();
      },
    };
  }
}
