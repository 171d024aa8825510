/**
 * The server's options and every default in one place. The safety defaults follow vLLM's (media fetch timeouts of
 * 5 s for images and 30 s for videos, no local files unless a folder is allowed, an API key only when set) and add
 * what vLLM leaves to a proxy: body and media size limits, a request cap and a block on private addresses.
 */
import { realpath, stat } from 'node:fs/promises';

import type { ChatModel } from '../api/chat-model.js';

export interface ServerOptions {
  model: ChatModel;
  /** The name clients put in `model` and see in `/v1/models`. */
  modelId: string;
  /** Default 127.0.0.1 (this machine only). */
  host?: string;
  /** Default 8080; 0 picks any free port (see `RunningServer.port`). */
  port?: number;
  /** When set, every `/v1/` request needs `Authorization: Bearer <apiKey>` (401 otherwise). */
  apiKey?: string;
  /** Folder whose files (absolute paths or file:// URLs) requests may name; undefined: no local files at all. */
  allowedLocalMediaPath?: string;
  /** Host names media URLs may point to (exact, case-insensitive; checked on every redirect); undefined: any. */
  allowedMediaDomains?: readonly string[];
  /** Allow fetching media from loopback, private, link-local and other non-public addresses. Default false. */
  allowPrivateNetwork?: boolean;
  /** Largest request body, bytes. Default 128 MiB (inline data-URL videos need room). */
  maxBodyBytes?: number;
  /** Largest image, bytes, fetched or inline. Default 20 MiB. */
  maxImageBytes?: number;
  /** Largest video, bytes, fetched or inline. Default 256 MiB. */
  maxVideoBytes?: number;
  /** Whole-download time limits for media URLs, ms. Defaults 5000 (image) and 30000 (video), as vLLM. */
  imageFetchTimeoutMs?: number;
  videoFetchTimeoutMs?: number;
  /** Redirects followed per media URL. Default 5. */
  maxRedirects?: number;
  /** Items per request. Defaults 8 images, 2 videos. */
  maxImagesPerRequest?: number;
  maxVideosPerRequest?: number;
  /** Largest image or video frame in pixels, read from its header before decoding. Default 40,000,000 (a request
   * decodes one image at a time: at most 120 MB of pixels). */
  maxImagePixels?: number;
  /** Messages per request. Default 512. */
  maxMessages?: number;
  /** Content parts per request, all messages together. Default 2048. */
  maxContentParts?: number;
  /** Stop strings per request and characters per stop string. Defaults 16 and 256. */
  maxStopStrings?: number;
  maxStopLength?: number;
  /** Request bodies held at once, all requests together, bytes; a body beyond it is answered 503. Default 256 MiB. */
  maxBufferedBodyBytes?: number;
  /**
   * How special-token strings typed in message text (`<|im_end|>`, `<image>`) are read: 'plain' (default) as
   * ordinary text, so that a client cannot end its turn or write another role's; 'control' as the control tokens
   * they spell, as the official processor does.
   */
  textSpecialTokens?: 'plain' | 'control';
  /** Chats handed to the model at once (the model interleaves them). Default 4. */
  maxConcurrentRequests?: number;
  /** Chat requests waiting beyond those; one more is answered 503 with Retry-After. Default 32. */
  maxQueuedRequests?: number;
  /** Seconds a 503 asks the client to wait. Default 5. */
  retryAfterSeconds?: number;
  /** One JSON object per finished request; default: nothing is logged. */
  log?: (line: object) => void;
}

export type ResolvedOptions = Required<Omit<ServerOptions, 'apiKey' | 'allowedLocalMediaPath' | 'allowedMediaDomains' | 'log'>> &
  Pick<ServerOptions, 'apiKey' | 'allowedLocalMediaPath' | 'allowedMediaDomains' | 'log'>;

const MiB = 1024 * 1024;

export const SERVER_DEFAULTS = {
  host: '127.0.0.1',
  port: 8080,
  allowPrivateNetwork: false,
  maxBodyBytes: 128 * MiB,
  maxImageBytes: 20 * MiB,
  maxVideoBytes: 256 * MiB,
  imageFetchTimeoutMs: 5_000,
  videoFetchTimeoutMs: 30_000,
  maxRedirects: 5,
  maxImagesPerRequest: 8,
  maxVideosPerRequest: 2,
  maxImagePixels: 40_000_000,
  maxMessages: 512,
  maxContentParts: 2048,
  maxStopStrings: 16,
  maxStopLength: 256,
  maxBufferedBodyBytes: 256 * MiB,
  textSpecialTokens: 'plain',
  maxConcurrentRequests: 4,
  maxQueuedRequests: 32,
  retryAfterSeconds: 5,
} as const;

function positiveInteger(name: string, value: number, min = 1): number {
  if (!Number.isInteger(value) || value < min) throw new Error(`server option ${name} must be an integer >= ${min}, got ${value}`);
  return value;
}

/**
 * The options with their defaults, checked. A mistyped allowed-media folder fails here, at start-up, rather than on
 * every request that names a file; the folder is kept as its real path.
 */
export async function resolveOptions(options: ServerOptions): Promise<ResolvedOptions> {
  if (!options.modelId) throw new Error('server option modelId must be a non-empty string');
  const o = { ...SERVER_DEFAULTS, ...withoutUndefined(options) } as ResolvedOptions;
  positiveInteger('port', o.port, 0);
  for (const key of [
    'maxBodyBytes',
    'maxImageBytes',
    'maxVideoBytes',
    'imageFetchTimeoutMs',
    'videoFetchTimeoutMs',
    'maxConcurrentRequests',
    'retryAfterSeconds',
    'maxImagePixels',
    'maxMessages',
    'maxContentParts',
    'maxStopStrings',
    'maxStopLength',
    'maxBufferedBodyBytes',
  ] as const) {
    positiveInteger(key, o[key]);
  }
  if (o.maxBufferedBodyBytes < o.maxBodyBytes) {
    throw new Error(`server option maxBufferedBodyBytes (${o.maxBufferedBodyBytes}) must be at least maxBodyBytes (${o.maxBodyBytes})`);
  }
  if (o.textSpecialTokens !== 'plain' && o.textSpecialTokens !== 'control') {
    throw new Error(`server option textSpecialTokens must be 'plain' or 'control', got ${String(o.textSpecialTokens)}`);
  }
  for (const key of ['maxRedirects', 'maxImagesPerRequest', 'maxVideosPerRequest', 'maxQueuedRequests'] as const) positiveInteger(key, o[key], 0);
  if (o.allowedLocalMediaPath !== undefined) {
    const folder = o.allowedLocalMediaPath;
    const real = await realpath(folder).catch((e: NodeJS.ErrnoException) => {
      throw new Error(`the allowed local media folder ${folder} cannot be used: ${e.code === 'ENOENT' ? 'it does not exist' : e.message}`);
    });
    if (!(await stat(real)).isDirectory()) throw new Error(`the allowed local media folder ${folder} is not a folder`);
    o.allowedLocalMediaPath = real;
  }
  return o;
}

function withoutUndefined<T extends object>(object: T): Partial<T> {
  return Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined)) as Partial<T>;
}
