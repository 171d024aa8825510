// The quantized-weights decode comparison in one process: ours at every weight format and llama.cpp at Q8_0 and Q4_0
// take turns on the same machine, and every decode is bracketed by read-bandwidth measurements.
// Usage: node dist/bench/quantized-run.js <checkpoint-dir> <threads> <exact|bf16> <rounds> [llama]
// (prints one JSON object: QuantizedRunReport; bench/quantized.ts summarizes it)
//
// Why one process and brackets: this VM's two vCPUs read 56–62 GB/s together in some minutes and 32–38 GB/s in others
// on Zen 4 (one vCPU alone reads 31–33 either way), 50–86 and 28–35 on Zen 5, switching every few seconds to minutes.
// Separate processes per format compared formats measured in different phases, and a bound measured after a decode
// could come from another phase than the decode. Here a run counts only when the bandwidth before and after it agree,
// and formats are compared only between runs that met the same phase. Each run also records how much faster its threads together run an in-cache
// int4 GEMV than one thread does: in the fast phase two vCPUs compute at ~1.44× one, in the slow phase at ~1.76×
// (BENCHMARKS.md run 14): the fast phase is where the formats with the most arithmetic per byte fall behind.
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadCheckpoint } from '../src/model/checkpoint.js';
import { Qwen2Model } from '../src/model/qwen2.js';
import { FormattedWeights } from '../src/model/weight-formats.js';
import type { WeightFormat } from '../src/tensor/dtype.js';
import { type ComputeMode, createBackend } from '../src/tensor/index.js';
import { type Interruptions, measureInterruptions, NativeBackend, quantizeNative, readBandwidth } from '../src/tensor/native.js';
import { Tensor } from '../src/tensor/tensor.js';
import { decodeBytesPerToken, greedyRun } from './llm.js';
import { benchPrompt, DECODE } from './peer-common.js';
import { decodeSeconds, ensureGguf, loadLlama } from './peer-llamacpp.js';
import { round } from './stats.js';

/** Our runs of a round, by weight format. */
export const OURS = ['bf16', 'int8', 'int4', 'int4m'] as const;
/** llama.cpp's runs of a round, by GGUF type: the formats ours are held to. */
export const THEIRS = ['q8_0', 'q4_0'] as const;
export type Runner = (typeof OURS)[number] | (typeof THEIRS)[number];

/** A run whose bandwidth before and after differ by more than this fraction of the larger met two phases. */
const SAME_PHASE = 0.1;
/** Tries per run before it is recorded as unsteady (the bandwidth moved during every try). */
const TRIES = 3;

export interface BracketedRun {
  tokensPerSecond: number;
  /** Read bandwidth (GB/s, same threads) right before and right after the decode. */
  beforeGBs: number;
  afterGBs: number;
  /** Before and after agree (SAME_PHASE): the decode ran in one phase, and their mean is its bound. */
  steady: boolean;
  tries: number;
  /** The in-cache int4 GEMV rate on the run's threads ÷ on one thread, after the closing bandwidth measurement (absent on one thread). */
  computeScaling?: number;
}

export interface QuantizedRunReport {
  threads: number;
  compute: ComputeMode;
  isa: string;
  /** Bytes one decode step reads per format, as loaded (ours: bench/llm.ts's count). */
  bytesPerToken: Partial<Record<(typeof OURS)[number], number>>;
  llamaCpp?: { version?: string; skipped?: string };
  rounds: Partial<Record<Runner, BracketedRun>>[];
  /**
   * Before each round, what the machine took from the run's threads spinning for a second: a decode step waits for
   * every thread at each matmul, so time that any of them spends off its core is lost to the whole step.
   */
  interruptions?: Interruptions[];
}

/** Seconds of each round's interruption measurement. */
const INTERRUPTION_SECONDS = 1;

function samePhase(a: number, b: number): boolean {
  return Math.abs(a - b) <= SAME_PHASE * Math.max(a, b);
}

/**
 * How much faster `threads` threads run one int4 1536 × 1536 GEMV from cache than one thread does (median of 5 timings
 * of 100 calls each way, 28–51 ms in all on Zen 4): the host's arithmetic for this VM's threads at that moment, apart from
 * its memory.
 */
export class ComputeScaling {
  private readonly one = new NativeBackend({ threads: 1, compute: 'bf16' });
  private readonly all: NativeBackend;
  private readonly x = Tensor.empty('f32', [1, 1536]);
  private readonly y = Tensor.empty('f32', [1, 1536]);
  private readonly w: Tensor;

  constructor(threads: number) {
    this.all = new NativeBackend({ threads, compute: 'bf16' });
    const dense = Tensor.empty('f32', [1536, 1536]);
    for (let i = 0; i < dense.numel; i++) dense.data[i] = Math.sin(i) * 0.05;
    for (let i = 0; i < 1536; i++) this.x.data[i] = Math.cos(i);
    this.w = new Tensor('int4', [1536, 1536], quantizeNative('int4', dense));
  }

  measure(): number {
    return round(this.seconds(this.one) / this.seconds(this.all), 2);
  }

  private seconds(backend: NativeBackend): number {
    for (let i = 0; i < 20; i++) backend.matmul(this.x, this.w, null, this.y);
    const times: number[] = [];
    for (let r = 0; r < 5; r++) {
      const t0 = performance.now();
      for (let i = 0; i < 100; i++) backend.matmul(this.x, this.w, null, this.y);
      times.push(performance.now() - t0);
    }
    return times.sort((a, b) => a - b)[2]!;
  }
}

async function bracketed(threads: number, decode: () => Promise<number>, scaling: ComputeScaling | null): Promise<BracketedRun> {
  let run: BracketedRun | undefined;
  for (let tries = 1; tries <= TRIES; tries++) {
    const beforeGBs = readBandwidth(threads);
    const seconds = await decode();
    const afterGBs = readBandwidth(threads);
    run = { tokensPerSecond: round(DECODE.tokens / seconds, 2), beforeGBs: round(beforeGBs, 1), afterGBs: round(afterGBs, 1), steady: samePhase(beforeGBs, afterGBs), tries };
    if (scaling) run.computeScaling = scaling.measure();
    if (run.steady) break;
  }
  return run!;
}

/** A steady run's bound bandwidth: the mean of the measurements around it. */
export function runGBs(run: BracketedRun): number {
  return (run.beforeGBs + run.afterGBs) / 2;
}

/**
 * The host's phases among these bandwidths: split at the widest gap between sorted values when the upper side is over
 * 1.25× the lower (the two phases here are ~35 and ~60 GB/s); one phase otherwise. Returns the lower bound of each
 * phase, fastest first.
 */
export function phaseFloors(gbs: number[]): number[] {
  const sorted = [...gbs].sort((a, b) => a - b);
  let best = -1, gap = 1.25;
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i]! / sorted[i - 1]! > gap) {
      gap = sorted[i]! / sorted[i - 1]!;
      best = i;
    }
  }
  return best < 0 ? [0] : [sorted[best]!, 0];
}

/** The phase a run met: the index of the first of `floors` (phaseFloors) its bandwidth reaches. */
export function phaseIndex(floors: readonly number[], run: BracketedRun): number {
  return floors.findIndex((f) => runGBs(run) >= f);
}

/** Steady runs of each runner, grouped by phase (index into phaseFloors). */
export function runsByPhase(rounds: QuantizedRunReport['rounds']): { floors: number[]; runs: Map<Runner, BracketedRun[]>[] } {
  const steady = rounds.flatMap((r) => Object.entries(r).filter(([, x]) => x.steady)) as [Runner, BracketedRun][];
  const floors = phaseFloors(steady.map(([, x]) => runGBs(x)));
  const runs = floors.map(() => new Map<Runner, BracketedRun[]>());
  for (const [name, x] of steady) {
    const phase = runs[phaseIndex(floors, x)]!;
    phase.set(name, [...(phase.get(name) ?? []), x]);
  }
  return { floors, runs };
}

async function main(): Promise<void> {
  const [dir, threadsArg, computeArg, roundsArg, llamaArg] = process.argv.slice(2);
  if (!dir || !threadsArg || !computeArg || !roundsArg) throw new Error('usage: quantized-run.js <checkpoint-dir> <threads> <exact|bf16> <rounds> [llama]');
  const threads = Number(threadsArg);
  const wanted = Number(roundsArg);
  const log = (line: string) => process.stderr.write(line + '\n');

  const checkpoint = loadCheckpoint(dir);
  const backend = createBackend('native', { threads, compute: computeArg as ComputeMode }) as NativeBackend;
  const report: QuantizedRunReport = { threads: backend.threads, compute: backend.compute, isa: backend.isa, bytesPerToken: {}, rounds: [] };
  const runners = new Map<Runner, () => Promise<number>>();
  for (const format of OURS) {
    const weights = new FormattedWeights(checkpoint.weights, checkpoint.config.quantization, { language: format as WeightFormat });
    const model = new Qwen2Model(checkpoint.config, weights, backend);
    report.bytesPerToken[format] = decodeBytesPerToken(checkpoint, weights);
    let seed = DECODE.seed;
    // DECODE.tokens + 1: the token the prefill yields, then the decode steps timed.
    runners.set(format, async () => (await greedyRun(model, DECODE.promptTokens, DECODE.tokens + 1, seed++)).decodeMs / 1000);
  }

  // What llama.cpp holds, released in this order.
  const held: { dispose(): Promise<void> }[] = [];
  if (llamaArg === 'llama') {
    const loaded = await loadLlama(threads);
    report.llamaCpp = { version: loaded.version };
    if ('skipped' in loaded) report.llamaCpp.skipped = loaded.skipped;
    else {
      const ggufDir = process.env.VL3_BENCH_GGUF ?? path.join(tmpdir(), 'vl3-bench-gguf');
      for (const type of THEIRS) {
        const model = await loaded.llama.loadModel({ modelPath: ensureGguf(dir, ggufDir, type, log), gpuLayers: 0 });
        const context = await model.createContext({ contextSize: 2048, batchSize: 512, sequences: 1, threads: { ideal: threads, min: threads } });
        held.unshift(context);
        held.push(model);
        const seq = context.getSequence();
        let seed = DECODE.seed;
        runners.set(type, () => decodeSeconds(seq, benchPrompt(DECODE.promptTokens, seed++), DECODE.tokens));
      }
      held.push(loaded.llama);
    }
  }

  const scaling = backend.threads > 1 ? new ComputeScaling(backend.threads) : null;
  // Every runner once untimed: page faults, first-call allocations and llama.cpp's graph set-up.
  for (const decode of runners.values()) await decode();
  // At least `wanted` rounds, then more (three times as many in all at most) while a runner has no steady run in a
  // phase that others met.
  for (let r = 0; r < 3 * wanted; r++) {
    const took = measureInterruptions(backend.threads, INTERRUPTION_SECONDS);
    (report.interruptions ??= []).push(took);
    const roundRuns: Partial<Record<Runner, BracketedRun>> = {};
    for (const [name, decode] of runners) roundRuns[name] = await bracketed(backend.threads, decode, scaling);
    report.rounds.push(roundRuns);
    log(`round ${r + 1}: ${[...Object.entries(roundRuns)].map(([n, x]) => `${n} ${x.tokensPerSecond} tokens/s at ${x.beforeGBs}/${x.afterGBs} GB/s`).join(', ')}; ` +
      `threads off their cores ${round(took.anyLost * 100, 1)} % of a second before it`);
    const { runs } = runsByPhase(report.rounds);
    if (r + 1 >= wanted && runs.every((phase) => [...runners.keys()].every((name) => phase.has(name)))) break;
  }
  for (const h of held) await h.dispose();
  process.stdout.write(JSON.stringify(report) + '\n');
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
