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

/** A Python value as `ast.literal_eval` builds it: dicts as Maps (keys compared as written), tuples and lists as arrays. */
export type PyValue = string | number | boolean | null | PyValue[] | Map<PyValue, PyValue> | { complex: [number, number] } | { bytes: string } | { set: PyValue[] };

/**
 * `ast.literal_eval(text)`, or undefined where it raises: str/bytes literals (prefixes, triple quotes, escapes,
 * adjacent literals joined), int (any base, underscores), float, imaginary, True/False/None, tuple, list, dict, set,
 * a sign before a number and `real ± imaginary`. As Python, leading spaces and tabs are dropped, a comment may follow,
 * and an indented first line is an error. (The judges of ActivityNet-QA reply with a dict read this way.)
 */
export function pyLiteral(text: string): { value: PyValue } | undefined {
  let s = text.replace(/^[ \t]+/, '');
  // Blank and comment-only lines before the expression are skipped by the tokenizer; an indented first line is not.
  for (;;) {
    const m = /^[ \t\f]*(#[^\n]*)?\r?\n/.exec(s);
    if (!m) break;
    s = s.slice(m[0].length);
  }
  if (/^[ \t\f]/.test(s)) return undefined;
  const p = new LiteralParser(s);
  try {
    const value = p.expression(0);
    p.skip(0);
    return p.done() ? { value } : undefined;
  } catch (e) {
    if (e instanceof LiteralError) return undefined;
    throw e;
  }
}

class LiteralError extends Error {}

class LiteralParser {
  i = 0;
  constructor(readonly s: string) {}

  /** Whitespace, comments and (inside brackets, depth > 0) newlines; a backslash-newline anywhere. */
  skip(depth: number): void {
    for (;;) {
      const c = this.s[this.i];
      if (c === ' ' || c === '\t' || c === '\f') this.i++;
      else if (c === '\\' && (this.s[this.i + 1] === '\n' || (this.s[this.i + 1] === '\r' && this.s[this.i + 2] === '\n'))) this.i += this.s[this.i + 1] === '\n' ? 2 : 3;
      else if (c === '#') while (this.i < this.s.length && this.s[this.i] !== '\n') this.i++;
      else if ((c === '\n' || c === '\r') && depth > 0) this.i++;
      else return;
    }
  }

  /** At the end, trailing newlines (and blank or comment lines) allowed. */
  done(): boolean {
    for (;;) {
      this.skip(0);
      if (this.s[this.i] === '\n' || this.s[this.i] === '\r') this.i++;
      else return this.i === this.s.length;
    }
  }

  fail(): never {
    throw new LiteralError();
  }

  eat(token: string, depth: number): boolean {
    this.skip(depth);
    if (this.s.startsWith(token, this.i)) {
      this.i += token.length;
      return true;
    }
    return false;
  }

  /** An element, or `real ± imaginary` (the only binary operation literal_eval accepts). */
  expression(depth: number): PyValue {
    const left = this.atom(depth);
    this.skip(depth);
    const op = this.s[this.i];
    if ((op === '+' || op === '-') && typeof left === 'number') {
      this.i++;
      const right = this.atom(depth);
      if (typeof right !== 'object' || right === null || !('complex' in right) || right.complex[0] !== 0) this.fail();
      return { complex: [left, op === '+' ? right.complex[1] : -right.complex[1]] };
    }
    return left;
  }

  atom(depth: number): PyValue {
    this.skip(depth);
    const c = this.s[this.i];
    if (c === undefined) this.fail();
    if (c === '+' || c === '-') {
      this.i++;
      this.skip(depth);
      const n = this.number();
      if (n === undefined) this.fail();
      if (typeof n === 'number') return c === '-' ? -n : n;
      return { complex: [0, c === '-' ? -n.complex[1] : n.complex[1]] };
    }
    if (c === '(' || c === '[') return this.sequence(c === '(' ? ')' : ']', depth + 1);
    if (c === '{') return this.braces(depth + 1);
    const n = this.number();
    if (n !== undefined) return n;
    const str = this.strings(depth);
    if (str !== undefined) return str;
    const name = /^[A-Za-z_]\w*/.exec(this.s.slice(this.i))?.[0];
    if (name === 'True' || name === 'False' || name === 'None') {
      this.i += name.length;
      return name === 'True' ? true : name === 'False' ? false : null;
    }
    return this.fail();
  }

  sequence(close: ')' | ']', depth: number): PyValue {
    this.i++;
    const items: PyValue[] = [];
    let comma = false;
    while (!this.eat(close, depth)) {
      if (items.length > 0 && !comma) this.fail();
      items.push(this.expression(depth));
      comma = this.eat(',', depth);
    }
    // `(x)` is x itself; `(x,)` and `()` are tuples.
    if (close === ')' && items.length === 1 && !comma) return items[0]!;
    return items;
  }

  braces(depth: number): PyValue {
    this.i++;
    if (this.eat('}', depth)) return new Map();
    const first = this.expression(depth);
    if (this.eat(':', depth)) {
      const map = new Map<PyValue, PyValue>();
      map.set(first, this.expression(depth));
      while (this.eat(',', depth)) {
        if (this.eat('}', depth)) return map;
        const key = this.expression(depth);
        if (!this.eat(':', depth)) this.fail();
        map.set(key, this.expression(depth));
      }
      if (!this.eat('}', depth)) this.fail();
      return map;
    }
    const items = [first];
    while (this.eat(',', depth)) {
      if (this.eat('}', depth)) return { set: items };
      items.push(this.expression(depth));
    }
    if (!this.eat('}', depth)) this.fail();
    return { set: items };
  }

  /** int (decimal, 0x, 0o, 0b, underscores between digits), float, or imaginary (`j`). */
  number(): number | { complex: [number, number] } | undefined {
    const rest = this.s.slice(this.i);
    const d = '[0-9](?:_?[0-9])*';
    const based = /^0(?:[xX](?:_?[0-9a-fA-F])+|[oO](?:_?[0-7])+|[bB](?:_?[01])+)(?![\w.])/.exec(rest);
    if (based) {
      this.i += based[0].length;
      const digits = based[0].replaceAll('_', '');
      return Number(BigInt(digits));
    }
    const m = new RegExp(`^(?:${d}(?:\\.(?:${d})?)?|\\.${d})(?:[eE][+-]?${d})?([jJ])?(?![\\w.])`).exec(rest);
    if (!m) return undefined;
    const literal = m[0].replace(/[jJ]$/, '').replaceAll('_', '');
    // A decimal int other than zero may not start with 0 ("01" is a SyntaxError).
    if (!m[1] && /^0+[0-9]/.test(literal) && !/[.eE]/.test(literal) && !/^0+$/.test(literal)) this.fail();
    this.i += m[0].length;
    return m[1] ? { complex: [0, Number(literal)] } : Number(literal);
  }

  /** One or more adjacent string literals, joined (str with str, bytes with bytes). */
  strings(depth: number): PyValue | undefined {
    const parts: { bytes: boolean; text: string }[] = [];
    for (;;) {
      const start = this.i;
      if (parts.length > 0) this.skip(depth);
      const m = /^([rRbBuU]|[bB][rR]|[rR][bB])?('''|"""|'|")/.exec(this.s.slice(this.i));
      if (!m) {
        this.i = start;
        break;
      }
      const prefix = (m[1] ?? '').toLowerCase();
      const quote = m[2]!;
      this.i += m[0].length;
      let text = '';
      for (;;) {
        if (this.s.startsWith(quote, this.i)) {
          this.i += quote.length;
          break;
        }
        const c = this.s[this.i++];
        if (c === undefined || ((c === '\n' || c === '\r') && quote.length === 1)) this.fail();
        if (c === '\\' && !prefix.includes('r')) text += this.escape(prefix.includes('b'));
        else if (c === '\\') {
          // Raw: the backslash stays and protects the next character (even a quote).
          const next = this.s[this.i++];
          if (next === undefined) this.fail();
          text += `\\${next}`;
        } else text += c;
      }
      parts.push({ bytes: prefix.includes('b'), text });
    }
    if (parts.length === 0) return undefined;
    if (parts.some((p) => p.bytes !== parts[0]!.bytes)) this.fail();
    const joined = parts.map((p) => p.text).join('');
    return parts[0]!.bytes ? { bytes: joined } : joined;
  }

  escape(bytes: boolean): string {
    const e = this.s[this.i++];
    if (e === undefined) this.fail();
    const simple: Record<string, string> = { '\n': '', '\\': '\\', "'": "'", '"': '"', a: '\x07', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v' };
    if (e in simple) return simple[e]!;
    if (e === '\r') {
      if (this.s[this.i] === '\n') this.i++;
      return '';
    }
    if (/[0-7]/.test(e)) {
      let digits = e;
      while (digits.length < 3 && /[0-7]/.test(this.s[this.i] ?? '')) digits += this.s[this.i++];
      return String.fromCodePoint(parseInt(digits, 8));
    }
    const width = e === 'x' ? 2 : !bytes && e === 'u' ? 4 : !bytes && e === 'U' ? 8 : 0;
    if (width > 0) {
      const hex = this.s.slice(this.i, this.i + width);
      if (!new RegExp(`^[0-9a-fA-F]{${width}}$`).test(hex)) this.fail();
      this.i += width;
      const code = parseInt(hex, 16);
      if (code > 0x10ffff) this.fail();
      return String.fromCodePoint(code);
    }
    // \N{NAME} needs the Unicode name table: not read here (the judges' replies do not use it).
    if (e === 'N' && !bytes) this.fail();
    return `\\${e}`;
  }
}

/** Python's `float(x)` of a literal value: numbers and bools, strings as `float(str)`; undefined where it raises. */
export function pyFloatOf(value: PyValue | undefined): number | undefined {
  if (typeof value === 'number') return value;
  if (typeof value === 'boolean') return value ? 1 : 0;
  if (typeof value === 'string') return pyFloat(value);
  return undefined;
}
