// Vision encoder + projector throughput on one checkpoint, run as its own process (peak memory is its own).
// Usage: node dist/bench/vision.js <checkpoint-dir> <threads> [exact|bf16] [bf16|int8|int4|int4m]
// (prints one JSON object; defaults: the fastest mode, the vision weights as stored)
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { VideoLLaMA3, type ChatResult } from '../src/api/videollama3.js';
import { loadCheckpoint } from '../src/model/checkpoint.js';
import type { Message } from '../src/processing/conversation.js';
import { VideoLLaMA3Model } from '../src/model/videollama3.js';
import { FormattedWeights } from '../src/model/weight-formats.js';
import type { WeightFormat } from '../src/tensor/dtype.js';
import type { VisualGrid } from '../src/model/vision-rope.js';
import { type ComputeMode, createBackend } from '../src/tensor/index.js';
import { Tensor } from '../src/tensor/tensor.js';
import { visionDims, visionFlops } from './flops.js';
import { benchImageDataUrl } from './image.js';
import { round } from './stats.js';

export interface VisionFigures {
  threads: number;
  compute: ComputeMode;
  /** The format of the encoder's and projector's matmul weights. */
  weights: WeightFormat;
  isa: string;
  images: { label: string; patches: number; seconds: number; gflop: number; gflops: number }[];
  /** End to end through the public API (decode, resize, encode, prefill); absent without tokenizer files. */
  timeToFirstToken?: { question: string; seconds: number; promptTokens: number; visualTokens: number; prefillSeconds: number };
}

/** Seconds from `chat()` to the first generated token for a question about one 448×448 PNG. */
async function timeToFirstToken(model: VideoLLaMA3): Promise<VisionFigures['timeToFirstToken']> {
  const image = await benchImageDataUrl();
  const question = 'Describe this image.';
  const messages: Message[] = [{ role: 'user', content: [{ type: 'image', image }, { type: 'text', text: question }] }];
  const runs: { seconds: number; result: ChatResult }[] = [];
  for (let r = 0; r < 2; r++) {
    const t0 = performance.now();
    const result = await model.chat(messages, { greedy: true, maxNewTokens: 1 }).result;
    runs.push({ seconds: (performance.now() - t0) / 1000, result });
  }
  const last = runs[runs.length - 1]!;
  return {
    question,
    seconds: round(Math.min(...runs.map((r) => r.seconds)), 2),
    promptTokens: last.result.usage.promptTokens,
    visualTokens: last.result.usage.visualTokens,
    prefillSeconds: round(last.result.timings.prefillMs / 1000, 2),
  };
}

async function main(): Promise<void> {
  const [dir, threadsArg, computeArg, weightsArg] = process.argv.slice(2);
  if (!dir) throw new Error('usage: vision.js <checkpoint-dir> [threads] [exact|bf16] [bf16|int8|int4|int4m]');
  const threads = Number(threadsArg ?? 0) || undefined;
  const compute = (computeArg || undefined) as ComputeMode | undefined;
  const visionWeights = (weightsArg || undefined) as WeightFormat | undefined;
  // With tokenizer files the public API is measured end to end too; the encoder timings then use its model.
  // The caches off: the question is asked twice, and the second would be answered from them.
  const api = existsSync(join(dir, 'tokenizer.json')) ? await VideoLLaMA3.load(dir, { threads, compute, visionWeights, featureCacheBytes: 0, prefixCacheBytes: 0 }) : undefined;
  const opened = api ? undefined : loadCheckpoint(dir);
  const model =
    api?.model ??
    new VideoLLaMA3Model(opened!, createBackend('native', { threads, compute }), new FormattedWeights(opened!.weights, opened!.config.quantization, { vision: visionWeights }));
  const { checkpoint, backend } = model;
  const dims = visionDims(checkpoint.config);

  // 448×448 → 32×32 patches; 1024×1024 → round(1024/14)·14 = 1022 → 73×73 patches (spec 2.3, one image, m = 1).
  const cases: { label: string; grid: VisualGrid }[] = [
    { label: '448x448', grid: { frames: 1, gridH: 32, gridW: 32, mergeSize: 1 } },
    { label: '1024x1024 (resized to 1022x1022)', grid: { frames: 1, gridH: 73, gridW: 73, mergeSize: 1 } },
  ];
  const images = cases.map(({ label, grid }) => {
    const n = grid.gridH * grid.gridW;
    const pixels = Tensor.f32([n, dims.patch]);
    for (let i = 0; i < pixels.numel; i++) pixels.data[i] = Math.sin(i * 0.37);
    model.encodeVisuals(pixels, [grid]); // warm-up: reads the vision weights, sizes the scratch buffers
    const t0 = performance.now();
    model.encodeVisuals(pixels, [grid]);
    const seconds = (performance.now() - t0) / 1000;
    const gflop = visionFlops(n, n, dims) / 1e9;
    return { label, patches: n, seconds: round(seconds, 2), gflop: round(gflop), gflops: round(gflop / seconds) };
  });
  const figures: VisionFigures = { threads: backend.threads, compute: backend.compute, weights: model.weights.formats.vision, isa: 'isa' in backend ? String(backend.isa) : backend.name, images, timeToFirstToken: api && (await timeToFirstToken(api)) };
  process.stdout.write(JSON.stringify(figures) + '\n');
}

await main();
