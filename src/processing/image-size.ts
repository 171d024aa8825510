/**
 * Target sizes of the visual items of one request (spec 2.3): the reference's `simple_batched_resize` when every
 * item has the same merge size (Case A) and `batched_resize` when they differ (Case B). Every float operation is
 * the reference's own, in its order, so the integer results agree: Python's round() is half-to-even.
 */
import { roundHalfEven } from './rounding.js';

export interface SizedItem {
  /** Original size in pixels (for a video, its first frame's). */
  height: number;
  width: number;
  /** 1 for an image, the number of frames for a video. */
  frames: number;
  /** 1 for images, 2 for videos by default: one LLM token per (14 * mergeSize)^2 pixels. */
  mergeSize: number;
}

export interface TargetSize {
  height: number;
  width: number;
}

export interface TokenBudget {
  /** Per-item minimum in tokens of the item's own unit (Case A only). Default 16. */
  minTokens?: number;
  /** Request total in tokens of each item's own unit. Default 16384. */
  maxTokens?: number;
  /** Default 14. */
  patchSize?: number;
}

export const DEFAULT_MIN_TOKENS = 16;
export const DEFAULT_MAX_TOKENS = 16384;
export const DEFAULT_PATCH_SIZE = 14;

/** Target (height, width) per item, multiples of patchSize * mergeSize. */
export function targetSizes(items: readonly SizedItem[], budget: TokenBudget = {}): TargetSize[] {
  const minTokens = budget.minTokens ?? DEFAULT_MIN_TOKENS;
  const maxTokens = budget.maxTokens ?? DEFAULT_MAX_TOKENS;
  const patchSize = budget.patchSize ?? DEFAULT_PATCH_SIZE;
  checkInt('minTokens', minTokens, 0);
  checkInt('maxTokens', maxTokens, 1);
  checkInt('patchSize', patchSize, 1);
  items.forEach((item, i) => {
    checkInt(`item ${i} height`, item.height, 1);
    checkInt(`item ${i} width`, item.width, 1);
    checkInt(`item ${i} frames`, item.frames, 1);
    checkInt(`item ${i} mergeSize`, item.mergeSize, 1);
  });
  if (items.length === 0) return [];
  const sameMerge = items.every((item) => item.mergeSize === items[0]!.mergeSize);
  return sameMerge
    ? equalSplit(items, patchSize * items[0]!.mergeSize, minTokens, maxTokens)
    : globalScale(items, patchSize, maxTokens);
}

function checkInt(name: string, v: number, min: number): void {
  if (!Number.isInteger(v) || v < min) throw new Error(`targetSizes: ${name} must be an integer >= ${min}, got ${v}`);
}

/** Case A: every image and every video frame gets floor(max_pixels / n) pixels, then a minimum of min_pixels. */
function equalSplit(items: readonly SizedItem[], factor: number, minTokens: number, maxTokens: number): TargetSize[] {
  const minPixels = minTokens * factor * factor;
  const maxPixels = maxTokens * factor * factor;
  const n = items.reduce((sum, item) => sum + item.frames, 0);
  const budget = Math.floor(maxPixels / n);
  return items.map(({ height: h, width: w }) => {
    let hb = roundHalfEven(h / factor) * factor;
    let wb = roundHalfEven(w / factor) * factor;
    if (hb * wb > budget) {
      const beta = Math.sqrt((h * w) / budget);
      hb = Math.floor(h / beta / factor) * factor;
      wb = Math.floor(w / beta / factor) * factor;
    }
    if (hb * wb < minPixels) {
      const beta = Math.sqrt(minPixels / (h * w));
      hb = Math.ceil((h * beta) / factor) * factor;
      wb = Math.ceil((w * beta) / factor) * factor;
    }
    return { height: hb, width: wb };
  });
}

/**
 * Case B: one scale for the whole request from the total token count (each item counted in its own unit), no
 * minimum. Where the reference would produce a 0-pixel side and crash later, this throws, naming the item.
 */
function globalScale(items: readonly SizedItem[], patchSize: number, maxTokens: number): TargetSize[] {
  const total = items.reduce((sum, { frames, height, width, mergeSize }) => {
    const f = patchSize * mergeSize;
    return sum + frames * Math.ceil(height / f) * Math.ceil(width / f);
  }, 0);
  const beta = total > maxTokens ? Math.sqrt(total / maxTokens) : undefined;
  return items.map(({ height: h, width: w, mergeSize }, i) => {
    const f = patchSize * mergeSize;
    const hb = beta === undefined ? roundHalfEven(h / f) * f : Math.floor(h / beta / f) * f;
    const wb = beta === undefined ? roundHalfEven(w / f) * f : Math.floor(w / beta / f) * f;
    if (hb === 0 || wb === 0) {
      throw new Error(
        `visual item ${i} (${w}x${h} px, merge size ${mergeSize}) would be resized to ${wb}x${hb} px: it is too small ` +
          `for a request mixing merge sizes (${total} tokens against max ${maxTokens}); the reference has no minimum here`,
      );
    }
    return { height: hb, width: wb };
  });
}
