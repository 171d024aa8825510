// LoRA as the official `--lora_enable` path does it (fixtures/training README "LoRA"): the loss and the gradients of
// every adapter matrix and of the projector against PyTorch autograd, PEFT 0.4.0's adapter files, and adapters at
// inference (merged into the weights at load), through the API and the CLI.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ModelWorker } from '../src/api/model-worker.js';
import { VideoLLaMA3 } from '../src/api/videollama3.js';
import { KVCache } from '../src/engine/kv-cache.js';
import { readModelConfig, type VideoLlama3Config } from '../src/model/config.js';
import { AdapterError } from '../src/model/errors.js';
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, loadAdapter, saveAdapter } from '../src/model/lora-adapter.js';
import { findAllLinearNames, linearModules, loraParameterName, mergeLoraPair, targetedModules, type LoraConfig, type LoraPair } from '../src/model/lora.js';
import { SafetensorsFile, writeSafetensors } from '../src/model/safetensors.js';
import { VideoLLaMA3Training, type TrainingLora } from '../src/model/videollama3-training.js';
import type { WeightSpec } from '../src/model/weight-names.js';
import { Rng } from '../src/engine/rng.js';
import { loadProcessorConfig } from '../src/processing/processor-config.js';
import { Tokenizer } from '../src/processing/tokenizer.js';
import { f32ToBf16 } from '../src/tensor/dtype.js';
import { createBackend } from '../src/tensor/index.js';
import { quantizeNative } from '../src/tensor/native.js';
import { Tensor } from '../src/tensor/tensor.js';
import type { ModelInputs } from '../src/train/model-inputs.js';
import { stageConfig, trainableByGroup } from '../src/train/stages.js';
import { fixturesDir, FIXTURES_MISSING, repoRoot, TINY_CHECKPOINT } from './fixtures.js';
import { assertGradClose, fixtureInputs } from './train-fixtures.js';

const fixtures = fixturesDir();
const loraDir = () => join(fixtures!, 'training', 'lora');

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
    inputs = await fixtureInputs(fixtures!, 'b_image_caption', stage, { tokenizer, processorConfig: await loadProcessorConfig(checkpoint), imageTokenId: config.imageTokenIndex });
    tokenizer.close();
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
    for (const name of expected) assertGradClose(name, m.gradients.get(name)!.data, golden.read(`grad/${name}`).data as Float32Array, true);
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

describe('LoRA adapters at inference: merged into the weights at load', { skip: !fixtures && FIXTURES_MISSING }, () => {
  const checkpoint = fixtures ? join(fixtures, TINY_CHECKPOINT) : '';
  const adapterDir = () => join(loraDir(), 'adapter');
  const vl3 = join(repoRoot(), 'dist', 'src', 'cli', 'vl3.js');
  const run = (args: string[], env: NodeJS.ProcessEnv = {}) =>
    spawnSync(process.execPath, [vl3, ...args], { encoding: 'utf8', env: { ...process.env, VL3_ADAPTER: undefined, ...env }, timeout: 120_000 });
  const image = () => join(fixtures!, 'media', 'cat.jpg');
  let work: string;
  /** The tiny checkpoint with W + 2·B·A merged by hand (f32 sums, rounded to bf16), written as a checkpoint folder. */
  let handMerged: string;
  let config: VideoLlama3Config;

  before(() => {
    work = fs.mkdtempSync(join(tmpdir(), 'vl3-lora-infer-'));
    config = readModelConfig(join(checkpoint, 'config.json'));
    handMerged = join(work, 'hand-merged');
    fs.mkdirSync(handMerged);
    for (const f of fs.readdirSync(checkpoint)) if (f !== 'model.safetensors') fs.copyFileSync(join(checkpoint, f), join(handMerged, f));
    const adapter = SafetensorsFile.open(join(adapterDir(), ADAPTER_WEIGHTS_FILE));
    const base = SafetensorsFile.open(join(checkpoint, 'model.safetensors'));
    const tensors: Record<string, Tensor> = {};
    for (const name of base.names) {
      const w = base.read(name);
      const module = name.slice(0, -'.weight'.length);
      if (!adapter.has(loraParameterName(module, 'A'))) {
        tensors[name] = w;
        continue;
      }
      const A = adapter.read(loraParameterName(module, 'A')).data as Float32Array;
      const B = adapter.read(loraParameterName(module, 'B')).data as Float32Array;
      const [out, inF] = w.shape as [number, number];
      const r = A.length / inF;
      const merged = Tensor.empty('bf16', w.shape);
      const wf = w.toFloat32();
      for (let o = 0; o < out; o++)
        for (let i = 0; i < inF; i++) {
          let sum = 0;
          for (let k = 0; k < r; k++) sum = Math.fround(sum + Math.fround(B[o * r + k]! * A[k * inF + i]!));
          merged.data[o * inF + i] = f32ToBf16(Math.fround(wf[o * inF + i]! + Math.fround(2 * sum)));
        }
      tensors[name] = merged;
    }
    writeSafetensors(join(handMerged, 'model.safetensors'), tensors, { format: 'pt' });
    adapter.close();
    base.close();
  });
  after(() => fs.rmSync(work, { recursive: true, force: true }));

  /** Every bf16 value of `actual` equals `expected` or is its bf16 neighbour (f32 sums in another order), most equal. */
  function assertMergedClose(name: string, actual: Uint16Array, expected: Uint16Array): number {
    assert.equal(actual.length, expected.length, name);
    let differ = 0;
    for (let i = 0; i < actual.length; i++) {
      if (actual[i] === expected[i]) continue;
      differ++;
      assert.ok(Math.abs(actual[i]! - expected[i]!) === 1, `${name}[${i}]: ${actual[i]} against ${expected[i]} (bf16 bits)`);
    }
    assert.ok(differ <= actual.length * 1e-3, `${name}: ${differ} of ${actual.length} values differ in their last bit`);
    return differ;
  }

  async function lastLogits(model: VideoLLaMA3): Promise<Float32Array> {
    const request = await model.prepare([{ role: 'user', content: [{ type: 'image', image: image() }, { type: 'text', text: 'What is this?' }] }]);
    const d = model.config;
    const backend = model.model.backend;
    const cache = new KVCache(backend, d.numHiddenLayers, d.numKeyValueHeads, model.model.llm.headDim, d.maxPositionEmbeddings);
    const hidden = model.model.llm.forward(model.embed(request), cache);
    const L = hidden.dim(0);
    return Float32Array.from(backend.download(model.model.llm.logits(hidden.rows(L - 1, L))).data as Float32Array);
  }

  it('a model loaded with the adapter has the hand-merged weights and gives the same logits', async (t) => {
    const options = { backend: 'reference' as const, featureCacheBytes: 0, prefixCacheBytes: 0 };
    const adapted = await VideoLLaMA3.load(checkpoint, { ...options, adapter: adapterDir() });
    const merged = await VideoLLaMA3.load(handMerged, options);
    const plain = await VideoLLaMA3.load(checkpoint, options);
    const expected = SafetensorsFile.open(join(handMerged, 'model.safetensors'));
    const modules = targetedModules(config, findAllLinearNames(config));
    let differ = 0;
    for (const l of modules) differ += assertMergedClose(l.module, adapted.model.weights.get(l.weight).data as Uint16Array, expected.read(l.weight.name).data as Uint16Array);
    expected.close();
    t.diagnostic(`${differ} merged values differ from the hand merge in their last bf16 bit`);
    const [a, m, p] = [await lastLogits(adapted), await lastLogits(merged), await lastLogits(plain)];
    const scale = m.reduce((w, v) => Math.max(w, Math.abs(v)), 0);
    const worst = (x: Float32Array, y: Float32Array) => x.reduce((w, v, i) => Math.max(w, Math.abs(v - y[i]!)), 0);
    t.diagnostic(`logits: max |adapter − hand-merged| ${worst(a, m).toExponential(2)}, max |adapter − base| ${worst(a, p).toExponential(2)}, max |logit| ${scale.toFixed(3)}`);
    assert.ok(worst(a, m) <= 1e-5 * scale, `adapter vs hand-merged logits: ${worst(a, m)}`);
    assert.ok(worst(p, m) > 1e-3 * scale, 'the adapter changes the logits');
    await Promise.all([adapted.close(), merged.close(), plain.close()]);
  });

  it('quantized loads quantize the merged weight; VL3_ADAPTER is the default; ModelWorker takes the option', async () => {
    const q = await VideoLLaMA3.load(checkpoint, { backend: 'reference', weights: 'int8', adapter: adapterDir(), featureCacheBytes: 0, prefixCacheBytes: 0 });
    const expected = SafetensorsFile.open(join(handMerged, 'model.safetensors'));
    const q0 = targetedModules(config, ['model.layers.0.mlp.down_proj'])[0]!;
    const ours = q.model.weights.get(q0.weight);
    assert.equal(ours.dtype, 'int8');
    const reference = quantizeNative('int8', expected.read(q0.weight.name));
    const differing = (ours.data as Uint8Array).reduce((n, v, i) => n + (v === reference[i] ? 0 : 1), 0);
    assert.ok(differing <= reference.length * 1e-3, `${differing} of ${reference.length} bytes differ from the quantized hand merge`);
    expected.close();
    await q.close();

    const options = { greedy: true, maxNewTokens: 8 };
    const input = [{ role: 'user' as const, content: [{ type: 'image' as const, image: image() }, { type: 'text' as const, text: 'Describe it.' }] }];
    const merged = await VideoLLaMA3.load(handMerged, { featureCacheBytes: 0, prefixCacheBytes: 0 });
    const want = (await merged.chat(input, options).result).tokenIds;
    await merged.close();
    process.env.VL3_ADAPTER = adapterDir();
    try {
      const fromEnv = await VideoLLaMA3.load(checkpoint, { featureCacheBytes: 0, prefixCacheBytes: 0 });
      assert.deepEqual((await fromEnv.chat(input, options).result).tokenIds, want);
      await fromEnv.close();
    } finally {
      delete process.env.VL3_ADAPTER;
    }
    const worker = await ModelWorker.load(checkpoint, { adapter: adapterDir(), featureCacheBytes: 0, prefixCacheBytes: 0 });
    try {
      assert.deepEqual((await worker.chat(input, options).result).tokenIds, want);
    } finally {
      await worker.close();
    }
  });

  it('vl3 merge-adapter writes the merged checkpoint; ask --adapter (and VL3_ADAPTER) answers as it does', () => {
    const out = join(work, 'merged-by-cli');
    const r = run(['merge-adapter', '--model', checkpoint, '--adapter', adapterDir(), '--out', out]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /adapter merged into 20 of \d+ tensors/);
    assert.deepEqual(fs.readdirSync(out).sort(), fs.readdirSync(checkpoint).sort());
    assert.equal(fs.readFileSync(join(out, 'config.json'), 'utf8'), fs.readFileSync(join(checkpoint, 'config.json'), 'utf8'));
    const written = SafetensorsFile.open(join(out, 'model.safetensors'));
    const expected = SafetensorsFile.open(join(handMerged, 'model.safetensors'));
    assert.deepEqual([...written.names].sort(), [...expected.names].sort());
    let adapted = 0;
    for (const name of expected.names) {
      const a = written.read(name);
      const e = expected.read(name);
      assert.equal(a.dtype, e.dtype, name);
      if (name.endsWith('.weight') && targetedModules(config, findAllLinearNames(config)).some((l) => l.weight.name === name)) {
        adapted++;
        assertMergedClose(name, a.data as Uint16Array, e.data as Uint16Array);
      } else {
        assert.deepEqual(a.data, e.data, name);
      }
    }
    assert.equal(adapted, 20);
    written.close();
    expected.close();

    const ask = (args: string[], env: NodeJS.ProcessEnv = {}) => {
      const res = run(['ask', '--greedy', '--max-new-tokens', '8', '--json', '--image', image(), ...args, 'Describe it.'], env);
      assert.equal(res.status, 0, res.stderr);
      return (JSON.parse(res.stdout) as { tokenIds: number[] }).tokenIds;
    };
    const fromMerged = ask(['--model', out]);
    assert.deepEqual(ask(['--model', checkpoint, '--adapter', adapterDir()]), fromMerged);
    assert.deepEqual(ask(['--model', checkpoint], { VL3_ADAPTER: adapterDir() }), fromMerged);
    for (const command of ['ask', 'chat', 'serve', 'merge-adapter']) {
      const help = run([command, '--help']);
      assert.ok(help.stdout.includes('--adapter <dir>') && help.stdout.includes('VL3_ADAPTER'), `${command} --help: ${help.stdout}`);
    }
  });

  describe('refuses an adapter that does not fit, naming the file and the module', () => {
    /** A copy of the fixture adapter, with its config and tensors changed by `edit`. */
    function variant(name: string, edit: { config?: (c: Record<string, unknown>) => void; tensors?: (t: Record<string, Tensor>) => void; drop?: string }): string {
      const dir = join(work, name);
      fs.mkdirSync(dir);
      const c = JSON.parse(fs.readFileSync(join(adapterDir(), ADAPTER_CONFIG_FILE), 'utf8')) as Record<string, unknown>;
      edit.config?.(c);
      fs.writeFileSync(join(dir, ADAPTER_CONFIG_FILE), JSON.stringify(c));
      const file = SafetensorsFile.open(join(adapterDir(), ADAPTER_WEIGHTS_FILE));
      const tensors = Object.fromEntries(file.names.map((n) => [n, file.read(n)]));
      file.close();
      edit.tensors?.(tensors);
      writeSafetensors(join(dir, ADAPTER_WEIGHTS_FILE), tensors, { format: 'pt' });
      if (edit.drop) fs.rmSync(join(dir, edit.drop));
      return dir;
    }
    const refused = (dir: string, message: RegExp, file: string, module?: string) => {
      assert.throws(
        () => loadAdapter(dir, config),
        (e: unknown) => e instanceof AdapterError && message.test(e.message) && e.file === join(dir, file) && e.module === module,
      );
    };

    it('a missing file', () => {
      const dir = variant('missing', { drop: ADAPTER_WEIGHTS_FILE });
      refused(dir, /adapter_model\.safetensors not found/, ADAPTER_WEIGHTS_FILE);
      assert.throws(() => loadAdapter(join(work, 'nowhere'), config), /not a directory/);
      const r = run(['ask', '--model', checkpoint, '--adapter', dir, 'hi']);
      assert.equal(r.status, 1);
      assert.match(r.stderr, /^vl3: adapter .*missing: adapter_model\.safetensors not found/m);
    });

    it('a module the model does not have, or that target_modules do not select', () => {
      const q = loraParameterName('model.layers.0.self_attn.q_proj', 'A');
      const extra = variant('extra-layer', { tensors: (t) => (t[q.replace('layers.0', 'layers.5')] = t[q]!) });
      refused(extra, /module model\.layers\.5\.self_attn\.q_proj is not a linear layer of this model/, ADAPTER_WEIGHTS_FILE, 'model.layers.5.self_attn.q_proj');
      const narrower = variant('narrower', { config: (c) => (c['target_modules'] = ['q_proj', 'k_proj', 'v_proj', 'o_proj']) });
      refused(narrower, /module model\.layers\.0\.mlp\.down_proj has an adapter, but target_modules/, ADAPTER_WEIGHTS_FILE, 'model.layers.0.mlp.down_proj');
      const head = variant('head', { config: (c) => (c['target_modules'] = ['lm_head']) });
      refused(head, /select lm_head/, ADAPTER_CONFIG_FILE, 'lm_head');
      const lacking = variant('lacking', { tensors: (t) => delete t[loraParameterName('model.vision_encoder.encoder.layers.1.self_attn.v_proj', 'B')] });
      refused(lacking, /no lora_B for module model\.vision_encoder\.encoder\.layers\.1\.self_attn\.v_proj/, ADAPTER_WEIGHTS_FILE, 'model.vision_encoder.encoder.layers.1.self_attn.v_proj');
    });

    it('a wrong r, and settings this port does not implement', () => {
      refused(variant('r4', { config: (c) => (c['r'] = 4) }), /module model\.layers\.0\.mlp\.down_proj: lora_A is \[8, 128\], expected \[4, 128\] for r 4/, ADAPTER_WEIGHTS_FILE, 'model.layers.0.mlp.down_proj');
      refused(variant('bias', { config: (c) => (c['bias'] = 'all') }), /bias is "all", which this port does not implement/, ADAPTER_CONFIG_FILE);
      refused(variant('prefix', { config: (c) => (c['peft_type'] = 'PREFIX_TUNING') }), /peft_type is "PREFIX_TUNING"/, ADAPTER_CONFIG_FILE);
    });

    it('accepts the official training run\'s vision_encoder.vision_encoder naming', () => {
      const dir = variant('training-names', {
        tensors: (t) => {
          for (const name of Object.keys(t)) {
            if (!name.includes('vision_encoder')) continue;
            t[name.replace('model.vision_encoder.', 'model.vision_encoder.vision_encoder.')] = t[name]!;
            delete t[name];
          }
        },
      });
      const loaded = loadAdapter(dir, config);
      const reference = loadAdapter(adapterDir(), config);
      assert.deepEqual([...loaded.pairs.keys()].sort(), [...reference.pairs.keys()].sort());
      for (const [module, pair] of reference.pairs) assert.deepEqual(loaded.pairs.get(module)!.a.data, pair.a.data);
    });

    it('a quantized checkpoint: the adapter merges into its bf16 source', async () => {
      const quantized = join(work, 'int8');
      const r = run(['quantize', '--model', checkpoint, '--weights', 'int8', '--out', quantized]);
      assert.equal(r.status, 0, r.stderr);
      await assert.rejects(VideoLLaMA3.load(quantized, { adapter: adapterDir() }), (e: unknown) => e instanceof AdapterError && /stores that part as int8/.test(e.message) && e.module === 'model.layers.0.mlp.down_proj');
      const merge = run(['merge-adapter', '--model', quantized, '--adapter', adapterDir(), '--out', join(work, 'never')]);
      assert.equal(merge.status, 1);
      assert.match(merge.stderr, /is quantized \(int8\/bf16\): merge the adapter into its bf16 source/);
      assert.ok(!fs.existsSync(join(work, 'never')));
    });
  });
});
