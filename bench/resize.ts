// Resize of a 12-megapixel photo to the size the processor gives it alone in a request (Case A, max_tokens 16384):
// the one preprocessing step whose cost grows with the input resolution.
import type { RgbImage } from '../src/processing/image.js';
import { targetSizes } from '../src/processing/image-size.js';
import { resizeBicubicRgb } from '../src/processing/resize.js';
import { round, timeMedian } from './stats.js';

export interface ResizeFigures {
  source: { width: number; height: number };
  target: { width: number; height: number };
  /** Median milliseconds per resize, keyed by thread count. */
  ms: Record<string, number>;
  /** Source megapixels per second, keyed by thread count. */
  megapixelsPerSecond: Record<string, number>;
}

/** A photo-like synthetic image: smooth gradients plus deterministic noise (no flat areas to flatter caches). */
export function syntheticPhoto(width: number, height: number): RgbImage {
  const data = new Uint8Array(width * height * 3);
  let x = 12345;
  for (let y = 0, i = 0; y < height; y++) {
    for (let c = 0; c < width; c++) {
      x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
      const noise = (x >>> 27) - 16;
      data[i++] = Math.max(0, Math.min(255, ((c * 255) / width + noise) | 0));
      data[i++] = Math.max(0, Math.min(255, ((y * 255) / height + noise) | 0));
      data[i++] = Math.max(0, Math.min(255, (((c + y) * 127) / (width + height) + 64 + noise) | 0));
    }
  }
  return { width, height, data };
}

/** Median time of resizing a 4000x3000 image on each thread count (1 = the calling thread only). */
export function measureResize(threadCounts: number[], runs = 7): ResizeFigures {
  const source = syntheticPhoto(4000, 3000);
  const [target] = targetSizes([{ height: source.height, width: source.width, frames: 1, mergeSize: 1 }], { maxTokens: 16384 });
  const ms: Record<string, number> = {};
  const megapixelsPerSecond: Record<string, number> = {};
  for (const n of threadCounts) {
    const seconds = timeMedian(() => resizeBicubicRgb(source, target!.width, target!.height, { threads: n }), runs, 2);
    ms[n] = round(seconds * 1000, 1);
    megapixelsPerSecond[n] = round((source.width * source.height) / 1e6 / seconds, 1);
  }
  return { source: { width: source.width, height: source.height }, target: { width: target!.width, height: target!.height }, ms, megapixelsPerSecond };
}
