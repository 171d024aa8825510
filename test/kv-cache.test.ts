import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KVCache } from '../src/engine/kv-cache.js';
import { ReferenceBackend } from '../src/tensor/reference.js';
import { Tensor } from '../src/tensor/tensor.js';

const backend = new ReferenceBackend();

describe('KVCache', () => {
  it('appends, grows without losing rows, and reports views of the prefix', () => {
    const cache = new KVCache(backend, 2, 1, 2, 100, 2);
    for (let t = 0; t < 5; t++) {
      cache.reserve(1);
      for (let l = 0; l < 2; l++) {
        cache.write(l, Tensor.f32([1, 1, 2], [t, l]), Tensor.f32([1, 1, 2], [10 + t, l]));
      }
      cache.advance(1);
    }
    assert.equal(cache.length, 5);
    assert.deepEqual(Array.from(cache.keysUpTo(1, 5).data), [0, 1, 1, 1, 2, 1, 3, 1, 4, 1]);
    assert.deepEqual(Array.from(cache.valuesUpTo(0, 3).data), [10, 0, 11, 0, 12, 0]);
  });

  it('hands out its positions as views that a forward pass computes into, and refuses those past its capacity', () => {
    const cache = new KVCache(backend, 2, 1, 2, 100, 2);
    cache.reserve(2);
    for (let l = 0; l < 2; l++) {
      const keys = cache.keysUpTo(l, 2);
      assert.deepEqual(keys.shape, [2, 1, 2]);
      backend.write(keys, [l, 1, l, 2]);
      backend.write(cache.valuesUpTo(l, 2), [l, 3, l, 4]);
    }
    cache.advance(2);
    assert.deepEqual(Array.from(cache.keysUpTo(1, 2).data), [1, 1, 1, 2]);
    assert.deepEqual(Array.from(cache.valuesUpTo(0, 2).data), [0, 3, 0, 4]);
    assert.throws(() => cache.keysUpTo(0, 3), /KVCache: position 2 is past its capacity of 2: call reserve\(\) first/);
    assert.throws(() => cache.write(0, Tensor.f32([1, 1, 2], [0, 0]), Tensor.f32([1, 1, 2], [0, 0])), /past its capacity/);
  });

  it('refuses to grow past the context length, naming both numbers', () => {
    const cache = new KVCache(backend, 1, 1, 4, 8);
    assert.throws(() => cache.reserve(9), /9 tokens exceeds the model's context of 8/);
  });

  it('releases its memory', () => {
    const cache = new KVCache(backend, 2, 2, 8, 1000, 100);
    assert.equal(cache.bytes, 100 * 2 * 2 * 2 * 8 * 4);
    cache.release();
    assert.equal(cache.bytes, 0);
  });
});
