import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

// Every default here follows huggingface_hub's constants.py, so that a model pulled by Python is found by us and the
// other way round: the same environment variables, in the same order of precedence.

type Env = Record<string, string | undefined>;

const nonEmpty = (value: string | undefined) => (value ? value : undefined);

/** `~/x` → an absolute path (huggingface_hub expands `~` in its variables too). */
export function expandHome(path: string): string {
  if (path === '~') return homedir();
  if (path.startsWith('~/')) return join(homedir(), path.slice(2));
  return path;
}

/** `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`. */
export function hfHome(env: Env = process.env): string {
  const home = nonEmpty(env.HF_HOME);
  if (home) return resolve(expandHome(home));
  const xdg = nonEmpty(env.XDG_CACHE_HOME) ?? join(homedir(), '.cache');
  return resolve(expandHome(xdg), 'huggingface');
}

/** The hub cache root: `$HF_HUB_CACHE` (or its legacy name `$HUGGINGFACE_HUB_CACHE`), else `<HF_HOME>/hub`. */
export function defaultCacheDir(env: Env = process.env): string {
  const explicit = nonEmpty(env.HF_HUB_CACHE) ?? nonEmpty(env.HUGGINGFACE_HUB_CACHE);
  return explicit ? resolve(expandHome(explicit)) : join(hfHome(env), 'hub');
}

export const DEFAULT_ENDPOINT = 'https://huggingface.co';

export function defaultEndpoint(env: Env = process.env): string {
  return (nonEmpty(env.HF_ENDPOINT) ?? DEFAULT_ENDPOINT).replace(/\/+$/, '');
}

/** huggingface_hub's truthy spellings for boolean variables. */
export function envFlag(value: string | undefined): boolean {
  return value !== undefined && ['1', 'ON', 'YES', 'TRUE'].includes(value.trim().toUpperCase());
}

export function defaultOffline(env: Env = process.env): boolean {
  return envFlag(env.HF_HUB_OFFLINE);
}

/**
 * The token huggingface_hub would use: `$HF_TOKEN`, the legacy `$HUGGING_FACE_HUB_TOKEN`, else the file written by
 * `huggingface-cli login` (`$HF_TOKEN_PATH`, default `<HF_HOME>/token`). An unreadable file simply means no token.
 */
export function defaultToken(env: Env = process.env): string | undefined {
  const fromEnv = nonEmpty(env.HF_TOKEN?.trim()) ?? nonEmpty(env.HUGGING_FACE_HUB_TOKEN?.trim());
  if (fromEnv) return fromEnv;
  const file = nonEmpty(env.HF_TOKEN_PATH) ? resolve(expandHome(env.HF_TOKEN_PATH!)) : join(hfHome(env), 'token');
  try {
    return nonEmpty(readFileSync(file, 'utf8').trim());
  } catch {
    return undefined;
  }
}
