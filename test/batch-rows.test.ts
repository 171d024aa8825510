// A row of x gets the same bits from a matmul of several rows as from one alone, on every tier, in both compute
// modes, for every weight format: the engine's batched decode (one GEMM over the batch's tokens) then answers exactly
// as each request would alone. Sizes leave partial vectors, partial chunks and partial row groups.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { Rng } from '../src/engine/rng.js';
import { f32ToBf16, QUANT_FORMATS } from '../src/tensor/dtype.js';
import { NativeBackend, nativeInfo, quantizeNative } from '../src/tensor/native.js';
import { ReferenceBackend } from '../src/tensor/reference.js';
import { Tensor } from '../src/tensor/tensor.js';

const rng = new Rng(5);
const random = (n: number, scale: number) => Array.from({ length: n }, () => (rng.next() * 2 - 1) * scale);

function weights(N: number, K: number): Tensor[] {
  const bf16 = Tensor.empty('bf16', [N, K]);
  random(N * K, 0.05).forEach((v, i) => (bf16.data[i] = f32ToBf16(v)));
  const f32 = new Tensor('f32', [N, K], Float32Array.from(random(N * K, 0.05)));
  return [bf16, f32, ...QUANT_FORMATS.map((f) => new Tensor(f, [N, K], quantizeNative(f, bf16)))];
}

/** The rows of `x` [M, K] one at a time, then all at once: every output bit must agree. */
function assertRowIndependent(backend: { matmul(x: Tensor, w: Tensor, bias: Tensor | null, out: Tensor): void }, w: Tensor, bias: Tensor | null, M: number, what: string) {
  const [N, K] = w.shape as [number, number];
  const x = new Tensor('f32', [M, K], Float32Array.from(random(M * K, 1)));
  const all = Tensor.empty('f32', [M, N]);
  backend.matmul(x, w, bias, all);
  for (let m = 0; m < M; m++) {
    const one = Tensor.empty('f32', [1, N]);
    backend.matmul(x.rows(m, m + 1), w, bias, one);
    const row = all.data.subarray(m * N, (m + 1) * N);
    const differ = one.data.findIndex((v, n) => !Object.is(v, row[n]));
    assert.equal(differ, -1, `${what}, M = ${M}: row ${m}, output ${differ}: ${one.data[differ]} alone, ${row[differ]} in the batch`);
  }
}

describe('a batch row gets the bits it gets alone', () => {
  // K: not a multiple of 64 (partial vectors of every width) but of 32 (quantized blocks), and 4 blocks short of a
  // chunk; N: a partial group of 4 rows.
  const [N, K] = [70, 32 * 13];
  const ws = weights(N, K);
  const bias = new Tensor('f32', [N], Float32Array.from(random(N, 0.5)));
  for (const isa of nativeInfo().tiers) {
    for (const compute of ['exact', 'bf16'] as const) {
      test(`${isa}, ${compute} compute`, () => {
        for (const threads of [1, 2]) {
          const backend = new NativeBackend({ isa, compute, threads });
          for (const w of ws)
            for (const M of [2, 3, 4, 5, 7, 9, 16]) assertRowIndependent(backend, w, w.dtype === 'f32' ? bias : null, M, `${w.dtype} weights, ${threads} thread(s)`);
        }
      });
    }
  }
  test('the TypeScript reference', () => {
    for (const w of ws) assertRowIndependent(new ReferenceBackend(), w, null, 5, `${w.dtype} weights`);
  });
});

// matmuls runs the projections of one input as one job (q, k, v; gate, up): each part must get the bits of its own
// matmul, whatever the parts' sizes (partial row groups, a part smaller than a task), formats, biases and rows.
describe('matmuls gives each part the bits of its own matmul', () => {
  const K = 32 * 13;
  const sizes = [70, 6, 3, 41];
  const parts = sizes.map((N) => weights(N, K));
  for (const isa of nativeInfo().tiers) {
    for (const compute of ['exact', 'bf16'] as const) {
      test(`${isa}, ${compute} compute`, () => {
        for (const threads of [1, 2]) {
          const backend = new NativeBackend({ isa, compute, threads });
          for (let f = 0; f < parts[0]!.length; f++) {
            for (const M of [1, 3, 16, 40]) {
              const x = new Tensor('f32', [M, K], Float32Array.from(random(M * K, 1)));
              const list = parts.map((ws, i) => {
                const N = sizes[i]!;
                // Parts 0 and 2 with an f32 and a bf16 bias, 1 and 3 without.
                const bias =
                  i % 2 ? null
                  : i === 0 ? new Tensor('f32', [N], Float32Array.from(random(N, 0.5)))
                  : new Tensor('bf16', [N], Uint16Array.from(random(N, 0.5), f32ToBf16));
                return { w: ws[f]!, bias, out: Tensor.empty('f32', [M, N]) };
              });
              backend.matmuls(x, list);
              for (const [i, p] of list.entries()) {
                const alone = Tensor.empty('f32', [M, sizes[i]!]);
                backend.matmul(x, p.w, p.bias, alone);
                const differ = alone.data.findIndex((v, n) => !Object.is(v, p.out.data[n]));
                assert.equal(differ, -1, `${p.w.dtype} weights, part ${i}, M = ${M}, ${threads} thread(s): output ${differ}: ${alone.data[differ]} alone, ${p.out.data[differ]} in matmuls`);
              }
            }
          }
        }
      });
    }
  }
  test('the checking layer names the part', () => {
    const backend = new NativeBackend({ threads: 1 });
    const x = Tensor.f32([1, K]);
    const w = parts[0]![0]!;
    assert.throws(() => backend.matmuls(x, [{ w, bias: null, out: Tensor.f32([1, 70]) }, { w, bias: null, out: Tensor.f32([1, 69]) }]), /matmuls: parts\[1\]: out: expected shape \[1, 70\]/);
    const out = Tensor.f32([1, 70]);
    assert.throws(() => backend.matmuls(x, [{ w, bias: null, out }, { w, bias: null, out }]), /matmuls: parts\[1\]: out must not share storage with parts\[0\]\.out/);
    assert.throws(() => backend.matmuls(x, []), /non-empty/);
  });
});
