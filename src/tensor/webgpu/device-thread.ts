/**
 * The device thread: owns the GPUDevice (WebGPU in Node is asynchronous, the Backend interface is not) and runs the
 * proxy's batches in order, each as one command buffer and one submit, then answers on the port and wakes the proxy
 * through the shared signal word. A lost device sets the lost word and wakes it too, so a waiter never hangs.
 */
import { workerData } from 'node:worker_threads';
import { deviceDescriptor, summarize } from './adapters.js';
import { CONTROL_WORDS, LOST, SIGNAL, type Answer, type Batch, type Command, type DeviceThreadData } from './protocol.js';

const { control, port, hardwareOnly, mode } = workerData as DeviceThreadData;
const words = new Int32Array(control, 0, CONTROL_WORDS);

// Loaded here rather than imported, so that a missing or broken native package is an answer to the waiting proxy
// (which cannot hear a failed thread while it blocks) instead of a silent timeout.
let webgpu: typeof import('webgpu');
try {
  webgpu = await import('webgpu');
} catch (e) {
  answer({ seq: 0, error: { code: 'no-adapter', message: `the webgpu package (Dawn for Node) did not load: ${e instanceof Error ? e.message : String(e)}` } });
  process.exit(1);
}
Object.assign(globalThis, webgpu.globals);
process.env.XDG_RUNTIME_DIR ??= (await import('node:os')).tmpdir();

function answer(a: Answer, transfer: ArrayBuffer[] = []): void {
  port.postMessage(a, transfer);
  Atomics.add(words, SIGNAL, 1);
  Atomics.notify(words, SIGNAL);
}

const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

class Executor {
  private readonly buffers = new Map<number, GPUBuffer>();
  private readonly pipelines = new Map<string, { pipeline: GPUComputePipeline; layout: GPUBindGroupLayout }>();
  private readonly uniformAlign: number;

  constructor(
    private readonly device: GPUDevice,
    private readonly adapter: string,
  ) {
    this.uniformAlign = device.limits.minUniformBufferOffsetAlignment;
  }

  async run(batch: Batch): Promise<Answer> {
    if (lostMessage) return { seq: batch.seq, error: { code: 'device-lost', message: lostMessage } };
    const device = this.device;
    device.pushErrorScope('out-of-memory');
    device.pushErrorScope('validation');
    const temporaries: GPUBuffer[] = [];
    const freed: GPUBuffer[] = [];
    let readback: { staging: GPUBuffer; skip: number; size: number } | null = null;
    let destroyDevice = false;
    let thrown: unknown = null;
    try {
      const uniforms = this.uniformBuffer(batch.commands);
      if (uniforms) temporaries.push(uniforms.buffer);
      const encoder = device.createCommandEncoder();
      let pass: GPUComputePassEncoder | null = null;
      const endPass = () => {
        pass?.end();
        pass = null;
      };
      let dispatchIndex = 0;
      for (const c of batch.commands) {
        switch (c.op) {
          case 'create': {
            const buffer = device.createBuffer({ size: c.size, usage: USAGE, mappedAtCreation: c.data !== undefined });
            if (c.data) {
              new Uint8Array(buffer.getMappedRange()).set(c.data);
              buffer.unmap();
            }
            this.buffers.set(c.id, buffer);
            break;
          }
          case 'destroy': {
            freed.push(this.buffer(c.id));
            this.buffers.delete(c.id);
            break;
          }
          case 'write': {
            endPass();
            const staging = device.createBuffer({ size: c.data.byteLength, usage: GPUBufferUsage.COPY_SRC, mappedAtCreation: true });
            new Uint8Array(staging.getMappedRange()).set(c.data);
            staging.unmap();
            temporaries.push(staging);
            encoder.copyBufferToBuffer(staging, 0, this.buffer(c.id), c.offset, c.data.byteLength);
            break;
          }
          case 'copy': {
            endPass();
            encoder.copyBufferToBuffer(this.buffer(c.src), c.srcOffset, this.buffer(c.dst), c.dstOffset, c.size);
            break;
          }
          case 'dispatch': {
            const { pipeline, layout } = this.pipeline(c);
            const entries: GPUBindGroupEntry[] = c.buffers.map(([id], i) => ({ binding: i, resource: { buffer: this.buffer(id) } }));
            const at = uniforms!.offsets[dispatchIndex++]!;
            entries.push({ binding: c.buffers.length, resource: { buffer: uniforms!.buffer, offset: at.offset, size: at.size } });
            pass ??= encoder.beginComputePass();
            pass.setPipeline(pipeline);
            pass.setBindGroup(0, device.createBindGroup({ layout, entries }));
            pass.dispatchWorkgroups(...c.workgroups);
            break;
          }
          case 'read': {
            endPass();
            const start = c.offset - (c.offset % 4);
            const size = Math.ceil((c.offset + c.size - start) / 4) * 4;
            const staging = device.createBuffer({ size: Math.max(4, size), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
            if (size > 0) encoder.copyBufferToBuffer(this.buffer(c.id), start, staging, 0, size);
            readback = { staging, skip: c.offset - start, size: c.size };
            break;
          }
          case 'destroy-device':
            destroyDevice = true;
            break;
        }
      }
      endPass();
      device.queue.submit([encoder.finish()]);
    } catch (e) {
      thrown = e;
    }
    let data: ArrayBuffer | undefined;
    const rb = readback as { staging: GPUBuffer; skip: number; size: number } | null;
    if (rb && thrown === null) {
      try {
        await rb.staging.mapAsync(GPUMapMode.READ);
        data = rb.staging.getMappedRange().slice(rb.skip, rb.skip + rb.size);
      } catch (e) {
        thrown = e;
      }
    }
    rb?.staging.destroy();
    for (const b of temporaries) b.destroy();
    for (const b of freed) b.destroy();
    const validation = await device.popErrorScope();
    const memory = await device.popErrorScope();
    if (destroyDevice) {
      // Destroyed before the proxy is woken: it terminates this thread once awake, and Dawn's binding aborts the
      // process when termination interrupts a call into it (device.destroy() reads every buffer's state).
      device.destroy();
      lose(`WebGPU device "${this.adapter}" was closed`);
    }
    if (memory) return { seq: batch.seq, error: { code: 'out-of-memory', message: memory.message } };
    if (validation) return { seq: batch.seq, error: { code: 'validation', message: validation.message } };
    if (thrown !== null) return { seq: batch.seq, error: { code: 'validation', message: thrown instanceof Error ? thrown.message : String(thrown) } };
    return { seq: batch.seq, data };
  }

  /** One uniform buffer for the batch, each dispatch's words at an aligned offset (16 bytes at least, as WGSL pads). */
  private uniformBuffer(commands: Command[]): { buffer: GPUBuffer; offsets: { offset: number; size: number }[] } | null {
    const offsets: { offset: number; size: number }[] = [];
    let end = 0;
    for (const c of commands) {
      if (c.op !== 'dispatch') continue;
      const offset = Math.ceil(end / this.uniformAlign) * this.uniformAlign;
      const size = Math.max(16, Math.ceil(c.uniforms.byteLength / 16) * 16);
      offsets.push({ offset, size });
      end = offset + size;
    }
    if (offsets.length === 0) return null;
    const buffer = this.device.createBuffer({ size: end, usage: GPUBufferUsage.UNIFORM, mappedAtCreation: true });
    const mapped = new Uint32Array(buffer.getMappedRange());
    let i = 0;
    for (const c of commands) if (c.op === 'dispatch') mapped.set(c.uniforms, offsets[i++]!.offset / 4);
    buffer.unmap();
    return { buffer, offsets };
  }

  /**
   * The pipeline of a key, with a layout made from the dispatch's bindings rather than 'auto', which would drop a
   * binding the shader happens not to use and then refuse the bind group that has it.
   */
  private pipeline(c: Extract<Command, { op: 'dispatch' }>): { pipeline: GPUComputePipeline; layout: GPUBindGroupLayout } {
    let entry = this.pipelines.get(c.key);
    if (!entry) {
      if (c.wgsl === undefined) throw new Error(`kernel ${c.key}: no WGSL sent with its first dispatch`);
      const entries: GPUBindGroupLayoutEntry[] = c.buffers.map(([, write], i) => ({
        binding: i,
        visibility: GPUShaderStage.COMPUTE,
        buffer: { type: write ? 'storage' : 'read-only-storage' },
      }));
      entries.push({ binding: c.buffers.length, visibility: GPUShaderStage.COMPUTE, buffer: { type: 'uniform' } });
      const layout = this.device.createBindGroupLayout({ entries, label: c.key });
      const module = this.device.createShaderModule({ code: c.wgsl, label: c.key });
      const pipeline = this.device.createComputePipeline({
        layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
        compute: { module, entryPoint: c.entryPoint },
        label: c.key,
      });
      entry = { pipeline, layout };
      this.pipelines.set(c.key, entry);
    }
    return entry;
  }

  private buffer(id: number): GPUBuffer {
    const b = this.buffers.get(id);
    if (!b) throw new Error(`buffer ${id} does not exist on the device`);
    return b;
  }
}

let lostMessage: string | null = null;

/** Marks the device lost (once) and wakes the proxy, which then throws instead of waiting for answers. */
function lose(message: string): void {
  if (lostMessage) return;
  lostMessage = message;
  Atomics.store(words, LOST, 1);
  answer({ seq: -1, error: { code: 'device-lost', message } });
}

// Held for the thread's life: Dawn frees its instance when this is collected, and event processing then crashes.
const gpu = webgpu.create([]);
let executor: Executor | null = null;
let queue: Promise<void> = Promise.resolve();

async function open(): Promise<void> {
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) {
    answer({ seq: 0, error: { code: 'no-adapter', message: 'no WebGPU adapter found (a GPU driver with Vulkan, Metal or D3D12; on Linux without a GPU, Mesa 25 lavapipe)' } });
    return;
  }
  const summary = summarize(adapter);
  if (hardwareOnly && summary.software) {
    answer({ seq: 0, error: { code: 'no-adapter', message: `the only WebGPU adapter, "${summary.name}", is a software rasterizer` }, adapter: summary });
    return;
  }
  let device: GPUDevice;
  try {
    device = await adapter.requestDevice(deviceDescriptor(adapter));
  } catch (e) {
    answer({ seq: 0, error: { code: 'no-adapter', message: `WebGPU adapter "${summary.name}" gave no device: ${e instanceof Error ? e.message : String(e)}` } });
    return;
  }
  void device.lost.then((info) => lose(`WebGPU device "${summary.name}" was lost (${info.reason}): ${info.message || 'no reason given'}`));
  device.onuncapturederror = (event) => {
    answer({ seq: -1, error: { code: 'validation', message: (event as GPUUncapturedErrorEvent).error.message } });
  };
  executor = new Executor(device, summary.name);
  answer({ seq: 0, adapter: summary });
}

/**
 * Every adapter Dawn offers: it answers one per request, so each power preference and the fallback adapter are
 * asked for, and duplicates dropped. The first is the one a device is opened on.
 */
async function list(): Promise<void> {
  const found = new Map<string, unknown>();
  const requests: GPURequestAdapterOptions[] = [{ powerPreference: 'high-performance' }, { powerPreference: 'low-power' }, { forceFallbackAdapter: true }];
  for (const options of requests) {
    const adapter = await gpu.requestAdapter(options).catch(() => null);
    if (!adapter) continue;
    const summary = summarize(adapter);
    found.set(JSON.stringify(summary), summary);
  }
  answer({ seq: 0, adapters: [...found.values()] });
}

port.on('message', (batch: Batch) => {
  queue = queue.then(async () => {
    if (!executor) return answer({ seq: batch.seq, error: { code: 'device-lost', message: 'the WebGPU device is not open' } });
    let result: Answer;
    try {
      result = await executor.run(batch);
    } catch (e) {
      result = { seq: batch.seq, error: { code: 'validation', message: e instanceof Error ? e.message : String(e) } };
    }
    answer(result, result.data ? [result.data] : []);
  });
});

await (mode === 'list' ? list() : open());
