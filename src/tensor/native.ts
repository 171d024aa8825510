import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import type { AdamWHyper, AttentionOptions, ComputeMode, DecoderLayersStep, DecoderLayerWeights, Kernels, MatmulPart, TopK } from './backend.js';
import { CheckedBackend } from './checked.js';
import { DECODER_LAYER_WEIGHTS, LayerWeightsMemo } from './decoder-layer.js';
import { adamwScalars } from './host-gradients.js';
import { HostKernels } from './host.js';
import { isQuantized, type QuantFormat } from './dtype.js';
import { packedBytes, QuantizeRangeError } from './quant.js';
import { HostStorage, type Storage, type Tensor } from './tensor.js';

export type { ComputeMode } from './backend.js';

/**
 * CPU features the addon detected (x86: CPUID with the OS's register-state checks; aarch64: getauxval on Linux,
 * sysctl on macOS).
 */
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
 * A kernel tier: 'scalar' (portable loops), 'avx2' (AVX2+FMA+F16C), 'avxvnni' (avx2 whose quantized matmuls use
 * AVX-VNNI's vpdpbusd), 'avx512' (AVX-512 F/BW/DQ/VL), 'avx512bf16'
 * (avx512 whose bf16 compute mode multiplies with vdpbf16ps), 'neon' (aarch64 Advanced SIMD; on a CPU with BF16 its
 * bf16 compute mode multiplies with BFMMLA/BFDOT).
 */
export type Isa = 'scalar' | 'avx2' | 'avxvnni' | 'avx512' | 'avx512bf16' | 'neon';


/** An instruction kind whose peak `peakFlops` measures (GOP/s for the int8 kinds). */
export type PeakKind = 'fp32-scalar' | 'fp32-ymm' | 'fp32-zmm' | 'fp32-neon' | 'bf16-zmm' | 'int8-zmm' | 'int8-ymm';

export interface NativeInfo {
  features: CpuFeatures;
  /** The tiers this CPU and build can run, worst first. */
  tiers: Isa[];
  /** The tier a NativeBackend gets without an `isa` option: $VL3_ISA, else the best of `tiers`. */
  isa: Isa;
  /** The compute mode it gets without a `compute` option: $VL3_COMPUTE, else 'bf16' where the tier multiplies bf16 natively. */
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
  /**
   * Default $VL3_COMPUTE, else 'bf16' where the tier multiplies bf16 natively (avx512bf16, and neon on a CPU with
   * BF16), 'exact' elsewhere.
   */
  compute?: ComputeMode;
}

export const ISAS: readonly Isa[] = ['scalar', 'avx2', 'avxvnni', 'avx512', 'avx512bf16', 'neon'];

type F32 = Float32Array;
type Half = Uint16Array;

type NativeMatmulPart = [F32 | Half | Uint8Array, F32 | Half | null, F32, number, number | undefined];

/** A backend's native half (native/addon.cc): its own thread pool, kernel tier and compute mode; ops run one at a time. */
interface NativeContext {
  matmul(x: F32, w: F32 | Half | Uint8Array, bias: F32 | Half | null, out: F32, M: number, N: number, K: number, wFormat?: number): void;
  /** Parts as [w, bias, out, N, wFormat]. */
  matmuls(x: F32, parts: NativeMatmulPart[], M: number, K: number): void;
  /**
   * Buffers x, h, q, attn, gate, up, cos, sin; dims [T, S, H, Hq, Hkv, D, I, L, then each layer's seven projections'
   * formats, 0 for f32 or bf16]; eps; scale; then for each of the L layers its keys, values and weights inputNorm,
   * qProj, qBias, kProj, kBias, vProj, vBias, oProj, postNorm, gateProj, upProj, downProj (biases may be null).
   */
  decoderLayers(...args: (F32 | Half | Uint8Array | Int32Array | number | null)[]): void;
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
  embedding(table: F32 | Half | Uint8Array, ids: Int32Array, out: F32, D: number, format?: number): void;
  matmulBackward(dy: F32, x: F32, w: F32 | Half, dx: F32 | null, dw: F32 | null, dbias: F32 | null, M: number, N: number, K: number): void;
  attentionBackward(
    q: F32,
    k: F32,
    v: F32,
    dout: F32,
    dq: F32,
    dk: F32,
    dv: F32,
    T: number,
    S: number,
    Hq: number,
    Hkv: number,
    D: number,
    scale: number,
    causal: boolean,
    queryOffset: number,
  ): void;
  crossEntropy(hidden: F32, head: F32 | Half, targets: Int32Array, scale: number, losses: F32, dhidden: F32 | null, dhead: F32 | null, n: number, H: number, V: number): void;
  rmsNormBackward(dy: F32, x: F32, weight: F32 | Half, eps: number, dx: F32, dweight: F32 | null): void;
  layerNormBackward(dy: F32, x: F32, weight: F32 | Half, eps: number, dx: F32, dweight: F32 | null, dbias: F32 | null): void;
  geluBackward(dy: F32, x: F32, dx: F32, erf: boolean): void;
  siluMulBackward(dy: F32, gate: F32, up: F32, dgate: F32, dup: F32): void;
  ropeBackward(dy: F32, cos: F32, sin: F32, dx: F32, T: number, H: number, D: number): void;
  mergeBlocksBackward(dy: F32, dx: F32, cols: number, mergeSize: number): void;
  embeddingBackward(dy: F32, ids: Int32Array, dtable: F32, D: number): void;
  /** The scalars are host-gradients.ts `adamwScalars`, in its field order. */
  adamw(p: F32, g: F32, m: F32, v: F32, decay: number, w1: number, b2: number, w2: number, stepSize: number, bc2Sqrt: number, eps: number): void;
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
  measureInterruptions(threads: number, seconds: number, minGapUs: number): Interruptions;
  quantize(format: QuantFormat, src: F32 | Half, dst: Uint8Array, N: number, K: number): number;
  mapFile(fd: number, offset: number, length: number): ArrayBuffer;
  adviseHugePages(buffer: ArrayBuffer): void;
  lineOffset(buffer: ArrayBuffer): number;
}

/** The WType numbers of native/kernels.h for the quantized formats. */
const NATIVE_FORMAT: Record<QuantFormat, number> = { int8: 3, int4: 4, int4m: 5 };
const nativeFormat = (t: Tensor) => (isQuantized(t.dtype) ? NATIVE_FORMAT[t.dtype] : undefined);

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
        'Run `npm install` in the package root (or `npm run install` to rebuild just the addon with npm\'s node-gyp). ' +
        'Installed as a dependency, it builds in videollama3\'s install script, which npm 12 skips unless the project ' +
        'allows it: `npm install-scripts approve videollama3`, then `npm rebuild videollama3`.',
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
  const k = kind ?? (['fp32-zmm', 'fp32-ymm', 'fp32-neon', 'fp32-scalar'] as const).find((f) => kinds.includes(f))!;
  if (!kinds.includes(k)) throw new Error(`peakFlops: kind '${k}' is not available on this CPU (available: ${kinds.join(', ')})`);
  return a.peakFlops(k, threads, seconds);
}

/**
 * GB/s of a read-only sum over a `bytes` array (default 256 MiB) on `threads` threads: the best of `repeats` passes in
 * each of two orders, every thread's slice front to back and as 4 parts read together (native/measure.cc).
 */
export function readBandwidth(threads: number, bytes = 256 * 2 ** 20, repeats = 3): number {
  checkPositiveInt('readBandwidth', 'threads', threads);
  checkPositiveInt('readBandwidth', 'bytes', bytes);
  checkPositiveInt('readBandwidth', 'repeats', repeats);
  return native().readBandwidth(threads, bytes, repeats);
}

/** Time the machine took from spinning threads (`measureInterruptions`), as fractions of the measured time. */
export interface Interruptions {
  /** Each thread's time off its core. */
  lost: number[];
  /** Time at least one thread was off its core: what a step that waits for all its threads at every op can lose. */
  anyLost: number;
  /** The same, in gaps of 1 ms or more only. */
  longLost: number;
  /** Gaps of all threads together, a second. */
  gapsPerSecond: number;
}

/**
 * What this machine takes from `threads` threads that never block: each spins reading the clock for `seconds`, and a
 * gap of `minGapUs` or more between two reads is time it was off its core (interrupts, the hypervisor, other tasks).
 */
export function measureInterruptions(threads: number, seconds = 1, minGapUs = 10): Interruptions {
  checkPositiveInt('measureInterruptions', 'threads', threads);
  if (!(seconds > 0 && seconds <= 60)) throw new Error(`measureInterruptions: seconds must be in (0, 60], got ${seconds}`);
  if (!(minGapUs > 0 && Number.isFinite(minGapUs))) throw new Error(`measureInterruptions: minGapUs must be a positive number, got ${minGapUs}`);
  return native().measureInterruptions(threads, seconds, minGapUs);
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
 * A zero-filled ArrayBuffer for bulk data that lives long or is swept often (activations, gradients): from 4 MiB on,
 * its whole 2 MiB pages are advised as transparent huge pages before first touch (native/addon.cc `adviseHugePages`).
 * They fault in 512 times less often, and a sweep misses the TLB once per 2 MiB instead of once per 4 KiB
 * (BENCHMARKS.md run 10). Node's allocator, so V8 frees it as soon as it collects it, even mid-step.
 */
export function bulkBuffer(bytes: number): ArrayBuffer {
  // Below this, few whole huge pages fit inside a buffer.
  const HUGE_ALLOCATION_BYTES = 4 << 20;
  const buffer = new ArrayBuffer(bytes);
  if (bytes >= HUGE_ALLOCATION_BYTES) native().adviseHugePages(buffer);
  return buffer;
}

/**
 * Zero-filled bytes for weights (read or quantized at load), which a decode step streams every token: a view of a
 * `bulkBuffer` 64 bytes longer, starting on a 64-byte cache line. Node's ArrayBuffers start 16 bytes past one, so every
 * vector load of a weight row would span two lines: a bf16 decode 16–26 % slower on Zen 5 (BENCHMARKS.md run 15).
 */
export function weightBuffer(bytes: number): Uint8Array {
  const LINE = 64;
  const buffer = bulkBuffer(bytes + LINE);
  return new Uint8Array(buffer, native().lineOffset(buffer), bytes);
}

/** Whether a view's memory starts on a 64-byte cache line. */
export function startsOnLine(view: ArrayBufferView): boolean {
  return (view.byteOffset - native().lineOffset(view.buffer as ArrayBuffer)) % 64 === 0;
}

/**
 * Packs an f32 or bf16 [N, K] host tensor in a quantized format with the native encoder (threaded; byte-identical to
 * quant.ts `quantize`). A block holding a non-finite value, or needing a scale beyond f16, throws naming its row.
 */
export function quantizeNative(format: QuantFormat, t: Tensor): Uint8Array {
  if (t.rank !== 2 || (t.dtype !== 'f32' && t.dtype !== 'bf16')) throw new Error(`quantize: expected an f32 or bf16 matrix, got ${t}`);
  const [N, K] = t.shape as [number, number];
  const dst = weightBuffer(packedBytes(format, N, K));
  const bad = native().quantize(format, floatData(t), dst, N, K);
  if (bad >= 0) throw new QuantizeRangeError(bad, `row ${bad} holds a value that is not finite or needs a scale beyond the f16 range`);
  return dst;
}

/** A range of a file, memory-mapped (private, copy-on-write; pages are read when first touched). */
export interface MappedRange {
  buffer: ArrayBuffer;
  /** Where the range starts in `buffer` (the mapping starts at a 64 KiB boundary of the file). */
  byteOffset: number;
}

/** Bytes [offset, offset + length) of the open file `fd`, memory-mapped; length 1 byte to 4 GiB. The mapping outlives fd. */
export function mapFile(fd: number, offset: number, length: number): MappedRange {
  return { buffer: native().mapFile(fd, offset, length), byteOffset: offset % 65536 };
}

/**
 * The CPU kernels: C++ run synchronously on a thread pool of this instance's own, with a kernel tier and a compute
 * mode fixed at construction, reading the tensors' host arrays in place. Instances share nothing, so two models on
 * two JS threads run at the same time, each with its own thread count. Arguments were checked by `CheckedBackend`.
 */

export class NativeKernels extends HostKernels implements Kernels {
  readonly name = 'native';
  private readonly ctx: NativeContext;
  private readonly n: Addon;

  constructor(options: NativeBackendOptions = {}) {
    super();
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

  /**
   * Buffers of a few MiB and more (activations, gradients, optimizer state) are advised to the kernel as huge pages
   * (native/addon.cc `adviseHugePages`) before their first touch, so they fault in 512 times less often.
   */
  override readonly allocateStorage = (bytes: number): Storage => new HostStorage(bulkBuffer(bytes));

  get threads(): number {
    return this.ctx.threads;
  }

  /** Resizes this instance's pool only. */
  setThreads(n: number): void {
    checkPositiveInt('NativeBackend', 'threads', n);
    this.ctx.setThreads(n);
  }

  get isa(): Isa {
    return this.ctx.isa;
  }

  get compute(): ComputeMode {
    return this.ctx.compute;
  }

  matmul(x: Tensor, w: Tensor, bias: Tensor | null, out: Tensor): void {
    const K = x.dim(-1);
    const N = w.dim(0);
    const M = K === 0 ? out.numel / Math.max(N, 1) : x.numel / K;
    this.ctx.matmul(f32(x), w.data as F32 | Half | Uint8Array, bias ? floatData(bias) : null, f32(out), M, N, K, nativeFormat(w));
  }

  matmuls(x: Tensor, parts: readonly MatmulPart[]): void {
    const K = x.dim(-1);
    const M = K === 0 ? parts[0]!.out.numel / Math.max(parts[0]!.w.dim(0), 1) : x.numel / K;
    const list = parts.map((p): NativeMatmulPart => [p.w.data as F32 | Half | Uint8Array, p.bias ? floatData(p.bias) : null, f32(p.out), p.w.dim(0), nativeFormat(p.w)]);
    this.ctx.matmuls(f32(x), list, M, K);
  }

  /** Each layer's weight arrays as the native call takes them, and their formats. */
  private readonly layerArrays = new LayerWeightsMemo<{ arrays: (F32 | Half | Uint8Array | null)[]; formats: number[] }>();
  /** The native call's arguments and dims, reused: a decode step makes one call. */
  private layerArgs: (F32 | Half | Uint8Array | Int32Array | number | null)[] = [];
  private layerDims = new Int32Array(0);

  decoderLayers(layers: readonly DecoderLayerWeights[], step: DecoderLayersStep): void {
    const { x, keys, scratch: s } = step;
    const L = layers.length;
    const perLayer = 2 + DECODER_LAYER_WEIGHTS.length;
    if (this.layerDims.length !== 8 + 7 * L) this.layerDims = new Int32Array(8 + 7 * L);
    const d = this.layerDims;
    d[0] = x.dim(0);
    d[1] = keys[0]!.dim(0);
    d[2] = x.dim(1);
    d[3] = s.q.dim(1);
    d[4] = keys[0]!.dim(1);
    d[5] = keys[0]!.dim(2);
    d[6] = s.gate.dim(1);
    d[7] = L;
    const args = this.layerArgs;
    args.length = 11 + perLayer * L;
    args[0] = f32(x);
    args[1] = f32(s.h);
    args[2] = f32(s.q);
    args[3] = f32(s.attn);
    args[4] = f32(s.gate);
    args[5] = f32(s.up);
    args[6] = f32(step.cos);
    args[7] = f32(step.sin);
    args[8] = d;
    args[9] = step.eps;
    args[10] = step.scale;
    for (let l = 0; l < L; l++) {
      const w = layers[l]!;
      let layer = this.layerArrays.get(w);
      if (!layer) {
        const arrays = DECODER_LAYER_WEIGHTS.map((name) => (w[name] ? (w[name].data as F32 | Half | Uint8Array) : null));
        const formats = [w.qProj, w.kProj, w.vProj, w.oProj, w.gateProj, w.upProj, w.downProj].map((t) => nativeFormat(t) ?? 0);
        layer = { arrays, formats };
        this.layerArrays.set(w, layer);
      }
      for (let i = 0; i < 7; i++) d[8 + 7 * l + i] = layer.formats[i]!;
      const at = 11 + perLayer * l;
      args[at] = f32(keys[l]!);
      args[at + 1] = f32(step.values[l]!);
      for (let i = 0; i < layer.arrays.length; i++) args[at + 2 + i] = layer.arrays[i]!;
    }
    try {
      this.ctx.decoderLayers(...args);
    } finally {
      // The arrays stay referenced only while a call needs them.
      args.fill(null);
    }
  }

  add(a: Tensor, b: Tensor, out: Tensor): void {
    this.ctx.add(f32(a), f32(b), f32(out));
  }

  mul(a: Tensor, b: Tensor, out: Tensor): void {
    this.ctx.mul(f32(a), f32(b), f32(out));
  }

  rmsNorm(x: Tensor, weight: Tensor, eps: number, out: Tensor): void {
    this.ctx.rmsNorm(f32(x), floatData(weight), eps, f32(out));
  }

  layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps: number, out: Tensor): void {
    this.ctx.layerNorm(f32(x), floatData(weight), floatData(bias), eps, f32(out));
  }

  gelu(x: Tensor, out: Tensor, approximation: 'tanh' | 'erf'): void {
    this.ctx.gelu(f32(x), f32(out), approximation === 'erf');
  }

  mergeBlocks(x: Tensor, mergeSize: number, out: Tensor): void {
    this.ctx.mergeBlocks(f32(x), f32(out), x.dim(-1), mergeSize);
  }

  siluMul(gate: Tensor, up: Tensor, out: Tensor): void {
    this.ctx.siluMul(f32(gate), f32(up), f32(out));
  }

  softmax(x: Tensor, out: Tensor): void {
    this.ctx.softmax(f32(x), f32(out), x.dim(-1));
  }

  rope(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor): void {
    const [T, H, D] = x.shape as [number, number, number];
    this.ctx.rope(f32(x), f32(cos), f32(sin), f32(out), T, H, D);
  }

  attention(q: Tensor, k: Tensor, v: Tensor, out: Tensor, options: AttentionOptions): void {
    const [T, Hq, D] = q.shape as [number, number, number];
    const [S, Hkv] = k.shape as [number, number, number];
    this.ctx.attention(f32(q), f32(k), f32(v), f32(out), T, S, Hq, Hkv, D, options.scale, options.causal, options.queryOffset ?? 0);
  }

  embedding(table: Tensor, ids: Tensor, out: Tensor): void {
    this.ctx.embedding(table.data as F32 | Half | Uint8Array, ids.data as Int32Array, f32(out), table.dim(1), nativeFormat(table));
  }

  // -- gradients (native/grad_impl.h; exact f32 products, matmulBackward in the compute mode, as host-gradients.ts defines them) --

  override matmulBackward(dy: Tensor, x: Tensor, w: Tensor, dx: Tensor | null, dw: Tensor | null, dbias: Tensor | null): void {
    const [N, K] = w.shape as [number, number];
    const opt = (t: Tensor | null) => (t ? f32(t) : null);
    this.ctx.matmulBackward(f32(dy), f32(x), floatData(w), opt(dx), opt(dw), opt(dbias), K === 0 ? dy.numel / Math.max(N, 1) : x.numel / K, N, K);
  }

  override rmsNormBackward(dy: Tensor, x: Tensor, weight: Tensor, eps: number, dx: Tensor, dweight: Tensor | null): void {
    this.ctx.rmsNormBackward(f32(dy), f32(x), floatData(weight), eps, f32(dx), dweight ? f32(dweight) : null);
  }

  override layerNormBackward(dy: Tensor, x: Tensor, weight: Tensor, eps: number, dx: Tensor, dweight: Tensor | null, dbias: Tensor | null): void {
    this.ctx.layerNormBackward(f32(dy), f32(x), floatData(weight), eps, f32(dx), dweight ? f32(dweight) : null, dbias ? f32(dbias) : null);
  }

  override mergeBlocksBackward(dy: Tensor, mergeSize: number, dx: Tensor): void {
    this.ctx.mergeBlocksBackward(f32(dy), f32(dx), dy.dim(-1), mergeSize);
  }

  override geluBackward(dy: Tensor, x: Tensor, dx: Tensor, approximation: 'tanh' | 'erf'): void {
    this.ctx.geluBackward(f32(dy), f32(x), f32(dx), approximation === 'erf');
  }

  override siluMulBackward(dy: Tensor, gate: Tensor, up: Tensor, dgate: Tensor, dup: Tensor): void {
    this.ctx.siluMulBackward(f32(dy), f32(gate), f32(up), f32(dgate), f32(dup));
  }

  override ropeBackward(dy: Tensor, cos: Tensor, sin: Tensor, dx: Tensor): void {
    const [T, H, D] = dy.shape as [number, number, number];
    this.ctx.ropeBackward(f32(dy), f32(cos), f32(sin), f32(dx), T, H, D);
  }

  override attentionBackward(q: Tensor, k: Tensor, v: Tensor, dout: Tensor, dq: Tensor, dk: Tensor, dv: Tensor, options: AttentionOptions): void {
    const [T, Hq, D] = q.shape as [number, number, number];
    const [S, Hkv] = k.shape as [number, number, number];
    const offset = options.causal ? (options.queryOffset ?? S - T) : 0;
    this.ctx.attentionBackward(f32(q), f32(k), f32(v), f32(dout), f32(dq), f32(dk), f32(dv), T, S, Hq, Hkv, D, options.scale, options.causal, offset);
  }

  override embeddingBackward(dy: Tensor, ids: Tensor, dtable: Tensor): void {
    this.ctx.embeddingBackward(f32(dy), ids.data as Int32Array, f32(dtable), dtable.dim(1));
  }

  override crossEntropy(hidden: Tensor, head: Tensor, targets: Tensor, scale: number, losses: Tensor, dhidden: Tensor | null, dhead: Tensor | null): void {
    const [n, H] = hidden.shape as [number, number];
    this.ctx.crossEntropy(f32(hidden), floatData(head), targets.data as Int32Array, scale, f32(losses), dhidden ? f32(dhidden) : null, dhead ? f32(dhead) : null, n, H, head.dim(0));
  }

  override adamw(p: Tensor, g: Tensor, m: Tensor, v: Tensor, step: number, hyper: AdamWHyper): void {
    const s = adamwScalars(step, hyper);
    this.ctx.adamw(f32(p), f32(g), f32(m), f32(v), s.decay, s.w1, s.b2, s.w2, s.stepSize, s.bc2Sqrt, s.eps);
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
  constructor(options: NativeBackendOptions = {}) {
    super(new NativeKernels(options));
  }

  /** The kernel tier this backend runs. */
  get isa(): Isa {
    return (this.kernels as NativeKernels).isa;
  }

  override get threads(): number {
    return this.kernels.threads;
  }

  /** Resizes this backend's pool only. */
  override set threads(n: number) {
    (this.kernels as NativeKernels).setThreads(n);
  }
}
