// Target sizes (spec 2.3 and the 2.7 tables), the processor settings, rescale/normalise and block-order patches,
// and the whole image processor against the fixtures' pixel_values_head, grid_sizes and merge_sizes.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';

import { SafetensorsFile } from '../src/model/safetensors.js';
import { loadImage, type RgbImage } from '../src/processing/image.js';
import { targetSizes, type SizedItem } from '../src/processing/image-size.js';
import { normalizationTables, patchifyInto, preprocessVisuals, type VisualInput } from '../src/processing/patches.js';
import { DEFAULT_PROCESSOR_CONFIG, loadProcessorConfig, parseProcessorConfig } from '../src/processing/processor-config.js';
import { FIXTURES_MISSING, fixturesDir, TINY_CHECKPOINT } from './fixtures.js';

const image = (height: number, width: number): SizedItem => ({ height, width, frames: 1, mergeSize: 1 });
const video = (frames: number, height: number, width: number): SizedItem => ({ height, width, frames, mergeSize: 2 });
const hw = (sizes: { height: number; width: number }[]) => sizes.map((s) => [s.height, s.width]);

describe('targetSizes', () => {
  test('spec 2.7 images (Case A, one image per request)', () => {
    const rows: [string, number, number, number, number][] = [
      // name, original H, W, resized H, W
      ['sora.png', 1080, 1920, 1078, 1918],
      ['cars.jpg', 424, 640, 420, 644],
      ['cat.jpg', 565, 800, 560, 798],
      ['doc.jpg', 1242, 1136, 1246, 1134],
      ['chart.jpg', 1244, 2210, 1246, 2212],
      ['algorithm.jpg', 1148, 2888, 1120, 2842],
      ['performance.png (budget-clamped)', 1200, 4200, 952, 3346],
    ];
    for (const [name, h, w, rh, rw] of rows) assert.deepEqual(hw(targetSizes([image(h, w)])), [[rh, rw]], name);
  });

  test('spec 2.7: two copies of sora.png split the budget equally', () => {
    assert.deepEqual(hw(targetSizes([image(1080, 1920), image(1080, 1920)])), [[938, 1680], [938, 1680]]);
  });

  test('spec 2.7 video budgets (m = 2, per-frame budget floor(max_pixels / frames))', () => {
    assert.deepEqual(hw(targetSizes([video(180, 720, 1280)])), [[196, 336]]);
    assert.deepEqual(hw(targetSizes([video(180, 1080, 1920)])), [[196, 336]]);
    assert.deepEqual(hw(targetSizes([video(128, 720, 1280)])), [[224, 420]]);
    assert.deepEqual(hw(targetSizes([video(60, 360, 640)])), [[336, 616]]);
    assert.deepEqual(hw(targetSizes([video(10, 480, 640)])), [[476, 644]]);
  });

  test('spec 2.7 mixed request (Case B: one global scale, each item in its own unit)', () => {
    assert.deepEqual(hw(targetSizes([video(180, 720, 1280), image(1080, 1920)])), [[168, 336], [280, 504]]);
  });

  test('fixture grids: a, b, c, d, f, g', () => {
    const grid = (items: SizedItem[]) => targetSizes(items).map((s, i) => [items[i]!.frames, s.height / 14, s.width / 14]);
    assert.deepEqual(grid([image(478, 720)]), [[1, 34, 51]]);
    assert.deepEqual(grid([image(533, 800), image(594, 960)]), [[1, 38, 57], [1, 42, 69]]);
    assert.deepEqual(grid([video(14, 316, 600)]), [[14, 22, 42]]);
    assert.deepEqual(grid([video(4, 360, 640)]), [[4, 26, 46]]);
    assert.deepEqual(grid([video(3, 360, 640), image(478, 720)]), [[3, 26, 46], [1, 34, 51]]);
    assert.deepEqual(grid([video(5, 240, 320)]), [[5, 18, 22]]);
  });

  test('Python rounding: half to even (63/14 = 4.5 -> 4), not Math.round', () => {
    assert.deepEqual(hw(targetSizes([image(63, 63)])), [[56, 56]]);
  });

  test('the minimum clamps tiny images in Case A', () => {
    assert.deepEqual(hw(targetSizes([image(10, 10)])), [[56, 56]]); // 16 tokens of 14x14
    assert.deepEqual(hw(targetSizes([video(2, 10, 10)])), [[112, 112]]); // 16 merged tokens of 28x28
  });

  test('maxTokens and minTokens per request', () => {
    assert.deepEqual(hw(targetSizes([image(1000, 700)], { maxTokens: 1000 })), [[518, 364]]);
    assert.deepEqual(hw(targetSizes([image(20, 30)], { minTokens: 9 })), [[42, 56]]);
  });

  test('Case B refuses a 0-pixel side instead of crashing later', () => {
    assert.throws(() => targetSizes([video(180, 720, 1280), image(20, 2000)]), /visual item 1 \(2000x20 px, merge size 1\) would be resized to \d+x0 px/);
  });

  test('invalid items are refused', () => {
    assert.throws(() => targetSizes([image(0, 10)]), /item 0 height must be an integer >= 1/);
    assert.throws(() => targetSizes([image(10, 10)], { maxTokens: 0 }), /maxTokens/);
    assert.deepEqual(targetSizes([]), []);
  });
});

describe('processor config', () => {
  test('defaults are the released checkpoints\' values', () => {
    assert.deepEqual(parseProcessorConfig(undefined, undefined), DEFAULT_PROCESSOR_CONFIG);
  });

  test('missing files give the defaults; values and errors come from the files', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vl3-processor-'));
    try {
      assert.deepEqual(await loadProcessorConfig(dir), DEFAULT_PROCESSOR_CONFIG);
      writeFileSync(join(dir, 'preprocessor_config.json'), JSON.stringify({ image_mean: [0.1, 0.2, 0.3], max_tokens: 10240 }));
      writeFileSync(join(dir, 'processor_config.json'), JSON.stringify({ image_merge_size: 2, max_frames: 180 }));
      const config = await loadProcessorConfig(dir);
      assert.deepEqual(config.imageMean, [0.1, 0.2, 0.3]);
      assert.equal(config.maxTokens, 10240);
      assert.equal(config.imageMergeSize, 2);
      assert.equal(config.maxFrames, 180);
      assert.equal(config.videoMergeSize, 2);
      writeFileSync(join(dir, 'preprocessor_config.json'), JSON.stringify({ image_std: [0.5, 0, 0.5] }));
      await assert.rejects(loadProcessorConfig(dir), /preprocessor_config\.json: "image_std" must be three finite numbers \(non-zero\)/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('rescale, normalise and patchify', () => {
  test('float32 steps: float32(float32(float32(v * (1/255)) - 0.5) / 0.5)', () => {
    const [red] = normalizationTables({ rescaleFactor: 0.00392156862745098, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] });
    for (let v = 0; v < 256; v++) {
      const x = Math.fround(v * (1 / 255));
      assert.equal(red[v], Math.fround(Math.fround(x - 0.5) / 0.5));
    }
    assert.equal(red[0], -1);
    assert.equal(red[255], 1);
  });

  test('block order for merge size 2 (spec 2.6), columns channel / row / column', () => {
    const p = 2, m = 2, gh = 4, gw = 6, H = gh * p, W = gw * p;
    const data = Uint8Array.from({ length: H * W * 3 }, (_, i) => i % 251);
    const identity = Float32Array.from({ length: 256 }, (_, v) => v);
    const out = new Float32Array(gh * gw * 3 * p * p);
    assert.equal(patchifyInto([{ width: W, height: H, data }], m, p, [identity, identity, identity], out, 0), gh * gw);
    // numpy: x.reshape(3, gh/m, m, p, gw/m, m, p).transpose(1, 4, 2, 5, 0, 3, 6).reshape(gh*gw, 3*p*p) on CHW x.
    for (let R = 0, r = 0; R < gh / m; R++) for (let C = 0; C < gw / m; C++) for (let dy = 0; dy < m; dy++) for (let dx = 0; dx < m; dx++, r++) {
      for (let c = 0; c < 3; c++) for (let py = 0; py < p; py++) for (let px = 0; px < p; px++) {
        const y = (R * m + dy) * p + py, x = (C * m + dx) * p + px;
        assert.equal(out[r * 3 * p * p + c * p * p + py * p + px], data[(y * W + x) * 3 + c]);
      }
    }
  });
});

const fixtures = fixturesDir();

/** The frames of a [T, H, W, 3] uint8 fixture tensor. */
function framesOf(file: SafetensorsFile, name: string): RgbImage[] {
  const t = file.read(name);
  const [T, H, W] = t.shape as [number, number, number, number];
  const size = H * W * 3;
  return Array.from({ length: T }, (_, f) => ({ width: W, height: H, data: (t.data as Uint8Array).subarray(f * size, (f + 1) * size) }));
}

describe('preprocessVisuals matches the fixtures bit for bit', { skip: !fixtures && FIXTURES_MISSING }, () => {
  const cases: [string, string[]][] = [
    ['a_single_image', ['desert.jpg']],
    ['b_two_images', ['city1.jpg', 'city2.jpg']],
    ['f_video_and_image', ['<video item 0>', 'desert.jpg']],
  ];
  for (const [name, files] of cases) {
    test(`${name}: pixel_values_head, grid_sizes, merge_sizes`, async () => {
      const config = await loadProcessorConfig(join(fixtures!, TINY_CHECKPOINT));
      const st = SafetensorsFile.open(join(fixtures!, 'cases', name, 'inputs.safetensors'));
      try {
        // Images are loaded from the media files; video frames come decoded from the fixture (videos are not ours).
        const items: VisualInput[] = [];
        for (const [i, file] of files.entries()) {
          if (file.startsWith('<')) items.push({ modality: 'video', frames: framesOf(st, `item${i}_decoded_u8`) });
          else items.push({ modality: 'image', image: await loadImage(join(fixtures!, 'media', file)) });
        }
        const batch = await preprocessVisuals(items, { config });
        const grid = st.read('grid_sizes');
        const merge = st.read('merge_sizes');
        assert.deepEqual(batch.gridSizes, [...(grid.data as BigInt64Array)].map(Number).reduce<number[][]>((rows, v, k) => (k % 3 ? rows[rows.length - 1]!.push(v) : rows.push([v]), rows), []));
        assert.deepEqual(batch.mergeSizes, [...(merge.data as BigInt64Array)].map(Number));
        const head = st.read('pixel_values_head');
        assert.deepEqual(head.shape, [512, 588]);
        assert.deepEqual(batch.pixelValues.shape, [batch.gridSizes.reduce((s, [t, h, w]) => s + t * h * w, 0), 588]);
        const got = Buffer.from(batch.pixelValues.data.buffer, batch.pixelValues.data.byteOffset, 512 * 588 * 4);
        const want = Buffer.from((head.data as Float32Array).buffer, (head.data as Float32Array).byteOffset, 512 * 588 * 4);
        assert.ok(got.equals(want), 'pixel_values_head differs');
        batch.gridSizes.forEach(([t, gh, gw], i) => {
          const m = batch.mergeSizes[i]!;
          assert.equal(batch.tokensPerFrame[i], (gh / m) * (gw / m));
          assert.equal(batch.numTokens[i], t * (gh / m) * (gw / m));
        });
      } finally {
        st.close();
      }
    });
  }

  test('manifest token counts: case f has 3 x 13 x 23 video tokens and 34 x 51 image tokens', async () => {
    const st = SafetensorsFile.open(join(fixtures!, 'cases', 'f_video_and_image', 'inputs.safetensors'));
    try {
      const batch = await preprocessVisuals([
        { modality: 'video', frames: framesOf(st, 'item0_decoded_u8') },
        { modality: 'image', image: await loadImage(join(fixtures!, 'media', 'desert.jpg')) },
      ]);
      assert.deepEqual(batch.numTokens, [3 * 13 * 23, 34 * 51]);
      assert.deepEqual(batch.modals, ['video', 'image']);
    } finally {
      st.close();
    }
  });

  // Spec 2.7: SHA-256 prefixes of the reference pipeline's float32 pixel_values for single-image requests.
  const checksums: [string, string][] = [
    ['cars.jpg', 'e63fac8721ade80f'],
    ['cat.jpg', '848410cae4aa790c'],
    ['desert.jpg', '017bdc3a3224fa29'],
  ];
  for (const [file, sha] of checksums) {
    test(`spec 2.7 pixel_values checksum of ${file}`, async () => {
      const batch = await preprocessVisuals([{ modality: 'image', image: await loadImage(join(fixtures!, 'media', file)) }]);
      const bytes = Buffer.from(batch.pixelValues.data.buffer, batch.pixelValues.data.byteOffset, batch.pixelValues.data.byteLength);
      assert.equal(createHash('sha256').update(bytes).digest('hex').slice(0, 16), sha);
    });
  }
});
