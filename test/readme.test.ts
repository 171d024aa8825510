// Every example of the README runs as written and ends: its shell commands (with `npx vl3` resolved as in a project
// that installed the package), its conversation file, and its TypeScript, type-checked against the package's own
// types and run. Hub ids resolve offline from a Hugging Face cache holding the tiny checkpoint under the real names.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import ts from 'typescript';
import { fixturesDir, FIXTURES_MISSING, repoRoot, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const root = repoRoot();
const README = readFileSync(join(root, 'README.md'), 'utf8');
const HUB_ID = 'DAMO-NLP-SG/VideoLLaMA3-2B';

interface Block {
  lang: string;
  code: string;
}
const blocks: Block[] = [...README.matchAll(/^```(\w*)\n([\s\S]*?)^```$/gm)].map((m) => ({ lang: m[1]!, code: m[2]! }));
/** The shell commands of the README, one per line, comments dropped. */
const commands = blocks.filter((b) => b.lang === 'sh').flatMap((b) => b.code.split('\n').map((l) => l.replace(/(^|\s)#.*$/, '').trim()).filter(Boolean));
const tsBlocks = blocks.filter((b) => b.lang === 'ts');

/** Commands CI itself runs exactly (`.ci/run`: `npm ci`, the lockfile's `npm install`, then `npm test`). */
const RUN_BY_CI = ['npm install', 'npm test'];

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a command line through the shell, as a person would paste it, killing it after `timeoutMs`. */
function sh(line: string, cwd: string, env: NodeJS.ProcessEnv, timeoutMs = 180_000): Promise<Run> {
  return new Promise((resolve) => {
    const started = Date.now();
    const child = spawn('/bin/sh', ['-c', line], { cwd, env, timeout: timeoutMs });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('exit', (code) => resolve({ code, stdout, stderr, ms: Date.now() - started }));
  });
}

/** The cache `huggingface_hub` leaves after downloading `repoId`: blobs by hash, relative snapshot links, refs/main. */
function fillHubCache(cache: string, repoId: string, folder: string): void {
  const repo = join(cache, `models--${repoId.replace('/', '--')}`);
  const commit = createHash('sha1').update(repoId).digest('hex');
  mkdirSync(join(repo, 'blobs'), { recursive: true });
  mkdirSync(join(repo, 'refs'), { recursive: true });
  mkdirSync(join(repo, 'snapshots', commit), { recursive: true });
  writeFileSync(join(repo, 'refs', 'main'), commit);
  for (const name of readdirSync(folder)) {
    const data = readFileSync(join(folder, name));
    const blob = createHash('sha256').update(data).digest('hex');
    writeFileSync(join(repo, 'blobs', blob), data);
    symlinkSync(`../../blobs/${blob}`, join(repo, 'snapshots', commit, name));
  }
}

/** True while some process of the group `id` is alive. */
function groupAlive(id: number): boolean {
  try {
    process.kill(-id, 0);
    return true;
  } catch {
    return false;
  }
}

describe('the README examples', { skip: !fixtures && FIXTURES_MISSING }, () => {
  let work: string;
  let project: string;
  let env: NodeJS.ProcessEnv;

  before(() => {
    // <work>/project is a project that installed the package; <work>/shared is the fixtures' folder, so that the
    // README's `../shared/fixtures/...` works from it as from a checkout; <work>/home is $HOME.
    work = mkdtempSync(join(tmpdir(), 'vl3-readme-'));
    project = join(work, 'project');
    const home = join(work, 'home');
    mkdirSync(join(project, 'node_modules', '.bin'), { recursive: true });
    mkdirSync(join(home, 'media'), { recursive: true });
    symlinkSync(dirname(fixtures!), join(work, 'shared'));
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'readme-examples', private: true, type: 'module' }));
    symlinkSync(root, join(project, 'node_modules', 'videollama3'));
    for (const dep of ['openai', '@types']) symlinkSync(join(root, 'node_modules', dep), join(project, 'node_modules', dep));
    // npm marks a package's bin executable when it installs it; the build leaves it as tsc writes it.
    const bin = join(root, 'dist', 'src', 'cli', 'vl3.js');
    chmodSync(bin, 0o755);
    symlinkSync(bin, join(project, 'node_modules', '.bin', 'vl3'));
    const media = join(fixtures!, 'media');
    copyFileSync(join(media, 'cat.jpg'), join(project, 'photo.jpg'));
    copyFileSync(join(media, 'sample_demo_3.mp4'), join(project, 'clip.mp4'));
    copyFileSync(join(media, 'desert.jpg'), join(project, 'desert.jpg'));
    copyFileSync(join(media, 'cat.jpg'), join(home, 'media', 'cat.jpg'));
    const cache = join(work, 'hf');
    fillHubCache(cache, HUB_ID, join(fixtures!, TINY_CHECKPOINT));
    env = { ...process.env, HOME: home, HF_HUB_CACHE: cache, HF_HUB_OFFLINE: '1', npm_config_update_notifier: 'false' };
  });

  after(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('has the examples this test knows how to run', () => {
    assert.deepEqual(
      blocks.map((b) => b.lang),
      ['sh', 'sh', 'sh', 'json', 'ts', 'sh', 'ts', 'sh', 'json', 'sh', 'sh', 'sh'],
      'a new example needs a way to be tested here',
    );
    for (const command of RUN_BY_CI) assert.ok(commands.includes(command), `README has "${command}"`);
    const ci = readFileSync(join(root, '.ci', 'run'), 'utf8');
    assert.match(ci, /^npm ci\b/m, 'CI installs as npm install does, from the lockfile');
    assert.match(ci, /^npm test$/m, 'CI runs the README test command');
  });

  it('runs every command line and each ends with exit code 0', { timeout: 600_000 }, async (t) => {
    const oneShot = commands.filter((c) => !RUN_BY_CI.includes(c) && !/^npx vl3 (serve|eval)\b/.test(c));
    // The fine-tuning example's annotations, which its `vl3 train` reads.
    writeFileSync(join(project, 'train.json'), blocks.filter((b) => b.lang === 'json')[1]!.code);
    assert.ok(oneShot.length >= 3, oneShot.join('\n'));
    const randomOut = /--out (\S+)/.exec(oneShot.find((c) => c.includes('random-checkpoint'))!)![1]!;
    const existed = existsSync(randomOut);
    try {
      for (const command of oneShot) {
        const r = await sh(command, project, env);
        t.diagnostic(`${r.ms} ms: ${command}`);
        assert.equal(r.code, 0, `${command}\n${r.stderr}`);
        if (/^npx vl3 ask\b/.test(command)) assert.ok(r.stdout.trim().length > 0, `${command}: an answer`);
      }
    } finally {
      if (!existed) rmSync(randomOut, { recursive: true, force: true });
    }
  });

  it('gives vl3 eval command lines that run up to the benchmark data, which only a real download provides', async () => {
    const evals = commands.filter((c) => /^npx vl3 eval\b/.test(c));
    assert.ok(evals.length >= 3, evals.join('\n'));
    for (const command of evals) {
      const data = /--data (\S+)/.exec(command)![1]!;
      const r = await sh(command, project, env);
      // Exit 1 naming the missing data, not 2 (bad usage): the benchmark, the model or server and every flag were accepted.
      assert.equal(r.code, 1, `${command}\n${r.stderr}`);
      assert.ok(r.stderr.includes(data) && /not found/.test(r.stderr), `${command}\n${r.stderr}`);
    }
  });

  it('runs the conversation file with vl3 inspect', async () => {
    const conversation = blocks.find((b) => b.lang === 'json')!.code;
    writeFileSync(join(project, 'conversation.json'), conversation);
    const r = await sh(`npx vl3 inspect --model ${HUB_ID} --conversation conversation.json --out inspect.safetensors`, project, env);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(existsSync(join(project, 'inspect.safetensors')));
  });

  /** Type-checks the TypeScript examples against the installed package's types, as a user's editor would. */
  function typeCheck(files: string[]): string[] {
    const program = ts.createProgram(files, {
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      target: ts.ScriptTarget.ES2022,
      strict: true,
      noEmit: true,
      skipLibCheck: true,
      types: ['node'],
    });
    return ts.getPreEmitDiagnostics(program).map((d) => `${d.file?.fileName ?? ''}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`);
  }

  /** Writes an example as a module of the project: its TypeScript, and the JavaScript node runs. */
  function writeExample(name: string, code: string): { source: string; script: string } {
    const source = join(project, `${name}.ts`);
    const script = join(project, `${name}.mjs`);
    writeFileSync(source, code);
    writeFileSync(script, ts.transpileModule(code, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText);
    return { source, script };
  }

  it('type-checks the TypeScript examples, runs the library one, and it ends by itself', async () => {
    const [library, client] = tsBlocks;
    assert.match(library!.code, /from 'videollama3'/);
    assert.match(client!.code, /from 'openai'/);
    const lib = writeExample('library', library!.code);
    const cli = writeExample('client', client!.code);
    assert.deepEqual(typeCheck([lib.source, cli.source]), []);
    const r = await sh(`node ${lib.script}`, project, env, 120_000);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /\n (stop|length) \{/, 'the answer, then its finish reason and usage');
    // The example's one-minute cancel timer must not keep the process alive: it ends when the work is done.
    assert.ok(r.ms < 45_000, `the example ended after ${r.ms} ms`);
  });

  it('serves with the README command, answers the client example, and stops on SIGTERM', { timeout: 180_000 }, async () => {
    const serve = commands.find((c) => /^npx vl3 serve\b/.test(c))!;
    // Its own process group, as a service manager runs it: npx runs vl3 through a shell of its own, so the stop
    // signal goes to the whole group, as Ctrl-C in a terminal or a service manager's stop sends it.
    const server = spawn('/bin/sh', ['-c', serve], { cwd: project, env, stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    const group = server.pid!;
    let stderr = '';
    const exited = new Promise<number | null>((resolve) => server.once('exit', resolve));
    try {
      await new Promise<void>((resolve, reject) => {
        server.stderr.on('data', (d: Buffer) => {
          stderr += d.toString();
          if (/serving .* at http:\/\/127\.0\.0\.1:8080 /.test(stderr)) resolve();
        });
        void exited.then((code) => reject(new Error(`serve exited (${code}): ${stderr}`)));
      });
      const client = join(project, 'client.mjs');
      if (!existsSync(client)) writeExample('client', tsBlocks[1]!.code);
      const r = await sh(`node ${client}`, project, env, 120_000);
      assert.equal(r.code, 0, r.stderr);
      assert.ok(r.stdout.length > 0, 'the answer streams to stdout');
    } finally {
      process.kill(-group, 'SIGTERM');
    }
    await exited;
    // Every process of the group ends (none is left serving), and vl3 shut down cleanly rather than being killed.
    const deadline = Date.now() + 60_000;
    while (groupAlive(group) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.ok(!groupAlive(group), 'no process of the server is left');
    assert.match(stderr, /vl3: shutting down/);
  });
});
