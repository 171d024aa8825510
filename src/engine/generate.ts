import type { Qwen2Model } from '../model/qwen2.js';
import { Tensor } from '../tensor/tensor.js';
import { KVCache } from './kv-cache.js';
import { Sampler, type SamplingOptions } from './sampling.js';

export interface GenerateRequest {
  /** Prompt embeddings [L, hidden] f32 (text embeddings with visual features already in place). Consumed: the
   * tensor is overwritten during prefill. */
  promptEmbeds: Tensor;
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
}

export type FinishReason = 'stop' | 'length' | 'abort';

export interface GenerationResult {
  tokenIds: number[];
  finishReason: FinishReason;
  promptTokens: number;
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
  const { promptEmbeds, maxNewTokens, stopTokenIds, signal } = request;
  const L = promptEmbeds.dim(0);
  if (L === 0) throw new Error('cannot generate from an empty prompt');
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 0) throw new Error(`invalid max_new_tokens ${maxNewTokens}`);
  const d = model.dims;
  const cache = new KVCache(d.numHiddenLayers, d.numKeyValueHeads, model.headDim, d.maxPositionEmbeddings, L + Math.min(maxNewTokens, 1024));
  const sampler = new Sampler(request.sampling, model.backend);
  const stops = new Set(stopTokenIds);
  const tokenIds: number[] = [];
  const logits = Tensor.empty('f32', [1, d.vocabSize]);
  const step = Tensor.empty('f32', [1, d.hiddenSize]);
  const started = performance.now();
  let prefillMs = 0;
  let finishReason: FinishReason = 'length';
  try {
    const chunk = Math.max(1, request.prefillChunk ?? DEFAULT_PREFILL_CHUNK);
    let last: Tensor | undefined;
    for (let s = 0; s < L; s += chunk) {
      if (signal?.aborted) return { tokenIds, finishReason: 'abort', promptTokens: L, prefillMs: performance.now() - started, decodeMs: 0 };
      const rows = promptEmbeds.rows(s, Math.min(L, s + chunk));
      last = model.forward(rows, cache);
      request.onPrefillProgress?.(Math.min(L, s + chunk), L);
      if (s + chunk < L) await yieldToEventLoop();
    }
    model.logits(last!.rows(last!.dim(0) - 1, last!.dim(0)), logits);
    request.onPromptLogits?.(logits);
    prefillMs = performance.now() - started;

    while (tokenIds.length < maxNewTokens) {
      if (signal?.aborted) {
        finishReason = 'abort';
        break;
      }
      const id = sampler.next(logits.reshape([d.vocabSize]));
      tokenIds.push(id);
      sampler.observe(id);
      yield id;
      if (stops.has(id)) {
        finishReason = 'stop';
        break;
      }
      if (tokenIds.length >= maxNewTokens) break;
      model.embed([id], step);
      model.logits(model.forward(step, cache), logits);
      await yieldToEventLoop();
    }
    return { tokenIds, finishReason, promptTokens: L, prefillMs, decodeMs: performance.now() - started - prefillMs };
  } finally {
    cache.release();
  }
}

/** Lets timers and I/O (streamed output, an HTTP client's disconnect) run between tokens. */
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
