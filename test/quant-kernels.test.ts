// The quantized formats: the native encoder against the TypeScript one byte for byte, the round-trip error each
// format promises, and the quantized matmul and embedding of every tier, compute mode and thread count against the
// reference, on sizes that leave partial chunks and partial row groups.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { Rng } from '../src/engine/rng.js';
import { bf16ToF32, f32ToBf16, QUANT_FORMATS, type QuantFormat } from '../src/tensor/dtype.js';
import { type ComputeMode, type Isa, NativeBackend, nativeInfo, quantizeNative } from '../src/tensor/native.js';
import { dequantize, f32ToF16, quantize, roundHalfEven } from '../src/tensor/quant.js';
import { f16ToF32 } from '../src/tensor/dtype.js';
import { ReferenceBackend } from '../src/tensor/reference.js';
import { Tensor } from '../src/tensor/tensor.js';

function randomBf16(shape: [number, number], seed: number, scale = 1): Tensor<'bf16'> {
  const r = new Rng(seed);
  const t = Tensor.empty('bf16', shape);
  for (let i = 0; i < t.numel; i++) t.data[i] = f32ToBf16((r.next() * 2 - 1) * scale);
  return t;
}

function randomF32(shape: number[], seed: number): Tensor<'f32'> {
  const r = new Rng(seed);
  const t = Tensor.empty('f32', shape);
  for (let i = 0; i < t.numel; i++) t.data[i] = r.next() * 2 - 1;
  return t;
}

/** A weight with the awkward blocks: all zeros, one constant block, one huge outlier, tiny values. */
function awkwardWeight(N: number, K: number): Tensor<'bf16'> {
  const t = randomBf16([N, K], 11, 0.05);
  for (let j = 0; j < 32; j++) t.data[j] = 0;
  for (let j = 32; j < 64 && j < K; j++) t.data[K + j] = f32ToBf16(0.25);
  t.data[2 * K + 5] = f32ToBf16(-3);
  for (let j = 0; j < 32; j++) t.data[3 * K + j] = f32ToBf16(1e-6 * (j - 16));
  return t;
}

const quantizedTensor = (format: QuantFormat, w: Tensor<'bf16'>) =>
  new Tensor(format, w.shape, quantizeNative(format, w));

describe('quantized formats', () => {
  test('f16 rounding is round-to-nearest-even, subnormals and overflow included', () => {
    for (const v of [1, 2.5, 65504, 65519, 1e-7, 3e-5, 0.1, 1 / 3, 6.1e-5, 3 * 2 ** -26]) {
      const bits = f32ToF16(v);
      const back = f16ToF32(bits);
      // The nearest f16: no other f16 value is closer.
      const up = f16ToF32(bits + 1), down = f16ToF32(bits - 1);
      assert.ok(Math.abs(back - Math.fround(v)) <= Math.abs(up - Math.fround(v)) && Math.abs(back - Math.fround(v)) <= Math.abs(down - Math.fround(v)), `${v}`);
    }
    assert.equal(f32ToF16(65520), 0x7c00);
    assert.equal(roundHalfEven(2.5), 2);
    assert.equal(roundHalfEven(-2.5), -2);
    assert.equal(roundHalfEven(3.5), 4);
  });

  test('int4: a pair of whole chunks is both chunks\' scales, then both chunks\' codes, k-major, each code vector a 64-byte line', () => {
    // Row n, block b: the codes (k + b + n) mod 16 at scale 0.5 + (4b + n)/64 (exact in f16), so every scale and every
    // byte of codes says where it belongs. docs/quantization.md gives the layout.
    const [N, K] = [4, 256];
    const scale = (n: number, b: number) => 0.5 + (4 * b + n) / 64;
    const code = (n: number, b: number, j: number) => (j + b + n) % 16;
    const value = (i: number) => {
      const [n, k] = [Math.floor(i / K), i % K];
      const b = Math.floor(k / 32);
      return (code(n, b, k % 32) - 8) * scale(n, b);
    };
    for (const bytes of [quantize('int4', value, N, K), quantizeNative('int4', Tensor.f32([N, K], Float32Array.from({ length: N * K }, (_, i) => value(i))))]) {
      for (let n = 0; n < N; n++) {
        for (let b = 0; b < K / 32; b++) {
          const [chunk, i] = [Math.floor(b / 4), b % 4];
          const at = 32 * chunk + 2 * (4 * n + i);
          assert.equal(f16ToF32(bytes[at]! | (bytes[at + 1]! << 8)), scale(n, b), `scale of row ${n}, block ${b}`);
          // Code vector s of the chunk: a line holding, for every (row, block), elements 4s..4s+3 (low nibbles) and
          // 16+4s..16+4s+3 (high nibbles), which this weight makes equal.
          for (let s = 0; s < 4; s++) {
            const vector = 64 + 256 * chunk + 64 * s;
            assert.equal(vector % 64, 0);
            for (let e = 0; e < 4; e++) assert.equal(bytes[vector + 16 * n + 4 * i + e], 0x11 * code(n, b, 4 * s + e), `row ${n}, block ${b}, element ${4 * s + e}`);
          }
        }
      }
    }
  });

  for (const format of QUANT_FORMATS) {
    test(`${format}: the native encoder writes the reference's bytes`, () => {
      for (const [N, K] of [[13, 160], [4, 128], [6, 32], [9, 448]] as const) {
        const w = awkwardWeight(N, K);
        const expected = quantize(format, (i) => bf16ToF32(w.data[i]!), N, K);
        assert.deepEqual(quantizeNative(format, w), expected, `${format} [${N}, ${K}]`);
      }
    });

    test(`${format}: every value within half a step of its block`, () => {
      const [N, K] = [13, 160];
      const w = awkwardWeight(N, K);
      const back = dequantize(format, quantizeNative(format, w), N, K);
      for (let n = 0; n < N; n++) {
        for (let b = 0; b < K / 32; b++) {
          const v = Array.from({ length: 32 }, (_, j) => bf16ToF32(w.data[n * K + b * 32 + j]!));
          const amax = Math.max(...v.map(Math.abs));
          const range = Math.max(...v) - Math.min(...v);
          // A step is d; codes round to the nearest step (int4: the side opposite the largest magnitude stops at
          // 7 steps of 8, a whole step short), and the f16 scale and minimum add a relative 2⁻¹¹, or in the f16
          // subnormal range an absolute 2⁻²⁵ per code step.
          const step = format === 'int8' ? amax / 127 : format === 'int4' ? amax / 8 : range / 15;
          const bound = (format === 'int4' ? step : step / 2) + amax * 2 ** -10 + 128 * 2 ** -25;
          v.forEach((x, j) => {
            const err = Math.abs(back[n * K + b * 32 + j]! - x);
            assert.ok(err <= bound, `${format} row ${n} block ${b} value ${j}: ${x} came back ${back[n * K + b * 32 + j]} (bound ${bound})`);
          });
        }
      }
    });

    test(`${format}: a value that is not finite is refused, naming its row`, () => {
      const w = randomBf16([5, 64], 3);
      w.data[3 * 64 + 7] = 0x7fc0;
      assert.throws(() => quantizeNative(format, w), /row 3/);
      assert.throws(() => quantize(format, (i) => bf16ToF32(w.data[i]!), 5, 64), /row 3/);
    });
  }
});

const tiers: Isa[] = [...nativeInfo().tiers].reverse();
const modes: ComputeMode[] = ['exact', 'bf16'];

/** |a − e| within rtol of the largest expected magnitude: a wrong scale, lane or block is far outside. */
function assertNear(actual: Float32Array, expected: Float32Array, what: string, rtol = 2e-5): void {
  const scale = expected.reduce((m, v) => Math.max(m, Math.abs(v)), 0) || 1;
  for (let i = 0; i < actual.length; i++) {
    if (!(Math.abs(actual[i]! - expected[i]!) <= rtol * scale)) {
      assert.fail(`${what}: element ${i} is ${actual[i]}, expected ${expected[i]} (scale ${scale})`);
    }
  }
}

describe('quantized matmul and embedding on every tier', () => {
  // M crosses the 4-row tiles and the 64-row blocks; N leaves a short row group; K whole chunks and partial ones. The
  // one-row cases with 9 and 5 groups give a decode's streamed groups (ops_impl.h groupsDot: up to 4 at once) whole
  // parts at k ≤ 2048 and past it, beside the groups left over.
  const shapes: [number, number, number][] = [
    [1, 13, 160],
    [1, 37, 416],
    [1, 20, 2336],
    [3, 8, 512],
    [5, 17, 96],
    [70, 12, 256],
    [2, 4, 32],
  ];
  for (const format of QUANT_FORMATS) {
    const cases: { M: number; N: number; K: number; w: Tensor; x: Tensor<'f32'>; bias: Tensor<'f32'>; expected: Map<ComputeMode, Float32Array> }[] = shapes.map(([M, N, K], i) => {
      const w = quantizedTensor(format, randomBf16([N, K], 100 + i, 0.5));
      const x = randomF32([M, K], 200 + i);
      x.data[0] = 0; // a block with a zero keeps its scale finite
      const bias = randomF32([N], 300 + i);
      return { M, N, K, w, x, bias, expected: new Map<ComputeMode, Float32Array>() };
    });
    // Every weight and activation at ± its block's largest magnitude: the extreme codes and |q| = 127 everywhere, so
    // that a kernel whose int16 pair sums saturate (255·127·2 for int8) is far off; the second one is a decode.
    for (const [M, N, K] of [[5, 8, 256], [1, 16, 256]] as const) {
      const signs = new Rng(500);
      const w = Tensor.empty('bf16', [N, K]);
      for (let i = 0; i < w.numel; i++) w.data[i] = f32ToBf16(signs.next() < 0.5 ? -0.5 : 0.5);
      const x = Tensor.empty('f32', [M, K]);
      for (let i = 0; i < x.numel; i++) x.data[i] = signs.next() < 0.5 ? -1 : 1;
      for (let k = 0; k < K; k++) x.data[k] = bf16ToF32(w.data[k]!) * 2; // row 0 aligned with weight row 0
      cases.push({ M, N, K, w: quantizedTensor(format, w), x, bias: randomF32([N], 501), expected: new Map() });
    }
    for (const mode of modes) {
      const reference = new ReferenceBackend({ compute: mode });
      for (const c of cases) {
        const out = Tensor.empty('f32', [c.M, c.N]);
        reference.matmul(c.x, c.w, c.bias, out);
        c.expected.set(mode, out.data.slice());
      }
      for (const isa of tiers) {
        for (const threads of [1, 2]) {
          test(`${format} matmul, ${isa}, ${mode}, ${threads} thread(s)`, () => {
            const backend = new NativeBackend({ isa, compute: mode, threads });
            for (const c of cases) {
              const out = Tensor.empty('f32', [c.M, c.N]);
              backend.matmul(c.x, c.w, c.bias, out);
              assertNear(out.data, c.expected.get(mode)!, `[${c.M}×${c.K}]·[${c.N}×${c.K}]ᵀ`);
            }
          });
        }
      }
    }

    test(`${format} embedding: rows dequantized exactly on every tier`, () => {
      const table = quantizedTensor(format, randomBf16([11, 96], 400, 0.5));
      const ids = Tensor.i32([4], [10, 0, 3, 10]);
      const expected = Tensor.empty('f32', [4, 96]);
      new ReferenceBackend().embedding(table, ids, expected);
      const all = table.toFloat32();
      assert.deepEqual(expected.data.slice(0, 96), all.slice(10 * 96, 11 * 96));
      for (const isa of tiers) {
        const out = Tensor.empty('f32', [4, 96]);
        new NativeBackend({ isa }).embedding(table, ids, out);
        assert.deepEqual(out.data, expected.data, isa);
      }
    });
  }

  test('every tier quantizes activations to the reference codes, exactly', () => {
    // Weight row n is zero but for one positive value at k = n (int4m's minimum is then 0), so out[n] = d_w·d_x·(u −
    // z)·q_n, one product, exact in every implementation: any activation code or scale off by one shows as a different
    // bit pattern. For int4m's Σq term, row b of a second weight is constant over block b (its scale is then 0, its
    // minimum that constant): out[b] = m_w·(d_x·Σq). K spans whole chunks and a partial one, a block of .5 ties after
    // scaling, a zero block, and magnitudes from 1e-3 to 1e2.
    const K = 32 * 11;
    const nb = K / 32;
    const x = Tensor.empty('f32', [2, K]);
    const next = new Rng(77);
    for (let i = 0; i < x.numel; i++) x.data[i] = (next.next() * 2 - 1) * 10 ** Math.floor(next.next() * 6 - 3);
    for (let k = 64; k < 96; k++) x.data[k] = k === 64 ? 127 : (k - 64) * 0.5 + 0.5; // scaled by 1: many .5 ties
    for (let k = 96; k < 128; k++) x.data[k] = 0;
    const diagonal = Tensor.empty('bf16', [K, K]);
    for (let n = 0; n < K; n++) diagonal.data[n * K + n] = f32ToBf16(n % 2 ? 0.75 : 1.25);
    const constantBlocks = Tensor.empty('bf16', [nb, K]);
    for (let b = 0; b < nb; b++) for (let k = 0; k < 32; k++) constantBlocks.data[b * K + b * 32 + k] = f32ToBf16(0.5);
    for (const format of QUANT_FORMATS) {
      for (const w of format === 'int4m' ? [diagonal, constantBlocks] : [diagonal]) {
        const packed = quantizedTensor(format, w);
        const N = w.dim(0);
        const expected = Tensor.empty('f32', [2, N]);
        new ReferenceBackend({ compute: 'bf16' }).matmul(x, packed, null, expected);
        for (const isa of tiers) {
          const out = Tensor.empty('f32', [2, N]);
          new NativeBackend({ isa, compute: 'bf16', threads: 1 }).matmul(x, packed, null, out);
          const differ = out.data.findIndex((v, i) => !Object.is(v, expected.data[i]));
          assert.equal(differ, -1, `${format} [${N}×${K}], ${isa}: output ${differ} is ${out.data[differ]}, the reference's ${expected.data[differ]}`);
        }
      }
    }
  });

  test('the fast mode is the int8-activation product, not the exact one', () => {
    // A kernel that silently ran the exact path would pass the exact comparison but not this one.
    const w = quantizedTensor('int4', randomBf16([8, 256], 7, 0.5));
    const x = randomF32([1, 256], 8);
    const exact = Tensor.empty('f32', [1, 8]);
    const fast = Tensor.empty('f32', [1, 8]);
    new NativeBackend({ compute: 'exact' }).matmul(x, w, null, exact);
    new NativeBackend({ compute: 'bf16' }).matmul(x, w, null, fast);
    assert.ok(exact.data.some((v, i) => v !== fast.data[i]));
  });

  test('the checks refuse a quantized weight whose rows are not whole blocks, and bad slices', () => {
    assert.throws(() => new Tensor('int4', [4, 40], new Uint8Array(4 * 40)), /whole blocks of 32/);
    const w = quantizedTensor('int8', randomBf16([8, 64], 9));
    assert.throws(() => w.rows(0, 2), /packed in groups/);
    const x = randomF32([1, 32], 10);
    assert.throws(() => new NativeBackend().matmul(x, w, null, Tensor.empty('f32', [1, 8])), /matmul: w: expected shape \[8, 32\]/);
  });
});
