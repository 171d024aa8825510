// The native AdamW kernel against its definition (host-gradients.ts adamw, the reference backend's kernel) bit for
// bit: seeded random tensors of odd lengths (under one vector, vector tails, several tasks per thread), several
// steps from zero moments with the lr changing per step as the schedule changes it, weight decay off and on, on every
// kernel tier this CPU supports with 1 and 2 threads. Gradients span 30 decades and include zeros and values whose
// squares are subnormal, so a tier that rounds a product twice, fuses one the definition rounds, or flushes
// subnormals differs somewhere. Also the checking layer's refusals, which name the operand.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { Rng } from '../src/engine/rng.js';
import type { AdamWHyper, Backend } from '../src/tensor/backend.js';
import { type Isa, NativeBackend, nativeInfo } from '../src/tensor/native.js';
import { ReferenceBackend } from '../src/tensor/reference.js';
import { Tensor, type Storage } from '../src/tensor/tensor.js';

const LENGTHS = [1, 7, 33, 1000, 100003];
const STEPS = 3;
const reference = new ReferenceBackend();

function random(n: number, seed: number, value: (r: Rng) => number): Tensor<'f32'> {
  const r = new Rng(seed);
  return Tensor.f32([n], Array.from({ length: n }, () => value(r)));
}

const uniform = (r: Rng) => r.next() * 2 - 1;
/** Magnitudes from 1e-20 to 1e10; every 97th a zero of either sign. */
function gradient(n: number, seed: number): Tensor<'f32'> {
  let i = 0;
  return random(n, seed, (r) => (i++ % 97 === 5 ? (r.next() < 0.5 ? 0 : -0) : uniform(r) * 10 ** (r.next() * 30 - 20)));
}

/** The first element whose bits differ, or -1. */
function firstDifference(a: Tensor<'f32'>, b: Tensor<'f32'>): number {
  const x = new Uint32Array(a.data.buffer, a.data.byteOffset, a.numel);
  const y = new Uint32Array(b.data.buffer, b.data.byteOffset, b.numel);
  return x.findIndex((bits, i) => bits !== y[i]);
}

interface State {
  p: Tensor<'f32'>;
  m: Tensor<'f32'>;
  v: Tensor<'f32'>;
}

/** STEPS updates of a fresh state of n elements on `backend`. */
function run(backend: Backend, n: number, hyper: Omit<AdamWHyper, 'lr'>, check: (step: number, s: State) => void): void {
  const s: State = { p: random(n, n * 31 + 1, uniform), m: Tensor.f32([n]), v: Tensor.f32([n]) };
  for (let step = 1; step <= STEPS; step++) {
    backend.adamw(s.p, gradient(n, n * 31 + 1 + step), s.m, s.v, step, { ...hyper, lr: 1e-3 * (1 + step) / 3 });
    check(step, s);
  }
}

const HYPERS: [string, Omit<AdamWHyper, 'lr'>][] = [
  ['no weight decay', { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 }],
  ['weight decay 0.1, betas (0.8, 0.95), eps 1e-6', { beta1: 0.8, beta2: 0.95, eps: 1e-6, weightDecay: 0.1 }],
];

describe('native adamw is the definition bit for bit', () => {
  // The definition's states, computed once per length and hyperparameter set.
  const expected = new Map<string, State[]>();
  for (const n of LENGTHS)
    for (const [name, hyper] of HYPERS) {
      const states: State[] = [];
      run(reference, n, hyper, (_, s) => states.push({ p: Tensor.f32([n], s.p.data), m: Tensor.f32([n], s.m.data), v: Tensor.f32([n], s.v.data) }));
      expected.set(`${n} ${name}`, states);
    }

  const tiers: Isa[] = [...nativeInfo().tiers].reverse();
  for (const isa of tiers)
    for (const threads of [1, 2])
      test(`${isa}, ${threads} thread(s)`, () => {
        const backend = new NativeBackend({ isa, threads });
        for (const n of LENGTHS)
          for (const [name, hyper] of HYPERS) {
            const want = expected.get(`${n} ${name}`)!;
            run(backend, n, hyper, (step, s) => {
              for (const key of ['p', 'm', 'v'] as const) {
                const at = firstDifference(s[key], want[step - 1]![key]);
                if (at >= 0) assert.fail(`n=${n}, ${name}, step ${step}: ${key}[${at}] is ${s[key].data[at]}, the definition ${want[step - 1]![key].data[at]}`);
              }
            });
          }
      });

  test('the states compared are not trivial: most elements move, and some second moments are subnormal', () => {
    const n = 1000;
    for (const [name] of HYPERS) {
      const start = random(n, n * 31 + 1, uniform);
      const states = expected.get(`${n} ${name}`)!;
      const moved = states[0]!.p.data.filter((x, i) => x !== start.data[i]).length;
      assert.ok(moved > n / 2, `${name}: ${moved} of ${n} moved`);
      const subnormal = states[0]!.v.data.filter((x) => x > 0 && x < 2 ** -126).length;
      assert.ok(subnormal > 0, `${name}: no subnormal second moment`);
    }
  });
});

describe('adamw arguments are checked before any kernel runs', () => {
  const hyper: AdamWHyper = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 };
  for (const backend of [new NativeBackend({ threads: 1 }), reference]) {
    test(`${backend.name} backend`, () => {
      const p = Tensor.f32([3], [1, 2, 3]);
      const g = Tensor.f32([3], [1, 1, 1]);
      const m = Tensor.f32([3]);
      const v = Tensor.f32([3]);
      const refused = (args: Partial<{ p: Tensor; g: Tensor; m: Tensor; v: Tensor; step: number; hyper: AdamWHyper }>, message: RegExp) => {
        const a = { p, g, m, v, step: 1, hyper, ...args };
        assert.throws(() => backend.adamw(a.p, a.g, a.m, a.v, a.step, a.hyper), message);
        assert.deepEqual([...p.data, ...m.data, ...v.data], [1, 2, 3, 0, 0, 0, 0, 0, 0], 'nothing moved');
      };
      refused({ g: new Tensor('bf16', [3], new Uint16Array(3)) }, /^Error: adamw: g: expected dtype f32, got bf16$/);
      refused({ v: Tensor.f32([4]) }, /^Error: adamw: v: expected shape \[3\], got \[4\]$/);
      refused({ m: Tensor.f32([3, 1]) }, /^Error: adamw: m: expected shape \[3\], got \[3, 1\]$/);
      refused({ p: Tensor.f32([4]) }, /^Error: adamw: g: expected shape \[4\], got \[3\]$/);
      refused({ v: m }, /^Error: adamw: m and v must not share storage$/);
      refused({ g: p }, /^Error: adamw: p and g must not share storage$/);
      const both = Tensor.f32([4]);
      refused({ m: both.rows(0, 3), v: both.rows(1, 4) }, /^Error: adamw: m and v must not share storage$/);
      const device: Storage = { device: 'elsewhere', byteLength: 12, memory: {} };
      refused({ m: new Tensor('f32', [3], device) }, /^Error: adamw: m \(.*\) lives on elsewhere, this backend \(\w+\) on host: upload it first$/);
      refused({ step: 0 }, /adamw: step must be an integer >= 1, got 0/);
      refused({ step: 1.5 }, /adamw: step must be an integer >= 1, got 1.5/);
      refused({ hyper: { ...hyper, beta1: 1 } }, /adamw: beta1 must be in \[0, 1\), got 1/);
      refused({ hyper: { ...hyper, beta2: -0.1 } }, /adamw: beta2 must be in \[0, 1\), got -0.1/);
      refused({ hyper: { ...hyper, lr: NaN } }, /adamw: lr must be finite, got NaN/);
      refused({ hyper: { ...hyper, weightDecay: Infinity } }, /adamw: weightDecay must be finite, got Infinity/);
      // Empty tensors are valid and change nothing; a valid call moves p.
      backend.adamw(Tensor.f32([0]), Tensor.f32([0]), Tensor.f32([0]), Tensor.f32([0]), 1, hyper);
      backend.adamw(p, g, m, v, 1, hyper);
      assert.ok(p.data.every((x, i) => x < i + 1));
    });
  }
});
