/**
 * Errors as OpenAI clients expect them: `{"error": {"message", "type", "param", "code"}}` with a matching HTTP status.
 * The official client turns the status into its error class (BadRequestError, AuthenticationError, ...), so the status
 * is what matters most; `type` follows OpenAI's names.
 */
import { AbortError, InvalidRequestError } from '../api/errors.js';

export type ErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'not_found_error'
  | 'request_too_large'
  | 'server_overloaded'
  | 'internal_server_error';

const TYPE_BY_STATUS: Record<number, ErrorType> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  404: 'not_found_error',
  405: 'invalid_request_error',
  413: 'request_too_large',
  503: 'server_overloaded',
  500: 'internal_server_error',
};

export interface OpenAIErrorBody {
  error: { message: string; type: ErrorType; param: string | null; code: string | null };
}

/** An error that already knows its HTTP answer. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    /** Extra response headers, e.g. Retry-After on 503. */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'HttpError';
  }

  get type(): ErrorType {
    return TYPE_BY_STATUS[this.status] ?? (this.status < 500 ? 'invalid_request_error' : 'internal_server_error');
  }

  toJSON(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export const badRequest = (message: string, param: string | null = null, code: string | null = null) =>
  new HttpError(400, message, param, code);

/** Request fields by the library's option names, for errors the library finds in options the server passed on. */
const FIELD_OF_OPTION: Record<string, string> = {
  maxNewTokens: 'max_tokens',
  maxVisualTokens: 'max_visual_tokens',
  minVisualTokens: 'max_visual_tokens',
  maxFrames: 'max_frames',
  topK: 'top_k',
  topP: 'top_p',
  repetitionPenalty: 'repetition_penalty',
};

/**
 * What a chat's error means for the client. The library throws `InvalidRequestError` for everything the request
 * itself got wrong (conversation, media that cannot be read or decoded, options, a prompt beyond the context), with
 * the `path` of the part or option at fault, and `AbortError` when the request was cancelled; the names are checked
 * too, since errors crossing from the model's worker thread are re-created there. Anything else is an internal
 * fault (500). `paramOf` turns a library path (`messages[0].content[1]`) into the request's own
 * (`messages[0].content[1].image_url`).
 */
export function modelErrorToHttp(err: unknown, paramOf: (path: string) => string = (path) => path): HttpError {
  if (err instanceof HttpError) return err;
  const name = err instanceof Error ? err.name : '';
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof InvalidRequestError || name === 'InvalidRequestError') {
    const path = (err as InvalidRequestError).path;
    const param = path === undefined ? 'messages' : paramOf(FIELD_OF_OPTION[path] ?? path);
    return badRequest(message, param, path?.startsWith('messages[') && path.includes('.content[') ? 'invalid_media' : 'invalid_request');
  }
  if (err instanceof AbortError || name === 'AbortError') return new HttpError(503, 'the request was cancelled (the model is shutting down)', null, 'aborted');
  return new HttpError(500, `internal error: ${message}`, null, 'internal_error');
}

/** Any thrown value as the HttpError to answer with (500 unless it is one already). */
export function toHttpError(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  return new HttpError(500, `internal error: ${err instanceof Error ? err.message : String(err)}`, null, 'internal_error');
}
