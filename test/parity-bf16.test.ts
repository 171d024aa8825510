// Parity in bf16 compute mode: every fixture case run with matmul inputs rounded to bf16 (the numerics of the
// official model run in bf16) against the fp32 fixtures, within a tolerance derived from bf16 rounding, and greedy
// tokens equal to the reference's wherever its top-1/top-2 margin exceeds that tolerance.
//
// The tolerance: bf16 keeps 8 significant bits, so each rounding of an activation moves it by at most
// u = 2^-9 relatively (round to nearest). A logit sits at the end of a chain of such roundings: the vision encoder's
// and projector's matmuls, then in each decoder layer the inputs of the q/k/v, o, gate/up and down projections, and
// finally the lm_head's. Their relative errors add up along the chain (to first order) and the chain of the tiny
// checkpoint has 4 per decoder layer × 2 layers + 1 = 9 in the language model, 8 more in front of it for media: at
// most 17 roundings. Hence a bound of 16·u relative to the largest magnitude of the tensor compared, a bound every
// case here keeps with room (the measured deviations are printed as diagnostics: 6 to 10 u on the logits).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { VideoLLaMA3 } from '../src/api/videollama3.js';
import { KVCache } from '../src/engine/kv-cache.js';
import { SafetensorsFile } from '../src/model/safetensors.js';
import type { ProcessedRequest } from '../src/processing/processor.js';
import { NativeBackend } from '../src/tensor/native.js';
import { ReferenceBackend } from '../src/tensor/reference.js';
import type { Backend } from '../src/tensor/backend.js';
import { fixturesDir, FIXTURES_MISSING, TINY_CHECKPOINT } from './fixtures.js';

const U = 2 ** -9;
const ROUNDINGS = 16;

const fixtures = fixturesDir();

interface Step {
  top10_ids: number[];
  top10_scores: number[];
}

/** Largest |a − b| and largest |b|, over two arrays of the same length. */
function deviation(a: ArrayLike<number>, b: ArrayLike<number>): { worst: number; scale: number } {
  assert.equal(a.length, b.length);
  let worst = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return { worst, scale };
}

const CASES: [string, () => Backend][] = [
  ['e_text_only', () => new ReferenceBackend({ compute: 'bf16' })],
  ['a_single_image', () => new ReferenceBackend({ compute: 'bf16' })],
  ['g_video_diffp_synthetic', () => new ReferenceBackend({ compute: 'bf16' })],
  ...['e_text_only', 'a_single_image', 'b_two_images', 'c_video', 'd_video_short', 'f_video_and_image', 'g_video_diffp_synthetic'].map(
    (c): [string, () => Backend] => [c, () => new NativeBackend({ compute: 'bf16' })],
  ),
];

for (const [caseName, makeBackend] of CASES) {
  const backend = makeBackend();
  describe(`bf16 parity ${caseName}, ${backend.name} backend`, { skip: !fixtures && FIXTURES_MISSING }, () => {
    const caseDir = join(fixtures ?? '', 'cases', caseName);
    let model: VideoLLaMA3;
    let request: ProcessedRequest;
    let manifest: { conversation: unknown; modals: string[]; processor_call: { kwargs: { add_system_prompt: boolean; add_generation_prompt: boolean } } };

    before(async () => {
      assert.equal(backend.compute, 'bf16');
      model = await VideoLLaMA3.load(join(fixtures!, TINY_CHECKPOINT), { backend });
      manifest = JSON.parse(readFileSync(join(caseDir, 'manifest.json'), 'utf8'));
      const k = manifest.processor_call.kwargs;
      request = await model.prepare(manifest.conversation as never, { addSystemPrompt: k.add_system_prompt, addGenerationPrompt: k.add_generation_prompt, baseDir: join(fixtures!, 'media') });
    });

    it('keeps the visual features and the logits within the bf16 bound', (t) => {
      const features = model.encodeVisuals(request);
      if (features) {
        const vision = SafetensorsFile.open(join(caseDir, 'vision.safetensors'));
        const { worst, scale } = deviation(backend.download(features).data as Float32Array, vision.read('projector_out').data as Float32Array);
        vision.close();
        t.diagnostic(`projector_out: max |diff| ${worst.toExponential(3)} = ${(worst / scale / U).toFixed(1)} u of max |x| ${scale.toFixed(3)}`);
        assert.ok(worst <= ROUNDINGS * U * scale, `projector_out: ${worst} > ${ROUNDINGS}·u·${scale}`);
      }
      const d = model.config;
      const cache = new KVCache(backend, d.numHiddenLayers, d.numKeyValueHeads, model.llm.headDim, d.maxPositionEmbeddings);
      const hidden = model.llm.forward(model.embed(request, features), cache);
      const L = hidden.dim(0);
      const logits = backend.download(model.llm.logits(hidden.rows(L - 1, L))).data as Float32Array;
      const llm = SafetensorsFile.open(join(caseDir, 'llm.safetensors'));
      const { worst, scale } = deviation(logits, llm.read('last_logits_forward').data as Float32Array);
      llm.close();
      t.diagnostic(`last logits: max |diff| ${worst.toExponential(3)} = ${(worst / scale / U).toFixed(1)} u of max |logit| ${scale.toFixed(3)}`);
      assert.ok(worst <= ROUNDINGS * U * scale, `logits: ${worst} > ${ROUNDINGS}·u·${scale}`);
    });

    it('picks the reference tokens wherever its top-1/top-2 margin exceeds the bound, step by step', (t) => {
      // Teacher-forced: every step reads the reference's own tokens, so each of the 16 steps is compared on the
      // same context as the reference's, whatever this run picked at a near tie before it.
      const expected = JSON.parse(readFileSync(join(caseDir, 'generation.json'), 'utf8')).greedy as { new_token_ids: number[]; steps: Step[] };
      const d = model.config;
      const cache = new KVCache(backend, d.numHiddenLayers, d.numKeyValueHeads, model.llm.headDim, d.maxPositionEmbeddings);
      const features = model.encodeVisuals(request);
      let hidden = model.llm.forward(model.embed(request, features), cache);
      let compared = 0;
      for (const [i, step] of expected.steps.entries()) {
        const logits = model.llm.logits(hidden.rows(hidden.dim(0) - 1, hidden.dim(0)));
        const scores = backend.download(logits).data as Float32Array;
        const bound = ROUNDINGS * U * Math.max(...step.top10_scores.map(Math.abs));
        step.top10_ids.forEach((id, j) => assert.ok(Math.abs(scores[id]! - step.top10_scores[j]!) <= bound, `step ${i}: score of ${id}`));
        const picked = backend.argmax(logits.reshape([logits.numel]));
        const [top1, top2] = step.top10_scores as [number, number];
        if (top1 - top2 > bound) {
          assert.equal(picked, expected.new_token_ids[i], `step ${i}: margin ${(top1 - top2).toFixed(4)} > bound ${bound.toFixed(4)}`);
          compared++;
        } else {
          assert.ok(step.top10_ids.slice(0, 2).includes(picked), `step ${i}: a near tie, yet token ${picked} is neither of the reference's top two`);
        }
        hidden = model.llm.forward(model.llm.embed([expected.new_token_ids[i]!]), cache);
      }
      t.diagnostic(`${compared} of ${expected.steps.length} steps had a margin above the bound and picked the reference's token`);
    });
  });
}
