/**
 * Video loading with the reference's semantics (spec 3): `planVideo` decides which frames are taken and when they
 * were shown, `decodeVideo` streams exactly those frames out of ffmpeg, `loadVideo` does both and collects them.
 *
 * Paths (spec 3.1, in the reference's order):
 * - a start and an end less than 1 s apart, a folder, or a name ending in ".gif" (case-sensitive, as the
 *   reference tests it) take the index path (spec 3.3): frames by index at an assumed rate (folders 3 fps, GIFs
 *   25 fps, videos their average rate), one from the middle of every `vid_fps // fps` frames;
 * - everything else takes the ffmpeg path (spec 3.2): `fps=fps=F:round=down` into raw RGB, N = the frames ffmpeg
 *   returns, timestamps `np.arange(start, start + duration + 1/F, 1/F)[:N]`, then `linspace` down to max_frames.
 *
 * The ffmpeg command is the one ffmpeg-python builds for the reference: `[-ss S -t T] -i F -filter_complex
 * "[0]fps=fps=R:round=down[s0]" -map "[s0]" -f rawvideo -pix_fmt rgb24 pipe:` (input-side trimming, the reference's
 * default; its `precise_time` variant is not offered), preceded only by options that leave the frames alone
 * (-nostdin -hide_banner -nostats -loglevel error) and with the input named `file:<absolute path>`, read only by
 * the demuxers of self-contained formats (video-probe.ts `ffmpegInput`).
 *
 * The reference keeps whatever ffmpeg returns and only then subsamples; to stream with bounded memory the count is
 * worked out beforehand from the frame timestamps (video-sampling.ts `predictFfmpegFrameCount`) and checked while
 * decoding (fewer frames than planned is an error; more are ignored). It equals floor(duration * fps) for an
 * untrimmed file whose video lasts as long as its container, and differs when they do not (audio longer than video)
 * or for a start without an end (the reference then passes `-t` = the whole container duration and the clip simply
 * ends earlier).
 *
 * Deliberate differences, where the reference fails or returns garbage:
 * - A clip that gives zero frames on the ffmpeg path (shorter than 1/fps; the reference crashes on an empty array)
 *   is loaded through the index path instead, as the reference itself does for sub-second clips: one frame from
 *   the middle of the clip, timestamp index / average rate. A range with no frames at all is an error.
 * - A video with a 90/270 degree display rotation: ffmpeg rotates the frames, the reference then reshapes them with
 *   the unrotated width and height (scrambled pixels); here the frames keep ffmpeg's rotated size.
 * - Frames ffmpeg returns beyond the last timestamp of `arange` (the reference drops or fails on them) are ignored.
 * - Index path: a `vid_fps // fps` of 0 (fps above the source rate; numpy fails) counts as 1. Frames of a video
 *   come from ffmpeg rather than decord, GIF frames from ffmpeg rather than imageio/Pillow (they may differ in
 *   transparent areas), and folder images from loadImage (Pillow's pixels, not OpenCV's: no EXIF rotation).
 * - Times passed to ffmpeg never use exponent notation (Python writes 5e-05, which ffmpeg rejects).
 */
import { stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';

import { FFMPEG_QUIET, findFfmpeg, streamTool } from './ffmpeg.js';
import { loadImage, type RgbImage } from './image.js';
import { planClip, planFolder, planGif } from './video-index.js';
import { displaySize, ffmpegInput, probeVideo, scanFrameTimes, type VideoProbe } from './video-probe.js';
import {
  ffmpegPathTimestamps,
  ffmpegTimeArg,
  predictFfmpegFrameCount,
  subsampleIndices,
  type TrimArgs,
  type VideoStreamTiming,
} from './video-sampling.js';

export { framesInRange, groupVideoItems, videoOptionsFor, type VideoLoadGroup } from './video-groups.js';

export interface VideoOptions {
  /** Frames per second to sample (> 0). */
  fps: number;
  /** Most frames kept (integer >= 1). */
  maxFrames: number;
  /** Clip start in seconds. */
  startTime?: number;
  /** Clip end in seconds. */
  endTime?: number;
  signal?: AbortSignal;
}

/** ffmpeg: the fps-filter path; gif / folder / clip: the index path on a GIF, a folder of frames, a video file. */
export type VideoPathKind = 'ffmpeg' | 'gif' | 'folder' | 'clip';

export interface VideoPlan {
  /** The path as given. */
  source: string;
  /** Absolute path. */
  path: string;
  kind: VideoPathKind;
  /** Why a video file took the index path, when it did. */
  note?: string;
  /** Size of every frame handed out. */
  width: number;
  height: number;
  /** Seconds, one per kept frame (float64, the reference's values). */
  timestamps: Float64Array;
  /** Kept frames (= timestamps.length). */
  frameCount: number;
  /** Frames the decoder emits (of which `keep` are handed out): N on the ffmpeg path. */
  decoderFrames: number;
  /** Ascending indices into the decoder's frames of the kept ones. */
  keep: readonly number[];
  fps: number;
  maxFrames: number;
  /** ffmpeg path: the clip start (timestamps begin here), its duration, and whether -ss/-t are passed. */
  start?: number;
  duration?: number;
  trimmed?: boolean;
  /** Index path: the assumed frame rate, the number of frames, and the source index of each kept frame. */
  vidFps?: number;
  totalFrames?: number;
  frameIndices?: readonly number[];
  /** Arguments of the ffmpeg run that decodes the frames (all kinds but folder). */
  args?: readonly string[];
  /** Folder: its entries in Python's sorted() order (all of them count as frames, as in the reference). */
  files?: readonly string[];
}

function checkOptions(source: string, o: VideoOptions): void {
  if (!(Number.isFinite(o.fps) && o.fps > 0)) throw new RangeError(`video ${source}: fps must be a positive number, got ${o.fps}`);
  if (!(Number.isInteger(o.maxFrames) && o.maxFrames >= 1)) {
    throw new RangeError(`video ${source}: max_frames must be a positive integer, got ${o.maxFrames}`);
  }
  for (const [key, value] of [
    ['start_time', o.startTime],
    ['end_time', o.endTime],
  ] as const) {
    if (value !== undefined && !Number.isFinite(value)) throw new RangeError(`video ${source}: ${key} must be a finite number, got ${value}`);
  }
}

/** Decides the frames and timestamps of a video item (probing the file; no frame is decoded). */
export async function planVideo(source: string, options: VideoOptions): Promise<VideoPlan> {
  checkOptions(source, options);
  const path = resolve(source);
  let isDirectory: boolean;
  try {
    const s = await stat(path);
    isDirectory = s.isDirectory();
    if (!isDirectory && !s.isFile()) throw new Error(`video ${source} is not a regular file`);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw new Error(`video file not found: ${source}`);
    throw err;
  }
  const { startTime: s, endTime: e } = options;
  const base = { source, path, fps: options.fps, maxFrames: options.maxFrames };
  if (isDirectory) return planFolder(base, options);
  if (source.endsWith('.gif')) return planGif(base, options);
  const probe = await probeVideo(path, options.signal);
  if (s !== undefined && e !== undefined && e - s < 1) return planClip(base, options, probe, 'the clip is shorter than 1 s');
  return planFfmpeg(base, options, probe);
}

/** What every plan starts from. */
export type PlanBase = Pick<VideoPlan, 'source' | 'path' | 'fps' | 'maxFrames'>;

async function planFfmpeg(base: PlanBase, options: VideoOptions, probe: VideoProbe): Promise<VideoPlan> {
  const { fps, maxFrames, startTime: s, endTime: e, signal } = options;
  const timing = await scanFrameTimes(probe, signal);
  // Spec 3.2 step 2, operation for operation.
  let duration = probe.duration ?? timingDuration(timing);
  let start: number;
  if (s !== undefined) {
    const newStart = Math.max(probe.stream.startTime, s);
    duration -= newStart - s;
    start = newStart;
  } else {
    start = probe.stream.startTime;
  }
  if (e !== undefined) duration = Math.min(duration, e - start);
  const trimmed = s !== undefined || e !== undefined;
  const trim: TrimArgs | undefined = trimmed ? { start: ffmpegTimeArg(start), duration: ffmpegTimeArg(duration) } : undefined;
  // ffmpeg reads -t 0 as "no limit" and rejects a negative one; such a clip has no frames anyway.
  const frames = trimmed && !(duration > 0) ? 0 : predictFfmpegFrameCount(timing, fps, trim);
  const all = ffmpegPathTimestamps(start, duration, fps, frames);
  if (all.length === 0) {
    return planClip(base, options, probe, `fps=${fps} gives no frame from ${duration} s of video`, timing);
  }
  const keep = subsampleIndices(all.length, maxFrames);
  const args = [
    ...FFMPEG_QUIET,
    ...(trim ? ['-ss', trim.start, '-t', trim.duration] : []),
    ...ffmpegInput(probe.path),
    '-filter_complex',
    `[0]fps=fps=${fps}:round=down[s0]`,
    '-map',
    '[s0]',
    '-f',
    'rawvideo',
    '-pix_fmt',
    'rgb24',
    'pipe:',
  ];
  return {
    ...base,
    kind: 'ffmpeg',
    ...displaySize(probe),
    timestamps: Float64Array.from(keep, (i) => all[i]!),
    frameCount: keep.length,
    decoderFrames: all.length,
    keep,
    start,
    duration,
    trimmed,
    args,
  };
}

/** A container without a duration: from the first frame to the end of the last one. */
function timingDuration(t: VideoStreamTiming): number {
  const n = t.pts.length;
  if (n === 0) return 0;
  const ticks = t.pts[n - 1]! + t.durations[n - 1]! - t.pts[0]!;
  return (ticks * t.timeBase[0]) / t.timeBase[1];
}

// ---------------------------------------------------------------------------------------------------------------
// Decoding

export interface DecodeOptions {
  signal?: AbortSignal;
  /**
   * Called as frames come out of the decoder: (frames so far, frames the plan expects). On the ffmpeg path the last
   * call shows every frame ffmpeg returned, including any past the plan's count (those are ignored).
   */
  onProgress?: (decoded: number, total: number) => void;
}

export type FrameCallback = (frame: RgbImage, index: number) => void | Promise<void>;

/**
 * Decodes the plan's frames and hands each kept one to `onFrame` in order, `index` counting kept frames from 0.
 * Each frame is a new buffer the callback may keep; only the frame being assembled is held here, ffmpeg's output is
 * streamed, and a returned promise pauses the decoder until it settles. Rejects (and stops ffmpeg) on abort, when
 * the callback throws, when ffmpeg fails, or when ffmpeg's output does not match the plan (frame size, frame count).
 */
export async function decodeVideo(plan: VideoPlan, onFrame: FrameCallback, options: DecodeOptions = {}): Promise<void> {
  if (plan.kind === 'folder') return decodeFolder(plan, onFrame, options);
  if (!plan.args) throw new Error(`video ${plan.source}: the plan has no decoder arguments`);
  const ffmpeg = await findFfmpeg();
  const frameBytes = plan.width * plan.height * 3;
  const { keep } = plan;
  // On the index path nothing after the last kept frame is needed; on the ffmpeg path the rest is read to check
  // the count (it is at most one fps interval).
  const stopAfterLast = plan.kind !== 'ffmpeg';
  let decoded = 0;
  let filled = 0;
  let next = 0; // position in keep
  let buffer: Uint8Array | undefined;
  await streamTool(
    ffmpeg.program,
    plan.args,
    async (chunk) => {
      let offset = 0;
      while (offset < chunk.length) {
        const kept = next < keep.length && keep[next] === decoded;
        const take = Math.min(frameBytes - filled, chunk.length - offset);
        if (kept) {
          // Not zero-filled: every byte is written before the frame is handed out.
          buffer ??= uninitialized(frameBytes);
          buffer.set(chunk.subarray(offset, offset + take), filled);
        }
        filled += take;
        offset += take;
        if (filled < frameBytes) break;
        filled = 0;
        decoded++;
        options.onProgress?.(decoded, plan.decoderFrames);
        if (kept) {
          const frame: RgbImage = { width: plan.width, height: plan.height, data: buffer! };
          buffer = undefined;
          await onFrame(frame, next++);
          if (stopAfterLast && next === keep.length) return 'stop';
        }
      }
    },
    { signal: options.signal, file: plan.path, action: 'decoding' },
  );
  if (filled !== 0) {
    throw new Error(
      `video ${plan.source}: ffmpeg's output ends ${filled} bytes into a frame; its frames are not ${plan.width}x${plan.height} as probed ` +
        '(a size change inside the stream?)',
    );
  }
  if (next < keep.length) {
    throw new Error(
      `video ${plan.source}: ffmpeg returned ${decoded} frames where the plan expects ${plan.decoderFrames}; ` +
        `${keep.length - next} of the ${keep.length} sampled frames are missing`,
    );
  }
}

function uninitialized(bytes: number): Uint8Array {
  const b = Buffer.allocUnsafeSlow(bytes);
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

async function decodeFolder(plan: VideoPlan, onFrame: FrameCallback, options: DecodeOptions): Promise<void> {
  const files = plan.files ?? [];
  const indices = plan.frameIndices ?? [];
  for (let k = 0; k < indices.length; k++) {
    options.signal?.throwIfAborted();
    const file = join(plan.path, files[indices[k]!]!);
    const image = await loadImage(file);
    if (image.width !== plan.width || image.height !== plan.height) {
      throw new Error(`video ${plan.source}: frame ${file} is ${image.width}x${image.height}, the first sampled frame ${plan.width}x${plan.height}`);
    }
    options.onProgress?.(k + 1, indices.length);
    await onFrame({ width: image.width, height: image.height, data: image.data }, k);
  }
}

export interface LoadedVideo {
  frames: RgbImage[];
  timestamps: Float64Array;
  plan: VideoPlan;
}

/** planVideo + decodeVideo, keeping every frame in memory (for tests and short clips). */
export async function loadVideo(source: string, options: VideoOptions & Pick<DecodeOptions, 'onProgress'>): Promise<LoadedVideo> {
  const plan = await planVideo(source, options);
  const frames: RgbImage[] = [];
  await decodeVideo(plan, (frame) => void frames.push(frame), { signal: options.signal, onProgress: options.onProgress });
  return { frames, timestamps: plan.timestamps, plan };
}
