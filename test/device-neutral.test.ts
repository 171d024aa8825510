// The model runs on a backend whose memory the host cannot read: a device with storage of its own, where reading a
// tensor's `data` throws. Text, image and video chats on it give the answers of the native backend, so no model,
// engine or processing code reaches into a tensor's memory; only the backend's memory ops move data. The device's
// kernels are the native ones, run on views the device makes of its own memory.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { VideoLLaMA3 } from '../src/api/videollama3.js';
import type { AttentionOptions, ComputeMode, Kernels, TopK } from '../src/tensor/backend.js';
import { CheckedBackend } from '../src/tensor/checked.js';
import type { DType } from '../src/tensor/dtype.js';
import { hostMemory } from '../src/tensor/host.js';
import { NativeKernels } from '../src/tensor/native.js';
import { HostStorage, Tensor, type Storage } from '../src/tensor/tensor.js';
import { fixturesDir, FIXTURES_MISSING, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();

/** Memory the host may not read: only the device's own kernels see into it. */
class DeviceStorage implements Storage {
  readonly device = 'test-device';
  constructor(readonly bytes: ArrayBuffer) {}
  get byteLength(): number {
    return this.bytes.byteLength;
  }
  get memory(): object {
    return this.bytes;
  }
}

/** The host view of a device tensor, as a real device's kernels would address its own memory. */
function hostView<D extends DType>(t: Tensor<D>): Tensor<D> {
  if (!(t.storage instanceof DeviceStorage)) throw new Error(`${t} is not on the test device`);
  return new Tensor(t.dtype, t.shape, new HostStorage(t.storage.bytes), t.byteOffset);
}

const counts = { uploads: 0, downloads: 0 };

/** A backend with device memory: the native kernels behind an upload/download boundary. */
class DeviceKernels implements Kernels {
  readonly name = 'test-device';
  readonly device = 'test-device';
  private readonly cpu = new NativeKernels();

  get threads(): number {
    return this.cpu.threads;
  }
  get compute(): ComputeMode {
    return this.cpu.compute;
  }

  allocateStorage(bytes: number): Storage {
    return new DeviceStorage(new ArrayBuffer(bytes));
  }
  upload<D extends DType>(host: Tensor<D>): Tensor<D> {
    counts.uploads++;
    const t = new Tensor(host.dtype, host.shape, this.allocateStorage(host.byteLength));
    hostMemory.copy(host, hostView(t));
    return t;
  }
  download<D extends DType>(t: Tensor<D>): Tensor<D> {
    counts.downloads++;
    const host = Tensor.empty(t.dtype, t.shape);
    hostMemory.copy(hostView(t), host);
    return host;
  }
  write(dst: Tensor, values: ArrayLike<number>): void {
    hostMemory.write(hostView(dst), values);
  }
  copy(src: Tensor, dst: Tensor): void {
    hostMemory.copy(hostView(src), hostView(dst));
  }
  copyRows(src: Tensor, srcRows: Int32Array, dst: Tensor, dstRows: Int32Array): void {
    hostMemory.copyRows(hostView(src), srcRows, hostView(dst), dstRows);
  }
  fill(t: Tensor, value: number): void {
    hostMemory.fill(hostView(t), value);
  }

  matmul(x: Tensor, w: Tensor, bias: Tensor | null, out: Tensor): void {
    this.cpu.matmul(hostView(x), hostView(w), bias && hostView(bias), hostView(out));
  }
  add(a: Tensor, b: Tensor, out: Tensor): void {
    this.cpu.add(hostView(a), hostView(b), hostView(out));
  }
  mul(a: Tensor, b: Tensor, out: Tensor): void {
    this.cpu.mul(hostView(a), hostView(b), hostView(out));
  }
  rmsNorm(x: Tensor, weight: Tensor, eps: number, out: Tensor): void {
    this.cpu.rmsNorm(hostView(x), hostView(weight), eps, hostView(out));
  }
  layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps: number, out: Tensor): void {
    this.cpu.layerNorm(hostView(x), hostView(weight), hostView(bias), eps, hostView(out));
  }
  gelu(x: Tensor, out: Tensor, approximation: 'tanh' | 'erf'): void {
    this.cpu.gelu(hostView(x), hostView(out), approximation);
  }
  siluMul(gate: Tensor, up: Tensor, out: Tensor): void {
    this.cpu.siluMul(hostView(gate), hostView(up), hostView(out));
  }
  softmax(x: Tensor, out: Tensor): void {
    this.cpu.softmax(hostView(x), hostView(out));
  }
  rope(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor): void {
    this.cpu.rope(hostView(x), hostView(cos), hostView(sin), hostView(out));
  }
  attention(q: Tensor, k: Tensor, v: Tensor, out: Tensor, options: Parameters<Kernels['attention']>[4]): void {
    this.cpu.attention(hostView(q), hostView(k), hostView(v), hostView(out), options);
  }
  mergeBlocks(x: Tensor, mergeSize: number, out: Tensor): void {
    this.cpu.mergeBlocks(hostView(x), mergeSize, hostView(out));
  }
  embedding(table: Tensor, ids: Tensor, out: Tensor): void {
    this.cpu.embedding(hostView(table), hostView(ids), hostView(out));
  }
  adamw(p: Tensor, g: Tensor, m: Tensor, v: Tensor, step: number, hyper: Parameters<Kernels['adamw']>[5]): void {
    this.cpu.adamw(hostView(p), hostView(g), hostView(m), hostView(v), step, hyper);
  }
  argmax(x: Tensor): number {
    return this.cpu.argmax(hostView(x));
  }
  topK(x: Tensor, k: number): TopK {
    return this.cpu.topK(hostView(x), k);
  }
  matmulBackward(dy: Tensor, x: Tensor, w: Tensor, dx: Tensor | null, dw: Tensor | null, dbias: Tensor | null): void {
    this.cpu.matmulBackward(hostView(dy), hostView(x), hostView(w), dx && hostView(dx), dw && hostView(dw), dbias && hostView(dbias));
  }
  rmsNormBackward(dy: Tensor, x: Tensor, weight: Tensor, eps: number, dx: Tensor, dweight: Tensor | null): void {
    this.cpu.rmsNormBackward(hostView(dy), hostView(x), hostView(weight), eps, hostView(dx), dweight && hostView(dweight));
  }
  layerNormBackward(dy: Tensor, x: Tensor, weight: Tensor, eps: number, dx: Tensor, dweight: Tensor | null, dbias: Tensor | null): void {
    this.cpu.layerNormBackward(hostView(dy), hostView(x), hostView(weight), eps, hostView(dx), dweight && hostView(dweight), dbias && hostView(dbias));
  }
  mergeBlocksBackward(dy: Tensor, mergeSize: number, dx: Tensor): void {
    this.cpu.mergeBlocksBackward(hostView(dy), mergeSize, hostView(dx));
  }
  geluBackward(dy: Tensor, x: Tensor, dx: Tensor, approximation: 'tanh' | 'erf'): void {
    this.cpu.geluBackward(hostView(dy), hostView(x), hostView(dx), approximation);
  }
  siluMulBackward(dy: Tensor, gate: Tensor, up: Tensor, dgate: Tensor, dup: Tensor): void {
    this.cpu.siluMulBackward(hostView(dy), hostView(gate), hostView(up), hostView(dgate), hostView(dup));
  }
  ropeBackward(dy: Tensor, cos: Tensor, sin: Tensor, dx: Tensor): void {
    this.cpu.ropeBackward(hostView(dy), hostView(cos), hostView(sin), hostView(dx));
  }
  attentionBackward(q: Tensor, k: Tensor, v: Tensor, dout: Tensor, dq: Tensor, dk: Tensor, dv: Tensor, options: AttentionOptions): void {
    this.cpu.attentionBackward(hostView(q), hostView(k), hostView(v), hostView(dout), hostView(dq), hostView(dk), hostView(dv), options);
  }
  embeddingBackward(dy: Tensor, ids: Tensor, dtable: Tensor): void {
    this.cpu.embeddingBackward(hostView(dy), hostView(ids), hostView(dtable));
  }
  crossEntropy(hidden: Tensor, head: Tensor, targets: Tensor, scale: number, losses: Tensor, dhidden: Tensor | null, dhead: Tensor | null): void {
    this.cpu.crossEntropy(hostView(hidden), hostView(head), hostView(targets), scale, hostView(losses), dhidden && hostView(dhidden), dhead && hostView(dhead));
  }
}

describe('a backend with memory of its own', { skip: !fixtures && FIXTURES_MISSING }, () => {
  const checkpoint = fixtures ? join(fixtures, TINY_CHECKPOINT) : '';
  const media = fixtures ? join(fixtures, 'media') : '';
  let onDevice: VideoLLaMA3;
  let cachedOnDevice: VideoLLaMA3;
  let onHost: VideoLLaMA3;

  before(async () => {
    // Without the caches, so that every request uploads its pixels; with them, the device holds features and KV.
    onDevice = await VideoLLaMA3.load(checkpoint, { backend: new CheckedBackend(new DeviceKernels()), featureCacheBytes: 0, prefixCacheBytes: 0 });
    cachedOnDevice = await VideoLLaMA3.load(checkpoint, { backend: new CheckedBackend(new DeviceKernels()) });
    onHost = await VideoLLaMA3.load(checkpoint, { backend: 'native' });
  });

  it('hides its memory from the host', () => {
    const t = onDevice.llm.backend.allocate('f32', [2, 3]);
    assert.throws(() => t.data, /lives on test-device, not in host memory/);
    assert.throws(() => onHost.llm.backend.add(t, t, t), /add: a \(Tensor\(f32, \[2, 3\]\)\) lives on test-device, this backend \(native\) on host: upload it first/);
  });

  for (const [name, content] of [
    ['text', [{ type: 'text', text: 'Describe a cat in one sentence.' }]],
    ['an image', [{ type: 'image', image: 'cat.jpg' }, { type: 'text', text: 'What is this?' }]],
    ['a video', [{ type: 'video', video: { video_path: 'sample_demo_3.mp4', fps: 1, max_frames: 4 } }, { type: 'text', text: 'What happens?' }]],
  ] as const) {
    it(`answers ${name} as the native backend does, greedy and sampled, uploading weights once`, async () => {
      const messages = [{ role: 'user' as const, content: [...content] }];
      for (const sampling of [{ greedy: true }, { greedy: false, seed: 7, temperature: 0.8, topK: 40, topP: 0.9, repetitionPenalty: 1.3 }]) {
        const options = { ...sampling, maxNewTokens: 12, baseDir: media };
        const device = await onDevice.chat(messages, options).result;
        const host = await onHost.chat(messages, options).result;
        assert.deepEqual(device.tokenIds, host.tokenIds);
        assert.equal(device.text, host.text);
        // Once the weights a request needs are up, a request uploads its pixels and nothing else.
        const uploads = counts.uploads;
        assert.deepEqual((await onDevice.chat(messages, options).result).tokenIds, host.tokenIds);
        assert.equal(counts.uploads - uploads, name === 'text' ? 0 : 1);
        // The caches keep what they hold on the device: asked again, the media are not uploaded again.
        assert.deepEqual((await cachedOnDevice.chat(messages, options).result).tokenIds, host.tokenIds);
        const cachedUploads = counts.uploads;
        assert.deepEqual((await cachedOnDevice.chat(messages, options).result).tokenIds, host.tokenIds);
        assert.equal(counts.uploads - cachedUploads, 0);
      }
    });
  }
});
