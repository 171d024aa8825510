// Video decoding and sampling on a long clip: the time from a video path to its 180 sampled frames in memory
// (probe, frame-timestamp scan, ffmpeg decode with the fps filter, RGB frames handed over one by one).
// Usage: node dist/bench/video.js [clip]   (prints one JSON object; the clip is generated when missing)
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { findFfmpeg, runTool } from '../src/processing/ffmpeg.js';
import { decodeVideo, planVideo } from '../src/processing/video.js';
import { median, round } from './stats.js';

export const BENCH_CLIP = { width: 1280, height: 720, fps: 30, seconds: 180 } as const;

/**
 * Writes a 1280x720, 30 fps, 3-minute H.264 clip of ffmpeg's testsrc2 pattern to `path`, unless a file is already
 * there. libx264 ultrafast keeps the encode short; an ffmpeg without libx264 writes MPEG-4 part 2 instead.
 */
export async function makeBenchClip(path: string): Promise<void> {
  if (existsSync(path)) return;
  mkdirSync(dirname(path), { recursive: true });
  const ffmpeg = await findFfmpeg();
  const { width, height, fps, seconds } = BENCH_CLIP;
  const source = ['-f', 'lavfi', '-i', `testsrc2=size=${width}x${height}:rate=${fps}:duration=${seconds}`];
  const partial = `${path}.partial`;
  const attempts = [
    ['-c:v', 'libx264', '-preset', 'ultrafast', '-pix_fmt', 'yuv420p'],
    ['-c:v', 'mpeg4', '-q:v', '4', '-pix_fmt', 'yuv420p'],
  ];
  let stderr = '';
  for (const codec of attempts) {
    // Written under another name first, so an interrupted run leaves no truncated clip behind.
    const result = await runTool(ffmpeg.program, ['-nostdin', '-hide_banner', '-loglevel', 'error', '-y', ...source, ...codec, '-an', '-f', 'mp4', partial]);
    if (result.code === 0) {
      renameSync(partial, path);
      return;
    }
    stderr = result.stderr;
    rmSync(partial, { force: true });
  }
  throw new Error(`cannot write the benchmark clip ${path}: ${stderr.trim()}`);
}

export interface VideoDecodeFigures {
  clip: string;
  frames: number;
  /** Median seconds of planVideo + decodeVideo over the runs. */
  seconds: number;
  runs: number[];
}

/** Median seconds (of 3 runs) to plan and decode a clip's sampled frames, the frames dropped as they arrive. */
export async function measureVideoDecode(path: string, options: { fps: number; maxFrames: number } = { fps: 1, maxFrames: 180 }): Promise<number> {
  return (await measureVideoDecodeFigures(path, options)).seconds;
}

export async function measureVideoDecodeFigures(path: string, options: { fps: number; maxFrames: number } = { fps: 1, maxFrames: 180 }, runs = 3): Promise<VideoDecodeFigures> {
  const times: number[] = [];
  let frames = 0;
  for (let r = 0; r < runs; r++) {
    const t0 = performance.now();
    const plan = await planVideo(path, options);
    frames = 0;
    await decodeVideo(plan, () => void frames++);
    times.push((performance.now() - t0) / 1000);
  }
  return { clip: path, frames, seconds: round(median(times), 2), runs: times.map((t) => round(t, 2)) };
}

async function main(): Promise<void> {
  const clip = process.argv[2] ?? join(tmpdir(), 'vl3-bench-720p30-180s.mp4');
  await makeBenchClip(clip);
  process.stdout.write(JSON.stringify(await measureVideoDecodeFigures(clip)) + '\n');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
