/**
 * Pillow-exact bicubic resize of 8-bit RGB images (spec 2.4): what the reference does with
 * `PIL.Image.resize((w, h), BICUBIC, reducing_gap=None)` to every image and video frame. The work is done by the
 * native kernel (native/resize.cc); `resizeBicubicRgbReference` is the same algorithm in plain TypeScript, kept
 * as the readable specification the kernel is tested against.
 */
import { nativeAddon } from '../tensor/native.js';
import type { RgbImage } from './image.js';

interface ResizeAddon {
  resizeBicubicRgb8(src: Uint8Array, srcW: number, srcH: number, dst: Uint8Array, dstW: number, dstH: number, threads: number): void;
}

export interface ResizeOptions {
  /** 1: run on the calling thread only; n > 1: n tasks on the native pool; default: the whole pool. */
  threads?: number;
}

/**
 * Resizes with the native kernel (synchronously: about 45 ms for 12 MP on one core, half that on two); a target
 * equal to the source size gives a copy, as in Pillow.
 */
export function resizeBicubicRgb(src: RgbImage, width: number, height: number, options: ResizeOptions = {}): RgbImage {
  checkResizeArgs(src, width, height);
  const threads = options.threads;
  if (threads !== undefined && (!Number.isInteger(threads) || threads < 1)) {
    throw new Error(`resizeBicubicRgb: threads must be an integer >= 1, got ${threads}`);
  }
  const data = new Uint8Array(width * height * 3);
  (nativeAddon() as ResizeAddon).resizeBicubicRgb8(src.data, src.width, src.height, data, width, height, threads ?? 0);
  return { width, height, data };
}

function checkResizeArgs(src: RgbImage, width: number, height: number): void {
  for (const [name, v] of [['source width', src.width], ['source height', src.height], ['width', width], ['height', height]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`resizeBicubicRgb: ${name} must be an integer >= 1, got ${v}`);
  }
  if (src.data.length !== src.width * src.height * 3) {
    throw new Error(`resizeBicubicRgb: source has ${src.data.length} bytes, expected ${src.width}x${src.height}x3`);
  }
}

const PRECISION_BITS = 22; // 8-bit result plus 2 bits of headroom for the negative lobes, as Pillow
const HALF = 1 << (PRECISION_BITS - 1);

/** Keys' cubic kernel (a = -0.5) in Pillow's Horner form: the evaluation order decides the last bits. */
function bicubic(x: number): number {
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

/** Output i of one axis reads inputs [first[i], first[i] + count[i]) with fixed-point weights k[i * ksize + j]. */
interface Taps {
  ksize: number;
  first: Int32Array;
  count: Int32Array;
  k: Int32Array;
}

function precomputeTaps(inSize: number, outSize: number): Taps {
  // Pillow's box is float32: scale = (double)(float(in) - 0) / out. Math.fround matters only above 2^24.
  const scale = Math.fround(inSize) / outSize;
  const filterscale = Math.max(scale, 1);
  const support = 2 * filterscale;
  const ss = 1 / filterscale; // Pillow multiplies by the reciprocal rather than dividing
  const ksize = Math.ceil(support) * 2 + 1;
  const taps: Taps = { ksize, first: new Int32Array(outSize), count: new Int32Array(outSize), k: new Int32Array(outSize * ksize) };
  const w = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const count = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0;
    for (let x = 0; x < count; x++) {
      w[x] = bicubic((x + xmin - center + 0.5) * ss);
      ww += w[x]!;
    }
    for (let x = 0; x < count; x++) {
      const v = ww !== 0 ? w[x]! / ww : w[x]!;
      const scaled = v * (1 << PRECISION_BITS);
      taps.k[xx * ksize + x] = Math.trunc(v < 0 ? -0.5 + scaled : 0.5 + scaled); // half away from zero
    }
    taps.first[xx] = xmin;
    taps.count[xx] = count;
  }
  return taps;
}

function clip8(acc: number): number {
  const v = acc >> PRECISION_BITS; // the sums fit int32, so >> is Pillow's arithmetic shift
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Pillow's horizontal pass over source rows [rowOffset, rowOffset + rows). */
function horizontal(src: RgbImage, outW: number, taps: Taps, rowOffset: number, rows: number): Uint8Array {
  const out = new Uint8Array(outW * rows * 3);
  for (let y = 0; y < rows; y++) {
    const rowStart = (y + rowOffset) * src.width * 3;
    for (let xx = 0; xx < outW; xx++) {
      let s0 = HALF, s1 = HALF, s2 = HALF;
      const kBase = xx * taps.ksize;
      let p = rowStart + taps.first[xx]! * 3;
      for (let x = 0; x < taps.count[xx]!; x++, p += 3) {
        const k = taps.k[kBase + x]!;
        s0 += src.data[p]! * k;
        s1 += src.data[p + 1]! * k;
        s2 += src.data[p + 2]! * k;
      }
      const o = (y * outW + xx) * 3;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
    }
  }
  return out;
}

/** Pillow's vertical pass; `firstRow` is the source row that `src` starts with. */
function vertical(src: RgbImage, outH: number, taps: Taps, firstRow: number): Uint8Array {
  const rowBytes = src.width * 3;
  const out = new Uint8Array(rowBytes * outH);
  for (let yy = 0; yy < outH; yy++) {
    const kBase = yy * taps.ksize;
    for (let j = 0; j < rowBytes; j++) {
      let s = HALF;
      for (let y = 0; y < taps.count[yy]!; y++) {
        s += src.data[(taps.first[yy]! - firstRow + y) * rowBytes + j]! * taps.k[kBase + y]!;
      }
      out[yy * rowBytes + j] = clip8(s);
    }
  }
  return out;
}

/** The algorithm of Pillow's ImagingResampleInner for 8-bit RGB, in plain TypeScript (slow; for tests). */
export function resizeBicubicRgbReference(src: RgbImage, width: number, height: number): RgbImage {
  checkResizeArgs(src, width, height);
  const needHorizontal = width !== src.width;
  const needVertical = height !== src.height;
  if (!needHorizontal && !needVertical) return { width, height, data: src.data.slice() };
  const vTaps = precomputeTaps(src.height, height);
  let current = src;
  let firstRow = 0;
  if (needHorizontal) {
    // Only the source rows the vertical pass will read (all of them when the height stays).
    firstRow = vTaps.first[0]!;
    const rows = vTaps.first[height - 1]! + vTaps.count[height - 1]! - firstRow;
    current = { width, height: rows, data: horizontal(src, width, precomputeTaps(src.width, width), firstRow, rows) };
  }
  if (!needVertical) return current;
  return { width, height, data: vertical(current, height, vTaps, firstRow) };
}
