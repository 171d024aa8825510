// Texts for tokenizer tests: random mixtures of everything the Qwen2 pre-tokenizer and NFC treat apart, and real text.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Rng } from '../src/engine/rng.js';
import { repoRoot } from './fixtures.js';

/** Added tokens of the Qwen2 tokenizer that random texts use. */
export const ADDED = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<image>', '<tool_call>', '</tool_call>', '<|stream_start|>'];

export const ADDED_PATTERN = new RegExp(ADDED.map((t) => t.replace(/[|/]/g, '\\$&')).join('|'));

/** Pieces of random text: every kind of character that the pre-tokenizer regex or NFC treats apart. */
export const FRAGMENTS = [
  ...['the', 'The', 'HELLO', 'world', 'naïve', 'café', 'a', 'I', 'x', 'fooBar', 'snake_case'],
  ...["'s", "'S", "'t", "'re", "'VE", "'m", "'ll", "'D", "'x", "don't", "It'S", "we'LL", "'"],
  ...['0', '7', '42', '2024', '3.14', '١٢٣', '½', '²', 'Ⅻ'],
  ...[' ', '  ', '   ', '\t', '\n', '\n\n', '\r\n', '\r', '\r\n\r\n', ' \n', '\n ', '\v', '\f'],
  ...['\u00a0', '\u3000', '\u2028', '\u0085', '\u200b', '\ufeff'],
  ...['.', ',', '!', '?!', '...', '—', '«', '»', '"', '(', ')', '{', '}', '[', ']', '<', '>', '/', '\\', '#', '```', '->', '&&', '$', '€', '©', '_'],
  ...['中文', '日本語', 'ひらがな', 'カタカナ', '한국어', 'Привет', 'Ελληνικά', 'עברית', 'العربية', 'हिन्दी', 'ภาษาไทย', 'ქართული'],
  ...['😀', '👍🏽', '👨‍👩‍👧', '🇫🇷', '🦙'],
  // NFC at work: composition, canonical reordering, singletons, exclusions, conjoining jamo, lone marks.
  ...['e\u0301', 'a\u0323\u0302', 'o\u0302\u0323', '\u0301', '\u0308\u0301', 'A\u030a', '\u1e9b\u0323', '\u03b1\u0313\u0342\u0345'],
  ...['\u212b', '\u0958', '\u1100\u1161\u11a8', '\u1100', '\u1161', '\u11a8'],
  ...['\ud800', '\udc00'],
  ...ADDED,
  ...['<|im_', 'im_end|>', '|', '<|', '|>', '<imag', 'e>'],
];

/** Long runs, the inputs whose pre-tokens are longest. */
const RUNS = [' '.repeat(40), '\n'.repeat(12), '\r\n'.repeat(6), 'a'.repeat(300), '7'.repeat(50), '!'.repeat(30), '\t \t \n \n ', ' \u0301'.repeat(9)];

/** `pieces` random fragments (now and then a long run), 40% of them followed by a space. */
export function randomText(rng: Rng, pieces: number, fragments: readonly string[] = FRAGMENTS): string {
  let text = '';
  for (let i = 0; i < pieces; i++) {
    if (rng.next() < 0.02) text += RUNS[Math.floor(rng.next() * RUNS.length)];
    else text += fragments[Math.floor(rng.next() * fragments.length)];
    if (rng.next() < 0.4) text += ' ';
  }
  return text;
}

/** Text of this repository (prose, code, tables), repeated to `length` UTF-16 units. */
export function repositoryText(length: number): string {
  const root = repoRoot();
  const files = ['README.md', 'BENCHMARKS.md', ...readdirSync(join(root, 'src', 'processing')).sort().map((f) => join('src', 'processing', f))];
  const corpus = files.map((f) => readFileSync(join(root, f), 'utf8')).join('\n');
  return corpus.repeat(Math.ceil(length / corpus.length)).slice(0, length);
}
