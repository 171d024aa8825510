// The arm64 build, checked on an x86-64 machine: the kernel harness (native/harness/harness.cc, plain C++) is
// cross-compiled with Debian's aarch64-linux-gnu-g++ and run under qemu-user, comparing the neon tier (both of its
// builds, both compute modes) and the scalar one with the TypeScript reference; the NEON units are also built with
// clang (the compiler of macOS); the addon itself is built for arm64 by node-gyp, which shows binding.gyp passes no
// x86 flag there; and the same harness source runs natively on every tier this machine has. With CI set, missing
// tools fail the run; otherwise those tests skip, saying why.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { repoRoot } from './fixtures.js';
import { writeHarnessCases } from './harness-cases.js';

const root = repoRoot();
const native = join(root, 'native');
const ON_ARM64 = process.arch === 'arm64';
const CROSS = 'aarch64-linux-gnu-g++';
const QEMU = 'qemu-aarch64-static';
const CLANG = 'clang++';

function found(cmd: string): boolean {
  return spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;
}

const missing = ON_ARM64 ? [] : [CROSS, QEMU, CLANG].filter((c) => !found(c));
const CROSS_SKIP = ON_ARM64
  ? 'an arm64 machine: the harness built for it runs the NEON kernels natively instead'
  : missing.length && !process.env.CI
    ? `${missing.join(', ')} not found (Debian: apt-get install g++-aarch64-linux-gnu qemu-user-static clang); arm64 checks skipped`
    : false;

interface Run {
  code: number | null;
  out: string;
}

/** Runs a command without blocking the event loop, so that independent builds and runs overlap on both cores. */
function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: opts.cwd ?? root, env: opts.env ?? process.env });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.once('error', (e) => resolve({ code: -1, out: `${out}${String(e)}` }));
    child.once('close', (code) => resolve({ code, out }));
  });
}

function ok(r: Run, what: string): void {
  assert.equal(r.code, 0, `${what} failed (exit ${r.code}):\n${r.out.slice(-6000)}`);
}

// What the harness links: every kernel table (each compiles to a null table off its ISA), the pool and the tier
// registry. On arm64 the bf16 unit gets the flags binding.gyp gives it.
const SOURCES = [
  'harness/harness.cc',
  'cpu.cc',
  'pool.cc',
  ...readdirSync(native).filter((f) => /^kernels_\w+\.cc$/.test(f)).sort(),
];
const ARM64_FLAGS: Record<string, string[]> = { 'kernels_neon_bf16.cc': ['-march=armv8.2-a+bf16+dotprod'] };

function objectOf(dir: string, src: string): string {
  return join(dir, src.replace(/\W/g, '_') + '.o');
}

/** Compiles `sources` into dir, two at a time. */
async function compile(cxx: string, extra: string[], sources: string[], dir: string, arm64: boolean): Promise<void> {
  const queue = [...sources];
  const worker = async (): Promise<void> => {
    for (let src = queue.shift(); src; src = queue.shift()) {
      const flags = arm64 ? (ARM64_FLAGS[src] ?? []) : [];
      const args = [...extra, '-O3', '-std=c++17', '-pthread', '-Wall', '-Wno-unused-function', ...flags, '-c', join(native, src), '-o', objectOf(dir, src)];
      ok(await run(cxx, args), `${cxx} ${src}`);
    }
  };
  await Promise.all([worker(), worker()]);
}

async function link(cxx: string, objects: string[], exe: string): Promise<string> {
  ok(await run(cxx, ['-static', '-pthread', ...objects, '-o', exe]), `${cxx} link`);
  return exe;
}

let dir = '';
let cases = '';
let caseCount = 0;

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'vl3-neon-'));
  cases = join(dir, 'cases.bin');
  caseCount = writeHarnessCases(cases);
});

describe('the kernel harness built for this machine', () => {
  test('every tier it supports matches the reference, in both compute modes', async () => {
    const host = join(dir, 'host');
    mkdirSync(host);
    await compile('g++', [], SOURCES, host, ON_ARM64);
    const exe = await link('g++', SOURCES.map((s) => objectOf(host, s)), join(host, 'harness'));
    // On arm64 also the neon tier's baseline build, which "supported" passes over on a CPU with BF16.
    const r = await run(exe, [cases, '--tables', ON_ARM64 ? 'supported,neon-baseline' : 'supported', '--threads', '1,2']);
    ok(r, 'native harness');
    assert.match(r.out, new RegExp(`^ok: \\d+ case runs \\(${caseCount} cases; tables scalar`, 'm'));
  });
});

describe('arm64: cross-compiled harness under qemu-user, clang, and the arm64 addon build', { skip: CROSS_SKIP }, () => {
  let arm = '';
  let harness = '';
  let addonBuild: Promise<{ run: Run; work: string }> | undefined;

  before(async () => {
    assert.deepEqual(missing, [], `${missing.join(', ')} not found: CI needs g++-aarch64-linux-gnu, qemu-user-static and clang (.ci/run installs them)`);
    arm = join(dir, 'arm64');
    mkdirSync(arm);
    await compile(CROSS, [], SOURCES, arm, true);
    harness = await link(CROSS, SOURCES.map((s) => objectOf(arm, s)), join(arm, 'harness'));
    // Overlaps the qemu runs below; the last test waits for it.
    addonBuild = buildAddonArm64(dir);
  });

  after(async () => {
    await addonBuild;
  });

  test('qemu -cpu max (neon, dotprod, i8mm, bf16): the BF16 build of the neon tier and scalar match the reference; bf16 is the default mode', async () => {
    const r = await run(QEMU, ['-cpu', 'max', harness, cases, '--tables', 'neon,scalar', '--threads', '1,2',
      '--expect-features', 'neon=1,dotprod=1,i8mm=1,bf16=1', '--expect-default', 'neon/bf16']);
    ok(r, 'harness under qemu -cpu max');
    assert.match(r.out, new RegExp(`^ok: \\d+ case runs \\(${caseCount} cases; tables neon\\[bf16-dot\\] scalar;`, 'm'));
  });

  test('a baseline ARMv8.0 CPU (qemu -cpu cortex-a57): the baseline neon build in both modes, no dotprod/i8mm/bf16', async () => {
    // Any instruction past ARMv8.0 in the code this CPU runs would stop it with SIGILL.
    const r = await run(QEMU, ['-cpu', 'cortex-a57', harness, cases, '--tables', 'neon', '--threads', '2',
      '--expect-features', 'neon=1,dotprod=0,i8mm=0,bf16=0', '--expect-default', 'neon/exact']);
    ok(r, 'harness under qemu -cpu cortex-a57');
    assert.match(r.out, /^ok: .*tables neon; threads 2\)/m);
  });

  test('feature detection tells dotprod from i8mm and bf16 (qemu -cpu neoverse-n1); VL3_ISA and VL3_COMPUTE are obeyed', async () => {
    const args = ['-cpu', 'neoverse-n1', harness, cases, '--tables', 'none', '--threads', '1',
      '--expect-features', 'neon=1,dotprod=1,i8mm=0,bf16=0', '--expect-default'];
    const env = (vars: Record<string, string>) => ({ env: { ...process.env, VL3_ISA: '', VL3_COMPUTE: '', ...vars } });
    ok(await run(QEMU, [...args, 'neon/exact'], env({})), 'harness under qemu -cpu neoverse-n1');
    ok(await run(QEMU, [...args, 'scalar/exact'], env({ VL3_ISA: 'scalar' })), 'the same with VL3_ISA=scalar');
    ok(await run(QEMU, [...args, 'neon/bf16'], env({ VL3_COMPUTE: 'bf16' })), 'the same with VL3_COMPUTE=bf16');
    const refused = await run(QEMU, [...args, 'x'], env({ VL3_ISA: 'avx2' }));
    assert.equal(refused.code, 2, refused.out);
    assert.match(refused.out, /VL3_ISA=avx2: isa 'avx2' is not available: this CPU lacks avx2, fma, f16c/);
  });

  test('the NEON units and the tier registry built with clang (the compiler of macOS) match the reference too', async () => {
    const clang = join(dir, 'clang');
    mkdirSync(clang);
    const own = ['cpu.cc', 'kernels_neon.cc', 'kernels_neon_bf16.cc'];
    await compile(CLANG, ['--target=aarch64-linux-gnu'], own, clang, true);
    const objects = SOURCES.map((s) => objectOf(own.includes(s) ? clang : arm, s));
    const exe = await link(CROSS, objects, join(clang, 'harness'));
    const r = await run(QEMU, ['-cpu', 'max', exe, cases, '--tables', 'neon,neon-baseline', '--threads', '2', '--expect-default', 'neon/bf16']);
    ok(r, 'clang-built harness under qemu -cpu max');
    assert.match(r.out, /^ok: .*tables neon\[bf16-dot\] neon-baseline;/m);
  });

  test('the +bf16 object shares no inline code with baseline objects (no weak symbols the linker could pick)', async () => {
    const r = await run('aarch64-linux-gnu-nm', ['--defined-only', '-C', objectOf(arm, 'kernels_neon_bf16.cc')]);
    ok(r, 'nm');
    const weak = r.out.split('\n').filter((l) => /^\S+ [WVuiw] /.test(l));
    assert.deepEqual(weak, [], 'weak symbols in the +bf16 object');
    assert.match(r.out, / T vl3::neonBf16KernelsUnchecked\(\)/);
  });

  test('node-gyp builds the addon for arm64 with the cross compiler, with no x86 flag', async () => {
    assert.ok(addonBuild);
    const { run: r, work } = await addonBuild;
    ok(r, 'node-gyp rebuild --arch=arm64');
    const x86 = r.out.match(/\s-m(avx\w*|fma\w*|f16c|sse\w*|ssse3|bmi\w*|lzcnt|popcnt|arch=(?!armv)\S+|tune=\S+)/);
    assert.equal(x86, null, `an x86 flag in the arm64 build: ${x86?.[0]}`);
    const compiles = r.out.split('\n').filter((l) => / -c\s*$/.test(l) || / -c /.test(l));
    const bf16Unit = compiles.filter((l) => l.includes('kernels_neon_bf16.cc'));
    assert.equal(bf16Unit.length, 1, 'one compile of the bf16 unit');
    assert.match(bf16Unit[0]!, / -march=armv8\.2-a\+bf16\+dotprod /);
    const others = compiles.filter((l) => !l.includes('kernels_neon_bf16.cc'));
    assert.ok(others.length >= 7, `compiles seen: ${others.length}`);
    for (const l of others) assert.doesNotMatch(l, / -march=/, 'only the bf16 unit leaves the baseline ISA');
    const elf = readFileSync(join(work, 'build', 'Release', 'vl3_native.node'));
    assert.equal(elf.readUInt32BE(0), 0x7f454c46, 'not an ELF file');
    assert.equal(elf.readUInt16LE(18), 183, 'e_machine is not EM_AARCH64');
  });
});

/**
 * node-gyp rebuild --arch=arm64 with the cross compiler, in a copy of binding.gyp and native/ so that the x86 build in
 * build/ is left alone (node_modules linked for node-addon-api's include dir). Node's headers do not depend on the
 * architecture, so the x86 install's serve. Never rejects: the test reads the outcome.
 */
async function buildAddonArm64(dir: string): Promise<{ run: Run; work: string }> {
  const work = join(dir, 'addon-arm64');
  const nodeGyp = findNodeGyp();
  if (!nodeGyp) return { run: { code: -1, out: 'node-gyp not found (npm bundles it; run the tests through npm)' }, work };
  cpSync(join(root, 'binding.gyp'), join(work, 'binding.gyp'));
  cpSync(native, join(work, 'native'), { recursive: true });
  symlinkSync(join(root, 'node_modules'), join(work, 'node_modules'), 'dir');
  const nodedir = findNodeDir();
  const env = { ...process.env, CC: 'aarch64-linux-gnu-gcc', CXX: CROSS, LINK: CROSS, AR: 'aarch64-linux-gnu-ar', V: '1' };
  const args = [nodeGyp, 'rebuild', '--arch=arm64', '-j', '2', ...(nodedir ? [`--nodedir=${nodedir}`] : [])];
  return { run: await run(process.execPath, args, { cwd: work, env }), work };
}

/** npm sets npm_config_node_gyp for scripts; otherwise the copy bundled with the npm beside this node. */
function findNodeGyp(): string | undefined {
  const candidates = [
    process.env['npm_config_node_gyp'],
    join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  return candidates.find((c): c is string => !!c && existsSync(c));
}

/** Node's headers as the x86 build found them (npm's nodedir, or the prefix of this node); else node-gyp's cache. */
function findNodeDir(): string | undefined {
  const candidates = [process.env['npm_config_nodedir'], join(dirname(process.execPath), '..')];
  return candidates.find((c): c is string => !!c && existsSync(join(c, 'include', 'node', 'node_api.h')));
}

after(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});
