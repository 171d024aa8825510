// The decoder's training forward, loss and backward against PyTorch autograd (fixtures/training, README "Loss" and
// "Tolerances observed"): the loss of a text-only sample, and the gradient of every decoder parameter, the tied
// embedding table's included (stored as rows and whole-tensor sums).
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { readModelConfig, type VideoLlama3Config } from '../src/model/config.js';
import { SafetensorsFile } from '../src/model/safetensors.js';
import { IGNORE_INDEX, packedBounds, Qwen2Training, type DecoderParameters } from '../src/model/qwen2-training.js';
import { decoderWeights, loadSpecs, type WeightSpec } from '../src/model/weight-names.js';
import { createBackend } from '../src/tensor/index.js';
import { floatReader } from '../src/tensor/dtype.js';
import type { Backend } from '../src/tensor/backend.js';
import { Tensor } from '../src/tensor/tensor.js';
import { fixturesDir, FIXTURES_MISSING, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const sampleDir = (sample: string) => join(fixtures!, 'training', 'samples', sample);

/** Integers of an I64 (or I32) tensor. */
function ints(t: Tensor): number[] {
  return Array.from(t.data as ArrayLike<number | bigint>, (v) => Number(v));
}

/** A stored tensor as f32, widened from bf16 where stored so (the fixtures upcast the bf16 weights). */
function asF32(t: Tensor): Tensor<'f32'> {
  const read = floatReader(t.dtype, t.data);
  return new Tensor('f32', t.shape, Float32Array.from({ length: t.numel }, (_, i) => read(i)));
}

/** max |a − b| ≤ 1e-3 · max |b| + 1e-8 (the README's suggested check for every gradient tensor). */
function assertGradClose(name: string, actual: Float32Array, expected: Float32Array): void {
  assert.equal(actual.length, expected.length, name);
  let maxRef = 0;
  let maxDiff = 0;
  for (let i = 0; i < expected.length; i++) {
    maxRef = Math.max(maxRef, Math.abs(expected[i]!));
    maxDiff = Math.max(maxDiff, Math.abs(actual[i]! - expected[i]!));
  }
  if (process.env.VL3_SHOW_GRAD_ERRORS) console.log(name, (maxDiff / maxRef).toExponential(2));
  assert.ok(maxDiff <= 1e-3 * maxRef + 1e-8, `${name}: max |Δ| ${maxDiff.toExponential(3)} against max |g| ${maxRef.toExponential(3)}`);
}

describe('decoder training forward and backward against PyTorch autograd', { skip: !fixtures && FIXTURES_MISSING }, () => {
  let backend: Backend;
  let params: DecoderParameters;
  let dims: VideoLlama3Config;
  before(() => {
    const checkpoint = join(fixtures!, TINY_CHECKPOINT);
    dims = readModelConfig(join(checkpoint, 'config.json'));
    backend = createBackend('reference');
    const weights = SafetensorsFile.open(join(checkpoint, 'model.safetensors'));
    // The checkpoint is tied: the head is the embedding table.
    params = loadSpecs(decoderWeights(dims, 'model.embed_tokens.weight'), (spec) => asF32(weights.read(spec.name)));
    params.lmHead = params.embedTokens;
    weights.close();
  });

  it('gives a text-only sample its loss and every decoder gradient (stage 3, a_text_two_turns)', () => {
    const inputs = SafetensorsFile.open(join(sampleDir('a_text_two_turns'), 'inputs.safetensors'));
    const stored = SafetensorsFile.open(join(sampleDir('a_text_two_turns'), 'stage3.safetensors'));
    const ids = ints(inputs.read('input_ids'));
    const labels = ints(inputs.read('labels'));
    const positions = ints(inputs.read('position_ids'));
    assert.ok(labels.includes(IGNORE_INDEX));

    const grads = new Map<string, Tensor>();
    const gradientOf = (spec: WeightSpec) => {
      const t = grads.get(spec.name) ?? backend.allocate('f32', spec.shape);
      grads.set(spec.name, t);
      return t;
    };
    const model = new Qwen2Training(dims, params, gradientOf, backend, 'model.embed_tokens.weight');
    const embeds = backend.allocate('f32', [ids.length, dims.hiddenSize]);
    const idTensor = backend.allocate('i32', [ids.length]);
    backend.write(idTensor, ids);
    backend.embedding(params.embedTokens, idTensor, embeds);

    const acts = model.forward(embeds, positions, packedBounds(positions));
    const numItems = Number(ints(stored.read('num_items_in_batch'))[0]);
    const result = model.loss(acts, labels, 1 / numItems);
    const loss = result.lossSum / numItems;
    const expectedLoss = stored.readF64('loss').data[0]!;
    assert.ok(Math.abs(loss - expectedLoss) <= 1e-5 * expectedLoss, `loss ${loss} against ${expectedLoss}`);
    assert.deepEqual(Array.from(result.positions), ints(stored.read('supervised_positions')));
    assertGradClose('token_losses', result.tokenLosses, stored.read('token_losses').data as Float32Array);
    assertGradClose('hidden_final', acts.hidden.data as Float32Array, stored.read('hidden_final').data as Float32Array);

    const dEmbeds = model.backward(acts, result.dHidden);
    // The input side of the tied table: every position here is a text token.
    backend.embeddingBackward(dEmbeds, idTensor, grads.get('model.embed_tokens.weight')!);

    for (const [name, grad] of grads) {
      if (name === 'model.embed_tokens.weight') continue;
      assertGradClose(name, grad.data as Float32Array, stored.read(`grad/${name}`).data as Float32Array);
    }
    // The embedding gradient: its stored rows, and the whole-tensor sums (README Conventions).
    const table = grads.get('model.embed_tokens.weight')!.data as Float32Array;
    const H = dims.hiddenSize;
    const rowIds = ints(stored.read('vocab_row_index'));
    const rows = Float32Array.from(rowIds.flatMap((r) => Array.from(table.subarray(r * H, (r + 1) * H))));
    assertGradClose('embed_tokens rows', rows, stored.read('grad_rows/model.embed_tokens.weight').data as Float32Array);
    let sumsq = 0;
    const colsumW = new Float64Array(H);
    for (let v = 0; v < table.length / H; v++)
      for (let c = 0; c < H; c++) {
        sumsq += table[v * H + c]! ** 2;
        colsumW[c] += ((v % 7) - 3) * table[v * H + c]!;
      }
    const expectedSumsq = stored.readF64('grad_sumsq/model.embed_tokens.weight').data[0]!;
    assert.ok(Math.abs(sumsq - expectedSumsq) <= 1e-4 * expectedSumsq, `sum of squares ${sumsq} against ${expectedSumsq}`);
    const expectedColsumW = stored.readF64('grad_colsum_w/model.embed_tokens.weight').data;
    const scaleW = Math.max(...Array.from(expectedColsumW, Math.abs));
    colsumW.forEach((v, c) => assert.ok(Math.abs(v - expectedColsumW[c]!) <= 1e-4 * scaleW, `weighted column sum ${c}: ${v} against ${expectedColsumW[c]}`));
    inputs.close();
    stored.close();
  });
});

