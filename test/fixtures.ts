// Where the golden fixtures of the official implementation live: `<repo>/../shared/fixtures`, or the folder named by
// VL3_FIXTURES. Parity tests skip when they are missing, except in CI, where a missing folder is a failure.
import type { ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import './lavapipe.js';

/** The folder holding package.json, found by walking up from this file (tests run compiled, from dist/test). */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
}

/** The fixtures folder, or undefined (tests then skip) when it is missing outside CI. */
export function fixturesDir(): string | undefined {
  const dir = process.env.VL3_FIXTURES ? resolve(process.env.VL3_FIXTURES) : resolve(repoRoot(), '..', 'shared', 'fixtures');
  if (existsSync(join(dir, 'README.md'))) return dir;
  if (process.env.CI) throw new Error(`golden fixtures not found at ${dir} (required when CI is set)`);
  return undefined;
}

/** The message for `{ skip }` when the fixtures are missing. */
export const FIXTURES_MISSING = 'golden fixtures not found (../shared/fixtures beside the checkout); skipped';

export const TINY_CHECKPOINT = join('checkpoint', 'VideoLLaMA3-2B-tiny-random');

export function readJson<T = unknown>(file: string): T {
  return JSON.parse(readFileSync(file, 'utf8')) as T;
}

/**
 * The URL a spawned `vl3 serve` listens at, from the line it prints to stderr once ready (rejects if it exits first),
 * and everything it has printed to stderr so far.
 */
export function servedUrl(server: ChildProcess): Promise<{ url: string; stderr: () => string }> {
  let stderr = '';
  return new Promise((resolve, reject) => {
    server.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      const m = / at (http:\/\/\S+) \(/.exec(stderr);
      if (m) resolve({ url: m[1]!, stderr: () => stderr });
    });
    server.once('exit', (code) => reject(new Error(`serve exited (${code}): ${stderr}`)));
  });
}
