// The cases the native kernel harness (native/harness/harness.cc) runs: seeded random inputs of odd sizes, the
// ReferenceBackend's outputs and the tolerances of native-backend.test.ts, in the binary layout the harness reads.
// The cases of native-backend.test.ts (every matmul in both compute modes, bf16 against the reference on
// bf16-rounded x and w, and the rounding edges: ties, ±Inf, NaN), the quantized weights' matmul of
// quant-kernels.test.ts (every format, both modes) and a few edges of the arm64 kernels, with the largest attention
// shapes scaled down for qemu-user; left out is only the K/V packing in several rounds of heads (>= 268M
// multiply-adds, and driver code shared by every ISA).
import { writeFileSync } from 'node:fs';

import { Rng } from '../src/engine/rng.js';
import { bf16ToF32, f32ToBf16, isQuantized, QUANT_FORMATS, type QuantFormat } from '../src/tensor/dtype.js';
import { adamwScalars, hostGradients } from '../src/tensor/host-gradients.js';
import { quantize } from '../src/tensor/quant.js';
import { ReferenceBackend } from '../src/tensor/reference.js';
import { Tensor } from '../src/tensor/tensor.js';

interface HarnessCase {
  name: string;
  op: string;
  ints: number[];
  /** Op parameters, then rtol and atol. */
  reals: number[];
  /** Inputs, then the expected output (f32). */
  arrays: Tensor[];
}

const reference = new ReferenceBackend();
const fastReference = new ReferenceBackend({ compute: 'bf16' });
let seed = 1;

function randomF32(shape: number[], scale = 1, offset = 0): Tensor<'f32'> {
  const r = new Rng(seed++ * 104729);
  const t = Tensor.empty('f32', shape);
  for (let i = 0; i < t.numel; i++) t.data[i] = (r.next() * 2 - 1) * scale + offset;
  return t;
}

function toBf16(t: Tensor<'f32'>): Tensor<'bf16'> {
  const b = Tensor.empty('bf16', t.shape);
  for (let i = 0; i < t.numel; i++) b.data[i] = f32ToBf16(t.data[i]!);
  return b;
}

function randomFloat(dtype: 'f32' | 'bf16', shape: number[], scale = 1): Tensor {
  const f = randomF32(shape, scale);
  return dtype === 'f32' ? f : toBf16(f);
}

/** x as the bf16 compute mode sees it: every element rounded to bf16 (nearest even) and widened back. */
function roundedToBf16(x: Tensor<'f32'>): Tensor<'f32'> {
  return Tensor.f32(x.shape, x.data.map((v) => bf16ToF32(f32ToBf16(v))));
}

/** w as bf16 compute multiplies it: itself when stored so, else each element rounded to nearest even. */
function asBf16(w: Tensor): Tensor {
  return w.dtype === 'bf16' ? w : toBf16(w as Tensor<'f32'>);
}

function out(shape: readonly number[], fill: (o: Tensor<'f32'>) => void): Tensor<'f32'> {
  const o = Tensor.empty('f32', shape);
  fill(o);
  return o;
}

type Mode = 'exact' | 'bf16';

/** One matmul as a case per compute mode; bf16: the reference on bf16-rounded operands (native-backend.test.ts). */
function matmulCases(x: Tensor<'f32'>, w: Tensor, bias: Tensor | null, what: string, tolerance?: [number, number]): HarnessCase[] {
  const [M, K] = [x.dim(0), x.dim(1)];
  const N = w.dim(0);
  return (['exact', 'bf16'] as Mode[]).map((mode) => ({
    name: `${what} ${mode}`,
    op: 'matmul',
    ints: [M, N, K, bias ? 1 : 0, mode === 'bf16' ? 1 : 0],
    reals: tolerance ?? [1e-5, 1e-6 * K],
    arrays: [x, w, ...(bias ? [bias] : []), out([M, N], (o) => (mode === 'bf16' ? reference.matmul(roundedToBf16(x), asBf16(w), bias, o) : reference.matmul(x, w, bias, o)))],
  }));
}

function matmulCase(M: number, N: number, K: number, wType: 'f32' | 'bf16', biasType: 'none' | 'f32' | 'bf16'): HarnessCase[] {
  const x = randomF32([M, K]);
  const w = randomFloat(wType, [N, K]);
  const bias = biasType === 'none' ? null : randomFloat(biasType, [N]);
  return matmulCases(x, w, bias, `M=${M} N=${N} K=${K} w=${wType} bias=${biasType}`);
}

/**
 * A matmul by a quantized weight (the native encoder's bytes are the TS one's, test/quant-kernels.test.ts) in both
 * modes: exact against the dequantized weight, bf16 (the fast mode) against the reference's int8-activation product.
 * `extreme`: every weight and activation at ± its block's largest magnitude, so that every code is an extreme one and
 * |q| = 127, and the first row of x has the signs of the first weight row, where a kernel whose int16 partial sums
 * overflow is far off.
 */
function quantMatmulCases(M: number, N: number, K: number, format: QuantFormat, biasType: 'none' | 'f32' | 'bf16', extreme = false): HarnessCase[] {
  const r = new Rng(seed++ * 7919);
  const sign = () => (r.next() < 0.5 ? -1 : 1);
  const x = extreme ? Tensor.f32([M, K], Array.from({ length: M * K }, sign)) : randomF32([M, K]);
  const wValues = extreme ? Float32Array.from({ length: N * K }, () => sign() * 0.5) : randomF32([N, K], 0.5).data;
  if (extreme) for (let k = 0; k < K; k++) x.data[k] = Math.sign(wValues[k]!); // row 0 of x along row 0 of w: no cancellation
  const w = new Tensor(format, [N, K], quantize(format, (i) => wValues[i]!, N, K));
  const bias = biasType === 'none' ? null : randomFloat(biasType, [N]);
  return (['exact', 'bf16'] as Mode[]).map((mode) => ({
    name: `M=${M} N=${N} K=${K} w=${format}${extreme ? ' (extreme codes)' : ''} bias=${biasType} ${mode}`,
    op: 'matmul',
    ints: [M, N, K, bias ? 1 : 0, mode === 'bf16' ? 1 : 0],
    reals: [1e-5, 1e-6 * K],
    arrays: [x, w, ...(bias ? [bias] : []), out([M, N], (o) => (mode === 'bf16' ? fastReference : reference).matmul(x, w, bias, o))],
  }));
}

// (f32 bits, the bf16 bits they round to): ties to even, past the largest bf16 to ±Inf, NaN stays NaN (as in
// native-backend.test.ts).
const ROUNDINGS: Array<[number, number]> = [
  [0x3f800000, 0x3f80], [0x3f808000, 0x3f80], [0x3f818000, 0x3f82], [0x3f808001, 0x3f81], [0x3f807fff, 0x3f80],
  [0xbf818000, 0xbf82], [0x40490fdb, 0x4049], [0x3eaaaaab, 0x3eab], [0x00800000, 0x0080], [0x7f7f7fff, 0x7f7f],
  [0x7f7fffff, 0x7f80], [0xff7fffff, 0xff80], [0x7f800000, 0x7f80], [0xff800000, 0xff80], [0x7fc00000, 0x7fc0],
  [0x7f800001, 0x7fc0],
];

/**
 * The rounding of activations and of f32 weights, through the GEMV (3 rows) and the packed GEMM (130 rows): each
 * output is one input times 1, the other k zero on both sides (K = 8: whole vectors of the pack and dot loops, and
 * no Inf·0). Exact, tolerance 0.
 */
function roundingCases(): HarnessCase[] {
  const values = new Float32Array(new Uint32Array(ROUNDINGS.map(([i]) => i)).buffer);
  const K = 8;
  const unitRow = (n: number): Tensor<'f32'> => Tensor.f32([n, K], Array.from({ length: n }, () => [1, 0, 0, 0, 0, 0, 0, 0]).flat());
  const valueRows = (copies: number): Tensor<'f32'> =>
    Tensor.f32([copies * values.length, K], Array.from({ length: copies }, () => Array.from(values, (v) => [v, 0, 0, 0, 0, 0, 0, 0]).flat()).flat());
  const cases: HarnessCase[] = [];
  for (const rows of [3, 130]) {
    for (const wType of ['f32', 'bf16'] as const) {
      const one = wType === 'f32' ? unitRow(1) : toBf16(unitRow(1));
      cases.push(...matmulCases(valueRows(rows), one, null, `rounding of x, ${rows * values.length} rows, w=${wType}`, [0, 0]));
    }
    cases.push(...matmulCases(unitRow(rows), valueRows(1), null, `rounding of f32 w, ${rows} rows`, [0, 0]));
  }
  return cases;
}

function attentionCase(T: number, S: number, Hq: number, Hkv: number, D: number, causal: boolean, queryOffset?: number): HarnessCase {
  const q = randomF32([T, Hq, D], 3);
  const k = randomF32([S, Hkv, D]);
  const v = randomF32([S, Hkv, D]);
  const scale = 1 / Math.sqrt(D);
  const expected = out([T, Hq, D], (o) => reference.attention(q, k, v, o, { scale, causal, queryOffset }));
  const offset = queryOffset ?? (causal ? S - T : 0);  // the backend's default for a causal chunk
  return {
    name: `T=${T} S=${S} Hq=${Hq} Hkv=${Hkv} D=${D} ${causal ? 'causal' : 'full'} offset=${offset}`,
    op: 'attention',
    ints: [T, S, Hq, Hkv, D, causal ? 1 : 0, offset],
    reals: [scale, 1e-5, 2e-6],
    arrays: [q, k, v, expected],
  };
}

// The backward kernels against their definition (hostGradients), one case per output, with the tolerances of
// native-gradients.test.ts made normwise (atol only): c·u·max|output| for the activation gradients, and for a
// parameter gradient c·u·max|increment| plus two roundings of its previous contents (an input array).
const U = 2 ** -24;
const maxAbs = (t: Tensor) => (t.data as Float32Array).reduce((m, v) => Math.max(m, Math.abs(v)), 0);
const minus = (a: Tensor<'f32'>, b: Tensor<'f32'>) => Tensor.f32(a.shape, a.data.map((v, i) => v - b.data[i]!));
const copyF32 = (t: Tensor<'f32'>) => Tensor.f32(t.shape, t.data);

function gradientCases(): HarnessCase[] {
  const cases: HarnessCase[] = [];
  const grad = (op: string, name: string, ints: number[], params: number[], atol: number, arrays: Tensor[]) =>
    cases.push({ name, op: `grad.${op}`, ints, reals: [...params, 0, atol + 1e-30], arrays });
  for (const [M, N, K, wType] of [[67, 45, 53, 'f32'], [300, 33, 41, 'bf16'], [1, 37, 19, 'bf16']] as const) {
    const dy = randomF32([M, N]), x = randomF32([M, K]), w = randomFloat(wType, [N, K]);
    const dw0 = randomF32([N, K]), db0 = randomF32([N]);
    const dx = Tensor.empty('f32', [M, K]), dw = copyF32(dw0), db = copyF32(db0);
    hostGradients.matmulBackward(dy, x, w, dx, dw, db);
    // Σ|terms| ≤ n·max|dy| (x and w lie in [−1, 1]), and an f32 sum of n terms is within (n + 2)·u·Σ|terms|.
    const name = `[${M},${N},${K}] w=${wType}`;
    grad('matmulBackward.dx', name, [M, N, K], [], (N + 2) * U * N * maxAbs(dy), [dy, x, w, dx]);
    grad('matmulBackward.dw', name, [M, N, K], [], (M + 2) * U * M * maxAbs(dy) + 2 * U * maxAbs(dw0), [dy, x, w, dw0, dw]);
    grad('matmulBackward.dbias', name, [M, N, K], [], (M + 2) * U * M * maxAbs(dy) + 2 * U * maxAbs(db0), [dy, x, w, db0, db]);
  }
  for (const [T, S, Hq, Hkv, D, causal, offset] of [[37, 37, 2, 1, 24, 1, 0], [13, 140, 6, 2, 20, 1, 10], [20, 70, 4, 4, 16, 0, 0]] as const) {
    const q = randomF32([T, Hq, D]), k = randomF32([S, Hkv, D]), v = randomF32([S, Hkv, D]), dout = randomF32([T, Hq, D]);
    const outs = [Tensor.empty('f32', q.shape), Tensor.empty('f32', k.shape), Tensor.empty('f32', v.shape)] as const;
    hostGradients.attentionBackward(q, k, v, dout, ...outs, { scale: 1 / Math.sqrt(D), causal: causal === 1, queryOffset: offset });
    ['dq', 'dk', 'dv'].forEach((o, i) =>
      grad(`attentionBackward.${o}`, `T=${T} S=${S} Hq=${Hq} Hkv=${Hkv} D=${D} causal=${causal} offset=${offset}`, [T, S, Hq, Hkv, D, causal, offset], [1 / Math.sqrt(D)], 4 * (S + D) * U * maxAbs(outs[i]!), [q, k, v, dout, outs[i]!]),
    );
  }
  for (const [n, H, V, dtype] of [[70, 24, 4200, 'f32'], [3, 16, 300, 'bf16']] as const) {
    const hidden = randomF32([n, H], 2), head = randomFloat(dtype, [V, H]), head0 = randomF32([V, H]);
    const r = new Rng(seed++);
    const targets = Tensor.i32([n], Array.from({ length: n }, () => Math.floor(r.next() * V)));
    const losses = Tensor.empty('f32', [n]), dh = Tensor.empty('f32', [n, H]), dw = copyF32(head0);
    hostGradients.crossEntropy(hidden, head, targets, 0.37, losses, dh, dw);
    const name = `n=${n} H=${H} V=${V} head=${dtype}`;
    grad('crossEntropy.losses', name, [n, H, V], [0.37], 4 * (4096 / 16 + H) * U * maxAbs(losses), [hidden, head, targets, head0, losses]);
    grad('crossEntropy.dhidden', name, [n, H, V], [0.37], (V + n) * U * maxAbs(dh), [hidden, head, targets, head0, dh]);
    grad('crossEntropy.dhead', name, [n, H, V], [0.37], (V + n) * U * maxAbs(minus(dw, head0)) + 2 * U * maxAbs(head0), [hidden, head, targets, head0, dw]);
  }
  for (const [rows, cols, wType] of [[1, 45, 'bf16'], [67, 300, 'f32']] as const) {
    const x = randomF32([rows, cols], 3), dy = randomF32([rows, cols]), w = randomFloat(wType, [cols]), p0 = randomF32([cols]);
    const rdx = Tensor.empty('f32', x.shape), rdw = copyF32(p0);
    hostGradients.rmsNormBackward(dy, x, w, 1e-6, rdx, rdw);
    const ldx = Tensor.empty('f32', x.shape), ldw = copyF32(p0), ldb = copyF32(p0);
    hostGradients.layerNormBackward(dy, x, w, 1e-6, ldx, ldw, ldb);
    const name = `[${rows},${cols}] w=${wType}`;
    const param = (t: Tensor<'f32'>) => 16 * U * maxAbs(minus(t, p0)) + 2 * U * maxAbs(p0);
    grad('rmsNormBackward.dx', name, [rows, cols], [1e-6], 16 * U * maxAbs(rdx), [dy, x, w, p0, rdx]);
    grad('rmsNormBackward.dweight', name, [rows, cols], [1e-6], param(rdw), [dy, x, w, p0, rdw]);
    grad('layerNormBackward.dx', name, [rows, cols], [1e-6], 16 * U * maxAbs(ldx), [dy, x, w, p0, ldx]);
    grad('layerNormBackward.dweight', name, [rows, cols], [1e-6], param(ldw), [dy, x, w, p0, ldw]);
    grad('layerNormBackward.dbias', name, [rows, cols], [1e-6], param(ldb), [dy, x, w, p0, ldb]);
  }
  const n = 3 * 256 + 77;
  const x = randomF32([n], 4), up = randomF32([n], 2), dy = randomF32([n]);
  for (const approximation of ['tanh', 'erf'] as const) {
    const dx = Tensor.empty('f32', [n]);
    hostGradients.geluBackward(dy, x, dx, approximation);
    grad('geluBackward', `${approximation} n=${n}`, [n, approximation === 'erf' ? 1 : 0], [], 16 * U * maxAbs(dx), [dy, x, dx]);
  }
  const dg = Tensor.empty('f32', [n]), du = Tensor.empty('f32', [n]);
  hostGradients.siluMulBackward(dy, x, up, dg, du);
  grad('siluMulBackward.dgate', `n=${n}`, [n], [], 16 * U * maxAbs(dg), [dy, x, up, dg]);
  grad('siluMulBackward.dup', `n=${n}`, [n], [], 16 * U * maxAbs(du), [dy, x, up, du]);
  {
    const [T, H, D] = [5, 3, 18];
    const g = randomF32([T, H, D]), cos = randomF32([T, D / 2]), sin = randomF32([T, D / 2]), dx = Tensor.empty('f32', g.shape);
    hostGradients.ropeBackward(g, cos, sin, dx);
    grad('ropeBackward', `[${T},${H},${D}]`, [T, H, D], [], 4 * U * maxAbs(dx), [g, cos, sin, dx]);
  }
  for (const m of [1, 2]) {
    const g = randomF32([7, 29]), dx = Tensor.empty('f32', [7 * m * m, 29]);
    hostGradients.mergeBlocksBackward(g, m, dx);
    grad('mergeBlocksBackward', `m=${m}`, [7, 29, m], [], 0, [g, dx]);
  }
  {
    const [T, V, D] = [40, 9, 70];
    const r = new Rng(seed++);
    const ids = Tensor.i32([T], Array.from({ length: T }, () => Math.floor(r.next() * V)));
    const g = randomF32([T, D]), table0 = randomF32([V, D]), table = copyF32(table0);
    hostGradients.embeddingBackward(g, ids, table);
    grad('embeddingBackward', `T=${T} V=${V} D=${D}`, [T, D], [], 0, [g, ids, table0, table]);
  }
  // AdamW's second step (moments already non-zero), exact: tolerance 0, the scalars as the addon receives them.
  for (const [n, weightDecay] of [[7, 0], [1003, 0.1], [70001, 0.1]] as const) {
    const hyper = { lr: 3e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay };
    const p0 = randomF32([n]), m0 = Tensor.f32([n]), v0 = Tensor.f32([n]);
    hostGradients.adamw(p0, randomF32([n], 1e-3), m0, v0, 1, hyper);
    const g = randomF32([n], 1e-2);
    const p = copyF32(p0), m = copyF32(m0), v = copyF32(v0);
    hostGradients.adamw(p, g, m, v, 2, hyper);
    const s = adamwScalars(2, hyper);
    const scalars = [s.decay, s.w1, s.b2, s.w2, s.stepSize, s.bc2Sqrt, s.eps];
    for (const [output, result] of [['p', p], ['m', m], ['v', v]] as const) {
      cases.push({ name: `n=${n} weight decay ${weightDecay}`, op: `grad.adamw.${output}`, ints: [n], reals: [...scalars, 0, 0], arrays: [p0, g, m0, v0, result] });
    }
  }
  return cases;
}

export function harnessCases(): HarnessCase[] {
  seed = 1;
  const cases: HarnessCase[] = [];
  const biases = ['none', 'f32', 'bf16'] as const;
  let i = 0;
  // GEMV (M <= 63 on NEON, <= 7 for its BFDOT, <= 4 scalar) and GEMM, tiles cut everywhere.
  for (const M of [1, 2, 5, 7, 13, 64])
    for (const N of [1, 3, 17, 31, 100])
      for (const K of [1, 7, 9, 33, 130])
        for (const wType of ['f32', 'bf16'] as const) cases.push(...matmulCase(M, N, K, wType, biases[i++ % 3]!));
  cases.push(
    ...matmulCase(67, 129, 300, 'bf16', 'f32'),
    ...matmulCase(67, 300, 129, 'f32', 'none'),
    ...matmulCase(151, 70, 601, 'bf16', 'bf16'), // K blocks of 256 (512 for bf16 quads), M blocks of 144
    ...matmulCase(200, 45, 1031, 'bf16', 'none'),
    ...matmulCase(6, 2100, 40, 'bf16', 'f32'), // many N tasks
    ...matmulCase(31, 75, 97, 'bf16', 'bf16'),
    ...matmulCase(3, 257, 1000, 'bf16', 'none'),
    ...matmulCase(1, 513, 1536, 'f32', 'f32'), // decode-shaped GEMV
    ...matmulCase(63, 37, 100, 'f32', 'bf16'), // the largest NEON GEMV: 15 groups of 4 rows and one of 3
    ...matmulCase(64, 40, 515, 'bf16', 'none'),
    // Either side of the BFDOT GEMV's cut-off, K past one bf16 block and not a multiple of 4 or 8.
    ...matmulCase(7, 70, 603, 'bf16', 'f32'),
    ...matmulCase(8, 70, 603, 'f32', 'bf16'),
    ...matmulCase(9, 23, 27, 'bf16', 'none'),
  );
  cases.push(...roundingCases());
  cases.push(...gradientCases());
  // Quantized weights: a short last row group (N % 4), K in whole chunks of 128 and not, M across the 4-row tiles
  // and the 64-row blocks of x.
  for (const format of QUANT_FORMATS) {
    cases.push(
      ...quantMatmulCases(1, 13, 160, format, 'f32'),
      ...quantMatmulCases(3, 8, 512, format, 'none'),
      ...quantMatmulCases(5, 17, 96, format, 'bf16'),
      ...quantMatmulCases(70, 12, 256, format, 'f32'),
      ...quantMatmulCases(2, 4, 32, format, 'none'),
      ...quantMatmulCases(7, 9, 1056, format, 'none'),
      ...quantMatmulCases(5, 8, 256, format, 'f32', true),
    );
  }

  for (const shape of [[1], [5, 33], [4, 3, 1000]]) {
    const a = randomF32(shape);
    for (const b of [randomF32(shape), randomF32([shape[shape.length - 1]!])]) {
      for (const op of ['add', 'mul'] as const) {
        const expected = out(shape, (o) => reference[op](a, b, o));
        cases.push({ name: `[${shape}] b=[${b.shape}]`, op, ints: [a.numel, b.numel], reals: [0, 0], arrays: [a, b, expected] });
      }
    }
  }
  for (const [rows, cols] of [[1, 1], [7, 130], [3, 1536], [300, 40]] as const) {
    for (const wType of ['f32', 'bf16'] as const) {
      const x = randomF32([rows, cols], 2);
      const w = randomFloat(wType, [cols]);
      const expected = out([rows, cols], (o) => reference.rmsNorm(x, w, 1e-6, o));
      cases.push({ name: `[${rows},${cols}] w=${wType}`, op: 'rmsNorm', ints: [rows, cols], reals: [1e-6, 2e-6, 1e-7], arrays: [x, w, expected] });
    }
  }
  for (const [rows, cols] of [[1, 1], [7, 130], [33, 1152], [300, 40]] as const) {
    for (const dtype of ['f32', 'bf16'] as const) {
      const x = randomF32([rows, cols], 2, 5); // a mean far from zero
      const w = randomFloat(dtype, [cols]);
      const b = randomFloat(dtype, [cols]);
      const expected = out([rows, cols], (o) => reference.layerNorm(x, w, b, 1e-6, o));
      cases.push({ name: `[${rows},${cols}] ${dtype}`, op: 'layerNorm', ints: [rows, cols], reals: [1e-6, 1e-5, 2e-6], arrays: [x, w, b, expected] });
    }
  }
  for (const approximation of ['tanh', 'erf'] as const) {
    for (const n of [1, 7, 1003, 70001]) {
      const x = randomF32([n], 12);
      const expected = out([n], (o) => reference.gelu(x, o, approximation));
      cases.push({ name: `${approximation} n=${n}`, op: 'gelu', ints: [n, approximation === 'erf' ? 1 : 0], reals: [2e-6, 1e-7], arrays: [x, expected] });
    }
  }
  for (const m of [1, 2]) {
    for (const [blocks, C] of [[1, 1], [5, 17], [37, 200]] as const) {
      const x = randomF32([blocks * m * m, C], 4);
      const expected = out([blocks, C], (o) => reference.mergeBlocks(x, m, o));
      cases.push({ name: `m=${m} [${blocks * m * m},${C}]`, op: 'mergeBlocks', ints: [blocks, C, m], reals: [0, 0], arrays: [x, expected] });
    }
  }
  for (const n of [1, 7, 1003, 70001]) {
    const g = randomF32([n], 30);
    const u = randomF32([n], 2);
    const expected = out([n], (o) => reference.siluMul(g, u, o));
    cases.push({ name: `n=${n}`, op: 'siluMul', ints: [n], reals: [4e-7, 1e-30], arrays: [g, u, expected] });
  }
  // Logits spread by more than exp's range (±88) as well: only a correct row maximum keeps those finite.
  for (const [rows, cols, scale] of [[1, 1, 1], [9, 257, 10], [3, 1, 5], [40, 1000, 30], [1, 151936, 20], [4, 333, 100]] as const) {
    const x = randomF32([rows, cols], scale);
    const expected = out([rows, cols], (o) => reference.softmax(x, o));
    cases.push({ name: `[${rows},${cols}]`, op: 'softmax', ints: [rows, cols], reals: [1e-5, 1e-9], arrays: [x, expected] });
  }
  for (const [T, H, D] of [[1, 1, 2], [5, 3, 10], [17, 12, 128], [300, 2, 64]] as const) {
    const x = randomF32([T, H, D], 3);
    const angles = randomF32([T, D / 2], 10);
    const cos = Tensor.f32([T, D / 2], angles.data.map(Math.cos));
    const sin = Tensor.f32([T, D / 2], angles.data.map(Math.sin));
    const expected = out([T, H, D], (o) => reference.rope(x, cos, sin, o));
    cases.push({ name: `[${T},${H},${D}]`, op: 'rope', ints: [T, H, D], reals: [1e-6, 1e-6], arrays: [x, cos, sin, expected] });
  }
  cases.push(
    // Few query rows: the flash-style path, decode with the keys split across tasks.
    attentionCase(1, 1, 1, 1, 1, true),
    attentionCase(7, 7, 2, 2, 5, true),
    attentionCase(7, 7, 2, 2, 5, false),
    attentionCase(13, 13, 4, 2, 16, true),
    attentionCase(33, 33, 6, 2, 72, false), // GQA 3, the vision head size
    attentionCase(20, 90, 6, 1, 24, true), // GQA 6 after a cached prefix
    attentionCase(9, 100, 12, 2, 128, true, 40), // keys past the last query unseen
    attentionCase(9, 50, 3, 3, 33, true, 0),
    attentionCase(150, 150, 6, 2, 128, true), // several query tiles and key blocks
    attentionCase(1, 3001, 12, 2, 128, true), // decode over a long cache
    attentionCase(1, 777, 6, 6, 64, false),
    attentionCase(2, 515, 6, 2, 128, true),
    attentionCase(1, 300, 64, 1, 16, true), // 64 rows from one query: still the decode path
    // One query row, head size of whole 32- or 64-float tiles: the decode kernel (native/attn_decode.h).
    attentionCase(1, 130, 28, 4, 128, true, 70), // GQA 7 (the 7B): keys past the query's position never seen
    attentionCase(1, 65, 12, 2, 64, false),
    attentionCase(1, 40, 8, 1, 256, true),
    // Tiled (T > 1, >= 64 rows per KV head): key blocks of 96, query panels of 16, output rows in groups of 6 and 4.
    attentionCase(300, 300, 2, 2, 72, false),
    attentionCase(30, 1000, 6, 1, 64, true), // GQA 6 after a long cached prefix
    attentionCase(40, 500, 6, 1, 128, true, 200),
    attentionCase(200, 200, 2, 2, 72, true, 0), // masks through every diagonal block
    attentionCase(65, 211, 3, 1, 37, true), // output rows in groups 6,6,6,6,6,4,3
    attentionCase(64, 97, 1, 1, 8, false), // at the tiled threshold, head size 4 + 4
    attentionCase(63, 97, 1, 1, 8, false), // just below it
    attentionCase(11, 300, 6, 1, 2, true),
    attentionCase(70, 70, 1, 1, 1, true),
  );
  for (const dtype of ['f32', 'bf16'] as const) {
    const table = randomFloat(dtype, [50, 37]);
    const ids = Tensor.i32([6], [0, 49, 3, 3, 17, 48]);
    const expected = out([6, 37], (o) => reference.embedding(table, ids, o));
    cases.push({ name: dtype, op: 'embedding', ints: [6, 37], reals: [0, 0], arrays: [table, ids, expected] });
  }
  for (const n of [1, 31, 1000, 100003]) {
    const p = randomF32([n], 0.5, 0.5); // positive, so that rtol means something
    let s = 0;
    for (let j = 0; j < n; j++) s += p.data[j]!;
    cases.push({ name: `n=${n}`, op: 'sum', ints: [n], reals: [1e-5, 1e-6 * n], arrays: [p, Tensor.f32([1], [s])] });
  }
  return cases;
}

const KIND = { f32: 0, bf16: 1, i32: 2, int8: 3, int4: 4, int4m: 5 } as const;

/** Writes harnessCases() to `path` in the harness's format; returns the number of cases. */
export function writeHarnessCases(path: string): number {
  const cases = harnessCases();
  const parts: Buffer[] = [];
  const u32 = (v: number): void => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    parts.push(b);
  };
  const str = (s: string): void => {
    const b = Buffer.from(s, 'utf8');
    u32(b.length);
    parts.push(b);
  };
  parts.push(Buffer.from('VL3CASES', 'latin1'));
  u32(1);
  u32(cases.length);
  for (const c of cases) {
    str(c.name);
    str(c.op);
    u32(c.ints.length);
    const ints = Buffer.alloc(8 * c.ints.length);
    c.ints.forEach((v, j) => ints.writeBigInt64LE(BigInt(v), 8 * j));
    parts.push(ints);
    u32(c.reals.length);
    const reals = Buffer.alloc(8 * c.reals.length);
    c.reals.forEach((v, j) => reals.writeDoubleLE(v, 8 * j));
    parts.push(reals);
    u32(c.arrays.length);
    for (const a of c.arrays) {
      if (a.dtype !== 'f32' && a.dtype !== 'bf16' && a.dtype !== 'i32' && !isQuantized(a.dtype)) throw new Error(`harness case ${c.name}: ${a.dtype} array`);
      u32(KIND[a.dtype]);
      const d = a.data as Float32Array | Uint16Array | Int32Array | Uint8Array;
      const n = Buffer.alloc(8);
      n.writeBigUInt64LE(BigInt(isQuantized(a.dtype) ? d.byteLength : a.numel));
      parts.push(n);
      parts.push(Buffer.from(d.buffer, d.byteOffset, d.byteLength));
    }
  }
  writeFileSync(path, Buffer.concat(parts));
  return cases.length;
}
