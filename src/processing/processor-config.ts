/**
 * The image processor's and processor's settings from a checkpoint folder (spec 1.4): `preprocessor_config.json`
 * and `processor_config.json`. Missing files or keys take the values the released checkpoints ship (not the Python
 * class fallbacks, which would be the OpenAI-CLIP mean/std).
 */
import { join } from 'node:path';

import { isPlainObject, readJsonFile } from './json-file.js';

export interface ProcessorConfig {
  imageMean: readonly [number, number, number];
  imageStd: readonly [number, number, number];
  /** 1/255 in the checkpoints. */
  rescaleFactor: number;
  patchSize: number;
  minTokens: number;
  maxTokens: number;
  imageMergeSize: number;
  videoMergeSize: number;
  /** Video sampling defaults for items that do not set their own. */
  fps: number;
  maxFrames: number;
}

export const DEFAULT_PROCESSOR_CONFIG: Readonly<ProcessorConfig> = Object.freeze({
  imageMean: [0.5, 0.5, 0.5] as const,
  imageStd: [0.5, 0.5, 0.5] as const,
  rescaleFactor: 1 / 255,
  patchSize: 14,
  minTokens: 16,
  maxTokens: 16384,
  imageMergeSize: 1,
  videoMergeSize: 2,
  fps: 1,
  maxFrames: 128,
});

export const PREPROCESSOR_CONFIG_FILE = 'preprocessor_config.json';
export const PROCESSOR_CONFIG_FILE = 'processor_config.json';

/**
 * Reads both files from a checkpoint folder; either may be missing, and `onMissing` hears of each that is (the
 * defaults then decide the image size and normalisation, which a user would want to know).
 */
export async function loadProcessorConfig(checkpointDir: string, onMissing?: (file: string) => void): Promise<ProcessorConfig> {
  const read = async (name: string) => {
    const file = join(checkpointDir, name);
    const value = await readJsonFile(file, { optional: true });
    if (value === undefined) onMissing?.(file);
    return value;
  };
  const pre = await read(PREPROCESSOR_CONFIG_FILE);
  const proc = await read(PROCESSOR_CONFIG_FILE);
  return parseProcessorConfig(pre, proc, checkpointDir);
}

/** Builds the config from the two parsed JSON values (undefined = file absent). `where` names them in errors. */
export function parseProcessorConfig(preprocessor: unknown, processor: unknown, where = 'checkpoint'): ProcessorConfig {
  const d = DEFAULT_PROCESSOR_CONFIG;
  const pre = section(preprocessor, `${where}/${PREPROCESSOR_CONFIG_FILE}`);
  const proc = section(processor, `${where}/${PROCESSOR_CONFIG_FILE}`);
  return {
    imageMean: pre.triple('image_mean', d.imageMean),
    imageStd: pre.triple('image_std', d.imageStd, true),
    rescaleFactor: pre.number('rescale_factor', d.rescaleFactor, true),
    patchSize: pre.integer('patch_size', d.patchSize, 1),
    minTokens: pre.integer('min_tokens', d.minTokens, 0),
    maxTokens: pre.integer('max_tokens', d.maxTokens, 1),
    imageMergeSize: proc.integer('image_merge_size', d.imageMergeSize, 1),
    videoMergeSize: proc.integer('video_merge_size', d.videoMergeSize, 1),
    fps: proc.number('fps', d.fps, true),
    maxFrames: proc.integer('max_frames', d.maxFrames, 1),
  };
}

function section(value: unknown, file: string) {
  if (value !== undefined && !isPlainObject(value)) throw new Error(`${file}: expected a JSON object`);
  const obj = (value ?? {}) as Record<string, unknown>;
  const bad = (key: string, what: string): never => {
    throw new Error(`${file}: "${key}" must be ${what}, got ${JSON.stringify(obj[key])}`);
  };
  return {
    number(key: string, fallback: number, positive = false): number {
      const v = obj[key];
      if (v === undefined || v === null) return fallback;
      if (typeof v !== 'number' || !Number.isFinite(v) || (positive && v <= 0)) bad(key, positive ? 'a positive number' : 'a number');
      return v as number;
    },
    integer(key: string, fallback: number, min: number): number {
      const v = obj[key];
      if (v === undefined || v === null) return fallback;
      if (typeof v !== 'number' || !Number.isInteger(v) || v < min) bad(key, `an integer >= ${min}`);
      return v as number;
    },
    triple(key: string, fallback: readonly [number, number, number], nonZero = false): readonly [number, number, number] {
      const v = obj[key];
      if (v === undefined || v === null) return fallback;
      // A single number means the same value for the three channels, as the Python processor accepts.
      const arr = typeof v === 'number' ? [v, v, v] : v;
      if (!Array.isArray(arr) || arr.length !== 3 || !arr.every((x) => typeof x === 'number' && Number.isFinite(x) && (!nonZero || x !== 0))) {
        bad(key, `three finite numbers${nonZero ? ' (non-zero)' : ''}`);
      }
      return arr as unknown as readonly [number, number, number];
    },
  };
}
