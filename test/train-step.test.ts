// Training end to end against the fixtures (fixtures/training README): a micro-batch built from the annotation, the
// DiffFP deletion of stages 3-4 and its renumbered positions, the loss, and two AdamW updates from our own gradients
// (check (b) of "Tolerances observed": every element within 2·lr of PyTorch's, 99.9 % within 1e-2·lr, the losses
// after each update within 1e-5).
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { SafetensorsFile } from '../src/model/safetensors.js';
import { VideoLLaMA3Training } from '../src/model/videollama3-training.js';
import { createBackend } from '../src/tensor/index.js';
import { applyLrMultiplier, cosineSchedule } from '../src/train/schedule.js';
import { baseLrs, moduleGroupOf, stageConfig, stageOptimizer, trainableByGroup, type StageConfig } from '../src/train/stages.js';
import { fixturesDir, FIXTURES_MISSING } from './fixtures.js';
import { tinyTrainingSuite } from './train-fixtures.js';

const fixtures = fixturesDir();
const ints = (f: SafetensorsFile, name: string) => Array.from(f.read(name).data as ArrayLike<number | bigint>, (v) => Number(v));

describe('training steps against the fixtures', { skip: !fixtures && FIXTURES_MISSING }, () => {
  const tiny = tinyTrainingSuite(fixtures);

  function modelFor(stage: StageConfig): VideoLLaMA3Training {
    const names = VideoLLaMA3Training.parameterNames(tiny.config);
    const trainable = new Set(trainableByGroup(names, stage).groups.flatMap((g) => g.names));
    return new VideoLLaMA3Training(tiny.config, { get: (spec) => tiny.weights.read(spec.name) }, (name) => trainable.has(name), createBackend('native', { compute: 'exact' }));
  }

  for (const [sample, stage] of [
    ['d_video', 2],
    ['e_packed_video_image', 3],
    ['c_two_images', 4],
  ] as const) {
    it(`${sample}, stage ${stage}: the sequence after DiffFP and the loss`, async () => {
      const stored = SafetensorsFile.open(join(fixtures!, 'training', 'samples', sample, `stage${stage}.safetensors`));
      const inputs = await tiny.inputsFor(sample, stageConfig(stage));
      assert.deepEqual(Array.from(inputs.inputIds), ints(stored, 'llm_input_ids'));
      assert.deepEqual(Array.from(inputs.labels), ints(stored, 'llm_labels'));
      assert.deepEqual(Array.from(inputs.positionIds), ints(stored, 'llm_position_ids'));
      assert.deepEqual(Array.from(inputs.compressionMask), ints(stored, 'compression_mask'));
      const { lossSum, supervised } = modelFor(stageConfig(stage)).loss(inputs);
      const expected = stored.readF64('loss').data[0]!;
      assert.equal(supervised, ints(stored, 'num_items_in_batch')[0]);
      assert.ok(Math.abs(lossSum / supervised - expected) <= 1e-5 * expected, `loss ${lossSum / supervised} against ${expected}`);
      stored.close();
    });
  }

  for (const [sample, stage] of [
    ['b_image_caption', 1],
    ['d_video', 2],
    ['e_packed_video_image', 3],
    ['b_image_caption', 4],
  ] as const) {
    it(`${sample}, stage ${stage}: two AdamW updates from our own gradients`, async () => {
      const stored = SafetensorsFile.open(join(fixtures!, 'training', 'samples', sample, `stage${stage}_adamw.safetensors`));
      const config4 = stageConfig(stage);
      const inputs = await tiny.inputsFor(sample, config4);
      const model = modelFor(config4);
      const optimizer = stageOptimizer(model.parameters, config4, model.backend);
      // The fixtures' stated point: T = 100, updates at global steps 3 and 4, fresh optimizer state.
      const schedule = cosineSchedule(100, config4.warmupRatio);
      const losses: number[] = [];
      for (const globalStep of [3, 4]) {
        model.zeroGradients();
        const { supervised } = model.loss(inputs);
        const { lossSum } = model.step(inputs, 1 / supervised);
        losses.push(lossSum / supervised);
        applyLrMultiplier(optimizer, baseLrs(config4), schedule.multiplier(globalStep));
        optimizer.update(model.gradients);
        if (globalStep === 3) assertParametersClose(stored, model, config4);
      }
      const { lossSum, supervised } = model.loss(inputs);
      losses.push(lossSum / supervised);
      const expected = ['loss_before', 'loss_after_update1', 'loss_after_update2'].map((n) => stored.readF64(n).data[0]!);
      losses.forEach((l, i) => assert.ok(Math.abs(l - expected[i]!) <= 1e-5 * expected[i]!, `loss ${i}: ${l} against ${expected[i]}`));
      stored.close();
    });
  }
});

/** Check (b): every stored element of every updated parameter within 2·lr, and 99.9 % of them within 1e-2·lr. */
function assertParametersClose(stored: SafetensorsFile, model: VideoLLaMA3Training, stage: StageConfig): void {
  let total = 0;
  let close = 0;
  const H = model.config.hiddenSize;
  for (const [name, param] of model.parameters) {
    const lr = stage.lr[moduleGroupOf(name)]!;
    const data = param.data;
    let actual: Float32Array;
    let expected: Float32Array;
    if (stored.names.includes(`param_after_update1/${name}`)) {
      actual = data;
      expected = stored.read(`param_after_update1/${name}`).data as Float32Array;
    } else {
      // The embedding table: its stored rows only.
      const rows = Array.from(stored.read('vocab_row_index').data as BigInt64Array, Number);
      actual = Float32Array.from(rows.flatMap((r) => Array.from(data.subarray(r * H, (r + 1) * H))));
      expected = stored.read(`param_after_update1_rows/${name}`).data as Float32Array;
    }
    assert.equal(actual.length, expected.length, name);
    for (let i = 0; i < actual.length; i++) {
      const d = Math.abs(actual[i]! - expected[i]!);
      assert.ok(d <= 2 * lr + 1e-7 * Math.abs(expected[i]!), `${name}[${i}]: ${actual[i]} against ${expected[i]} (lr ${lr})`);
      total++;
      if (d <= 1e-2 * lr) close++;
    }
  }
  assert.ok(total > 0);
  assert.ok(close >= 0.999 * total, `${close} of ${total} elements within 1e-2·lr`);
}
