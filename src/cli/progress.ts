import { MultiBar, Presets, type SingleBar } from 'cli-progress';
import type { DownloadProgressEvent } from '../hub/index.js';
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
export class DownloadBars {
  private readonly multi?: MultiBar;
  private readonly bars = new Map<string, SingleBar>();

  constructor(private readonly tty = process.stderr.isTTY === true) {
    if (tty) {
      this.multi = new MultiBar(
        { stream: process.stderr, format: ' {file} [{bar}] {percentage}% {have}/{size}', barsize: 24, hideCursor: true, clearOnComplete: false, stopOnComplete: false },
        Presets.shades_classic,
      );
    }
  }

  readonly update = (e: DownloadProgressEvent): void => {
    const payload = { file: fit(e.file, 28), have: humanBytes(e.downloadedBytes), size: humanBytes(e.totalBytes) };
    if (!this.multi) {
      if (e.done) process.stderr.write(`downloaded ${e.file} (${humanBytes(e.totalBytes)})\n`);
      return;
    }
    let bar = this.bars.get(e.file);
    if (!bar) {
      bar = this.multi.create(Math.max(e.totalBytes, 1), 0, payload);
      this.bars.set(e.file, bar);
    }
    bar.update(e.totalBytes === 0 && e.done ? 1 : e.downloadedBytes, payload);
  };

  stop(): void {
    this.multi?.stop();
  }
}

/** A name in a fixed width, keeping its end (the file name) when it is too long: bars fit 80 columns. */
const fit = (name: string, width: number) => (name.length <= width ? name.padEnd(width) : `…${name.slice(name.length - width + 1)}`);

