// The "quantized weights" section of `npm run bench`: our decode with bf16, int8, int4 and int4m weights and llama.cpp's
// with Q8_0 and Q4_0 GGUFs of the same checkpoint, taking turns in one process (bench/quantized-run.ts), each decode
// beside the read bandwidth measured right before and right after it.
import { OURS, phaseIndex, type QuantizedRunReport, type Runner, runGBs, runsByPhase, THEIRS } from './quantized-run.js';
import { median, percent, round } from './stats.js';

type Child = <T>(name: string, ...argv: string[]) => T;

/**
 * A ratio of the issue's targets in one phase, and the target. `paired`: the median over the rounds in which both
 * sides ran steadily in this phase of one side's tokens/s ÷ the other's, the runs of a round being minutes apart at
 * most; it decides the target where there is one, since the bandwidth drifts within a phase and one side's median can
 * come from other minutes than the other's. `ratio`: the ratio of the two sides' medians.
 */
export interface QuantizedRatio {
  label: string;
  ratio: number;
  paired?: { ratio: number; rounds: number };
  target: number;
}

/** Whether a ratio meets its target: the paired ratio where there is one. */
export function ratioMeets(r: QuantizedRatio): boolean {
  return (r.paired?.ratio ?? r.ratio) >= r.target;
}

/** What one phase of the host gave: its bandwidth, our formats and llama.cpp's, and the targets' ratios. */
export interface QuantizedPhase {
  /** Median read bandwidth of the steady runs in this phase (same threads). */
  readGBs: number;
  runs: number;
  /** Median over its runs of how much faster the threads together run an in-cache int4 GEMV than one (BracketedRun). */
  computeScaling?: number;
  /** Per format: median decode tokens/s, bytes per token, and the median of the runs' fractions of their own bound. */
  formats: { weights: string; runs: number; tokensPerSecond: number; bytesPerToken: number; percentOfBound: number }[];
  theirs: { weights: string; runs: number; tokensPerSecond: number }[];
  ratios: QuantizedRatio[];
}

export interface QuantizedFigures {
  threads: number;
  compute: string;
  isa: string;
  llamaCpp?: { version?: string; skipped?: string };
  rounds: number;
  /** Runs whose bandwidth moved during every try (left out). */
  unsteadyRuns: number;
  /** Fastest phase first. */
  phases: QuantizedPhase[];
  /** Medians over the rounds of the time at least one thread was off its core, and of that in gaps of 1 ms or more (%). */
  interrupted?: { anyPercent: number; longPercent: number };
  report: QuantizedRunReport;
}

const TARGETS: [label: string, target: number, a: Runner, b: Runner][] = [
  ['int8 ÷ our bf16', 1.8, 'int8', 'bf16'],
  ['int4 ÷ our bf16', 3, 'int4', 'bf16'],
  ['int4m ÷ our bf16', 3, 'int4m', 'bf16'],
  ['int8 ÷ llama.cpp Q8_0', 1, 'int8', 'q8_0'],
  ['int4 ÷ llama.cpp Q4_0', 1, 'int4', 'q4_0'],
];

/**
 * Decode runs at the bandwidth the host leaves this VM, which has two phases (see bench/quantized-run.ts), so each
 * run's bound is the bandwidth measured around it, and formats and runtimes are compared within a phase.
 */
export function measureQuantizedRounds(o: { modelDir: string; threads: number; compute: string; rounds: number; llamaCpp: boolean; child: Child }): QuantizedFigures {
  const argv = [o.modelDir, String(o.threads), o.compute, String(o.rounds)];
  const report = o.child<QuantizedRunReport>('quantized-run', ...(o.llamaCpp ? [...argv, 'llama'] : argv));
  const { floors, runs } = runsByPhase(report.rounds);
  const tps = (xs: { tokensPerSecond: number }[]) => median(xs.map((x) => x.tokensPerSecond));
  const paired = (phase: number, a: Runner, b: Runner): QuantizedRatio['paired'] => {
    const ratios = report.rounds.flatMap((r) => {
      const xa = r[a], xb = r[b];
      return xa?.steady && xb?.steady && phaseIndex(floors, xa) === phase && phaseIndex(floors, xb) === phase ? [xa.tokensPerSecond / xb.tokensPerSecond] : [];
    });
    return ratios.length ? { ratio: round(median(ratios), 2), rounds: ratios.length } : undefined;
  };
  const phases = runs.map((phase, index): QuantizedPhase => {
    const all = [...phase.values()].flat();
    const scalings = all.flatMap((x) => (x.computeScaling === undefined ? [] : [x.computeScaling]));
    return {
      readGBs: round(median(all.map(runGBs)), 1),
      runs: all.length,
      ...(scalings.length ? { computeScaling: round(median(scalings), 2) } : {}),
      formats: OURS.flatMap((weights) => {
        const xs = phase.get(weights) ?? [];
        const bytesPerToken = report.bytesPerToken[weights] ?? 0;
        return xs.length
          ? [{ weights, runs: xs.length, tokensPerSecond: round(tps(xs), 2), bytesPerToken, percentOfBound: round(median(xs.map((x) => percent(x.tokensPerSecond, (runGBs(x) * 1e9) / bytesPerToken))), 1) }]
          : [];
      }),
      theirs: THEIRS.flatMap((type) => {
        const xs = phase.get(type) ?? [];
        return xs.length ? [{ weights: `${type.toUpperCase()} GGUF`, runs: xs.length, tokensPerSecond: round(tps(xs), 2) }] : [];
      }),
      ratios: TARGETS.flatMap(([label, target, a, b]) => {
        const xa = phase.get(a) ?? [], xb = phase.get(b) ?? [];
        if (!xa.length || !xb.length) return [];
        const pairs = paired(index, a, b);
        return [{ label, ratio: round(tps(xa) / tps(xb), 2), ...(pairs ? { paired: pairs } : {}), target }];
      }),
    };
  });
  return {
    threads: report.threads,
    compute: report.compute,
    isa: report.isa,
    llamaCpp: report.llamaCpp,
    rounds: report.rounds.length,
    unsteadyRuns: report.rounds.flatMap((r) => Object.values(r)).filter((x) => !x.steady).length,
    phases,
    ...(report.interruptions?.length
      ? { interrupted: { anyPercent: round(median(report.interruptions.map((x) => x.anyLost * 100)), 1), longPercent: round(median(report.interruptions.map((x) => x.longLost * 100)), 1) } }
      : {}),
    report,
  };
}

export function printQuantized(q: QuantizedFigures, log: (line: string) => void): void {
  log(`decode with quantized weights, ${q.isa} ${q.compute}, ${q.threads} thread(s): ${q.rounds} rounds in one process taking turns ` +
    `(64 tokens after 256, each run between two read-bandwidth measurements; ${q.unsteadyRuns} runs left out because the bandwidth moved during them)`);
  if (q.llamaCpp?.skipped) log(`  llama.cpp skipped: ${q.llamaCpp.skipped}`);
  if (q.interrupted) {
    log(`  threads spinning before each round were off their cores ${q.interrupted.anyPercent} % of the time (at least one of them; ` +
      `${q.interrupted.longPercent} % in gaps of 1 ms or more, medians): time a decode step, waiting for every thread at each op, loses`);
  }
  for (const p of q.phases) {
    const scaling = p.computeScaling === undefined ? '' : `, where ${q.threads} threads ran an in-cache int4 GEMV ${p.computeScaling}× as fast as one`;
    log(`  runs that met ${p.readGBs} GB/s (${p.runs} runs${scaling}):`);
    for (const f of p.formats) {
      log(`    ours ${f.weights}: ${f.tokensPerSecond} tokens/s (${f.runs} runs), ${round(f.bytesPerToken / 1e9, 3)} GB read per token, ${f.percentOfBound}% of the bandwidth bound (target ≥ 75 %: ${f.percentOfBound >= 75 ? 'met' : 'NOT met'})`);
    }
    for (const l of p.theirs) log(`    llama.cpp ${l.weights}: ${l.tokensPerSecond} tokens/s (${l.runs} runs)`);
    for (const r of p.ratios) {
      const measured = r.paired ? `${r.paired.ratio}× paired within ${r.paired.rounds} rounds (medians: ${r.ratio}×)` : `${r.ratio}× (medians)`;
      log(`    ${r.label}: ${measured} (target ≥ ${r.target}×: ${ratioMeets(r) ? 'met' : 'NOT met'})`);
    }
  }
}
