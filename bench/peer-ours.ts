// Our engine's answer to the peers' agreement check (bench/peer-common.ts CHECK), run as its own process like bench/llm.ts.
// Usage: node dist/bench/peer-ours.js <checkpoint-dir> [threads]   (prints one JSON object: CheckFigures)
// Exact mode: the reference every peer is compared with is our f32-activation answer, the fixtures' numerics.
import { generateTokens } from '../src/engine/generate.js';
import { KVCache } from '../src/engine/kv-cache.js';
import { loadCheckpoint } from '../src/model/checkpoint.js';
import { Qwen2Model } from '../src/model/qwen2.js';
import { FormattedWeights } from '../src/model/weight-formats.js';
import { createBackend } from '../src/tensor/index.js';
import { benchPrompt, CHECK, type CheckFigures } from './peer-common.js';

async function main(): Promise<void> {
  const [dir, threadsArg] = process.argv.slice(2);
  if (!dir) throw new Error('usage: peer-ours.js <checkpoint-dir> [threads]');
  const checkpoint = loadCheckpoint(dir);
  const backend = createBackend('native', { threads: Number(threadsArg ?? 0) || undefined, compute: 'exact' });
  const model = new Qwen2Model(checkpoint.config, new FormattedWeights(checkpoint.weights, checkpoint.config.quantization), backend);
  const d = checkpoint.config;
  const prompt = benchPrompt(CHECK.promptTokens, CHECK.seed);

  // Every position's logits need one forward pass over the prompt with all rows kept, which generateTokens does not offer.
  const cache = new KVCache(backend, d.numHiddenLayers, d.numKeyValueHeads, model.headDim, d.maxPositionEmbeddings, prompt.length);
  const hidden = model.forward(model.embed(prompt), cache);
  const logits = model.logits(hidden);
  cache.release();
  const argmax = Array.from({ length: prompt.length }, (_, i) => backend.argmax(logits.rows(i, i + 1).reshape([d.vocabSize])));

  const greedy: number[] = [];
  const tokens = generateTokens(model, {
    promptEmbeds: model.embed(prompt),
    maxNewTokens: CHECK.greedyTokens,
    sampling: { doSample: false, temperature: 1, topK: 0, topP: 1, repetitionPenalty: 1 },
    stopTokenIds: [],
  });
  for await (const id of tokens) greedy.push(id);
  const figures: CheckFigures = { argmax, greedy };
  process.stdout.write(JSON.stringify(figures) + '\n');
}

await main();
