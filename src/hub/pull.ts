import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { RepoCache } from './cache.js';
import { downloadBlob, type ProgressEvent } from './download.js';
import { HubError, type RequestContext } from './errors.js';
import { getRepoInfo, headFile, type FetchLike, type HubClient } from './http.js';
import { withLock } from './lock.js';
import { defaultCacheDir, defaultEndpoint, defaultOffline, defaultToken, expandHome } from './paths.js';
import { DEFAULT_INCLUDE, fileMatcher } from './patterns.js';
import { parseModelRef } from './ref.js';
import { walkFiles } from './scan.js';

export interface HubOptions {
  /** Cache root; default `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`. */
  cacheDir?: string;
  /** Hub URL; default `$HF_ENDPOINT`, else https://huggingface.co. */
  endpoint?: string;
  /** Access token for gated or private repos; default `$HF_TOKEN`, else the `huggingface-cli login` token file. */
  token?: string;
  /** Use the cache only, never the network; default `$HF_HUB_OFFLINE`. */
  offline?: boolean;
  /** Globs (fnmatch style) of the repo files to fetch, replacing the default (what the loader reads). */
  include?: string[];
  onProgress?: (event: ProgressEvent) => void;
  signal?: AbortSignal;
  /** The fetch to use (default: Node's global fetch). */
  fetch?: FetchLike;
  /** Further attempts per file after a dropped connection, each resuming the partial file (default 3). */
  retries?: number;
  /** Files downloaded at once (default 4). */
  concurrency?: number;
}

export interface PullResult {
  repoId: string;
  revision: string;
  commit: string;
  /** The snapshot folder: what a loader reads. */
  path: string;
  /** Repo paths of the wanted files, all present in `path`. */
  files: string[];
  /** The files this call downloaded (empty when the cache already had them all). */
  downloaded: string[];
  downloadedBytes: number;
  /** True when the hub was not asked (offline mode) or could not be reached and the cache answered instead. */
  fromCache: boolean;
  /** Why the cache answered although the hub was to be asked (the network error). */
  warning?: string;
}

/**
 * Makes `ORG/NAME[@revision]` available in the cache and returns where. Online: one API request gives the commit
 * and file list; a snapshot that already holds every wanted file costs nothing more. Otherwise each missing file is
 * located by HEAD, downloaded under a lock, verified, and linked into the snapshot. Offline: refs and snapshots only.
 */
export async function pullModel(ref: string, options: HubOptions = {}): Promise<PullResult> {
  const { repoId, revision } = parseModelRef(ref);
  const cacheDir = resolve(expandHome(options.cacheDir ?? defaultCacheDir()));
  const repo = new RepoCache(cacheDir, repoId);
  const offline = options.offline ?? defaultOffline();
  const result = { repoId, revision, downloaded: [] as string[], downloadedBytes: 0 };

  if (offline) {
    const commit = await repo.cachedCommit(revision);
    if (!commit) {
      throw new HubError(
        `${repoId}@${revision} is not in the cache at ${cacheDir}, and offline mode (HF_HUB_OFFLINE / --offline) forbids downloading it: pull it once online`,
        'NotCached',
        { repoId },
      );
    }
    return { ...result, commit, path: repo.snapshotDir(commit), files: await cachedFiles(repo, commit, options), fromCache: true };
  }

  const client: HubClient = {
    endpoint: (options.endpoint ?? defaultEndpoint()).replace(/\/+$/, ''),
    token: options.token ?? defaultToken(),
    fetch: options.fetch ?? globalThis.fetch,
    signal: options.signal,
  };
  const ctx: RequestContext = { endpoint: client.endpoint, repoId, revision, withToken: Boolean(client.token) };

  let info;
  try {
    info = await getRepoInfo(client, ctx);
  } catch (error) {
    // As huggingface_hub does: without a connection, a snapshot already cached for this revision still serves.
    if (!(error instanceof HubError && error.code === 'NetworkError')) throw error;
    const commit = await repo.cachedCommit(revision);
    if (!commit) throw error;
    const files = await cachedFiles(repo, commit, options);
    const warning = `${error.message}; using the cached snapshot ${commit} of ${repoId}`;
    return { ...result, commit, path: repo.snapshotDir(commit), files, fromCache: true, warning };
  }

  const commit = info.sha;
  const wanted = fileMatcher(options.include?.length ? options.include : DEFAULT_INCLUDE);
  const files = info.siblings.map((s) => s.rfilename).filter((f) => typeof f === 'string' && wanted(f));
  for (const file of files) {
    // File names come from the server and become paths under snapshots/<commit>/.
    if (file.startsWith('/') || file.includes('\\') || file.split('/').some((p) => p === '' || p === '.' || p === '..')) {
      throw new HubError(`the hub listed an unsafe file name in ${repoId}: ${JSON.stringify(file)}`, 'BadResponse', { repoId });
    }
  }
  if (files.length === 0) {
    const patterns = (options.include?.length ? options.include : DEFAULT_INCLUDE).join(', ');
    throw new HubError(
      `no file of ${repoId}@${revision} matches ${patterns}; it has: ${info.siblings.map((s) => s.rfilename).join(', ') || 'no files'}`,
      'EntryNotFound',
      { repoId },
    );
  }

  const present = await Promise.all(files.map((f) => repo.hasFile(commit, f)));
  const missing = files.filter((_, i) => !present[i]);
  // The first failure stops the other downloads (their partial files stay for the next run).
  const stop = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
  const fileClient = { ...client, signal };
  let failure: unknown;
  const queue = [...missing];
  const worker = async () => {
    for (let file = queue.shift(); file !== undefined && failure === undefined; file = queue.shift()) {
      try {
        const bytes = await fetchFile(repo, fileClient, { ...ctx, revision: commit, file }, options);
        if (bytes > 0) result.downloaded.push(file);
        result.downloadedBytes += bytes;
      } catch (error) {
        if (failure === undefined) failure = error;
        stop.abort();
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(options.concurrency ?? 4, missing.length) }, worker));
  if (failure !== undefined) throw options.signal?.aborted ? options.signal.reason : failure;

  if (revision !== commit) await repo.writeRef(revision, commit);
  return { ...result, commit, path: repo.snapshotDir(commit), files, fromCache: false };
}

/** One file into the snapshot; returns the bytes downloaded (0 when its blob was already there). */
async function fetchFile(repo: RepoCache, client: HubClient, ctx: RequestContext & { file: string }, options: HubOptions): Promise<number> {
  const meta = await headFile(client, ctx);
  const blob = repo.blobPath(meta.etag);
  const exists = () => stat(blob).then((s) => s.isFile(), () => false);
  let downloaded = 0;
  if (!(await exists())) {
    await withLock(
      repo.lockPath(meta.etag),
      async () => {
        // Another process may have finished it while we waited for the lock.
        if (await exists()) return;
        await downloadBlob({ client, ctx, meta, blobPath: blob, retries: options.retries ?? 3, onProgress: options.onProgress });
        downloaded = meta.size;
      },
      { signal: client.signal },
    );
  }
  await repo.link(ctx.revision, ctx.file, meta.etag);
  return downloaded;
}

/** The files of a cached snapshot (repo paths, `/`-separated). */
/**
 * The wanted files of a cached snapshot. Without the hub the full file list is unknown, so a snapshot is accepted
 * when it holds at least one wanted file (a snapshot of only a README, say, is not a model).
 */
async function cachedFiles(repo: RepoCache, commit: string, options: HubOptions): Promise<string[]> {
  const patterns = options.include?.length ? options.include : DEFAULT_INCLUDE;
  const files = (await walkFiles(repo.snapshotDir(commit))).filter(fileMatcher(patterns));
  if (files.length === 0) {
    throw new HubError(`the cached snapshot ${repo.snapshotDir(commit)} of ${repo.repoId} has no file matching ${patterns.join(', ')}`, 'NotCached', { repoId: repo.repoId });
  }
  return files;
}

/**
 * A model folder from a reference: an existing local directory is used as is; anything else is a hub id
 * `ORG/NAME[@revision]`, pulled into (or, offline, found in) the Hugging Face cache. Returns an absolute path.
 */
export async function resolveModel(ref: string, options: HubOptions = {}): Promise<string> {
  const local = await stat(expandHome(ref)).catch(() => undefined);
  if (local?.isDirectory()) return resolve(expandHome(ref));
  if (local) throw new Error(`model ${ref} is a file, not a checkpoint folder`);
  // Something written as a path is a folder that is missing, not a hub id.
  if (/^(\.{1,2}|~)?\//.test(ref) || ref.endsWith('/')) throw new Error(`model folder ${ref} does not exist`);
  return (await pullModel(ref, options)).path;
}
