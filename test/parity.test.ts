// Parity with the official implementation on the tiny checkpoint, case by case: prompt text, input ids, grids and
// pixel values exact; every vision tensor, hidden state and logit within the fixtures' tolerances; both 16-token
// greedy decodes identical.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { VideoLLaMA3, type ChatOptions } from '../src/api/videollama3.js';
import { main } from '../src/cli/main.js';
import { generateTokens } from '../src/engine/generate.js';
import { KVCache, type KVPrefix } from '../src/engine/kv-cache.js';
import { SafetensorsFile } from '../src/model/safetensors.js';
import type { ProcessedRequest } from '../src/processing/processor.js';
import type { BackendName } from '../src/tensor/index.js';
import { Tensor } from '../src/tensor/tensor.js';
import { fixturesDir, FIXTURES_MISSING, TINY_CHECKPOINT } from './fixtures.js';

// Tolerances from the fixtures' README ("suggested parity thresholds for an fp32 port").
const VISION_ABS = 1e-4;
const HIDDEN_ABS = 1e-3;
const LOGITS_ABS = 1e-4;

interface Manifest {
  conversation: unknown;
  processor_call: { kwargs: { add_system_prompt: boolean; add_generation_prompt: boolean } };
  modals: string[];
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>, what: string): number {
  assert.equal(a.length, b.length, `${what}: length`);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  return worst;
}

function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, tolerance: number, what: string): void {
  const diff = maxAbsDiff(got, want, what);
  assert.ok(diff <= tolerance, `${what}: max |diff| ${diff} > ${tolerance}`);
}

function ids(t: Tensor): number[] {
  return Array.from(t.data as BigInt64Array, Number);
}

const fixtures = fixturesDir();
const checkpointDir = fixtures && join(fixtures, TINY_CHECKPOINT);
const mediaDir = fixtures && join(fixtures, 'media');

/** The cases this version runs, and the backends each runs on (the reference backend is slow on long prompts). */
const CASES: [string, BackendName[]][] = [
  ['e_text_only', ['native', 'reference', 'webgpu']],
  ['a_single_image', ['native', 'reference', 'webgpu']],
  ['b_two_images', ['native', 'webgpu']],
  ['c_video', ['native', 'webgpu']],
  ['d_video_short', ['native', 'webgpu']],
  ['f_video_and_image', ['native', 'webgpu']],
  ['g_video_diffp_synthetic', ['native', 'reference', 'webgpu']],
];

for (const [caseName, backends] of CASES) {
  for (const backend of backends) {
    describe(`parity ${caseName}, ${backend} backend`, { skip: !fixtures && FIXTURES_MISSING }, () => {
      const caseDir = join(fixtures ?? '', 'cases', caseName);
      const files: Record<string, SafetensorsFile> = {};
      let model: VideoLLaMA3;
      let manifest: Manifest;
      let request: ProcessedRequest;
      let features: Tensor | undefined;
      const vision: Record<string, Float32Array> = {};
      // A model tensor's values on the host, wherever the backend keeps it (the webgpu backend: on its device).
      const host = (t: Tensor) => model.llm.backend.download(t).data as Float32Array;

      before(async () => {
        // The fixtures are fp32: exact compute (bf16 mode has its own tolerance, in parity-bf16.test.ts).
        model = await VideoLLaMA3.load(checkpointDir!, { backend, compute: 'exact' });
        manifest = JSON.parse(readFileSync(join(caseDir, 'manifest.json'), 'utf8'));
        for (const f of ['inputs', 'vision', 'llm']) {
          if (f !== 'vision' || manifest.modals.length > 0) files[f] = SafetensorsFile.open(join(caseDir, `${f}.safetensors`));
        }
        const k = manifest.processor_call.kwargs;
        const options: ChatOptions = { addSystemPrompt: k.add_system_prompt, addGenerationPrompt: k.add_generation_prompt, baseDir: mediaDir };
        request = await model.prepare(manifest.conversation as never, options);
        features = model.encodeVisuals(request, {
          onTensor: (name, rows, first) => {
            const width = rows.dim(-1);
            // Some fixtures store only the first rows of a tensor: keep what they can be compared with.
            const all = (vision[name] ??= new Float32Array(files.vision!.info(name).shape.reduce((a, b) => a * b, 1)));
            const start = first * width;
            if (start < all.length) all.set(host(rows).subarray(0, all.length - start), start);
          },
        });
      });
      after(() => Object.values(files).forEach((f) => f.close()));

      it('renders the prompt and tokenizes it exactly', () => {
        assert.equal(request.prompt, readFileSync(join(caseDir, 'prompt.txt'), 'utf8'));
        assert.deepEqual(request.inputIds, ids(files.inputs!.read('input_ids')));
        assert.deepEqual(request.llmInputIds, ids(files.llm!.read('llm_input_ids')));
      });

      it('samples video frames at the reference timestamps and prunes the same tokens', () => {
        manifest.modals.forEach((modal, i) => {
          if (modal !== 'video') return;
          const video = manifest.modals.slice(0, i).filter((m) => m === 'video').length;
          assert.deepEqual(request.videoTimestamps[video], files.inputs!.readF64(`item${i}_timestamps`).data);
        });
        if (!request.visuals) return assert.equal(request.keepMask, undefined);
        assert.deepEqual(request.keepMask, files.vision!.read('compression_mask').data);
      });

      it('preprocesses the media exactly: grids, merge sizes, modalities, pixel values', () => {
        if (!request.visuals) return assert.equal(files.inputs!.has('grid_sizes'), false);
        const v = request.visuals;
        assert.deepEqual(v.gridSizes.flat(), ids(files.inputs!.read('grid_sizes')));
        assert.deepEqual(v.mergeSizes, ids(files.inputs!.read('merge_sizes')));
        assert.deepEqual(v.modals, manifest.modals);
        const head = files.inputs!.read('pixel_values_head').data as Float32Array;
        assert.deepEqual(v.pixelValues.data.subarray(0, head.length), head);
      });

      it('matches every vision tensor within tolerance', () => {
        if (!request.visuals) return assert.equal(features, undefined);
        for (const name of ['patch_embeds', 'encoder_layer0_out', 'encoder_layer1_out', 'pre_merge', 'post_merge']) {
          if (!files.vision!.has(name)) continue;
          assert.ok(vision[name], `no ${name} captured`);
          assertClose(vision[name]!, files.vision!.read(name).data as Float32Array, VISION_ABS, name);
        }
        assertClose(host(features!), files.vision!.read('projector_out').data as Float32Array, VISION_ABS, 'projector_out');
      });

      // The keys and values of the prompt but its last position, from the forward pass that the hidden states are
      // compared from: each decode below resumes from them as from the engine's prefix cache, prefilling only the last
      // position. A long prompt's prefill is most of a case's time on lavapipe (b_two_images: 5,121 positions, ~20 s
      // on Zen 3), and the reference computed the prompt in one pass too. Run alone, the first decode prefills it all.
      let prompt: KVPrefix | undefined;
      after(() => (prompt = undefined));

      it('matches every hidden state and the logits within tolerance', () => {
        const d = model.config;
        const cache = new KVCache(model.llm.backend, d.numHiddenLayers, d.numKeyValueHeads, model.llm.headDim, d.maxPositionEmbeddings);
        const hidden: Float32Array[] = [];
        const final = model.llm.forward(model.embed(request, features), cache, {
          onHiddenState: (i, h) => (hidden[i] = Float32Array.from(host(h))),
        });
        assert.equal(hidden.length, d.numHiddenLayers + 1);
        hidden.forEach((h, i) => assertClose(h, files.llm!.read(`hidden_states_${i}`).data as Float32Array, HIDDEN_ABS, `hidden_states_${i}`));

        const positions = ids(files.llm!.read('logits_positions'));
        const H = d.hiddenSize;
        const rows = Tensor.f32([positions.length, H]);
        const finalRows = host(final);
        positions.forEach((p, r) => (rows.data as Float32Array).set(finalRows.subarray(p * H, (p + 1) * H), r * H));
        assertClose(host(model.llm.logits(model.llm.backend.upload(rows))), files.llm!.read('logits').data as Float32Array, LOGITS_ABS, 'logits');
        prompt = cache.detach(cache.length - 1);
      });

      for (const variant of ['greedy', 'greedy_rep1.1']) {
        it(`decodes 16 tokens greedily exactly as the reference (${variant})`, async () => {
          const expected = JSON.parse(readFileSync(join(caseDir, 'generation.json'), 'utf8'))[variant];
          const penalty = expected.kwargs.repetition_penalty ?? model.generationConfig.repetitionPenalty;
          const d = model.config;
          const cache = new KVCache(model.llm.backend, d.numHiddenLayers, d.numKeyValueHeads, model.llm.headDim, d.maxPositionEmbeddings);
          const embeds = model.embed(request, features);
          const L = embeds.dim(0);
          if (prompt) cache.loadPrefix(prompt, L - 1);
          const tokens = generateTokens(model.llm, {
            promptEmbeds: prompt ? embeds.rows(L - 1, L) : embeds,
            cache,
            prefillBreaks: [L - 1],
            maxNewTokens: 16,
            sampling: { ...model.samplingFor({ greedy: true }), repetitionPenalty: penalty },
            stopTokenIds: model.generationConfig.eosTokenIds,
          });
          const got: number[] = [];
          for await (const id of tokens) got.push(id);
          if (prompt) cache.release();
          else prompt = cache.detach(L - 1);
          assert.deepEqual(got, expected.new_token_ids);
        });
      }
    });
  }
}

describe('vl3 inspect', { skip: !fixtures && FIXTURES_MISSING }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vl3-inspect-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  for (const [caseName, variant, extra] of [
    ['e_text_only', 'greedy', ['--repetition-penalty', '1.0']],
    ['e_text_only', 'greedy_rep1.1', []],
    ['a_single_image', 'greedy_rep1.1', []],
    ['g_video_diffp_synthetic', 'greedy', ['--repetition-penalty', '1']],
  ] as const) {
    it(`writes what the reference can be compared with (${caseName}, ${variant})`, async () => {
      const caseDir = join(fixtures!, 'cases', caseName);
      const manifest = JSON.parse(readFileSync(join(caseDir, 'manifest.json'), 'utf8'));
      // The official image-part form, with paths made absolute as a user's file would have them.
      const messages = JSON.parse(JSON.stringify(manifest.conversation).replace(/"(image|video)_path":"([^"]+)"/g, (_, kind, f) => `"${kind}_path":${JSON.stringify(join(mediaDir!, f))}`));
      const conversation = join(dir, `${caseName}.json`);
      writeFileSync(conversation, JSON.stringify({ messages, add_system_prompt: true, add_generation_prompt: true }));
      const out = join(dir, `${caseName}-${variant}.safetensors`);
      const code = await main(['inspect', '--model', checkpointDir!, '--compute', 'exact', '--conversation', conversation, '--out', out, '--greedy', '16', ...extra]);
      assert.equal(code, 0);

      const written = SafetensorsFile.open(out);
      const inputs = SafetensorsFile.open(join(caseDir, 'inputs.safetensors'));
      const llm = SafetensorsFile.open(join(caseDir, 'llm.safetensors'));
      const vision = manifest.modals.length > 0 ? SafetensorsFile.open(join(caseDir, 'vision.safetensors')) : undefined;
      try {
        assert.deepEqual(ids(written.read('input_ids')), ids(inputs.read('input_ids')));
        assertClose(written.read('last_logits').data as Float32Array, llm.read('last_logits_forward').data as Float32Array, LOGITS_ABS, 'last_logits');
        const generation = JSON.parse(readFileSync(join(caseDir, 'generation.json'), 'utf8'));
        assert.deepEqual(ids(written.read('greedy_ids')), generation[variant].new_token_ids);
        assert.deepEqual(ids(written.read('llm_input_ids')), ids(llm.read('llm_input_ids')));
        manifest.modals.forEach((modal: string, i: number) => {
          if (modal === 'video') assert.deepEqual(written.readF64(`timestamps_${i}`).data, inputs.readF64(`item${i}_timestamps`).data);
        });
        if (manifest.modals.length > 0) {
          assert.deepEqual(ids(written.read('grid_sizes')), ids(inputs.read('grid_sizes')));
          assert.deepEqual(ids(written.read('merge_sizes')), ids(inputs.read('merge_sizes')));
          assertClose(written.read('vision_features').data as Float32Array, vision!.read('projector_out').data as Float32Array, VISION_ABS, 'vision_features');
          assert.deepEqual(written.read('compression_mask').data, vision!.read('compression_mask').data);
        } else {
          assert.equal(written.has('vision_features'), false);
        }
      } finally {
        for (const f of [written, inputs, llm, vision]) f?.close();
      }
    });
  }
});
