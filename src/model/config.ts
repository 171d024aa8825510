/**
 * Typed views of a checkpoint's `config.json` (Videollama3Qwen2Config = Qwen2Config + five VideoLLaMA3 fields + a
 * nested vision-encoder config) and `generation_config.json` (spec 1.2, 1.3).
 *
 * Keys that fix tensor shapes are required: a checkpoint without them cannot be loaded correctly, so guessing a
 * default would only move the error somewhere less clear. Keys with a well-defined class default take that default
 * when absent. Any key present with the wrong JSON type is an error naming the file and the key.
 */
import * as fs from 'node:fs';
import { WEIGHT_FORMATS, type WeightFormat } from '../tensor/dtype.js';
import { CheckpointError } from './errors.js';

/** The `quantization_config` a checkpoint written by `vl3 quantize` carries (docs/quantization.md). */
export interface CheckpointQuantization {
  /** The format of the decoder's matmul weights and its embedding table (and LM head). */
  languageModel: WeightFormat;
  /** The format of the vision encoder's and the projector's matmul weights. */
  visionEncoder: WeightFormat;
}

/** `quant_method` of our checkpoints, and the version of the packed layout they hold. */
export const QUANT_METHOD = 'vl3';
export const QUANT_LAYOUT_VERSION = 4;

export interface VisionEncoderConfig {
  modelType: string;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  /** hiddenSize / numAttentionHeads (72 for the released encoder). */
  headDim: number;
  patchSize: number;
  numChannels: number;
  hiddenAct: string;
  layerNormEps: number;
  attentionDropout: number;
}

export interface VideoLlama3Config {
  modelType: string;
  architectures: string[];
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  /** hiddenSize / numAttentionHeads: Qwen2Config of transformers 4.46 has no head_dim key. */
  headDim: number;
  hiddenAct: string;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: Record<string, unknown> | null;
  maxPositionEmbeddings: number;
  useSlidingWindow: boolean;
  slidingWindow: number | null;
  maxWindowLayers: number;
  tieWordEmbeddings: boolean;
  attentionDropout: number;
  bosTokenId: number | null;
  eosTokenId: number | null;
  torchDtype: string | null;
  /** Token id of `<image>` (151665 in the released checkpoints). */
  imageTokenIndex: number;
  /** Whether DiffFP pruning of video tokens is on. */
  useTokenCompression: boolean;
  mmProjectorType: string;
  /** Non-null only in the local training format, where it names a separately stored encoder. */
  visionEncoder: string | null;
  visionEncoderConfig: VisionEncoderConfig;
  /** Present when the checkpoint's weights are stored block-quantized (written by `vl3 quantize`). */
  quantization: CheckpointQuantization | null;
}

export interface GenerationConfig {
  doSample: boolean;
  temperature: number;
  topP: number;
  topK: number;
  repetitionPenalty: number;
  /** Generation stops at any of these (the file may hold one id or a list). */
  eosTokenIds: number[];
  padTokenId: number | null;
  bosTokenId: number | null;
  maxNewTokens: number | null;
}

type Json = Record<string, unknown>;

/** Typed access to the keys of one JSON object, with errors that name the file and the (dotted) key. */
class KeyReader {
  constructor(
    private readonly file: string,
    private readonly obj: Json,
    private readonly prefix = '',
  ) {}

  private fail(key: string, problem: string): never {
    throw new CheckpointError(`${this.file}: key "${this.prefix}${key}" ${problem}`, this.file);
  }

  private get(key: string): unknown {
    if (!(key in this.obj)) this.fail(key, 'is missing');
    return this.obj[key];
  }

  private check<T>(key: string, value: unknown, ok: boolean, what: string): T {
    if (!ok) this.fail(key, `must be ${what}, got ${JSON.stringify(value)}`);
    return value as T;
  }

  has(key: string): boolean {
    return key in this.obj && this.obj[key] !== undefined;
  }

  int(key: string, fallback?: number): number {
    if (fallback !== undefined && !this.has(key)) return fallback;
    const v = this.get(key);
    return this.check(key, v, Number.isSafeInteger(v), 'an integer');
  }

  positiveInt(key: string, fallback?: number): number {
    const v = this.int(key, fallback);
    if (v <= 0) this.fail(key, `must be positive, got ${v}`);
    return v;
  }

  num(key: string, fallback?: number): number {
    if (fallback !== undefined && !this.has(key)) return fallback;
    const v = this.get(key);
    return this.check(key, v, typeof v === 'number' && Number.isFinite(v), 'a number');
  }

  bool(key: string, fallback?: boolean): boolean {
    if (fallback !== undefined && !this.has(key)) return fallback;
    const v = this.get(key);
    return this.check(key, v, typeof v === 'boolean', 'true or false');
  }

  str(key: string, fallback?: string): string {
    if (fallback !== undefined && !this.has(key)) return fallback;
    const v = this.get(key);
    return this.check(key, v, typeof v === 'string', 'a string');
  }

  /** Absent or null → null. */
  optionalInt(key: string): number | null {
    return this.has(key) && this.obj[key] !== null ? this.int(key) : null;
  }

  optionalStr(key: string): string | null {
    return this.has(key) && this.obj[key] !== null ? this.str(key) : null;
  }

  optionalObject(key: string): Json | null {
    if (!this.has(key) || this.obj[key] === null) return null;
    const v = this.obj[key];
    return this.check(key, v, typeof v === 'object' && !Array.isArray(v), 'an object or null');
  }

  stringList(key: string, fallback: string[]): string[] {
    if (!this.has(key)) return fallback;
    const v = this.get(key);
    return this.check(key, v, Array.isArray(v) && v.every((s) => typeof s === 'string'), 'a list of strings');
  }

  /** An id or a list of ids (HF accepts both for eos_token_id); absent or null → []. */
  idList(key: string): number[] {
    if (!this.has(key) || this.obj[key] === null) return [];
    const v = this.obj[key];
    if (Number.isSafeInteger(v)) return [v as number];
    return [...this.check<number[]>(key, v, Array.isArray(v) && v.every((x) => Number.isSafeInteger(x)), 'an id or a list of ids')];
  }

  nested(key: string): KeyReader {
    const v = this.get(key);
    this.check(key, v, v !== null && typeof v === 'object' && !Array.isArray(v), 'an object');
    return new KeyReader(this.file, v as Json, `${this.prefix}${key}.`);
  }
}

function readJsonObject(file: string): Json {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new CheckpointError(`${file}: cannot read (${(err as Error).message})`, file);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new CheckpointError(`${file}: invalid JSON (${(err as Error).message})`, file);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new CheckpointError(`${file}: not a JSON object`, file);
  return value as Json;
}

function headDimOf(file: string, keyPrefix: string, hidden: number, heads: number): number {
  if (hidden % heads !== 0) {
    throw new CheckpointError(`${file}: "${keyPrefix}hidden_size" ${hidden} is not divisible by "${keyPrefix}num_attention_heads" ${heads}`, file);
  }
  return hidden / heads;
}

function parseVisionEncoderConfig(file: string, r: KeyReader): VisionEncoderConfig {
  const hiddenSize = r.positiveInt('hidden_size');
  const numAttentionHeads = r.positiveInt('num_attention_heads');
  return {
    modelType: r.str('model_type', 'videollama3_vision_encoder'),
    hiddenSize,
    intermediateSize: r.positiveInt('intermediate_size'),
    numHiddenLayers: r.positiveInt('num_hidden_layers'),
    numAttentionHeads,
    headDim: headDimOf(file, 'vision_encoder_config.', hiddenSize, numAttentionHeads),
    patchSize: r.positiveInt('patch_size'),
    // Class defaults of Videollama3VisionEncoderConfig (spec 1.2); the released configs omit these keys.
    numChannels: r.positiveInt('num_channels', 3),
    hiddenAct: r.str('hidden_act', 'gelu_pytorch_tanh'),
    layerNormEps: r.num('layer_norm_eps', 1e-6),
    attentionDropout: r.num('attention_dropout', 0),
  };
}

/** Parses a config.json object; `file` is only used in error messages. */
export function parseModelConfig(json: Json, file = 'config.json'): VideoLlama3Config {
  const r = new KeyReader(file, json);
  const modelType = r.str('model_type');
  if (modelType !== 'videollama3_qwen2') {
    throw new CheckpointError(`${file}: key "model_type" is "${modelType}"; only "videollama3_qwen2" checkpoints are supported`, file);
  }
  const hiddenSize = r.positiveInt('hidden_size');
  const numAttentionHeads = r.positiveInt('num_attention_heads');
  const numHiddenLayers = r.positiveInt('num_hidden_layers');
  // Qwen2Config: a missing num_key_value_heads means plain multi-head attention.
  const numKeyValueHeads = r.positiveInt('num_key_value_heads', numAttentionHeads);
  if (numAttentionHeads % numKeyValueHeads !== 0) {
    throw new CheckpointError(`${file}: "num_attention_heads" ${numAttentionHeads} is not a multiple of "num_key_value_heads" ${numKeyValueHeads}`, file);
  }
  return {
    modelType,
    architectures: r.stringList('architectures', []),
    vocabSize: r.positiveInt('vocab_size'),
    hiddenSize,
    intermediateSize: r.positiveInt('intermediate_size'),
    numHiddenLayers,
    numAttentionHeads,
    numKeyValueHeads,
    headDim: headDimOf(file, '', hiddenSize, numAttentionHeads),
    hiddenAct: r.str('hidden_act', 'silu'),
    rmsNormEps: r.num('rms_norm_eps'),
    ropeTheta: r.num('rope_theta'),
    ropeScaling: r.optionalObject('rope_scaling'),
    maxPositionEmbeddings: r.positiveInt('max_position_embeddings', 32768),
    useSlidingWindow: r.bool('use_sliding_window', false),
    slidingWindow: r.optionalInt('sliding_window'),
    maxWindowLayers: r.int('max_window_layers', numHiddenLayers),
    tieWordEmbeddings: r.bool('tie_word_embeddings'),
    attentionDropout: r.num('attention_dropout', 0),
    bosTokenId: r.optionalInt('bos_token_id'),
    eosTokenId: r.optionalInt('eos_token_id'),
    torchDtype: r.optionalStr('torch_dtype'),
    imageTokenIndex: r.int('image_token_index'),
    useTokenCompression: r.bool('use_token_compression', true),
    mmProjectorType: r.str('mm_projector_type', 'mlp2x_gelu'),
    visionEncoder: r.optionalStr('vision_encoder'),
    visionEncoderConfig: parseVisionEncoderConfig(file, r.nested('vision_encoder_config')),
    quantization: parseQuantization(file, r.optionalObject('quantization_config')),
  };
}

function parseQuantization(file: string, json: Json | null): CheckpointQuantization | null {
  if (json === null) return null;
  const r = new KeyReader(`${file}: "quantization_config"`, json);
  const method = r.str('quant_method');
  if (method !== QUANT_METHOD) {
    throw new CheckpointError(`${file}: "quantization_config" has quant_method "${method}"; only "${QUANT_METHOD}" (written by vl3 quantize) is supported`, file);
  }
  const version = r.int('format_version');
  if (version !== QUANT_LAYOUT_VERSION) {
    throw new CheckpointError(`${file}: "quantization_config" has format_version ${version}; this version of videollama3 reads ${QUANT_LAYOUT_VERSION}; quantize the bf16 checkpoint again with \`vl3 quantize\``, file);
  }
  const format = (key: string): WeightFormat => {
    const v = r.str(key);
    if (!(WEIGHT_FORMATS as readonly string[]).includes(v)) {
      throw new CheckpointError(`${file}: "quantization_config.${key}" is "${v}", expected one of ${WEIGHT_FORMATS.join(', ')}`, file);
    }
    return v as WeightFormat;
  };
  if (r.int('block_size') !== 32) throw new CheckpointError(`${file}: "quantization_config.block_size" must be 32`, file);
  return { languageModel: format('language_model'), visionEncoder: format('vision_encoder') };
}

/**
 * Parses a generation_config.json object. Absent keys take transformers' GenerationConfig defaults (greedy,
 * temperature 1, top_p 1, top_k 50, no repetition penalty).
 */
export function parseGenerationConfig(json: Json, file = 'generation_config.json'): GenerationConfig {
  const r = new KeyReader(file, json);
  return {
    doSample: r.bool('do_sample', false),
    temperature: r.num('temperature', 1),
    topP: r.num('top_p', 1),
    topK: r.int('top_k', 50),
    repetitionPenalty: r.num('repetition_penalty', 1),
    eosTokenIds: r.idList('eos_token_id'),
    padTokenId: r.optionalInt('pad_token_id'),
    bosTokenId: r.optionalInt('bos_token_id'),
    maxNewTokens: r.optionalInt('max_new_tokens'),
  };
}

/** What transformers derives when a checkpoint has no generation_config.json: the model config's special ids. */
export function generationConfigFromModel(config: VideoLlama3Config): GenerationConfig {
  return parseGenerationConfig({
    eos_token_id: config.eosTokenId,
    bos_token_id: config.bosTokenId,
  });
}

export function readModelConfig(file: string): VideoLlama3Config {
  return parseModelConfig(readJsonObject(file), file);
}

export function readGenerationConfig(file: string): GenerationConfig {
  return parseGenerationConfig(readJsonObject(file), file);
}
