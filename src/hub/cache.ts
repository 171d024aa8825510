import { lstat, mkdir, readFile, rename, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import { dirname, join, relative, sep } from 'node:path';
import { isCommitHash } from './ref.js';

/**
 * One model's folder in the hub cache, laid out exactly as huggingface_hub lays it out:
 *
 *   models--ORG--NAME/
 *     blobs/<etag>                      file contents, named by sha256 (LFS) or git blob sha1 (regular files)
 *     blobs/<etag>.incomplete           a download in progress (resumable)
 *     snapshots/<commit>/<path>         relative symlinks to ../../blobs/<etag> (one more ../ per subfolder)
 *     refs/<revision>                   the commit a branch or tag pointed to, without a trailing newline
 *   .locks/models--ORG--NAME/           lock files (huggingface_hub's flock()s and ours)
 */
export class RepoCache {
  readonly dir: string;
  constructor(
    readonly cacheDir: string,
    readonly repoId: string,
  ) {
    this.dir = join(cacheDir, repoFolderName(repoId));
  }

  blobPath(etag: string): string {
    return join(this.dir, 'blobs', etag);
  }

  /** Ours end in `.vl3.lock`: huggingface_hub's `<etag>.lock` files outlive its locks and would look held. */
  lockPath(etag: string): string {
    return join(this.cacheDir, '.locks', repoFolderName(this.repoId), `${etag}.vl3.lock`);
  }

  snapshotDir(commit: string): string {
    return join(this.dir, 'snapshots', commit);
  }

  snapshotPath(commit: string, file: string): string {
    return join(this.snapshotDir(commit), ...file.split('/'));
  }

  async readRef(revision: string): Promise<string | undefined> {
    const text = await readFile(join(this.dir, 'refs', ...revision.split('/')), 'utf8').catch(() => undefined);
    const commit = text?.trim();
    return commit && isCommitHash(commit) ? commit : undefined;
  }

  /** Written only when it changes, through a rename so that a reader never sees it half-written. */
  async writeRef(revision: string, commit: string): Promise<void> {
    if ((await this.readRef(revision)) === commit) return;
    const path = join(this.dir, 'refs', ...revision.split('/'));
    await mkdir(dirname(path), { recursive: true });
    const tmp = `${path}.${process.pid}.tmp`;
    await writeFile(tmp, commit);
    await rename(tmp, path);
  }

  /** A file of a snapshot that is present and readable (a dangling link counts as missing). */
  async hasFile(commit: string, file: string): Promise<boolean> {
    return stat(this.snapshotPath(commit, file)).then((s) => s.isFile(), () => false);
  }

  /** Points `snapshots/<commit>/<file>` at its blob with a relative link, replaced atomically if it exists. */
  async link(commit: string, file: string, etag: string): Promise<void> {
    const path = this.snapshotPath(commit, file);
    await mkdir(dirname(path), { recursive: true });
    const target = relative(dirname(path), this.blobPath(etag)).split(sep).join('/');
    const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
    await symlink(target, tmp);
    try {
      await rename(tmp, path);
    } catch (error) {
      await unlink(tmp).catch(() => undefined);
      throw error;
    }
  }

  /**
   * The commit a revision stands for in the cache, without asking the hub: a commit hash names its own snapshot,
   * a branch or tag goes through refs/. Undefined unless that snapshot folder exists.
   */
  async cachedCommit(revision: string): Promise<string | undefined> {
    const commit = isCommitHash(revision) ? revision : await this.readRef(revision);
    if (!commit) return undefined;
    const folder = await lstat(this.snapshotDir(commit)).catch(() => undefined);
    return folder?.isDirectory() ? commit : undefined;
  }
}

/** `ORG/NAME` → `models--ORG--NAME` (repo ids cannot contain `--`, so this is reversible). */
export const repoFolderName = (repoId: string): string => `models--${repoId.replaceAll('/', '--')}`;

export const repoIdFromFolder = (folder: string): string | undefined =>
  folder.startsWith('models--') ? folder.slice('models--'.length).replaceAll('--', '/') : undefined;
