// Every native gradient kernel against its definition (hostGradients, the TypeScript kernels) on seeded random data,
// on every kernel tier this CPU supports, with 1 and 2 threads. Sizes are odd on purpose: M, N, K off every tile and
// K block, one-row inputs, one and grouped KV heads, causal offsets that hide keys from every query, merge sizes 1 and
// 2, a vocabulary over several 4096-word chunks and rows over several 256-row blocks. Parameter gradients start from
// non-zero values, so that writing instead of adding fails.
//
// Tolerances. The definition sums in f64 and rounds once; the kernels sum in f32 (u = 2⁻²⁴), so:
// - a sum of n products (matmul, the logits) is within γ_n·Σ|terms| ≈ n·u·Σ|terms| of it, plus one rounding of the
//   previous contents for an accumulated gradient. Σ|terms| is computed exactly by running the definition on |dy|,
//   |x|, |w|, so those bounds are per element and the worst-case one, with no fudge factor;
// - pointwise and row ops are a short chain of f32 roundings (≤ 8, plus the vector exp's ≤ 2 ulp) on values of the
//   tensor's scale, or double sums rounded once: within 16·u·max|expected| (normwise, because terms cancel);
// - attention and cross-entropy compose those: scores and dP are D-term sums, then sums over S keys (or H and the
//   vocabulary chunk): 4·(S + D)·u (resp. 4·(chunk/16 + H)·u for the loss, (V + n)·u for its gradients) · max|expected|.
// The embedding's kernel adds rows in the definition's order, in f32 as the definition stores, so it is bit-exact.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import type { AttentionOptions, Backend } from '../src/tensor/backend.js';
import { f32ToBf16 } from '../src/tensor/dtype.js';
import { hostGradients } from '../src/tensor/host-gradients.js';
import { type Isa, NativeBackend, nativeInfo } from '../src/tensor/native.js';
import { Tensor } from '../src/tensor/tensor.js';
import { Rng } from '../src/engine/rng.js';

const U = 2 ** -24;
let seed = 1;
function randomF32(shape: readonly number[], scale = 1): Tensor<'f32'> {
  const r = new Rng(seed++ * 7919);
  const t = Tensor.empty('f32', shape);
  for (let i = 0; i < t.numel; i++) t.data[i] = (r.next() * 2 - 1) * scale;
  return t;
}
function toBf16(t: Tensor<'f32'>): Tensor {
  const b = Tensor.empty('bf16', t.shape);
  for (let i = 0; i < t.numel; i++) b.data[i] = f32ToBf16(t.data[i]!);
  return b;
}
const copy = (t: Tensor<'f32'>) => Tensor.f32(t.shape, t.data);
function abs(t: Tensor): Tensor {
  if (t.dtype === 'bf16') return new Tensor('bf16', t.shape, (t.data as Uint16Array).map((v) => v & 0x7fff));
  return Tensor.f32(t.shape, (t.data as Float32Array).map(Math.abs));
}
const maxAbs = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);

/** |actual − expected| ≤ tol[i] (or tol) everywhere; the worst element is named on failure. */
function assertWithin(actual: Tensor, expected: Tensor, tol: Float32Array | number, what: string): void {
  const a = actual.data as Float32Array, e = expected.data as Float32Array;
  assert.equal(a.length, e.length, `${what}: length`);
  let worst = -1, worstRatio = 1;
  for (let i = 0; i < a.length; i++) {
    const t = typeof tol === 'number' ? tol : tol[i]!;
    const ratio = Math.abs(a[i]! - e[i]!) / t;
    if (!(ratio <= worstRatio)) [worst, worstRatio] = [i, ratio];
  }
  if (process.env.VL3_SHOW_TOLERANCE) {
    let used = 0;
    for (let i = 0; i < a.length; i++) used = Math.max(used, Math.abs(a[i]! - e[i]!) / (typeof tol === 'number' ? tol : tol[i]!));
    console.log(`${what}: ${(100 * used).toFixed(1)} % of the tolerance`);
  }
  if (worst >= 0) {
    const t = typeof tol === 'number' ? tol : tol[worst]!;
    assert.fail(`${what}: element ${worst} is ${a[worst]}, expected ${e[worst]} (tolerance ${t.toExponential(2)}, off by ${worstRatio.toFixed(1)}×)`);
  }
}
const normwise = (expected: Tensor, c: number) => c * U * maxAbs(expected.data as Float32Array) + 1e-30;

const tiers: Isa[] = [...nativeInfo().tiers].reverse();
const threadCounts = [1, 2];
function eachBackend(name: string, run: (b: Backend) => void, compute: 'exact' | 'bf16' = 'exact'): void {
  for (const isa of tiers)
    for (const threads of threadCounts) test(`${name}, ${isa}, ${threads} thread(s)`, () => run(new NativeBackend({ isa, threads, compute })));
}

describe('native matmulBackward against the definition', () => {
  const shapes: [number, number, number][] = [
    [1, 37, 19], // one row
    [67, 45, 53], // odd everywhere
    [130, 300, 70], // dx sums over N = 300 > the K block
    [300, 33, 41], // dw sums over M = 300 > the K block
  ];
  // Both compute modes: bf16 rounds dy, x and w before multiplying (the definition does too), so the same bounds hold
  // against the definition run in that mode; the bf16-dot tiers take their own packing paths for it.
  for (const compute of ['exact', 'bf16'] as const) {
    for (const [M, N, K] of shapes) {
      for (const wType of ['f32', 'bf16'] as const) {
        const dy = randomF32([M, N]);
        const x = randomF32([M, K]);
        const w = wType === 'f32' ? randomF32([N, K]) : toBf16(randomF32([N, K]));
        const dw0 = randomF32([N, K]);
        const db0 = randomF32([N]);
        const dx = Tensor.empty('f32', [M, K]);
        const dw = copy(dw0), db = copy(db0);
        hostGradients.matmulBackward(dy, x, w, dx, dw, db, compute);
        // Σ|terms| of each output, and the bound (n + 2)·u·(Σ|terms| + |previous|) with n the length of the sum.
        const mx = Tensor.empty('f32', [M, K]), mw = abs(dw0) as Tensor<'f32'>, mb = abs(db0) as Tensor<'f32'>;
        hostGradients.matmulBackward(abs(dy), abs(x), abs(w), mx, mw, mb, compute);
        const bound = (m: Tensor, n: number) => (m.data as Float32Array).map((v) => (n + 2) * U * v + 1e-30);
        const tx = bound(mx, N), tw = bound(mw, M), tb = bound(mb, M);
        eachBackend(`${M}×${N}×${K}, ${wType} w, ${compute} compute`, (b) => {
          const ndx = Tensor.empty('f32', [M, K]);
          const ndw = copy(dw0), ndb = copy(db0);
          b.matmulBackward(dy, x, w, ndx, ndw, ndb);
          assertWithin(ndx, dx, tx, 'matmul dx');
          assertWithin(ndw, dw, tw, 'matmul dw');
          assertWithin(ndb, db, tb, 'dbias');
          // Each output alone (the others null) gives the same.
          const only = copy(dw0);
          b.matmulBackward(dy, x, w, null, only, null);
          assert.deepEqual(only.data, ndw.data, 'dw alone');
        }, compute);
      }
    }
  }
  test('bf16 compute mode rounds the operands: the products differ from exact mode', () => {
    const [M, N, K] = [70, 40, 30];
    const dy = randomF32([M, N]), x = randomF32([M, K]), w = randomF32([N, K]);
    const run = (compute: 'exact' | 'bf16') => {
      const dx = Tensor.empty('f32', [M, K]), dw = Tensor.empty('f32', [N, K]);
      new NativeBackend({ compute, threads: 1 }).matmulBackward(dy, x, w, dx, dw, null);
      return [dx.data, dw.data];
    };
    assert.notDeepEqual(run('bf16'), run('exact'));
  });
});

describe('native attentionBackward against the definition', () => {
  // [T, S, Hq, Hkv, D, causal, queryOffset]
  const cases: [number, number, number, number, number, boolean, number | undefined][] = [
    [1, 1, 1, 1, 8, true, undefined],
    [37, 37, 2, 1, 24, true, 0],
    [20, 75, 6, 2, 16, true, undefined], // offset S − T, grouped heads
    [70, 130, 4, 4, 32, false, undefined], // keys over several blocks, rows over several tiles
    [13, 140, 3, 1, 20, true, 10], // keys past offset + T are seen by no query: zero dk, dv
    [90, 90, 12, 2, 16, true, 0], // 6 query heads per KV head: tiles of 10 queries
  ];
  for (const [T, S, Hq, Hkv, D, causal, queryOffset] of cases) {
    const q = randomF32([T, Hq, D]), k = randomF32([S, Hkv, D]), v = randomF32([S, Hkv, D]), dout = randomF32([T, Hq, D]);
    const options: AttentionOptions = { scale: 1 / Math.sqrt(D), causal, ...(queryOffset !== undefined && { queryOffset }) };
    const dq = Tensor.empty('f32', q.shape), dk = Tensor.empty('f32', k.shape), dv = Tensor.empty('f32', v.shape);
    hostGradients.attentionBackward(q, k, v, dout, dq, dk, dv, { ...options, queryOffset: causal ? (queryOffset ?? S - T) : 0 });
    const c = 4 * (S + D);
    eachBackend(`T=${T} S=${S} Hq=${Hq} Hkv=${Hkv} D=${D} ${causal ? `causal offset ${queryOffset ?? S - T}` : 'full'}`, (b) => {
      const ndq = randomF32(q.shape), ndk = randomF32(k.shape), ndv = randomF32(v.shape); // written, not added to
      b.attentionBackward(q, k, v, dout, ndq, ndk, ndv, options);
      assertWithin(ndq, dq, normwise(dq, c), 'attention dq');
      assertWithin(ndk, dk, normwise(dk, c), 'dk');
      assertWithin(ndv, dv, normwise(dv, c), 'dv');
    });
  }
});

describe('native crossEntropy against the definition', () => {
  // [n, H, V, head dtype]: V crosses two 4096-word chunks, n = 300 two 256-row blocks.
  const cases: [number, number, number, 'f32' | 'bf16'][] = [
    [300, 24, 8315, 'f32'],
    [5, 33, 4097, 'bf16'],
    [1, 16, 100, 'f32'],
  ];
  for (const [n, H, V, dtype] of cases) {
    const hidden = randomF32([n, H], 2);
    const head = dtype === 'f32' ? randomF32([V, H]) : toBf16(randomF32([V, H]));
    const r = new Rng(seed++);
    const targets = Tensor.i32([n], Array.from({ length: n }, () => Math.floor(r.next() * V)));
    const scale = 0.37;
    const head0 = randomF32([V, H]);
    const losses = Tensor.empty('f32', [n]), dh = Tensor.empty('f32', [n, H]), dw = copy(head0);
    hostGradients.crossEntropy(hidden, head, targets, scale, losses, dh, dw);
    eachBackend(`n=${n} H=${H} V=${V}, ${dtype} head`, (b) => {
      const nl = Tensor.empty('f32', [n]), ndh = randomF32([n, H]), ndw = copy(head0);
      b.crossEntropy(hidden, head, targets, scale, nl, ndh, ndw);
      assertWithin(nl, losses, normwise(losses, 4 * (4096 / 16 + H)), 'losses');
      assertWithin(ndh, dh, normwise(dh, V + n), 'dhidden');
      // dhead's previous contents are O(1) and its increments O(scale/V): the bound is on the increment.
      const inc = Tensor.f32(dw.shape, (dw.data as Float32Array).map((v, i) => v - head0.data[i]!));
      assertWithin(ndw, dw, normwise(inc, V + n) + 2 * U, 'dhead');
      const lossOnly = Tensor.empty('f32', [n]);
      b.crossEntropy(hidden, head, targets, scale, lossOnly, null, null);
      assert.deepEqual(lossOnly.data, nl.data, 'losses without gradients');
    });
  }
});

describe('native row and elementwise gradients against the definition', () => {
  for (const [rows, cols] of [[1, 45], [67, 300]] as const) {
    for (const wType of ['f32', 'bf16'] as const) {
      const x = randomF32([rows, cols], 3), dy = randomF32([rows, cols]);
      const wf = randomF32([cols]);
      const w = wType === 'f32' ? wf : toBf16(wf);
      const dw0 = randomF32([cols]), db0 = randomF32([cols]);
      const rdx = Tensor.empty('f32', x.shape), rdw = copy(dw0);
      hostGradients.rmsNormBackward(dy, x, w, 1e-6, rdx, rdw);
      const ldx = Tensor.empty('f32', x.shape), ldw = copy(dw0), ldb = copy(db0);
      hostGradients.layerNormBackward(dy, x, w, 1e-6, ldx, ldw, ldb);
      eachBackend(`rms/layerNorm ${rows}×${cols}, ${wType} weight`, (b) => {
        const dx = Tensor.empty('f32', x.shape), dw = copy(dw0), db = copy(db0);
        b.rmsNormBackward(dy, x, w, 1e-6, dx, dw);
        assertWithin(dx, rdx, normwise(rdx, 16), 'rmsNorm dx');
        assertWithin(dw, rdw, normwise(rdw, 16), 'rmsNorm dweight');
        const inPlace = copy(dy);
        b.rmsNormBackward(inPlace, x, w, 1e-6, inPlace, null);
        assert.deepEqual(inPlace.data, dx.data, 'rmsNorm dx over dy');
        const ldx2 = Tensor.empty('f32', x.shape), ldw2 = copy(dw0), ldb2 = copy(db0);
        b.layerNormBackward(dy, x, w, 1e-6, ldx2, ldw2, ldb2);
        assertWithin(ldx2, ldx, normwise(ldx, 16), 'layerNorm dx');
        assertWithin(ldw2, ldw, normwise(ldw, 16), 'layerNorm dweight');
        assertWithin(ldb2, ldb, normwise(ldb, 16), 'layerNorm dbias');
      });
    }
  }

  const n = 3 * 256 + 77; // several exp chunks and a ragged one
  const x = randomF32([n], 4), up = randomF32([n], 2), dy = randomF32([n]);
  for (const approximation of ['tanh', 'erf'] as const) {
    const expected = Tensor.empty('f32', [n]);
    hostGradients.geluBackward(dy, x, expected, approximation);
    eachBackend(`geluBackward ${approximation}`, (b) => {
      const dx = Tensor.empty('f32', [n]);
      b.geluBackward(dy, x, dx, approximation);
      assertWithin(dx, expected, normwise(expected, 16), `gelu ${approximation} dx`);
      const inPlace = copy(dy);
      b.geluBackward(inPlace, x, inPlace, approximation);
      assert.deepEqual(inPlace.data, dx.data, 'dx over dy');
    });
  }
  {
    const dg = Tensor.empty('f32', [n]), du = Tensor.empty('f32', [n]);
    hostGradients.siluMulBackward(dy, x, up, dg, du);
    eachBackend('siluMulBackward', (b) => {
      const g = Tensor.empty('f32', [n]), u = Tensor.empty('f32', [n]);
      b.siluMulBackward(dy, x, up, g, u);
      assertWithin(g, dg, normwise(dg, 16), 'dgate');
      assertWithin(u, du, normwise(du, 16), 'dup');
      const gate2 = copy(x), up2 = copy(up); // both gradients written over the inputs
      b.siluMulBackward(dy, gate2, up2, gate2, up2);
      assert.deepEqual([gate2.data, up2.data], [g.data, u.data], 'over gate and up');
    });
  }
  {
    const [T, H, D] = [5, 3, 18];
    const g = randomF32([T, H, D]), cos = randomF32([T, D / 2]), sin = randomF32([T, D / 2]);
    const expected = Tensor.empty('f32', g.shape);
    hostGradients.ropeBackward(g, cos, sin, expected);
    eachBackend('ropeBackward', (b) => {
      const dx = Tensor.empty('f32', g.shape);
      b.ropeBackward(g, cos, sin, dx);
      assertWithin(dx, expected, normwise(expected, 4), 'rope dx');
      const inPlace = copy(g);
      b.ropeBackward(inPlace, cos, sin, inPlace);
      assert.deepEqual(inPlace.data, dx.data, 'dx over dy');
    });
  }
  for (const m of [1, 2]) {
    const g = randomF32([7, 29]);
    const expected = Tensor.empty('f32', [7 * m * m, 29]);
    hostGradients.mergeBlocksBackward(g, m, expected);
    eachBackend(`mergeBlocksBackward m=${m}`, (b) => {
      const dx = randomF32([7 * m * m, 29]);
      b.mergeBlocksBackward(g, m, dx);
      assert.deepEqual(dx.data, expected.data);
    });
  }
  {
    const [T, V, D] = [40, 9, 70];
    const r = new Rng(seed++);
    const ids = Tensor.i32([T], Array.from({ length: T }, () => Math.floor(r.next() * V))); // repeats on purpose
    const g = randomF32([T, D]), table0 = randomF32([V, D]);
    const expected = copy(table0);
    hostGradients.embeddingBackward(g, ids, expected);
    eachBackend('embeddingBackward', (b) => {
      const table = copy(table0);
      b.embeddingBackward(g, ids, table);
      assert.deepEqual(table.data, expected.data);
    });
  }
});
