/**
 * `vl3 merge-adapter`: a checkpoint folder with a LoRA adapter merged into its weights (PEFT's `merge_and_unload`),
 * in the Hugging Face layout the loader reads: every adapted weight is W + scaling·B·A in f32, rounded back to its
 * stored dtype; every other tensor and file is copied as it is. Tensors are written one at a time, so memory stays
 * at the largest one.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createBackend } from '../tensor/index.js';
import { canonicalWeightName, copyCheckpointFiles, loadCheckpoint } from './checkpoint.js';
import { AdapterError, CheckpointError } from './errors.js';
import { adapterMerge, loadAdapter } from './lora-adapter.js';
import { mergeLoraPair } from './lora.js';
import { SINGLE_FILE_NAME, writeSafetensorsFrom, type TensorSource } from './safetensors.js';
import { trainedReplacement } from './weight-formats.js';

export interface MergeAdapterOptions {
  /** A bf16 (or f32) checkpoint folder. */
  from: string;
  /** An adapter folder (adapter_config.json, adapter_model.safetensors). */
  adapter: string;
  /** A new folder (or an empty one). */
  out: string;
  /** Kernel threads for the B·A products; default: the cores available. */
  threads?: number;
  /** Hears bytes of source weights done, of the total. */
  onProgress?: (done: number, total: number) => void;
}

export interface MergeAdapterResult {
  tensors: number;
  merged: number;
}

export function writeMergedCheckpoint(options: MergeAdapterOptions): MergeAdapterResult {
  const { from, out } = options;
  const checkpoint = loadCheckpoint(from);
  try {
    const { config, weights } = checkpoint;
    if (config.quantization) {
      throw new CheckpointError(`checkpoint ${from} is quantized (${config.quantization.languageModel}/${config.quantization.visionEncoder}): merge the adapter into its bf16 source instead`, from);
    }
    if (fs.existsSync(out) && (!fs.statSync(out).isDirectory() || fs.readdirSync(out).length > 0)) {
      throw new Error(`--out ${out} exists and is not an empty folder`);
    }
    const merge = adapterMerge(loadAdapter(options.adapter, config), options.adapter, createBackend('native', { compute: 'exact', threads: options.threads }));
    for (const name of merge.pairs.keys()) {
      if (!weights.has(name)) throw new AdapterError(`adapter ${options.adapter}: checkpoint ${from} has no weight ${name} to merge into`, options.adapter, name.slice(0, -'.weight'.length));
    }

    const sources: Record<string, TensorSource> = {};
    let merged = 0;
    let done = 0;
    const total = weights.names.reduce((sum, name) => sum + weights.info(name).byteLength, 0);
    const advance = (bytes: number) => options.onProgress?.((done += bytes), total);
    for (const stored of weights.store.names) {
      const name = canonicalWeightName(stored);
      const info = weights.info(name);
      if (info.dtype === 'f64') throw new CheckpointError(`checkpoint file ${info.file}: tensor "${stored}" is F64, which a model checkpoint does not hold`, info.file, stored);
      const pair = merge.pairs.get(name);
      if (pair) merged++;
      sources[stored] = {
        dtype: info.dtype,
        shape: info.shape,
        produce: (emit) => {
          // A weight the adapter's run trained whole (the projector) replaces the stored one, as --adapter loads it.
          const replaced = trainedReplacement(merge, name, info);
          if (!pair && !replaced) {
            emit(new Uint8Array(weights.store.fileOf(stored).readBytes(stored)));
          } else {
            const t = pair ? mergeLoraPair(replaced ?? weights.get(name, info.shape, ['bf16', 'f32']), pair, merge.scaling, merge.backend) : replaced!;
            weights.forget(name);
            emit(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
          }
          advance(info.byteLength);
        },
      };
    }

    fs.mkdirSync(out, { recursive: true });
    try {
      writeSafetensorsFrom(path.join(out, SINGLE_FILE_NAME), sources, { format: 'pt' });
      copyCheckpointFiles(from, out);
    } catch (err) {
      fs.rmSync(out, { recursive: true, force: true });
      throw err;
    }
    return { tensors: weights.store.names.length, merged };
  } finally {
    checkpoint.weights.close();
  }
}
