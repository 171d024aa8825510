// The package entry resolves by its own name (as a user's import would) and exposes the documented API.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

describe('package entry', () => {
  it('exports the library API under the package name', async () => {
    const vl3 = await import('videollama3');
    const names = ['VideoLLaMA3', 'ModelWorker', 'AbortError', 'InvalidRequestError', 'Tokenizer', 'loadCheckpoint', 'loadImage', 'createBackend', 'Tensor', 'writeRandomCheckpoint', 'startServer', 'resolveModel', 'pullModel', 'listCachedModels', 'parseModelRef'];
    for (const name of names) {
      assert.equal(typeof (vl3 as Record<string, unknown>)[name], 'function', `${name} is not exported`);
    }
    assert.equal(typeof vl3.VideoLLaMA3.load, 'function');
  });
});
