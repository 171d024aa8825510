/**
 * How far a quantized load of a checkpoint strays from the same checkpoint loaded as stored (bf16): the KL divergence
 * KL(P_bf16 ‖ P_quant) of the next-token distribution at every prompt position (full vocabulary, f64), top-1
 * agreement over those positions, and greedy decodes compared token by token.
 *
 * Both loads may not fit in memory at once (a 7B model in bf16 is 15 GB), so they run one after the other, each in
 * its own worker thread whose exit frees all of its weights: the reference writes its logits, f32 rows of the full
 * vocabulary, to a temporary file (unlinked as soon as it is opened, so that not even a killed process leaves it
 * behind), and each quantized load reads them back row by row as it produces its own. Memory stays one model plus a
 * few rows of logits.
 *
 * Every prompt runs teacher-forced through the chat template (a text prompt is one user message, no system prompt),
 * exactly as `chat` would see it; greedy decodes take the argmax with no repetition penalty and no stop tokens, so
 * each prompt decodes the same number of tokens under both loads.
 */
import { closeSync, openSync, readFileSync, readSync, unlinkSync, writeSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { Worker } from 'node:worker_threads';
import { generateTokens } from '../engine/generate.js';
import { resolveModel, type HubOptions } from '../hub/index.js';
import { readModelConfig } from '../model/config.js';
import { storedFormats, type WeightFormats } from '../model/weight-formats.js';
import { parseConversation, type Conversation, type Message } from '../processing/conversation.js';
import { describeValue } from '../processing/describe.js';
import { WEIGHT_FORMATS, type WeightFormat } from '../tensor/dtype.js';
import type { ComputeMode, Isa } from '../tensor/index.js';
import { DEFAULT_COMPARE_PROMPTS } from './compare-prompts.js';
import { InvalidOptionError } from './errors.js';
import { VideoLLaMA3 } from './videollama3.js';
import { deserializeError, type SerializedError } from './worker-protocol.js';

/** One prompt: a text (sent as one user message) or a whole conversation, whose media paths resolve against baseDir. */
export type ComparePrompt = { label: string; text: string } | { label: string; conversation: Conversation; baseDir: string };

export interface CompareOptions {
  /** Checkpoint folder or hub id; it must store bf16 weights (the reference). */
  model: string;
  /** The language model formats to measure, each against the same reference run. */
  weights: readonly WeightFormat[];
  /** The vision encoder format of the measured loads; default 'bf16' (as stored). */
  visionWeights?: WeightFormat;
  /** Default: `DEFAULT_COMPARE_PROMPTS`. */
  prompts?: readonly ComparePrompt[];
  /** Most positions scored, taken prompt by prompt in order; later prompts are not run. Default 4096. */
  positions?: number;
  /** Greedy tokens decoded per prompt run. Default 64. */
  greedyTokens?: number;
  threads?: number;
  compute?: ComputeMode;
  isa?: Isa;
  /** Where the reference logits are written (positions × vocabulary × 4 bytes); default the OS temp folder. */
  tmpDir?: string;
  hub?: HubOptions;
  onProgress?: (event: CompareProgress) => void;
  onWarning?: (message: string) => void;
}

/** A load as it goes: 'bf16' for the reference, else the format measured. */
export interface CompareProgress {
  load: WeightFormat;
  prompt: number;
  prompts: number;
  positions: number;
}

export interface CompareResult {
  weights: WeightFormats;
  /** KL(P_bf16 ‖ P_quant) in nats over every scored position. */
  kl: { mean: number; p50: number; p99: number; max: number };
  top1: { agree: number; positions: number; rate: number };
  greedy: {
    prompts: number;
    tokens: number;
    /** Tokens equal before the first difference, summed over prompts. */
    prefix: number;
    /** Positions with equal tokens, summed over prompts. */
    matching: number;
    /** Prompts whose whole decode is equal. */
    identical: number;
    perPrompt: { prefix: number; matching: number; tokens: number }[];
  };
  seconds: number;
}

export interface CompareReport {
  model: string;
  backend: { name: string; threads: number; compute: ComputeMode; isa?: string };
  /** Prompts given, and those run before the positions ran out. */
  prompts: number;
  promptsRun: number;
  positions: number;
  greedyTokens: number;
  reference: WeightFormats & { seconds: number };
  results: CompareResult[];
}

export const DEFAULT_COMPARE_POSITIONS = 4096;
export const DEFAULT_GREEDY_TOKENS = 64;

/** The default prompts, as `ComparePrompt`s. */
export function defaultComparePrompts(): ComparePrompt[] {
  return DEFAULT_COMPARE_PROMPTS.map((text, i) => ({ label: `default prompt ${i + 1}`, text }));
}

/**
 * Reads a data file: one prompt per line. A line starting with `{` or `[` is a conversation in the JSON `vl3 inspect`
 * takes (media paths relative to the file), a line starting with `"` is a JSON string (for texts with line breaks),
 * any other line is the text itself; blank lines are skipped.
 */
export function readComparePrompts(file: string): ComparePrompt[] {
  let content: string;
  try {
    content = readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`cannot read data file ${file}: ${(e as Error).message}`);
  }
  const baseDir = dirname(resolve(file));
  const prompts: ComparePrompt[] = [];
  content.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    const label = `${file} line ${i + 1}`;
    const first = line.trimStart()[0];
    if (first === undefined) return;
    if (first !== '{' && first !== '[' && first !== '"') return void prompts.push({ label, text: line });
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (e) {
      throw new Error(`${label}: not valid JSON (${(e as Error).message}); a text prompt may not start with { [ or "`);
    }
    if (typeof value === 'string') {
      if (value.length === 0) throw new Error(`${label}: the prompt is an empty string`);
      return void prompts.push({ label, text: value });
    }
    try {
      prompts.push({ label, conversation: parseConversation(value), baseDir });
    } catch (e) {
      throw new Error(`${label}: ${(e as Error).message}`);
    }
  });
  if (prompts.length === 0) throw new Error(`data file ${file} has no prompts: write one text, or one JSON conversation, per line`);
  return prompts;
}

/** KL(P‖Q) of the softmaxes of two logit rows, in f64, and both argmaxes (first index on ties). */
export function klDivergence(p: ArrayLike<number>, q: ArrayLike<number>): { kl: number; argmaxP: number; argmaxQ: number } {
  let maxP = -Infinity;
  let maxQ = -Infinity;
  let argmaxP = 0;
  let argmaxQ = 0;
  for (let i = 0; i < p.length; i++) {
    if (p[i]! > maxP) (maxP = p[i]!), (argmaxP = i);
    if (q[i]! > maxQ) (maxQ = q[i]!), (argmaxQ = i);
  }
  // KL = Σ P_i (p_i − q_i) − logsumexp(p) + logsumexp(q), since Σ P_i = 1: one pass, two exps per entry.
  let sumP = 0;
  let sumQ = 0;
  let cross = 0;
  for (let i = 0; i < p.length; i++) {
    const e = Math.exp(p[i]! - maxP);
    sumP += e;
    sumQ += Math.exp(q[i]! - maxQ);
    cross += e * (p[i]! - q[i]!);
  }
  const kl = cross / sumP - (maxP + Math.log(sumP)) + (maxQ + Math.log(sumQ));
  // Rounding can leave an equal pair a hair below zero.
  return { kl: kl < 0 && kl > -1e-12 ? 0 : kl, argmaxP, argmaxQ };
}

/** What one load's worker is asked to do: the reference writes the logits file, a measured load reads it. */
export interface PassRequest {
  folder: string;
  load: { weights: WeightFormat; visionWeights: WeightFormat; threads?: number; compute?: ComputeMode; isa?: Isa };
  prompts: readonly ComparePrompt[];
  /** An open file descriptor (the process's, shared by its threads) of the reference logits. */
  fd: number;
  greedyTokens: number;
  /** Reference: the most positions to score. */
  positions: number;
  /** Measured loads: what the reference ran, prompt by prompt. */
  plan?: PromptRun[];
}

export interface PromptRun {
  length: number;
  scored: number;
  greedy: number[];
}

export interface PassResult {
  runs: PromptRun[];
  backend: CompareReport['backend'];
  weights: WeightFormats;
  /** Measured loads: KL at every scored position, and how many argmaxes agree. */
  kl?: Float64Array;
  agree?: number;
  seconds: number;
}

export type PassMessage =
  | { type: 'progress'; event: CompareProgress }
  | { type: 'warning'; message: string }
  | { type: 'done'; result: PassResult }
  | { type: 'error'; error: SerializedError };

const GREEDY = { doSample: false, temperature: 1, topK: 0, topP: 1, repetitionPenalty: 1 };
/** Logit rows computed and written (or read and compared) at once: 64 × 152k × 4 bytes = 39 MB per buffer. */
const LOGIT_ROWS = 64;

function writeAll(fd: number, bytes: Uint8Array, position: number): void {
  for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
}

function readAll(fd: number, bytes: Uint8Array, position: number): void {
  for (let done = 0; done < bytes.length; ) {
    const n = readSync(fd, bytes, done, bytes.length - done, position + done);
    if (n === 0) throw new Error('the reference logits file ended early');
    done += n;
  }
}

/** One load's run over the prompts (in a worker thread: see `compareWeights`). */
export async function runComparePass(request: PassRequest, send: (message: PassMessage) => void): Promise<PassResult> {
  const started = performance.now();
  const measuring = request.plan !== undefined;
  const model = await VideoLLaMA3.load(request.folder, { ...request.load, onWarning: (message) => send({ type: 'warning', message }) });
  try {
    const V = model.config.vocabSize;
    const llm = model.llm;
    const logits = llm.backend.allocate('f32', [LOGIT_ROWS, V]);
    const reference = new Float32Array(measuring ? LOGIT_ROWS * V : 0);
    const total = measuring ? request.plan!.reduce((sum, run) => sum + run.scored, 0) : 0;
    const kl = new Float64Array(total);
    let agree = 0;
    const runs: PromptRun[] = [];
    let position = 0;
    const count = measuring ? request.plan!.length : request.prompts.length;
    for (let i = 0; i < count && (measuring || position < request.positions); i++) {
      const prompt = request.prompts[i]!;
      const input = 'text' in prompt ? [{ role: 'user', content: prompt.text } satisfies Message] : prompt.conversation;
      const prepared = await model.prepare(input, { baseDir: 'baseDir' in prompt ? prompt.baseDir : undefined }).catch((e: unknown) => {
        throw new Error(`${prompt.label}: ${(e as Error).message}`);
      });
      const length = prepared.llmInputIds.length;
      const scored = measuring ? request.plan![i]!.scored : Math.min(length, request.positions - position);
      if (measuring && request.plan![i]!.length !== length) {
        throw new Error(`${prompt.label}: ${length} positions under ${request.load.weights}, ${request.plan![i]!.length} under the reference`);
      }
      const base = position;
      const tokens = generateTokens(llm, {
        promptEmbeds: model.embed(prepared),
        maxNewTokens: request.greedyTokens,
        sampling: GREEDY,
        stopTokenIds: [],
        onPrefillHidden: (hidden, start) => {
          const end = Math.min(start + hidden.dim(0), scored);
          for (let r = start; r < end; r += LOGIT_ROWS) {
            const n = Math.min(LOGIT_ROWS, end - r);
            const rows = logits.rows(0, n);
            llm.logits(hidden.rows(r - start, r - start + n), rows);
            const ours = llm.backend.download(rows).data as Float32Array;
            const offset = (base + r) * V * 4;
            if (!measuring) {
              writeAll(request.fd, new Uint8Array(ours.buffer, ours.byteOffset, n * V * 4), offset);
              continue;
            }
            const theirs = reference.subarray(0, n * V);
            readAll(request.fd, new Uint8Array(theirs.buffer, 0, n * V * 4), offset);
            for (let j = 0; j < n; j++) {
              const score = klDivergence(theirs.subarray(j * V, (j + 1) * V), ours.subarray(j * V, (j + 1) * V));
              kl[base + r + j] = score.kl;
              if (score.argmaxP === score.argmaxQ) agree++;
            }
          }
        },
      });
      const greedy: number[] = [];
      for await (const id of tokens) greedy.push(id);
      position += scored;
      runs.push({ length, scored, greedy });
      send({ type: 'progress', event: { load: request.load.weights, prompt: i + 1, prompts: count, positions: position } });
    }
    const info = model.info;
    return {
      runs,
      backend: info.backend,
      weights: info.weights,
      ...(measuring && { kl, agree }),
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    await model.close();
  }
}

/** Runs one pass in its own worker thread: when it exits, everything the load held is freed. */
function runInWorker(request: PassRequest, options: CompareOptions): Promise<PassResult> {
  const worker = new Worker(new URL('./compare-weights-thread.js', import.meta.url), { workerData: request, execArgv: [] });
  return new Promise<PassResult>((resolvePass, reject) => {
    let result: PassResult | undefined;
    let error: Error | undefined;
    worker.on('message', (message: PassMessage) => {
      if (message.type === 'progress') options.onProgress?.(message.event);
      else if (message.type === 'warning') options.onWarning?.(message.message);
      else if (message.type === 'done') result = message.result;
      else error = deserializeError(message.error);
    });
    worker.once('error', (e) => (error ??= e));
    worker.once('exit', (code) => {
      if (result) resolvePass(result);
      else reject(error ?? new Error(`the ${request.load.weights} load's worker exited (code ${code}) without a result`));
    });
  });
}

function percentile(sorted: Float64Array, p: number): number {
  return sorted.length === 0 ? NaN : sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)]!;
}

function summarize(reference: PassResult, measured: PassResult): CompareResult {
  const kl = measured.kl!;
  const sorted = Float64Array.from(kl).sort();
  let sum = 0;
  for (const v of kl) sum += v;
  const perPrompt = reference.runs.map((run, i) => {
    const theirs = run.greedy;
    const ours = measured.runs[i]!.greedy;
    let prefix = 0;
    while (prefix < theirs.length && theirs[prefix] === ours[prefix]) prefix++;
    const matching = theirs.filter((id, k) => id === ours[k]).length;
    return { prefix, matching, tokens: theirs.length };
  });
  const positions = kl.length;
  return {
    weights: measured.weights,
    // A NaN anywhere is a broken load, and must show as one: Math.max and the sort would hide it.
    kl: kl.some(Number.isNaN)
      ? { mean: NaN, p50: NaN, p99: NaN, max: NaN }
      : { mean: sum / positions, p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99), max: sorted[positions - 1] ?? NaN },
    top1: { agree: measured.agree!, positions, rate: measured.agree! / positions },
    greedy: {
      prompts: perPrompt.length,
      tokens: perPrompt.reduce((s, p) => s + p.tokens, 0),
      prefix: perPrompt.reduce((s, p) => s + p.prefix, 0),
      matching: perPrompt.reduce((s, p) => s + p.matching, 0),
      identical: perPrompt.filter((p) => p.prefix === p.tokens).length,
      perPrompt,
    },
    seconds: measured.seconds,
  };
}

/**
 * Measures each of `options.weights` against the checkpoint loaded as stored (see the file comment): the reference
 * runs once, then each format in turn.
 */
export async function compareWeights(options: CompareOptions): Promise<CompareReport> {
  const invalid = (option: string, message: string) => new InvalidOptionError(option, message);
  if (options.weights.length === 0) throw invalid('weights', 'weights must name at least one format to measure');
  for (const [option, value] of [...options.weights.map((w) => ['weights', w] as const), ['visionWeights', options.visionWeights] as const]) {
    if (value !== undefined && !WEIGHT_FORMATS.includes(value)) {
      throw invalid(option, `${option} must be one of ${WEIGHT_FORMATS.join(', ')}, got ${describeValue(value)}`);
    }
  }
  const positions = options.positions ?? DEFAULT_COMPARE_POSITIONS;
  const greedyTokens = options.greedyTokens ?? DEFAULT_GREEDY_TOKENS;
  if (!Number.isSafeInteger(positions) || positions < 1) throw invalid('positions', `positions must be an integer >= 1, got ${describeValue(positions)}`);
  if (!Number.isSafeInteger(greedyTokens) || greedyTokens < 0) throw invalid('greedyTokens', `greedyTokens must be an integer >= 0, got ${describeValue(greedyTokens)}`);
  const prompts = options.prompts ?? defaultComparePrompts();
  if (prompts.length === 0) throw invalid('prompts', 'prompts is empty: give at least one prompt');

  const folder = await resolveModel(options.model, options.hub);
  const stored = storedFormats(readModelConfig(join(folder, 'config.json')).quantization);
  if (stored.language !== 'bf16' || stored.vision !== 'bf16') {
    throw invalid('model', `checkpoint ${folder} stores quantized weights (language ${stored.language}, vision ${stored.vision}); compare-weights needs the bf16 checkpoint they came from`);
  }
  const runtime = { threads: options.threads, compute: options.compute, isa: options.isa };
  const dir = mkdtempSync(join(options.tmpDir ?? tmpdir(), 'vl3-compare-'));
  const file = join(dir, 'reference-logits.f32');
  let fd: number | undefined;
  try {
    fd = openSync(file, 'w+');
    // Gone from the folder at once; the open descriptor keeps the data until it is closed (or the process dies).
    try {
      unlinkSync(file);
    } catch {
      // Systems that cannot unlink an open file: it goes with the folder below.
    }
    const pass = { folder, prompts, fd, greedyTokens, positions };
    const reference = await runInWorker({ ...pass, load: { weights: 'bf16', visionWeights: 'bf16', ...runtime } }, options);
    const results: CompareResult[] = [];
    for (const weights of options.weights) {
      const load = { weights, visionWeights: options.visionWeights ?? 'bf16', ...runtime };
      results.push(summarize(reference, await runInWorker({ ...pass, load, plan: reference.runs }, options)));
    }
    return {
      model: folder,
      backend: reference.backend,
      prompts: prompts.length,
      promptsRun: reference.runs.length,
      positions: reference.runs.reduce((sum, run) => sum + run.scored, 0),
      greedyTokens,
      reference: { ...reference.weights, seconds: reference.seconds },
      results,
    };
  } finally {
    if (fd !== undefined) closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
}
