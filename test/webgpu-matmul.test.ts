// The WGSL matmul plans (GEMV for M ≤ 16, tiled GEMM above) against the reference backend's matmul, on odd sizes, for
// every weight type and compute mode, with and without bias, with operands sharing a buffer and weights in row pages.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ComputeMode } from '../src/tensor/backend.js';
import { f32ToBf16 } from '../src/tensor/dtype.js';
import { createBackend, HostStorage, Tensor } from '../src/tensor/index.js';
import { quantize } from '../src/tensor/quant.js';
import type { BufferRef, Slice } from '../src/tensor/webgpu/dispatch.js';
import { matmulPlan, weightPageRows, type MatmulOperands, type WeightPage, type WeightType } from '../src/tensor/webgpu/kernels/matmul.js';
import type { DeviceTraits } from '../src/tensor/webgpu/kernels/wgsl-common.js';
import { random, suiteGpu } from './webgpu-harness.js';

interface Case {
  M: number;
  N: number;
  K: number;
  wType: WeightType;
  compute: ComputeMode;
  bias: 'f32' | 'bf16' | null;
  /**
   * 'separate': a buffer per operand at offsets not multiples of 16; 'aligned': the same at offsets where x and the
   * weight allow vector loads; 'shared': all in one buffer; 'pages': w in row pages.
   */
  layout?: 'separate' | 'aligned' | 'shared' | 'pages';
  gemmTile?: 64 | 128;
  seed?: number;
}

interface Made {
  x: Float32Array;
  /** The weight's bytes as the backend stores them. */
  w: Uint8Array;
  bias: Uint8Array | null;
  expected: Float32Array;
  /** Per output: Σ_k |x·w|, for the accumulation bound. */
  magnitude: Float32Array;
}

function make(c: Case): Made {
  const rnd = random(c.seed ?? c.M * 7919 + c.N * 31 + c.K);
  const x = Float32Array.from({ length: c.M * c.K }, () => rnd() * 2 - 1);
  const wf = Float32Array.from({ length: c.N * c.K }, () => (rnd() * 2 - 1) * 0.5);
  let w: Tensor;
  if (c.wType === 'f32') w = new Tensor('f32', [c.N, c.K], wf);
  else if (c.wType === 'bf16') w = new Tensor('bf16', [c.N, c.K], Uint16Array.from(wf, f32ToBf16));
  else w = new Tensor(c.wType, [c.N, c.K], quantize(c.wType, (i) => wf[i]!, c.N, c.K));
  const bf = Float32Array.from({ length: c.N }, () => rnd() * 4 - 2);
  const bias = c.bias === 'f32' ? new Tensor('f32', [c.N], bf) : c.bias === 'bf16' ? new Tensor('bf16', [c.N], Uint16Array.from(bf, f32ToBf16)) : null;
  // Quantized weights are multiplied exactly in both modes on WebGPU (matmul.ts says why), so their reference is exact.
  const quant = c.wType !== 'f32' && c.wType !== 'bf16';
  const ref = createBackend('reference', { compute: quant ? 'exact' : c.compute });
  const out = Tensor.empty('f32', [c.M, c.N]);
  ref.matmul(new Tensor('f32', [c.M, c.K], x), w, bias, out);
  const wv = w.toFloat32();
  const magnitude = new Float32Array(c.M * c.N);
  for (let m = 0; m < c.M; m++)
    for (let n = 0; n < c.N; n++) {
      let s = 0;
      for (let k = 0; k < c.K; k++) s += Math.abs(x[m * c.K + k]! * wv[n * c.K + k]!);
      magnitude[m * c.N + n] = s;
    }
  const bytes = (t: Tensor) => new Uint8Array((t.storage as HostStorage).buffer as ArrayBuffer, t.byteOffset, t.byteLength);
  return { x, w: bytes(w), bias: bias ? bytes(bias) : null, expected: out.data as Float32Array, magnitude };
}

/**
 * Both the reference and the kernel sum K products in f32, in different orders: each is within K·2⁻²⁴·Σ|x·w| of the
 * exact sum, so they differ by at most twice that, plus one rounding of the bias addition. A kernel that drops or
 * misplaces one product is off by about Σ|x·w|/K, far more for the K used here (≤ 160).
 */
function assertClose(got: Float32Array, made: Made, K: number, what: string): void {
  for (let i = 0; i < got.length; i++) {
    const tol = 2 * K * 2 ** -24 * made.magnitude[i]! + 2 ** -23 * Math.abs(made.expected[i]!) + 1e-30;
    const err = Math.abs(got[i]! - made.expected[i]!);
    if (!(err <= tol)) assert.fail(`${what}: element ${i} is ${got[i]}, expected ${made.expected[i]} (error ${err} > ${tol})`);
  }
}

const align = (n: number, a: number) => Math.ceil(n / a) * a;

describe('WebGPU matmul kernels', () => {
  const device = suiteGpu();

  /** Places the operands as the case's layout says, runs the plan, returns out. */
  /** The pipeline keys of the last `run`'s plan: which variants it took. */
  let lastKeys: string[] = [];
  async function run(c: Case, made: Made, t: DeviceTraits = device.traits): Promise<Float32Array> {
    const wBytes = made.w.byteLength;
    const outBytes = c.M * c.N * 4;
    // Offsets that are not multiples of 16 (and a bf16 weight or bias at 2 mod 4) exercise the uniform offsets.
    const aligned = c.layout === 'aligned';
    const xOff = aligned ? 16 : 12;
    const wOff = aligned ? (c.wType === 'bf16' ? 8 : 16) : c.wType === 'f32' ? 4 : c.wType === 'bf16' ? 6 : 5;
    const bOff = c.bias === 'bf16' ? 2 : 8;
    const oOff = 20;
    let x: Slice, w: Slice | WeightPage[], bias: Slice | null, out: Slice;
    const bufferWith = (at: number, data: Uint8Array): BufferRef => {
      const bytes = new Uint8Array(at + data.byteLength);
      bytes.set(data, at);
      return device.gpu.buffer(bytes.byteLength, bytes);
    };
    const xBytes = new Uint8Array(made.x.buffer, made.x.byteOffset, made.x.byteLength);
    if (c.layout === 'shared') {
      const xAt = xOff;
      const wAt = align(xAt + xBytes.byteLength, 4) + (wOff % 4);
      const bAt = align(wAt + wBytes, 4) + (bOff % 4);
      const oAt = align(bAt + (made.bias?.byteLength ?? 0), 4) + 4;
      const all = new Uint8Array(oAt + outBytes);
      all.set(xBytes, xAt);
      all.set(made.w, wAt);
      if (made.bias) all.set(made.bias, bAt);
      all.fill(0x7f, oAt);
      const buf = device.gpu.buffer(all.byteLength, all);
      x = { buffer: buf, byteOffset: xAt };
      w = { buffer: buf, byteOffset: wAt };
      bias = made.bias ? { buffer: buf, byteOffset: bAt } : null;
      out = { buffer: buf, byteOffset: oAt };
    } else {
      x = { buffer: bufferWith(xOff, xBytes), byteOffset: xOff };
      bias = made.bias ? { buffer: bufferWith(bOff, made.bias), byteOffset: bOff } : null;
      out = { buffer: device.gpu.buffer(oOff + outBytes), byteOffset: oOff };
      if (c.layout === 'pages') {
        // Three pages of unequal rows (multiples of 4 but the last, as quantized pages must be), each in its own buffer.
        const rows = [align(Math.ceil(c.N / 3), 4), align(Math.ceil(c.N / 4), 4)];
        rows.push(c.N - rows[0]! - rows[1]!);
        const rowBytes = wBytes / c.N;
        let row = 0;
        w = rows.map((r) => {
          const page = made.w.subarray(row * rowBytes, (row + r) * rowBytes);
          row += r;
          return { slice: { buffer: bufferWith(wOff, page), byteOffset: wOff }, rows: r };
        });
      } else {
        w = { buffer: bufferWith(wOff, made.w), byteOffset: wOff };
      }
    }
    const o: MatmulOperands = { x, w, wType: c.wType, bias, biasType: c.bias ?? 'f32', out, M: c.M, N: c.N, K: c.K, compute: c.compute, gemmTile: c.gemmTile };
    const plan = matmulPlan(t, o);
    lastKeys = plan.map((d) => d.key);
    await device.gpu.errors(() => device.gpu.run(plan));
    return new Float32Array(await device.gpu.read(out.buffer, out.byteOffset, outBytes));
  }

  async function check(c: Case, t: DeviceTraits = device.traits): Promise<void> {
    const made = make(c);
    const got = await run(c, made, t);
    assertClose(got, made, c.K, `${c.M}×${c.N}×${c.K} ${c.wType} ${c.compute} bias ${c.bias} ${c.layout ?? 'separate'}`);
  }

  for (const wType of ['f32', 'bf16', 'int8', 'int4', 'int4m'] as const) {
    const quant = wType !== 'f32' && wType !== 'bf16';
    it(`${wType} weights: GEMV and GEMM on odd sizes, each compute mode, each bias`, async () => {
      // Quantized k of 416 (13 blocks): a pair of whole chunks, a lone whole chunk and a partial one.
      const sizes = quant
        ? [
            [1, 37, 64],
            [5, 29, 96],
            [70, 133, 160],
            [1, 37, 416],
            [66, 21, 416],
          ]
        : [
            [1, 37, 64],
            [5, 29, 96],
            [3, 29, 37],
            [70, 133, 160],
            [40, 33, 37],
          ];
      const computes: ComputeMode[] = quant ? ['exact'] : ['exact', 'bf16'];
      for (const [M, N, K] of sizes)
        for (const compute of computes)
          for (const bias of [null, 'f32', 'bf16'] as const) await check({ M: M!, N: N!, K: K!, wType, compute, bias });
    });
  }

  it('the GEMM with 128×128 tiles (chosen for large matrices)', async () => {
    // Its weight loads are the 64-tile GEMM's (tested above for every format); int4 and int4m are left out here only
    // because llvmpipe takes tens of seconds to compile this kernel with their decoding.
    for (const wType of ['f32', 'bf16', 'int8'] as const) {
      await check({ M: 150, N: 131, K: 64, wType, compute: 'exact', bias: 'f32', gemmTile: 128 });
      await check({ M: 17, N: 260, K: 96, wType, compute: 'exact', bias: null, gemmTile: 128, layout: 'pages' });
    }
    await check({ M: 131, N: 133, K: 37, wType: 'f32', compute: 'bf16', bias: 'bf16', gemmTile: 128 });
    await check({ M: 129, N: 45, K: 37, wType: 'bf16', compute: 'bf16', bias: null, gemmTile: 128, layout: 'shared' });
  });

  it('quantized weights ignore the compute mode (exactly dequantized in both)', async () => {
    await check({ M: 3, N: 21, K: 64, wType: 'int4m', compute: 'bf16', bias: 'f32' });
    await check({ M: 33, N: 21, K: 64, wType: 'int8', compute: 'bf16', bias: null });
  });

  it('operands sharing one buffer (x, w, bias and out at different offsets)', async () => {
    for (const wType of ['f32', 'bf16', 'int4'] as const)
      for (const [M, N, K] of [
        [5, 29, 96],
        [70, 45, 64],
      ])
        await check({ M: M!, N: N!, K: K!, wType, compute: 'exact', bias: 'bf16', layout: 'shared' });
    await check({ M: 2, N: 13, K: 37, wType: 'f32', compute: 'bf16', bias: null, layout: 'shared' });
  });

  it('weights in row pages, each in its own buffer', async () => {
    for (const wType of ['f32', 'bf16', 'int8', 'int4m'] as const) {
      await check({ M: 3, N: 29, K: 64, wType, compute: 'exact', bias: 'f32', layout: 'pages' });
      await check({ M: 19, N: 70, K: 32, wType, compute: 'exact', bias: null, layout: 'pages' });
    }
  });

  it('pages a weight past maxStorageBufferBindingSize (whole row groups for packed weights)', () => {
    const t = { ...device.traits, maxStorageBufferBindingSize: 128 << 20 };
    // The 2B model's tied LM head, 151936 × 1536: 445 MiB in bf16.
    assert.equal(weightPageRows(t, 'bf16', 151936, 1536), Math.floor(((128 << 20) - 4) / 3072));
    assert.equal(weightPageRows(t, 'int4', 151936, 1536), 151936);
    // 14705 rows of 68 bytes would fit 1000000 bytes; a packed page ends on a row group.
    assert.equal(weightPageRows({ ...t, maxStorageBufferBindingSize: 1000000 }, 'int8', 20000, 64), 14704);
    assert.equal(weightPageRows(t, 'f32', 37, 64), 37);
    assert.throws(() => weightPageRows({ ...t, maxStorageBufferBindingSize: 100 }, 'f32', 3, 32), /maxStorageBufferBindingSize/);
  });

  it('refuses, naming the limit, a buffer past the binding limit and a packed page that splits a row group', () => {
    const at = (id: number, byteLength: number): Slice => ({ buffer: { id, byteLength }, byteOffset: 0 });
    const o: MatmulOperands = { x: at(1, 4096), w: at(2, 1 << 20), wType: 'int4', bias: null, biasType: 'f32', out: at(3, 4096), M: 1, N: 64, K: 64, compute: 'exact' };
    assert.throws(() => matmulPlan({ ...device.traits, maxStorageBufferBindingSize: 1 << 19 }, o), /maxStorageBufferBindingSize \(524288\).*row pages/);
    const pages = [
      { slice: at(2, 4096), rows: 30 },
      { slice: at(4, 4096), rows: 34 },
    ];
    assert.throws(() => matmulPlan(device.traits, { ...o, w: pages }), /30 rows, not a multiple of 4/);
    assert.throws(() => matmulPlan(device.traits, { ...o, w: pages.slice(1) }), /34 rows, not 64/);
  });

  it('splits a grid past maxComputeWorkgroupsPerDimension into two dimensions', async () => {
    const small = { ...device.traits, maxWorkgroupsPerDimension: 5 };
    for (const c of [
      { M: 2, N: 45, K: 64, wType: 'bf16', compute: 'exact', bias: 'f32' },
      { M: 130, N: 200, K: 32, wType: 'int4', compute: 'exact', bias: null },
    ] as Case[]) {
      const made = make(c);
      const plan = matmulPlan(small, {
        x: { buffer: { id: 0, byteLength: 1 << 20 }, byteOffset: 0 },
        w: { buffer: { id: 1, byteLength: 1 << 20 }, byteOffset: 0 },
        wType: c.wType,
        bias: null,
        biasType: 'f32',
        out: { buffer: { id: 2, byteLength: 1 << 20 }, byteOffset: 0 },
        M: c.M,
        N: c.N,
        K: c.K,
        compute: 'exact',
      });
      assert.ok(plan.every((d) => d.workgroups.every((g) => g <= 5)) && plan.some((d) => d.workgroups[1] > 1));
      assertClose(await run(c, made, small), made, c.K, `${c.M}×${c.N}×${c.K} on a 5-wide grid`);
    }
  });

  it('vector loads where x and the weight are aligned (and K a multiple of 4), scalar loads elsewhere', async () => {
    for (const wType of ['f32', 'bf16'] as const)
      for (const [M, N, K] of [
        [3, 29, 96],
        [40, 33, 68],
      ])
        for (const compute of ['exact', 'bf16'] as const) {
          await check({ M: M!, N: N!, K: K!, wType, compute, bias: 'bf16', layout: 'aligned' });
          assert.ok(lastKeys.every((k) => k.includes('-xv') && k.includes('-wv')), `aligned ${wType}: ${lastKeys.join()}`);
          // x at byte 12 and w at 4 (f32) or 6 (bf16, 2 mod 4): the scalar loads.
          await check({ M: M!, N: N!, K: K!, wType, compute, bias: null });
          assert.ok(lastKeys.every((k) => !k.includes('-xv') && !k.includes('-wv')), `misaligned ${wType}: ${lastKeys.join()}`);
        }
    // K = 37: rows start off the vector even where the operands' offsets are aligned.
    await check({ M: 5, N: 29, K: 37, wType: 'f32', compute: 'exact', bias: null, layout: 'aligned' });
    assert.ok(lastKeys.every((k) => !k.includes('-xv') && !k.includes('-wv')), lastKeys.join());
    // Quantized weights keep their byte reads; x alone is vectorised.
    await check({ M: 70, N: 45, K: 64, wType: 'int8', compute: 'exact', bias: 'f32', layout: 'aligned' });
    assert.ok(lastKeys.every((k) => k.includes('-xv') && !k.includes('-wv')), lastKeys.join());
  });

  it('the GEMV reduces with subgroups where the device has them, and in workgroup memory where told it has not', async () => {
    const noSubgroups = { ...device.traits, subgroups: false };
    for (const wType of ['f32', 'bf16', 'int4m'] as const)
      for (const layout of ['separate', 'aligned'] as const) {
        const c: Case = { M: 5, N: 29, K: 96, wType, compute: 'exact', bias: 'f32', layout };
        await check(c);
        assert.equal(lastKeys[0]!.includes('-sg'), device.traits.subgroups, lastKeys[0]);
        await check(c, noSubgroups);
        assert.ok(!lastKeys[0]!.includes('-sg'), lastKeys[0]);
      }
  });

  it('M ≤ 16: every row of out has the bits it gets alone', async () => {
    for (const t of [device.traits, { ...device.traits, subgroups: false }])
      for (const [wType, compute, K] of [
        ['f32', 'exact', 96],
        ['bf16', 'bf16', 37],
        ['int4', 'exact', 64],
        ['int8', 'exact', 128],
      ] as const) {
        const N = 23;
        for (const M of [5, 16]) {
          const batch: Case = { M, N, K, wType, compute, bias: 'f32', seed: 99 };
          const made = make(batch);
          const together = await run(batch, made, t);
          for (let m = 0; m < M; m++) {
            const one: Made = { ...made, x: made.x.subarray(m * K, (m + 1) * K) };
            const alone = await run({ ...batch, M: 1 }, one, t);
            const a = new Uint32Array(alone.buffer);
            const b = new Uint32Array(together.buffer, m * N * 4, N);
            assert.deepEqual([...b], [...a], `${wType} ${compute} M=${M} subgroups ${t.subgroups}: row ${m} differs from the same row alone`);
          }
        }
      }
  });

  it('the tolerance tells the compute modes apart (a kernel that forgot to round would fail)', async () => {
    // The exact-mode kernel's output against the bf16-mode reference: x unrounded is a real, detected error.
    for (const [M, N, K] of [
      [4, 29, 96],
      [70, 33, 160],
    ]) {
      const c: Case = { M: M!, N: N!, K: K!, wType: 'f32', compute: 'exact', bias: null };
      const got = await run(c, make(c));
      assert.throws(() => assertClose(got, make({ ...c, compute: 'bf16' }), c.K, 'exact against bf16'));
    }
  });
});
