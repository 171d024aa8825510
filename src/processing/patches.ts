/**
 * The image processor after loading (spec 2.3-2.6): target sizes for the request, Pillow-exact resize, rescale and
 * normalise in float32 exactly as numpy does, and patch flattening in block order. Its output is what the vision
 * encoder consumes: `pixel_values` [sum t*gh*gw, 3*p*p], `grid_sizes` in patch units, `merge_sizes`, `modals`.
 */
import { Tensor } from '../tensor/tensor.js';
import type { RgbImage } from './image.js';
import { targetSizes, type TargetSize } from './image-size.js';
import { DEFAULT_PROCESSOR_CONFIG, type ProcessorConfig } from './processor-config.js';
import { resizeBicubicRgb } from './resize.js';

export interface Normalization {
  rescaleFactor: number;
  mean: readonly [number, number, number];
  std: readonly [number, number, number];
}

/**
 * For each channel, the float32 value of every byte: float32(float32(float32(v * rescale) - mean) / std), with
 * v * rescale in float64 then cast (numpy's rescale) and mean/std as float32 arrays (numpy's normalise).
 */
export function normalizationTables({ rescaleFactor, mean, std }: Normalization): [Float32Array, Float32Array, Float32Array] {
  const table = (c: number) => {
    const m = Math.fround(mean[c]!), s = Math.fround(std[c]!);
    const t = new Float32Array(256);
    for (let v = 0; v < 256; v++) t[v] = Math.fround(Math.fround(v * rescaleFactor) - m) / s;
    return t;
  };
  return [table(0), table(1), table(2)];
}

/**
 * Writes the patches of equally sized frames into `out` from row `firstRow` on, in block order: row
 * (((f*(gh/m) + R)*(gw/m) + C)*m + dy)*m + dx holds the patch at pixel (p*(m*R + dy), p*(m*C + dx)) of frame f,
 * its columns ordered channel, pixel row, pixel column. Returns the number of rows written (t * gh * gw).
 */
export function patchifyInto(
  frames: readonly RgbImage[],
  mergeSize: number,
  patchSize: number,
  tables: readonly [Float32Array, Float32Array, Float32Array],
  out: Float32Array,
  firstRow: number,
): number {
  const p = patchSize, m = mergeSize, cols = 3 * p * p;
  let row = firstRow;
  for (const frame of frames) {
    const { width: W, height: H, data } = frame;
    if (H % (p * m) !== 0 || W % (p * m) !== 0) {
      throw new Error(`patchify: frame ${W}x${H} is not a multiple of ${p * m} pixels (patch ${p}, merge ${m})`);
    }
    const bh = H / (p * m), bw = W / (p * m);
    for (let R = 0; R < bh; R++) {
      for (let C = 0; C < bw; C++) {
        for (let dy = 0; dy < m; dy++) {
          for (let dx = 0; dx < m; dx++, row++) {
            const y0 = p * (m * R + dy), x0 = p * (m * C + dx);
            for (let c = 0; c < 3; c++) {
              const table = tables[c]!;
              let o = row * cols + c * p * p;
              for (let py = 0; py < p; py++) {
                let s = ((y0 + py) * W + x0) * 3 + c;
                for (let px = 0; px < p; px++, s += 3) out[o++] = table[data[s]!]!;
              }
            }
          }
        }
      }
    }
  }
  return row - firstRow;
}

export type Modality = 'image' | 'video';

/** Full-size frames of a video, delivered one at a time so that a long video is never held whole in memory. */
export interface FrameStream {
  /** Size of every frame (the first frame's decides the target size of all). */
  width: number;
  height: number;
  frameCount: number;
  /** Calls `onFrame` for each frame, in order; resolves when all were delivered. */
  read(onFrame: (frame: RgbImage, index: number) => void | Promise<void>): Promise<void>;
}

/** One visual item of a request, in conversation order. Video frames share one target size (their first frame's). */
export type VisualInput =
  | { modality: 'image'; image: RgbImage | FrameStream; mergeSize?: number }
  | { modality: 'video'; frames: readonly RgbImage[] | FrameStream; mergeSize?: number };

export interface PreprocessOptions {
  /** Settings from the checkpoint (loadProcessorConfig); defaults to the released checkpoints' values. */
  config?: ProcessorConfig;
  /** Per-request overrides of the config's token budget. */
  minTokens?: number;
  maxTokens?: number;
  /** Resize threads (see ResizeOptions). */
  threads?: number;
}

export interface VisualBatch {
  /** [sum over items of t*gh*gw, 3*p*p] float32, items in input order (cast to bf16 by the caller). */
  pixelValues: Tensor<'f32'>;
  /** (t, gh, gw) per item in patch units, not merged units. */
  gridSizes: [number, number, number][];
  mergeSizes: number[];
  modals: Modality[];
  /** Resized size per item (every frame of a video has it). */
  sizes: TargetSize[];
  /** LLM tokens per frame of each item before DiffFP: (gh/m) * (gw/m). */
  tokensPerFrame: number[];
  /** LLM tokens per item before DiffFP: t * tokensPerFrame. */
  numTokens: number[];
}

function asStream(frames: readonly RgbImage[], item: number): FrameStream {
  if (frames.length === 0) throw new Error(`preprocessVisuals: video item ${item} has no frames`);
  return {
    width: frames[0]!.width,
    height: frames[0]!.height,
    frameCount: frames.length,
    read: async (onFrame) => {
      for (const [i, frame] of frames.entries()) await onFrame(frame, i);
    },
  };
}

/**
 * Resizes, normalises and patchifies the visual items of one request as the reference image processor. Frames are
 * resized and patchified as they arrive, so only one full-size frame per item needs to exist at a time.
 */
export async function preprocessVisuals(items: readonly VisualInput[], options: PreprocessOptions = {}): Promise<VisualBatch> {
  const config = options.config ?? DEFAULT_PROCESSOR_CONFIG;
  const p = config.patchSize;
  const streams = items.map((item, i) => {
    const source = item.modality === 'image' ? item.image : item.frames;
    if ('read' in source) return source;
    return asStream(Array.isArray(source) ? source : [source as RgbImage], i);
  });
  const mergeSizes = items.map((item) => item.mergeSize ?? (item.modality === 'image' ? config.imageMergeSize : config.videoMergeSize));
  const sizes = targetSizes(
    streams.map((s, i) => ({ height: s.height, width: s.width, frames: s.frameCount, mergeSize: mergeSizes[i]! })),
    { minTokens: options.minTokens ?? config.minTokens, maxTokens: options.maxTokens ?? config.maxTokens, patchSize: p },
  );
  const gridSizes = sizes.map((s, i): [number, number, number] => [streams[i]!.frameCount, s.height / p, s.width / p]);
  const tokensPerFrame = gridSizes.map(([, gh, gw], i) => (gh / mergeSizes[i]!) * (gw / mergeSizes[i]!));
  const rows = gridSizes.reduce((sum, [t, gh, gw]) => sum + t * gh * gw, 0);
  const pixelValues = Tensor.empty('f32', [rows, 3 * p * p]);
  const tables = normalizationTables({ rescaleFactor: config.rescaleFactor, mean: config.imageMean, std: config.imageStd });
  let row = 0;
  for (const [i, stream] of streams.entries()) {
    const { width, height } = sizes[i]!;
    let delivered = 0;
    await stream.read((frame) => {
      if (delivered >= stream.frameCount) throw new Error(`preprocessVisuals: item ${i} delivered more than its ${stream.frameCount} frames`);
      const resized = resizeBicubicRgb(frame, width, height, { threads: options.threads });
      row += patchifyInto([resized], mergeSizes[i]!, p, tables, pixelValues.data, row);
      delivered++;
    });
    if (delivered !== stream.frameCount) throw new Error(`preprocessVisuals: item ${i} delivered ${delivered} of its ${stream.frameCount} frames`);
  }
  return {
    pixelValues,
    gridSizes,
    mergeSizes,
    modals: items.map((item) => item.modality),
    sizes,
    tokensPerFrame,
    numTokens: gridSizes.map(([t], i) => t * tokensPerFrame[i]!),
  };
}
