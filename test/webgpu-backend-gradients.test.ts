// The WebGPU backend's GradientOps (through createBackend('webgpu'), the checked backend) against the reference
// backend, on odd sizes: in place where the interface allows it, parameter gradients added to what they hold, bf16
// weights, weights split into pages of rows (a lowered binding limit), and AdamW bit for bit.
// Tolerances: the reference and the kernels sum in other orders (and precisions), so a result may differ by a few ulps
// of the largest magnitude involved; each bound is a small multiple of that, and a wrong term is far above it.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Rng } from '../src/engine/rng.js';
import type { AdamWHyper, Backend } from '../src/tensor/backend.js';
import { CheckedBackend } from '../src/tensor/checked.js';
import { f32ToBf16 } from '../src/tensor/dtype.js';
import { createBackend } from '../src/tensor/index.js';
import { Tensor } from '../src/tensor/tensor.js';
import { WebGpuBackend, WebGpuKernels, WebGpuStorage } from '../src/tensor/webgpu/backend.js';
import './lavapipe.js';

let seed = 11;
function random(shape: number[], scale = 1): Tensor<'f32'> {
  const r = new Rng(seed++ * 7919);
  const t = Tensor.empty('f32', shape);
  for (let i = 0; i < t.numel; i++) t.data[i] = (r.next() * 2 - 1) * scale;
  return t;
}

function bf16Of(t: Tensor<'f32'>): Tensor<'bf16'> {
  const out = Tensor.empty('bf16', t.shape);
  for (let i = 0; i < t.numel; i++) out.data[i] = f32ToBf16(t.data[i]!);
  return out;
}

function ids(n: number, below: number): Tensor<'i32'> {
  const r = new Rng(seed++ * 104729);
  // A few values only, first and last included, so that ids repeat (embeddingBackward sums repeats).
  const few = [0, below - 1, Math.floor(below / 2), Math.floor(below / 3), 1];
  return Tensor.i32([n], Array.from({ length: n }, () => few[Math.floor(r.next() * few.length)]!));
}

function clone(t: Tensor): Tensor {
  const c = Tensor.empty(t.dtype, t.shape);
  (c.data as Float32Array).set(t.data as Float32Array);
  return c;
}

type Inputs = Record<string, Tensor>;

/** Runs `op` on `backend` over its own copies of `inputs` and reads every tensor back, as f32 (ids as they are). */
function runOn(backend: Backend, inputs: Inputs, op: (b: Backend, t: Inputs) => void): Record<string, Float32Array> {
  const t: Inputs = {};
  for (const [name, host] of Object.entries(inputs)) t[name] = backend.device === 'host' ? clone(host) : backend.upload(host);
  op(backend, t);
  return Object.fromEntries(Object.entries(t).map(([name, x]) => [name, backend.download(x).toFloat32()]));
}

const maxAbs = (a: ArrayLike<number>) => Array.from(a).reduce((m, v) => Math.max(m, Math.abs(v)), 0);

/** |got − want| ≤ tol · max |want| for every element, the first bad one named. */
function assertClose(what: string, got: Float32Array, want: Float32Array, tol: number): void {
  assert.equal(got.length, want.length, `${what}: length`);
  const bound = tol * maxAbs(want);
  for (let i = 0; i < want.length; i++) {
    if (!(Math.abs(got[i]! - want[i]!) <= bound)) assert.fail(`${what}[${i}]: got ${got[i]}, want ${want[i]} (bound ${bound})`);
  }
}

describe('WebGPU backend gradients against the reference backend', () => {
  let gpu: Backend;
  const ref = createBackend('reference', { compute: 'exact' });
  before(() => {
    gpu = createBackend('webgpu', { compute: 'exact' });
  });
  after(() => (gpu as WebGpuBackend | undefined)?.close());

  /** The op on both backends; `outputs` compared within tol (of each output's largest magnitude). */
  function check(what: string, inputs: Inputs, outputs: string[], op: (b: Backend, t: Inputs) => void, tol = 1e-5, on = gpu): void {
    const want = runOn(ref, inputs, op);
    const got = runOn(on, inputs, op);
    for (const name of outputs) assertClose(`${what}: ${name}`, got[name]!, want[name]!, tol);
  }

  it('matmulBackward: dx, dw and dbias (added to), f32 and bf16 weights, each gradient alone', () => {
    for (const bf16 of [false, true]) {
      const w = random([37, 29]);
      const grads = { dx: random([2, 3, 29]), dw: random([37, 29]), dbias: random([37]) };
      const inputs = { dy: random([2, 3, 37]), x: random([2, 3, 29]), w: bf16 ? bf16Of(w) : w, ...grads };
      const what = `matmulBackward ${bf16 ? 'bf16' : 'f32'}`;
      check(what, inputs, ['dx', 'dw', 'dbias'], (b, t) => b.matmulBackward(t.dy!, t.x!, t.w!, t.dx!, t.dw!, t.dbias!));
      check(`${what} dx`, inputs, ['dx', 'dw', 'dbias'], (b, t) => b.matmulBackward(t.dy!, t.x!, t.w!, t.dx!, null, null));
      check(`${what} dw`, inputs, ['dx', 'dw', 'dbias'], (b, t) => b.matmulBackward(t.dy!, t.x!, t.w!, null, t.dw!, null));
      check(`${what} dbias`, inputs, ['dx', 'dw', 'dbias'], (b, t) => b.matmulBackward(t.dy!, t.x!, t.w!, null, null, t.dbias!));
    }
  });

  it("matmulBackward in the 'bf16' compute mode rounds its operands as the reference does", () => {
    const bf = createBackend('webgpu', { compute: 'bf16' });
    try {
      const refBf = createBackend('reference', { compute: 'bf16' });
      const inputs = { dy: random([5, 37]), x: random([5, 29]), w: random([37, 29]), dx: random([5, 29]), dw: random([37, 29]) };
      const op = (b: Backend, t: Inputs) => b.matmulBackward(t.dy!, t.x!, t.w!, t.dx!, t.dw!, null);
      const want = runOn(refBf, inputs, op);
      const got = runOn(bf, inputs, op);
      // Unrounded operands would differ by about 2⁻⁹ relative, far above this bound.
      for (const name of ['dx', 'dw']) assertClose(`bf16 mode ${name}`, got[name]!, want[name]!, 1e-5);
      const exact = runOn(ref, inputs, op);
      assert.ok(maxAbs(exact.dx!.map((v, i) => v - want.dx![i]!)) > 1e-4 * maxAbs(want.dx!), 'the bf16 mode differs from the exact one');
    } finally {
      (bf as WebGpuBackend).close();
    }
  });

  it('rmsNormBackward and layerNormBackward: f32 and bf16 weights, parameter gradients added to, dx in place of dy', () => {
    for (const bf16 of [false, true]) {
      const weight = random([37], 2);
      const grads = { dx: random([5, 37]), dweight: random([37]), dbias: random([37]) };
      const inputs = { dy: random([5, 37]), x: random([5, 37], 3), weight: bf16 ? bf16Of(weight) : weight, ...grads };
      const what = bf16 ? 'bf16' : 'f32';
      const all = ['dy', 'dx', 'dweight', 'dbias'];
      check(`rmsNorm ${what}`, inputs, all, (b, t) => b.rmsNormBackward(t.dy!, t.x!, t.weight!, 1e-6, t.dx!, t.dweight!));
      check(`rmsNorm ${what} in place`, inputs, all, (b, t) => b.rmsNormBackward(t.dy!, t.x!, t.weight!, 1e-6, t.dy!, null));
      check(`layerNorm ${what}`, inputs, all, (b, t) => b.layerNormBackward(t.dy!, t.x!, t.weight!, 1e-5, t.dx!, t.dweight!, t.dbias!));
      check(`layerNorm ${what} in place`, inputs, all, (b, t) => b.layerNormBackward(t.dy!, t.x!, t.weight!, 1e-5, t.dy!, null, t.dbias!));
    }
  });

  it('mergeBlocksBackward for merge sizes 2 and 1', () => {
    const inputs = { dy: random([3, 37]), dx2: random([12, 37]), dx1: random([3, 37]) };
    check('mergeBlocks', inputs, ['dx2', 'dx1'], (b, t) => {
      b.mergeBlocksBackward(t.dy!, 2, t.dx2!);
      b.mergeBlocksBackward(t.dy!, 1, t.dx1!);
    });
  });

  it('geluBackward, tanh and erf, into dx, dy and x', () => {
    for (const approximation of ['tanh', 'erf'] as const) {
      const inputs = { dy: random([3, 37]), x: random([3, 37], 4), dx: random([3, 37]) };
      check(`gelu ${approximation}`, inputs, ['dx'], (b, t) => b.geluBackward(t.dy!, t.x!, t.dx!, approximation));
      check(`gelu ${approximation} dx = dy`, inputs, ['dy'], (b, t) => b.geluBackward(t.dy!, t.x!, t.dy!, approximation));
      check(`gelu ${approximation} dx = x`, inputs, ['x'], (b, t) => b.geluBackward(t.dy!, t.x!, t.x!, approximation));
    }
  });

  it('siluMulBackward, into new tensors and over dy and up', () => {
    const inputs = { dy: random([3, 37]), gate: random([3, 37], 4), up: random([3, 37]), dgate: random([3, 37]), dup: random([3, 37]) };
    check('siluMul', inputs, ['dgate', 'dup'], (b, t) => b.siluMulBackward(t.dy!, t.gate!, t.up!, t.dgate!, t.dup!));
    check('siluMul in place', inputs, ['dy', 'up'], (b, t) => b.siluMulBackward(t.dy!, t.gate!, t.up!, t.dy!, t.up!));
  });

  it('ropeBackward, into dx and in place', () => {
    const inputs = { dy: random([3, 5, 38]), cos: random([3, 19]), sin: random([3, 19]), dx: random([3, 5, 38]) };
    check('rope', inputs, ['dx'], (b, t) => b.ropeBackward(t.dy!, t.cos!, t.sin!, t.dx!));
    check('rope in place', inputs, ['dy'], (b, t) => b.ropeBackward(t.dy!, t.cos!, t.sin!, t.dy!));
  });

  it('attentionBackward: causal with grouped KV heads and a query offset, and full', () => {
    const [qs, kvs] = [[7, 4, 18], [9, 2, 18]];
    const inputs = { q: random(qs), k: random(kvs), v: random(kvs), dout: random(qs), dq: random(qs), dk: random(kvs), dv: random(kvs) };
    const cases = [{ scale: 1 / Math.sqrt(18), causal: true }, { scale: 0.3, causal: true, queryOffset: 1 }, { scale: 0.25, causal: false }];
    for (const options of cases) {
      const op = (b: Backend, t: Inputs) => b.attentionBackward(t.q!, t.k!, t.v!, t.dout!, t.dq!, t.dk!, t.dv!, options);
      check(`attention ${JSON.stringify(options)}`, inputs, ['dq', 'dk', 'dv'], op, 1e-4);
    }
  });

  it('embeddingBackward adds repeated ids row by row in order: bit for bit', () => {
    const inputs = { dy: random([11, 29]), ids: ids(11, 37), dtable: random([37, 29]) };
    const op = (b: Backend, t: Inputs) => b.embeddingBackward(t.dy!, t.ids!, t.dtable!);
    assert.deepEqual(runOn(gpu, inputs, op).dtable, runOn(ref, inputs, op).dtable);
  });

  it('crossEntropy: losses, dhidden and dhead (added to), f32 and bf16 heads, losses alone', () => {
    for (const bf16 of [false, true]) {
      const head = random([37, 29]);
      const grads = { losses: random([5]), dhidden: random([5, 29]), dhead: random([37, 29]) };
      const inputs = { hidden: random([5, 29], 2), head: bf16 ? bf16Of(head) : head, targets: ids(5, 37), ...grads };
      const what = `crossEntropy ${bf16 ? 'bf16' : 'f32'}`;
      const all = ['losses', 'dhidden', 'dhead'];
      check(what, inputs, all, (b, t) => b.crossEntropy(t.hidden!, t.head!, t.targets!, 0.2, t.losses!, t.dhidden!, t.dhead!));
      check(`${what} losses`, inputs, all, (b, t) => b.crossEntropy(t.hidden!, t.head!, t.targets!, 0.2, t.losses!, null, null));
    }
  });

  it('adamw gives the reference bits over three steps, weight decay and a subnormal-sized moment included', () => {
    const hyper: AdamWHyper = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };
    const v = random([3, 37], 1e-3);
    for (let i = 0; i < v.numel; i++) v.data[i] = v.data[i]! * v.data[i]!;
    v.data[5] = 1e-40;
    const inputs = { p: random([3, 37]), g: random([3, 37]), m: random([3, 37], 0.1), v };
    const op = (b: Backend, t: Inputs) => {
      for (let step = 1; step <= 3; step++) b.adamw(t.p!, t.g!, t.m!, t.v!, step, hyper);
    };
    const got = runOn(gpu, inputs, op);
    const want = runOn(ref, inputs, op);
    for (const name of ['p', 'm', 'v']) assert.deepEqual(new Uint32Array(got[name]!.buffer), new Uint32Array(want[name]!.buffer), `adamw ${name}`);
  });

  // A binding limit of 1 KiB: a [37, 29] f32 weight (4292 bytes) becomes pages of 8 rows, a bf16 one pages of 17, so
  // a bf16 weight and its f32 gradient are cut at different rows.
  describe('with weights split into pages of rows', () => {
    let small: Backend;
    let kernels: WebGpuKernels;
    before(() => {
      kernels = new WebGpuKernels({ bindingLimit: 1024, compute: 'exact' });
      small = new CheckedBackend(kernels);
    });
    after(() => kernels?.close());

    const paged = (b: Backend, t: Tensor) => {
      const storage = b.upload(t).storage as WebGpuStorage;
      return storage.pages?.length ?? 1;
    };

    it('matmulBackward reads a split weight and adds to a split dw', () => {
      for (const bf16 of [false, true]) {
        const w = random([37, 29]);
        const grads = { dx: random([6, 29]), dw: random([37, 29]), dbias: random([37]) };
        const inputs = { dy: random([6, 37]), x: random([6, 29]), w: bf16 ? bf16Of(w) : w, ...grads };
        assert.ok(paged(small, inputs.w) > 1 && paged(small, inputs.dw) > 1, 'the weight and dw are split');
        const what = `split matmulBackward ${bf16 ? 'bf16' : 'f32'}`;
        check(what, inputs, ['dx', 'dw', 'dbias'], (b, t) => b.matmulBackward(t.dy!, t.x!, t.w!, t.dx!, t.dw!, t.dbias!), 1e-5, small);
        check(`${what} dx`, inputs, ['dx'], (b, t) => b.matmulBackward(t.dy!, t.x!, t.w!, t.dx!, null, null), 1e-5, small);
      }
    });

    // 7 rows of 37 logits (1036 bytes) overflow the scratch the binding limit allows: blocks of 6 rows and 1.
    it('crossEntropy reads a split head and adds to a split dhead, in blocks of rows', () => {
      const head = bf16Of(random([37, 29]));
      const grads = { losses: random([7]), dhidden: random([7, 29]), dhead: random([37, 29]) };
      const inputs = { hidden: random([7, 29], 2), head, targets: Tensor.i32([7], [36, 0, 17, 8, 16, 36, 2]), ...grads };
      assert.ok(paged(small, inputs.head) > 1 && paged(small, inputs.dhead) > 1, 'the head and dhead are split');
      const op = (b: Backend, t: Inputs) => b.crossEntropy(t.hidden!, t.head!, t.targets!, 0.5, t.losses!, t.dhidden!, t.dhead!);
      check('split crossEntropy', inputs, ['losses', 'dhidden', 'dhead'], op, 1e-5, small);
    });

    it('embeddingBackward adds to a split table', () => {
      const inputs = { dy: random([7, 29]), ids: Tensor.i32([7], [36, 0, 8, 7, 36, 16, 0]), dtable: random([37, 29]) };
      assert.ok(paged(small, inputs.dtable) > 1, 'the table is split');
      const op = (b: Backend, t: Inputs) => b.embeddingBackward(t.dy!, t.ids!, t.dtable!);
      assert.deepEqual(runOn(small, inputs, op).dtable, runOn(ref, inputs, op).dtable);
    });
  });
});
