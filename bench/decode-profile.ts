// Where a decode step's time goes: every kernel call of a greedy decode timed, by op (and matmul shape), beside the same
// decode untimed and the read bandwidth. The timed decode runs each layer as its ops (the untimed one makes one
// `decoderLayers` call a token, as a model does), so its time outside kernel calls is that of the ops' JavaScript.
// Medians say what an op costs; means include the host's multi-millisecond stalls, which a timed loop of one op hides
// (BENCHMARKS.md run 17).
// Usage: node dist/bench/decode-profile.js <checkpoint-dir> [threads] [bf16|int8|int4|int4m] [tokens] [--json]
// (defaults: every core, the weights as stored, 64 tokens after a 256-token prompt; Compute::Bf16)
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateTokens } from '../src/engine/generate.js';
import { loadCheckpoint } from '../src/model/checkpoint.js';
import { Qwen2Model } from '../src/model/qwen2.js';
import { FormattedWeights } from '../src/model/weight-formats.js';
import type { Backend, Kernels } from '../src/tensor/backend.js';
import { CheckedBackend } from '../src/tensor/checked.js';
import type { WeightFormat } from '../src/tensor/dtype.js';
import { NativeKernels, readBandwidth } from '../src/tensor/native.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { benchPrompt, DECODE } from './peer-common.js';
import { round } from './stats.js';

export interface OpProfile {
  /** The kernel's name; matmuls carry their weights' shapes (N×K, parts joined by +). */
  op: string;
  callsPerToken: number;
  medianMicros: number;
  p90Micros: number;
  maxMicros: number;
  /** Mean time per token: what the op adds to a step, stalls included. */
  msPerToken: number;
  /** Weight bytes read per call over the median call (matmuls only). */
  medianGBs?: number;
}

export interface DecodeProfile {
  threads: number;
  weights: string;
  tokens: number;
  /** Prompt tokens before the decode: the KV cache each step's attention reads grows from there. */
  promptTokens: number;
  /**
   * The same decode through an untimed backend (one `decoderLayers` call a token), and through the timed one (each
   * layer's ops, and the timing's own cost).
   */
  untimedMsPerToken: number;
  timedMsPerToken: number;
  /** Timed step minus its kernel calls: JavaScript between the calls, plus the timing itself. */
  outsideKernelsMsPerToken: number;
  readGBsBefore: number;
  readGBsAfter: number;
  ops: OpProfile[];
}

/** Kernels whose calls are timed into `samples` (microseconds by op) while `recording` says so. */
class TimedKernels {
  recording = false;
  readonly samples = new Map<string, { micros: number[]; bytes: number }>();

  wrap(inner: Kernels): Kernels {
    return new Proxy(inner, {
      get: (target, prop, receiver) => {
        // Without the one-call layers the checking layer runs each layer as its ops, which are what this profile times.
        if (prop === 'decoderLayers') return undefined;
        const value = Reflect.get(target, prop, receiver) as unknown;
        if (typeof value !== 'function' || typeof prop !== 'string') return value;
        const fn = value as (...args: unknown[]) => unknown;
        return (...args: unknown[]) => {
          if (!this.recording) return fn.apply(target, args);
          const t0 = process.hrtime.bigint();
          const result = fn.apply(target, args);
          const micros = Number(process.hrtime.bigint() - t0) / 1e3;
          const [key, bytes] = describe(prop, args);
          const entry = this.samples.get(key) ?? { micros: [], bytes };
          entry.micros.push(micros);
          this.samples.set(key, entry);
          return result;
        };
      },
    });
  }
}

/** An op's key and the weight bytes a call reads (matmuls; 0 for the rest). */
function describe(op: string, args: unknown[]): [string, number] {
  if (op === 'matmul') {
    const w = args[1] as Tensor;
    return [`matmul ${w.shape.join('×')}`, w.byteLength];
  }
  if (op === 'matmuls') {
    const parts = args[1] as readonly { w: Tensor }[];
    return [`matmuls ${parts.map((p) => p.w.dim(0)).join('+')}×${parts[0]!.w.dim(1)}`, parts.reduce((s, p) => s + p.w.byteLength, 0)];
  }
  return [op, 0];
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))]!;
}

/** Greedy decode of `tokens` after a `promptLength`-token prompt; `onDecodeStart` runs once the prefill's token is out. */
async function decode(model: Qwen2Model, promptLength: number, tokens: number, seed: number, onDecodeStart = () => {}): Promise<number> {
  const gen = generateTokens(model, {
    promptEmbeds: model.embed(benchPrompt(promptLength, seed)),
    maxNewTokens: tokens + 1,
    sampling: { doSample: false, temperature: 1, topK: 0, topP: 1, repetitionPenalty: 1 },
    stopTokenIds: [],
  });
  await gen.next();
  onDecodeStart();
  const t0 = performance.now();
  let next = await gen.next();
  while (!next.done) next = await gen.next();
  return (performance.now() - t0) / tokens;
}

export async function profileDecode(
  dir: string,
  threads: number | undefined,
  format: WeightFormat | undefined,
  tokens: number,
  promptTokens: number = DECODE.promptTokens,
): Promise<DecodeProfile> {
  const checkpoint = loadCheckpoint(dir);
  const weights = new FormattedWeights(checkpoint.weights, checkpoint.config.quantization, { language: format });
  const plain = new NativeKernels({ threads, compute: 'bf16' });
  const timed = new TimedKernels();
  const backends: Backend[] = [new CheckedBackend(plain), new CheckedBackend(timed.wrap(new NativeKernels({ threads, compute: 'bf16' })))];
  const [untimedModel, timedModel] = backends.map((b) => new Qwen2Model(checkpoint.config, weights, b)) as [Qwen2Model, Qwen2Model];
  const n = plain.threads;
  // First runs: the weights are read (or quantized) and every path is compiled.
  await decode(untimedModel, promptTokens, 4, DECODE.seed);
  await decode(timedModel, promptTokens, 4, DECODE.seed);
  const readGBsBefore = readBandwidth(n);
  const untimedMsPerToken = await decode(untimedModel, promptTokens, tokens, DECODE.seed + 1);
  const timedMsPerToken = await decode(timedModel, promptTokens, tokens, DECODE.seed + 1, () => {
    timed.recording = true;
  });
  timed.recording = false;
  const readGBsAfter = readBandwidth(n);

  const ops: OpProfile[] = [...timed.samples].map(([op, { micros, bytes }]) => {
    const sorted = [...micros].sort((a, b) => a - b);
    const median = quantile(sorted, 0.5);
    const profile: OpProfile = {
      op,
      callsPerToken: round(micros.length / tokens, 2),
      medianMicros: round(median),
      p90Micros: round(quantile(sorted, 0.9)),
      maxMicros: round(sorted[sorted.length - 1]!),
      msPerToken: round(micros.reduce((s, x) => s + x, 0) / tokens / 1e3, 3),
    };
    if (bytes > 0) profile.medianGBs = round(bytes / median / 1e3);
    return profile;
  });
  ops.sort((a, b) => b.msPerToken - a.msPerToken);
  const inKernels = ops.reduce((s, o) => s + o.msPerToken, 0);
  return {
    threads: n,
    weights: format ?? 'as stored',
    tokens,
    promptTokens,
    untimedMsPerToken: round(untimedMsPerToken, 2),
    timedMsPerToken: round(timedMsPerToken, 2),
    outsideKernelsMsPerToken: round(timedMsPerToken - inKernels, 2),
    readGBsBefore: round(readGBsBefore),
    readGBsAfter: round(readGBsAfter),
    ops,
  };
}

export function printDecodeProfile(p: DecodeProfile): void {
  console.log(`decode, ${p.weights} weights, ${p.threads} threads, ${p.tokens} tokens after ${p.promptTokens}: ` +
    `${p.untimedMsPerToken} ms a token untimed, ${p.timedMsPerToken} timed (${p.outsideKernelsMsPerToken} outside kernel calls); ` +
    `read bandwidth ${p.readGBsBefore} GB/s before, ${p.readGBsAfter} after`);
  console.log(`${'op'.padEnd(30)} ${'calls'.padStart(6)} ${'median µs'.padStart(10)} ${'p90'.padStart(8)} ${'max'.padStart(8)} ${'ms/token'.padStart(9)} ${'GB/s'.padStart(6)}`);
  for (const o of p.ops) {
    console.log(`${o.op.padEnd(30)} ${String(o.callsPerToken).padStart(6)} ${String(o.medianMicros).padStart(10)} ${String(o.p90Micros).padStart(8)} ` +
      `${String(o.maxMicros).padStart(8)} ${String(o.msPerToken).padStart(9)} ${o.medianGBs === undefined ? '' : String(o.medianGBs).padStart(6)}`);
  }
}

async function main(): Promise<void> {
  const args = process.argv.slice(2).filter((a) => a !== '--json');
  const [dir, threadsArg, formatArg, tokensArg, promptArg] = args;
  if (!dir) throw new Error('usage: decode-profile.js <checkpoint-dir> [threads] [bf16|int8|int4|int4m] [tokens] [prompt tokens] [--json]');
  const threads = Number(threadsArg ?? 0) || undefined;
  const tokens = Number(tokensArg ?? DECODE.tokens);
  if (!Number.isInteger(tokens) || tokens < 1) throw new Error(`tokens must be a positive integer, got ${tokensArg}`);
  const promptTokens = Number(promptArg ?? DECODE.promptTokens);
  if (!Number.isInteger(promptTokens) || promptTokens < 1) throw new Error(`prompt tokens must be a positive integer, got ${promptArg}`);
  const profile = await profileDecode(dir, threads, (formatArg || undefined) as WeightFormat | undefined, tokens, promptTokens);
  if (process.argv.includes('--json')) process.stdout.write(JSON.stringify(profile) + '\n');
  else printDecodeProfile(profile);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
