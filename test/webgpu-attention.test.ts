// The WGSL attention plan against the reference backend's attention: prefill and decode, causal and full, grouped KV
// heads, explicit query offsets, odd head dimensions, operands sharing a buffer, and tiles shrunk to a small device.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createBackend, Tensor } from '../src/tensor/index.js';
import type { Slice } from '../src/tensor/webgpu/dispatch.js';
import { attentionPlan, attentionSplits, attentionTiles } from '../src/tensor/webgpu/kernels/attention.js';
import type { DeviceTraits } from '../src/tensor/webgpu/kernels/wgsl-common.js';
import { random, suiteGpu } from './webgpu-harness.js';

interface Case {
  T: number;
  S: number;
  Hq: number;
  Hkv: number;
  D: number;
  causal: boolean;
  /** Default S − T, as the backend's. */
  queryOffset?: number;
  /** q, k, v (and out when 'all') views of one buffer. */
  shared?: 'qkv' | 'all';
  /** Give the plan scratch, so that it may split the keys (decode); the test expects it to. */
  split?: boolean;
  /** Spread of the scores: q and k scaled so that the softmax is neither flat nor one-hot. */
  amplitude?: number;
}

interface Made {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  expected: Float32Array;
  tolerance: number;
}

const EPS = 2 ** -24;

function make(c: Case): Made {
  const rnd = random(c.T * 131 + c.S * 17 + c.Hq * 7 + c.D);
  const a = c.amplitude ?? 1.5;
  const fill = (n: number, s: number) => Float32Array.from({ length: n }, () => (rnd() * 2 - 1) * s);
  const q = fill(c.T * c.Hq * c.D, a);
  const k = fill(c.S * c.Hkv * c.D, a);
  const v = fill(c.S * c.Hkv * c.D, 1);
  const scale = 1 / Math.sqrt(c.D);
  const out = Tensor.empty('f32', [c.T, c.Hq, c.D]);
  createBackend('reference').attention(
    new Tensor('f32', [c.T, c.Hq, c.D], q),
    new Tensor('f32', [c.S, c.Hkv, c.D], k),
    new Tensor('f32', [c.S, c.Hkv, c.D], v),
    out,
    { scale, causal: c.causal, queryOffset: c.queryOffset },
  );
  // Each score is a D-term f32 dot, off by ≤ D·ε·Σ|q·k|·scale in either implementation (the largest such sum below);
  // a score error δ moves the output by ≤ 2δ·max|v| (max|v| ≤ 1 here; the weights change by a factor e^±δ). WGSL's
  // exp is within (3 + 2|x|) ulp, |x| ≤ twice the largest score; the output and the normaliser each sum ≤ S terms in
  // f32. Doubled for the two implementations' own errors.
  let scoreBound = 0;
  const G = c.Hq / c.Hkv;
  for (let t = 0; t < c.T; t++)
    for (let h = 0; h < c.Hq; h++)
      for (let s = 0; s < c.S; s++) {
        let sum = 0;
        for (let d = 0; d < c.D; d++) sum += Math.abs(q[(t * c.Hq + h) * c.D + d]! * k[(s * c.Hkv + Math.floor(h / G)) * c.D + d]!);
        scoreBound = Math.max(scoreBound, sum * scale);
      }
  const dScore = 2 * c.D * EPS * scoreBound;
  const expErr = (3 + 4 * scoreBound) * 2 * EPS;
  const tolerance = 2 * (2 * dScore + expErr + 2 * (c.S + 4) * EPS);
  return { q, k, v, expected: out.data as Float32Array, tolerance };
}

describe('WebGPU attention kernel', () => {
  const device = suiteGpu();

  async function run(c: Case, made: Made, t: DeviceTraits = device.traits): Promise<Float32Array> {
    const bytes = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    const outBytes = made.expected.byteLength;
    let q: Slice, k: Slice, v: Slice, out: Slice;
    if (c.shared) {
      // Offsets that are not multiples of 16, in the order a fused projection might leave them.
      const qAt = 4;
      const kAt = qAt + made.q.byteLength + 8;
      const vAt = kAt + made.k.byteLength + 12;
      const oAt = vAt + made.v.byteLength + 4;
      const all = new Uint8Array(oAt + outBytes);
      all.set(bytes(made.q), qAt);
      all.set(bytes(made.k), kAt);
      all.set(bytes(made.v), vAt);
      const buf = device.gpu.buffer(all.byteLength, all);
      q = { buffer: buf, byteOffset: qAt };
      k = { buffer: buf, byteOffset: kAt };
      v = { buffer: buf, byteOffset: vAt };
      out = c.shared === 'all' ? { buffer: buf, byteOffset: oAt } : { buffer: device.gpu.buffer(outBytes + 8), byteOffset: 8 };
    } else {
      const at = (a: Float32Array, off: number): Slice => {
        const b = new Uint8Array(off + a.byteLength);
        b.set(bytes(a), off);
        return { buffer: device.gpu.buffer(b.byteLength, b), byteOffset: off };
      };
      q = at(made.q, 12);
      k = at(made.k, 4);
      v = at(made.v, 0);
      out = { buffer: device.gpu.buffer(outBytes + 20), byteOffset: 20 };
    }
    let scratch: Slice | null = null;
    if (c.split) {
      const { splits, scratchBytes } = attentionSplits(t, c);
      assert.ok(splits > 1, `${JSON.stringify(c)} is not split`);
      // Beside out in its buffer when out has its own, as a workspace would place it.
      scratch = c.shared === 'all' ? { buffer: device.gpu.buffer(scratchBytes + 4), byteOffset: 4 } : { buffer: device.gpu.buffer(outBytes + 64 + scratchBytes), byteOffset: outBytes + 64 };
      if (!c.shared) out = { buffer: scratch.buffer, byteOffset: 20 };
    }
    const plan = attentionPlan(t, {
      q,
      k,
      v,
      out,
      T: c.T,
      S: c.S,
      Hq: c.Hq,
      Hkv: c.Hkv,
      D: c.D,
      scale: 1 / Math.sqrt(c.D),
      causal: c.causal,
      queryOffset: c.queryOffset ?? c.S - c.T,
    }, scratch);
    assert.equal(plan.length, c.split ? 2 : 1);
    await device.gpu.errors(() => device.gpu.run(plan));
    return new Float32Array(await device.gpu.read(out.buffer, out.byteOffset, outBytes));
  }

  function assertClose(got: Float32Array, made: Made, what: string): void {
    for (let i = 0; i < got.length; i++) {
      const err = Math.abs(got[i]! - made.expected[i]!);
      if (!(err <= made.tolerance)) assert.fail(`${what}: element ${i} is ${got[i]}, expected ${made.expected[i]} (error ${err} > ${made.tolerance})`);
    }
  }

  async function check(c: Case, t: DeviceTraits = device.traits): Promise<void> {
    const made = make(c);
    assertClose(await run(c, made, t), made, JSON.stringify(c));
  }

  it('prefill, causal, grouped KV heads (the tiny fixture decoder: 4 heads on 2, D 16)', async () => {
    await check({ T: 37, S: 37, Hq: 4, Hkv: 2, D: 16, causal: true });
  });

  it('prefill with D 128 and six query heads per KV head (the 2B decoder)', async () => {
    await check({ T: 19, S: 19, Hq: 6, Hkv: 1, D: 128, causal: true });
  });

  it('decode: one query row against many keys', async () => {
    await check({ T: 1, S: 300, Hq: 6, Hkv: 2, D: 128, causal: true });
    await check({ T: 1, S: 77, Hq: 4, Hkv: 2, D: 16, causal: true });
  });

  it('decode with the keys split across workgroups and combined (flash-decoding)', async () => {
    await check({ T: 1, S: 1000, Hq: 6, Hkv: 2, D: 128, causal: true, split: true });
    await check({ T: 1, S: 300, Hq: 4, Hkv: 2, D: 16, causal: true, split: true, queryOffset: 150 });
    await check({ T: 5, S: 301, Hq: 4, Hkv: 2, D: 72, causal: true, split: true });
    await check({ T: 2, S: 257, Hq: 2, Hkv: 2, D: 24, causal: false, split: true, shared: 'all' });
    await check({ T: 1, S: 500, Hq: 2, Hkv: 1, D: 40, causal: true, split: true, shared: 'qkv' });
  });

  it('without scratch, or with too little, decode runs in one pass', () => {
    const at = (id: number, byteLength: number): Slice => ({ buffer: { id, byteLength }, byteOffset: 0 });
    const o = { q: at(1, 1 << 16), k: at(2, 1 << 20), v: at(3, 1 << 20), out: at(4, 1 << 16), T: 1, S: 1000, Hq: 6, Hkv: 2, D: 128, scale: 0.1, causal: true, queryOffset: 999 };
    const { splits, scratchBytes } = attentionSplits(device.traits, o);
    assert.ok(splits > 1);
    assert.equal(attentionPlan(device.traits, o).length, 1);
    assert.equal(attentionPlan(device.traits, o, at(5, scratchBytes - 4)).length, 1);
    assert.equal(attentionPlan(device.traits, o, at(5, scratchBytes)).length, 2);
  });

  it('a chunk of queries after a cached prefix, and explicit query offsets', async () => {
    await check({ T: 5, S: 40, Hq: 4, Hkv: 2, D: 16, causal: true });
    await check({ T: 5, S: 40, Hq: 4, Hkv: 2, D: 16, causal: true, queryOffset: 10 });
    await check({ T: 6, S: 9, Hq: 2, Hkv: 1, D: 8, causal: true, queryOffset: 0 });
  });

  it('full (non-causal) attention with odd head dimensions (the vision encoder: D 72)', async () => {
    await check({ T: 29, S: 29, Hq: 3, Hkv: 3, D: 72, causal: false });
    await check({ T: 7, S: 50, Hq: 3, Hkv: 1, D: 33, causal: false });
  });

  it('q, k, v (and out) as views of one buffer', async () => {
    await check({ T: 13, S: 13, Hq: 4, Hkv: 2, D: 24, causal: true, shared: 'qkv' });
    await check({ T: 13, S: 13, Hq: 2, Hkv: 2, D: 72, causal: false, shared: 'all' });
  });

  it('small tiles on a device with 16 KiB of workgroup memory, and a grid split in two dimensions', async () => {
    const small = { ...device.traits, maxWorkgroupStorageBytes: 16384, maxWorkgroupsPerDimension: 4 };
    assert.deepEqual(attentionTiles(small, 100, 128), { BQ: 16, BS: 8 });
    await check({ T: 33, S: 45, Hq: 4, Hkv: 2, D: 128, causal: true }, small);
  });

  it('a sharp softmax (large scores) and a flat one', async () => {
    await check({ T: 9, S: 70, Hq: 2, Hkv: 1, D: 32, causal: true, amplitude: 4 });
    await check({ T: 9, S: 70, Hq: 2, Hkv: 1, D: 32, causal: false, amplitude: 0.05 });
  });

  it('the tolerance catches a one-key masking error', async () => {
    // The kernel's causal output for queryOffset o against the reference's for o + 1: every row but the last sees one
    // key fewer than the reference, an error the tolerance must not hide.
    const c: Case = { T: 8, S: 40, Hq: 2, Hkv: 1, D: 16, causal: true, queryOffset: 20 };
    const got = await run(c, make(c));
    assert.throws(() => assertClose(got, make({ ...c, queryOffset: 21 }), 'off by one'));
  });
});
