// Hub downloads against a local server that answers like huggingface.co: the API's file list, resolve/ with ETags,
// X-Repo-Commit and 302s to a "CDN" on another host, byte ranges, 401/403 for a gated repo, 404 with X-Error-Code.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import { HubError, listCachedModels, parseModelRef, pullModel, resolveModel, type HubOptions } from '../src/hub/index.js';
import { withLock } from '../src/hub/lock.js';
import { defaultCacheDir, defaultToken } from '../src/hub/paths.js';
import { globToRegExp } from '../src/hub/patterns.js';
import { VideoLLaMA3 } from '../src/api/videollama3.js';
import { fixturesDir, FIXTURES_MISSING, repoRoot, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');
const gitSha1 = (data: Buffer) => createHash('sha1').update(`blob ${data.length}\0`).update(data).digest('hex');
const commitOf = (seed: string) => createHash('sha1').update(seed).digest('hex');

interface MockFile {
  data: Buffer;
  lfs: boolean;
}
interface MockRepo {
  commits: Map<string, Map<string, MockFile>>;
  refs: Map<string, string>;
  /** Gated: only this token gets in. */
  token?: string;
  /** Renamed: every request is redirected (relative Location) to this repo. */
  movedTo?: string;
}
interface LogEntry {
  server: 'hub' | 'cdn';
  method: string;
  path: string;
  range?: string;
  auth?: string;
  status: number;
  bytes: number;
}

/** The hub and its CDN (another port, so another host for the client). */
class MockHub {
  readonly repos = new Map<string, MockRepo>();
  readonly blobs = new Map<string, Buffer>();
  log: LogEntry[] = [];
  /** The next CDN GET of this blob sends `at` bytes, waits for `gate`, then drops the connection. */
  cut?: { sha: string; at: number; gate: Promise<void> };
  ignoreRange = false;
  /** Blobs (by sha256 or git sha1) served with one byte flipped. */
  readonly corrupt = new Set<string>();
  /** Files listed by the API that resolve/ answers 404 EntryNotFound for. */
  readonly vanished = new Set<string>();
  private hub!: Server;
  private cdn!: Server;
  endpoint = '';
  cdnOrigin = '';

  async start(): Promise<void> {
    this.hub = createServer((req, res) => this.handleHub(req, res));
    this.cdn = createServer((req, res) => this.handleCdn(req, res));
    for (const server of [this.hub, this.cdn]) await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
    this.endpoint = `http://127.0.0.1:${(this.hub.address() as AddressInfo).port}`;
    this.cdnOrigin = `http://127.0.0.1:${(this.cdn.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    for (const server of [this.hub, this.cdn]) {
      server.closeAllConnections();
      await new Promise((ok) => server.close(ok));
    }
  }

  addRepo(id: string, files: Record<string, string | Buffer | { lfs: Buffer }>, options: { token?: string; ref?: string; seed?: string } = {}): string {
    const commit = commitOf(`${id}:${options.seed ?? ''}:${Object.keys(files).join(',')}`);
    const repo = this.repos.get(id) ?? { commits: new Map(), refs: new Map(), token: options.token };
    const tree = new Map<string, MockFile>();
    for (const [path, content] of Object.entries(files)) {
      const file = typeof content === 'object' && 'lfs' in content ? { data: content.lfs, lfs: true } : { data: Buffer.from(content), lfs: false };
      tree.set(path, file);
      this.blobs.set(file.lfs ? sha256(file.data) : gitSha1(file.data), file.data);
    }
    repo.commits.set(commit, tree);
    repo.refs.set(options.ref ?? 'main', commit);
    this.repos.set(id, repo);
    return commit;
  }

  requests(filter: Partial<LogEntry> = {}): LogEntry[] {
    return this.log.filter((e) => Object.entries(filter).every(([k, v]) => e[k as keyof LogEntry] === v));
  }

  private record(req: IncomingMessage, res: ServerResponse, server: 'hub' | 'cdn', bytes = 0): void {
    this.log.push({
      server,
      method: req.method!,
      path: decodeURIComponent(new URL(req.url!, 'http://x').pathname),
      range: req.headers.range,
      auth: req.headers.authorization,
      status: res.statusCode,
      bytes,
    });
  }

  private fail(req: IncomingMessage, res: ServerResponse, status: number, code: string, message: string): void {
    res.writeHead(status, { 'x-error-code': code, 'x-error-message': message, 'content-type': 'application/json' });
    this.record(req, res, 'hub');
    res.end(req.method === 'HEAD' ? undefined : JSON.stringify({ error: message }));
  }

  /** Repo, gate and revision checks shared by the API and resolve/; returns the tree or answers the error. */
  private open(req: IncomingMessage, res: ServerResponse, id: string, revision: string, redirect: (to: string) => string) {
    const repo = this.repos.get(id);
    const auth = req.headers.authorization;
    if (!repo) {
      // The hub answers 401 when no token came, so as not to tell whether a private repo exists.
      this.fail(req, res, auth ? 404 : 401, 'RepoNotFound', 'Repository not found');
      return undefined;
    }
    if (repo.movedTo) {
      res.writeHead(307, { location: redirect(repo.movedTo) });
      this.record(req, res, 'hub');
      res.end();
      return undefined;
    }
    if (repo.token && auth !== `Bearer ${repo.token}`) {
      this.fail(req, res, auth ? 403 : 401, 'GatedRepo', 'Access to model is restricted');
      return undefined;
    }
    const commit = repo.refs.get(revision) ?? (repo.commits.has(revision) ? revision : undefined);
    if (!commit) {
      this.fail(req, res, 404, 'RevisionNotFound', `Invalid rev id: ${revision}`);
      return undefined;
    }
    return { commit, tree: repo.commits.get(commit)! };
  }

  private handleHub(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url!, this.endpoint);
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
    if (api && req.method === 'GET') {
      const [, id, rawRev] = api;
      const revision = decodeURIComponent(rawRev!);
      const found = this.open(req, res, id!, revision, (to) => `/api/models/${to}/revision/${rawRev}${url.search}`);
      if (!found) return;
      const blobs = url.searchParams.get('blobs') === 'true';
      const siblings = [...found.tree].map(([rfilename, f]) => ({
        rfilename,
        ...(blobs ? { size: f.data.length, blobId: gitSha1(f.data), ...(f.lfs ? { lfs: { sha256: sha256(f.data), size: f.data.length, pointerSize: 130 } } : {}) } : {}),
      }));
      const body = JSON.stringify({ id: id, sha: found.commit, siblings });
      res.writeHead(200, { 'content-type': 'application/json' });
      this.record(req, res, 'hub');
      res.end(body);
      return;
    }
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    if (resolve && (req.method === 'GET' || req.method === 'HEAD')) {
      const [, id, rawRev, rawPath] = resolve;
      const file = rawPath!.split('/').map(decodeURIComponent).join('/');
      const found = this.open(req, res, id!, decodeURIComponent(rawRev!), (to) => `/${to}/resolve/${rawRev}/${rawPath}`);
      if (!found) return;
      const entry = found.tree.get(file);
      if (!entry || this.vanished.has(file)) return this.fail(req, res, 404, 'EntryNotFound', `${file} does not exist on "${rawRev}"`);
      if (entry.lfs) {
        const oid = sha256(entry.data);
        res.writeHead(302, {
          location: `${this.cdnOrigin}/cdn/${oid}?X-Signature=secret`,
          'x-linked-etag': `"${oid}"`,
          'x-linked-size': String(entry.data.length),
          'x-repo-commit': found.commit,
          etag: 'W/"redirect-body"',
          'content-length': '0',
        });
        this.record(req, res, 'hub');
        res.end();
        return;
      }
      const oid = gitSha1(entry.data);
      this.serveBytes(req, res, 'hub', this.corrupt.has(oid) ? flip(entry.data) : entry.data, { etag: `"${oid}"`, 'x-repo-commit': found.commit });
      return;
    }
    res.writeHead(404);
    this.record(req, res, 'hub');
    res.end();
  }

  private handleCdn(req: IncomingMessage, res: ServerResponse): void {
    const oid = /^\/cdn\/([0-9a-f]{64})$/.exec(new URL(req.url!, this.cdnOrigin).pathname)?.[1];
    const data = oid ? this.blobs.get(oid) : undefined;
    if (!oid || !data) {
      res.writeHead(404);
      this.record(req, res, 'cdn');
      res.end();
      return;
    }
    const cut = this.cut;
    if (cut && cut.sha === oid && req.method === 'GET') {
      this.cut = undefined;
      res.writeHead(200, { 'content-length': String(data.length), 'accept-ranges': 'bytes' });
      this.record(req, res, 'cdn', cut.at);
      res.write(data.subarray(0, cut.at));
      void cut.gate.then(() => req.socket.destroy());
      return;
    }
    this.serveBytes(req, res, 'cdn', this.corrupt.has(oid) ? flip(data) : data, {});
  }

  private serveBytes(req: IncomingMessage, res: ServerResponse, server: 'hub' | 'cdn', data: Buffer, headers: Record<string, string>): void {
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    let body = data;
    if (range && !this.ignoreRange) {
      const from = Number(range[1]);
      if (from >= data.length) {
        res.writeHead(416, { 'content-range': `bytes */${data.length}` });
        this.record(req, res, server);
        res.end();
        return;
      }
      body = data.subarray(from);
      res.writeHead(206, { ...headers, 'content-length': String(body.length), 'content-range': `bytes ${from}-${data.length - 1}/${data.length}` });
    } else {
      res.writeHead(200, { ...headers, 'content-length': String(data.length), 'accept-ranges': 'bytes' });
    }
    const sent = req.method === 'HEAD' ? 0 : body.length;
    this.record(req, res, server, sent);
    res.end(req.method === 'HEAD' ? undefined : body);
  }
}

const flip = (data: Buffer) => {
  const copy = Buffer.from(data);
  copy[copy.length >> 1]! ^= 0xff;
  return copy;
};

// ---------------------------------------------------------------------------------------------------------------

const hub = new MockHub();
const temps: string[] = [];
const tempDir = (name: string) => {
  const dir = mkdtempSync(join(tmpdir(), `vl3-hub-${name}-`));
  temps.push(dir);
  return dir;
};

const WEIGHTS = randomBytes(300_000);
const SHARD = randomBytes(70_000);
const CONFIG = JSON.stringify({ model_type: 'videollama3_qwen2', hidden_size: 8 });
const TOKENIZER_CONFIG = JSON.stringify({ model_max_length: 16384 });
const MERGES = '#version: 0.2\nĠ t\n'; // not ASCII: sizes are bytes, not characters
const FILES = {
  'config.json': CONFIG,
  'model.safetensors': { lfs: WEIGHTS },
  'merges.txt': MERGES,
  'tokenizer/tokenizer_config.json': TOKENIZER_CONFIG,
  'vision/shard.safetensors': { lfs: SHARD },
  'README.md': '# a model card',
  'modeling_videollama3.py': 'import torch\n',
  'assets/logo.png': { lfs: randomBytes(1000) },
  '.gitattributes': '*.safetensors filter=lfs\n',
};
const WANTED = ['config.json', 'merges.txt', 'model.safetensors', 'tokenizer/tokenizer_config.json', 'vision/shard.safetensors'];
let COMMIT = '';

const env = process.env;
let hfHome = '';

before(async () => {
  // The developer's own hub settings must not leak into these tests (nor their token to the mock server).
  for (const name of Object.keys(env)) if (/^(HF_|HUGGING_?FACE|VL3_)/.test(name)) delete env[name];
  hfHome = tempDir('home');
  env.HF_HOME = hfHome;
  await hub.start();
  COMMIT = hub.addRepo('org/model', FILES);
  hub.addRepo('org/gated', { 'config.json': CONFIG, 'model.safetensors': { lfs: SHARD } }, { token: 'hf_right' });
});

after(async () => {
  await hub.stop();
  for (const dir of temps) rmSync(dir, { recursive: true, force: true });
});

afterEach(() => {
  hub.log = [];
  hub.cut = undefined;
  hub.ignoreRange = false;
  hub.corrupt.clear();
  hub.vanished.clear();
  delete env.HF_TOKEN;
  delete env.HF_HUB_OFFLINE;
  rmSync(join(hfHome, 'token'), { force: true });
});

const options = (cacheDir: string, extra: HubOptions = {}): HubOptions => ({ cacheDir, endpoint: hub.endpoint, ...extra });

async function rejects(promise: Promise<unknown>, code: string, pattern: RegExp): Promise<HubError> {
  const error = await promise.then(
    () => assert.fail('expected a rejection'),
    (e: unknown) => e,
  );
  assert.ok(error instanceof HubError, `expected a HubError, got ${String(error)}`);
  assert.equal(error.code, code, error.message);
  assert.match(error.message, pattern);
  return error;
}

function assertSnapshot(cacheDir: string, repoFolder: string, commit: string, files: Record<string, Buffer | string>): void {
  const repo = join(cacheDir, repoFolder);
  for (const [path, content] of Object.entries(files)) {
    const data = Buffer.from(content);
    const link = join(repo, 'snapshots', commit, path);
    assert.ok(lstatSync(link).isSymbolicLink(), `${path} is a symlink`);
    const isLfs = path.endsWith('.safetensors');
    const etag = isLfs ? sha256(data) : gitSha1(data);
    const depth = path.split('/').length - 1;
    assert.equal(readlinkSync(link), `${'../'.repeat(depth + 2)}blobs/${etag}`, `${path} links relatively to its blob`);
    assert.equal(realpathSync(link), realpathSync(join(repo, 'blobs', etag)));
    assert.deepEqual(readFileSync(link), data, `${path} content`);
  }
}

describe('model references and settings', () => {
  test('parseModelRef', () => {
    assert.deepEqual(parseModelRef('DAMO-NLP-SG/VideoLLaMA3-2B'), { repoId: 'DAMO-NLP-SG/VideoLLaMA3-2B', revision: 'main' });
    assert.deepEqual(parseModelRef('org/name@v1.0'), { repoId: 'org/name', revision: 'v1.0' });
    assert.deepEqual(parseModelRef('org/name@refs/pr/1'), { repoId: 'org/name', revision: 'refs/pr/1' });
    for (const bad of ['org/na--me', 'a/b/c', '../x', 'org/name@', 'org/name@../../x', '-org/name', 'org/name.', '']) {
      assert.throws(() => parseModelRef(bad), /model reference|invalid revision/, bad);
    }
  });

  test('cache folder and token follow huggingface_hub', () => {
    assert.equal(defaultCacheDir({ HF_HUB_CACHE: '/a', HF_HOME: '/b' }), '/a');
    assert.equal(defaultCacheDir({ HF_HOME: '/b', XDG_CACHE_HOME: '/c' }), '/b/hub');
    assert.equal(defaultCacheDir({ XDG_CACHE_HOME: '/c' }), '/c/huggingface/hub');
    assert.match(defaultCacheDir({}), /\/\.cache\/huggingface\/hub$/);
    const home = tempDir('token');
    writeFileSync(join(home, 'token'), 'hf_from_file\n');
    assert.equal(defaultToken({ HF_HOME: home }), 'hf_from_file');
    assert.equal(defaultToken({ HF_HOME: home, HF_TOKEN: 'hf_env' }), 'hf_env');
    assert.equal(defaultToken({ HF_HOME: tempDir('notoken') }), undefined);
  });

  test('include globs have fnmatch semantics', () => {
    assert.ok(globToRegExp('*.json').test('sub/dir/x.json'));
    assert.ok(!globToRegExp('*.json').test('x.jsonl'));
    assert.ok(globToRegExp('model-0000?-of-*.safetensors').test('model-00001-of-00002.safetensors'));
    assert.ok(globToRegExp('[!.]*').test('config.json') && !globToRegExp('[!.]*').test('.gitattributes'));
    assert.ok(globToRegExp('a+b(c).txt').test('a+b(c).txt'));
  });

  test('a local folder is used as is; a missing path is an error, not a hub id', async () => {
    const dir = tempDir('local');
    assert.equal(await resolveModel(dir), dir);
    await assert.rejects(resolveModel(join(dir, 'missing') + '/'), /model folder .*missing\/ does not exist/);
    await assert.rejects(resolveModel('./no/such/dir'), /does not exist/);
  });
});

describe('pulling from the hub', () => {
  test('a fresh pull lays the cache out like huggingface_hub, and a second pull downloads nothing', async () => {
    const cache = tempDir('fresh');
    const events: { file: string; downloadedBytes: number; totalBytes: number; done: boolean }[] = [];
    const result = await pullModel('org/model', options(cache, { onProgress: (e) => events.push(e) }));
    const repo = join(cache, 'models--org--model');
    assert.equal(result.path, join(repo, 'snapshots', COMMIT));
    assert.equal(result.commit, COMMIT);
    assert.deepEqual([...result.files].sort(), WANTED);
    assert.deepEqual([...result.downloaded].sort(), WANTED);
    assert.equal(result.downloadedBytes, WEIGHTS.length + SHARD.length + CONFIG.length + Buffer.byteLength(MERGES) + TOKENIZER_CONFIG.length);

    // refs/main holds the commit, no newline; blobs are named by sha256 (LFS) or git blob sha1 and nothing else is there.
    assert.equal(readFileSync(join(repo, 'refs', 'main'), 'utf8'), COMMIT);
    assert.deepEqual(readdirSync(join(repo, 'refs')), ['main']);
    const expectedBlobs = [sha256(WEIGHTS), sha256(SHARD), gitSha1(Buffer.from(CONFIG)), gitSha1(Buffer.from(MERGES)), gitSha1(Buffer.from(TOKENIZER_CONFIG))];
    assert.deepEqual(readdirSync(join(repo, 'blobs')).sort(), expectedBlobs.sort());
    assertSnapshot(cache, 'models--org--model', COMMIT, {
      'config.json': CONFIG,
      'merges.txt': MERGES,
      'model.safetensors': WEIGHTS,
      'tokenizer/tokenizer_config.json': TOKENIZER_CONFIG,
      'vision/shard.safetensors': SHARD,
    });
    // The default skips remote code, the model card and its images.
    for (const skipped of ['README.md', 'modeling_videollama3.py', 'assets', '.gitattributes']) assert.ok(!existsSync(join(result.path, skipped)), skipped);
    // Locks are released (and removed).
    assert.deepEqual(readdirSync(join(cache, '.locks', 'models--org--model')), []);

    // Protocol: one API call, one HEAD per file, LFS bytes from the CDN, small files from the hub.
    assert.equal(hub.requests({ server: 'hub', method: 'GET', path: `/api/models/org/model/revision/main` }).length, 1);
    assert.equal(hub.requests({ method: 'HEAD' }).length, WANTED.length);
    assert.deepEqual(hub.requests({ server: 'cdn' }).map((e) => e.path).sort(), [`/cdn/${sha256(WEIGHTS)}`, `/cdn/${sha256(SHARD)}`].sort());
    const done = events.filter((e) => e.done);
    assert.deepEqual(done.map((e) => e.file).sort(), WANTED);
    for (const e of done) assert.equal(e.downloadedBytes, e.totalBytes);

    hub.log = [];
    const again = await pullModel('org/model', options(cache));
    assert.equal(again.path, result.path);
    assert.deepEqual(again.downloaded, []);
    assert.deepEqual(hub.log.map((e) => `${e.method} ${e.path}`), ['GET /api/models/org/model/revision/main']);
    assert.equal(await resolveModel('org/model', options(cache)), result.path);
  });

  test('a new commit downloads only the files that changed; blobs are shared between snapshots', async () => {
    const cache = tempDir('update');
    const first = hub.addRepo('org/evolving', { 'config.json': CONFIG, 'model.safetensors': { lfs: WEIGHTS } });
    await pullModel('org/evolving', options(cache));
    const second = hub.addRepo('org/evolving', { 'config.json': '{"changed":true}', 'model.safetensors': { lfs: WEIGHTS } }, { seed: 'v2' });
    assert.notEqual(first, second);
    hub.log = [];
    const result = await pullModel('org/evolving', options(cache));
    assert.equal(result.commit, second);
    assert.deepEqual(result.downloaded, ['config.json']);
    assert.equal(hub.requests({ server: 'cdn' }).length, 0);
    const repo = join(cache, 'models--org--evolving');
    assert.equal(readFileSync(join(repo, 'refs', 'main'), 'utf8'), second);
    assert.equal(realpathSync(join(repo, 'snapshots', first, 'model.safetensors')), realpathSync(join(repo, 'snapshots', second, 'model.safetensors')));
    const [listed] = await listCachedModels(cache);
    assert.equal(listed!.sizeBytes, WEIGHTS.length + CONFIG.length + '{"changed":true}'.length);
    assert.deepEqual(listed!.snapshots.map((s) => s.commit).sort(), [first, second].sort());
  });

  test('an interrupted download resumes with a Range request in the next run', async () => {
    const cache = tempDir('resume');
    const oid = sha256(WEIGHTS);
    const at = 100_000;
    let cutNow!: () => void;
    hub.cut = { sha: oid, at, gate: new Promise((ok) => (cutNow = ok)) };
    const onProgress: HubOptions['onProgress'] = (e) => {
      if (e.file === 'model.safetensors' && e.downloadedBytes >= at) cutNow();
    };
    await rejects(
      pullModel('org/model', options(cache, { retries: 0, onProgress, concurrency: 1, include: ['model.safetensors'] })),
      'NetworkError',
      /model\.safetensors of org\/model .*failed.*partial file .*\.incomplete is kept/,
    );
    const partial = join(cache, 'models--org--model', 'blobs', `${oid}.incomplete`);
    assert.equal(lstatSync(partial).size, at);
    assert.ok(!existsSync(join(cache, 'models--org--model', 'snapshots', COMMIT, 'model.safetensors')));

    hub.log = [];
    const result = await pullModel('org/model', options(cache, { include: ['model.safetensors'] }));
    const gets = hub.requests({ server: 'cdn', method: 'GET' });
    assert.equal(gets.length, 1);
    assert.equal(gets[0]!.range, `bytes=${at}-`);
    assert.equal(gets[0]!.status, 206);
    assert.equal(gets[0]!.bytes, WEIGHTS.length - at, 'only the rest is served');
    assert.deepEqual(readFileSync(join(result.path, 'model.safetensors')), WEIGHTS);
    assert.ok(!existsSync(partial));
  });

  test('a connection dropped mid-file is resumed within the same pull', async () => {
    const cache = tempDir('retry');
    const oid = sha256(SHARD);
    let cutNow!: () => void;
    hub.cut = { sha: oid, at: 30_000, gate: new Promise((ok) => (cutNow = ok)) };
    const result = await pullModel('org/model', options(cache, {
      include: ['vision/*'],
      onProgress: (e) => e.downloadedBytes >= 30_000 && cutNow(),
    }));
    assert.deepEqual(result.files, ['vision/shard.safetensors']);
    const gets = hub.requests({ server: 'cdn', method: 'GET' });
    assert.deepEqual(gets.map((g) => g.range), [undefined, 'bytes=30000-']);
    assert.deepEqual(readFileSync(join(result.path, 'vision', 'shard.safetensors')), SHARD);
  });

  test('a server that ignores the range gets the whole file, which replaces the partial one', async () => {
    const cache = tempDir('norange');
    const oid = sha256(WEIGHTS);
    const blobs = join(cache, 'models--org--model', 'blobs');
    mkdirSync(blobs, { recursive: true });
    writeFileSync(join(blobs, `${oid}.incomplete`), WEIGHTS.subarray(0, 5000));
    hub.ignoreRange = true;
    const result = await pullModel('org/model', options(cache, { include: ['model.safetensors'] }));
    const [get] = hub.requests({ server: 'cdn', method: 'GET' });
    assert.equal(get!.range, 'bytes=5000-');
    assert.equal(get!.status, 200);
    assert.deepEqual(readFileSync(join(result.path, 'model.safetensors')), WEIGHTS);
  });

  test('a corrupted blob is rejected and removed', async () => {
    const cache = tempDir('corrupt');
    hub.corrupt.add(sha256(WEIGHTS));
    await rejects(
      pullModel('org/model', options(cache, { include: ['model.safetensors'] })),
      'IntegrityError',
      new RegExp(`integrity check failed for model\\.safetensors of org/model: expected sha256 ${sha256(WEIGHTS)}.*partial file was removed`),
    );
    const blobs = join(cache, 'models--org--model', 'blobs');
    assert.deepEqual(readdirSync(blobs), []);
    assert.ok(!existsSync(join(cache, 'models--org--model', 'snapshots', COMMIT, 'model.safetensors')));

    hub.corrupt.add(gitSha1(Buffer.from(CONFIG)));
    await rejects(pullModel('org/model', options(cache, { include: ['config.json'] })), 'IntegrityError', /expected git blob sha1/);
    assert.deepEqual(readdirSync(blobs), []);
  });

  test('the token goes to the hub, never to the CDN; without it a gated repo is refused', async () => {
    const cache = tempDir('gated');
    const refused = await rejects(pullModel('org/gated', options(cache)), 'GatedRepo', /org\/gated .*gated or private.*HF_TOKEN.*licence at http:\/\/127\.0\.0\.1:\d+\/org\/gated/);
    assert.equal(refused.details.status, 401);
    await rejects(pullModel('org/gated', options(cache, { token: 'hf_wrong' })), 'GatedRepo', /HTTP 403.*not accepted/);
    assert.ok(!hub.log.some((e) => e.auth === undefined && e.server === 'hub' && e.status === 403));

    hub.log = [];
    const result = await pullModel('org/gated', options(cache, { token: 'hf_right' }));
    assert.deepEqual(result.files.sort(), ['config.json', 'model.safetensors']);
    assert.ok(hub.requests({ server: 'hub' }).every((e) => e.auth === 'Bearer hf_right'));
    assert.equal(hub.requests({ server: 'cdn' }).length, 1);
    assert.ok(hub.requests({ server: 'cdn' }).every((e) => e.auth === undefined), 'no token to the CDN');
  });

  test('HF_TOKEN and the token file are used; an explicit token beats them', async () => {
    env.HF_TOKEN = 'hf_right';
    await pullModel('org/gated', options(tempDir('envtoken')));
    env.HF_TOKEN = 'hf_wrong';
    await rejects(pullModel('org/gated', options(tempDir('envtoken2'))), 'GatedRepo', /403/);
    await pullModel('org/gated', options(tempDir('optiontoken'), { token: 'hf_right' }));
    delete env.HF_TOKEN;
    writeFileSync(join(hfHome, 'token'), 'hf_right\n');
    hub.log = [];
    await pullModel('org/gated', options(tempDir('filetoken')));
    assert.equal(hub.requests({ server: 'hub' })[0]!.auth, 'Bearer hf_right');
  });

  test('the hub\'s 404s become clear errors', async () => {
    const cache = tempDir('errors');
    await rejects(pullModel('org/nothing', options(cache)), 'Unauthorized', /repository org\/nothing was not found .*check the id, or it is private or gated/);
    await rejects(pullModel('org/nothing', options(cache, { token: 'hf_x' })), 'RepoNotFound', /repository org\/nothing was not found at http.*HTTP 404/);
    await rejects(pullModel('org/model@nope', options(cache)), 'RevisionNotFound', /revision "nope" of org\/model was not found/);
    hub.vanished.add('merges.txt');
    await rejects(pullModel('org/model', options(cache)), 'EntryNotFound', /file merges\.txt of org\/model at revision [0-9a-f]{40} was not found.*\/org\/model\/resolve\/[0-9a-f]{40}\/merges\.txt/);
    await rejects(pullModel('org/model', options(cache, { include: ['*.bin'] })), 'EntryNotFound', /no file of org\/model@main matches \*\.bin; it has: .*config\.json/);
  });

  test('an unreachable hub is an error naming the URL, unless the cache has the model', async () => {
    const dead = createServer();
    await new Promise<void>((ok) => dead.listen(0, '127.0.0.1', ok));
    const endpoint = `http://127.0.0.1:${(dead.address() as AddressInfo).port}`;
    await new Promise((ok) => dead.close(ok));
    const cache = tempDir('unreachable');
    await rejects(pullModel('org/model', { cacheDir: cache, endpoint }), 'NetworkError', new RegExp(`network error reaching ${endpoint}/api/models/org/model/revision/main: ECONNREFUSED`));
    await pullModel('org/model', options(cache, { include: ['config.json'] }));
    const cached = await pullModel('org/model', { cacheDir: cache, endpoint });
    assert.equal(cached.fromCache, true);
    assert.equal(cached.commit, COMMIT);
    assert.match(cached.warning!, /ECONNREFUSED.*using the cached snapshot/);
  });

  test('offline mode answers from the cache only', async () => {
    const cache = tempDir('offline');
    await rejects(pullModel('org/model', options(cache, { offline: true })), 'NotCached', /org\/model@main is not in the cache at .*offline mode/);
    env.HF_HUB_OFFLINE = '1';
    await rejects(resolveModel('org/model', options(cache)), 'NotCached', /org\/model@main/);
    assert.equal(hub.log.length, 0, 'offline makes no request');
    delete env.HF_HUB_OFFLINE;

    const online = await pullModel('org/model', options(cache));
    hub.log = [];
    env.HF_HUB_OFFLINE = 'true';
    const offline = await pullModel('org/model', options(cache));
    assert.equal(offline.path, online.path);
    assert.equal(offline.fromCache, true);
    assert.deepEqual(offline.files, WANTED);
    assert.equal(await resolveModel(`org/model@${COMMIT}`, options(cache)), online.path);
    await rejects(resolveModel('org/model@v2', options(cache)), 'NotCached', /org\/model@v2/);
    await rejects(pullModel('org/model', options(cache, { include: ['*.bin'] })), 'NotCached', /cached snapshot .* has no file matching \*\.bin/);
    assert.equal(hub.log.length, 0, 'offline makes no request');
  });

  test('a revision pinned by commit fetches that snapshot and writes no ref', async () => {
    const cache = tempDir('pinned');
    const old = hub.addRepo('org/pinned', { 'config.json': '{"v":1}' }, { seed: 'old' });
    const latest = hub.addRepo('org/pinned', { 'config.json': '{"v":2}' }, { seed: 'new' });
    const result = await pullModel(`org/pinned@${old}`, options(cache));
    assert.equal(result.commit, old);
    assert.equal(readFileSync(join(result.path, 'config.json'), 'utf8'), '{"v":1}');
    assert.ok(hub.requests({ method: 'HEAD' }).every((e) => e.path.includes(`/resolve/${old}/`)));
    assert.ok(!existsSync(join(cache, 'models--org--pinned', 'refs')), 'a commit is not a ref');
    const main = await pullModel('org/pinned', options(cache));
    assert.equal(main.commit, latest);
    assert.deepEqual(readdirSync(join(cache, 'models--org--pinned', 'refs')), ['main']);
  });

  test('a renamed repo is followed through relative redirects', async () => {
    const cache = tempDir('renamed');
    hub.repos.set('old-org/model', { commits: new Map(), refs: new Map(), movedTo: 'org/model' });
    const result = await pullModel('old-org/model', options(cache, { include: ['config.json', 'model.safetensors'], token: 'hf_t' }));
    assert.equal(result.commit, COMMIT);
    assertSnapshot(cache, 'models--old-org--model', COMMIT, { 'config.json': CONFIG, 'model.safetensors': WEIGHTS });
    assert.ok(hub.requests({ server: 'hub', status: 307 }).length >= 3);
    assert.ok(hub.requests({ server: 'hub' }).every((e) => e.auth === 'Bearer hf_t'), 'same host: token kept');
    assert.ok(hub.requests({ server: 'cdn' }).every((e) => e.auth === undefined));
  });

  test('two pulls at once download each blob once', async () => {
    const cache = tempDir('concurrent');
    const [a, b] = await Promise.all([pullModel('org/model', options(cache)), pullModel('org/model', options(cache))]);
    assert.equal(a.path, b.path);
    assert.equal(hub.requests({ server: 'cdn', path: `/cdn/${sha256(WEIGHTS)}` }).length, 1);
    assert.equal(hub.requests({ server: 'hub', method: 'GET', path: `/org/model/resolve/${COMMIT}/config.json` }).length, 1);
    assert.equal(a.downloadedBytes + b.downloadedBytes, WEIGHTS.length + SHARD.length + CONFIG.length + Buffer.byteLength(MERGES) + TOKENIZER_CONFIG.length);
    assertSnapshot(cache, 'models--org--model', COMMIT, { 'model.safetensors': WEIGHTS, 'config.json': CONFIG });
  });

  test('a lock left by a dead process is taken over; a live one is waited for', async () => {
    const dir = tempDir('lock');
    const path = join(dir, 'x.vl3.lock');
    const dead = spawnSync(process.execPath, ['-e', '']).pid!;
    writeFileSync(path, JSON.stringify({ pid: dead, host: (await import('node:os')).hostname(), token: 'old' }));
    assert.equal(await withLock(path, async () => readFileSync(path, 'utf8').includes(String(process.pid))), true);
    assert.ok(!existsSync(path));

    const order: string[] = [];
    let release!: () => void;
    const held = new Promise<void>((ok) => (release = ok));
    let entered!: () => void;
    const inside = new Promise<void>((ok) => (entered = ok));
    const first = withLock(path, async () => {
      entered();
      await held;
      order.push('first');
    });
    await inside;
    const second = withLock(path, async () => order.push('second'), { pollMs: 5 });
    release();
    await Promise.all([first, second]);
    assert.deepEqual(order, ['first', 'second']);
  });
});

describe('a cache written by Python', () => {
  test('is read as is: resolved offline and online without downloads, and listed', async () => {
    const cache = tempDir('python');
    // What huggingface_hub leaves after snapshot_download('org/model'): blobs, relative links, refs/main.
    const repo = join(cache, 'models--org--model');
    const files: Record<string, Buffer> = {
      'config.json': Buffer.from(CONFIG),
      'merges.txt': Buffer.from(MERGES),
      'model.safetensors': WEIGHTS,
      'tokenizer/tokenizer_config.json': Buffer.from(TOKENIZER_CONFIG),
      'vision/shard.safetensors': SHARD,
    };
    mkdirSync(join(repo, 'blobs'), { recursive: true });
    mkdirSync(join(repo, 'refs'));
    writeFileSync(join(repo, 'refs', 'main'), COMMIT);
    for (const [path, data] of Object.entries(files)) {
      const etag = path.endsWith('.safetensors') ? sha256(data) : gitSha1(data);
      writeFileSync(join(repo, 'blobs', etag), data);
      const link = join(repo, 'snapshots', COMMIT, path);
      mkdirSync(join(link, '..'), { recursive: true });
      symlinkSync(`${'../'.repeat(path.split('/').length + 1)}blobs/${etag}`, link);
    }
    mkdirSync(join(cache, '.locks', 'models--org--model'), { recursive: true });
    writeFileSync(join(cache, '.locks', 'models--org--model', `${sha256(WEIGHTS)}.lock`), '');

    const snapshot = join(repo, 'snapshots', COMMIT);
    assert.equal(await resolveModel('org/model', { cacheDir: cache, offline: true }), snapshot);
    assert.equal(hub.log.length, 0);
    const online = await pullModel('org/model', options(cache));
    assert.equal(online.path, snapshot);
    assert.deepEqual(online.downloaded, []);
    assert.equal(hub.log.length, 1, 'one metadata request, no download');

    const listed = await listCachedModels(cache);
    assert.equal(listed.length, 1);
    const [model] = listed;
    assert.equal(model!.repoId, 'org/model');
    assert.equal(model!.path, repo);
    assert.deepEqual(model!.revisions, { main: COMMIT });
    assert.deepEqual(model!.snapshots, [{ commit: COMMIT, files: Object.keys(files).sort() }]);
    assert.equal(model!.sizeBytes, Object.values(files).reduce((n, d) => n + d.length, 0));
    assert.ok(model!.lastModified instanceof Date && model!.lastModified.getTime() > 0);
    assert.deepEqual(await listCachedModels(join(cache, 'missing')), []);
  });
});

describe('vl3 pull and vl3 ls', () => {
  const root = repoRoot();
  const run = (args: string[], extraEnv: Record<string, string>) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((ok, fail) => {
      // Asynchronous on purpose: the mock hub answers from this process's event loop.
      const child = spawn(process.execPath, [join(root, 'dist', 'src', 'cli', 'vl3.js'), ...args], {
        env: { PATH: env.PATH ?? '', HOME: hfHome, HF_HOME: hfHome, ...extraEnv },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d) => (stdout += d));
      child.stderr.on('data', (d) => (stderr += d));
      child.on('error', fail);
      child.on('close', (code) => ok({ code, stdout, stderr }));
    });

  test('pull downloads into HF_HUB_CACHE from HF_ENDPOINT; ls lists it', { timeout: 60_000 }, async () => {
    const cache = tempDir('cli');
    const hfEnv = { HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: cache };
    const pulled = await run(['pull', 'org/model', '--json'], hfEnv);
    assert.equal(pulled.code, 0, pulled.stderr);
    const result = JSON.parse(pulled.stdout) as { path: string; commit: string; files: string[] };
    assert.equal(result.path, join(cache, 'models--org--model', 'snapshots', COMMIT));
    assert.deepEqual([...result.files].sort(), WANTED);
    assert.doesNotMatch(pulled.stderr, /\x1b\[/, 'no terminal codes when stderr is not a terminal');

    const again = await run(['pull', 'org/model'], hfEnv);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(again.stdout, `${result.path}\n`);
    assert.match(again.stderr, /already cached/);

    const listed = await run(['ls', '--json'], hfEnv);
    assert.equal(listed.code, 0, listed.stderr);
    const models = JSON.parse(listed.stdout) as { repoId: string; sizeBytes: number; revisions: Record<string, string> }[];
    assert.deepEqual(models.map((m) => m.repoId), ['org/model']);
    assert.deepEqual(models[0]!.revisions, { main: COMMIT });
    const table = await run(['ls', '--cache-dir', cache], {});
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, /^MODEL\s+SIZE\s+REFS\s+SNAPSHOTS\s+MODIFIED\s+PATH\norg\/model\s+[\d.]+ kB\s+main\s+1\s/);
  });

  test('flags and their VL3_ twins; exit codes 1 and 2; the token is never printed', { timeout: 60_000 }, async () => {
    const cache = tempDir('cli-flags');
    const gated = await run(['pull', 'org/gated', '--endpoint', hub.endpoint, '--token', 'hf_right', '--include', 'config.json'], { VL3_CACHE_DIR: cache });
    assert.equal(gated.code, 0, gated.stderr);
    assert.equal(gated.stdout, `${join(cache, 'models--org--gated', 'snapshots', hub.repos.get('org/gated')!.refs.get('main')!)}\n`);
    assert.doesNotMatch(gated.stdout + gated.stderr, /hf_right/);

    const refused = await run(['pull', 'org/gated', '--cache-dir', cache, '--include', 'model.safetensors'], { VL3_ENDPOINT: hub.endpoint, VL3_TOKEN: 'hf_wrong' });
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /^vl3: access to org\/gated was refused \(HTTP 403/);
    assert.doesNotMatch(refused.stderr, /hf_wrong/);

    const usage = await run(['pull', 'not a/ref'], {});
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /not a model reference/);

    const offline = await run(['pull', 'org/other', '--offline', '--cache-dir', cache], {});
    assert.equal(offline.code, 1);
    assert.match(offline.stderr, /org\/other@main is not in the cache/);
  });

  test('a model loads by hub id, from the library and from vl3 ask, with the answers of the local folder', { skip: !fixtures && FIXTURES_MISSING, timeout: 120_000 }, async () => {
    const folder = join(fixtures!, TINY_CHECKPOINT);
    const files: Record<string, string | Buffer | { lfs: Buffer }> = {};
    for (const name of readdirSync(folder)) {
      const data = readFileSync(join(folder, name));
      files[name] = name.endsWith('.safetensors') ? { lfs: data } : data;
    }
    const commit = hub.addRepo('damo/tiny', files);
    const cache = tempDir('load');
    const question = [{ role: 'user' as const, content: 'Hello.' }];
    const expected = await (await VideoLLaMA3.load(folder)).chat(question, { greedy: true, maxNewTokens: 6 }).result;
    const model = await VideoLLaMA3.load('damo/tiny', { hub: options(cache) });
    assert.equal(model.checkpoint.folder, join(cache, 'models--damo--tiny', 'snapshots', commit));
    assert.deepEqual((await model.chat(question, { greedy: true, maxNewTokens: 6 }).result).tokenIds, expected.tokenIds);

    // Offline, from the cache the library filled; the answer is the local folder's.
    const asked = await run(['ask', '--model', 'damo/tiny', '--greedy', '--max-new-tokens', '6', '--no-system-prompt', '--json', 'Hello.'], { HF_HUB_CACHE: cache, HF_HUB_OFFLINE: '1' });
    assert.equal(asked.code, 0, asked.stderr);
    assert.deepEqual((JSON.parse(asked.stdout) as { tokenIds: number[] }).tokenIds, expected.tokenIds);
  });
});
