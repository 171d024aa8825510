// The image benchmarks of spec 11.2 (images first, then the instruction): loaders for the layouts the official
// `evaluation/benchmarks/*.py` read, their instructions, and their scoring.
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { EvalDataError } from './errors.js';
import { id, list, mustExist, object, readJson, readJsonl, readParquet, str, strings, type Json } from './data.js';
import { anls, chartqaJudgeAccepts, officialAI2D, officialGQA, officialMME, officialMMMU, ocrbenchCorrect, relaxedCorrectness, robustLetterIndex, type Extracted } from './extract.js';
import { chartqaJudgeMessages } from './judge-prompts.js';
import { letters, pyStringList, pyStrip } from './python.js';
import { accuracySection, UnparsedList, type Benchmark, type EvalPart, type EvalSample, type Report, type Section } from './types.js';

interface ImageSample extends EvalSample {
  task: string;
  gold: unknown;
}

function imageSample(sampleId: string, task: string, images: string[], text: string, gold: unknown, extra: object = {}): ImageSample {
  return { id: sampleId, task, gold, ...extra, content: async () => [...images.map((path): EvalPart => ({ type: 'image', path })), { type: 'text', text }] };
}

const SHORT = 'Answer the question with a single word or phrase.';

function report(benchmark: string, mode: 'official' | 'robust', samples: readonly EvalSample[], answers: ReadonlyMap<string, string>, sections: Section[], headline: Report['headline'], unparsed: Report['unparsed'] = [], notes: string[] = []): Report {
  return { benchmark, mode, samples: samples.length, answered: samples.filter((s) => answers.has(s.id)).length, sections, headline, unparsed, notes };
}

/** Each answered sample with its answer. */
function* answered<S extends EvalSample>(samples: readonly S[], answers: ReadonlyMap<string, string>): Generator<[S, string]> {
  for (const s of samples) {
    const r = answers.get(s.id);
    if (r !== undefined) yield [s, r];
  }
}

function anlsBenchmark(name: string, title: string, layout: string, read: (dir: string) => { file: string; rows: Json[]; question: string; answers: string; image: (d: Json, file: string, where: string) => string; qid: string; where: (i: number) => string }): Benchmark<ImageSample> {
  return {
    name,
    title,
    modality: 'image',
    layout,
    async load(dir) {
      const { file, rows, question, answers, image, qid, where: at } = read(dir);
      return rows.map((d, i) => {
        const where = at(i);
        const gold = d[answers];
        const refs = typeof gold === 'string' ? [gold] : strings(d, answers, file, where);
        return imageSample(id(d, qid, file, where), 'val', [image(d, file, where)], `${str(d, question, file, where)}\n${SHORT}`, refs);
      });
    },
    score(samples, answers, { mode }) {
      const items = [...answered(samples, answers)].map(([s, r]) => ({ task: s.task, correct: anls(s.gold as string[], r) }));
      const section = accuracySection(title, items);
      return report(name, mode, samples, answers, [section], [{ name: `${title} (ANLS)`, value: section.overall.value }], [], ['The paper reports the test split, scored by the official server; val is scored here.']);
    },
  };
}

export const docvqa = anlsBenchmark('docvqa', 'DocVQA val', 'val.jsonl ({question_id, image, question, answer}) and the images it names, relative to --data', (dir) => ({
  file: join(dir, 'val.jsonl'),
  rows: readJsonl(join(dir, 'val.jsonl')),
  question: 'question',
  answers: 'answer',
  qid: 'question_id',
  where: (i) => `line ${i + 1}`,
  image: (d, file, where) => mustExist(join(dir, str(d, 'image', file, where)), file, `${where}.image`),
}));

export const infovqa = anlsBenchmark('infovqa', 'InfoVQA val', 'infographicsVQA_val_v1.0_withQT.json ({data: [{questionId, question, answers, image_local_name}]}) and images/<image_local_name>', (dir) => {
  const file = join(dir, 'infographicsVQA_val_v1.0_withQT.json');
  const rows = list(object(readJson(file), file, '').data, file, '.data').map((r, i) => object(r, file, `.data[${i}]`));
  return { file, rows, question: 'question', answers: 'answers', qid: 'questionId', where: (i) => `.data[${i}]`, image: (d, f, where) => mustExist(join(dir, 'images', str(d, 'image_local_name', f, where)), f, `${where}.image_local_name`) };
});

type ChartSample = ImageSample & { question: string };

export const chartqa: Benchmark<ChartSample> = {
  name: 'chartqa',
  title: 'ChartQA',
  modality: 'image',
  layout: 'test_augmented_renamed.jsonl and test_human_renamed.jsonl ({question_id, image, question, answer}) with the images they name',
  async load(dir) {
    const out: ChartSample[] = [];
    for (const [task, name] of [['augmented', 'test_augmented_renamed.jsonl'], ['human', 'test_human_renamed.jsonl']] as const) {
      const file = join(dir, name);
      readJsonl(file).forEach((d, i) => {
        const where = `line ${i + 1}`;
        const gold = d.answer;
        const refs = typeof gold === 'string' ? [gold] : strings(d, 'answer', file, where);
        const image = mustExist(join(dir, str(d, 'image', file, where)), file, `${where}.image`);
        const question = str(d, 'question', file, where);
        out.push({ ...imageSample(`${task}/${id(d, 'question_id', file, where)}`, task, [image], `${question}\nAnswer the question using a single word or phrase.`, refs), question });
      });
    }
    return out;
  },
  judgeAsks(s, response) {
    const prediction = pyStrip(response);
    const verdicts = (s.gold as string[]).map((g) => relaxedCorrectness(g, prediction));
    // A reference already matched settles the answer (the official max() over the references): nothing to ask.
    if (verdicts.includes(true)) return [];
    return (s.gold as string[]).flatMap((g, k) =>
      verdicts[k] === 'text' ? [{ key: `${s.id}#${k}`, messages: chartqaJudgeMessages(s.question, g, prediction), again: (reply: string) => pyStrip(reply) === '' }] : [],
    );
  },
  score(samples, answers, { mode, judged, judge }) {
    let text = 0;
    let accepted = 0;
    let unjudged = 0;
    const items = [...answered(samples, answers)].map(([s, r]) => {
      const verdicts = (s.gold as string[]).map((g) => relaxedCorrectness(g, pyStrip(r)));
      if (verdicts.includes(true) || !verdicts.includes('text')) return { task: s.task, correct: verdicts.includes(true) };
      text++;
      if (!judged) return { task: s.task, correct: false };
      const replies = verdicts.map((v, k) => (v === 'text' ? judged.get(`${s.id}#${k}`) : undefined));
      if (replies.some((reply, k) => verdicts[k] === 'text' && reply === undefined)) unjudged++;
      const correct = replies.some((reply) => reply !== undefined && chartqaJudgeAccepts(reply));
      if (correct) accepted++;
      return { task: s.task, correct };
    });
    const sections = [accuracySection('ChartQA', items, ['augmented', 'human'])];
    const rows = sections[0]!.rows;
    // The official overall is the mean of the two splits.
    sections[0]!.overall = { task: 'Overall', value: rows.reduce((a, r) => a + r.value, 0) / rows.length, count: items.length };
    const notes = judged
      ? [`${text} non-numeric answers differ from the reference as text: judged by ${judge ?? 'the judge'} with the official prompt, ${accepted} accepted${unjudged ? `; ${unjudged} not judged yet (a judge request failed: run again), counted wrong` : ''}.`]
      : [`${text} non-numeric answers differ from the reference as text; the official code then asks a GPT judge (--judge-url, --judge-model): without one they count as wrong (a lower bound).`];
    return report('chartqa', mode, samples, answers, sections, [{ name: 'ChartQA', value: sections[0]!.overall.value }], [], notes);
  },
};

export const ocrbench: Benchmark<ImageSample & { dataset: string }> = {
  name: 'ocrbench',
  title: 'OCRBench',
  modality: 'image',
  layout: 'OCRBench.json ([{image_path, question, answers, type, dataset_name}]) and OCRBench_Images/<image_path>',
  async load(dir) {
    const file = join(dir, 'OCRBench.json');
    return list(readJson(file), file, '').map((entry, i) => {
      const where = `[${i}]`;
      const d = object(entry, file, where);
      const image = mustExist(join(dir, 'OCRBench_Images', str(d, 'image_path', file, where)), file, `${where}.image_path`);
      const gold = typeof d.answers === 'string' ? d.answers : strings(d, 'answers', file, where);
      return { ...imageSample(String(i), str(d, 'type', file, where), [image], `${str(d, 'question', file, where)}\n${SHORT}`, gold), dataset: str(d, 'dataset_name', file, where) };
    });
  },
  score(samples, answers, { mode }) {
    const by = new Map<string, number[]>();
    for (const [s, r] of answered(samples, answers)) {
      if (!by.has(s.task)) by.set(s.task, []);
      by.get(s.task)!.push(Number(ocrbenchCorrect(s.gold as string | string[], r, s.dataset)));
    }
    const rows = [...by].map(([task, v]) => ({ task, value: v.reduce((a, b) => a + b, 0), count: v.length }));
    const overall = { task: 'Overall', value: rows.reduce((a, r) => a + r.value, 0), count: rows.reduce((a, r) => a + r.count, 0) };
    return report('ocrbench', mode, samples, answers, [{ name: 'OCRBench', unit: 'count', rows, overall }], [{ name: 'OCRBench', value: overall.value }]);
  },
};

export const ai2d: Benchmark<ImageSample> = {
  name: 'ai2d',
  title: 'AI2D',
  modality: 'image',
  layout: 'ai2d_test_vlmevalkit.jsonl ({question_id, image, question with its options, answer letter}) and the images it names',
  async load(dir) {
    const file = join(dir, 'ai2d_test_vlmevalkit.jsonl');
    return readJsonl(file).map((d, i) => {
      const where = `line ${i + 1}`;
      const answer = str(d, 'answer', file, where).charCodeAt(0) - 65;
      if (!(answer >= 0 && answer < 4)) throw new EvalDataError(file, `${where}.answer`, `expected a letter A-D, got ${JSON.stringify(d.answer)}`);
      const image = mustExist(join(dir, str(d, 'image', file, where)), file, `${where}.image`);
      return imageSample(id(d, 'question_id', file, where), 'test', [image], str(d, 'question', file, where), answer);
    });
  },
  score(samples, answers, { mode }) {
    const unparsed = new UnparsedList();
    const items = [...answered(samples, answers)].map(([s, r]) => {
      const e = mode === 'official' ? officialAI2D(r) : robustLetterIndex(r, letters(4));
      return { task: s.task, correct: unparsed.take(s.id, r, e) === s.gold };
    });
    const section = accuracySection('AI2D', items);
    return report('ai2d', mode, samples, answers, [section], [{ name: 'AI2D', value: section.overall.value }], unparsed.items);
  },
};

export const MMMU_SUBJECTS = [
  'Accounting', 'Agriculture', 'Architecture_and_Engineering', 'Art', 'Art_Theory', 'Basic_Medical_Science', 'Biology', 'Chemistry', 'Clinical_Medicine', 'Computer_Science',
  'Design', 'Diagnostics_and_Laboratory_Medicine', 'Economics', 'Electronics', 'Energy_and_Power', 'Finance', 'Geography', 'History', 'Literature', 'Manage',
  'Marketing', 'Materials', 'Math', 'Mechanical_Engineering', 'Music', 'Pharmacy', 'Physics', 'Psychology', 'Public_Health', 'Sociology',
];

/** An image column of a Hugging Face Parquet file ({bytes, path}) as a data URL the model reads. */
function imageDataUrl(value: unknown, file: string, where: string): string {
  const bytes = (value as { bytes?: unknown } | null)?.bytes;
  if (!(bytes instanceof Uint8Array)) throw new EvalDataError(file, where, 'expected an image {bytes, path}');
  return `data:application/octet-stream;base64,${Buffer.from(bytes).toString('base64')}`;
}

/** The MMMU instruction, split at each `<image k>:` where the official text inserts the image k. */
export function mmmuContent(question: string, options: readonly string[], multipleChoice: boolean, image: (k: number) => string): EvalPart[] {
  let text = multipleChoice
    ? `${question}\n\n${options.map((o, n) => `(${String.fromCharCode(65 + n)}):${o}`).join('\n')}\n\nAnswer with the option's letter from the given choices directly.`
    : `${question}\n\nAnswer the question using a single word or phrase.`;
  const parts: EvalPart[] = [];
  for (let m = /<image ([1-7])>/.exec(text); m; m = /<image ([1-7])>/.exec(text)) {
    parts.push({ type: 'text', text: `${text.slice(0, m.index)}<image ${m[1]}>:` }, { type: 'image', path: image(Number(m[1])) });
    text = text.slice(m.index + m[0].length);
  }
  parts.push({ type: 'text', text });
  return parts.filter((p) => p.type !== 'text' || p.text.length > 0);
}

export const mmmu: Benchmark<ImageSample & { options: string[]; multipleChoice: boolean; seed: number }> = {
  name: 'mmmu',
  title: 'MMMU val',
  modality: 'image',
  layout: '<Subject>/validation-*.parquet for the 30 subjects (MMMU/MMMU)',
  async load(dir) {
    const out: (ImageSample & { options: string[]; multipleChoice: boolean; seed: number })[] = [];
    for (const subject of MMMU_SUBJECTS) {
      const folder = join(dir, subject);
      let files: string[];
      try {
        files = readdirSync(folder).filter((f) => f.startsWith('validation') && f.endsWith('.parquet')).sort();
      } catch {
        throw new EvalDataError(folder, undefined, 'not found (one folder per subject, holding validation-*.parquet)');
      }
      if (files.length === 0) throw new EvalDataError(folder, undefined, 'no validation-*.parquet file');
      for (const name of files) {
        const file = join(folder, name);
        for (const [i, d] of (await readParquet(file)).entries()) {
          const where = `row ${i}`;
          const qid = str(d, 'id', file, where);
          if (!qid.includes('validation')) continue;
          const options = pyStringList(str(d, 'options', file, where));
          if (!options) throw new EvalDataError(file, `${where}.options`, 'expected a Python list of strings');
          const multipleChoice = str(d, 'question_type', file, where) === 'multiple-choice';
          const question = str(d, 'question', file, where);
          const parts = mmmuContent(question, options, multipleChoice, (k) => imageDataUrl(d[`image_${k}`], file, `${where}.image_${k}`));
          let seed = 0;
          for (const c of qid) seed = (seed * 31 + c.charCodeAt(0)) >>> 0;
          out.push({ id: qid, task: subject, gold: str(d, 'answer', file, where), options, multipleChoice, seed, content: async () => parts });
        }
      }
    }
    return out;
  },
  score(samples, answers, { mode }) {
    const unparsed = new UnparsedList();
    const items = [...answered(samples, answers)].map(([s, r]) => {
      let e: Extracted<string> = officialMMMU(r, s.options, s.multipleChoice, s.seed);
      if (mode === 'robust' && s.multipleChoice && e.ok && e.note?.startsWith('random')) e = { ok: false, reason: 'no option found (the official code guesses at random)' };
      if (mode === 'robust' && s.multipleChoice && !/boxed\{/.test(r)) {
        const i = robustLetterIndex(r, s.options);
        e = i.ok ? { ok: true, value: letters(26)[i.value]! } : i;
      }
      return { task: s.task, correct: unparsed.take(s.id, r, e) === s.gold };
    });
    const section = accuracySection('MMMU val', items, MMMU_SUBJECTS);
    return report('mmmu', mode, samples, answers, [section], [{ name: 'MMMU val', value: section.overall.value }], unparsed.items, [
      'Images are placed where the question names them ("<image k>:" then the image); the chat template writes a newline after each image.',
    ]);
  },
};

export const gqa: Benchmark<ImageSample> = {
  name: 'gqa',
  title: 'GQA testdev',
  modality: 'image',
  layout: 'llava_gqa_testdev_balanced.jsonl ({question_id, image, text, category}), data/testdev_balanced_questions.json and data/images/<image>',
  async load(dir) {
    const file = join(dir, 'llava_gqa_testdev_balanced.jsonl');
    const answersFile = join(dir, 'data', 'testdev_balanced_questions.json');
    const gold = object(readJson(answersFile), answersFile, '');
    return readJsonl(file).map((d, i) => {
      const where = `line ${i + 1}`;
      const qid = id(d, 'question_id', file, where);
      const answer = str(object(gold[qid], answersFile, qid), 'answer', answersFile, qid).toLowerCase();
      const image = mustExist(join(dir, 'data', 'images', str(d, 'image', file, where)), file, `${where}.image`);
      return imageSample(qid, str(d, 'category', file, where), [image], str(d, 'text', file, where), answer);
    });
  },
  score(samples, answers, { mode }) {
    const items = [...answered(samples, answers)].map(([s, r]) => ({ task: s.task, correct: officialGQA(r) === s.gold }));
    const section = accuracySection('GQA', items);
    return report('gqa', mode, samples, answers, [section], [{ name: 'GQA', value: section.overall.value }]);
  },
};

const MME_PERCEPTION = ['existence', 'count', 'position', 'color', 'posters', 'celebrity', 'scene', 'landmark', 'artwork', 'OCR'];
const MME_COGNITION = ['commonsense_reasoning', 'numerical_calculation', 'text_translation', 'code_reasoning'];

export const mme: Benchmark<ImageSample & { image: string }> = {
  name: 'mme',
  title: 'MME',
  modality: 'image',
  layout: 'MME_Benchmark_release_version/<subtask>/ with images and their question files (<name>.txt: question TAB Yes|No per line), or images/ and questions_answers_YN/',
  async load(dir) {
    const out: (ImageSample & { image: string })[] = [];
    const { readFileSync, existsSync } = await import('node:fs');
    for (const task of [...MME_PERCEPTION, ...MME_COGNITION]) {
      let imageDir = join(dir, 'MME_Benchmark_release_version', task);
      let gtDir = imageDir;
      if (existsSync(join(imageDir, 'images'))) [imageDir, gtDir] = [join(imageDir, 'images'), join(imageDir, 'questions_answers_YN')];
      if (!existsSync(imageDir)) throw new EvalDataError(imageDir, undefined, 'not found');
      for (const name of readdirSync(imageDir).sort()) {
        if (!name.endsWith('jpg') && !name.endsWith('png')) continue;
        const file = join(gtDir, name.replace('jpg', 'txt').replace('png', 'txt'));
        const text = (() => {
          try {
            return readFileSync(file, 'utf8');
          } catch {
            throw new EvalDataError(file, undefined, `not found (the questions of ${name})`);
          }
        })();
        text.split('\n').forEach((line, i) => {
          if (line.trim() === '') return;
          const fields = pyStrip(line).split('\t');
          const [question, answer] = fields;
          if (fields.length !== 2 || (answer !== 'Yes' && answer !== 'No')) throw new EvalDataError(file, `line ${i + 1}`, 'expected "question<TAB>Yes|No"');
          const instruction = `${question!.replace(' Please answer yes or no.', '\nAnswer the question using a single word or phrase.')}\nPlease answer yes or no.`;
          out.push({ ...imageSample(`${task}${name}${answer}`, task, [join(imageDir, name)], instruction, answer), image: join(imageDir, name) });
        });
      }
    }
    return out;
  },
  score(samples, answers, { mode }) {
    const rows: Section['rows'] = [];
    for (const task of [...MME_PERCEPTION, ...MME_COGNITION]) {
      const done = [...answered(samples.filter((s) => s.task === task), answers)];
      if (done.length === 0) continue;
      const right = done.map(([s, r]) => officialMME(r) === s.gold);
      // acc+: both questions of an image right (the official code pairs consecutive results of one image).
      let plus = 0;
      for (let i = 1; i < done.length; i += 2) if (done[i]![0].image === done[i - 1]![0].image && right[i] && right[i - 1]) plus++;
      rows.push({ task, value: (right.filter(Boolean).length / right.length) * 100 + (plus * 200) / right.length, count: right.length });
    }
    const sum = (names: string[]) => rows.filter((r) => names.includes(r.task)).reduce((a, r) => a + r.value, 0);
    const overall = { task: 'Overall', value: sum([...MME_PERCEPTION, ...MME_COGNITION]), count: rows.reduce((a, r) => a + r.count, 0) };
    const section: Section = { name: 'MME', unit: 'score', rows: [...rows, { task: 'Perception', value: sum(MME_PERCEPTION), count: 0 }, { task: 'Cognition', value: sum(MME_COGNITION), count: 0 }], overall };
    return report('mme', mode, samples, answers, [section], [{ name: 'MME (perception + cognition)', value: overall.value }]);
  },
};
