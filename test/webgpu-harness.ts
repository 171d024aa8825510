// Runs KernelDispatch lists on a real WebGPU device in the test's own thread (async), so that a kernel's plan can be
// checked against the TypeScript reference before, and apart from, the backend's device thread.
import { after, before } from 'node:test';
import { create, globals } from 'webgpu';
import { deviceDescriptor } from '../src/tensor/webgpu/adapters.js';
import type { BufferRef, KernelDispatch } from '../src/tensor/webgpu/dispatch.js';
import { traitsOf, type DeviceTraits } from '../src/tensor/webgpu/kernels/wgsl-common.js';
import './lavapipe.js';

Object.assign(globalThis, globals);
process.env.XDG_RUNTIME_DIR ??= '/tmp';

/** A seeded generator of uniform values in [0, 1), so that a failing case can be rerun as it was. */
export function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/**
 * The test device of the enclosing `describe`: opened before its tests, destroyed after them. Its `gpu` and `traits`
 * are read inside the tests (they do not exist before the suite's `before` ran).
 */
export function suiteGpu(): { readonly gpu: TestGpu; readonly traits: DeviceTraits } {
  let opened: TestGpu | undefined;
  before(async () => {
    opened = await TestGpu.open();
  });
  after(() => opened?.destroy());
  const gpu = (): TestGpu => {
    if (!opened) throw new Error('the test device is read before its suite opened it');
    return opened;
  };
  return {
    get gpu() {
      return gpu();
    },
    get traits() {
      return gpu().traits;
    },
  };
}

export class TestGpu {
  private readonly buffers = new Map<number, GPUBuffer>();
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private nextId = 1;

  // `gpu` is held for the device's lifetime: Dawn's instance behind it is freed when it is collected, and its event
  // processing then crashes the process.
  private constructor(readonly gpu: GPU, readonly adapter: GPUAdapter, readonly device: GPUDevice) {}

  /** The first adapter Dawn finds (lavapipe on a machine without a GPU), requested as the backend requests it. */
  static async open(): Promise<TestGpu> {
    const gpu = create([]);
    const adapter = await gpu.requestAdapter();
    if (!adapter) throw new Error('no WebGPU adapter: install Mesa 25 (bookworm-backports mesa-vulkan-drivers) or a GPU driver');
    const device = await adapter.requestDevice(deviceDescriptor(adapter));
    return new TestGpu(gpu, adapter, device);
  }

  /** What the plans are told about this device, read as the backend reads it. */
  get traits(): DeviceTraits {
    return traitsOf(this.device.limits, this.device.features);
  }

  /** A storage buffer of `bytes` (rounded up to 4), holding `data` from byte 0 when given. */
  buffer(bytes: number, data?: ArrayBufferView): BufferRef {
    const size = Math.max(4, Math.ceil(bytes / 4) * 4);
    const buffer = this.device.createBuffer({ size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
    if (data) {
      const bytesOf = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      const padded = new Uint8Array(Math.ceil(bytesOf.length / 4) * 4);
      padded.set(bytesOf);
      this.device.queue.writeBuffer(buffer, 0, padded);
    }
    const id = this.nextId++;
    this.buffers.set(id, buffer);
    return { id, byteLength: size };
  }

  /** Encodes the dispatches in order into one command buffer and submits it. */
  run(dispatches: readonly KernelDispatch[]): void {
    const encoder = this.device.createCommandEncoder();
    for (const d of dispatches) {
      let pipeline = this.pipelines.get(d.key);
      if (!pipeline) {
        const module = this.device.createShaderModule({ code: d.wgsl() });
        pipeline = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: d.entryPoint ?? 'main' } });
        this.pipelines.set(d.key, pipeline);
      }
      const uniformBytes = Math.max(16, Math.ceil(d.uniforms.byteLength / 16) * 16);
      const uniform = this.device.createBuffer({ size: uniformBytes, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
      const words = new Uint32Array(uniformBytes / 4);
      words.set(d.uniforms);
      this.device.queue.writeBuffer(uniform, 0, words);
      const entries: GPUBindGroupEntry[] = d.buffers.map((b, i) => ({ binding: i, resource: { buffer: this.resolve(b.buffer) } }));
      entries.push({ binding: d.buffers.length, resource: { buffer: uniform } });
      const pass = encoder.beginComputePass();
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, this.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries }));
      pass.dispatchWorkgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
      pass.end();
    }
    this.device.queue.submit([encoder.finish()]);
  }

  /** Bytes [byteOffset, byteOffset + byteLength) of a buffer, after everything submitted so far. */
  async read(ref: BufferRef, byteOffset = 0, byteLength = ref.byteLength - byteOffset): Promise<ArrayBuffer> {
    const start = Math.floor(byteOffset / 4) * 4;
    const size = Math.ceil((byteOffset + byteLength - start) / 4) * 4;
    const staging = this.device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const encoder = this.device.createCommandEncoder();
    encoder.copyBufferToBuffer(this.resolve(ref), start, staging, 0, size);
    this.device.queue.submit([encoder.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const out = staging.getMappedRange().slice(byteOffset - start, byteOffset - start + byteLength);
    staging.destroy();
    return out;
  }

  /** Surfaces validation errors of everything since the last call (a wrong WGSL or binding fails the test here). */
  async errors(run: () => void | Promise<void>): Promise<void> {
    this.device.pushErrorScope('validation');
    await run();
    const error = await this.device.popErrorScope();
    if (error) throw new Error(`WebGPU validation error: ${error.message}`);
  }

  destroy(): void {
    for (const b of this.buffers.values()) b.destroy();
    this.device.destroy();
  }

  private resolve(ref: BufferRef): GPUBuffer {
    const b = this.buffers.get(ref.id);
    if (!b) throw new Error(`buffer ${ref.id} is not on this test device`);
    return b;
  }
}
