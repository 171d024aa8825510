/**
 * What a training run writes: the model in the Hugging Face layout (the source checkpoint's files and tensor names,
 * bf16 safetensors, trained tensors rounded from their f32 masters), which `vl3 ask` and the official code load; and
 * beside it, in `checkpoint-<step>/`, what `--resume` needs to continue exactly: the f32 masters, the AdamW moments
 * and the loop's position.
 */
import fs from 'node:fs';
import path from 'node:path';
import { canonicalWeightName, copyCheckpointFiles, loadCheckpoint } from '../model/checkpoint.js';
import { SafetensorsFile, SINGLE_FILE_NAME, writeSafetensorsFrom, type TensorSource } from '../model/safetensors.js';
import { f32ToBf16 } from '../tensor/dtype.js';
import { Tensor } from '../tensor/tensor.js';
import { saveAdapter } from '../model/lora-adapter.js';
import type { LoraConfig, LoraPair } from '../model/lora.js';
import type { AdamW, AdamWState } from './adamw.js';

export const TRAINER_STATE = 'trainer_state.json';
export const OPTIMIZER_FILE = 'optimizer.safetensors';

/** The loop's position and what it has logged: enough to continue where it stopped. */
export interface TrainerState {
  /** Optimizer steps done. */
  globalStep: number;
  totalSteps: number;
  seed: number;
  /** The run's settings that must not change on resume (stage, batch size, accumulation, data file…). */
  settings: Record<string, unknown>;
}

/**
 * Writes the model into `dir`: every tensor of `sourceDir`'s checkpoint under its stored name, a trained one as
 * bf16 of its f32 master (round to nearest even), the others byte for byte; and every other file of the source
 * (config, tokenizer, processor) copied.
 */
export function saveModel(sourceDir: string, dir: string, masters: ReadonlyMap<string, Tensor<'f32'>>): void {
  const source = loadCheckpoint(sourceDir);
  try {
    const sources: Record<string, TensorSource> = {};
    for (const stored of source.weights.store.names) {
      const info = source.weights.info(canonicalWeightName(stored));
      const master = masters.get(canonicalWeightName(stored));
      if (master) {
        if (info.dtype !== 'bf16' && info.dtype !== 'f32') throw new Error(`checkpoint ${sourceDir}: trained tensor "${stored}" is stored as ${info.dtype}`);
        sources[stored] = { dtype: info.dtype, shape: info.shape, produce: (emit) => emit(encode(master, info.dtype as 'bf16' | 'f32')) };
      } else {
        sources[stored] = { dtype: info.dtype, shape: info.shape, produce: (emit) => emit(source.weights.store.fileOf(stored).readBytes(stored)) };
      }
    }
    fs.mkdirSync(dir, { recursive: true });
    writeSafetensorsFrom(path.join(dir, SINGLE_FILE_NAME), sources, { format: 'pt' });
    copyCheckpointFiles(sourceDir, dir);
  } finally {
    source.weights.close();
  }
}

function encode(master: Tensor<'f32'>, dtype: 'bf16' | 'f32'): Uint8Array {
  if (dtype === 'f32') return new Uint8Array(master.data.buffer, master.data.byteOffset, master.data.byteLength);
  const out = new Uint16Array(master.numel);
  for (let i = 0; i < out.length; i++) out[i] = f32ToBf16(master.data[i]!);
  return new Uint8Array(out.buffer);
}

/**
 * What a LoRA run delivers (the official `--lora_enable` outputs): the adapter in PEFT's format, and the weights the
 * run trained whole (the projector) beside it, which `--adapter` loads with it.
 */
export function saveLoraModel(dir: string, lora: LoraConfig, pairs: ReadonlyMap<string, LoraPair>, masters: ReadonlyMap<string, Tensor<'f32'>>, baseModel: string): void {
  const replacements = new Map([...masters].filter(([name]) => !/\.lora_[AB]\.weight$/.test(name)));
  saveAdapter(dir, { config: lora, baseModel, pairs: new Map(pairs), replacements: new Map<string, Tensor>(replacements) });
}

/** The model files of a checkpoint: a whole model, or an adapter (`saveModel` / `saveLoraModel`). */
export type ModelWriter = (dir: string) => void;

/** `checkpoint-<step>/`: the model, the masters and moments, and the trainer state. */
export function saveCheckpoint(writeModel: ModelWriter, dir: string, masters: ReadonlyMap<string, Tensor<'f32'>>, optimizer: AdamW, state: TrainerState): void {
  writeModel(dir);
  const { meta, tensors } = optimizer.toState();
  const sources: Record<string, TensorSource> = {};
  const add = (name: string, t: Tensor<'f32'>) => {
    sources[name] = { dtype: 'f32', shape: t.shape, produce: (emit) => emit(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)) };
  };
  for (const [name, t] of masters) add(`master/${name}`, t);
  for (const [name, t] of Object.entries(tensors)) add(name, t);
  writeSafetensorsFrom(path.join(dir, OPTIMIZER_FILE), sources, { adamw: JSON.stringify(meta) });
  fs.writeFileSync(path.join(dir, TRAINER_STATE), JSON.stringify(state, null, 2) + '\n');
}

/** The `checkpoint-<step>` folder of `outputDir` with the most steps, or undefined. */
export function latestCheckpoint(outputDir: string): string | undefined {
  if (!fs.existsSync(outputDir)) return undefined;
  const steps = fs
    .readdirSync(outputDir)
    .map((e) => /^checkpoint-(\d+)$/.exec(e))
    .filter((m): m is RegExpExecArray => m !== null && fs.existsSync(path.join(outputDir, m[0], TRAINER_STATE)))
    .map((m) => Number(m[1]));
  return steps.length ? path.join(outputDir, `checkpoint-${Math.max(...steps)}`) : undefined;
}

/** Restores masters (into the given tensors) and the optimizer from a checkpoint folder; returns its trainer state. */
export function loadCheckpointState(dir: string, masters: ReadonlyMap<string, Tensor<'f32'>>, optimizer: AdamW): TrainerState {
  const state = JSON.parse(fs.readFileSync(path.join(dir, TRAINER_STATE), 'utf8')) as TrainerState;
  const file = SafetensorsFile.open(path.join(dir, OPTIMIZER_FILE));
  try {
    for (const [name, t] of masters) {
      if (!file.has(`master/${name}`)) throw new Error(`${file.path}: no master copy of "${name}" (was the run started with other trainable parameters?)`);
      const saved = file.read(`master/${name}`);
      if (saved.dtype !== 'f32' || saved.shape.join() !== t.shape.join()) throw new Error(`${file.path}: "master/${name}" is ${saved}, expected f32 [${t.shape.join(', ')}]`);
      t.data.set(saved.data as Float32Array);
    }
    const tensors: AdamWState['tensors'] = {};
    for (const name of file.names) if (!name.startsWith('master/')) tensors[name] = Tensor.f32(file.info(name).shape, Float32Array.from(file.read(name).data as Float32Array));
    optimizer.fromState({ meta: JSON.parse(file.metadata.adamw ?? 'null') as AdamWState['meta'], tensors });
  } finally {
    file.close();
  }
  return state;
}
