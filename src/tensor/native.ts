import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import type { AttentionOptions, Backend, TopK } from './backend.js';
import { assertDType, assertShape, type Tensor } from './tensor.js';

/** CPU features the addon detected (x86: CPUID with the OS's register-state checks; aarch64: getauxval). */
export interface CpuFeatures {
  avx2: boolean;
  fma: boolean;
  f16c: boolean;
  avx512f: boolean;
  avx512bw: boolean;
  avx512dq: boolean;
  avx512vl: boolean;
  avx512bf16: boolean;
  avx512vnni: boolean;
  avxvnni: boolean;
  neon: boolean;
  dotprod: boolean;
  i8mm: boolean;
  bf16: boolean;
}

/**
 * A kernel tier: 'scalar' (portable loops), 'avx2' (AVX2+FMA+F16C), 'avx512' (AVX-512 F/BW/DQ/VL), 'avx512bf16'
 * (avx512 whose bf16 compute mode multiplies with vdpbf16ps), 'neon' (aarch64).
 */
export type Isa = 'scalar' | 'avx2' | 'avx512' | 'avx512bf16' | 'neon';

/**
 * How matmul computes (every other op is f32 in both): 'exact' multiplies f32 activations by the stored weights in
 * f32; 'bf16' first rounds activations (and f32 weights) to bf16, round-to-nearest-even, then sums the exact
 * products in f32 (native/kernels.h states the contract).
 */
export type ComputeMode = 'exact' | 'bf16';

/** An instruction kind whose peak `peakFlops` measures (GOP/s for the int8 kinds). */
export type PeakKind = 'fp32-scalar' | 'fp32-ymm' | 'fp32-zmm' | 'bf16-zmm' | 'int8-zmm' | 'int8-ymm';

export interface NativeInfo {
  features: CpuFeatures;
  /** The tiers this CPU and build can run, worst first. */
  tiers: Isa[];
  /** The tier a NativeBackend gets without an `isa` option: $VL3_ISA, else the best of `tiers`. */
  isa: Isa;
  /** The compute mode it gets without a `compute` option: $VL3_COMPUTE, else 'bf16' on a tier with a bf16 dot instruction. */
  compute: ComputeMode;
  /** Cores available to this process: a backend's default thread count. */
  defaultThreads: number;
  /** The peak kinds `peakFlops` can measure here. */
  peakKinds: PeakKind[];
  /** Path the addon was loaded from. */
  path: string;
}

export interface NativeBackendOptions {
  /** Threads of this backend's own pool (the calling thread included); default: the cores available. */
  threads?: number;
  /** Kernel tier; default $VL3_ISA, else the best this CPU supports. A tier the CPU lacks is an error. */
  isa?: Isa;
  /** Default $VL3_COMPUTE, else 'bf16' where the tier has a bf16 dot instruction (avx512bf16), 'exact' elsewhere. */
  compute?: ComputeMode;
}

const ISAS: readonly Isa[] = ['scalar', 'avx2', 'avx512', 'avx512bf16', 'neon'];

type F32 = Float32Array;
type Half = Uint16Array;

/** A backend's native half (native/addon.cc): its own thread pool, kernel tier and compute mode; ops run one at a time. */
interface NativeContext {
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
  setThreads(n: number): void;
  readonly threads: number;
  readonly isa: Isa;
  readonly compute: ComputeMode;
}

/** The C++ addon's exports (native/addon.cc). Arrays are read in place, never copied. */
interface Addon {
  Context: new (threads: number | undefined, isa: Isa | null, compute: ComputeMode | null) => NativeContext;
  argmax(x: F32): number;
  topK(x: F32, k: number, indices: Int32Array, values: F32): void;
  defaultThreads(): number;
  cpuFeatures(): CpuFeatures;
  tiers(): Isa[];
  defaults(): { isa: Isa; compute: ComputeMode };
  peakKinds(): PeakKind[];
  peakFlops(kind: PeakKind, threads: number, seconds: number): number;
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

/** Loads the addon once per process. */
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

/** What the addon detected and what a backend created without options gets; throws where $VL3_ISA or $VL3_COMPUTE is invalid. */
export function nativeInfo(): NativeInfo {
  const a = native();
  const d = a.defaults();
  return {
    features: a.cpuFeatures(),
    tiers: a.tiers(),
    isa: d.isa,
    compute: d.compute,
    defaultThreads: a.defaultThreads(),
    peakKinds: a.peakKinds(),
    path: addonPath,
  };
}

/**
 * GFLOP/s (GOP/s for int8 kinds) of a loop of independent `kind` instructions on `threads` threads of a pool of its
 * own, each running for about `seconds`. Default kind: the widest fp32 FMA this CPU has.
 */
export function peakFlops(threads: number, seconds = 0.5, kind?: PeakKind): number {
  checkPositiveInt('peakFlops', 'threads', threads);
  const a = native();
  const kinds = a.peakKinds();
  const k = kind ?? (['fp32-zmm', 'fp32-ymm', 'fp32-scalar'] as const).find((f) => kinds.includes(f))!;
  if (!kinds.includes(k)) throw new Error(`peakFlops: kind '${k}' is not available on this CPU (available: ${kinds.join(', ')})`);
  return a.peakFlops(k, threads, seconds);
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
 * The CPU backend: C++ kernels run synchronously on a thread pool of the backend's own, with a kernel tier and a
 * compute mode fixed at construction. Backends share nothing, so two models on two JS threads run at the same time,
 * each with its own thread count. Shapes and dtypes are checked here with errors naming the op and operand; the addon
 * reads the tensors' arrays in place.
 */
export class NativeBackend implements Backend {
  readonly name = 'native';
  private readonly ctx: NativeContext;
  private readonly n: Addon;

  constructor(options: NativeBackendOptions = {}) {
    this.n = native();
    const { threads, isa, compute } = options;
    if (threads !== undefined) checkPositiveInt('NativeBackend', 'threads', threads);
    if (isa !== undefined && !ISAS.includes(isa)) {
      throw new Error(`NativeBackend: isa must be one of ${ISAS.join(', ')}, got ${String(isa)}`);
    }
    if (compute !== undefined && compute !== 'exact' && compute !== 'bf16') {
      throw new Error(`NativeBackend: compute must be 'exact' or 'bf16', got ${String(compute)}`);
    }
    try {
      this.ctx = new this.n.Context(threads, isa ?? null, compute ?? null);
    } catch (err) {
      throw new Error(`NativeBackend: ${(err as Error).message}`);
    }
  }

  /** Threads of this backend's pool. Setting it resizes this backend's pool only. */
  get threads(): number {
    return this.ctx.threads;
  }

  set threads(n: number) {
    checkPositiveInt('NativeBackend', 'threads', n);
    this.ctx.setThreads(n);
  }

  /** The kernel tier this backend runs. */
  get isa(): Isa {
    return this.ctx.isa;
  }

  /** How this backend's matmul computes. */
  get compute(): ComputeMode {
    return this.ctx.compute;
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
    this.ctx.matmul(f32(x), floatData(w), bias ? floatData(bias) : null, f32(out), M, N, K);
  }

  add(a: Tensor, b: Tensor, out: Tensor): void {
    this.checkBinary('add', a, b, out);
    this.ctx.add(f32(a), f32(b), f32(out));
  }

  mul(a: Tensor, b: Tensor, out: Tensor): void {
    this.checkBinary('mul', a, b, out);
    this.ctx.mul(f32(a), f32(b), f32(out));
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
    this.ctx.rmsNorm(f32(x), floatData(weight), eps, f32(out));
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
    this.ctx.layerNorm(f32(x), floatData(weight), floatData(bias), eps, f32(out));
  }

  gelu(x: Tensor, out: Tensor, approximation: 'tanh' | 'erf'): void {
    assertDType('gelu: x', x, 'f32');
    assertDType('gelu: out', out, 'f32');
    assertShape('gelu: out', out, x.shape);
    if (approximation !== 'tanh' && approximation !== 'erf') {
      throw new Error(`gelu: approximation must be 'tanh' or 'erf', got ${String(approximation)}`);
    }
    assertSameOrDisjoint('gelu', out, 'x', x);
    this.ctx.gelu(f32(x), f32(out), approximation === 'erf');
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
    this.ctx.mergeBlocks(f32(x), f32(out), C, mergeSize);
  }

  siluMul(gate: Tensor, up: Tensor, out: Tensor): void {
    assertDType('siluMul: gate', gate, 'f32');
    assertDType('siluMul: up', up, 'f32');
    assertShape('siluMul: up', up, gate.shape);
    assertDType('siluMul: out', out, 'f32');
    assertShape('siluMul: out', out, gate.shape);
    assertSameOrDisjoint('siluMul', out, 'gate', gate);
    assertSameOrDisjoint('siluMul', out, 'up', up);
    this.ctx.siluMul(f32(gate), f32(up), f32(out));
  }

  softmax(x: Tensor, out: Tensor): void {
    assertDType('softmax: x', x, 'f32');
    assertRankAtLeast('softmax: x', x, 1);
    assertDType('softmax: out', out, 'f32');
    assertShape('softmax: out', out, x.shape);
    assertSameOrDisjoint('softmax', out, 'x', x);
    if (x.numel === 0) return;
    this.ctx.softmax(f32(x), f32(out), x.dim(-1));
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
    this.ctx.rope(f32(x), f32(cos), f32(sin), f32(out), T, H, D);
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
    this.ctx.attention(f32(q), f32(k), f32(v), f32(out), T, S, Hq, Hkv, D, options.scale, options.causal,
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
    this.ctx.embedding(floatData(table), ids.data as Int32Array, f32(out), D);
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
