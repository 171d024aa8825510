// llama.cpp (through node-llama-cpp, CPU only) on GGUFs of the same random checkpoint: bench/llm.ts's prefill and decode, and the agreement check.
// Usage: node dist/bench/peer-llamacpp.js <checkpoint-dir> <threads,...> [bf16,q8_0,q4_0]   (prints one JSON object: PeerReport)
// GGUFs go to $VL3_BENCH_GGUF (default <tmp>/vl3-bench-gguf) and are reused while they match the checkpoint.
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeQwen2Gguf, type GgufWeightType } from './gguf.js';
import { benchPrompt, CHECK, DECODE, PREFILL, type CheckFigures, type PeerReport, type PeerRun } from './peer-common.js';
import { median, round } from './stats.js';

export const NODE_LLAMA_CPP_VERSION = '3.21.1';

/**
 * The part of node-llama-cpp's API the bench uses. Declared here rather than imported so that the bench compiles and
 * reports "skipped" where the optional package is not installed.
 */
export interface Sequence {
  clearHistory(): Promise<void>;
  evaluate(tokens: number[], options?: { temperature?: number }): AsyncGenerator<number, void, void>;
  controlledEvaluate(
    input: [number, { generateNext?: { token?: boolean; options?: { temperature?: number } } }][],
  ): Promise<({ next: { token?: number | null } } | undefined)[]>;
}
export interface Context {
  getSequence(): Sequence;
  readonly flashAttention: boolean | 'auto';
  readonly currentThreads: number;
  dispose(): Promise<void>;
}
export interface Model {
  createContext(options: { contextSize: number; batchSize: number; sequences: number; threads: { ideal: number; min: number } }): Promise<Context>;
  dispose(): Promise<void>;
}
export interface Llama {
  readonly gpu: string | false;
  readonly buildType: string;
  readonly systemInfo: string;
  readonly llamaCppRelease: { repo: string; release: string };
  loadModel(options: { modelPath: string; gpuLayers: number }): Promise<Model>;
  dispose(): Promise<void>;
}
interface NodeLlamaCpp {
  getLlama(options: Record<string, unknown>): Promise<Llama>;
}

/** The weight types measured, in table order. */
export const GGUF_TYPES: readonly GgufWeightType[] = ['bf16', 'q8_0', 'q4_0'];

/** Bumped whenever the writer's output changes, so that older cached files are rewritten. */
const GGUF_WRITER_REVISION = 1;

/** Writes `<dir>/<type>.gguf` unless a file written by this revision from this very checkpoint is already there. */
export function ensureGguf(checkpointDir: string, dir: string, type: GgufWeightType, log: (line: string) => void): string {
  const file = path.join(dir, `${type}.gguf`);
  const stampFile = `${file}.source.json`;
  const sources = fs.readdirSync(checkpointDir).filter((n) => n.endsWith('.safetensors') || n === 'config.json' || n === 'tokenizer.json').sort();
  const stamp = JSON.stringify({
    revision: GGUF_WRITER_REVISION,
    checkpoint: path.resolve(checkpointDir),
    files: sources.map((n) => {
      const s = fs.statSync(path.join(checkpointDir, n));
      return [n, s.size, s.mtimeMs];
    }),
  });
  if (fs.existsSync(file) && fs.existsSync(stampFile) && fs.readFileSync(stampFile, 'utf8') === stamp) return file;
  fs.mkdirSync(dir, { recursive: true });
  const t0 = performance.now();
  const r = writeQwen2Gguf({ checkpointDir, out: file, type });
  fs.writeFileSync(stampFile, stamp);
  log(`wrote ${file} (${round(r.bytes / 2 ** 30, 2)} GiB, ${r.tensors} tensors) in ${round((performance.now() - t0) / 1000)} s`);
  return file;
}

/** The package's version as installed (its own package.json, found from the entry point it resolves to). */
function installedVersion(): string | undefined {
  try {
    let dir = path.dirname(fileURLToPath(import.meta.resolve('node-llama-cpp')));
    for (let i = 0; i < 4; i++, dir = path.dirname(dir)) {
      const pkg = path.join(dir, 'package.json');
      if (fs.existsSync(pkg)) {
        const json = JSON.parse(fs.readFileSync(pkg, 'utf8')) as { name?: string; version?: string };
        if (json.name === 'node-llama-cpp') return json.version;
      }
    }
  } catch {
    // Not resolvable: the import below reports why.
  }
  return undefined;
}

/** Runs the prompt and returns when the first generated token is out, plus the generator to continue from. */
async function firstToken(seq: Sequence, prompt: number[]) {
  const gen = seq.evaluate(prompt, { temperature: 0 });
  const first = await gen.next();
  if (first.done) throw new Error('llama.cpp produced no token');
  return { gen, token: first.value };
}

async function prefillSeconds(seq: Sequence, prompt: number[]): Promise<number> {
  await seq.clearHistory();
  const t0 = performance.now();
  const { gen } = await firstToken(seq, prompt);
  const seconds = (performance.now() - t0) / 1000;
  await gen.return();
  return seconds;
}

/** Seconds for `tokens` decode steps after the prompt's first token (bench/llm.ts's decodeMs). */
export async function decodeSeconds(seq: Sequence, prompt: number[], tokens: number): Promise<number> {
  await seq.clearHistory();
  const { gen } = await firstToken(seq, prompt);
  const t0 = performance.now();
  for (let i = 0; i < tokens; i++) if ((await gen.next()).done) throw new Error('llama.cpp stopped early');
  const seconds = (performance.now() - t0) / 1000;
  await gen.return();
  return seconds;
}

async function check(seq: Sequence): Promise<CheckFigures> {
  const prompt = benchPrompt(CHECK.promptTokens, CHECK.seed);
  await seq.clearHistory();
  const outputs = await seq.controlledEvaluate(prompt.map((t) => [t, { generateNext: { token: true, options: { temperature: 0 } } }]));
  const argmax = outputs.map((o) => o?.next.token ?? -1);
  await seq.clearHistory();
  const greedy: number[] = [];
  for await (const t of seq.evaluate(prompt, { temperature: 0 })) {
    greedy.push(t);
    if (greedy.length >= CHECK.greedyTokens) break;
  }
  return { argmax, greedy };
}

export interface LlamaCppExtra {
  llamaCpp: string;
  systemInfo: string;
  contextSize: number;
  batchSize: number;
  flashAttention: string;
}

/** llama.cpp's prebuilt CPU library through node-llama-cpp, or why it cannot run here. */
export async function loadLlama(maxThreads: number): Promise<{ llama: Llama; version?: string } | { skipped: string; version?: string }> {
  let nlc: NodeLlamaCpp;
  try {
    const name = 'node-llama-cpp'; // through a variable: compiled without the optional package's types
    nlc = (await import(name)) as NodeLlamaCpp;
  } catch (err) {
    return { skipped: `node-llama-cpp is not installed (${(err as Error).message.split('\n')[0]}); \`npm install\` with dev dependencies brings ${NODE_LLAMA_CPP_VERSION}` };
  }
  const version = installedVersion();
  try {
    // Prebuilt CPU binaries only: never compile llama.cpp or download its sources.
    const llama = await nlc.getLlama({ gpu: false, build: 'never', usePrebuiltBinaries: true, skipDownload: true, progressLogs: false, logLevel: 'error', maxThreads });
    return { llama, version };
  } catch (err) {
    return { skipped: `node-llama-cpp ${version ?? ''} has no usable prebuilt binary here (${(err as Error).message.split('\n')[0]})`, version };
  }
}

async function main(): Promise<void> {
  const [dir, threadsArg, typesArg] = process.argv.slice(2);
  if (!dir || !threadsArg) throw new Error('usage: peer-llamacpp.js <checkpoint-dir> <threads,...> [bf16,q8_0,q4_0]');
  const threadCounts = threadsArg.split(',').map(Number);
  const types = (typesArg ? typesArg.split(',') : GGUF_TYPES) as GgufWeightType[];
  const report: PeerReport<LlamaCppExtra> = { peer: 'llama.cpp', available: false, runs: [] };
  const done = (): void => {
    process.stdout.write(JSON.stringify(report) + '\n');
  };
  const log = (line: string) => process.stderr.write(line + '\n');

  const loaded = await loadLlama(Math.max(...threadCounts));
  report.version = loaded.version;
  if ('skipped' in loaded) {
    report.skipped = loaded.skipped;
    return done();
  }
  const { llama } = loaded;
  report.available = true;
  const contextSize = 2048;
  const batchSize = 512; // bench/llm.ts prefills in chunks of 512, llama.cpp's default micro-batch
  report.extra = {
    llamaCpp: `${llama.llamaCppRelease.repo}@${llama.llamaCppRelease.release} (${llama.buildType}, gpu ${llama.gpu})`,
    systemInfo: llama.systemInfo.trim(),
    contextSize,
    batchSize,
    flashAttention: 'auto',
  };

  const ggufDir = process.env.VL3_BENCH_GGUF ?? path.join(tmpdir(), 'vl3-bench-gguf');
  for (const type of types) {
    const file = ensureGguf(dir, ggufDir, type, log);
    const t0 = performance.now();
    const model = await llama.loadModel({ modelPath: file, gpuLayers: 0 });
    const loadSeconds = (performance.now() - t0) / 1000;
    for (const threads of threadCounts) {
      const context = await model.createContext({ contextSize, batchSize, sequences: 1, threads: { ideal: threads, min: threads } });
      report.extra.flashAttention = String(context.flashAttention);
      const seq = context.getSequence();
      // A short warm-up: the weights are memory-mapped, and the first pass would otherwise time page faults.
      await decodeSeconds(seq, benchPrompt(16, 1), 2);

      const prefill = [];
      for (let r = 0; r < PREFILL.runs; r++) prefill.push(await prefillSeconds(seq, benchPrompt(PREFILL.tokens, PREFILL.seed + r)));
      const decode = [];
      for (let r = 0; r < DECODE.runs; r++) decode.push(await decodeSeconds(seq, benchPrompt(DECODE.promptTokens, DECODE.seed + r), DECODE.tokens));
      const p = median(prefill);
      const d = median(decode);
      const run: PeerRun = {
        peer: 'llama.cpp',
        weights: `${type.toUpperCase()} GGUF`,
        threads,
        loadSeconds: round(loadSeconds, 2),
        prefill: { tokens: PREFILL.tokens, seconds: round(p, 2), tokensPerSecond: round(PREFILL.tokens / p) },
        decode: { promptTokens: DECODE.promptTokens, tokens: DECODE.tokens, seconds: round(d, 2), tokensPerSecond: round(DECODE.tokens / d, 2) },
        check: await check(seq),
      };
      report.runs.push(run);
      log(`llama.cpp ${run.weights}, ${threads} thread(s): prefill ${run.prefill.tokensPerSecond} tokens/s, decode ${run.decode.tokensPerSecond} tokens/s`);
      await context.dispose();
    }
    await model.dispose();
  }
  await llama.dispose();
  done();
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
