// Every NativeBackend op against ReferenceBackend on seeded random data, on every kernel tier this CPU supports, in
// both compute modes, with 1 and 2 threads. Sizes are deliberately not multiples of the vector width or the GEMM
// tiles. Then the bf16 rounding, backends that share nothing, and the tier/mode choice (VL3_ISA, VL3_COMPUTE).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';

import { bf16ToF32, f32ToBf16 } from '../src/tensor/dtype.js';
import { type ComputeMode, type Isa, measureInterruptions, NativeBackend, nativeInfo, readBandwidth, startsOnLine, weightBuffer } from '../src/tensor/native.js';
import { ReferenceBackend } from '../src/tensor/reference.js';
import { Tensor } from '../src/tensor/tensor.js';
import { Rng } from '../src/engine/rng.js';

/** A seeded generator, so every run sees the same data. */
function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}

let seedCounter = 1;
function randomF32(shape: number[], scale = 1): Tensor<'f32'> {
  const next = rng(seedCounter++ * 7919);
  const t = Tensor.empty('f32', shape);
  for (let i = 0; i < t.numel; i++) t.data[i] = (next() * 2 - 1) * scale;
  return t;
}

function randomFloat(dtype: 'f32' | 'bf16', shape: number[], scale = 1): Tensor {
  const f = randomF32(shape, scale);
  if (dtype === 'f32') return f;
  const t = Tensor.empty('bf16', shape);
  for (let i = 0; i < t.numel; i++) t.data[i] = f32ToBf16(f.data[i]!);
  return t;
}

function copy(t: Tensor<'f32'>): Tensor<'f32'> {
  return Tensor.f32(t.shape, t.data);
}

/** |actual - expected| <= atol + rtol·|expected| everywhere, with the worst element named on failure. */
function assertClose(actual: Float32Array, expected: Float32Array, what: string, rtol = 1e-5, atol = 1e-6): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i]!, e = expected[i]!;
    if (Number.isNaN(e) && Number.isNaN(a)) continue;
    const excess = Math.abs(a - e) - (atol + rtol * Math.abs(e));
    if (!(excess <= 0) && (worst < 0 || !(excess <= worstExcess))) {
      worst = i;
      worstExcess = excess;
    }
  }
  if (worst >= 0) {
    assert.fail(`${what}: element ${worst} is ${actual[worst]}, expected ${expected[worst]} (rtol ${rtol}, atol ${atol})`);
  }
}

const reference = new ReferenceBackend();
const info = nativeInfo();
// Every tier this CPU and build support, best first (the one models get by default leads).
const tiers: Isa[] = [...info.tiers].reverse();
const modes: ComputeMode[] = ['exact', 'bf16'];
// For the checks below that do not depend on the tier.
const native = new NativeBackend({ compute: 'exact' });

/** Reference results are computed once and shared by every kernel/thread configuration. */
function memo<T>(make: () => T): () => T {
  let value: T | undefined;
  return () => (value ??= make());
}

// ---------------------------------------------------------------------------------------------------------------
// Cases, built once.

interface MatmulCase {
  name: string;
  x: Tensor<'f32'>;
  w: Tensor;
  bias: Tensor | null;
  /** The reference result in each compute mode. */
  expected: Record<ComputeMode, () => Float32Array>;
  K: number;
}

/** x with every element rounded to the nearest bf16 value (kept as f32): what bf16 compute does to activations. */
function roundedToBf16(x: Tensor<'f32'>): Tensor<'f32'> {
  return Tensor.f32(x.shape, x.data.map((v) => bf16ToF32(f32ToBf16(v))));
}

/** w as bf16: itself when stored so, else each element rounded to nearest even. */
function asBf16(w: Tensor): Tensor {
  if (w.dtype === 'bf16') return w;
  const t = Tensor.empty('bf16', w.shape);
  (w.data as Float32Array).forEach((v, i) => (t.data[i] = f32ToBf16(v)));
  return t;
}

/**
 * The reference semantics of matmul in each mode. 'bf16': the reference matmul on bf16-rounded x and w (bias as
 * given): every product of two bf16 values is exact in f32, so native and reference sum the same products and differ
 * only in summation order, which the exact mode's tolerance already covers.
 */
function referenceMatmul(x: Tensor<'f32'>, w: Tensor, bias: Tensor | null, mode: ComputeMode): Float32Array {
  const out = Tensor.empty('f32', [...x.shape.slice(0, -1), w.dim(0)]);
  if (mode === 'exact') reference.matmul(x, w, bias, out);
  else reference.matmul(roundedToBf16(x), asBf16(w), bias, out);
  return out.data;
}

function matmulCase(M: number, N: number, K: number, wType: 'f32' | 'bf16', biasType: 'none' | 'f32' | 'bf16'): MatmulCase {
  const x = randomF32([M, K]);
  const w = randomFloat(wType, [N, K]);
  const bias = biasType === 'none' ? null : randomFloat(biasType, [N]);
  const expected = {
    exact: memo(() => referenceMatmul(x, w, bias, 'exact')),
    bf16: memo(() => referenceMatmul(x, w, bias, 'bf16')),
  };
  return { name: `M=${M} N=${N} K=${K} w=${wType} bias=${biasType}`, x, w, bias, expected, K };
}

const superBlockMatmul = memo(() => matmulCase(4200, 19, 4099, 'bf16', 'f32'));

const smallMatmuls: MatmulCase[] = [];
{
  const biases = ['none', 'f32', 'bf16'] as const;
  let i = 0;
  for (const M of [1, 2, 5, 7, 13, 64])
    for (const N of [1, 3, 17, 31, 100])
      for (const K of [1, 7, 9, 33, 130])
        for (const wType of ['f32', 'bf16'] as const) smallMatmuls.push(matmulCase(M, N, K, wType, biases[i++ % 3]!));
}

const largeMatmuls: MatmulCase[] = [
  matmulCase(67, 129, 300, 'bf16', 'f32'),
  matmulCase(67, 300, 129, 'f32', 'none'),
  // Several K blocks (KC = 256, 512 for bf16 pairs and quads) and M blocks (MC = 144, 192 on AVX-512), ragged everywhere.
  matmulCase(151, 70, 601, 'bf16', 'bf16'),
  matmulCase(200, 45, 1031, 'bf16', 'none'),
  // Many N tasks with a small M just above the scalar GEMV cut-off, and a GEMV with long rows.
  matmulCase(6, 2100, 40, 'bf16', 'f32'),
  // Around the AVX2 (63) and AVX-512 (31) GEMV cut-offs, with odd K (a half-filled last bf16 pair).
  matmulCase(31, 75, 97, 'bf16', 'bf16'),
  matmulCase(32, 75, 97, 'f32', 'f32'),
  matmulCase(63, 40, 515, 'bf16', 'none'),
  matmulCase(64, 40, 515, 'f32', 'none'),
  matmulCase(3, 257, 1000, 'bf16', 'none'),
  matmulCase(1, 513, 1536, 'f32', 'f32'),
  // Either side of the NEON BFDOT GEMV's cut-off (7), K past one bf16 block and not a multiple of 4 or 8.
  matmulCase(7, 70, 603, 'bf16', 'f32'),
  matmulCase(8, 70, 603, 'f32', 'bf16'),
];

interface AttnCase {
  name: string;
  q: Tensor<'f32'>;
  k: Tensor<'f32'>;
  v: Tensor<'f32'>;
  causal: boolean;
  queryOffset?: number;
  expected: () => Float32Array;
}

function attnCase(T: number, S: number, Hq: number, Hkv: number, D: number, causal: boolean, queryOffset?: number): AttnCase {
  // Scaled-up q so that the softmax is far from uniform and masking mistakes show.
  const q = randomF32([T, Hq, D], 3);
  const k = randomF32([S, Hkv, D]);
  const v = randomF32([S, Hkv, D]);
  const scale = 1 / Math.sqrt(D);
  const expected = memo(() => {
    const out = Tensor.empty('f32', [T, Hq, D]);
    reference.attention(q, k, v, out, { scale, causal, queryOffset });
    return out.data;
  });
  const name = `T=${T} S=${S} Hq=${Hq} Hkv=${Hkv} D=${D} ${causal ? 'causal' : 'full'}${queryOffset === undefined ? '' : ` offset=${queryOffset}`}`;
  return { name, q, k, v, causal, queryOffset, expected };
}

const attnCases: AttnCase[] = [
  attnCase(1, 1, 1, 1, 1, true),
  attnCase(7, 7, 2, 2, 5, true),
  attnCase(7, 7, 2, 2, 5, false),
  attnCase(13, 13, 4, 2, 16, true),
  attnCase(33, 33, 6, 2, 72, false), // GQA 3, the vision head size
  attnCase(20, 90, 6, 1, 24, true), // GQA 6, prefill after a cached prefix (default offset 70)
  attnCase(9, 100, 12, 2, 128, true, 40), // offset that leaves keys past the last query unseen
  attnCase(9, 50, 3, 3, 33, true, 0),
  attnCase(150, 150, 12, 2, 128, true), // several query tiles and key blocks
  attnCase(70, 130, 4, 4, 64, false),
  attnCase(1, 3001, 12, 2, 128, true), // decode over a long cache: keys split across tasks
  attnCase(1, 777, 6, 6, 64, false),
  attnCase(2, 515, 6, 2, 128, true),
  attnCase(1, 150, 34, 17, 8, true), // decode with many KV heads in one task, each with its own block of scores
  // The tiled path (T > 1 and at least 64 query rows per KV head): key blocks of 96, tiles of up to 128 rows in panels
  // of 16, output rows in groups of 6 and 4. Sizes are multiples of none of them.
  attnCase(300, 300, 2, 2, 72, false), // the vision head size, several tiles
  attnCase(70, 1000, 12, 2, 128, true), // GQA 6, a long cached prefix (default offset 930)
  attnCase(40, 500, 6, 1, 128, true, 200), // keys past the last query's position are never seen
  attnCase(200, 200, 2, 2, 72, true, 0), // masks cut through every diagonal block
  attnCase(65, 211, 3, 1, 37, true), // ragged head size: output rows in groups 6,6,6,6,6,4,3
  attnCase(64, 97, 1, 1, 8, false), // exactly at the tiled path's threshold, head size 4 + 4
  attnCase(63, 97, 1, 1, 8, false), // just below it
  attnCase(11, 300, 6, 1, 2, true), // 66 rows: tiled with few queries, head size 2
  attnCase(70, 70, 1, 1, 1, true), // head size 1
  attnCase(64, 4500, 4, 4, 128, false), // K and V packed in two rounds of heads
  attnCase(1, 300, 64, 1, 16, true), // 64 rows from one query: still the decode path
  // One query row with a head size of whole 64-float tiles (the decode kernel, native/attn_decode.h): query rows in
  // register tiles of 6 (3 on 256-bit tiers) and a shorter last tile, keys in blocks of 64 with a short last one.
  attnCase(1, 130, 28, 4, 128, true, 70), // GQA 7 (the 7B): keys past the query's position never seen
  attnCase(1, 65, 12, 2, 64, false),
  attnCase(1, 40, 8, 1, 256, true), // several column tiles per row
];

// ---------------------------------------------------------------------------------------------------------------

const configs = tiers.flatMap((isa) => modes.flatMap((mode) => [1, 2].map((threads) => ({ isa, mode, threads }))));

for (const { isa, mode, threads } of configs) {
  describe(`NativeBackend (${isa} kernels, ${mode} compute, ${threads} thread${threads > 1 ? 's' : ''})`, () => {
    let native: NativeBackend;
    before(() => {
      native = new NativeBackend({ isa, compute: mode, threads });
      assert.equal(native.isa, isa);
      assert.equal(native.compute, mode);
      assert.equal(native.threads, threads);
    });

    // Tolerance for either mode: both sides sum the same exact products in f32 and differ only in order (and, for
    // neon's BFMMLA/BFDOT, in rounding partial sums to odd: within twice the error, far inside the tolerance).
    test('matmul: small, ragged sizes, f32 and bf16 weights, with and without bias', () => {
      for (const c of smallMatmuls) {
        const out = Tensor.empty('f32', [c.x.dim(0), c.w.dim(0)]);
        native.matmul(c.x, c.w, c.bias, out);
        assertClose(out.data, c.expected[mode](), `matmul ${c.name}`, 1e-5, 1e-6 * c.K);
      }
    });

    test('matmul: larger GEMM and GEMV shapes', () => {
      for (const c of largeMatmuls) {
        const out = Tensor.empty('f32', [c.x.dim(0), c.w.dim(0)]);
        native.matmul(c.x, c.w, c.bias, out);
        assertClose(out.data, c.expected[mode](), `matmul ${c.name}`, 1e-5, 1e-6 * c.K);
      }
    });

    // The GEMM packs x once per super-block of rows whose packed form fits 32 MiB: 4200×4099 is three such blocks in
    // f32 and two in bf16. On 2 threads only: the tasks sharing a block are what it checks, and it is the largest case.
    if (threads > 1) {
      test('matmul: x larger than one shared packed block', () => {
        const c = superBlockMatmul();
        const out = Tensor.empty('f32', [c.x.dim(0), c.w.dim(0)]);
        native.matmul(c.x, c.w, c.bias, out);
        assertClose(out.data, c.expected[mode](), `matmul ${c.name}`, 1e-5, 1e-6 * c.K);
      });
    }

    test('matmul: leading dimensions of x are kept', () => {
      const x = randomF32([2, 3, 9]);
      const w = randomFloat('bf16', [5, 9]);
      const out = Tensor.empty('f32', [2, 3, 5]);
      native.matmul(x, w, null, out);
      assertClose(out.data, referenceMatmul(x, w, null, mode), 'matmul [2,3,9]');
    });

    test('add and mul: same shape, row broadcast, in place', () => {
      for (const shape of [[1], [5, 33], [4, 3, 1000]]) {
        const a = randomF32(shape);
        const same = randomF32(shape);
        const row = randomF32([shape[shape.length - 1]!]);
        for (const b of [same, row]) {
          for (const op of ['add', 'mul'] as const) {
            const out = Tensor.empty('f32', shape);
            const expected = Tensor.empty('f32', shape);
            native[op](a, b, out);
            reference[op](a, b, expected);
            assertClose(out.data, expected.data, `${op} [${shape}] b=[${b.shape}]`, 0, 0);
            const inPlace = copy(a);
            native[op](inPlace, b, inPlace);
            assertClose(inPlace.data, expected.data, `${op} in place [${shape}]`, 0, 0);
          }
        }
      }
    });

    test('rmsNorm: f32 and bf16 weights, in place', () => {
      for (const [rows, cols] of [[1, 1], [7, 130], [3, 1536], [300, 40]] as const) {
        for (const wType of ['f32', 'bf16'] as const) {
          const x = randomF32([rows, cols], 2);
          const w = randomFloat(wType, [cols]);
          const out = Tensor.empty('f32', [rows, cols]);
          const expected = Tensor.empty('f32', [rows, cols]);
          native.rmsNorm(x, w, 1e-6, out);
          reference.rmsNorm(x, w, 1e-6, expected);
          assertClose(out.data, expected.data, `rmsNorm [${rows},${cols}] w=${wType}`, 2e-6, 1e-7);
          const inPlace = copy(x);
          native.rmsNorm(inPlace, w, 1e-6, inPlace);
          assertClose(inPlace.data, expected.data, `rmsNorm in place [${rows},${cols}]`, 2e-6, 1e-7);
        }
      }
    });

    test('layerNorm: f32 and bf16 weight and bias, rows with a large mean, in place', () => {
      for (const [rows, cols] of [[1, 1], [7, 130], [33, 1152], [300, 40]] as const) {
        for (const dtype of ['f32', 'bf16'] as const) {
          const x = randomF32([rows, cols], 2);
          for (let i = 0; i < x.numel; i++) x.data[i] += 5; // a mean far from zero
          const w = randomFloat(dtype, [cols]);
          const b = randomFloat(dtype, [cols]);
          const out = Tensor.empty('f32', [rows, cols]);
          const expected = Tensor.empty('f32', [rows, cols]);
          native.layerNorm(x, w, b, 1e-6, out);
          reference.layerNorm(x, w, b, 1e-6, expected);
          assertClose(out.data, expected.data, `layerNorm [${rows},${cols}] ${dtype}`, 1e-5, 2e-6);
          const inPlace = copy(x);
          native.layerNorm(inPlace, w, b, 1e-6, inPlace);
          assertClose(inPlace.data, expected.data, `layerNorm in place [${rows},${cols}]`, 1e-5, 2e-6);
        }
      }
    });

    test('gelu: tanh and erf forms over a wide range, in place', () => {
      for (const approximation of ['tanh', 'erf'] as const) {
        for (const n of [1, 7, 1003, 70001]) {
          const x = randomF32([n], 12);
          const out = Tensor.empty('f32', [n]);
          const expected = Tensor.empty('f32', [n]);
          native.gelu(x, out, approximation);
          reference.gelu(x, expected, approximation);
          assertClose(out.data, expected.data, `gelu ${approximation} n=${n}`, 2e-6, 1e-7);
          const inPlace = copy(x);
          native.gelu(inPlace, inPlace, approximation);
          assertClose(inPlace.data, expected.data, `gelu ${approximation} in place n=${n}`, 2e-6, 1e-7);
        }
      }
    });

    test('mergeBlocks: copy for 1, the bilinear 2×2 average for 2', () => {
      for (const m of [1, 2]) {
        for (const [blocks, C] of [[1, 1], [5, 17], [300, 1152]] as const) {
          const x = randomF32([blocks * m * m, C], 4);
          const out = Tensor.empty('f32', [blocks, C]);
          const expected = Tensor.empty('f32', [blocks, C]);
          native.mergeBlocks(x, m, out);
          reference.mergeBlocks(x, m, expected);
          assertClose(out.data, expected.data, `mergeBlocks m=${m} [${blocks * m * m},${C}]`, 0, 0);
        }
      }
    });

    test('siluMul: wide input range, in place over either operand', () => {
      for (const n of [1, 7, 1003, 70001]) {
        const g = randomF32([n], 30);
        const u = randomF32([n], 2);
        const out = Tensor.empty('f32', [n]);
        const expected = Tensor.empty('f32', [n]);
        native.siluMul(g, u, out);
        reference.siluMul(g, u, expected);
        assertClose(out.data, expected.data, `siluMul n=${n}`, 4e-7, 1e-30);
        const g2 = copy(g);
        native.siluMul(g2, u, g2);
        assertClose(g2.data, expected.data, `siluMul in place (gate) n=${n}`, 4e-7, 1e-30);
        const u2 = copy(u);
        native.siluMul(g, u2, u2);
        assertClose(u2.data, expected.data, `siluMul in place (up) n=${n}`, 4e-7, 1e-30);
      }
    });

    test('softmax: rows of several lengths, large logits, in place', () => {
      for (const [rows, cols, scale] of [[1, 1, 1], [9, 257, 10], [3, 1, 5], [40, 1000, 30], [1, 151936, 20]] as const) {
        const x = randomF32([rows, cols], scale);
        const out = Tensor.empty('f32', [rows, cols]);
        const expected = Tensor.empty('f32', [rows, cols]);
        native.softmax(x, out);
        reference.softmax(x, expected);
        assertClose(out.data, expected.data, `softmax [${rows},${cols}]`, 1e-5, 1e-9);
        const inPlace = copy(x);
        native.softmax(inPlace, inPlace);
        assertClose(inPlace.data, expected.data, `softmax in place [${rows},${cols}]`, 1e-5, 1e-9);
      }
    });

    test('rope: half-split layout, in place', () => {
      for (const [T, H, D] of [[1, 1, 2], [5, 3, 10], [17, 12, 128], [300, 2, 64]] as const) {
        const x = randomF32([T, H, D], 3);
        const angles = randomF32([T, D / 2], 10);
        const cos = Tensor.f32([T, D / 2], angles.data.map(Math.cos));
        const sin = Tensor.f32([T, D / 2], angles.data.map(Math.sin));
        const out = Tensor.empty('f32', [T, H, D]);
        const expected = Tensor.empty('f32', [T, H, D]);
        native.rope(x, cos, sin, out);
        reference.rope(x, cos, sin, expected);
        assertClose(out.data, expected.data, `rope [${T},${H},${D}]`, 1e-6, 1e-6);
        const inPlace = copy(x);
        native.rope(inPlace, cos, sin, inPlace);
        assertClose(inPlace.data, expected.data, `rope in place [${T},${H},${D}]`, 1e-6, 1e-6);
      }
    });

    test('attention: causal and full, query offsets, GQA 1/2/3/6/64, decode and tiled prefill over long S', () => {
      for (const c of attnCases) {
        const out = Tensor.empty('f32', c.q.shape);
        native.attention(c.q, c.k, c.v, out, { scale: 1 / Math.sqrt(c.q.dim(2)), causal: c.causal, queryOffset: c.queryOffset });
        assertClose(out.data, c.expected(), `attention ${c.name}`, 1e-5, 2e-6);
      }
    });

    test('embedding: f32 and bf16 tables, ids checked', () => {
      for (const dtype of ['f32', 'bf16'] as const) {
        const table = randomFloat(dtype, [50, 37]);
        const ids = Tensor.i32([6], [0, 49, 3, 3, 17, 48]);
        const out = Tensor.empty('f32', [6, 37]);
        const expected = Tensor.empty('f32', [6, 37]);
        native.embedding(table, ids, out);
        reference.embedding(table, ids, expected);
        assertClose(out.data, expected.data, `embedding ${dtype}`, 0, 0);
        assert.throws(() => native.embedding(table, Tensor.i32([2], [1, 50]), Tensor.empty('f32', [2, 37])), /ids\[1\] = 50/);
        assert.throws(() => native.embedding(table, Tensor.i32([1], [-1]), Tensor.empty('f32', [1, 37])), /ids\[0\] = -1/);
      }
    });

    test('argmax and topK: ties keep the lower index', () => {
      const next = rng(99);
      const x = Tensor.f32([1000], Array.from({ length: 1000 }, () => Math.floor(next() * 50)));
      assert.equal(native.argmax(x), reference.argmax(x));
      assert.equal(native.argmax(Tensor.f32([4], [1, 3, 3, 2])), 1);
      for (const k of [0, 1, 5, 37, 1000]) {
        const got = native.topK(x, k);
        const want = reference.topK(x, k);
        assert.deepEqual(Array.from(got.indices), Array.from(want.indices), `topK k=${k} indices`);
        assert.deepEqual(Array.from(got.values), Array.from(want.values), `topK k=${k} values`);
      }
      const r = randomF32([151936], 10);
      assert.equal(native.argmax(r), reference.argmax(r));
      // The native argmax works a block of 1024 at a time: a tie across blocks, a later block with only an equal value,
      // signed zeros, NaNs (never chosen after index 0) and NaN first (index 0 stays).
      const tie = Tensor.f32([5000], Array.from({ length: 5000 }, (_, i) => (i === 1500 || i === 3000 || i === 4999 ? 7 : i % 5)));
      assert.equal(native.argmax(tie), 1500);
      assert.equal(native.argmax(Tensor.f32([3000], Array.from({ length: 3000 }, (_, i) => (i < 1100 ? -1 : i === 1100 ? -0 : i === 2500 ? 0 : -2)))), 1100);
      assert.equal(native.argmax(Tensor.f32([2100], Array.from({ length: 2100 }, (_, i) => (i % 3 ? NaN : i === 2049 ? 1 : 0)))), 2049);
      assert.equal(native.argmax(Tensor.f32([2100], Array.from({ length: 2100 }, (_, i) => (i === 0 ? NaN : i)))), 0);
      // Inside a block the maxima run in 32 lanes: a zero of either sign later in memory but in a lower lane, and the
      // largest element in a block's (or a short vector's) elements past its last 32.
      assert.equal(native.argmax(Tensor.f32([64], Array.from({ length: 64 }, (_, i) => (i === 8 ? -0 : i === 37 ? 0 : -1)))), 8);
      assert.equal(native.argmax(Tensor.f32([1050], Array.from({ length: 1050 }, (_, i) => (i === 1049 ? 2 : i === 1030 ? 1 : 0)))), 1049);
      assert.equal(native.argmax(Tensor.f32([45], Array.from({ length: 45 }, (_, i) => (i === 44 ? 1 : 0)))), 44);
      for (const t of [tie, Tensor.f32([2100], Array.from({ length: 2100 }, (_, i) => (i % 3 ? NaN : i === 2049 ? 1 : 0)))]) assert.equal(native.argmax(t), reference.argmax(t));
      assert.deepEqual(Array.from(native.topK(r, 40).indices), Array.from(reference.topK(r, 40).indices));
    });
  });
}

describe('NativeBackend checks and configuration', () => {
  test('shape and dtype errors name the op and operand', () => {
    const x = randomF32([2, 8]);
    assert.throws(() => native.matmul(x, randomF32([3, 7]), null, Tensor.empty('f32', [2, 3])), /matmul: w/);
    assert.throws(() => native.matmul(x, randomF32([3, 8]), randomF32([4]), Tensor.empty('f32', [2, 3])), /matmul: bias/);
    assert.throws(() => native.matmul(x, randomF32([3, 8]), null, Tensor.empty('f32', [3, 2])), /matmul: out/);
    assert.throws(() => native.matmul(x, Tensor.i32([3, 8]), null, Tensor.empty('f32', [2, 3])), /matmul: w: expected dtype/);
    assert.throws(() => native.add(x, randomF32([3]), Tensor.empty('f32', [2, 8])), /add: b/);
    assert.throws(() => native.rmsNorm(x, randomF32([7]), 1e-6, Tensor.empty('f32', [2, 8])), /rmsNorm: weight/);
    assert.throws(() => native.rope(randomF32([2, 1, 3]), randomF32([2, 1]), randomF32([2, 1]), randomF32([2, 1, 3])), /rope/);
    const q = randomF32([2, 3, 4]);
    const kv = randomF32([5, 2, 4]);
    assert.throws(() => native.attention(q, kv, kv, Tensor.empty('f32', [2, 3, 4]), { scale: 1, causal: true }), /multiple of KV heads/);
    assert.throws(() => native.topK(randomF32([3]), 4), /topK: k/);
    assert.throws(() => native.mergeBlocks(randomF32([9, 4]), 3, Tensor.empty('f32', [1, 4])), /mergeBlocks: merge size 3/);
    assert.throws(() => native.mergeBlocks(randomF32([6, 4]), 2, Tensor.empty('f32', [1, 4])), /mergeBlocks: x has 6 rows/);
    assert.throws(() => native.gelu(x, Tensor.empty('f32', [2, 8]), 'fast' as 'tanh'), /gelu: approximation/);
    assert.throws(() => native.layerNorm(x, randomF32([8]), randomF32([7]), 1e-6, Tensor.empty('f32', [2, 8])), /layerNorm: bias/);
    assert.throws(() => native.argmax(Tensor.empty('f32', [0])), /argmax/);
  });

  test('matmul refuses an out that shares storage with x', () => {
    const buf = Tensor.empty('f32', [4, 4]);
    const x = buf.rows(0, 2);
    const out = buf.rows(1, 3);
    assert.throws(() => native.matmul(x, randomF32([4, 4]), null, out), /share storage with x/);
  });

  test('weight buffers are zero-filled, exactly sized, start on a cache line, and serve as tensors', () => {
    for (const bytes of [1, 100, 16 << 10, 100_003, (4 << 20) + 3]) {
      const bytesOf = weightBuffer(bytes);
      assert.equal(bytesOf.byteLength, bytes);
      assert.ok(startsOnLine(bytesOf), `${bytes} bytes: not on a line`);
      assert.ok(bytesOf.every((v) => v === 0), `${bytes} bytes: not zero-filled`);
    }
    const lined = weightBuffer(256);
    assert.ok(!startsOnLine(new Uint8Array(lined.buffer, lined.byteOffset + 16)), 'a view 16 bytes in is off the line');
    // A matmul reads and writes tensors over such views like any other.
    const backend = new NativeBackend({ threads: 2, compute: 'exact' });
    const x = Tensor.f32([1, 8], [1, 2, 3, 4, 5, 6, 7, 8]);
    const wBytes = weightBuffer(2048 * 8 * 4), outBytes = weightBuffer(2048 * 4);
    const w = new Tensor('f32', [2048, 8], new Float32Array(wBytes.buffer, wBytes.byteOffset, 2048 * 8));
    w.data.fill(0.5);
    const out = new Tensor('f32', [1, 2048], new Float32Array(outBytes.buffer, outBytes.byteOffset, 2048));
    backend.matmul(x, w, null, out);
    assert.ok(out.data.every((v) => v === 18));
  });

  test('the read bandwidth is a positive rate for any size and thread count; bad arguments name themselves', () => {
    // Sizes whose slices are not whole numbers of 4 streams of vectors: both read orders handle the ends.
    for (const [threads, bytes] of [[1, 1 << 20], [2, (1 << 20) + 4 * 37], [3, 4 * 1001]] as const) {
      const gbs = readBandwidth(threads, bytes, 2);
      assert.ok(Number.isFinite(gbs) && gbs > 0, `${threads} threads, ${bytes} bytes: ${gbs}`);
    }
    assert.throws(() => readBandwidth(0), /readBandwidth: threads must be a positive integer/);
    assert.throws(() => readBandwidth(1, 1.5), /readBandwidth: bytes must be a positive integer/);
  });

  test('interruptions: threads beyond the cores are seen off them; the union lies between the largest share and the sum', () => {
    // One spinning thread more than this process may run at once: at every moment one is off its core.
    const threads = availableParallelism() + 1;
    const took = measureInterruptions(threads, 0.3);
    assert.equal(took.lost.length, threads);
    const sum = took.lost.reduce((a, b) => a + b, 0);
    assert.ok(sum > 0.5, `threads off their cores ${sum} of the time in all`);
    assert.ok(took.anyLost > 0.5, `at least one off ${took.anyLost} of the time`);
    assert.ok(took.anyLost >= Math.max(...took.lost) - 1e-9 && took.anyLost <= Math.min(1, sum) + 1e-9, JSON.stringify(took));
    assert.ok(took.longLost >= 0 && took.longLost <= took.anyLost + 1e-9 && took.gapsPerSecond > 0, JSON.stringify(took));
    assert.throws(() => measureInterruptions(0), /measureInterruptions: threads must be a positive integer/);
    assert.throws(() => measureInterruptions(1, 0), /measureInterruptions: seconds must be in \(0, 60\]/);
    assert.throws(() => measureInterruptions(1, 1, Number.NaN), /measureInterruptions: minGapUs must be a positive number/);
  });

  test('features, tiers and thread counts are reported; each backend has its own', () => {
    const f = info.features;
    assert.ok(info.tiers.includes('scalar'));
    assert.equal(info.tiers.includes('avx2'), f.avx2 && f.fma && f.f16c);
    assert.equal(info.tiers.includes('avxvnni'), info.tiers.includes('avx2') && f.avxvnni);
    assert.equal(info.tiers.includes('avx512'), info.tiers.includes('avx2') && f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl);
    assert.equal(info.tiers.includes('avx512bf16'), info.tiers.includes('avx512') && f.avx512bf16);
    // The neon tier needs only Advanced SIMD; BF16 changes which of its builds runs, not whether it is there.
    assert.equal(info.tiers.includes('neon'), f.neon);
    assert.ok(info.defaultThreads >= 1);
    assert.ok(info.peakKinds.includes('fp32-scalar'));
    assert.equal(info.peakKinds.includes('fp32-neon'), info.tiers.includes('neon'));
    const a = new NativeBackend({ threads: 3, compute: 'exact' });
    const b = new NativeBackend({ threads: 1, compute: 'exact' });
    assert.equal(a.threads, 3);
    a.threads = 2;
    assert.equal(a.threads, 2);
    assert.equal(b.threads, 1);
    assert.throws(() => {
      a.threads = 0;
    }, /threads/);
    assert.throws(() => new NativeBackend({ threads: 1.5 }), /threads/);
    assert.throws(() => new NativeBackend({ threads: 257 }), /threads/);
  });

  test('a tier the CPU lacks is an error naming it and the missing features; unknown names and modes too', () => {
    for (const isa of ['scalar', 'avx2', 'avxvnni', 'avx512', 'avx512bf16', 'neon'] as const) {
      if (info.tiers.includes(isa)) continue;
      assert.throws(() => new NativeBackend({ isa }), new RegExp(`NativeBackend: isa '${isa}' is not available: this (CPU lacks [a-z0-9]+|build has no)`));
    }
    assert.throws(() => new NativeBackend({ isa: 'sse9' as Isa }), /isa must be one of scalar, avx2, avxvnni, avx512, avx512bf16, neon, got sse9/);
    assert.throws(() => new NativeBackend({ compute: 'fp8' as ComputeMode }), /compute must be 'exact' or 'bf16', got fp8/);
  });

  // (input f32 bits, bf16 bits it rounds to): ties go to the even neighbour, past the largest bf16 is infinity.
  const roundings: Array<[number, number]> = [
    [0x3f800000, 0x3f80], // 1
    [0x3f808000, 0x3f80], // 1 + 2^-8: a tie, kept even
    [0x3f818000, 0x3f82], // 1 + 3·2^-8: a tie, rounded up to even
    [0x3f808001, 0x3f81], // just above the tie
    [0x3f807fff, 0x3f80], // just below it
    [0xbf818000, 0xbf82], // negative tie: away from zero to even
    [0x40490fdb, 0x4049], // pi
    [0x3eaaaaab, 0x3eab], // 1/3
    [0x00800000, 0x0080], // the smallest normal
    [0x7f7f7fff, 0x7f7f], // the largest f32 that stays finite
    [0x7f7fffff, 0x7f80], // the largest f32: +Inf
    [0xff7fffff, 0xff80], // and its negative: -Inf
    [0x7f800000, 0x7f80], // +Inf
    [0xff800000, 0xff80], // -Inf
    [0x7fc00000, 0x7fc0], // quiet NaN
    [0x7f800001, 0x7fc0], // signalling NaN: a NaN (quiet) after rounding
  ];
  const roundIn = new Float32Array(new Uint32Array(roundings.map(([i]) => i)).buffer);
  const roundOut = roundings.map(([, o]) => bf16ToF32(o));

  function assertRounded(got: Float32Array, rows: number, what: string, rounded: boolean): void {
    for (let r = 0; r < rows; r++) {
      roundIn.forEach((v, i) => {
        const want = rounded ? roundOut[i]! : v;
        const g = got[r * roundIn.length + i]!;
        assert.ok(Number.isNaN(want) ? Number.isNaN(g) : g === want, `${what}: row ${r}, input 0x${roundings[i]![0].toString(16)} gave ${g}, expected ${want}`);
      });
    }
  }

  test('bf16 compute rounds activations and f32 weights to nearest even (ties, ±Inf, NaN); exact compute does not', () => {
    // K = 1 with a unit operand makes the product the rounded value itself, through the GEMV (3 rows of x) and the
    // packed GEMM (130 rows) alike.
    for (const isa of tiers) {
      for (const mode of modes) {
        const backend = new NativeBackend({ isa, compute: mode, threads: 2 });
        const rounded = mode === 'bf16';
        for (const rows of [3, 130]) {
          // Activations: x = the inputs, w = 1 (f32 and bf16).
          for (const wType of ['f32', 'bf16'] as const) {
            const x = Tensor.f32([rows * roundIn.length, 1], Array.from({ length: rows }, () => Array.from(roundIn)).flat());
            const out = Tensor.empty('f32', [rows * roundIn.length, 1]);
            const one = wType === 'f32' ? Tensor.f32([1, 1], [1]) : Tensor.empty('bf16', [1, 1]);
            if (wType === 'bf16') one.data[0] = 0x3f80;
            backend.matmul(x, one, null, out);
            assertRounded(out.data, rows, `${isa} ${mode} x, ${rows} rows, w ${wType}`, rounded);
          }
          // f32 weights: x = 1, w = the inputs.
          const out = Tensor.empty('f32', [rows, roundIn.length]);
          backend.matmul(Tensor.f32([rows, 1], new Float32Array(rows).fill(1)), Tensor.f32([roundIn.length, 1], roundIn), null, out);
          assertRounded(out.data, rows, `${isa} ${mode} w, ${rows} rows`, rounded);
        }
      }
    }
  });

  test('backends with different tiers and thread counts, used alternately, give what each gives alone', () => {
    const worst = tiers[tiers.length - 1]!;
    const a = new NativeBackend({ isa: tiers[0], threads: 2, compute: 'bf16' });
    const b = new NativeBackend({ isa: worst, threads: 1, compute: 'exact' });
    const x = randomF32([70, 300]);
    const w = randomFloat('bf16', [129, 300]);
    const x1 = randomF32([1, 300]);
    const att = attnCases[8]!; // 150 queries: the tiled path
    function run(backend: NativeBackend): Float32Array[] {
      const gemm = Tensor.empty('f32', [70, 129]);
      const gemv = Tensor.empty('f32', [1, 129]);
      const attn = Tensor.empty('f32', att.q.shape);
      const soft = Tensor.empty('f32', [70, 129]);
      backend.matmul(x, w, null, gemm);
      backend.matmul(x1, w, null, gemv);
      backend.attention(att.q, att.k, att.v, attn, { scale: 1 / Math.sqrt(att.q.dim(2)), causal: att.causal });
      backend.softmax(gemm, soft);
      return [gemm.data, gemv.data, attn.data, soft.data];
    }
    const aloneA = run(a);
    const aloneB = run(b);
    for (let round = 0; round < 3; round++) {
      assert.deepEqual(run(a), aloneA, `backend a, round ${round}`);
      assert.deepEqual(run(b), aloneB, `backend b, round ${round}`);
    }
    assert.equal(a.threads, 2);
    assert.equal(b.threads, 1);
  });

  test('two JS threads run their own backends at the same time with the results each gets alone', async () => {
    const module = fileURLToPath(new URL('../src/tensor/native.js', import.meta.url));
    const tensor = fileURLToPath(new URL('../src/tensor/tensor.js', import.meta.url));
    // Each thread runs the same 40 GEMMs on its own backend and reports whether every result equals its first.
    const body = `
      const [{ NativeBackend }, { Tensor }] = await Promise.all([import(${JSON.stringify(module)}), import(${JSON.stringify(tensor)})]);
      const backend = new NativeBackend({ threads: 2, compute: 'exact' });
      const x = Tensor.f32([96, 256], Array.from({ length: 96 * 256 }, (_, i) => Math.sin(i)));
      const w = Tensor.f32([200, 256], Array.from({ length: 200 * 256 }, (_, i) => Math.cos(i)));
      const first = Tensor.empty('f32', [96, 200]);
      backend.matmul(x, w, null, first);
      let same = true;
      for (let i = 0; i < 40; i++) {
        const out = Tensor.empty('f32', [96, 200]);
        backend.matmul(x, w, null, out);
        same &&= out.data.every((v, j) => v === first.data[j]);
      }
      return { same, first: first.data };`;
    const worker = new Worker(`const { parentPort } = require('node:worker_threads');
      (async () => { ${body} })().then((r) => parentPort.postMessage(r), (e) => parentPort.postMessage({ error: String(e) }));`, { eval: true });
    const fromWorker = new Promise<{ same: boolean; first: Float32Array; error?: string }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    // The main thread's share, in a function of the same text so that both compute the same thing.
    const here = await (new Function(`return (async () => { ${body} })();`) as () => Promise<{ same: boolean; first: Float32Array }>)();
    const there = await fromWorker;
    await worker.terminate();
    assert.equal(there.error, undefined);
    assert.ok(here.same && there.same);
    assert.deepEqual(there.first, here.first);
  });

  /** Runs `script` (a module body with `m` the native module) in a child with the given environment changes. */
  function child(env: Record<string, string | undefined>, script: string) {
    const module = fileURLToPath(new URL('../src/tensor/native.js', import.meta.url));
    const full = { ...process.env, ...env };
    for (const [k, v] of Object.entries(env)) if (v === undefined) delete full[k];
    return spawnSync(process.execPath, ['--input-type=module', '-e', `const m = await import(${JSON.stringify(module)}); ${script}`], {
      env: full,
      encoding: 'utf8',
    });
  }

  const report = 'const b = new m.NativeBackend(); const i = m.nativeInfo(); console.log(JSON.stringify([i.isa, i.compute, b.isa, b.compute]));';

  test('without options a backend gets the best tier, and bf16 compute only where the tier multiplies bf16 natively', () => {
    const run = child({ VL3_ISA: undefined, VL3_COMPUTE: undefined }, report);
    assert.equal(run.status, 0, run.stderr);
    const best = info.tiers[info.tiers.length - 1]!;
    // avx512bf16 (vdpbf16ps), and neon where the CPU has BF16 (its BFMMLA/BFDOT build).
    const compute = best === 'avx512bf16' || (best === 'neon' && info.features.bf16) ? 'bf16' : 'exact';
    assert.deepEqual(JSON.parse(run.stdout), [best, compute, best, compute]);
  });

  test('VL3_ISA forces a tier for every backend without an isa option; an unavailable or unknown one is an error', () => {
    for (const isa of info.tiers) {
      const run = child({ VL3_ISA: isa, VL3_COMPUTE: 'exact' }, report);
      assert.equal(run.status, 0, run.stderr);
      assert.deepEqual(JSON.parse(run.stdout), [isa, 'exact', isa, 'exact']);
    }
    // The option still wins for the backend that names one.
    const pinned = child({ VL3_ISA: 'scalar' }, `console.log(new m.NativeBackend({ isa: ${JSON.stringify(tiers[0])} }).isa)`);
    assert.equal(pinned.stdout.trim(), tiers[0], pinned.stderr);
    const missing = (['avx512bf16', 'avx512', 'avx2', 'neon'] as const).find((t) => !info.tiers.includes(t))!;
    const run = child({ VL3_ISA: missing }, 'new m.NativeBackend()');
    assert.notEqual(run.status, 0);
    assert.match(run.stderr, new RegExp(`NativeBackend: VL3_ISA=${missing}: isa '${missing}' is not available: this CPU lacks [a-z0-9]+`));
    const unknown = child({ VL3_ISA: 'avx9' }, 'm.nativeInfo()');
    assert.notEqual(unknown.status, 0);
    assert.match(unknown.stderr, /VL3_ISA=avx9: isa 'avx9' is unknown \(expected scalar, avx2, avxvnni, avx512, avx512bf16 or neon\)/);
  });

  test('VL3_COMPUTE sets the default compute mode on any tier; an invalid one is an error', () => {
    for (const compute of modes) {
      const run = child({ VL3_ISA: 'scalar', VL3_COMPUTE: compute }, report);
      assert.equal(run.status, 0, run.stderr);
      assert.deepEqual(JSON.parse(run.stdout), ['scalar', compute, 'scalar', compute]);
    }
    const bad = child({ VL3_COMPUTE: 'fp16' }, 'new m.NativeBackend()');
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /VL3_COMPUTE=fp16: expected 'exact' or 'bf16'/);
  });
});
