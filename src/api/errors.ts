/**
 * A request the model cannot run because of what it asked for: a malformed conversation, media that cannot be read
 * or decoded, options out of range, a prompt beyond the model's context. A server answers these with 400 and the
 * message; anything else thrown by a chat is an internal fault. The original error is kept as `cause`.
 */
export class InvalidRequestError extends Error {
  override readonly name = 'InvalidRequestError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** The request was cancelled (its AbortSignal fired) before generation started. */
export class AbortError extends Error {
  override readonly name = 'AbortError';
  constructor(message = 'the request was aborted') {
    super(message);
  }
}
