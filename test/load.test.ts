// Loading a model: options checked at load in their own names, every weight checked against the config before the
// first request, the assumptions a loader makes said once, progress while the weights are read, and per-request
// budgets refused where they are given.
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { InvalidOptionError, InvalidRequestError } from '../src/api/errors.js';
import { ModelWorker } from '../src/api/model-worker.js';
import { VideoLLaMA3, type LoadOptions, type LoadProgressEvent } from '../src/api/videollama3.js';
import { CheckpointError } from '../src/model/errors.js';
import { decoderWeights, flattenSpecs } from '../src/model/weight-names.js';
import { loadCheckpoint } from '../src/model/checkpoint.js';
import { nativeInfo, type Isa } from '../src/tensor/native.js';
import { fixturesDir, FIXTURES_MISSING, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();

describe('loading a model', { skip: !fixtures && FIXTURES_MISSING }, () => {
  const tiny = fixtures ? join(fixtures, TINY_CHECKPOINT) : '';
  let scratch: string;

  /** A copy of the tiny checkpoint (weights linked) with `edit` applied to its files. */
  const variant = (name: string, edit: (dir: string) => void): string => {
    const dir = join(scratch, name);
    copyTree(tiny, dir);
    edit(dir);
    return dir;
  };
  const copyTree = (from: string, to: string) => {
    rmSync(to, { recursive: true, force: true });
    mkdirSync(to, { recursive: true });
    for (const file of readdirSync(from)) {
      if (file.endsWith('.safetensors')) symlinkSync(join(from, file), join(to, file));
      else copyFileSync(join(from, file), join(to, file));
    }
  };

  before(() => {
    scratch = mkdtempSync(join(tmpdir(), 'vl3-load-'));
  });
  after(() => rmSync(scratch, { recursive: true, force: true }));

  it('refuses bad options in their own names, before reading anything', async () => {
    // A kernel tier of the other architecture: never available here.
    const foreignTier: Isa = process.arch === 'arm64' ? 'avx2' : 'neon';
    const cases: [LoadOptions, string, RegExp][] = [
      [{ maxVisualTokens: -5 }, 'maxVisualTokens', /maxVisualTokens must be an integer >= 1, got -5/],
      [{ fps: -3 }, 'fps', /fps must be a number > 0, got -3/],
      [{ fps: Number.NaN }, 'fps', /got NaN/],
      [{ minVisualTokens: 1e9 }, 'minVisualTokens', /minVisualTokens \(1000000000\) must not exceed maxVisualTokens \(16384\)/],
      [{ maxVisualTokens: 1e9 }, 'maxVisualTokens', /at most the model's context of 32768 tokens, got 1000000000/],
      [{ maxFrames: 1.5 }, 'maxFrames', /maxFrames must be an integer >= 1, got 1\.5/],
      [{ threads: 0 }, 'threads', /threads must be an integer >= 1, got 0/],
      [{ maxActiveRequests: 0 }, 'maxActiveRequests', /maxActiveRequests must be an integer >= 1/],
      [{ maxImagePixels: Infinity }, 'maxImagePixels', /got Infinity/],
      [{ compute: 'fast' as never }, 'compute', /compute must be 'exact' or 'bf16', got the string "fast"/],
      [{ isa: foreignTier }, 'isa', new RegExp(`isa '${foreignTier}' is not available: this CPU lacks`)],
      [{ backend: 'gpu' as never }, 'backend', /backend must be 'native', 'reference', 'webgpu' or a Backend, got the string "gpu"/],
      [{ device: 'gpu' as never }, 'device', /device must be one of cpu, webgpu, auto, got the string "gpu"/],
    ];
    for (const [options, option, message] of cases) {
      await assert.rejects(VideoLLaMA3.load(tiny, options), (e: unknown) => {
        assert.ok(e instanceof InvalidOptionError, `${option}: ${String(e)}`);
        assert.equal(e.option, option);
        assert.match(e.message, message);
        return true;
      });
    }
    // The worker checks before it starts a thread; a budget beyond the checkpoint's is refused from the worker.
    await assert.rejects(ModelWorker.load(tiny, { fps: -3 }), (e: unknown) => e instanceof InvalidOptionError && e.option === 'fps');
    await assert.rejects(ModelWorker.load(tiny, { minVisualTokens: 20000 }), (e: unknown) => e instanceof InvalidOptionError && e.option === 'minVisualTokens');
  });

  it('checks every weight against the config at load, naming the tensor and its file', async () => {
    const dir = variant('vision-mismatch', (d) => {
      const config = JSON.parse(readFileSync(join(d, 'config.json'), 'utf8'));
      config.vision_encoder_config.intermediate_size = 80;
      writeFileSync(join(d, 'config.json'), JSON.stringify(config));
    });
    const expected = (e: unknown) => {
      assert.ok(e instanceof CheckpointError, String(e));
      assert.equal(e.tensor, 'model.vision_encoder.encoder.layers.0.mlp.fc1.weight');
      assert.match(e.message, /model\.safetensors: tensor "model\.vision_encoder\.encoder\.layers\.0\.mlp\.fc1\.weight": shape \[72, 32\], expected \[80, 32\]/);
      return true;
    };
    await assert.rejects(VideoLLaMA3.load(dir), expected);
    await assert.rejects(ModelWorker.load(dir), expected);
  });

  it('says once that a processor config is missing', async () => {
    const dir = variant('no-preprocessor', (d) => rmSync(join(d, 'preprocessor_config.json')));
    const warnings: string[] = [];
    const model = await VideoLLaMA3.load(dir, { onWarning: (m) => warnings.push(m) });
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /preprocessor_config\.json is missing: the processor uses the released checkpoints' values/);
    await model.close();
    // Without a listener the warning goes to the process, as Node's own do; through a worker as well.
    const heard: Error[] = [];
    const listener = (w: Error) => heard.push(w);
    process.on('warning', listener);
    try {
      await (await VideoLLaMA3.load(dir)).close();
      await (await ModelWorker.load(dir)).close();
      await new Promise((r) => setImmediate(r));
    } finally {
      process.off('warning', listener);
    }
    assert.equal(heard.filter((w) => /preprocessor_config\.json is missing/.test(w.message)).length, 2);
  });

  it('reports the weights read while loading, up to the whole decoder, in the library and in a worker', async () => {
    const config = loadCheckpoint(tiny).config;
    const checkpoint = loadCheckpoint(tiny);
    const total = checkpoint.weights.unreadBytes(flattenSpecs(decoderWeights(config)).map((s) => s.name));
    assert.ok(total > 1_000_000);
    for (const load of [VideoLLaMA3.load.bind(VideoLLaMA3), ModelWorker.load.bind(ModelWorker)]) {
      const events: LoadProgressEvent[] = [];
      const model = await load(tiny, { onProgress: (e) => events.push(e) });
      await model.close();
      assert.ok(events.length > 10, `${events.length} events`);
      assert.ok(events.every((e, i) => e.stage === 'load' && e.total === total && (i === 0 || e.done > events[i - 1]!.done)));
      assert.equal(events.at(-1)!.done, total);
    }
  });

  it('tells what it allows, and refuses per-request budgets in their own names', async () => {
    const model = await VideoLLaMA3.load(tiny, { maxVisualTokens: 4096, fps: 2, threads: 1, compute: 'exact' });
    const { backend, weights, ...budgets } = model.info;
    assert.deepEqual({ ...backend, isa: undefined }, { name: 'native', threads: 1, compute: 'exact', isa: undefined });
    assert.deepEqual(weights, { language: 'bf16', vision: 'bf16' });
    assert.ok(nativeInfo().tiers.includes(backend.isa as Isa), `${backend.isa} is one of this CPU's tiers`);
    assert.deepEqual(budgets, {
      contextLength: 32768,
      vocabSize: 151936,
      maxTokenBytes: 128,
      maxVisualTokens: 4096,
      minVisualTokens: 16,
      fps: 2,
      maxFrames: 128,
      maxImagePixels: 178_956_970,
    });
    const image = join(fixtures!, 'media', 'cat.jpg');
    const ask = [{ role: 'user' as const, content: [{ type: 'image' as const, image }, { type: 'text' as const, text: '?' }] }];
    for (const [options, path, message] of [
      [{ maxVisualTokens: -1 }, 'maxVisualTokens', /maxVisualTokens must be an integer >= 1, got -1/],
      [{ fps: 0 }, 'fps', /fps must be a number > 0, got 0/],
      [{ maxNewTokens: 2.5 }, 'maxNewTokens', /maxNewTokens must be an integer >= 0/],
      [{ minVisualTokens: 5000 }, 'minVisualTokens', /must not exceed maxVisualTokens \(4096\)/],
      [{ textSpecialTokens: 'raw' as never }, 'textSpecialTokens', /textSpecialTokens must be 'control' or 'plain'/],
      [{ maxImagePixels: 1000 }, 'messages[0].content[0]', /pixels is more than the limit of 1000/],
    ] as const) {
      await assert.rejects(model.chat(ask, { maxNewTokens: 1, ...options }).result, (e: unknown) => {
        assert.ok(e instanceof InvalidRequestError, String(e));
        assert.equal(e.path, path);
        assert.match(e.message, message);
        return true;
      });
    }
    await model.close();
  });
});
