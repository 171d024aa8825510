import { NativeBackend, nativeInfo, peakFlops, readBandwidth } from '../src/tensor/native.js';
import { ReferenceBackend } from '../src/tensor/reference.js';
import { Tensor } from '../src/tensor/tensor.js';
import { percent, round, timeMedian } from './stats.js';

export interface MachineLimits {
  cpu: ReturnType<typeof nativeInfo>;
  peakGflops: Record<string, number>;
  readGBs: Record<string, number>;
}

export interface KernelFigures {
  gemm: Record<string, { gflops: number; percentOfPeak: number }>;
  gemv: Record<string, { GBs: number; percentOfBandwidth: number }>;
  peer: { name: string; gemmGflops: number; gemvGBs: number };
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

export function measureLimits(threadCounts: number[]): MachineLimits {
  const peakGflops: Record<string, number> = {};
  const readGBs: Record<string, number> = {};
  for (const n of threadCounts) {
    peakGflops[n] = round(Math.max(peakFlops(n, 0.4), peakFlops(n, 0.4), peakFlops(n, 0.4)));
    readGBs[n] = round(readBandwidth(n, 256 * 2 ** 20, 5));
  }
  return { cpu: nativeInfo(), peakGflops, readGBs };
}

/**
 * GEMM 512×1536×8960 (the 2B model's gate projection over a 512-token chunk) with bf16 weights, and the decode GEMV
 * 1×1536×8960 over enough distinct bf16 matrices (> 256 MiB) that every call reads its weights from DRAM.
 */
export function measureKernels(threadCounts: number[], limits: MachineLimits): KernelFigures {
  let native = new NativeBackend();
  const [M, K, N] = [512, 1536, 8960];
  const x = randomF32([M, K], 1);
  const w = randomBf16(N * K, 2).reshape([N, K]);
  const out = Tensor.empty('f32', [M, N]);
  const gemm: KernelFigures['gemm'] = {};
  const gemv: KernelFigures['gemv'] = {};
  const matrices = Array.from({ length: 12 }, (_, i) => randomBf16(N * K, 10 + i).reshape([N, K]));
  const x1 = randomF32([1, K], 3);
  const y1 = Tensor.empty('f32', [1, N]);
  for (const n of threadCounts) {
    native = new NativeBackend({ threads: n });
    const s = timeMedian(() => native.matmul(x, w, null, out), 5);
    const gflops = (2 * M * N * K) / s / 1e9;
    gemm[n] = { gflops: round(gflops), percentOfPeak: percent(gflops, limits.peakGflops[n]!) };

    let next = 0;
    const perCall = timeMedian(() => {
      for (let r = 0; r < matrices.length; r++) native.matmul(x1, matrices[next++ % matrices.length]!, null, y1);
    }, 7) / matrices.length;
    const GBs = (N * K * 2) / perCall / 1e9;
    gemv[n] = { GBs: round(GBs), percentOfBandwidth: percent(GBs, limits.readGBs[n]!) };
  }

  // Peer in the same run: the plain TypeScript reference kernels (what the project would be without its addon).
  const reference = new ReferenceBackend();
  const mSmall = 8;
  const xs = randomF32([mSmall, K], 4);
  const os = Tensor.empty('f32', [mSmall, N]);
  const sGemm = timeMedian(() => reference.matmul(xs, w, null, os), 2, 0);
  const sGemv = timeMedian(() => reference.matmul(x1, matrices[0]!, null, y1), 3, 0);
  const peer = {
    name: `TypeScript reference backend, 1 thread (GEMM measured at M=${mSmall})`,
    gemmGflops: round((2 * mSmall * N * K) / sGemm / 1e9, 2),
    gemvGBs: round((N * K * 2) / sGemv / 1e9, 2),
  };
  return { gemm, gemv, peer };
}
