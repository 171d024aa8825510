/**
 * Image loading with the pixels of the reference's `PIL.Image.open(path).convert("RGB")` (spec 2.1):
 *
 * - the format is sniffed from the bytes, never the file name (several reference assets are misnamed);
 * - alpha is dropped, not composited; palettes and grayscale are expanded to RGB;
 * - no EXIF orientation, no ICC colour management (sharp's `ignoreIcc`, and its colourspace conversion is
 *   bypassed by asking for the decoder's own colourspace);
 * - 16-bit samples become 8-bit as Pillow converts them: single-channel 16-bit gray is clipped to 255 (Pillow's
 *   I;16 -> RGB), every other 16-bit layout keeps its high byte (Pillow unpacks RGB;16B, LA;16B, ... that way);
 * - CMYK uses Pillow's naive conversion, not an ICC transform;
 * - PNG, JPEG, WebP and TIFF are decoded by sharp (libvips with libpng, mozjpeg, libwebp, libtiff); GIF and BMP by
 *   our own decoders with Pillow's semantics (sharp has no BMP loader, and composites GIF transparency);
 * - a pixel-count guard reads only the header and refuses what Pillow refuses (DecompressionBombError above
 *   2 x MAX_IMAGE_PIXELS; Pillow merely warns between 1x and 2x, so those images load here too).
 */
import { readFile } from 'node:fs/promises';
import sharp, { type Metadata, type OutputInfo } from 'sharp';

import { bmpSize, decodeBmp } from './bmp.js';
import { decodeGifFirstFrame, gifSize } from './gif.js';
import { DecodeFailure, ImageLoadError } from './image-error.js';

export { ImageLoadError, type ImageErrorKind } from './image-error.js';

/** An 8-bit RGB image, rows of width * 3 bytes (HWC), no padding. */
export interface RgbImage {
  width: number;
  height: number;
  data: Uint8Array;
}

export type ImageFormat = 'png' | 'jpeg' | 'webp' | 'gif' | 'bmp' | 'tiff';

export interface LoadedImage extends RgbImage {
  /** The format found in the bytes. */
  format: ImageFormat;
}

/** Pillow's `Image.MAX_IMAGE_PIXELS`: above it Pillow warns, above twice it refuses to open the image. */
export const PILLOW_MAX_IMAGE_PIXELS = 89_478_485;
export const DEFAULT_MAX_PIXELS = 2 * PILLOW_MAX_IMAGE_PIXELS;

export interface LoadImageOptions {
  /** Refuse images of more pixels than this, judged from the header before decoding. Default 178,956,970. */
  maxPixels?: number;
  /** Position of the image in its request, to name buffers in errors as "image #k (N bytes)". */
  index?: number;
}

/** An image whose header was read and checked; its pixels are decoded on demand. */
export interface ProbedImage {
  width: number;
  height: number;
  format: ImageFormat;
  /** How errors name the input: its path, or "image #k (N bytes)". */
  name: string;
  /** Decodes the pixels (each call decodes again: callers keep the result only as long as they need it). */
  decode(): Promise<LoadedImage>;
}

/**
 * Loads an image from a file path, a `data:` URL or bytes and decodes it to 8-bit RGB exactly as the reference
 * does. Errors are ImageLoadError with a kind and a message naming the input.
 */
export async function loadImage(input: string | Uint8Array, options: LoadImageOptions = {}): Promise<LoadedImage> {
  return (await probeImage(input, options)).decode();
}

/**
 * Reads an image's bytes and header: its format and size, refused above `maxPixels` before any pixel is decoded.
 * A request can then size all its images first and decode them one at a time, so that it never holds more than
 * one full-size image.
 */
export async function probeImage(input: string | Uint8Array, options: LoadImageOptions = {}): Promise<ProbedImage> {
  const maxPixels = options.maxPixels ?? DEFAULT_MAX_PIXELS;
  if (!(maxPixels > 0)) throw new Error(`loadImage: maxPixels must be > 0, got ${maxPixels}`);
  const { bytes, name } = await readInput(input, options.index);
  const named = (err: unknown): ImageLoadError => {
    if (err instanceof ImageLoadError) return err;
    if (err instanceof DecodeFailure) return new ImageLoadError(err.kind, `${name}: ${err.message}`);
    return new ImageLoadError('unreadable', `${name}: cannot decode image: ${(err as Error).message}`);
  };
  try {
    const format = sniffImageFormat(bytes);
    if (!format) {
      const what = describeOtherFormat(bytes);
      throw new ImageLoadError('unsupported', `${name}: unsupported image format${what ? ` (${what})` : ''}; expected PNG, JPEG, WebP, GIF, BMP or TIFF`);
    }
    const { width, height, meta } = await readHeader(bytes, format);
    if (width < 1 || height < 1) throw new DecodeFailure('unreadable', `image has no pixels (${width}x${height})`);
    if (width * height > maxPixels) {
      throw new ImageLoadError('too-large', `${name}: ${width}x${height} = ${width * height} pixels is more than the limit of ${maxPixels}`);
    }
    const decode = async (): Promise<LoadedImage> => {
      let image: RgbImage;
      try {
        image = format === 'bmp' ? decodeBmp(bytes) : format === 'gif' ? decodeGifFirstFrame(bytes) : await decodeWithSharp(bytes, format, maxPixels, meta!);
      } catch (err) {
        throw named(err);
      }
      if (image.width !== width || image.height !== height) {
        throw new ImageLoadError('unreadable', `${name}: the header says ${width}x${height} but ${image.width}x${image.height} pixels were decoded`);
      }
      return { ...image, format };
    };
    return { width, height, format, name, decode };
  } catch (err) {
    throw named(err);
  }
}

/** The size from the header alone; sharp's metadata is kept for the decode that follows. */
async function readHeader(bytes: Uint8Array, format: ImageFormat): Promise<{ width: number; height: number; meta?: Metadata }> {
  if (format === 'bmp') return bmpSize(bytes);
  if (format === 'gif') return gifSize(bytes);
  let meta: Metadata;
  try {
    // Header only; our guard, not sharp's limit, decides on the size so the refusal says why.
    meta = await sharp(bytes, { failOn: 'error', limitInputPixels: false }).metadata();
  } catch (err) {
    throw sharpFailure(bytes, format, err);
  }
  return { width: meta.width, height: meta.height, meta };
}

async function readInput(input: string | Uint8Array, index: number | undefined): Promise<{ bytes: Uint8Array; name: string }> {
  const numbered = (what: string) => (index === undefined ? `image (${what})` : `image #${index} (${what})`);
  if (typeof input !== 'string') return { bytes: input, name: numbered(`${input.length} bytes`) };
  if (/^data:/i.test(input)) {
    const bytes = decodeDataUrl(input, numbered('data URL'));
    return { bytes, name: numbered(`data URL, ${bytes.length} bytes`) };
  }
  try {
    return { bytes: await readFile(input), name: input };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'file not found' : e.code === 'EISDIR' ? 'is a directory' : e.message;
    throw new ImageLoadError('unreadable', `${input}: cannot read image: ${why}`);
  }
}

/** `data:[<media type>][;base64],<data>`; without ;base64 the data is percent-encoded bytes. */
function decodeDataUrl(url: string, name: string): Uint8Array {
  const comma = url.indexOf(',');
  if (comma < 0) throw new ImageLoadError('unreadable', `${name}: malformed data URL (no comma)`);
  const meta = url.slice(5, comma);
  const payload = url.slice(comma + 1);
  if (/;base64$/i.test(meta)) {
    const clean = payload.replace(/\s+/g, '');
    if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(clean)) throw new ImageLoadError('unreadable', `${name}: data URL is not valid base64`);
    return Buffer.from(clean, 'base64');
  }
  // Percent-encoded octets; other characters stand for their UTF-8 bytes.
  const bytes: number[] = [];
  for (let i = 0; i < payload.length; i++) {
    const hex = payload.slice(i + 1, i + 3);
    if (payload[i] === '%' && /^[0-9a-f]{2}$/i.test(hex)) {
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else {
      const code = payload.codePointAt(i)!;
      if (code > 0xffff) i++;
      bytes.push(...Buffer.from(String.fromCodePoint(code), 'utf8'));
    }
  }
  return Uint8Array.from(bytes);
}

/** The format from the first bytes (magic numbers), or undefined for anything else. */
export function sniffImageFormat(b: Uint8Array): ImageFormat | undefined {
  const starts = (...sig: number[]) => sig.every((v, i) => b[i] === v);
  const ascii = (at: number, s: string) => [...s].every((ch, i) => b[at + i] === ch.charCodeAt(0));
  if (starts(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a)) return 'png';
  if (starts(0xff, 0xd8, 0xff)) return 'jpeg';
  if (ascii(0, 'RIFF') && ascii(8, 'WEBP')) return 'webp';
  if (ascii(0, 'GIF87a') || ascii(0, 'GIF89a')) return 'gif';
  if (ascii(0, 'BM')) return 'bmp';
  if (starts(0x49, 0x49, 0x2a, 0x00) || starts(0x4d, 0x4d, 0x00, 0x2a) || starts(0x49, 0x49, 0x2b, 0x00) || starts(0x4d, 0x4d, 0x00, 0x2b)) return 'tiff';
  return undefined;
}

/** Names a few formats we do not load, for a clearer error. */
function describeOtherFormat(b: Uint8Array): string | undefined {
  const text = Buffer.from(b.subarray(0, 64)).toString('latin1');
  if (b.length === 0) return 'empty input';
  if (text.slice(4, 8) === 'ftyp') {
    const brand = text.slice(8, 12);
    if (/^(avif|avis)$/.test(brand)) return 'AVIF';
    if (/^(heic|heix|hevc|heim|heis|mif1|msf1)$/.test(brand)) return 'HEIF/HEIC';
    return `ISO media "${brand}", probably a video`;
  }
  if (text.startsWith('\xff\x0a') || text.startsWith('\x00\x00\x00\x0cJXL ')) return 'JPEG XL';
  if (text.startsWith('\x00\x00\x00\x0cjP  ') || text.startsWith('\xff\x4f\xff\x51')) return 'JPEG 2000';
  if (text.startsWith('\x1a\x45\xdf\xa3')) return 'Matroska/WebM video';
  if (text.startsWith('%PDF')) return 'PDF';
  if (/^\s*(<\?xml|<svg)/i.test(text)) return 'SVG';
  if (text.startsWith('8BPS')) return 'Photoshop PSD';
  if (text.startsWith('\x00\x00\x01\x00')) return 'ICO';
  return undefined;
}

/** Colourspaces whose samples we convert ourselves; anything else goes through sharp's own sRGB conversion. */
const OWN_COLOURSPACES = new Set(['srgb', 'b-w', 'rgb16', 'grey16', 'cmyk']);

async function decodeWithSharp(bytes: Uint8Array, format: ImageFormat, maxPixels: number, meta: Metadata): Promise<RgbImage> {
  // failOn 'error': abort on truncated or broken data as Pillow does, but accept what libjpeg and libpng only
  // warn about (Pillow ignores those warnings too).
  const input = { failOn: 'error' } as const;
  const own = OWN_COLOURSPACES.has(meta.space);
  const limitInputPixels = Number.isFinite(maxPixels) ? Math.ceil(maxPixels) : false;
  let pipeline = sharp(bytes, { ...input, limitInputPixels, ignoreIcc: true, autoOrient: false, page: 0, pages: 1 });
  if (meta.space === 'cmyk') pipeline = pipeline.pipelineColourspace('cmyk'); // no ICC transform to sRGB
  if (own) pipeline = pipeline.toColourspace(meta.space); // keep the decoder's samples as they are
  const depth = own && meta.depth === 'ushort' ? 'ushort' : 'uchar';
  // 8-bit RGB(A): libvips drops the alpha band itself (a band extraction, never a flatten), saving a copy here.
  if (depth === 'uchar' && meta.space === 'srgb') pipeline = pipeline.removeAlpha();
  let raw: { data: Buffer; info: OutputInfo };
  try {
    raw = await pipeline.raw({ depth }).toBuffer({ resolveWithObject: true });
  } catch (err) {
    throw sharpFailure(bytes, format, err);
  }
  const { width, height, channels } = raw.info;
  const samples = depth === 'ushort' ? new Uint16Array(Uint8Array.from(raw.data).buffer) : raw.data;
  return { width, height, data: toRgb(samples, width * height, channels, meta.space === 'cmyk', depth === 'ushort') };
}

/** Pillow's `convert("RGB")` of decoded samples: gray replicated, alpha dropped, CMYK inverted naively. */
function toRgb(samples: Uint8Array | Uint16Array, pixels: number, channels: number, cmyk: boolean, sixteenBit: boolean): Uint8Array {
  if (channels === 3 && !sixteenBit) return new Uint8Array(samples.buffer, samples.byteOffset, pixels * 3);
  const out = new Uint8Array(pixels * 3);
  const gray = channels <= 2;
  // One 16-bit gray channel is Pillow's I;16, clipped; other 16-bit layouts are unpacked to their high byte.
  const to8 = !sixteenBit ? (v: number) => v : gray && channels === 1 ? (v: number) => Math.min(v, 255) : (v: number) => v >> 8;
  for (let p = 0, s = 0, o = 0; p < pixels; p++, s += channels, o += 3) {
    if (gray) {
      out[o] = out[o + 1] = out[o + 2] = to8(samples[s]!);
    } else if (cmyk) {
      const nk = 255 - samples[s + 3]!;
      out[o] = clip8(nk - mulDiv255(samples[s]!, nk));
      out[o + 1] = clip8(nk - mulDiv255(samples[s + 1]!, nk));
      out[o + 2] = clip8(nk - mulDiv255(samples[s + 2]!, nk));
    } else {
      out[o] = to8(samples[s]!);
      out[o + 1] = to8(samples[s + 1]!);
      out[o + 2] = to8(samples[s + 2]!);
    }
  }
  return out;
}

/** Pillow's MULDIV255: a * b / 255 rounded, in integers. */
function mulDiv255(a: number, b: number): number {
  const t = a * b + 128;
  return ((t >> 8) + t) >> 8;
}

function clip8(v: number): number {
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Classifies a sharp error: truncated files get their own kind, the rest are unreadable or unsupported. */
function sharpFailure(bytes: Uint8Array, format: ImageFormat, err: unknown): DecodeFailure {
  const message = (err as Error).message ?? String(err);
  const label = format.toUpperCase();
  if (/pixel limit/i.test(message)) return new DecodeFailure('unreadable', message); // the guard normally fires first
  if (isTruncated(bytes, format) || /premature end|truncat|unexpected end|end of (file|stream)|not enough data/i.test(message)) {
    return new DecodeFailure('truncated', `truncated ${label} file (${message})`);
  }
  if (/unsupported|not supported/i.test(message)) return new DecodeFailure('unsupported', `unsupported ${label} variant (${message})`);
  return new DecodeFailure('unreadable', `corrupt ${label} file (${message})`);
}

/** Structural truncation checks where the decoders' messages are generic. */
function isTruncated(b: Uint8Array, format: ImageFormat): boolean {
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (format === 'webp') return b.length < 8 + view.getUint32(4, true);
  if (format === 'png') {
    // Walk the chunks: a chunk running past the end, or no IEND, means the file was cut.
    for (let pos = 8; ; ) {
      if (pos + 8 > b.length) return true;
      const length = view.getUint32(pos);
      const type = String.fromCharCode(b[pos + 4]!, b[pos + 5]!, b[pos + 6]!, b[pos + 7]!);
      if (pos + 12 + length > b.length) return true;
      if (type === 'IEND') return false;
      pos += 12 + length;
    }
  }
  return false;
}
