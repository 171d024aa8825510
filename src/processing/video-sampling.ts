/**
 * The arithmetic of the reference's video sampling (spec 3.2, 3.3), kept free of I/O so it can be tested exactly:
 *
 * - numpy's `arange` / `linspace(..., dtype=int)` and Python's float floor division, as the reference evaluates them;
 * - the index-path sampler (`load_video_from_ids`: GIFs, frame folders, sub-second clips);
 * - how many frames ffmpeg 5.1 returns for `[-ss S -t T] -i f -filter_complex [0]fps=fps=F:round=down[s0]` into
 *   rawvideo. The reference keeps whatever ffmpeg returns and subsamples that, so a streaming decoder has to know the
 *   count before the first frame arrives; it follows from the frame timestamps alone (see `predictFfmpegFrameCount`).
 */

/** A rational number as [numerator, denominator], like AVRational. */
export type Rational = readonly [number, number];

export const MICROSECONDS: Rational = [1, 1_000_000];

// ---------------------------------------------------------------------------------------------------------------
// Integer timestamp arithmetic (libavutil semantics)

export type Rounding = 'near' | 'down' | 'up';

/** a * b / c rounded as av_rescale_rnd: 'near' = half away from zero, 'down' = toward -inf, 'up' = toward +inf. */
export function rescale(a: bigint, b: bigint, c: bigint, rounding: Rounding = 'near'): bigint {
  if (c <= 0n || b < 0n) throw new RangeError(`rescale: bad factors ${b}/${c}`);
  const p = a * b;
  const q = p / c; // truncates toward zero
  const r = p - q * c;
  if (r === 0n) return q;
  const negative = p < 0n;
  if (rounding === 'down') return negative ? q - 1n : q;
  if (rounding === 'up') return negative ? q : q + 1n;
  const twice = 2n * (negative ? -r : r);
  if (twice >= c) return negative ? q - 1n : q + 1n;
  return q;
}

/** av_rescale_q_rnd: a value in time base `from` expressed in time base `to`. */
export function rescaleQ(a: bigint | number, from: Rational, to: Rational, rounding: Rounding = 'near'): bigint {
  return rescale(BigInt(a), BigInt(from[0]) * BigInt(to[1]), BigInt(to[0]) * BigInt(from[1]), rounding);
}

function gcd(a: bigint, b: bigint): bigint {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** av_reduce: the best rational approximation of num/den with both terms <= max (continued fractions). */
function reduceRational(num: bigint, den: bigint, max: bigint): Rational {
  const negative = num < 0n !== den < 0n;
  num = num < 0n ? -num : num;
  den = den < 0n ? -den : den;
  const g = gcd(num, den);
  if (g) {
    num /= g;
    den /= g;
  }
  let [a0n, a0d, a1n, a1d] = [0n, 1n, 1n, 0n];
  if (num <= max && den <= max) {
    [a1n, a1d] = [num, den];
    den = 0n;
  }
  while (den) {
    let x = num / den;
    const nextDen = num - den * x;
    const a2n = x * a1n + a0n;
    const a2d = x * a1d + a0d;
    if (a2n > max || a2d > max) {
      if (a1n) x = (max - a0n) / a1n;
      if (a1d) x = x < (max - a0d) / a1d ? x : (max - a0d) / a1d;
      if (den * (2n * x * a1d + a0d) > num * a1d) [a1n, a1d] = [x * a1n + a0n, x * a1d + a0d];
      break;
    }
    [a0n, a0d, a1n, a1d] = [a1n, a1d, a2n, a2d];
    num = den;
    den = nextDen;
  }
  return [Number(negative ? -a1n : a1n), Number(a1d)];
}

/** frexp's exponent: d = m * 2^e with 0.5 <= |m| < 1 (0 for 0), read from the bits so powers of two are exact. */
function frexpExponent(d: number): number {
  if (d === 0 || !Number.isFinite(d)) return 0;
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, d);
  const biased = (view.getUint16(0) >> 4) & 0x7ff;
  if (biased === 0) return frexpExponent(d * 2 ** 64) - 64; // subnormal
  return biased - 1022;
}

/** av_d2q(d, max): how the fps filter turns its (double) rate into the rational it works with. */
export function doubleToRational(d: number, max = 2_147_483_647): Rational {
  if (Number.isNaN(d)) return [0, 0];
  if (Math.abs(d) > max + 3) return [d < 0 ? -1 : 1, 0];
  const exponent = Math.max(frexpExponent(d) - 1, 0);
  const den = 1n << BigInt(61 - exponent);
  const num = BigInt(Math.floor(d * Number(den) + 0.5));
  return reduceRational(num, den, BigInt(max));
}

/**
 * The microseconds ffmpeg's av_parse_time reads from a plain decimal duration such as "12.3456789": digits past the
 * sixth decimal are ignored (truncation, not rounding).
 */
export function ffmpegTimeMicros(text: string): bigint {
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(text);
  if (!m) throw new Error(`not a plain decimal time: "${text}"`);
  const micros = BigInt(m[2]!) * 1_000_000n + BigInt(((m[3] ?? '') + '000000').slice(0, 6));
  return m[1] ? -micros : micros;
}

/**
 * A number of seconds as an ffmpeg time argument. The reference passes `str(float)`, which has the same digits as
 * JavaScript's shortest round-trip form; only exponent notation (below 1e-6 here, below 1e-4 in Python) differs, and
 * ffmpeg rejects exponents, so those are written out in full.
 */
export function ffmpegTimeArg(seconds: number): string {
  if (!Number.isFinite(seconds)) throw new RangeError(`time ${seconds} is not finite`);
  const text = String(seconds);
  if (!/e/i.test(text)) return text;
  return seconds.toFixed(20).replace(/\.?0+$/, '');
}

// ---------------------------------------------------------------------------------------------------------------
// numpy and Python arithmetic

/** `np.arange(start, stop, step)` on float64: length ceil((stop - start) / step), values start + i * (next - start). */
export function numpyArange(start: number, stop: number, step: number): Float64Array {
  if (!(step !== 0) || !Number.isFinite(step)) throw new RangeError(`arange: bad step ${step}`);
  const length = Math.max(0, Math.ceil((stop - start) / step));
  const out = new Float64Array(length);
  if (length === 0) return out;
  out[0] = start;
  if (length === 1) return out;
  const next = start + step;
  out[1] = next;
  // numpy fills the rest from the first two elements: start + i * delta
  const delta = next - start;
  for (let i = 2; i < length; i++) out[i] = start + i * delta;
  return out;
}

/**
 * `np.linspace(0, n - 1, count, dtype=int)`: floor(j * step) with step = (n - 1) / (count - 1) in float64, the last
 * index exactly n - 1. A count of 1 gives [0].
 */
export function linspaceIndices(n: number, count: number): number[] {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`linspace over ${n} items`);
  if (!Number.isInteger(count) || count < 1) throw new RangeError(`linspace count must be a positive integer, got ${count}`);
  if (count === 1) return [0];
  const step = (n - 1) / (count - 1);
  const out = new Array<number>(count);
  for (let j = 0; j < count - 1; j++) out[j] = Math.floor(j * step);
  out[count - 1] = n - 1;
  return out;
}

/** Python's `a // b` on floats (fmod-based, so it agrees with CPython where a / b rounds up to an integer). */
export function pythonFloorDiv(a: number, b: number): number {
  if (b === 0) throw new RangeError('float floor division by zero');
  const mod = a % b;
  let div = (a - mod) / b;
  if (mod && b < 0 !== mod < 0) div -= 1;
  if (!div) return 0;
  let floor = Math.floor(div);
  if (div - floor > 0.5) floor += 1;
  return floor;
}

// ---------------------------------------------------------------------------------------------------------------
// The reference's samplers

/** Timestamps of the ffmpeg path: `np.arange(start, start + duration + 1/fps, 1/fps)[:frames]`. */
export function ffmpegPathTimestamps(start: number, duration: number, fps: number, frames: number): Float64Array {
  const step = 1 / fps;
  const all = numpyArange(start, start + duration + step, step);
  return all.slice(0, Math.min(frames, all.length));
}

/** The frames kept of `n` decoded ones: all of them, or `linspace(0, n - 1, maxFrames, dtype=int)` when n > maxFrames. */
export function subsampleIndices(n: number, maxFrames: number): number[] {
  if (n > maxFrames) return linspaceIndices(n, maxFrames);
  return Array.from({ length: n }, (_, i) => i);
}

export interface IndexSampling {
  /** Source frame indices, ascending. */
  frameIndices: number[];
  /** `index / vidFps` for each. */
  timestamps: Float64Array;
  /** The frame range considered: [first, last] inclusive (empty when last < first). */
  range: [number, number];
}

export interface IndexSamplingInput {
  /** Frame rate the path assumes: the stream's average rate, 25 for GIFs, 3 for frame folders. */
  vidFps: number;
  totalFrames: number;
  fps: number;
  maxFrames: number;
  start?: number;
  end?: number;
}

/**
 * `load_video_from_ids` (spec 3.3): clamp and order the range, turn it into frame indices, then take one frame in the
 * middle of every `vid_fps // fps` frames, or a uniform `linspace` when `duration / vid_fps >= max_frames`.
 * One deliberate difference: a segment length below 1 (fps above the source rate) is raised to 1, where numpy's
 * arange would fail with a zero step.
 */
export function sampleFrameIndices(input: IndexSamplingInput): IndexSampling {
  const { vidFps, totalFrames, fps, maxFrames } = input;
  let s = input.start;
  let e = input.end;
  if (s !== undefined && e !== undefined) {
    s = s >= 0 ? s : 0;
    e = e >= 0 ? e : 0;
    if (s > e) [s, e] = [e, s];
    else if (s === e) e = s + 1;
  }
  const first = s === undefined ? 0 : Math.max(Math.trunc(s * vidFps) - 1, 0);
  const last = e === undefined ? totalFrames - 1 : Math.min(Math.trunc(e * vidFps) - 1, totalFrames - 1);
  const duration = Math.max(0, last - first + 1);
  let relative: number[];
  if (duration === 0) {
    relative = [];
  } else if (duration / vidFps < maxFrames) {
    const segment = Math.max(1, Math.min(pythonFloorDiv(vidFps, fps), duration));
    relative = [];
    // np.arange(seg // 2, duration, seg, dtype=int) with an integral segment
    for (let i = pythonFloorDiv(segment, 2); i < duration; i += segment) relative.push(i);
  } else {
    relative = duration <= maxFrames ? Array.from({ length: duration }, (_, i) => i) : linspaceIndices(duration, maxFrames);
  }
  const frameIndices = relative.map((i) => first + i);
  return { frameIndices, timestamps: Float64Array.from(frameIndices, (i) => i / vidFps), range: [first, last] };
}

// ---------------------------------------------------------------------------------------------------------------
// How many frames ffmpeg 5.1 returns on the reference's command line

export interface VideoStreamTiming {
  timeBase: Rational;
  /** Presentation timestamps of the frames the decoder outputs, ascending, in `timeBase` units. */
  pts: readonly number[];
  /** Each frame's packet duration in `timeBase` units (0 when unknown), aligned with `pts`. */
  durations: readonly number[];
  /** The codec frame rate ffmpeg falls back on for a last frame without a duration. */
  frameRate?: Rational;
  /** The container's start time (ffprobe `format.start_time`) in microseconds. */
  formatStartMicros: bigint;
}

export interface TrimArgs {
  /** The `-ss` argument (input option). */
  start: string;
  /** The `-t` argument (input option). */
  duration: string;
}

/**
 * Frames returned by ffmpeg 5.1 for `[-ss S -t T] -i file -filter_complex "[0]fps=fps=F:round=down[s0]" -map "[s0]"
 * -f rawvideo -pix_fmt rgb24 pipe:`, from the frame timestamps alone. The chain, as fftools 5.1 builds it:
 *
 * 1. timestamps are shifted by -(container start + S), rounded into the stream time base;
 * 2. with -ss, a trim filter drops frames before 0; with -t, the first frame at least T after the first kept one
 *    ends the stream and its timestamp becomes the end-of-stream time. Otherwise the end is the last frame's
 *    timestamp plus its duration (via microseconds, as fftools tracks it);
 * 3. the fps filter maps times to ticks with floor(t * F) and emits ticks up to, excluding, floor(end * F);
 * 4. rawvideo output runs with constant-frame-rate sync, which repeats the first frame down to tick 0.
 *
 * So the count is floor(end * F) when that is past the first frame's tick, else 0.
 */
export function predictFfmpegFrameCount(timing: VideoStreamTiming, fps: number, trim?: TrimArgs): number {
  const tb = timing.timeBase;
  const startMicros = (trim ? ffmpegTimeMicros(trim.start) : 0n) + timing.formatStartMicros;
  const offset = rescaleQ(-startMicros, MICROSECONDS, tb);
  let firstKept = -1;
  for (let i = 0; i < timing.pts.length; i++) {
    if (!trim || BigInt(timing.pts[i]!) + offset >= 0n) {
      firstKept = i;
      break;
    }
  }
  if (firstKept < 0) return 0;
  const first = BigInt(timing.pts[firstKept]!) + offset;
  let end: bigint | undefined;
  if (trim) {
    const limit = rescaleQ(ffmpegTimeMicros(trim.duration), MICROSECONDS, tb);
    if (limit > 0n) {
      for (let i = firstKept; i < timing.pts.length; i++) {
        const pts = BigInt(timing.pts[i]!) + offset;
        if (pts - first >= limit) {
          end = pts;
          break;
        }
      }
    }
  }
  if (end === undefined) {
    const lastIndex = timing.pts.length - 1;
    const last = BigInt(timing.pts[lastIndex]!) + offset;
    const duration = timing.durations[lastIndex]!;
    let durationMicros: bigint;
    if (duration > 0) durationMicros = rescaleQ(duration, tb, MICROSECONDS);
    else if (timing.frameRate && timing.frameRate[0] > 0) durationMicros = (1_000_000n * BigInt(timing.frameRate[1])) / BigInt(timing.frameRate[0]);
    else durationMicros = 0n;
    end = rescaleQ(rescaleQ(last, tb, MICROSECONDS) + durationMicros, MICROSECONDS, tb);
  }
  const rate = doubleToRational(fps);
  const toTicks = (pts: bigint) => rescale(pts, BigInt(tb[0]) * BigInt(rate[0]), BigInt(tb[1]) * BigInt(rate[1]), 'down');
  const endTick = toTicks(end);
  return endTick > toTicks(first) ? Number(endTick) : 0;
}
