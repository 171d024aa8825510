// Floating-point work of the model parts (2 × multiply-adds of the matmuls and attention), for compute bounds.
import type { VideoLlama3Config } from '../src/model/config.js';

/** Multiply-adds ×2 of the encoder (patch embedding, layers with per-image attention) and the projector. */
export function visionFlops(n: number, merged: number, c: { C: number; I: number; layers: number; H: number; patch: number }): number {
  const perLayer = 2 * n * c.C * c.C * 4 + 2 * n * c.C * c.I * 2 + 2 * 2 * n * n * c.C;
  return 2 * n * c.patch * c.C + c.layers * perLayer + 2 * merged * (c.C * c.H + c.H * c.H);
}

export function visionDims(config: VideoLlama3Config) {
  const v = config.visionEncoderConfig;
  return { C: v.hiddenSize, I: v.intermediateSize, layers: v.numHiddenLayers, H: config.hiddenSize, patch: 3 * v.patchSize ** 2 };
}

/** Prefill of `tokens` prompt positions through the decoder (projections, MLP, causal attention; LM head once). */
export function prefillFlops(tokens: number, c: VideoLlama3Config): number {
  const kv = c.numKeyValueHeads * c.headDim;
  const perToken = 2 * (2 * c.hiddenSize * c.hiddenSize + 2 * c.hiddenSize * kv + 3 * c.hiddenSize * c.intermediateSize);
  const attention = 2 * 2 * c.hiddenSize * ((tokens * (tokens + 1)) / 2);
  return c.numHiddenLayers * (tokens * perToken + attention) + 2 * c.hiddenSize * c.vocabSize;
}
