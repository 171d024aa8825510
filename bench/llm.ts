// LLM throughput on one checkpoint, run as its own process so that its peak resident memory is the model's alone.
// Usage: node dist/bench/llm.js <checkpoint-dir> <threads> [exact|bf16] [bf16|int8|int4|int4m] [decode-only]
// (prints one JSON object; defaults: the fastest compute mode, the weights as stored; decode-only skips the prefill runs)
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateTokens } from '../src/engine/generate.js';
import { type Checkpoint, EMBED_TOKENS, loadCheckpoint } from '../src/model/checkpoint.js';
import { FormattedWeights } from '../src/model/weight-formats.js';
import { decoderWeights, flattenSpecs } from '../src/model/weight-names.js';
import type { WeightFormat } from '../src/tensor/dtype.js';
import { Qwen2Model } from '../src/model/qwen2.js';
import { type ComputeMode, createBackend } from '../src/tensor/index.js';
import { type NativeBackend, readBandwidth } from '../src/tensor/native.js';
import { benchPrompt } from './peer-common.js';
import { median, round } from './stats.js';

export interface LlmFigures {
  threads: number;
  compute: ComputeMode;
  /** The format of the decoder's matmul weights and LM head. */
  weights: WeightFormat;
  isa: string;
  loadSeconds: number;
  /** Weights of every decoder layer's matmuls (q, k, v, o, gate, up, down): a prefill token costs twice this in FLOPs. */
  decoderMatmulParams: number;
  /** Bytes of LLM weights one decode step reads: every decoder layer, the final norm and the LM head, as loaded. */
  weightBytesPerToken: number;
  /** 0 tokens in decode-only runs. */
  prefill: { tokens: number; seconds: number; tokensPerSecond: number };
  decode: { promptTokens: number; tokens: number; seconds: number; tokensPerSecond: number };
  /** DRAM read bandwidth on the same threads, measured right after the decode runs: the bound decode is held to. */
  readGBs: number;
  peakRssBytes: number;
}

/** One greedy generation of `newTokens` after a `promptLength`-token benchPrompt: its timings and tokens. */
export async function greedyRun(model: Qwen2Model, promptLength: number, newTokens: number, seed: number) {
  const tokens = generateTokens(model, {
    promptEmbeds: model.embed(benchPrompt(promptLength, seed)),
    maxNewTokens: newTokens,
    sampling: { doSample: false, temperature: 1, topK: 0, topP: 1, repetitionPenalty: 1 },
    stopTokenIds: [],
  });
  let next = await tokens.next();
  while (!next.done) next = await tokens.next();
  return next.value;
}

/** Bytes of LLM weights one decode step reads: every decoder layer, the final norm and the LM head, as loaded. */
export function decodeBytesPerToken(checkpoint: Checkpoint, weights: FormattedWeights): number {
  // Every weight once but the embedding table, of which a step reads one row.
  const read = new Set(flattenSpecs(decoderWeights(checkpoint.config)).filter((s) => s.name !== EMBED_TOKENS).map((s) => weights.get(s)));
  return [...read].reduce((sum, t) => sum + t.byteLength, 0);
}

async function main(): Promise<void> {
  const [dir, threadsArg, computeArg, weightsArg, decodeOnly] = process.argv.slice(2);
  if (!dir) throw new Error('usage: llm.js <checkpoint-dir> [threads] [exact|bf16] [bf16|int8|int4|int4m]');
  const threads = Number(threadsArg ?? 0) || undefined;
  const t0 = performance.now();
  const checkpoint = loadCheckpoint(dir);
  const backend = createBackend('native', { threads, compute: (computeArg || undefined) as ComputeMode | undefined }) as NativeBackend;
  const weights = new FormattedWeights(checkpoint.weights, checkpoint.config.quantization, { language: weightsArg as WeightFormat | undefined });
  const model = new Qwen2Model(checkpoint.config, weights, backend);
  const loadSeconds = (performance.now() - t0) / 1000;

  const c = checkpoint.config;
  const layerParams =
    c.hiddenSize * c.hiddenSize * 2 + 2 * c.numKeyValueHeads * c.headDim * c.hiddenSize + 3 * c.hiddenSize * c.intermediateSize;
  const weightBytesPerToken = decodeBytesPerToken(checkpoint, weights);

  const prefillRuns: number[] = [];
  if (decodeOnly !== 'decode-only') for (let r = 0; r < 2; r++) prefillRuns.push((await greedyRun(model, 1024, 1, 100 + r)).prefillMs / 1000);
  const prefillSeconds = prefillRuns.length ? median(prefillRuns) : 0;

  const decodeRuns: number[] = [];
  for (let r = 0; r < 3; r++) {
    const g = await greedyRun(model, 256, 65, 200 + r);
    // 65 tokens = the one prefill yields + 64 decode steps.
    decodeRuns.push(g.decodeMs / 1000);
  }
  const decodeSeconds = median(decodeRuns);
  const readGBs = round(readBandwidth(backend.threads), 1);

  const figures: LlmFigures = {
    threads: backend.threads,
    compute: backend.compute,
    weights: weights.formats.language,
    isa: backend.isa,
    loadSeconds: round(loadSeconds, 2),
    decoderMatmulParams: c.numHiddenLayers * layerParams,
    weightBytesPerToken,
    prefill: prefillRuns.length
      ? { tokens: 1024, seconds: round(prefillSeconds, 2), tokensPerSecond: round(1024 / prefillSeconds) }
      : { tokens: 0, seconds: 0, tokensPerSecond: 0 },
    decode: { promptTokens: 256, tokens: 64, seconds: round(decodeSeconds, 2), tokensPerSecond: round(64 / decodeSeconds, 2) },
    readGBs,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
  };
  process.stdout.write(JSON.stringify(figures) + '\n');
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
