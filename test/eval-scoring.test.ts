// Every answer extractor and scorer of `vl3 eval` against hand-made answers, with the results the official
// `evaluation/benchmarks/*.py` give for them worked out by hand from that code (quirks included).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createHash } from 'node:crypto';
import {
  activitynetVerdict, anls, captionJudgeChoice, chartqaJudgeAccepts, ocrbenchCorrect, officialAI2D, officialCharadesSpans, officialEgoSchema, officialGQA, officialLetterIndex, officialLongVideoBench, officialLVBench, officialMME, officialMMMU,
  officialPerceptionTest, officialTempCompass, officialVideoMME, relaxedCorrectness, robustLetterIndex, type Extracted,
} from '../src/eval/extract.js';
import { activitynetJudgeMessages, captionJudgeMessages, chartqaJudgeMessages } from '../src/eval/judge-prompts.js';
import { levenshtein, pyFloat, pyLiteral, pySplit, pyStringList, pyStrip, type PyValue } from '../src/eval/python.js';
import { groundingIoU, interleaveSubtitles, subtitlesAt } from '../src/eval/video.js';
import { mmmuContent } from '../src/eval/image.js';
import { accuracySection } from '../src/eval/types.js';

const value = <T>(e: Extracted<T>) => (e.ok ? e.value : 'FAIL');
const FOUR = ['cat', 'dog', 'bird', 'fish'];

describe('eval: official extractors', () => {
  it('MVBench / MLVU / NExT-QA letters', () => {
    const cases: [string, boolean, number | 'FAIL'][] = [
      ['(B) the cat', true, 1],
      ['Based on the video, C', true, 1], // the "B" of "Based": letters inside words count
      ['answer: D', true, 3], // "answer" is removed first
      ['A, B', true, 'FAIL'], // "A, " strips to "A,", not a letter: ValueError
      ['the dog', true, 1], // option text
      ['the dog', false, 'FAIL'], // MLVU / NExT-QA read an undefined name there
      ['nothing', true, 'FAIL'],
      ['E', true, 'FAIL'], // outside A-D
    ];
    for (const [r, fallback, want] of cases) assert.equal(value(officialLetterIndex(r, FOUR, fallback)), want, r);
  });

  it('EgoSchema, PerceptionTest, AI2D, LVBench', () => {
    assert.equal(value(officialEgoSchema('(E) five', ['a', 'b', 'c', 'd', 'e'])), 4);
    assert.equal(value(officialEgoSchema('it is c', ['a', 'b', 'it', 'd', 'e'])), 2);
    assert.equal(value(officialPerceptionTest('((B))')), 1);
    assert.equal(value(officialPerceptionTest('the ball')), 'FAIL');
    assert.equal(value(officialAI2D('I pick (C)')), 2);
    assert.equal(value(officialAI2D('Definitely B')), 3); // the "D" of "Definitely"
    assert.equal(value(officialAI2D('xyz')), 'FAIL');
    assert.equal(value(officialLVBench('ANSWER: B')), 'B');
    assert.equal(value(officialLVBench('a')), 'A'); // upper-cased first
    assert.equal(value(officialLVBench('ÉA')), 'FAIL'); // Unicode word boundaries
  });

  it('VideoMME: option text loses its last character, digits read as words', () => {
    const options = ['A. red.', 'B. blue.', 'C. green.', 'D. 3.'];
    assert.equal(value(officialVideoMME('The answer is (C).', options)), 'C');
    assert.equal(value(officialVideoMME('blue', options)), 'B');
    assert.equal(value(officialVideoMME('three', options)), 'D');
    assert.equal(value(officialVideoMME('yes', ['A. x', 'B. yes'])), 'A'); // "A. x" reads as "": in every answer
    assert.equal(value(officialVideoMME('B', ['A: x', 'B. y'])), 'FAIL'); // not "X. text": IndexError first
    assert.equal(value(officialLongVideoBench('E.', ['a', 'b', 'c', 'd', 'e'])), 'E');
    assert.equal(value(officialLongVideoBench('seven', ['6', '7'])), 'B');
  });

  it('MMMU: brackets, bare letters, the last of several, option text, random, boxed', () => {
    assert.equal(value(officialMMMU('(B) because', FOUR, true, 0)), 'B');
    assert.equal(value(officialMMMU('I think A or C', FOUR, true, 0)), 'C');
    assert.equal(value(officialMMMU('so boxed{42} it is', FOUR, true, 0)), '42');
    assert.equal(value(officialMMMU('the answer is clearly the bird one here', FOUR, true, 0)), 'C');
    const random = officialMMMU('no idea', FOUR, true, 6);
    assert.ok(random.ok && random.value === 'C' && random.note?.startsWith('random'));
    assert.equal(value(officialMMMU(' 42 ', [], false, 0)), ' 42 ');
  });

  it('TempCompass prefix matching', () => {
    assert.equal(value(officialTempCompass('yes_no', 'Yes, it is.', 'yes')), 'yes');
    assert.equal(value(officialTempCompass('yes_no', 'Maybe', 'yes')), 'FAIL');
    assert.equal(value(officialTempCompass('yes_no', "I don't know", 'no')), "I don't know"); // "know" holds "no"
    assert.equal(value(officialTempCompass('multi-choice', 'B', 'B. slowly')), 'B. slowly');
    assert.equal(value(officialTempCompass('multi-choice', '(B)', 'B. slowly')), '(B)');
    assert.equal(value(officialTempCompass('caption_matching', 'Caption B', 'Caption B: a man runs')), 'Caption B: a man runs');
  });

  it('Charades-STA spans in every written form, and the IoU', () => {
    assert.deepEqual(officialCharadesSpans('from 2.5 to 7.0 seconds'), [[2.5, 7]]);
    assert.deepEqual(officialCharadesSpans('2.5-7'), [[2.5, 7]]);
    assert.deepEqual(officialCharadesSpans('.5 - 3.'), [[0.5, 3]]);
    assert.deepEqual(officialCharadesSpans('0 to 5, then 10 - 12.5'), [[0, 5], [10, 12.5]]);
    assert.deepEqual(officialCharadesSpans('starts at 3 and ends at 8, around 10'), [[8, 10]]); // odd count drops the first
    assert.deepEqual(officialCharadesSpans('never'), []);
    assert.equal(groundingIoU([[4, 10]], [2, 8]), 0.5);
    assert.equal(groundingIoU([[10, 4]], [2, 8]), 0.5);
    assert.equal(groundingIoU([[2, 4], [6, 8]], [2, 8]), 4 / 6);
    assert.equal(groundingIoU([], [2, 8]), 0);
  });

  it('MME, GQA, OCRBench', () => {
    assert.equal(officialMME('Not sure'), 'No');
    assert.equal(officialMME('yes'), 'Yes');
    assert.equal(officialMME('maybe'), 'other');
    assert.equal(officialGQA(' Yes. '), 'yes');
    assert.equal(officialGQA('..left..'), 'left');
    assert.equal(ocrbenchCorrect(['Hello'], 'the word is HELLO world', 'IIIT5K'), true);
    assert.equal(ocrbenchCorrect('x ^ 2', 'x^2', 'HME100k'), true);
    assert.equal(ocrbenchCorrect('x ^ 2', 'X^2', 'HME100k'), false);
  });

  it('ANLS: whitespace, case, code points, no 0.5 threshold', () => {
    assert.equal(anls(['Hello World'], 'hello  world '), 1);
    assert.equal(anls(['abc'], 'abd'), 1 - 1 / 3);
    assert.equal(anls(['straße'], 'STRASSE'), 1 - 2 / 7); // lengths of the upper-cased raw strings
    assert.equal(anls([''], ''), 1);
    assert.equal(anls(['a😀'], 'a'), 0.5);
    assert.equal(anls(['xyz', 'abc'], 'abc'), 1);
    assert.equal(anls(['abcdef'], 'uvwxyz'), 0);
  });

  it('ChartQA relaxed accuracy', () => {
    const cases: [string, string, boolean | 'text'][] = [
      ['50', '51', true],
      ['50', '53', false],
      ['50', '0.5', true], // against target / 100
      ['0.5', '50', true], // prediction / 100
      ['12%', '0.12', true],
      ['0', '0', true], // a zero target compares as text
      ['0', '0.0', 'text'],
      ['Yes', 'yes', true],
      ['1_000', '1000', true],
      ['100', '1,000', 'text'],
      ['inf', 'inf', false],
    ];
    for (const [t, p, want] of cases) assert.equal(relaxedCorrectness(t, p), want, `${t} vs ${p}`);
  });

  it('the robust extractor', () => {
    assert.equal(value(robustLetterIndex('Based on the video, C', FOUR)), 2);
    assert.equal(value(robustLetterIndex('The answer is (B).', FOUR)), 1);
    assert.equal(value(robustLetterIndex("I'd pick D", FOUR)), 3);
    assert.equal(value(robustLetterIndex('a fish, surely', FOUR)), 3);
    assert.equal(value(robustLetterIndex('green', ['A. red', 'B. green'])), 1);
    assert.equal(value(robustLetterIndex('nothing', FOUR)), 'FAIL');
  });
});

describe('eval: Python semantics and prompt pieces', () => {
  it('float(), strip, split, list literals, Levenshtein', () => {
    assert.equal(pyFloat(' 1e3 '), 1000);
    assert.equal(pyFloat('1__0'), undefined);
    assert.equal(pyFloat('-Infinity'), -Infinity);
    assert.ok(Number.isNaN(pyFloat('nan')));
    assert.equal(pyFloat('1.'), 1);
    assert.equal(pyFloat('.'), undefined);
    assert.equal(pyStrip('\x1c a \x85'), 'a');
    assert.deepEqual(pySplit(' a\x1fb  c '), ['a', 'b', 'c']);
    assert.deepEqual(pyStringList(`['a', "b's", 'c\\'d']`), ['a', "b's", "c'd"]);
    assert.equal(pyStringList('[1, 2]'), undefined);
    assert.equal(levenshtein('kitten', 'sitting'), 3);
  });

  it('VideoMME subtitles at the sampled times; LongVideoBench interleaving', () => {
    const lines = [
      { start: 0, end: 1500, text: 'hi' },
      { start: 1500, end: 3000, text: 'there\\Nfriend' },
    ];
    assert.deepEqual(subtitlesAt(lines, [0, 1, 2, 3]), ['hi', 'there friend']);
    const subs = [
      { timestamp: [0.5, 1.5], text: 'a' },
      { timestamp: [3.2, null], text: 'b' },
      { start: '00:00:09.000', end: '00:00:09.500', line: 'off' },
    ];
    assert.deepEqual(interleaveSubtitles([0, 1, 2, 3, 4], subs, 0, 5, 'subs.json'), [0, 1, 'a', 2, 3, 4, 'b']);
  });

  it('MMMU places each image after its "<image k>:"', () => {
    const parts = mmmuContent('Compare <image 1> and <image 2>.', ['x', '<image 3>'], true, (k) => `img${k}`);
    assert.deepEqual(parts, [
      { type: 'text', text: 'Compare <image 1>:' },
      { type: 'image', path: 'img1' },
      { type: 'text', text: ' and <image 2>:' },
      { type: 'image', path: 'img2' },
      { type: 'text', text: '.\n\n(A):x\n(B):<image 3>:' },
      { type: 'image', path: 'img3' },
      { type: 'text', text: "\n\nAnswer with the option's letter from the given choices directly." },
    ]);
  });

  it('accuracy per task and overall', () => {
    const s = accuracySection('x', [{ task: 'b', correct: true }, { task: 'a', correct: false }, { task: 'b', correct: false }], ['a', 'b', 'c']);
    assert.deepEqual(s.rows, [{ task: 'a', value: 0, count: 1 }, { task: 'b', value: 50, count: 2 }]);
    assert.equal(s.overall.value, (1 / 3) * 100); // sum / len * 100, in that order, as the official code
  });
});

/** A literal as JSON-like data (dicts as objects) to compare; undefined where literal_eval raises. */
const literal = (text: string) => {
  const r = pyLiteral(text);
  const plain = (v: PyValue): unknown => (v instanceof Map ? Object.fromEntries([...v].map(([k, x]) => [String(k), plain(x)])) : Array.isArray(v) ? v.map(plain) : v);
  return r === undefined ? 'ERROR' : plain(r.value);
};

describe('eval: the GPT judges', () => {
  it('reads Python literals as ast.literal_eval does (results taken from Python 3.11)', () => {
    const cases: [string, unknown][] = [
      ["{'pred': 'yes', 'score': 4.8}", { pred: 'yes', score: 4.8 }],
      ["\n{'pred':'yes','score':4}", { pred: 'yes', score: 4 }],
      ["  {'a': 1}  \n", { a: 1 }],
      [" \n {'a': 1}", 'ERROR'], // an indented first line: IndentationError
      ["{'a': 1}.", 'ERROR'],
      ["```python\n{'a': 1}\n```", 'ERROR'],
      ["{'a': 1,}", { a: 1 }],
      ["{'a':\n 1} # comment", { a: 1 }],
      ["{'a': 'x' 'y', 'b': r'\\n', 'c': '\\x41\\u00e9'}", { a: 'xy', b: '\\n', c: 'Aé' }],
      ["{'a': -1_0, 'b': .5, 'c': 1e3, 'd': 0x10}", { a: -10, b: 0.5, c: 1000, d: 16 }],
      ["{'a': True, 'b': None, 'c': (1, 2), 'd': (1), 'e': ()}", { a: true, b: null, c: [1, 2], d: 1, e: [] }],
      ["{'a': 1+2j}", { a: { complex: [1, 2] } }],
      ["{'a': 1+2}", 'ERROR'],
      ["{'a': --1}", 'ERROR'],
      ["{'a': 01}", 'ERROR'],
      ["{'a': b'x' 'y'}", 'ERROR'], // bytes and str do not join
      ['{"pred": "no", "score": "3"}', { pred: 'no', score: '3' }],
    ];
    for (const [text, want] of cases) assert.deepEqual(literal(text), want, text);
  });

  it('ActivityNet-QA verdicts: float(score), pred == "yes" exactly, unreadable replies listed', () => {
    const v = (reply: string, mode: 'official' | 'robust' = 'official') => {
      const e = activitynetVerdict(reply, mode);
      return e.ok ? e.value : 'FAIL';
    };
    assert.deepEqual(v("{'pred': 'yes', 'score': 4.8}"), { match: true, score: 4.8 });
    assert.deepEqual(v("{'pred': 'Yes', 'score': 5}"), { match: false, score: 5 }); // "Yes" is not "yes"
    assert.deepEqual(v("{'pred': 'no', 'score': ' 2 '}"), { match: false, score: 2 }); // float(' 2 ')
    assert.deepEqual(v("{'pred': 'yes', 'score': True}"), { match: true, score: 1 });
    assert.equal(v("{'pred': 'yes', 'score': 'high'}"), 'FAIL');
    assert.equal(v("{'pred': 'yes'}"), 'FAIL');
    assert.equal(v("['yes', 4]"), 'FAIL');
    assert.equal(v("Sure! {'pred': 'yes', 'score': 4}"), 'FAIL');
    assert.deepEqual(v("Sure! {'pred': 'yes', 'score': 4}", 'robust'), { match: true, score: 4 });
    assert.deepEqual(v("```\n{'pred': 'no', 'score': 0}\n```", 'robust'), { match: false, score: 0 });
  });

  it('TempCompass captioning and ChartQA verdicts', () => {
    assert.deepEqual(captionJudgeChoice('Reasoning: x\nAnswer: B. walking'), { ok: true, value: 'B' });
    assert.deepEqual(captionJudgeChoice('Answer: None of them\nAnswer: A'), { ok: true, value: 'None' }); // the first found
    assert.equal(captionJudgeChoice('Answer: E').ok, false);
    assert.equal(captionJudgeChoice('answer: a').ok, false);
    assert.equal(chartqaJudgeAccepts('True'), true);
    assert.equal(chartqaJudgeAccepts('Not TRUE at all'), true); // "true" anywhere, as the official code reads it
    assert.equal(chartqaJudgeAccepts('False'), false);
  });

  it('asks with the official judge prompts, word for word (hashes of the texts the official Python code builds)', () => {
    const sha = (text: string) => createHash('sha256').update(text).digest('hex');
    const [system, user] = activitynetJudgeMessages('what is he doing', 'dancing', 'He dances.');
    assert.equal(sha(system!.content), '12b9e42d120081bf1e7f1999bb09db2db250add544abd3c183d61a2f938c6510');
    assert.equal(sha(user!.content), '4863bce2f67b27c904b06f1a5365b97fe9e7c009768094b02d1dba6a55c96d8f');
    assert.equal(sha(captionJudgeMessages('a man runs', "Info\nInformation A: {'x': 1}")[1]!.content), 'd788051df5238af9edd00125630306f0d690870f65e4cd7f99aef65f639640c2');
    assert.equal(sha(chartqaJudgeMessages('Which bar is the longest?', 'Blue', 'blue bar')[0]!.content), 'b73d0961d9807871bd80548ac79dd2e7ed8b815d0d5cddbed7375f9ec464d8fb');
  });
});
