import type { Backend } from '../tensor/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import { Rng } from './rng.js';

export interface SamplingOptions {
  /** false: greedy (argmax); temperature, top-k and top-p are then ignored, as in transformers. */
  doSample: boolean;
  temperature: number;
  /** 0 disables top-k. */
  topK: number;
  /** 1 disables top-p. */
  topP: number;
  /** 1 disables the penalty. */
  repetitionPenalty: number;
  seed?: number;
}

export function validateSampling(o: SamplingOptions): void {
  const bad = (field: string, value: number, rule: string): never => {
    throw new Error(`invalid ${field} ${value}: ${rule}`);
  };
  if (!(o.temperature >= 0) || !Number.isFinite(o.temperature)) bad('temperature', o.temperature, 'must be a finite number >= 0');
  if (!Number.isInteger(o.topK) || o.topK < 0) bad('top_k', o.topK, 'must be an integer >= 0');
  if (!(o.topP > 0 && o.topP <= 1)) bad('top_p', o.topP, 'must be in (0, 1]');
  if (!(o.repetitionPenalty > 0) || !Number.isFinite(o.repetitionPenalty)) {
    bad('repetition_penalty', o.repetitionPenalty, 'must be a finite number > 0');
  }
}

/**
 * Picks the next token from full-vocabulary logits with transformers' semantics and order: repetition penalty over
 * the tokens generated so far → temperature → top-k (ties at the k-th value kept) → top-p (drop the smallest tokens
 * whose cumulative probability stays <= 1 − top_p) → softmax → one draw. The logits tensor is modified in place.
 */
export class Sampler {
  private readonly rng: Rng;
  private readonly penalized = new Set<number>();

  constructor(
    readonly options: SamplingOptions,
    private readonly backend: Backend,
  ) {
    validateSampling(options);
    this.rng = new Rng(options.seed);
  }

  /** Records a generated token for the repetition penalty. */
  observe(tokenId: number): void {
    this.penalized.add(tokenId);
  }

  next(logits: Tensor): number {
    if (this.options.repetitionPenalty !== 1 && this.penalized.size > 0) this.penalize(logits);
    const greedy = !this.options.doSample || this.options.temperature === 0;
    if (greedy) return this.backend.argmax(logits);
    return this.sample(logits, this.backend.download(logits).data as Float32Array);
  }

  /** The penalty on the scores of the generated tokens, in place: only those few values cross to the host and back. */
  private penalize(logits: Tensor): void {
    const b = this.backend;
    const p = this.options.repetitionPenalty;
    const ids = Int32Array.from(this.penalized);
    const order = Int32Array.from(ids.keys());
    const column = logits.reshape([logits.numel, 1]);
    const picked = b.allocate('f32', [ids.length, 1]);
    b.copyRows(column, ids, picked, order);
    const scores = b.download(picked).data as Float32Array;
    b.write(picked, scores.map((s) => (s < 0 ? s * p : s / p)));
    b.copyRows(picked, order, column, ids);
  }

  private sample(logits: Tensor, scores: Float32Array): number {
    const { temperature, topK, topP } = this.options;
    // Candidates in descending order of score. Top-k bounds them; without it every token is a candidate.
    const limit = topK > 0 ? Math.min(topK, scores.length) : scores.length;
    let { indices, values } = this.backend.topK(logits, limit);
    if (limit < scores.length) {
      // transformers keeps every token whose score is not below the k-th one, ties included.
      const kth = values[values.length - 1]!;
      let atLeastKth = 0;
      for (let i = 0; i < scores.length; i++) if (scores[i]! >= kth) atLeastKth++;
      if (atLeastKth > limit) ({ indices, values } = this.backend.topK(logits, atLeastKth));
    }
    const probs = new Float64Array(values.length);
    const max = values[0]! / temperature;
    let sum = 0;
    for (let i = 0; i < values.length; i++) sum += probs[i] = Math.exp(values[i]! / temperature - max);
    let kept = values.length;
    if (topP < 1) {
      // Walk from the least likely candidate, dropping while the dropped mass stays <= 1 - top_p; keep at least one.
      let cumulative = 0;
      while (kept > 1) {
        cumulative += probs[kept - 1]! / sum;
        if (cumulative > 1 - topP) break;
        kept--;
      }
    }
    let total = 0;
    for (let i = 0; i < kept; i++) total += probs[i]!;
    let r = this.rng.next() * total;
    for (let i = 0; i < kept; i++) {
      r -= probs[i]!;
      if (r < 0) return indices[i]!;
    }
    return indices[kept - 1]!;
  }
}
