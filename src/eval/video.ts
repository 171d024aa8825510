// The video benchmarks of spec 11.2: loaders for the layouts the official `evaluation/benchmarks/*.py` read (the
// files of each release on the Hugging Face hub), the official instructions, and the official scoring.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EvalDataError } from './errors.js';
import { findVideo, id, list, mustExist, num, object, readCsv, readJson, readJsonl, readParquet, readSrt, str, strings, type Json, type SubtitleLine } from './data.js';
import { activitynetVerdict, captionJudgeChoice, officialCharadesSpans, officialEgoSchema, officialLetterIndex, officialLongVideoBench, officialLVBench, officialPerceptionTest, officialTempCompass, officialVideoMME, robustLetterIndex, type Extracted } from './extract.js';
import { activitynetJudgeMessages, captionJudgeMessages } from './judge-prompts.js';
import { letters, pyStrip } from './python.js';
import { accuracySection, UnparsedList, type Benchmark, type EvalPart, type EvalSample, type Report, type Section } from './types.js';
import { existsSync } from 'node:fs';

const LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly and only give the best option.";

/** `Question: q\nOptions:\n(A) …\n…` as MVBench, MLVU and NExT-QA write it. */
function optionsInstruction(question: string, options: readonly string[]): string {
  const L = letters(options.length);
  return `Question: ${question}\nOptions:\n${options.map((o, i) => `(${L[i]}) ${o}\n`).join('')}${LETTER_INSTRUCTION}`;
}

interface McqSample extends EvalSample {
  task: string | string[];
  options: string[];
  /** Index of the right option (undefined: no label in this release, as EgoSchema/PerceptionTest test). */
  answer?: number;
}

const video = (path: string, start?: number, end?: number): EvalPart => ({ type: 'video', path, ...(start !== undefined && { start }), ...(end !== undefined && { end }) });

function mcqSample(sampleId: string, task: string | string[], path: string, instruction: string, options: string[], answer: number | undefined, range?: [number, number]): McqSample {
  return { id: sampleId, task, options, answer, content: async () => [video(path, range?.[0], range?.[1]), { type: 'text', text: instruction }] };
}

/** Letter extraction by mode: the official extractor of the benchmark, or the robust one. */
function pick(mode: 'official' | 'robust', official: () => Extracted<number>, response: string, options: readonly string[]): Extracted<number> {
  return mode === 'official' ? official() : robustLetterIndex(response, options);
}

/** Accuracy per task and overall of index answers (MVBench, MLVU, NExT-QA, EgoSchema/PerceptionTest with labels). */
function scoreIndexMcq(name: string, samples: readonly McqSample[], answers: ReadonlyMap<string, string>, mode: 'official' | 'robust', official: (s: McqSample, r: string) => Extracted<number>, order: readonly string[] = []) {
  const unparsed = new UnparsedList();
  const items: { task: string; correct: boolean }[] = [];
  const predictions = new Map<string, number | undefined>();
  for (const s of samples) {
    const r = answers.get(s.id);
    if (r === undefined) continue;
    const p = unparsed.take(s.id, r, pick(mode, () => official(s, r), r, s.options));
    predictions.set(s.id, p);
    if (s.answer === undefined) continue;
    for (const task of [s.task].flat()) items.push({ task, correct: p === s.answer });
  }
  return { section: accuracySection(name, items, order), unparsed: unparsed.items, predictions };
}

function report(benchmark: string, mode: 'official' | 'robust', samples: number, answered: number, sections: Section[], headline: Report['headline'], unparsed: Report['unparsed'], notes: string[] = []): Report {
  return { benchmark, mode, samples, answered, sections, headline, unparsed, notes };
}

const answeredCount = (samples: readonly EvalSample[], answers: ReadonlyMap<string, string>) => samples.filter((s) => answers.has(s.id)).length;

/** The answer's index among the candidates (the official loop keeps the last equal one). */
function answerIndex(options: readonly string[], answer: unknown, file: string, where: string): number {
  const i = options.lastIndexOf(answer as string);
  if (i < 0) throw new EvalDataError(file, `${where}.answer`, `${JSON.stringify(answer)} is not one of the candidates ${JSON.stringify(options)}`);
  return i;
}

// ---------------------------------------------------------------------------------------------------------------
// MVBench and MLVU: json/<task>.json + video/<folder>/<video>

const MVBENCH_TASKS: [string, string, string, boolean][] = [
  ['Action Sequence', 'action_sequence.json', 'star/Charades_v1_480/', true],
  ['Action Prediction', 'action_prediction.json', 'star/Charades_v1_480/', true],
  ['Action Antonym', 'action_antonym.json', 'ssv2_video/', false],
  ['Fine-grained Action', 'fine_grained_action.json', 'Moments_in_Time_Raw/videos/', false],
  ['Unexpected Action', 'unexpected_action.json', 'FunQA_test/test/', false],
  ['Object Existence', 'object_existence.json', 'clevrer/video_validation/', false],
  ['Object Interaction', 'object_interaction.json', 'star/Charades_v1_480/', true],
  ['Object Shuffle', 'object_shuffle.json', 'perception/videos/', false],
  ['Moving Direction', 'moving_direction.json', 'clevrer/video_validation/', false],
  ['Action Localization', 'action_localization.json', 'sta/sta_video/', true],
  ['Scene Transition', 'scene_transition.json', 'scene_qa/video/', false],
  ['Action Count', 'action_count.json', 'perception/videos/', false],
  ['Moving Count', 'moving_count.json', 'clevrer/video_validation/', false],
  ['Moving Attribute', 'moving_attribute.json', 'clevrer/video_validation/', false],
  ['State Change', 'state_change.json', 'perception/videos/', false],
  ['Fine-grained Pose', 'fine_grained_pose.json', 'nturgbd/', false],
  ['Character Order', 'character_order.json', 'perception/videos/', false],
  ['Egocentric Navigation', 'egocentric_navigation.json', 'vlnqa/', false],
  ['Episodic Reasoning', 'episodic_reasoning.json', 'tvqa/frames_fps3_hq/', true],
  ['Counterfactual Inference', 'counterfactual_inference.json', 'clevrer/video_validation/', false],
];

const MLVU_TASKS: [string, string, string, boolean][] = [
  ['TR:  (Topic Reasoning)', '7_topic_reasoning.json', '7_topic_reasoning', false],
  ['AR:  (Anomaly Recognition)', '6_anomaly_reco.json', '6_anomaly_reco', false],
  ['NQA: (Needle QA)', '2_needle.json', '2_needle', false],
  ['ER:  (Ego Reasoning)', '3_ego.json', '3_ego', false],
  ['PQA: (Plot QA)', '1_plotQA.json', '1_plotQA', false],
  ['AC:  (Action Count)', '4_count.json', '4_count', false],
  ['AO:  (Action Order)', '5_order.json', '5_order', false],
];

function taskFolderBenchmark(name: string, title: string, tasks: typeof MVBENCH_TASKS, optionTextFallback: boolean, layout: string): Benchmark<McqSample> {
  return {
    name,
    title,
    modality: 'video',
    layout,
    async load(dir) {
      const out: McqSample[] = [];
      for (const [task, jsonName, folder, ranged] of tasks) {
        const file = join(dir, 'json', jsonName);
        list(readJson(file), file, '').forEach((entry, i) => {
          const where = `[${i}]`;
          const d = object(entry, file, where);
          const options = strings(d, 'candidates', file, where);
          const path = mustExist(join(dir, 'video', folder, str(d, 'video', file, where)), file, `${where}.video`);
          const range: [number, number] | undefined = ranged ? [num(d, 'start', file, where), num(d, 'end', file, where)] : undefined;
          out.push(mcqSample(`${jsonName.replace(/\.json$/, '')}/${i}`, task, path, optionsInstruction(str(d, 'question', file, where), options), options, answerIndex(options, d.answer, file, where), range));
        });
      }
      return out;
    },
    score(samples, answers, { mode }) {
      const { section, unparsed } = scoreIndexMcq(title, samples, answers, mode, (s, r) => officialLetterIndex(r, s.options, optionTextFallback), tasks.map((t) => t[0]));
      return report(name, mode, samples.length, answeredCount(samples, answers), [section], [{ name: title, value: section.overall.value }], unparsed);
    },
  };
}

export const mvbench = taskFolderBenchmark('mvbench', 'MVBench', MVBENCH_TASKS, true, 'json/<task>.json (20 tasks) and video/<source folder>/… as OpenGVLab/MVBench ships them (tvqa as frame folders)');
export const mlvu = taskFolderBenchmark('mlvu', 'MLVU dev', MLVU_TASKS, false, 'json/<n>_<task>.json and video/<n>_<task>/… as MLVU/MVLU ships the dev set');

// ---------------------------------------------------------------------------------------------------------------
// NExT-QA: test.csv, map_vid_vidorID.json, NExTVideo/<folder>/<vidorID>.mp4

const NEXTQA_TYPES: Record<string, string> = { DC: 'Descriptive', DL: 'Descriptive', DO: 'Descriptive', CH: 'Causal', CW: 'Causal', TC: 'Temporal', TP: 'Temporal', TN: 'Temporal' };

export const nextqa: Benchmark<McqSample> = {
  name: 'nextqa',
  title: 'NExT-QA',
  modality: 'video',
  layout: 'test.csv, map_vid_vidorID.json and NExTVideo/<dir>/<vidorID>.mp4 (the NExT-QA release)',
  async load(dir) {
    const file = join(dir, 'test.csv');
    const mapFile = join(dir, 'map_vid_vidorID.json');
    const map = object(readJson(mapFile), mapFile, '');
    return readCsv(file).map((row, i) => {
      const where = `row ${i + 2}`;
      const options = ['a0', 'a1', 'a2', 'a3', 'a4'].map((k) => row[k]).filter((o): o is string => o !== undefined && o !== '');
      const task = NEXTQA_TYPES[row.type ?? ''];
      if (!task) throw new EvalDataError(file, `${where}.type`, `unknown question type ${JSON.stringify(row.type)} (expected ${Object.keys(NEXTQA_TYPES).join(', ')})`);
      const answer = Number(row.answer);
      if (!Number.isInteger(answer) || answer < 0 || answer >= options.length) throw new EvalDataError(file, `${where}.answer`, `expected an option index 0-${options.length - 1}, got ${JSON.stringify(row.answer)}`);
      const vid = map[row.video ?? ''];
      if (typeof vid !== 'string') throw new EvalDataError(mapFile, String(row.video), 'video id of test.csv missing from the map');
      const path = mustExist(join(dir, 'NExTVideo', `${vid}.mp4`), file, `${where}.video`);
      return mcqSample(`${row.video}_${row.qid}`, task, path, optionsInstruction(row.question ?? '', options), options, answer);
    });
  },
  score(samples, answers, { mode }) {
    const { section, unparsed } = scoreIndexMcq('NExT-QA', samples, answers, mode, (s, r) => officialLetterIndex(r, s.options, false), ['Descriptive', 'Causal', 'Temporal']);
    return report('nextqa', mode, samples.length, answeredCount(samples, answers), [section], [{ name: 'NExT-QA', value: section.overall.value }], unparsed);
  },
};

// ---------------------------------------------------------------------------------------------------------------
// EgoSchema: questions.json, good_clips_git/<q_uid>.mp4, optional subset_answers.json

export const egoschema: Benchmark<McqSample> = {
  name: 'egoschema',
  title: 'EgoSchema',
  modality: 'video',
  layout: 'questions.json, good_clips_git/<q_uid>.mp4 and, to score the public subset here, subset_answers.json ({q_uid: index}) from the EgoSchema repository',
  async load(dir) {
    const file = join(dir, 'questions.json');
    const answersFile = join(dir, 'subset_answers.json');
    const labels = existsSync(answersFile) ? object(readJson(answersFile), answersFile, '') : {};
    return list(readJson(file), file, '').map((entry, i) => {
      const where = `[${i}]`;
      const d = object(entry, file, where);
      const q = str(d, 'q_uid', file, where);
      const options = [0, 1, 2, 3, 4].map((k) => str(d, `option ${k}`, file, where));
      const instruction = `Select the best answer to the following multiple-choice question based on the video.\n${str(d, 'question', file, where)}\nOptions:\n${options.map((o, k) => `(${'ABCDE'[k]}) ${o}\n`).join('')}${LETTER_INSTRUCTION} The best answer is: `;
      const label = labels[q];
      return mcqSample(q, 'Subset', findVideo(join(dir, 'good_clips_git'), q, file, `${where}.q_uid`), instruction, options, typeof label === 'number' ? label : undefined);
    });
  },
  score(samples, answers, { mode, outDir }) {
    const { section, unparsed, predictions } = scoreIndexMcq('EgoSchema subset', samples, answers, mode, (s, r) => officialEgoSchema(r, s.options));
    const notes = ['The full test set is scored by the official server: upload egoschema-submission.json ({q_uid: index}; -1 where the answer could not be parsed).'];
    if (outDir) writeFileSync(join(outDir, 'egoschema-submission.json'), JSON.stringify(Object.fromEntries([...predictions].map(([k, v]) => [k, v ?? -1]))));
    const sections = section.overall.count > 0 ? [section] : [];
    if (sections.length === 0) notes.push('No subset_answers.json in --data: nothing scored here.');
    return report('egoschema', mode, samples.length, answeredCount(samples, answers), sections, [{ name: 'EgoSchema subset', value: sections.length ? section.overall.value : null }], unparsed, notes);
  },
};

// ---------------------------------------------------------------------------------------------------------------
// PerceptionTest: mc_question_test.json (or mc_question_valid.json, which has answer_id) and videos/<video_id>.mp4

export const perceptionTest: Benchmark<McqSample & { videoId: string; questionId: number | string }> = {
  name: 'perception_test',
  title: 'PerceptionTest',
  modality: 'video',
  layout: 'mc_question_test.json (else mc_question_valid.json, whose answer_id is scored here) and videos/<video_id>.mp4',
  async load(dir) {
    const file = existsSync(join(dir, 'mc_question_test.json')) || !existsSync(join(dir, 'mc_question_valid.json')) ? join(dir, 'mc_question_test.json') : join(dir, 'mc_question_valid.json');
    const out: (McqSample & { videoId: string; questionId: number | string })[] = [];
    for (const [key, entry] of Object.entries(object(readJson(file), file, ''))) {
      const d = object(entry, file, key);
      const videoId = str(object(d.metadata, file, `${key}.metadata`), 'video_id', file, `${key}.metadata`);
      const path = findVideo(join(dir, 'videos'), videoId, file, `${key}.metadata.video_id`);
      list(d.mc_question, file, `${key}.mc_question`).forEach((qEntry, j) => {
        const where = `${key}.mc_question[${j}]`;
        const q = object(qEntry, file, where);
        const options = strings(q, 'options', file, where);
        if (options.length !== 3) throw new EvalDataError(file, `${where}.options`, `expected 3 options, got ${options.length}`);
        const instruction = `Question: ${str(q, 'question', file, where)}\nOptions:\n(A) ${options[0]}\n(B) ${options[1]}\n(C) ${options[2]}\n${LETTER_INSTRUCTION}`;
        const qid = id(q, 'id', file, where);
        const sample = mcqSample(`${videoId}_${qid}`, 'Overall', path, instruction, options, typeof q.answer_id === 'number' ? q.answer_id : undefined);
        out.push({ ...sample, videoId, questionId: typeof q.id === 'number' ? q.id : qid });
      });
    }
    return out;
  },
  score(samples, answers, { mode, outDir }) {
    const { section, unparsed, predictions } = scoreIndexMcq('PerceptionTest', samples, answers, mode, (_s, r) => officialPerceptionTest(r));
    const submission: Record<string, { id: number | string; answer_id: number; answer: string | null }[]> = {};
    for (const s of samples) {
      if (!predictions.has(s.id)) continue;
      const p = predictions.get(s.id);
      (submission[s.videoId] ??= []).push({ id: s.questionId, answer_id: p ?? -1, answer: p === undefined ? null : s.options[p]! });
    }
    if (outDir) writeFileSync(join(outDir, 'perception_test-submission.json'), JSON.stringify(submission));
    const notes = ['The test split is scored by the official server (EvalAI challenge 2091): upload perception_test-submission.json.'];
    const sections = section.overall.count > 0 ? [section] : [];
    return report('perception_test', mode, samples.length, answeredCount(samples, answers), sections, [{ name: 'PerceptionTest', value: sections.length ? section.overall.value : null }], unparsed, notes);
  },
};

// ---------------------------------------------------------------------------------------------------------------
// VideoMME: test-00000-of-00001.parquet (or videomme/…), videos/<videoID>.mp4, subtitles/<videoID>.srt

interface VideoMmeSample extends McqSample {
  letter: string;
  subtitled: boolean;
}

/** Subtitle texts active (start < t < end, in ms) at each sampled frame time, as `videomme.py` picks them. */
export function subtitlesAt(subtitles: readonly SubtitleLine[], timestamps: ArrayLike<number>): string[] {
  const out: string[] = [];
  for (let i = 0; i < timestamps.length; i++) {
    const t = timestamps[i]! * 1000;
    const line = subtitles.find((s) => s.start < t && t < s.end);
    const text = line ? line.text.replaceAll('\\N', ' ') : '';
    if (text.trim()) out.push(text);
  }
  return out;
}

export const videomme: Benchmark<VideoMmeSample> = {
  name: 'videomme',
  title: 'VideoMME',
  modality: 'video',
  layout: 'test-00000-of-00001.parquet (or videomme/test-00000-of-00001.parquet, as lmms-lab/Video-MME ships it), videos/<videoID>.mp4 and subtitles/<videoID>.srt',
  async load(dir) {
    const file = existsSync(join(dir, 'test-00000-of-00001.parquet')) ? join(dir, 'test-00000-of-00001.parquet') : join(dir, 'videomme', 'test-00000-of-00001.parquet');
    const out: VideoMmeSample[] = [];
    (await readParquet(file)).forEach((d: Json, i) => {
      const where = `row ${i}`;
      const videoId = str(d, 'videoID', file, where);
      const path = findVideo(join(dir, 'videos'), videoId, file, `${where}.videoID`);
      const options = strings(d, 'options', file, where);
      const letter = str(d, 'answer', file, where);
      const instruction = `Select the best answer to the following multiple-choice question based on the video. Respond with only the letter (A, B, C, or D) of the correct option.\n${str(d, 'question', file, where)}\n${options.map((o) => `${o}\n`).join('')}Answer with the option's letter from the given choices directly and only give the best option. The best answer is:`;
      const questionId = id(d, 'question_id', file, where);
      const task = str(d, 'task_type', file, where);
      const srt = join(dir, 'subtitles', `${videoId}.srt`);
      const base = { task, options, letter, answer: 'ABCD'.indexOf(letter) };
      out.push({ ...base, id: questionId, subtitled: false, content: async () => [video(path), { type: 'text', text: instruction }] });
      out.push({
        ...base,
        id: `${questionId}/subtitles`,
        subtitled: true,
        content: async (ctx) => {
          const lines = existsSync(srt) ? subtitlesAt(readSrt(srt), (await ctx.plan(path)).timestamps).join('\n') : '';
          return [video(path), { type: 'text', text: `This video's subtitles are listed below:\n${lines}\n${instruction}` }];
        },
      });
    });
    return out;
  },
  score(samples, answers, { mode }) {
    const unparsed = new UnparsedList();
    const items = { false: [] as { task: string; correct: boolean }[], true: [] as { task: string; correct: boolean }[] };
    for (const s of samples) {
      const r = answers.get(s.id);
      if (r === undefined) continue;
      const e: Extracted<string> = mode === 'official' ? officialVideoMME(r, s.options) : mapIndex(robustLetterIndex(r, s.options));
      items[`${s.subtitled}`].push({ task: s.task as string, correct: unparsed.take(s.id, r, e) === s.letter });
    }
    const sections = [accuracySection('VideoMME w/o subtitles', items.false), accuracySection('VideoMME w/ subtitles', items.true)];
    return report('videomme', mode, samples.length, answeredCount(samples, answers), sections, sections.map((s) => ({ name: s.name, value: s.overall.value })), unparsed.items);
  },
};

const mapIndex = (e: Extracted<number>): Extracted<string> => (e.ok ? { ok: true, value: letters(26)[e.value]! } : e);

// ---------------------------------------------------------------------------------------------------------------
// LongVideoBench: lvb_val.json, videos/<video_path>, subtitles/<subtitle_path>

interface LvbSample extends McqSample {
  letter: string;
  level: string;
}

const hms = (t: string) => {
  const [h, m, s] = t.split(':');
  return Number(h) * 3600 + Number(m) * 60 + Number(s);
};

/**
 * Frames (indices) and subtitle texts interleaved by time as `insert_subtitles_into_frames` does: frames up to each
 * subtitle's middle, then the subtitle if a frame lies strictly inside it (widened to 1 s when shorter).
 * A subtitle end that is not a number counts as the video's duration.
 */
export function interleaveSubtitles(timestamps: ArrayLike<number>, subtitles: readonly Json[], offset: number, duration: number, file: string): (number | string)[] {
  const out: (number | string)[] = [];
  let cur = 0;
  subtitles.forEach((sub, i) => {
    let start: number;
    let end: number;
    let text: string;
    if ('timestamp' in sub) {
      const span = list(sub.timestamp, file, `[${i}].timestamp`);
      start = Number(span[0]);
      end = typeof span[1] === 'number' ? span[1] : duration;
      text = str(sub, 'text', file, `[${i}]`);
    } else {
      start = hms(str(sub, 'start', file, `[${i}]`));
      end = hms(str(sub, 'end', file, `[${i}]`));
      text = str(sub, 'line', file, `[${i}]`);
    }
    start -= offset;
    end -= offset;
    const middle = (start + end) / 2;
    while (cur < timestamps.length && timestamps[cur]! <= middle) out.push(cur++);
    if (end - start < 1) [start, end] = [middle - 0.5, middle + 0.5];
    for (let k = 0; k < timestamps.length; k++) {
      if (timestamps[k]! < end && timestamps[k]! > start) {
        out.push(text);
        break;
      }
    }
  });
  while (cur < timestamps.length) out.push(cur++);
  return out;
}

export const longvideobench: Benchmark<LvbSample> = {
  name: 'longvideobench',
  title: 'LongVideoBench val',
  modality: 'video',
  layout: 'lvb_val.json, videos/<video_path> and subtitles/<subtitle_path> (longvideobench/LongVideoBench)',
  async load(dir) {
    const file = join(dir, 'lvb_val.json');
    return list(readJson(file), file, '').map((entry, i) => {
      const where = `[${i}]`;
      const d = object(entry, file, where);
      const path = mustExist(join(dir, 'videos', str(d, 'video_path', file, where)), file, `${where}.video_path`);
      const subFile = mustExist(join(dir, 'subtitles', str(d, 'subtitle_path', file, where)), file, `${where}.subtitle_path`);
      const options = strings(d, 'candidates', file, where);
      const L = letters(options.length);
      const correct = num(d, 'correct_choice', file, where);
      const offset = num(d, 'starting_timestamp_for_subtitles', file, where);
      const duration = num(d, 'duration', file, where);
      const instruction = ['Question: ' + str(d, 'question', file, where), ...options.map((o, k) => `${L[k]}. ${o}`), "Answer with the option's letter from the given choices directly."].join('\n').trim();
      return {
        id: id(d, 'id', file, where),
        task: str(d, 'question_category', file, where),
        level: str(d, 'level', file, where),
        options,
        answer: correct,
        letter: L[correct] ?? '?',
        async content(ctx) {
          const subtitles = list(readJson(subFile), subFile, '').map((s, k) => object(s, subFile, `[${k}]`));
          const whole = await ctx.plan(path);
          const ts = whole.timestamps;
          const sequence = [...interleaveSubtitles(ts, subtitles, offset, duration, subFile), instruction];
          // Each run of frames is a video item holding exactly those frames: items on one file share one load
          // spanning their ranges and each keeps the frames inside its own (spec 3.4). A run's range reaches halfway
          // to the frames beside it (a run of one frame needs start < end), the first from 0 and the last to the
          // end of the video, so the shared load is the whole video.
          const parts: EvalPart[] = [];
          let run: number[] = [];
          const flush = () => {
            if (run.length === 0) return;
            const [first, last] = [run[0]!, run.at(-1)!];
            const start = first === 0 ? 0 : (ts[first - 1]! + ts[first]!) / 2;
            const end = last === ts.length - 1 ? whole.end : (ts[last]! + ts[last + 1]!) / 2;
            parts.push(video(path, start, end));
            run = [];
          };
          for (const el of sequence) {
            if (typeof el === 'number') run.push(el);
            else {
              flush();
              parts.push({ type: 'text', text: el });
            }
          }
          flush();
          const shared = await ctx.plan(path, 0, whole.end);
          if (shared.timestamps.length !== ts.length || shared.timestamps.some((t, k) => t !== ts[k])) {
            throw new EvalDataError(path, undefined, 'sampling the video over [0, its end] gives other frames than sampling it whole, so its frames cannot be split into interleaved items exactly');
          }
          return parts;
        },
      };
    });
  },
  score(samples, answers, { mode }) {
    const unparsed = new UnparsedList();
    const items: { task: string; level: string; correct: boolean }[] = [];
    for (const s of samples) {
      const r = answers.get(s.id);
      if (r === undefined) continue;
      const e = mode === 'official' ? officialLongVideoBench(r, s.options) : mapIndex(robustLetterIndex(r, s.options));
      items.push({ task: s.task as string, level: s.level, correct: unparsed.take(s.id, r, e) === s.letter });
    }
    const sections = [
      accuracySection('LongVideoBench val', items),
      accuracySection('L1-Perception', items.filter((i) => i.level === 'L1-Perception')),
      accuracySection('L2-Relation', items.filter((i) => i.level === 'L2-Relation')),
    ];
    return report('longvideobench', mode, samples.length, answeredCount(samples, answers), sections, [{ name: 'LongVideoBench val', value: sections[0]!.overall.value }], unparsed.items);
  },
};

// ---------------------------------------------------------------------------------------------------------------
// LVBench: video_info.meta.jsonl, video/<key>.mp4

export const lvbench: Benchmark<EvalSample & { task: string | string[]; letter: string }> = {
  name: 'lvbench',
  title: 'LVBench',
  modality: 'video',
  layout: 'video_info.meta.jsonl and video/<key>.mp4 (lmms-lab/LVBench)',
  async load(dir) {
    const file = join(dir, 'video_info.meta.jsonl');
    return readJsonl(file).flatMap((d, i) => {
      const where = `line ${i + 1}`;
      const path = findVideo(join(dir, 'video'), str(d, 'key', file, where), file, `${where}.key`);
      return list(d.qa, file, `${where}.qa`).map((entry, j) => {
        const q = object(entry, file, `${where}.qa[${j}]`);
        const w = `${where}.qa[${j}]`;
        const type = q.question_type;
        const task = Array.isArray(type) ? type.map(String) : str(q, 'question_type', file, w);
        const text = `${str(q, 'question', file, w)}\nAnswer with the option's letter from the given choices directly.`;
        return { id: id(q, 'uid', file, w), task, letter: str(q, 'answer', file, w), content: async () => [video(path), { type: 'text', text }] as EvalPart[] };
      });
    });
  },
  score(samples, answers, { mode }) {
    const unparsed = new UnparsedList();
    const items: { task: string; correct: boolean }[] = [];
    const overall: boolean[] = [];
    for (const s of samples) {
      const r = answers.get(s.id);
      if (r === undefined) continue;
      const e = mode === 'official' ? officialLVBench(r) : mapIndex(robustLetterIndex(r, ['A', 'B', 'C', 'D']));
      const correct = unparsed.take(s.id, r, e) === s.letter;
      overall.push(correct);
      for (const task of [s.task].flat()) items.push({ task, correct });
    }
    const section = accuracySection('LVBench', items);
    section.overall = { task: 'Overall', value: (overall.filter(Boolean).length / overall.length) * 100, count: overall.length };
    return report('lvbench', mode, samples.length, answeredCount(samples, answers), [section], [{ name: 'LVBench', value: section.overall.value }], unparsed.items);
  },
};

// ---------------------------------------------------------------------------------------------------------------
// TempCompass: <format>/test-00000-of-00001.parquet, videos/<video_id>.mp4

type TempFormat = 'yes_no' | 'captioning' | 'caption_matching' | 'multi-choice';
/** The official order of the formats (loading and the report). */
const TEMP_FORMATS: TempFormat[] = ['yes_no', 'captioning', 'caption_matching', 'multi-choice'];
const TEMP_DIMS = ['action', 'direction', 'speed', 'order', 'attribute_change'];
const TEMP_TAILS: Record<TempFormat, string> = {
  yes_no: "Please answer with 'yes' or 'no' directly.",
  captioning: 'Please answer with the caption directly.',
  caption_matching: 'Please directly give the best option:',
  'multi-choice': "Please answer with the option's letter from the given choices directly and only give the best option.",
};

type TempSample = EvalSample & { task: string; format: TempFormat; answer: string; question: string };

export const tempcompass: Benchmark<TempSample> = {
  name: 'tempcompass',
  title: 'TempCompass',
  modality: 'video',
  layout: '<format>/test-00000-of-00001.parquet for multi-choice, yes_no, caption_matching and (optional, GPT-judged) captioning (lmms-lab/TempCompass) and videos/<video_id>.mp4',
  async load(dir) {
    const out: TempSample[] = [];
    for (const format of TEMP_FORMATS) {
      const file = join(dir, format, 'test-00000-of-00001.parquet');
      // Captioning is scored only by a GPT judge: a copy of the release without it still runs the other three.
      if (format === 'captioning' && !existsSync(file)) continue;
      (await readParquet(file)).forEach((d, i) => {
        const where = `row ${i}`;
        const path = mustExist(join(dir, 'videos', `${str(d, 'video_id', file, where)}.mp4`), file, `${where}.video_id`);
        const question = str(d, 'question', file, where);
        const asked = format === 'captioning' ? pyStrip(question.replaceAll('Generated Caption:', '')) : question;
        const text = `Question: ${asked}\n${TEMP_TAILS[format]}`;
        out.push({ id: `${format}/${i}`, task: str(d, 'dim', file, where), format, question, answer: str(d, 'answer', file, where), content: async () => [video(path), { type: 'text', text }] });
      });
    }
    return out;
  },
  judgeAsks(s, response) {
    if (s.format !== 'captioning') return [];
    // The official evaluate() hands the judge the processed prediction, which for captioning is the answer lower-cased.
    return [{ key: s.id, messages: captionJudgeMessages(response.toLowerCase(), pyStrip(s.question.replaceAll('\nGenerated Caption:', ''))) }];
  },
  score(samples, answers, { mode, judged, judge }) {
    const unparsed = new UnparsedList();
    const items: { task: string; format: TempFormat; correct: boolean }[] = [];
    let captions = 0;
    let unjudged = 0;
    for (const s of samples) {
      const r = answers.get(s.id);
      if (r === undefined) continue;
      if (s.format === 'captioning') {
        captions++;
        const reply = judged?.get(s.id);
        if (reply === undefined) {
          unjudged++;
          continue;
        }
        // The judge's option, prefix-matched against the letter of the gold answer ("B. dunking a basketball").
        const choice = captionJudgeChoice(reply);
        if (!choice.ok) unparsed.items.push({ id: s.id, response: r, reason: `${choice.reason}: ${JSON.stringify(reply.slice(0, 200))}` });
        const gt = pyStrip(s.answer.split('.')[0]!).toLowerCase();
        items.push({ task: s.task, format: s.format, correct: (choice.ok ? choice.value : 'None').toLowerCase().startsWith(gt) });
        continue;
      }
      // The official extraction never guesses beyond prefix matching; --robust keeps it and does not fail on yes/no.
      const e = officialTempCompass(s.format, r, s.answer);
      const value = mode === 'robust' && !e.ok ? r : unparsed.take(s.id, r, e);
      items.push({ task: s.task, format: s.format, correct: value === s.answer });
    }
    const judgedCaptions = captions > 0 && unjudged < captions;
    const formats = TEMP_FORMATS.filter((f) => f !== 'captioning' || judgedCaptions);
    const sections = [...formats.map((f) => accuracySection(f, items.filter((i) => i.format === f), TEMP_DIMS)), accuracySection('total', items, TEMP_DIMS)];
    const notes: string[] = [];
    if (captions === 0) notes.push('No captioning/test-00000-of-00001.parquet in --data: "total" covers multi-choice, yes/no and caption matching.');
    else if (!judged) notes.push(`The ${captions} captioning answers are judged by a GPT model in the official code: give --judge-url and --judge-model to score them; "total" covers multi-choice, yes/no and caption matching.`);
    else notes.push(`Captioning judged by ${judge ?? 'the judge'}${unjudged ? `; ${unjudged} of ${captions} captions not judged yet (a judge request failed: run again)` : ''}.`);
    const headline = judgedCaptions && unjudged === 0 ? 'TempCompass' : 'TempCompass (3 formats)';
    return report('tempcompass', mode, samples.length, answeredCount(samples, answers), sections, [{ name: headline, value: sections.at(-1)!.overall.value }], unparsed.items, notes);
  },
};

// ---------------------------------------------------------------------------------------------------------------
// Charades-STA: charades_annotations_test-random_prompt.json, Charades_v1/<video>

/** IoU of predicted spans with the gold span as `base.py` sums them: Σ overlap / (gold + Σ predicted − Σ overlap). */
export function groundingIoU(spans: readonly [number, number][], gold: readonly [number, number]): number {
  let intersection = 0;
  let union = gold[1] - gold[0];
  for (const span of spans) {
    const [s, e] = [Math.min(...span), Math.max(...span)];
    intersection += Math.max(0, Math.min(e, gold[1]) - Math.max(s, gold[0]));
    union += e - s;
  }
  union -= intersection;
  return union === 0 ? 0 : intersection / union;
}

export const charadesSta: Benchmark<EvalSample & { gold: [number, number] }> = {
  name: 'charades_sta',
  title: 'Charades-STA',
  modality: 'video',
  layout: 'charades_annotations_test-random_prompt.json and Charades_v1/<video>',
  async load(dir) {
    const file = join(dir, 'charades_annotations_test-random_prompt.json');
    return list(readJson(file), file, '').map((entry, i) => {
      const where = `[${i}]`;
      const d = object(entry, file, where);
      const path = mustExist(join(dir, 'Charades_v1', str(d, 'video', file, where)), file, `${where}.video`);
      const conversation = list(d.conversation, file, `${where}.conversation`);
      const question = str(object(conversation[0], file, `${where}.conversation[0]`), 'content', file, `${where}.conversation[0]`);
      const span = list(list(d.timestamps, file, `${where}.timestamps`)[0], file, `${where}.timestamps[0]`).map(Number);
      if (span.length !== 2 || !span.every(Number.isFinite)) throw new EvalDataError(file, `${where}.timestamps[0]`, 'expected [start, end] in seconds');
      const text = `${question}Please output the start and end timestamps in seconds.`;
      return { id: id(d, 'question_id', file, where), gold: span as [number, number], content: async () => [video(path), { type: 'text', text }] as EvalPart[] };
    });
  },
  score(samples, answers, { mode }) {
    const ious: number[] = [];
    const unparsed: Report['unparsed'] = [];
    for (const s of samples) {
      const r = answers.get(s.id);
      if (r === undefined) continue;
      const spans = officialCharadesSpans(r);
      if (spans.length === 0) unparsed.push({ id: s.id, response: r, reason: 'no time span in the answer (IoU 0)' });
      ious.push(groundingIoU(spans, s.gold));
    }
    const pct = (v: number) => (v / ious.length) * 100;
    const rows = [0.3, 0.5, 0.7].map((t) => ({ task: `R1@${t}`, value: pct(ious.filter((x) => x >= t).length), count: ious.length }));
    const mIoU = { task: 'mIoU', value: pct(ious.reduce((a, b) => a + b, 0)), count: ious.length };
    return report('charades_sta', mode, samples.length, answeredCount(samples, answers), [{ name: 'Charades-STA', unit: '%', rows, overall: mIoU }], [{ name: 'Charades-STA mIoU', value: mIoU.value }], unparsed);
  },
};

// ---------------------------------------------------------------------------------------------------------------
// ActivityNet-QA: test_q.json, test_a.json, all_test/v_<video_name>.<ext>

/** Question types of test_a.json (the numbering of the ActivityNet-QA evaluation code). */
const ANET_TYPES = ['Motion', 'Spatial Relation', 'Temporal Relation', 'Yes/No', 'Color', 'Object', 'Location', 'Number', 'Other'];

type AnetSample = EvalSample & { task: string; question: string; answer: string };

export const activitynetQa: Benchmark<AnetSample> = {
  name: 'activitynet_qa',
  title: 'ActivityNet-QA',
  modality: 'video',
  layout: 'test_q.json, test_a.json and all_test/v_<video_name>.{mp4,avi,mov,mkv,webm} (MILVLG/activitynet-qa); GPT-judged: --judge-url',
  async load(dir) {
    const file = join(dir, 'test_q.json');
    const answersFile = join(dir, 'test_a.json');
    const answers = new Map<string, { answer: string; type: number }>();
    list(readJson(answersFile), answersFile, '').forEach((entry, i) => {
      const d = object(entry, answersFile, `[${i}]`);
      answers.set(id(d, 'question_id', answersFile, `[${i}]`), { answer: str(d, 'answer', answersFile, `[${i}]`), type: num(d, 'type', answersFile, `[${i}]`) });
    });
    return list(readJson(file), file, '').map((entry, i) => {
      const where = `[${i}]`;
      const d = object(entry, file, where);
      const qid = id(d, 'question_id', file, where);
      const gold = answers.get(qid);
      if (!gold) throw new EvalDataError(answersFile, qid, `no answer for question_id ${qid} of test_q.json`);
      const task = ANET_TYPES[gold.type];
      if (task === undefined) throw new EvalDataError(answersFile, `${qid}.type`, `expected a question type 0-8, got ${gold.type}`);
      const path = findVideo(join(dir, 'all_test'), `v_${id(d, 'video_name', file, where)}`, file, `${where}.video_name`, ['mp4', 'avi', 'mov', 'mkv', 'webm']);
      const question = str(d, 'question', file, where);
      const text = `Question: ${question}\nPlease watch the video and answer the question clearly and concisely.\n`;
      return { id: qid, task, question, answer: gold.answer, content: async () => [video(path), { type: 'text', text }] as EvalPart[] };
    });
  },
  judgeAsks(s, response, mode) {
    return [{ key: s.id, messages: activitynetJudgeMessages(s.question, s.answer, response), again: (reply) => !activitynetVerdict(reply, mode).ok }];
  },
  score(samples, answers, { mode, judged, judge }) {
    const answered = answeredCount(samples, answers);
    if (!judged) {
      return report('activitynet_qa', mode, samples.length, answered, [], [{ name: 'ActivityNet-QA accuracy', value: null }, { name: 'ActivityNet-QA score', value: null }], [], [
        'ActivityNet-QA is scored by a GPT judge: give --judge-url and --judge-model (an OpenAI-compatible endpoint) to score the answers kept here.',
      ]);
    }
    const unparsed: Report['unparsed'] = [];
    const items: { task: string; correct: boolean; score: number }[] = [];
    let unjudged = 0;
    for (const s of samples) {
      const r = answers.get(s.id);
      if (r === undefined) continue;
      const reply = judged.get(s.id);
      if (reply === undefined) {
        unjudged++;
        continue;
      }
      const v = activitynetVerdict(reply, mode);
      // An unreadable verdict counts as "no" with score 0 (the official code would ask until it can read one).
      if (!v.ok) unparsed.push({ id: s.id, response: r, reason: `${v.reason}: ${JSON.stringify(reply.slice(0, 200))}` });
      items.push({ task: s.task, correct: v.ok && v.value.match, score: v.ok ? v.value.score : 0 });
    }
    const accuracy = accuracySection('ActivityNet-QA accuracy', items, ANET_TYPES);
    const by = new Map<string, number[]>();
    for (const t of ANET_TYPES) by.set(t, []);
    for (const it of items) by.get(it.task)!.push(it.score);
    const mean = (v: number[]) => (v.length === 0 ? NaN : v.reduce((a, b) => a + b, 0) / v.length);
    const scores: Section = {
      name: 'ActivityNet-QA score',
      unit: 'score',
      rows: [...by].filter(([, v]) => v.length > 0).map(([task, v]) => ({ task, value: mean(v), count: v.length })),
      overall: { task: 'Overall', value: mean(items.map((i) => i.score)), count: items.length },
    };
    const notes = [`Judged by ${judge ?? 'the judge'} with the official prompt; accuracy is the share of "yes" verdicts, score their mean (0-5).`];
    if (unjudged) notes.push(`${unjudged} answers not judged yet (a judge request failed: run again).`);
    return report('activitynet_qa', mode, samples.length, answered, [accuracy, scores], [{ name: 'ActivityNet-QA accuracy', value: accuracy.overall.value }, { name: 'ActivityNet-QA score', value: scores.overall.value }], unparsed, notes);
  },
};
