// Vision encoder + projector throughput on one checkpoint, run as its own process (peak memory is its own).
// Usage: node dist/bench/vision.js <checkpoint-dir> <threads>   (prints one JSON object)
import { loadCheckpoint } from '../src/model/checkpoint.js';
import { VideoLLaMA3Model } from '../src/model/videollama3.js';
import type { VisualGrid } from '../src/model/vision-rope.js';
import { createBackend } from '../src/tensor/index.js';
import { Tensor } from '../src/tensor/tensor.js';
import { round } from './stats.js';

export interface VisionFigures {
  threads: number;
  images: { label: string; patches: number; seconds: number; gflop: number; gflops: number }[];
}

/** Multiply-adds ×2 of the encoder (patch embedding, 27 layers with per-image attention) and the projector. */
export function visionFlops(n: number, merged: number, c: { C: number; I: number; layers: number; H: number; patch: number }): number {
  const perLayer = 2 * n * c.C * c.C * 4 + 2 * n * c.C * c.I * 2 + 2 * 2 * n * n * c.C;
  return 2 * n * c.patch * c.C + c.layers * perLayer + 2 * merged * (c.C * c.H + c.H * c.H);
}

function main(): void {
  const [dir, threadsArg] = process.argv.slice(2);
  if (!dir) throw new Error('usage: vision.js <checkpoint-dir> [threads]');
  const checkpoint = loadCheckpoint(dir);
  const backend = createBackend('native', Number(threadsArg ?? 0) || undefined);
  const model = new VideoLLaMA3Model(checkpoint, backend);
  const v = checkpoint.config.visionEncoderConfig;
  const dims = { C: v.hiddenSize, I: v.intermediateSize, layers: v.numHiddenLayers, H: checkpoint.config.hiddenSize, patch: 3 * v.patchSize ** 2 };

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
  const figures: VisionFigures = { threads: backend.threads, images };
  process.stdout.write(JSON.stringify(figures) + '\n');
}

main();
