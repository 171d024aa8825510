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
import { canonicalWeightName, copyCheckpointFiles, loadCheckpoint } from './checkpoint.js';
import { QUANT_LAYOUT_VERSION, QUANT_METHOD } from './config.js';
import { CheckpointError } from './errors.js';
import { SINGLE_FILE_NAME, writeSafetensorsFrom, type TensorSource } from './safetensors.js';
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
    if (fs.existsSync(out) && (!fs.statSync(out).isDirectory() || fs.readdirSync(out).length > 0)) {
      throw new Error(`--out ${out} exists and is not an empty folder`);
    }
    const specs = new Map<string, WeightSpec>(checkpointWeightSpecs(config).map((s) => [s.name, s]));
    for (const spec of specs.values()) if (weights.has(spec.name)) weights.check(spec.name, spec.shape);

    const sources: Record<string, TensorSource> = {};
    let quantized = 0;
    let bytesIn = 0;
    let bytesOut = 0;
    let done = 0;
    const total = weights.names.reduce((sum, name) => sum + weights.info(name).byteLength, 0);
    const advance = (bytes: number) => options.onProgress?.((done += bytes), total);
    for (const stored of weights.store.names) {
      const name = canonicalWeightName(stored);
      const info = weights.info(name);
      bytesIn += info.byteLength;
      const spec = specs.get(name);
      const format = spec ? formatOf(spec, formats) : 'bf16';
      if (info.dtype === 'f64') throw new CheckpointError(`checkpoint file ${info.file}: tensor "${stored}" is F64, which a model checkpoint does not hold`, info.file, stored);
      if (format === 'bf16') {
        bytesOut += info.byteLength;
        sources[stored] = {
          dtype: info.dtype,
          shape: info.shape,
          produce: (emit) => {
            emit(new Uint8Array(weights.store.fileOf(stored).readBytes(stored)));
            advance(info.byteLength);
          },
        };
        continue;
      }
      const [N, K] = spec!.shape as [number, number];
      const bytes = packedBytes(format, N, K);
      quantized++;
      bytesOut += bytes;
      sources[stored] = {
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
    }

    fs.mkdirSync(out, { recursive: true });
    try {
      writeSafetensorsFrom(path.join(out, SINGLE_FILE_NAME), sources, { format: 'pt' });
      writeConfig(path.join(from, 'config.json'), path.join(out, 'config.json'), formats);
      copyCheckpointFiles(from, out, ['config.json']);
    } catch (err) {
      fs.rmSync(out, { recursive: true, force: true });
      throw err;
    }
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

