import { MultiBar, Presets, type SingleBar } from 'cli-progress';
import type { ProgressEvent } from '../processing/processor.js';

const LABELS: Record<ProgressEvent['stage'], string> = {
  decode: 'decoding frames',
  encode: 'encoding frames',
  prefill: 'reading prompt',
};

/**
 * Progress bars on stderr for the long stages of a request (decode, encode, prefill), shown only when stderr is a
 * terminal so that pipes and logs stay clean. `stop()` must be called before printing the answer.
 */
export class ProgressBars {
  private readonly multi?: MultiBar;
  private readonly bars = new Map<ProgressEvent['stage'], SingleBar>();
  private lastDraw = 0;

  constructor(enabled = process.stderr.isTTY === true) {
    if (enabled) {
      this.multi = new MultiBar(
        { stream: process.stderr, format: ' {stage} [{bar}] {value}/{total}', hideCursor: true, clearOnComplete: true, stopOnComplete: false },
        Presets.shades_classic,
      );
    }
  }

  readonly update = (event: ProgressEvent): void => {
    if (!this.multi) return;
    let bar = this.bars.get(event.stage);
    if (!bar) {
      bar = this.multi.create(event.total, 0, { stage: LABELS[event.stage].padEnd(16) });
      this.bars.set(event.stage, bar);
    }
    bar.setTotal(event.total);
    bar.update(event.done);
    // Encoding and prefill run synchronously and starve the bars' redraw timer: redraw from here (at most 10/s).
    const now = performance.now();
    if (event.done === event.total || now - this.lastDraw > 100) {
      this.lastDraw = now;
      this.multi.update();
    }
  };

  /** Removes the bars (before the answer streams). */
  stop(): void {
    this.multi?.stop();
  }
}
