import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rename, stat, truncate, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { displayUrl, errorFromResponse, HubError, type RequestContext } from './errors.js';
import { discard, request, sendsToken, type FileMetadata, type HubClient } from './http.js';

export interface ProgressEvent {
  /** The file's path in the repo. */
  file: string;
  downloadedBytes: number;
  totalBytes: number;
  done: boolean;
}

/**
 * What the ETag promises about the bytes. LFS files are named by their sha256 and regular files by their git blob
 * id, sha1("blob <size>\0" + content), so both can be checked before the blob is trusted. Other ETags (a mirror
 * that is not the hub) can only be held to the announced size.
 */
function digestFor(meta: FileMetadata): { hash?: () => Hash; name: string } {
  if (/^[0-9a-f]{64}$/.test(meta.etag)) return { hash: () => createHash('sha256'), name: 'sha256' };
  if (/^[0-9a-f]{40}$/.test(meta.etag)) return { hash: () => createHash('sha1').update(`blob ${meta.size}\0`), name: 'git blob sha1' };
  return { name: 'size' };
}

/** A hash over the part already on disk, so a resumed download is verified as a whole. */
async function hashPrefix(path: string, make?: () => Hash): Promise<Hash | undefined> {
  if (!make) return undefined;
  const hash = make();
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash;
}

const sizeOf = (path: string) => stat(path).then((s) => s.size, () => 0);

export interface DownloadOptions {
  client: HubClient;
  ctx: RequestContext & { file: string };
  meta: FileMetadata;
  /** Final blob path; the bytes accumulate in `<blob>.incomplete` until verified. */
  blobPath: string;
  /** Further attempts after a dropped connection, each resuming where the last one stopped. */
  retries: number;
  onProgress?: (event: ProgressEvent) => void;
}

/**
 * One pass: asks for the bytes after what `.incomplete` already holds (`Range: bytes=N-`) and appends them. A server
 * that ignores the range answers 200 with the whole file, which then replaces the partial one.
 */
async function fetchRest(o: DownloadOptions, partial: string, digest: ReturnType<typeof digestFor>): Promise<Hash | undefined> {
  const { client, meta, ctx } = o;
  let have = await sizeOf(partial);
  // A partial file longer than the blob cannot be a prefix of it.
  if (have > meta.size) {
    await truncate(partial, 0);
    have = 0;
  }
  const report = (done: boolean) => o.onProgress?.({ file: ctx.file, downloadedBytes: have, totalBytes: meta.size, done });
  if (have === meta.size) {
    report(false);
    return hashPrefix(partial, digest.hash);
  }
  const { response, url } = await request(client, meta.location, 'GET', { headers: have > 0 ? { range: `bytes=${have}-` } : {} });
  if (response.status === 206) {
    const from = /^bytes (\d+)-/.exec(response.headers.get('content-range') ?? '')?.[1];
    if (Number(from) !== have) {
      await discard(response);
      throw new HubError(`${displayUrl(url)} answered a range starting at ${from ?? '?'} to a request for bytes ${have}-`, 'BadResponse', { url: displayUrl(url) });
    }
  } else if (response.status === 200) {
    if (have > 0) {
      await truncate(partial, 0);
      have = 0;
    }
  } else {
    await discard(response);
    throw errorFromResponse(response, url.href, { ...ctx, withToken: sendsToken(client, url) });
  }
  const hash = have > 0 ? await hashPrefix(partial, digest.hash) : digest.hash?.();
  report(false);
  const file = await open(partial, 'a');
  try {
    if (!response.body) throw new HubError(`${displayUrl(url)} answered without a body`, 'BadResponse', { url: displayUrl(url) });
    // Each chunk is on disk before it is counted: what `.incomplete` holds is exactly what the next attempt skips.
    for await (const chunk of response.body) {
      hash?.update(chunk);
      await file.write(chunk);
      have += chunk.byteLength;
      if (have > meta.size) throw new HubError(`${displayUrl(url)} sent more than the ${meta.size} bytes announced for ${ctx.file}`, 'IntegrityError', { url: displayUrl(url) });
      report(false);
    }
  } finally {
    await file.close();
  }
  return hash;
}

/** A dropped connection or a server hiccup is worth another try; a refusal, a bad file or a full disk is not. */
const retryable = (error: unknown) => {
  if (error instanceof HubError) return error.code === 'NetworkError' || (error.code === 'HttpError' && (error.details.status ?? 0) >= 500);
  return !(error as NodeJS.ErrnoException).syscall;
};

/**
 * Downloads a blob into place: bytes go to `<blob>.incomplete` (kept on failure, so the next attempt or the next
 * run resumes), are checked against the ETag, and only then renamed to the blob, atomically. The caller holds the
 * blob's lock.
 */
export async function downloadBlob(o: DownloadOptions): Promise<void> {
  const partial = `${o.blobPath}.incomplete`;
  await mkdir(dirname(partial), { recursive: true });
  const digest = digestFor(o.meta);
  let hash: Hash | undefined;
  for (let attempt = 0; ; attempt++) {
    try {
      hash = await fetchRest(o, partial, digest);
      break;
    } catch (error) {
      if (o.client.signal?.aborted || attempt >= o.retries || !retryable(error)) {
        if (error instanceof HubError && error.code === 'IntegrityError') await unlink(partial).catch(() => undefined);
        throw downloadFailed(error, o, partial);
      }
    }
  }
  const size = await sizeOf(partial);
  const actual = hash?.digest('hex');
  if (size !== o.meta.size || (actual !== undefined && actual !== o.meta.etag)) {
    await unlink(partial).catch(() => undefined);
    const got = actual !== undefined ? `${digest.name} ${actual}` : `${size} bytes`;
    throw new HubError(
      `integrity check failed for ${o.ctx.file} of ${o.ctx.repoId}: expected ${digest.name} ${o.meta.etag} (${o.meta.size} bytes), got ${got}` +
        `${actual !== undefined ? ` (${size} bytes)` : ''} from ${displayUrl(o.meta.location)}; the partial file was removed, pull again`,
      'IntegrityError',
      { url: displayUrl(o.meta.location), repoId: o.ctx.repoId },
    );
  }
  await rename(partial, o.blobPath);
  o.onProgress?.({ file: o.ctx.file, downloadedBytes: size, totalBytes: o.meta.size, done: true });
}

/** A dropped connection says where the partial file is, since running again resumes from it. */
function downloadFailed(error: unknown, o: DownloadOptions, partial: string): unknown {
  if (o.client.signal?.aborted || !(error instanceof Error)) return error;
  if ((error instanceof HubError && error.code !== 'NetworkError') || (error as NodeJS.ErrnoException).syscall) return error;
  const url = error instanceof HubError ? error.details.url : displayUrl(o.meta.location);
  const reason = error instanceof HubError ? error.message : `${(error as Error).message}${causeOf(error)}`;
  return new HubError(
    `download of ${o.ctx.file} of ${o.ctx.repoId} from ${url} failed: ${reason}; the partial file ${partial} is kept and the next pull resumes it`,
    'NetworkError',
    { url, repoId: o.ctx.repoId, cause: error },
  );
}

const causeOf = (error: Error) => {
  const cause = error.cause as { code?: string; message?: string } | undefined;
  return cause ? ` (${cause.message ?? cause.code})` : '';
};
