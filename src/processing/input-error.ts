/**
 * Something wrong with what a request gave: a malformed conversation, media that cannot be read. `path` says where,
 * in the conversation's own terms (`messages[1].content[0]`, `messages[0].role`), so a server can point the client
 * at its own request without reading the message.
 */
export class InputError extends Error {
  override readonly name = 'InputError';
  constructor(
    readonly path: string,
    problem: string,
    options?: { cause?: unknown },
  ) {
    super(`${path}: ${problem}`, options);
  }
}
