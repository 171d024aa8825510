/**
 * Stop strings over streamed text, with OpenAI semantics: generation ends at the first occurrence of any stop
 * string, which is not part of the answer. Text that could still turn out to be the start of a stop string is held
 * back until it cannot, so nothing after a stop string is ever streamed.
 */
export class StopStrings {
  private text = '';
  private emitted = 0;
  private stoppedAt = -1;

  constructor(private readonly stops: readonly string[]) {
    for (const [i, s] of stops.entries()) {
      if (typeof s !== 'string' || s.length === 0) throw new Error(`stop[${i}] must be a non-empty string`);
    }
  }

  get stopped(): boolean {
    return this.stoppedAt >= 0;
  }

  /** The whole answer so far, cut before a stop string once one has appeared. */
  get answer(): string {
    return this.stopped ? this.text.slice(0, this.stoppedAt) : this.text;
  }

  /** Takes the next piece of text; returns what can be streamed now. */
  push(delta: string): string {
    if (this.stopped) return '';
    // A stop string may straddle earlier text: search from where the longest one could have started.
    const longest = Math.max(0, ...this.stops.map((s) => s.length));
    const from = Math.max(0, this.text.length - longest + 1);
    this.text += delta;
    let at = -1;
    for (const s of this.stops) {
      const i = this.text.indexOf(s, from);
      if (i >= 0 && (at < 0 || i < at)) at = i;
    }
    if (at >= 0) {
      this.stoppedAt = at;
      return this.take(at);
    }
    return this.take(this.text.length - this.heldBack());
  }

  /** Everything not yet streamed: the end of generation means no stop string can complete any more. */
  flush(): string {
    return this.take(this.answer.length);
  }

  /** Length of the longest suffix of the text that is a proper prefix of a stop string. */
  private heldBack(): number {
    let held = 0;
    for (const s of this.stops) {
      for (let n = Math.min(s.length - 1, this.text.length); n > held; n--) {
        if (this.text.endsWith(s.slice(0, n))) {
          held = n;
          break;
        }
      }
    }
    return held;
  }

  private take(end: number): string {
    if (end <= this.emitted) return '';
    const out = this.text.slice(this.emitted, end);
    this.emitted = end;
    return out;
  }
}
