// `vl3 eval` end to end on the tiny checkpoint: tiny datasets in the benchmarks' release formats (JSON + videos,
// Parquet + subtitles, JSON lines + images), a resumed run against an uninterrupted one, and `--server` against a
// real `vl3 serve`.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ByteWriter, parquetWrite } from 'hyparquet-writer';
import { findFfmpeg, runTool } from '../src/processing/ffmpeg.js';
import { fixturesDir, FIXTURES_MISSING, repoRoot, servedUrl, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const vl3 = join(repoRoot(), 'dist', 'src', 'cli', 'vl3.js');

function run(args: string[]) {
  return spawnSync(process.execPath, [vl3, ...args], { encoding: 'utf8', timeout: 300_000, env: { ...process.env, VL3_THREADS: '2' } });
}

async function video(file: string, seconds: number): Promise<void> {
  const ffmpeg = await findFfmpeg();
  const args = ['-nostdin', '-loglevel', 'error', '-f', 'lavfi', '-i', `testsrc=s=64x48:r=4:d=${seconds}`, '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-y', file];
  const { code, stderr } = await runTool(ffmpeg.program, args);
  if (code !== 0) throw new Error(`ffmpeg could not write ${file}: ${stderr}`);
}

const MVBENCH_FILES = ['action_sequence', 'action_prediction', 'action_antonym', 'fine_grained_action', 'unexpected_action', 'object_existence', 'object_interaction', 'object_shuffle', 'moving_direction', 'action_localization', 'scene_transition', 'action_count', 'moving_count', 'moving_attribute', 'state_change', 'fine_grained_pose', 'character_order', 'egocentric_navigation', 'episodic_reasoning', 'counterfactual_inference'];

describe('vl3 eval', { skip: !fixtures && FIXTURES_MISSING }, () => {
  let work: string;
  const checkpoint = fixtures ? join(fixtures, TINY_CHECKPOINT) : '';
  const data = (name: string) => join(work, 'data', name);

  before(async () => {
    work = mkdtempSync(join(tmpdir(), 'vl3-eval-'));
    // MVBench: json/<task>.json for the 20 tasks, videos under video/<source>/; a STAR clip with start/end.
    mkdirSync(join(data('mvbench'), 'json'), { recursive: true });
    for (const folder of ['star/Charades_v1_480', 'perception/videos']) mkdirSync(join(data('mvbench'), 'video', folder), { recursive: true });
    await video(join(data('mvbench'), 'video', 'star/Charades_v1_480', 'a.mp4'), 6);
    copyFileSync(join(data('mvbench'), 'video', 'star/Charades_v1_480', 'a.mp4'), join(data('mvbench'), 'video', 'perception/videos', 'b.mp4'));
    for (const name of MVBENCH_FILES) writeFileSync(join(data('mvbench'), 'json', `${name}.json`), '[]');
    writeFileSync(join(data('mvbench'), 'json', 'action_sequence.json'), JSON.stringify([{ video: 'a.mp4', question: 'What did the person do first?', candidates: ['Sat down.', 'Stood up.', 'Ran.'], answer: 'Stood up.', start: 1.5, end: 4.5 }]));
    writeFileSync(join(data('mvbench'), 'json', 'object_shuffle.json'), JSON.stringify([
      { video: 'b.mp4', question: 'Where is the ball?', candidates: ['left', 'middle', 'right'], answer: 'right' },
      { video: 'b.mp4', question: 'How many cups?', candidates: ['1', '2', '3', '4'], answer: '3' },
    ]));
    // VideoMME: the Parquet file of lmms-lab/Video-MME (options a list column), videos/, subtitles/.
    mkdirSync(join(data('videomme'), 'videomme'), { recursive: true });
    mkdirSync(join(data('videomme'), 'videos'));
    mkdirSync(join(data('videomme'), 'subtitles'));
    await video(join(data('videomme'), 'videos', 'v001.mp4'), 3);
    writeFileSync(join(data('videomme'), 'subtitles', 'v001.srt'), '1\n00:00:00,500 --> 00:00:01,500\nhello there\n\n2\n00:00:01,500 --> 00:00:02,900\ngeneral\nkenobi\n');
    const writer = new ByteWriter();
    parquetWrite({
      writer,
      columnData: [
        { name: 'videoID', data: ['v001'] },
        { name: 'question_id', data: ['001-1'] },
        { name: 'task_type', data: ['Counting Problem'] },
        { name: 'question', data: ['How many shapes?'] },
        { name: 'options', data: [['A. One.', 'B. Two.', 'C. Three.', 'D. Four.']] },
        { name: 'answer', data: ['C'] },
      ],
      schema: [
        { name: 'root', num_children: 6 },
        ...['videoID', 'question_id', 'task_type', 'question'].map((name) => ({ name, type: 'BYTE_ARRAY' as const, converted_type: 'UTF8' as const, repetition_type: 'OPTIONAL' as const })),
        { name: 'options', repetition_type: 'OPTIONAL', converted_type: 'LIST', num_children: 1 },
        { name: 'list', repetition_type: 'REPEATED', num_children: 1 },
        { name: 'element', type: 'BYTE_ARRAY', converted_type: 'UTF8', repetition_type: 'OPTIONAL' },
        { name: 'answer', type: 'BYTE_ARRAY', converted_type: 'UTF8', repetition_type: 'OPTIONAL' },
      ],
    });
    writeFileSync(join(data('videomme'), 'videomme', 'test-00000-of-00001.parquet'), new Uint8Array(writer.getBuffer()));
    // DocVQA: val.jsonl naming images beside it.
    mkdirSync(join(data('docvqa'), 'images'), { recursive: true });
    copyFileSync(join(fixtures!, 'media', 'cat.jpg'), join(data('docvqa'), 'images', 'cat.jpg'));
    writeFileSync(join(data('docvqa'), 'val.jsonl'), `${JSON.stringify({ question_id: 7, image: 'images/cat.jpg', question: 'What animal is this?', answer: ['cat', 'kitten'] })}\n`);
  });

  after(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  const evalArgs = (bench: string, out: string, more: string[] = []) => ['eval', bench, '--data', data(bench), '--model', checkpoint, '--out', out, '--max-new-tokens', '6', ...more];
  const results = (out: string) => JSON.parse(readFileSync(join(out, 'results.json'), 'utf8'));
  const predictions = (out: string) => readFileSync(join(out, 'predictions.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).sort((a, b) => a.id.localeCompare(b.id));

  it('runs MVBench, and a resumed run gives what an uninterrupted one gives', () => {
    const whole = join(work, 'out', 'mvbench-whole');
    const r = run(evalArgs('mvbench', whole));
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /MVBench:\n\s+task/);
    assert.match(r.stdout, /Action Sequence/);
    const report = results(whole);
    assert.equal(report.samples, 3);
    assert.equal(report.answered, 3);
    assert.equal(report.sections[0].overall.count, 3);
    // Stopped after one sample (as Ctrl-C leaves it: the lines written so far), then run again.
    const resumed = join(work, 'out', 'mvbench-resumed');
    assert.equal(run(evalArgs('mvbench', resumed, ['--limit', '1'])).status, 0);
    assert.equal(predictions(resumed).length, 1);
    const again = run(evalArgs('mvbench', resumed));
    assert.equal(again.status, 0, again.stderr);
    assert.deepEqual(predictions(resumed), predictions(whole));
    assert.deepEqual(results(resumed).sections, report.sections);
    assert.match(readFileSync(join(resumed, 'results.md'), 'utf8'), /\| Object Shuffle \|/);
  });

  it('Ctrl-C keeps the answers given so far and exits 130; the next run answers only the rest', async () => {
    // DocVQA's layout with enough questions that the interrupt lands mid-run.
    const dir = join(work, 'data', 'docvqa-many');
    mkdirSync(join(dir, 'images'), { recursive: true });
    copyFileSync(join(fixtures!, 'media', 'cat.jpg'), join(dir, 'images', 'cat.jpg'));
    const n = 40;
    writeFileSync(join(dir, 'val.jsonl'), Array.from({ length: n }, (_, i) => JSON.stringify({ question_id: i, image: 'images/cat.jpg', question: `What is in picture ${i}?`, answer: ['cat'] })).join('\n') + '\n');
    const args = (out: string) => ['eval', 'docvqa', '--data', dir, '--model', checkpoint, '--out', out, '--max-new-tokens', '6'];
    const out = join(work, 'out', 'interrupted');
    const file = join(out, 'predictions.jsonl');
    const lines = () => (existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean).length : 0);
    const status = await new Promise<number | null>((resolve) => {
      const child = spawn(process.execPath, [vl3, ...args(out)], { stdio: 'ignore', env: { ...process.env, VL3_THREADS: '2' } });
      const poll = setInterval(() => {
        if (lines() >= 2) {
          clearInterval(poll);
          child.kill('SIGINT');
        }
      }, 20);
      child.once('exit', (code) => {
        clearInterval(poll);
        resolve(code);
      });
    });
    assert.equal(status, 130);
    const kept = lines();
    assert.ok(kept >= 2 && kept < n, `${kept} answers kept of ${n}`);
    const before = readFileSync(file, 'utf8');
    const resumed = run(args(out));
    assert.equal(resumed.status, 0, resumed.stderr);
    assert.ok(readFileSync(file, 'utf8').startsWith(before), 'the kept answers stay as they were');
    const whole = join(work, 'out', 'uninterrupted');
    assert.equal(run(args(whole)).status, 0);
    assert.deepEqual(predictions(out), predictions(whole));
    assert.deepEqual(results(out).sections, results(whole).sections);
  });

  it('runs VideoMME from its Parquet file, with and without subtitles', () => {
    const out = join(work, 'out', 'videomme');
    const r = run(evalArgs('videomme', out));
    assert.equal(r.status, 0, r.stderr);
    const report = results(out);
    assert.deepEqual(report.sections.map((s: { name: string; overall: { count: number } }) => [s.name, s.overall.count]), [['VideoMME w/o subtitles', 1], ['VideoMME w/ subtitles', 1]]);
  });

  it('runs DocVQA (ANLS), and fails naming the file and field of bad data', () => {
    const out = join(work, 'out', 'docvqa');
    const r = run(evalArgs('docvqa', out));
    assert.equal(r.status, 0, r.stderr);
    const value = results(out).sections[0].overall.value;
    assert.ok(value >= 0 && value <= 100);
    writeFileSync(join(data('docvqa'), 'val.jsonl'), `${JSON.stringify({ question_id: 8, image: 'images/cat.jpg', answer: 'x' })}\n`);
    const bad = run(evalArgs('docvqa', join(work, 'out', 'bad')));
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /val\.jsonl line 1\.question: expected a string, got nothing/);
    const usage = run(['eval', 'nosuch', '--data', work, '--model', checkpoint]);
    assert.equal(usage.status, 2);
    assert.match(usage.stderr, /unknown benchmark "nosuch"/);
  });

  it('evaluates a vl3 serve over HTTP with the same prompts: the same answers as the library', async () => {
    const server = spawn(process.execPath, [vl3, 'serve', '--port', '0', '--model', checkpoint, '--max-frames', '180', '--allowed-local-media-path', work, '--threads', '2'], { stdio: ['ignore', 'ignore', 'pipe'] });
    try {
      const { url } = await servedUrl(server);
      const out = join(work, 'out', 'mvbench-server');
      const child = spawn(process.execPath, [vl3, 'eval', 'mvbench', '--data', data('mvbench'), '--server', url, '--server-model', 'VideoLLaMA3-2B-tiny-random', '--out', out, '--max-new-tokens', '6', '--concurrency', '2'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
      assert.equal(code, 0, err);
      const library = join(work, 'out', 'mvbench-whole');
      if (!existsSync(join(library, 'predictions.jsonl'))) assert.equal(run(evalArgs('mvbench', library)).status, 0);
      assert.deepEqual(predictions(out), predictions(library));
      // The clip fields are checked like every other number of a request.
      const bad = await fetch(`${url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'VideoLLaMA3-2B-tiny-random', messages: [{ role: 'user', content: [{ type: 'video_url', video_url: { url: `file://${data('mvbench')}/video/perception/videos/b.mp4`, start_time: -1 } }] }] }),
      });
      assert.equal(bad.status, 400);
      assert.match(((await bad.json()) as { error: { param: string } }).error.param, /messages\[0\]\.content\[0\]\.video_url\.start_time/);
    } finally {
      server.kill('SIGTERM');
    }
  });
});
