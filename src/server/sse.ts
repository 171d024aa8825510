/**
 * Server-sent events for streamed completions, and the trimming that makes the streamed text equal the non-stream
 * answer (the library's `ChatResult.text` is trimmed, as the official pipeline's answer is).
 */
import type { ServerResponse } from 'node:http';

export class SseWriter {
  constructor(private readonly res: ServerResponse) {}

  /** Sends the headers; events then go out one write each, without Nagle's delay, so each arrives as it is made. */
  open(): void {
    this.res.socket?.setNoDelay(true);
    this.res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no', // tells nginx-style proxies not to buffer the stream
    });
    this.res.flushHeaders();
  }

  get closed(): boolean {
    return this.res.destroyed || this.res.writableEnded;
  }

  send(event: object): void {
    if (!this.closed) this.res.write(`data: ${JSON.stringify(event)}\n\n`);
  }

  /** Ends the stream with the `[DONE]` sentinel OpenAI clients wait for. */
  done(): void {
    if (!this.closed) this.res.end('data: [DONE]\n\n');
  }

  /** Ends the stream after an error event (no `[DONE]`: the OpenAI client raises the error it reads). */
  fail(error: object): void {
    if (this.closed) return;
    this.res.end(`data: ${JSON.stringify(error)}\n\n`);
  }
}
