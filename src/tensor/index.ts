import type { Backend, ComputeMode } from './backend.js';
import { NativeBackend, type Isa } from './native.js';
import { ReferenceBackend } from './reference.js';
import { WebGpuBackend } from './webgpu/backend.js';
import { WebGpuError } from './webgpu/errors.js';

export type BackendName = 'native' | 'reference' | 'webgpu';

/** Where a model runs: the CPU, a WebGPU device, or 'auto': WebGPU where an adapter is a real GPU, else the CPU. */
export type DeviceName = 'cpu' | 'webgpu' | 'auto';
export const DEVICE_NAMES: readonly DeviceName[] = ['cpu', 'webgpu', 'auto'];

export interface BackendOptions {
  /** Kernel threads of this backend's own pool; default: the cores available to the process. */
  threads?: number;
  /**
   * How matmul multiplies. Default for the native backend: $VL3_COMPUTE, else the fastest mode this CPU has ('bf16'
   * where it has a bf16 dot-product instruction); for the reference backend 'exact'.
   */
  compute?: ComputeMode;
  /** The native kernel tier; default $VL3_ISA, else the best this CPU supports. */
  isa?: Isa;
}

/**
 * A backend for a model: the native CPU kernels, the TypeScript reference (slow; for checking), or WebGPU (the call
 * blocks until the device thread has opened a device; its kernels run on the GPU, so `threads` does not apply).
 */
export function createBackend(name: BackendName = 'native', options: BackendOptions = {}): Backend {
  const { threads, compute, isa } = options;
  if (threads !== undefined && (!Number.isInteger(threads) || threads < 1)) throw new Error(`invalid thread count ${threads}: must be an integer >= 1`);
  if (name === 'webgpu') {
    if (isa !== undefined) throw new Error(`the webgpu backend has no CPU kernel tiers (isa ${isa})`);
    return new WebGpuBackend({ compute });
  }
  if (name === 'reference') {
    if (isa !== undefined) throw new Error(`the reference backend has no kernel tiers (isa ${isa})`);
    return new ReferenceBackend({ compute });
  }
  return new NativeBackend({ threads, compute, isa });
}

/**
 * The backend for a device: 'cpu' is `createBackend(cpu)`; 'webgpu' the WebGPU backend (an error where there is no
 * adapter); 'auto' the WebGPU backend on an adapter that is not a software rasterizer (on llvmpipe or SwiftShader the
 * CPU backend is faster), else `createBackend(cpu)`.
 */
export function backendForDevice(device: DeviceName, cpu: 'native' | 'reference' = 'native', options: BackendOptions = {}): Backend {
  if (device === 'cpu') return createBackend(cpu, options);
  if (device === 'webgpu') return createBackend('webgpu', options);
  try {
    return new WebGpuBackend({ compute: options.compute, hardwareOnly: true });
  } catch (e) {
    if (e instanceof WebGpuError && e.code === 'no-adapter') return createBackend(cpu, options);
    throw e;
  }
}

export { CheckedBackend } from './checked.js';
export { WebGpuBackend } from './webgpu/backend.js';
export { WebGpuError } from './webgpu/errors.js';
export type { AttentionOptions, Backend, ComputeMode, Kernels, MatmulPart, TopK } from './backend.js';
export type { DType } from './dtype.js';
export type { Isa } from './native.js';
export { ISAS } from './native.js';
export { HostStorage, Tensor, type Storage } from './tensor.js';
