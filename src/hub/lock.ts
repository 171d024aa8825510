import { mkdir, readFile, stat, unlink, utimes, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';

/**
 * An exclusive lock between processes (and between concurrent pulls in one process), held while a blob is being
 * downloaded so that two downloaders never append to the same `.incomplete` file.
 *
 * Node has no flock(), so this is a file created with O_EXCL that names its owner. A lock whose owner died without
 * removing it (a killed process) would block every later pull, hence the staleness rules: on this host, an owner pid
 * that no longer runs; from another host sharing the cache, a lock not refreshed for `staleMs` (the owner refreshes
 * it every `staleMs / 4` while it works).
 *
 * This does not exclude huggingface_hub itself, which flock()s `<etag>.lock` in the same folder; in the rare case
 * of both downloading the same blob at the same moment, the integrity check refuses a mixed-up file.
 */
export interface LockOptions {
  signal?: AbortSignal;
  pollMs?: number;
  staleMs?: number;
}

interface Owner {
  pid: number;
  host: string;
  token: string;
}

const running = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
};

async function isStale(path: string, staleMs: number): Promise<boolean> {
  let text: string;
  let mtimeMs: number;
  try {
    [text, { mtimeMs }] = await Promise.all([readFile(path, 'utf8'), stat(path)]);
  } catch {
    return false; // released meanwhile: just try again
  }
  let owner: Partial<Owner> = {};
  try {
    owner = JSON.parse(text) as Owner;
  } catch {
    // Half-written by an owner that is creating it right now, or garbage: judge by age only.
  }
  if (owner.host === hostname() && typeof owner.pid === 'number') return !running(owner.pid);
  return Date.now() - mtimeMs > staleMs;
}

export async function withLock<T>(path: string, work: () => Promise<T>, options: LockOptions = {}): Promise<T> {
  const { signal, pollMs = 200, staleMs = 10 * 60_000 } = options;
  const me: Owner = { pid: process.pid, host: hostname(), token: `${process.pid}-${Math.random().toString(36).slice(2)}` };
  await mkdir(dirname(path), { recursive: true });
  for (;;) {
    signal?.throwIfAborted();
    try {
      await writeFile(path, JSON.stringify(me), { flag: 'wx' });
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    if (await isStale(path, staleMs)) {
      await unlink(path).catch(() => undefined);
      continue;
    }
    await delay(pollMs, undefined, { signal });
  }
  const heartbeat = setInterval(() => {
    const now = new Date();
    utimes(path, now, now).catch(() => undefined);
  }, staleMs / 4);
  heartbeat.unref();
  try {
    return await work();
  } finally {
    clearInterval(heartbeat);
    // Remove it only if it is still ours (a waiter may have judged it stale and taken it over).
    const current = await readFile(path, 'utf8').catch(() => '');
    if (current === JSON.stringify(me)) await unlink(path).catch(() => undefined);
  }
}
