/**
 * The errors of the WebGPU backend, one class with a code, so that callers (the CLI, the server, tests) can tell a
 * missing adapter from a limit from a lost device without parsing messages.
 */
export type WebGpuErrorCode =
  /** No adapter, or the device could not be made. */
  | 'no-adapter'
  /** A buffer beyond a device limit (maxBufferSize, maxStorageBufferBindingSize). */
  | 'limit'
  /** WebGPU refused a command: a wrong kernel or binding (a bug of ours, never of the caller). */
  | 'validation'
  | 'out-of-memory'
  | 'device-lost'
  /** The device thread did not answer in time. */
  | 'timeout';

export class WebGpuError extends Error {
  constructor(
    readonly code: WebGpuErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'WebGpuError';
  }
}

/** The device limits a plan or an allocation must respect, and the adapter they belong to (for error messages). */
export interface DeviceLimits {
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
  maxStorageBuffersPerShaderStage: number;
  maxComputeWorkgroupStorageSize: number;
  maxComputeInvocationsPerWorkgroup: number;
  maxComputeWorkgroupsPerDimension: number;
  minUniformBufferOffsetAlignment: number;
}

/** What the device thread reports about the adapter it opened. */
export interface AdapterSummary {
  /** A readable name: the description, else vendor and architecture. */
  name: string;
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** Dawn's backend (vulkan, metal, d3d12, …) where the adapter says it. */
  backend: string;
  /** A CPU rasterizer (llvmpipe/lavapipe, SwiftShader): correct, but slower than the CPU backend. */
  software: boolean;
  features: string[];
  /** The subgroup sizes the adapter may run (0 where it does not say). */
  subgroupMinSize: number;
  subgroupMaxSize: number;
  limits: DeviceLimits;
}

const mib = (bytes: number) => (bytes < 2 ** 20 ? `${+(bytes / 1024).toFixed(1)} KiB` : `${+(bytes / 2 ** 20).toFixed(1)} MiB`);

/** The error for a buffer past a limit: the adapter, the limit, the bytes asked and what to do. */
export function limitError(adapter: AdapterSummary, what: string, bytes: number, limits: DeviceLimits = adapter.limits): WebGpuError | null {
  const { maxBufferSize, maxStorageBufferBindingSize } = limits;
  const [limit, value] =
    bytes > maxBufferSize ? ['maxBufferSize', maxBufferSize] : bytes > maxStorageBufferBindingSize ? ['maxStorageBufferBindingSize', maxStorageBufferBindingSize] : [null, 0];
  if (!limit) return null;
  return new WebGpuError(
    'limit',
    `${what} of ${bytes} bytes (${mib(bytes)}) exceeds ${limit} = ${value} bytes (${mib(value)}) of the WebGPU adapter ` +
      `"${adapter.name}": use quantized weights (--weights int8 or int4) or a smaller model, a GPU with larger limits, ` +
      `or --device cpu`,
  );
}
