// The native Pillow-exact bicubic resize against its TypeScript reference on random images, and against the
// fixtures' `item{i}_resized_u8` (the official processor's PIL resize) for every image item and video frame.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, test } from 'node:test';

import { SafetensorsFile } from '../src/model/safetensors.js';
import type { RgbImage } from '../src/processing/image.js';
import { resizeBicubicRgb, resizeBicubicRgbReference } from '../src/processing/resize.js';
import { FIXTURES_MISSING, fixturesDir } from './fixtures.js';
import { Rng } from '../src/engine/rng.js';

/** A seeded generator: deterministic data for every run. */
function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}

/** Random bytes with some smooth regions and hard 0/255 edges, so the clamps are exercised. */
function randomImage(width: number, height: number, seed: number): RgbImage {
  const next = rng(seed);
  const data = new Uint8Array(width * height * 3);
  for (let i = 0; i < data.length; i++) {
    const r = next();
    data[i] = r < 0.15 ? 0 : r > 0.85 ? 255 : Math.floor(next() * 256);
  }
  return { width, height, data };
}

function firstDifference(a: Uint8Array, b: Uint8Array): string {
  assert.equal(a.length, b.length, 'lengths');
  const i = a.findIndex((v, k) => v !== b[k]);
  return i < 0 ? 'equal' : `byte ${i}: ${a[i]} vs ${b[i]}`;
}

describe('resizeBicubicRgb (native) equals the TypeScript reference bit for bit', () => {
  const cases: [number, number, number, number][] = [
    [1, 1, 1, 1],
    [1, 1, 5, 3],
    [7, 5, 3, 11],
    [1, 9, 4, 2],
    [9, 1, 2, 4],
    [13, 17, 13, 17], // same size: a copy
    [31, 17, 64, 17], // width only
    [31, 17, 31, 40], // height only
    [101, 37, 13, 200],
    [200, 151, 7, 5], // strong downscale: wide kernels
    [97, 83, 193, 167], // about 2x up
    [257, 129, 255, 131], // nearly the same size
    [33, 401, 29, 97],
    // Downscales past 128x: the SIMD kernel's split partial sums wrap around 2^32 and must still be exact.
    [1000, 5, 3, 2],
    [6, 1000, 6, 2],
    [7, 1000, 6, 3],
  ];
  cases.forEach(([sw, sh, dw, dh], i) => {
    test(`${sw}x${sh} -> ${dw}x${dh}`, () => {
      const src = randomImage(sw, sh, 1000 + i);
      const expected = resizeBicubicRgbReference(src, dw, dh);
      for (const threads of [1, undefined, 3]) {
        const got = resizeBicubicRgb(src, dw, dh, { threads });
        assert.equal(got.width, dw);
        assert.equal(got.height, dh);
        assert.equal(firstDifference(got.data, expected.data), 'equal', `threads ${threads}`);
      }
    });
  });

  test('same size returns a copy, not the source array', () => {
    const src = randomImage(5, 4, 7);
    const out = resizeBicubicRgb(src, 5, 4);
    assert.deepEqual(out.data, src.data);
    assert.notEqual(out.data, src.data);
  });

  test('bad arguments are refused with the name of the argument', () => {
    const src = randomImage(4, 3, 8);
    assert.throws(() => resizeBicubicRgb(src, 0, 3), /width must be an integer >= 1/);
    assert.throws(() => resizeBicubicRgb(src, 2, 2.5), /height must be an integer >= 1/);
    assert.throws(() => resizeBicubicRgb({ ...src, data: src.data.subarray(1) }, 2, 2), /source has 35 bytes/);
    assert.throws(() => resizeBicubicRgb(src, 2, 2, { threads: 0 }), /threads must be an integer >= 1/);
  });
});

const fixtures = fixturesDir();

/** Frame f of a [T, H, W, 3] uint8 tensor. */
function frameOf(file: SafetensorsFile, name: string, f: number): RgbImage {
  const t = file.read(name);
  const [, H, W] = t.shape as [number, number, number, number];
  const size = H * W * 3;
  return { width: W, height: H, data: (t.data as Uint8Array).subarray(f * size, (f + 1) * size) };
}

describe('resize matches the fixtures\' PIL resize exactly', { skip: !fixtures && FIXTURES_MISSING }, () => {
  const items: [string, number][] = [
    ['a_single_image', 0],
    ['b_two_images', 0],
    ['b_two_images', 1],
    ['f_video_and_image', 0],
    ['f_video_and_image', 1],
    ['c_video', 0],
    ['d_video_short', 0],
    ['g_video_diffp_synthetic', 0],
  ];
  for (const [name, item] of items) {
    test(`${name} item ${item}: every frame`, () => {
      const file = SafetensorsFile.open(join(fixtures!, 'cases', name, 'inputs.safetensors'));
      try {
        const frames = file.info(`item${item}_decoded_u8`).shape[0]!;
        for (let f = 0; f < frames; f++) {
          const decoded = frameOf(file, `item${item}_decoded_u8`, f);
          const expected = frameOf(file, `item${item}_resized_u8`, f);
          const got = resizeBicubicRgb(decoded, expected.width, expected.height);
          assert.equal(firstDifference(got.data, expected.data), 'equal', `frame ${f}: ${decoded.width}x${decoded.height} -> ${expected.width}x${expected.height}`);
        }
      } finally {
        file.close();
      }
    });
  }

  test('the TypeScript reference agrees on a fixture image too', () => {
    const file = SafetensorsFile.open(join(fixtures!, 'cases', 'a_single_image', 'inputs.safetensors'));
    try {
      const decoded = frameOf(file, 'item0_decoded_u8', 0);
      const expected = frameOf(file, 'item0_resized_u8', 0);
      const got = resizeBicubicRgbReference(decoded, expected.width, expected.height);
      assert.equal(firstDifference(got.data, expected.data), 'equal');
    } finally {
      file.close();
    }
  });
});
