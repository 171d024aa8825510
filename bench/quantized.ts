// The "quantized weights" section of `npm run bench`: our decode with bf16, int8, int4 and int4m weights and llama.cpp's
// with Q8_0 and Q4_0 GGUFs of the same checkpoint, in rounds, each figure beside the bandwidth bound measured in its own
// process right after it.
import type { LlmFigures } from './llm.js';
import type { PeerReport, PeerRun } from './peer-common.js';
import type { LlamaCppExtra } from './peer-llamacpp.js';
import { median, percent, round } from './stats.js';

type Child = <T>(name: string, ...argv: string[]) => T;

/** Our runs of a round, by weight format. */
export const OURS = ['bf16', 'int8', 'int4', 'int4m'] as const;
/** llama.cpp's runs of a round, by GGUF type: the formats ours are held to. */
export const THEIRS = ['q8_0', 'q4_0'] as const;

export interface QuantizedRound {
  ours: Record<(typeof OURS)[number], { tokensPerSecond: number; bytesPerToken: number; readGBs: number }>;
  llamaCpp: Partial<Record<(typeof THEIRS)[number], number>>;
}

/** A ratio of the targets: its median over the rounds, and the target it is held to. */
export interface QuantizedRatio {
  label: string;
  ratios: number[];
  median: number;
  target: number;
}

export interface QuantizedFigures {
  threads: number;
  compute: string;
  rounds: QuantizedRound[];
  /** Per format: median decode tokens/s, bytes per token, and the median of the per-run fractions of the bound. */
  formats: { weights: string; tokensPerSecond: number; bytesPerToken: number; percentOfBound: number }[];
  llamaCpp: { weights: string; tokensPerSecond: number }[];
  ratios: QuantizedRatio[];
}

/**
 * Decode runs at the bandwidth the host leaves this VM, which moves by ±15 % from minute to minute, so formats and
 * runtimes are compared within rounds: each round runs every one of ours and llama.cpp's Q8_0 and Q4_0 back to back,
 * ratios are taken per round and their median reported.
 */
export function measureQuantizedRounds(o: { modelDir: string; threads: number; compute: string; rounds: number; llamaCpp: boolean; child: Child }): QuantizedFigures {
  const rounds: QuantizedRound[] = [];
  for (let r = 0; r < o.rounds; r++) {
    const ours = {} as QuantizedRound['ours'];
    for (const weights of OURS) {
      const f = o.child<LlmFigures>('llm', o.modelDir, String(o.threads), o.compute, weights, 'decode-only');
      ours[weights] = { tokensPerSecond: f.decode.tokensPerSecond, bytesPerToken: f.weightBytesPerToken, readGBs: f.readGBs };
    }
    const llamaCpp: QuantizedRound['llamaCpp'] = {};
    if (o.llamaCpp) {
      const report = o.child<PeerReport<LlamaCppExtra>>('peer-llamacpp', o.modelDir, String(o.threads), THEIRS.join(','));
      for (const type of THEIRS) {
        const run = report.runs.find((x: PeerRun) => x.weights.toLowerCase().startsWith(type));
        if (run) llamaCpp[type] = run.decode.tokensPerSecond;
      }
    }
    rounds.push({ ours, llamaCpp });
  }
  const ratio = (label: string, target: number, pick: (r: QuantizedRound) => number | undefined): QuantizedRatio | undefined => {
    const ratios = rounds.map(pick).filter((x): x is number => x !== undefined && Number.isFinite(x)).map((x) => round(x, 2));
    return ratios.length ? { label, ratios, median: round(median(ratios), 2), target } : undefined;
  };
  const ratios = [
    ratio('int8 ÷ our bf16', 1.8, (r) => r.ours.int8.tokensPerSecond / r.ours.bf16.tokensPerSecond),
    ratio('int4 ÷ our bf16', 3, (r) => r.ours.int4.tokensPerSecond / r.ours.bf16.tokensPerSecond),
    ratio('int4m ÷ our bf16', 3, (r) => r.ours.int4m.tokensPerSecond / r.ours.bf16.tokensPerSecond),
    ratio('int8 ÷ llama.cpp Q8_0', 1, (r) => (r.llamaCpp.q8_0 ? r.ours.int8.tokensPerSecond / r.llamaCpp.q8_0 : undefined)),
    ratio('int4 ÷ llama.cpp Q4_0', 1, (r) => (r.llamaCpp.q4_0 ? r.ours.int4.tokensPerSecond / r.llamaCpp.q4_0 : undefined)),
  ].filter((x): x is QuantizedRatio => x !== undefined);
  return {
    threads: o.threads,
    compute: o.compute,
    rounds,
    formats: OURS.map((weights) => {
      const runs = rounds.map((r) => r.ours[weights]);
      return {
        weights,
        tokensPerSecond: round(median(runs.map((x) => x.tokensPerSecond)), 2),
        bytesPerToken: runs[0]!.bytesPerToken,
        percentOfBound: round(median(runs.map((x) => percent(x.tokensPerSecond, (x.readGBs * 1e9) / x.bytesPerToken))), 1),
      };
    }),
    llamaCpp: THEIRS.flatMap((type) => {
      const runs = rounds.map((r) => r.llamaCpp[type]).filter((x): x is number => x !== undefined);
      return runs.length ? [{ weights: `${type.toUpperCase()} GGUF`, tokensPerSecond: round(median(runs), 2) }] : [];
    }),
    ratios,
  };
}

export function printQuantized(q: QuantizedFigures, log: (line: string) => void): void {
  log(`decode with quantized weights, ${q.threads} thread(s), ${q.compute} compute, ${q.rounds.length} rounds (64 tokens after 256; each of ours beside the bandwidth measured right after it):`);
  for (const f of q.formats) {
    log(`  ours ${f.weights}: ${f.tokensPerSecond} tokens/s, ${round(f.bytesPerToken / 1e9, 3)} GB read per token, ${f.percentOfBound}% of the bandwidth bound`);
  }
  for (const l of q.llamaCpp) log(`  llama.cpp ${l.weights}: ${l.tokensPerSecond} tokens/s`);
  for (const r of q.ratios) {
    log(`  ${r.label}: median ${r.median}× (target ≥ ${r.target}×: ${r.median >= r.target ? 'met' : 'NOT met'}; rounds ${r.ratios.join(', ')})`);
  }
}
