import { MultiBar, Presets, type Options, type SingleBar } from 'cli-progress';
import type { LoadProgressEvent } from '../api/videollama3.js';
import type { DownloadProgressEvent } from '../hub/index.js';
import type { ProgressEvent } from '../processing/processor.js';

const LABELS: Record<BarEvent['stage'], string> = {
  load: 'loading weights',
  decode: 'decoding frames',
  encode: 'encoding frames',
  prefill: 'reading prompt',
  quantize: 'quantizing',
  merge: 'merging adapter',
};

/** A stage of a model load, of a request, or of `vl3 quantize` and `vl3 merge-adapter` (bytes of source weights done). */
type BarEvent = ProgressEvent | LoadProgressEvent | { stage: 'quantize' | 'merge'; done: number; total: number };

/** Bars that are drawn only once something happens, and removed exactly once. */
abstract class TerminalBars {
  protected readonly multi?: MultiBar;
  private state: 'idle' | 'drawing' | 'stopped' = 'idle';

  constructor(options: Options | undefined) {
    if (options) this.multi = new MultiBar({ stream: process.stderr, hideCursor: true, stopOnComplete: false, ...options }, Presets.shades_classic);
  }

  /** True while bars may be drawn; marks them as drawn. */
  protected drawing(): boolean {
    if (!this.multi || this.state === 'stopped') return false;
    this.state = 'drawing';
    return true;
  }

  /**
   * Removes the bars, once. Later calls and updates do nothing: each stop of cli-progress returns the cursor to the
   * start of its line and clears the screen below, which would erase the answer printed since.
   */
  stop(): void {
    if (this.state === 'drawing') this.multi!.stop();
    this.state = 'stopped';
  }
}

/**
 * Progress bars on stderr for the long stages of a model load (weights read) and of a request (decode, encode,
 * prefill), shown only when stderr is a terminal so that pipes and logs stay clean. `stop()` must be called before
 * printing the answer.
 */
export class ProgressBars extends TerminalBars {
  private readonly bars = new Map<BarEvent['stage'], SingleBar>();
  private lastDraw = 0;

  constructor(enabled = process.stderr.isTTY === true) {
    super(enabled ? { format: ' {stage} [{bar}] {amount}', clearOnComplete: true } : undefined);
  }

  readonly update = (event: BarEvent): void => {
    if (!this.drawing()) return;
    const amount = event.stage === 'load' || event.stage === 'quantize' || event.stage === 'merge' ? `${humanBytes(event.done)} of ${humanBytes(event.total)}` : `${event.done}/${event.total}`;
    let bar = this.bars.get(event.stage);
    if (!bar) {
      bar = this.multi!.create(event.total, 0, { stage: LABELS[event.stage].padEnd(16), amount });
      this.bars.set(event.stage, bar);
    }
    bar.setTotal(event.total);
    bar.update(event.done, { amount });
    // Loading, encoding and prefill run synchronously and starve the bars' redraw timer: redraw from here (10/s).
    const now = performance.now();
    if (event.done === event.total || now - this.lastDraw > 100) {
      this.lastDraw = now;
      this.multi!.update();
    }
  };
}

/** Decimal units, as the hub shows sizes. */
export function humanBytes(bytes: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

/**
 * One bar per file on a terminal. Elsewhere (CI logs, pipes) bars would be escape-code noise, so each finished file
 * gets one plain line instead.
 */
export class DownloadBars extends TerminalBars {
  private readonly bars = new Map<string, SingleBar>();

  constructor(tty = process.stderr.isTTY === true) {
    super(tty ? { format: ' {file} [{bar}] {percentage}% {have}/{size}', barsize: 24, clearOnComplete: false } : undefined);
  }

  readonly update = (e: DownloadProgressEvent): void => {
    const payload = { file: fit(e.file, 28), have: humanBytes(e.downloadedBytes), size: humanBytes(e.totalBytes) };
    if (!this.multi) {
      if (e.done) process.stderr.write(`downloaded ${e.file} (${humanBytes(e.totalBytes)})\n`);
      return;
    }
    if (!this.drawing()) return;
    let bar = this.bars.get(e.file);
    if (!bar) {
      bar = this.multi.create(Math.max(e.totalBytes, 1), 0, payload);
      this.bars.set(e.file, bar);
    }
    bar.update(e.totalBytes === 0 && e.done ? 1 : e.downloadedBytes, payload);
  };
}

/** A name in a fixed width, keeping its end (the file name) when it is too long: bars fit 80 columns. */
const fit = (name: string, width: number) => (name.length <= width ? name.padEnd(width) : `…${name.slice(name.length - width + 1)}`);


/**
 * The training bar: steps done of the run, with the last step's loss, learning rates and tokens/s, and cli-progress's
 * ETA. Elsewhere than a terminal, one plain line per step.
 */
export class TrainingBar extends TerminalBars {
  private bar?: SingleBar;

  constructor(tty = process.stderr.isTTY === true) {
    super(tty ? { format: ' training [{bar}] {value}/{total} steps | loss {loss} | lr {lr} | {speed} tok/s | ETA {eta_formatted}', barsize: 20, etaBuffer: 20 } : undefined);
  }

  start(done: number, total: number): void {
    if (!this.multi || !this.drawing()) return;
    this.bar = this.multi.create(total, done, { loss: '-', lr: '-', speed: '-' });
  }

  readonly update = (e: { step: number; totalSteps: number; loss: number; lr: Record<string, number>; tokensPerSecond: number }): void => {
    const lr = Object.entries(e.lr)
      .map(([group, value]) => `${group} ${value.toExponential(2)}`)
      .join(', ');
    const payload = { loss: e.loss.toFixed(4), lr, speed: e.tokensPerSecond.toFixed(0) };
    if (!this.multi) {
      process.stderr.write(`step ${e.step}/${e.totalSteps}: loss ${payload.loss}, lr ${lr}, ${payload.speed} tokens/s\n`);
      return;
    }
    if (!this.drawing()) return;
    this.bar?.update(e.step, payload);
  };
}

/**
 * The `vl3 eval` bar: samples answered of the run, the running headline score, cli-progress's ETA. Elsewhere than a
 * terminal, a plain line every tenth of the run.
 */
export class EvalBar extends TerminalBars {
  private bar?: SingleBar;
  private lastLine = -1;
  private accuracy = '-';

  constructor(
    private readonly label: string,
    tty = process.stderr.isTTY === true,
  ) {
    super(tty ? { format: ` ${label} [{bar}] {value}/{total} | score {accuracy} | ETA {eta_formatted}`, barsize: 24, etaBuffer: 20 } : undefined);
  }

  readonly update = (e: { done: number; total: number; accuracy?: number }): void => {
    if (e.accuracy !== undefined && Number.isFinite(e.accuracy)) this.accuracy = e.accuracy.toFixed(1);
    if (!this.multi) {
      const tenth = Math.floor((e.done / Math.max(1, e.total)) * 10);
      if (tenth !== this.lastLine) process.stderr.write(`${this.label}: ${e.done}/${e.total} answered, score ${this.accuracy}\n`);
      this.lastLine = tenth;
      return;
    }
    if (!this.drawing()) return;
    this.bar ??= this.multi.create(e.total, e.done, { accuracy: this.accuracy });
    this.bar.update(e.done, { accuracy: this.accuracy });
  };
}
