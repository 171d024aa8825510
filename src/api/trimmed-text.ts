/**
 * Streams text with its leading and trailing whitespace held back: leading whitespace is dropped, and whitespace at
 * the end of what has arrived so far is only sent once more text follows it. The concatenated output equals
 * `text.trim()` of the concatenated input: a chat's deltas add up to exactly its (trimmed) answer.
 */
export class TrimmedText {
  private started = false;
  private pending = '';

  push(delta: string): string {
    let text = this.pending + delta;
    if (!this.started) {
      text = text.replace(/^\s+/, '');
      if (text === '') return '';
      this.started = true;
    }
    const tail = /\s+$/.exec(text);
    this.pending = tail ? tail[0] : '';
    return tail ? text.slice(0, tail.index) : text;
  }
}
