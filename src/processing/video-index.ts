/**
 * The reference's index path (spec 3.3, `load_video_from_ids`): frames chosen by index at an assumed frame rate,
 * for GIFs (25 fps), folders of frames (3 fps) and video clips shorter than 1 s (the stream's average rate; decord
 * in the reference, ffmpeg here). video.ts also sends clips here that give no frame on the ffmpeg path.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';

import { FFMPEG_QUIET } from './ffmpeg.js';
import { loadImage } from './image.js';
import type { PlanBase, VideoOptions, VideoPathKind, VideoPlan } from './video.js';
import { displaySize, ffmpegInput, probeVideo, scanFrameTimes, type VideoProbe } from './video-probe.js';
import { MICROSECONDS, rescaleQ, sampleFrameIndices, type VideoStreamTiming } from './video-sampling.js';

function noFrames(source: string, what: string): Error {
  return new Error(`video ${source}: ${what}`);
}

/** The index path on a video file (decord in the reference): all frames decoded, the sampled ones kept. */
export async function planClip(
  base: PlanBase,
  options: VideoOptions,
  probe: VideoProbe,
  note: string,
  known?: VideoStreamTiming,
): Promise<VideoPlan> {
  const timing = known ?? (await scanFrameTimes(probe, options.signal));
  const rate = probe.stream.avgFrameRate ?? probe.stream.realFrameRate;
  if (!rate) throw noFrames(base.source, 'the video stream states no frame rate');
  const vidFps = rate[0] / rate[1];
  const totalFrames = timing.pts.length;
  const sampling = sampleFrameIndices({ vidFps, totalFrames, fps: options.fps, maxFrames: options.maxFrames, start: options.startTime, end: options.endTime });
  const { frameIndices } = sampling;
  if (frameIndices.length === 0) {
    const range = `start ${options.startTime ?? 'none'}, end ${options.endTime ?? 'none'}`;
    throw noFrames(base.source, `no frames in the requested range (${range}; the video has ${totalFrames} frames at ${vidFps} fps, ${probe.duration ?? '?'} s)`);
  }
  // Seek to just before the first kept frame, in containers with an index where ffmpeg's accurate seek starts
  // decoding at a keyframe (elsewhere, e.g. MPEG-TS, it can land mid-GOP and return damaged frames).
  const first = frameIndices[0]!;
  const indexed = /\b(mp4|mov|matroska|webm)\b/.test(probe.formatName);
  const seek = indexed && first > 0 ? seekBefore(timing, first) : undefined;
  const skipped = seek === undefined ? 0 : first;
  const args = [...FFMPEG_QUIET, ...(seek ? ['-ss', seek] : []), ...ffmpegInput(probe.path), '-map', `0:${probe.stream.index}`, ...ALL_FRAMES];
  return indexPlan(base, 'clip', displaySize(probe), sampling.timestamps, frameIndices, skipped, { vidFps, totalFrames, args, note });
}

/** Every decoded frame exactly once, in order (no frame-rate conversion), as raw RGB. */
const ALL_FRAMES = ['-vsync', 'passthrough', '-f', 'rawvideo', '-pix_fmt', 'rgb24', 'pipe:'];

/**
 * An `-ss` value after frame `index - 1` and at or before frame `index`: ffmpeg then drops exactly the frames before
 * `index` (its trim keeps pts - (ss + container start) >= 0, in the stream's time base). Undefined when rounding
 * could make that uncertain.
 */
function seekBefore(t: VideoStreamTiming, index: number): string | undefined {
  const [num, den] = t.timeBase;
  const middle = (t.pts[index - 1]! + t.pts[index]!) / 2;
  const micros = BigInt(Math.round((middle * num * 1e6) / den)) - t.formatStartMicros;
  if (micros <= 0n) return undefined;
  const offset = rescaleQ(-(micros + t.formatStartMicros), MICROSECONDS, t.timeBase);
  const keepsIndex = BigInt(t.pts[index]!) + offset >= 0n;
  const dropsBefore = BigInt(t.pts[index - 1]!) + offset < 0n;
  if (!keepsIndex || !dropsBefore) return undefined;
  const whole = micros / 1_000_000n;
  return `${whole}.${String(micros % 1_000_000n).padStart(6, '0')}`;
}

function indexPlan(
  base: PlanBase,
  kind: VideoPathKind,
  size: { width: number; height: number },
  timestamps: Float64Array,
  frameIndices: number[],
  skipped: number,
  extra: Pick<VideoPlan, 'vidFps' | 'totalFrames' | 'args' | 'files' | 'note'>,
): VideoPlan {
  const keep = frameIndices.map((i) => i - skipped);
  const plan: VideoPlan = {
    ...base,
    kind,
    ...size,
    timestamps,
    frameCount: frameIndices.length,
    decoderFrames: keep[keep.length - 1]! + 1,
    keep,
    frameIndices,
    ...extra,
  };
  if (plan.note === undefined) delete plan.note;
  return plan;
}

/** GIF (imageio in the reference): 25 fps assumed, every frame decoded in order, the sampled ones kept. */
export async function planGif(base: PlanBase, options: VideoOptions): Promise<VideoPlan> {
  const probe = await probeVideo(base.path, options.signal);
  const timing = await scanFrameTimes(probe, options.signal);
  const vidFps = 25;
  const totalFrames = timing.pts.length;
  const sampling = sampleFrameIndices({ vidFps, totalFrames, fps: options.fps, maxFrames: options.maxFrames, start: options.startTime, end: options.endTime });
  if (sampling.frameIndices.length === 0) throw noFrames(base.source, `no frames in the requested range (the GIF has ${totalFrames} frames)`);
  const args = [...FFMPEG_QUIET, ...ffmpegInput(probe.path), '-map', `0:${probe.stream.index}`, ...ALL_FRAMES];
  return indexPlan(base, 'gif', displaySize(probe), sampling.timestamps, sampling.frameIndices, 0, { vidFps, totalFrames, args });
}

/** Python's sorted() on str: by code point (JavaScript's default sort compares UTF-16 units). */
function compareCodePoints(a: string, b: string): number {
  const x = Array.from(a);
  const y = Array.from(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i]!.codePointAt(0)! - y[i]!.codePointAt(0)!;
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

/** A folder of frames (OpenCV in the reference): every entry is a frame, 3 fps assumed. */
export async function planFolder(base: PlanBase, options: VideoOptions): Promise<VideoPlan> {
  const files = (await readdir(base.path)).sort(compareCodePoints);
  const vidFps = 3;
  const sampling = sampleFrameIndices({ vidFps, totalFrames: files.length, fps: options.fps, maxFrames: options.maxFrames, start: options.startTime, end: options.endTime });
  if (sampling.frameIndices.length === 0) {
    throw noFrames(base.source, files.length ? `no frames in the requested range (the folder has ${files.length} entries)` : 'the folder is empty');
  }
  const first = await loadImage(join(base.path, files[sampling.frameIndices[0]!]!));
  const size = { width: first.width, height: first.height };
  return indexPlan(base, 'folder', size, sampling.timestamps, sampling.frameIndices, 0, { vidFps, totalFrames: files.length, files });
}
