/**
 * The OpenAI-compatible HTTP server: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health` and the web page
 * at `/`. Plain `node:http`: four routes, a bounded body reader and server-sent events need no framework, and the
 * package gains no runtime dependency. Every error is an OpenAI-style JSON body (errors.ts); a client that
 * disconnects aborts its request's signal, which stops its downloads and its generation.
 */
import { timingSafeEqual } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';

import type { CacheStats } from '../engine/feature-cache.js';
import { Admission } from './admission.js';
import { handleChatCompletion, type CompletionContext } from './completions.js';
import { HttpError, toHttpError } from './errors.js';
import type { ModelList } from './openai-types.js';
import { resolveOptions, type ServerOptions } from './options.js';
import { serveStatic, webRoot } from './static.js';

export { SERVER_DEFAULTS, type ServerOptions } from './options.js';

export interface RunningServer {
  /** e.g. `http://127.0.0.1:8080` */
  url: string;
  port: number;
  /** Stops accepting connections, aborts the requests in flight and waits for them to clean up. The model stays open. */
  close(): Promise<void>;
}

function snakeCacheStats(s: CacheStats): Record<string, number> {
  return { hits: s.hits, misses: s.misses, entries: s.entries, bytes: s.bytes, max_bytes: s.maxBytes };
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

/**
 * Bytes of request bodies held at once, across requests: each body is counted from its first byte (or its declared
 * length) until its request ends, since the parsed body (data URLs included) lives that long. Without this bound,
 * eight 100 MB uploads waiting for a slot would hold gigabytes before any is admitted.
 */
class BodyBudget {
  used = 0;
  constructor(readonly limit: number) {}

  /** Takes `bytes` if they fit; false otherwise. */
  take(bytes: number): boolean {
    if (this.used + bytes > this.limit) return false;
    this.used += bytes;
    return true;
  }

  give(bytes: number): void {
    this.used -= bytes;
  }
}

/**
 * Reads the whole body, refusing more than `limit` bytes, and counting it against `budget` through `held` (which the
 * caller gives back when the request ends). An oversized body is refused from its declared length when there is
 * one; either way the connection is closed after the error, so the rest of the upload is not read.
 */
function readBody(req: IncomingMessage, limit: number, budget: BodyBudget, retryAfterSeconds: number, held: { bytes: number }): Promise<Buffer> {
  const close = { connection: 'close' };
  const tooLarge = () => new HttpError(413, `the request body is larger than the limit of ${limit} bytes`, null, 'request_too_large', close);
  const busy = () =>
    new HttpError(503, `the server is receiving too much request data at once (${budget.limit} bytes); retry later`, null, 'server_busy', {
      ...close,
      'retry-after': String(retryAfterSeconds),
    });
  const take = (bytes: number) => {
    if (!budget.take(bytes)) return false;
    held.bytes += bytes;
    return true;
  };
  const declared = Number(req.headers['content-length']);
  if (declared > limit) return Promise.reject(tooLarge());
  // A declared length is reserved whole up front, so a body that cannot fit is refused before it is read.
  const reserved = Number.isSafeInteger(declared) && declared > 0 ? declared : 0;
  if (reserved && !take(reserved)) return Promise.reject(busy());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const refuse = (error: HttpError) => {
      req.removeAllListeners('data');
      req.pause();
      reject(error);
    };
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) return refuse(tooLarge());
      if (size > reserved && !take(size - Math.max(reserved, size - chunk.length))) return refuse(busy());
      chunks.push(chunk);
    });
    req.once('end', () => resolve(Buffer.concat(chunks)));
    req.once('error', reject);
    // A client that leaves mid-upload: 'close' without 'end' (after 'end' this rejection is a no-op).
    req.once('close', () => reject(new Error('the client disconnected during the upload')));
  });
}

/** Fails on bytes that are not UTF-8 rather than turning them into U+FFFD, which would change the client's text. */
const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * JSON text as clients send it: UTF-8 (RFC 8259), where a leading byte-order mark (some Windows tools write one) is
 * not part of the text; the decoder drops it.
 */
function parseJsonBody(raw: Buffer): unknown {
  let text: string;
  try {
    text = utf8.decode(raw);
  } catch {
    throw new HttpError(400, 'the request body is not valid UTF-8 (JSON must be sent as UTF-8)', null, 'invalid_json');
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, `the request body is not valid JSON: ${(err as Error).message}`, null, 'invalid_json');
  }
}

function authorized(req: IncomingMessage, apiKey: string): boolean {
  const header = req.headers.authorization ?? '';
  const match = /^Bearer (.+)$/i.exec(header);
  if (!match) return false;
  const given = Buffer.from(match[1]!.trim());
  const wanted = Buffer.from(apiKey);
  return given.length === wanted.length && timingSafeEqual(given, wanted);
}

export async function startServer(serverOptions: ServerOptions): Promise<RunningServer> {
  const options = await resolveOptions(serverOptions);
  const ctx: CompletionContext = {
    options,
    model: options.model,
    admission: new Admission(options.maxConcurrentRequests, options.maxQueuedRequests, options.retryAfterSeconds),
  };
  const web = webRoot();
  const created = Math.floor(Date.now() / 1000);
  const inFlight = new Map<Promise<void>, AbortController>();

  const bodies = new BodyBudget(options.maxBufferedBodyBytes);

  async function route(req: IncomingMessage, res: ServerResponse, signal: AbortSignal, log: Record<string, unknown>, held: { bytes: number }): Promise<void> {
    const path = new URL(req.url ?? '/', 'http://server').pathname;
    const method = req.method ?? 'GET';
    if (path === '/health') {
      if (method !== 'GET' && method !== 'HEAD') throw new HttpError(405, `${method} ${path} is not supported (use GET)`, null, 'method_not_allowed', { allow: 'GET, HEAD' });
      // Load, so that a stalled or saturated server shows: requests holding a slot, waiting for one, body bytes held;
      // and whether the caches serve the clients (hits) within their bounds.
      const { active, queued } = ctx.admission.stats;
      const stats = await ctx.model.stats();
      const { features, prefix } = stats.caches;
      return sendJson(res, 200, {
        status: 'ok',
        requests: { active, queued, limit: options.maxConcurrentRequests, queue_limit: options.maxQueuedRequests },
        buffered_body_bytes: bodies.used,
        caches: { features: snakeCacheStats(features), prefix: { ...snakeCacheStats(prefix), reused_tokens: prefix.reusedTokens } },
        // Decoded tokens and the forward passes that decoded them: concurrent requests share passes (batching).
        decoding: stats.decoding,
      });
    }
    if (path.startsWith('/v1/')) {
      if (options.apiKey !== undefined && !authorized(req, options.apiKey)) {
        throw new HttpError(401, 'missing or incorrect API key (send "Authorization: Bearer <key>")', null, 'invalid_api_key', { 'www-authenticate': 'Bearer' });
      }
      if (path === '/v1/models') {
        if (method !== 'GET') throw new HttpError(405, `${method} ${path} is not supported (use GET)`, null, 'method_not_allowed', { allow: 'GET' });
        const list: ModelList = { object: 'list', data: [{ id: options.modelId, object: 'model', created, owned_by: 'videollama3' }] };
        return sendJson(res, 200, list);
      }
      if (path === '/v1/chat/completions') {
        if (method !== 'POST') throw new HttpError(405, `${method} ${path} is not supported (use POST)`, null, 'method_not_allowed', { allow: 'POST' });
        const body = parseJsonBody(await readBody(req, options.maxBodyBytes, bodies, options.retryAfterSeconds, held));
        return handleChatCompletion(body, res, signal, ctx, log);
      }
      throw new HttpError(404, `no route ${method} ${path}`, null, 'not_found');
    }
    if ((method === 'GET' || method === 'HEAD') && (await serveStatic(web, path, req, res))) return;
    throw new HttpError(404, `no route ${method} ${path}`, null, 'not_found');
  }

  const server = http.createServer((req, res) => {
    const started = performance.now();
    const abort = new AbortController();
    // 'close' before the response finished: the client went away (or the connection broke).
    res.once('close', () => {
      if (!res.writableFinished) abort.abort(new Error('the client disconnected'));
    });
    const log: Record<string, unknown> = { method: req.method, path: req.url };
    const held = { bytes: 0 };
    const handled = route(req, res, abort.signal, log, held)
      .catch((err: unknown) => {
        const e = toHttpError(err);
        log.error = e.message;
        if (e.status >= 500 && e.code === 'internal_error' && err instanceof Error) log.stack = err.stack;
        if (!abort.signal.aborted) sendJson(res, e.status, e.toJSON(), e.headers);
        // A refused upload is not read to its end; closing the connection ends it.
        if (e.headers.connection === 'close') res.once('finish', () => req.socket.destroySoon());
      })
      .finally(() => {
        bodies.give(held.bytes);
        inFlight.delete(handled);
        if (options.log) {
          options.log({
            time: new Date().toISOString(),
            ...log,
            status: abort.signal.aborted ? 499 : res.statusCode,
            ms: Math.round(performance.now() - started),
            ...(abort.signal.aborted && { aborted: true }),
          });
        }
      });
    inFlight.set(handled, abort);
  });

  // Requests Node's HTTP parser refuses (a malformed Content-Length or chunk, headers too large) get an OpenAI-style
  // body too, rather than Node's bare status line. A connection whose response has begun can only be dropped.
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    const started = (socket as Duplex & { _httpMessage?: ServerResponse })._httpMessage?.headersSent;
    if (!socket.writable || started || err.code === 'ECONNRESET') return void socket.destroy();
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    const why = status === 431 ? 'its headers are too large' : status === 408 ? 'it did not arrive in time' : err.message.replace(/^Parse Error: /, '');
    const text = JSON.stringify(new HttpError(status, `malformed HTTP request: ${why}`, null, 'invalid_http_request').toJSON());
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`,
    );
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const host = options.host.includes(':') ? `[${options.host}]` : options.host;
  return {
    url: `http://${host}:${port}`,
    port,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const abort of inFlight.values()) abort.abort(new Error('the server is shutting down'));
      server.closeAllConnections();
      await Promise.allSettled([...inFlight.keys()]);
      await closed;
    },
  };
}
