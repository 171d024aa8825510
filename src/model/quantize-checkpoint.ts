/**
 * `vl3 quantize`: a bf16 checkpoint folder rewritten with its matmul weights block-quantized (docs/quantization.md).
 * Every other file is copied as it is; config.json gains a `quantization_config` naming the formats, so the loader
 * maps the packed weights in place and never needs the bf16 ones. Tensors are quantized and written one at a time:
 * memory stays at the largest tensor, whatever the model's size.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { quantizeNative } from '../tensor/native.js';
import { packedBytes, QuantizeRangeError } from '../tensor/quant.js';
import { checkOutputFolder, copyCheckpointFiles, loadCheckpoint, rewriteCheckpoint } from './checkpoint.js';
import { QUANT_LAYOUT_VERSION, QUANT_METHOD } from './config.js';
import { CheckpointError } from './errors.js';
import type { TensorSource } from './safetensors.js';
import { formatOf, type WeightFormats } from './weight-formats.js';
import { checkpointWeightSpecs, type WeightSpec } from './weight-names.js';

export interface QuantizeCheckpointOptions {
  /** A bf16 checkpoint folder. */
  from: string;
  /** A new folder (or an empty one). */
  out: string;
  formats: WeightFormats;
  /** Hears bytes of source weights done, of the total. */
  onProgress?: (done: number, total: number) => void;
}

export interface QuantizeCheckpointResult {
  tensors: number;
  quantized: number;
  bytesIn: number;
  bytesOut: number;
}

export function writeQuantizedCheckpoint(options: QuantizeCheckpointOptions): QuantizeCheckpointResult {
  const { from, out, formats } = options;
  const checkpoint = loadCheckpoint(from);
  try {
    const { config, weights } = checkpoint;
    if (config.quantization) {
      throw new CheckpointError(`checkpoint ${from} is already quantized (${config.quantization.languageModel}/${config.quantization.visionEncoder}): quantize its bf16 source instead`, from);
    }
    checkOutputFolder(out);
    const specs = new Map<string, WeightSpec>(checkpointWeightSpecs(config).map((s) => [s.name, s]));
    for (const spec of specs.values()) if (weights.has(spec.name)) weights.check(spec.name, spec.shape);

    let quantized = 0;
    let bytesIn = 0;
    let bytesOut = 0;
    rewriteCheckpoint(
      weights,
      out,
      ({ stored, name, info }, advance): TensorSource => {
        bytesIn += info.byteLength;
        const spec = specs.get(name);
        const format = spec ? formatOf(spec, formats) : 'bf16';
        if (format === 'bf16') {
          bytesOut += info.byteLength;
          return {
            dtype: info.dtype,
            shape: info.shape,
            produce: (emit) => {
              emit(weights.store.fileOf(stored).readBytes(stored));
              advance(info.byteLength);
            },
          };
        }
        const [N, K] = spec!.shape as [number, number];
        const bytes = packedBytes(format, N, K);
        quantized++;
        bytesOut += bytes;
        return {
          dtype: 'u8',
          shape: [N, bytes / N],
          produce: (emit) => {
            const source = weights.get(name, spec!.shape, ['bf16', 'f32']);
            try {
              emit(quantizeNative(format, source));
            } catch (err) {
              if (!(err instanceof QuantizeRangeError)) throw err;
              throw new CheckpointError(`checkpoint file ${info.file}: tensor "${stored}" cannot be quantized to ${format}: ${err.message}`, info.file, stored);
            } finally {
              weights.forget(name);
            }
            advance(info.byteLength);
          },
        };
      },
      () => {
        writeConfig(path.join(from, 'config.json'), path.join(out, 'config.json'), formats);
        copyCheckpointFiles(from, out, ['config.json']);
      },
      options.onProgress,
    );
    return { tensors: weights.store.names.length, quantized, bytesIn, bytesOut };
  } finally {
    checkpoint.weights.close();
  }
}

/** config.json with `quantization_config` added, everything else as it was. */
function writeConfig(source: string, target: string, formats: WeightFormats): void {
  const json = JSON.parse(fs.readFileSync(source, 'utf8')) as Record<string, unknown>;
  json['quantization_config'] = {
    quant_method: QUANT_METHOD,
    format_version: QUANT_LAYOUT_VERSION,
    block_size: 32,
    language_model: formats.language,
    vision_encoder: formats.vision,
  };
  fs.writeFileSync(target, JSON.stringify(json, null, 2) + '\n');
}

