// Every gradient kernel plan (src/tensor/webgpu/kernels/gradients*.ts) run on a WebGPU device (lavapipe here) against
// the TypeScript definition of its op (hostGradients), on odd sizes, with operands sharing buffers where the op allows.
// Tolerances: the reference sums in f64, the kernels in f32 in another order, so a result may differ by a few ulps
// of the sum of its terms' magnitudes; each check is stated against that scale, and a wrong term is far above it.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { AdamWHyper } from '../src/tensor/backend.js';
import { f32ToBf16 } from '../src/tensor/dtype.js';
import { fma32 } from '../src/tensor/fma32.js';
import { hostGradients } from '../src/tensor/host-gradients.js';
import { Tensor } from '../src/tensor/tensor.js';
import type { BufferRef, Slice } from '../src/tensor/webgpu/dispatch.js';
import type { DeviceTraits } from '../src/tensor/webgpu/kernels/gradients.js';
import * as k from '../src/tensor/webgpu/kernels/gradients.js';
import { dispatch, u32u } from '../src/tensor/webgpu/kernels/gradients-common.js';
import { random, suiteGpu, type TestGpu } from './webgpu-harness.js';

/** Uniform in [−0.5, 0.5). */
function centred(seed: number): () => number {
  const r = random(seed);
  return () => r() - 0.5;
}

const values = (n: number, rnd: () => number, scale = 1) => Float32Array.from({ length: n }, () => rnd() * 2 * scale);
const t32 = (shape: number[], data: Float32Array) => new Tensor('f32', shape, data);
const bf16Bits = (data: Float32Array) => Uint16Array.from(data, (v) => f32ToBf16(v));

/** |got − want| ≤ tol · scale[i] element for element (scale: the magnitude the error is relative to). */
function assertClose(name: string, got: Float32Array, want: Float32Array, tol: number, scale: ArrayLike<number> | number): void {
  assert.equal(got.length, want.length, `${name}: length`);
  for (let i = 0; i < want.length; i++) {
    const s = typeof scale === 'number' ? scale : scale[i]!;
    const err = Math.abs(got[i]! - want[i]!);
    if (!(err <= tol * s)) assert.fail(`${name}[${i}]: got ${got[i]}, want ${want[i]} (error ${err} > ${tol} · ${s})`);
  }
}

const maxAbs = (a: ArrayLike<number>) => Array.from(a).reduce((m, v) => Math.max(m, Math.abs(v)), 0);

describe('WebGPU gradient kernels against hostGradients', () => {
  const device = suiteGpu();

  /** One buffer holding each array at a 16-byte-aligned offset after a little padding: slices into one buffer. */
  function pack(...parts: ArrayBufferView[]): { buffer: BufferRef; slices: Slice[] } {
    const offsets: number[] = [];
    let at = 12; // an offset no binding alignment would allow, so the kernels' offsets are exercised
    for (const p of parts) {
      offsets.push(at);
      at += Math.ceil(p.byteLength / 4) * 4 + 8;
    }
    const bytes = new Uint8Array(at);
    parts.forEach((p, i) => bytes.set(new Uint8Array(p.buffer, p.byteOffset, p.byteLength), offsets[i]));
    const buffer = device.gpu.buffer(at, bytes);
    return { buffer, slices: offsets.map((byteOffset) => ({ buffer, byteOffset })) };
  }
  const own = (data: ArrayBufferView): Slice => ({ buffer: device.gpu.buffer(data.byteLength, data), byteOffset: 0 });
  /** A weight 2 bytes into its buffer: bf16 weights then start in the high half of a word. */
  const weightAt2 = (data: ArrayBufferView): Slice => {
    const bytes = new Uint8Array(data.byteLength + 2);
    bytes.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), 2);
    return { buffer: device.gpu.buffer(bytes.length, bytes), byteOffset: 2 };
  };
  const weightSlice = (t: Tensor): Slice => (t.dtype === 'bf16' ? weightAt2(t.data) : own(t.data));
  const readF32 = async (s: Slice, n: number) => new Float32Array(await device.gpu.read(s.buffer, s.byteOffset, n * 4));
  // Pipelines are cached by key, so a key must always name the same code: every dispatch is checked for it.
  const codeOfKey = new Map<string, string>();
  const run = (d: Parameters<TestGpu['run']>[0]) => {
    for (const x of d) {
      const code = x.wgsl();
      const known = codeOfKey.get(x.key);
      if (known !== undefined && known !== code) assert.fail(`key ${x.key} names two different modules`);
      codeOfKey.set(x.key, code);
    }
    return device.gpu.errors(() => device.gpu.run(d));
  };

  it('fma32 (WGSL) rounds once, as fma32.ts: random, cancelling and tiny products, subnormal results', async () => {
    const rnd = centred(7);
    const n = 3 * 4096;
    const [a, b, c] = [new Float32Array(n), new Float32Array(n), new Float32Array(n)];
    const pow = (lo: number, hi: number) => 2 ** Math.floor(lo + (rnd() + 0.5) * (hi - lo));
    for (let i = 0; i < n; i++) {
      a[i] = rnd() * 2;
      b[i] = rnd() * 2;
      const kind = i % 4;
      if (kind === 0) {
        a[i] *= pow(-20, 20);
        b[i] *= pow(-20, 20);
        c[i] = rnd() * pow(-30, 30);
      } else if (kind === 1) {
        // c cancels the rounded product, leaving its rounding error (and a little more) to be rounded.
        c[i] = -Math.fround(a[i]! * b[i]!) * (1 + rnd() * 2 ** -20);
      } else if (kind === 2) {
        // Products below 2^-60: the scaled path, or c alone.
        a[i] *= pow(-45, -35);
        b[i] *= pow(-45, -35);
        c[i] = rnd() * pow(-90, -20);
      } else {
        // Results near and below 2^-126 (subnormal), c sometimes subnormal itself or cancelling the product.
        a[i] *= pow(-70, -60);
        b[i] *= pow(-70, -60);
        c[i] = i % 8 === 3 ? -Math.fround(a[i]! * b[i]!) * (1 + rnd() * 2 ** -10) : rnd() * pow(-135, -120);
      }
    }
    const want = Uint32Array.from({ length: n }, (_, i) => new Uint32Array(Float32Array.of(fma32(a[i]!, b[i]!, c[i]!)).buffer)[0]!);
    const out = own(new Float32Array(n));
    await run([
      dispatch(device.traits, {
        op: 'test.fma32',
        operands: [
          { name: 'a', slice: own(a), elem: 'f32' },
          { name: 'b', slice: own(b), elem: 'f32' },
          { name: 'c', slice: own(c), elem: 'f32' },
          { name: 'out', slice: out, elem: 'f32', write: true },
        ],
        uniforms: { n: u32u(n), zero: u32u(0) },
        body: `${k.FMA32_WGSL}
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3u) {
  if (id.x < u.n) { st_out(id.x, fma32(ld_a(id.x), ld_b(id.x), ld_c(id.x))); }
}`,
        workgroups: [n / 64, 1, 1],
      }),
    ]);
    const got = new Uint32Array((await readF32(out, n)).buffer);
    const wrong = [...got.keys()].filter((i) => got[i] !== want[i]);
    assert.deepEqual(wrong.slice(0, 5).map((i) => [a[i], b[i], c[i]]), [], `${wrong.length} of ${n} differ`);
  });

  it('divRN and sqrtRN round correctly, also from a device result a few ulps off', async () => {
    const rnd = centred(8);
    const n = 4096;
    const f = Math.fround;
    const bitsOf = (x: number) => new Uint32Array(Float32Array.of(x).buffer)[0]!;
    const pow = (lo: number, hi: number) => 2 ** Math.floor(lo + (rnd() + 0.5) * (hi - lo));
    // Wide-range operands for the whole functions; operands in [1, 2) (or [1, 4)) with starts up to 3 ulps off for
    // the corrections, as a device with inexact division or sqrt would hand them.
    const a = Float32Array.from({ length: n }, () => rnd() * pow(-60, 60));
    const b = Float32Array.from({ length: n }, () => (rnd() + 0.5 + 1e-3) * pow(-30, 10));
    const x = Float32Array.from({ length: n }, () => (rnd() + 0.5) * pow(-100, 100));
    const as = Float32Array.from({ length: n }, () => 1 + rnd() + 0.5);
    const xs = Float32Array.from({ length: n }, () => 1 + 3 * (rnd() + 0.5));
    const off = Int32Array.from({ length: n }, (_, i) => (i % 7) - 3);
    const qStart = Float32Array.from(as, (v, i) => new Float32Array(Uint32Array.of(bitsOf(f(v / b[i]!)) + off[i]!).buffer)[0]!);
    const sStart = Float32Array.from(xs, (v, i) => new Float32Array(Uint32Array.of(bitsOf(f(Math.sqrt(v))) + off[i]!).buffer)[0]!);
    const bAbs = b.map(Math.abs);
    const outs = [0, 1, 2, 3].map(() => own(new Float32Array(n)));
    const inputs = { a, b, x, as, xs, bAbs, qs: qStart, ss: sStart };
    const ins = Object.entries(inputs).map(([name, v]) => ({ name, slice: own(v), elem: 'f32' as const }));
    await run([
      dispatch(device.traits, {
        op: 'test.divSqrt',
        operands: [...ins, ...outs.map((slice, i) => ({ name: `o${i}`, slice, elem: 'f32' as const, write: true }))],
        uniforms: { n: u32u(n), zero: u32u(0) },
        body: `${k.FMA32_WGSL}
${k.DIV_SQRT_WGSL}
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3u) {
  let i = id.x;
  if (i >= u.n) { return; }
  st_o0(i, divRN(ld_a(i), ld_b(i)));
  st_o1(i, sqrtRN(ld_x(i)));
  st_o2(i, divFix(ld_as(i), ld_bAbs(i), ld_qs(i)));
  st_o3(i, sqrtFix(ld_xs(i), ld_ss(i)));
}`,
        workgroups: [n / 64, 1, 1],
      }),
    ]);
    const want = [
      Float32Array.from(a, (v, i) => f(v / b[i]!)),
      Float32Array.from(x, (v) => f(Math.sqrt(v))),
      Float32Array.from(as, (v, i) => f(v / bAbs[i]!)),
      Float32Array.from(xs, (v) => f(Math.sqrt(v))),
    ];
    for (const [i, label] of ['divRN', 'sqrtRN', 'divFix', 'sqrtFix'].entries()) {
      const got = await readF32(outs[i]!, n);
      const wrong = [...got.keys()].filter((j) => bitsOf(got[j]!) !== bitsOf(want[i]![j]!));
      assert.equal(wrong.length, 0, `${label}: ${wrong.length} of ${n} differ, e.g. element ${wrong[0]}`);
    }
  });

  it('refuses a buffer over the binding limit and a grid over the workgroup limit, naming them', () => {
    const small = { ...device.traits, maxStorageBufferBindingSize: 1 << 20 };
    const big: Slice = { buffer: { id: 1 << 30, byteLength: 2 << 20 }, byteOffset: 0 };
    const fine: Slice = { buffer: { id: (1 << 30) + 1, byteLength: 1024 }, byteOffset: 0 };
    assert.throws(
      () => k.geluBackwardPlan(small, { dy: big, x: fine, dx: fine, n: 10, approximation: 'tanh' }),
      /operand dy lies in a buffer of 2097152 bytes, over the adapter's maxStorageBufferBindingSize \(1048576\)/,
    );
    const tiny = { ...device.traits, maxWorkgroupsPerDimension: 4 };
    const gelu = (n: number) => k.geluBackwardPlan(tiny, { dy: fine, x: fine, dx: fine, n, approximation: 'tanh' });
    assert.throws(() => gelu(256 * 65), /maxComputeWorkgroupsPerDimension/);
    assert.equal(gelu(256 * 64)[0]!.workgroups.join(), '4,4,4');
  });

  it('gives the same bits when run again (no order-dependent sums)', async () => {
    const rnd = centred(123);
    const [T, S, Hq, Hkv, D] = [7, 9, 4, 2, 38];
    const [n, H, V] = [6, 45, 130];
    const inputs = [T * Hq * D, S * Hkv * D, S * Hkv * D, T * Hq * D, n * H, V * H].map((m) => values(m, rnd));
    const targets = Int32Array.from({ length: n }, (_, i) => (i * 37) % V);
    const lnWeight = values(H, rnd);
    const outputs = async () => {
      const [q, kk, v, dout, hidden, head] = inputs.map((a) => own(a)) as [Slice, Slice, Slice, Slice, Slice, Slice];
      const [dq, dk, dv] = [T * Hq * D, S * Hkv * D, S * Hkv * D].map((m) => own(new Float32Array(m))) as [Slice, Slice, Slice];
      const [losses, dhidden, dhead, scratch, dx] = [n, n * H, V * H, 300, n * H].map((m) => own(new Float32Array(m))) as [
        Slice,
        Slice,
        Slice,
        Slice,
        Slice,
      ];
      const options = { scale: 0.3, causal: true };
      await run([
        ...k.attentionBackwardPlan(device.traits, { q, k: kk, v, dout, dq, dk, dv, T, S, Hq, Hkv, D, options }),
        ...k.crossEntropyTiledPlan(device.traits, {
          ...{ hidden, head, headType: 'f32', targets: own(targets), scale: 0.5, losses, dhidden, dhead, n, H, V },
          ...{ scratch, scratchBytes: 1200 },
        }),
        ...k.layerNormBackwardPlan(device.traits, {
          ...{ dy: dhidden, x: hidden, weight: own(lnWeight), weightType: 'f32', eps: 1e-6, dx },
          ...{ dweight: own(new Float32Array(H)), dbias: null, rows: n, cols: H },
        }),
      ]);
      const all = await Promise.all([dq, dk, dv, losses, dhidden, dhead, dx].map((s) => device.gpu.read(s.buffer)));
      return all.map((b) => Buffer.from(b).toString('base64'));
    };
    assert.deepEqual(await outputs(), await outputs());
  });

  // The device's own limits, then at most 8 workgroups per dimension, so that every plan's
  // grid folding (over y, and over z beyond 64 workgroups) runs.
  for (const tight of [false, true]) {
    const limits = (): DeviceTraits => (tight ? { ...device.traits, maxWorkgroupsPerDimension: 8 } : device.traits);
    describe(tight ? 'at most 8 workgroups per dimension' : 'the device limits', () => {
      describe('adamw', () => {
        // Gradients of 1e-2; of 1e-15 (w2·g² then falls below 2^-60, fma32's scaled path); of 1e-38 (subnormal moments).
        const cases: [string, AdamWHyper, number][] = [
          ['weight decay', { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 }, 1e-2],
          ['no weight decay', { lr: 2e-5, beta1: 0.9, beta2: 0.95, eps: 1e-6, weightDecay: 0 }, 1e-2],
          ['tiny gradients', { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 }, 1e-15],
          ['subnormal moments', { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 }, 1e-38],
        ];
        for (const [name, hyper, gscale] of cases) {
          it(`gives the definition's bits over five steps (${name})`, async () => {
            const rnd = centred(11);
            const n = 3 * 37 * 29;
            const p = values(n, rnd);
            const m = new Float32Array(n);
            const v = new Float32Array(n);
            // p, m and v share one buffer, g has its own: both binding maps run.
            const { slices } = pack(p, m, v);
            const [ps, ms, vs] = slices as [Slice, Slice, Slice];
            const pt = t32([n], p.slice());
            const mt = t32([n], m.slice());
            const vt = t32([n], v.slice());
            for (let step = 1; step <= 5; step++) {
              const g = values(n, rnd).map((x) => Math.sign(x) * (0.5 + Math.abs(x)) * gscale * step);
              await run(k.adamwPlan(limits(), { p: ps, g: own(g), m: ms, v: vs, n, step, hyper }));
              hostGradients.adamw(pt, t32([n], g), mt, vt, step, hyper);
            }
            for (const [label, s, want] of [['p', ps, pt], ['m', ms, mt], ['v', vs, vt]] as const) {
              const got = await readF32(s, n);
              const wantBits = new Uint32Array((want.data as Float32Array).buffer);
              const gotBits = new Uint32Array(got.buffer);
              let off = 0;
              for (let i = 0; i < n; i++) if (gotBits[i] !== wantBits[i]) off++;
              assert.equal(off, 0, `${label}: ${off} of ${n} elements differ from the definition's bits`);
            }
          });
        }
      });

      describe('matmulBackward', () => {
        const cases = [
          { M: 7, N: 67, K: 93, weight: 'f32', compute: 'exact' },
          { M: 70, N: 37, K: 41, weight: 'bf16', compute: 'exact' },
          { M: 5, N: 66, K: 37, weight: 'f32', compute: 'bf16' },
          { M: 3, N: 41, K: 96, weight: 'bf16', compute: 'bf16' },
        ] as const;
        for (const { M, N, K, weight, compute } of cases) {
          it(`${M}×${K} by ${N}×${K}, ${weight} weight, ${compute} compute`, async () => {
            const rnd = centred(M * 1000 + N + K);
            const dy = values(M * N, rnd);
            const x = values(M * K, rnd);
            const wf = values(N * K, rnd);
            const dw0 = values(N * K, rnd);
            const db0 = values(N, rnd);
            const w = weight === 'bf16' ? new Tensor('bf16', [N, K], bf16Bits(wf)) : t32([N, K], wf);
            const abs = (a: Float32Array) => a.map(Math.abs);
            const wAbs = weight === 'bf16' ? new Tensor('bf16', [N, K], bf16Bits(wf).map((b) => b & 0x7fff)) : t32([N, K], abs(wf));
            const want = { dx: new Float32Array(M * K), dw: dw0.slice(), db: db0.slice() };
            hostGradients.matmulBackward(t32([M, N], dy), t32([M, K], x), w, t32([M, K], want.dx), t32([N, K], want.dw), t32([N], want.db), compute);
            // Σ |terms| of each result (and what it was added to): f32 sums of L terms are within L·2⁻²⁴ of that.
            const mag = { dx: new Float32Array(M * K), dw: abs(dw0), db: abs(db0) };
            const magOut = [t32([M, K], mag.dx), t32([N, K], mag.dw), t32([N], mag.db)] as const;
            hostGradients.matmulBackward(t32([M, N], abs(dy)), t32([M, K], abs(x)), wAbs, ...magOut, compute);
            // dy and x share a buffer, dx and dbias another.
            const inputs = pack(dy, x);
            const outputs = pack(new Float32Array(M * K), db0);
            const dw = own(dw0);
            const wSlice = weightSlice(w);
            await run(
              k.matmulBackwardPlan(limits(), {
                dy: inputs.slices[0]!,
                x: inputs.slices[1]!,
                w: wSlice,
                weightType: weight,
                dx: outputs.slices[0]!,
                dw,
                dbias: outputs.slices[1]!,
                M,
                N,
                K,
                compute,
              }),
            );
            assertClose('dx', await readF32(outputs.slices[0]!, M * K), want.dx, (N + 1) * 2 ** -24, mag.dx);
            assertClose('dw', await readF32(dw, N * K), want.dw, (M + 1) * 2 ** -24, mag.dw);
            assertClose('dbias', await readF32(outputs.slices[1]!, N), want.db, (M + 1) * 2 ** -24, mag.db);
          });
        }

        it('runs a weight split by rows as one plan per piece', async () => {
          const [M, N, K, n1] = [5, 70, 39, 29];
          const rnd = centred(77);
          const dy = values(M * N, rnd);
          const x = values(M * K, rnd);
          const w = values(N * K, rnd);
          const dw0 = values(N * K, rnd);
          const db0 = values(N, rnd);
          const want = { dx: new Float32Array(M * K), dw: dw0.slice(), db: db0.slice() };
          const wantOut = [t32([M, K], want.dx), t32([N, K], want.dw), t32([N], want.db)] as const;
          hostGradients.matmulBackward(t32([M, N], dy), t32([M, K], x), t32([N, K], w), ...wantOut);
          const dys = own(dy);
          const xs = own(x);
          const dx = own(new Float32Array(M * K));
          const pieces = [
            [0, n1],
            [n1, N],
          ] as const;
          const outs = pieces.map(([n0, n]) => ({ dw: own(dw0.subarray(n0 * K, n * K)), db: own(db0.subarray(n0, n)) }));
          await run(
            pieces.flatMap(([n0, n], i) =>
              k.matmulBackwardPlan(limits(), {
                dy: { buffer: dys.buffer, byteOffset: n0 * 4 },
                x: xs,
                w: own(w.subarray(n0 * K, n * K)),
                weightType: 'f32',
                dx,
                dw: outs[i]!.dw,
                dbias: outs[i]!.db,
                M,
                N: n - n0,
                K,
                compute: 'exact',
                dyStride: N,
                dxAdd: i > 0,
              }),
            ),
          );
          assertClose('dx', await readF32(dx, M * K), want.dx, 1e-5, maxAbs(want.dx));
          const dw = new Float32Array(N * K);
          const db = new Float32Array(N);
          for (const [i, [n0, n]] of pieces.entries()) {
            dw.set(await readF32(outs[i]!.dw, (n - n0) * K), n0 * K);
            db.set(await readF32(outs[i]!.db, n - n0), n0);
          }
          assertClose('dw', dw, want.dw, 1e-5, maxAbs(want.dw));
          assertClose('dbias', db, want.db, 1e-5, maxAbs(want.db));
        });

        it('computes only the gradients asked for', async () => {
          const [M, N, K] = [4, 38, 39];
          const rnd = centred(99);
          const dy = values(M * N, rnd);
          const x = values(M * K, rnd);
          const w = values(N * K, rnd);
          const dw0 = values(N * K, rnd);
          const want = dw0.slice();
          hostGradients.matmulBackward(t32([M, N], dy), t32([M, K], x), t32([N, K], w), null, t32([N, K], want), null);
          const dw = own(dw0);
          const operands = { dy: own(dy), x: own(x), w: own(w), weightType: 'f32' as const, dx: null, dw, dbias: null };
          const plans = k.matmulBackwardPlan(limits(), { ...operands, M, N, K, compute: 'exact' });
          assert.equal(plans.length, 1);
          await run(plans);
          assertClose('dw', await readF32(dw, N * K), want, 1e-5, maxAbs(want));
        });
      });

      describe('norms', () => {
        const cases = [
          { rows: 5, cols: 300, weight: 'f32', inPlace: false, dweight: true, dbias: true },
          { rows: 3, cols: 37, weight: 'bf16', inPlace: true, dweight: true, dbias: false },
          { rows: 7, cols: 64, weight: 'f32', inPlace: true, dweight: false, dbias: true },
          { rows: 4, cols: 51, weight: 'bf16', inPlace: false, dweight: false, dbias: false },
        ] as const;
        for (const layer of [false, true]) {
          for (const c of cases) {
            const { rows, cols, weight, inPlace } = c;
            const dbiasToo = layer && c.dbias;
            const outputs = `${inPlace ? ', dx = dy' : ''}${c.dweight ? ', dweight' : ''}${dbiasToo ? ', dbias' : ''}`;
            const name = `${layer ? 'layerNorm' : 'rmsNorm'}Backward ${rows}×${cols}, ${weight} weight${outputs}`;
            it(name, async () => {
              const rnd = centred(rows * cols + (layer ? 1 : 0));
              const n = rows * cols;
              const dy = values(n, rnd);
              // An offset, so that LayerNorm's mean matters.
              const x = values(n, rnd, 2).map((v) => v + 1.5);
              const wf = values(cols, rnd, 2);
              const w = weight === 'bf16' ? new Tensor('bf16', [cols], bf16Bits(wf)) : t32([cols], wf);
              const dw0 = values(cols, rnd);
              const db0 = values(cols, rnd);
              const want = { dx: new Float32Array(n), dw: dw0.slice(), db: db0.slice() };
              const eps = 1e-5;
              const dwT = c.dweight ? t32([cols], want.dw) : null;
              const dbT = dbiasToo ? t32([cols], want.db) : null;
              if (layer) hostGradients.layerNormBackward(t32([rows, cols], dy), t32([rows, cols], x), w, eps, t32([rows, cols], want.dx), dwT, dbT);
              else hostGradients.rmsNormBackward(t32([rows, cols], dy), t32([rows, cols], x), w, eps, t32([rows, cols], want.dx), dwT);
              const { slices } = pack(x, dy, dw0);
              const [xs, dys, dws] = slices as [Slice, Slice, Slice];
              const dx = inPlace ? dys : own(new Float32Array(n));
              const dbias = own(db0);
              const o = { dy: dys, x: xs, weight: weightSlice(w), weightType: weight, eps, dx, dweight: c.dweight ? dws : null, rows, cols };
              await run(layer ? k.layerNormBackwardPlan(limits(), { ...o, dbias: dbiasToo ? dbias : null }) : k.rmsNormBackwardPlan(limits(), o));
              // f32 reductions over ≤ 300 terms and over the rows: within 2e-5 of the largest result (a missing term
              // is off by a sizeable part of it).
              assertClose('dx', await readF32(dx, n), want.dx, 2e-5, maxAbs(want.dx));
              assertClose('dweight', await readF32(dws, cols), want.dw, 2e-5, maxAbs(want.dw));
              assertClose('dbias', await readF32(dbias, cols), want.db, 2e-5, maxAbs(want.db));
            });
          }
        }
      });

      describe('crossEntropy', () => {
        it('with a bf16 head split by rows across buffers (tiled)', async () => {
          const [n, H, V, v1] = [5, 45, 130, 57];
          const rnd = centred(555);
          const hidden = values(n * H, rnd);
          const bits = bf16Bits(values(V * H, rnd, 0.5));
          // Targets in both pieces, at their edges.
          const targets = Int32Array.of(0, v1 - 1, v1, V - 1, 77);
          const dhead0 = values(V * H, rnd);
          const want = { losses: new Float32Array(n), dhidden: new Float32Array(n * H), dhead: dhead0.slice() };
          const ht = t32([n, H], hidden);
          const outs = [t32([n], want.losses), t32([n, H], want.dhidden), t32([V, H], want.dhead)] as const;
          hostGradients.crossEntropy(ht, new Tensor('bf16', [V, H], bits), new Tensor('i32', [n], targets), 0.25, ...outs);
          const pieces = [
            { head: weightSlice(new Tensor('bf16', [v1, H], bits.slice(0, v1 * H))), dhead: own(dhead0.slice(0, v1 * H)), rows: v1 },
            { head: weightSlice(new Tensor('bf16', [V - v1, H], bits.slice(v1 * H))), dhead: own(dhead0.slice(v1 * H)), rows: V - v1 },
          ];
          const losses = own(new Float32Array(n));
          const dhidden = own(new Float32Array(n * H));
          const o = { hidden: own(hidden), headType: 'bf16' as const, targets: own(targets), scale: 0.25, losses, dhidden, n, H, V };
          const scratch = own(new Float32Array(100));
          await run(k.crossEntropyTiledPlan(device.traits, { ...o, head: pieces[0]!.head, dhead: null, scratch, scratchBytes: 400, pieces }));
          assertClose('losses', await readF32(losses, n), want.losses, 1e-5, maxAbs(want.losses));
          assertClose('dhidden', await readF32(dhidden, n * H), want.dhidden, 1e-5, maxAbs(want.dhidden));
          const dhead = new Float32Array(V * H);
          dhead.set(await readF32(pieces[0]!.dhead, v1 * H));
          dhead.set(await readF32(pieces[1]!.dhead, (V - v1) * H), v1 * H);
          assertClose('dhead', dhead, want.dhead, 1e-5, maxAbs(want.dhead));
        });

        const cases = [
          { n: 5, H: 45, V: 130, head: 'f32', dhidden: true, dhead: true },
          { n: 3, H: 300, V: 53, head: 'bf16', dhidden: false, dhead: true },
          { n: 7, H: 37, V: 300, head: 'f32', dhidden: true, dhead: false },
          { n: 4, H: 40, V: 77, head: 'bf16', dhidden: false, dhead: false },
        ] as const;
        // A scratch of 100 f32 (one row per block, chunks of at most 100 entries), and of 4096 (several rows a block).
        for (const c of cases) for (const scratch of [100, 4096]) {
          const { n, H, V, head } = c;
          const how = `, scratch of ${scratch}`;
          it(`${n} rows, H ${H}, vocabulary ${V}, ${head} head${c.dhidden ? ', dhidden' : ''}${c.dhead ? ', dhead' : ''}${how}`, async () => {
            const rnd = centred(n * H + V);
            const hidden = values(n * H, rnd);
            const hf = values(V * H, rnd, 0.5);
            const headT = head === 'bf16' ? new Tensor('bf16', [V, H], bf16Bits(hf)) : t32([V, H], hf);
            const targets = Int32Array.from({ length: n }, (_, i) => (i === 1 ? V - 1 : Math.floor((rnd() + 0.5) * V)));
            const dhead0 = values(V * H, rnd);
            const scale = 1 / n;
            const want = { losses: new Float32Array(n), dhidden: new Float32Array(n * H), dhead: dhead0.slice() };
            hostGradients.crossEntropy(
              t32([n, H], hidden),
              headT,
              new Tensor('i32', [n], targets),
              scale,
              t32([n], want.losses),
              c.dhidden ? t32([n, H], want.dhidden) : null,
              c.dhead ? t32([V, H], want.dhead) : null,
            );
            // hidden, targets and losses in one buffer; dhidden, dhead and the scratch in another.
            const inputs = pack(hidden, targets, new Float32Array(n));
            const [hs, ts, ls] = inputs.slices as [Slice, Slice, Slice];
            const outputs = pack(new Float32Array(n * H), dhead0, new Float32Array(scratch));
            const [dhs, dws, scs] = outputs.slices as [Slice, Slice, Slice];
            await run(
              k.crossEntropyTiledPlan(limits(), {
                hidden: hs,
                head: weightSlice(headT),
                headType: head,
                targets: ts,
                scale,
                losses: ls,
                dhidden: c.dhidden ? dhs : null,
                dhead: c.dhead ? dws : null,
                n,
                H,
                V,
                scratch: scs,
                scratchBytes: scratch * 4,
              }),
            );
            // f32 logits (sums over H), exp and log against f64: within 1e-5 of the largest value (a wrong
            // normaliser or a missing target term moves them by far more).
            assertClose('losses', await readF32(ls, n), want.losses, 1e-5, maxAbs(want.losses));
            if (c.dhidden) assertClose('dhidden', await readF32(dhs, n * H), want.dhidden, 1e-5, maxAbs(want.dhidden));
            assertClose('dhead', await readF32(dws, V * H), want.dhead, 1e-5, maxAbs(want.dhead));
          });
        }
      });

      describe('attentionBackward', () => {
        const cases = [
          // Head sizes 33–48 share one compiled variant (lavapipe compiles slowly); they span two staged chunks of 32.
          { T: 5, S: 7, Hq: 4, Hkv: 2, D: 38, causal: true, queryOffset: undefined },
          { T: 3, S: 9, Hq: 3, Hkv: 1, D: 48, causal: false, queryOffset: undefined },
          { T: 20, S: 20, Hq: 2, Hkv: 2, D: 33, causal: true, queryOffset: 0 },
          { T: 3, S: 70, Hq: 6, Hkv: 2, D: 45, causal: true, queryOffset: 1 },
          { T: 19, S: 37, Hq: 3, Hkv: 3, D: 40, causal: false, queryOffset: undefined },
        ] as const;
        for (const { T, S, Hq, Hkv, D, causal, queryOffset } of cases) {
          it(`T ${T}, S ${S}, heads ${Hq}/${Hkv}, D ${D}, ${causal ? `causal from ${queryOffset ?? S - T}` : 'full'}`, async () => {
            const rnd = centred(T * S * Hq + D);
            const q = values(T * Hq * D, rnd);
            const kk = values(S * Hkv * D, rnd);
            const v = values(S * Hkv * D, rnd);
            const dout = values(T * Hq * D, rnd);
            const options = { scale: 1 / Math.sqrt(D), causal, queryOffset };
            const want = { dq: new Float32Array(T * Hq * D), dk: new Float32Array(S * Hkv * D), dv: new Float32Array(S * Hkv * D) };
            hostGradients.attentionBackward(
              t32([T, Hq, D], q),
              t32([S, Hkv, D], kk),
              t32([S, Hkv, D], v),
              t32([T, Hq, D], dout),
              t32([T, Hq, D], want.dq),
              t32([S, Hkv, D], want.dk),
              t32([S, Hkv, D], want.dv),
              options,
            );
            // Inputs in one buffer, the three gradients in another.
            const inputs = pack(q, kk, v, dout);
            const outputs = pack(want.dq.map(() => 0), want.dk.map(() => 0), want.dv.map(() => 0));
            const [qs, ks, vs, os] = inputs.slices as [Slice, Slice, Slice, Slice];
            const [dqs, dks, dvs] = outputs.slices as [Slice, Slice, Slice];
            await run(k.attentionBackwardPlan(limits(), { q: qs, k: ks, v: vs, dout: os, dq: dqs, dk: dks, dv: dvs, T, S, Hq, Hkv, D, options }));
            // f32 dot products over D and sums over keys or queries against f64: within 1e-5 of the largest gradient.
            assertClose('dq', await readF32(dqs, T * Hq * D), want.dq, 1e-5, maxAbs(want.dq));
            assertClose('dk', await readF32(dks, S * Hkv * D), want.dk, 1e-5, maxAbs(want.dk));
            assertClose('dv', await readF32(dvs, S * Hkv * D), want.dv, 1e-5, maxAbs(want.dv));
          });
        }
      });

      describe('elementwise backward ops', () => {
        for (const approximation of ['tanh', 'erf'] as const) {
          for (const inPlace of [false, 'dy', 'x'] as const) {
            it(`geluBackward ${approximation}${inPlace ? `, dx = ${inPlace}` : ''}`, async () => {
              const rnd = centred(approximation === 'tanh' ? 21 : 22);
              const n = 5 * 77;
              const dy = values(n, rnd);
              const x = values(n, rnd, 4);
              const want = new Float32Array(n);
              hostGradients.geluBackward(t32([n], dy), t32([n], x), t32([n], want), approximation);
              const { slices } = pack(dy, x);
              const [dys, xs] = slices as [Slice, Slice];
              const dx = inPlace === 'dy' ? dys : inPlace === 'x' ? xs : own(new Float32Array(n));
              await run(k.geluBackwardPlan(limits(), { dy: dys, x: xs, dx, n, approximation }));
              // f32 tanh/exp/erf: a few ulps of the slope (at most ~1.1), times |dy| ≤ 1.
              assertClose('dx', await readF32(dx, n), want, 2e-6, 1);
            });
          }
        }

        it('siluMulBackward, with dgate over gate and dup over dy', async () => {
          const rnd = centred(31);
          const n = 3 * 91;
          const dy = values(n, rnd);
          const gate = values(n, rnd, 5);
          const up = values(n, rnd, 2);
          const wantGate = new Float32Array(n);
          const wantUp = new Float32Array(n);
          hostGradients.siluMulBackward(t32([n], dy), t32([n], gate), t32([n], up), t32([n], wantGate), t32([n], wantUp));
          for (const shared of [false, true]) {
            const { slices } = pack(dy, gate, up);
            const [dys, gs, us] = slices as [Slice, Slice, Slice];
            const dgate = shared ? gs : own(new Float32Array(n));
            const dup = shared ? dys : own(new Float32Array(n));
            await run(k.siluMulBackwardPlan(limits(), { dy: dys, gate: gs, up: us, dgate, dup, n }));
            const scale = Float32Array.from(dy, (g, i) => Math.abs(g) * (1 + Math.abs(gate[i]!)) * (1 + Math.abs(up[i]!)));
            assertClose(`dgate${shared ? ' (in place)' : ''}`, await readF32(dgate, n), wantGate, 1e-6, scale);
            assertClose(`dup${shared ? ' (in place)' : ''}`, await readF32(dup, n), wantUp, 1e-6, scale);
          }
        });

        for (const inPlace of [false, true]) {
          it(`ropeBackward${inPlace ? ', dx = dy' : ''}`, async () => {
            const rnd = centred(41);
            const [T, H, D] = [5, 3, 38];
            const dy = values(T * H * D, rnd);
            const cos = values((T * D) / 2, rnd);
            const sin = values((T * D) / 2, rnd);
            const want = new Float32Array(T * H * D);
            hostGradients.ropeBackward(t32([T, H, D], dy), t32([T, D / 2], cos), t32([T, D / 2], sin), t32([T, H, D], want));
            const { slices } = pack(cos, dy, sin);
            const [cs, dys, ss] = slices as [Slice, Slice, Slice];
            const dx = inPlace ? dys : own(new Float32Array(T * H * D));
            await run(k.ropeBackwardPlan(limits(), { dy: dys, cos: cs, sin: ss, dx, T, H, D }));
            // Two products and a sum of terms below 1/2 each: a few ulps of 1.
            assertClose('dx', await readF32(dx, T * H * D), want, 3e-7, 1);
          });
        }

        for (const mergeSize of [1, 2]) {
          it(`mergeBlocksBackward m=${mergeSize}`, async () => {
            const rnd = centred(51 + mergeSize);
            const [rows, C] = [7, 41];
            const dy = values(rows * C, rnd);
            const n = rows * mergeSize * mergeSize * C;
            const want = new Float32Array(n);
            hostGradients.mergeBlocksBackward(t32([rows, C], dy), mergeSize, t32([rows * mergeSize * mergeSize, C], want));
            const { slices } = pack(dy, new Float32Array(n));
            await run(k.mergeBlocksBackwardPlan(limits(), { dy: slices[0]!, dx: slices[1]!, rows, C, mergeSize }));
            assert.deepEqual(await readF32(slices[1]!, n), want);
          });
        }

        /** T ids (`id`'s, a random row where it gives none), dy, a table, and the table after the reference's scatter. */
        const embeddingCase = (seed: number, V: number, D: number, T: number, id: (i: number) => number | null) => {
          const rnd = centred(seed);
          const ids = Int32Array.from({ length: T }, (_, i) => id(i) ?? Math.floor((rnd() + 0.5) * V));
          const dy = values(T * D, rnd);
          const table = values(V * D, rnd, 3);
          const want = table.slice();
          hostGradients.embeddingBackward(t32([T, D], dy), new Tensor('i32', [T], ids), t32([V, D], want));
          return { ids, dy, table, want };
        };

        it('embeddingBackward on a table split by rows, one plan per piece', async () => {
          const [V, D, T, v1] = [53, 40, 31, 20];
          const { ids, dy, table, want } = embeddingCase(62, V, D, T, (i) => (i % 3 === 0 ? 19 : i % 7 === 0 ? 20 : null));
          const { slices } = pack(ids, dy);
          const parts = [own(table.subarray(0, v1 * D)), own(table.subarray(v1 * D))];
          await run([
            ...k.embeddingBackwardPlan(limits(), { dy: slices[1]!, ids: slices[0]!, dtable: parts[0]!, T, D, rowStart: 0, rows: v1 }),
            ...k.embeddingBackwardPlan(limits(), { dy: slices[1]!, ids: slices[0]!, dtable: parts[1]!, T, D, rowStart: v1, rows: V - v1 }),
          ]);
          const got = new Float32Array(V * D);
          got.set(await readF32(parts[0]!, v1 * D));
          got.set(await readF32(parts[1]!, (V - v1) * D), v1 * D);
          assert.deepEqual(got, want);
        });

        it('embeddingBackward adds repeated ids in order, bit for bit', async () => {
          const [V, D, T] = [53, 45, 29];
          const { ids, dy, table, want } = embeddingCase(61, V, D, T, (i) => (i % 4 === 0 ? 7 : i % 5 === 0 ? 52 : null));
          const { slices } = pack(ids, dy);
          const dtable = own(table);
          await run(k.embeddingBackwardPlan(limits(), { dy: slices[1]!, ids: slices[0]!, dtable, T, D }));
          assert.deepEqual(await readF32(dtable, V * D), want);
        });
      });
    });
  }
});
