// The "peers" section of `npm run bench`: llama.cpp and PyTorch measured in the same run, printed beside our own LLM figures.
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { readModelConfig } from '../src/model/config.js';
import type { KernelFigures, MachineLimits } from './kernels.js';
import type { LlmFigures } from './llm.js';
import { agreement, CHECK, DECODE, PREFILL, type CheckFigures, type PeerReport, type PeerRun, type Throughput } from './peer-common.js';
import type { LlamaCppExtra } from './peer-llamacpp.js';
import { measureTorch, type TorchExtra } from './peer-torch.js';
import { median, percent, round } from './stats.js';

export interface PeersFigures {
  threads: number[];
  /** 1-minute load average before and after the peers ran: other work on the machine skews every runtime, llama.cpp's spinning thread pool most. */
  loadAverage: { before: number; after: number };
  /** Our engine's answer to the agreement check, which every peer run is compared with. */
  ours?: CheckFigures;
  llamaCpp: PeerReport<LlamaCppExtra>;
  torch: PeerReport<TorchExtra>;
  /** Ours (default mode) and llama.cpp BF16 run alternately on all peer threads: see measureDecodePairs. */
  pairs?: DecodePairs;
}

export interface DecodePairs {
  threads: number;
  compute: string;
  runs: { ours: Throughput; llamaCpp: Throughput }[];
  median: { ours: Throughput; llamaCpp: Throughput };
  /** Median of ours ÷ llama.cpp over the pairs (decode and prefill). */
  decodeRatio: number;
  prefillRatio: number;
}

type Child = <T>(name: string, ...argv: string[]) => T;

const skipped = (peer: string, why: string): PeerReport<never> => ({ peer, available: false, skipped: why, runs: [] });

export function measurePeers(o: { modelDir?: string; threadCounts: number[]; peerThreads: number[]; log: (line: string) => void; child: Child }): PeersFigures {
  const { modelDir, log } = o;
  const before = round(loadavg()[0]!, 2);
  let ours: CheckFigures | undefined;
  let llamaCpp: PeerReport<LlamaCppExtra>;
  if (modelDir) {
    ours = o.child<CheckFigures>('peer-ours', modelDir, String(Math.max(...o.peerThreads)));
    try {
      llamaCpp = o.child<PeerReport<LlamaCppExtra>>('peer-llamacpp', modelDir, o.peerThreads.join(','));
    } catch (err) {
      llamaCpp = skipped('llama.cpp', `the node-llama-cpp run failed: ${(err as Error).message.split('\n')[0]}`);
    }
  } else {
    llamaCpp = skipped('llama.cpp', 'no checkpoint to convert (--skip-llm)');
  }
  if (llamaCpp.skipped) log(`llama.cpp: skipped: ${llamaCpp.skipped}`);

  let torch: PeerReport<TorchExtra>;
  try {
    torch = measureTorch(o.threadCounts, modelDir, o.peerThreads, log);
  } catch (err) {
    torch = skipped('PyTorch', (err as Error).message.split('\n')[0]!);
  }
  if (torch.skipped) log(`PyTorch: skipped: ${torch.skipped}`);

  for (const run of [...llamaCpp.runs, ...torch.runs]) if (ours && run.check) run.agreement = agreement(ours, run.check);
  const after = round(loadavg()[0]!, 2);
  log(`load average (1 min) ${before} before the peers, ${after} after`);
  return { threads: o.peerThreads, loadAverage: { before, after }, ours, llamaCpp, torch };
}

/**
 * Decode reads every weight once per token, so it runs at the memory bandwidth the host leaves this VM, which moves by
 * ±15 % from one minute to the next: one decode figure per runtime, minutes apart, cannot rank two runtimes that are
 * both near the bound. So ours (in `compute`) and llama.cpp's BF16 GGUF run alternately, `pairs` times each, on the
 * same threads, each pair within about a minute; the ratios are taken per pair and their median reported.
 */
export function measureDecodePairs(o: { modelDir: string; threads: number; compute: string; pairs: number; child: Child }): DecodePairs | undefined {
  const runs: DecodePairs['runs'] = [];
  for (let r = 0; r < o.pairs; r++) {
    const ours = o.child<LlmFigures>('llm', o.modelDir, String(o.threads), o.compute);
    const llama = o.child<PeerReport<LlamaCppExtra>>('peer-llamacpp', o.modelDir, String(o.threads), 'bf16').runs[0];
    if (!llama) return undefined;
    runs.push({ ours: { prefill: ours.prefill, decode: ours.decode }, llamaCpp: { prefill: llama.prefill, decode: llama.decode } });
  }
  const med = (pick: (t: Throughput) => number, side: 'ours' | 'llamaCpp') => round(median(runs.map((p) => pick(p[side]))), 2);
  const medianOf = (side: 'ours' | 'llamaCpp'): Throughput => ({
    prefill: { ...runs[0]![side].prefill, tokensPerSecond: med((t) => t.prefill.tokensPerSecond, side), seconds: med((t) => t.prefill.seconds, side) },
    decode: { ...runs[0]![side].decode, tokensPerSecond: med((t) => t.decode.tokensPerSecond, side), seconds: med((t) => t.decode.seconds, side) },
  });
  const ratio = (pick: (t: Throughput) => number) => round(median(runs.map((p) => pick(p.ours) / pick(p.llamaCpp))), 2);
  return {
    threads: o.threads,
    compute: o.compute,
    runs,
    median: { ours: medianOf('ours'), llamaCpp: medianOf('llamaCpp') },
    decodeRatio: ratio((t) => t.decode.tokensPerSecond),
    prefillRatio: ratio((t) => t.prefill.tokensPerSecond),
  };
}

export function printDecodePairs(p: DecodePairs, log: (line: string) => void): void {
  log(`ours (${p.compute}) and llama.cpp BF16 alternately, ${p.threads} thread(s), ${p.runs.length} pairs (prefill ${PREFILL.tokens} tokens, decode ${DECODE.tokens} after ${DECODE.promptTokens}):`);
  p.runs.forEach((r, i) => {
    log(`  pair ${i + 1}: ours ${r.ours.prefill.tokensPerSecond} / ${r.ours.decode.tokensPerSecond} tokens/s, ` +
      `llama.cpp ${r.llamaCpp.prefill.tokensPerSecond} / ${r.llamaCpp.decode.tokensPerSecond} (prefill / decode); ` +
      `decode ratio ${round(r.ours.decode.tokensPerSecond / r.llamaCpp.decode.tokensPerSecond, 2)}`);
  });
  log(`  median: ours ${p.median.ours.prefill.tokensPerSecond} / ${p.median.ours.decode.tokensPerSecond}, llama.cpp ` +
    `${p.median.llamaCpp.prefill.tokensPerSecond} / ${p.median.llamaCpp.decode.tokensPerSecond}; median of the pairs' ratios: ` +
    `prefill ${p.prefillRatio}×, decode ${p.decodeRatio}×`);
}

/** Bytes one decode step reads per weight, by the weight type a run names (norms and biases are negligible here). */
function bytesPerWeight(weights: string): number {
  const w = weights.toLowerCase();
  if (w.startsWith('q8_0') || w.startsWith('int8')) return 34 / 32;
  if (w.startsWith('q4_0') || w.startsWith('int4,')) return 18 / 32;
  if (w.startsWith('int4m')) return 20 / 32;
  if (w.startsWith('fp32')) return 4;
  return 2; // bf16
}

export function printPeers(
  peers: PeersFigures,
  llm: (LlmFigures & { decodeBoundTokensPerSecond: number })[] | undefined,
  kernels: KernelFigures | undefined,
  limits: MachineLimits,
  modelDir: string | undefined,
  log: (line: string) => void,
): void {
  const t = peers.torch.extra;
  if (t) {
    const blas = t.blas.find((p) => /libopenblas|libblis|libmkl/.test(p)) ?? t.blas[0] ?? 'none mapped';
    log(`PyTorch ${t.torch} (${t.python}; CPU capability ${t.cpuCapability}, oneDNN ${t.mkldnn}, BLAS ${blas}):`);
    for (const [n, g] of Object.entries(t.gemm)) {
      // Ours on the tier models run on, in both modes (bf16 weights either way; exact keeps f32 activations).
      const ours = (compute: string) => kernels?.gemm.find((k) => k.threads === Number(n) && k.isa === limits.cpu.isa && k.compute === compute);
      const peaks = Object.entries(limits.peaks).filter(([kind]) => !kind.startsWith('int8')).map(([kind, r]) => `${kind} ${r[n]}`).join(', ');
      log(`  GEMM 512x1536x8960, ${n} thread(s): fp32 ${g.fp32?.gflops ?? '-'} GFLOP/s, bf16 ${g.bf16?.gflops ?? '-'} GFLOP/s` +
        ` (ours on ${limits.cpu.isa}: exact ${ours('exact')?.gflops ?? '-'}, bf16 ${ours('bf16')?.gflops ?? '-'} GFLOP/s; peaks ${peaks} GFLOP/s)`);
    }
  }
  if (!llm || !modelDir) return;
  const c = readModelConfig(join(modelDir, 'config.json'));
  const layerParams = c.numHiddenLayers * (c.hiddenSize * c.hiddenSize * 2 + 2 * c.numKeyValueHeads * c.headDim * c.hiddenSize + 3 * c.hiddenSize * c.intermediateSize);
  const decodeParams = layerParams + c.vocabSize * c.hiddenSize;
  const line = (cells: (string | number)[]) => log(`  | ${cells.join(' | ')} |`);
  log(`LLM beside peers (same checkpoint, same prompts: prefill ${PREFILL.tokens} tokens, decode ${DECODE.tokens} after ${DECODE.promptTokens}; ` +
    `prefill GFLOP/s counts the layers' matmuls only; agreement with ours: argmax equal at ${CHECK.promptTokens} teacher-forced positions, greedy tokens equal before the first difference):`);
  line(['runtime', 'weights', 'threads', 'prefill tokens/s', 'prefill GFLOP/s', '× ours', 'decode tokens/s', '% of bandwidth bound', '× ours', 'agreement']);
  line(['---', '---', '---', '---', '---', '---', '---', '---', '---', '---']);
  for (const n of peers.threads) {
    // "× ours" is against our default (fastest) mode; the agreement reference is our exact mode (bench/peer-ours.ts).
    const mine = llm.find((f) => f.threads === n && f.compute === limits.cpu.compute && f.weights === 'bf16');
    const bound = (weights: string) => (limits.readGBs[n]! * 1e9) / (decodeParams * bytesPerWeight(weights));
    const gflops = (tps: number) => round((2 * layerParams * tps) / 1e9);
    const rows: { runtime: string; run: Pick<PeerRun, 'weights' | 'prefill' | 'decode' | 'agreement'> }[] = [];
    for (const f of llm) {
      if (f.threads !== n) continue;
      const weights = f.compute === 'bf16' ? `${f.weights}, ${f.weights === 'bf16' ? 'bf16' : 'int8-activation'} compute` : `${f.weights}, exact (f32 activations)`;
      rows.push({ runtime: `ours (${f.isa})`, run: { weights, prefill: f.prefill, decode: f.decode } });
    }
    for (const run of [...peers.llamaCpp.runs, ...peers.torch.runs]) if (run.threads === n) rows.push({ runtime: run.peer, run });
    for (const { runtime, run } of rows) {
      const a = run.agreement;
      line([
        runtime,
        run.weights,
        n,
        run.prefill.tokensPerSecond,
        gflops(run.prefill.tokensPerSecond),
        mine ? `${round(run.prefill.tokensPerSecond / mine.prefill.tokensPerSecond, 2)}` : '-',
        run.decode.tokensPerSecond,
        `${percent(run.decode.tokensPerSecond, bound(run.weights))} %`,
        mine ? `${round(run.decode.tokensPerSecond / mine.decode.tokensPerSecond, 2)}` : '-',
        a ? `${a.argmaxSame}/${a.positions}, greedy ${a.greedyPrefix}/${a.greedyTokens}` : run.weights === 'bf16, exact (f32 activations)' ? '(reference)' : '-',
      ]);
    }
  }
}
