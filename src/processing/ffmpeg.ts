/**
 * Finding and running the ffmpeg and ffprobe programs.
 *
 * Video frames must come from ffmpeg itself: the reference's pixels are ffmpeg/swscale's default YUV -> RGB
 * conversion (spec 3.2), so a bit-exact port runs the same program with the same arguments.
 *
 * ffmpeg is looked up in this order: the VL3_FFMPEG environment variable (a path; if set it must work), `ffmpeg` on
 * PATH, then the optional npm package `@ffmpeg-installer/ffmpeg` (imported only when needed, so it is not a
 * dependency). ffprobe likewise: VL3_FFPROBE (or `none` to do without), an `ffprobe` beside a VL3_FFMPEG binary,
 * PATH, then `@ffprobe-installer/ffprobe`. Without any ffprobe, stream information is read from `ffmpeg -i`'s
 * report instead (see video-probe.ts for what that loses).
 *
 * Programs run through child_process.spawn with an argument list (never a shell), stdout is streamed, stderr is kept
 * for error messages, and an AbortSignal kills the child.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

export type ToolName = 'ffmpeg' | 'ffprobe';

/** Where a program was found. */
export type ToolOrigin = 'env' | 'beside-ffmpeg' | 'path' | 'npm';

export interface Tool {
  name: ToolName;
  /** What to spawn: an absolute path, or the bare name for a PATH lookup. */
  program: string;
  origin: ToolOrigin;
  /** First line of `-version`, e.g. "ffmpeg version 5.1.9-0+deb12u1 Copyright (c) 2000-2026 the FFmpeg developers". */
  version: string;
}

const ENV_VARS: Record<ToolName, string> = { ffmpeg: 'VL3_FFMPEG', ffprobe: 'VL3_FFPROBE' };
const NPM_PACKAGES: Record<ToolName, string> = { ffmpeg: '@ffmpeg-installer/ffmpeg', ffprobe: '@ffprobe-installer/ffprobe' };

/** Lookups are cached per environment setting, so a test that changes VL3_FFMPEG gets a fresh one. */
const found = new Map<string, Promise<Tool | undefined>>();

export function clearToolCache(): void {
  found.clear();
}

/** The ffmpeg to run, or an error that lists every way to provide one. */
export async function findFfmpeg(): Promise<Tool> {
  const tool = await cached('ffmpeg', lookUpFfmpeg);
  if (!tool) throw new Error(missingMessage('ffmpeg'));
  return tool;
}

/** The ffprobe to run, or undefined when there is none (VL3_FFPROBE=none, or nothing found). */
export async function findFfprobe(): Promise<Tool | undefined> {
  return cached('ffprobe', lookUpFfprobe);
}

function cached(name: ToolName, lookUp: () => Promise<Tool | undefined>): Promise<Tool | undefined> {
  const key = `${name}\0${process.env.VL3_FFMPEG ?? ''}\0${process.env.VL3_FFPROBE ?? ''}\0${process.env.PATH ?? ''}`;
  let promise = found.get(key);
  if (!promise) {
    promise = lookUp();
    found.set(key, promise);
    promise.catch(() => found.delete(key)); // a broken setting may be fixed; look again next time
  }
  return promise;
}

async function lookUpFfmpeg(): Promise<Tool | undefined> {
  const fromEnv = process.env.VL3_FFMPEG;
  if (fromEnv) return requireWorking('ffmpeg', fromEnv, 'env');
  return (await tryTool('ffmpeg', 'ffmpeg', 'path')) ?? (await fromNpm('ffmpeg'));
}

async function lookUpFfprobe(): Promise<Tool | undefined> {
  const fromEnv = process.env.VL3_FFPROBE;
  if (fromEnv?.toLowerCase() === 'none') return undefined;
  if (fromEnv) return requireWorking('ffprobe', fromEnv, 'env');
  // The ffprobe of the same build as a chosen ffmpeg, when it sits beside it.
  const ffmpegEnv = process.env.VL3_FFMPEG;
  if (ffmpegEnv) {
    const sibling = join(dirname(ffmpegEnv), process.platform === 'win32' ? 'ffprobe.exe' : 'ffprobe');
    if (existsSync(sibling)) {
      const tool = await tryTool('ffprobe', sibling, 'beside-ffmpeg');
      if (tool) return tool;
    }
  }
  return (await tryTool('ffprobe', 'ffprobe', 'path')) ?? (await fromNpm('ffprobe'));
}

async function requireWorking(name: ToolName, program: string, origin: ToolOrigin): Promise<Tool> {
  const result = await versionOf(name, program);
  if (typeof result === 'string') return { name, program, origin, version: result };
  throw new Error(`${ENV_VARS[name]}=${program} does not run as ${name}: ${result.error}. ${options(name)}`);
}

async function tryTool(name: ToolName, program: string, origin: ToolOrigin): Promise<Tool | undefined> {
  const result = await versionOf(name, program);
  return typeof result === 'string' ? { name, program, origin, version: result } : undefined;
}

async function fromNpm(name: ToolName): Promise<Tool | undefined> {
  const specifier = NPM_PACKAGES[name];
  let path: unknown;
  try {
    const mod = (await import(specifier)) as { default?: { path?: unknown }; path?: unknown };
    path = mod.default?.path ?? mod.path;
  } catch {
    return undefined; // not installed: it is optional
  }
  return typeof path === 'string' ? tryTool(name, path, 'npm') : undefined;
}

/** The first line of `program -version`, or why it could not be had. */
async function versionOf(name: ToolName, program: string): Promise<string | { error: string }> {
  try {
    const { code, stdout, stderr } = await runTool(program, ['-version'], { timeoutMs: 20_000 });
    const first = stdout.toString('utf8').split('\n')[0]!.trim();
    if (code === 0 && first.startsWith(`${name} version`)) return first;
    return { error: code === 0 ? `unexpected -version output "${first.slice(0, 80)}"` : `exit code ${code}: ${lastLines(stderr, 3)}` };
  } catch (err) {
    return { error: (err as Error).message };
  }
}

function options(name: ToolName): string {
  return (
    `Provide ${name} in one of these ways: set ${ENV_VARS[name]} to the program's path; install it on PATH ` +
    `(e.g. apt-get install ffmpeg, brew install ffmpeg); or npm install ${NPM_PACKAGES[name]}.`
  );
}

function missingMessage(name: ToolName): string {
  return `${name} was not found (${ENV_VARS[name]} is not set, no "${name}" runs from PATH, ${NPM_PACKAGES[name]} is not installed). ${options(name)}`;
}

// ---------------------------------------------------------------------------------------------------------------
// Running

/** Leading ffmpeg options that change nothing in the output: no console interaction, only errors on stderr. */
export const FFMPEG_QUIET: readonly string[] = ['-nostdin', '-hide_banner', '-nostats', '-loglevel', 'error'];

/** A tool ran and failed: names the input and carries the end of the tool's stderr. */
export class FfmpegError extends Error {
  constructor(
    message: string,
    readonly file: string | undefined,
    readonly exitCode: number | null,
    readonly stderr: string,
  ) {
    super(message);
    this.name = 'FfmpegError';
  }
}

export interface RunOptions {
  signal?: AbortSignal;
  /** Kill the child after this many milliseconds (then the call rejects). */
  timeoutMs?: number;
}

export interface RunResult {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Most stderr kept (its end: ffmpeg reports the fatal error last). */
const STDERR_LIMIT = 64 * 1024;

/**
 * The last `n` non-empty lines of a tool's stderr, for messages. ffmpeg names its components with their memory
 * address (`[mov,mp4,m4a @ 0x55d5c8a0e2c0] moov atom not found`): the address tells a reader nothing and tells an
 * attacker about the server's memory layout, so it is dropped and the component kept.
 */
export function lastLines(stderr: string, n = 12): string {
  const lines = stderr.split(/\r?\n|\r/).filter((l) => l.trim() !== '');
  return lines
    .slice(-n)
    .map((l) => l.replace(/ @ 0x[0-9a-f]+\]/gi, ']'))
    .join('\n');
}

/**
 * Runs a program to completion and returns its exit code and output; a non-zero exit is not an error here (the
 * caller knows what it means, e.g. `ffmpeg -i file` always exits 1). Rejects when the program cannot be started,
 * on abort and on timeout.
 */
export async function runTool(program: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const chunks: Buffer[] = [];
  const { code, stderr } = await spawnStreaming(program, args, (chunk) => void chunks.push(chunk), options);
  return { code, stdout: Buffer.concat(chunks), stderr };
}

/** What an output consumer may answer: 'stop' ends the run early (the child is killed; not an error). */
export type ChunkResult = void | 'stop';

export interface StreamOptions extends RunOptions {
  /** Names the input in error messages. */
  file?: string;
  /** What the run does, for error messages ("decoding", "probing"). */
  action?: string;
}

/**
 * Runs a program and hands its stdout to `onChunk` as it arrives. A returned promise is awaited before more
 * output is read, so a slow consumer pauses the child through the pipe instead of buffering its output.
 * Rejects with an FfmpegError on a non-zero exit (naming the file, with the end of stderr), with the consumer's
 * error if it throws (the child is killed), and with the signal's reason on abort (the child is killed).
 */
export async function streamTool(
  program: string,
  args: readonly string[],
  onChunk: (chunk: Buffer) => ChunkResult | Promise<ChunkResult>,
  options: StreamOptions = {},
): Promise<void> {
  const { code, stderr, stopped } = await spawnStreaming(program, args, onChunk, options);
  if (!stopped && code !== 0) {
    const subject = [options.action ?? 'running', options.file].filter(Boolean).join(' ');
    const status = code === null ? 'was killed by a signal' : `exited with code ${code}`;
    const tail = lastLines(stderr);
    throw new FfmpegError(
      `${subject} failed: ${program} ${status}${tail ? `:\n${tail}` : ' (no error output)'}`,
      options.file,
      code,
      stderr,
    );
  }
}

interface SpawnOutcome {
  code: number | null;
  stderr: string;
  stopped: boolean;
}

async function spawnStreaming(
  program: string,
  args: readonly string[],
  onChunk: (chunk: Buffer) => ChunkResult | Promise<ChunkResult>,
  options: RunOptions,
): Promise<SpawnOutcome> {
  const { signal, timeoutMs } = options;
  signal?.throwIfAborted();
  const child = spawn(program, [...args], { stdio: ['ignore', 'pipe', 'pipe'], windowsHide: true });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (text: string) => {
    stderr += text;
    if (stderr.length > 2 * STDERR_LIMIT) stderr = stderr.slice(-STDERR_LIMIT);
  });
  const exited = new Promise<{ code: number | null; error?: Error }>((resolve) => {
    child.once('error', (error) => resolve({ code: null, error }));
    child.once('close', (code) => resolve({ code }));
  });
  const kill = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  let timedOut = false;
  const timer =
    timeoutMs === undefined
      ? undefined
      : setTimeout(() => {
          timedOut = true;
          kill();
        }, timeoutMs);
  signal?.addEventListener('abort', kill, { once: true });
  let stopped = false;
  try {
    for await (const chunk of child.stdout as AsyncIterable<Buffer>) {
      if (signal?.aborted || timedOut) break;
      if ((await onChunk(chunk)) === 'stop') {
        stopped = true;
        break;
      }
    }
  } catch (err) {
    kill();
    await exited;
    throw err;
  } finally {
    signal?.removeEventListener('abort', kill);
    if (timer) clearTimeout(timer);
  }
  if (stopped || signal?.aborted || timedOut) kill();
  const { code, error } = await exited;
  if (signal?.aborted) throw signal.reason;
  if (error) {
    const why = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'program not found' : error.message;
    throw new Error(`cannot run ${program}: ${why}`);
  }
  if (timedOut) throw new Error(`${program} ${args.join(' ')} did not finish within ${timeoutMs} ms`);
  if (stderr.length > STDERR_LIMIT) stderr = stderr.slice(-STDERR_LIMIT);
  return { code, stderr, stopped };
}
