import { displayUrl, errorFromResponse, HubError, networkError, type RequestContext } from './errors.js';

export type FetchLike = typeof globalThis.fetch;

/** What every request of one pull shares. */
export interface HubClient {
  endpoint: string;
  token?: string;
  fetch: FetchLike;
  signal?: AbortSignal;
}

const USER_AGENT = `videollama3; node/${process.versions.node}`;
const MAX_REDIRECTS = 10;

/**
 * Headers for one request. The token goes only to the hub itself: a redirect to another host (the CDN serving LFS
 * files) is already signed, and huggingface_hub drops Authorization there too, so a third party never sees it.
 * `Accept-Encoding: identity` keeps sizes and byte ranges those of the file rather than of a compressed body.
 */
function headersFor(client: HubClient, url: URL, extra: Record<string, string> = {}): Record<string, string> {
  const headers: Record<string, string> = { 'user-agent': USER_AGENT, 'accept-encoding': 'identity', ...extra };
  if (client.token && url.host === new URL(client.endpoint).host) headers.authorization = `Bearer ${client.token}`;
  return headers;
}

export const sendsToken = (client: HubClient, url: string | URL): boolean =>
  Boolean(client.token) && new URL(url).host === new URL(client.endpoint).host;

/** One request, with network failures turned into errors that name the URL (an abort stays an abort). */
async function send(client: HubClient, url: URL, method: string, extra?: Record<string, string>): Promise<Response> {
  try {
    return await client.fetch(url, { method, headers: headersFor(client, url, extra), redirect: 'manual', signal: client.signal });
  } catch (error) {
    if (client.signal?.aborted) throw client.signal.reason ?? error;
    throw networkError(url.href, error);
  }
}

const isRedirect = (status: number) => status >= 300 && status < 400;

function locationOf(response: Response, url: URL): URL {
  const location = response.headers.get('location');
  if (!location) throw new HubError(`${displayUrl(url)} answered HTTP ${response.status} without a Location`, 'BadResponse', { url: displayUrl(url) });
  return new URL(location, url);
}

/**
 * Sends a request and follows redirects by hand, so that each hop gets its own headers (the token only to the hub).
 * With `relativeOnly`, only redirects without a host are followed (a renamed repo on the same hub), and the first
 * absolute one (the CDN of an LFS file) is returned as is, so its headers and Location can be read.
 */
export async function request(
  client: HubClient,
  start: string,
  method: 'GET' | 'HEAD',
  options: { relativeOnly?: boolean; headers?: Record<string, string> } = {},
): Promise<{ response: Response; url: URL }> {
  let url = new URL(start);
  for (let hop = 0; ; hop++) {
    const response = await send(client, url, method, options.headers);
    if (!isRedirect(response.status) || response.status === 304) return { response, url };
    const raw = response.headers.get('location') ?? '';
    if (options.relativeOnly && /^[a-z][a-z0-9+.-]*:|^\/\//i.test(raw)) return { response, url };
    const next = locationOf(response, url);
    await discard(response);
    if (hop >= MAX_REDIRECTS) throw new HubError(`too many redirects from ${displayUrl(start)}`, 'BadResponse', { url: displayUrl(start) });
    url = next;
  }
}

/** Releases a response's connection when its body is not wanted. */
export async function discard(response: Response): Promise<void> {
  await response.body?.cancel().catch(() => undefined);
}

/** The parts of `GET /api/models/{repo}/revision/{revision}?blobs=true` that a pull needs. */
export interface RepoInfo {
  sha: string;
  siblings: { rfilename: string; size?: number; blobId?: string; lfs?: { sha256: string; size: number } }[];
}

export async function getRepoInfo(client: HubClient, ctx: RequestContext): Promise<RepoInfo> {
  const url = `${client.endpoint}/api/models/${ctx.repoId}/revision/${encodeURIComponent(ctx.revision)}?blobs=true`;
  const { response, url: final } = await request(client, url, 'GET');
  if (!response.ok) {
    await discard(response);
    throw errorFromResponse(response, final.href, { ...ctx, withToken: sendsToken(client, final) });
  }
  let info: Partial<RepoInfo>;
  try {
    info = (await response.json()) as Partial<RepoInfo>;
  } catch (error) {
    throw new HubError(`${displayUrl(final)} did not answer with JSON: ${(error as Error).message}`, 'BadResponse', { url: displayUrl(final) });
  }
  if (typeof info.sha !== 'string' || !/^[0-9a-f]{40}$/.test(info.sha) || !Array.isArray(info.siblings)) {
    throw new HubError(`${displayUrl(final)} answered without a commit "sha" and a "siblings" file list`, 'BadResponse', { url: displayUrl(final) });
  }
  return info as RepoInfo;
}

/** What a HEAD on `resolve/` tells about one file. */
export interface FileMetadata {
  /** sha256 for LFS files, git blob sha1 for regular ones: the blob's name in the cache. */
  etag: string;
  size: number;
  commit?: string;
  /** Where the bytes are: the CDN for LFS files, the resolve URL itself for small files. */
  location: string;
}

/** `W/"abc"` → `abc`, as huggingface_hub normalises ETags before using them as file names. */
export const normalizeEtag = (etag: string): string => etag.replace(/^W\//, '').replace(/^"|"$/g, '');

export const resolveUrl = (endpoint: string, repoId: string, revision: string, file: string): string =>
  `${endpoint}/${repoId}/resolve/${encodeURIComponent(revision)}/${file.split('/').map(encodeURIComponent).join('/')}`;

/**
 * HEAD on the resolve URL without following the CDN redirect: for LFS files the hub puts the content's sha256 in
 * `X-Linked-Etag` and its size in `X-Linked-Size` on the redirect itself (its own ETag and Content-Length describe
 * the redirect body); regular files answer 200 with their git blob id as ETag.
 */
export async function headFile(client: HubClient, ctx: RequestContext & { file: string }): Promise<FileMetadata> {
  const start = resolveUrl(client.endpoint, ctx.repoId, ctx.revision, ctx.file);
  const { response, url } = await request(client, start, 'HEAD', { relativeOnly: true });
  await discard(response);
  if (!response.ok && !isRedirect(response.status)) throw errorFromResponse(response, url.href, { ...ctx, withToken: sendsToken(client, url) });
  const h = response.headers;
  const etag = normalizeEtag(h.get('x-linked-etag') ?? h.get('etag') ?? '');
  const size = Number(h.get('x-linked-size') ?? h.get('content-length') ?? NaN);
  if (!etag) throw new HubError(`${displayUrl(url)} sent no ETag: the file cannot be cached by content`, 'BadResponse', { url: displayUrl(url) });
  // The ETag becomes a file name under blobs/: refuse anything that could leave that folder.
  if (!/^[A-Za-z0-9_.-]+$/.test(etag) || /^\.+$/.test(etag)) {
    throw new HubError(`${displayUrl(url)} sent an ETag unfit as a blob name: ${JSON.stringify(etag)}`, 'BadResponse', { url: displayUrl(url) });
  }
  if (!Number.isSafeInteger(size) || size < 0) throw new HubError(`${displayUrl(url)} sent no file size`, 'BadResponse', { url: displayUrl(url) });
  const location = isRedirect(response.status) ? locationOf(response, url).href : url.href;
  return { etag, size, commit: h.get('x-repo-commit') ?? undefined, location };
}
