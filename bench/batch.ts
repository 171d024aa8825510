// Batched decoding through the server: `vl3 serve` with the 2b random checkpoint in its own process, 1, 2, 4 and 8
// concurrent clients each streaming 128 greedy tokens after a short prompt (the caches off), in rounds (the host's
// memory bandwidth drifts from minute to minute: each round runs every client count, and each count's figures and
// its ratio to one client's are the medians over the rounds). Reports the aggregate decode rate (every client's
// tokens over the wall time of the run), each client's time per output token, the forward passes the server ran, and
// its peak memory; then llama.cpp's batched decoding (node-llama-cpp, one context with a sequence per client) on the
// BF16 GGUF of the same weights, in the same run.
// Usage: node dist/bench/batch.js <checkpoint-dir> [clients,...] [--rounds N] [--no-peer]   (prints one JSON object)
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nativeInfo } from '../src/tensor/native.js';
import { benchPrompt } from './peer-common.js';
import { ensureGguf, loadLlama, type Sequence } from './peer-llamacpp.js';
import { startServe, streamChat } from './serve-client.js';
import { median, round } from './stats.js';

const ANSWER_TOKENS = 128;

export interface BatchRun {
  clients: number;
  /** Every client's answer tokens over the seconds from the first request to the last answer's end. */
  tokensPerSecond: number;
  /** Seconds per answer token after each client's first, over the clients. */
  tpotMedianSeconds: number;
  tpotP95Seconds: number;
  ttftMedianSeconds: number;
  tokens: number;
  seconds: number;
}

export interface BatchFigures {
  cpu: string;
  threads: number;
  answerTokens: number;
  /** Per client count, the round whose aggregate rate is the median (ours: `rounds` rounds). */
  ours: BatchRun[];
  rounds: number;
  /** Per client count: the aggregate rate over one client's, in each round, and their median. */
  speedup: { clients: number; ratios: number[]; median: number }[];
  /** The server's decode steps (`/health`): forward passes and tokens, over all runs. */
  serverDecoding?: { tokens: number; batches: number };
  peakRssBytes: number;
  llamaCpp: { available: boolean; skipped?: string; version?: string; weights?: string; runs: BatchRun[] };
}

/** The q-quantile by nearest rank. */
function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]!;
}

function summarise(clients: number, seconds: number, answers: { ttft: number; total: number; tokens: number }[]): BatchRun {
  const tokens = answers.reduce((a, x) => a + x.tokens, 0);
  const tpot = answers.map((x) => (x.total - x.ttft) / Math.max(1, x.tokens - 1));
  return {
    clients,
    tokensPerSecond: round(tokens / seconds, 2),
    tpotMedianSeconds: round(median(tpot), 4),
    tpotP95Seconds: round(quantile(tpot, 0.95), 4),
    ttftMedianSeconds: round(median(answers.map((x) => x.ttft)), 3),
    tokens,
    seconds: round(seconds, 2),
  };
}

async function ours(dir: string, clientCounts: number[], rounds: number): Promise<Pick<BatchFigures, 'ours' | 'rounds' | 'speedup' | 'peakRssBytes' | 'serverDecoding'>> {
  const most = Math.max(...clientCounts);
  const { url, process: server } = await startServe(dir, ['--max-active-requests', String(most), '--max-queued-requests', '64', '--feature-cache-bytes', '0', '--prefix-cache-bytes', '0']);
  const body = (i: number) => ({
    model: 'bench',
    max_tokens: ANSWER_TOKENS,
    temperature: 0,
    messages: [{ role: 'user', content: `Tell story number ${i} about a lighthouse keeper.` }],
  });
  try {
    await streamChat(url, { ...body(0), max_tokens: 4 }); // warm-up: weights read, scratch sized
    const byRound: BatchRun[][] = [];
    for (let r = 0; r < rounds; r++) {
      const runs: BatchRun[] = [];
      for (const clients of clientCounts) {
        const t0 = performance.now();
        const answers = await Promise.all(
          Array.from({ length: clients }, async (_, i) => {
            const a = await streamChat(url, body(i + 1));
            return { ttft: a.seconds, total: a.totalSeconds, tokens: a.completionTokens };
          }),
        );
        runs.push(summarise(clients, (performance.now() - t0) / 1000, answers));
        process.stderr.write(`ours, round ${r + 1}, ${clients} client(s): ${runs.at(-1)!.tokensPerSecond} tokens/s\n`);
      }
      byRound.push(runs);
    }
    const medianRun = (i: number) => {
      const sorted = byRound.map((runs) => runs[i]!).sort((a, b) => a.tokensPerSecond - b.tokensPerSecond);
      return sorted[Math.floor((sorted.length - 1) / 2)]!;
    };
    const speedup = clientCounts.map((clients, i) => {
      const ratios = byRound.map((runs) => round(runs[i]!.tokensPerSecond / runs[0]!.tokensPerSecond, 2));
      return { clients, ratios, median: round(median(ratios), 2) };
    });
    const health = (await (await fetch(`${url}/health`)).json()) as { decoding?: { tokens: number; batches: number } };
    const status = readFileSync(`/proc/${server.pid}/status`, 'utf8');
    return { ours: clientCounts.map((_, i) => medianRun(i)), rounds, speedup, serverDecoding: health.decoding, peakRssBytes: Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) * 1024 };
  } finally {
    server.kill();
  }
}

/** One sequence's answer: seconds to its first token and to its last, from `t0`. */
async function answer(seq: Sequence, prompt: number[], t0: number): Promise<{ ttft: number; total: number; tokens: number }> {
  let tokens = 0;
  let ttft = 0;
  for await (const _ of seq.evaluate(prompt, { temperature: 0 })) {
    if (++tokens === 1) ttft = (performance.now() - t0) / 1000;
    if (tokens >= ANSWER_TOKENS) break;
  }
  return { ttft, total: (performance.now() - t0) / 1000, tokens };
}

async function llamaCpp(dir: string, clientCounts: number[], threads: number): Promise<BatchFigures['llamaCpp']> {
  const loaded = await loadLlama(threads);
  if ('skipped' in loaded) return { available: false, skipped: loaded.skipped, version: loaded.version, runs: [] };
  const { llama } = loaded;
  const file = ensureGguf(dir, process.env.VL3_BENCH_GGUF ?? join(tmpdir(), 'vl3-bench-gguf'), 'bf16', (line) => process.stderr.write(line + '\n'));
  const model = await llama.loadModel({ modelPath: file, gpuLayers: 0 });
  const runs: BatchRun[] = [];
  try {
    for (const clients of clientCounts) {
      // One context with a sequence per client: node-llama-cpp batches the sequences' evaluations into one decode.
      const context = await model.createContext({ contextSize: 512, batchSize: 512, sequences: clients, threads: { ideal: threads, min: threads } });
      const sequences = Array.from({ length: clients }, () => context.getSequence());
      await answer(sequences[0]!, benchPrompt(16, 1), performance.now()); // warm-up
      await sequences[0]!.clearHistory();
      const t0 = performance.now();
      const answers = await Promise.all(sequences.map((seq, i) => answer(seq, benchPrompt(24, 300 + i), t0)));
      runs.push(summarise(clients, (performance.now() - t0) / 1000, answers));
      process.stderr.write(`llama.cpp BF16, ${clients} sequence(s): ${runs.at(-1)!.tokensPerSecond} tokens/s\n`);
      await context.dispose();
    }
  } finally {
    await model.dispose();
    await llama.dispose();
  }
  return { available: true, version: loaded.version, weights: 'BF16 GGUF', runs };
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const roundsFlag = argv.indexOf('--rounds');
  const rounds = roundsFlag >= 0 ? Number(argv[roundsFlag + 1]) : 3;
  const [dir, clientsArg] = argv.filter((a, i) => !a.startsWith('--') && (roundsFlag < 0 || i !== roundsFlag + 1));
  if (!dir) throw new Error('usage: batch.js <checkpoint-dir> [clients,...] [--rounds N] [--no-peer]');
  const clientCounts = (clientsArg ?? '1,2,4,8').split(',').map(Number);
  if (clientCounts[0] !== 1) throw new Error('the first client count must be 1: the others are set against it');
  const info = nativeInfo();
  const figures: BatchFigures = {
    cpu: `${info.isa} tier, ${Object.entries(info.features).filter(([, on]) => on).map(([f]) => f).join(' ')}`,
    threads: info.defaultThreads,
    answerTokens: ANSWER_TOKENS,
    ...(await ours(dir, clientCounts, rounds)),
    llamaCpp: argv.includes('--no-peer') ? { available: false, skipped: '--no-peer', runs: [] } : await llamaCpp(dir, clientCounts, info.defaultThreads),
  };
  process.stdout.write(JSON.stringify(figures) + '\n');
}

await main();
