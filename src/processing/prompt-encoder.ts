/**
 * The encoding behind `Tokenizer.encodePrompt`: added-token splitting, escapes, safe cut points, the token limit.
 *
 * The prompt is split at added tokens here (leftmost-longest, as the added vocabulary of `@huggingface/tokenizers`
 * splits tokens without strip flags), and the text between them goes to a second tokenizer built without added
 * tokens, so that escaped user text (see `ESCAPE`) is tokenised as plain text. Long stretches of text are cut at
 * points where cutting provably changes nothing (see `CUT_POINT`), so that work can stop after any piece: when the
 * prompt passes a token limit, or when the request is cancelled. This runs on the caller's thread for short prompts
 * and on the tokenizer's worker thread for long ones.
 */
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { isPlainObject } from './json-file.js';

/**
 * The escape character, U+10FFFD: a private-use code point of plane 16, which text almost never contains, so that
 * escaping almost never changes a text that has no added-token strings in it.
 *
 * `escape()` replaces the first character of every place where an added token would be matched by ESCAPE and a code
 * (U+10FF00 for the first of the characters that added tokens start with, in code point order, U+10FF01 for the
 * next...), and doubles every ESCAPE. The escaped text thus holds no added-token string at all (so that placeholder
 * counting such as `expandImageTokens` does not see typed `<image>`s either). It is made of whole units, a character
 * or an ESCAPE pair, and never ends inside one, so it reads back the same when a chat template embeds it in a larger
 * string (whose own text must not contain ESCAPE). An ESCAPE followed by anything else is an ordinary character.
 */
export const ESCAPE = '\u{10FFFD}';
const ESCAPE_CODES = 0x10ff00;

/** Plain text is cut into pieces of about this many UTF-16 units (8-16 KB): a piece is what cannot be interrupted. */
export const PIECE_LENGTH = 8192;

/** Rejection of `encodePrompt` when the prompt has more tokens than `maxTokens` allows. */
export class PromptTooLongError extends Error {
  override readonly name = 'PromptTooLongError';
  constructor(readonly limit: number) {
    super(`the prompt has more than ${limit} tokens`);
  }
}

export interface PromptLimits {
  /** Stop, throwing `PromptTooLongError`, as soon as more ids than this have been produced. */
  maxTokens?: number;
  /** Ids equal to this one (the `<image>` id) are not counted against `maxTokens`. */
  countExcept?: number;
}

export interface AddedTokenSpec {
  content: string;
  id: number;
}

/** What the worker checks to be sure it rebuilt the same encoder as the caller's thread. */
export interface EncoderSummary {
  tokens: AddedTokenSpec[];
  cutting: boolean;
  maxTokenBytes: number;
}

/** The Qwen2 pre-tokenizer regex, whose boundaries `CUT_POINT` is proven for (and the normalizer NFC). */
const QWEN2_SPLIT_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/** "Solid" characters: whitespace in no regex flavour (White_Space lies within Cc, Zs, Zl and Zp). */
const SOLID = '[\\p{L}\\p{M}\\p{N}\\p{P}\\p{S}]';

/**
 * Where NFC text may be cut without changing its ids: (1) after "\n" when a solid character follows, (2) before " "
 * when a solid character precedes it.
 *
 * The pre-tokens are the successive matches of QWEN2_SPLIT_REGEX, which leave no gaps, and BPE sees each pre-token
 * alone; so a cut is exact if (a) a match of the whole text ends at the cut, (b) the text cut off there has the same
 * matches, and (c) the rest has the same matches on its own.
 * (a) The match holding the character before the cut cannot go on past it. In (1) that "\n" lies in `[\r\n]*` after
 *     punctuation or in `\s*[\r\n]+` (`\s+(?!\S)` comes later and never sees a run with a newline in it), and
 *     neither takes a solid character. In (2) only the `\s` runs take a space, and they hold no solid character; the
 *     optional spaces of ` ?[^\s\p{L}\p{N}]+` and `[^\r\n\p{L}\p{N}]?\p{L}+` lead their match, they do not follow.
 * (b) An attempt can only end differently at the end of the text if it reads the character after the cut, so it has
 *     consumed the one before: the contraction literals fail alike on " ", on a solid character and at the end,
 *     greedy runs stop alike, and the one lookahead, `(?!\S)`, is never reached that way (see (a)).
 * (c) The regex has no lookbehind: a match depends only on the text from its start on.
 * NFC: " " and "\n" are starters that compose with nothing on either side (tested for every code point), so both
 * sides of such a cut of NFC text are NFC text; the tokenizer normalises each piece again and leaves it as it is.
 * Solid characters keep this true whether `\s` means `\p{White_Space}` (this library) or Oniguruma's `\s`.
 */
const CUT_POINT = new RegExp(`(?<=\\n)(?=${SOLID})|(?= )(?<=${SOLID})`, 'gu');

/** The characters that byte-level BPE writes bytes with (printable Latin-1 as itself, other bytes from U+0100). */
const BYTE_LEVEL_TOKEN = /^[\u0021-\u007e\u00a1-\u00ac\u00ae-\u0143]*$/;

const isHighSurrogate = (unit: number) => unit >= 0xd800 && unit <= 0xdbff;
const isLowSurrogate = (unit: number) => unit >= 0xdc00 && unit <= 0xdfff;

/** `s` as a literal in a `u`-flag regex (where escaping a character that needs none is an error). */
function literal(s: string): string {
  return s.replace(/[\\^$.*+?()[\]{}|/]/g, '\\$&');
}

/** Whether tokenizer.json and the config pre-tokenize exactly as Qwen2 does, the case CUT_POINT is proven for. */
function hasQwen2PreTokenization(json: Record<string, unknown>, config: Record<string, unknown>): boolean {
  const { normalizer, pre_tokenizer: pre, model } = json;
  if (!isPlainObject(normalizer) || normalizer.type !== 'NFC') return false;
  if (!isPlainObject(model) || model.type !== 'BPE' || (model.dropout ?? null) !== null) return false;
  // These options make the library rewrite the text before normalising it.
  if (config.remove_space === true || config.do_lowercase_and_remove_accent === true) return false;
  if (!isPlainObject(pre) || pre.type !== 'Sequence' || !Array.isArray(pre.pretokenizers) || pre.pretokenizers.length !== 2) return false;
  const [split, byteLevel] = pre.pretokenizers as unknown[];
  return (
    isPlainObject(split) &&
    split.type === 'Split' &&
    isPlainObject(split.pattern) &&
    split.pattern.Regex === QWEN2_SPLIT_REGEX &&
    split.behavior === 'Isolated' &&
    split.invert === false &&
    isPlainObject(byteLevel) &&
    byteLevel.type === 'ByteLevel' &&
    byteLevel.add_prefix_space === false &&
    byteLevel.use_regex === false
  );
}

/**
 * The added tokens of tokenizer.json, and why encodePrompt cannot split at them as the library does (flags that make
 * splitting depend on more than the strings), if it cannot.
 */
function addedTokens(json: Record<string, unknown>): { tokens: AddedTokenSpec[]; unsupported?: string } {
  const list = Array.isArray(json.added_tokens) ? json.added_tokens : [];
  const tokens: AddedTokenSpec[] = [];
  let unsupported: string | undefined;
  for (const entry of list as unknown[]) {
    if (!isPlainObject(entry) || typeof entry.content !== 'string' || typeof entry.id !== 'number') {
      throw new Error(`malformed added token ${JSON.stringify(entry)}`);
    }
    const { content, id } = entry;
    // The library's default for `normalized` is `!special`.
    const normalized = entry.normalized ?? entry.special !== true;
    if (entry.lstrip === true || entry.rstrip === true || entry.single_word === true || normalized !== false) {
      unsupported ??= `added token ${JSON.stringify(content)} has lstrip/rstrip/single_word/normalized flags, which encodePrompt does not support`;
    }
    if (content.length === 0 || /[\u{10FF00}-\u{10FFFD}]/u.test(content)) {
      unsupported ??= `added token ${JSON.stringify(content)} cannot be escaped`;
    }
    tokens.push({ content, id });
  }
  if (new Set(tokens.map((t) => t.content.codePointAt(0))).size > ESCAPE.codePointAt(0)! - ESCAPE_CODES) {
    unsupported ??= 'added tokens start with too many different characters to escape them all';
  }
  return { tokens, unsupported };
}

/**
 * Whether BPE can never output the string of an added token outside the vocabulary (`outside`). The model of a
 * tokenizer with added tokens also maps their strings to their ids, so only then does it encode plain text as one
 * without them does. A plain BPE model (no word suffixes or prefixes, no byte fallback or ignore_merges, an unknown
 * token in the vocabulary if any) outputs single characters of a pre-token, results of merges, vocabulary entries and
 * its unknown token.
 */
function bpeNeverMakesAddedTokens(model: Record<string, unknown>, outside: ReadonlySet<string>): boolean {
  const vocab = isPlainObject(model.vocab) ? model.vocab : {};
  const { unk_token: unk } = model;
  // ignore_merges outputs a whole pre-token that the model's map holds, and a shared map holds the added tokens too.
  if (model.end_of_word_suffix || model.continuing_subword_prefix || model.continuing_subword_suffix || model.byte_fallback || model.ignore_merges) {
    return false;
  }
  if (unk !== null && unk !== undefined && !(typeof unk === 'string' && Object.hasOwn(vocab, unk))) return false;
  if ([...outside].some((c) => [...c].length === 1)) return false;
  if (outside.size === 0) return true;
  const lengths = new Set([...outside].map((c) => c.length));
  const merges = Array.isArray(model.merges) ? (model.merges as unknown[]) : [];
  return merges.every((m) => {
    const [a = '', b = ''] = Array.isArray(m) ? (m as string[]) : String(m).split(' ', 2);
    return !lengths.has(a.length + b.length) || !outside.has(a + b);
  });
}

export class PromptEncoder {
  readonly summary: EncoderSummary;
  private readonly ids: ReadonlyMap<string, number>;
  private readonly addedIds: ReadonlySet<number>;
  /** Added tokens (longest first, so that alternation finds the longest at the leftmost place) and escapes. */
  private readonly scan: RegExp;
  /** The same, anchored at lastIndex: for measuring a prompt's plain text without searching ahead. */
  private readonly scanAt: RegExp;
  /** Added tokens and ESCAPE, for escaping user text. */
  private readonly unsafe: RegExp;
  /** The escape of the first character of an added token, by that character. */
  private readonly escapeOf: ReadonlyMap<string, string>;
  /** What an escape (ESCAPE and its code) stands for. */
  private readonly escaped: ReadonlyMap<string, string>;
  /** First UTF-16 units of whatever `scan` matches, to skip plain characters without running it. */
  private readonly scanStarts: ReadonlySet<number>;

  private constructor(
    private readonly plain: HfTokenizer,
    tokens: AddedTokenSpec[],
    /** Why this encoder cannot be used (it still knows maxTokenBytes), if it cannot. */
    private readonly unsupported: string | undefined,
    /** Whether plain text may be cut at CUT_POINT (false: each stretch between added tokens is encoded whole). */
    readonly cutting: boolean,
    /** Byte length of the longest token: no token covers more bytes of the (normalised) text. */
    readonly maxTokenBytes: number,
    /**
     * `len(tokenizer)` of transformers: the distinct strings of the model's vocabulary and the added tokens. Counted
     * here, where the vocabulary's keys are listed anyway: the library's `get_vocab` builds a map of every token (~50
     * ms a load).
     */
    readonly vocabularySize: number,
    private readonly pieceLength: number,
  ) {
    this.summary = { tokens, cutting, maxTokenBytes };
    // An empty token (refused by `unsupported`) would match everywhere.
    const matchable = tokens.filter((t) => t.content.length > 0);
    this.ids = new Map(matchable.map((t) => [t.content, t.id]));
    this.addedIds = new Set(this.ids.values());
    const longestFirst = matchable.map((t) => t.content).sort((a, b) => b.length - a.length).map(literal);
    const firsts = [...new Set(matchable.map((t) => t.content.codePointAt(0)!))].sort((a, b) => a - b);
    const escapes: [string, string][] = firsts.map((c, k) => [String.fromCodePoint(c), ESCAPE + String.fromCodePoint(ESCAPE_CODES + k)]);
    this.escapeOf = new Map(escapes);
    this.escaped = new Map([[ESCAPE + ESCAPE, ESCAPE], ...escapes.map(([c, escape]): [string, string] => [escape, c])]);
    const source = [...[...this.escaped.keys()].map(literal), ...longestFirst].join('|');
    this.scan = new RegExp(source, 'gu');
    this.scanAt = new RegExp(source, 'uy');
    this.unsafe = new RegExp([literal(ESCAPE), ...longestFirst].join('|'), 'gu');
    this.scanStarts = new Set([ESCAPE, ...matchable.map((t) => t.content)].map((s) => s.charCodeAt(0)));
  }

  /**
   * Builds the encoder from a parsed tokenizer.json: a second `@huggingface/tokenizers` instance with `added_tokens`
   * emptied does the BPE. Given `shared`, the instance built from the same JSON with its added tokens, the second one
   * runs on `shared`'s BPE model where that gives the same ids (see `bpeNeverMakesAddedTokens`): building a model's
   * vocabulary maps and merge ranks is most of a tokenizer's load (0.4-0.5 s and 26 MB of heap for Qwen2's 151,643
   * tokens and 151,387 merges).
   * `pieceLength` is for tests, which cut far more often to exercise every kind of cut point.
   */
  static fromJson(json: Record<string, unknown>, config: Record<string, unknown>, shared?: HfTokenizer, pieceLength = PIECE_LENGTH): PromptEncoder {
    const { tokens, unsupported } = addedTokens(json);
    const vocabObject = isPlainObject(json.model) && isPlainObject(json.model.vocab) ? json.model.vocab : {};
    // Added tokens' strings outside the model's vocabulary.
    const outside = new Set(tokens.map((t) => t.content).filter((c) => !Object.hasOwn(vocabObject, c)));
    let plain: HfTokenizer;
    if (shared?.model && isPlainObject(json.model) && json.model.type === 'BPE' && bpeNeverMakesAddedTokens(json.model, outside)) {
      plain = new HfTokenizer({ ...json, added_tokens: [], model: { ...json.model, vocab: {}, merges: [] } }, config);
      plain.model = shared.model;
    } else {
      plain = new HfTokenizer({ ...json, added_tokens: [] }, config);
    }
    let maxTokenBytes = 0;
    const vocab = Object.keys(vocabObject);
    for (const token of vocab) {
      // A byte-level entry has one character per byte; anything else is counted by its UTF-8, which is more.
      const bytes = BYTE_LEVEL_TOKEN.test(token) ? token.length : Buffer.byteLength(token);
      maxTokenBytes = Math.max(maxTokenBytes, bytes);
    }
    for (const { content } of tokens) maxTokenBytes = Math.max(maxTokenBytes, Buffer.byteLength(content));
    return new PromptEncoder(plain, tokens, unsupported, hasQwen2PreTokenization(json, config), maxTokenBytes, vocab.length + outside.size, pieceLength);
  }

  /** Whether plain text is encoded on `tokenizer`'s BPE model (the one `fromJson` was given, where it could share it). */
  runsOnModelOf(tokenizer: HfTokenizer): boolean {
    return this.plain.model === tokenizer.model;
  }

  /** `text` with every added-token string escaped (see ESCAPE); unchanged when it has none and no ESCAPE. */
  escape(text: string): string {
    this.checkSupported();
    const unsafe = new RegExp(this.unsafe);
    let out = '';
    let from = 0;
    for (let m = unsafe.exec(text); m !== null; m = unsafe.exec(text)) {
      const first = String.fromCodePoint(m[0].codePointAt(0)!);
      out += text.slice(from, m.index) + (first === ESCAPE ? ESCAPE + ESCAPE : this.escapeOf.get(first));
      // Scanning on from the second character, as the prompt scan will, escapes any added token inside this one too.
      from = unsafe.lastIndex = m.index + first.length;
    }
    return out.length === 0 ? text : out + text.slice(from);
  }

  /** Whether `text` holds more than `limit` UTF-16 units outside added tokens; reads at most about that much. */
  plainLengthExceeds(text: string, limit: number): boolean {
    if (text.length <= limit) return false;
    let plain = 0;
    for (let i = 0; i < text.length; ) {
      let step = 1;
      if (this.scanStarts.has(text.charCodeAt(i))) {
        this.scanAt.lastIndex = i;
        const m = this.scanAt.exec(text);
        if (m !== null && this.ids.has(m[0])) {
          i += m[0].length;
          continue;
        }
        if (m !== null) step = m[0].length;
      }
      i += step;
      plain += step;
      if (plain > limit) return true;
    }
    return false;
  }

  /**
   * The ids of `text`. `checkpoint` runs before each BPE piece and may throw to cancel. Throws PromptTooLongError as
   * soon as more than `maxTokens` counted ids exist, or as soon as the bytes left to encode prove that there will be.
   */
  encode(text: string, limits: PromptLimits = {}, checkpoint?: () => void): number[] {
    this.checkSupported();
    const { maxTokens = Infinity, countExcept } = limits;
    // Plain text yields no added-token id, so when only such an id is exempt, every id of plain text counts.
    const boundByBytes = this.cutting && maxTokens !== Infinity && (countExcept === undefined || this.addedIds.has(countExcept));
    const ids: number[] = [];
    let counted = 0;
    for (const item of this.items(text)) {
      if (typeof item === 'number') {
        ids.push(item);
        if (item !== countExcept && ++counted > maxTokens) throw new PromptTooLongError(maxTokens);
        continue;
      }
      // With the pre-tokenizer known, normalising here is what the tokenizer would do to the whole stretch.
      const normalized = this.cutting ? item.normalize('NFC') : item;
      // Each token covers at most maxTokenBytes bytes of the text, so the text needs at least this many tokens.
      if (boundByBytes && counted + Math.ceil(Buffer.byteLength(normalized) / this.maxTokenBytes) > maxTokens) {
        throw new PromptTooLongError(maxTokens);
      }
      for (const piece of this.pieces(normalized)) {
        checkpoint?.();
        for (const id of this.plain.encode(piece, { add_special_tokens: false }).ids) {
          ids.push(id);
          if (id !== countExcept) counted++;
        }
        if (counted > maxTokens) throw new PromptTooLongError(maxTokens);
      }
    }
    return ids;
  }

  checkSupported(): void {
    if (this.unsupported !== undefined) throw new Error(this.unsupported);
  }

  /** The prompt in order: ids of added tokens, and the plain text between them with escapes undone. */
  private *items(text: string): Generator<number | string> {
    const scan = new RegExp(this.scan);
    let segment = '';
    let from = 0;
    for (let m = scan.exec(text); m !== null; m = scan.exec(text)) {
      segment += text.slice(from, m.index);
      from = m.index + m[0].length;
      const id = this.ids.get(m[0]);
      if (id === undefined) {
        segment += this.escaped.get(m[0])!;
        continue;
      }
      if (segment.length > 0) yield segment;
      segment = '';
      yield id;
    }
    segment += text.slice(from);
    if (segment.length > 0) yield segment;
  }

  /** `text` (NFC) cut into pieces of at least pieceLength units at CUT_POINT; whole when it has no cut point. */
  private *pieces(text: string): Generator<string> {
    let start = 0;
    if (this.cutting) {
      const cutPoint = new RegExp(CUT_POINT);
      while (text.length - start > this.pieceLength) {
        let from = start + this.pieceLength;
        // A `u` regex started inside a surrogate pair starts at the pair, which could be `start` itself.
        if (isLowSurrogate(text.charCodeAt(from)) && isHighSurrogate(text.charCodeAt(from - 1))) from++;
        cutPoint.lastIndex = from;
        const cut = cutPoint.exec(text);
        if (cut === null) break;
        yield text.slice(start, cut.index);
        start = cut.index;
      }
    }
    yield text.slice(start);
  }
}
