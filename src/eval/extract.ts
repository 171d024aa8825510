// Answer extraction as the official `evaluation/benchmarks/*.py` do it (`process_response`), quirks included, and the
// documented robust extractor. An answer the official code cannot parse (it raises, asserts, or reads an undefined
// name) is returned as `{ ok: false, reason }`: counted wrong and listed, never a crash.
import { letters, levenshtein, pyFloat, pyFloatOf, pyLiteral, pySplit, pyStrip } from './python.js';

export type Extracted<T> = { ok: true; value: T; note?: string } | { ok: false; reason: string };

/** How answers are read: as the official code does (the default), or the robust extractor (README, "Evaluation"). */
export type ExtractMode = 'official' | 'robust';

const fail = (reason: string): Extracted<never> => ({ ok: false, reason });
const ok = <T>(value: T, note?: string): Extracted<T> => (note ? { ok: true, value, note } : { ok: true, value });

/** Python's `str.replace('answer', '').replace('Answer', '')`, the first step of every MCQ extractor. */
const dropAnswerWord = (response: string) => response.replaceAll('answer', '').replaceAll('Answer', '');

/** `letters.index(x)`, failing as Python's ValueError does. */
function indexOf(list: readonly string[], item: string): Extracted<number> {
  const i = list.indexOf(item);
  return i >= 0 ? ok(i) : fail(`${JSON.stringify(item)} is not in the list ${JSON.stringify(list)} (ValueError in the official code)`);
}

/**
 * MVBench, MLVU and NExT-QA (`mvbench.py`, `mlvu.py`, `nextqa.py`): the first match of `[\(,\ ]*[A-X][\),\ ]*`
 * (an option letter anywhere, even inside a word), stripped of whitespace and brackets; without a match, the first
 * option whose text is in the answer. MLVU and NExT-QA read an undefined name (`output`) there and crash:
 * `optionTextFallback: false`.
 */
export function officialLetterIndex(response: string, options: readonly string[], optionTextFallback: boolean): Extracted<number> {
  const L = letters(options.length);
  const r = dropAnswerWord(response);
  const m = new RegExp(`[(, ]*[${L[0]}-${L.at(-1)}][), ]*`).exec(r);
  if (!m) {
    if (!optionTextFallback) return fail('no option letter, and the option-text fallback reads an undefined name (NameError in the official code)');
    const i = options.findIndex((o) => r.toLowerCase().includes(pyStrip(pyStrip(o), '.').toLowerCase()));
    return i >= 0 ? ok(i, 'option text') : fail('no option letter and no option text in the answer');
  }
  return indexOf(L, pyStrip(pyStrip(m[0]), '()'));
}

/** EgoSchema (`egoschema.py`): `[\(\ ]*[A-E][\)\ ]*`, else the first option text contained in the answer. */
export function officialEgoSchema(response: string, options: readonly string[]): Extracted<number> {
  const r = dropAnswerWord(response);
  const m = /[( ]*[A-E][) ]*/.exec(r);
  if (!m) {
    const i = options.findIndex((o) => r.toLowerCase().includes(pyStrip(pyStrip(o), '.').toLowerCase()));
    return i >= 0 ? ok(i, 'option text') : fail('no option letter and no option text in the answer');
  }
  return indexOf(letters(5), pyStrip(pyStrip(m[0]), '()'));
}

/** PerceptionTest (`perception_test.py`): `\(*[A-C]\)*`; its fallback reads an undefined name (`_options`). */
export function officialPerceptionTest(response: string): Extracted<number> {
  const r = dropAnswerWord(response);
  const m = /\(*[A-C]\)*/.exec(r);
  if (!m) return fail('no option letter A-C, and the fallback reads an undefined name (NameError in the official code)');
  return indexOf(['(A)', '(B)', '(C)'], `(${pyStrip(pyStrip(m[0]), '()')})`);
}

const DIGIT_WORDS: Record<string, string> = { '1': 'one', '2': 'two', '3': 'three', '4': 'four', '5': 'five', '6': 'six', '7': 'seven', '8': 'eight', '9': 'nine', '0': 'zero' };

/** The option-text fallback of VideoMME and LongVideoBench, with digits also read as English words. */
function optionTextIndex(r: string, options: readonly string[]): number {
  return options.findIndex((o) => {
    const opt = pyStrip(pyStrip(o), '.');
    const opt2 = DIGIT_WORDS[opt] ?? opt;
    return r.toLowerCase().includes(opt.toLowerCase()) || r.toLowerCase().includes(opt2.toLowerCase());
  });
}

/**
 * VideoMME (`videomme.py`): options are "A. text"; their text is read with `[A-D]\. (.*).`, which drops the last
 * character (and an option not in that form makes the official code crash before anything else). The letter is
 * the first `[\(\ \[]*([A-D])[\)\.\ \]]*` group; else option text (digits also as words). Returns the letter.
 */
export function officialVideoMME(response: string, options: readonly string[]): Extracted<string> {
  const texts: string[] = [];
  for (const o of options) {
    const m = /[A-D]\. (.*)./.exec(o);
    if (!m) return fail(`option ${JSON.stringify(o)} is not of the form "X. text" (IndexError in the official code)`);
    texts.push(m[1]!);
  }
  const r = dropAnswerWord(response);
  const m = /[( []*([A-D])[). \]]*/.exec(r);
  if (m) return ok(m[1]!);
  const i = optionTextIndex(r, texts);
  return i >= 0 ? ok('ABCD'[i]!, 'option text') : fail('no option letter and no option text in the answer');
}

/** LongVideoBench (`longvideobench.py`): as VideoMME over its own letters and the options' full text. */
export function officialLongVideoBench(response: string, options: readonly string[]): Extracted<string> {
  const L = letters(options.length);
  const r = dropAnswerWord(response);
  const m = new RegExp(`[( []*([${L[0]}-${L.at(-1)}])[). \\]]*`).exec(r);
  if (m) return ok(m[1]!);
  const i = optionTextIndex(r, options);
  return i >= 0 ? ok(L[i]!, 'option text') : fail('no option letter and no option text in the answer');
}

/** LVBench (`lvbench.py`): the first `\b[A-D]\b` of the upper-cased answer (Python's Unicode word boundaries). */
export function officialLVBench(response: string): Extracted<string> {
  const m = /(?<![\p{L}\p{N}_])[A-D](?![\p{L}\p{N}_])/u.exec(response.toUpperCase());
  return m ? ok(m[0]) : fail('no standalone letter A-D (ValueError in the official code)');
}

/** AI2D (`ai2d.py`): `[\(\ ]*[A-D][\)\ ]*`; no match is the official "None", counted wrong. */
export function officialAI2D(response: string): Extracted<number> {
  const m = /[( ]*[A-D][) ]*/.exec(dropAnswerWord(response));
  if (!m) return fail('no option letter A-D (the official code predicts None)');
  return indexOf(letters(4), pyStrip(pyStrip(m[0]), '()'));
}

/**
 * MMMU (`mmmu.py`): the first `boxed{...}`; for multiple choice, "(X)" candidates, else " X " candidates, else (for
 * answers of more than five words) options whose text is in the answer; several candidates: the one found last; none:
 * a random choice (here a deterministic one from `seed`, noted). Open questions: the answer itself.
 */
export function officialMMMU(response: string, options: readonly string[], multipleChoice: boolean, seed: number): Extracted<string> {
  const boxed = /boxed\{([^}]*)\}/.exec(response);
  if (boxed) return ok(boxed[1]!);
  if (!multipleChoice) return ok(response);
  const all = letters(options.length);
  let r = response;
  for (const c of [',', '.', '!', '?', ';', ':', "'"]) r = pyStrip(r, c);
  r = ` ${r} `;
  let indexAnswer = true;
  let withBrackets = false;
  let candidates: string[] = all.filter((c) => r.includes(`(${c})`));
  if (candidates.length > 0) withBrackets = true;
  else candidates = all.filter((c) => r.includes(` ${c} `));
  if (candidates.length === 0 && pySplit(r).length > 5) {
    candidates = all.filter((_, i) => r.toLowerCase().includes(options[i]!.toLowerCase()));
    if (candidates.length > 0) indexAnswer = false;
  }
  if (candidates.length === 0) return ok(all[seed % all.length]!, 'random choice: no option found (as the official code)');
  if (candidates.length === 1) return ok(candidates[0]!);
  const at = candidates.map((c) =>
    indexAnswer ? r.lastIndexOf(withBrackets ? `(${c})` : ` ${c} `) : r.toLowerCase().lastIndexOf(options[c.charCodeAt(0) - 65]!.toLowerCase()),
  );
  return ok(candidates[at.indexOf(Math.max(...at))]!);
}

/** TempCompass (`tempcompass.py`): prefix matching against the gold answer; returns the gold answer or the response. */
export function officialTempCompass(format: 'yes_no' | 'caption_matching' | 'multi-choice', response: string, answer: string): Extracted<string> {
  const lower = response.toLowerCase();
  if (format === 'yes_no') {
    if (!lower.includes('yes') && !lower.includes('no')) return fail('neither "yes" nor "no" in the answer (AssertionError in the official code)');
    return ok(lower.startsWith(answer) ? answer : response);
  }
  if (format === 'caption_matching') {
    let pred = lower;
    let gt = pyStrip(answer.split(':')[0]!).toLowerCase();
    for (const word of ['option', 'sentence', 'caption']) {
      gt = pyStrip(gt.replaceAll(word, ''));
      pred = pyStrip(pred.replaceAll(word, ''));
    }
    return ok(pred.startsWith(gt) ? answer : response);
  }
  const gt = pyStrip(answer.split('.')[0]!).toLowerCase();
  return ok(lower.startsWith(gt) ? answer : response);
}

/** Charades-STA (`charades_sta.py`): "a - b" / "a to b" spans, else all numbers paired (an odd count drops the first). */
export function officialCharadesSpans(response: string): [number, number][] {
  const num = '(\\d+\\.?\\d*|\\d*\\.\\d+)';
  const ws = '[\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]*';
  const spans = [...response.matchAll(new RegExp(`${num}${ws}(?:-|to)${ws}${num}`, 'g'))];
  if (spans.length > 0) return spans.map((m) => [Number(m[1]), Number(m[2])]);
  const numbers = [...response.matchAll(/\d*\.?\d+/g)].map((m) => Number(m[0]));
  if (numbers.length % 2 !== 0) numbers.shift();
  const out: [number, number][] = [];
  for (let i = 0; i + 1 < numbers.length; i += 2) out.push([numbers[i]!, numbers[i + 1]!]);
  return out;
}

/** MME (`mme.py`): "Yes" if "yes" is in the answer, else "No" if "no" is (so "not", "know" read as No), else "other". */
export function officialMME(response: string): 'Yes' | 'No' | 'other' {
  const lower = response.toLowerCase();
  return lower.includes('yes') ? 'Yes' : lower.includes('no') ? 'No' : 'other';
}

/** GQA (`gqa.py`): stripped of whitespace, then of dots at both ends, lower-cased. */
export const officialGQA = (response: string): string => pyStrip(pyStrip(response), '.').toLowerCase();

/**
 * The robust multiple-choice extractor (`--robust`): a letter opening the answer ("B", "(B)", "B." ...), else after
 * "answer/option/choice (is)", else in brackets, else standing alone (not inside a word), else the option whose text
 * the answer contains (the longest such). Options may carry their own "A. " prefix (VideoMME). Never throws.
 */
export function robustLetterIndex(response: string, options: readonly string[]): Extracted<number> {
  const L = letters(options.length);
  const r = pyStrip(response);
  const valid = (c: string | undefined) => (c !== undefined && L.includes(c) ? L.indexOf(c) : -1);
  const patterns = [
    /^[([]?([A-Z])(?![\p{L}\p{N}])/u,
    /(?:answer|option|choice)\s*(?:is|:)?\s*[([]?([A-Z])(?![\p{L}\p{N}])/iu,
    /[([]([A-Z])[)\]]/u,
  ];
  for (const p of patterns) {
    const i = valid(p.exec(r)?.[1]);
    if (i >= 0) return ok(i);
  }
  for (const m of r.matchAll(/(?<![\p{L}\p{N}_'’])([A-Z])(?![\p{L}\p{N}_'’])/gu)) {
    const i = valid(m[1]);
    if (i >= 0) return ok(i);
  }
  const lower = r.toLowerCase();
  let best = -1;
  let bestLength = 0;
  options.forEach((o, i) => {
    const text = pyStrip(pyStrip(o.replace(/^[A-Z][.)]\s+/, '')), '.').toLowerCase();
    if (text.length > bestLength && lower.includes(text)) [best, bestLength] = [i, text.length];
  });
  return best >= 0 ? ok(best, 'option text') : fail('no option letter and no option text in the answer');
}

/** ChartQA's relaxed correctness (`chartqa.py`, after pix2struct): 5 % on numbers, also against ×100 and ÷100. */
export function relaxedCorrectness(target: string, prediction: string, maxRelativeChange = 0.05): boolean | 'text' {
  const toFloat = (text: string) => {
    if (text.endsWith('%')) {
      const v = pyFloat(text.replace(/%+$/, ''));
      return v === undefined ? undefined : v / 100;
    }
    return pyFloat(text);
  };
  const p = toFloat(prediction);
  const t = toFloat(target);
  if (p !== undefined && t !== undefined && t !== 0) {
    const change = Math.abs(p - t) / Math.abs(t);
    const change1 = Math.abs(p - t / 100) / Math.abs(t / 100);
    const change2 = Math.abs(p / 100 - t) / Math.abs(t);
    return change <= maxRelativeChange || change1 <= maxRelativeChange || change2 <= maxRelativeChange;
  }
  // Not both numbers (or a zero target): exact match, else the official code asks its GPT judge.
  return prediction.toLowerCase() === target.toLowerCase() ? true : 'text';
}

/**
 * DocVQA / InfoVQA ANLS as `docvqa.py` computes it: 1 − the smallest normalised edit distance over the references,
 * the distance between the whitespace-collapsed lower-cased strings, divided by the longer *raw* upper-cased length,
 * with no 0.5 threshold.
 */
export function anls(references: readonly string[], prediction: string): number {
  const norm = (s: string) => pySplit(pyStrip(s).toLowerCase()).join(' ');
  const values = references.map((answer) => {
    const length = Math.max([...answer.toUpperCase()].length, [...prediction.toUpperCase()].length);
    return length === 0 ? 0 : levenshtein(norm(answer), norm(prediction)) / length;
  });
  return 1 - Math.min(...values);
}

/** OCRBench (`ocrbench.py`): a reference contained in the answer (HME100k: spaces removed, case kept). */
export function ocrbenchCorrect(references: string | readonly string[], response: string, datasetName: string): boolean {
  const refs = typeof references === 'string' ? [references] : references;
  if (datasetName === 'HME100k') {
    const clean = (s: string) => pyStrip(s).replaceAll('\n', ' ').replaceAll(' ', '');
    return refs.some((a) => clean(response).includes(clean(a)));
  }
  const clean = (s: string) => pyStrip(s.toLowerCase()).replaceAll('\n', ' ');
  return refs.some((a) => clean(response).includes(clean(a)));
}

/**
 * The ActivityNet-QA judge's reply (`activitynet_qa.py`): `ast.literal_eval` of the whole reply, a dict whose
 * `float(score)` is the score and whose `pred == 'yes'` (exactly) is a match. A reply it cannot read is asked again in
 * the official code (without end); here the last of a few is counted (no match, score 0) and listed. `--robust`
 * also reads the first dict written inside other text (a code fence, a sentence around it).
 */
export function activitynetVerdict(reply: string, mode: ExtractMode): Extracted<{ match: boolean; score: number }> {
  const read = (text: string): Extracted<{ match: boolean; score: number }> => {
    const parsed = pyLiteral(text);
    if (!parsed) return fail('the judge reply is not a Python literal (ast.literal_eval fails)');
    const d = parsed.value;
    if (!(d instanceof Map)) return fail('the judge reply is not a dict');
    if (!d.has('score')) return fail("the judge reply has no 'score'");
    const score = pyFloatOf(d.get('score'));
    if (score === undefined) return fail(`the judge's score ${JSON.stringify(d.get('score'))} is not a number (float() fails)`);
    if (!d.has('pred')) return fail("the judge reply has no 'pred'");
    return ok({ match: d.get('pred') === 'yes', score });
  };
  const official = read(reply);
  if (official.ok || mode === 'official') return official;
  for (const m of reply.matchAll(/\{[^{}]*\}/g)) {
    const e = read(m[0]);
    if (e.ok) return e;
  }
  return official;
}

/**
 * The TempCompass captioning judge's choice (`tempcompass.py`): the first "Answer: X" (X in A-D) or "Answer: None";
 * none of them reads as "None" (counted wrong), listed here as unparsed.
 */
export function captionJudgeChoice(reply: string): Extracted<string> {
  const m = /Answer: (?:[A-D]|None)/.exec(reply);
  return m ? ok(pyStrip(m[0].split('Answer:')[1]!)) : fail('no "Answer: A-D" or "Answer: None" in the judge reply (the official code reads it as None)');
}

/** ChartQA's judge (`chartqa.py`): the answer is accepted when "true" is anywhere in the lower-cased reply. */
export const chartqaJudgeAccepts = (reply: string): boolean => reply.toLowerCase().includes('true');
