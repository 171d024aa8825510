// The optimizer side of training against fixtures/training (README "Optimizer and schedule", "Gradient
// accumulation", "Stages"): AdamW fed the stored gradients, the cosine schedule, the stage presets, clipping and the
// loss reduction of accumulation.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { SafetensorsFile, writeSafetensors } from '../src/model/safetensors.js';
import type { Backend } from '../src/tensor/backend.js';
import { NativeBackend } from '../src/tensor/native.js';
import { ReferenceBackend } from '../src/tensor/reference.js';
import { Tensor } from '../src/tensor/tensor.js';
import { accumulateGradient, microBatchLoss, numItemsInBatch, stepLoss, supervisedCount } from '../src/train/accumulation.js';
import { AdamW, type AdamWState } from '../src/train/adamw.js';
import { clipGradNorm, globalGradNorm, sumOfSquares } from '../src/train/clip.js';
import { fma32 } from '../src/tensor/fma32.js';
import { applyLrMultiplier, cosineSchedule, warmupSteps } from '../src/train/schedule.js';
import { baseLrs, MODULE_GROUPS, moduleGroupOf, stageConfig, stageOptimizer, trainableByGroup } from '../src/train/stages.js';
import { FIXTURES_MISSING, fixturesDir, readJson } from './fixtures.js';
import { checkpointParams, compare, EMBED, gatherRows, Golden } from './train-fixtures.js';

const fixtures = fixturesDir();
const skip = fixtures ? false : FIXTURES_MISSING;

interface Manifest {
  schedule: { warmup_ratio: number; multipliers_T100: number[]; multipliers_T10: number[]; step_index_update1: number; step_index_update2: number };
  grad_accum: { update_global_step: number };
}
const manifest = (): Manifest => readJson<Manifest>(path.join(fixtures!, 'training', 'manifest.json'));

// The optimizer's arithmetic is the backend's adamw op: the TypeScript definition, and the native kernel at this
// CPU's best tier (test/native-adamw.test.ts compares every tier with the definition bit for bit).
const BACKENDS: [string, Backend][] = [
  ['reference', new ReferenceBackend()],
  ['native', new NativeBackend()],
];

// One stored two-update run per stage (README "Per-file contents").
const ADAMW_CASES = [
  { stage: 1, sample: 'b_image_caption' },
  { stage: 2, sample: 'd_video' },
  { stage: 3, sample: 'e_packed_video_image' },
  { stage: 4, sample: 'b_image_caption' },
] as const;

/**
 * The stage's trainable parameters from the checkpoint. The embedding [151936, 64] is updated densely but the goldens
 * store only its rows `rows` (README "Conventions"): AdamW is elementwise, so those rows of the parameter, updated
 * with those rows of each gradient, are exactly those rows of the full update. The optimizer gets the gathered rows
 * in place of the full table; its sums (colsum, sumsq, …) cannot be checked without the full stored gradient.
 */
function trainableParams(stage: 1 | 2 | 3 | 4, rows: readonly number[]): Map<string, Tensor<'f32'>> {
  const { params, names } = checkpointParams(fixtures!);
  const { groups } = trainableByGroup(names, stageConfig(stage));
  return new Map(groups.flatMap((g) => g.names).map((n) => [n, n === EMBED ? gatherRows(params.get(n)!, rows) : params.get(n)!]));
}

/** `<prefix>/<name>` of every trainable parameter, the embedding from `<prefix>_rows/`. */
function storedTensors(file: Golden, prefix: string, names: Iterable<string>): Map<string, Tensor<'f32'>> {
  return new Map([...names].map((n) => [n, file.f32(n === EMBED ? `${prefix}_rows/${n}` : `${prefix}/${n}`)]));
}

function assertBitExact(what: string, actual: Map<string, Float32Array>, file: Golden, prefix: string): void {
  for (const [n, data] of actual) {
    const { maxRel, mismatched } = compare(data, file.f32(n === EMBED ? `${prefix}_rows/${n}` : `${prefix}/${n}`).data);
    assert.equal(mismatched, 0, `${what} ${prefix}/${n}: ${mismatched} elements differ, max relative ${maxRel}`);
  }
}

describe('fma32', () => {
  it('rounds a·b + c once', () => {
    const a = Math.fround(1 + 2 ** -23);
    // a² = 1 + 2^-22 + 2^-46: rounding the product first loses the 2^-46 that the fused form keeps.
    assert.equal(fma32(a, a, -(1 + 2 ** -22)), 2 ** -46);
    assert.equal(Math.fround(Math.fround(a * a) - (1 + 2 ** -22)), 0);
    assert.equal(fma32(3, 5, 7), 22);
    assert.equal(fma32(0, 5, -0), 0);
  });

  it('avoids double rounding where the exact sum sits just below a float32 tie', () => {
    const a = Math.fround(2 ** -12 * (1 + 2 ** -20));
    const b = Math.fround(2 ** -12 * (1 - 2 ** -20));
    const c = Math.fround(1 + 2 ** -23);
    // exact: 1 + 2^-23 + 2^-24 − 2^-64, just below the tie → 1 + 2^-23; in double it becomes the tie → even 1 + 2^-22.
    assert.equal(Math.fround(a * b + c), 1 + 2 ** -22);
    assert.equal(fma32(a, b, c), 1 + 2 ** -23);
    assert.equal(fma32(a, -b, -c), -(1 + 2 ** -23));
    // Just above a tie: exact 1 + 2^-24 + 2^-64 → 1 + 2^-23, where double rounding gives the tie and then 1.
    assert.equal(Math.fround(-a * b + c), 1);
    assert.equal(fma32(-a, b, c), 1 + 2 ** -23);
  });
});

for (const [backendName, backend] of BACKENDS) {
  describe(`AdamW by hand (${backendName} backend)`, () => {
    it('the first step moves each element by lr·g/(|g| + eps) and fills the moments', () => {
      const p = Tensor.f32([4], [1, -2, 0.5, 3]);
      const opt = new AdamW(backend, [{ name: 'g', lr: 0.01, params: { p } }]);
      opt.update({ p: Tensor.f32([4], [0.5, -0.25, 0, 1e-9]) });
      const expected = [1 - 0.01, -2 + 0.01, 0.5, 3 - 0.01 * (1e-9 / (1e-9 + 1e-8))];
      expected.forEach((e, i) => assert.ok(Math.abs(p.data[i]! - e) <= 1e-6 * Math.abs(e), `element ${i}: ${p.data[i]} vs ${e}`));
      assert.deepEqual([...opt.moments('p').expAvg.data], [0.05, -0.025, 0, 1e-10].map(Math.fround));
      assert.equal(opt.step, 1);
    });

    it('weight decay is decoupled: with zero gradient it only shrinks the parameter by 1 − lr·wd', () => {
      const p = Tensor.f32([2], [2, -4]);
      const opt = new AdamW(backend, [{ name: 'g', lr: 0.1, weightDecay: 0.5, params: { p } }]);
      opt.update({ p: Tensor.f32([2]) });
      // An L2 penalty added to the gradient would instead move each element by about lr (Adam normalises it).
      assert.deepEqual([...p.data], [Math.fround(2 * 0.95), Math.fround(-4 * 0.95)]);
    });

    it('checks every gradient before moving any parameter', () => {
      const a = Tensor.f32([2], [1, 2]);
      const b = Tensor.f32([3], [1, 2, 3]);
      const opt = new AdamW(backend, [{ name: 'g', lr: 0.1, params: { a, b } }]);
      assert.throws(() => opt.update({ a: Tensor.f32([2], [1, 1]) }), /no gradient for "b"/);
      assert.throws(() => opt.update({ a: Tensor.f32([2], [1, 1]), b: Tensor.f32([2]) }), /gradient of "b" is not an f32 \[3\] tensor/);
      assert.throws(() => opt.update({ a: Tensor.f32([2], [1, 1]), b: Tensor.f32([3, 1]) }), /gradient of "b" is not an f32 \[3\] tensor/);
      assert.deepEqual([...a.data], [1, 2]);
      assert.equal(opt.step, 0);
      assert.throws(() => new AdamW(backend, [{ name: 'x', lr: 1, params: { a } }, { name: 'y', lr: 1, params: { a } }]), /two groups/);
    });

    it('state saved to safetensors and restored continues exactly like an uninterrupted run', () => {
      const init = () => ({ w: Tensor.f32([2, 3], [0.1, -0.2, 0.3, 0.4, -0.5, 0.6]), b: Tensor.f32([3], [1, 2, 3]) });
      const grads = (k: number) => ({
        w: Tensor.f32([2, 3], Array.from({ length: 6 }, (_, i) => Math.sin(k * 7 + i))),
        b: Tensor.f32([3], Array.from({ length: 3 }, (_, i) => Math.cos(k * 3 + i))),
      });
      const build = (p: ReturnType<typeof init>) => new AdamW(backend, [{ name: 'llm', lr: 1e-3, params: { w: p.w } }, { name: 'vision', lr: 2e-4, params: { b: p.b } }]);

      const straight = init();
      const reference = build(straight);
      for (let k = 0; k < 3; k++) reference.update(grads(k));

      const resumed = init();
      const first = build(resumed);
      first.update(grads(0));
      first.update(grads(1));
      const file = path.join(fs.mkdtempSync(path.join(tmpdir(), 'vl3-adamw-')), 'optimizer.safetensors');
      const saved = first.toState();
      writeSafetensors(file, saved.tensors, { adamw: JSON.stringify(saved.meta) });
      const read = SafetensorsFile.open(file);
      const state: AdamWState = {
        meta: JSON.parse(read.metadata.adamw!),
        tensors: Object.fromEntries(read.names.map((n) => [n, read.read(n) as Tensor<'f32'>])),
      };
      read.close();
      fs.rmSync(path.dirname(file), { recursive: true });
      assert.deepEqual(Object.keys(state.tensors).sort(), ['exp_avg/b', 'exp_avg/w', 'exp_avg_sq/b', 'exp_avg_sq/w']);

      const second = build(resumed); // fresh optimizer over the parameters as they were saved
      second.fromState(state);
      assert.equal(second.step, 2);
      second.update(grads(2));
      assert.deepEqual([...resumed.w.data], [...straight.w.data]);
      assert.deepEqual([...resumed.b.data], [...straight.b.data]);
      assert.deepEqual([...second.moments('w').expAvgSq.data], [...reference.moments('w').expAvgSq.data]);

      const other = new AdamW(backend, [{ name: 'llm', lr: 1e-3, params: { w: init().w } }]);
      assert.throws(() => other.fromState(state), /other parameter groups/);
    });
  });
}

describe('AdamW fed the stored gradients reproduces the stored updates bit for bit', { skip }, () => {
  const cases = BACKENDS.flatMap(([backendName, backend]) => ADAMW_CASES.map((c) => ({ ...c, backendName, backend })));
  for (const { stage, sample, backendName, backend } of cases) {
    it(`stage ${stage} (${sample}), ${backendName} backend: update 1 with grad/…, update 2 with grad_at_update1_params/…`, () => {
      const grads = new Golden(fixtures!, `samples/${sample}/stage${stage}.safetensors`);
      const gold = new Golden(fixtures!, `samples/${sample}/stage${stage}_adamw.safetensors`);
      const config = stageConfig(stage);
      const rows = gold.has('vocab_row_index') ? gold.i64('vocab_row_index') : [];
      if (rows.length > 0) assert.deepEqual(grads.i64('vocab_row_index'), rows);
      const params = trainableParams(stage, rows);
      assert.deepEqual([...params.keys()].sort(), [...gold.namesUnder('param_after_update1'), ...(rows.length ? [EMBED] : [])].sort());

      // The stored lrs are the stage's base lrs × the multipliers of global steps 3 and 4 of T = 100.
      const { schedule: s } = manifest();
      const schedule = cosineSchedule(100, config.warmupRatio);
      const opt = stageOptimizer(params, config, backend);
      const groupLrs = () => MODULE_GROUPS.map((g) => opt.groups.find((x) => x.name === g)?.lr ?? 0);
      applyLrMultiplier(opt, baseLrs(config), schedule.multiplier(s.step_index_update1));
      assert.deepEqual(groupLrs(), [...gold.f64('lr_update1_per_group')]);
      opt.update(storedTensors(grads, 'grad', params.keys()));
      assertBitExact(`stage ${stage}, ${backendName}`, new Map([...params].map(([n, p]) => [n, p.data])), gold, 'param_after_update1');

      applyLrMultiplier(opt, baseLrs(config), schedule.multiplier(s.step_index_update2));
      assert.deepEqual(groupLrs(), [...gold.f64('lr_update2_per_group')]);
      opt.update(storedTensors(gold, 'grad_at_update1_params', params.keys()));
      assertBitExact(`stage ${stage}, ${backendName}`, new Map([...params].map(([n, p]) => [n, p.data])), gold, 'param_after_update2');
      assertBitExact(`stage ${stage}, ${backendName}`, new Map([...params.keys()].map((n) => [n, opt.moments(n).expAvg.data])), gold, 'exp_avg_after_update2');
      assertBitExact(`stage ${stage}, ${backendName}`, new Map([...params.keys()].map((n) => [n, opt.moments(n).expAvgSq.data])), gold, 'exp_avg_sq_after_update2');
      grads.close();
      gold.close();
    });
  }
});

describe('gradient accumulation (stage 3, micro-batches b_image_caption + d_video)', { skip }, () => {
  it('each micro-batch divides its loss sum by the supervised count of the whole step', () => {
    const acc = new Golden(fixtures!, 'grad_accum/stage3_accum.safetensors');
    const labels = ['b_image_caption', 'd_video'].map((s) => {
      const inputs = new Golden(fixtures!, `samples/${s}/inputs.safetensors`);
      const l = inputs.file.read('labels').data as BigInt64Array;
      inputs.close();
      return l;
    });
    const n = numItemsInBatch(labels);
    assert.deepEqual(labels.map(supervisedCount), [14, 13]);
    assert.deepEqual([n], acc.i64('num_items_in_batch'));
    const sums = acc.f64('micro_batch_loss_sums');
    const losses = [...sums].map((s) => microBatchLoss(s, n));
    assert.deepEqual(losses, [...acc.f64('micro_batch_losses')]);
    assert.equal(stepLoss(losses), acc.f64('total_loss')[0]);
    // Not each micro-batch's own mean: that would be 169.38/14 + 156.18/13, about 24.1, twice the step's mean.
    assert.ok(Math.abs(stepLoss([microBatchLoss(sums[0]!, 14), microBatchLoss(sums[1]!, 13)]) - acc.f64('total_loss')[0]!) > 10);
    acc.close();
  });

  it('the summed gradient is the per-sample gradients reweighted by their share of the supervised tokens', () => {
    // The per-sample goldens are d(loss_sum_k / N_k)/dθ; the step's gradient is Σ_k d(loss_sum_k / N)/dθ, so rescaling
    // by N_k / N and accumulating must agree up to float32 noise (observed 2.2e-6 normwise; README: fp32 vs fp64 1.6e-5). The embedding is
    // left out: each file stores other rows of it.
    const acc = new Golden(fixtures!, 'grad_accum/stage3_accum.safetensors');
    const parts = [
      { file: new Golden(fixtures!, 'samples/b_image_caption/stage3.safetensors'), count: 14 },
      { file: new Golden(fixtures!, 'samples/d_video/stage3.safetensors'), count: 13 },
    ];
    let worst = 0;
    for (const name of acc.namesUnder('grad')) {
      const sum = new Float32Array(acc.f32(`grad/${name}`).numel);
      for (const { file, count } of parts) accumulateGradient(sum, file.f32(`grad/${name}`).data.map((g) => (g * count) / 27));
      const ref = acc.f32(`grad/${name}`).data;
      const diff = sum.map((x, i) => x - ref[i]!);
      worst = Math.max(worst, Math.sqrt(sumOfSquares(diff) / Math.max(sumOfSquares(ref), 1e-30)));
    }
    assert.ok(worst < 2e-5, `normwise difference ${worst}`);
    for (const p of parts) p.file.close();
    acc.close();
  });

  for (const [backendName, backend] of BACKENDS) {
    it(`one update from the accumulated gradients at the lr multiplier of global step 3 (${backendName} backend)`, () => {
      const acc = new Golden(fixtures!, 'grad_accum/stage3_accum.safetensors');
      const params = trainableParams(3, acc.i64('vocab_row_index'));
      const config = stageConfig(3);
      const opt = stageOptimizer(params, config, backend);
      applyLrMultiplier(opt, baseLrs(config), cosineSchedule(100, config.warmupRatio).multiplier(manifest().grad_accum.update_global_step));
      opt.update(storedTensors(acc, 'grad', params.keys()));
      assertBitExact(`accumulated, ${backendName}`, new Map([...params].map(([n, p]) => [n, p.data])), acc, 'param_after_update1');
      acc.close();
    });
  }
});

describe('cosine schedule with warm-up', { skip }, () => {
  for (const total of [100, 10] as const) {
    it(`every multiplier of T = ${total}`, () => {
      const { schedule: s } = manifest();
      const table = total === 100 ? s.multipliers_T100 : s.multipliers_T10;
      const schedule = cosineSchedule(total, s.warmup_ratio);
      assert.equal(schedule.warmupSteps, total === 100 ? 3 : 1);
      assert.equal(table.length, total);
      // V8's Math.cos (fdlibm) and glibc's cos, which Python used, differ in the last bit for a few arguments (3
      // of the 100 steps of T = 100, by 5e-16): a relative 1e-15 allows that and nothing more.
      table.forEach((m, step) => assert.ok(Math.abs(schedule.multiplier(step) - m) <= 1e-15 * m, `step ${step}: ${schedule.multiplier(step)} vs ${m}`));
    });
  }

  it('warm-up steps round up and the multiplier ends at 0', () => {
    assert.equal(warmupSteps(1000, 0.03), 30);
    assert.equal(warmupSteps(34, 0.03), 2);
    assert.equal(cosineSchedule(50, 0.03).multiplier(50), 0);
    assert.throws(() => warmupSteps(0, 0.03), /positive integer/);
  });
});

describe('stage presets', () => {
  it('match the manifest and take overrides', { skip }, () => {
    const stages = readJson<{ stages: Record<string, { llm_lr: number | null; mm_projector_lr: number; vision_encoder_lr: number; image_merge_size: number; video_merge_size: number; use_token_compression: boolean }> }>(
      path.join(fixtures!, 'training', 'manifest.json'),
    ).stages;
    for (const stage of [1, 2, 3, 4] as const) {
      const c = stageConfig(stage);
      const m = stages[String(stage)]!;
      assert.deepEqual(c.lr, { llm: m.llm_lr, projector: m.mm_projector_lr, vision: m.vision_encoder_lr });
      assert.deepEqual([c.imageMergeSize, c.videoMergeSize, c.useTokenCompression], [m.image_merge_size, m.video_merge_size, m.use_token_compression]);
    }
  });

  it('overrides replace single settings and can freeze or unfreeze a group', () => {
    const c = stageConfig(1, { lr: { llm: 2e-5, vision: null }, imageMergeSize: 2 });
    assert.deepEqual(c.lr, { llm: 2e-5, projector: 1e-3, vision: null });
    assert.equal(c.imageMergeSize, 2);
    assert.equal(stageConfig(1).lr.vision, 1e-5, 'the preset itself is untouched');
    assert.throws(() => stageConfig(2, { lr: { llm: -1 } }), /lr of the llm group/);
    assert.throws(() => stageConfig(5 as 1), /stage must be/);
    assert.equal(moduleGroupOf('model.vision_encoder.encoder.layers.0.mlp.fc1.weight'), 'vision');
    assert.equal(moduleGroupOf('model.mm_projector.readout.0.weight'), 'projector');
    assert.equal(moduleGroupOf('lm_head.weight'), 'llm');
  });

  it('trainable parameters of the tiny checkpoint: the stored gradients of each stage, and the README counts', { skip }, () => {
    const { params, names } = checkpointParams(fixtures!);
    const counts: Record<number, number> = {};
    for (const stage of [1, 2, 3, 4] as const) {
      const { groups, frozen } = trainableByGroup(names, stageConfig(stage));
      const trainable = groups.flatMap((g) => g.names);
      assert.equal(trainable.length + frozen.length, names.length);
      counts[stage] = trainable.reduce((n, name) => n + params.get(name)!.numel, 0);
      // Stage 2 is stored for d_video; every stage for e_packed_video_image.
      const file = new Golden(fixtures!, `samples/e_packed_video_image/stage${stage}.safetensors`);
      const stored = [...file.namesUnder('grad'), ...(file.has(`grad_rows/${EMBED}`) ? [EMBED] : [])];
      assert.deepEqual([...trainable].sort(), stored.sort(), `stage ${stage}`);
      file.close();
    }
    assert.deepEqual(counts, { 1: 43312, 2: 9841520, 3: 9841520, 4: 9841520 });
    assert.equal(trainableByGroup(names, stageConfig(2)).groups.flatMap((g) => g.names).length, 66);
  });
});

describe('gradient clipping by global norm', () => {
  it('scales by max_norm / (norm + 1e-6) only when the norm exceeds max_norm', () => {
    const grads = [Float32Array.from([3, 0]), Float32Array.from([0, 4])];
    const { norm, scale } = clipGradNorm(grads, 1);
    assert.equal(norm, 5);
    assert.equal(scale, Math.fround(1 / (5 + 1e-6)));
    assert.deepEqual([...grads[0]!, ...grads[1]!], [Math.fround(3 * scale), 0, 0, Math.fround(4 * scale)]);
    assert.ok(Math.abs(globalGradNorm(grads) - 1) < 1e-6);

    const small = [Float32Array.from([0.3, -0.4])];
    assert.deepEqual(clipGradNorm(small, 1), { norm: Math.hypot(Math.fround(0.3), Math.fround(0.4)), scale: 1 });
    assert.deepEqual([...small[0]!], [Math.fround(0.3), Math.fround(-0.4)]);
    assert.throws(() => clipGradNorm(small, 0), /max norm/);
  });

  it('the global norm of the stored gradients is the stored grad_global_norm', { skip }, () => {
    for (const [sample, stage] of [['b_image_caption', 1], ['d_video', 2], ['e_packed_video_image', 3]] as const) {
      const file = new Golden(fixtures!, `samples/${sample}/stage${stage}.safetensors`);
      const full = file.namesUnder('grad').map((n) => file.f32(`grad/${n}`).data);
      // The embedding's full gradient is not stored; its stored sum of squares stands in for it.
      const embed = file.has(`grad_sumsq/${EMBED}`) ? file.f64(`grad_sumsq/${EMBED}`)[0]! : 0;
      const norm = Math.sqrt(globalGradNorm(full) ** 2 + embed);
      const stored = file.f64('grad_global_norm')[0]!;
      assert.ok(Math.abs(norm - stored) <= 1e-6 * stored, `${sample} stage ${stage}: ${norm} vs ${stored}`);
      file.close();
    }
  });
});
