// The test device itself: a buffer round-trips, and a one-line kernel runs, so a kernel test that fails points at its
// kernel rather than at Dawn, Mesa or the harness.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { suiteGpu } from './webgpu-harness.js';

describe('WebGPU test device', () => {
  const device = suiteGpu();

  it('runs a dispatch and reads its output back', async () => {
    const data = Float32Array.from({ length: 37 }, (_, i) => i - 18.5);
    const buf = device.gpu.buffer(data.byteLength, data);
    await device.gpu.errors(() =>
      device.gpu.run([
        {
          key: 'test-double',
          wgsl: () => `@group(0) @binding(0) var<storage, read_write> a: array<f32>;
struct P { n: u32 }
@group(0) @binding(1) var<uniform> p: P;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3u) { if (id.x < p.n) { a[id.x] = a[id.x] * 2.0; } }`,
          buffers: [{ buffer: buf, write: true }],
          uniforms: Uint32Array.of(data.length),
          workgroups: [1, 1, 1],
        },
      ]),
    );
    const out = new Float32Array(await device.gpu.read(buf, 4, 36 * 4));
    assert.deepEqual([...out], [...data.subarray(1)].map((x) => 2 * x));
  });
});
