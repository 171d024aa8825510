// LLM throughput on one checkpoint, run as its own process so that its peak resident memory is the model's alone.
// Usage: node dist/bench/llm.js <checkpoint-dir> <threads> [exact|bf16]   (prints one JSON object; default: the fastest mode)
import { generateTokens } from '../src/engine/generate.js';
import { Rng } from '../src/engine/rng.js';
import { loadCheckpoint } from '../src/model/checkpoint.js';
import { Qwen2Model } from '../src/model/qwen2.js';
import { type ComputeMode, createBackend } from '../src/tensor/index.js';
import type { NativeBackend } from '../src/tensor/native.js';
import { median, round } from './stats.js';

export interface LlmFigures {
  threads: number;
  compute: ComputeMode;
  isa: string;
  loadSeconds: number;
  /** Weights of every decoder layer's matmuls (q, k, v, o, gate, up, down): a prefill token costs twice this in FLOPs. */
  decoderMatmulParams: number;
  /** Bytes of LLM weights one decode step reads: every decoder layer, the final norm and the LM head. */
  weightBytesPerToken: number;
  prefill: { tokens: number; seconds: number; tokensPerSecond: number };
  decode: { promptTokens: number; tokens: number; seconds: number; tokensPerSecond: number };
  peakRssBytes: number;
}

async function run(model: Qwen2Model, promptLength: number, newTokens: number, seed: number) {
  const rng = new Rng(seed);
  // Ordinary text ids, below the special tokens.
  const ids = Array.from({ length: promptLength }, () => rng.nextU32() % 151643);
  const tokens = generateTokens(model, {
    promptEmbeds: model.embed(ids),
    maxNewTokens: newTokens,
    sampling: { doSample: false, temperature: 1, topK: 0, topP: 1, repetitionPenalty: 1 },
    stopTokenIds: [],
  });
  let next = await tokens.next();
  while (!next.done) next = await tokens.next();
  return next.value;
}

async function main(): Promise<void> {
  const [dir, threadsArg, computeArg] = process.argv.slice(2);
  if (!dir) throw new Error('usage: llm.js <checkpoint-dir> [threads] [exact|bf16]');
  const threads = Number(threadsArg ?? 0) || undefined;
  const t0 = performance.now();
  const checkpoint = loadCheckpoint(dir);
  const backend = createBackend('native', { threads, compute: computeArg as ComputeMode | undefined }) as NativeBackend;
  const model = new Qwen2Model(checkpoint.config, checkpoint.weights, backend);
  const loadSeconds = (performance.now() - t0) / 1000;

  const c = checkpoint.config;
  const layerParams =
    c.hiddenSize * c.hiddenSize * 2 + 2 * c.numKeyValueHeads * c.headDim * c.hiddenSize + 3 * c.hiddenSize * c.intermediateSize;
  const weightBytesPerToken = 2 * (c.numHiddenLayers * layerParams + c.vocabSize * c.hiddenSize);

  const prefillRuns: number[] = [];
  for (let r = 0; r < 2; r++) prefillRuns.push((await run(model, 1024, 1, 100 + r)).prefillMs / 1000);
  const prefillSeconds = median(prefillRuns);

  const decodeRuns: number[] = [];
  for (let r = 0; r < 3; r++) {
    const g = await run(model, 256, 65, 200 + r);
    // 65 tokens = the one prefill yields + 64 decode steps.
    decodeRuns.push(g.decodeMs / 1000);
  }
  const decodeSeconds = median(decodeRuns);

  const figures: LlmFigures = {
    threads: backend.threads,
    compute: backend.compute,
    isa: backend.isa,
    loadSeconds: round(loadSeconds, 2),
    decoderMatmulParams: c.numHiddenLayers * layerParams,
    weightBytesPerToken,
    prefill: { tokens: 1024, seconds: round(prefillSeconds, 2), tokensPerSecond: round(1024 / prefillSeconds) },
    decode: { promptTokens: 256, tokens: 64, seconds: round(decodeSeconds, 2), tokensPerSecond: round(64 / decodeSeconds, 2) },
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
  };
  process.stdout.write(JSON.stringify(figures) + '\n');
}

await main();
