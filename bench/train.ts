// One training step of a checkpoint on one 448×448 image sample (the bench image, ~1,050 tokens with its question and
// answer): stage-1 settings (vision encoder and projector trained, the language model frozen) or LoRA (stage 3, the
// official defaults r 64, alpha 16, no dropout here so that steps repeat). Times the forward and backward pass and
// the optimizer update apart (of a second step: the first pays the one-time costs), counts the matmul FLOPs they do,
// and writes the micro-batch to a safetensors file so that the PyTorch peer (bench/peer-torch-train.py) runs the same
// step on the same inputs.
// VL3_ACTIVATION_CHECKPOINTING set (as for `vl3 train`): the step runs with activation checkpointing per layer.
// Usage: node dist/bench/train.js <checkpoint-dir> <threads> <stage1|lora> [inputs-out.safetensors]
// The compute mode is the backend's default: $VL3_COMPUTE, else the fastest the CPU has (printed with the figures).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCheckpoint } from '../src/model/checkpoint.js';
import { findAllLinearNames, OFFICIAL_LORA_DEFAULTS, type LoraConfig } from '../src/model/lora.js';
import { writeSafetensors } from '../src/model/safetensors.js';
import { VideoLLaMA3Training } from '../src/model/videollama3-training.js';
import { loadProcessorConfig } from '../src/processing/processor-config.js';
import { Tokenizer } from '../src/processing/tokenizer.js';
import { buildTrainingBatch } from '../src/processing/training-batch.js';
import { parseAnnotations } from '../src/processing/training-annotation.js';
import { createBackend, Tensor } from '../src/tensor/index.js';
import { nativeInfo, peakFlops, type PeakKind } from '../src/tensor/native.js';
import { supervisedCount } from '../src/train/accumulation.js';
import { modelInputs } from '../src/train/model-inputs.js';
import { stageConfig, stageOptimizer, trainableByGroup } from '../src/train/stages.js';
import { benchImageDataUrl } from './image.js';
import { round } from './stats.js';

export interface TrainFigures {
  mode: 'stage1' | 'lora';
  compute: string;
  activationCheckpointing: boolean;
  threads: number;
  tokens: number;
  visualTokens: number;
  trainableParameters: number;
  /** The first step's forward and backward, and its optimizer update (which allocates the moments). */
  firstStepSeconds: { forwardBackward: number; optimizer: number };
  forwardBackwardSeconds: number;
  optimizerSeconds: number;
  tokensPerSecond: number;
  /** Matmul and attention FLOPs of the forward and backward pass, over its time. */
  gflops: number;
  gflopsPerSecond: number;
  /** The peak of the instruction the matmuls use (bf16 dot products in bf16 mode where the CPU has them, else the
   * f32 FMA) on the same threads, measured in the same process. */
  peakKind: string;
  peakGflopsPerSecond: number;
  loss: number;
  /** What the forward kept of the decoder's and vision encoder's layers for the backward. */
  savedActivationBytes: number;
  /** Peak RSS up to the end of the forward and backward, before AdamW allocates its moments. */
  peakRssForwardBackwardBytes: number;
  peakRssBytes: number;
}

async function main(): Promise<void> {
  const [dir, threadsArg, modeArg, inputsOut] = process.argv.slice(2);
  if (!dir || (modeArg !== 'stage1' && modeArg !== 'lora')) throw new Error('usage: train.js <checkpoint-dir> <threads> <stage1|lora> [inputs-out.safetensors]');
  const threads = Number(threadsArg) || undefined;
  const backend = createBackend('native', { threads });
  const activationCheckpointing = process.env.VL3_ACTIVATION_CHECKPOINTING !== undefined;
  const { config, weights } = loadCheckpoint(dir);
  const lora: LoraConfig | undefined = modeArg === 'lora' ? { ...OFFICIAL_LORA_DEFAULTS, dropout: 0, targetModules: findAllLinearNames(config) } : undefined;
  const stage = modeArg === 'lora' ? stageConfig(3, { lora: true }) : stageConfig(1);

  // The sample: the bench image with a question and a ~20-token answer.
  const media = mkdtempSync(join(tmpdir(), 'vl3-bench-train-'));
  const png = Buffer.from((await benchImageDataUrl()).split(',')[1]!, 'base64');
  writeFileSync(join(media, 'image.png'), png);
  const annotation = [{ image: 'image.png', conversations: [{ from: 'human', value: '<image>\nDescribe this image.' }, { from: 'gpt', value: 'A grid of coloured stripes that repeat from the top left to the bottom right of the picture.' }] }];
  const tokenizer = await Tokenizer.load(dir);
  const batch = await buildTrainingBatch(parseAnnotations(JSON.stringify(annotation), 'bench.json'), {
    tokenizer,
    processorConfig: await loadProcessorConfig(dir),
    dataFolder: media,
    mmMaxLength: 10240,
    imageMergeSize: stage.imageMergeSize,
    videoMergeSize: stage.videoMergeSize,
    fps: 1,
    maxFrames: 180,
    modelMaxLength: 16384,
  });
  tokenizer.close();
  rmSync(media, { recursive: true, force: true });
  const inputs = modelInputs(batch, { imageTokenId: config.imageTokenIndex, useTokenCompression: false });
  if (inputsOut) {
    const ints = (a: ArrayLike<number>) => new Tensor('i32', [a.length], Int32Array.from(a));
    writeSafetensors(inputsOut, {
      input_ids: ints(inputs.inputIds),
      labels: ints(inputs.labels),
      position_ids: ints(inputs.positionIds),
      pixel_values: batch.pixelValues,
      grid_sizes: new Tensor('i32', [batch.gridSizes.length, 3], Int32Array.from(batch.gridSizes.flat())),
      merge_sizes: new Tensor('i32', [batch.mergeSizes.length], Int32Array.from(batch.mergeSizes)),
    });
  }

  const names = VideoLLaMA3Training.parameterNames(config, lora);
  const trainable = new Set(trainableByGroup(names, stage).groups.flatMap((g) => g.names));
  const model = new VideoLLaMA3Training(config, { get: (spec) => weights.get(spec.name, spec.shape) }, (n) => trainable.has(n), backend, lora && { config: lora, random: Math.random }, {
    activationCheckpointing,
  });
  const optimizer = stageOptimizer(model.parameters, stage, backend);
  const numItems = supervisedCount(inputs.labels);

  // Two steps on the same micro-batch, the second timed: the first also pays what a run pays once (the frozen
  // weights' pages faulted in from the file, the optimizer's moments allocated).
  let peakRssForwardBackwardBytes = 0;
  const timedStep = () => {
    model.zeroGradients();
    let t = performance.now();
    const { lossSum, savedActivationBytes } = model.step(inputs, 1 / numItems);
    const forwardBackward = (performance.now() - t) / 1000;
    peakRssForwardBackwardBytes ||= process.resourceUsage().maxRSS * 1024;
    t = performance.now();
    optimizer.update(model.gradients);
    return { lossSum, savedActivationBytes, forwardBackward, optimizer: (performance.now() - t) / 1000 };
  };
  const first = timedStep();
  const { forwardBackward: forwardBackwardSeconds, optimizer: optimizerSeconds } = timedStep();
  const { lossSum, savedActivationBytes } = first;

  const T = inputs.inputIds.length;
  const dot: PeakKind = 'bf16-zmm';
  const peakKind = backend.compute === 'bf16' && nativeInfo().peakKinds.includes(dot) ? dot : undefined;
  const P = batch.pixelValues.dim(0);
  const gflops = stepFlops(config, T, P, modeArg, activationCheckpointing) / 1e9;
  const figures: TrainFigures = {
    mode: modeArg,
    compute: backend.compute,
    activationCheckpointing,
    threads: backend.threads,
    tokens: T,
    visualTokens: inputs.visualRows.length,
    trainableParameters: [...model.parameters.values()].reduce((n, p) => n + p.numel, 0),
    firstStepSeconds: { forwardBackward: round(first.forwardBackward, 2), optimizer: round(first.optimizer, 2) },
    forwardBackwardSeconds: round(forwardBackwardSeconds, 2),
    optimizerSeconds: round(optimizerSeconds, 2),
    tokensPerSecond: round(T / (forwardBackwardSeconds + optimizerSeconds), 1),
    gflops: round(gflops, 0),
    gflopsPerSecond: round(gflops / forwardBackwardSeconds, 1),
    peakKind: peakKind ?? 'fp32 (widest)',
    peakGflopsPerSecond: round(peakFlops(backend.threads, 0.5, peakKind), 1),
    loss: round(lossSum / numItems, 4),
    savedActivationBytes,
    peakRssForwardBackwardBytes,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
  };
  process.stdout.write(JSON.stringify(figures) + '\n');
}

/**
 * Multiply-adds ×2 of the step's matmuls and attention products: the decoder's forward and its input gradient (its
 * weights are frozen in stage 1; in LoRA only the small adapters get weight gradients), the vision encoder's forward,
 * input gradient and, in stage 1, weight gradient; with activation checkpointing, every layer's forward once more.
 * Adapters, norms, the projector and the LM head rows are left out (under 2 % here).
 */
function stepFlops(c: ReturnType<typeof loadCheckpoint>['config'], T: number, P: number, mode: 'stage1' | 'lora', recompute: boolean): number {
  const H = c.hiddenSize;
  const kv = (c.numKeyValueHeads * H) / c.numAttentionHeads;
  const decoderParams = c.numHiddenLayers * (2 * H * H + 2 * H * kv + 3 * H * c.intermediateSize);
  const v = c.visionEncoderConfig;
  const visionLayerParams = v.numHiddenLayers * (4 * v.hiddenSize * v.hiddenSize + 2 * v.hiddenSize * v.intermediateSize);
  const visionParams = visionLayerParams + 588 * v.hiddenSize;
  // Causal attention: QKᵀ and PV over half the keys on average, forward; its backward twice that.
  const decoderAttention = c.numHiddenLayers * 2 * T * T * H;
  const visionAttention = v.numHiddenLayers * 4 * P * P * v.hiddenSize;
  const decoder = 2 * decoderParams * T * 2 + decoderAttention * 3;
  const vision = 2 * visionParams * P * (mode === 'stage1' ? 3 : 2) + visionAttention * 3;
  const layersForward = 2 * decoderParams * T + decoderAttention + 2 * visionLayerParams * P + visionAttention;
  return decoder + vision + (recompute ? layersForward : 0);
}

await main();
