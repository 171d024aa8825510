// What every peer of the LLM bench shares: the prompts (the same ids bench/llm.ts times), the agreement check, the result shapes.
import { Rng } from '../src/engine/rng.js';

/** Ordinary text ids, below the special tokens: bench/llm.ts's prompts, so that every runtime reads the same tokens. */
export function benchPrompt(length: number, seed: number): number[] {
  const rng = new Rng(seed);
  return Array.from({ length }, () => rng.nextU32() % 151643);
}

/** bench/llm.ts's seeds and sizes: two prefills of 1024 tokens, three decodes of 64 tokens after 256. */
export const PREFILL = { tokens: 1024, runs: 2, seed: 100 } as const;
export const DECODE = { promptTokens: 256, tokens: 64, runs: 3, seed: 200 } as const;

/**
 * The agreement check: a 64-token prompt read once, the argmax of the next-token logits at every position
 * (teacher-forced, so one early disagreement does not hide the rest), then 16 greedy tokens after it.
 */
export const CHECK = { promptTokens: 64, seed: 300, greedyTokens: 16 } as const;

export interface CheckFigures {
  /** argmax of the logits after each prompt position. */
  argmax: number[];
  /** Greedy continuation of the whole prompt. */
  greedy: number[];
}

export interface Throughput {
  prefill: { tokens: number; seconds: number; tokensPerSecond: number };
  decode: { promptTokens: number; tokens: number; seconds: number; tokensPerSecond: number };
}

/** One peer configuration (a runtime and a weight type) measured on one thread count. */
export interface PeerRun extends Throughput {
  peer: string;
  weights: string;
  threads: number;
  loadSeconds?: number;
  check?: CheckFigures;
  /** Agreement with our engine's check on the same checkpoint, filled in by the caller. */
  agreement?: Agreement;
  notes?: string;
}

export interface Agreement {
  positions: number;
  argmaxSame: number;
  /** Greedy tokens equal to ours before the first difference. */
  greedyPrefix: number;
  greedyTokens: number;
}

export function agreement(ours: CheckFigures, theirs: CheckFigures): Agreement {
  const positions = Math.min(ours.argmax.length, theirs.argmax.length);
  let argmaxSame = 0;
  for (let i = 0; i < positions; i++) if (ours.argmax[i] === theirs.argmax[i]) argmaxSame++;
  let greedyPrefix = 0;
  while (greedyPrefix < Math.min(ours.greedy.length, theirs.greedy.length) && ours.greedy[greedyPrefix] === theirs.greedy[greedyPrefix]) greedyPrefix++;
  return { positions, argmaxSame, greedyPrefix, greedyTokens: ours.greedy.length };
}

/** A peer's report: its runs, or why it was skipped. */
export interface PeerReport<Extra = object> {
  peer: string;
  available: boolean;
  skipped?: string;
  version?: string;
  runs: PeerRun[];
  extra?: Extra;
}
