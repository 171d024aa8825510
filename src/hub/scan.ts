import { lstat, readdir, readFile, realpath } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { repoIdFromFolder } from './cache.js';
import { defaultCacheDir, expandHome } from './paths.js';
import { isCommitHash } from './ref.js';

export interface CachedSnapshot {
  commit: string;
  /** Repo paths (`/`-separated) of the files in this snapshot. */
  files: string[];
}

export interface CachedModel {
  repoId: string;
  /** The repo's folder, `<cache>/models--ORG--NAME`. */
  path: string;
  /** Disk used: every blob once (however many snapshots link it), plus files stored in snapshots themselves. */
  sizeBytes: number;
  /** Branch or tag → commit, from refs/. */
  revisions: Record<string, string>;
  snapshots: CachedSnapshot[];
  lastModified: Date;
}

/** Relative paths of the non-directories under `root` (links are not followed), `/`-separated; [] if it is missing. */
export async function walkFiles(root: string, prefix = ''): Promise<string[]> {
  const entries = await readdir(join(root, prefix), { withFileTypes: true }).catch(() => []);
  const out: string[] = [];
  for (const entry of entries) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) out.push(...(await walkFiles(root, rel)));
    else out.push(rel);
  }
  return out.sort();
}

/**
 * The models in a hub cache, whoever downloaded them (this package or Python's huggingface_hub). Only model repos
 * (`models--*`); datasets and spaces share the folder but are not ours to list.
 */
export async function listCachedModels(cacheDir?: string): Promise<CachedModel[]> {
  const root = resolve(expandHome(cacheDir ?? defaultCacheDir()));
  const folders = await readdir(root, { withFileTypes: true }).catch(() => []);
  const models: CachedModel[] = [];
  for (const folder of folders) {
    const repoId = repoIdFromFolder(folder.name);
    if (!repoId || !folder.isDirectory()) continue;
    models.push(await describe(join(root, folder.name), repoId));
  }
  return models.sort((a, b) => a.repoId.localeCompare(b.repoId));
}

async function describe(path: string, repoId: string): Promise<CachedModel> {
  let newest = 0;
  const seen = new Map<string, number>(); // real path → size, so a blob linked from many snapshots counts once
  const account = async (file: string, counts = true) => {
    const info = await lstat(file).catch(() => undefined);
    if (!info) return;
    newest = Math.max(newest, info.mtimeMs);
    if (counts && info.isFile()) seen.set(await realpath(file).catch(() => file), info.size);
  };

  for (const blob of await walkFiles(join(path, 'blobs'))) await account(join(path, 'blobs', blob));

  const revisions: Record<string, string> = {};
  for (const ref of await walkFiles(join(path, 'refs'))) {
    const commit = (await readFile(join(path, 'refs', ref), 'utf8').catch(() => '')).trim();
    if (isCommitHash(commit)) revisions[ref] = commit;
    await account(join(path, 'refs', ref), false);
  }

  const snapshots: CachedSnapshot[] = [];
  const commits = await readdir(join(path, 'snapshots'), { withFileTypes: true }).catch(() => []);
  for (const dir of commits) {
    if (!dir.isDirectory()) continue;
    const files = await walkFiles(join(path, 'snapshots', dir.name));
    // Links are the usual case; copies (huggingface_hub without symlink support) are counted as disk use too.
    for (const file of files) await account(join(path, 'snapshots', dir.name, file));
    snapshots.push({ commit: dir.name, files });
  }

  const sizeBytes = [...seen.values()].reduce((a, b) => a + b, 0);
  return { repoId, path, sizeBytes, revisions, snapshots, lastModified: new Date(newest) };
}
