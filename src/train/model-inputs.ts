import type { TrainingInputs } from '../model/videollama3-training.js';
import { diffFpMask } from '../processing/diffp.js';
import type { TrainingBatch } from '../processing/training-batch.js';

export interface ModelInputs extends TrainingInputs {
  /** DiffFP's keep mask over the batch's visual tokens (the dummy's excluded), computed in every stage. */
  compressionMask: Uint8Array;
}

/**
 * What the model trains on for a collated micro-batch (videollama3_arch.py `prepare_inputs_labels_for_multimodal`):
 * each item's features beyond the `<image>` ids truncation left are dropped; the DiffFP keep mask is computed on the
 * pixel values; with `useTokenCompression` (stages 3-4) the pruned tokens leave the sequence with their ids, labels
 * and positions, and each packed sample's positions are renumbered 0..n-1 (`_compress_visual_tokens`).
 */
export function modelInputs(batch: TrainingBatch, options: { imageTokenId: number; useTokenCompression: boolean }): ModelInputs {
  const rowWidth = batch.pixelValues.dim(1);
  const pixels = batch.pixelValues.data as Float32Array;
  const items = batch.gridSizes.map(([frames, gridH, gridW], i) => ({ modal: batch.modals[i]!, frames, gridH, gridW, mergeSize: batch.mergeSizes[i]! }));

  // Per item: its merged feature rows, and (images and videos) its keep mask, computed on its own pixel rows.
  const masks: Uint8Array[] = [];
  const sequenceRows: number[] = [];
  const sequenceKeep: number[] = [];
  let pixelRow = 0;
  let featureRow = 0;
  items.forEach((item, i) => {
    const rows = item.frames * item.gridH * item.gridW;
    const tokens = rows / item.mergeSize ** 2;
    if (item.modal !== 'text') {
      const modality = item.modal === 'video' ? 'video' : 'image';
      const mask = diffFpMask(pixels.subarray(pixelRow * rowWidth, (pixelRow + rows) * rowWidth), rowWidth, [{ modality, ...item }]);
      masks.push(mask);
      for (let t = 0; t < batch.keptVisualTokens[i]!; t++) {
        sequenceRows.push(featureRow + t);
        sequenceKeep.push(mask[t]!);
      }
    }
    pixelRow += rows;
    featureRow += tokens;
  });
  const compressionMask = concat(masks);

  const keep = (j: number) => !options.useTokenCompression || sequenceKeep[j] === 1;
  const inputIds: number[] = [];
  const labels: number[] = [];
  const positionIds: number[] = [];
  const visualRows: number[] = [];
  let visual = 0;
  let position = 0;
  for (let i = 0; i < batch.inputIds.length; i++) {
    // A packed sample starts where the collator restarted its positions; compression renumbers from there.
    if (batch.positionIds[i] === 0) position = 0;
    if (batch.inputIds[i] === options.imageTokenId) {
      const j = visual++;
      if (!keep(j)) continue;
      visualRows.push(sequenceRows[j]!);
    }
    inputIds.push(batch.inputIds[i]!);
    labels.push(batch.labels[i]!);
    positionIds.push(options.useTokenCompression ? position++ : batch.positionIds[i]!);
  }
  if (visual !== sequenceRows.length) throw new Error(`the batch has ${visual} <image> ids for ${sequenceRows.length} visual tokens`);
  return {
    pixelValues: batch.pixelValues,
    items,
    visualRows: Int32Array.from(visualRows),
    inputIds: Int32Array.from(inputIds),
    labels: Int32Array.from(labels),
    positionIds: Int32Array.from(positionIds),
    compressionMask,
  };
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
