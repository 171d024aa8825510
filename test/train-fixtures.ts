// Reading the training goldens (fixtures/training, README "Conventions"): named f32 tensors, F64 scalars, and the
// vocab-sized embedding that is stored only as listed rows.
import * as path from 'node:path';
import { loadCheckpoint } from '../src/model/checkpoint.js';
import { SafetensorsFile } from '../src/model/safetensors.js';
import { Tensor } from '../src/tensor/tensor.js';
import { TINY_CHECKPOINT } from './fixtures.js';

export const EMBED = 'model.embed_tokens.weight';

/** The tiny checkpoint's parameters, bf16 upcast to f32 (fresh copies: the optimizer updates them in place). */
export function checkpointParams(fixtures: string): { params: Map<string, Tensor<'f32'>>; names: string[] } {
  const ckpt = loadCheckpoint(path.join(fixtures, TINY_CHECKPOINT));
  const params = new Map<string, Tensor<'f32'>>();
  for (const name of ckpt.weights.names) {
    const t = ckpt.weights.get(name);
    params.set(name, Tensor.f32(t.shape, t.toFloat32()));
  }
  ckpt.weights.close();
  return { params, names: [...ckpt.weights.names] };
}

export class Golden {
  readonly file: SafetensorsFile;
  constructor(fixtures: string, relative: string) {
    this.file = SafetensorsFile.open(path.join(fixtures, 'training', relative));
  }
  has(name: string): boolean {
    return this.file.has(name);
  }
  f32(name: string): Tensor<'f32'> {
    const t = this.file.read(name);
    if (t.dtype !== 'f32') throw new Error(`${this.file.path}: "${name}" is ${t.dtype}, expected f32`);
    return t as Tensor<'f32'>;
  }
  f64(name: string): Float64Array {
    return this.file.readF64(name).data;
  }
  i64(name: string): number[] {
    const t = this.file.read(name);
    if (t.dtype !== 'i64') throw new Error(`${this.file.path}: "${name}" is ${t.dtype}, expected i64`);
    return Array.from(t.data as BigInt64Array, Number);
  }
  /** Parameter names stored under `<prefix>/`. */
  namesUnder(prefix: string): string[] {
    return this.file.names.filter((n) => n.startsWith(`${prefix}/`)).map((n) => n.slice(prefix.length + 1));
  }
  close(): void {
    this.file.close();
  }
}

/** Rows `index` of a [V, H] f32 tensor, as a new [R, H] tensor. */
export function gatherRows(t: Tensor<'f32'>, index: readonly number[]): Tensor<'f32'> {
  const h = t.dim(1);
  const out = Tensor.f32([index.length, h]);
  index.forEach((row, i) => out.data.set(t.data.subarray(row * h, (row + 1) * h), i * h));
  return out;
}

/** Largest |a − b| / |b| over elements (|b| = 0 counts as the absolute difference), and how many differ at all. */
export function compare(actual: Float32Array, expected: Float32Array): { maxRel: number; mismatched: number } {
  if (actual.length !== expected.length) throw new Error(`compare: ${actual.length} vs ${expected.length} elements`);
  let maxRel = 0;
  let mismatched = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i]!;
    const b = expected[i]!;
    if (Object.is(a, b)) continue;
    mismatched++;
    const rel = Math.abs(a - b) / (b === 0 ? 1 : Math.abs(b));
    maxRel = Math.max(maxRel, Number.isNaN(rel) ? Infinity : rel);
  }
  return { maxRel, mismatched };
}
