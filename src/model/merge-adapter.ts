/**
 * `vl3 merge-adapter`: a checkpoint folder with a LoRA adapter merged into its weights (PEFT's `merge_and_unload`),
 * in the Hugging Face layout the loader reads: every adapted weight is W + scaling·B·A in f32, rounded back to its
 * stored dtype; every other tensor and file is copied as it is. Tensors are written one at a time, so memory stays
 * at the largest one.
 */
import { createBackend } from '../tensor/index.js';
import { checkOutputFolder, copyCheckpointFiles, loadCheckpoint, rewriteCheckpoint } from './checkpoint.js';
import { AdapterError, CheckpointError } from './errors.js';
import { adapterMerge, loadAdapter } from './lora-adapter.js';
import { mergeLoraPair } from './lora.js';
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
    checkOutputFolder(out);
    const merge = adapterMerge(loadAdapter(options.adapter, config), options.adapter, createBackend('native', { compute: 'exact', threads: options.threads }));
    for (const name of merge.pairs.keys()) {
      if (!weights.has(name)) throw new AdapterError(`adapter ${options.adapter}: checkpoint ${from} has no weight ${name} to merge into`, options.adapter, name.slice(0, -'.weight'.length));
    }

    let merged = 0;
    rewriteCheckpoint(
      weights,
      out,
      ({ stored, name, info }, advance) => {
        const pair = merge.pairs.get(name);
        if (pair) merged++;
        return {
          dtype: info.dtype,
          shape: info.shape,
          produce: (emit) => {
            // A weight the adapter's run trained whole (the projector) replaces the stored one, as --adapter loads it.
            const replaced = trainedReplacement(merge, name, info);
            if (!pair && !replaced) {
              emit(weights.store.fileOf(stored).readBytes(stored));
            } else {
              const t = pair ? mergeLoraPair(replaced ?? weights.get(name, info.shape, ['bf16', 'f32']), pair, merge.scaling, merge.backend) : replaced!;
              weights.forget(name);
              emit(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
            }
            advance(info.byteLength);
          },
        };
      },
      () => copyCheckpointFiles(from, out),
      options.onProgress,
    );
    return { tensors: weights.store.names.length, merged };
  } finally {
    checkpoint.weights.close();
  }
}
