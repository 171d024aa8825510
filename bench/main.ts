// `npm run bench [-- --json] [-- --skip-llm] [-- --skip-server] [-- --skip-reuse] [-- --skip-batch] [-- --skip-peers] [-- --peers-only] [-- --peer-threads 1,2]
// [-- --decode-pairs N] [-- --model DIR]`:
// kernel and model throughput beside the machine's limits measured in the same run (peak of each instruction kind, DRAM
// read bandwidth) and beside peers measured in the same run (llama.cpp through node-llama-cpp, PyTorch), each optional.
// Kernels run on every tier the CPU has, matmuls in both compute modes; models run as createBackend makes them.
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TOKENIZER_FILES, writeRandomCheckpoint } from '../src/model/random-checkpoint.js';
import { type ComputeMode, type Isa, nativeInfo } from '../src/tensor/native.js';
import { limitOf, measureKernels, measureLimits } from './kernels.js';
import type { LlmFigures } from './llm.js';
import type { ServerFigures } from './server.js';
import type { VisionFigures } from './vision.js';
import { measureResize } from './resize.js';
import { makeBenchClip, measureVideoDecodeFigures } from './video.js';
import type { VideoModelFigures } from './video-model.js';
import type { BatchFigures } from './batch.js';
import type { ReuseFigures, TurnPair } from './reuse.js';
import { percent, round } from './stats.js';
import { measureDecodePairs, measurePeers, printDecodePairs, printPeers, type PeersFigures } from './peers.js';
import { measureQuantizedRounds, printQuantized, type QuantizedFigures } from './quantized.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const skipLlm = args.includes('--skip-llm');
// Limits, kernels, our LLM figures and the peers beside them, nothing else: for iterating on the comparison.
const peersOnly = args.includes('--peers-only');
const skipPeers = args.includes('--skip-peers');
const peerThreadsFlag = args.indexOf('--peer-threads');
// Ours and llama.cpp BF16 alternately this many times (0: not at all); each pair costs about a minute. The quantized
// formats' rounds (ours bf16/int8/int4/int4m, llama.cpp Q8_0/Q4_0, in one process) run at least as many times, up to
// three times as many while a runner has no run in a phase of the host that others met: about a minute each.
const pairsFlag = args.indexOf('--decode-pairs');
const decodePairs = pairsFlag >= 0 ? Number(args[pairsFlag + 1]) : 3;
const modelFlag = args.indexOf('--model');
const modelDir = modelFlag >= 0 ? args[modelFlag + 1]! : (process.env.VL3_BENCH_MODEL ?? join(tmpdir(), 'vl3-bench-2b-random'));
const log = (line: string) => {
  if (!json) process.stdout.write(line + '\n');
};

const allThreads = nativeInfo().defaultThreads;
const threadCounts = [...new Set([1, allThreads])];
// Peers run on all threads unless told otherwise: each of their configurations costs about a minute per thread count.
const peerThreads = peerThreadsFlag >= 0 ? args[peerThreadsFlag + 1]!.split(',').map(Number) : [allThreads];

log(`# videollama3 benchmarks (${new Date().toISOString()})`);
// Every figure is a share of two cores: other work running now shows up in every line, so say so up front.
if (loadavg()[0]! > 0.5) log(`warning: 1-minute load average ${round(loadavg()[0]!, 2)} before the run; figures will read low`);
const limits = measureLimits(threadCounts);
const cpu = limits.cpu;
log(`cpu: tiers ${cpu.tiers.join('/')} (models run ${cpu.isa} by default, ${cpu.compute} compute; below in both modes), features ${Object.entries(cpu.features).filter(([, on]) => on).map(([f]) => f).join(' ')}`);
for (const n of threadCounts) {
  const peaks = Object.entries(limits.peaks).map(([kind, r]) => `${kind} ${r[n]}`).join(', ');
  log(`limit, ${n} thread(s): peak ${peaks} GFLOP/s (GOP/s for int8); read bandwidth ${limits.readGBs[n]} GB/s`);
}

const kernels = measureKernels(threadCounts, limits);
for (const g of kernels.gemm) {
  log(`GEMM 512x1536x8960 bf16 weights, ${g.isa} ${g.compute}, ${g.threads} thread(s): ${g.gflops} GFLOP/s = ${g.percentOfPeak}% of the ${g.limit} peak`);
}
for (const q of kernels.quantGemm) {
  const limit = q.limit ? `${q.percentOfPeak}% of the ${q.limit} peak` : 'no measured peak of its dot instruction';
  log(`GEMM 512x1536x8960 ${q.format} weights, ${q.isa} bf16, ${q.threads} thread(s): ${q.gops} GOP/s = ${limit}`);
}
for (const v of kernels.gemv) {
  log(`GEMV 1x1536x8960 bf16 cold weights, ${v.isa} ${v.compute}, ${v.threads} thread(s): ${v.GBs} GB/s = ${v.percentOfBandwidth}% of read bandwidth`);
}
for (const a of kernels.attention) {
  log(`attention ${a.case}, ${a.isa}, ${a.threads} thread(s): ${a.rate} ${a.unit} = ${a.percentOfLimit}% of the ${a.limit === 'read' ? 'read bandwidth' : `${a.limit} peak`}`);
}
log(`peer: ${kernels.peer.name}: GEMM ${kernels.peer.gemmGflops} GFLOP/s, GEMV ${kernels.peer.gemvGBs} GB/s`);

/** Runs one of the per-model bench scripts in its own process (its peak RSS is its own) and parses its JSON. */
function child<T>(name: string, ...argv: string[]): T {
  const script = join(dirname(fileURLToPath(import.meta.url)), `${name}.js`);
  return JSON.parse(execFileSync(process.execPath, [script, ...argv], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })) as T;
}

// The models run in both compute modes, the default (fastest) one first; each figure is set against its mode's peak.
const modes: ComputeMode[] = cpu.compute === 'bf16' ? ['bf16', 'exact'] : ['exact', 'bf16'];
/** The peak, on `threads` threads, of the instruction kind a model's matmuls use on this tier in this mode. */
const modePeak = (isa: string, compute: ComputeMode, threads: number) => {
  const kind = limitOf(isa as Isa, compute);
  return { kind, gflops: limits.peaks[kind]![threads]! };
};

type LlmRun = LlmFigures & { prefillGflops: number; prefillPercentOfPeak: number; peakKind: string; decodeBoundTokensPerSecond: number; decodePercentOfBound: number };
let llm: LlmRun[] | undefined;
if (!skipLlm) {
  // The tokenizer is only needed for the end-to-end figure (time to first token); the fixtures carry the real one.
  const tokenizerFrom = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'shared', 'fixtures', 'checkpoint', 'VideoLLaMA3-2B-tiny-random');
  const haveTokenizer = existsSync(join(tokenizerFrom, 'tokenizer.json'));
  if (!existsSync(join(modelDir, 'config.json'))) {
    log(`writing the random 2b checkpoint to ${modelDir} (set VL3_BENCH_MODEL or --model to reuse one)`);
    writeRandomCheckpoint({ preset: '2b', out: modelDir, seed: 0, tokenizerFrom: haveTokenizer ? tokenizerFrom : undefined });
  } else if (haveTokenizer && !existsSync(join(modelDir, 'tokenizer.json'))) {
    for (const name of TOKENIZER_FILES) if (existsSync(join(tokenizerFrom, name))) copyFileSync(join(tokenizerFrom, name), join(modelDir, name));
  }
  llm = modes.flatMap((compute) => (peersOnly ? peerThreads : threadCounts).map((n) => {
    const figures = child<LlmFigures>('llm', modelDir, String(n), compute);
    const bound = limits.readGBs[n]! * 1e9 / figures.weightBytesPerToken;
    const peak = modePeak(figures.isa, figures.compute, n);
    // Prefill FLOPs: the decoder layers' matmuls (the attention scores add under 2 % at 1024 tokens; no LM head but the last row's).
    const prefillGflops = round((2 * figures.decoderMatmulParams * figures.prefill.tokensPerSecond) / 1e9);
    return {
      ...figures, prefillGflops, prefillPercentOfPeak: percent(prefillGflops, peak.gflops), peakKind: peak.kind,
      decodeBoundTokensPerSecond: round(bound, 2), decodePercentOfBound: percent(figures.decode.tokensPerSecond, bound),
    };
  }));
  // Quantized weights: prefill (and a first decode figure) on all threads in the default mode; decode is compared in
  // rounds below.
  for (const weights of ['int8', 'int4', 'int4m']) {
    const figures = child<LlmFigures>('llm', modelDir, String(allThreads), cpu.compute, weights);
    const bound = (figures.readGBs * 1e9) / figures.weightBytesPerToken;
    const peak = modePeak(figures.isa, figures.compute, allThreads);
    const prefillGflops = round((2 * figures.decoderMatmulParams * figures.prefill.tokensPerSecond) / 1e9);
    llm.push({
      ...figures, prefillGflops, prefillPercentOfPeak: percent(prefillGflops, limits.peaks['int8-zmm']?.[allThreads] ?? peak.gflops),
      peakKind: limits.peaks['int8-zmm'] ? 'int8-zmm' : peak.kind,
      decodeBoundTokensPerSecond: round(bound, 2), decodePercentOfBound: percent(figures.decode.tokensPerSecond, bound),
    });
  }
  for (const f of llm) {
    log(`LLM 2b (random weights), ${f.weights} weights, ${f.isa} ${f.compute}, ${f.threads} thread(s): prefill ${f.prefill.tokensPerSecond} tokens/s (1024-token prompt) ` +
      `= ${f.prefillGflops} GFLOP/s = ${f.prefillPercentOfPeak}% of the ${f.peakKind} peak; ` +
      `decode ${f.decode.tokensPerSecond} tokens/s (64 after 256) = ${f.decodePercentOfBound}% of the bandwidth bound ` +
      `${f.decodeBoundTokensPerSecond} tokens/s (${round(f.weightBytesPerToken / 1e9, 2)} GB read per token); ` +
      `peak RSS ${round(f.peakRssBytes / 2 ** 30, 2)} GiB; load ${f.loadSeconds} s`);
  }
}

// Peers in the same run, beside our prefill and decode: llama.cpp on GGUFs of the same checkpoint, PyTorch eager.
let peers: PeersFigures | undefined;
if (!skipPeers) {
  log('peers:');
  peers = measurePeers({ modelDir: skipLlm ? undefined : modelDir, threadCounts, peerThreads, log: (line) => log(`  ${line}`), child });
  printPeers(peers, llm, kernels, limits, skipLlm ? undefined : modelDir, log);
  if (!skipLlm && peers.llamaCpp.available && decodePairs > 0) {
    peers.pairs = measureDecodePairs({ modelDir, threads: Math.max(...peerThreads), compute: cpu.compute, pairs: decodePairs, child });
    if (peers.pairs) printDecodePairs(peers.pairs, (line) => log(line));
  }
}

let quantized: QuantizedFigures | undefined;
if (!skipLlm && decodePairs > 0) {
  quantized = measureQuantizedRounds({ modelDir, threads: allThreads, compute: cpu.compute, rounds: decodePairs, llamaCpp: !skipPeers && peers?.llamaCpp.available === true, child });
  printQuantized(quantized, log);
}

let vision: VisionFigures[] | undefined;
if (!skipLlm && !peersOnly) {
  vision = modes.flatMap((compute) => threadCounts.map((n) => child<VisionFigures>('vision', modelDir, String(n), compute)));
  // The encoder is compute-bound: quantized weights save memory, not time (int8 dot products replace bf16 ones).
  for (const weights of ['int8', 'int4']) vision.push(child<VisionFigures>('vision', modelDir, String(allThreads), cpu.compute, weights));
  for (const f of vision) {
    const peak = modePeak(f.isa, f.compute, f.threads);
    for (const image of f.images) {
      log(`vision encoder + projector, one ${image.label} image (${image.patches} patches), ${f.weights} weights, ${f.isa} ${f.compute}, ${f.threads} thread(s): ` +
        `${image.seconds} s, ${image.gflops} GFLOP/s = ${percent(image.gflops, peak.gflops)}% of the ${peak.kind} peak (${image.gflop} GFLOP)`);
    }
    if (f.timeToFirstToken) {
      const t = f.timeToFirstToken;
      log(`time to first token, "${t.question}" with one 448x448 PNG, ${f.isa} ${f.compute}, ${f.threads} thread(s): ${t.seconds} s ` +
        `(${t.promptTokens} prompt tokens of which ${t.visualTokens} visual; prefill ${t.prefillSeconds} s)`);
    }
  }
}

const resize = peersOnly ? undefined : measureResize(threadCounts);
for (const n of resize ? threadCounts : []) {
  log(`resize ${resize!.source.width}x${resize!.source.height} (12 MP) to ${resize!.target.width}x${resize!.target.height}, Pillow-exact bicubic, ${n} thread(s): ${resize!.ms[n]} ms (${resize!.megapixelsPerSecond[n]} MP/s)`);
}

// Video: a generated 3-minute 1280x720 30 fps H.264 clip (needs ffmpeg), decoded and sampled to 180 frames, then one
// question about it end to end on all threads (the longest part of the run).
const clip = process.env.VL3_BENCH_CLIP ?? join(tmpdir(), 'vl3-bench-720p-3min.mp4');
let videoDecode: Awaited<ReturnType<typeof measureVideoDecodeFigures>> | undefined;
let video: (VideoModelFigures & { memoryBudgetBytes: number }) | undefined;
if (!peersOnly) try {
  await makeBenchClip(clip);
  videoDecode = await measureVideoDecodeFigures(clip);
  log(`video decode + sample 180 frames of a 3-min 1280x720 30 fps H.264 clip: ${videoDecode.seconds} s (median of ${videoDecode.runs.length})`);
} catch (err) {
  log(`video: skipped (${(err as Error).message})`);
}
if (videoDecode && !skipLlm) {
  const f = child<VideoModelFigures>('video-model', modelDir, clip, String(allThreads));
  video = { ...f, memoryBudgetBytes: f.peakRssBytes - f.weightBytes };
  log(`video question end to end (2b random weights, ${f.threads} threads, ${f.frames} frames): decode ${f.decodeSeconds} s, ` +
    `vision encoding ${f.encodeSeconds} s, prefill ${f.prefillSeconds} s, time to first token ${f.timeToFirstTokenSeconds} s; ` +
    `visual tokens ${f.visualTokensBeforePruning} before DiffFP, ${f.visualTokensAfterPruning} after; prompt ${f.promptTokens} tokens; ` +
    `peak RSS ${round(f.peakRssBytes / 2 ** 30, 2)} GiB = weights ${round(f.weightBytes / 2 ** 30, 2)} GiB + ${round(video.memoryBudgetBytes / 2 ** 30, 2)} GiB`);
}

// The caches: a second turn about the same video (library) and about the same image (server, history re-sent),
// each beside the first turn's time to first token.
let reuse: ReuseFigures | undefined;
if (videoDecode && !skipLlm && !args.includes('--skip-reuse')) {
  reuse = child<ReuseFigures>('reuse', modelDir, clip, String(allThreads));
  const turns = (r: TurnPair) =>
    `first turn ${r.first.timeToFirstTokenSeconds} s to first token (${r.first.promptTokens}-token prompt), second ${r.second.timeToFirstTokenSeconds} s ` +
    `(${r.second.cachedTokens} of ${r.second.promptTokens} prompt tokens from the prefix cache) = ${round(100 * r.secondOverFirst, 1)}% of the first`;
  log(`second turn, video chat (2b random weights, ${reuse.threads} threads, ${reuse.video.frames} frames, library): ${turns(reuse.video)}`);
  log(`second turn, image chat through vl3 serve with the history re-sent: ${turns(reuse.serverImage)}`);
  const b = reuse.readBack;
  log(
    `second turn, image chat (library) after a ${b.first.answerTokens}-token answer: ${b.before.timeToFirstTokenSeconds} s to first token prefilling ${b.prefilledBefore} positions; ` +
      `after reading the answer back (${b.readBackSeconds} s, as vl3 chat does while the user types) ${b.after.timeToFirstTokenSeconds} s prefilling ${b.prefilledAfter} (its new message)`,
  );
}

// Serving: `vl3 serve` in its own process, 1/4/16 concurrent streaming clients asking about a 448×448 image.
let server: ServerFigures | undefined;
if (!skipLlm && !peersOnly && !args.includes('--skip-server')) {
  server = child<ServerFigures>('server', modelDir);
  const single = vision?.find((f) => f.threads === allThreads && f.compute === cpu.compute && f.weights === 'bf16')?.timeToFirstToken;
  log(`server (2b random weights, ${server.promptTokens}-token prompt, ${server.maxTokens} tokens per answer, ${round(server.gflopPerRequest)} GFLOP per request ` +
    `= ${server.requestsPerMinuteAtPeak} requests/min at the ${server.peakGflops} GFLOP/s ${server.peakKind} peak; library alone, same request: ${single ? `${single.seconds} s to first token` : 'not measured'}):`);
  for (const r of server.runs) {
    log(`  ${r.clients} client(s): ${r.requestsPerMinute} requests/min (${percent(r.requestsPerMinute, server.requestsPerMinuteAtPeak)}% of the peak bound), ` +
      `time to first token median ${r.ttftMedianSeconds} s, p95 ${r.ttftP95Seconds} s (${r.requests} requests in ${r.seconds} s)`);
  }
  log(`  server peak RSS ${round(server.peakRssBytes / 2 ** 30, 2)} GiB`);
}

// Batched decoding: `vl3 serve` with 1, 2, 4 and 8 clients decoding at once, beside llama.cpp's batched sequences.
let batch: BatchFigures | undefined;
if (!skipLlm && !peersOnly && !args.includes('--skip-batch')) {
  batch = child<BatchFigures>('batch', modelDir, '1,2,4,8', ...(skipPeers ? ['--no-peer'] : []));
  log(`batched decoding through vl3 serve (2b random weights, ${batch.threads} threads, ${batch.answerTokens} greedy tokens per client after a short prompt, medians of ${batch.rounds} rounds):`);
  for (const [i, r] of batch.ours.entries()) {
    const s = batch.speedup[i]!;
    log(`  ${r.clients} client(s): ${r.tokensPerSecond} tokens/s aggregate (${s.median}x one client; rounds ${s.ratios.join(', ')}), ` +
      `time per output token median ${r.tpotMedianSeconds} s, p95 ${r.tpotP95Seconds} s; time to first token median ${r.ttftMedianSeconds} s`);
  }
  log(`  server: ${batch.serverDecoding?.tokens} tokens decoded in ${batch.serverDecoding?.batches} forward passes; peak RSS ${round(batch.peakRssBytes / 2 ** 30, 2)} GiB`);
  if (batch.llamaCpp.available) {
    for (const r of batch.llamaCpp.runs) log(`  llama.cpp ${batch.llamaCpp.weights}, ${r.clients} sequence(s): ${r.tokensPerSecond} tokens/s aggregate, time per output token median ${r.tpotMedianSeconds} s`);
  } else {
    log(`  llama.cpp: skipped (${batch.llamaCpp.skipped})`);
  }
}

if (json) {
  const figures = { date: new Date().toISOString(), threads: threadCounts, limits, kernels, llm, peers, quantized, vision, resize, videoDecode, video, reuse, server, batch };
  process.stdout.write(JSON.stringify(figures) + '\n');
}
