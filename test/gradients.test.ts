// Every gradient op against central finite differences of its forward op on the reference backend: the loss is
// Σ out ⊙ r for a random r (so dy = r), and a sample of input elements is nudged both ways. Tolerances sit well above
// the f32 forward's rounding (which the differences divide by the step) and far below any missing or wrong term.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ropeInverseFrequencies, ropeTables } from '../src/model/rope.js';
import type { AttentionOptions } from '../src/tensor/backend.js';
import { createBackend } from '../src/tensor/index.js';
import { Tensor } from '../src/tensor/tensor.js';

const b = createBackend('reference');

function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}

function tensor(shape: number[], rnd: () => number, scale = 1): Tensor<'f32'> {
  const t = b.allocate('f32', shape);
  const d = t.data as Float32Array;
  for (let i = 0; i < d.length; i++) d[i] = rnd() * 2 * scale;
  return t;
}

const dot = (a: Tensor, r: Tensor) => (a.data as Float32Array).reduce((s, v, i) => s + v * (r.data as Float32Array)[i]!, 0);

/**
 * Central differences of `loss` in a sample of `input`'s elements against `analytic` (same layout): each within
 * `tol` · max |analytic| of it.
 */
function assertMatchesDifferences(name: string, input: Tensor, analytic: Float32Array, loss: () => number, tol = 1e-2, step = 1e-2): void {
  const data = input.data as Float32Array;
  const scale = Math.max(...Array.from(analytic, Math.abs));
  assert.ok(scale > 0, `${name}: the analytic gradient is all zero`);
  const picks = Math.min(data.length, 24);
  for (let j = 0; j < picks; j++) {
    const i = Math.floor((j * data.length) / picks);
    const saved = data[i]!;
    data[i] = saved + step;
    const up = loss();
    data[i] = saved - step;
    const down = loss();
    data[i] = saved;
    const numeric = (up - down) / (2 * step);
    assert.ok(Math.abs(numeric - analytic[i]!) <= tol * scale, `${name}[${i}]: analytic ${analytic[i]} against differences ${numeric}`);
  }
}

describe('gradient ops against finite differences', () => {
  it('matmulBackward: dx written, dw and dbias added to', () => {
    const rnd = random(1);
    const x = tensor([5, 7], rnd);
    const w = tensor([6, 7], rnd);
    const bias = tensor([6], rnd);
    const r = tensor([5, 6], rnd);
    const out = b.allocate('f32', [5, 6]);
    const loss = () => (b.matmul(x, w, bias, out), dot(out, r));
    const dx = tensor([5, 7], rnd);
    const dw = b.allocate('f32', [6, 7]);
    b.fill(dw, 1);
    const dbias = b.allocate('f32', [6]);
    b.fill(dbias, 2);
    b.matmulBackward(r, x, w, dx, dw, dbias);
    assertMatchesDifferences('dx', x, dx.data as Float32Array, loss);
    assertMatchesDifferences('dw', w, (dw.data as Float32Array).map((v) => v - 1), loss);
    assertMatchesDifferences('dbias', bias, (dbias.data as Float32Array).map((v) => v - 2), loss);
  });

  it('matmulBackward with bf16 weights reads them widened', () => {
    const rnd = random(2);
    const x = tensor([3, 4], rnd);
    const w32 = tensor([2, 4], rnd);
    const bits = Uint16Array.from(new Uint32Array((w32.data as Float32Array).buffer.slice(0)), (u) => u >>> 16);
    const w16 = new Tensor('bf16', [2, 4], bits);
    const r = tensor([3, 2], rnd);
    const out = b.allocate('f32', [3, 2]);
    const dx = b.allocate('f32', [3, 4]);
    b.matmulBackward(r, x, w16, dx, null, null);
    assertMatchesDifferences('dx (bf16 w)', x, dx.data as Float32Array, () => (b.matmul(x, w16, null, out), dot(out, r)));
  });

  it('rmsNormBackward', () => {
    const rnd = random(3);
    const x = tensor([3, 8], rnd);
    const weight = tensor([8], rnd);
    const r = tensor([3, 8], rnd);
    const out = b.allocate('f32', [3, 8]);
    const loss = () => (b.rmsNorm(x, weight, 1e-6, out), dot(out, r));
    const dx = b.allocate('f32', [3, 8]);
    const dweight = b.allocate('f32', [8]);
    b.rmsNormBackward(r, x, weight, 1e-6, dx, dweight);
    assertMatchesDifferences('dx', x, dx.data as Float32Array, loss, 1e-2, 1e-3);
    assertMatchesDifferences('dweight', weight, dweight.data as Float32Array, loss);
  });

  it('layerNormBackward', () => {
    const rnd = random(10);
    const x = tensor([3, 8], rnd, 2);
    const weight = tensor([8], rnd);
    const bias = tensor([8], rnd);
    const r = tensor([3, 8], rnd);
    const out = b.allocate('f32', [3, 8]);
    const loss = () => (b.layerNorm(x, weight, bias, 1e-6, out), dot(out, r));
    const dx = b.allocate('f32', [3, 8]);
    const [dweight, dbias] = [b.allocate('f32', [8]), b.allocate('f32', [8])];
    b.layerNormBackward(r, x, weight, 1e-6, dx, dweight, dbias);
    assertMatchesDifferences('dx', x, dx.data as Float32Array, loss, 1e-2, 1e-3);
    assertMatchesDifferences('dweight', weight, dweight.data as Float32Array, loss);
    assertMatchesDifferences('dbias', bias, dbias.data as Float32Array, loss);
  });

  for (const mergeSize of [1, 2]) {
    it(`mergeBlocksBackward, merge size ${mergeSize}`, () => {
      const rnd = random(11);
      const x = tensor([8, 3], rnd);
      const rows = 8 / mergeSize ** 2;
      const r = tensor([rows, 3], rnd);
      const out = b.allocate('f32', [rows, 3]);
      const dx = b.allocate('f32', [8, 3]);
      b.mergeBlocksBackward(r, mergeSize, dx);
      assertMatchesDifferences('dx', x, dx.data as Float32Array, () => (b.mergeBlocks(x, mergeSize, out), dot(out, r)));
    });
  }

  for (const approximation of ['tanh', 'erf'] as const) {
    it(`geluBackward, ${approximation} form`, () => {
      const rnd = random(9);
      const x = tensor([4, 5], rnd, 3);
      const r = tensor([4, 5], rnd);
      const out = b.allocate('f32', [4, 5]);
      const dx = b.allocate('f32', [4, 5]);
      b.geluBackward(r, x, dx, approximation);
      assertMatchesDifferences('dx', x, dx.data as Float32Array, () => (b.gelu(x, out, approximation), dot(out, r)));
    });
  }

  it('siluMulBackward, also written over its inputs', () => {
    const rnd = random(4);
    const gate = tensor([4, 6], rnd, 3);
    const up = tensor([4, 6], rnd);
    const r = tensor([4, 6], rnd);
    const out = b.allocate('f32', [4, 6]);
    const loss = () => (b.siluMul(gate, up, out), dot(out, r));
    const dgate = b.allocate('f32', [4, 6]);
    const dup = b.allocate('f32', [4, 6]);
    b.siluMulBackward(r, gate, up, dgate, dup);
    assertMatchesDifferences('dgate', gate, dgate.data as Float32Array, loss);
    assertMatchesDifferences('dup', up, dup.data as Float32Array, loss);
    const [g2, u2] = [b.allocate('f32', [4, 6]), b.allocate('f32', [4, 6])];
    b.copy(gate, g2);
    b.copy(up, u2);
    b.siluMulBackward(r, g2, u2, g2, u2);
    assert.deepEqual(g2.data, dgate.data);
    assert.deepEqual(u2.data, dup.data);
  });

  it('ropeBackward, in place', () => {
    const rnd = random(5);
    const x = tensor([3, 2, 8], rnd);
    const tables = ropeTables(ropeInverseFrequencies(8, 10000), [5, 6, 70]);
    const cos = b.allocate('f32', [3, 4]);
    const sin = b.allocate('f32', [3, 4]);
    b.write(cos, tables.cos);
    b.write(sin, tables.sin);
    const r = tensor([3, 2, 8], rnd);
    const out = b.allocate('f32', [3, 2, 8]);
    const dx = b.allocate('f32', [3, 2, 8]);
    b.copy(r, dx);
    b.ropeBackward(dx, cos, sin, dx);
    assertMatchesDifferences('dx', x, dx.data as Float32Array, () => (b.rope(x, cos, sin, out), dot(out, r)));
  });

  for (const [label, options, S] of [
    ['causal, queries after 2 earlier keys', { scale: 0.35, causal: true, queryOffset: 2 }, 7],
    ['not causal', { scale: 0.35, causal: false }, 6],
  ] as [string, AttentionOptions, number][]) {
    it(`attentionBackward with grouped KV heads, ${label}`, () => {
      const rnd = random(6);
      const q = tensor([5, 4, 8], rnd, 2);
      const k = tensor([S, 2, 8], rnd, 2);
      const v = tensor([S, 2, 8], rnd);
      const r = tensor([5, 4, 8], rnd);
      const out = b.allocate('f32', [5, 4, 8]);
      const loss = () => (b.attention(q, k, v, out, options), dot(out, r));
      const [dq, dk, dv] = [b.allocate('f32', [5, 4, 8]), tensor([S, 2, 8], rnd), tensor([S, 2, 8], rnd)];
      b.attentionBackward(q, k, v, r, dq, dk, dv, options);
      assertMatchesDifferences('dq', q, dq.data as Float32Array, loss);
      assertMatchesDifferences('dk', k, dk.data as Float32Array, loss);
      assertMatchesDifferences('dv', v, dv.data as Float32Array, loss);
    });
  }

  it('embeddingBackward adds each row, repeated ids twice', () => {
    const rnd = random(7);
    const dy = tensor([4, 3], rnd);
    const ids = b.allocate('i32', [4]);
    b.write(ids, [3, 1, 3, 9]);
    const dtable = b.allocate('f32', [10, 3]);
    b.fill(dtable, 1);
    b.embeddingBackward(dy, ids, dtable);
    const g = dy.data as Float32Array;
    const t = dtable.data as Float32Array;
    for (let c = 0; c < 3; c++) {
      assert.equal(t[3 * 3 + c], Math.fround(Math.fround(1 + g[c]!) + g[2 * 3 + c]!));
      assert.equal(t[1 * 3 + c], Math.fround(1 + g[3 + c]!));
      assert.equal(t[9 * 3 + c], Math.fround(1 + g[9 + c]!));
      assert.equal(t[0 * 3 + c], 1);
    }
  });

  it('crossEntropy over a vocabulary of several chunks: losses, dhidden, dhead', () => {
    const rnd = random(8);
    const [n, H, V] = [3, 8, 9000];
    const hidden = tensor([n, H], rnd, 2);
    const head = tensor([V, H], rnd, 2);
    const targets = b.allocate('i32', [n]);
    const ids = [0, 4097, 8999];
    b.write(targets, ids);
    const losses = b.allocate('f32', [n]);
    const dhidden = b.allocate('f32', [n, H]);
    const dhead = b.allocate('f32', [V, H]);
    b.crossEntropy(hidden, head, targets, 0.5, losses, dhidden, dhead);
    // The losses against a log-softmax of the logits computed whole.
    const logits = b.allocate('f32', [n, V]);
    const lossOf = () => {
      b.matmul(hidden, head, null, logits);
      const l = logits.data as Float32Array;
      let total = 0;
      for (let i = 0; i < n; i++) {
        const row = l.subarray(i * V, (i + 1) * V);
        const max = Math.max(...row);
        const lse = max + Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0));
        total += lse - row[ids[i]!]!;
      }
      return 0.5 * total;
    };
    lossOf();
    const l = logits.data as Float32Array;
    for (let i = 0; i < n; i++) {
      const row = l.subarray(i * V, (i + 1) * V);
      const max = Math.max(...row);
      const expected = max + Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0)) - row[ids[i]!]!;
      assert.ok(Math.abs((losses.data as Float32Array)[i]! - expected) <= 1e-5 * Math.abs(expected), `loss ${i}`);
    }
    assertMatchesDifferences('dhidden', hidden, dhidden.data as Float32Array, lossOf);
    // dhead where it is largest: the targets' rows (a sample of all 72,000 elements would be almost all ~0).
    for (const id of ids) {
      const rows = new Tensor('f32', [1, H], (head.data as Float32Array).subarray(id * H, (id + 1) * H));
      assertMatchesDifferences(`dhead row ${id}`, rows, (dhead.data as Float32Array).subarray(id * H, (id + 1) * H), lossOf);
    }
  });
});
