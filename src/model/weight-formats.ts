/**
 * The format each weight is held in, and the weight source the model parts load from. A checkpoint stores its matmul
 * weights in bf16, or block-quantized when `vl3 quantize` wrote it (config.json `quantization_config`, each such
 * weight a U8 tensor of its packed bytes, docs/quantization.md); a load may ask for a quantized format for the
 * language model and the vision encoder separately, quantizing bf16 weights as they are read.
 */
import { QuantizeRangeError, packedBytes } from '../tensor/quant.js';
import { quantizeNative } from '../tensor/native.js';
import { Tensor } from '../tensor/tensor.js';
import type { WeightFormat } from '../tensor/dtype.js';
import { canonicalWeightName, type CheckpointWeights } from './checkpoint.js';
import type { CheckpointQuantization } from './config.js';
import { AdapterError, CheckpointError } from './errors.js';
import { f32ToBf16 } from '../tensor/dtype.js';
import { mergeLoraPair, type AdapterMerge } from './lora.js';
import type { WeightSpec } from './weight-names.js';

/** Where model parts get their weights: the tensor for a spec, checked against its shape, in its load format. */
export interface WeightSource {
  get(spec: WeightSpec): Tensor;
}

/** The format of the language model's weights (decoder matmuls, embedding table, LM head) and the vision side's
 * (encoder and projector matmuls). Norms, biases and the patch embedding always stay as stored. */
export interface WeightFormats {
  language: WeightFormat;
  vision: WeightFormat;
}

export type ModelPart = keyof WeightFormats;

const VISION_PREFIXES = ['model.vision_encoder.', 'model.mm_projector.'];

export function partOf(name: string): ModelPart {
  const canonical = canonicalWeightName(name);
  return VISION_PREFIXES.some((p) => canonical.startsWith(p)) ? 'vision' : 'language';
}

/**
 * The format `spec` is held in under `formats`: its part's format for a matmul weight or embedding table whose rows
 * are whole blocks of 32 (the encoder's fc2, 4304 wide, is not), else 'bf16' (as stored).
 */
export function formatOf(spec: WeightSpec, formats: WeightFormats): WeightFormat {
  if (!spec.quantizable || spec.shape.length !== 2 || spec.shape[1]! % 32 !== 0) return 'bf16';
  return formats[partOf(spec.name)];
}

/** The formats a checkpoint stores its weights in. */
export function storedFormats(quantization: CheckpointQuantization | null): WeightFormats {
  return quantization ? { language: quantization.languageModel, vision: quantization.visionEncoder } : { language: 'bf16', vision: 'bf16' };
}

/**
 * A checkpoint's weights in the formats asked for. A stored quantized weight is used in place (a view of the mapped
 * file); a bf16 weight asked for in a quantized format is quantized once, and its bf16 copy is dropped. Weights of
 * one stored tensor (a tied LM head and the embeddings) share one result. With an adapter, each adapted weight is
 * W + scaling·B·A, merged in f32 and rounded back to its stored dtype before any quantization, so that inference runs
 * as fast as without it.
 */
export class FormattedWeights implements WeightSource {
  readonly stored: WeightFormats;
  readonly formats: WeightFormats;
  private readonly made = new Map<string, Tensor>();

  constructor(
    readonly weights: CheckpointWeights,
    quantization: CheckpointQuantization | null,
    requested: Partial<WeightFormats> = {},
    private readonly adapter?: AdapterMerge,
  ) {
    this.stored = storedFormats(quantization);
    this.formats = { language: requested.language ?? this.stored.language, vision: requested.vision ?? this.stored.vision };
    for (const part of ['language', 'vision'] as const) {
      const stored = this.stored[part];
      if (stored !== 'bf16' && this.formats[part] !== stored) {
        throw new CheckpointError(
          `checkpoint ${weights.store.folder} stores the ${part === 'language' ? 'language model' : 'vision encoder'} weights as ${stored}; ` +
            `they cannot be loaded as ${this.formats[part]} (quantize the bf16 checkpoint to ${this.formats[part]} instead)`,
          weights.store.folder,
        );
      }
      const adapted = adapter && [...adapter.pairs.keys()].find((name) => partOf(name) === part);
      if (stored !== 'bf16' && adapted) {
        throw new AdapterError(
          `adapter ${adapter.dir} adapts ${adapted.slice(0, -'.weight'.length)}, but checkpoint ${weights.store.folder} stores that part as ${stored}: ` +
            `merge the adapter into its bf16 source (or load that with --weights ${stored})`,
          adapter.dir,
          adapted.slice(0, -'.weight'.length),
        );
      }
    }
  }

  /** Checks the stored tensor of `spec` from its header alone: a quantized one must be its packed bytes. */
  check(spec: WeightSpec): void {
    const format = formatOf(spec, this.stored);
    if (format === 'bf16') {
      this.weights.check(spec.name, spec.shape);
      return;
    }
    const [N, K] = spec.shape as [number, number];
    const expected = [N, packedBytes(format, N, K) / Math.max(N, 1)];
    const info = this.weights.info(spec.name);
    if (info.dtype !== 'u8' || info.shape.length !== 2 || info.shape[0] !== N || info.shape[1] !== expected[1]) {
      const part = partOf(spec.name) === 'language' ? 'language_model' : 'vision_encoder';
      throw new CheckpointError(
        `checkpoint file ${info.file}: tensor "${spec.name}" is ${info.dtype.toUpperCase()} [${info.shape.join(', ')}], but the config's ` +
          `quantization_config.${part} is ${format}, stored as U8 [${expected.join(', ')}] for a [${N}, ${K}] weight`,
        info.file,
        spec.name,
      );
    }
  }

  get(spec: WeightSpec): Tensor {
    const stored = this.weights.check(spec.name).stored;
    const cached = this.made.get(stored);
    if (cached) return cached;
    const storedFormat = formatOf(spec, this.stored);
    const format = formatOf(spec, this.formats);
    let tensor: Tensor;
    if (storedFormat !== 'bf16') {
      this.check(spec);
      const bytes = this.weights.get(spec.name);
      tensor = new Tensor(storedFormat, spec.shape, bytes.storage, bytes.byteOffset);
    } else if (format === 'bf16' && !this.adapter?.pairs.has(spec.name) && !this.adapter?.replacements?.has(spec.name)) {
      tensor = this.weights.get(spec.name, spec.shape);
    } else {
      const source = this.replacement(spec) ?? this.weights.get(spec.name, spec.shape, ['bf16', 'f32']);
      const pair = this.adapter?.pairs.get(spec.name);
      const merged = pair ? mergeLoraPair(source, pair, this.adapter!.scaling, this.adapter!.backend) : source;
      tensor = format === 'bf16' ? merged : this.quantize(spec, format, merged);
      // Only the merged or quantized copy is used from here on.
      this.weights.forget(spec.name);
    }
    this.made.set(stored, tensor);
    return tensor;
  }

  private replacement(spec: WeightSpec): Tensor | undefined {
    return this.adapter && trainedReplacement(this.adapter, spec.name, this.weights.info(spec.name));
  }

  private quantize(spec: WeightSpec, format: Exclude<WeightFormat, 'bf16'>, source: Tensor): Tensor {
    try {
      return new Tensor(format, spec.shape, quantizeNative(format, source));
    } catch (err) {
      if (!(err instanceof QuantizeRangeError)) throw err;
      const file = this.weights.info(spec.name).file;
      throw new CheckpointError(`checkpoint file ${file}: tensor "${spec.name}" cannot be quantized to ${format}: ${err.message}`, file, spec.name);
    }
  }
}

/**
 * A weight an adapter's run trained whole (`AdapterMerge.replacements`), in the stored weight's dtype, or undefined
 * when the adapter has none for `name`; a shape other than the checkpoint's is an AdapterError naming the weight.
 */
export function trainedReplacement(adapter: AdapterMerge, name: string, stored: { dtype: string; shape: readonly number[] }): Tensor | undefined {
  const trained = adapter.replacements?.get(name);
  if (!trained) return undefined;
  if (trained.shape.join() !== stored.shape.join()) {
    throw new AdapterError(`adapter ${adapter.dir}: ${name} is [${trained.shape.join(', ')}], the checkpoint's [${stored.shape.join(', ')}]`, adapter.dir, name);
  }
  if (stored.dtype === 'f32') return trained;
  const bits = new Uint16Array(trained.numel);
  for (let i = 0; i < bits.length; i++) bits[i] = f32ToBf16(trained.data[i] as number);
  return new Tensor('bf16', trained.shape, bits);
}
