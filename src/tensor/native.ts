import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import type { AttentionOptions, Backend, TopK } from './backend.js';
import { assertDType, assertShape, type Tensor } from './tensor.js';

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

function assertRank(name: string, t: Tensor, rank: number): void {
  if (t.rank !== rank) throw new Error(`${name}: expected rank ${rank}, got shape [${t.shape.join(', ')}]`);
}

function assertRankAtLeast(name: string, t: Tensor, rank: number): void {
  if (t.rank < rank) throw new Error(`${name}: expected rank >= ${rank}, got shape [${t.shape.join(', ')}]`);
}

/** Byte ranges of two tensors' storage intersect (the same tensor twice counts). */
function overlaps(a: Tensor, b: Tensor): boolean {
  if (a.data.buffer !== b.data.buffer) return false;
  const a0 = a.data.byteOffset, b0 = b.data.byteOffset;
  return a0 < b0 + b.data.byteLength && b0 < a0 + a.data.byteLength;
}

function assertNoOverlap(op: string, out: Tensor, name: string, t: Tensor): void {
  if (out.numel > 0 && t.numel > 0 && overlaps(out, t)) throw new Error(`${op}: out must not share storage with ${name}`);
}

/** An op whose out may be `t` itself, but not a partly overlapping view of it. */
function assertSameOrDisjoint(op: string, out: Tensor, name: string, t: Tensor): void {
  const same =
    out.data.buffer === t.data.buffer &&
    out.data.byteOffset === t.data.byteOffset &&
    out.data.byteLength === t.data.byteLength;
  if (!same) assertNoOverlap(op, out, name, t);
}

function f32(t: Tensor): F32 {
  return t.data as F32;
}

function floatData(t: Tensor): F32 | Half {
  return t.data as F32 | Half;
}

/**
 * The CPU backend: C++ kernels (AVX2/FMA with a portable fallback) run synchronously on one process-wide thread pool.
 * Shapes and dtypes are checked here with errors naming the op and operand; the addon reads the tensors' arrays in
 * place. `threads` is the pool's size, shared by every NativeBackend in the process.
 */
export class NativeBackend implements Backend {
  readonly name = 'native';
  private readonly n: Addon;

  constructor(options: { threads?: number } = {}) {
    this.n = native();
    if (options.threads !== undefined) this.threads = options.threads;
  }

  get threads(): number {
    return this.n.getThreads();
  }

  set threads(n: number) {
    checkPositiveInt('NativeBackend', 'threads', n);
    this.n.setThreads(n);
  }

  /** The kernel set ops use now: 'avx2' or 'scalar'. */
  get kernel(): 'avx2' | 'scalar' {
    return this.n.cpuFeatures().kernel;
  }

  matmul(x: Tensor, w: Tensor, bias: Tensor | null, out: Tensor): void {
    // x may carry leading dimensions ([..., K]); they are flattened into M rows and kept in out ([..., N]).
    assertDType('matmul: x', x, 'f32');
    assertRankAtLeast('matmul: x', x, 1);
    assertDType('matmul: w', w, 'f32', 'bf16');
    assertRank('matmul: w', w, 2);
    const K = x.dim(-1);
    const M = K === 0 ? x.shape.slice(0, -1).reduce((p, d) => p * d, 1) : x.numel / K;
    const N = w.dim(0);
    assertShape('matmul: w', w, [N, K]);
    if (bias) {
      assertDType('matmul: bias', bias, 'f32', 'bf16');
      assertShape('matmul: bias', bias, [N]);
    }
    assertDType('matmul: out', out, 'f32');
    assertShape('matmul: out', out, [...x.shape.slice(0, -1), N]);
    assertNoOverlap('matmul', out, 'x', x);
    assertNoOverlap('matmul', out, 'w', w);
    if (bias) assertNoOverlap('matmul', out, 'bias', bias);
    this.n.matmul(f32(x), floatData(w), bias ? floatData(bias) : null, f32(out), M, N, K);
  }

  add(a: Tensor, b: Tensor, out: Tensor): void {
    this.checkBinary('add', a, b, out);
    this.n.add(f32(a), f32(b), f32(out));
  }

  mul(a: Tensor, b: Tensor, out: Tensor): void {
    this.checkBinary('mul', a, b, out);
    this.n.mul(f32(a), f32(b), f32(out));
  }

  rmsNorm(x: Tensor, weight: Tensor, eps: number, out: Tensor): void {
    assertDType('rmsNorm: x', x, 'f32');
    assertRankAtLeast('rmsNorm: x', x, 1);
    assertDType('rmsNorm: weight', weight, 'f32', 'bf16');
    assertShape('rmsNorm: weight', weight, [x.dim(-1)]);
    assertDType('rmsNorm: out', out, 'f32');
    assertShape('rmsNorm: out', out, x.shape);
    if (!Number.isFinite(eps) || eps < 0) throw new Error(`rmsNorm: eps must be a finite number >= 0, got ${eps}`);
    assertSameOrDisjoint('rmsNorm', out, 'x', x);
    assertNoOverlap('rmsNorm', out, 'weight', weight);
    if (x.numel === 0) return;
    this.n.rmsNorm(f32(x), floatData(weight), eps, f32(out));
  }

  layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps: number, out: Tensor): void {
    assertDType('layerNorm: x', x, 'f32');
    assertRankAtLeast('layerNorm: x', x, 1);
    assertDType('layerNorm: weight', weight, 'f32', 'bf16');
    assertShape('layerNorm: weight', weight, [x.dim(-1)]);
    assertDType('layerNorm: bias', bias, 'f32', 'bf16');
    assertShape('layerNorm: bias', bias, [x.dim(-1)]);
    assertDType('layerNorm: out', out, 'f32');
    assertShape('layerNorm: out', out, x.shape);
    if (!Number.isFinite(eps) || eps < 0) throw new Error(`layerNorm: eps must be a finite number >= 0, got ${eps}`);
    assertSameOrDisjoint('layerNorm', out, 'x', x);
    assertNoOverlap('layerNorm', out, 'weight', weight);
    assertNoOverlap('layerNorm', out, 'bias', bias);
    if (x.numel === 0) return;
    this.n.layerNorm(f32(x), floatData(weight), floatData(bias), eps, f32(out));
  }

  gelu(x: Tensor, out: Tensor, approximation: 'tanh' | 'erf'): void {
    assertDType('gelu: x', x, 'f32');
    assertDType('gelu: out', out, 'f32');
    assertShape('gelu: out', out, x.shape);
    if (approximation !== 'tanh' && approximation !== 'erf') {
      throw new Error(`gelu: approximation must be 'tanh' or 'erf', got ${String(approximation)}`);
    }
    assertSameOrDisjoint('gelu', out, 'x', x);
    this.n.gelu(f32(x), f32(out), approximation === 'erf');
  }

  mergeBlocks(x: Tensor, mergeSize: number, out: Tensor): void {
    if (mergeSize !== 1 && mergeSize !== 2) throw new Error(`mergeBlocks: merge size ${mergeSize} is not supported (1 or 2)`);
    assertDType('mergeBlocks: x', x, 'f32');
    assertRankAtLeast('mergeBlocks: x', x, 1);
    const C = x.dim(-1);
    const group = mergeSize * mergeSize;
    const rows = C === 0 ? 0 : x.numel / C;
    if (rows % group !== 0) {
      throw new Error(`mergeBlocks: x has ${rows} rows, not a multiple of ${group} (merge size ${mergeSize})`);
    }
    assertDType('mergeBlocks: out', out, 'f32');
    assertShape('mergeBlocks: out', out, [rows / group, C]);
    assertNoOverlap('mergeBlocks', out, 'x', x);
    if (out.numel === 0) return;
    this.n.mergeBlocks(f32(x), f32(out), C, mergeSize);
  }

  siluMul(gate: Tensor, up: Tensor, out: Tensor): void {
    assertDType('siluMul: gate', gate, 'f32');
    assertDType('siluMul: up', up, 'f32');
    assertShape('siluMul: up', up, gate.shape);
    assertDType('siluMul: out', out, 'f32');
    assertShape('siluMul: out', out, gate.shape);
    assertSameOrDisjoint('siluMul', out, 'gate', gate);
    assertSameOrDisjoint('siluMul', out, 'up', up);
    this.n.siluMul(f32(gate), f32(up), f32(out));
  }

  softmax(x: Tensor, out: Tensor): void {
    assertDType('softmax: x', x, 'f32');
    assertRankAtLeast('softmax: x', x, 1);
    assertDType('softmax: out', out, 'f32');
    assertShape('softmax: out', out, x.shape);
    assertSameOrDisjoint('softmax', out, 'x', x);
    if (x.numel === 0) return;
    this.n.softmax(f32(x), f32(out), x.dim(-1));
  }

  rope(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor): void {
    assertDType('rope: x', x, 'f32');
    assertRank('rope: x', x, 3);
    const [T, H, D] = x.shape as [number, number, number];
    if (D % 2 !== 0) throw new Error(`rope: head dimension must be even, got ${D}`);
    assertDType('rope: cos', cos, 'f32');
    assertShape('rope: cos', cos, [T, D / 2]);
    assertDType('rope: sin', sin, 'f32');
    assertShape('rope: sin', sin, [T, D / 2]);
    assertDType('rope: out', out, 'f32');
    assertShape('rope: out', out, x.shape);
    assertSameOrDisjoint('rope', out, 'x', x);
    assertNoOverlap('rope', out, 'cos', cos);
    assertNoOverlap('rope', out, 'sin', sin);
    this.n.rope(f32(x), f32(cos), f32(sin), f32(out), T, H, D);
  }

  attention(q: Tensor, k: Tensor, v: Tensor, out: Tensor, options: AttentionOptions): void {
    assertDType('attention: q', q, 'f32');
    assertRank('attention: q', q, 3);
    assertDType('attention: k', k, 'f32');
    assertRank('attention: k', k, 3);
    const [T, Hq, D] = q.shape as [number, number, number];
    const [S, Hkv] = k.shape as [number, number, number];
    assertShape('attention: k', k, [S, Hkv, D]);
    assertDType('attention: v', v, 'f32');
    assertShape('attention: v', v, [S, Hkv, D]);
    assertDType('attention: out', out, 'f32');
    assertShape('attention: out', out, q.shape);
    if (Hkv === 0 || Hq % Hkv !== 0) {
      throw new Error(`attention: query heads (${Hq}) must be a multiple of KV heads (${Hkv})`);
    }
    if (T > 0 && S === 0) throw new Error('attention: k and v hold no keys');
    if (!Number.isFinite(options.scale)) throw new Error(`attention: scale must be finite, got ${options.scale}`);
    const queryOffset = options.queryOffset ?? S - T;
    if (options.causal && (!Number.isInteger(queryOffset) || queryOffset < 0)) {
      throw new Error(`attention: causal queryOffset must be an integer >= 0, got ${queryOffset} (T=${T}, S=${S})`);
    }
    assertNoOverlap('attention', out, 'q', q);
    assertNoOverlap('attention', out, 'k', k);
    assertNoOverlap('attention', out, 'v', v);
    if (T === 0) return;
    this.n.attention(f32(q), f32(k), f32(v), f32(out), T, S, Hq, Hkv, D, options.scale, options.causal,
      options.causal ? queryOffset : 0);
  }

  embedding(table: Tensor, ids: Tensor, out: Tensor): void {
    assertDType('embedding: table', table, 'f32', 'bf16');
    assertRank('embedding: table', table, 2);
    assertDType('embedding: ids', ids, 'i32');
    assertRank('embedding: ids', ids, 1);
    const D = table.dim(1);
    assertDType('embedding: out', out, 'f32');
    assertShape('embedding: out', out, [ids.dim(0), D]);
    if (D === 0 || ids.numel === 0) {
      // Nothing to copy, but ids must still be valid.
      const V = table.dim(0);
      (ids.data as Int32Array).forEach((id, i) => {
        if (id < 0 || id >= V) throw new Error(`embedding: ids[${i}] = ${id} is outside [0, ${V})`);
      });
      return;
    }
    assertNoOverlap('embedding', out, 'table', table);
    this.n.embedding(floatData(table), ids.data as Int32Array, f32(out), D);
  }

  argmax(x: Tensor): number {
    assertDType('argmax: x', x, 'f32');
    assertRank('argmax: x', x, 1);
    if (x.numel === 0) throw new Error('argmax: x is empty');
    return this.n.argmax(f32(x));
  }

  topK(x: Tensor, k: number): TopK {
    assertDType('topK: x', x, 'f32');
    assertRank('topK: x', x, 1);
    if (!Number.isInteger(k) || k < 0 || k > x.numel) {
      throw new Error(`topK: k must be an integer in [0, ${x.numel}], got ${k}`);
    }
    const indices = new Int32Array(k);
    const values = new Float32Array(k);
    this.n.topK(f32(x), k, indices, values);
    return { indices, values };
  }

  private checkBinary(op: string, a: Tensor, b: Tensor, out: Tensor): void {
    assertDType(`${op}: a`, a, 'f32');
    assertDType(`${op}: b`, b, 'f32');
    const sameShape = b.rank === a.rank && b.shape.every((d, i) => d === a.shape[i]);
    if (!sameShape) {
      if (a.rank === 0) assertShape(`${op}: b`, b, a.shape);
      assertShape(`${op}: b (a's shape or a vector over its last dimension)`, b, [a.dim(-1)]);
    }
    assertDType(`${op}: out`, out, 'f32');
    assertShape(`${op}: out`, out, a.shape);
    assertSameOrDisjoint(op, out, 'a', a);
    assertSameOrDisjoint(op, out, 'b', b);
  }
}
