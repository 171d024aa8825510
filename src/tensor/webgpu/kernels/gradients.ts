// The WebGPU backend's training kernels: a plan per GradientOps op (backend.ts), each defined by host-gradients.ts.
//
// What a backend needs to know to call them:
// - Every plan takes Slices and sizes and returns dispatches to run in order (one command buffer is fine: a later
//   dispatch reads what an earlier one wrote). Operands may share buffers; each buffer is bound once.
// - Parameter gradients (dw, dbias, dweight, dtable, dhead) are added to, activation gradients written, as
//   GradientOps says. In-place use is safe exactly where CheckedBackend allows it (dx = dy for the norms, gelu and
//   rope; dgate/dup over dy, gate or up).
// - attentionBackward parks two statistics per query row in dq between its passes (so dq must not overlap the
//   inputs, which CheckedBackend already refuses). crossEntropyTiledPlan needs a scratch buffer: rows × 8192 f32 for
//   blocks of that many rows (the head is read three times per block, so 1024 rows, 32 MiB, beats 64 rows, 2 MiB, by
//   far at a 152k vocabulary; crossEntropyScratchBytes sizes it).
// - Weights split by rows across buffers: matmulBackward per piece (dyStride, dxAdd), embeddingBackward per piece
//   (rowStart, rows), crossEntropyTiledPlan with `pieces`. Any other operand must lie in one buffer no larger than
//   maxStorageBufferBindingSize (a plan throws otherwise).
// - Workgroups: at most 256 invocations and 12 KiB of workgroup memory (WebGPU guarantees 256 and 16 KiB); grids fold
//   over y and z to stay within maxComputeWorkgroupsPerDimension.
// - adamw gives host-gradients.ts's bits on any adapter (its fma, division and sqrt are made correctly rounded from
//   f32 operations), for subnormal moments too where the adapter keeps subnormals (lavapipe does); the other ops
//   agree with the definition within f32 rounding, and all are deterministic.
export type { DeviceTraits } from './gradients-common.js';
export { attentionBackwardPlan } from './gradients-attention.js';
export {
  adamwPlan,
  embeddingBackwardPlan,
  DIV_SQRT_WGSL,
  FMA32_WGSL,
  geluBackwardPlan,
  mergeBlocksBackwardPlan,
  ropeBackwardPlan,
  siluMulBackwardPlan,
} from './gradients-elementwise.js';
export { crossEntropyScratchBytes, crossEntropyTiledPlan, type HeadPiece } from './gradients-loss-tiled.js';
export { matmulBackwardPlan } from './gradients-matmul.js';
export { layerNormBackwardPlan, rmsNormBackwardPlan } from './gradients-norm.js';
