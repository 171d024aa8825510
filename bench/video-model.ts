// One video question end to end on one checkpoint, in its own process so that its peak resident memory is its own.
// Usage: node dist/bench/video-model.js <checkpoint-dir> <clip> <threads>   (prints one JSON object)
import { VideoLLaMA3 } from '../src/api/videollama3.js';
import { generateTokens } from '../src/engine/generate.js';
import type { ProgressEvent } from '../src/processing/processor.js';
import { round } from './stats.js';

export interface VideoModelFigures {
  threads: number;
  frames: number;
  /** From the request's start to the last frame decoded and resized (decode and sampling overlap preprocessing). */
  decodeSeconds: number;
  encodeSeconds: number;
  prefillSeconds: number;
  timeToFirstTokenSeconds: number;
  visualTokensBeforePruning: number;
  visualTokensAfterPruning: number;
  promptTokens: number;
  /** Bytes of weights the run read (LLM and vision encoder): the model part of its memory. */
  weightBytes: number;
  peakRssBytes: number;
}

async function main(): Promise<void> {
  const [dir, clip, threadsArg] = process.argv.slice(2);
  if (!dir || !clip) throw new Error('usage: video-model.js <checkpoint-dir> <clip> [threads]');
  const model = await VideoLLaMA3.load(dir, { threads: Number(threadsArg ?? 0) || undefined });
  const marks: Partial<Record<ProgressEvent['stage'], number>> = {};
  let frames = 0;
  const t0 = performance.now();
  const onProgress = (e: ProgressEvent) => {
    if (e.done === e.total) marks[e.stage] = performance.now();
    if (e.stage === 'decode') frames = e.total;
  };
  const request = await model.prepare([{ role: 'user', content: [{ type: 'video', video: { video_path: clip, fps: 1, max_frames: 180 } }, { type: 'text', text: 'What happens in this video?' }] }], {
    onProgress,
  });
  const decoded = performance.now();
  const features = model.encodeVisuals(request, { onProgress: (done, total) => onProgress({ stage: 'encode', done, total }) });
  const encoded = performance.now();
  const tokens = generateTokens(model.llm, {
    promptEmbeds: model.embed(request, features),
    maxNewTokens: 1,
    sampling: model.samplingFor({ greedy: true }),
    stopTokenIds: [],
  });
  await tokens.next();
  const firstAt = performance.now();
  while (!(await tokens.next()).done);

  const weightBytes = model.checkpoint.weights.stats.bytesRead;
  const figures: VideoModelFigures = {
    threads: model.llm.backend.threads,
    frames,
    decodeSeconds: round(((marks.decode ?? decoded) - t0) / 1000, 2),
    encodeSeconds: round((encoded - decoded) / 1000, 2),
    prefillSeconds: round((firstAt - encoded) / 1000, 2),
    timeToFirstTokenSeconds: round((firstAt - t0) / 1000, 2),
    visualTokensBeforePruning: request.keepMask?.length ?? 0,
    visualTokensAfterPruning: request.visualTokens,
    promptTokens: request.llmInputIds.length,
    weightBytes,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
  };
  process.stdout.write(JSON.stringify(figures) + '\n');
}

await main();
