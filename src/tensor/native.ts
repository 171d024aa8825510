import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import type { AttentionOptions, ComputeMode, Kernels, TopK } from './backend.js';
import { CheckedBackend } from './checked.js';
import { hostMemory } from './host.js';
import type { Tensor } from './tensor.js';

/** CPU features the addon detected, and the kernel set ops use now. */
export interface CpuFeatures {
  avx2: boolean;
  fma: boolean;
  f16c: boolean;
  avx512f: boolean;
  kernel: 'avx2' | 'scalar';
}

export interface NativeInfo extends CpuFeatures {
  /** Threads the shared pool runs ops on (the calling thread included). */
  threads: number;
  /** Cores available to this process: the pool's default size. */
  defaultThreads: number;
  /** Path the addon was loaded from. */
  path: string;
}

type F32 = Float32Array;
type Half = Uint16Array;

/** The C++ addon's exports (native/addon.cc). Arrays are read in place, never copied. */
interface Addon {
  matmul(x: F32, w: F32 | Half, bias: F32 | Half | null, out: F32, M: number, N: number, K: number): void;
  add(a: F32, b: F32, out: F32): void;
  mul(a: F32, b: F32, out: F32): void;
  rmsNorm(x: F32, weight: F32 | Half, eps: number, out: F32): void;
  layerNorm(x: F32, weight: F32 | Half, bias: F32 | Half, eps: number, out: F32): void;
  gelu(x: F32, out: F32, erf: boolean): void;
  mergeBlocks(x: F32, out: F32, cols: number, mergeSize: number): void;
  siluMul(gate: F32, up: F32, out: F32): void;
  softmax(x: F32, out: F32, cols: number): void;
  rope(x: F32, cos: F32, sin: F32, out: F32, T: number, H: number, D: number): void;
  attention(
    q: F32,
    k: F32,
    v: F32,
    out: F32,
    T: number,
    S: number,
    Hq: number,
    Hkv: number,
    D: number,
    scale: number,
    causal: boolean,
    queryOffset: number,
  ): void;
  embedding(table: F32 | Half, ids: Int32Array, out: F32, D: number): void;
  argmax(x: F32): number;
  topK(x: F32, k: number, indices: Int32Array, values: F32): void;
  setThreads(n: number): void;
  getThreads(): number;
  defaultThreads(): number;
  setKernel(name: string): boolean;
  cpuFeatures(): CpuFeatures;
  peakFlops(threads: number, seconds: number): number;
  readBandwidth(threads: number, bytes: number, repeats: number): number;
}

let addon: Addon | undefined;
let addonPath = '';

/** Where the addon may be: $VL3_NATIVE_PATH, else build/Release under the package root seen from dist/ or src/. */
function candidatePaths(): string[] {
  const here = dirname(fileURLToPath(import.meta.url));
  const fromEnv = process.env['VL3_NATIVE_PATH'];
  if (fromEnv) return [resolve(fromEnv)];
  return [
    resolve(here, '../../../build/Release/vl3_native.node'), // dist/src/tensor/native.js
    resolve(here, '../../build/Release/vl3_native.node'), // src/tensor/native.ts run from source
  ];
}

/** Loads the addon once per process (it holds the process's one thread pool). */
function native(): Addon {
  if (addon) return addon;
  const paths = candidatePaths();
  const path = paths.find((p) => existsSync(p));
  if (!path) {
    throw new Error(
      `videollama3: the native CPU backend is not built (looked for ${paths.join(' and ')}). ` +
        'Run `npm install` in the package root (or `npm run install` to rebuild just the addon with npm\'s node-gyp).',
    );
  }
  const require = createRequire(import.meta.url);
  try {
    addon = require(path) as Addon;
  } catch (err) {
    throw new Error(
      `videollama3: cannot load the native CPU backend at ${path}: ${(err as Error).message}. ` +
        'Rebuild it for this Node and machine with `npm run install` in the package root (or `npm install`).',
    );
  }
  addonPath = path;
  return addon;
}

/**
 * The loaded addon's exports for ops declared outside this file (src/processing/resize.ts declares its own
 * signature); loads the addon on first use, with the same errors as the backend.
 */
export function nativeAddon(): object {
  return native();
}

export function nativeInfo(): NativeInfo {
  const a = native();
  return { ...a.cpuFeatures(), threads: a.getThreads(), defaultThreads: a.defaultThreads(), path: addonPath };
}

/**
 * Chooses the kernel set for every later op: 'auto' (AVX2 when the CPU has it, unless VL3_FORCE_SCALAR=1),
 * 'scalar' (the portable fallback), or 'avx2' (throws where unavailable). For tests and benchmarks.
 */
export function setNativeKernel(kind: 'auto' | 'scalar' | 'avx2'): void {
  if (!native().setKernel(kind)) throw new Error(`setNativeKernel: kernel '${kind}' is not available on this CPU/build`);
}

/** GFLOP/s of an AVX2 FMA-bound loop on `threads` pool threads, each running for about `seconds`. */
export function peakFlops(threads: number, seconds = 0.5): number {
  checkPositiveInt('peakFlops', 'threads', threads);
  return native().peakFlops(threads, seconds);
}

/** GB/s of a read-only sum over a `bytes` array (default 256 MiB) on `threads` threads; best of `repeats`. */
export function readBandwidth(threads: number, bytes = 256 * 2 ** 20, repeats = 3): number {
  checkPositiveInt('readBandwidth', 'threads', threads);
  checkPositiveInt('readBandwidth', 'bytes', bytes);
  checkPositiveInt('readBandwidth', 'repeats', repeats);
  return native().readBandwidth(threads, bytes, repeats);
}

function checkPositiveInt(op: string, name: string, n: number): void {
  if (!Number.isInteger(n) || n < 1) throw new Error(`${op}: ${name} must be a positive integer, got ${n}`);
}

function f32(t: Tensor): F32 {
  return t.data as F32;
}

function floatData(t: Tensor): F32 | Half {
  return t.data as F32 | Half;
}

/**
 * The CPU kernels: C++ (AVX2/FMA with a portable fallback) run synchronously on the addon's thread pool, reading
 * the tensors' host arrays in place. Arguments were checked by `CheckedBackend`.
 */
export class NativeKernels implements Kernels {
  readonly name = 'native';
  readonly compute: ComputeMode = 'exact';
  readonly device = hostMemory.device;
  readonly allocateStorage = hostMemory.allocateStorage;
  readonly upload = hostMemory.upload;
  readonly download = hostMemory.download;
  readonly write = hostMemory.write;
  readonly copy = hostMemory.copy;
  readonly copyRows = hostMemory.copyRows;
  readonly fill = hostMemory.fill;
  private readonly n: Addon;

  constructor(options: { threads?: number } = {}) {
    this.n = native();
    if (options.threads !== undefined) {
      checkPositiveInt('NativeBackend', 'threads', options.threads);
      this.n.setThreads(options.threads);
    }
  }

  get threads(): number {
    return this.n.getThreads();
  }

  /** The kernel set ops use now: 'avx2' or 'scalar'. */
  get kernel(): 'avx2' | 'scalar' {
    return this.n.cpuFeatures().kernel;
  }

  matmul(x: Tensor, w: Tensor, bias: Tensor | null, out: Tensor): void {
    const K = x.dim(-1);
    const N = w.dim(0);
    const M = K === 0 ? out.numel / Math.max(N, 1) : x.numel / K;
    this.n.matmul(f32(x), floatData(w), bias ? floatData(bias) : null, f32(out), M, N, K);
  }

  add(a: Tensor, b: Tensor, out: Tensor): void {
    this.n.add(f32(a), f32(b), f32(out));
  }

  mul(a: Tensor, b: Tensor, out: Tensor): void {
    this.n.mul(f32(a), f32(b), f32(out));
  }

  rmsNorm(x: Tensor, weight: Tensor, eps: number, out: Tensor): void {
    this.n.rmsNorm(f32(x), floatData(weight), eps, f32(out));
  }

  layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps: number, out: Tensor): void {
    this.n.layerNorm(f32(x), floatData(weight), floatData(bias), eps, f32(out));
  }

  gelu(x: Tensor, out: Tensor, approximation: 'tanh' | 'erf'): void {
    this.n.gelu(f32(x), f32(out), approximation === 'erf');
  }

  mergeBlocks(x: Tensor, mergeSize: number, out: Tensor): void {
    this.n.mergeBlocks(f32(x), f32(out), x.dim(-1), mergeSize);
  }

  siluMul(gate: Tensor, up: Tensor, out: Tensor): void {
    this.n.siluMul(f32(gate), f32(up), f32(out));
  }

  softmax(x: Tensor, out: Tensor): void {
    this.n.softmax(f32(x), f32(out), x.dim(-1));
  }

  rope(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor): void {
    const [T, H, D] = x.shape as [number, number, number];
    this.n.rope(f32(x), f32(cos), f32(sin), f32(out), T, H, D);
  }

  attention(q: Tensor, k: Tensor, v: Tensor, out: Tensor, options: AttentionOptions): void {
    const [T, Hq, D] = q.shape as [number, number, number];
    const [S, Hkv] = k.shape as [number, number, number];
    this.n.attention(f32(q), f32(k), f32(v), f32(out), T, S, Hq, Hkv, D, options.scale, options.causal, options.queryOffset ?? 0);
  }

  embedding(table: Tensor, ids: Tensor, out: Tensor): void {
    this.n.embedding(floatData(table), ids.data as Int32Array, f32(out), table.dim(1));
  }

  argmax(x: Tensor): number {
    return this.n.argmax(f32(x));
  }

  topK(x: Tensor, k: number): TopK {
    const indices = new Int32Array(k);
    const values = new Float32Array(k);
    this.n.topK(f32(x), k, indices, values);
    return { indices, values };
  }
}

/** The native kernels behind the checking layer: the CPU backend models run on. */
export class NativeBackend extends CheckedBackend {
  constructor(options: { threads?: number } = {}) {
    super(new NativeKernels(options));
  }

  /** The kernel set ops use now: 'avx2' or 'scalar'. */
  get kernel(): 'avx2' | 'scalar' {
    return (this.kernels as NativeKernels).kernel;
  }
}
