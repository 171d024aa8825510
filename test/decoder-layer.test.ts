// Backend.decoderLayer and decoderLayers: the native backend's one call gives the bits of the layers' ops one by one
// (decoderLayerOps) on every tier, in both compute modes, for every weight format, a stack of layers those of its
// layers one after the other; a backend without the kernel runs those ops; the checks name what is wrong (and the
// layer), including weights changed after a layer was first checked, before any layer runs.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { Rng } from '../src/engine/rng.js';
import type { DecoderLayersStep, DecoderLayerStep, DecoderLayerWeights } from '../src/tensor/backend.js';
import { decoderLayerOps } from '../src/tensor/decoder-layer.js';
import { f32ToBf16, QUANT_FORMATS } from '../src/tensor/dtype.js';
import { NativeBackend, NativeKernels, nativeInfo, quantizeNative } from '../src/tensor/native.js';
import { ReferenceBackend } from '../src/tensor/reference.js';
import { HostStorage, Tensor } from '../src/tensor/tensor.js';

// Sizes with partial row groups and vectors: H and I whole blocks of 32, 3 query heads per KV head.
const [H, Hq, Hkv, D, I] = [96, 6, 2, 16, 160];
const rng = new Rng(11);
const random = (n: number, scale: number) => Float32Array.from({ length: n }, () => (rng.next() * 2 - 1) * scale);

function matrix(format: string, N: number, K: number): Tensor {
  const f32 = new Tensor('f32', [N, K], random(N * K, 0.1));
  if (format === 'f32') return f32;
  const bf16 = new Tensor('bf16', [N, K], Uint16Array.from(f32.data, f32ToBf16));
  if (format === 'bf16') return bf16;
  return new Tensor(format as (typeof QUANT_FORMATS)[number], [N, K], quantizeNative(format as (typeof QUANT_FORMATS)[number], bf16));
}

function layerWeights(format: string): DecoderLayerWeights {
  const vector = (n: number, dtype: 'f32' | 'bf16') =>
    dtype === 'f32' ? new Tensor('f32', [n], random(n, 1)) : new Tensor('bf16', [n], Uint16Array.from(random(n, 1), f32ToBf16));
  return {
    inputNorm: vector(H, 'bf16'),
    qProj: matrix(format, Hq * D, H),
    qBias: vector(Hq * D, 'f32'),
    kProj: matrix(format, Hkv * D, H),
    kBias: vector(Hkv * D, 'bf16'),
    vProj: matrix(format, Hkv * D, H),
    vBias: null,
    oProj: matrix(format, H, Hq * D),
    postNorm: vector(H, 'f32'),
    gateProj: matrix(format, I, H),
    upProj: matrix(format, I, H),
    downProj: matrix(format, H, I),
  };
}

/** A step of T new positions after S − T cached ones (random keys and values there, zeros where the layer writes). */
function layerStep(T: number, S: number): DecoderLayerStep {
  const keys = Tensor.f32([S, Hkv, D]);
  const values = Tensor.f32([S, Hkv, D]);
  keys.data.set(random((S - T) * Hkv * D, 1));
  values.data.set(random((S - T) * Hkv * D, 1));
  const angles = Array.from({ length: T * (D / 2) }, (_, i) => (S - T + Math.floor(i / (D / 2))) / 10 ** (i % (D / 2) / 4));
  return {
    x: new Tensor('f32', [T, H], random(T * H, 1)),
    keys,
    values,
    cos: Tensor.f32([T, D / 2], angles.map(Math.cos)),
    sin: Tensor.f32([T, D / 2], angles.map(Math.sin)),
    eps: 1e-6,
    scale: 1 / Math.sqrt(D),
    scratch: { h: Tensor.f32([T, H]), q: Tensor.f32([T, Hq, D]), attn: Tensor.f32([T, Hq, D]), gate: Tensor.f32([T, I]), up: Tensor.f32([T, I]) },
  };
}

const copyOf = (t: Tensor<'f32'>) => new Tensor('f32', t.shape, t.data.slice());

function cloneStep(s: DecoderLayerStep): DecoderLayerStep {
  const [T] = s.x.shape as [number];
  const fresh = layerStep(T, s.keys.dim(0));
  return { ...fresh, x: copyOf(s.x as Tensor<'f32'>), keys: copyOf(s.keys as Tensor<'f32'>), values: copyOf(s.values as Tensor<'f32'>), cos: s.cos, sin: s.sin };
}

/** The layer as its ops, on the same backend: the definition the one call is held to. */
function byOps(backend: NativeBackend | ReferenceBackend, w: DecoderLayerWeights, s: DecoderLayerStep): void {
  const T = s.x.dim(0);
  const S = s.keys.dim(0);
  decoderLayerOps(backend, w, s.x, s.keys.rows(S - T, S), s.values.rows(S - T, S), s, s.eps, s.scratch, (q, attn) =>
    backend.attention(q, s.keys, s.values, attn, { scale: s.scale, causal: true, queryOffset: S - T }),
  );
}

function firstDifference(a: Tensor, b: Tensor): number {
  const x = a.data as Float32Array;
  const y = b.data as Float32Array;
  return x.findIndex((v, i) => !Object.is(v, y[i]));
}

describe('decoderLayer in one call gives the bits of its ops', () => {
  const formats = ['f32', 'bf16', ...QUANT_FORMATS];
  const layers = new Map(formats.map((f) => [f, layerWeights(f)]));
  for (const isa of nativeInfo().tiers) {
    for (const compute of ['exact', 'bf16'] as const) {
      test(`${isa}, ${compute} compute`, () => {
        for (const threads of [1, 2]) {
          const backend = new NativeBackend({ isa, compute, threads });
          for (const [format, w] of layers) {
            // A decode step, a decode step late in a sequence, a prefill, a chunk after a prefix.
            for (const [T, S] of [[1, 1], [1, 37], [5, 5], [4, 19]] as const) {
              const one = layerStep(T, S);
              const ops = cloneStep(one);
              backend.decoderLayer(w, one);
              byOps(backend, w, ops);
              for (const name of ['x', 'keys', 'values'] as const) {
                const at = firstDifference(one[name], ops[name]);
                assert.equal(at, -1, `${format} weights, T = ${T}, S = ${S}, ${threads} thread(s): ${name}[${at}] ${one[name].data[at]} in one call, ${ops[name].data[at]} by its ops`);
              }
            }
          }
        }
      });
    }
  }

  test('a backend without the kernel (the reference) runs the ops, within the tolerance of the native one', () => {
    const reference = new ReferenceBackend();
    const native = new NativeBackend({ compute: 'exact', threads: 2 });
    const w = layers.get('bf16')!;
    const a = layerStep(3, 11);
    const b = cloneStep(a);
    reference.decoderLayer(w, a);
    native.decoderLayer(w, b);
    const x = a.x.data as Float32Array;
    const worst = Math.max(...x.map((v, i) => Math.abs(v - (b.x.data as Float32Array)[i]!)));
    assert.ok(worst < 1e-4, `largest difference ${worst}`);
    // The layer's keys went to the last 3 rows; the 8 cached before them are untouched.
    assert.deepEqual(Array.from((a.keys.data as Float32Array).subarray(0, 8 * Hkv * D)), Array.from((b.keys.data as Float32Array).subarray(0, 8 * Hkv * D)));
    assert.ok((a.keys.data as Float32Array).subarray(8 * Hkv * D).some((v) => v !== 0));
  });
});

/** Layers' own keys and values for one step: layer l's are layerStep's, with other cached rows. */
function stackStep(T: number, S: number, L: number): DecoderLayersStep {
  const steps = Array.from({ length: L }, () => layerStep(T, S));
  return { ...steps[0]!, keys: steps.map((s) => s.keys), values: steps.map((s) => s.values) };
}

function cloneStack(s: DecoderLayersStep): DecoderLayersStep {
  return { ...s, x: copyOf(s.x as Tensor<'f32'>), keys: s.keys.map((k) => copyOf(k as Tensor<'f32'>)), values: s.values.map((v) => copyOf(v as Tensor<'f32'>)) };
}

describe('decoderLayers: a stack in one call gives the bits of its layers one by one', () => {
  // One format a layer, so that each layer's formats reach the native call.
  const stack = ['int8', 'int4m', 'bf16', 'f32', 'int4'].map(layerWeights);
  const backends = [
    ...(['exact', 'bf16'] as const).map((compute) => new NativeBackend({ compute, threads: 2 })),
    new NativeBackend({ isa: nativeInfo().tiers[0], compute: 'bf16', threads: 1 }),
    new ReferenceBackend(),
  ];
  for (const backend of backends) {
    test(`${backend.name}`, () => {
      for (const [T, S] of [[1, 9], [3, 7]] as const) {
        const together = stackStep(T, S, stack.length);
        const apart = cloneStack(together);
        backend.decoderLayers(stack, together);
        stack.forEach((w, l) => backend.decoderLayer(w, { ...apart, keys: apart.keys[l]!, values: apart.values[l]! }));
        assert.equal(firstDifference(together.x, apart.x), -1, `T = ${T}: x`);
        for (let l = 0; l < stack.length; l++) {
          assert.equal(firstDifference(together.keys[l]!, apart.keys[l]!), -1, `T = ${T}: layer ${l}'s keys`);
          assert.equal(firstDifference(together.values[l]!, apart.values[l]!), -1, `T = ${T}: layer ${l}'s values`);
        }
      }
    });
  }

  test('bad layers are named, and refused before any layer runs', () => {
    const backend = new NativeBackend({ threads: 1 });
    const s = stackStep(1, 7, 3);
    const x = Array.from(s.x.data as Float32Array);
    const three = stack.slice(0, 3);
    assert.throws(() => backend.decoderLayers(three, { ...s, values: s.values.slice(0, 2) }), /decoderLayers: 3 layers need as many keys and values, got 3 keys and 2 values/);
    const keys = [...s.keys];
    keys[2] = Tensor.f32([5, Hkv, D]);
    assert.throws(() => backend.decoderLayers(three, { ...s, keys }), /decoderLayers: layer 2: keys hold 5 positions, layer 0's 7/);
    const values = [...s.values];
    values[1] = s.keys[1]!;
    assert.throws(() => backend.decoderLayers(three, { ...s, values }), /decoderLayers: layer 1: values and keys must not share storage/);
    assert.throws(() => backend.decoderLayers([three[0]!, { ...three[1]!, downProj: matrix('int8', H, I + 32) }, three[2]!], s), /decoderLayers: layer 1: downProj: expected shape \[96, 160\], got \[96, 192\]/);
    // The native call itself, past the checks: layer 2's o projection short.
    const kernels = new NativeKernels({ threads: 1 });
    assert.throws(() => kernels.decoderLayers([three[0]!, three[1]!, { ...three[2]!, oProj: matrix('bf16', H, Hq * D - 32) }], s), /decoderLayers: layer 2: oProj has 6144 elements, expected 9216/);
    assert.deepEqual(Array.from(s.x.data as Float32Array), x, 'x changed by a refused call');
    assert.ok(s.keys.every((k) => (k.data as Float32Array).subarray(6 * Hkv * D).every((v) => v === 0)), 'keys written by a refused call');
  });
});

describe('decoderLayer checks', () => {
  const backend = new NativeBackend({ threads: 1 });

  test('bad shapes, counts and overlaps name the operand', () => {
    const w = layerWeights('int8');
    const short = layerStep(3, 3);
    assert.throws(() => backend.decoderLayer(w, { ...short, keys: Tensor.f32([2, Hkv, D]), values: Tensor.f32([2, Hkv, D]) }), /decoderLayer: keys hold 2 positions, fewer than x's 3/);
    const s = layerStep(2, 6);
    assert.throws(() => backend.decoderLayer(w, { ...s, values: Tensor.f32([6, Hkv, D + 2]) }), /decoderLayer: values: expected shape \[6, 2, 16\], got \[6, 2, 18\]/);
    assert.throws(() => backend.decoderLayer(w, { ...s, cos: Tensor.f32([2, D]) }), /decoderLayer: cos: expected shape \[2, 8\]/);
    assert.throws(() => backend.decoderLayer(w, { ...s, scratch: { ...s.scratch, q: Tensor.f32([2, 5, D]) } }), /decoderLayer: query heads \(5\) must be a multiple of KV heads \(2\)/);
    assert.throws(() => backend.decoderLayer(w, { ...s, eps: -1 }), /decoderLayer: eps must be a finite number >= 0/);
    assert.throws(() => backend.decoderLayer(w, { ...s, scratch: { ...s.scratch, h: s.x } }), /decoderLayer: h and x must not share storage/);
    const shared = new HostStorage(new ArrayBuffer(2 * 2 * I * 4));
    const [gate, up] = [0, 4].map((at) => new Tensor('f32', [2, I], shared, at));
    assert.throws(() => backend.decoderLayer(w, { ...s, scratch: { ...s.scratch, gate: gate!, up: up! } }), /decoderLayer: up and gate must not share storage/);
    assert.throws(() => backend.decoderLayer({ ...w, downProj: matrix('int8', H, I + 32) }, s), /decoderLayer: downProj: expected shape \[96, 160\], got \[96, 192\]/);
    assert.throws(() => backend.decoderLayer({ ...w, qBias: Tensor.f32([H + 4]) }, s), /decoderLayer: qProj bias: expected shape \[96\], got \[100\]/);
    assert.throws(() => backend.decoderLayer({ ...w, postNorm: Tensor.empty('i32', [H]) }, s), /decoderLayer: postNorm: expected dtype f32 or bf16, got i32/);
  });

  test('a scratch buffer over a weight\'s storage is refused', () => {
    const w = layerWeights('f32');
    const s = layerStep(1, 4);
    const down = w.downProj as Tensor<'f32'>;
    const gateOverDown = new Tensor('f32', [1, I], new HostStorage(down.data.buffer as ArrayBuffer), down.byteOffset);
    assert.throws(() => backend.decoderLayer(w, { ...s, scratch: { ...s.scratch, gate: gateOverDown } }), /decoderLayer: gate must not share storage with downProj/);
  });

  test('weights changed after their layer was first checked are checked again', () => {
    const w = layerWeights('int4');
    backend.decoderLayer(w, layerStep(1, 3));
    w.gateProj = matrix('int4', I + 4, H);
    assert.throws(() => backend.decoderLayer(w, layerStep(1, 3)), /decoderLayer: gateProj: expected shape \[160, 96\], got \[164, 96\]/);
    // Sizes the weights were not checked against: the same object, other activations.
    const w2 = layerWeights('int4');
    backend.decoderLayer(w2, layerStep(1, 3));
    const wide = layerStep(1, 3);
    assert.throws(() => backend.decoderLayer(w2, { ...wide, scratch: { ...wide.scratch, gate: Tensor.f32([1, I + 32]), up: Tensor.f32([1, I + 32]) } }), /decoderLayer: gateProj: expected shape \[192, 96\], got \[160, 96\]/);
  });

  test('the native call refuses arrays of the wrong length itself (nothing outside them is touched)', () => {
    const kernels = new NativeKernels({ threads: 1 });
    const w = layerWeights('bf16');
    const s = layerStep(2, 5);
    const one = { ...s, keys: [s.keys], values: [s.values] };
    assert.throws(() => kernels.decoderLayers([w], { ...one, values: [Tensor.f32([4, Hkv, D])] }), /decoderLayers: layer 0: values has 128 elements, expected 160/);
    assert.throws(() => kernels.decoderLayers([{ ...w, oProj: matrix('bf16', H, Hq * D - 32) }], one), /decoderLayers: layer 0: oProj has 6144 elements, expected 9216/);
    assert.throws(() => kernels.decoderLayers([w], { ...one, cos: Tensor.f32([1, D / 2]) }), /decoderLayers: cos has 8 elements, expected 16/);
  });
});
