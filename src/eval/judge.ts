// The GPT judge of the official evaluation code (ActivityNet-QA, TempCompass captioning, ChartQA's text answers),
// as any OpenAI-compatible endpoint: asked with the official prompts and sampling, its replies kept in
// judgements.jsonl so that a resumed or repeated run asks only what it has not asked yet.
import { createHash } from 'node:crypto';
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { EvalServerError } from './errors.js';
import { chatCompletion, chatEndpoint } from './targets.js';
import type { ExtractMode } from './extract.js';
import type { Benchmark, ChatMessage, EvalSample, JudgeAsk } from './types.js';

export interface Judge {
  /** The judge in words (model at URL), for the notes of the report. */
  readonly name: string;
  /** The model name, part of what a kept reply is valid for. */
  readonly model: string;
  ask(messages: readonly ChatMessage[], signal: AbortSignal): Promise<string>;
}

/** The sampling every official judge call uses (Azure OpenAI, `max_tokens` 800, temperature 0.7, top_p 0.95). */
export const JUDGE_SAMPLING = { temperature: 0.7, top_p: 0.95, max_tokens: 800, frequency_penalty: 0, presence_penalty: 0 } as const;

/** Asks per JudgeAsk at most: the official code re-asks an unreadable reply without end; here it stops and counts it. */
export const JUDGE_ATTEMPTS = 3;

/** Tries per request on a failed request (network, HTTP 429 or 5xx); other refusals fail at once. */
const REQUEST_TRIES = 3;

export interface JudgeOptions {
  url: string;
  model: string;
  apiKey?: string;
  /** Milliseconds before a failed request is tried again (doubled each time). */
  retryDelayMs?: number;
}

export function openAiJudge(o: JudgeOptions): Judge {
  const endpoint = chatEndpoint(o.url);
  const delay = o.retryDelayMs ?? 2000;
  return {
    name: `${o.model} at ${o.url}`,
    model: o.model,
    async ask(messages, signal) {
      for (let attempt = 1; ; attempt++) {
        try {
          return await chatCompletion(endpoint, { model: o.model, messages, ...JUDGE_SAMPLING }, o.apiKey, signal);
        } catch (e) {
          const transient = e instanceof EvalServerError && (e.status === undefined || e.status === 429 || e.status >= 500);
          if (!transient || attempt >= REQUEST_TRIES || signal.aborted) throw e;
          await new Promise((resolve) => setTimeout(resolve, delay * 2 ** (attempt - 1)));
        }
      }
    },
  };
}

interface Kept {
  key: string;
  judge: string;
  prompt: string;
  reply: string;
}

const promptHash = (messages: readonly ChatMessage[]) => createHash('sha256').update(JSON.stringify(messages)).digest('hex');

/** Replies kept in judgements.jsonl for this judge model, by key and the hash of the prompt asked. */
function readKept(file: string, model: string): Map<string, Kept> {
  const kept = new Map<string, Kept>();
  if (!existsSync(file)) return kept;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    try {
      const k = JSON.parse(line) as Kept;
      if (typeof k.key === 'string' && typeof k.reply === 'string' && typeof k.prompt === 'string' && k.judge === model) kept.set(`${k.key}\0${k.prompt}`, k);
    } catch {
      // A line cut short by a crash: that question is asked again.
    }
  }
  return kept;
}

export interface JudgeRun {
  /** The reply to every ask that has one, by key. */
  judged: Map<string, string>;
  /** Samples whose judge request failed (tried again by the next run). */
  failures: { id: string; error: string }[];
}

/**
 * Asks the judge everything the answered samples need (`benchmark.judgeAsks`), `concurrency` at a time, skipping what
 * judgements.jsonl already holds for the same judge model and prompt, and appending each new reply there.
 */
export async function judgeAnswers(o: {
  benchmark: Benchmark<EvalSample>;
  samples: readonly EvalSample[];
  answers: ReadonlyMap<string, string>;
  judge: Judge;
  out: string;
  mode: ExtractMode;
  concurrency?: number;
  signal?: AbortSignal;
  /** Told once, before asking: how many questions go to the judge and how many replies were kept from before. */
  onStart?: (e: { asking: number; kept: number }) => void;
}): Promise<JudgeRun> {
  const file = join(o.out, 'judgements.jsonl');
  const kept = readKept(file, o.judge.model);
  const judged = new Map<string, string>();
  const todo: { id: string; ask: JudgeAsk; prompt: string }[] = [];
  for (const s of o.samples) {
    const response = o.answers.get(s.id);
    if (response === undefined) continue;
    for (const ask of o.benchmark.judgeAsks?.(s, response, o.mode) ?? []) {
      const prompt = promptHash(ask.messages);
      const k = kept.get(`${ask.key}\0${prompt}`);
      if (k) judged.set(ask.key, k.reply);
      else todo.push({ id: s.id, ask, prompt });
    }
  }
  o.onStart?.({ asking: todo.length, kept: judged.size });
  const failures: JudgeRun['failures'] = [];
  const signal = o.signal ?? new AbortController().signal;
  let next = 0;
  const worker = async () => {
    while (next < todo.length && !signal.aborted) {
      const { id, ask, prompt } = todo[next++]!;
      try {
        let reply = await o.judge.ask(ask.messages, signal);
        for (let n = 1; n < JUDGE_ATTEMPTS && ask.again?.(reply); n++) reply = await o.judge.ask(ask.messages, signal);
        if (signal.aborted) break;
        appendFileSync(file, `${JSON.stringify({ key: ask.key, judge: o.judge.model, prompt, reply } satisfies Kept)}\n`);
        judged.set(ask.key, reply);
      } catch (e) {
        if (signal.aborted) break;
        failures.push({ id, error: `judge (${ask.key}): ${(e as Error).message}` });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, o.concurrency ?? 1) }, worker));
  return { judged, failures };
}
