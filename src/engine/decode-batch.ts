import type { AttentionCache, Qwen2Model } from '../model/qwen2.js';
import { BATCH_ROWS } from '../tensor/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import { ABORTED } from './scheduler.js';

/** Runs a piece of work as one turn of the model (see `Scheduler.step`); ABORTED when it did not run. */
export type StepRunner = <T>(work: () => T) => Promise<T | typeof ABORTED>;

interface Waiting {
  id: number;
  cache: AttentionCache;
  logits: Tensor;
  settle: (outcome: 'done' | typeof ABORTED | Error) => void;
  signal?: AbortSignal;
  onAbort?: () => void;
}

/**
 * Decoding for every sequence of a model at once: the sequences that ask for their next token before a turn starts
 * advance together in that turn, as one forward pass over a batch of one token each (every weight read once for the
 * batch, not once per sequence), each attending to its own cache. Sequences join and leave at token boundaries: one
 * that asks while a batch runs goes into the next. Sampling stays with each sequence (only logits come back), and
 * each gets the bits it would get decoding alone (`Qwen2Model.forwardBatch`), so answers do not depend on company.
 */
export class DecodeBatcher {
  private waiting: Waiting[] = [];
  private scheduled = false;
  private logitsRows: Tensor | null = null;
  /** Tokens decoded and batches run, for stats. */
  tokens = 0;
  batches = 0;

  constructor(
    private readonly model: Qwen2Model,
    private readonly step: StepRunner,
  ) {}

  /**
   * Runs token `id` at the end of `cache` (appending its keys and values) and writes the next-token logits into
   * `logits` [1, vocab]. Resolves ABORTED, having run nothing, when `signal` aborts first.
   */
  decode(id: number, cache: AttentionCache, logits: Tensor, signal?: AbortSignal): Promise<void | typeof ABORTED> {
    if (signal?.aborted) return Promise.resolve(ABORTED);
    return new Promise((resolve, reject) => {
      const entry: Waiting = {
        id,
        cache,
        logits,
        signal,
        settle: (outcome) => {
          if (entry.onAbort) signal!.removeEventListener('abort', entry.onAbort);
          if (outcome instanceof Error) reject(outcome);
          else resolve(outcome === ABORTED ? ABORTED : undefined);
        },
      };
      if (signal) {
        entry.onAbort = () => {
          const i = this.waiting.indexOf(entry);
          if (i >= 0) this.waiting.splice(i, 1);
          entry.settle(ABORTED);
        };
        signal.addEventListener('abort', entry.onAbort, { once: true });
      }
      this.waiting.push(entry);
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    this.step(() => this.runBatch()).then(
      (ran) => {
        // A runner that carries a signal may skip the turn: whoever waited gets ABORTED rather than waiting forever.
        if (ran === ABORTED) this.settleAll(ABORTED);
      },
      (e: unknown) => this.settleAll(e instanceof Error ? e : new Error(String(e))),
    );
  }

  private settleAll(outcome: typeof ABORTED | Error): void {
    this.scheduled = false;
    for (const entry of this.waiting.splice(0)) entry.settle(outcome);
  }

  private runBatch(): void {
    this.scheduled = false;
    const batch = this.waiting.splice(0, BATCH_ROWS);
    // More than a batch holds: the rest go first in the next turn.
    if (this.waiting.length > 0) this.schedule();
    if (batch.length === 0) return;
    let outcome: 'done' | Error = 'done';
    try {
      const { model } = this;
      const B = batch.length;
      const hidden = model.forwardBatch(
        model.embed(batch.map((e) => e.id)),
        batch.map((e) => e.cache),
      );
      if (B === 1) {
        // One sequence: its logits go straight where it reads them (a vocabulary's worth of copying less a token).
        model.logits(hidden, batch[0]!.logits);
      } else {
        const vocab = model.dims.vocabSize;
        if (!this.logitsRows || this.logitsRows.dim(0) < B) this.logitsRows = model.backend.allocate('f32', [B, vocab]);
        const rows = this.logitsRows.rows(0, B);
        model.logits(hidden, rows);
        batch.forEach((e, i) => model.backend.copy(rows.rows(i, i + 1), e.logits));
      }
      this.tokens += B;
      this.batches++;
    } catch (e) {
      outcome = e instanceof Error ? e : new Error(String(e));
    }
    for (const entry of batch) entry.settle(outcome);
  }
}
