// The whole model's training forward, loss and backward against PyTorch autograd (fixtures/training, README "Loss"
// and "Tolerances observed"): for every stored sample and stage, the loss, the final hidden states, and the gradient of
// every parameter the stage trains (vision encoder, projector, decoder, and the tied embedding table, stored as rows
// and whole-tensor sums).
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { readModelConfig, type VideoLlama3Config } from '../src/model/config.js';
import { SafetensorsFile } from '../src/model/safetensors.js';
import { packedBounds, Qwen2Training, type DecoderParameters } from '../src/model/qwen2-training.js';
import { decoderWeights, loadSpecs, type WeightSpec } from '../src/model/weight-names.js';
import { createBackend } from '../src/tensor/index.js';
import { floatReader } from '../src/tensor/dtype.js';
import type { Backend } from '../src/tensor/backend.js';
import { Tensor } from '../src/tensor/tensor.js';
import { ProjectorTraining } from '../src/model/projector-training.js';
import { VisionEncoderTraining, type VisionActivations } from '../src/model/vision-training.js';
import { projectorWeights, visionEncoderWeights } from '../src/model/weight-names.js';
import { fixturesDir, FIXTURES_MISSING, TINY_CHECKPOINT } from './fixtures.js';
import { assertGradClose } from './train-fixtures.js';

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

/** The stored (sample, stage) pairs: README "Loss" table. */
const CASES: [string, number][] = [
  ['a_text_two_turns', 1],
  ['a_text_two_turns', 3],
  ['b_image_caption', 1],
  ['b_image_caption', 3],
  ['b_image_caption', 4],
  ['c_two_images', 3],
  ['c_two_images', 4],
  ['d_video', 2],
  ['d_video', 3],
  ['e_packed_video_image', 1],
  ['e_packed_video_image', 2],
  ['e_packed_video_image', 3],
  ['f_video_natural', 3],
];

const EMBED = 'model.embed_tokens.weight';

// On the reference backend (the TypeScript kernels) and on the native one (its own forward and backward kernels, on
// the best tier this CPU has), both in exact compute: training's mode.
for (const backendName of ['reference', 'native'] as const)
describe(`model training against PyTorch autograd, ${backendName} backend`, { skip: !fixtures && FIXTURES_MISSING }, () => {
  let backend: Backend;
  let config: VideoLlama3Config;
  let weights: SafetensorsFile;
  // Widened once per weight, not once per case: the widening took most of a native case's time. Training reads the
  // parameters and never writes them, so the cases can share them.
  const widened = new Map<string, Tensor<'f32'>>();
  const f32Weights = {
    get: (spec: WeightSpec) => {
      let t = widened.get(spec.name);
      if (!t) widened.set(spec.name, (t = asF32(weights.read(spec.name))));
      return t;
    },
  };
  before(() => {
    const checkpoint = join(fixtures!, TINY_CHECKPOINT);
    config = readModelConfig(join(checkpoint, 'config.json'));
    backend = createBackend(backendName, { compute: 'exact' });
    weights = SafetensorsFile.open(join(checkpoint, 'model.safetensors'));
  });

  for (const [sample, stage] of CASES) {
    it(`${sample}, stage ${stage}: loss, hidden states and gradients`, () => {
      const stored = SafetensorsFile.open(join(sampleDir(sample), `stage${stage}.safetensors`));
      const inputs = SafetensorsFile.open(join(sampleDir(sample), stored.metadata.input_file!));
      const trained = new Set(stored.names.filter((n) => n.startsWith('grad/')).map((n) => n.slice(5)));
      for (const n of stored.names) if (n.startsWith('grad_rows/')) trained.add(n.slice(10));
      const grads = new Map<string, Tensor>();
      const gradientOf = (spec: WeightSpec) => {
        if (!trained.has(spec.name)) return null;
        const t = grads.get(spec.name) ?? backend.allocate('f32', spec.shape);
        grads.set(spec.name, t);
        return t;
      };
      // The checkpoint is tied: the head is the embedding table.
      const params: DecoderParameters = loadSpecs(decoderWeights(config, EMBED), (spec) => f32Weights.get(spec));
      params.lmHead = params.embedTokens;
      const decoder = new Qwen2Training(config, params, gradientOf, backend, EMBED);
      const C = config.visionEncoderConfig.hiddenSize;
      const projector = new ProjectorTraining(loadSpecs(projectorWeights(C, config.hiddenSize), (spec) => f32Weights.get(spec)), gradientOf, backend);

      // After DiffFP (stages 3-4 delete the pruned tokens): the stored ids, labels and positions are those the
      // model trains on; our features are placed at their <image> positions.
      const ids = ints(stored.read('llm_input_ids'));
      const labels = ints(stored.read('llm_labels'));
      const positions = ints(stored.read('llm_position_ids'));
      const vision = new VisionEncoderTraining(
        config.visionEncoderConfig,
        loadSpecs(visionEncoderWeights(config.visionEncoderConfig), (spec) => f32Weights.get(spec)),
        gradientOf,
        backend,
      );
      const { visionActs, kept } = encode(inputs, stored, stage >= 3, vision);
      const features = backend.allocate('f32', [kept.length, C]);
      backend.copyRows(visionActs.features, kept, features, Int32Array.from(kept.keys()));
      const imagePositions = ids.flatMap((id, i) => (id === config.imageTokenIndex ? [i] : []));
      const textPositions = ids.flatMap((id, i) => (id === config.imageTokenIndex ? [] : [i]));
      assert.equal(features.dim(0), imagePositions.length, 'one kept feature per <image> position');
      const projected = projector.forward(features);
      const idTensor = backend.allocate('i32', [ids.length]);
      backend.write(idTensor, ids);
      const embeds = backend.allocate('f32', [ids.length, config.hiddenSize]);
      backend.embedding(params.embedTokens, idTensor, embeds);
      const imageRows = Int32Array.from(imagePositions);
      const featureRows = Int32Array.from(imagePositions.keys());
      // The official merge is embeds·0 + features: the <image> rows take the features, and no gradient goes to the table.
      backend.copyRows(projected.out, featureRows, embeds, imageRows);

      const acts = decoder.forward(embeds, positions, packedBounds(positions));
      const numItems = ints(stored.read('num_items_in_batch'))[0]!;
      const result = decoder.loss(acts, labels, 1 / numItems);
      const loss = result.lossSum / numItems;
      const expectedLoss = stored.readF64('loss').data[0]!;
      assert.ok(Math.abs(loss - expectedLoss) <= 1e-5 * expectedLoss, `loss ${loss} against ${expectedLoss}`);
      assert.deepEqual(Array.from(result.positions), ints(stored.read('supervised_positions')));
      assertGradClose('token_losses', result.tokenLosses, stored.read('token_losses').data as Float32Array);
      assertGradClose('hidden_final', acts.hidden.data as Float32Array, stored.read('hidden_final').data as Float32Array);

      const dEmbeds = decoder.backward(acts, result.dHidden);
      const tableGrad = grads.get(EMBED);
      if (tableGrad) {
        const dText = backend.allocate('f32', [textPositions.length, config.hiddenSize]);
        backend.copyRows(dEmbeds, Int32Array.from(textPositions), dText, Int32Array.from(textPositions.keys()));
        const textIds = backend.allocate('i32', [textPositions.length]);
        backend.write(textIds, textPositions.map((i) => ids[i]!));
        backend.embeddingBackward(dText, textIds, tableGrad);
      }
      const dProjected = backend.allocate('f32', projected.out.shape);
      backend.copyRows(dEmbeds, imageRows, dProjected, featureRows);
      const dFeatures = projector.backward(projected, dProjected);
      // Pruned tokens and the dummy item of a text-only sample get no gradient.
      const dAll = backend.allocate('f32', visionActs.features.shape);
      backend.copyRows(dFeatures, Int32Array.from(kept.keys()), dAll, kept);
      vision.backward(visionActs, dAll);

      const compared = [...grads.keys()];
      for (const name of compared) {
        if (name === EMBED) assertTableGradient(stored, grads.get(name)!, config.hiddenSize);
        else assertGradClose(name, grads.get(name)!.data as Float32Array, stored.read(`grad/${name}`).data as Float32Array);
      }
      // Everything the stage trains was compared.
      assert.deepEqual(compared.sort(), [...trained].sort());
      inputs.close();
      stored.close();
    });
  }
});

/**
 * The encoder's training forward over every item, and which of its merged rows the projector reads: the text-only
 * dummy item's are dropped (README step 4), and with `pruned` only the tokens the stored DiffFP mask keeps.
 */
function encode(inputs: SafetensorsFile, stored: SafetensorsFile, pruned: boolean, vision: VisionEncoderTraining): { visionActs: VisionActivations; kept: Int32Array } {
  const modals = JSON.parse(inputs.metadata.modals!) as string[];
  const grids = ints(inputs.read('grid_sizes'));
  const merges = ints(inputs.read('merge_sizes'));
  const items = modals.map((modal, i) => ({ modal, frames: grids[3 * i]!, gridH: grids[3 * i + 1]!, gridW: grids[3 * i + 2]!, mergeSize: merges[i]! }));
  const visionActs = vision.forward(inputs.read('pixel_values'), items);
  const visual: number[] = [];
  let row = 0;
  for (const item of items) {
    const tokens = (item.frames * item.gridH * item.gridW) / item.mergeSize ** 2;
    if (item.modal !== 'text') for (let t = 0; t < tokens; t++) visual.push(row + t);
    row += tokens;
  }
  const mask = stored.read('compression_mask').data as Uint8Array;
  assert.equal(mask.length, visual.length, 'the DiffFP mask covers every visual token');
  return { visionActs, kept: Int32Array.from(pruned ? visual.filter((_, j) => mask[j]) : visual) };
}

/** The tied table's gradient: the stored rows, and the whole-tensor sums (README Conventions). */
function assertTableGradient(stored: SafetensorsFile, grad: Tensor, H: number): void {
  const table = grad.data as Float32Array;
  const rowIds = ints(stored.read('vocab_row_index'));
  const rows = Float32Array.from(rowIds.flatMap((r) => Array.from(table.subarray(r * H, (r + 1) * H))));
  assertGradClose('embed_tokens rows', rows, stored.read(`grad_rows/${EMBED}`).data as Float32Array);
  let sumsq = 0;
  const colsumW = new Float64Array(H);
  for (let v = 0; v < table.length / H; v++)
    for (let c = 0; c < H; c++) {
      sumsq += table[v * H + c]! ** 2;
      colsumW[c] += ((v % 7) - 3) * table[v * H + c]!;
    }
  const expectedSumsq = stored.readF64(`grad_sumsq/${EMBED}`).data[0]!;
  assert.ok(Math.abs(sumsq - expectedSumsq) <= 1e-4 * expectedSumsq, `sum of squares ${sumsq} against ${expectedSumsq}`);
  const expectedColsumW = stored.readF64(`grad_colsum_w/${EMBED}`).data;
  const scale = Math.max(...Array.from(expectedColsumW, Math.abs));
  colsumW.forEach((v, c) => assert.ok(Math.abs(v - expectedColsumW[c]!) <= 1e-4 * scale, `weighted column sum ${c}: ${v} against ${expectedColsumW[c]}`));
}
