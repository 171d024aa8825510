/**
 * First frame of a GIF with the semantics of Pillow's GifImagePlugin followed by `convert("RGB")`. libvips
 * composites the frame over transparent black; Pillow instead keeps palette indices, so a transparent pixel
 * shows its palette colour, the area outside the first frame shows the transparency index's colour (or index
 * 0's), and a gray-ramp palette is no palette at all (mode L: the pixel is its index). The LZW loop follows
 * Pillow's GifDecode.c state machine, including where it stops and what it calls broken.
 */
import { DecodeFailure } from './image-error.js';
import type { RgbImage } from './image.js';

interface GifLayout {
  width: number;
  height: number;
  /** RGB triples, or null when Pillow loads the frame as mode L. */
  palette: Uint8Array | null;
  transparency: number | undefined;
  frame: { x0: number; y0: number; width: number; height: number; interlace: boolean };
  /** LZW minimum code size. */
  bits: number;
  dataStart: number;
}

function truncated(what: string): never {
  throw new DecodeFailure('truncated', `truncated GIF file (${what})`);
}

function broken(): never {
  throw new DecodeFailure('unreadable', 'GIF image data is broken (invalid LZW code)');
}

/** Pillow keeps a palette only when it is not the identity ramp 0,0,0 / 1,1,1 / ... */
function paletteOrNull(p: Uint8Array): Uint8Array | null {
  for (let i = 0; i < p.length; i += 3) {
    if (!(p[i] === i / 3 && p[i + 1] === i / 3 && p[i + 2] === i / 3)) return p;
  }
  return null;
}

function readLayout(b: Uint8Array): GifLayout {
  if (b.length < 13) truncated('screen descriptor');
  const u16 = (at: number) => b[at]! | (b[at + 1]! << 8);
  let width = u16(6);
  let height = u16(8);
  const flags = b[10]!;
  let pos = 13;
  let globalPalette: Uint8Array | null = null;
  if (flags & 128) {
    const size = 3 << ((flags & 7) + 1);
    if (pos + size > b.length) truncated('global palette');
    globalPalette = paletteOrNull(b.subarray(pos, pos + size));
    pos += size;
  }
  // One sub-block: its bytes, or null at a zero-length block or the end of the file.
  const subBlock = (): Uint8Array | null => {
    const size = b[pos];
    if (!size) {
      if (size === 0) pos++;
      return null;
    }
    const block = b.subarray(pos + 1, pos + 1 + size);
    pos += 1 + size;
    return block;
  };
  let transparency: number | undefined;
  for (;;) {
    const s = b[pos++];
    if (s === undefined || s === 0x3b) throw new DecodeFailure('unreadable', 'GIF file holds no image');
    if (s === 0x21) {
      const label = b[pos++];
      const block = subBlock();
      if (label === 0xf9 && block && block[0]! & 1) transparency = block[3];
      while (subBlock());
    } else if (s === 0x2c) {
      if (pos + 9 > b.length) truncated('image descriptor');
      const frame = { x0: u16(pos), y0: u16(pos + 2), width: u16(pos + 4), height: u16(pos + 6), interlace: (b[pos + 8]! & 64) !== 0 };
      const frameFlags = b[pos + 8]!;
      pos += 9;
      // A first frame reaching past the logical screen enlarges the image.
      width = Math.max(width, frame.x0 + frame.width);
      height = Math.max(height, frame.y0 + frame.height);
      let palette = globalPalette;
      if (frameFlags & 128) {
        const size = 3 << ((frameFlags & 7) + 1);
        if (pos + size > b.length) truncated('local palette');
        palette = paletteOrNull(b.subarray(pos, pos + size));
        pos += size;
      }
      if (pos >= b.length) truncated('image data');
      const bits = b[pos++]!;
      return { width, height, palette, transparency, frame, bits, dataStart: pos };
    }
    // Pillow skips any other byte between blocks.
  }
}

/** Width and height of the first frame's image (screen enlarged by the frame), for the pixel-count guard. */
export function gifSize(bytes: Uint8Array): { width: number; height: number } {
  const { width, height } = readLayout(bytes);
  return { width, height };
}

/** Palette indices of the first frame over the whole image, as Pillow's decoder leaves them. */
function decodeIndices(b: Uint8Array, g: GifLayout): Uint8Array {
  const indices = new Uint8Array(g.width * g.height).fill(g.transparency ?? 0);
  const { x0, y0, width: xsize, height: ysize } = g.frame;
  if (xsize === 0 || ysize === 0) return indices;
  if (g.bits > 12) throw new DecodeFailure('unreadable', `GIF LZW code size ${g.bits} is invalid`);

  // Sub-blocks are read as Pillow does: a size byte, then that many bytes, with no special end marker, so a
  // stream that neither fills the frame nor ends with the end code runs on into the following bytes.
  let pos = g.dataStart, blockLeft = 0, bitBuffer = 0, bitCount = 0;
  const readCode = (size: number): number => {
    while (bitCount < size) {
      if (blockLeft > 0) {
        bitBuffer |= b[pos++]! << bitCount;
        bitCount += 8;
        blockLeft--;
      } else {
        if (pos >= b.length || pos + 1 + b[pos]! > b.length) truncated('image data');
        blockLeft = b[pos++]!;
      }
    }
    const code = bitBuffer & ((1 << size) - 1);
    bitBuffer >>>= size;
    bitCount -= size;
    return code;
  };

  // Rows in interlace order: pass 1 every 8th row from 0, pass 2 from 4, pass 3 every 4th from 2, pass 4 odd rows.
  let x = 0, y = 0, step = g.frame.interlace ? 8 : 1, pass = g.frame.interlace ? 1 : 0;
  let done = false;
  const put = (v: number) => {
    indices[(y + y0) * g.width + x0 + x] = v;
    if (++x < xsize) return;
    x = 0;
    y += step;
    while (y >= ysize) {
      if (pass === 1) [y, pass] = [4, 2];
      else if (pass === 2) [step, y, pass] = [4, 2, 3];
      else if (pass === 3) [step, y, pass] = [2, 1, 0];
      else return void (done = true);
    }
  };

  const GIFTABLE = 4096;
  const data = new Uint8Array(GIFTABLE), link = new Uint16Array(GIFTABLE), stack = new Uint8Array(GIFTABLE);
  const clear = 1 << g.bits, end = clear + 1;
  let state = 1, next = 0, codesize = 0, lastcode = 0, lastdata = 0;
  while (!done) {
    if (state === 1) {
      next = clear + 2;
      codesize = g.bits + 1;
      state = 2;
    }
    let c = readCode(codesize);
    if (c === clear) {
      if (state !== 2) state = 1;
      continue;
    }
    if (c === end) break;
    if (state === 2) {
      if (c > clear) broken();
      lastdata = lastcode = c;
      state = 3;
      put(c & 255);
      continue;
    }
    const thiscode = c;
    if (c > next) broken();
    let depth = 0;
    if (c === next) {
      stack[depth++] = lastdata;
      c = lastcode;
    }
    while (c >= clear) {
      if (depth >= GIFTABLE || c >= GIFTABLE) broken();
      stack[depth++] = data[c]!;
      c = link[c]!;
    }
    lastdata = c;
    if (next < GIFTABLE) {
      data[next] = c;
      link[next] = lastcode;
      if (next === (1 << codesize) - 1 && codesize < 12) codesize++;
      next++;
    }
    lastcode = thiscode;
    put(c & 255);
    while (depth > 0 && !done) put(stack[--depth]!);
  }
  return indices;
}

/** Decodes the first frame of a GIF to 8-bit RGB as Pillow's `Image.open(p).convert("RGB")`. */
export function decodeGifFirstFrame(bytes: Uint8Array): RgbImage {
  const g = readLayout(bytes);
  const indices = decodeIndices(bytes, g);
  const out = new Uint8Array(indices.length * 3);
  for (let i = 0; i < indices.length; i++) {
    const v = indices[i]!;
    if (!g.palette) {
      out[i * 3] = out[i * 3 + 1] = out[i * 3 + 2] = v;
    } else if (v * 3 + 3 <= g.palette.length) {
      out[i * 3] = g.palette[v * 3]!;
      out[i * 3 + 1] = g.palette[v * 3 + 1]!;
      out[i * 3 + 2] = g.palette[v * 3 + 2]!;
    } // indices past the palette's end stay black, as Pillow's zero-initialised palette
  }
  return { width: g.width, height: g.height, data: out };
}
