/**
 * One micro-batch of training samples packed into a single row, as the official
 * `DataCollatorWithFlatteningForSupervisedDataset` (train.py, `use_batch_flattening`, the default) packs it.
 */
import { Tensor } from '../tensor/tensor.js';
import type { AnnotationSample, TrainingModal } from './training-annotation.js';
import { buildTrainingSample, IGNORE_INDEX, type TrainingDataOptions, type TrainingSample } from './training-sample.js';

/** What the model's training forward takes for one micro-batch. */
export interface TrainingBatch {
  /** The samples' ids one after the other (the official [1, L] row). */
  inputIds: Int32Array;
  labels: Int32Array;
  /** 0..n-1 for every sample: where a new sample starts the model restricts attention to it. */
  positionIds: Int32Array;
  /** Every item's rows, in sample order, also those of items whose tokens truncation removed. */
  pixelValues: Tensor<'f32'>;
  gridSizes: [number, number, number][];
  mergeSizes: number[];
  modals: TrainingModal[];
  /** Length of each sample in the row (after truncation). */
  samples: number[];
  /**
   * Per item, how many of its visual features the sequence still holds `<image>` ids for: all of them unless
   * truncation cut into the item, 0 for the dummy item of a text-only sample. The model keeps the first
   * `keptVisualTokens[i]` features of item i (and of its DiffFP mask) and drops the rest.
   */
  keptVisualTokens: number[];
}

export interface CollateOptions {
  /** `--model_max_length` (16384 in the scripts): each sample is cut to this many tokens. */
  modelMaxLength: number;
  /** The `<image>` id, to count the visual tokens that survive truncation. */
  imageTokenId: number;
}

/**
 * Packs samples into one row: each sample's ids and labels cut to `modelMaxLength`, its first label set to
 * IGNORE_INDEX (there is no previous token of the same sample to predict it from), positions restarting at 0; the
 * visual tensors are concatenated whole, in sample order.
 *
 * Truncation, as the official code does it: the collator cuts ids and labels per sample and leaves the pixel values
 * alone; the vision encoder still runs on every item, and the model's `_maybe_truncate_visual_tokens`
 * (videollama3_arch.py) counts the `<image>` ids left in each packed sample and drops the features beyond them (spec
 * 10.2: "count `<image>` ids per packed sample, keep that many features"). `keptVisualTokens` is that count spread
 * over the sample's items in order, since the ids a cut removes are the last ones. (The official function pairs the
 * count of sample k with item k, which is the same thing only while every sample has one item; with several images
 * in one truncated sample it keeps the wrong features. The per-item count here is what it means to do.)
 */
export function collateTrainingSamples(samples: readonly TrainingSample[], options: CollateOptions): TrainingBatch {
  const { modelMaxLength, imageTokenId } = options;
  if (samples.length === 0) throw new RangeError('collateTrainingSamples: no samples');
  if (!(Number.isInteger(modelMaxLength) && modelMaxLength >= 1)) throw new RangeError(`model_max_length must be an integer >= 1, got ${modelMaxLength}`);
  const lengths = samples.map((s) => Math.min(s.inputIds.length, modelMaxLength));
  const total = lengths.reduce((a, b) => a + b, 0);
  const inputIds = new Int32Array(total);
  const labels = new Int32Array(total);
  const positionIds = new Int32Array(total);
  const keptVisualTokens: number[] = [];
  let offset = 0;
  for (const [k, sample] of samples.entries()) {
    const n = lengths[k]!;
    inputIds.set(sample.inputIds.subarray(0, n), offset);
    labels.set(sample.labels.subarray(0, n), offset);
    if (n > 0) labels[offset] = IGNORE_INDEX;
    for (let i = 0; i < n; i++) positionIds[offset + i] = i;
    let remaining = 0;
    for (let i = 0; i < n; i++) if (sample.inputIds[i] === imageTokenId) remaining++;
    for (const tokens of sample.visualTokens) {
      const kept = Math.min(tokens, remaining);
      keptVisualTokens.push(kept);
      remaining -= kept;
    }
    offset += n;
  }

  const rowWidth = samples[0]!.pixelValues.dim(1);
  const rows = samples.reduce((sum, s) => sum + s.pixelValues.dim(0), 0);
  const pixelValues = Tensor.empty('f32', [rows, rowWidth]);
  let row = 0;
  for (const sample of samples) {
    if (sample.pixelValues.dim(1) !== rowWidth) throw new RangeError(`pixel rows of ${sample.pixelValues.dim(1)} values cannot be packed with rows of ${rowWidth}`);
    pixelValues.data.set(sample.pixelValues.data, row * rowWidth);
    row += sample.pixelValues.dim(0);
  }
  return {
    inputIds,
    labels,
    positionIds,
    pixelValues,
    gridSizes: samples.flatMap((s) => s.gridSizes.map((g): [number, number, number] => [...g])),
    mergeSizes: samples.flatMap((s) => s.mergeSizes),
    modals: samples.flatMap((s) => s.modals),
    samples: lengths,
    keptVisualTokens,
  };
}

/** The micro-batch of these annotation entries: each built (buildTrainingSample), then packed. */
export async function buildTrainingBatch(entries: readonly AnnotationSample[], options: TrainingDataOptions & { modelMaxLength: number }): Promise<TrainingBatch> {
  const samples: TrainingSample[] = [];
  for (const entry of entries) samples.push(await buildTrainingSample(entry, options));
  return collateTrainingSamples(samples, { modelMaxLength: options.modelMaxLength, imageTokenId: options.tokenizer.imageTokenId });
}
