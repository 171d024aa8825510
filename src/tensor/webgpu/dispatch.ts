/**
 * What a WGSL kernel asks of the WebGPU device: the contract between the kernels (plan functions that turn an op's
 * operands into dispatches) and the device thread that runs them. Plans are pure: they read shapes and places,
 * never device memory, so every kernel can be planned, cached and batched on the JS thread that runs the model.
 */

/** A device buffer as kernels see it: an id the device thread resolves to its GPUBuffer, and its size in bytes. */
export interface BufferRef {
  readonly id: number;
  readonly byteLength: number;
}

/**
 * Where an operand lies: a buffer and the byte offset of its first element (a multiple of 4 for f32 and i32, of 2 for
 * bf16, any for the packed quantized formats). Kernels bind whole buffers and take offsets as uniforms, since
 * tensor views sit at offsets no binding alignment guarantees.
 */
export interface Slice {
  readonly buffer: BufferRef;
  readonly byteOffset: number;
}

/** A storage binding of a dispatch: a whole buffer, read only or written. */
export interface BufferBinding {
  readonly buffer: BufferRef;
  readonly write: boolean;
}

/**
 * One compute dispatch. Bindings, all in group 0: 0..n−1 are `buffers` in order (var<storage, read> or read_write as
 * `write` says), n is a var<uniform> holding `uniforms` (u32 words; f32 values as their bits; padded by the device to
 * 16 bytes). A buffer appears at most once: WebGPU refuses a buffer bound twice where one binding writes, so a plan
 * whose operands share a buffer (an in-place op, two views of one workspace) emits a variant that addresses both
 * through one binding, and says so in its key.
 */
export interface KernelDispatch {
  /** Names the WGSL module and entry point: the same key always means the same code (pipelines are cached by it). */
  readonly key: string;
  /** The module's source, asked for only when the key is new. */
  readonly wgsl: () => string;
  /** Default 'main'. */
  readonly entryPoint?: string;
  readonly buffers: readonly BufferBinding[];
  readonly uniforms: Uint32Array;
  /** Workgroup counts; each within the device's maxComputeWorkgroupsPerDimension (a plan splits what does not fit). */
  readonly workgroups: readonly [number, number, number];
}
