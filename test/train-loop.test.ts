// The training loop and `vl3 train`: a run interrupted and resumed ends with the same bytes as one that was not,
// checkpoints load for inference, changed settings are refused on resume, and Ctrl-C through the real command saves
// the last whole step and exits 130.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { VideoLLaMA3 } from '../src/api/videollama3.js';
import { loadCheckpoint } from '../src/model/checkpoint.js';
import { adapterMerge, loadAdapter } from '../src/model/lora-adapter.js';
import { writeMergedCheckpoint } from '../src/model/merge-adapter.js';
import { FormattedWeights } from '../src/model/weight-formats.js';
import { SafetensorsFile } from '../src/model/safetensors.js';
import { checkpointWeightSpecs } from '../src/model/weight-names.js';
import { bf16ToF32, f32ToBf16 } from '../src/tensor/dtype.js';
import { createBackend } from '../src/tensor/index.js';
import { train, TRAIN_LOG, type StepLog, type TrainOptions } from '../src/train/trainer.js';
import { fixturesDir, FIXTURES_MISSING, repoRoot, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const vl3 = join(repoRoot(), 'dist', 'src', 'cli', 'vl3.js');

describe('the training loop', { skip: !fixtures && FIXTURES_MISSING }, () => {
  let dir: string;
  let data: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'vl3-train-'));
    // Three fixture samples: text only, one image, two images.
    const samples = ['a_text_two_turns', 'b_image_caption', 'c_two_images'].flatMap(
      (s) => JSON.parse(readFileSync(join(fixtures!, 'training', 'samples', s, 'annotation.json'), 'utf8')) as unknown[],
    );
    data = join(dir, 'train.json');
    writeFileSync(data, JSON.stringify(samples));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const options = (outputDir: string, extra: Partial<TrainOptions> = {}): TrainOptions => ({
    stage: 3,
    dataFile: data,
    dataFolder: join(fixtures!, 'media'),
    modelDir: join(fixtures!, TINY_CHECKPOINT),
    outputDir,
    backend: createBackend('native', { compute: 'exact' }),
    mmMaxLength: 256,
    gradAccum: 2,
    epochs: 2,
    ...extra,
  });

  it('resumes an interrupted run to the same model, optimizer state and log as an uninterrupted one', async () => {
    const whole = join(dir, 'whole');
    const steps: StepLog[] = [];
    const done = await train(options(whole, { onStep: (s) => steps.push(s) }));
    // 3 samples, 2 micro-batches per step: 2 steps per epoch, the second with the odd micro-batch alone.
    assert.deepEqual([done.steps, done.interrupted, steps.length], [4, false, 4]);
    assert.equal(steps[0]!.lr.llm, 0, 'the first step runs at multiplier 0, as LambdaLR gives it');

    const split = join(dir, 'split');
    const stop = new AbortController();
    const first = await train(options(split, { signal: stop.signal, onStep: (s) => s.step === 2 && stop.abort() }));
    assert.deepEqual([first.steps, first.interrupted], [2, true]);
    assert.ok(existsSync(join(split, 'checkpoint-2', 'optimizer.safetensors')));
    const second = await train(options(split, { resume: true }));
    assert.deepEqual([second.steps, second.interrupted], [4, false]);

    const bytes = (path: string) => readFileSync(path);
    assert.ok(bytes(join(whole, 'model.safetensors')).equals(bytes(join(split, 'model.safetensors'))), 'the final models differ');
    assert.ok(bytes(join(whole, 'checkpoint-4', 'optimizer.safetensors')).equals(bytes(join(split, 'checkpoint-4', 'optimizer.safetensors'))), 'the optimizer states differ');
    const losses = (out: string) => readFileSync(join(out, TRAIN_LOG), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as StepLog).loss);
    assert.deepEqual(losses(split), losses(whole));
    assert.notEqual(bytes(join(whole, 'model.safetensors')).compare(bytes(join(fixtures!, TINY_CHECKPOINT, 'model.safetensors'))), 0, 'training changed the weights');

    // What the official code's from_pretrained reads is as the source checkpoint has it: every tensor under its name,
    // shape and dtype (bf16), and the same config and processor files, so it loads the trained model as it loads that.
    const layout = (dir: string) => {
      const f = SafetensorsFile.open(join(dir, 'model.safetensors'));
      const entries = [...f.names].sort().map((n) => [n, f.info(n).dtype, f.info(n).shape.join('×')].join(' '));
      f.close();
      return entries;
    };
    assert.deepEqual(layout(whole), layout(join(fixtures!, TINY_CHECKPOINT)));
    for (const file of ['config.json', 'generation_config.json', 'preprocessor_config.json', 'processor_config.json', 'tokenizer_config.json', 'chat_template.json']) {
      assert.ok(bytes(join(whole, file)).equals(bytes(join(fixtures!, TINY_CHECKPOINT, file))), `${file} is the source's`);
    }

    // The trained model is a checkpoint like any other.
    const model = await VideoLLaMA3.load(whole);
    const answer = await model.chat([{ role: 'user', content: 'Hello.' }], { greedy: true, maxNewTokens: 3 }).result;
    assert.equal(answer.tokenIds.length, 3);
    await model.close();

    // A resume with other settings would not continue the same run.
    await assert.rejects(train(options(split, { resume: true, gradAccum: 1 })), /written by a run with other settings/);
    await assert.rejects(train(options(join(dir, 'none'), { resume: true })), /no checkpoint-<step> folder/);
  });

  it('trains a LoRA adapter and the projector; --adapter loads the projector; resumes exactly without dropout', async () => {
    const lora = { r: 4, alpha: 8, dropout: 0 };
    const whole = join(dir, 'lora-whole');
    const done = await train(options(whole, { lora, stageOptions: { lr: { llm: 1e-3, projector: 1e-3, vision: 1e-3 } } }));
    assert.equal(done.steps, 4);
    for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'non_lora_trainables.safetensors']) assert.ok(existsSync(join(whole, f)), f);
    assert.ok(!existsSync(join(whole, 'model.safetensors')), 'a LoRA run writes no whole model');

    const split = join(dir, 'lora-split');
    const stop = new AbortController();
    const base = { lora, stageOptions: { lr: { llm: 1e-3, projector: 1e-3, vision: 1e-3 } } };
    await train(options(split, { ...base, signal: stop.signal, onStep: (s) => s.step === 1 && stop.abort() }));
    await train(options(split, { ...base, resume: true }));
    for (const f of ['adapter_model.safetensors', 'non_lora_trainables.safetensors']) {
      assert.ok(readFileSync(join(whole, f)).equals(readFileSync(join(split, f))), `${f} differs after a resume`);
    }

    // --adapter: the adapted weights are W + scaling·B·A, and the projector is the run's (rounded to bf16 as stored).
    const checkpoint = loadCheckpoint(join(fixtures!, TINY_CHECKPOINT));
    const adapter = loadAdapter(whole, checkpoint.config);
    assert.ok(adapter.replacements?.has('model.mm_projector.readout.0.weight'));
    const merge = adapterMerge(adapter, whole, createBackend('native', { compute: 'exact' }));
    const weights = new FormattedWeights(checkpoint.weights, null, {}, merge);
    const spec = (name: string) => checkpointWeightSpecs(checkpoint.config).find((s) => s.name === name)!;
    const projector = weights.get(spec('model.mm_projector.readout.0.weight'));
    const trained = adapter.replacements!.get('model.mm_projector.readout.0.weight')!.toFloat32();
    assert.deepEqual(Array.from(projector.toFloat32()), Array.from(trained, (v) => bf16ToF32(f32ToBf16(v))));
    const original = checkpoint.weights.get('model.mm_projector.readout.0.weight').toFloat32();
    assert.notDeepEqual(Array.from(projector.toFloat32()), Array.from(original), 'the run changed the projector');
    checkpoint.weights.close();

    // vl3 merge-adapter writes the same projector into the merged checkpoint.
    const merged = join(dir, 'lora-merged');
    writeMergedCheckpoint({ from: join(fixtures!, TINY_CHECKPOINT), adapter: whole, out: merged });
    const written = loadCheckpoint(merged);
    assert.deepEqual(Array.from(written.weights.get('model.mm_projector.readout.0.weight').toFloat32()), Array.from(projector.toFloat32()));
    written.weights.close();
  });

  it('vl3 train: Ctrl-C saves the last whole step and exits 130; --resume finishes the run', async () => {
    const out = join(dir, 'cli');
    const args = ['train', '--stage', '3', '--data', data, '--data-folder', join(fixtures!, 'media'), '--model', join(fixtures!, TINY_CHECKPOINT), '--output', out, '--mm-max-length', '256', '--grad-accum', '2', '--epochs', '2'];
    const interrupted = await new Promise<{ status: number | null; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, [vl3, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        // Not a terminal: one line per step. Interrupt once the first step is done.
        if (/step 1\/4/.test(stderr) && !child.killed) child.kill('SIGINT');
      });
      child.once('exit', (status) => resolve({ status, stderr }));
    });
    assert.equal(interrupted.status, 130, interrupted.stderr);
    assert.match(interrupted.stderr, /saved .*checkpoint-\d+; continue with --resume/);
    const resumed = await new Promise<{ status: number | null; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, [vl3, ...args, '--resume'], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.once('exit', (status) => resolve({ status, stderr }));
    });
    assert.equal(resumed.status, 0, resumed.stderr);
    assert.match(resumed.stderr, /resuming after step \d/);
    assert.match(resumed.stderr, /trained 4 steps/);
    assert.ok(existsSync(join(out, 'model.safetensors')));
  });
});
