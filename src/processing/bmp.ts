/**
 * BMP decoding with the semantics of Pillow's BmpImagePlugin followed by `convert("RGB")` (sharp has no BMP
 * loader). Pillow's choices are kept where they decide pixel values: which header sizes and bitfield layouts it
 * accepts, 5/6-bit channels widened with `v * 255 / max` (integer division), its RLE decoder (including how it
 * pads rows and aligns on absolute file positions), and palette entries it never read being black.
 */
import { DecodeFailure } from './image-error.js';
import type { RgbImage } from './image.js';

const RAW = 0, RLE8 = 1, RLE4 = 2, BITFIELDS = 3;

/** Byte positions of R, G, B inside a 32-bit little-endian pixel for every layout Pillow accepts. */
const LAYOUTS_32: ReadonlyMap<string, readonly [number, number, number]> = new Map([
  ['ff0000,ff00,ff,0', [2, 1, 0]], // BGRX
  ['ff000000,ff0000,ff00,0', [3, 2, 1]], // XBGR
  ['ff000000,ff00,ff,0', [3, 1, 0]], // BGXR
  ['ff000000,ff0000,ff00,ff', [3, 2, 1]], // ABGR
  ['ff,ff00,ff0000,ff000000', [0, 1, 2]], // RGBA
  ['ff0000,ff00,ff,ff000000', [2, 1, 0]], // BGRA
  ['ff000000,ff00,ff,ff0000', [3, 1, 0]], // BGAR
  ['0,0,0,0', [2, 1, 0]], // BGRA
]);

interface BmpInfo {
  width: number;
  height: number;
  bits: number;
  compression: number;
  bottomUp: boolean;
  /** Palette bytes per entry: 3 (OS/2 core header) or 4. */
  entryBytes: number;
  colors: number;
  paletteStart: number;
  dataStart: number;
  /** For 16 and 32 bits: how to read one pixel. */
  layout?: 'bgr15' | 'bgr16' | readonly [number, number, number];
}

function truncated(what: string): never {
  throw new DecodeFailure('truncated', `truncated BMP file (${what})`);
}

function unsupported(what: string): never {
  throw new DecodeFailure('unsupported', `unsupported BMP: ${what}`);
}

function readInfo(b: Uint8Array): BmpInfo {
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (b.length < 18) truncated('file header');
  const u16 = (at: number) => view.getUint16(at, true);
  const u32 = (at: number) => view.getUint32(at, true);
  let offset = u32(10);
  const headerSize = u32(14);
  if (b.length < 14 + headerSize) truncated('info header');
  let pos = 14 + headerSize;
  let info: Omit<BmpInfo, 'paletteStart' | 'dataStart' | 'colors'> & { colors: number };
  if (headerSize === 12) {
    info = { width: u16(18), height: u16(20), bits: u16(24), compression: RAW, bottomUp: true, entryBytes: 3, colors: 0 };
  } else if ([40, 52, 56, 64, 108, 124].includes(headerSize)) {
    // Pillow recognises a top-down image by the sign byte of the height only.
    const topDown = b[18 + 7] === 0xff;
    info = {
      width: u32(18),
      height: topDown ? 2 ** 32 - u32(22) : u32(22),
      bits: u16(28),
      compression: u32(30),
      bottomUp: !topDown,
      entryBytes: 4,
      colors: u32(46),
    };
    if (info.compression === BITFIELDS) {
      let masks: number[];
      if (headerSize >= 52) {
        masks = [u32(54), u32(58), u32(62), headerSize >= 56 ? u32(66) : 0];
      } else {
        // A 40-byte header keeps its three masks right after it.
        if (b.length < pos + 12) truncated('bitfield masks');
        masks = [u32(pos), u32(pos + 4), u32(pos + 8), 0];
        pos += 12;
      }
      info.layout = bitfieldLayout(info.bits, masks);
    }
  } else {
    unsupported(`header type (${headerSize})`);
  }
  const colors = info.colors || 2 ** info.bits;
  if (![1, 4, 8, 16, 24, 32].includes(info.bits)) unsupported(`pixel depth (${info.bits})`);
  if (![RAW, RLE8, RLE4, BITFIELDS].includes(info.compression)) unsupported(`compression (${info.compression})`);
  if (info.compression === RAW && info.bits === 16) info.layout = 'bgr15';
  if (info.compression === RAW && info.bits === 32) info.layout = LAYOUTS_32.get('ff0000,ff00,ff,0');
  const paletted = info.bits <= 8;
  if (paletted && !(colors > 0 && colors <= 65536)) unsupported(`palette size (${colors})`);
  // Files whose data offset forgets the palette get it skipped, as Pillow does.
  if (offset === 14 + headerSize && paletted) offset += info.entryBytes * colors;
  const paletteStart = pos;
  if (paletted) pos += info.entryBytes * colors;
  return { ...info, colors, paletteStart, dataStart: offset || pos };
}

function bitfieldLayout(bits: number, masks: number[]): BmpInfo['layout'] {
  const [r, g, b] = masks as [number, number, number, number];
  if (bits === 32) {
    const layout = LAYOUTS_32.get(masks.map((m) => m.toString(16)).join(','));
    if (layout) return layout;
  } else if (bits === 24 && r === 0xff0000 && g === 0xff00 && b === 0xff) {
    return undefined; // plain BGR
  } else if (bits === 16 && r === 0xf800 && g === 0x7e0 && b === 0x1f) {
    return 'bgr16';
  } else if (bits === 16 && r === 0x7c00 && g === 0x3e0 && b === 0x1f) {
    return 'bgr15';
  }
  unsupported('bitfields layout');
}

/** Width and height from the headers alone, for the pixel-count guard. */
export function bmpSize(bytes: Uint8Array): { width: number; height: number } {
  const { width, height } = readInfo(bytes);
  return { width, height };
}

/** RGB palette of `size` entries; entries Pillow never read stay black. A gray ramp palette means mode L. */
function readPalette(b: Uint8Array, info: BmpInfo): { rgb: Uint8Array; grayscale: boolean } {
  const rgb = new Uint8Array(256 * 3);
  const entries = Math.min(info.colors, Math.floor(Math.max(0, b.length - info.paletteStart) / info.entryBytes));
  if (entries < info.colors) truncated('palette');
  let grayscale = true;
  for (let i = 0; i < info.colors; i++) {
    const at = info.paletteStart + i * info.entryBytes;
    const [blue, green, red] = [b[at]!, b[at + 1]!, b[at + 2]!];
    if (i < 256) rgb.set([red, green, blue], i * 3);
    const expected = info.colors === 2 ? i * 255 : i;
    if (i < (info.colors === 2 ? 2 : info.colors) && (red !== expected || green !== expected || blue !== expected)) grayscale = false;
  }
  return { rgb, grayscale };
}

/** Pillow's BmpRleDecoder: one index byte per pixel, rows of `width`, as many as the stream yields. */
function decodeRle(b: Uint8Array, info: BmpInfo): Uint8Array {
  const rle4 = info.compression === RLE4;
  const { width } = info;
  const total = width * info.height;
  const data: number[] = [];
  let x = 0;
  let pos = info.dataStart;
  while (data.length < total) {
    if (pos + 1 >= b.length) break;
    let count = b[pos++]!;
    const byte = b[pos++]!;
    if (count) {
      if (x + count > width) count = Math.max(0, width - x);
      for (let i = 0; i < count; i++) data.push(rle4 ? (i % 2 === 0 ? byte >> 4 : byte & 15) : byte);
      x += count;
    } else if (byte === 0) {
      while (data.length % width !== 0) data.push(0); // end of line
      x = 0;
    } else if (byte === 1) {
      break; // end of bitmap
    } else if (byte === 2) {
      if (pos + 2 > b.length) break;
      const right = b[pos]!, up = b[pos + 1]!;
      pos += 2;
      for (let i = 0; i < right + up * width; i++) data.push(0);
      x = data.length % width;
    } else {
      // Absolute run. Pillow reads count / 2 bytes for RLE4 (dropping an odd last pixel) and aligns the read
      // position to an even offset in the file.
      const byteCount = rle4 ? byte >> 1 : byte;
      const got = b.subarray(pos, pos + byteCount);
      pos += got.length;
      for (const v of got) {
        if (rle4) data.push(v >> 4, v & 15);
        else data.push(v);
      }
      if (got.length < byteCount) break;
      x += byte;
      if (pos % 2 !== 0) pos++;
    }
  }
  if (data.length < total) throw new DecodeFailure('unreadable', 'BMP RLE data ends before the last pixel');
  return Uint8Array.from(data.slice(0, total));
}

/** Decodes a BMP to 8-bit RGB as Pillow's `Image.open(p).convert("RGB")`. */
export function decodeBmp(bytes: Uint8Array): RgbImage {
  const info = readInfo(bytes);
  const { width, height } = info;
  const out = new Uint8Array(width * height * 3);
  const rowOf = (fileRow: number) => (info.bottomUp ? height - 1 - fileRow : fileRow);

  if (info.bits <= 8) {
    const { rgb, grayscale } = readPalette(bytes, info);
    // Pillow loads a gray-ramp palette as mode L, where a pixel is its index even past the palette's end.
    const indexIsValue = grayscale && info.colors !== 2;
    const put = (row: number, col: number, index: number) => {
      const o = (rowOf(row) * width + col) * 3;
      if (indexIsValue) out.fill(index, o, o + 3);
      else out.set(rgb.subarray(index * 3, index * 3 + 3), o);
    };
    if (info.compression === RLE8 || info.compression === RLE4) {
      const indices = decodeRle(bytes, info);
      for (let r = 0; r < height; r++) for (let c = 0; c < width; c++) put(r, c, indices[r * width + c]!);
      return { width, height, data: out };
    }
    const stride = (((width * info.bits + 31) >>> 3) & ~3) >>> 0;
    if (info.dataStart + stride * height > bytes.length) truncated('pixel data');
    const perByte = 8 / info.bits;
    for (let r = 0; r < height; r++) {
      const line = info.dataStart + r * stride;
      for (let c = 0; c < width; c++) {
        const byte = bytes[line + Math.floor(c / perByte)]!;
        const shift = 8 - info.bits * ((c % perByte) + 1);
        put(r, c, (byte >> shift) & ((1 << info.bits) - 1));
      }
    }
    return { width, height, data: out };
  }

  if (info.compression === RLE8 || info.compression === RLE4) unsupported(`RLE compression with ${info.bits} bits per pixel`);
  const bpp = info.bits / 8;
  const stride = (((width * info.bits + 31) >>> 3) & ~3) >>> 0;
  if (info.dataStart + stride * height > bytes.length) truncated('pixel data');
  const layout = info.layout;
  for (let r = 0; r < height; r++) {
    const line = info.dataStart + r * stride;
    let o = rowOf(r) * width * 3;
    for (let c = 0; c < width; c++, o += 3) {
      const p = line + c * bpp;
      if (layout === 'bgr15' || layout === 'bgr16') {
        const v = bytes[p]! | (bytes[p + 1]! << 8);
        const green = layout === 'bgr16' ? Math.floor((((v >> 5) & 63) * 255) / 63) : Math.floor((((v >> 5) & 31) * 255) / 31);
        out[o] = Math.floor((((layout === 'bgr16' ? v >> 11 : v >> 10) & 31) * 255) / 31);
        out[o + 1] = green;
        out[o + 2] = Math.floor(((v & 31) * 255) / 31);
      } else if (layout) {
        out[o] = bytes[p + layout[0]]!;
        out[o + 1] = bytes[p + layout[1]]!;
        out[o + 2] = bytes[p + layout[2]]!;
      } else {
        out[o] = bytes[p + 2]!;
        out[o + 1] = bytes[p + 1]!;
        out[o + 2] = bytes[p]!;
      }
    }
  }
  return { width, height, data: out };
}
