// Runs a benchmark's samples against a target and keeps every answer in predictions.jsonl as it arrives: a run
// that is interrupted (Ctrl-C, a crash) continues where it stopped, skipping the ids already written.
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { planVideo } from '../processing/video.js';
import { EvalDataError } from './errors.js';
import type { Target } from './targets.js';
import { PROTOCOL, type Benchmark, type EvalPart, type EvalSample, type PromptContext, type Report } from './types.js';
import { judgeAnswers, type Judge } from './judge.js';
import { formatMarkdown } from './report.js';

export interface RunOptions {
  benchmark: Benchmark<EvalSample>;
  data: string;
  target: Target;
  out: string;
  mode: 'official' | 'robust';
  /** The first N samples only. */
  limit?: number;
  /** Samples answered at once (default 1). */
  concurrency?: number;
  signal?: AbortSignal;
  /** The benchmark's samples, when the caller loaded them already (to check the data before loading a model). */
  samples?: EvalSample[];
  onProgress?: (e: { done: number; total: number; accuracy?: number }) => void;
  /** The GPT judge of the benchmark's judged parts (without one they are answered but not scored). */
  judge?: Judge;
  /** Told once before the judge is asked (see judgeAnswers). */
  onJudge?: (e: { asking: number; kept: number }) => void;
}

export interface Failure {
  id: string;
  error: string;
}

export interface RunResult {
  report: Report;
  /** Samples that failed (unreadable media, a server error): not scored, tried again by the next run. */
  failures: Failure[];
  interrupted: boolean;
}

/**
 * The user turn a sample was asked, as predictions.jsonl keeps it beside the answer (to audit the official prompts
 * and where media sit among them): text as is, media by path and clip range, data URLs by their size only.
 */
export function promptRecord(parts: readonly EvalPart[]): (string | { image: string } | { video: string; start?: number; end?: number })[] {
  const media = (path: string) => (path.startsWith('data:') ? `${path.slice(0, path.indexOf(',') + 1)}… (${path.length} characters)` : path);
  return parts.map((p) => (p.type === 'text' ? p.text : p.type === 'image' ? { image: media(p.path) } : { video: media(p.path), ...(p.start !== undefined && { start: p.start }), ...(p.end !== undefined && { end: p.end }) }));
}

/** The answers already in predictions.jsonl (a last line cut short by a crash is ignored). */
export function readPredictions(file: string): Map<string, string> {
  const answers = new Map<string, string>();
  if (!existsSync(file)) return answers;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    try {
      const row = JSON.parse(line) as { id?: unknown; response?: unknown };
      if (typeof row.id === 'string' && typeof row.response === 'string') answers.set(row.id, row.response);
    } catch {
      // An interrupted write: that sample is answered again.
    }
  }
  return answers;
}

/** Frame times as the protocol samples them (fps 1, 180 frames), for prompts that depend on them. */
export const protocolContext: PromptContext = {
  async plan(path, start, end) {
    const plan = await planVideo(path, { fps: PROTOCOL.fps, maxFrames: PROTOCOL.maxFrames, ...(start !== undefined && { startTime: start }), ...(end !== undefined && { endTime: end }) });
    const last = plan.timestamps.at(-1) ?? 0;
    return { timestamps: plan.timestamps, end: plan.kind === 'ffmpeg' && plan.start !== undefined && plan.duration !== undefined ? plan.start + plan.duration : last };
  },
};

/** A benchmark's samples, checked: at least one, ids unique. */
export async function loadSamples(benchmark: Benchmark<EvalSample>, data: string): Promise<EvalSample[]> {
  const all = await benchmark.load(data);
  if (all.length === 0) throw new EvalDataError(data, undefined, `no ${benchmark.title} samples found`);
  const ids = new Set<string>();
  for (const s of all) {
    if (ids.has(s.id)) throw new EvalDataError(data, s.id, 'two samples have this id');
    ids.add(s.id);
  }
  return all;
}

export async function runEval(o: RunOptions): Promise<RunResult> {
  mkdirSync(o.out, { recursive: true });
  const all = o.samples ?? (await loadSamples(o.benchmark, o.data));
  const samples = o.limit !== undefined ? all.slice(0, o.limit) : all;
  const file = join(o.out, 'predictions.jsonl');
  const answers = readPredictions(file);
  const todo = samples.filter((s) => !answers.has(s.id));
  const failures: Failure[] = [];
  const total = samples.length;
  let done = total - todo.length;
  let lastScore = 0;
  const progress = (force = false) => {
    if (!o.onProgress) return;
    let accuracy: number | undefined;
    const now = performance.now();
    if (force || now - lastScore > 2000) {
      lastScore = now;
      // Judged parts are not scored while answering: the judge is asked once all answers are in.
      const report = o.benchmark.score(samples, answers, { mode: o.mode });
      accuracy = report instanceof Promise ? undefined : (report.headline[0]?.value ?? undefined);
    }
    o.onProgress({ done, total, accuracy });
  };
  progress(true);
  let next = 0;
  const worker = async () => {
    while (next < todo.length && !o.signal?.aborted) {
      const sample = todo[next++]!;
      try {
        const parts = await sample.content(protocolContext);
        const response = await o.target.answer(parts, o.signal ?? new AbortController().signal);
        if (o.signal?.aborted) break;
        appendFileSync(file, `${JSON.stringify({ id: sample.id, response, prompt: promptRecord(parts) })}\n`);
        answers.set(sample.id, response);
      } catch (e) {
        if (o.signal?.aborted) break;
        failures.push({ id: sample.id, error: (e as Error).message });
      }
      done++;
      progress(done === total);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, o.concurrency ?? 1) }, worker));
  const scored = new Map([...answers].filter(([id]) => samples.some((s) => s.id === id)));
  let judging: { judged?: Map<string, string>; judge?: string } = {};
  if (o.judge && o.benchmark.judgeAsks && !o.signal?.aborted) {
    const run = await judgeAnswers({ benchmark: o.benchmark, samples, answers: scored, judge: o.judge, out: o.out, mode: o.mode, concurrency: o.concurrency, signal: o.signal, onStart: o.onJudge });
    failures.push(...run.failures);
    judging = { judged: run.judged, judge: o.judge.name };
  }
  const report = await o.benchmark.score(samples, scored, { mode: o.mode, outDir: o.out, ...judging });
  writeFileSync(join(o.out, 'results.json'), `${JSON.stringify({ ...report, failures, target: o.target.name }, null, 2)}\n`);
  writeFileSync(join(o.out, 'results.md'), formatMarkdown(report, failures));
  return { report, failures, interrupted: o.signal?.aborted === true };
}
