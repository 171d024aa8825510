// What a benchmark is to the harness: samples (one user turn each), and a scorer over the raw answers.
import type { Extracted, ExtractMode } from './extract.js';

export type EvalPart = { type: 'text'; text: string } | { type: 'image'; path: string } | { type: 'video'; path: string; start?: number; end?: number };

/** The official protocol (spec 11.1). */
export const PROTOCOL = { fps: 1, maxFrames: 180, maxVisualTokens: 16384, maxNewTokens: 2048 } as const;

export interface PromptContext {
  /** Times (s) of the frames the protocol samples from a video, as the model will sample them (no decoding). */
  plan(path: string, start?: number, end?: number): Promise<{ timestamps: Float64Array; end: number }>;
}

export interface EvalSample {
  /** Unique within the benchmark: the key of its line in predictions.jsonl. */
  id: string;
  /** The parts of the single user turn: media first, then the instruction (spec 11.1). */
  content(ctx: PromptContext): Promise<EvalPart[]>;
}

export interface ScoreOptions {
  mode: ExtractMode;
  /** Where a benchmark writes a submission file for an official server (EgoSchema, PerceptionTest). */
  outDir?: string;
  /** The judge's replies by JudgeAsk key, when a judge was given (absent: the judged parts are not scored). */
  judged?: ReadonlyMap<string, string>;
  /** The judge, in words, for the report's notes. */
  judge?: string;
}

export interface ChatMessage {
  role: 'system' | 'user';
  content: string;
}

/** One question to the GPT judge of a benchmark's judged part, with the official prompt. */
export interface JudgeAsk {
  /** Unique within the benchmark (a sample's id, or id#k for the k-th reference): the key of its reply. */
  key: string;
  messages: ChatMessage[];
  /** Whether a reply is asked again, as the official code re-asks until it can read one (bounded here). */
  again?(reply: string): boolean;
}

export interface Row {
  task: string;
  value: number;
  count: number;
}

/** One table of the report: a value per task and the section's overall value. */
export interface Section {
  name: string;
  /** '%' accuracy or ANLS in percent, 'count' (OCRBench), 'score' (MME: points), 'iou' (Charades-STA, percent). */
  unit: '%' | 'count' | 'score';
  rows: Row[];
  overall: Row;
}

export interface Unparsed {
  id: string;
  response: string;
  reason: string;
}

export interface Report {
  benchmark: string;
  mode: ExtractMode;
  /** Samples the benchmark has, and those with an answer (a --limit or interrupted run scores what it has). */
  samples: number;
  answered: number;
  sections: Section[];
  /** What the paper reports for this benchmark, read from `sections`. */
  headline: { name: string; value: number | null }[];
  unparsed: Unparsed[];
  notes: string[];
}

export interface Benchmark<S extends EvalSample = EvalSample> {
  name: string;
  title: string;
  modality: 'image' | 'video';
  /** The --data layout, in words (README and --help). */
  layout: string;
  load(dir: string): Promise<S[]>;
  /** The GPT-judged parts (ActivityNet-QA, TempCompass captioning, ChartQA's text answers): what to ask about an answer. */
  judgeAsks?(sample: S, response: string, mode: ExtractMode): JudgeAsk[];
  score(samples: readonly S[], answers: ReadonlyMap<string, string>, options: ScoreOptions): Promise<Report> | Report;
}

/** Per-task and overall accuracy (percent) of right/wrong items, tasks in `order` first, then as met. */
export function accuracySection(name: string, items: readonly { task: string; correct: boolean | number }[], order: readonly string[] = []): Section {
  const by = new Map<string, number[]>(order.map((t) => [t, []]));
  for (const it of items) {
    if (!by.has(it.task)) by.set(it.task, []);
    by.get(it.task)!.push(Number(it.correct));
  }
  const mean = (v: number[]) => (v.length === 0 ? NaN : (v.reduce((a, b) => a + b, 0) / v.length) * 100);
  const rows = [...by].filter(([, v]) => v.length > 0).map(([task, v]) => ({ task, value: mean(v), count: v.length }));
  return { name, unit: '%', rows, overall: { task: 'Overall', value: mean(items.map((i) => Number(i.correct))), count: items.length } };
}

/** Collects the answers that could not be parsed, and gives the value that counts (undefined when unparsed). */
export class UnparsedList {
  readonly items: Unparsed[] = [];
  take<T>(id: string, response: string, e: Extracted<T>): T | undefined {
    if (e.ok) {
      if (e.note?.startsWith('random')) this.items.push({ id, response, reason: e.note });
      return e.value;
    }
    this.items.push({ id, response, reason: e.reason });
    return undefined;
  }
}
