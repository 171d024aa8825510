// The WebGPU backend's training kernels: a plan per GradientOps op (backend.ts), each defined by host-gradients.ts.
export type { DeviceTraits } from './gradients-common.js';
export {
  adamwPlan,
  FMA32_WGSL,
  embeddingBackwardPlan,
  geluBackwardPlan,
  mergeBlocksBackwardPlan,
  ropeBackwardPlan,
  siluMulBackwardPlan,
} from './gradients-elementwise.js';
export { matmulBackwardPlan } from './gradients-matmul.js';
export { layerNormBackwardPlan, rmsNormBackwardPlan } from './gradients-norm.js';
export { crossEntropyPlan } from './gradients-loss.js';
export { attentionBackwardPlan } from './gradients-attention.js';
export { crossEntropyTiledPlan } from './gradients-loss-tiled.js';
