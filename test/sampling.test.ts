import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Rng } from '../src/engine/rng.js';
import { Sampler, type SamplingOptions } from '../src/engine/sampling.js';
import { ReferenceBackend } from '../src/tensor/reference.js';
import { Tensor } from '../src/tensor/tensor.js';

const backend = new ReferenceBackend();
const greedy: SamplingOptions = { doSample: false, temperature: 1, topK: 0, topP: 1, repetitionPenalty: 1 };

function logits(values: number[]): Tensor {
  return Tensor.f32([values.length], values);
}

describe('Sampler', () => {
  it('greedy picks the first maximum', () => {
    assert.equal(new Sampler(greedy, backend).next(logits([0.1, 2, 2, -1])), 1);
  });

  it('repetition penalty divides positive and multiplies negative logits of generated tokens only', () => {
    const s = new Sampler({ ...greedy, repetitionPenalty: 2 }, backend);
    s.observe(0);
    s.observe(3);
    const l = logits([3, 2, 1, -1]);
    assert.equal(s.next(l), 1);
    assert.deepEqual(Array.from(l.data as Float32Array), [1.5, 2, 1, -2]);
  });

  it('a penalty of 1.1 can flip a greedy choice, as transformers does', () => {
    const s = new Sampler({ ...greedy, repetitionPenalty: 1.1 }, backend);
    s.observe(0);
    assert.equal(s.next(logits([1.0, 0.95])), 1);
  });

  it('top-k 1 is greedy whatever the seed', () => {
    for (let seed = 0; seed < 20; seed++) {
      const s = new Sampler({ doSample: true, temperature: 0.7, topK: 1, topP: 1, repetitionPenalty: 1, seed }, backend);
      assert.equal(s.next(logits([0, 5, 4.9, 1])), 1);
    }
  });

  it('top-k keeps every token tied with the k-th score', () => {
    const seen = new Set<number>();
    for (let seed = 0; seed < 200; seed++) {
      const s = new Sampler({ doSample: true, temperature: 1, topK: 2, topP: 1, repetitionPenalty: 1, seed }, backend);
      seen.add(s.next(logits([3, 1, 1, 1, -50])));
    }
    assert.deepEqual([...seen].sort(), [0, 1, 2, 3]);
  });

  it('top-p drops the tail whose mass is at most 1 - top_p and never the last token', () => {
    // Probabilities ≈ [0.665, 0.245, 0.09]: top_p 0.6 keeps only the first token; 0.9 keeps the first two.
    const seenStrict = new Set<number>();
    const seenWide = new Set<number>();
    for (let seed = 0; seed < 300; seed++) {
      const base = { doSample: true, temperature: 1, topK: 0, repetitionPenalty: 1, seed };
      seenStrict.add(new Sampler({ ...base, topP: 0.6 }, backend).next(logits([2, 1, 0])));
      seenWide.add(new Sampler({ ...base, topP: 0.9 }, backend).next(logits([2, 1, 0])));
    }
    assert.deepEqual([...seenStrict], [0]);
    assert.deepEqual([...seenWide].sort(), [0, 1]);
  });

  it('is reproducible for a seed and follows the distribution', () => {
    const opts = { doSample: true, temperature: 1, topK: 0, topP: 1, repetitionPenalty: 1 };
    const draw = (seed: number) => {
      const s = new Sampler({ ...opts, seed }, backend);
      return Array.from({ length: 2000 }, () => s.next(logits([Math.log(3), 0])));
    };
    assert.deepEqual(draw(7), draw(7));
    const zeros = draw(11).filter((x) => x === 0).length / 2000;
    assert.ok(Math.abs(zeros - 0.75) < 0.04, `token 0 drawn ${zeros} of the time, expected 0.75`);
  });

  it('rejects invalid options with the field name', () => {
    assert.throws(() => new Sampler({ ...greedy, topP: 0 }, backend), /top_p/);
    assert.throws(() => new Sampler({ ...greedy, temperature: -1 }, backend), /temperature/);
    assert.throws(() => new Sampler({ ...greedy, topK: 1.5 }, backend), /top_k/);
    assert.throws(() => new Sampler({ ...greedy, repetitionPenalty: 0 }, backend), /repetition_penalty/);
  });
});

describe('Rng', () => {
  it('is deterministic per seed and uniform enough', () => {
    const a = new Rng(42);
    const b = new Rng(42);
    const xs = Array.from({ length: 10000 }, () => a.next());
    assert.deepEqual(xs.slice(0, 5), Array.from({ length: 5 }, () => b.next()));
    assert.ok(xs.every((x) => x >= 0 && x < 1));
    const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
    assert.ok(Math.abs(mean - 0.5) < 0.01, `mean ${mean}`);
    assert.notDeepEqual(xs.slice(0, 5), Array.from({ length: 5 }, () => new Rng(43).next()));
  });
});
