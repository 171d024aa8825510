// The WebGPU backend (on lavapipe here) against the TypeScript reference: every kernel of src/tensor/webgpu/kernels
// on odd sizes (not multiples of a workgroup), in place and with operands sharing a storage, bf16 weights and
// quantized tables; the memory ops round trip; and its typed errors. Sizes stay small: lavapipe is slow.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { Rng } from '../src/engine/rng.js';
import type { Backend } from '../src/tensor/backend.js';
import { f32ToBf16, QUANT_FORMATS, type DType } from '../src/tensor/dtype.js';
import { quantize } from '../src/tensor/quant.js';
import { ReferenceBackend } from '../src/tensor/reference.js';
import { Tensor } from '../src/tensor/tensor.js';
import { sliceOf, WebGpuBackend, WebGpuKernels, WebGpuStorage } from '../src/tensor/webgpu/backend.js';
import { CheckedBackend } from '../src/tensor/checked.js';
import { WebGpuError } from '../src/tensor/webgpu/errors.js';
import { isSoftware } from '../src/tensor/webgpu/adapters.js';
import { WebGpuDevice } from '../src/tensor/webgpu/device.js';
import { backendForDevice } from '../src/tensor/index.js';
import { VideoLLaMA3 } from '../src/api/videollama3.js';
import { InvalidOptionError } from '../src/api/errors.js';
import './lavapipe.js';

let seed = 1;
function random(shape: number[], scale = 1, offset = 0): Tensor<'f32'> {
  const r = new Rng(seed++ * 7919);
  const t = Tensor.empty('f32', shape);
  for (let i = 0; i < t.numel; i++) t.data[i] = (r.next() * 2 - 1) * scale + offset;
  return t;
}

function bf16Of(t: Tensor<'f32'>): Tensor<'bf16'> {
  const out = Tensor.empty('bf16', t.shape);
  for (let i = 0; i < t.numel; i++) out.data[i] = f32ToBf16(t.data[i]!);
  return out;
}

/**
 * |actual − expected| ≤ rtol·|expected| + atol everywhere, the worst element named on failure. Bounds are stated per
 * op below; each is far below what a wrong kernel (a wrong element, index or formula) produces.
 */
function assertClose(actual: Float32Array, expected: Float32Array, what: string, rtol: Tolerance, atol = 0): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    const r = typeof rtol === 'number' ? rtol : rtol(i);
    if (Number.isNaN(e) && Number.isNaN(a)) continue;
    if (!(Math.abs(a - e) <= r * Math.abs(e) + atol)) assert.fail(`${what}: element ${i} is ${a}, expected ${e} (rtol ${r}, atol ${atol})`);
  }
}

/** A relative tolerance, or one per element (element i's). */
type Tolerance = number | ((i: number) => number);

/**
 * exp(y) of an f32 argument y that is itself good to about 2 ulp is off by |y|·2⁻²² relative (exp's condition number
 * is |y|): the bound for ops whose result is an exp of a computed argument, on top of `base` for the rest.
 */
const expBound = (base: number, argument: (i: number) => number) => (i: number) => base + Math.abs(argument(i)) * 2 ** -22;

describe('WebGPU backend', () => {
  let gpu: WebGpuBackend;
  const ref: Backend = new ReferenceBackend();
  before(() => {
    gpu = new WebGpuBackend();
  });
  after(() => gpu?.close());

  const up = <D extends DType>(t: Tensor<D>) => gpu.upload(t);
  const down = (t: Tensor) => gpu.download(t).toFloat32();

  describe('memory', () => {
    it('uploads and downloads every dtype bit for bit, odd byte lengths included', () => {
      const f = random([3, 37]);
      const cases: Tensor[] = [f, bf16Of(random([5, 7])), Tensor.i32([3], [-1, 0, 2 ** 31 - 1]), new Tensor('u8', [5], Uint8Array.of(1, 2, 250, 4, 5))];
      for (const format of QUANT_FORMATS) cases.push(new Tensor(format, [5, 64], quantize(format, (i) => f.data[i % f.numel]!, 5, 64)));
      for (const t of cases) {
        const back = gpu.download(up(t));
        assert.equal(back.dtype, t.dtype);
        assert.deepEqual(back.shape, t.shape);
        assert.deepEqual(new Uint8Array((back.data as Uint8Array).buffer, 0, t.byteLength), new Uint8Array((t.data as Uint8Array).buffer, (t.data as Uint8Array).byteOffset, t.byteLength), `${t}`);
      }
    });

    it('allocates zeros, writes views at any offset, and reads views back', () => {
      const t = gpu.allocate('f32', [4, 9]);
      assert.deepEqual([...down(t)], new Array(36).fill(0));
      gpu.write(t.rows(1, 3), Array.from({ length: 18 }, (_, i) => i + 0.5));
      assert.deepEqual([...down(t.rows(1, 2))], Array.from({ length: 9 }, (_, i) => i + 0.5));
      assert.equal(down(t)[35], 0);
      const bytes = gpu.allocate('u8', [11]);
      gpu.fill(bytes, 7);
      gpu.write(bytes.rows(3, 8), [1, 2, 3, 4, 5]);
      assert.deepEqual([...down(bytes)], [7, 7, 7, 1, 2, 3, 4, 5, 7, 7, 7]);
      const ids = gpu.allocate('i32', [5]);
      gpu.write(ids.rows(1, 4), [-3, 2 ** 31 - 1, 9]);
      assert.deepEqual([...gpu.download(ids).data], [0, -3, 2 ** 31 - 1, 9, 0]);
    });

    it('fills f32, i32 and byte views without touching their neighbours', () => {
      const t = gpu.allocate('f32', [5, 3]);
      gpu.fill(t.rows(1, 4), -2.5);
      assert.deepEqual([...down(t)], [0, 0, 0, ...new Array(9).fill(-2.5), 0, 0, 0]);
      const i = gpu.allocate('i32', [3]);
      gpu.fill(i, -7);
      assert.deepEqual([...gpu.download(i).data], [-7, -7, -7]);
      const u = gpu.allocate('u8', [13]);
      gpu.fill(u.rows(5, 10), 255);
      assert.deepEqual([...gpu.download(u).data], [0, 0, 0, 0, 0, 255, 255, 255, 255, 255, 0, 0, 0]);
    });

    it('copies between storages, within one storage, and at byte offsets', () => {
      const src = random([6, 5]);
      const a = up(src);
      const b = gpu.allocate('f32', [6, 5]);
      gpu.copy(a, b);
      assert.deepEqual(down(b), src.data);
      // Within one storage: rows 0..2 over rows 3..5 (disjoint ranges of one buffer).
      gpu.copy(a.rows(0, 3), a.rows(3, 6));
      assert.deepEqual(down(a.rows(3, 6)), src.data.subarray(0, 15));
      const bytes = up(new Tensor('u8', [9], Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9)));
      gpu.copy(bytes.rows(0, 3), bytes.rows(5, 8));
      assert.deepEqual([...gpu.download(bytes).data], [1, 2, 3, 4, 5, 1, 2, 3, 9]);
      const other = gpu.allocate('u8', [7]);
      gpu.copy(bytes.rows(1, 6), other.rows(2, 7));
      assert.deepEqual([...gpu.download(other).data], [0, 0, 2, 3, 4, 5, 1]);
    });

    it('copies rows by index, f32 and byte rows', () => {
      const src = random([5, 7]);
      const dst = gpu.allocate('f32', [4, 7]);
      gpu.copyRows(up(src), Int32Array.of(4, 0, 2), dst, Int32Array.of(0, 3, 1));
      const expected = Tensor.empty('f32', [4, 7]);
      ref.copyRows(src, Int32Array.of(4, 0, 2), expected, Int32Array.of(0, 3, 1));
      assert.deepEqual(down(dst), expected.data);
      const bytes = up(new Tensor('u8', [3, 3], Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9)));
      const into = gpu.allocate('u8', [3, 3]);
      gpu.copyRows(bytes, Int32Array.of(2, 0), into, Int32Array.of(1, 2));
      assert.deepEqual([...gpu.download(into).data], [0, 0, 0, 7, 8, 9, 1, 2, 3]);
      // i32 rows whose bits are NaN patterns as f32 arrive unchanged (words are copied, not floats).
      const ints = up(Tensor.i32([2, 2], [-1, 0x7fc00001, 0x7f800001, -4194304]));
      const intsInto = gpu.allocate('i32', [3, 2]);
      gpu.copyRows(ints, Int32Array.of(1, 0), intsInto, Int32Array.of(0, 2));
      assert.deepEqual([...gpu.download(intsInto).data], [0x7f800001, -4194304, 0, 0, -1, 0x7fc00001]);
    });

    it('copies rows within one storage, and in order where a destination row repeats', () => {
      const host = random([6, 5]);
      const t = up(host);
      // Rows 0..2 are the source and rows 3..5 the destination: two views of one buffer.
      gpu.copyRows(t.rows(0, 3), Int32Array.of(2, 0, 1), t.rows(3, 6), Int32Array.of(0, 1, 2));
      const expected = Tensor.f32([6, 5], host.data);
      ref.copyRows(expected.rows(0, 3), Int32Array.of(2, 0, 1), expected.rows(3, 6), Int32Array.of(0, 1, 2));
      assert.deepEqual(down(t), expected.data);
      const dst = gpu.allocate('f32', [2, 5]);
      gpu.copyRows(up(host), Int32Array.of(0, 4, 3), dst, Int32Array.of(1, 1, 0));
      const e2 = Tensor.empty('f32', [2, 5]);
      ref.copyRows(host, Int32Array.of(0, 4, 3), e2, Int32Array.of(1, 1, 0));
      assert.deepEqual(down(dst), e2.data);
    });
  });

  /**
   * Runs `op` on the reference with host tensors and on the device with uploads of the same tensors, then compares
   * what `pick` returns (the output tensor). In-place variants pass the input itself as out on both.
   */
  function compare(what: string, inputs: Tensor[], op: (b: Backend, t: Tensor[]) => Tensor, rtol: Tolerance, atol = 0): void {
    const hostCopies = inputs.map((t) => new Tensor(t.dtype, t.shape, (t.data as Uint8Array).slice()));
    const expected = op(ref, hostCopies).toFloat32();
    const actual = down(op(gpu, inputs.map(up)));
    assertClose(actual, expected, what, rtol, atol);
  }

  describe('elementwise', () => {
    // add and mul are one f32 operation: exact.
    for (const op of ['add', 'mul'] as const) {
      it(`${op}: same shape, broadcast over the last dimension, in place, and b a view of a's storage`, () => {
        const a = random([3, 37, 29], 3);
        compare(`${op} same shape`, [a, random([3, 37, 29])], (b, [x, y]) => {
          const out = b.allocate('f32', x!.shape);
          b[op](x!, y!, out);
          return out;
        }, 0);
        compare(`${op} broadcast in place`, [a, random([29])], (b, [x, y]) => (b[op](x!, y!, x!), x!), 0);
        // Rows 0..1 of one storage, and its row 2 as the broadcast vector: two operands, one buffer.
        compare(`${op} shared storage`, [random([3, 29])], (b, [x]) => {
          const out = b.allocate('f32', [2, 29]);
          b[op](x!.rows(0, 2), x!.rows(2, 3).reshape([29]), out);
          return out;
        }, 0);
      });
    }

    // GELU: u·σ(2z) and u·Φ(u) in f32 against the double-precision reference: 2e-6 relative, plus the conditioning
    // of exp for its argument (2z for tanh, u²/2 for erf; at u = −12 that is 6e-5, where the value is 1e-31). And
    // 1e-15 absolute: the reference's 1 + tanh and 1 + erf cancel in double for negative u (its erf is exactly −1
    // below −6), so below about 1e-16·|u| it is the reference that is off.
    const geluArgument = (approximation: 'tanh' | 'erf', u: number) =>
      approximation === 'tanh' ? 2 * Math.sqrt(2 / Math.PI) * (u + 0.044715 * u ** 3) : (u * u) / 2;
    for (const approximation of ['tanh', 'erf'] as const) {
      it(`gelu ${approximation} over [−12, 12], out of place and in place`, () => {
        for (const [what, x] of [['', random([7, 301], 12)], [' in place', random([3, 37], 4)]] as const) {
          const bound = expBound(2e-6, (i) => geluArgument(approximation, x.data[i]!));
          compare(`gelu ${approximation}${what}`, [x], (b, [t]) => {
            const out = what ? t! : b.allocate('f32', t!.shape);
            b.gelu(t!, out, approximation);
            return out;
          }, bound, 1e-15);
        }
      });
    }

    // siluMul: g/(1 + exp(−g)) · up in f32: 1e-6 relative plus exp's conditioning for −g; 1e-37 absolute for results
    // in f32's subnormal range.
    it('siluMul out of place, over gate and over up', () => {
      const gate = random([5, 37], 9);
      const upT = random([5, 37], 2);
      const bound = expBound(1e-6, (i) => gate.data[i]!);
      compare('siluMul', [gate, upT], (b, [g, u]) => {
        const out = b.allocate('f32', g!.shape);
        b.siluMul(g!, u!, out);
        return out;
      }, bound, 1e-37);
      compare('siluMul over gate', [gate, upT], (b, [g, u]) => (b.siluMul(g!, u!, g!), g!), bound, 1e-37);
      compare('siluMul over up', [gate, upT], (b, [g, u]) => (b.siluMul(g!, u!, u!), u!), bound, 1e-37);
    });
  });

  describe('rows', () => {
    // Norms: the sums run in f32 in a tree (the reference sums in double): 2e-6 relative to each element, plus 1e-6
    // absolute for elements near zero: the terms of an element are of order 1 here (x about 3, weights about 2) and
    // layerNorm's bias can cancel them, so 1e-6 is ten ulp of the terms.
    for (const [rows, d] of [[37, 29], [3, 301], [1, 1]] as const) {
      for (const wdtype of ['f32', 'bf16'] as const) {
        it(`rmsNorm and layerNorm of ${rows}×${d}, ${wdtype} weights, out of place and in place`, () => {
          const w = (t: Tensor<'f32'>) => (wdtype === 'bf16' ? bf16Of(t) : t);
          const x = random([rows, d], 3, 0.5);
          const weight = w(random([d], 2));
          const bias = w(random([d], 1));
          compare('rmsNorm', [x, weight], (b, [t, wt]) => {
            const out = b.allocate('f32', t!.shape);
            b.rmsNorm(t!, wt!, 1e-6, out);
            return out;
          }, 2e-6, 1e-6);
          compare('rmsNorm in place', [x, weight], (b, [t, wt]) => (b.rmsNorm(t!, wt!, 1e-6, t!), t!), 2e-6, 1e-6);
          compare('layerNorm', [x, weight, bias], (b, [t, wt, bs]) => {
            const out = b.allocate('f32', t!.shape);
            b.layerNorm(t!, wt!, bs!, 1e-5, out);
            return out;
          }, 2e-6, 1e-6);
          compare('layerNorm in place', [x, weight, bias], (b, [t, wt, bs]) => (b.layerNorm(t!, wt!, bs!, 1e-5, t!), t!), 2e-6, 1e-6);
        });
      }
    }

    // Softmax: exp per element and a sum in f32: 2e-6 relative, 1e-12 absolute for the tiny probabilities.
    it('softmax of odd rows, in place, with a row wider than a workgroup', () => {
      compare('softmax', [random([37, 29], 8)], (b, [t]) => {
        const out = b.allocate('f32', t!.shape);
        b.softmax(t!, out);
        return out;
      }, 2e-6, 1e-12);
      compare('softmax in place', [random([2, 1001], 20)], (b, [t]) => (b.softmax(t!, t!), t!), 2e-6, 1e-12);
    });

    // rope: two products and a sum, which a compiler may fuse into an fma: within 2 ulp of the larger product.
    it('rope on [5, 3, 18] out of place and in place', () => {
      const x = random([5, 3, 18], 2);
      const angles = random([5, 9], 6);
      const cos = Tensor.f32([5, 9], angles.data.map(Math.cos));
      const sin = Tensor.f32([5, 9], angles.data.map(Math.sin));
      compare('rope', [x, cos, sin], (b, [t, c, s]) => {
        const out = b.allocate('f32', t!.shape);
        b.rope(t!, c!, s!, out);
        return out;
      }, 0, 2 * 2 ** -23 * 2);
      compare('rope in place', [x, cos, sin], (b, [t, c, s]) => (b.rope(t!, c!, s!, t!), t!), 0, 2 * 2 ** -23 * 2);
    });

    // mergeBlocks: products by 0.5 are exact and each sum rounds once as the reference's does: bit for bit.
    it('mergeBlocks 2 and 1', () => {
      compare('merge 2', [random([12, 29], 5)], (b, [t]) => {
        const out = b.allocate('f32', [3, 29]);
        b.mergeBlocks(t!, 2, out);
        return out;
      }, 0);
      compare('merge 1', [random([5, 29])], (b, [t]) => {
        const out = b.allocate('f32', [5, 29]);
        b.mergeBlocks(t!, 1, out);
        return out;
      }, 0);
    });

    // embedding: a lookup, bf16 widening and the quantized formats' d·(u − z) (and d·u + m, whose product is exact)
    // are exact in f32: bit for bit. A row of 416 is 13 quantized blocks: a pair of whole chunks, a lone one, a partial one.
    for (const dtype of ['f32', 'bf16', ...QUANT_FORMATS] as const) {
      it(`embedding of an ${dtype} table [37, 416]`, () => {
        const values = random([37, 416], 2);
        const table = dtype === 'f32' ? values : dtype === 'bf16' ? bf16Of(values) : new Tensor(dtype, [37, 416], quantize(dtype, (i) => values.data[i]!, 37, 416));
        const ids = Tensor.i32([11], [0, 36, 5, 5, 17, 33, 2, 34, 35, 1, 20]);
        compare(`embedding ${dtype}`, [table, ids], (b, [t, i]) => {
          const out = b.allocate('f32', [11, 416]);
          b.embedding(t!, i!, out);
          return out;
        }, 0);
      });
    }
  });

  describe('reductions', () => {
    it('argmax: the first index on ties, across first-pass chunks', () => {
      const x = random([9001], 1);
      x.data[7777] = 5;
      x.data[8999] = 5;
      x.data[4100] = 5;
      assert.equal(gpu.argmax(up(x)), ref.argmax(x));
      assert.equal(gpu.argmax(up(x)), 4100);
      const small = Tensor.f32([3], [-Infinity, -Infinity, -Infinity]);
      assert.equal(gpu.argmax(up(small)), 0);
      assert.equal(gpu.argmax(up(Tensor.f32([5], [1, 9, 3, 9, 9]))), 1);
    });

    it('topK: largest first, ties by lower index, any k up to n', () => {
      const x = random([300], 1);
      for (const i of [17, 3, 250, 299]) x.data[i] = 2;
      for (const k of [1, 7, 300]) {
        const a = gpu.topK(up(x), k);
        const e = ref.topK(x, k);
        assert.deepEqual([...a.indices], [...e.indices], `k=${k} indices`);
        assert.deepEqual([...a.values], [...e.values], `k=${k} values`);
      }
      // Past one workgroup's block (1024 pairs): stages across blocks, ties in different blocks, −∞ among the values.
      const long = random([3001], 1);
      for (const i of [2999, 5, 1500, 1024, 1023]) long.data[i] = 3;
      long.data[7] = -Infinity;
      for (const k of [1, 50, 3001]) {
        const a = gpu.topK(up(long), k);
        const e = ref.topK(long, k);
        assert.deepEqual([...a.indices], [...e.indices], `n=3001 k=${k} indices`);
        assert.deepEqual([...a.values], [...e.values], `n=3001 k=${k} values`);
      }
      // All negative, so that a stray zero (a pair read past the sorted length) would show; k = 1 and k = n − 1.
      const negative = random([37], 1, -2);
      for (const k of [1, 5, 9, 36]) assert.deepEqual([...gpu.topK(up(negative), k).indices], [...ref.topK(negative, k).indices], `negative k=${k}`);
      assert.deepEqual([...gpu.topK(up(Tensor.f32([1], [4])), 1).indices], [0]);
      assert.equal(gpu.topK(up(x), 0).indices.length, 0);
    });
  });

  describe('weights past the binding limit', () => {
    // A binding limit of 1 KiB: a [37, 29] f32 table (4292 bytes) becomes pages of 8 rows, an int4 [37, 64] table
    // (36 bytes a row) pages of 28 rows (whole groups of 4).
    it('are split into pages of rows that embedding reads, and download whole', () => {
      const kernels = new WebGpuKernels({ bindingLimit: 1024 });
      const small = new CheckedBackend(kernels);
      try {
        const values = random([37, 64], 2);
        const tables: Tensor[] = [random([37, 29]), bf16Of(random([37, 29])), new Tensor('int4', [37, 64], quantize('int4', (i) => values.data[i]!, 37, 64))];
        const ids = Tensor.i32([4], [36, 0, 8, 27]);
        for (const table of tables) {
          const onDevice = small.upload(table);
          assert.ok((onDevice.storage as WebGpuStorage).pages!.length > 1, `${table} was not split`);
          assert.deepEqual(new Uint8Array((small.download(onDevice).data as Uint8Array).buffer), new Uint8Array((table.data as Uint8Array).buffer), `${table} round trip`);
          const out = small.allocate('f32', [4, table.dim(1)]);
          small.embedding(onDevice, small.upload(ids), out);
          const expected = Tensor.empty('f32', [4, table.dim(1)]);
          ref.embedding(table, ids, expected);
          assert.deepEqual(small.download(out).data, expected.data, `${table} embedding`);
        }
        // matmul reads every page into its own columns (int4 pages hold whole groups of 4 rows), with a bias.
        const x = random([3, 64], 5);
        const bias = random([37], 6);
        const weights = [random([37, 64], 7), bf16Of(random([37, 64], 8)), tables[2]!];
        for (const w of weights) {
          const onDevice = small.upload(w);
          assert.ok((onDevice.storage as WebGpuStorage).pages!.length > 1, `${w} was not split`);
          const out = small.allocate('f32', [3, 37]);
          small.matmul(small.upload(x), onDevice, small.upload(bias), out);
          const expected = Tensor.empty('f32', [3, 37]);
          ref.matmul(x, w, bias, expected);
          // K = 64 f32 products summed in another order: 64·2⁻²⁴ of Σ|x·w| (|x|, |w| ≤ 1) bounds it.
          assertClose(small.download(out).data as Float32Array, expected.data, `${w} matmul`, 0, 64 * 2 ** -24 * 64);
        }
        // Other ops take whole buffers: a split weight is refused by name, never read wrong.
        const split = small.upload(tables[0]!);
        assert.throws(() => small.add(split, split, split), (e: unknown) => e instanceof WebGpuError && e.code === 'limit' && /pages of rows/.test(e.message));
        // An activation is never split: past the limit it is the limit error.
        assert.throws(() => small.allocate('f32', [300]), (e: unknown) => e instanceof WebGpuError && /maxStorageBufferBindingSize = 1024 bytes/.test(e.message));
      } finally {
        kernels.close();
      }
    });
  });

  describe('device memory', () => {
    it('is freed when storages are dropped, though V8 does not see it', async () => {
      const kernels = new WebGpuKernels({ collectAfterBytes: 1 << 20 });
      try {
        const start = kernels.liveBuffers;
        // 8 MiB in 64 KiB tensors, none kept: as requests' KV caches and features are dropped when they end.
        for (let i = 0; i < 128; i++) kernels.allocateStorage(64 * 1024);
        // A full collection ran after every 1 MiB; V8 runs the finalizers of what it found dead in a task of its own,
        // some time after: wait for them (up to a minute, on a loaded machine), then at most the last MiB's 16 live.
        for (let waited = 0; kernels.liveBuffers - start > 32 && waited < 6000; waited++) await new Promise((resolve) => setTimeout(resolve, 10));
        assert.ok(kernels.liveBuffers - start <= 32, `${kernels.liveBuffers - start} of 128 dropped buffers still live`);
        kernels.gpu.sync();
      } finally {
        kernels.close();
      }
    });
  });

  describe('syncs', () => {
    it('reads ids the host wrote without waiting for the device, until the device writes them', () => {
      const kernels = new WebGpuKernels();
      try {
        const ids = kernels.allocateStorage(12);
        const t = new Tensor('i32', [3], ids);
        kernels.write(t, [2, 0, 1]);
        const table = kernels.upload(random([3, 33]));
        const out = new Tensor('f32', [3, 33], kernels.allocateStorage(3 * 33 * 4));
        const before = kernels.gpu.readbacks;
        // The checking layer's id check, and the lookup: no readback.
        assert.deepEqual([...kernels.download(t).data], [2, 0, 1]);
        kernels.write(t.rows(1, 2) as Tensor, [2]);
        assert.deepEqual([...kernels.download(t).data], [2, 2, 1]);
        kernels.embedding(table, t, out);
        assert.equal(kernels.gpu.readbacks, before);
        // A device write (fill, a copy into it) drops the host copy: the next read asks the device.
        kernels.fill(t, 1);
        assert.deepEqual([...kernels.download(t).data], [1, 1, 1]);
        assert.equal(kernels.gpu.readbacks, before + 1);
        kernels.write(t, [0, 1, 2]);
        kernels.copy(kernels.upload(Tensor.i32([3], [2, 2, 2])), t);
        assert.deepEqual([...kernels.download(t).data], [2, 2, 2]);
        assert.equal(kernels.gpu.readbacks, before + 2);
      } finally {
        kernels.close();
      }
    });
  });

  describe('errors', () => {
    it('refuses a buffer past the binding limit or the buffer limit, naming the adapter, the limit and the bytes', () => {
      const { maxStorageBufferBindingSize, maxBufferSize } = gpu.adapter.limits;
      const check = (bytes: number, limit: string) => {
        assert.throws(
          () => gpu.allocateStorage(bytes),
          (e: unknown) => {
            assert.ok(e instanceof WebGpuError, String(e));
            assert.equal(e.code, 'limit');
            assert.match(e.message, new RegExp(`${limit} = \\d+ bytes`));
            assert.ok(e.message.includes(gpu.adapter.name), e.message);
            assert.ok(e.message.includes(`${bytes} bytes`), e.message);
            assert.match(e.message, /--device cpu/);
            return true;
          },
        );
      };
      check(maxStorageBufferBindingSize + 4, 'maxStorageBufferBindingSize');
      check(maxBufferSize + 4, 'maxBufferSize');
      // A tensor just within the binding limit's accounting is made (and freed with its storage).
      assert.equal(gpu.allocateStorage(4096).byteLength, 4096);
    });

    it('runs a kernel that leaves one of its bindings unused (layouts follow the bindings, not the shader)', () => {
      const kernels = new WebGpuKernels();
      try {
        const t = kernels.upload(Tensor.f32([2], [1, 2]));
        const unused = kernels.upload(Tensor.f32([1], [0]));
        kernels.run([
          {
            key: 'unused-binding',
            wgsl: () => `@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
struct U { x: u32 }
@group(0) @binding(2) var<uniform> u: U;
@compute @workgroup_size(1) fn main() { a[1] = f32(u.x); }`,
            buffers: [
              { buffer: sliceOf(t).buffer, write: true },
              { buffer: sliceOf(unused).buffer, write: false },
            ],
            uniforms: Uint32Array.of(5),
            workgroups: [1, 1, 1],
          },
        ]);
        assert.deepEqual([...kernels.download(t).data], [1, 5]);
      } finally {
        kernels.close();
      }
    });

    it('makes the device with the adapter\'s shader-f16 and subgroups, for the kernels that use them', (t) => {
      const kernels = new WebGpuKernels();
      try {
        const wanted = ['shader-f16', 'subgroups'].filter((f) => kernels.adapter.features.includes(f));
        assert.deepEqual([...kernels.features].filter((f) => wanted.includes(f)).sort(), wanted.sort());
        if (wanted.length < 2) return t.skip(`the adapter lacks ${['shader-f16', 'subgroups'].filter((f) => !wanted.includes(f)).join(' and ')}`);
        const out = kernels.upload(Tensor.f32([2], [0, 0]));
        kernels.run([
          {
            key: 'features',
            wgsl: () => `enable f16;
enable subgroups;
@group(0) @binding(0) var<storage, read_write> a: array<f32>;
struct U { x: u32 }
@group(0) @binding(1) var<uniform> u: U;
@compute @workgroup_size(64) fn main(@builtin(local_invocation_index) lid: u32, @builtin(subgroup_size) size: u32) {
  let total = subgroupAdd(1u);
  if (lid == 0u) { a[0] = f32(total == size); a[1] = f32(f16(1.5) * f16(u.x)); }
}`,
            buffers: [{ buffer: sliceOf(out).buffer, write: true }],
            uniforms: Uint32Array.of(3),
            workgroups: [1, 1, 1],
          },
        ]);
        assert.deepEqual([...kernels.download(out).data], [1, 4.5]);
      } finally {
        kernels.close();
      }
    });

    it('reports a kernel WebGPU refuses as a validation error at the next sync, and goes on working', () => {
      const kernels = new WebGpuKernels();
      try {
        const t = kernels.upload(Tensor.f32([3], [1, 2, 3]));
        kernels.run([
          {
            key: 'broken',
            wgsl: () => '@compute @workgroup_size(1) fn main() { let x: f32 = undefined_name; }',
            buffers: [{ buffer: sliceOf(t).buffer, write: true }],
            uniforms: new Uint32Array(1),
            workgroups: [1, 1, 1],
          },
        ]);
        assert.throws(() => kernels.download(t), (e: unknown) => e instanceof WebGpuError && e.code === 'validation' && /undefined_name/.test(e.message));
        assert.deepEqual([...kernels.download(t).data], [1, 2, 3]);
      } finally {
        kernels.close();
      }
    });

    it('a lost device is an error at the next sync, and stays one, never a hang', () => {
      const kernels = new WebGpuKernels();
      try {
        const t = kernels.upload(Tensor.f32([3], [1, 2, 3]));
        kernels.gpu.enqueue({ op: 'destroy-device' });
        const lost = (e: unknown) => e instanceof WebGpuError && e.code === 'device-lost' && e.message.includes(kernels.adapter.name);
        assert.throws(() => kernels.download(t), lost);
        assert.throws(() => kernels.argmax(t), lost);
      } finally {
        kernels.close();
      }
    });

    it('lets the program exit while work is in flight (the device is closed first)', () => {
      // 40 MiB of uploads (a batch is sent at 32 MiB and is being run), then process.exit: without the exit hook
      // Dawn's binding aborts the process (FATAL ERROR … napi_throw, status 134) every time here.
      const backendUrl = new URL('../src/tensor/webgpu/backend.js', import.meta.url).href;
      const tensorUrl = new URL('../src/tensor/tensor.js', import.meta.url).href;
      const script = `
        const { WebGpuBackend } = await import(${JSON.stringify(backendUrl)});
        const { Tensor } = await import(${JSON.stringify(tensorUrl)});
        const b = new WebGpuBackend();
        const w = Tensor.f32([1 << 18], new Float32Array(1 << 18).fill(1));
        for (let i = 0; i < 40; i++) b.upload(w);
        process.exit(7);`;
      const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 120_000 });
      assert.equal(r.status, 7, r.stderr);
    });

    it('refuses work after close', () => {
      const kernels = new WebGpuKernels();
      kernels.close();
      assert.throws(() => kernels.allocateStorage(16), (e: unknown) => e instanceof WebGpuError && e.code === 'device-lost');
    });
  });

  describe('device choice', () => {
    it("auto opens WebGPU only on an adapter that is not a software rasterizer", () => {
      const chosen = backendForDevice('auto');
      try {
        if (chosen.name === 'webgpu') assert.equal((chosen as WebGpuBackend).adapter.software, false);
        else {
          // The device thread opens the first adapter listed: auto passed it over, so it is absent or software.
          const first = WebGpuDevice.list()[0];
          assert.ok(!first || first.software, `auto passed over ${first?.name}`);
        }
      } finally {
        if (chosen instanceof WebGpuBackend) chosen.close();
      }
      assert.equal(gpu.adapter.software, isSoftware(gpu.adapter, false));
    });

    it('vl3 info lists the adapter the backend opens, its limits and features, and what auto picks', () => {
      const cli = new URL('../src/cli/vl3.js', import.meta.url).pathname;
      const r = spawnSync(process.execPath, [cli, 'info', '--json', '--device', 'auto'], { encoding: 'utf8', timeout: 120_000 });
      assert.equal(r.status, 0, r.stderr);
      const info = JSON.parse(r.stdout) as { adapters: { name: string; limits: { maxBufferSize: number }; features: string[] }[]; auto: string; device: string };
      assert.equal(info.adapters[0]!.name, gpu.adapter.name);
      assert.equal(info.adapters[0]!.limits.maxBufferSize, gpu.adapter.limits.maxBufferSize);
      assert.deepEqual(info.adapters[0]!.features, gpu.adapter.features);
      assert.equal(info.auto, gpu.adapter.software ? 'cpu' : 'webgpu');
      assert.equal(info.device, info.auto);
      const text = spawnSync(process.execPath, [cli, 'info'], { encoding: 'utf8', timeout: 120_000 });
      assert.ok(text.stdout.includes(`webgpu    ${gpu.adapter.name}`), text.stdout);
      assert.match(text.stdout, /^auto {6}(webgpu on |cpu \()/m);
    });

    it('counts llvmpipe, lavapipe and SwiftShader as software', () => {
      const info = { vendor: '', architecture: '', device: '', description: '' };
      assert.ok(isSoftware({ ...info, description: 'llvmpipe (LLVM 15.0.6, 256 bits)' }, false));
      assert.ok(isSoftware({ ...info, device: 'SwiftShader Device (Subzero)' }, false));
      assert.ok(isSoftware({ ...info, vendor: 'mesa', description: 'lavapipe' }, false));
      assert.ok(isSoftware(info, true));
      assert.ok(!isSoftware({ vendor: 'nvidia', architecture: 'hopper', device: 'NVIDIA H100', description: 'NVIDIA H100 80GB HBM3' }, false));
    });

    it('load refuses an unknown device, naming the option or $VL3_DEVICE, before reading any file', async () => {
      await assert.rejects(VideoLLaMA3.load('/nonexistent', { device: 'tpu' as never }), (e: unknown) => e instanceof InvalidOptionError && e.option === 'device' && /cpu, webgpu, auto/.test(e.message));
      const saved = process.env.VL3_DEVICE;
      process.env.VL3_DEVICE = 'gpu';
      try {
        await assert.rejects(VideoLLaMA3.load('/nonexistent'), (e: unknown) => e instanceof InvalidOptionError && /\$VL3_DEVICE/.test(e.message));
      } finally {
        if (saved === undefined) delete process.env.VL3_DEVICE;
        else process.env.VL3_DEVICE = saved;
      }
      await assert.rejects(VideoLLaMA3.load('/nonexistent', { device: 'webgpu', backend: 'reference' }), (e: unknown) => e instanceof InvalidOptionError && e.option === 'device');
    });
  });
});
