// Serving throughput: `vl3 serve` with the 2b random checkpoint in its own process, and 1, 4 and 16 concurrent
// clients each asking about a 448×448 image over HTTP (streaming). Reports requests per minute, median and 95th
// percentile time to first token (first streamed content), and the server's peak memory (VmHWM).
// Usage: node dist/bench/server.js <checkpoint-dir> [clients,...]   (prints one JSON object)
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { readModelConfig } from '../src/model/config.js';
import { nativeInfo, peakFlops } from '../src/tensor/native.js';
import { limitOf } from './kernels.js';
import { prefillFlops, visionDims, visionFlops } from './flops.js';
import { benchImageDataUrl } from './image.js';
import { startServe, streamChat } from './serve-client.js';
import { median, round } from './stats.js';

export interface ServerFigures {
  maxTokens: number;
  promptTokens: number;
  /** Work of one request's vision encoding and prefill, and the requests per minute it allows at the machine's peak. */
  gflopPerRequest: number;
  peakGflops: number;
  peakKind: string;
  requestsPerMinuteAtPeak: number;
  runs: { clients: number; requests: number; seconds: number; requestsPerMinute: number; ttftMedianSeconds: number; ttftP95Seconds: number }[];
  peakRssBytes: number;
}

/** The q-quantile by nearest rank (for small samples: p95 of 4 values is the largest). */
function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]!;
}

async function main(): Promise<void> {
  const [dir, clientsArg] = process.argv.slice(2);
  if (!dir) throw new Error('usage: server.js <checkpoint-dir> [clients,...]');
  const clientCounts = (clientsArg ?? '1,4,16').split(',').map(Number);
  // The peak, on all threads, of what the server's matmuls run on (its default tier and compute mode), measured before
  // the server starts competing for the cores.
  const info = nativeInfo();
  const threads = info.defaultThreads;
  const peakKind = limitOf(info.isa, info.compute);
  const peak = Math.max(...[0, 1, 2].map(() => peakFlops(threads, 0.4, peakKind)));
  // The caches off: every client asks the same question, which they would answer from memory.
  const { url, process: server } = await startServe(dir, ['--max-queued-requests', '64', '--feature-cache-bytes', '0', '--prefix-cache-bytes', '0']);
  const maxTokens = 8;
  const body = {
    model: 'bench',
    max_tokens: maxTokens,
    temperature: 0,
    messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: await benchImageDataUrl() } }, { type: 'text', text: 'Describe this image.' }] }],
  };
  try {
    const { promptTokens } = await streamChat(url, body); // warm-up: weights read, scratch sized
    const runs: ServerFigures['runs'] = [];
    for (const clients of clientCounts) {
      // Each client sends its requests one after another; a lone client sends three so the median means something.
      const perClient = clients === 1 ? 3 : 1;
      const t0 = performance.now();
      const ttfts = (await Promise.all(Array.from({ length: clients }, async () => {
        const times: number[] = [];
        for (let r = 0; r < perClient; r++) times.push((await streamChat(url, body)).seconds);
        return times;
      }))).flat();
      const seconds = (performance.now() - t0) / 1000;
      runs.push({
        clients,
        requests: ttfts.length,
        seconds: round(seconds, 1),
        requestsPerMinute: round((60 * ttfts.length) / seconds, 2),
        ttftMedianSeconds: round(median(ttfts), 1),
        ttftP95Seconds: round(quantile(ttfts, 0.95), 1),
      });
    }
    const status = readFileSync(`/proc/${server.pid}/status`, 'utf8');
    const peakRssBytes = Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) * 1024;
    // 448×448 is 32×32 patches, one visual token each (images are not merged).
    const config = readModelConfig(join(dir, 'config.json'));
    const gflop = (visionFlops(1024, 1024, visionDims(config)) + prefillFlops(promptTokens, config)) / 1e9;
    const figures: ServerFigures = {
      maxTokens,
      promptTokens,
      gflopPerRequest: round(gflop),
      peakGflops: round(peak),
      peakKind,
      requestsPerMinuteAtPeak: round((60 * peak) / gflop, 2),
      runs,
      peakRssBytes,
    };
    process.stdout.write(JSON.stringify(figures) + '\n');
  } finally {
    server.kill('SIGTERM');
  }
}

await main();
