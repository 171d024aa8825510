// Reading the training goldens (fixtures/training, README "Conventions"): named f32 tensors, F64 scalars, and the
// vocab-sized embedding that is stored only as listed rows.
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before } from 'node:test';
import { loadCheckpoint } from '../src/model/checkpoint.js';
import { readModelConfig, type VideoLlama3Config } from '../src/model/config.js';
import { SafetensorsFile } from '../src/model/safetensors.js';
import { Tensor } from '../src/tensor/tensor.js';
import { loadProcessorConfig, type ProcessorConfig } from '../src/processing/processor-config.js';
import { Tokenizer } from '../src/processing/tokenizer.js';
import { readAnnotationFile } from '../src/processing/training-annotation.js';
import { buildTrainingBatch } from '../src/processing/training-batch.js';
import { modelInputs, type ModelInputs } from '../src/train/model-inputs.js';
import type { StageConfig } from '../src/train/stages.js';
import { TINY_CHECKPOINT } from './fixtures.js';

export const EMBED = 'model.embed_tokens.weight';

/** The tiny checkpoint's parameters, bf16 upcast to f32 (fresh copies: the optimizer updates them in place). */
export function checkpointParams(fixtures: string): { params: Map<string, Tensor<'f32'>>; names: string[] } {
  const ckpt = loadCheckpoint(path.join(fixtures, TINY_CHECKPOINT));
  const params = new Map<string, Tensor<'f32'>>();
  for (const name of ckpt.weights.names) {
    const t = ckpt.weights.get(name);
    params.set(name, Tensor.f32(t.shape, t.toFloat32()));
  }
  ckpt.weights.close();
  return { params, names: [...ckpt.weights.names] };
}

export class Golden {
  readonly file: SafetensorsFile;
  constructor(fixtures: string, relative: string) {
    this.file = SafetensorsFile.open(path.join(fixtures, 'training', relative));
  }
  has(name: string): boolean {
    return this.file.has(name);
  }
  f32(name: string): Tensor<'f32'> {
    const t = this.file.read(name);
    if (t.dtype !== 'f32') throw new Error(`${this.file.path}: "${name}" is ${t.dtype}, expected f32`);
    return t as Tensor<'f32'>;
  }
  f64(name: string): Float64Array {
    return this.file.readF64(name).data;
  }
  i64(name: string): number[] {
    const t = this.file.read(name);
    if (t.dtype !== 'i64') throw new Error(`${this.file.path}: "${name}" is ${t.dtype}, expected i64`);
    return Array.from(t.data as BigInt64Array, Number);
  }
  /** Parameter names stored under `<prefix>/`. */
  namesUnder(prefix: string): string[] {
    return this.file.names.filter((n) => n.startsWith(`${prefix}/`)).map((n) => n.slice(prefix.length + 1));
  }
  close(): void {
    this.file.close();
  }
}

/** Rows `index` of a [V, H] f32 tensor, as a new [R, H] tensor. */
export function gatherRows(t: Tensor<'f32'>, index: readonly number[]): Tensor<'f32'> {
  const h = t.dim(1);
  const out = Tensor.f32([index.length, h]);
  index.forEach((row, i) => out.data.set(t.data.subarray(row * h, (row + 1) * h), i * h));
  return out;
}

/** Largest |a − b| / |b| over elements (|b| = 0 counts as the absolute difference), and how many differ at all. */
export function compare(actual: Float32Array, expected: Float32Array): { maxRel: number; mismatched: number } {
  if (actual.length !== expected.length) throw new Error(`compare: ${actual.length} vs ${expected.length} elements`);
  let maxRel = 0;
  let mismatched = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i]!;
    const b = expected[i]!;
    if (Object.is(a, b)) continue;
    mismatched++;
    const rel = Math.abs(a - b) / (b === 0 ? 1 : Math.abs(b));
    maxRel = Math.max(maxRel, Number.isNaN(rel) ? Infinity : rel);
  }
  return { maxRel, mismatched };
}

/**
 * max |a − b| ≤ 1e-3 · max |b| + 1e-8, the README's check for every gradient tensor; `nonZero` also refuses a stored
 * gradient that is all zero (where one that is, as stage 1 of a text-only sample, would make the check vacuous).
 */
export function assertGradClose(name: string, actual: Float32Array, expected: Float32Array, nonZero = false): void {
  assert.equal(actual.length, expected.length, name);
  let maxRef = 0;
  let maxDiff = 0;
  for (let i = 0; i < expected.length; i++) {
    maxRef = Math.max(maxRef, Math.abs(expected[i]!));
    maxDiff = Math.max(maxDiff, Math.abs(actual[i]! - expected[i]!));
  }
  if (nonZero) assert.ok(maxRef > 0, `${name}: the stored gradient is zero`);
  assert.ok(maxDiff <= 1e-3 * maxRef + 1e-8, `${name}: max |Δ| ${maxDiff.toExponential(3)} against max |g| ${maxRef.toExponential(3)}`);
}

/** What the model trains on for a fixture sample under a stage: the scripts' data arguments with mm_max_length 256. */
export async function fixtureInputs(
  fixtures: string,
  sample: string,
  stage: StageConfig,
  data: { tokenizer: Tokenizer; processorConfig: ProcessorConfig; imageTokenId: number },
): Promise<ModelInputs> {
  const dir = path.join(fixtures, 'training', 'samples', sample);
  const batch = await buildTrainingBatch(await readAnnotationFile(path.join(dir, 'annotation.json')), {
    tokenizer: data.tokenizer,
    processorConfig: data.processorConfig,
    dataFolder: path.join(fixtures, 'media'),
    mmMaxLength: 256,
    imageMergeSize: stage.imageMergeSize,
    videoMergeSize: stage.videoMergeSize,
    fps: 1,
    maxFrames: 180,
    modelMaxLength: 16384,
  });
  return modelInputs(batch, { imageTokenId: data.imageTokenId, useTokenCompression: stage.useTokenCompression });
}

/** The tiny checkpoint as a training suite reads it; the fields are set before the suite's first test. */
export interface TinyTraining {
  config: VideoLlama3Config;
  tokenizer: Tokenizer;
  processorConfig: ProcessorConfig;
  weights: SafetensorsFile;
  /** `fixtureInputs` of a fixture sample under a stage. */
  inputsFor(sample: string, stage: StageConfig): Promise<ModelInputs>;
}

/** Opens the tiny checkpoint before the calling suite's tests and closes it after them. */
export function tinyTrainingSuite(fixtures: string | undefined): TinyTraining {
  const checkpoint = fixtures ? path.join(fixtures, TINY_CHECKPOINT) : '';
  const tiny = {
    inputsFor: (sample: string, stage: StageConfig) =>
      fixtureInputs(fixtures!, sample, stage, { tokenizer: tiny.tokenizer, processorConfig: tiny.processorConfig, imageTokenId: tiny.config.imageTokenIndex }),
  } as TinyTraining;
  before(async () => {
    tiny.config = readModelConfig(path.join(checkpoint, 'config.json'));
    tiny.tokenizer = await Tokenizer.load(checkpoint);
    tiny.processorConfig = await loadProcessorConfig(checkpoint);
    tiny.weights = SafetensorsFile.open(path.join(checkpoint, 'model.safetensors'));
  });
  after(() => {
    tiny.tokenizer?.close();
    tiny.weights?.close();
  });
  return tiny;
}
