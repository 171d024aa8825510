/**
 * The Differential Frame Pruner (spec 4.2, 4.3): drops the merged video tokens whose m×m×588 pixel block barely
 * changed since the previous sampled frame. Pixels arrive in block order, so the pixel rows of merged token k of a
 * frame are rows k·m²..k·m²+m²−1 of that frame — the same order as the merged tokens.
 */

export interface PrunableItem {
  modality: 'image' | 'video';
  frames: number;
  gridH: number;
  gridW: number;
  mergeSize: number;
}

export interface PruneOptions {
  /** Keep a token whose metric is strictly above this (compared in bf16, as the reference). Default 0.1. */
  threshold?: number;
  /** A frame keeping fewer tokens keeps its first (top-left) token. Default 1. */
  minTokens?: number;
}

// Round-to-nearest-even to bf16, returned as the float32 value: the reference runs DiffFP on bf16 tensors.
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);
function bf16(x: number): number {
  scratchF32[0] = x;
  const u = scratchU32[0]!;
  scratchU32[0] = ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) << 16;
  return scratchF32[0]!;
}

/**
 * Keep mask over all merged visual tokens of a request (items in order, frames in order, tokens in raster order of
 * the merged grid): images and single-frame videos keep everything; frame 0 of a video is kept whole; for later
 * frames, metric = bf16(255 · bf16(mean bf16|bf16(x_f) − bf16(x_{f−1})|)) and a token is kept iff metric > bf16(τ).
 */
export function diffFpMask(pixelValues: Float32Array, rowWidth: number, items: readonly PrunableItem[], options: PruneOptions = {}): Uint8Array {
  const threshold = bf16(options.threshold ?? 0.1);
  const minTokens = options.minTokens ?? 1;
  const total = items.reduce((n, it) => n + (it.frames * it.gridH * it.gridW) / it.mergeSize ** 2, 0);
  const mask = new Uint8Array(total).fill(1);
  let row = 0;
  let token = 0;
  for (const it of items) {
    const m2 = it.mergeSize ** 2;
    const perFrame = (it.gridH * it.gridW) / m2;
    const frameRows = it.gridH * it.gridW;
    if (it.modality === 'video' && it.frames > 1) {
      const blockValues = m2 * rowWidth;
      for (let f = 1; f < it.frames; f++) {
        const cur = (row + f * frameRows) * rowWidth;
        const prev = cur - frameRows * rowWidth;
        let kept = 0;
        for (let k = 0; k < perFrame; k++) {
          let sum = 0;
          const base = k * blockValues;
          for (let i = 0; i < blockValues; i++) {
            const d = bf16(bf16(pixelValues[cur + base + i]!) - bf16(pixelValues[prev + base + i]!));
            sum = Math.fround(sum + Math.abs(d));
          }
          const metric = bf16(Math.fround(255 * bf16(Math.fround(sum / blockValues))));
          const keep = metric > threshold;
          mask[token + f * perFrame + k] = keep ? 1 : 0;
          if (keep) kept++;
        }
        if (kept < minTokens) mask[token + f * perFrame] = 1;
      }
    }
    row += it.frames * frameRows;
    token += it.frames * perFrame;
  }
  return mask;
}

/** Drops the j-th image token of `inputIds` where mask[j] is 0; text tokens always stay. */
export function pruneImageTokens(inputIds: readonly number[], imageTokenId: number, mask: Uint8Array): number[] {
  const out: number[] = [];
  let j = 0;
  for (const id of inputIds) {
    if (id === imageTokenId) {
      if (j >= mask.length) throw new Error(`the prompt has more image tokens than the ${mask.length} visual tokens of its media`);
      if (mask[j++]) out.push(id);
    } else {
      out.push(id);
    }
  }
  if (j !== mask.length) throw new Error(`the prompt has ${j} image tokens but its media have ${mask.length} visual tokens`);
  return out;
}
