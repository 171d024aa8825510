// Parity with the official implementation on the tiny checkpoint, case e_text_only: ids exact, hidden states and
// logits within the fixtures' tolerances, both 16-token greedy decodes identical. Run on every backend.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { VideoLLaMA3 } from '../src/api/videollama3.js';
import { main } from '../src/cli/main.js';
import { generateTokens } from '../src/engine/generate.js';
import { KVCache } from '../src/engine/kv-cache.js';
import { SafetensorsFile } from '../src/model/safetensors.js';
import type { BackendName } from '../src/tensor/index.js';
import { Tensor } from '../src/tensor/tensor.js';
import { fixturesDir } from './fixtures.js';

// Tolerances from the fixtures' README ("suggested parity thresholds for an fp32 port").
const HIDDEN_ABS = 1e-3;
const LOGITS_ABS = 1e-4;

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'length');
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  return worst;
}

function ids(t: Tensor): number[] {
  return Array.from(t.data as BigInt64Array, Number);
}

const fixtures = fixturesDir();
const checkpointDir = fixtures && join(fixtures, 'checkpoint', 'VideoLLaMA3-2B-tiny-random');
const caseDir = fixtures && join(fixtures, 'cases', 'e_text_only');

for (const backend of ['native', 'reference'] as BackendName[]) {
  describe(`text parity, case e_text_only, ${backend} backend`, { skip: !fixtures && 'fixtures not found' }, () => {
    let model: VideoLLaMA3;
    let manifest: { conversation: unknown; processor_call: { kwargs: { add_system_prompt: boolean; add_generation_prompt: boolean } } };
    let llm: SafetensorsFile;
    let generation: Record<string, { new_token_ids: number[]; kwargs: { repetition_penalty?: number } }>;

    before(async () => {
      model = await VideoLLaMA3.load(checkpointDir!, { backend });
      manifest = JSON.parse(readFileSync(join(caseDir!, 'manifest.json'), 'utf8'));
      generation = JSON.parse(readFileSync(join(caseDir!, 'generation.json'), 'utf8'));
      llm = SafetensorsFile.open(join(caseDir!, 'llm.safetensors'));
    });
    after(() => llm.close());

    const prepared = () => {
      const k = manifest.processor_call.kwargs;
      return model.prepare(manifest.conversation as never, { addSystemPrompt: k.add_system_prompt, addGenerationPrompt: k.add_generation_prompt });
    };

    it('renders the prompt and tokenizes it exactly', () => {
      const { prompt, inputIds } = prepared();
      assert.equal(prompt, readFileSync(join(caseDir!, 'prompt.txt'), 'utf8'));
      const inputs = SafetensorsFile.open(join(caseDir!, 'inputs.safetensors'));
      try {
        assert.deepEqual(inputIds, ids(inputs.read('input_ids')));
      } finally {
        inputs.close();
      }
      assert.deepEqual(inputIds, ids(llm.read('llm_input_ids')));
    });

    it('matches every hidden state and the logits within tolerance', () => {
      const { inputIds } = prepared();
      const d = model.config;
      const cache = new KVCache(d.numHiddenLayers, d.numKeyValueHeads, model.llm.headDim, d.maxPositionEmbeddings);
      const hidden: Float32Array[] = [];
      const final = model.llm.forward(model.embed(inputIds), cache, { onHiddenState: (i, h) => (hidden[i] = Float32Array.from(h.data as Float32Array)) });
      assert.equal(hidden.length, d.numHiddenLayers + 1);
      hidden.forEach((h, i) => {
        const ref = llm.read(`hidden_states_${i}`).data as Float32Array;
        const diff = maxAbsDiff(h, ref);
        assert.ok(diff <= HIDDEN_ABS, `hidden_states_${i}: max |diff| ${diff} > ${HIDDEN_ABS}`);
      });

      const positions = ids(llm.read('logits_positions'));
      const H = d.hiddenSize;
      const rows = Tensor.f32([positions.length, H]);
      positions.forEach((p, r) => (rows.data as Float32Array).set((final.data as Float32Array).subarray(p * H, (p + 1) * H), r * H));
      const logits = model.llm.logits(rows);
      const diff = maxAbsDiff(logits.data as Float32Array, llm.read('logits').data as Float32Array);
      assert.ok(diff <= LOGITS_ABS, `logits: max |diff| ${diff} > ${LOGITS_ABS}`);
    });

    for (const variant of ['greedy', 'greedy_rep1.1']) {
      it(`decodes 16 tokens greedily exactly as the reference (${variant})`, async () => {
        const expected = generation[variant]!;
        const penalty = expected.kwargs.repetition_penalty ?? model.generationConfig.repetitionPenalty;
        const tokens = generateTokens(model.llm, {
          promptEmbeds: model.embed(prepared().inputIds),
          maxNewTokens: 16,
          sampling: { ...model.samplingFor({ greedy: true }), repetitionPenalty: penalty },
          stopTokenIds: model.generationConfig.eosTokenIds,
        });
        const got: number[] = [];
        for await (const id of tokens) got.push(id);
        assert.deepEqual(got, expected.new_token_ids);
      });
    }
  });
}

describe('vl3 inspect on case e_text_only', { skip: !fixtures && 'fixtures not found' }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vl3-inspect-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  for (const [variant, extra] of [
    ['greedy', ['--repetition-penalty', '1.0']],
    ['greedy_rep1.1', []],
  ] as const) {
    it(`writes input_ids, last_logits and greedy_ids (${variant})`, async () => {
      const manifest = JSON.parse(readFileSync(join(caseDir!, 'manifest.json'), 'utf8'));
      const conversation = join(dir, 'conversation.json');
      writeFileSync(conversation, JSON.stringify({ messages: manifest.conversation, add_system_prompt: true, add_generation_prompt: true }));
      const out = join(dir, `${variant}.safetensors`);
      const code = await main(['inspect', '--model', checkpointDir!, '--conversation', conversation, '--out', out, '--greedy', '16', ...extra]);
      assert.equal(code, 0);

      const written = SafetensorsFile.open(out);
      const inputs = SafetensorsFile.open(join(caseDir!, 'inputs.safetensors'));
      const llm = SafetensorsFile.open(join(caseDir!, 'llm.safetensors'));
      try {
        assert.deepEqual(written.info('input_ids').shape, [1, 45]);
        assert.deepEqual(ids(written.read('input_ids')), ids(inputs.read('input_ids')));
        const diff = maxAbsDiff(written.read('last_logits').data as Float32Array, llm.read('last_logits_forward').data as Float32Array);
        assert.ok(diff <= LOGITS_ABS, `last_logits: max |diff| ${diff}`);
        const generation = JSON.parse(readFileSync(join(caseDir!, 'generation.json'), 'utf8'));
        assert.deepEqual(ids(written.read('greedy_ids')), generation[variant].new_token_ids);
      } finally {
        written.close();
        inputs.close();
        llm.close();
      }
    });
  }
});
