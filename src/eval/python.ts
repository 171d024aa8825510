// Python string semantics the official scorers rely on (str.strip, str.split, float(), list literals) and the
// Levenshtein distance of their ANLS, over code points as Python counts them. Written from the Python language
// reference; the scorers' results must equal the official code's, character for character.

/** Characters `str.isspace()` is true for (and `str.split()` / `str.strip()` remove). */
const PY_SPACE = '\t\n\v\f\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000';

/** `s.strip(chars)`; without `chars`, Python's whitespace. */
export function pyStrip(s: string, chars: string = PY_SPACE): string {
  let start = 0;
  let end = s.length;
  while (start < end && chars.includes(s[start]!)) start++;
  while (end > start && chars.includes(s[end - 1]!)) end--;
  return s.slice(start, end);
}

export function pyRstrip(s: string, chars: string = PY_SPACE): string {
  let end = s.length;
  while (end > 0 && chars.includes(s[end - 1]!)) end--;
  return s.slice(0, end);
}

/** `s.split()`: runs of Python whitespace separate, no empty fields. */
export function pySplit(s: string): string[] {
  const out: string[] = [];
  let word = '';
  for (const c of s) {
    if (PY_SPACE.includes(c)) {
      if (word) out.push(word);
      word = '';
    } else word += c;
  }
  if (word) out.push(word);
  return out;
}

/** Length in code points, as Python's `len(str)`. */
export const pyLen = (s: string): number => [...s].length;

/**
 * `float(text)`, or undefined where Python raises ValueError: surrounding whitespace, a sign, digits with single
 * underscores between them, a fraction, an exponent, `inf`/`infinity`/`nan` in any case. (Non-ASCII digits, which
 * Python also reads, are not accepted here.)
 */
export function pyFloat(text: string): number | undefined {
  const t = pyStrip(text);
  const digits = '[0-9](?:_?[0-9])*';
  const number = new RegExp(`^[+-]?(?:${digits}(?:\\.(?:${digits})?)?|\\.${digits})(?:[eE][+-]?${digits})?$`);
  if (number.test(t)) return Number(t.replaceAll('_', ''));
  const special = /^([+-]?)(inf|infinity|nan)$/i.exec(t);
  if (!special) return undefined;
  if (special[2]!.toLowerCase() === 'nan') return NaN;
  return special[1] === '-' ? -Infinity : Infinity;
}

/**
 * A Python list literal of strings, as `eval` reads MMMU's `options` column ("['a', \"b's\"]"). Returns undefined
 * when the text is not such a literal.
 */
export function pyStringList(text: string): string[] | undefined {
  let i = 0;
  const skip = () => {
    while (i < text.length && PY_SPACE.includes(text[i]!)) i++;
  };
  const ESCAPES: Record<string, string> = { n: '\n', t: '\t', r: '\r', '\\': '\\', "'": "'", '"': '"', a: '\x07', b: '\b', f: '\f', v: '\v', '0': '\0', '\n': '' };
  skip();
  if (text[i] !== '[') return undefined;
  i++;
  const out: string[] = [];
  for (;;) {
    skip();
    if (text[i] === ']') {
      i++;
      break;
    }
    const quote = text[i];
    if (quote !== "'" && quote !== '"') return undefined;
    i++;
    let value = '';
    for (;;) {
      const c = text[i++];
      if (c === undefined) return undefined;
      if (c === quote) break;
      if (c === '\\') {
        const e = text[i++];
        if (e === undefined) return undefined;
        if (e === 'x' || e === 'u' || e === 'U') {
          const n = e === 'x' ? 2 : e === 'u' ? 4 : 8;
          const hex = text.slice(i, i + n);
          if (!new RegExp(`^[0-9a-fA-F]{${n}}$`).test(hex)) return undefined;
          value += String.fromCodePoint(parseInt(hex, 16));
          i += n;
        } else value += ESCAPES[e] ?? `\\${e}`;
      } else value += c;
    }
    out.push(value);
    skip();
    if (text[i] === ',') i++;
    else if (text[i] !== ']') return undefined;
  }
  skip();
  return i === text.length ? out : undefined;
}

/** Edit distance over code points (insertions, deletions, substitutions of cost 1). */
export function levenshtein(a: string, b: string): number {
  let s1 = [...a];
  let s2 = [...b];
  if (s1.length > s2.length) [s1, s2] = [s2, s1];
  let row = Array.from({ length: s1.length + 1 }, (_, i) => i);
  for (let i2 = 0; i2 < s2.length; i2++) {
    const next = [i2 + 1];
    for (let i1 = 0; i1 < s1.length; i1++) {
      next.push(s1[i1] === s2[i2] ? row[i1]! : 1 + Math.min(row[i1]!, row[i1 + 1]!, next[i1]!));
    }
    row = next;
  }
  return row[s1.length]!;
}

/** A string of `n` regex-safe option letters A, B, ... */
export const letters = (n: number): string[] => Array.from({ length: n }, (_, i) => String.fromCharCode(65 + i));
