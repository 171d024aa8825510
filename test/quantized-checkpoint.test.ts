// Quantized weights end to end: loading with --weights quantizes at load, `vl3 quantize` writes a checkpoint that
// loads the same weights memory-mapped and answers the same, and checkpoints or options that disagree are refused,
// naming what is wrong.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { InvalidOptionError } from '../src/api/errors.js';
import { VideoLLaMA3 } from '../src/api/videollama3.js';
import { loadCheckpoint } from '../src/model/checkpoint.js';
import { CheckpointError } from '../src/model/errors.js';
import { writeQuantizedCheckpoint } from '../src/model/quantize-checkpoint.js';
import { SafetensorsFile, writeSafetensors } from '../src/model/safetensors.js';
import { FormattedWeights } from '../src/model/weight-formats.js';
import { checkpointWeightSpecs } from '../src/model/weight-names.js';
import type { Message } from '../src/processing/conversation.js';
import { QUANT_FORMATS } from '../src/tensor/dtype.js';
import { startsOnLine } from '../src/tensor/native.js';
import { Tensor } from '../src/tensor/tensor.js';
import { fixturesDir, FIXTURES_MISSING, repoRoot, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const vl3 = join(repoRoot(), 'dist', 'src', 'cli', 'vl3.js');
const greedy = { greedy: true, repetitionPenalty: 1, maxNewTokens: 16 } as const;
const question = (image: string): Message[] => [{ role: 'user', content: [{ type: 'image', image }, { type: 'text', text: 'What is in the picture?' }] }];

const bytesOf = (t: Tensor) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);

describe('quantized weights', { skip: !fixtures && FIXTURES_MISSING }, () => {
  const source = fixtures ? join(fixtures, TINY_CHECKPOINT) : '';
  const image = fixtures ? join(fixtures, 'media', 'cat.jpg') : '';
  let work: string;
  before(() => {
    work = mkdtempSync(join(tmpdir(), 'vl3-quant-'));
  });
  after(() => rmSync(work, { recursive: true, force: true }));

  for (const format of QUANT_FORMATS) {
    it(`${format}: vl3 quantize writes what a load quantizes, mapped, answering the same`, async () => {
      const out = join(work, format);
      const result = writeQuantizedCheckpoint({ from: source, out, formats: { language: format, vision: 'int8' } });
      assert.ok(result.quantized > 0 && result.bytesOut < result.bytesIn, JSON.stringify(result));
      const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
      assert.deepEqual(config['quantization_config'], { quant_method: 'vl3', format_version: 4, block_size: 32, language_model: format, vision_encoder: 'int8' });

      const written = loadCheckpoint(out);
      assert.ok(written.weights.store.files.every((f) => f.isMapped), 'a quantized checkpoint is memory-mapped');
      // Every mapped tensor that is a whole number of cache lines starts on one, in the file and in memory.
      for (const file of written.weights.store.files) {
        for (const name of file.names.filter((n) => file.info(n).byteLength % 64 === 0)) {
          assert.equal(file.info(name).fileOffset % 64, 0, name);
          const t = file.read(name);
          assert.ok(startsOnLine(t.data), `${name} in memory`);
        }
      }
      const fromFile = new FormattedWeights(written.weights, written.config.quantization);
      const original = loadCheckpoint(source);
      const atLoad = new FormattedWeights(original.weights, null, { language: format, vision: 'int8' });
      for (const spec of checkpointWeightSpecs(original.config)) {
        const a = fromFile.get(spec);
        const b = atLoad.get(spec);
        assert.equal(a.dtype, b.dtype, spec.name);
        assert.ok(bytesOf(a).equals(bytesOf(b)), spec.name);
      }
      assert.equal(atLoad.get(checkpointWeightSpecs(original.config).find((s) => s.name.endsWith('q_proj.weight'))!).dtype, format);

      const quantized = await VideoLLaMA3.load(out);
      const loadedAtRuntime = await VideoLLaMA3.load(source, { weights: format, visionWeights: 'int8' });
      try {
        assert.deepEqual(quantized.info.weights, { language: format, vision: 'int8' });
        const a = await quantized.chat(question(image), greedy).result;
        const b = await loadedAtRuntime.chat(question(image), greedy).result;
        assert.equal(a.text, b.text);
        assert.ok(a.usage.completionTokens > 0);
      } finally {
        await quantized.close();
        await loadedAtRuntime.close();
      }
    });
  }

  it('refuses a checkpoint whose tensors disagree with its quantization_config, naming the tensor', async () => {
    const out = join(work, 'liar');
    writeQuantizedCheckpoint({ from: source, out, formats: { language: 'int4', vision: 'bf16' } });
    const configPath = join(out, 'config.json');
    const config = JSON.parse(readFileSync(configPath, 'utf8')) as { quantization_config: Record<string, unknown> };
    config.quantization_config['language_model'] = 'int8';
    writeFileSync(configPath, JSON.stringify(config));
    await assert.rejects(
      VideoLLaMA3.load(out),
      (e: Error) => e instanceof CheckpointError && /tensor "model\.(embed_tokens|layers\.\d+\.[a-z_.]+)\.weight" is U8 .* int8/.test(e.message) && e.tensor !== undefined,
    );
    // A bf16 tensor where the config promises packed bytes.
    config.quantization_config['language_model'] = 'int4';
    writeFileSync(configPath, JSON.stringify(config));
    const file = SafetensorsFile.open(join(out, 'model.safetensors'));
    const tensors: Record<string, Tensor> = {};
    for (const name of file.names) tensors[name] = file.read(name);
    file.close();
    const name = 'model.layers.0.mlp.down_proj.weight';
    const [N] = tensors[name]!.shape as [number, number];
    const K = loadCheckpoint(source).config.intermediateSize;
    tensors[name] = Tensor.empty('bf16', [N, K]);
    writeSafetensors(join(out, 'model.safetensors'), tensors, { format: 'pt' });
    await assert.rejects(VideoLLaMA3.load(out), (e: Error) => e instanceof CheckpointError && e.message.includes(`"${name}" is BF16`) && e.tensor === name);
    // A checkpoint of an earlier packed layout (version 3: each row's codes apart) would load and answer wrongly: refused.
    config.quantization_config['format_version'] = 3;
    writeFileSync(configPath, JSON.stringify(config));
    await assert.rejects(VideoLLaMA3.load(out), (e: Error) => e instanceof CheckpointError && /format_version 3; this version of videollama3 reads 4; quantize the bf16 checkpoint again with `vl3 quantize`/.test(e.message));
  });

  it('refuses formats it cannot give, naming the option or variable', async () => {
    await assert.rejects(VideoLLaMA3.load(source, { weights: 'int3' as never }), (e: Error) => e instanceof InvalidOptionError && /weights must be one of bf16, int8, int4, int4m/.test(e.message));
    process.env['VL3_VISION_WEIGHTS'] = 'q4';
    try {
      await assert.rejects(VideoLLaMA3.load(source), (e: Error) => e instanceof InvalidOptionError && /\$VL3_VISION_WEIGHTS/.test(e.message));
    } finally {
      delete process.env['VL3_VISION_WEIGHTS'];
    }
    const out = join(work, 'int4-only');
    writeQuantizedCheckpoint({ from: source, out, formats: { language: 'int4', vision: 'bf16' } });
    await assert.rejects(VideoLLaMA3.load(out, { weights: 'int8' }), (e: Error) => e instanceof CheckpointError && /stores the language model weights as int4; they cannot be loaded as int8/.test(e.message));
    assert.throws(() => writeQuantizedCheckpoint({ from: out, out: join(work, 'again'), formats: { language: 'int8', vision: 'bf16' } }), /already quantized/);
    assert.throws(() => writeQuantizedCheckpoint({ from: source, out, formats: { language: 'int8', vision: 'bf16' } }), /not an empty folder/);
  });

  it('vl3 quantize and vl3 ask --weights from the command line', () => {
    const out = join(work, 'cli');
    const q = spawnSync(process.execPath, [vl3, 'quantize', '-m', source, '--weights', 'int8', '-o', out], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(q.status, 0, q.stderr);
    assert.match(q.stderr, /wrote .*cli: \d+ of \d+ tensors quantized \(language int8, vision bf16\)/);
    const ask = (model: string, env: NodeJS.ProcessEnv = {}) =>
      spawnSync(process.execPath, [vl3, 'ask', '-m', model, '--seed', '1', '--max-new-tokens', '8', '--image', image, 'What is this?'], {
        encoding: 'utf8',
        env: { ...process.env, ...env },
        timeout: 120_000,
      });
    const fromFile = ask(out);
    const fromVariable = ask(source, { VL3_WEIGHTS: 'int8' });
    const bf16 = ask(source);
    for (const r of [fromFile, fromVariable, bf16]) assert.equal(r.status, 0, r.stderr);
    assert.ok(fromFile.stdout.length > 0);
    assert.equal(fromFile.stdout, fromVariable.stdout);
    const flag = spawnSync(process.execPath, [vl3, 'ask', '-m', source, '--weights', 'int5', 'hi'], { encoding: 'utf8' });
    assert.equal(flag.status, 2);
    assert.match(flag.stderr, /Allowed choices are bf16, int8, int4, int4m/);
  });
});
