// Every `vl3 eval` loader not covered by eval.test.ts, end to end on the tiny checkpoint: a tiny dataset in each
// benchmark's release layout (the files the official evaluation code reads, a few samples sharing one generated video
// and one PNG), run through the library, then through one shared `vl3 serve`, which must give the same predictions.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parquetWriteBuffer } from 'hyparquet-writer';
import { officialCharadesSpans, officialEgoSchema, officialMME, relaxedCorrectness } from '../src/eval/extract.js';
import { pyStrip } from '../src/eval/python.js';
import { groundingIoU } from '../src/eval/video.js';
import { findFfmpeg, runTool } from '../src/processing/ffmpeg.js';
import { fixturesDir, FIXTURES_MISSING, repoRoot, servedUrl, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const vl3 = join(repoRoot(), 'dist', 'src', 'cli', 'vl3.js');
const MODEL_NAME = 'VideoLLaMA3-2B-tiny-random';

type PromptPart = string | { image: string } | { video: string; start?: number; end?: number };
interface Prediction {
  id: string;
  response: string;
  prompt: PromptPart[];
}
interface Row {
  task: string;
  value: number;
  count: number;
}
interface Results {
  benchmark: string;
  samples: number;
  answered: number;
  sections: { name: string; unit: string; rows: Row[]; overall: Row }[];
  headline: { name: string; value: number | null }[];
  unparsed: { id: string; response: string; reason: string }[];
  notes: string[];
  failures: unknown[];
}
interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
  results: Results;
  predictions: Map<string, Prediction>;
  markdown: string;
}

function read(out: string, status: number | null, stdout: string, stderr: string, expectStatus = 0): Run {
  assert.equal(status, expectStatus, stderr);
  const predictions = new Map<string, Prediction>();
  for (const line of readFileSync(join(out, 'predictions.jsonl'), 'utf8').trim().split('\n')) {
    const p = JSON.parse(line) as Prediction;
    predictions.set(p.id, p);
  }
  return { status, stdout, stderr, results: JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')), predictions, markdown: readFileSync(join(out, 'results.md'), 'utf8') };
}

/** `vl3 eval` in a child process, awaited without blocking this process (the fake judge below answers from it). */
async function evalCli(args: string[], out: string): Promise<Run> {
  const child = spawn(process.execPath, [vl3, 'eval', ...args, '--out', out, '--max-new-tokens', '6'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VL3_THREADS: '2' } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const status = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  return read(out, status, stdout, stderr);
}

const evalLibrary = (bench: string, data: string, out: string, more: string[] = []) => evalCli([bench, '--data', data, '--model', join(fixtures!, TINY_CHECKPOINT), ...more], out);
const evalServer = (url: string, bench: string, data: string, out: string, more: string[] = []) => evalCli([bench, '--data', data, '--server', url, '--server-model', MODEL_NAME, ...more], out);

/** What every run must write: all samples answered, the sections with their sample counts, the Markdown and table. */
function checkCommon(run: Run, samples: number, sections: [string, number][]): void {
  const { results } = run;
  assert.equal(results.samples, samples);
  assert.equal(results.answered, samples);
  assert.equal(run.predictions.size, samples);
  assert.deepEqual(results.failures, []);
  assert.deepEqual(results.sections.map((s) => [s.name, s.overall.count]), sections);
  assert.ok(run.markdown.includes(`${samples} of ${samples} samples answered.`), run.markdown);
  for (const [name] of sections) {
    assert.ok(run.markdown.includes(`## ${name}\n`), `results.md has "${name}"`);
    assert.ok(run.stdout.includes(`${name}:\n`), `the table has "${name}"`);
  }
  for (const s of results.sections) for (const r of [...s.rows, s.overall]) assert.ok(Number.isFinite(r.value), `${s.name} ${r.task}: ${r.value}`);
  // Every answer is either scored or listed as unparsed with its reason.
  for (const u of results.unparsed) assert.equal(run.predictions.get(u.id)?.response, u.response);
}

const rows = (run: Run, section = 0) => run.results.sections[section]!.rows.map((r) => [r.task, r.count]);
const lastText = (p: Prediction) => p.prompt.at(-1) as string;

async function ffmpeg(args: string[]): Promise<void> {
  const { program } = await findFfmpeg();
  const { code, stderr } = await runTool(program, ['-nostdin', '-loglevel', 'error', ...args]);
  if (code !== 0) throw new Error(`ffmpeg ${args.join(' ')}: ${stderr}`);
}

const utf8 = (name: string) => ({ name, type: 'BYTE_ARRAY' as const, converted_type: 'UTF8' as const, repetition_type: 'OPTIONAL' as const });
type ImageCell = { bytes: Uint8Array; path: string } | null;

/** A Parquet file as `datasets` writes one: strings annotated UTF8, images as {bytes: binary, path: string}. */
function writeParquet(file: string, strings: Record<string, string[]>, images: Record<string, ImageCell[]> = {}): void {
  const schema: object[] = [{ name: 'root', num_children: Object.keys(strings).length + Object.keys(images).length }];
  for (const name of Object.keys(strings)) schema.push(utf8(name));
  for (const name of Object.keys(images)) schema.push({ name, repetition_type: 'OPTIONAL', num_children: 2 }, { name: 'bytes', type: 'BYTE_ARRAY', repetition_type: 'OPTIONAL' }, utf8('path'));
  const columnData = [...Object.entries(strings), ...Object.entries(images)].map(([name, data]) => ({ name, data }));
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, new Uint8Array(parquetWriteBuffer({ columnData, schema: schema as never })));
}

interface JudgeRequest {
  model: string;
  messages: { role: string; content: string }[];
  temperature: number;
  top_p: number;
  max_tokens: number;
}

/**
 * A stand-in for the third-party GPT judge (an Azure OpenAI deployment in the official code, external to this
 * project): a real HTTP server with the OpenAI chat-completions route, answering fixed replies chosen by the
 * question in the prompt, so that the tests can check how the replies are asked for, parsed and recorded. It refuses
 * the model "missing-model" with HTTP 400, as an OpenAI server refuses an unknown model.
 */
async function startFakeJudge(reply: (user: string) => string): Promise<{ url: string; requests: JudgeRequest[]; close(): void }> {
  const requests: JudgeRequest[] = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      const request = JSON.parse(body) as JudgeRequest;
      res.setHeader('content-type', 'application/json');
      if (req.url !== '/v1/chat/completions' || req.method !== 'POST') {
        res.statusCode = 404;
        res.end(JSON.stringify({ error: { message: `no route ${req.method} ${req.url}` } }));
        return;
      }
      if (request.model === 'missing-model') {
        res.statusCode = 400;
        res.end(JSON.stringify({ error: { message: 'The model `missing-model` does not exist' } }));
        return;
      }
      requests.push(request);
      const content = reply(request.messages.at(-1)!.content);
      res.end(JSON.stringify({ id: `judge-${requests.length}`, object: 'chat.completion', model: request.model, choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }] }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, requests, close: () => server.close() };
}

/** The fake judge's replies: by the question each prompt ends with. */
function judgeReply(user: string): string {
  if (user.includes('Question: what is the person doing\nCorrect Answer:')) return "{'pred': 'yes', 'score': 4}";
  if (user.includes('Question: is it raining\nCorrect Answer:')) return '{"pred": "no", "score": "1.5"}';
  if (user.includes('Question: how many people are there\nCorrect Answer:')) return 'I think the answer is correct.';
  if (user.includes('Question: what colour is the shirt\nCorrect Answer:')) return "```python\n{'pred': 'yes', 'score': 5}\n```";
  if (user.includes("Multi-Choice Question:\nYou will be presented")) return 'Reasoning: the caption says the man runs.\nAnswer: A';
  if (user.includes('Multi-Choice Question:\nPlease identify')) return 'The caption does not say.';
  if (user.includes('Your output: ')) return user.includes('Question: Which bar is the longest?, Ground Truth:') ? 'True' : 'False';
  throw new Error(`the fake judge got an unexpected prompt: ${user.slice(-300)}`);
}

const MMMU_SUBJECTS = [
  'Accounting', 'Agriculture', 'Architecture_and_Engineering', 'Art', 'Art_Theory', 'Basic_Medical_Science', 'Biology', 'Chemistry', 'Clinical_Medicine', 'Computer_Science',
  'Design', 'Diagnostics_and_Laboratory_Medicine', 'Economics', 'Electronics', 'Energy_and_Power', 'Finance', 'Geography', 'History', 'Literature', 'Manage',
  'Marketing', 'Materials', 'Math', 'Mechanical_Engineering', 'Music', 'Pharmacy', 'Physics', 'Psychology', 'Public_Health', 'Sociology',
];
const MME_TASKS = ['existence', 'count', 'position', 'color', 'posters', 'celebrity', 'scene', 'landmark', 'artwork', 'OCR', 'commonsense_reasoning', 'numerical_calculation', 'text_translation', 'code_reasoning'];
const LETTER = "Answer with the option's letter from the given choices directly.";
const CAPTION_QUESTIONS = [
  "You will be presented with a video and several pieces of information. Please identify the information that is consistent with the video and generate a video caption accordingly.\nInformation A: {'subject': 'man', 'action': 'running'}\nInformation B: {'subject': 'man', 'action': 'walking'}\nGenerated Caption:",
  "Please identify the information consistent with the video and write a caption.\nInformation A: {'subject': 'man', 'direction': 'left'}\nInformation B: {'subject': 'man', 'direction': 'right'}\nGenerated Caption:",
];

describe('vl3 eval: every loader on its release layout', { skip: !fixtures && FIXTURES_MISSING }, () => {
  let work: string;
  let clip: string;
  let png: string;
  let judge: Awaited<ReturnType<typeof startFakeJudge>>;
  const data = (name: string) => join(work, 'data', name);
  const out = (name: string) => join(work, 'out', name);
  /** Library runs, by benchmark, for the server runs to compare against. */
  const library = new Map<string, { data: string; run: Run }>();

  const put = (file: string, content: string | object) => {
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content));
  };
  const video = (file: string) => {
    mkdirSync(dirname(file), { recursive: true });
    copyFileSync(clip, file);
  };
  const image = (file: string) => {
    mkdirSync(dirname(file), { recursive: true });
    copyFileSync(png, file);
  };

  before(async () => {
    work = mkdtempSync(join(tmpdir(), 'vl3-eval-loaders-'));
    clip = join(work, 'media', 'clip.mp4');
    png = join(work, 'media', 'picture.png');
    mkdirSync(join(work, 'media'));
    // Frames at 0, 1, 2, 3 s at the protocol's 1 fps; the video ends at 4 s.
    await ffmpeg(['-f', 'lavfi', '-i', 'testsrc=s=64x48:r=4:d=4', '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-y', clip]);
    await ffmpeg(['-f', 'lavfi', '-i', 'testsrc=s=64x48', '-frames:v', '1', '-y', png]);
    judge = await startFakeJudge(judgeReply);
  });

  after(() => {
    judge?.close();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  const runLibrary = async (bench: string, dir: string, more: string[] = []) => {
    const run = await evalLibrary(bench, dir, out(bench), more);
    library.set(bench, { data: dir, run });
    return run;
  };

  describe('video', () => {
    it('EgoSchema: the subset scored from subset_answers.json, every answer in the submission file', async () => {
      const dir = data('egoschema');
      const question = (q: string) => ({ q_uid: q, google_drive_id: 'x', question: `What is C doing in ${q}?`, 'option 0': 'cooking', 'option 1': 'reading', 'option 2': 'walking', 'option 3': 'sleeping', 'option 4': 'painting' });
      put(join(dir, 'questions.json'), [question('ego-a'), question('ego-b')]);
      video(join(dir, 'good_clips_git', 'ego-a.mp4'));
      video(join(dir, 'good_clips_git', 'ego-b.mp4'));
      put(join(dir, 'subset_answers.json'), { 'ego-a': 2 });
      const run = await runLibrary('egoschema', dir);
      checkCommon(run, 2, [['EgoSchema subset', 1]]);
      const p = run.predictions.get('ego-b')!;
      assert.deepEqual(p.prompt[0], { video: join(dir, 'good_clips_git', 'ego-b.mp4') });
      assert.equal(lastText(p), "Select the best answer to the following multiple-choice question based on the video.\nWhat is C doing in ego-b?\nOptions:\n(A) cooking\n(B) reading\n(C) walking\n(D) sleeping\n(E) painting\nAnswer with the option's letter from the given choices directly and only give the best option. The best answer is: ");
      const submission = JSON.parse(readFileSync(join(out('egoschema'), 'egoschema-submission.json'), 'utf8'));
      for (const id of ['ego-a', 'ego-b']) {
        const e = officialEgoSchema(run.predictions.get(id)!.response, ['cooking', 'reading', 'walking', 'sleeping', 'painting']);
        assert.equal(submission[id], e.ok ? e.value : -1, id);
      }
      assert.equal(run.results.sections[0]!.overall.value, submission['ego-a'] === 2 ? 100 : 0);
    });

    it('PerceptionTest: the test split goes to a submission file, grouped by video', async () => {
      const dir = data('perception_test');
      const q = (id: number, question: string) => ({ id, question, options: ['a ball', 'a cup', 'a shoe'], area: 'memory', reasoning: 'descriptive', tag: ['objects'] });
      put(join(dir, 'mc_question_test.json'), {
        video_1: { metadata: { video_id: 'video_1', num_frames: 16, resolution: [64, 48] }, mc_question: [q(0, 'What was hidden?'), q(1, 'What moved first?')] },
        video_2: { metadata: { video_id: 'video_2', num_frames: 16, resolution: [64, 48] }, mc_question: [q(0, 'What fell?')] },
      });
      video(join(dir, 'videos', 'video_1.mp4'));
      video(join(dir, 'videos', 'video_2.mp4'));
      const run = await runLibrary('perception_test', dir);
      checkCommon(run, 3, []);
      assert.deepEqual(run.results.headline, [{ name: 'PerceptionTest', value: null }]);
      assert.equal(lastText(run.predictions.get('video_1_1')!), "Question: What moved first?\nOptions:\n(A) a ball\n(B) a cup\n(C) a shoe\nAnswer with the option's letter from the given choices directly and only give the best option.");
      const submission = JSON.parse(readFileSync(join(out('perception_test'), 'perception_test-submission.json'), 'utf8'));
      assert.deepEqual(Object.keys(submission).sort(), ['video_1', 'video_2']);
      assert.deepEqual(submission.video_1.map((e: { id: number }) => e.id), [0, 1]);
      for (const e of [...submission.video_1, ...submission.video_2]) assert.equal(e.answer, e.answer_id === -1 ? null : ['a ball', 'a cup', 'a shoe'][e.answer_id]);
    });

    it('MLVU: the seven dev task files, rows in the official order', async () => {
      const dir = data('mlvu');
      for (const f of ['7_topic_reasoning', '6_anomaly_reco', '2_needle', '3_ego', '5_order']) put(join(dir, 'json', `${f}.json`), []);
      put(join(dir, 'json', '4_count.json'), [{ video: 'count.mp4', duration: 4, question: 'How many times does the ball bounce?', candidates: ['1', '2', '3'], answer: '2', question_type: 'count' }]);
      put(join(dir, 'json', '1_plotQA.json'), [{ video: 'plot.mp4', duration: 4, question: 'What colour is the car?', candidates: ['red', 'blue', 'green', 'black'], answer: 'blue', question_type: 'plotQA' }]);
      video(join(dir, 'video', '4_count', 'count.mp4'));
      video(join(dir, 'video', '1_plotQA', 'plot.mp4'));
      const run = await runLibrary('mlvu', dir);
      checkCommon(run, 2, [['MLVU dev', 2]]);
      assert.deepEqual(rows(run), [['PQA: (Plot QA)', 1], ['AC:  (Action Count)', 1]]);
      assert.equal(lastText(run.predictions.get('4_count/0')!), "Question: How many times does the ball bounce?\nOptions:\n(A) 1\n(B) 2\n(C) 3\nAnswer with the option's letter from the given choices directly and only give the best option.");
    });

    it('LongVideoBench: frames and subtitles interleaved by time, both subtitle formats, L1 and L2', async () => {
      const dir = data('longvideobench');
      const entry = (id: string, subtitle: string, offset: number, level: string, category: string, correct: number) => ({
        video_id: 'clip', video_path: 'clip.mp4', subtitle_path: subtitle, duration: 4, starting_timestamp_for_subtitles: offset, question: 'What happens?', question_wo_referring_query: 'What happens?',
        candidates: ['one', 'two', 'three', 'four'], correct_choice: correct, id, level, question_category: category, topic_category: 'NP-News-Programs', duration_group: 8,
      });
      put(join(dir, 'lvb_val.json'), [entry('lvb-1', 'clip_en.json', 0, 'L1-Perception', 'S2E', 1), entry('lvb-2', 'clip_other.json', 10, 'L2-Relation', 'E3E', 3)]);
      video(join(dir, 'videos', 'clip.mp4'));
      // Middles 0.8 s and 2.35 s; the second is shorter than 1 s, widened to [1.85, 2.85], which holds the frame at 2 s.
      put(join(dir, 'subtitles', 'clip_en.json'), [{ timestamp: [0.2, 1.4], text: 'first line' }, { timestamp: [2.1, 2.6], text: 'second line' }]);
      // pysubs2-style times, shifted by starting_timestamp_for_subtitles (10 s); the second lies past the video: dropped.
      put(join(dir, 'subtitles', 'clip_other.json'), [{ start: '00:00:10.500', end: '00:00:11.000', line: 'short one' }, { start: '00:00:20.000', end: '00:00:21.000', line: 'after the end' }]);
      const run = await runLibrary('longvideobench', dir);
      checkCommon(run, 2, [['LongVideoBench val', 2], ['L1-Perception', 1], ['L2-Relation', 1]]);
      assert.deepEqual(rows(run), [['S2E', 1], ['E3E', 1]]);
      const path = join(dir, 'videos', 'clip.mp4');
      const instruction = `Question: What happens?\nA. one\nB. two\nC. three\nD. four\n${LETTER}`;
      // Each run of frames a clip reaching halfway to the frames beside it (frames 0 | 1, 2 | 3).
      assert.deepEqual(run.predictions.get('lvb-1')!.prompt, [{ video: path, start: 0, end: 0.5 }, 'first line', { video: path, start: 0.5, end: 2.5 }, 'second line', { video: path, start: 2.5, end: 4 }, instruction]);
      assert.deepEqual(run.predictions.get('lvb-2')!.prompt, [{ video: path, start: 0, end: 0.5 }, 'short one', { video: path, start: 0.5, end: 4 }, instruction]);
    });

    it('LVBench: questions with several types count once overall', async () => {
      const dir = data('lvbench');
      const qa = (uid: number, types: string[], answer: string) => ({ uid, question: 'What is on screen?\n(A) a dog\n(B) a cat\n(C) a car\n(D) a tree', answer, question_type: types, time_reference: '00:01-00:03' });
      put(join(dir, 'video_info.meta.jsonl'), `${JSON.stringify({ key: 'lv_clip', type: 'documentary', qa: [qa(101, ['key information retrieval', 'entity recognition'], 'B'), qa(102, ['reasoning'], 'D')] })}\n`);
      video(join(dir, 'video', 'lv_clip.mp4'));
      const run = await runLibrary('lvbench', dir);
      checkCommon(run, 2, [['LVBench', 2]]);
      assert.deepEqual(rows(run), [['key information retrieval', 1], ['entity recognition', 1], ['reasoning', 1]]);
      assert.equal(lastText(run.predictions.get('101')!), `What is on screen?\n(A) a dog\n(B) a cat\n(C) a car\n(D) a tree\n${LETTER}`);
    });

    it('NExT-QA: test.csv through the video map, accuracy by Descriptive, Causal, Temporal', async () => {
      const dir = data('nextqa');
      put(join(dir, 'test.csv'), [
        'video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4',
        '4010069381,369,640,480,"why does the man, at the start, wave",2,6,CW,to dance,to greet,to call the dog,to stretch,to leave',
        '4010069381,369,640,480,what does the man do after waving,0,7,TN,sits down,jumps,runs,sings,claps',
        '7771,120,640,480,how many people are there,4,1,DC,one,two,three,four,five',
      ].join('\n'));
      put(join(dir, 'map_vid_vidorID.json'), { '4010069381': '1006/4010069381', '7771': '0000/7771' });
      video(join(dir, 'NExTVideo', '1006', '4010069381.mp4'));
      video(join(dir, 'NExTVideo', '0000', '7771.mp4'));
      const run = await runLibrary('nextqa', dir);
      checkCommon(run, 3, [['NExT-QA', 3]]);
      assert.deepEqual(rows(run), [['Descriptive', 1], ['Causal', 1], ['Temporal', 1]]);
      assert.equal(lastText(run.predictions.get('4010069381_6')!), "Question: why does the man, at the start, wave\nOptions:\n(A) to dance\n(B) to greet\n(C) to call the dog\n(D) to stretch\n(E) to leave\nAnswer with the option's letter from the given choices directly and only give the best option.");
    });

    it('TempCompass: the four formats with their instructions; captioning answered but not judged without a judge', async () => {
      const dir = data('tempcompass');
      writeParquet(join(dir, 'multi-choice', 'test-00000-of-00001.parquet'), { video_id: ['tc_1'], question: ['What is the man doing?\nA. running\nB. walking'], answer: ['A. running'], dim: ['action'] });
      writeParquet(join(dir, 'yes_no', 'test-00000-of-00001.parquet'), { video_id: ['tc_1'], question: ['Is the man running?'], answer: ['yes'], dim: ['speed'] });
      writeParquet(join(dir, 'caption_matching', 'test-00000-of-00001.parquet'), { video_id: ['tc_1'], question: ['Which caption matches the video better?\nCaption A: The man runs left.\nCaption B: The man runs right.'], answer: ['Caption A: The man runs left.'], dim: ['direction'] });
      writeParquet(join(dir, 'captioning', 'test-00000-of-00001.parquet'), { video_id: ['tc_1', 'tc_1'], question: [CAPTION_QUESTIONS[0], CAPTION_QUESTIONS[1]], answer: ['A. running', 'B. right'], dim: ['action', 'direction'] });
      video(join(dir, 'videos', 'tc_1.mp4'));
      const run = await runLibrary('tempcompass', dir);
      checkCommon(run, 5, [['yes_no', 1], ['caption_matching', 1], ['multi-choice', 1], ['total', 3]]);
      assert.deepEqual(run.results.headline.map((h) => h.name), ['TempCompass (3 formats)']);
      assert.deepEqual(rows(run, 3), [['action', 1], ['direction', 1], ['speed', 1]]);
      assert.equal(lastText(run.predictions.get('yes_no/0')!), "Question: Is the man running?\nPlease answer with 'yes' or 'no' directly.");
      assert.equal(lastText(run.predictions.get('caption_matching/0')!), 'Question: Which caption matches the video better?\nCaption A: The man runs left.\nCaption B: The man runs right.\nPlease directly give the best option:');
      assert.equal(lastText(run.predictions.get('multi-choice/0')!), "Question: What is the man doing?\nA. running\nB. walking\nPlease answer with the option's letter from the given choices directly and only give the best option.");
      assert.equal(lastText(run.predictions.get('captioning/0')!), "Question: You will be presented with a video and several pieces of information. Please identify the information that is consistent with the video and generate a video caption accordingly.\nInformation A: {'subject': 'man', 'action': 'running'}\nInformation B: {'subject': 'man', 'action': 'walking'}\nPlease answer with the caption directly.");
      assert.ok(run.results.notes.some((n) => /captioning/.test(n) && /--judge-url/.test(n)), run.results.notes.join('\n'));
    });

    it('Charades-STA: the grounding instruction, R1@0.3/0.5/0.7 and mIoU from the spans in the answers', async () => {
      const dir = data('charades_sta');
      const entry = (qid: string, sentence: string, span: [number, number]) => ({ video: 'AB12C.mp4', duration: 4, timestamps: [span], sentences: [sentence], conversation: [{ role: 'user', content: `Find the moment when ${sentence}. ` }], question_id: qid });
      put(join(dir, 'charades_annotations_test-random_prompt.json'), [entry('AB12C_0', 'a person opens a door', [0.5, 2.5]), entry('AB12C_1', 'the person sits down', [1, 3.5])]);
      video(join(dir, 'Charades_v1', 'AB12C.mp4'));
      const run = await runLibrary('charades_sta', dir);
      checkCommon(run, 2, [['Charades-STA', 2]]);
      assert.deepEqual(rows(run), [['R1@0.3', 2], ['R1@0.5', 2], ['R1@0.7', 2]]);
      assert.equal(run.results.sections[0]!.overall.task, 'mIoU');
      assert.deepEqual(run.predictions.get('AB12C_0')!.prompt, [{ video: join(dir, 'Charades_v1', 'AB12C.mp4') }, 'Find the moment when a person opens a door. Please output the start and end timestamps in seconds.']);
      const ious = [['AB12C_0', [0.5, 2.5]], ['AB12C_1', [1, 3.5]]].map(([id, gold]) => groundingIoU(officialCharadesSpans(run.predictions.get(id as string)!.response), gold as [number, number]));
      assert.equal(run.results.sections[0]!.overall.value, ((ious[0]! + ious[1]!) / 2) * 100);
    });
  });

  describe('image', () => {
    it('InfoVQA: the val JSON with its images/ folder, ANLS', async () => {
      const dir = data('infovqa');
      put(join(dir, 'infographicsVQA_val_v1.0_withQT.json'), {
        dataset_name: 'infographicsVQA', dataset_split: 'val',
        data: [
          { questionId: 65718, question: 'What share of people walk to work?', answers: ['25%', '25'], image_local_name: '20471.png', answer_type: ['single span'] },
          { questionId: 65719, question: 'Which colour is the title?', answers: ['blue'], image_local_name: '20472.png', answer_type: ['single span'] },
        ],
      });
      image(join(dir, 'images', '20471.png'));
      image(join(dir, 'images', '20472.png'));
      const run = await runLibrary('infovqa', dir);
      checkCommon(run, 2, [['InfoVQA val', 2]]);
      assert.deepEqual(run.predictions.get('65718')!.prompt, [{ image: join(dir, 'images', '20471.png') }, 'What share of people walk to work?\nAnswer the question with a single word or phrase.']);
    });

    it('ChartQA: the augmented and human splits (same question ids), overall the mean of the two', async () => {
      const dir = data('chartqa');
      put(join(dir, 'test_augmented_renamed.jsonl'), `${JSON.stringify({ question_id: 1, image: 'test/png/a1.png', question: 'What is the highest value?', answer: '42' })}\n`);
      put(join(dir, 'test_human_renamed.jsonl'), [{ question_id: 1, image: 'test/png/h1.png', question: 'Which bar is the longest?', answer: 'Blue' }, { question_id: 2, image: 'test/png/h1.png', question: 'How many bars?', answer: ['3', 'three'] }].map((l) => JSON.stringify(l)).join('\n'));
      image(join(dir, 'test', 'png', 'a1.png'));
      image(join(dir, 'test', 'png', 'h1.png'));
      const run = await runLibrary('chartqa', dir);
      checkCommon(run, 3, [['ChartQA', 3]]);
      assert.deepEqual(rows(run), [['augmented', 1], ['human', 2]]);
      const [a, h] = run.results.sections[0]!.rows;
      assert.equal(run.results.sections[0]!.overall.value, (a!.value + h!.value) / 2);
      assert.equal(lastText(run.predictions.get('human/2')!), 'How many bars?\nAnswer the question using a single word or phrase.');
    });

    it('OCRBench: correct answers counted per type', async () => {
      const dir = data('ocrbench');
      put(join(dir, 'OCRBench.json'), [
        { dataset_name: 'IIIT5K', id: 0, image_path: 'IIIT5K/a.png', question: 'what is written in the image?', answers: ['HELLO'], type: 'Regular Text Recognition' },
        { dataset_name: 'HME100k', id: 1, image_path: 'HME100k/b.png', question: 'Please write out the expression of the formula in the image using LaTeX format.', answers: 'x ^ 2', type: 'Handwritten Mathematical Expression Recognition' },
      ]);
      image(join(dir, 'OCRBench_Images', 'IIIT5K', 'a.png'));
      image(join(dir, 'OCRBench_Images', 'HME100k', 'b.png'));
      const run = await runLibrary('ocrbench', dir);
      checkCommon(run, 2, [['OCRBench', 2]]);
      const section = run.results.sections[0]!;
      assert.equal(section.unit, 'count');
      assert.deepEqual(rows(run), [['Regular Text Recognition', 1], ['Handwritten Mathematical Expression Recognition', 1]]);
      assert.ok(Number.isInteger(section.overall.value) && section.overall.value <= 2);
    });

    it('AI2D: the VLMEvalKit JSON lines, the question verbatim', async () => {
      const dir = data('ai2d');
      const question = 'Which part is the root?\nA. a\nB. b\nC. c\nD. d\nAnswer with the option\'s letter from the given choices directly.';
      put(join(dir, 'ai2d_test_vlmevalkit.jsonl'), [{ question_id: 'ai2d-1', image: 'images/1.png', question, answer: 'C' }, { question_id: 'ai2d-2', image: 'images/1.png', question, answer: 'A' }].map((l) => JSON.stringify(l)).join('\n'));
      image(join(dir, 'images', '1.png'));
      const run = await runLibrary('ai2d', dir);
      checkCommon(run, 2, [['AI2D', 2]]);
      assert.equal(lastText(run.predictions.get('ai2d-1')!), question);
    });

    it('MMMU: images embedded in the Parquet files, placed where the question and options name them', async () => {
      const dir = data('mmmu');
      const bytes = new Uint8Array(readFileSync(png));
      const cell = { bytes, path: 'picture.png' };
      const none = (n: number) => Array.from({ length: n }, () => null);
      const row = (id: string, question: string, options: string, type: string, answer: string, images: ImageCell[][]) => writeParquet(
        join(dir, id.split('_')[1]!, 'validation-00000-of-00001.parquet'),
        { id: [id], question: [question], options: [options], explanation: [''], img_type: ["['Diagrams']"], answer: [answer], topic_difficulty: ['Easy'], question_type: [type], subfield: ['x'] },
        Object.fromEntries(images.map((v, k) => [`image_${k + 1}`, v])),
      );
      row('validation_Art_1', 'Which colour dominates <image 1>?', "['red', 'blue', '<image 2>']", 'multiple-choice', 'B', [[cell], [cell], ...Array.from({ length: 5 }, () => none(1))]);
      row('validation_Math_1', 'What is x in <image 1>?', '[]', 'open', '3', [[cell], ...Array.from({ length: 6 }, () => none(1))]);
      // The other 28 subjects are there with no question (the release has all 30 folders).
      for (const subject of MMMU_SUBJECTS.filter((s) => s !== 'Art' && s !== 'Math')) writeParquet(join(dir, subject, 'validation-00000-of-00001.parquet'), { id: [], question: [], options: [], answer: [], question_type: [] });
      const run = await runLibrary('mmmu', dir);
      checkCommon(run, 2, [['MMMU val', 2]]);
      assert.deepEqual(rows(run), [['Art', 1], ['Math', 1]]);
      const url = `data:application/octet-stream;base64,… (${'data:application/octet-stream;base64,'.length + Buffer.from(bytes).toString('base64').length} characters)`;
      assert.deepEqual(run.predictions.get('validation_Art_1')!.prompt, ['Which colour dominates <image 1>:', { image: url }, '?\n\n(A):red\n(B):blue\n(C):<image 2>:', { image: url }, `\n\n${LETTER}`]);
      assert.deepEqual(run.predictions.get('validation_Math_1')!.prompt, ['What is x in <image 1>:', { image: url }, '?\n\nAnswer the question using a single word or phrase.']);
    });

    it('GQA: answers from testdev_balanced_questions.json, accuracy per category', async () => {
      const dir = data('gqa');
      put(join(dir, 'llava_gqa_testdev_balanced.jsonl'), [
        { question_id: '201307251', image: 'n435808.png', text: 'Is the sky dark?\nAnswer the question using a single word or phrase.', category: 'verifyAttr' },
        { question_id: '201640614', image: 'n435808.png', text: 'What is on the table?\nAnswer the question using a single word or phrase.', category: 'queryObject' },
      ].map((l) => JSON.stringify(l)).join('\n'));
      put(join(dir, 'data', 'testdev_balanced_questions.json'), { '201307251': { answer: 'Yes', question: 'Is the sky dark?' }, '201640614': { answer: 'cup', question: 'What is on the table?' } });
      image(join(dir, 'data', 'images', 'n435808.png'));
      const run = await runLibrary('gqa', dir);
      checkCommon(run, 2, [['GQA', 2]]);
      assert.deepEqual(rows(run), [['verifyAttr', 1], ['queryObject', 1]]);
      assert.equal(lastText(run.predictions.get('201307251')!), 'Is the sky dark?\nAnswer the question using a single word or phrase.');
    });

    it('MME: both folder layouts, accuracy plus acc+ over the two questions of an image, perception and cognition sums', async () => {
      const dir = data('mme');
      const root = join(dir, 'MME_Benchmark_release_version');
      for (const task of MME_TASKS) mkdirSync(join(root, task), { recursive: true });
      for (const name of ['1', '2']) {
        image(join(root, 'existence', `${name}.png`));
        put(join(root, 'existence', `${name}.txt`), `Is there a cat in this image? Please answer yes or no.\tYes\nIs there a dog in this image? Please answer yes or no.\tNo\n`);
      }
      image(join(root, 'artwork', 'images', '10.png'));
      put(join(root, 'artwork', 'questions_answers_YN', '10.txt'), 'Is this artwork by Monet? Please answer yes or no.\tNo\nIs this artwork a painting? Please answer yes or no.\tYes\n');
      image(join(root, 'code_reasoning', '0001.png'));
      put(join(root, 'code_reasoning', '0001.txt'), 'Will this code print 3? Please answer yes or no.\tYes\nWill this code print 4? Please answer yes or no.\tNo\n');
      const run = await runLibrary('mme', dir);
      checkCommon(run, 8, [['MME', 8]]);
      const section = run.results.sections[0]!;
      assert.equal(section.unit, 'score');
      assert.deepEqual(section.rows.map((r) => [r.task, r.count]), [['existence', 4], ['artwork', 2], ['code_reasoning', 2], ['Perception', 0], ['Cognition', 0]]);
      assert.equal(lastText(run.predictions.get('existence1.pngYes')!), 'Is there a cat in this image?\nAnswer the question using a single word or phrase.\nPlease answer yes or no.');
      // The score of a subtask from its answers: accuracy + acc+ (both questions of an image right), in points.
      const score = (ids: string[]) => {
        const right = ids.map((id) => officialMME(run.predictions.get(id)!.response) === (id.endsWith('Yes') ? 'Yes' : 'No'));
        let plus = 0;
        for (let i = 0; i < right.length; i += 2) if (right[i] && right[i + 1]) plus++;
        return (right.filter(Boolean).length / right.length) * 100 + (plus * 200) / right.length;
      };
      const value = (task: string) => section.rows.find((r) => r.task === task)!.value;
      // The questions of an image follow each other, in the order of its .txt file.
      assert.equal(value('existence'), score(['existence1.pngYes', 'existence1.pngNo', 'existence2.pngYes', 'existence2.pngNo']));
      assert.equal(value('Perception'), value('existence') + value('artwork'));
      assert.equal(value('Cognition'), value('code_reasoning'));
      assert.equal(section.overall.value, value('Perception') + value('Cognition'));
    });
  });

  describe('GPT-judged parts, against an OpenAI-compatible judge endpoint', () => {
    const judgeArgs = (model = 'judge-model') => ['--judge-url', judge.url, '--judge-model', model];
    const judgements = (dir: string) => readFileSync(join(dir, 'judgements.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { key: string; judge: string; reply: string });

    it('ActivityNet-QA: the official prompts, yes/no and score read as Python dicts, unreadable verdicts asked again then counted', async () => {
      const dir = data('activitynet_qa');
      put(join(dir, 'test_q.json'), [
        { video_name: 'anet1', question_id: 'v_anet1_0', question: 'what is the person doing' },
        { video_name: 'anet1', question_id: 'v_anet1_1', question: 'is it raining' },
        { video_name: 'anet2', question_id: 'v_anet2_0', question: 'how many people are there' },
        { video_name: 'anet2', question_id: 'v_anet2_1', question: 'what colour is the shirt' },
      ]);
      put(join(dir, 'test_a.json'), [
        { question_id: 'v_anet1_0', answer: 'dancing', type: 0 },
        { question_id: 'v_anet1_1', answer: 'no', type: 3 },
        { question_id: 'v_anet2_0', answer: '2', type: 7 },
        { question_id: 'v_anet2_1', answer: 'red', type: 4 },
      ]);
      video(join(dir, 'all_test', 'v_anet1.mp4'));
      video(join(dir, 'all_test', 'v_anet2.webm'));
      const before = judge.requests.length;
      const run = await runLibrary('activitynet_qa', dir, judgeArgs());
      checkCommon(run, 4, [['ActivityNet-QA accuracy', 4], ['ActivityNet-QA score', 4]]);
      assert.deepEqual(rows(run), [['Motion', 1], ['Yes/No', 1], ['Color', 1], ['Number', 1]]);
      assert.ok(run.stderr.includes(`activitynet_qa: asking judge-model at ${judge.url} 4 questions (0 replies kept in judgements.jsonl)`), run.stderr);
      const [accuracy, score] = run.results.sections;
      // yes (4), no (1.5 as the string "1.5": float() reads it), and two replies literal_eval cannot read: no, 0.
      assert.equal(accuracy!.overall.value, 25);
      assert.equal(score!.unit, 'score');
      assert.equal(score!.overall.value, (4 + 1.5 + 0 + 0) / 4);
      assert.deepEqual(run.results.headline, [{ name: 'ActivityNet-QA accuracy', value: 25 }, { name: 'ActivityNet-QA score', value: 1.375 }]);
      assert.deepEqual(run.results.unparsed.map((u) => u.id).sort(), ['v_anet2_0', 'v_anet2_1']);
      assert.match(run.results.unparsed[0]!.reason, /not a Python literal/);
      // One request per readable verdict, three for each unreadable one.
      const requests = judge.requests.slice(before);
      assert.equal(requests.length, 1 + 1 + 3 + 3);
      for (const r of requests) assert.deepEqual([r.model, r.temperature, r.top_p, r.max_tokens], ['judge-model', 0.7, 0.95, 800]);
      const first = requests.find((r) => r.messages[1]!.content.includes('what is the person doing'))!;
      assert.equal(first.messages[0]!.role, 'system');
      assert.match(first.messages[0]!.content, /^You are an intelligent chatbot designed for evaluating the correctness of generative outputs/);
      const response = run.predictions.get('v_anet1_0')!.response;
      assert.ok(first.messages[1]!.content.startsWith(`Please evaluate the following video-based question-answer pair:\n\nQuestion: what is the person doing\nCorrect Answer: dancing\nPredicted Answer: ${response}\n\nProvide your evaluation only as a yes/no`));
      assert.equal(lastText(run.predictions.get('v_anet1_0')!), 'Question: what is the person doing\nPlease watch the video and answer the question clearly and concisely.\n');
      assert.deepEqual(run.predictions.get('v_anet2_0')!.prompt[0], { video: join(dir, 'all_test', 'v_anet2.webm') });
      assert.deepEqual(judgements(out('activitynet_qa')).map((j) => [j.key, j.judge]), ['v_anet1_0', 'v_anet1_1', 'v_anet2_0', 'v_anet2_1'].map((k) => [k, 'judge-model']));
    });

    it('ActivityNet-QA: a resumed run asks only what it has not, and gives what the uninterrupted run gives', async () => {
      const dir = library.get('activitynet_qa')!.data;
      const resumed = out('activitynet_qa-resumed');
      const before = judge.requests.length;
      const part = await evalLibrary('activitynet_qa', dir, resumed, [...judgeArgs(), '--limit', '2']);
      assert.equal(part.results.samples, 2);
      assert.equal(judge.requests.length - before, 2);
      const whole = await evalLibrary('activitynet_qa', dir, resumed, judgeArgs());
      assert.equal(judge.requests.length - before, 2 + 6);
      const uninterrupted = library.get('activitynet_qa')!.run;
      assert.deepEqual(whole.results.sections, uninterrupted.results.sections);
      assert.deepEqual(whole.results.headline, uninterrupted.results.headline);
      assert.deepEqual([...whole.predictions.values()], [...uninterrupted.predictions.values()]);
      const sorted = (dir: string) => judgements(dir).sort((a, b) => a.key.localeCompare(b.key));
      assert.deepEqual(sorted(resumed), sorted(out('activitynet_qa')));
    });

    it('ActivityNet-QA: --robust reads a verdict inside a code fence; kept verdicts are not asked again', async () => {
      const robust = out('activitynet_qa-robust');
      cpSync(out('activitynet_qa'), robust, { recursive: true });
      const before = judge.requests.length;
      const run = await evalLibrary('activitynet_qa', library.get('activitynet_qa')!.data, robust, [...judgeArgs(), '--robust']);
      assert.equal(judge.requests.length, before);
      assert.match(run.stderr, /asking .* 0 questions \(4 replies kept in judgements\.jsonl\)/);
      assert.equal(run.results.sections[0]!.overall.value, 50);
      assert.equal(run.results.sections[1]!.overall.value, (4 + 1.5 + 0 + 5) / 4);
      assert.deepEqual(run.results.unparsed.map((u) => u.id), ['v_anet2_0']);
    });

    it('ActivityNet-QA: a judge that refuses fails the samples (exit 1, tried again next run); another judge model is asked anew', async () => {
      const refused = out('activitynet_qa-refused');
      cpSync(out('activitynet_qa'), refused, { recursive: true });
      const child = spawn(process.execPath, [vl3, 'eval', 'activitynet_qa', '--data', library.get('activitynet_qa')!.data, '--model', join(fixtures!, TINY_CHECKPOINT), '--out', refused, ...judgeArgs('missing-model')], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.stdout.resume();
      const status = await new Promise<number | null>((resolve) => child.once('exit', resolve));
      const run = read(refused, status, '', stderr, 1);
      assert.match(stderr, /v_anet1_0 failed: judge \(v_anet1_0\): .*answered 400: The model `missing-model` does not exist/);
      assert.equal(run.results.failures.length, 4);
      assert.equal(run.results.sections[0]!.overall.count, 0);
      assert.ok(run.results.notes.some((n) => /4 answers not judged yet/.test(n)), run.results.notes.join('\n'));
      // A judge URL without its model is bad usage, refused before anything is loaded.
      const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'VL3_JUDGE_MODEL'));
      const usage = spawn(process.execPath, [vl3, 'eval', 'activitynet_qa', '--data', work, '--model', join(fixtures!, TINY_CHECKPOINT), '--judge-url', judge.url], { stdio: ['ignore', 'ignore', 'pipe'], env });
      let usageErr = '';
      usage.stderr.on('data', (d: Buffer) => (usageErr += d.toString()));
      assert.equal(await new Promise<number | null>((resolve) => usage.once('exit', resolve)), 2);
      assert.match(usageErr, /--judge-url and --judge-model go together/);
    });

    it('TempCompass captioning: the caption (lower-cased, as the official code hands it) judged against the options', async () => {
      const dir = library.get('tempcompass')!.data;
      const before = judge.requests.length;
      // The answers are kept: only the judge is asked, then all four formats are scored.
      const run = await evalLibrary('tempcompass', dir, out('tempcompass'), judgeArgs());
      checkCommon(run, 5, [['yes_no', 1], ['captioning', 2], ['caption_matching', 1], ['multi-choice', 1], ['total', 5]]);
      assert.deepEqual(run.results.headline.map((h) => h.name), ['TempCompass']);
      assert.equal(run.results.sections[1]!.overall.value, 50);
      assert.deepEqual(rows(run, 1), [['action', 1], ['direction', 1]]);
      assert.ok(run.results.unparsed.some((u) => u.id === 'captioning/1' && /Answer: A-D/.test(u.reason)));
      const requests = judge.requests.slice(before);
      assert.equal(requests.length, 2);
      const caption = run.predictions.get('captioning/0')!.response;
      const asked = requests.find((r) => r.messages[1]!.content.includes('You will be presented'))!;
      assert.deepEqual(asked.messages[0], { role: 'system', content: 'You are an AI assistant for question answering.' });
      assert.ok(asked.messages[1]!.content.startsWith('\nYou will receive a video description and a multi-choice question.'));
      assert.ok(asked.messages[1]!.content.endsWith(`\nVideo Description: ${caption.toLowerCase()}\nMulti-Choice Question:\n${CAPTION_QUESTIONS[0]!.replace('\nGenerated Caption:', '')}\n`));
    });

    it("ChartQA: answers that differ from the reference as text go to the judge, one question per reference", async () => {
      const dir = library.get('chartqa')!.data;
      const before = judge.requests.length;
      const run = await evalLibrary('chartqa', dir, out('chartqa'), judgeArgs());
      const requests = judge.requests.slice(before);
      const samples = [
        { id: 'augmented/1', question: 'What is the highest value?', gold: ['42'] },
        { id: 'human/1', question: 'Which bar is the longest?', gold: ['Blue'] },
        { id: 'human/2', question: 'How many bars?', gold: ['3', 'three'] },
      ];
      const expectedCorrect: Record<string, boolean> = {};
      let asked = 0;
      for (const s of samples) {
        const prediction = pyStrip(run.predictions.get(s.id)!.response);
        const verdicts = s.gold.map((g) => relaxedCorrectness(g, prediction));
        if (verdicts.includes(true)) expectedCorrect[s.id] = true;
        else {
          s.gold.forEach((g, k) => {
            if (verdicts[k] !== 'text') return;
            asked++;
            assert.ok(requests.some((r) => r.messages.length === 1 && r.messages[0]!.content.endsWith(`\nQuestion: ${s.question}, Ground Truth: ${g}, Answer: ${prediction}, Your output: `)), `${s.id} asked about ${g}`);
          });
          expectedCorrect[s.id] = verdicts.includes('text') && s.id === 'human/1';
        }
      }
      assert.equal(requests.length, asked);
      const value = (ids: string[]) => (ids.filter((id) => expectedCorrect[id]).length / ids.length) * 100;
      assert.deepEqual(run.results.sections[0]!.rows.map((r) => r.value), [value(['augmented/1']), value(['human/1', 'human/2'])]);
      assert.ok(run.results.notes.some((n) => n.includes('judged by judge-model at')), run.results.notes.join('\n'));
    });
  });

  // LongVideoBench sends a video item per run of frames between subtitles: up to 180 on one request.
  it('gives the same predictions and scores through one vl3 serve as through the library', { timeout: 300_000 }, async () => {
    assert.equal(library.size, 16, [...library.keys()].join(', '));
    const server = spawn(process.execPath, [vl3, 'serve', '--port', '0', '--model', join(fixtures!, TINY_CHECKPOINT), '--max-frames', '180', '--max-videos-per-request', '180', '--allowed-local-media-path', work, '--threads', '2'], { stdio: ['ignore', 'ignore', 'pipe'] });
    try {
      const { url } = await servedUrl(server);
      for (const [bench, { data: dir, run }] of library) {
        const served = await evalServer(url, bench, dir, out(`${bench}-server`), ['--concurrency', '2']);
        assert.deepEqual([...served.predictions.values()].sort((a, b) => a.id.localeCompare(b.id)), [...run.predictions.values()].sort((a, b) => a.id.localeCompare(b.id)), bench);
        if (bench === 'activitynet_qa') {
          // Without --judge-url the answers are kept, not scored.
          assert.deepEqual(served.results.sections, []);
          assert.ok(served.results.notes.some((n) => n.includes('--judge-url')));
          continue;
        }
        assert.deepEqual(served.results.sections, run.results.sections, bench);
        assert.deepEqual(served.results.unparsed.sort((a, b) => a.id.localeCompare(b.id)), run.results.unparsed.sort((a, b) => a.id.localeCompare(b.id)), bench);
      }
      // vl3 serve as the judge of TempCompass captioning: a real OpenAI-compatible endpoint, whose tiny random model
      // replies at random; each reply is kept, and read as the official code reads it (most are unreadable: listed).
      const judged = await evalServer(url, 'tempcompass', library.get('tempcompass')!.data, out('tempcompass-server'), ['--judge-url', url, '--judge-model', MODEL_NAME]);
      checkCommon(judged, 5, [['yes_no', 1], ['captioning', 2], ['caption_matching', 1], ['multi-choice', 1], ['total', 5]]);
      const kept = readFileSync(join(out('tempcompass-server'), 'judgements.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { key: string; judge: string; reply: string });
      assert.deepEqual(kept.map((k) => [k.key, k.judge]).sort(), [['captioning/0', MODEL_NAME], ['captioning/1', MODEL_NAME]]);
      const unreadable = kept.filter((k) => !/Answer: (?:[A-D]|None)/.test(k.reply)).map((k) => k.key).sort();
      assert.deepEqual(judged.results.unparsed.filter((u) => u.id.startsWith('captioning/')).map((u) => u.id).sort(), unreadable);
      // PerceptionTest's validation split (answer_id given) is scored here.
      const valid = data('perception_test-valid');
      const test = JSON.parse(readFileSync(join(data('perception_test'), 'mc_question_test.json'), 'utf8'));
      for (const v of Object.values(test) as { mc_question: { answer_id?: number }[] }[]) for (const q of v.mc_question) q.answer_id = 1;
      put(join(valid, 'mc_question_valid.json'), test);
      for (const v of ['video_1', 'video_2']) video(join(valid, 'videos', `${v}.mp4`));
      const served = await evalServer(url, 'perception_test', valid, out('perception_test-valid'));
      checkCommon(served, 3, [['PerceptionTest', 3]]);
      const submission = JSON.parse(readFileSync(join(out('perception_test-valid'), 'perception_test-submission.json'), 'utf8'));
      const right = [...submission.video_1, ...submission.video_2].filter((e: { answer_id: number }) => e.answer_id === 1).length;
      assert.equal(served.results.sections[0]!.overall.value, (right / 3) * 100);
      assert.ok(existsSync(join(out('perception_test-valid'), 'results.md')));
    } finally {
      server.kill('SIGTERM');
    }
  });
});
