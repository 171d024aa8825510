import { QUANT_FORMATS, type QuantFormat } from '../src/tensor/dtype.js';
import { type ComputeMode, type Isa, NativeBackend, nativeInfo, type PeakKind, peakFlops, quantizeNative, readBandwidth } from '../src/tensor/native.js';
import { ReferenceBackend } from '../src/tensor/reference.js';
import { Tensor } from '../src/tensor/tensor.js';
import { percent, round, timeMedian } from './stats.js';

/**
 * Seconds of the fastest of `runs` runs after one warm-up. The kernels are short and the machines shared: the fastest
 * run is the one no neighbour interrupted, the same reading as the limits (each thread's best 10 ms window).
 */
function timeBest(fn: () => void, runs: number): number {
  fn();
  let best = Infinity;
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    fn();
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  return best;
}

export interface MachineLimits {
  cpu: ReturnType<typeof nativeInfo>;
  /** Peak of each instruction kind this CPU has (GFLOP/s; GOP/s for int8), per thread count. */
  peaks: Partial<Record<PeakKind, Record<string, number>>>;
  readGBs: Record<string, number>;
}

interface Figure {
  isa: Isa;
  threads: number;
}

export interface KernelFigures {
  gemm: Array<Figure & { compute: ComputeMode; gflops: number; limit: PeakKind; percentOfPeak: number }>;
  /** The same GEMM with block-quantized weights (bf16 compute: int8 activations × codes); GOP/s. */
  quantGemm: Array<Figure & { format: QuantFormat; gops: number; limit: PeakKind | null; percentOfPeak: number | null }>;
  gemv: Array<Figure & { compute: ComputeMode; GBs: number; percentOfBandwidth: number }>;
  attention: Array<Figure & { case: string; unit: 'GFLOP/s' | 'GB/s'; rate: number; limit: PeakKind | 'read'; percentOfLimit: number }>;
  peer: { name: string; gemmGflops: number; gemvGBs: number };
}

/**
 * The instruction kind that bounds a matmul on this tier in this mode (bf16 pairs only where the tier multiplies
 * them). No bf16 loop is measured on arm64 yet, so neon's bf16 mode on a CPU with BF16 (BFMMLA) is set against the
 * f32 FMLA peak, which it can pass.
 */
export function limitOf(isa: Isa, compute: ComputeMode): PeakKind {
  if (isa === 'avx512bf16' && compute === 'bf16') return 'bf16-zmm';
  if (isa === 'avx512' || isa === 'avx512bf16') return 'fp32-zmm';
  if (isa === 'avx2' || isa === 'avxvnni') return 'fp32-ymm';
  if (isa === 'neon') return 'fp32-neon';
  return 'fp32-scalar';
}

/**
 * The integer dot instruction a tier's quantized GEMM issues, where this CPU has a measured loop of it: `vpdpbusd` on
 * zmm on the avx512bf16 tier (built with AVX512-VNNI), on ymm on the avxvnni tier. The other tiers' dots
 * (`vpmaddubsw` + `vpmaddwd`, NEON `sdot`) have no measured peak yet: null.
 */
export function quantLimitOf(isa: Isa, peaks: MachineLimits['peaks']): PeakKind | null {
  if (isa === 'avx512bf16' && peaks['int8-zmm']) return 'int8-zmm';
  if (isa === 'avxvnni' && peaks['int8-ymm']) return 'int8-ymm';
  return null;
}

function randomBf16(numel: number, seed: number): Tensor<'bf16'> {
  const t = Tensor.empty('bf16', [numel]);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < numel; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    // Exponent 0x3c..0x3f: magnitudes around 0.01-1, random sign and mantissa.
    t.data[i] = ((x >>> 16) & 0x80ff) | (0x3c00 + ((x & 0x3) << 7));
  }
  return t;
}

function randomF32(shape: number[], seed: number): Tensor<'f32'> {
  const t = Tensor.empty('f32', shape);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < t.numel; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    t.data[i] = x / 2 ** 32 - 0.5;
  }
  return t;
}

/** Every instruction kind's peak and the read bandwidth, for each thread count: best of three short runs. */
export function measureLimits(threadCounts: number[]): MachineLimits {
  const cpu = nativeInfo();
  const peaks: MachineLimits['peaks'] = {};
  const readGBs: Record<string, number> = {};
  for (const kind of cpu.peakKinds) {
    const perThreads: Record<string, number> = {};
    for (const n of threadCounts) perThreads[n] = round(Math.max(peakFlops(n, 0.4, kind), peakFlops(n, 0.4, kind), peakFlops(n, 0.4, kind)));
    peaks[kind] = perThreads;
  }
  for (const n of threadCounts) readGBs[n] = round(readBandwidth(n, 256 * 2 ** 20, 15));
  return { cpu, peaks, readGBs };
}

/**
 * On every tier (both compute modes for the matmuls) and thread count: GEMM 512×1536×8960 (the 2B model's gate
 * projection over a 512-token chunk) with bf16 weights, and in bf16 mode with int8, int4 and int4m weights; the decode
 * GEMV 1×1536×8960 over enough distinct bf16 matrices (> 256 MiB) that every call reads its weights from DRAM;
 * attention (f32 in both modes, so once per tier) for a causal 1024-token prefill, a 1024-patch vision image and one
 * decode step over a 32k-token cache.
 */
export function measureKernels(threadCounts: number[], limits: MachineLimits): KernelFigures {
  const [M, K, N] = [512, 1536, 8960];
  const x = randomF32([M, K], 1);
  const w = randomBf16(N * K, 2).reshape([N, K]);
  const out = Tensor.empty('f32', [M, N]);
  const matrices = Array.from({ length: 12 }, (_, i) => randomBf16(N * K, 10 + i).reshape([N, K]));
  const x1 = randomF32([1, K], 3);
  const y1 = Tensor.empty('f32', [1, N]);
  const dense = randomF32([N, K], 8);
  const quantized = QUANT_FORMATS.map((format) => ({ format, w: new Tensor(format, [N, K], quantizeNative(format, dense)) }));
  const figures: KernelFigures = { gemm: [], quantGemm: [], gemv: [], attention: [], peer: { name: '', gemmGflops: 0, gemvGBs: 0 } };
  const attention = attentionCases();
  for (const isa of [...limits.cpu.tiers].reverse()) {
    // The portable tier is an order of magnitude slower: fewer runs keep the bench short.
    const runs = isa === 'scalar' ? 1 : 7;
    for (const n of threadCounts) {
      for (const compute of ['exact', 'bf16'] as const) {
        const native = new NativeBackend({ isa, compute, threads: n });
        const limit = limitOf(isa, compute);
        const s = timeBest(() => native.matmul(x, w, null, out), runs);
        const gflops = (2 * M * N * K) / s / 1e9;
        figures.gemm.push({ isa, compute, threads: n, gflops: round(gflops), limit, percentOfPeak: percent(gflops, limits.peaks[limit]![n]!) });

        let next = 0;
        const perCall = timeBest(() => {
          for (let r = 0; r < matrices.length; r++) native.matmul(x1, matrices[next++ % matrices.length]!, null, y1);
        }, 7) / matrices.length;
        const GBs = (N * K * 2) / perCall / 1e9;
        figures.gemv.push({ isa, compute, threads: n, GBs: round(GBs), percentOfBandwidth: percent(GBs, limits.readGBs[n]!) });
      }
      const integer = new NativeBackend({ isa, compute: 'bf16', threads: n });
      const dotLimit = quantLimitOf(isa, limits.peaks);
      for (const { format, w: wq } of quantized) {
        const gops = (2 * M * N * K) / timeBest(() => integer.matmul(x, wq, null, out), runs) / 1e9;
        figures.quantGemm.push({ isa, format, threads: n, gops: round(gops), limit: dotLimit, percentOfPeak: dotLimit ? percent(gops, limits.peaks[dotLimit]![n]!) : null });
      }
      const native = new NativeBackend({ isa, compute: 'exact', threads: n });
      const limit = limitOf(isa, 'exact');
      for (const c of attention) {
        const s = timeBest(() => native.attention(c.q, c.k, c.v, c.out, { scale: 0.1, causal: c.causal }), isa === 'scalar' ? 1 : 5);
        if (c.flops) {
          const gflops = c.flops / s / 1e9;
          figures.attention.push({ isa, threads: n, case: c.name, unit: 'GFLOP/s', rate: round(gflops), limit, percentOfLimit: percent(gflops, limits.peaks[limit]![n]!) });
        } else {
          const GBs = c.bytes / s / 1e9;
          figures.attention.push({ isa, threads: n, case: c.name, unit: 'GB/s', rate: round(GBs), limit: 'read', percentOfLimit: percent(GBs, limits.readGBs[n]!) });
        }
      }
    }
  }

  // Peer in the same run: the plain TypeScript reference kernels (what the project would be without its addon).
  const reference = new ReferenceBackend();
  const mSmall = 8;
  const xs = randomF32([mSmall, K], 4);
  const os = Tensor.empty('f32', [mSmall, N]);
  const sGemm = timeMedian(() => reference.matmul(xs, w, null, os), 2, 0);
  const sGemv = timeMedian(() => reference.matmul(x1, matrices[0]!, null, y1), 3, 0);
  figures.peer = {
    name: `TypeScript reference backend, 1 thread (GEMM measured at M=${mSmall})`,
    gemmGflops: round((2 * mSmall * N * K) / sGemm / 1e9, 2),
    gemvGBs: round((N * K * 2) / sGemv / 1e9, 2),
  };
  return figures;
}

/** Attention shapes of the 2B model: flops for the compute-bound ones, bytes of K and V read for decode. */
function attentionCases() {
  const make = (name: string, T: number, S: number, Hq: number, Hkv: number, D: number, causal: boolean) => {
    const q = randomF32([T, Hq, D], 5), k = randomF32([S, Hkv, D], 6), v = randomF32([S, Hkv, D], 7);
    // Two products (QKᵀ and PV) of 2 flops per multiply-add over the (query, key) pairs a causal mask leaves.
    const pairs = causal ? T * S - (T * (T - 1)) / 2 : T * S;
    const flops = T > 1 ? 4 * pairs * Hq * D : 0;
    return { name, q, k, v, out: Tensor.empty('f32', [T, Hq, D]), causal, flops, bytes: 2 * S * Hkv * D * 4 };
  };
  return [
    make('prefill 1024 causal, 12/2 heads of 128', 1024, 1024, 12, 2, 128, true),
    make('vision 1024 patches, 16 heads of 72', 1024, 1024, 16, 16, 72, false),
    make('decode over 32768 keys, 12/2 heads of 128', 1, 32768, 12, 2, 128, true),
  ];
}
