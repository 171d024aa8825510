// loadImage against the fixtures' decoded images (`PIL.Image.open(p).convert("RGB")`), the spec's checksums, and
// images built here whose Pillow result is known by construction: alpha, palettes, 16-bit, CMYK, EXIF, ICC, GIF
// transparency and frame placement, the BMP layouts Pillow reads, and the errors.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import sharp from 'sharp';

import { SafetensorsFile } from '../src/model/safetensors.js';
import { ImageLoadError, loadImage, sniffImageFormat } from '../src/processing/image.js';
import { targetSizes } from '../src/processing/image-size.js';
import { resizeBicubicRgb } from '../src/processing/resize.js';
import { FIXTURES_MISSING, fixturesDir } from './fixtures.js';

const fixtures = fixturesDir();
const media = (file: string) => join(fixtures!, 'media', file);

function pattern(width: number, height: number, channels: number, seed = 1): Uint8Array {
  const data = new Uint8Array(width * height * channels);
  for (let i = 0; i < data.length; i++) data[i] = (i * 37 + seed * 101 + (i >> 3) * 11) & 255;
  return data;
}

function dropAlpha(data: Uint8Array, channels: number): Uint8Array {
  const out = new Uint8Array((data.length / channels) * 3);
  for (let p = 0; p < out.length / 3; p++) out.set(data.subarray(p * channels, p * channels + 3), p * 3);
  return out;
}

async function rejects(promise: Promise<unknown>, kind: string, message: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof ImageLoadError, `expected ImageLoadError, got ${String(err)}`);
    assert.equal(err.kind, kind, err.message);
    assert.match(err.message, message);
    return true;
  });
}

describe('loadImage matches the fixtures\' decoded images exactly', { skip: !fixtures && FIXTURES_MISSING }, () => {
  const items: [string, number, string][] = [
    ['a_single_image', 0, 'desert.jpg'],
    ['b_two_images', 0, 'city1.jpg'],
    ['b_two_images', 1, 'city2.jpg'],
    ['f_video_and_image', 1, 'desert.jpg'],
  ];
  for (const [name, item, file] of items) {
    test(`${name} item ${item} (${file})`, async () => {
      const image = await loadImage(media(file));
      const st = SafetensorsFile.open(join(fixtures!, 'cases', name, 'inputs.safetensors'));
      try {
        const expected = st.read(`item${item}_decoded_u8`);
        assert.deepEqual(expected.shape, [1, image.height, image.width, 3]);
        assert.ok(Buffer.from(image.data).equals(Buffer.from(expected.data as Uint8Array)), 'pixels differ');
      } finally {
        st.close();
      }
    });
  }

  test('formats come from the bytes: desert.jpg is PNG, city1.jpg is WebP, cars.jpg is JPEG', async () => {
    assert.equal((await loadImage(media('desert.jpg'))).format, 'png');
    assert.equal((await loadImage(media('city1.jpg'))).format, 'webp');
    assert.equal((await loadImage(media('cars.jpg'))).format, 'jpeg');
  });

  // Spec 2.7: SHA-256 prefixes of the reference pipeline's resized uint8 images (Pillow 12.3, libjpeg-turbo 3.1.4,
  // libwebp 1.6). cars.jpg is the only real JPEG: it checks our JPEG decoder against libjpeg-turbo's.
  const checksums: [string, string][] = [
    ['cars.jpg', 'ac4550fe2b35f734'],
    ['cat.jpg', '4305965f50ad7b40'],
    ['desert.jpg', '2471e67d37ae4eb4'],
  ];
  for (const [file, sha] of checksums) {
    test(`spec 2.7 resized checksum of ${file}`, async () => {
      const image = await loadImage(media(file));
      const [size] = targetSizes([{ height: image.height, width: image.width, frames: 1, mergeSize: 1 }]);
      const resized = resizeBicubicRgb(image, size!.width, size!.height);
      assert.equal(createHash('sha256').update(resized.data).digest('hex').slice(0, 16), sha);
    });
  }

  test('a data URL and a Buffer decode like the file', async () => {
    const bytes = readFileSync(media('city1.jpg'));
    const fromFile = await loadImage(media('city1.jpg'));
    const fromUrl = await loadImage(`data:image/jpeg;base64,${bytes.toString('base64')}`);
    const fromBuffer = await loadImage(bytes);
    assert.ok(Buffer.from(fromUrl.data).equals(Buffer.from(fromFile.data)));
    assert.ok(Buffer.from(fromBuffer.data).equals(Buffer.from(fromFile.data)));
  });
});

describe('loadImage converts like Pillow\'s convert("RGB")', () => {
  const W = 7, H = 5;

  test('RGBA PNG: alpha dropped, colour under transparent pixels kept (no compositing)', async () => {
    const rgba = pattern(W, H, 4);
    for (let p = 0; p < W * H; p += 3) rgba[p * 4 + 3] = 0;
    const png = await sharp(rgba, { raw: { width: W, height: H, channels: 4 } }).png().toBuffer();
    const image = await loadImage(png);
    assert.deepEqual([image.width, image.height, image.format], [W, H, 'png']);
    assert.deepEqual(image.data, dropAlpha(rgba, 4));
  });

  test('grayscale PNG is replicated to three channels', async () => {
    const gray = pattern(W, H, 1);
    const png = await sharp(gray, { raw: { width: W, height: H, channels: 1 } }).png().toBuffer();
    const image = await loadImage(png);
    assert.deepEqual(image.data, Uint8Array.from([...gray].flatMap((v) => [v, v, v])));
  });

  test('palette PNG with transparency gives the palette colours', async () => {
    const rgba = pattern(W, H, 4);
    const png = await sharp(rgba, { raw: { width: W, height: H, channels: 4 } }).png({ palette: true, colours: 16 }).toBuffer();
    const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true }); // palette expanded, with alpha
    const image = await loadImage(png);
    assert.deepEqual(image.data, dropAlpha(data, info.channels));
  });

  test('16-bit PNG: gray is clipped to 255 (Pillow I;16), RGB keeps the high byte', async () => {
    const gray16 = Uint16Array.from({ length: W * H }, (_, i) => (i % 4 === 0 ? i * 3 : i * 1901));
    const grayPng = await sharp(gray16, { raw: { width: W, height: H, channels: 1 } }).toColourspace('grey16').png().toBuffer();
    const gray = await loadImage(grayPng);
    assert.deepEqual(gray.data, Uint8Array.from([...gray16].flatMap((v) => [Math.min(v, 255), Math.min(v, 255), Math.min(v, 255)])));

    const rgb16 = Uint16Array.from({ length: W * H * 3 }, (_, i) => (i * 1234 + 200) & 0xffff);
    const rgbPng = await sharp(rgb16, { raw: { width: W, height: H, channels: 3 } }).toColourspace('rgb16').png().toBuffer();
    const rgb = await loadImage(rgbPng);
    assert.deepEqual(rgb.data, Uint8Array.from(rgb16, (v) => v >> 8));
  });

  test('TIFF (RGB and RGBA) decodes losslessly', async () => {
    const rgb = pattern(W, H, 3);
    const tiff = await sharp(rgb, { raw: { width: W, height: H, channels: 3 } }).tiff({ compression: 'lzw' }).toBuffer();
    const image = await loadImage(tiff);
    assert.equal(image.format, 'tiff');
    assert.deepEqual(image.data, rgb);
    const rgba = pattern(W, H, 4);
    const tiffA = await sharp(rgba, { raw: { width: W, height: H, channels: 4 } }).tiff({ compression: 'deflate' }).toBuffer();
    assert.deepEqual((await loadImage(tiffA)).data, dropAlpha(rgba, 4));
  });

  test('CMYK TIFF uses Pillow\'s naive conversion, not an ICC transform', async () => {
    const cmyk = pattern(W, H, 4, 3);
    const image = await loadImage(cmykTiff(W, H, cmyk));
    const expected = new Uint8Array(W * H * 3);
    for (let p = 0; p < W * H; p++) {
      const nk = 255 - cmyk[p * 4 + 3]!;
      for (let c = 0; c < 3; c++) {
        const t = cmyk[p * 4 + c]! * nk + 128;
        expected[p * 3 + c] = Math.max(0, nk - (((t >> 8) + t) >> 8));
      }
    }
    assert.deepEqual(image.data, expected);
  });

  test('EXIF orientation is not applied', async () => {
    const jpeg = await sharp(pattern(8, 4, 3), { raw: { width: 8, height: 4, channels: 3 } }).jpeg().withMetadata({ orientation: 6 }).toBuffer();
    assert.equal((await sharp(jpeg).metadata()).orientation, 6);
    const image = await loadImage(jpeg);
    assert.deepEqual([image.width, image.height, image.format], [8, 4, 'jpeg']);
  });

  test('an embedded ICC profile is ignored (same pixels as without it)', async () => {
    const png = await sharp(pattern(W, H, 3), { raw: { width: W, height: H, channels: 3 } }).withIccProfile('p3').png().toBuffer();
    const stripped = withoutPngChunk(png, 'iCCP');
    assert.ok(stripped.length < png.length, 'the test image has an iCCP chunk');
    assert.deepEqual((await loadImage(png)).data, (await loadImage(stripped)).data);
  });
});

describe('GIF: the first frame with Pillow\'s palette semantics', () => {
  const palette = [[10, 20, 30], [200, 100, 50], [0, 255, 0], [255, 255, 255]];
  const rgbOf = (indices: number[]) => Uint8Array.from(indices.flatMap((i) => palette[i] ?? [0, 0, 0]));

  test('palette lookup; agrees with libvips on an opaque image', async () => {
    const indices = Array.from({ length: 20 }, (_, i) => (i * 7) % 4);
    const gif = makeGif({ width: 5, height: 4, palette, indices });
    const image = await loadImage(gif);
    assert.equal(image.format, 'gif');
    assert.deepEqual(image.data, rgbOf(indices));
    const { data, info } = await sharp(gif).raw().toBuffer({ resolveWithObject: true });
    assert.deepEqual(image.data, dropAlpha(data, info.channels));
  });

  test('a transparent pixel shows its palette colour (not composited)', async () => {
    const indices = [0, 1, 2, 3, 2, 1];
    const image = await loadImage(makeGif({ width: 3, height: 2, palette, indices, transparency: 2 }));
    assert.deepEqual(image.data, rgbOf(indices));
  });

  test('outside a smaller first frame: index 0, or the transparency index', async () => {
    const frame = { x: 1, y: 1, width: 2, height: 1 };
    const plain = await loadImage(makeGif({ width: 3, height: 3, palette, indices: [1, 2], frame }));
    assert.deepEqual(plain.data, rgbOf([0, 0, 0, 0, 1, 2, 0, 0, 0]));
    const transparent = await loadImage(makeGif({ width: 3, height: 3, palette, indices: [1, 2], frame, transparency: 3 }));
    assert.deepEqual(transparent.data, rgbOf([3, 3, 3, 3, 1, 2, 3, 3, 3]));
  });

  test('a first frame larger than the screen enlarges the image', async () => {
    const image = await loadImage(makeGif({ width: 2, height: 2, palette, indices: [0, 1, 2, 3, 0, 1], frame: { x: 0, y: 0, width: 3, height: 2 } }));
    assert.deepEqual([image.width, image.height], [3, 2]);
  });

  test('interlaced rows are placed in pass order', async () => {
    const rows = 10;
    const order = [0, 8, 4, 2, 6, 1, 3, 5, 7, 9];
    const indices = order.map((r) => r % 4);
    const image = await loadImage(makeGif({ width: 1, height: rows, palette, indices, interlace: true }));
    assert.deepEqual(image.data, rgbOf(Array.from({ length: rows }, (_, r) => r % 4)));
  });

  test('real LZW compression (cgif) decodes like libvips', async () => {
    const rgb = pattern(33, 21, 3);
    const gif = await sharp(rgb, { raw: { width: 33, height: 21, channels: 3 } }).gif({ colours: 32 }).toBuffer();
    const { data, info } = await sharp(gif).raw().toBuffer({ resolveWithObject: true });
    assert.deepEqual((await loadImage(gif)).data, dropAlpha(data, info.channels));
  });
});

describe('BMP: the layouts Pillow reads', () => {
  test('24-bit bottom-up with row padding, and top-down', async () => {
    const rgb = pattern(5, 3, 3);
    assert.deepEqual((await loadImage(makeBmp({ width: 5, height: 3, bits: 24, rgb }))).data, rgb);
    assert.deepEqual((await loadImage(makeBmp({ width: 5, height: 3, bits: 24, rgb, topDown: true }))).data, rgb);
  });

  test('32-bit BI_RGB ignores the fourth byte', async () => {
    const rgb = pattern(3, 4, 3);
    const image = await loadImage(makeBmp({ width: 3, height: 4, bits: 32, rgb }));
    assert.equal(image.format, 'bmp');
    assert.deepEqual(image.data, rgb);
  });

  test('8-, 4- and 1-bit palettes', async () => {
    const palette = [[1, 2, 3], [250, 0, 7], [9, 99, 199], [40, 50, 60]];
    for (const bits of [8, 4, 1]) {
      const indices = Array.from({ length: 9 * 3 }, (_, i) => (i * 5) % (bits === 1 ? 2 : 4));
      const image = await loadImage(makeBmp({ width: 9, height: 3, bits, indices, palette }));
      assert.deepEqual(image.data, Uint8Array.from(indices.flatMap((i) => palette[i]!)), `${bits} bits`);
    }
  });

  test('16-bit 5-5-5 (default) and 5-6-5 (bitfields) widen as v * 255 / max', async () => {
    const words = [0x0000, 0x7fff, 0x1234, 0x4321, 0xffff, 0x0421];
    const wide = (v: number, max: number) => Math.floor((v * 255) / max);
    const image555 = await loadImage(makeBmp({ width: 3, height: 2, bits: 16, words }));
    assert.deepEqual(image555.data, Uint8Array.from(words.flatMap((w) => [wide((w >> 10) & 31, 31), wide((w >> 5) & 31, 31), wide(w & 31, 31)])));
    const image565 = await loadImage(makeBmp({ width: 3, height: 2, bits: 16, words, masks: [0xf800, 0x7e0, 0x1f] }));
    assert.deepEqual(image565.data, Uint8Array.from(words.flatMap((w) => [wide((w >> 11) & 31, 31), wide((w >> 5) & 63, 63), wide(w & 31, 31)])));
  });

  test('RLE8', async () => {
    const palette = [[0, 0, 0], [255, 0, 0], [0, 0, 255]];
    // Bottom row: 3 x index 1, then absolute run [2, 1, 2]; top row: 6 x index 2; end of bitmap.
    const rle = [3, 1, 0, 3, 2, 1, 2, 0, 0, 0, 6, 2, 0, 0, 0, 1];
    const image = await loadImage(makeBmp({ width: 6, height: 2, bits: 8, palette, rle }));
    const rows = [[2, 2, 2, 2, 2, 2], [1, 1, 1, 2, 1, 2]];
    assert.deepEqual(image.data, Uint8Array.from(rows.flat().flatMap((i) => palette[i]!)));
  });

  test('depths and bitfields Pillow refuses are refused', async () => {
    await rejects(loadImage(makeBmp({ width: 2, height: 2, bits: 2, indices: [0, 1, 1, 0], palette: [[0, 0, 0], [1, 1, 1]] })), 'unsupported', /pixel depth \(2\)/);
    await rejects(loadImage(makeBmp({ width: 2, height: 1, bits: 16, words: [1, 2], masks: [0xf00, 0xf0, 0xf] })), 'unsupported', /bitfields layout/);
  });
});

describe('loadImage inputs, and errors that name the input', () => {
  test('missing file, directory', async () => {
    await rejects(loadImage('/nonexistent/dir/photo.png'), 'unreadable', /^\/nonexistent\/dir\/photo\.png: .*file not found/);
    await rejects(loadImage('/tmp'), 'unreadable', /^\/tmp: .*directory/);
  });

  test('unknown and unsupported formats', async () => {
    await rejects(loadImage(Buffer.from('hello world'), { index: 3 }), 'unsupported', /^image #3 \(11 bytes\): unsupported image format/);
    const avif = Buffer.concat([Buffer.from([0, 0, 0, 0x1c]), Buffer.from('ftypavif'), Buffer.alloc(20)]);
    await rejects(loadImage(avif), 'unsupported', /\(AVIF\)/);
    assert.equal(sniffImageFormat(Buffer.from('II*\0')), 'tiff');
  });

  test('truncated PNG, JPEG, WebP, GIF and BMP', async () => {
    const png = await sharp(pattern(64, 64, 3), { raw: { width: 64, height: 64, channels: 3 } }).png().toBuffer();
    await rejects(loadImage(png.subarray(0, png.length >> 1), { index: 0 }), 'truncated', /^image #0 \(\d+ bytes\): truncated PNG/);
    const jpeg = await sharp(pattern(64, 64, 3), { raw: { width: 64, height: 64, channels: 3 } }).jpeg().toBuffer();
    await rejects(loadImage(jpeg.subarray(0, jpeg.length >> 1)), 'truncated', /truncated JPEG/);
    const webp = await sharp(pattern(64, 64, 3), { raw: { width: 64, height: 64, channels: 3 } }).webp().toBuffer();
    await rejects(loadImage(webp.subarray(0, webp.length - 10)), 'truncated', /truncated WEBP/);
    const gif = makeGif({ width: 5, height: 4, palette: [[0, 0, 0], [1, 1, 1]], indices: Array(20).fill(1) });
    await rejects(loadImage(gif.subarray(0, gif.length - 12)), 'truncated', /truncated GIF/);
    const bmp = makeBmp({ width: 5, height: 3, bits: 24, rgb: pattern(5, 3, 3) });
    await rejects(loadImage(bmp.subarray(0, bmp.length - 4)), 'truncated', /truncated BMP/);
  });

  test('a percent-encoded data URL (no ;base64) decodes its octets', async () => {
    const bmp = makeBmp({ width: 5, height: 3, bits: 24, rgb: pattern(5, 3, 3) });
    const url = `data:image/bmp,${[...bmp].map((b) => `%${b.toString(16).padStart(2, '0')}`).join('')}`;
    assert.deepEqual((await loadImage(url)).data, (await loadImage(bmp)).data);
  });

  test('bad data URLs', async () => {
    await rejects(loadImage('data:image/png;base64,@@@@', { index: 1 }), 'unreadable', /^image #1 \(data URL\): data URL is not valid base64/);
    await rejects(loadImage('data:image/png;base64'), 'unreadable', /malformed data URL/);
  });

  test('the pixel guard reads only the header: a 20000x20000 PNG with no pixel data is too large, not truncated', async () => {
    await rejects(loadImage(pngHeaderOnly(20000, 20000), { index: 2 }), 'too-large', /^image #2 \(\d+ bytes\): 20000x20000 = 400000000 pixels is more than the limit of 178956970/);
    // Pillow's limit is 2 x 89,478,485 by default; the option lowers it.
    await rejects(loadImage(makeBmp({ width: 5, height: 3, bits: 24, rgb: pattern(5, 3, 3) }), { maxPixels: 14 }), 'too-large', /15 pixels/);
    await rejects(loadImage(makeGif({ width: 5, height: 4, palette: [[0, 0, 0]], indices: Array(20).fill(0) }), { maxPixels: 19 }), 'too-large', /20 pixels/);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Builders for images whose Pillow decoding is known by construction.

function crc32(bytes: Uint8Array): number {
  let c = ~0;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

function pngChunk(type: string, data: Uint8Array): Buffer {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'latin1');
  out.set(data, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

/** A PNG that declares its size but holds no pixel data (an IDAT with a bare zlib header). */
function pngHeaderOnly(width: number, height: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([signature, pngChunk('IHDR', ihdr), pngChunk('IDAT', Uint8Array.of(0x78, 0x9c)), pngChunk('IEND', new Uint8Array(0))]);
}

function withoutPngChunk(png: Buffer, type: string): Buffer {
  const parts = [png.subarray(0, 8)];
  for (let pos = 8; pos < png.length; ) {
    const length = png.readUInt32BE(pos);
    if (png.toString('latin1', pos + 4, pos + 8) !== type) parts.push(png.subarray(pos, pos + 12 + length));
    pos += 12 + length;
  }
  return Buffer.concat(parts);
}

/** Uncompressed little-endian TIFF, one strip, 8-bit CMYK (PhotometricInterpretation 5). */
function cmykTiff(width: number, height: number, cmyk: Uint8Array): Buffer {
  const entries: [number, number, number, number][] = []; // tag, type (3 short, 4 long), count, value/offset
  const headerAndIfd = 8 + 2 + 10 * 12 + 4;
  const bitsAt = headerAndIfd, dataAt = bitsAt + 8;
  entries.push([256, 4, 1, width], [257, 4, 1, height], [258, 3, 4, bitsAt], [259, 3, 1, 1], [262, 3, 1, 5]);
  entries.push([273, 4, 1, dataAt], [277, 3, 1, 4], [278, 4, 1, height], [279, 4, 1, cmyk.length], [284, 3, 1, 1]);
  const out = Buffer.alloc(dataAt + cmyk.length);
  out.write('II', 0, 'latin1');
  out.writeUInt16LE(42, 2);
  out.writeUInt32LE(8, 4);
  out.writeUInt16LE(entries.length, 8);
  entries.forEach(([tag, type, count, value], i) => {
    const at = 10 + i * 12;
    out.writeUInt16LE(tag, at);
    out.writeUInt16LE(type, at + 2);
    out.writeUInt32LE(count, at + 4);
    if (type === 3 && count === 1) out.writeUInt16LE(value, at + 8);
    else out.writeUInt32LE(value, at + 8);
  });
  for (let i = 0; i < 4; i++) out.writeUInt16LE(8, bitsAt + 2 * i);
  out.set(cmyk, dataAt);
  return out;
}

interface GifSpec {
  width: number;
  height: number;
  palette: number[][];
  /** Palette indices of the frame, in file order (interlaced files list rows in pass order). */
  indices: number[];
  frame?: { x: number; y: number; width: number; height: number };
  transparency?: number;
  interlace?: boolean;
}

/**
 * GIF whose LZW stream is all literals with 9-bit codes: a clear code every 254 literals keeps the code table from
 * growing past 511, so every code is just an index.
 */
function makeGif(spec: GifSpec): Buffer {
  const frame = spec.frame ?? { x: 0, y: 0, width: spec.width, height: spec.height };
  const table = Buffer.alloc(256 * 3);
  spec.palette.forEach((rgb, i) => table.set(rgb, i * 3));
  const bytes: number[] = [...Buffer.from('GIF89a'), spec.width & 255, spec.width >> 8, spec.height & 255, spec.height >> 8, 0xf7, 0, 0, ...table];
  if (spec.transparency !== undefined) bytes.push(0x21, 0xf9, 4, 1, 0, 0, spec.transparency, 0);
  bytes.push(0x2c, frame.x & 255, frame.x >> 8, frame.y & 255, frame.y >> 8, frame.width & 255, frame.width >> 8, frame.height & 255, frame.height >> 8, spec.interlace ? 0x40 : 0);
  const codes: number[] = [];
  spec.indices.forEach((index, i) => {
    if (i % 254 === 0) codes.push(256);
    codes.push(index);
  });
  codes.push(257);
  const packed: number[] = [];
  let buffer = 0, bits = 0;
  for (const code of codes) {
    buffer |= code << bits;
    bits += 9;
    while (bits >= 8) {
      packed.push(buffer & 255);
      buffer >>>= 8;
      bits -= 8;
    }
  }
  if (bits > 0) packed.push(buffer & 255);
  bytes.push(8);
  for (let i = 0; i < packed.length; i += 255) {
    const block = packed.slice(i, i + 255);
    bytes.push(block.length, ...block);
  }
  bytes.push(0, 0x3b);
  return Buffer.from(bytes);
}

interface BmpSpec {
  width: number;
  height: number;
  bits: number;
  topDown?: boolean;
  /** 24/32 bits: RGB pixels, top row first. */
  rgb?: Uint8Array;
  /** 16 bits: one word per pixel, top row first. */
  words?: number[];
  /** 1/2/4/8 bits: indices, top row first. */
  indices?: number[];
  palette?: number[][];
  /** 16 bits: BI_BITFIELDS with these R, G, B masks after a 40-byte header. */
  masks?: [number, number, number];
  /** RLE8 data (compression 1), written as is. */
  rle?: number[];
}

/** A BMP with a 40-byte info header. */
function makeBmp(spec: BmpSpec): Buffer {
  const { width, height, bits } = spec;
  const stride = ((width * bits + 31) >> 5) * 4;
  const palette = spec.palette ?? [];
  const masks = spec.masks ? 12 : 0;
  const headerBytes = 14 + 40 + masks + palette.length * 4;
  let pixels: Buffer;
  if (spec.rle) {
    pixels = Buffer.from(spec.rle);
  } else {
    pixels = Buffer.alloc(stride * height);
    for (let r = 0; r < height; r++) {
      const line = (spec.topDown ? r : height - 1 - r) * stride;
      for (let c = 0; c < width; c++) {
        const p = r * width + c;
        if (bits === 24 || bits === 32) {
          const [red, green, blue] = spec.rgb!.subarray(p * 3, p * 3 + 3);
          pixels.set(bits === 24 ? [blue!, green!, red!] : [blue!, green!, red!, 0x5a], line + c * (bits / 8));
        } else if (bits === 16) {
          pixels.writeUInt16LE(spec.words![p]!, line + c * 2);
        } else {
          const perByte = 8 / bits;
          pixels[line + Math.floor(c / perByte)] |= spec.indices![p]! << (8 - bits * ((c % perByte) + 1));
        }
      }
    }
  }
  const out = Buffer.alloc(headerBytes + pixels.length);
  out.write('BM', 0, 'latin1');
  out.writeUInt32LE(out.length, 2);
  out.writeUInt32LE(headerBytes, 10);
  out.writeUInt32LE(40, 14);
  out.writeInt32LE(width, 18);
  out.writeInt32LE(spec.topDown ? -height : height, 22);
  out.writeUInt16LE(1, 26);
  out.writeUInt16LE(bits, 28);
  out.writeUInt32LE(spec.rle ? 1 : spec.masks ? 3 : 0, 30);
  out.writeUInt32LE(pixels.length, 34);
  out.writeUInt32LE(palette.length, 46);
  let at = 54;
  if (spec.masks) for (const m of spec.masks) (out.writeUInt32LE(m, at), (at += 4));
  for (const [red, green, blue] of palette) (out.set([blue!, green!, red!, 0], at), (at += 4));
  out.set(pixels, headerBytes);
  return out;
}

