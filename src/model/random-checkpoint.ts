/**
 * Random-weight stand-ins for DAMO-NLP-SG/VideoLLaMA3-2B and -7B: the real file set, config files, tensor names,
 * shapes, dtype (bf16) and shard layout, with deterministic random values. They let the loader, the engine and
 * benchmarks run at full size without downloading 4–16 GB, and exercise the same code paths as the real files.
 *
 * Values: linear/conv weights N(0, 1/fan_in) (keeps activations at unit scale through the layers), norm weights
 * 1 + N(0, 0.1²), biases N(0, 0.05²), token embeddings N(0, 0.05²) — the fixture checkpoint's recipe without its ×2
 * gain on decoder linears. Every tensor has its own generator seeded from (seed, name), so a tensor's values do not
 * depend on which other tensors exist or how they are sharded.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { f32ToBf16 } from '../tensor/dtype.js';
import { numelOf } from '../tensor/tensor.js';
import type { VideoLlama3Config, VisionEncoderConfig } from './config.js';
import { INDEX_FILE_NAME, SINGLE_FILE_NAME, writeSafetensorsFrom, type TensorSource } from './safetensors.js';

export type RandomPreset = '2b' | '7b';

/** The sizes that shape a checkpoint's tensors: a subset of the parsed config. */
export type VisionShape = Pick<VisionEncoderConfig, 'hiddenSize' | 'intermediateSize' | 'numHiddenLayers' | 'numAttentionHeads' | 'patchSize'>;

export type RandomCheckpointDims = Pick<
  VideoLlama3Config,
  | 'vocabSize'
  | 'hiddenSize'
  | 'intermediateSize'
  | 'numHiddenLayers'
  | 'numAttentionHeads'
  | 'numKeyValueHeads'
  | 'maxWindowLayers'
  | 'tieWordEmbeddings'
> & { vision: VisionShape };

const RELEASED_VISION: VisionShape = {
  hiddenSize: 1152,
  intermediateSize: 4304,
  numHiddenLayers: 27,
  numAttentionHeads: 16,
  patchSize: 14,
};

/** Sizes of the released checkpoints (spec 1.2). */
export const PRESET_DIMS: Readonly<Record<RandomPreset, RandomCheckpointDims>> = {
  '2b': {
    vocabSize: 151936,
    hiddenSize: 1536,
    intermediateSize: 8960,
    numHiddenLayers: 28,
    numAttentionHeads: 12,
    numKeyValueHeads: 2,
    maxWindowLayers: 21,
    tieWordEmbeddings: true,
    vision: RELEASED_VISION,
  },
  '7b': {
    vocabSize: 152064,
    hiddenSize: 3584,
    intermediateSize: 18944,
    numHiddenLayers: 28,
    numAttentionHeads: 28,
    numKeyValueHeads: 4,
    maxWindowLayers: 28,
    tieWordEmbeddings: false,
    vision: RELEASED_VISION,
  },
};

/** repetition_penalty is the only generation setting that differs between the two (spec 1.3). */
const REPETITION_PENALTY: Readonly<Record<RandomPreset, number>> = { '2b': 1.1, '7b': 1.05 };

/** transformers' default `max_shard_size="5GB"`; with it the 7B weights split into the published 4 shards. */
const HF_MAX_SHARD_BYTES = 5_000_000_000;

export const TOKENIZER_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'added_tokens.json',
  'vocab.json',
  'merges.txt',
  'chat_template.json',
] as const;

export interface RandomCheckpointOptions {
  preset: RandomPreset;
  /** Output folder (created if needed; files of the same names are replaced). */
  out: string;
  /** Any safe integer; default 0. */
  seed?: number;
  /** Folder to copy the tokenizer files from (tokenizer.json required). Without it no tokenizer is written. */
  tokenizerFrom?: string;
  /** Called after each written chunk with bytes of weights written so far and the total. */
  onProgress?: (written: number, total: number) => void;
  /** @internal For tests: replace some of the preset's sizes. */
  dims?: Partial<Omit<RandomCheckpointDims, 'vision'>> & { vision?: Partial<VisionShape> };
  /** @internal For tests: shard size limit (the 7B preset shards like transformers, at 5 GB). */
  maxShardBytes?: number;
}

export interface RandomCheckpointResult {
  out: string;
  /** Every file written, relative to `out`. */
  files: string[];
  tensorCount: number;
  /** Bytes of tensor data (the index's total_size). */
  totalBytes: number;
}

// ---------------------------------------------------------------------------------------------------------------
// Parameter list

export type InitKind = 'linear' | 'norm' | 'bias' | 'embedding';

export interface ParamSpec {
  name: string;
  shape: number[];
  kind: InitKind;
}

/**
 * Every stored parameter in PyTorch module-registration order (the order of `state_dict()`), which is the order
 * transformers fills shards in: LLM (embeddings, layers, norm), vision encoder, projector, then lm_head.
 */
export function parameterList(d: RandomCheckpointDims): ParamSpec[] {
  const params: ParamSpec[] = [];
  const linear = (name: string, out: number, inp: number, bias: boolean): void => {
    params.push({ name: `${name}.weight`, shape: [out, inp], kind: 'linear' });
    if (bias) params.push({ name: `${name}.bias`, shape: [out], kind: 'bias' });
  };
  const H = d.hiddenSize;
  const kv = (H / d.numAttentionHeads) * d.numKeyValueHeads;

  params.push({ name: 'model.embed_tokens.weight', shape: [d.vocabSize, H], kind: 'embedding' });
  for (let i = 0; i < d.numHiddenLayers; i++) {
    const p = `model.layers.${i}`;
    linear(`${p}.self_attn.q_proj`, H, H, true);
    linear(`${p}.self_attn.k_proj`, kv, H, true);
    linear(`${p}.self_attn.v_proj`, kv, H, true);
    linear(`${p}.self_attn.o_proj`, H, H, false);
    linear(`${p}.mlp.gate_proj`, d.intermediateSize, H, false);
    linear(`${p}.mlp.up_proj`, d.intermediateSize, H, false);
    linear(`${p}.mlp.down_proj`, H, d.intermediateSize, false);
    params.push({ name: `${p}.input_layernorm.weight`, shape: [H], kind: 'norm' });
    params.push({ name: `${p}.post_attention_layernorm.weight`, shape: [H], kind: 'norm' });
  }
  params.push({ name: 'model.norm.weight', shape: [H], kind: 'norm' });

  const v = d.vision;
  const V = v.hiddenSize;
  const layerNorm = (name: string): void => {
    params.push({ name: `${name}.weight`, shape: [V], kind: 'norm' });
    params.push({ name: `${name}.bias`, shape: [V], kind: 'bias' });
  };
  const ve = 'model.vision_encoder';
  params.push({ name: `${ve}.embeddings.patch_embedding.weight`, shape: [V, 3, v.patchSize, v.patchSize], kind: 'linear' });
  params.push({ name: `${ve}.embeddings.patch_embedding.bias`, shape: [V], kind: 'bias' });
  for (let i = 0; i < v.numHiddenLayers; i++) {
    const p = `${ve}.encoder.layers.${i}`;
    for (const proj of ['k_proj', 'v_proj', 'q_proj', 'out_proj']) linear(`${p}.self_attn.${proj}`, V, V, true);
    layerNorm(`${p}.layer_norm1`);
    linear(`${p}.mlp.fc1`, v.intermediateSize, V, true);
    linear(`${p}.mlp.fc2`, V, v.intermediateSize, true);
    layerNorm(`${p}.layer_norm2`);
  }
  layerNorm(`${ve}.post_layernorm`);

  linear('model.mm_projector.readout.0', H, V, true);
  linear('model.mm_projector.readout.2', H, H, true);
  if (!d.tieWordEmbeddings) linear('lm_head', d.vocabSize, H, false);
  return params;
}

function initOf(p: ParamSpec): { mean: number; std: number } {
  switch (p.kind) {
    case 'linear':
      return { mean: 0, std: 1 / Math.sqrt(numelOf(p.shape.slice(1))) };
    case 'norm':
      return { mean: 1, std: 0.1 };
    case 'bias':
    case 'embedding':
      return { mean: 0, std: 0.05 };
  }
}

/** transformers' greedy sharding: walk the state dict in order, start a new shard when the next tensor would overflow. */
export function planShards(params: ParamSpec[], maxShardBytes: number): ParamSpec[][] {
  const shards: ParamSpec[][] = [];
  let current: ParamSpec[] = [];
  let currentBytes = 0;
  for (const p of params) {
    const bytes = numelOf(p.shape) * 2;
    if (current.length > 0 && currentBytes + bytes > maxShardBytes) {
      shards.push(current);
      current = [];
      currentBytes = 0;
    }
    current.push(p);
    currentBytes += bytes;
  }
  if (current.length > 0) shards.push(current);
  return shards;
}

// ---------------------------------------------------------------------------------------------------------------
// Random values

/** murmur3's 32-bit finaliser: a cheap bijective mixer, used to derive generator seeds. */
function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/** xoshiro128** state for one tensor, derived from the seed and the tensor's name. */
function generatorState(seed: number, name: string): Int32Array {
  let h = 0x811c9dc5; // FNV-1a over the name
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  const hi = Math.floor(seed / 2 ** 32);
  let x = mix32(h ^ mix32(seed >>> 0) ^ mix32(hi ^ 0x9e3779b9));
  const state = new Int32Array(4);
  for (let i = 0; i < 4; i++) {
    x = (x + 0x9e3779b9) >>> 0;
    state[i] = mix32(x);
  }
  if (state.every((w) => w === 0)) state[0] = 1; // the all-zero state is xoshiro's only fixed point
  return state;
}

/** Φ(x) via Abramowitz–Stegun 7.1.26 for erfc (absolute error < 1.5e-7, ample for bf16 outputs). */
function normalCdf(x: number): number {
  const z = Math.abs(x) / Math.SQRT2;
  const t = 1 / (1 + 0.3275911 * z);
  const poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
  const tail = 0.5 * poly * Math.exp(-z * z);
  return x < 0 ? tail : 1 - tail;
}

const TABLE_SIZE = 1 << 16;
let standardQuantiles: Float64Array | null = null;

/**
 * Φ⁻¹((i + ½) / 65536) for every 16-bit i. Drawing a uniform 16-bit index into this table samples the normal
 * distribution (truncated at ±4.3σ) at 65536 levels — finer than bf16 resolves — for the price of a table lookup,
 * which is what makes writing 8 billion values take seconds rather than minutes.
 */
function quantileTable(): Float64Array {
  if (standardQuantiles) return standardQuantiles;
  const q = new Float64Array(TABLE_SIZE);
  for (let i = 0; i < TABLE_SIZE / 2; i++) {
    const p = (i + 0.5) / TABLE_SIZE;
    let lo = -10;
    let hi = 0;
    for (let iter = 0; iter < 60; iter++) {
      const mid = (lo + hi) / 2;
      if (normalCdf(mid) < p) lo = mid;
      else hi = mid;
    }
    q[i] = (lo + hi) / 2;
    q[TABLE_SIZE - 1 - i] = -q[i]!;
  }
  standardQuantiles = q;
  return q;
}

const bf16Tables = new Map<string, Uint16Array>();

/** The quantile table scaled to N(mean, std²) and rounded to bf16 (round-to-nearest-even). */
function bf16NormalTable(mean: number, std: number): Uint16Array {
  const key = `${mean}/${std}`;
  let table = bf16Tables.get(key);
  if (!table) {
    const q = quantileTable();
    table = new Uint16Array(TABLE_SIZE);
    for (let i = 0; i < TABLE_SIZE; i++) table[i] = f32ToBf16(mean + std * q[i]!);
    bf16Tables.set(key, table);
  }
  return table;
}

/**
 * Fills `out` (n = 2 × out.length values) with table entries picked by xoshiro128**: each 32-bit output supplies
 * two 16-bit indices, and the two bf16 values are stored with one 32-bit write (little-endian: low half first).
 */
function fillFromTable(out: Uint32Array, table: Uint16Array, state: Int32Array): void {
  let s0 = state[0]!;
  let s1 = state[1]!;
  let s2 = state[2]!;
  let s3 = state[3]!;
  for (let i = 0; i < out.length; i++) {
    const m = Math.imul(s1, 5);
    const r = Math.imul((m << 7) | (m >>> 25), 9);
    const t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = (s3 << 11) | (s3 >>> 21);
    out[i] = table[r & 0xffff]! | (table[r >>> 16]! << 16);
  }
  state[0] = s0;
  state[1] = s1;
  state[2] = s2;
  state[3] = s3;
}

/** Values generated per write call: 8 MB, so each write moves plenty of data while memory use stays flat. */
const CHUNK_ELEMENTS = 1 << 22;

function randomSource(p: ParamSpec, seed: number, scratch: Uint32Array, progress: (bytes: number) => void): TensorSource {
  return {
    dtype: 'bf16',
    shape: p.shape,
    produce(emit) {
      const { mean, std } = initOf(p);
      const table = bf16NormalTable(mean, std);
      const state = generatorState(seed, p.name);
      const total = numelOf(p.shape);
      // Values are generated in pairs; an odd-sized tensor generates one value too many and writes one fewer.
      for (let done = 0; done < total; done += CHUNK_ELEMENTS) {
        const n = Math.min(CHUNK_ELEMENTS, total - done);
        const words = scratch.subarray(0, Math.ceil(n / 2));
        fillFromTable(words, table, state);
        emit(new Uint8Array(scratch.buffer, 0, n * 2));
        progress(n * 2);
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Config files, serialised byte-for-byte as transformers does (json.dumps(indent=2, sort_keys=True) + "\n")

/** Marks a number that Python holds as a float, so it prints as `0.0`, `1e-06`, `1000000.0`. */
class PyFloat {
  constructor(readonly value: number) {}
}

/** Python's repr(float): shortest round-trip digits (as JS), but its own switch to exponent notation. */
export function pythonFloatRepr(x: number): string {
  if (!Number.isFinite(x)) throw new Error(`no JSON form for ${x}`);
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mantissa, expText] = x.toExponential().split('e') as [string, string];
  const exp = Number(expText);
  const sign = x < 0 ? '-' : '';
  const digits = mantissa.replace('-', '').replace('.', '');
  if (exp < -4 || exp >= 16) {
    const frac = digits.length > 1 ? `.${digits.slice(1)}` : '';
    return `${sign}${digits[0]}${frac}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  if (exp < 0) return `${sign}0.${'0'.repeat(-exp - 1)}${digits}`;
  if (digits.length <= exp + 1) return `${sign}${digits}${'0'.repeat(exp + 1 - digits.length)}.0`;
  return `${sign}${digits.slice(0, exp + 1)}.${digits.slice(exp + 1)}`;
}

type PyJson = null | boolean | number | string | PyFloat | PyJson[] | { [key: string]: PyJson };

function pythonJson(value: PyJson, depth = 0): string {
  const pad = '  '.repeat(depth + 1);
  const end = '  '.repeat(depth);
  if (value instanceof PyFloat) return pythonFloatRepr(value.value);
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new Error(`${value} must be marked as a float`);
    return String(value);
  }
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) {
    if (value.length === 0) return '[]';
    return `[\n${value.map((v) => pad + pythonJson(v, depth + 1)).join(',\n')}\n${end}]`;
  }
  const keys = Object.keys(value).sort();
  if (keys.length === 0) return '{}';
  return `{\n${keys.map((k) => `${pad}${JSON.stringify(k)}: ${pythonJson(value[k]!, depth + 1)}`).join(',\n')}\n${end}}`;
}

const f = (x: number): PyFloat => new PyFloat(x);

function modelConfigJson(d: RandomCheckpointDims): PyJson {
  return {
    architectures: ['Videollama3Qwen2ForCausalLM'],
    attention_dropout: f(0),
    auto_map: {
      AutoConfig: 'configuration_videollama3.Videollama3Qwen2Config',
      AutoModelForCausalLM: 'modeling_videollama3.Videollama3Qwen2ForCausalLM',
    },
    bos_token_id: 151643,
    eos_token_id: 151645,
    hidden_act: 'silu',
    hidden_size: d.hiddenSize,
    image_token_index: 151665,
    initializer_range: f(0.02),
    intermediate_size: d.intermediateSize,
    max_position_embeddings: 32768,
    max_window_layers: d.maxWindowLayers,
    mm_projector_type: 'mlp2x_gelu',
    model_type: 'videollama3_qwen2',
    num_attention_heads: d.numAttentionHeads,
    num_hidden_layers: d.numHiddenLayers,
    num_key_value_heads: d.numKeyValueHeads,
    rms_norm_eps: f(1e-6),
    rope_scaling: null,
    rope_theta: f(1e6),
    sliding_window: null,
    tie_word_embeddings: d.tieWordEmbeddings,
    torch_dtype: 'bfloat16',
    transformers_version: '4.46.3',
    use_cache: true,
    use_sliding_window: false,
    use_token_compression: true,
    vision_encoder: null,
    vision_encoder_config: {
      hidden_size: d.vision.hiddenSize,
      intermediate_size: d.vision.intermediateSize,
      model_type: 'videollama3_vision_encoder',
      num_attention_heads: d.vision.numAttentionHeads,
      num_hidden_layers: d.vision.numHiddenLayers,
      patch_size: d.vision.patchSize,
    },
    vocab_size: d.vocabSize,
  };
}

function generationConfigJson(preset: RandomPreset): PyJson {
  return {
    bos_token_id: 151643,
    do_sample: true,
    eos_token_id: [151645, 151643],
    pad_token_id: 151643,
    repetition_penalty: f(REPETITION_PENALTY[preset]),
    temperature: f(0.7),
    top_k: 20,
    top_p: f(0.8),
    transformers_version: '4.46.3',
  };
}

const PREPROCESSOR_CONFIG: PyJson = {
  auto_map: {
    AutoImageProcessor: 'image_processing_videollama3.Videollama3ImageProcessor',
    AutoProcessor: 'processing_videollama3.Videollama3Qwen2Processor',
  },
  do_convert_rgb: true,
  do_normalize: true,
  do_rescale: true,
  do_resize: true,
  image_mean: [f(0.5), f(0.5), f(0.5)],
  image_processor_type: 'Videollama3ImageProcessor',
  image_std: [f(0.5), f(0.5), f(0.5)],
  max_tokens: 16384,
  min_tokens: 16,
  patch_size: 14,
  processor_class: 'Videollama3Qwen2Processor',
  resample: 3,
  rescale_factor: f(1 / 255),
};

const PROCESSOR_CONFIG: PyJson = {
  auto_map: { AutoProcessor: 'processing_videollama3.Videollama3Qwen2Processor' },
  fps: 1,
  image_merge_size: 1,
  max_frames: 128,
  processor_class: 'Videollama3Qwen2Processor',
  video_merge_size: 2,
};

function resolveDims(options: Pick<RandomCheckpointOptions, 'preset' | 'dims'>): RandomCheckpointDims {
  const base = PRESET_DIMS[options.preset];
  if (!base) throw new Error(`unknown preset ${JSON.stringify(options.preset)} (expected "2b" or "7b")`);
  const d = { ...base, ...options.dims, vision: { ...base.vision, ...options.dims?.vision } };
  if (d.hiddenSize % d.numAttentionHeads !== 0 || d.numAttentionHeads % d.numKeyValueHeads !== 0) {
    throw new Error(`inconsistent head counts: hidden ${d.hiddenSize}, heads ${d.numAttentionHeads}, kv ${d.numKeyValueHeads}`);
  }
  if (d.vision.hiddenSize % d.vision.numAttentionHeads !== 0) {
    throw new Error(`vision hidden ${d.vision.hiddenSize} is not divisible by ${d.vision.numAttentionHeads} heads`);
  }
  return d;
}

/** The four JSON config files of a preset, exactly as they are written (text by file name). */
export function randomCheckpointConfigFiles(
  options: Pick<RandomCheckpointOptions, 'preset' | 'dims'>,
): Record<string, string> {
  const d = resolveDims(options);
  return {
    'config.json': pythonJson(modelConfigJson(d)) + '\n',
    'generation_config.json': pythonJson(generationConfigJson(options.preset)) + '\n',
    'preprocessor_config.json': pythonJson(PREPROCESSOR_CONFIG) + '\n',
    'processor_config.json': pythonJson(PROCESSOR_CONFIG) + '\n',
  };
}

// ---------------------------------------------------------------------------------------------------------------

/**
 * Writes a random checkpoint folder. Weights are generated and written chunk by chunk (memory stays at one 8 MB
 * chunk plus a few lookup tables whatever the model size); the same options give byte-identical files.
 */
export function writeRandomCheckpoint(options: RandomCheckpointOptions): RandomCheckpointResult {
  const { preset, out } = options;
  const seed = options.seed ?? 0;
  if (!Number.isSafeInteger(seed)) throw new Error(`seed must be a safe integer, got ${seed}`);
  const dims = resolveDims(options);

  // Check the tokenizer source before spending minutes on weights.
  const tokenizerFiles: string[] = [];
  if (options.tokenizerFrom !== undefined) {
    if (!fs.existsSync(path.join(options.tokenizerFrom, 'tokenizer.json'))) {
      throw new Error(`tokenizer source ${options.tokenizerFrom}: tokenizer.json not found`);
    }
    tokenizerFiles.push(...TOKENIZER_FILES.filter((name) => fs.existsSync(path.join(options.tokenizerFrom!, name))));
  }

  fs.mkdirSync(out, { recursive: true });
  const files: string[] = [];
  for (const [name, text] of Object.entries(randomCheckpointConfigFiles(options))) {
    fs.writeFileSync(path.join(out, name), text);
    files.push(name);
  }
  for (const name of tokenizerFiles) {
    const target = path.join(out, name);
    fs.copyFileSync(path.join(options.tokenizerFrom!, name), target);
    fs.chmodSync(target, 0o644); // the source may be read-only (fixtures are); the copy is ours to replace later
    files.push(name);
  }

  const params = parameterList(dims);
  const totalBytes = params.reduce((sum, p) => sum + numelOf(p.shape) * 2, 0);
  // HF writes one file when everything fits in a shard; the 2B preset is always a single file.
  const maxShardBytes = preset === '7b' ? options.maxShardBytes ?? HF_MAX_SHARD_BYTES : Infinity;
  const shards = planShards(params, maxShardBytes);
  const scratch = new Uint32Array(CHUNK_ELEMENTS / 2);
  let written = 0;
  const progress = (bytes: number): void => {
    written += bytes;
    options.onProgress?.(written, totalBytes);
  };
  const metadata = { format: 'pt' };

  const shardName = (k: number): string =>
    shards.length === 1
      ? SINGLE_FILE_NAME
      : `model-${String(k + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`;
  const weightMap: { [name: string]: PyJson } = {};
  shards.forEach((shard, k) => {
    const sources: Record<string, TensorSource> = {};
    for (const p of shard) {
      sources[p.name] = randomSource(p, seed, scratch, progress);
      weightMap[p.name] = shardName(k);
    }
    writeSafetensorsFrom(path.join(out, shardName(k)), sources, metadata);
    files.push(shardName(k));
  });
  if (shards.length > 1) {
    const index = { metadata: { total_size: totalBytes }, weight_map: weightMap };
    fs.writeFileSync(path.join(out, INDEX_FILE_NAME), pythonJson(index) + '\n');
    files.push(INDEX_FILE_NAME);
  }
  return { out, files, tensorCount: params.length, totalBytes };
}
