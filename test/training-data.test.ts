// The training data pipeline (annotation -> converted messages -> sample -> packed micro-batch) against the training
// goldens (fixtures/training, built as the official train.py builds them), plus conversion rules, JSONL, errors and
// truncation, which the goldens do not exercise.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SafetensorsFile } from '../src/model/safetensors.js';
import { findFfmpeg, runTool } from '../src/processing/ffmpeg.js';
import { Tensor } from '../src/tensor/tensor.js';
import { loadProcessorConfig, type ProcessorConfig } from '../src/processing/processor-config.js';
import { Tokenizer } from '../src/processing/tokenizer.js';
import {
  AnnotationError,
  convertConversation,
  parseAnnotations,
  pythonStrip,
  readAnnotationFile,
  type AnnotationSample,
} from '../src/processing/training-annotation.js';
import { buildTrainingBatch, collateTrainingSamples } from '../src/processing/training-batch.js';
import { buildTrainingSample, IGNORE_INDEX, renderTrainingMessage, type TrainingDataOptions, type TrainingSample } from '../src/processing/training-sample.js';
import { fixturesDir, FIXTURES_MISSING, readJson, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();

/** The data arguments of the goldens (fixtures/training/README.md): the stage scripts' values but mm_max_length 256. */
const GOLDEN_DATA_ARGS = { mmMaxLength: 256, videoMergeSize: 2, fps: 1, maxFrames: 180, modelMaxLength: 16384 };
/** Image merge size per inputs file: 1 in stages 1-3, 2 in stage 4. */
const INPUT_FILES = [
  { file: 'inputs.safetensors', imageMergeSize: 1 },
  { file: 'inputs_stage4.safetensors', imageMergeSize: 2 },
];

interface ManifestInstance {
  modal: string;
  merge_size: number;
  messages: unknown[];
  rendered_messages: string[];
  input_len: number;
  num_frames: number[];
}
interface SampleManifest {
  inputs: Record<string, { per_instance: ManifestInstance[]; num_supervised_labels: number }>;
}

function ints(file: SafetensorsFile, name: string): number[] {
  return Array.from(file.read(name).data as BigInt64Array, Number);
}

function annotation(value: unknown, index = 0): AnnotationSample {
  return parseAnnotations(JSON.stringify([value]), 'test.json')[index]!;
}

/** Asserts that `run` throws (or rejects with) an AnnotationError at this file, sample and field. */
async function assertAnnotationError(run: () => unknown, where: { file?: string; sample: number; field: string }, message?: RegExp): Promise<void> {
  await assert.rejects(
    async () => run(),
    (err: unknown) => {
      assert.ok(err instanceof AnnotationError, `expected an AnnotationError, got ${String(err)}`);
      assert.equal(err.file, where.file ?? 'test.json');
      assert.equal(err.sample, where.sample);
      assert.equal(err.field, where.field);
      if (message) assert.match(err.message, message);
      return true;
    },
  );
}

describe('training annotations: conversion as _convert_normal', () => {
  it('strips what Python strip() strips, not what JavaScript trim() strips', () => {
    assert.equal(pythonStrip('\x1c\x85 a b\t\n'), 'a b');
    assert.equal(pythonStrip('\ufeffa\ufeff'), '\ufeffa\ufeff');
  });

  it('splits human turns on the tag, strips and drops empty text chunks, keeps answers verbatim', () => {
    const sample = annotation({
      image: ['a.jpg', 'b.jpg'],
      conversations: [
        { from: 'human', value: ' First: <image>\n<image>  \nCompare them. ' },
        { from: 'gpt', value: ' They differ.\n' },
      ],
    });
    assert.deepEqual(convertConversation(sample), [
      { role: 'user', content: [{ type: 'text', text: 'First:' }, { type: 'image' }, { type: 'image' }, { type: 'text', text: 'Compare them.' }] },
      { role: 'assistant', content: ' They differ.\n' },
    ]);
  });

  it('drops leading turns before the first human or system turn; a system turn becomes a supervised assistant message', () => {
    const sample = annotation({
      conversations: [
        { from: 'gpt', value: 'stray' },
        { from: 'system', value: 'Be brief.' },
        { from: 'human', value: 'Hi' },
        { from: 'gpt', value: 'Hello.' },
      ],
    });
    assert.deepEqual(convertConversation(sample), [
      { role: 'assistant', content: 'Be brief.' },
      { role: 'user', content: [{ type: 'text', text: 'Hi' }] },
      { role: 'assistant', content: 'Hello.' },
    ]);
  });

  it('prepends the tag to the first turn only when no turn has one, and puts the video frames in the video part', () => {
    const video = { numFrames: 2, timestamps: [0, 1] };
    const withoutTag = annotation({ video: ['v.mp4'], conversations: [{ from: 'human', value: 'Q' }, { from: 'gpt', value: 'A' }] });
    assert.deepEqual(convertConversation(withoutTag, video)[0], {
      role: 'user',
      content: [{ type: 'video', num_frames: 2, timestamps: [0, 1] }, { type: 'text', text: 'Q' }],
    });
    // A tag in an answer counts: nothing is prepended, and the answer keeps it as text.
    const tagInAnswer = annotation({ image: 'a.jpg', conversations: [{ from: 'human', value: 'Q' }, { from: 'gpt', value: 'A <image>' }] });
    assert.deepEqual(convertConversation(tagInAnswer), [
      { role: 'user', content: [{ type: 'text', text: 'Q' }] },
      { role: 'assistant', content: 'A <image>' },
    ]);
  });

  it('removes <video> tags from text-only samples and keeps <image> as text in video samples (the split tag is per modality)', () => {
    const text = annotation({ conversations: [{ from: 'human', value: 'a <video> b' }, { from: 'gpt', value: 'c' }] });
    assert.deepEqual(convertConversation(text)[0], { role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] });
    const video = annotation({ video: ['v.mp4'], conversations: [{ from: 'human', value: '<video> x <image>' }, { from: 'gpt', value: 'c' }] });
    assert.deepEqual(convertConversation(video, { numFrames: 1, timestamps: [0] })[0]!.content, [
      { type: 'video', num_frames: 1, timestamps: [0] },
      { type: 'text', text: 'x <image>' },
    ]);
  });

  it('renders each message with the training template: string answers, images, timed video frames', () => {
    assert.equal(
      renderTrainingMessage({ role: 'user', content: [{ type: 'text', text: 'Q?' }, { type: 'image' }] }),
      '<|im_start|>user\nQ?<image>\n<|im_end|>\n',
    );
    assert.equal(
      renderTrainingMessage({ role: 'user', content: [{ type: 'video', num_frames: 3, timestamps: [0, 1.25, 12.35] }, { type: 'text', text: 'Q' }] }),
      // numpy rounding of the ffmpeg path's float64 times: 1.25*10 = 12.5 -> 12 (half to even); 12.35*10 rounds to
      // 123.5 -> 124, so "12.4" where Python's round(12.35, 1) would give 12.3.
      '<|im_start|>user\nTime 0.0s:<image>,Time 1.2s:<image>,Time 12.4s:<image>\nQ<|im_end|>\n',
    );
    assert.equal(renderTrainingMessage({ role: 'assistant', content: 'A.' }), '<|im_start|>assistant\nA.<|im_end|>\n');
  });
});

describe('training annotations: files and errors', () => {
  it('reads JSON lines (blank lines skipped) the same as a JSON list', () => {
    const samples = [
      { image: 'a.jpg', conversations: [{ from: 'human', value: 'x' }, { from: 'gpt', value: 'y' }] },
      { conversations: [{ from: 'human', value: 'x' }, { from: 'gpt', value: 'y' }], video: null },
    ];
    const list = parseAnnotations(JSON.stringify(samples), 'f');
    const lines = parseAnnotations(`${JSON.stringify(samples[0])}\n\n${JSON.stringify(samples[1])}\r\n`, 'f');
    assert.deepEqual(lines, list);
    assert.equal(list[1]!.video, undefined);
    assert.deepEqual(list[0]!.images, ['a.jpg']);
  });

  it('names the file, the sample and the field of what it refuses', async () => {
    const turns = [{ from: 'human', value: 'x' }, { from: 'gpt', value: 'y' }];
    const ok = { conversations: turns };
    const parse = (samples: unknown[]) => () => parseAnnotations(JSON.stringify(samples), 'test.json');
    await assertAnnotationError(() => parseAnnotations('{"conversations": [', 'test.json'), { sample: 0, field: '' }, /line 1 is not valid JSON/);
    await assertAnnotationError(() => parseAnnotations(`${JSON.stringify(ok)}\n{oops`, 'test.json'), { sample: 1, field: '' }, /line 2/);
    await assertAnnotationError(() => parseAnnotations('[1', 'test.json'), { sample: 0, field: '' }, /not valid JSON/);
    await assertAnnotationError(parse([ok, 'text']), { sample: 1, field: '' });
    await assertAnnotationError(parse([ok, { conversations: 'x' }]), { sample: 1, field: 'conversations' });
    await assertAnnotationError(parse([{ conversations: [turns[0], { from: 'bot', value: 'y' }] }]), { sample: 0, field: 'conversations[1].from' }, /"bot"/);
    await assertAnnotationError(parse([{ conversations: [turns[0], { from: 'gpt', value: 3 }] }]), { sample: 0, field: 'conversations[1].value' });
    await assertAnnotationError(parse([ok, ok, { video: 'v.mp4', conversations: turns }]), { sample: 2, field: 'video' }, /exactly one video/);
    await assertAnnotationError(parse([{ video: ['a.mp4', 'b.mp4'], conversations: turns }]), { sample: 0, field: 'video' });
    await assertAnnotationError(parse([{ image: ['a.jpg', ''], conversations: turns }]), { sample: 0, field: 'image[1]' });
    await assertAnnotationError(parse([{ image: [], conversations: turns }]), { sample: 0, field: 'image' });
    await assertAnnotationError(parse([{ image: 'a.jpg', video: ['v.mp4'], conversations: turns }]), { sample: 0, field: 'video' }, /not both/);
    await assertAnnotationError(parse([{ stream: true, video: ['v.mp4'], conversation: [] }]), { sample: 0, field: 'stream' });
    const oneTurnLeft = annotation({ conversations: [{ from: 'gpt', value: 'a' }, { from: 'human', value: 'b' }] });
    await assertAnnotationError(() => convertConversation(oneTurnLeft), { sample: 0, field: 'conversations' }, /1 remain after dropping 1/);
  });

  it('names the file it cannot read', async () => {
    await assertAnnotationError(() => readAnnotationFile('/nonexistent/train.json'), { file: '/nonexistent/train.json', sample: 0, field: '' }, /cannot read/);
  });
});

/** A sample built by hand (no media): ids 0.., `visual` of them image tokens, labels = ids on the last `answer`. */
function handMadeSample(ids: number[], visualTokens: number[], rowsPerItem: number[]): TrainingSample {
  const rows = rowsPerItem.reduce((a, b) => a + b, 0);
  const pixelValues = Tensor.f32([rows, 4], Array.from({ length: rows * 4 }, (_, i) => i + ids[0]!));
  return {
    modal: 'image',
    messages: [],
    renderedMessages: [],
    inputIds: Int32Array.from(ids),
    labels: Int32Array.from(ids, (id) => (id >= 100 ? id : IGNORE_INDEX)),
    pixelValues,
    gridSizes: rowsPerItem.map((r): [number, number, number] => [1, 1, r]),
    mergeSizes: rowsPerItem.map(() => 1),
    modals: rowsPerItem.map(() => 'image' as const),
    visualTokens,
  };
}

describe('collation and truncation at model_max_length', () => {
  const IMG = 7;

  it('cuts each sample, restarts positions, sets every first label to -100, and counts the visual tokens left per item', () => {
    // Sample 1: two images of 3 and 2 tokens; sample 2: one image of 4 tokens, then an answer.
    const first = handMadeSample([1, IMG, IMG, IMG, 2, IMG, IMG, 100, 101], [3, 2], [3, 2]);
    const second = handMadeSample([120, IMG, IMG, IMG, IMG, 121, 122], [4], [4]);
    const batch = collateTrainingSamples([first, second], { modelMaxLength: 5, imageTokenId: IMG });
    assert.deepEqual(batch.samples, [5, 5]);
    assert.deepEqual(Array.from(batch.inputIds), [1, IMG, IMG, IMG, 2, 120, IMG, IMG, IMG, IMG]);
    // 120 would be supervised, but nothing in its own sample precedes it.
    assert.deepEqual(Array.from(batch.labels), [-100, -100, -100, -100, -100, -100, -100, -100, -100, -100]);
    assert.deepEqual(Array.from(batch.positionIds), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
    // The cut removed the second image of sample 1 entirely and nothing of sample 2's image.
    assert.deepEqual(batch.keptVisualTokens, [3, 0, 4]);
    // Pixel values stay whole (the official collator does not cut them; the model drops the features).
    assert.deepEqual(Array.from(batch.pixelValues.data), [...first.pixelValues.data, ...second.pixelValues.data]);
    assert.deepEqual(batch.gridSizes, [[1, 1, 3], [1, 1, 2], [1, 1, 4]]);

    const partial = collateTrainingSamples([first, second], { modelMaxLength: 6, imageTokenId: IMG });
    assert.deepEqual(partial.keptVisualTokens, [3, 1, 4]);
    assert.deepEqual(Array.from(partial.labels.subarray(6)), [-100, -100, -100, -100, -100, 121]);

    const whole = collateTrainingSamples([first, second], { modelMaxLength: 100, imageTokenId: IMG });
    assert.deepEqual(whole.samples, [9, 7]);
    assert.deepEqual(Array.from(whole.labels), [-100, -100, -100, -100, -100, -100, -100, 100, 101, -100, -100, -100, -100, -100, 121, 122]);
    assert.deepEqual(whole.keptVisualTokens, [3, 2, 4]);
  });

  it('refuses an empty batch and a model_max_length below 1', () => {
    assert.throws(() => collateTrainingSamples([], { modelMaxLength: 8, imageTokenId: IMG }), RangeError);
    assert.throws(() => collateTrainingSamples([handMadeSample([1], [], [])], { modelMaxLength: 0, imageTokenId: IMG }), RangeError);
  });
});

describe('training samples against the goldens (fixtures/training)', { skip: !fixtures && FIXTURES_MISSING }, () => {
  let tokenizer: Tokenizer;
  let processorConfig: ProcessorConfig;
  const samplesDir = () => join(fixtures!, 'training', 'samples');
  const options = (imageMergeSize: number): TrainingDataOptions => ({
    tokenizer,
    processorConfig,
    dataFolder: join(fixtures!, 'media'),
    imageMergeSize,
    ...GOLDEN_DATA_ARGS,
  });

  before(async () => {
    const checkpoint = join(fixtures!, TINY_CHECKPOINT);
    tokenizer = await Tokenizer.load(checkpoint);
    processorConfig = await loadProcessorConfig(checkpoint);
  });
  after(() => tokenizer?.close());

  it('finds the six golden samples', () => {
    assert.deepEqual(readdirSync(samplesDir()).sort(), ['a_text_two_turns', 'b_image_caption', 'c_two_images', 'd_video', 'e_packed_video_image', 'f_video_natural']);
  });

  // The folder list is read when the tests are defined; without fixtures the describe is skipped and this is empty.
  const names = fixtures ? readdirSync(join(fixtures, 'training', 'samples')).sort() : [];
  for (const name of names) {
    for (const { file, imageMergeSize } of INPUT_FILES) {
      if (!existsSync(join(fixtures!, 'training', 'samples', name, file))) continue;
      it(`${name}/${file}: messages, renders, ids, labels, positions, grids, modals and pixel values equal the golden`, async () => {
        const dir = join(samplesDir(), name);
        const manifest = readJson<SampleManifest>(join(dir, 'manifest.json')).inputs[file]!;
        const annotations = await readAnnotationFile(join(dir, 'annotation.json'));
        const samples: TrainingSample[] = [];
        for (const entry of annotations) samples.push(await buildTrainingSample(entry, options(imageMergeSize)));

        assert.equal(samples.length, manifest.per_instance.length);
        for (const [k, sample] of samples.entries()) {
          const golden = manifest.per_instance[k]!;
          assert.equal(sample.modal, golden.modal);
          assert.equal(sample.mergeSizes[0], golden.merge_size);
          assert.deepEqual(sample.messages, golden.messages);
          assert.deepEqual(sample.renderedMessages, golden.rendered_messages);
          assert.equal(sample.inputIds.length, golden.input_len);
        }

        const batch = collateTrainingSamples(samples, { modelMaxLength: GOLDEN_DATA_ARGS.modelMaxLength, imageTokenId: tokenizer.imageTokenId });
        const inputs = SafetensorsFile.open(join(dir, file));
        try {
          assert.deepEqual(Array.from(batch.inputIds), ints(inputs, 'input_ids'));
          assert.deepEqual(Array.from(batch.labels), ints(inputs, 'labels'));
          assert.deepEqual(Array.from(batch.positionIds), ints(inputs, 'position_ids'));
          assert.deepEqual(batch.gridSizes.flat(), ints(inputs, 'grid_sizes'));
          assert.deepEqual(batch.mergeSizes, ints(inputs, 'merge_sizes'));
          assert.deepEqual(batch.modals, JSON.parse(inputs.metadata.modals!));
          assert.equal(Array.from(batch.labels).filter((l) => l !== IGNORE_INDEX).length, manifest.num_supervised_labels);
          // Bit-exact: the resize is Pillow's fixed-point bicubic and the normalisation numpy's float32 steps.
          const golden = inputs.read('pixel_values');
          assert.deepEqual(batch.pixelValues.shape, golden.shape);
          const bytesOf = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
          assert.ok(bytesOf(batch.pixelValues.data as Float32Array).equals(bytesOf(golden.data as Float32Array)), 'pixel values differ');
        } finally {
          inputs.close();
        }
        assert.deepEqual(batch.keptVisualTokens, samples.flatMap((s) => s.visualTokens));
      });
    }
  }

  it('builds the same micro-batch from the annotation written as JSON lines', async () => {
    const dir = join(samplesDir(), 'e_packed_video_image');
    const entries = readJson<unknown[]>(join(dir, 'annotation.json'));
    const folder = mkdtempSync(join(tmpdir(), 'vl3-training-'));
    try {
      const file = join(folder, 'train.jsonl');
      writeFileSync(file, entries.map((e) => JSON.stringify(e)).join('\n') + '\n');
      const fromLines = await readAnnotationFile(file);
      const fromList = await readAnnotationFile(join(dir, 'annotation.json'));
      assert.deepEqual(fromLines.map(({ file: _, ...rest }) => rest), fromList.map(({ file: _, ...rest }) => rest));
      const batch = (list: AnnotationSample[]) => buildTrainingBatch(list, { ...options(1), modelMaxLength: GOLDEN_DATA_ARGS.modelMaxLength });
      const [a, b] = [await batch(fromLines), await batch(fromList)];
      assert.deepEqual(a.inputIds, b.inputIds);
      assert.deepEqual(a.labels, b.labels);
      assert.deepEqual(a.pixelValues.data, b.pixelValues.data);
    } finally {
      rmSync(folder, { recursive: true, force: true });
    }
  });

  it('truncates the packed video + image golden consistently: ids, labels and kept visual tokens per sample', async () => {
    const dir = join(samplesDir(), 'e_packed_video_image');
    const samples: TrainingSample[] = [];
    for (const entry of await readAnnotationFile(join(dir, 'annotation.json'))) samples.push(await buildTrainingSample(entry, options(1)));
    const full = collateTrainingSamples(samples, { modelMaxLength: 16384, imageTokenId: tokenizer.imageTokenId });
    // 100 tokens end inside the first frames of the video (its prompt starts "<|im_start|>user\nTime 0.0s:") and
    // inside the image of the second sample.
    const cut = collateTrainingSamples(samples, { modelMaxLength: 100, imageTokenId: tokenizer.imageTokenId });
    assert.deepEqual(cut.samples, [100, 100]);
    const [lenA] = full.samples;
    assert.deepEqual(cut.inputIds.subarray(0, 100), full.inputIds.subarray(0, 100));
    assert.deepEqual(cut.inputIds.subarray(100), full.inputIds.subarray(lenA!, lenA! + 100));
    assert.deepEqual(cut.labels.subarray(100), full.labels.subarray(lenA!, lenA! + 100));
    const imagesIn = (ids: Int32Array) => ids.filter((id) => id === tokenizer.imageTokenId).length;
    assert.deepEqual(cut.keptVisualTokens, [imagesIn(cut.inputIds.subarray(0, 100)), imagesIn(cut.inputIds.subarray(100))]);
    assert.ok(cut.keptVisualTokens[0]! < samples[0]!.visualTokens[0]! && cut.keptVisualTokens[1]! < samples[1]!.visualTokens[0]!);
    // Every supervised token was cut away: each sample's answer lies beyond 100 tokens.
    assert.ok(cut.labels.every((l) => l === IGNORE_INDEX));
    assert.deepEqual(cut.pixelValues.data, full.pixelValues.data);
  });

  it('names the sample and the field when the media or the placeholders do not fit', async () => {
    const turns = [{ from: 'human', value: '<image>\n<image>\nQ' }, { from: 'gpt', value: 'A' }];
    const [twoTagsOneImage, missingImage, missingVideo] = parseAnnotations(
      JSON.stringify([
        { image: 'desert.jpg', conversations: turns },
        { image: ['desert.jpg', 'no-such.jpg'], conversations: turns },
        { video: ['no-such.mp4'], conversations: turns },
      ]),
      'test.json',
    );
    await assertAnnotationError(() => buildTrainingSample(twoTagsOneImage!, options(1)), { sample: 0, field: 'conversations' }, /more <image> placeholders/);
    await assertAnnotationError(() => buildTrainingSample(missingImage!, options(1)), { sample: 1, field: 'image[1]' }, /no-such\.jpg/);
    await assertAnnotationError(() => buildTrainingSample(missingVideo!, options(1)), { sample: 2, field: 'video[0]' }, /no-such\.mp4/);
    const textWithImageTag = annotation({ conversations: [{ from: 'human', value: 'What is <image>?' }, { from: 'gpt', value: 'A' }] });
    await assertAnnotationError(() => buildTrainingSample(textWithImageTag, options(1)), { sample: 0, field: 'conversations' }, /0 image/);
  });

  it('refuses a video too short to give a frame at the sampling rate, on which the official loader fails', async () => {
    const ffmpeg = await findFfmpeg();
    const folder = mkdtempSync(join(tmpdir(), 'vl3-training-'));
    try {
      const args = ['-nostdin', '-loglevel', 'error', '-f', 'lavfi', '-i', 'testsrc=size=64x48:rate=15:duration=0.8', '-c:v', 'ffv1', join(folder, 'short.mkv')];
      const { code, stderr } = await runTool(ffmpeg.program, args);
      assert.equal(code, 0, stderr);
      const sample = annotation({ video: ['short.mkv'], conversations: [{ from: 'human', value: 'Q' }, { from: 'gpt', value: 'A' }] });
      await assertAnnotationError(() => buildTrainingSample(sample, { ...options(1), dataFolder: folder }), { sample: 0, field: 'video[0]' }, /no frame at 1 fps/);
    } finally {
      rmSync(folder, { recursive: true, force: true });
    }
  });
});
