/**
 * Turns the media URLs of one request into sources the library reads: a data URL or a local file path. Fetched
 * media and inline videos (the video decoder reads files) go to a temporary folder owned by the request, which
 * `dispose` deletes whatever happened. Local files are served only from inside the allowed folder, compared after
 * resolving symlinks and `..` on both sides, so neither can lead outside it.
 */
import { createWriteStream } from 'node:fs';
import { mkdtemp, open, realpath, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { extname, isAbsolute, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

import { badRequest, HttpError } from './errors.js';
import { displayUrl, fetchMedia } from './media-fetch.js';
import type { ResolvedOptions } from './options.js';

export type MediaKind = 'image' | 'video';

/** Bytes a base64 payload decodes to, from its length (without decoding it). */
function base64Bytes(payload: string): number {
  const clean = payload.replace(/\s+/g, '');
  return Math.floor((clean.length * 3) / 4) - (clean.endsWith('==') ? 2 : clean.endsWith('=') ? 1 : 0);
}

export class RequestMedia {
  private folder?: Promise<string>;
  private files = 0;
  private disposed = false;
  /** Temporary path → the URL it came from, to name the URL in the library's error messages. */
  private readonly origins = new Map<string, string>();

  constructor(
    private readonly options: ResolvedOptions,
    private readonly signal: AbortSignal,
  ) {}

  /** The library source for one image or video URL of the request. */
  async resolve(kind: MediaKind, url: string, param: string): Promise<string> {
    if (/^data:/i.test(url)) return this.fromDataUrl(kind, url, param);
    // No file system call accepts a NUL byte; URLs and paths holding one are refused before they get that far.
    const nul = () => badRequest(`${param}: the ${kind} URL holds a NUL byte`, param, 'invalid_media_url');
    if (url.includes('\0')) throw nul();
    if (/^https?:/i.test(url)) return this.fromWeb(kind, url, param);
    if (/^file:/i.test(url)) {
      let path: string;
      try {
        path = fileURLToPath(url);
      } catch (err) {
        throw badRequest(`${param}: ${(err as Error).message}`, param, 'invalid_media_url');
      }
      if (path.includes('\0')) throw nul();
      return this.fromLocalFile(kind, path, param);
    }
    if (isAbsolute(url)) return this.fromLocalFile(kind, url, param);
    throw badRequest(`${param}: ${kind} URL ${displayUrl(url)} is not an http(s) URL, a data URL or an absolute file path`, param, 'invalid_media_url');
  }

  /** Replaces the temporary file names in a message by the URLs they were fetched from. */
  describe(message: string): string {
    let out = message;
    for (const [path, url] of this.origins) out = out.split(path).join(url);
    return out;
  }

  /** Deletes the request's temporary files. */
  async dispose(): Promise<void> {
    this.disposed = true;
    const folder = this.folder;
    this.folder = undefined;
    if (folder) await rm(await folder.catch(() => ''), { recursive: true, force: true }).catch(() => {});
  }

  private maxBytes(kind: MediaKind): number {
    return kind === 'image' ? this.options.maxImageBytes : this.options.maxVideoBytes;
  }

  private tooLarge(kind: MediaKind, param: string, bytes: number): HttpError {
    return new HttpError(413, `${param}: the ${kind} is ${bytes} bytes, more than the limit of ${this.maxBytes(kind)}`, param, 'media_too_large');
  }

  private async tempPath(kind: MediaKind, url: string): Promise<string> {
    if (this.disposed) throw new Error('the request has ended');
    this.folder ??= mkdtemp(join(tmpdir(), 'vl3-server-'));
    const folder = await this.folder;
    // The extension is kept because the video loader treats `.gif` files as animations.
    const ext = extname(new URL(url, 'x:/').pathname);
    const suffix = /^\.[a-z0-9]{1,5}$/i.test(ext) ? ext : '';
    const path = join(folder, `${this.files++}-${kind}${suffix}`);
    this.origins.set(path, displayUrl(url));
    return path;
  }

  private async fromDataUrl(kind: MediaKind, url: string, param: string): Promise<string> {
    const comma = url.indexOf(',');
    const base64 = comma > 0 && /;base64$/i.test(url.slice(0, comma));
    const bytes = base64 ? base64Bytes(url.slice(comma + 1)) : url.length - comma - 1;
    if (bytes > this.maxBytes(kind)) throw this.tooLarge(kind, param, bytes);
    // The image loader reads data URLs itself (and explains bad ones); the video decoder needs a file.
    if (kind === 'image') return url;
    if (!base64) throw badRequest(`${param}: a video data URL must be base64 (data:video/mp4;base64,...)`, param, 'invalid_media');
    const payload = url.slice(comma + 1).replace(/\s+/g, '');
    if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(payload)) throw badRequest(`${param}: the video data URL is not valid base64`, param, 'invalid_media');
    const path = await this.tempPath(kind, '');
    const data = Buffer.from(payload, 'base64');
    this.origins.set(path, `data URL (${data.length} bytes)`);
    const file = await open(path, 'w');
    try {
      await file.writeFile(data);
    } finally {
      await file.close();
    }
    return path;
  }

  private async fromWeb(kind: MediaKind, url: string, param: string): Promise<string> {
    // Checked before the temporary file is named from the URL's path (fetchMedia would say the same, too late).
    if (!URL.canParse(url)) throw badRequest(`${param}: ${kind} URL ${displayUrl(url)} is not a valid URL`, param, 'invalid_media_url');
    const o = this.options;
    const path = await this.tempPath(kind, url);
    const out = createWriteStream(path);
    const written = new Promise<void>((resolve, reject) => {
      out.once('finish', resolve);
      out.once('error', reject);
    });
    written.catch(() => {}); // awaited below; this only keeps an early write error from counting as unhandled
    try {
      await fetchMedia(
        url,
        { allowPrivateNetwork: o.allowPrivateNetwork, allowedDomains: o.allowedMediaDomains?.map((d) => d.toLowerCase()), maxRedirects: o.maxRedirects },
        { timeoutMs: kind === 'image' ? o.imageFetchTimeoutMs : o.videoFetchTimeoutMs, maxBytes: this.maxBytes(kind), what: kind, param },
        (chunk) => (out.write(chunk) ? undefined : new Promise<void>((resolve) => out.once('drain', resolve))),
        this.signal,
      );
    } catch (err) {
      out.destroy(); // the partial file goes with the folder
      throw err;
    }
    out.end();
    await written;
    return path;
  }

  private async fromLocalFile(kind: MediaKind, path: string, param: string): Promise<string> {
    const root = this.options.allowedLocalMediaPath;
    if (root === undefined) {
      throw badRequest(`${param}: local files are not accepted by this server (no allowed media folder is set)`, param, 'local_media_not_allowed');
    }
    // Not found and outside look the same from here, so a client cannot probe the server's file system. The path is
    // shortened: a request may send one of megabytes.
    const shown = path.length > 200 ? `${path.slice(0, 197)}... (${path.length} characters)` : path;
    const notInside = () => badRequest(`${param}: ${shown} is not a file inside the allowed media folder`, param, 'local_media_not_allowed');
    let real: string;
    try {
      real = await realpath(path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EACCES' || code === 'ELOOP' || code === 'ENAMETOOLONG') throw notInside();
      throw err;
    }
    // The root is already a real path (resolved at start-up), so both sides are compared without links or `..`.
    const inside = relative(root, real);
    if (inside === '..' || inside.startsWith(`..${sep}`) || isAbsolute(inside)) throw notInside();
    // Videos may be folders of frames; images must be files. The size limits hold as for fetched media.
    const info = await stat(real);
    if (info.isFile()) {
      if (info.size > this.maxBytes(kind)) throw this.tooLarge(kind, param, info.size);
    } else if (kind === 'image' || !info.isDirectory()) {
      throw notInside();
    }
    return real;
  }
}
