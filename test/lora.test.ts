// LoRA as the official `--lora_enable` path does it (fixtures/training README "LoRA"): the loss and the gradients of
// every adapter matrix and of the projector against PyTorch autograd, PEFT 0.4.0's adapter files, and adapters at
// inference (merged into the weights at load), through the API and the CLI.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { readModelConfig, type VideoLlama3Config } from '../src/model/config.js';
import { AdapterError } from '../src/model/errors.js';
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, loadAdapter, saveAdapter } from '../src/model/lora-adapter.js';
import { findAllLinearNames, linearModules, loraParameterName, mergeLoraPair, targetedModules, type LoraConfig, type LoraPair } from '../src/model/lora.js';
import { SafetensorsFile } from '../src/model/safetensors.js';
import { VideoLLaMA3Training, type TrainingLora } from '../src/model/videollama3-training.js';
import type { WeightSpec } from '../src/model/weight-names.js';
import { Rng } from '../src/engine/rng.js';
import { loadProcessorConfig } from '../src/processing/processor-config.js';
import { Tokenizer } from '../src/processing/tokenizer.js';
import { readAnnotationFile } from '../src/processing/training-annotation.js';
import { buildTrainingBatch } from '../src/processing/training-batch.js';
import { createBackend } from '../src/tensor/index.js';
import { Tensor } from '../src/tensor/tensor.js';
import { modelInputs, type ModelInputs } from '../src/train/model-inputs.js';
import { stageConfig, trainableByGroup } from '../src/train/stages.js';
import { fixturesDir, FIXTURES_MISSING, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const loraDir = () => join(fixtures!, 'training', 'lora');

/** max |a − b| ≤ 1e-3 · max |b| + 1e-8, the README's check for every gradient tensor. */
function assertGradClose(name: string, actual: Float32Array, expected: Float32Array): void {
  assert.equal(actual.length, expected.length, name);
  let maxRef = 0;
  let maxDiff = 0;
  for (let i = 0; i < expected.length; i++) {
    maxRef = Math.max(maxRef, Math.abs(expected[i]!));
    maxDiff = Math.max(maxDiff, Math.abs(actual[i]! - expected[i]!));
  }
  assert.ok(maxRef > 0, `${name}: the stored gradient is zero`);
  assert.ok(maxDiff <= 1e-3 * maxRef + 1e-8, `${name}: max |Δ| ${maxDiff.toExponential(3)} against max |g| ${maxRef.toExponential(3)}`);
}

const assertRelative = (what: string, actual: number, expected: number, tolerance = 1e-5) =>
  assert.ok(Math.abs(actual - expected) <= tolerance * Math.abs(expected), `${what}: ${actual} against ${expected}`);

describe('LoRA training against PyTorch autograd (fixtures/training/lora)', { skip: !fixtures && FIXTURES_MISSING }, () => {
  const checkpoint = fixtures ? join(fixtures, TINY_CHECKPOINT) : '';
  let config: VideoLlama3Config;
  let weights: SafetensorsFile;
  let golden: SafetensorsFile;
  let inputs: ModelInputs;
  let lora: LoraConfig;
  let initial: Map<string, LoraPair>;
  const stage = stageConfig(3, { lora: true });

  before(async () => {
    config = readModelConfig(join(checkpoint, 'config.json'));
    weights = SafetensorsFile.open(join(checkpoint, 'model.safetensors'));
    golden = SafetensorsFile.open(join(loraDir(), 'lora_stage3_grads.safetensors'));
    const tokenizer = await Tokenizer.load(checkpoint);
    const dir = join(fixtures!, 'training', 'samples', 'b_image_caption');
    const batch = await buildTrainingBatch(await readAnnotationFile(join(dir, 'annotation.json')), {
      tokenizer,
      processorConfig: await loadProcessorConfig(checkpoint),
      dataFolder: join(fixtures!, 'media'),
      mmMaxLength: 256,
      imageMergeSize: stage.imageMergeSize,
      videoMergeSize: stage.videoMergeSize,
      fps: 1,
      maxFrames: 180,
      modelMaxLength: 16384,
    });
    tokenizer.close();
    inputs = modelInputs(batch, { imageTokenId: config.imageTokenIndex, useTokenCompression: stage.useTokenCompression });
    // The fixture's settings: the official target list, r 8, alpha 16, no dropout; B ≠ 0 so that A gets gradients.
    lora = { r: 8, alpha: 16, dropout: 0, targetModules: findAllLinearNames(config) };
    initial = new Map(
      targetedModules(config, lora.targetModules).map((l) => [
        l.module,
        { a: golden.read(`init/${loraParameterName(l.module, 'A')}`) as Tensor<'f32'>, b: golden.read(`init/${loraParameterName(l.module, 'B')}`) as Tensor<'f32'> },
      ]),
    );
  });
  after(() => {
    weights?.close();
    golden?.close();
  });

  function model(withLora: TrainingLora | undefined, source = { get: (spec: WeightSpec) => weights.read(spec.name) }): VideoLLaMA3Training {
    const names = VideoLLaMA3Training.parameterNames(config, withLora?.config);
    const trainable = new Set(trainableByGroup(names, stage).groups.flatMap((g) => g.names));
    return new VideoLLaMA3Training(config, source, (name) => trainable.has(name), createBackend('native', { compute: 'exact' }), withLora);
  }

  it('adapts the 20 layers PEFT 0.4.0 adapts: 7 per decoder layer and the vision q/k/v', () => {
    assert.deepEqual(findAllLinearNames(config), ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']);
    const manifest = JSON.parse(fs.readFileSync(join(fixtures!, 'training', 'manifest.json'), 'utf8')) as { lora: { lora_modules: string[] } };
    assert.deepEqual(
      targetedModules(config, lora.targetModules).map((l) => l.module),
      manifest.lora.lora_modules,
    );
    // The trainable set: every A and B (LLM ones in the llm group, vision ones in the vision group) and the projector.
    const { groups } = trainableByGroup(VideoLLaMA3Training.parameterNames(config, lora), stage);
    const byGroup = Object.fromEntries(groups.map((g) => [g.group, g.names]));
    assert.equal(byGroup['llm']!.length, 28);
    assert.ok(byGroup['llm']!.every((n) => /^base_model\.model\.model\.layers\.\d+\..*\.lora_[AB]\.weight$/.test(n)));
    assert.equal(byGroup['vision']!.length, 12);
    assert.ok(byGroup['vision']!.every((n) => /^base_model\.model\.model\.vision_encoder\..*\.lora_[AB]\.weight$/.test(n)));
    assert.deepEqual(byGroup['projector']!.sort(), golden.names.filter((n) => n.startsWith('grad/model.mm_projector')).map((n) => n.slice(5)).sort());
  });

  it('the loss and the gradients of every A, B and of the projector', () => {
    const m = model({ config: lora, initial, random: () => assert.fail('no random numbers: A and B are given and dropout is 0') });
    const { supervised } = m.loss(inputs);
    const { lossSum } = m.step(inputs, 1 / supervised);
    assert.equal(supervised, Number((golden.read('num_items_in_batch').data as BigInt64Array)[0]));
    assertRelative('loss', lossSum / supervised, golden.readF64('loss').data[0]!);
    const expected = golden.names.filter((n) => n.startsWith('grad/')).map((n) => n.slice(5));
    assert.deepEqual([...m.gradients.keys()].sort(), [...expected].sort(), 'exactly the parameters PyTorch trains have gradients');
    for (const name of expected) assertGradClose(name, m.gradients.get(name)!.data, golden.read(`grad/${name}`).data as Float32Array);
  });

  it('the loss without the adapters, and with B·A merged into the weights', () => {
    const plain = model(undefined);
    const base = plain.loss(inputs);
    assertRelative('loss without LoRA', base.lossSum / base.supervised, golden.readF64('loss_without_lora').data[0]!);
    const scaling = lora.alpha / lora.r;
    const merger = createBackend('reference');
    const adapted = new Map(targetedModules(config, lora.targetModules).map((l) => [l.weight.name, initial.get(l.module)!]));
    // Merged in f32 (the fixture's model is the bf16 weights upcast): 12.0945616, the LoRA loss.
    const merged = model(undefined, {
      get: (spec: WeightSpec) => {
        const w = weights.read(spec.name);
        const pair = adapted.get(spec.name);
        return pair ? mergeLoraPair(Tensor.f32(w.shape, w.toFloat32()), pair, scaling, merger) : w;
      },
    });
    const result = merged.loss(inputs);
    assertRelative('loss with B·A merged', result.lossSum / result.supervised, golden.readF64('loss').data[0]!);
  });

  it('saves the adapter as PEFT 0.4.0 does: the fixture adapter_config.json and adapter_model.safetensors', () => {
    const m = model({ config: lora, initial, random: Math.random });
    const out = fs.mkdtempSync(join(tmpdir(), 'vl3-lora-'));
    try {
      saveAdapter(out, { config: lora, baseModel: 'VideoLLaMA3-2B-tiny-random', pairs: m.loraPairs });
      const ours = fs.readFileSync(join(out, ADAPTER_CONFIG_FILE), 'utf8');
      const theirs = fs.readFileSync(join(loraDir(), 'adapter', ADAPTER_CONFIG_FILE), 'utf8');
      assert.deepEqual(JSON.parse(ours), JSON.parse(theirs));
      // json.dumps(indent=2, sort_keys=True) exactly, down to 0.0 for a float and no final newline.
      assert.equal(ours, theirs);
      const saved = SafetensorsFile.open(join(out, ADAPTER_WEIGHTS_FILE));
      const reference = SafetensorsFile.open(join(loraDir(), 'adapter', ADAPTER_WEIGHTS_FILE));
      assert.deepEqual(saved.metadata, { format: 'pt' });
      assert.deepEqual([...saved.names].sort(), [...reference.names].sort());
      for (const name of reference.names) {
        const a = saved.read(name);
        const b = reference.read(name);
        assert.equal(a.dtype, 'f32', name);
        assert.deepEqual(a.shape, b.shape, name);
        assert.deepEqual(a.data, b.data, name);
      }
      saved.close();
      reference.close();
      // And it reads back as the fixture's adapter does.
      const back = loadAdapter(out, config);
      assert.deepEqual(back.config, lora);
      assert.equal(back.baseModel, 'VideoLLaMA3-2B-tiny-random');
    } finally {
      fs.rmSync(out, { recursive: true, force: true });
    }
  });

  it('dropout: seeded, in training steps only, and masking the adapter input', () => {
    const withDropout = { ...lora, dropout: 0.5 };
    const run = (seed: number) => {
      const rng = new Rng(seed);
      const m = model({ config: withDropout, initial, random: () => rng.next() });
      const evalLoss = m.loss(inputs).lossSum;
      const { lossSum } = m.step(inputs, 1);
      return { evalLoss, lossSum, grad: m.gradients.get(loraParameterName('model.layers.0.self_attn.q_proj', 'A'))!.data };
    };
    const a = run(1);
    const b = run(1);
    const c = run(2);
    assert.equal(a.lossSum, b.lossSum, 'the same seed gives the same masks');
    assert.deepEqual(a.grad, b.grad);
    assert.notEqual(a.lossSum, c.lossSum, 'another seed, other masks');
    // Evaluation has no dropout: the fixture's LoRA loss.
    assertRelative('eval loss', a.evalLoss / Number((golden.read('num_items_in_batch').data as BigInt64Array)[0]), golden.readF64('loss').data[0]!);
    assert.notEqual(a.lossSum, a.evalLoss);
  });

  it('starts from PEFT initial values when none are given: B = 0, so the loss is the base model\'s', () => {
    const rng = new Rng(7);
    const m = model({ config: lora, random: () => rng.next() });
    const base = m.loss(inputs);
    assertRelative('loss of a fresh adapter', base.lossSum / base.supervised, golden.readF64('loss_without_lora').data[0]!);
    for (const layer of linearModules(config).filter((l) => m.loraPairs.has(l.module))) {
      const { a, b } = m.loraPairs.get(layer.module)!;
      assert.ok(b.data.every((v) => v === 0), `${layer.module}: B starts at 0`);
      const bound = 1 / Math.sqrt(layer.inFeatures);
      assert.ok(a.data.every((v) => Math.abs(v) <= bound) && a.data.some((v) => v !== 0), `${layer.module}: A uniform in ±1/√in`);
    }
  });
});
