// Video loading: the reference's sampling arithmetic, the fixtures' decoded frames and timestamps byte for byte,
// trimming against a direct ffmpeg run, the index path (GIF, frame folder, clips shorter than 1 s or than 1/fps),
// errors, and abort. Media beyond the fixtures is generated with ffmpeg into a temporary folder.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import sharp from 'sharp';

import { SafetensorsFile } from '../src/model/safetensors.js';
import { clearToolCache, findFfmpeg, findFfprobe, runTool, type Tool } from '../src/processing/ffmpeg.js';
import { decodeGifFirstFrame } from '../src/processing/gif.js';
import type { RgbImage } from '../src/processing/image.js';
import type { VideoMedia } from '../src/processing/conversation.js';
import { decodeVideo, framesInRange, groupVideoItems, loadVideo, planVideo, type VideoOptions } from '../src/processing/video.js';
import { parseInputReport } from '../src/processing/video-probe.js';
import {
  doubleToRational,
  ffmpegPathTimestamps,
  ffmpegTimeArg,
  ffmpegTimeMicros,
  linspaceIndices,
  numpyArange,
  predictFfmpegFrameCount,
  pythonFloorDiv,
  rescale,
  sampleFrameIndices,
  subsampleIndices,
  type VideoStreamTiming,
} from '../src/processing/video-sampling.js';
import { FIXTURES_MISSING, fixturesDir } from './fixtures.js';

const fixtures = fixturesDir();

/** The ffmpeg the tests run; missing ffmpeg skips the media tests, except in CI where it is a failure. */
const ffmpeg: Tool | undefined = await findFfmpeg().catch((err: Error) => {
  if (process.env.CI) throw err;
  return undefined;
});
const NO_FFMPEG = 'ffmpeg not found (set VL3_FFMPEG or install ffmpeg); skipped';
const ffprobe = ffmpeg && (await findFfprobe());

async function ffmpegRun(args: string[]): Promise<Buffer> {
  const { code, stdout, stderr } = await runTool(ffmpeg!.program, ['-nostdin', '-hide_banner', '-loglevel', 'error', ...args]);
  if (code !== 0) throw new Error(`ffmpeg ${args.join(' ')} failed: ${stderr}`);
  return stdout;
}

/** All frames of a file, raw RGB, one per decoded frame. */
async function allFrames(path: string, width: number, height: number): Promise<Buffer[]> {
  const raw = await ffmpegRun(['-i', path, '-map', '0:v:0', '-vsync', 'passthrough', '-f', 'rawvideo', '-pix_fmt', 'rgb24', 'pipe:']);
  const size = width * height * 3;
  return Array.from({ length: raw.length / size }, (_, i) => raw.subarray(i * size, (i + 1) * size));
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

describe('sampling arithmetic', () => {
  it('keeps 180 of 540 frames of a 9-minute clip at 0, 3, 6, 9, ..., 529, 532, 535, 539 s (spec 3.2)', () => {
    const all = ffmpegPathTimestamps(0, 540, 1, 540);
    assert.equal(all.length, 540);
    const keep = subsampleIndices(540, 180);
    const times = keep.map((i) => all[i]);
    assert.equal(times.length, 180);
    assert.deepEqual(times.slice(0, 5), [0, 3, 6, 9, 12]);
    assert.deepEqual(times.slice(-4), [529, 532, 535, 539]);
    const step = 539 / 179;
    keep.slice(0, -1).forEach((k, j) => assert.equal(k, Math.floor(j * step)));
  });

  it('computes timestamps as numpy.arange does (start + i * ((start + step) - start))', () => {
    // Values printed by numpy 2.4 for the reference's expression.
    assert.deepEqual(Array.from(ffmpegPathTimestamps(1.44, 7.32, 1, 7)), [1.44, 2.44, 3.44, 4.4399999999999995, 5.4399999999999995, 6.4399999999999995, 7.4399999999999995]);
    assert.deepEqual(Array.from(ffmpegPathTimestamps(1.44, 7.32, 3, 4)), [1.44, 1.7733333333333332, 2.1066666666666665, 2.4399999999999995]);
    assert.deepEqual(Array.from(ffmpegPathTimestamps(0.523, 6.5, 2, 4)), [0.523, 1.0230000000000001, 1.5230000000000001, 2.0230000000000006]);
    assert.deepEqual(Array.from(ffmpegPathTimestamps(1.5, 4.8, 2, 9)), [1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 5.5]);
    // Never more timestamps than arange has, whatever the frame count.
    assert.equal(ffmpegPathTimestamps(0, 2.4, 1, 99).length, 4);
    assert.equal(numpyArange(0, 1, 0.1).length, 10);
    assert.equal(numpyArange(2, 2, 1).length, 0);
  });

  it('subsamples with numpy.linspace(0, n - 1, max_frames, dtype=int)', () => {
    assert.deepEqual(linspaceIndices(6, 4), [0, 1, 3, 5]); // case d
    assert.deepEqual(linspaceIndices(6, 3), [0, 2, 5]); // case f
    assert.deepEqual(linspaceIndices(7, 1), [0]);
    assert.deepEqual(linspaceIndices(5, 5), [0, 1, 2, 3, 4]);
    assert.deepEqual(subsampleIndices(3, 180), [0, 1, 2]);
  });

  it('floor-divides floats as Python does', () => {
    assert.equal(pythonFloorDiv(1, 0.1), 9); // Python: 1 // 0.1 == 9.0, although 1 / 0.1 == 10.0
    assert.equal(pythonFloorDiv(30000 / 1001, 1), 29);
    assert.equal(pythonFloorDiv(25, 30), 0);
    assert.equal(pythonFloorDiv(3, 0.7), 4);
    assert.equal(pythonFloorDiv(-7, 2), -4);
  });

  it('samples the index path as load_video_from_ids', () => {
    // A 30-frame GIF (25 fps assumed): one frame from the middle of the first 25.
    const gif = sampleFrameIndices({ vidFps: 25, totalFrames: 30, fps: 1, maxFrames: 180 });
    assert.deepEqual(gif.frameIndices, [12]);
    assert.deepEqual(Array.from(gif.timestamps), [0.48]);
    // A folder of 10 frames (3 fps assumed): one of every 3.
    const folder = sampleFrameIndices({ vidFps: 3, totalFrames: 10, fps: 1, maxFrames: 180 });
    assert.deepEqual(folder.frameIndices, [1, 4, 7]);
    assert.deepEqual(Array.from(folder.timestamps), [1 / 3, 4 / 3, 7 / 3]);
    // A sub-second clip of a 29.97 fps video: frames int(s * fps) - 1 .. int(e * fps) - 1, the middle one.
    const clip = sampleFrameIndices({ vidFps: 30000 / 1001, totalFrames: 444, fps: 1, maxFrames: 180, start: 4.1, end: 4.6 });
    assert.deepEqual(clip.range, [121, 136]);
    assert.deepEqual(clip.frameIndices, [129]);
    assert.deepEqual(Array.from(clip.timestamps), [129 / (30000 / 1001)]);
    // Reversed bounds are swapped, equal ones widened to 1 s, negative ones clamped.
    assert.deepEqual(sampleFrameIndices({ vidFps: 10, totalFrames: 100, fps: 1, maxFrames: 9, start: 5, end: 2 }).range, [19, 49]);
    assert.deepEqual(sampleFrameIndices({ vidFps: 10, totalFrames: 100, fps: 1, maxFrames: 9, start: 3, end: 3 }).range, [29, 39]);
    assert.deepEqual(sampleFrameIndices({ vidFps: 10, totalFrames: 100, fps: 1, maxFrames: 9, start: -4, end: 0.5 }).range, [0, 4]);
    // Long ranges (duration / vid_fps >= max_frames) are sampled uniformly.
    assert.deepEqual(sampleFrameIndices({ vidFps: 3, totalFrames: 30, fps: 1, maxFrames: 4 }).frameIndices, [0, 9, 19, 29]);
    // fps above the source rate: a segment of 1 (numpy would fail on a zero step).
    assert.equal(sampleFrameIndices({ vidFps: 3, totalFrames: 6, fps: 10, maxFrames: 180 }).frameIndices.length, 6);
    // Nothing in range.
    assert.deepEqual(sampleFrameIndices({ vidFps: 3, totalFrames: 6, fps: 1, maxFrames: 180, start: 10 }).frameIndices, []);
  });

  it('does libavutil arithmetic: rescaling, av_d2q, time arguments', () => {
    assert.equal(rescale(3n, 1n, 2n), 2n);
    assert.equal(rescale(-3n, 1n, 2n), -2n);
    assert.equal(rescale(-3n, 1n, 2n, 'down'), -2n);
    assert.equal(rescale(-1n, 1n, 2n, 'down'), -1n);
    assert.equal(rescale(1n, 1n, 2n, 'up'), 1n);
    assert.deepEqual(doubleToRational(1), [1, 1]);
    assert.deepEqual(doubleToRational(0.5), [1, 2]);
    assert.deepEqual(doubleToRational(0.7), [7, 10]);
    assert.deepEqual(doubleToRational(1 / 3), [1, 3]);
    assert.deepEqual(doubleToRational(29.97), [2997, 100]);
    assert.equal(ffmpegTimeMicros('12.3456789'), 12_345_678n);
    assert.equal(ffmpegTimeMicros('3'), 3_000_000n);
    assert.equal(ffmpegTimeArg(3), '3');
    assert.equal(ffmpegTimeArg(12.3), '12.3');
    assert.equal(ffmpegTimeArg(5e-7), '0.0000005');
  });

  it('predicts how many frames ffmpeg returns from the frame timestamps', () => {
    const cfr = (fps: number, frames: number, startPts = 0): VideoStreamTiming => ({
      timeBase: [1, fps * 1000],
      pts: Array.from({ length: frames }, (_, i) => startPts + i * 1000),
      durations: Array.from({ length: frames }, () => 1000),
      formatStartMicros: 0n,
    });
    // 10 s of 30 fps video: 10 frames, whatever the container's (audio) duration.
    assert.equal(predictFfmpegFrameCount(cfr(30, 300), 1), 10);
    assert.equal(predictFfmpegFrameCount(cfr(30, 300), 0.7), 7);
    // A start without an end: -t is the whole container duration, the clip ends with the video (3..10 s).
    assert.equal(predictFfmpegFrameCount(cfr(30, 300), 1, { start: '3', duration: '12.3' }), 7);
    // -t ends at the first frame at least T after the first kept one: 2.99 s of 25 fps ends at the 3.0 s frame.
    assert.equal(predictFfmpegFrameCount(cfr(25, 183), 1, { start: '0', duration: '2.99' }), 3);
    // A video that starts late: rawvideo's constant-rate sync repeats its first frame down to tick 0.
    assert.equal(predictFfmpegFrameCount(cfr(30, 180, 30 * 2300), 1), 8);
    // Shorter than 1/fps: nothing.
    assert.equal(predictFfmpegFrameCount(cfr(15, 12), 1), 0);
  });
});

describe('the fixtures\' decoded videos, byte for byte', { skip: (!fixtures && FIXTURES_MISSING) || (!ffmpeg && NO_FFMPEG) }, () => {
  const cases: [string, string, number][] = [
    ['c_video', '1034346401.mp4', 180],
    ['d_video_short', 'sample_demo_3.mp4', 4],
    ['f_video_and_image', 'sample_demo_3.mp4', 3],
    ['g_video_diffp_synthetic', 'synthetic_diffp.mkv', 180],
  ];
  for (const [name, file, maxFrames] of cases) {
    it(`${name}: ${file}, fps 1, max_frames ${maxFrames}`, async () => {
      const inputs = SafetensorsFile.open(join(fixtures!, 'cases', name, 'inputs.safetensors'));
      const [t, h, w] = inputs.info('item0_decoded_u8').shape as [number, number, number];
      const expected = new Uint8Array(inputs.readBytes('item0_decoded_u8'));
      const timestamps = inputs.readF64('item0_timestamps').data;
      inputs.close();
      const plan = await planVideo(join(fixtures!, 'media', file), { fps: 1, maxFrames });
      assert.equal(plan.kind, 'ffmpeg');
      assert.deepEqual([plan.frameCount, plan.height, plan.width], [t, h, w]);
      assert.deepEqual(Array.from(plan.timestamps), Array.from(timestamps));
      let decoded = 0;
      const frameBytes = h * w * 3;
      await decodeVideo(
        plan,
        (frame, i) => {
          assert.ok(sameBytes(frame.data, expected.subarray(i * frameBytes, (i + 1) * frameBytes)), `frame ${i} differs`);
        },
        { onProgress: (n) => (decoded = n) },
      );
      assert.equal(decoded, plan.decoderFrames, 'ffmpeg returned the predicted number of frames');
    });
  }

  it('gives the same result without ffprobe (ffmpeg -i report and framecrc)', async () => {
    const saved = process.env.VL3_FFPROBE;
    process.env.VL3_FFPROBE = 'none';
    try {
      const { frames, timestamps, plan } = await loadVideo(join(fixtures!, 'media', 'sample_demo_3.mp4'), { fps: 1, maxFrames: 4 });
      assert.deepEqual(Array.from(timestamps), [0, 1, 3, 5]);
      assert.equal(plan.decoderFrames, 6);
      const inputs = SafetensorsFile.open(join(fixtures!, 'cases', 'd_video_short', 'inputs.safetensors'));
      const expected = new Uint8Array(inputs.readBytes('item0_decoded_u8'));
      inputs.close();
      const size = plan.width * plan.height * 3;
      frames.forEach((f, i) => assert.ok(sameBytes(f.data, expected.subarray(i * size, (i + 1) * size))));
    } finally {
      if (saved === undefined) delete process.env.VL3_FFPROBE;
      else process.env.VL3_FFPROBE = saved;
    }
  });
});

describe('generated media', { skip: !ffmpeg && NO_FFMPEG }, () => {
  let dir = '';
  const media = (name: string) => join(dir, name);

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vl3-video-'));
    const testsrc = (size: string, rate: number, duration: number) => ['-f', 'lavfi', '-i', `testsrc=size=${size}:rate=${rate}:duration=${duration}`];
    // 8 s of 30 fps video with 9.5 s of audio: the container outlasts the video.
    await ffmpegRun([...testsrc('96x64', 30, 8), '-f', 'lavfi', '-i', 'sine=duration=9.5', '-c:v', 'ffv1', '-c:a', 'pcm_s16le', media('av.mkv')]);
    await ffmpegRun([...testsrc('64x48', 15, 0.8), '-c:v', 'ffv1', media('short.mkv')]);
    await ffmpegRun([...testsrc('320x240', 30, 20), '-c:v', 'ffv1', media('long.mkv')]);
    await ffmpegRun([...testsrc('48x32', 10, 3), '-vf', 'split[a][b];[a]palettegen[p];[b][p]paletteuse', media('anim.gif')]);
    await ffmpegRun(['-f', 'lavfi', '-i', 'sine=duration=1', media('sound.wav')]);
    writeFileSync(media('notes.mp4'), 'not a video\n');
    // A display matrix turning the picture 90 degrees, written into the MP4 track header (tkhd version 0: the
    // matrix follows 40 bytes of box header and fields).
    await ffmpegRun([...testsrc('48x32', 10, 2.5), '-c:v', 'mpeg4', media('plain.mp4')]);
    const bytes = readFileSync(media('plain.mp4'));
    const tkhd = bytes.indexOf('tkhd') - 4;
    assert.equal(bytes[tkhd + 8], 0, 'tkhd version 0');
    [0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000].forEach((v, i) => bytes.writeInt32BE(v, tkhd + 48 + 4 * i));
    writeFileSync(media('rotated.mp4'), bytes);
  });

  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** The reference's ffmpeg path by hand: probe, trim arithmetic, one ffmpeg run, arange, linspace. */
  async function reference(path: string, o: VideoOptions): Promise<{ frames: Buffer[]; timestamps: number[] }> {
    const { stdout } = await runTool(ffprobe!.program, ['-v', 'error', '-show_format', '-show_streams', '-of', 'json', path]);
    const info = JSON.parse(stdout.toString()) as { format: { duration: string }; streams: { codec_type: string; width: number; height: number; start_time: string }[] };
    const video = info.streams.find((s) => s.codec_type === 'video')!;
    let duration = Number(info.format.duration);
    let start = Number(video.start_time);
    if (o.startTime !== undefined) {
      const s = Math.max(start, o.startTime);
      duration -= s - o.startTime;
      start = s;
    }
    if (o.endTime !== undefined) duration = Math.min(duration, o.endTime - start);
    const trim = o.startTime !== undefined || o.endTime !== undefined ? ['-ss', String(start), '-t', String(duration)] : [];
    const raw = await ffmpegRun([...trim, '-i', path, '-filter_complex', `[0]fps=fps=${o.fps}:round=down[s0]`, '-map', '[s0]', '-f', 'rawvideo', '-pix_fmt', 'rgb24', 'pipe:']);
    const size = video.width * video.height * 3;
    const frames = Array.from({ length: raw.length / size }, (_, i) => raw.subarray(i * size, (i + 1) * size));
    const times = Array.from(numpyArange(start, start + duration + 1 / o.fps, 1 / o.fps)).slice(0, frames.length);
    const keep = subsampleIndices(frames.length, o.maxFrames);
    return { frames: keep.map((i) => frames[i]!), timestamps: keep.map((i) => times[i]!) };
  }

  const trims: [string, Omit<VideoOptions, 'signal'>][] = [
    ['no trim (video shorter than the container)', { fps: 1, maxFrames: 180 }],
    ['start only', { fps: 1, maxFrames: 180, startTime: 2.5 }],
    ['end only', { fps: 2, maxFrames: 180, endTime: 4.7 }],
    ['start and end', { fps: 1, maxFrames: 180, startTime: 1.5, endTime: 6.3 }],
    ['start and end, fractional fps, subsampled', { fps: 3, maxFrames: 5, startTime: 1.02, endTime: 5.03 }],
  ];
  for (const [what, options] of trims) {
    it(`trims as the reference: ${what}`, { skip: !ffprobe && 'no ffprobe to compute the reference with' }, async () => {
      const want = await reference(media('av.mkv'), options);
      const got = await loadVideo(media('av.mkv'), options);
      assert.equal(got.plan.kind, 'ffmpeg');
      assert.deepEqual(Array.from(got.timestamps), want.timestamps);
      assert.equal(got.frames.length, want.frames.length);
      got.frames.forEach((f, i) => assert.ok(sameBytes(f.data, want.frames[i]!), `frame ${i} differs`));
    });
  }

  it('loads a clip shorter than 1/fps through the index path: its middle frame', async () => {
    const plan = await planVideo(media('short.mkv'), { fps: 1, maxFrames: 180 });
    assert.equal(plan.kind, 'clip');
    assert.match(plan.note ?? '', /no frame/);
    // 12 frames at 15 fps: one segment of 12 frames, its middle frame 6, at 6/15 s.
    assert.deepEqual(plan.frameIndices, [6]);
    assert.deepEqual(Array.from(plan.timestamps), [6 / 15]);
    const { frames } = await loadVideo(media('short.mkv'), { fps: 1, maxFrames: 180 });
    const all = await allFrames(media('short.mkv'), 64, 48);
    assert.equal(frames.length, 1);
    assert.ok(sameBytes(frames[0]!.data, all[6]!));
  });

  it('takes clips under 1 s through the index path, seeking to the first frame', async () => {
    const plan = await planVideo(media('long.mkv'), { fps: 1, maxFrames: 180, startTime: 12.2, endTime: 12.9 });
    assert.equal(plan.kind, 'clip');
    // Frames int(12.2 * 30) - 1 = 365 .. int(12.9 * 30) - 1 = 386: a segment of 22, its middle frame 365 + 11.
    assert.deepEqual(plan.frameIndices, [376]);
    assert.ok(plan.args?.includes('-ss'), 'seeks');
    const frames: RgbImage[] = [];
    await decodeVideo(plan, (f) => void frames.push(f));
    const all = await allFrames(media('long.mkv'), 320, 240);
    assert.ok(sameBytes(frames[0]!.data, all[376]!));
  });

  it('rejects a range with no frames, naming the file', async () => {
    await assert.rejects(planVideo(media('short.mkv'), { fps: 1, maxFrames: 180, startTime: 5 }), /short\.mkv: no frames in the requested range/);
  });

  it('samples GIFs at an assumed 25 fps, frames as decoded by ffmpeg', async () => {
    const one = await loadVideo(media('anim.gif'), { fps: 1, maxFrames: 180 });
    assert.equal(one.plan.kind, 'gif');
    assert.equal(one.plan.totalFrames, 30);
    assert.deepEqual(one.plan.frameIndices, [12]);
    assert.deepEqual(Array.from(one.timestamps), [0.48]);
    const every = await loadVideo(media('anim.gif'), { fps: 25, maxFrames: 180 });
    assert.equal(every.frames.length, 30);
    assert.ok(sameBytes(every.frames[12]!.data, one.frames[0]!.data));
    // An opaque GIF's first frame as Pillow reads it.
    assert.ok(sameBytes(every.frames[0]!.data, decodeGifFirstFrame(readFileSync(media('anim.gif'))).data));
  });

  it('reads a folder of frames in Python\'s sorted() order at an assumed 3 fps', async () => {
    const folder = media('frames');
    mkdirSync(folder);
    // Python's sorted(): "f_10" before "f_2"; the fullwidth "Ａ" (U+FF21) before the astral "𝒜" (U+1D49C), where
    // UTF-16 order (JavaScript's default sort) puts the surrogate pair (0xD835 ...) first.
    const names = ['f_1.png', 'f_10.png', 'f_2.png', 'f_3.png', 'f_4.png', 'f_Ａ.png', 'f_𝒜.png'];
    const images = names.map((_, k) => new Uint8Array(8 * 6 * 3).map((_, i) => (i * 7 + k * 31) & 255));
    for (const [k, name] of names.entries()) {
      await sharp(images[k]!, { raw: { width: 8, height: 6, channels: 3 } }).png().toFile(join(folder, name));
    }
    const { frames, timestamps, plan } = await loadVideo(folder, { fps: 1, maxFrames: 180 });
    assert.equal(plan.kind, 'folder');
    assert.deepEqual(plan.files, names);
    assert.deepEqual(plan.frameIndices, [1, 4]);
    assert.deepEqual(Array.from(timestamps), [1 / 3, 4 / 3]);
    assert.ok(sameBytes(frames[0]!.data, images[1]!));
    assert.ok(sameBytes(frames[1]!.data, images[4]!));
  });

  it('hands out rotated videos upright, at the rotated size', async () => {
    const plain = await loadVideo(media('plain.mp4'), { fps: 1, maxFrames: 180 });
    const { frames, plan } = await loadVideo(media('rotated.mp4'), { fps: 1, maxFrames: 180 });
    assert.deepEqual([plan.width, plan.height, plan.frameCount], [32, 48, 2]);
    assert.deepEqual([plain.plan.width, plain.plan.height], [48, 32]);
    // Column x of the upright frame is row x of the stored one, read bottom-up (a quarter turn clockwise).
    const stored = plain.frames[1]!;
    const upright = frames[1]!;
    let same = 0;
    for (let y = 0; y < 48; y++) {
      for (let x = 0; x < 32; x++) {
        const a = (y * 32 + x) * 3;
        const b = ((31 - x) * 48 + y) * 3;
        if (upright.data[a] === stored.data[b]) same++;
      }
    }
    assert.ok(same > 0.95 * 48 * 32, `${same} of ${48 * 32} pixels in place`);
  });

  it('names the file when it is missing, not a video, or has no video stream', async () => {
    await assert.rejects(planVideo(media('missing.mp4'), { fps: 1, maxFrames: 180 }), /video file not found: .*missing\.mp4/);
    await assert.rejects(planVideo(media('notes.mp4'), { fps: 1, maxFrames: 180 }), /cannot read video .*notes\.mp4: [^]*\n[^]*Invalid data found/);
    await assert.rejects(planVideo(media('sound.wav'), { fps: 1, maxFrames: 180 }), /sound\.wav: the file has no video stream/);
    await assert.rejects(planVideo(media('av.mkv'), { fps: 0, maxFrames: 180 }), /fps must be a positive number/);
    await assert.rejects(planVideo(media('av.mkv'), { fps: 1, maxFrames: 2.5 }), /max_frames must be a positive integer/);
  });

  it('refuses playlists, whose entries ffmpeg would open, with ffprobe and without', async () => {
    // Both name a real video beside them: what is refused is the format, not a broken entry.
    const target = pathToFileURL(media('av.mkv')).href;
    writeFileSync(media('playlist.mp4'), `#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:8.0,\n${target}\n#EXT-X-ENDLIST\n`);
    writeFileSync(media('list.mp4'), 'ffconcat version 1.0\nfile short.mkv\n');
    const saved = process.env.VL3_FFPROBE;
    try {
      for (const probe of [saved, 'none']) {
        if (probe === undefined) delete process.env.VL3_FFPROBE;
        else process.env.VL3_FFPROBE = probe;
        await assert.rejects(planVideo(media('playlist.mp4'), { fps: 1, maxFrames: 4 }), /cannot read video .*playlist\.mp4: its format \(hls\) is not read/, `VL3_FFPROBE=${probe}`);
        await assert.rejects(planVideo(media('list.mp4'), { fps: 1, maxFrames: 4 }), /cannot read video .*list\.mp4: its format \(concat\) is not read/, `VL3_FFPROBE=${probe}`);
      }
    } finally {
      if (saved === undefined) delete process.env.VL3_FFPROBE;
      else process.env.VL3_FFPROBE = saved;
    }
  });

  it('reports an ffmpeg failure with the file and the end of its stderr', async () => {
    writeFileSync(media('gone.mkv'), readFileSync(media('short.mkv')));
    const plan = await planVideo(media('gone.mkv'), { fps: 5, maxFrames: 180 });
    rmSync(media('gone.mkv'));
    await assert.rejects(decodeVideo(plan, () => {}), (err: Error) => {
      assert.equal(err.name, 'FfmpegError');
      assert.match(err.message, /^decoding .*gone\.mkv failed: .* exited with code 1:\n.*No such file or directory/);
      return true;
    });
  });

  /** ffmpeg processes whose arguments mention `path` (Linux /proc; undefined elsewhere). */
  function childrenReading(path: string): number[] | undefined {
    if (!existsSync('/proc/self/cmdline')) return undefined;
    const pids: number[] = [];
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        if (readFileSync(`/proc/${entry}/cmdline`, 'latin1').includes(path)) pids.push(Number(entry));
      } catch {
        // gone meanwhile
      }
    }
    return pids;
  }

  it('stops ffmpeg and rejects when aborted mid-decode', async () => {
    const plan = await planVideo(media('long.mkv'), { fps: 30, maxFrames: 1000 });
    assert.equal(plan.frameCount, 600);
    const controller = new AbortController();
    let seen = 0;
    await assert.rejects(
      decodeVideo(
        plan,
        () => {
          if (++seen === 3) controller.abort();
        },
        { signal: controller.signal },
      ),
      { name: 'AbortError' },
    );
    assert.equal(seen, 3);
    assert.deepEqual(childrenReading(media('long.mkv')) ?? [], []);
  });

  it('stops ffmpeg and rejects with the callback\'s error; waits for slow callbacks in order', async () => {
    const plan = await planVideo(media('long.mkv'), { fps: 5, maxFrames: 1000 });
    await assert.rejects(
      decodeVideo(plan, (_, i) => {
        if (i === 2) throw new Error('consumer failed');
      }),
      /consumer failed/,
    );
    assert.deepEqual(childrenReading(media('long.mkv')) ?? [], []);
    let running = 0;
    const order: number[] = [];
    await decodeVideo(plan, async (_, i) => {
      assert.equal(running++, 0, 'one callback at a time');
      await new Promise((r) => setTimeout(r, 2));
      order.push(i);
      running--;
    });
    assert.deepEqual(order, Array.from({ length: plan.frameCount }, (_, i) => i));
  });
});

describe('several items on one file (spec 3.4)', () => {
  const item = (source: string, startTime?: number, endTime?: number, fps?: number): VideoMedia => ({
    kind: 'video',
    source,
    ...(fps === undefined ? {} : { fps }),
    ...(startTime === undefined ? {} : { startTime }),
    ...(endTime === undefined ? {} : { endTime }),
    location: { messageIndex: 0, partIndex: 0 },
  });
  const defaults = { fps: 1, maxFrames: 180 };

  it('loads once from the smallest start to the largest end; each item keeps its own range', () => {
    const groups = groupVideoItems([item('a.mp4', 2, 4), item('b.mp4'), item('a.mp4', 3, 9), item('a.mp4', 1, 5, 2)], defaults);
    assert.deepEqual(
      groups.map((g) => [g.source, g.options, g.members]),
      [
        ['a.mp4', { fps: 1, maxFrames: 180, startTime: 2, endTime: 9 }, [{ item: 0, start: 2, end: 4 }, { item: 2, start: 3, end: 9 }]],
        ['b.mp4', { fps: 1, maxFrames: 180 }, [{ item: 1, start: 0, end: Infinity }]],
        ['a.mp4', { fps: 2, maxFrames: 180, startTime: 1, endTime: 5 }, [{ item: 3, start: 1, end: 5 }]],
      ],
    );
    assert.deepEqual(framesInRange([2, 3, 4, 5, 6, 7, 8], 3, 5), [1, 2, 3]);
  });

  it('keeps the reference\'s quirk: an unbounded item does not widen the first item\'s bounds', () => {
    const [group] = groupVideoItems([item('a.mp4', 5, 10), item('a.mp4')], defaults);
    assert.deepEqual(group!.options, { fps: 1, maxFrames: 180, startTime: 5, endTime: 10 });
    assert.deepEqual(group!.members[1], { item: 1, start: 0, end: Infinity });
  });
});

describe('finding ffmpeg', () => {
  it('refuses a VL3_FFMPEG that does not run, listing the ways to provide ffmpeg', async () => {
    const saved = process.env.VL3_FFMPEG;
    process.env.VL3_FFMPEG = '/nonexistent/ffmpeg';
    clearToolCache();
    try {
      await assert.rejects(findFfmpeg(), (err: Error) => {
        assert.match(err.message, /VL3_FFMPEG=\/nonexistent\/ffmpeg does not run/);
        assert.match(err.message, /PATH/);
        assert.match(err.message, /@ffmpeg-installer\/ffmpeg/);
        return true;
      });
    } finally {
      if (saved === undefined) delete process.env.VL3_FFMPEG;
      else process.env.VL3_FFMPEG = saved;
      clearToolCache();
    }
  });

  it('reads the input report of ffmpeg -i', () => {
    const report = parseInputReport(
      [
        "Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'file:/x/clip.mp4':",
        '  Duration: 00:01:06.09, start: 0.023000, bitrate: 608 kb/s',
        '  Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(tv, bt709, progressive), 640x360 [SAR 1:1 DAR 16:9], 353 kb/s, 23.98 fps, 23.98 tbr, 24k tbn (default)',
        '    Side data:',
        '      displaymatrix: rotation of -90.00 degrees',
        '  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 44100 Hz, stereo, fltp, 248 kb/s (default)',
        'At least one output file must be specified',
      ].join('\n'),
    );
    assert.deepEqual(report, {
      formatName: 'mov,mp4,m4a,3gp,3g2,mj2',
      duration: 66.09,
      start: 0.023,
      video: { index: 0, codec: 'h264', width: 640, height: 360, frameRate: [23980, 1000], rotation: -90 },
    });
    assert.equal(parseInputReport('/x/notes.mp4: Invalid data found when processing input'), undefined);
  });
});
