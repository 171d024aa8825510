/**
 * Opening a VideoLLaMA3 checkpoint folder (HF custom-code layout, spec 1.1): configs plus lazily read weights.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { DType } from '../tensor/dtype.js';
import { CheckpointError } from './errors.js';
import { mapFile } from '../tensor/native.js';
import type { Tensor } from '../tensor/tensor.js';
import {
  generationConfigFromModel,
  readGenerationConfig,
  readModelConfig,
  type GenerationConfig,
  type VideoLlama3Config,
} from './config.js';
import { INDEX_FILE_NAME, SafetensorsCheckpoint, SINGLE_FILE_NAME, writeSafetensorsFrom, type SafetensorsFile, type TensorInfo, type TensorSource } from './safetensors.js';

export const LM_HEAD = 'lm_head.weight';
export const EMBED_TOKENS = 'model.embed_tokens.weight';

// The local training format (scripts/convert_hf_checkpoint.py, spec 1.6) nests the encoder one level deeper.
const TRAINING_VISION_PREFIX = 'model.vision_encoder.vision_encoder.';
const VISION_PREFIX = 'model.vision_encoder.';

/** Maps a tensor name of any supported naming scheme to the HF custom-code name used throughout the model code. */
export function canonicalWeightName(name: string): string {
  return name.startsWith(TRAINING_VISION_PREFIX) ? VISION_PREFIX + name.slice(TRAINING_VISION_PREFIX.length) : name;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

const fmtShape = (s: readonly number[]): string => `[${s.join(', ')}]`;

/**
 * The checkpoint's tensors by canonical name. Each tensor is read from disk at most once, on first `get`, and kept:
 * model code holds on to its weights anyway, and a second read of a multi-GB embedding would be pure waste.
 */
export class CheckpointWeights {
  /** Canonical names of the stored tensors, sorted (a tied lm_head is not listed). */
  readonly names: readonly string[];
  private readonly storedName = new Map<string, string>();
  private readonly cache = new Map<string, Tensor>();
  private readBytes = 0;
  /** Called with the byte length of each tensor as it is read from disk. */
  onRead?: (bytes: number) => void;

  constructor(
    readonly store: SafetensorsCheckpoint,
    readonly tieWordEmbeddings: boolean,
  ) {
    for (const stored of store.names) {
      const canonical = canonicalWeightName(stored);
      const previous = this.storedName.get(canonical);
      if (previous !== undefined) {
        throw new CheckpointError(`checkpoint ${store.folder}: "${previous}" and "${stored}" are the same weight under two names`, store.folder, stored);
      }
      this.storedName.set(canonical, stored);
    }
    this.names = Object.freeze([...this.storedName.keys()].sort());
  }

  /** Which stored tensor a request resolves to: the name itself, or the embeddings for a tied lm_head. */
  private resolve(name: string): { stored: string; note: string } | null {
    const canonical = canonicalWeightName(name);
    const stored = this.storedName.get(canonical);
    if (stored !== undefined) return { stored, note: '' };
    if (canonical === LM_HEAD && this.tieWordEmbeddings) {
      const embed = this.storedName.get(EMBED_TOKENS);
      if (embed !== undefined) return { stored: embed, note: ` (tied to ${EMBED_TOKENS})` };
    }
    return null;
  }

  private missing(name: string): never {
    const files = this.store.files.map((f) => path.basename(f.path)).join(', ');
    const why =
      canonicalWeightName(name) === LM_HEAD && !this.tieWordEmbeddings
        ? ' and tie_word_embeddings is false, so it cannot be taken from the embeddings'
        : '';
    throw new CheckpointError(`checkpoint ${this.store.folder}: tensor "${name}" not found in ${files}${why}`, this.store.folder, name);
  }

  /** True when `get(name)` would find a tensor (counting a tied lm_head). */
  has(name: string): boolean {
    return this.resolve(name) !== null;
  }

  info(name: string): TensorInfo & { file: string } {
    const hit = this.resolve(name) ?? this.missing(name);
    return { ...this.store.info(hit.stored), file: this.store.fileOf(hit.stored).path };
  }

  /**
   * Checks the tensor `name` against `expectedShape` and, when given, `allowedDtypes`, from the header alone (no I/O).
   * Returns where it is stored.
   */
  check(name: string, expectedShape?: readonly number[], allowedDtypes?: readonly DType[]): { stored: string; file: SafetensorsFile; info: TensorInfo } {
    const hit = this.resolve(name) ?? this.missing(name);
    const file = this.store.fileOf(hit.stored);
    const info = file.info(hit.stored);
    const where = `checkpoint file ${file.path}: tensor "${hit.stored}"${hit.note}`;
    if (expectedShape && !sameShape(info.shape, expectedShape)) {
      throw new CheckpointError(`${where}: shape ${fmtShape(info.shape)}, expected ${fmtShape(expectedShape)} from the config`, file.path, hit.stored);
    }
    if (info.dtype === 'f64' || (allowedDtypes && !allowedDtypes.includes(info.dtype))) {
      throw new CheckpointError(`${where}: dtype ${info.dtype}, expected ${allowedDtypes?.join(' or ') ?? 'a tensor dtype'}`, file.path, hit.stored);
    }
    return { stored: hit.stored, file, info };
  }

  /**
   * The tensor `name`, checked as `check` does before anything is read, so a mismatch costs no I/O. `onRead` (set
   * by the loader) hears of every tensor read from disk, for progress.
   */
  get(name: string, expectedShape?: readonly number[], allowedDtypes?: readonly DType[]): Tensor {
    const { stored, file, info } = this.check(name, expectedShape, allowedDtypes);
    let tensor = this.cache.get(stored);
    if (!tensor) {
      tensor = file.read(stored);
      this.cache.set(stored, tensor);
      this.readBytes += info.byteLength;
      this.onRead?.(info.byteLength);
    }
    return tensor;
  }

  /** Drops the kept copy of a tensor (once a quantized copy replaces it); a later `get` reads it again. */
  forget(name: string): void {
    this.cache.delete(this.check(name).stored);
  }

  /** Bytes of the tensors `names` resolve to that are not read yet (a tied lm_head counts once). */
  unreadBytes(names: readonly string[]): number {
    const stored = new Set(names.map((n) => this.check(n).stored).filter((s) => !this.cache.has(s)));
    return [...stored].reduce((sum, s) => sum + this.store.info(s).byteLength, 0);
  }

  /** Bytes read from disk so far and the number of distinct tensors they came from. */
  get stats(): { tensorsRead: number; bytesRead: number } {
    return { tensorsRead: this.cache.size, bytesRead: this.readBytes };
  }

  /** Closes the files; tensors already returned stay valid (they own their storage). */
  close(): void {
    this.store.close();
  }
}

export interface Checkpoint {
  folder: string;
  config: VideoLlama3Config;
  generationConfig: GenerationConfig;
  weights: CheckpointWeights;
}

/**
 * Opens a checkpoint folder: parses config.json and generation_config.json (falling back to the model config's
 * special ids, as transformers does, when the latter is absent) and every safetensors header. No weight is read yet.
 */
export function loadCheckpoint(folder: string): Checkpoint {
  if (!fs.existsSync(folder) || !fs.statSync(folder).isDirectory()) {
    throw new CheckpointError(`checkpoint ${folder}: not a directory`, folder);
  }
  const configPath = path.join(folder, 'config.json');
  if (!fs.existsSync(configPath)) throw new CheckpointError(`checkpoint ${folder}: config.json not found (expected ${configPath})`, configPath);
  const config = readModelConfig(configPath);

  const generationPath = path.join(folder, 'generation_config.json');
  const generationConfig = fs.existsSync(generationPath)
    ? readGenerationConfig(generationPath)
    : generationConfigFromModel(config);

  const single = path.join(folder, SINGLE_FILE_NAME);
  const index = path.join(folder, INDEX_FILE_NAME);
  if (!fs.existsSync(single) && !fs.existsSync(index)) {
    const pickle = ['pytorch_model.bin', 'pytorch_model.bin.index.json'].find((f) => fs.existsSync(path.join(folder, f)));
    const hint = pickle ? ` (found ${pickle}: PyTorch pickles are not supported, convert it to safetensors)` : '';
    throw new CheckpointError(`checkpoint ${folder}: no weights, expected ${single} or ${index}${hint}`, folder);
  }
  // A quantized checkpoint is read in place: its packed weights are exactly what the kernels read, so mapping the files
  // costs no copy and no load time, and the pages are shared with the page cache.
  const weights = new CheckpointWeights(SafetensorsCheckpoint.open(folder, config.quantization ? mapFile : undefined), config.tieWordEmbeddings);
  return { folder, config, generationConfig, weights };
}

/**
 * Copies every file of a checkpoint folder except its weights (safetensors files and their index) and `except` —
 * config, tokenizer, processor files — into `out`: what a rewritten checkpoint (quantized, merged, trained) keeps.
 */
export function copyCheckpointFiles(from: string, out: string, except: readonly string[] = []): void {
  for (const entry of fs.readdirSync(from)) {
    const source = path.join(from, entry);
    if (except.includes(entry) || entry === INDEX_FILE_NAME || entry.endsWith('.safetensors')) continue;
    if (fs.statSync(source).isFile()) fs.copyFileSync(source, path.join(out, entry));
  }
}

/** Refuses an output folder that exists and is not empty (a rewrite never mixes with what is there). */
export function checkOutputFolder(out: string): void {
  if (fs.existsSync(out) && (!fs.statSync(out).isDirectory() || fs.readdirSync(out).length > 0)) {
    throw new Error(`--out ${out} exists and is not an empty folder`);
  }
}

/** A stored tensor of a checkpoint being rewritten: its name in the file, its canonical name, where it lies. */
export interface StoredTensor {
  stored: string;
  name: string;
  info: TensorInfo & { file: string };
}

/**
 * Writes a rewritten checkpoint (quantized, merged) into `out` as one safetensors file, a tensor at a time:
 * `sourceOf` says how each stored tensor is written, after F64 ones (which no model holds) are refused; its sources
 * call `advance` with the source bytes they have done, reported to `onProgress`. `writeFiles` then writes the other
 * files (config, tokenizer). A failure removes `out`.
 */
export function rewriteCheckpoint(
  weights: CheckpointWeights,
  out: string,
  sourceOf: (tensor: StoredTensor, advance: (bytes: number) => void) => TensorSource,
  writeFiles: () => void,
  onProgress?: (done: number, total: number) => void,
): void {
  let done = 0;
  const total = weights.names.reduce((sum, name) => sum + weights.info(name).byteLength, 0);
  const advance = (bytes: number) => onProgress?.((done += bytes), total);
  const sources: Record<string, TensorSource> = {};
  for (const stored of weights.store.names) {
    const name = canonicalWeightName(stored);
    const info = weights.info(name);
    if (info.dtype === 'f64') throw new CheckpointError(`checkpoint file ${info.file}: tensor "${stored}" is F64, which a model checkpoint does not hold`, info.file, stored);
    sources[stored] = sourceOf({ stored, name, info }, advance);
  }
  fs.mkdirSync(out, { recursive: true });
  try {
    // Its tensors are memory-mapped when loaded (quantized ones): each whole number of cache lines starts on one.
    writeSafetensorsFrom(path.join(out, SINGLE_FILE_NAME), sources, { format: 'pt' }, 64);
    writeFiles();
  } catch (err) {
    fs.rmSync(out, { recursive: true, force: true });
    throw err;
  }
}
