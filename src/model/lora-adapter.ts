/**
 * LoRA adapters in PEFT 0.4.0's save format (`PeftModel.save_pretrained(dir, safe_serialization=True)`):
 * `adapter_config.json` (`json.dumps(asdict(config), indent=2, sort_keys=True)`) and `adapter_model.safetensors`
 * (metadata {"format": "pt"}) with one `base_model.model.<module>.lora_A.weight` / `.lora_B.weight` pair per adapted
 * layer. An adapter written by an official training run names the vision tower one level deeper
 * (`model.vision_encoder.vision_encoder.`); loading accepts both namings.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Backend } from '../tensor/backend.js';
import { Tensor } from '../tensor/tensor.js';
import { canonicalWeightName } from './checkpoint.js';
import type { VideoLlama3Config } from './config.js';
import { AdapterError } from './errors.js';
import { linearModules, loraParameterName, loraScaling, targetedModules, type AdapterMerge, type LinearModule, type LoraConfig, type LoraPair } from './lora.js';
import { SafetensorsFile, writeSafetensors } from './safetensors.js';

export const ADAPTER_CONFIG_FILE = 'adapter_config.json';
export const ADAPTER_WEIGHTS_FILE = 'adapter_model.safetensors';

export interface LoraAdapter {
  config: LoraConfig;
  /** `base_model_name_or_path`: what the adapter was trained on (the official run's `--model_path`). */
  baseModel: string | null;
  /** A and B (f32) by module path, HF checkpoint naming. */
  pairs: Map<string, LoraPair>;
  /**
   * Weights trained whole beside the adapters (the projector, which the official `--lora_enable` run trains fully and
   * saves as `non_lora_trainables.bin`), by checkpoint name: they replace the checkpoint's at load.
   */
  replacements?: Map<string, Tensor>;
}

/** Where a LoRA run keeps its fully trained weights (safetensors, checkpoint names; the official run's is a pickle). */
export const NON_LORA_FILE = 'non_lora_trainables.safetensors';

/** Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` as peft 0.4.0 does. */
export function saveAdapter(dir: string, adapter: LoraAdapter): void {
  const { config } = adapter;
  fs.mkdirSync(dir, { recursive: true });
  // asdict(LoraConfig) of peft 0.4.0, after save_pretrained set inference_mode; keys sorted as json.dumps sorts them.
  const fields: Record<string, JsonValue> = {
    auto_mapping: null,
    base_model_name_or_path: adapter.baseModel,
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layers_pattern: null,
    layers_to_transform: null,
    lora_alpha: config.alpha,
    lora_dropout: { float: config.dropout },
    modules_to_save: null,
    peft_type: 'LORA',
    r: config.r,
    revision: null,
    target_modules: typeof config.targetModules === 'string' ? config.targetModules : [...config.targetModules],
    task_type: 'CAUSAL_LM',
  };
  fs.writeFileSync(path.join(dir, ADAPTER_CONFIG_FILE), pythonJson(fields, ''));
  const tensors: Record<string, Tensor> = {};
  for (const [module, pair] of adapter.pairs) {
    tensors[loraParameterName(module, 'A')] = pair.a;
    tensors[loraParameterName(module, 'B')] = pair.b;
  }
  writeSafetensors(path.join(dir, ADAPTER_WEIGHTS_FILE), tensors, { format: 'pt' });
  if (adapter.replacements?.size) writeSafetensors(path.join(dir, NON_LORA_FILE), Object.fromEntries(adapter.replacements), { format: 'pt' });
}

/** A JSON value; `{ float }` is a Python float, which json.dumps writes with a decimal point (0.0, not 0). */
type JsonValue = null | boolean | number | string | string[] | { float: number };

/** json.dumps(value, indent=2, sort_keys=True) for a flat object: no trailing newline, as PEFT writes it. */
function pythonJson(fields: Record<string, JsonValue>, indent: string): string {
  const inner = indent + '  ';
  const value = (v: JsonValue): string => {
    if (Array.isArray(v)) return v.length === 0 ? '[]' : `[\n${v.map((s) => inner + '  ' + JSON.stringify(s)).join(',\n')}\n${inner}]`;
    if (v !== null && typeof v === 'object') return Number.isInteger(v.float) ? `${v.float}.0` : JSON.stringify(v.float);
    return JSON.stringify(v);
  };
  const keys = Object.keys(fields).sort();
  return `{\n${keys.map((k) => `${inner}${JSON.stringify(k)}: ${value(fields[k]!)}`).join(',\n')}\n${indent}}`;
}

/**
 * Reads an adapter folder and checks it against the model: a config this port can apply, one A/B pair for every layer
 * its target_modules select and nothing else, each of the layer's shape at the config's r. Fails with an AdapterError
 * naming the file and the module.
 */
export function loadAdapter(dir: string, model: VideoLlama3Config): LoraAdapter {
  const configFile = path.join(dir, ADAPTER_CONFIG_FILE);
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new AdapterError(`adapter ${dir}: not a directory`, dir);
  if (!fs.existsSync(configFile)) throw new AdapterError(`adapter ${dir}: ${ADAPTER_CONFIG_FILE} not found (expected ${configFile})`, configFile);
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(fs.readFileSync(configFile, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new AdapterError(`${configFile}: cannot read (${(err as Error).message})`, configFile);
  }
  const config = readConfig(raw, configFile);
  let targets: LinearModule[];
  try {
    targets = targetedModules(model, config.targetModules);
  } catch (err) {
    if (!(err instanceof AdapterError)) throw err;
    throw new AdapterError(`${configFile}: ${err.message}`, configFile, err.module);
  }

  const weightsFile = path.join(dir, ADAPTER_WEIGHTS_FILE);
  if (!fs.existsSync(weightsFile)) {
    const pickle = fs.existsSync(path.join(dir, 'adapter_model.bin')) ? ' (found adapter_model.bin: PyTorch pickles are not supported, save with safe_serialization=True)' : '';
    throw new AdapterError(`adapter ${dir}: ${ADAPTER_WEIGHTS_FILE} not found${pickle}`, weightsFile);
  }
  const layers = new Map(linearModules(model).map((l) => [l.module, l]));
  const targeted = new Set(targets.map((t) => t.module));
  const found = new Map<string, Partial<Record<'a' | 'b', Tensor<'f32'>>>>();
  const file = SafetensorsFile.open(weightsFile);
  try {
    for (const key of file.names) {
      const m = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/.exec(key);
      if (!m) throw new AdapterError(`${weightsFile}: tensor "${key}" is not a LoRA matrix (base_model.model.<module>.lora_A.weight or .lora_B.weight)`, weightsFile);
      const module = canonicalWeightName(m[1]!);
      const layer = layers.get(module);
      if (!layer) throw new AdapterError(`${weightsFile}: module ${module} is not a linear layer of this model`, weightsFile, module);
      if (!targeted.has(module)) throw new AdapterError(`${weightsFile}: module ${module} has an adapter, but target_modules ${JSON.stringify(config.targetModules)} do not select it`, weightsFile, module);
      const matrix = m[2] === 'A' ? 'a' : 'b';
      const expected = matrix === 'a' ? [config.r, layer.inFeatures] : [layer.outFeatures, config.r];
      const info = file.info(key);
      if (info.shape.length !== 2 || info.shape[0] !== expected[0] || info.shape[1] !== expected[1]) {
        throw new AdapterError(
          `${weightsFile}: module ${module}: lora_${m[2]} is [${info.shape.join(', ')}], expected [${expected.join(', ')}] for r ${config.r} on a [${layer.outFeatures}, ${layer.inFeatures}] layer`,
          weightsFile,
          module,
        );
      }
      if (info.dtype !== 'f32' && info.dtype !== 'bf16' && info.dtype !== 'f16') throw new AdapterError(`${weightsFile}: module ${module}: lora_${m[2]} is ${info.dtype}, expected a float tensor`, weightsFile, module);
      const t = file.read(key);
      const entry = found.get(module) ?? {};
      entry[matrix] = t.dtype === 'f32' ? (t as Tensor<'f32'>) : Tensor.f32(t.shape, t.toFloat32());
      found.set(module, entry);
    }
  } finally {
    file.close();
  }
  const pairs = new Map<string, LoraPair>();
  for (const module of targeted) {
    const entry = found.get(module);
    if (!entry?.a || !entry.b) {
      throw new AdapterError(`${weightsFile}: no lora_${entry?.a ? 'B' : 'A'} for module ${module}, which target_modules ${JSON.stringify(config.targetModules)} select`, weightsFile, module);
    }
    pairs.set(module, { a: entry.a, b: entry.b });
  }
  return { config, baseModel: typeof raw['base_model_name_or_path'] === 'string' ? raw['base_model_name_or_path'] : null, pairs, replacements: readReplacements(dir) };
}

/** The adapter folder's non-LoRA trainables, if it has them. */
function readReplacements(dir: string): Map<string, Tensor> | undefined {
  const file = path.join(dir, NON_LORA_FILE);
  if (!fs.existsSync(file)) return undefined;
  const f = SafetensorsFile.open(file);
  try {
    return new Map(f.names.map((name) => [canonicalWeightName(name), Tensor.f32(f.info(name).shape, f.read(name).toFloat32())]));
  } finally {
    f.close();
  }
}

/** The fields of adapter_config.json this port applies, each checked; settings it does not implement are refused. */
function readConfig(raw: Record<string, unknown>, file: string): LoraConfig {
  const bad = (field: string, why: string) => new AdapterError(`${file}: ${field} ${why}`, file);
  if (raw['peft_type'] !== 'LORA') throw bad('peft_type', `is ${JSON.stringify(raw['peft_type'])}, expected "LORA"`);
  const r = raw['r'];
  if (typeof r !== 'number' || !Number.isInteger(r) || r < 1) throw bad('r', `must be an integer >= 1, got ${JSON.stringify(r)}`);
  const alpha = raw['lora_alpha'];
  if (typeof alpha !== 'number' || !Number.isFinite(alpha)) throw bad('lora_alpha', `must be a number, got ${JSON.stringify(alpha)}`);
  const dropout = raw['lora_dropout'] ?? 0;
  if (typeof dropout !== 'number' || !(dropout >= 0 && dropout < 1)) throw bad('lora_dropout', `must be a number in [0, 1), got ${JSON.stringify(dropout)}`);
  const targets = raw['target_modules'];
  const isList = Array.isArray(targets) && targets.length > 0 && targets.every((t) => typeof t === 'string');
  if (!isList && typeof targets !== 'string') throw bad('target_modules', `must be a list of module names or a regular expression, got ${JSON.stringify(targets)}`);
  // Settings whose effect this port does not reproduce: an adapter using them would merge into the wrong weights.
  const unsupported: [string, (v: unknown) => boolean][] = [
    ['bias', (v) => v !== undefined && v !== 'none'],
    ['fan_in_fan_out', (v) => v === true],
    ['layers_to_transform', (v) => v !== undefined && v !== null],
    ['modules_to_save', (v) => Array.isArray(v) && v.length > 0],
    ['use_rslora', (v) => v === true],
    ['use_dora', (v) => v === true],
    ['rank_pattern', (v) => typeof v === 'object' && v !== null && Object.keys(v).length > 0],
    ['alpha_pattern', (v) => typeof v === 'object' && v !== null && Object.keys(v).length > 0],
  ];
  for (const [field, set] of unsupported) if (set(raw[field])) throw bad(field, `is ${JSON.stringify(raw[field])}, which this port does not implement`);
  return { r, alpha, dropout, targetModules: isList ? (targets as string[]) : (targets as string) };
}

/** What `FormattedWeights` needs to merge a loaded adapter at load: its pairs by the adapted weight's name. */
export function adapterMerge(adapter: LoraAdapter, dir: string, backend: Backend): AdapterMerge {
  const pairs = new Map([...adapter.pairs].map(([module, pair]) => [`${module}.weight`, pair]));
  return { pairs, scaling: loraScaling(adapter.config), backend, dir, replacements: adapter.replacements };
}
