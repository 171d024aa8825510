/**
 * What the video path needs to know about a file before decoding it: the reference's probe (container duration; the
 * first video stream's size and start time; spec 3.2 step 1) and the timestamps of every frame of that stream,
 * from which the number of frames ffmpeg will return is computed (video-sampling.ts).
 *
 * With ffprobe both come from it (`-show_format -show_streams`, as ffmpeg-python's probe, and a packet listing;
 * demuxing only, no decoding). Without ffprobe they come from ffmpeg: the container duration from the `ffmpeg -i`
 * report, which has only centiseconds ("Duration: 00:00:14.81"); the frame timestamps, and with them the stream's
 * start time, from a stream copy into the framecrc muxer; the average frame rate (index path only) is estimated
 * from the frame count. Frame counts stay exact; a trimmed clip can differ from the reference where the rounding
 * of the duration matters.
 */
import { resolve } from 'node:path';

import { findFfmpeg, findFfprobe, FfmpegError, lastLines, runTool, streamTool } from './ffmpeg.js';
import type { Rational, VideoStreamTiming } from './video-sampling.js';

export interface VideoStreamInfo {
  /** Index of the stream in the file. */
  index: number;
  codec: string;
  /** Coded size, as ffprobe reports it (before any rotation). */
  width: number;
  height: number;
  /** `float(stream.start_time)`, seconds. */
  startTime: number;
  timeBase: Rational;
  avgFrameRate?: Rational;
  realFrameRate?: Rational;
  /** `nb_frames` when the container states it. */
  frameCount?: number;
  /** Display-matrix rotation in degrees (counter-clockwise, as ffprobe prints it); 0 when none. */
  rotation: number;
}

export interface VideoProbe {
  /** Absolute path. */
  path: string;
  /** `float(format.duration)` in seconds; undefined when the container does not state it. */
  duration: number | undefined;
  /** The container's start time (`format.start_time`) in microseconds: ffmpeg shifts timestamps by it. */
  formatStartMicros: bigint;
  /** The demuxer's names, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "mpegts". */
  formatName: string;
  /** The first video stream, the one the reference reads and `[0]` selects in a filtergraph. */
  stream: VideoStreamInfo;
  /** Which program answered. */
  via: 'ffprobe' | 'ffmpeg';
}

/** The size of the frames ffmpeg outputs: it turns frames with a 90/270 degree display rotation upright. */
export function displaySize(probe: VideoProbe): { width: number; height: number } {
  const { width, height, rotation } = probe.stream;
  const quarters = Math.round(rotation / 90);
  const sideways = Math.abs(rotation - quarters * 90) < 1 && quarters % 2 !== 0;
  return sideways ? { width: height, height: width } : { width, height };
}

/**
 * The demuxers a video is read with: containers and streams that hold their media themselves (audio-only ones too,
 * so that such a file is reported as having no video stream). Playlist formats are left out because ffmpeg would
 * open the files they name: an HLS playlist, a DASH or IMF manifest or an ffconcat list passed as a "video" (or
 * inlined as a data URL) would read media from anywhere on the machine, past any folder or size limit its caller
 * checked, and an SDP file would open network sockets.
 */
const SELF_CONTAINED_FORMATS = [
  'mov', 'matroska', 'avi', 'flv', 'mpegts', 'mpeg', 'mpegvideo', 'm4v', 'h264', 'hevc', 'h263', 'vc1', 'obu', 'ivf',
  'ogg', 'asf', 'rm', 'nut', 'mxf', 'dv', 'yuv4mpegpipe', 'mjpeg', 'gif', 'gif_pipe', 'apng', 'image2', 'png_pipe',
  'jpeg_pipe', 'webp_pipe', 'bmp_pipe', 'tiff_pipe', 'wav', 'mp3', 'flac', 'aac',
].join(',');

/**
 * The arguments naming a local file as the input of ffmpeg or ffprobe: `file:` so that no part of the path is read
 * as a protocol or an option, and only self-contained formats (`-format_whitelist`), so that the file cannot make
 * ffmpeg read others.
 */
export function ffmpegInput(path: string): string[] {
  return ['-format_whitelist', SELF_CONTAINED_FORMATS, '-i', `file:${resolve(path)}`];
}

/** ffmpeg's refusal of a format left out of SELF_CONTAINED_FORMATS, as a message naming the format. */
function refusedFormat(stderr: string): string | undefined {
  const format = /^\[([^\]\s@]+)[^\]]*\] Format not on whitelist/m.exec(stderr)?.[1];
  return format && `its format (${format}) is not read: it is not a self-contained media file, and a playlist or manifest would make ffmpeg open other files`;
}

function parseRational(text: unknown): Rational | undefined {
  if (typeof text !== 'string') return undefined;
  const m = /^(-?\d+)[/:](\d+)$/.exec(text.trim());
  if (!m) return undefined;
  const r: Rational = [Number(m[1]), Number(m[2])];
  return r[0] > 0 && r[1] > 0 ? r : undefined;
}

function parseSeconds(text: unknown): number | undefined {
  if (typeof text !== 'string' && typeof text !== 'number') return undefined;
  const x = Number(text);
  return Number.isFinite(x) ? x : undefined;
}

function secondsToMicros(seconds: number | undefined): bigint {
  return seconds === undefined ? 0n : BigInt(Math.round(seconds * 1e6));
}

function notAVideo(path: string, why: string, stderr = ''): FfmpegError {
  const tail = lastLines(stderr, 6);
  return new FfmpegError(`cannot read video ${path}: ${why}${tail ? `:\n${tail}` : ''}`, path, null, stderr);
}

/** Probes a local video file (the path must exist). */
export async function probeVideo(file: string, signal?: AbortSignal): Promise<VideoProbe> {
  const path = resolve(file);
  const ffprobe = await findFfprobe();
  return ffprobe ? probeWithFfprobe(ffprobe.program, path, signal) : probeWithFfmpeg(path, signal);
}

async function probeWithFfprobe(program: string, path: string, signal?: AbortSignal): Promise<VideoProbe> {
  const { code, stdout, stderr } = await runTool(program, ['-v', 'error', '-show_format', '-show_streams', '-of', 'json', ...ffmpegInput(path)], {
    signal,
  });
  if (code !== 0) {
    const refused = refusedFormat(stderr);
    throw refused ? notAVideo(path, refused) : notAVideo(path, `ffprobe exited with code ${code}`, stderr);
  }
  let info: { format?: Record<string, unknown>; streams?: Record<string, unknown>[] };
  try {
    info = JSON.parse(stdout.toString('utf8'));
  } catch {
    throw notAVideo(path, 'ffprobe printed no readable JSON', stderr);
  }
  const s = (info.streams ?? []).find((st) => st.codec_type === 'video');
  if (!s) throw notAVideo(path, 'the file has no video stream');
  const width = Number(s.width);
  const height = Number(s.height);
  if (!(width > 0 && height > 0)) throw notAVideo(path, `the video stream has no size (${s.width}x${s.height})`);
  const formatStart = parseSeconds(info.format?.start_time);
  return {
    path,
    duration: parseSeconds(info.format?.duration),
    formatStartMicros: secondsToMicros(formatStart),
    formatName: String(info.format?.format_name ?? ''),
    stream: {
      index: Number(s.index),
      codec: String(s.codec_name ?? 'unknown'),
      width,
      height,
      // The reference reads float(stream['start_time']); a stream without one starts with the container.
      startTime: parseSeconds(s.start_time) ?? formatStart ?? 0,
      timeBase: parseRational(s.time_base) ?? [1, 1_000_000],
      avgFrameRate: parseRational(s.avg_frame_rate),
      realFrameRate: parseRational(s.r_frame_rate),
      frameCount: Number(s.nb_frames) > 0 ? Number(s.nb_frames) : undefined,
      rotation: rotationOf(s),
    },
    via: 'ffprobe',
  };
}

/** Display-matrix rotation: ffprobe >= 5 prints it in side data; older ones (and some files) as a `rotate` tag. */
function rotationOf(stream: Record<string, unknown>): number {
  const sideData = Array.isArray(stream.side_data_list) ? (stream.side_data_list as Record<string, unknown>[]) : [];
  for (const entry of sideData) {
    const r = parseSeconds(entry.rotation);
    if (r !== undefined) return r;
  }
  const tags = stream.tags as Record<string, unknown> | undefined;
  const tag = parseSeconds(tags?.rotate);
  return tag === undefined ? 0 : -tag; // the tag counts clockwise
}

async function probeWithFfmpeg(path: string, signal?: AbortSignal): Promise<VideoProbe> {
  const ffmpeg = await findFfmpeg();
  // Without an output ffmpeg prints the input report and exits with code 1; that is the expected outcome.
  const { stderr } = await runTool(ffmpeg.program, ['-hide_banner', '-nostdin', ...ffmpegInput(path)], { signal });
  const report = parseInputReport(stderr);
  if (!report) {
    const refused = refusedFormat(stderr);
    throw refused ? notAVideo(path, refused) : notAVideo(path, 'ffmpeg cannot read it', stderr);
  }
  if (!report.video) throw notAVideo(path, 'the file has no video stream');
  const { video } = report;
  const timing = await frameTimesWithFfmpeg(ffmpeg.program, path, video.index, signal);
  const seconds = report.duration ?? 0;
  const frames = timing.pts.length;
  // ffprobe's stream start_time is the first timestamp, printed with 6 decimals.
  const [num, den] = timing.timeBase;
  const firstPts = frames > 0 ? Number(((timing.pts[0]! * num) / den).toFixed(6)) : undefined;
  return {
    path,
    duration: report.duration,
    formatStartMicros: secondsToMicros(report.start),
    formatName: report.formatName,
    stream: {
      index: video.index,
      codec: video.codec,
      width: video.width,
      height: video.height,
      startTime: firstPts ?? report.start ?? 0,
      timeBase: timing.timeBase,
      // Estimated: frames over the container duration (ffprobe's value comes from the demuxer).
      avgFrameRate: frames > 0 && seconds > 0 ? [Math.round((frames * 1e6) / seconds), 1_000_000] : video.frameRate,
      realFrameRate: video.frameRate,
      frameCount: frames || undefined,
      rotation: video.rotation,
    },
    via: 'ffmpeg',
  };
}

interface InputReport {
  formatName: string;
  duration?: number;
  start?: number;
  video?: { index: number; codec: string; width: number; height: number; frameRate?: Rational; rotation: number };
}

/** Reads the "Input #0" report of `ffmpeg -i`; undefined when ffmpeg could not open the file. */
export function parseInputReport(stderr: string): InputReport | undefined {
  const input = /^Input #0, (.*), from '/m.exec(stderr);
  if (!input) return undefined;
  const report: InputReport = { formatName: input[1]! };
  const d = /Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)/.exec(stderr);
  if (d) report.duration = Number(d[1]) * 3600 + Number(d[2]) * 60 + Number(d[3]);
  const s = /Duration: [^\n]*?start: (-?\d+(?:\.\d+)?)/.exec(stderr);
  if (s) report.start = Number(s[1]);
  const lines = stderr.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const m = /^\s*Stream #0:(\d+)[^:]*: Video: ([^\s,]+)(.*)$/.exec(lines[i]!);
    if (!m) continue;
    // The size follows a comma; "0x31637661" in a codec tag follows a slash.
    const size = /, (\d+)x(\d+)/.exec(m[3]!);
    if (!size) continue;
    const fps = /, ([\d.]+) (?:fps|tbr)/.exec(m[3]!);
    let rotation = 0;
    for (let j = i + 1; j < lines.length && /^\s{4,}/.test(lines[j]!); j++) {
      const r = /rotation of (-?[\d.]+) degrees/.exec(lines[j]!);
      if (r) rotation = Number(r[1]);
    }
    report.video = {
      index: Number(m[1]),
      codec: m[2]!,
      width: Number(size[1]),
      height: Number(size[2]),
      frameRate: fps ? [Math.round(Number(fps[1]) * 1000), 1000] : undefined,
      rotation,
    };
    break;
  }
  return report;
}

// ---------------------------------------------------------------------------------------------------------------
// Frame timestamps

/** Timestamps of the frames the decoder will output for the probed stream, in presentation order. */
export async function scanFrameTimes(probe: VideoProbe, signal?: AbortSignal): Promise<VideoStreamTiming> {
  const ffprobe = await findFfprobe();
  const timing = ffprobe
    ? await frameTimesWithFfprobe(ffprobe.program, probe, signal)
    : await frameTimesWithFfmpeg((await findFfmpeg()).program, probe.path, probe.stream.index, signal);
  return { ...timing, frameRate: probe.stream.realFrameRate, formatStartMicros: probe.formatStartMicros };
}

type FrameTimes = Pick<VideoStreamTiming, 'timeBase' | 'pts' | 'durations'>;

/** Packets of one stream, by line, without holding the whole listing. */
async function collectLines(program: string, args: string[], path: string, onLine: (line: string) => void, signal?: AbortSignal): Promise<void> {
  let rest = '';
  await streamTool(
    program,
    args,
    (chunk) => {
      const text = rest + chunk.toString('latin1');
      const lines = text.split('\n');
      rest = lines.pop()!;
      for (const line of lines) onLine(line);
    },
    { signal, file: path, action: 'reading the frame timestamps of' },
  );
  if (rest) onLine(rest);
}

async function frameTimesWithFfprobe(program: string, probe: VideoProbe, signal?: AbortSignal): Promise<FrameTimes> {
  const packets: Packet[] = [];
  await collectLines(
    program,
    ['-v', 'error', '-select_streams', String(probe.stream.index), '-show_entries', 'packet=pts,dts,duration,flags', '-of', 'compact=p=0', ...ffmpegInput(probe.path)],
    probe.path,
    (line) => {
      const fields = Object.fromEntries(line.split('|').map((kv) => kv.split('=') as [string, string]));
      if (fields.pts === undefined && fields.dts === undefined) return;
      packets.push({ pts: integer(fields.pts), dts: integer(fields.dts), duration: integer(fields.duration) ?? 0, discard: /D/.test(fields.flags ?? '') });
    },
    signal,
  );
  return framesFromPackets(packets, probe.stream.timeBase, probe.stream.realFrameRate);
}

async function frameTimesWithFfmpeg(program: string, path: string, streamIndex: number, signal?: AbortSignal): Promise<FrameTimes> {
  const packets: Packet[] = [];
  let timeBase: Rational | undefined;
  // -copyts keeps the container's own timestamps (the count model applies ffmpeg's shift itself).
  await collectLines(
    program,
    ['-nostdin', '-hide_banner', '-v', 'error', '-copyts', ...ffmpegInput(path), '-map', `0:${streamIndex}`, '-c', 'copy', '-f', 'framecrc', '-'],
    path,
    (line) => {
      const tb = /^#tb 0: (\d+)\/(\d+)/.exec(line);
      if (tb) timeBase = [Number(tb[1]), Number(tb[2])];
      if (line.startsWith('#')) return;
      const f = line.split(',').map((x) => x.trim());
      if (f.length < 5) return;
      packets.push({ dts: integer(f[1]), pts: integer(f[2]), duration: integer(f[3]) ?? 0, discard: false });
    },
    signal,
  );
  return framesFromPackets(packets, timeBase ?? [1, 1_000_000], undefined);
}

interface Packet {
  pts: number | undefined;
  dts: number | undefined;
  duration: number;
  discard: boolean;
}

function integer(text: string | undefined): number | undefined {
  if (text === undefined || !/^-?\d+$/.test(text)) return undefined;
  return Number(text);
}

/**
 * Frames in presentation order. Packets the demuxer marks as discarded (before an edit list's start) are decoded
 * but never output. A packet without pts falls back on its dts; a stream without any timestamps (raw elementary
 * streams) gets evenly spaced ones from its frame rate, as ffmpeg generates them.
 */
function framesFromPackets(packets: Packet[], timeBase: Rational, frameRate: Rational | undefined): FrameTimes {
  const kept = packets.filter((p) => !p.discard);
  const missing = kept.some((p) => p.pts === undefined && p.dts === undefined);
  if (missing && frameRate) {
    const step = (timeBase[1] * frameRate[1]) / (timeBase[0] * frameRate[0]);
    return {
      timeBase,
      pts: kept.map((_, i) => Math.round(i * step)),
      durations: kept.map(() => Math.round(step)),
    };
  }
  const frames = kept
    .filter((p) => p.pts !== undefined || p.dts !== undefined)
    .map((p) => ({ pts: (p.pts ?? p.dts)!, duration: p.duration }))
    .sort((a, b) => a.pts - b.pts);
  return { timeBase, pts: frames.map((f) => f.pts), durations: frames.map((f) => f.duration) };
}
