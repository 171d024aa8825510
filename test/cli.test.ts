// The `vl3` command as users run it, in child processes: help and environment twins, exit codes, `chat` with piped
// input keeping its history, and `serve` answering over HTTP until SIGTERM.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { VideoLLaMA3 } from '../src/api/videollama3.js';
import type { Message } from '../src/processing/conversation.js';
import { fixturesDir, FIXTURES_MISSING, repoRoot, servedUrl, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const vl3 = join(repoRoot(), 'dist', 'src', 'cli', 'vl3.js');
const run = (args: string[], input?: string, env: NodeJS.ProcessEnv = {}) =>
  spawnSync(process.execPath, [vl3, ...args], { input, encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 });
/** As `run`, without blocking this process (a test may serve something the child connects to). */
const runAsync = (args: string[]) =>
  new Promise<{ status: number | null; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [vl3, ...args], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 120_000 });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('exit', (status) => resolve({ status, stderr }));
  });

describe('vl3 command line', () => {
  it('documents every command with --help, each flag with its VL3_ twin', () => {
    for (const command of ['ask', 'chat', 'serve', 'pull', 'ls', 'inspect', 'info', 'quantize', 'train', 'eval']) {
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
    // One line naming the problem and a hint, not the whole help.
    for (const [args, problem, hint] of [
      [['ask', '--model', 'x', '--threads', 'zero', 'hi'], /--threads must be an integer/, 'vl3 ask --help'],
      [['chat'], /required option '-m, --model <ref>'/, 'vl3 chat --help'],
      [['serve', '--model', 'x', '--port', '-1'], /--port must be an integer >= 0/, 'vl3 serve --help'],
      [['dev', 'random-checkpoint', '--preset', '3b', '--out', '/tmp/x'], /Allowed choices are 2b, 7b/, 'vl3 dev random-checkpoint --help'],
      [['frobnicate'], /unknown command 'frobnicate'/, 'vl3 --help'],
    ] as const) {
      const r = run([...args]);
      assert.equal(r.status, 2, args.join(' '));
      const lines = r.stderr.trimEnd().split('\n');
      assert.equal(lines.length, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(lines[0]!, problem);
      assert.ok(lines[1]!.includes(hint), lines[1]);
    }
    const failure = run(['ask', '--model', '/nonexistent/model-dir', 'hi'], undefined, { HF_HUB_OFFLINE: '1' });
    assert.equal(failure.status, 1);
    assert.match(failure.stderr, /^vl3: .*nonexistent\/model-dir/m);
  });

  it('info shows the tiers and what the runtime flags or their VL3_ twins resolve to', () => {
    const defaults = run(['info', '--json'], undefined, { VL3_ISA: undefined, VL3_COMPUTE: undefined, VL3_THREADS: undefined });
    assert.equal(defaults.status, 0, defaults.stderr);
    const info = JSON.parse(defaults.stdout) as { tiers: string[]; isa: string; compute: string; threads: number; features: string[] };
    assert.ok(info.tiers.includes('scalar'));
    assert.equal(info.isa, info.tiers.at(-1), 'the best tier by default');
    const chosen = JSON.parse(run(['info', '--json', '--isa', 'scalar', '--compute', 'exact', '--threads', '1']).stdout) as typeof info;
    assert.deepEqual([chosen.isa, chosen.compute, chosen.threads], ['scalar', 'exact', 1]);
    const fromEnv = JSON.parse(run(['info', '--json'], undefined, { VL3_ISA: 'scalar', VL3_COMPUTE: 'bf16' }).stdout) as typeof info;
    assert.deepEqual([fromEnv.isa, fromEnv.compute], ['scalar', 'bf16']);
    const text = run(['info', '--isa', 'scalar']);
    assert.match(text.stdout, /^in use {4}scalar kernels, \d+ threads?, (exact|bf16) compute \(isa set by flag or environment\)$/m);
    const absent = ['neon', 'avx2', 'avx512', 'avx512bf16'].find((t) => !info.tiers.includes(t))!;
    const missing = run(['info', '--isa', absent]);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, new RegExp(`isa '${absent}' is not available`));
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

  it('chat reads only the new message of each turn from the prefix cache; --feature-cache-bytes and its twin bound the caches', async () => {
    const image = join(fixtures!, 'media', 'cat.jpg');
    const script = [`/image ${image}`, 'What is this?', 'Tell me more.', 'And then?', '/stats', ''].join('\n');
    const r = run(['chat', '--model', checkpoint, '--greedy', '--max-new-tokens', '70', '--feature-cache-bytes', '64MiB'], script, { VL3_PREFIX_CACHE_BYTES: '3GiB' });
    assert.equal(r.status, 0, r.stderr);
    // After each answer the chat reads its history back with the answer (cachePrompt); each turn then resumes right
    // before its new message, and each read-back where its turn resumed (the messages are too short to end a chunk).
    // The image was encoded once.
    const options = { greedy: true, maxNewTokens: 70, addSystemPrompt: true };
    const history: Message[] = [];
    const prompts: number[] = [];
    const readBacks: number[] = [];
    for (const text of ['What is this?', 'Tell me more.', 'And then?']) {
      history.push({ role: 'user', content: [...(history.length ? [] : [{ type: 'image' as const, image }]), { type: 'text', text }] });
      const result = await model.chat(history, options).result;
      prompts.push(result.usage.promptTokens);
      history.push({ role: 'assistant', content: result.text });
      readBacks.push((await model.prepare(history, { addSystemPrompt: true, addGenerationPrompt: false })).llmInputIds.length);
    }
    const reused = prompts[0]! + 2 * readBacks[0]! + 2 * readBacks[1]!;
    assert.match(r.stdout, /feature cache: 0 hits, 1 misses, 1 entries, [\d.]+ MiB of 64\.0 MiB/);
    assert.match(r.stdout, new RegExp(`prefix cache: 5 hits \\(${reused} prompt tokens reused\\), 1 misses, 1 entries, [\\d.]+ MiB of 3072\\.0 MiB`));
    const off = run(['chat', '--model', checkpoint, '--max-new-tokens', '1', '--prefix-cache-bytes', '0'], 'Hi.\n/stats\n', { VL3_FEATURE_CACHE_BYTES: '0' });
    assert.match(off.stdout, /feature cache: off\nprefix cache: off/);
    const bad = run(['chat', '--model', checkpoint, '--prefix-cache-bytes', '2 GB']);
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--prefix-cache-bytes must be a whole number of bytes/);
  });

  it('serve exits at once, naming the problem, when it cannot start', async () => {
    const busy = http.createServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
    const port = String((busy.address() as AddressInfo).port);
    try {
      for (const [args, problem] of [
        [['--port', port], new RegExp(`127\\.0\\.0\\.1:${port}: the port is in use`)],
        [['--port', '0', '--allowed-local-media-path', '/nonexistent/media'], /allowed local media folder \/nonexistent\/media cannot be used: it does not exist/],
      ] as const) {
        const started = Date.now();
        const r = await runAsync(['serve', '--model', checkpoint, ...args]);
        assert.equal(r.status, 1, r.stderr);
        assert.match(r.stderr, problem);
        // The model's worker thread is closed too: the process ends by itself, well before the test's limit.
        assert.ok(Date.now() - started < 60_000);
      }
    } finally {
      busy.close();
    }
  });

  it('serve answers over HTTP from a worker thread and shuts down cleanly on SIGTERM', async () => {
    const server = spawn(process.execPath, [vl3, 'serve', '--port', '0', '--feature-cache-bytes', '1048576'], {
      env: { ...process.env, VL3_MODEL: checkpoint, VL3_PREFIX_CACHE_BYTES: '512MiB' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const { url, stderr } = await servedUrl(server);
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
    // The caches' bounds from the flag and from the environment twin, the request counted.
    const health = (await (await fetch(`${url}/health`)).json()) as { caches: Record<string, { misses: number; max_bytes: number; entries: number }> };
    assert.equal(health.caches.features!.max_bytes, 1048576);
    assert.deepEqual([health.caches.prefix!.max_bytes, health.caches.prefix!.misses, health.caches.prefix!.entries], [512 * 2 ** 20, 1, 1]);
    const exited = new Promise<number | null>((resolve) => server.once('exit', resolve));
    server.kill('SIGTERM');
    assert.equal(await exited, 0, stderr());
    assert.match(stderr(), /shutting down/);
  });
});
