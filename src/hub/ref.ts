/** A model on the hub: `ORG/NAME` at a branch, tag or commit. */
export interface ModelRef {
  repoId: string;
  revision: string;
}

export const DEFAULT_REVISION = 'main';

const COMMIT = /^[0-9a-f]{40}$/;

/** A full commit hash, which names an immutable snapshot (branch and tag names are resolved through refs/). */
export const isCommitHash = (revision: string): boolean => COMMIT.test(revision);

// The hub's own rule (huggingface_hub validate_repo_id): word characters, `-` and `.`, starting and ending with a
// word character, at most 96 per part, and neither `--` (the cache's separator) nor `..`.
const PART = /^[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?$/;

export function isRepoId(id: string): boolean {
  const parts = id.split('/');
  return parts.length >= 1 && parts.length <= 2 && parts.every((p) => PART.test(p)) && !id.includes('--') && !id.includes('..');
}

/**
 * A revision becomes a path under `refs/` (a branch may be `refs/pr/1`), so it must not be able to leave that folder.
 */
export function isSafeRevision(revision: string): boolean {
  if (!revision || revision.length > 256 || revision.includes('\\') || /[\x00-\x1f\x7f]/.test(revision)) return false;
  return revision.split('/').every((part) => part !== '' && part !== '.' && part !== '..');
}

/** `ORG/NAME[@revision]` → `{repoId, revision}`; the revision defaults to `main`. */
export function parseModelRef(ref: string): ModelRef {
  const at = ref.indexOf('@');
  const repoId = at < 0 ? ref : ref.slice(0, at);
  const revision = at < 0 ? DEFAULT_REVISION : ref.slice(at + 1);
  if (!isRepoId(repoId)) {
    throw new Error(`"${ref}" is not a model reference: expected ORG/NAME[@revision], e.g. DAMO-NLP-SG/VideoLLaMA3-2B`);
  }
  if (!isSafeRevision(revision)) throw new Error(`"${ref}" has an invalid revision "${revision}"`);
  return { repoId, revision };
}
