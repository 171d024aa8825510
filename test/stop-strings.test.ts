// Streamed-text filters: stop strings (cut before the first one, nothing after it streamed, partial matches held)
// and trimming (deltas that add up to the trimmed answer).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { StopStrings } from '../src/api/stop-strings.js';
import { TrimmedText } from '../src/api/trimmed-text.js';

function stream(stops: string[], deltas: string[]): { streamed: string[]; answer: string; stopped: boolean } {
  const s = new StopStrings(stops);
  const streamed = deltas.map((d) => s.push(d));
  streamed.push(s.flush());
  return { streamed, answer: s.answer, stopped: s.stopped };
}

describe('StopStrings', () => {
  it('passes text through when there are no stop strings', () => {
    assert.deepEqual(stream([], ['a', 'b']), { streamed: ['a', 'b', ''], answer: 'ab', stopped: false });
  });

  it('cuts at a stop string split over several deltas and streams nothing after it', () => {
    const r = stream(['END'], ['one E', 'N', 'D two', ' three']);
    assert.deepEqual(r.streamed, ['one ', '', '', '', '']);
    assert.equal(r.answer, 'one ');
    assert.equal(r.stopped, true);
  });

  it('releases held-back text once it cannot start a stop string any more', () => {
    const r = stream(['END'], ['one E', 'X']);
    assert.deepEqual(r.streamed, ['one ', 'EX', '']);
    assert.equal(r.stopped, false);
  });

  it('stops at the earliest of several stop strings, and flushes a held prefix at the end', () => {
    assert.equal(stream(['cd', 'b'], ['abcd']).answer, 'a');
    const r = stream(['xyz'], ['ab', 'xy']);
    assert.deepEqual(r.streamed, ['ab', '', 'xy']);
    assert.equal(r.answer, 'abxy');
  });

  it('rejects empty stop strings, naming the entry', () => {
    assert.throws(() => new StopStrings(['ok', '']), /stop\[1\] must be a non-empty string/);
  });
});

describe('TrimmedText', () => {
  it('streams pieces that add up to the trimmed whole, holding back whitespace until text follows it', () => {
    const t = new TrimmedText();
    const out = ['  \n', ' Hello', ' ', 'world \n', '\n'].map((d) => t.push(d));
    assert.deepEqual(out, ['', 'Hello', '', ' world', '']);
    assert.equal(out.join(''), '  \n Hello world \n\n'.trim());
  });
});
