import type { Qwen2Model } from '../model/qwen2.js';
import type { Tensor } from '../tensor/tensor.js';
import { DecodeBatcher, type StepRunner } from './decode-batch.js';
import { KVCache } from './kv-cache.js';
import { ABORTED } from './scheduler.js';
import { Sampler, type SamplingOptions } from './sampling.js';

export interface GenerateRequest {
  /** Prompt embeddings [L, hidden] f32 (text embeddings with visual features already in place): the positions after
   * those `cache` holds. Consumed: the tensor is overwritten during prefill. */
  promptEmbeds: Tensor;
  /**
   * A cache already holding the prompt's first positions (a reused prefix), which the call extends and leaves to the
   * caller to release. Default: a cache of the call's own, released when it ends.
   */
  cache?: KVCache;
  /**
   * Absolute prompt positions where a prefill chunk must end, besides every multiple of `prefillChunk`. Row blocks
   * change the kernels' float rounding, so a prompt resumed from a cached prefix of length P is prefilled exactly as
   * the whole prompt would be only if P is a chunk end of both: the prefix cache reuses prefixes that end here.
   */
  prefillBreaks?: readonly number[];
  maxNewTokens: number;
  sampling: SamplingOptions;
  /** Generation stops after emitting one of these ids (it is reported, with finishReason 'stop'). */
  stopTokenIds: readonly number[];
  signal?: AbortSignal;
  /** Prompt positions processed per forward pass: bounds activation memory on long prompts. */
  prefillChunk?: number;
  /** Called as prefill advances, with (positions done, total). */
  onPrefillProgress?: (done: number, total: number) => void;
  /** Called once with the logits at the last prompt position, before any processing. */
  onPromptLogits?: (logits: Tensor) => void;
  /**
   * Called after each prefill chunk with its final normed hidden states [rows, hidden] and the position of its first
   * row, for callers that score every prompt position (the tensor is overwritten after the call).
   */
  onPrefillHidden?: (hidden: Tensor, start: number) => void;
  /**
   * Runs each forward pass (a prefill chunk, a decoded token) as one turn: a scheduler shares the model fairly
   * between requests this way (`Scheduler.step`). Returning ABORTED skips the work and ends generation. Default: run
   * the work, then let the event loop run once.
   */
  step?: StepRunner;
  /**
   * Decodes through this batcher, with every other sequence that decodes through it at the same time (one forward
   * pass per turn for all of them; the answer is the same as alone). Default: a batcher of this request alone, run
   * by `step`.
   */
  decoder?: DecodeBatcher;
}

export type { StepRunner };

export type FinishReason = 'stop' | 'length' | 'abort';

export interface GenerationResult {
  tokenIds: number[];
  finishReason: FinishReason;
  promptTokens: number;
  /** Prompt positions that came from `request.cache` rather than prefill. */
  cachedTokens: number;
  /** Milliseconds spent in prefill (prompt → first logits) and in decoding the remaining tokens. */
  prefillMs: number;
  decodeMs: number;
}

export const DEFAULT_PREFILL_CHUNK = 512;

/**
 * Prefills the prompt in chunks, then decodes token by token over a KV cache, yielding each new token id as soon as
 * it is chosen. The generator's return value summarises the run. The KV cache lives exactly as long as the call:
 * it is released on completion, on abort and on error.
 */
export async function* generateTokens(model: Qwen2Model, request: GenerateRequest): AsyncGenerator<number, GenerationResult> {
  const { promptEmbeds, stopTokenIds, signal } = request;
  const cached = request.cache?.length ?? 0;
  const L = cached + promptEmbeds.dim(0);
  const d = model.dims;
  if (L === cached) throw new Error(L === 0 ? 'cannot generate from an empty prompt' : 'the prompt must have a position after the cached prefix');
  if (L > d.maxPositionEmbeddings) throw new Error(`the prompt has ${L} positions; the model's context is ${d.maxPositionEmbeddings}`);
  if (!Number.isInteger(request.maxNewTokens) || request.maxNewTokens < 0) throw new Error(`invalid max_new_tokens ${request.maxNewTokens}`);
  // The context is full when every position holds a token: generation then ends with 'length'.
  const maxNewTokens = Math.min(request.maxNewTokens, d.maxPositionEmbeddings - L + 1);
  const cache = request.cache ?? new KVCache(model.backend, d.numHiddenLayers, d.numKeyValueHeads, model.headDim, d.maxPositionEmbeddings, L + Math.min(maxNewTokens, 1024));
  const sampler = new Sampler(request.sampling, model.backend);
  const stops = new Set(stopTokenIds);
  const tokenIds: number[] = [];
  const logits = model.backend.allocate('f32', [1, d.vocabSize]);
  const started = performance.now();
  let prefillMs = 0;
  let finishReason: FinishReason = 'length';
  const step = request.step ?? runThenYield;
  const decoder = request.decoder ?? new DecodeBatcher(model, step);
  const aborted = (): GenerationResult => {
    const elapsed = performance.now() - started;
    return { tokenIds, finishReason: 'abort', promptTokens: L, cachedTokens: cached, prefillMs: prefillMs || elapsed, decodeMs: prefillMs ? elapsed - prefillMs : 0 };
  };
  try {
    const chunk = Math.max(1, request.prefillChunk ?? DEFAULT_PREFILL_CHUNK);
    const breaks = request.prefillBreaks ?? [];
    let nextBreak = 0;
    for (let s = cached; s < L; ) {
      if (signal?.aborted) return aborted();
      while (nextBreak < breaks.length && breaks[nextBreak]! <= s) nextBreak++;
      const end = Math.min(L, (Math.floor(s / chunk) + 1) * chunk, breaks[nextBreak] ?? L);
      const start = s;
      const done = await step(() => {
        const hidden = model.forward(promptEmbeds.rows(start - cached, end - cached), cache);
        request.onPrefillHidden?.(hidden, start);
        if (end === L) model.logits(hidden.rows(hidden.dim(0) - 1, hidden.dim(0)), logits);
      });
      s = end;
      if (done === ABORTED) return aborted();
      request.onPrefillProgress?.(end, L);
    }
    request.onPromptLogits?.(logits);
    prefillMs = performance.now() - started;

    while (tokenIds.length < maxNewTokens) {
      if (signal?.aborted) return aborted();
      const id = sampler.next(logits.reshape([d.vocabSize]));
      tokenIds.push(id);
      sampler.observe(id);
      yield id;
      if (stops.has(id)) {
        finishReason = 'stop';
        break;
      }
      if (tokenIds.length >= maxNewTokens) break;
      if ((await decoder.decode(id, cache, logits, signal)) === ABORTED) return aborted();
    }
    return { tokenIds, finishReason, promptTokens: L, cachedTokens: cached, prefillMs, decodeMs: performance.now() - started - prefillMs };
  } finally {
    if (!request.cache) cache.release();
  }
}

/** Runs a step, then lets timers and I/O (streamed output, an HTTP client's disconnect) run before the next. */
async function runThenYield<T>(work: () => T): Promise<T> {
  const result = work();
  await new Promise((resolve) => setImmediate(resolve));
  return result;
}
