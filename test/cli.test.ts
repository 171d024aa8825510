// The `vl3` command as users run it, in child processes: help and environment twins, exit codes, `chat` with piped
// input keeping its history, and `serve` answering over HTTP until SIGTERM.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { VideoLLaMA3 } from '../src/api/videollama3.js';
import type { Message } from '../src/processing/conversation.js';
import { fixturesDir, FIXTURES_MISSING, repoRoot, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const vl3 = join(repoRoot(), 'dist', 'src', 'cli', 'vl3.js');
const run = (args: string[], input?: string, env: NodeJS.ProcessEnv = {}) =>
  spawnSync(process.execPath, [vl3, ...args], { input, encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 });

describe('vl3 command line', () => {
  it('documents every command with --help, each flag with its VL3_ twin', () => {
    for (const command of ['ask', 'chat', 'serve', 'pull', 'ls', 'inspect']) {
      const r = run([command, '--help']);
      assert.equal(r.status, 0, `${command}: ${r.stderr}`);
      const flags = [...r.stdout.matchAll(/--([a-z][a-z0-9-]+)/g)].map((m) => m[1]!).filter((f) => f !== 'help');
      for (const f of new Set(flags)) assert.match(r.stdout, new RegExp(`VL3_${f.toUpperCase().replaceAll('-', '_')}`), `${command} --${f}`);
    }
  });

  it('exits 2 on bad usage and 1 on failures, naming what is wrong', () => {
    const usage = run(['ask', '--model', 'x', '--threads', 'zero', 'hi']);
    assert.equal(usage.status, 2);
    assert.match(usage.stderr, /--threads must be an integer/);
    const failure = run(['ask', '--model', '/nonexistent/model-dir', 'hi'], undefined, { HF_HUB_OFFLINE: '1' });
    assert.equal(failure.status, 1);
    assert.match(failure.stderr, /^vl3: .*nonexistent\/model-dir/m);
  });
});

describe('vl3 chat and serve', { skip: !fixtures && FIXTURES_MISSING }, () => {
  const checkpoint = fixtures ? join(fixtures, TINY_CHECKPOINT) : '';
  let model: VideoLLaMA3;
  before(async () => {
    model = await VideoLLaMA3.load(checkpoint);
  });

  it('chat keeps the conversation, attaches media with /image, and forgets it all on /reset', async () => {
    const image = join(fixtures!, 'media', 'cat.jpg');
    const script = [`/image ${image}`, 'What is this?', 'Tell me more.', '/video /nonexistent.mp4', '/reset', '/nope', 'Hello.', ''].join('\n');
    const r = run(['chat', '--model', checkpoint, '--greedy', '--max-new-tokens', '6'], script);
    assert.equal(r.status, 0, r.stderr);
    const answers = [...r.stdout.matchAll(/assistant> (.*)/g)].map((m) => m[1]!);
    assert.equal(answers.length, 3, r.stdout);

    const options = { greedy: true, maxNewTokens: 6, addSystemPrompt: true };
    const first: Message = { role: 'user', content: [{ type: 'image', image }, { type: 'text', text: 'What is this?' }] };
    const a1 = (await model.chat([first], options).result).text;
    const second: Message = { role: 'user', content: [{ type: 'text', text: 'Tell me more.' }] };
    const a2 = (await model.chat([first, { role: 'assistant', content: a1 }, second], options).result).text;
    const a3 = (await model.chat([{ role: 'user', content: [{ type: 'text', text: 'Hello.' }] }], options).result).text;
    assert.deepEqual(answers, [a1, a2, a3]);
    assert.match(r.stdout, /no such file: \/nonexistent\.mp4/);
    assert.match(r.stdout, /conversation cleared/);
    assert.match(r.stdout, /unknown command \/nope/);
  });

  it('serve answers over HTTP from a worker thread and shuts down cleanly on SIGTERM', async () => {
    const server = spawn(process.execPath, [vl3, 'serve', '--port', '0'], { env: { ...process.env, VL3_MODEL: checkpoint }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    const url = await new Promise<string>((resolve, reject) => {
      server.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        const m = / at (http:\/\/\S+) \(/.exec(stderr);
        if (m) resolve(m[1]!);
      });
      server.once('exit', (code) => reject(new Error(`serve exited (${code}): ${stderr}`)));
    });
    const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] };
    assert.deepEqual(models.data.map((m) => m.id), ['VideoLLaMA3-2B-tiny-random']);
    const response = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'VideoLLaMA3-2B-tiny-random', messages: [{ role: 'user', content: 'Hello.' }], max_tokens: 5, temperature: 0, repetition_penalty: 1 }),
    });
    const body = (await response.json()) as { choices: { message: { content: string } }[]; usage: { completion_tokens: number } };
    assert.equal(response.status, 200, JSON.stringify(body));
    const expected = await model.chat([{ role: 'user', content: 'Hello.' }], { greedy: true, maxNewTokens: 5, repetitionPenalty: 1 }).result;
    assert.equal(body.choices[0]!.message.content, expected.text);
    assert.equal(body.usage.completion_tokens, 5);
    const exited = new Promise<number | null>((resolve) => server.once('exit', resolve));
    server.kill('SIGTERM');
    assert.equal(await exited, 0, stderr);
    assert.match(stderr, /shutting down/);
  });
});
