// Resident memory of a model in use: load a checkpoint (as stored, or quantized at load), answer one question about a
// 448×448 image so that the vision weights are read too, and report the process's peak resident set.
// Usage: node dist/bench/memory.js <checkpoint-dir> [weights] [vision-weights]   (prints one JSON object)
import { VideoLLaMA3 } from '../src/api/videollama3.js';
import type { WeightFormat } from '../src/tensor/dtype.js';
import { benchImageDataUrl } from './image.js';

const [dir, weights, visionWeights] = process.argv.slice(2);
if (!dir) throw new Error('usage: memory.js <checkpoint-dir> [weights] [vision-weights]');
const baseline = process.memoryUsage().rss;
// The caches off, as in the figures measured before they existed: what they keep is bounded by their own options.
const model = await VideoLLaMA3.load(dir, {
  weights: (weights || undefined) as WeightFormat | undefined,
  visionWeights: (visionWeights || undefined) as WeightFormat | undefined,
  featureCacheBytes: 0,
  prefixCacheBytes: 0,
});
const afterLoad = process.memoryUsage().rss;
const image = await benchImageDataUrl();
await model.chat([{ role: 'user', content: [{ type: 'image', image }, { type: 'text', text: 'Describe this image.' }] }], { greedy: true, maxNewTokens: 16 }).result;
const afterAnswer = process.memoryUsage().rss;
const figures = {
  checkpoint: dir,
  weights: model.info.weights,
  // Node and the addon before any model: subtract it to compare with the weights' size.
  runtimeBytes: baseline,
  afterLoadBytes: afterLoad,
  afterAnswerBytes: afterAnswer,
  peakRssBytes: process.resourceUsage().maxRSS * 1024,
};
await model.close();
process.stdout.write(JSON.stringify(figures) + '\n');
