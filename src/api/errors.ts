/**
 * A request the model cannot run because of what it asked for: a malformed conversation, media that cannot be read
 * or decoded, options out of range, a prompt beyond the model's context. A server answers these with 400 and the
 * message; anything else thrown by a chat is an internal fault. The original error is kept as `cause`.
 */
export class InvalidRequestError extends Error {
  override readonly name = 'InvalidRequestError';
  /** Where the request is wrong: a part of the conversation (`messages[0].content[1]`) or an option (`fps`). */
  readonly path?: string;
  constructor(message: string, options?: { cause?: unknown; path?: string }) {
    super(message, options);
    this.path = options?.path;
  }
}

/** The request was cancelled (its AbortSignal fired) before generation started. */
export class AbortError extends Error {
  override readonly name = 'AbortError';
  constructor(message = 'the request was aborted') {
    super(message);
  }
}

/** An option given to `VideoLLaMA3.load` (or `ModelWorker.load`) that cannot work; `option` names it. */
export class InvalidOptionError extends Error {
  override readonly name = 'InvalidOptionError';
  constructor(
    readonly option: string,
    message: string,
  ) {
    super(message);
  }
}
