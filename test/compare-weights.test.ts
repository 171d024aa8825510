// `compareWeights` and `vl3 dev compare-weights`: the KL arithmetic, the data file format, each quantized format within
// its error bound on the tiny checkpoint (text and image positions), and the command's output and errors.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { compareWeights, klDivergence, readComparePrompts, type ComparePrompt, type CompareReport } from '../src/api/compare-weights.js';
import { writeQuantizedCheckpoint } from '../src/model/quantize-checkpoint.js';
import type { WeightFormat } from '../src/tensor/dtype.js';
import { fixturesDir, FIXTURES_MISSING, repoRoot, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const scratch = mkdtempSync(join(tmpdir(), 'vl3-compare-test-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

describe('klDivergence', () => {
  it('is zero for equal rows and for rows that differ by a constant (the same softmax)', () => {
    const p = Float32Array.from([0.5, -1, 2, 3.25]);
    assert.equal(klDivergence(p, p).kl, 0);
    assert.ok(Math.abs(klDivergence(p, p.map((x) => x + 7)).kl) < 1e-12);
  });

  it('matches the definition on a small case, with both argmaxes', () => {
    const p = [1, 2, 0];
    const q = [2, 1, 0.5];
    const softmax = (x: number[]) => {
      const z = x.reduce((s, v) => s + Math.exp(v), 0);
      return x.map((v) => Math.exp(v) / z);
    };
    const [P, Q] = [softmax(p), softmax(q)];
    const want = P.reduce((s, pi, i) => s + pi * Math.log(pi / Q[i]!), 0);
    const got = klDivergence(p, q);
    assert.ok(Math.abs(got.kl - want) < 1e-12, `${got.kl} vs ${want}`);
    assert.deepEqual([got.argmaxP, got.argmaxQ], [1, 0]);
  });
});

describe('readComparePrompts', () => {
  const file = (name: string, text: string) => {
    const path = join(scratch, name);
    writeFileSync(path, text);
    return path;
  };

  it('reads texts, JSON strings and conversations, one per line, skipping blank lines', () => {
    const path = file('mixed.txt', 'Plain text.\r\n\n"Two\\nlines"\n[{"role":"user","content":"hi"}]\n{"messages":[{"role":"user","content":[{"type":"image","image":"a.png"}]}],"add_system_prompt":true}\n');
    const prompts = readComparePrompts(path);
    assert.equal(prompts.length, 4);
    assert.deepEqual(prompts.slice(0, 2), [
      { label: `${path} line 1`, text: 'Plain text.' },
      { label: `${path} line 3`, text: 'Two\nlines' },
    ]);
    const last = prompts[3] as Extract<ComparePrompt, { conversation: unknown }>;
    assert.equal(last.baseDir, scratch);
    assert.equal(last.conversation.addSystemPrompt, true);
  });

  it('names the file and line of what is wrong', () => {
    assert.throws(() => readComparePrompts(join(scratch, 'missing.txt')), /cannot read data file .*missing\.txt: ENOENT/);
    assert.throws(() => readComparePrompts(file('blank.txt', '\n  \n')), /data file .*blank\.txt has no prompts/);
    assert.throws(() => readComparePrompts(file('bad.jsonl', 'ok\n{"messages": [\n')), /bad\.jsonl line 2: not valid JSON/);
    assert.throws(() => readComparePrompts(file('role.jsonl', '[{"role":"robot","content":"x"}]\n')), /role\.jsonl line 1: messages\[0\]\.role: unknown role "robot"/);
  });
});

describe('compare-weights on the tiny checkpoint', { skip: !fixtures && FIXTURES_MISSING }, () => {
  const model = fixtures ? join(fixtures, TINY_CHECKPOINT) : '';
  // About 60 text positions, then the image prompt's system prompt and visual tokens up to 256 positions in all.
  const prompts: ComparePrompt[] = [
    { label: 'text', text: 'Explain in two sentences why the sky is blue during the day and red at sunset, as you would to a curious child who keeps asking why.' },
    {
      label: 'image',
      baseDir: fixtures ? join(fixtures, 'media') : '',
      conversation: { messages: [{ role: 'user', content: [{ type: 'image', image: 'desert.jpg' }, { type: 'text', text: 'Describe it.' }] }], addSystemPrompt: true, addGenerationPrompt: true },
    },
  ];
  const run = (weights: WeightFormat[], visionWeights?: WeightFormat) => compareWeights({ model, weights, visionWeights, prompts, positions: 256, greedyTokens: 16 });

  /**
   * Bounds hold with a margin of 2.5× or more over what this checkpoint measures (int8 mean KL 3.7e-4, int4 3.4e-2,
   * int4m 2.9e-2) and fail when a kernel is wrong: a lower bound too, so that a format that silently loads as bf16
   * fails as well.
   */
  const BOUNDS: Record<Exclude<WeightFormat, 'bf16'>, { meanKl: [number, number]; top1: number }> = {
    int8: { meanKl: [5e-5, 1.2e-3], top1: 0.6 },
    int4: { meanKl: [5e-3, 0.09], top1: 0.05 },
    int4m: { meanKl: [5e-3, 0.08], top1: 0.05 },
  };

  let report: CompareReport;
  it('measures every language format against one reference run', async () => {
    report = await run(['bf16', 'int8', 'int4', 'int4m']);
    assert.equal(report.positions, 256);
    assert.equal(report.promptsRun, 2);
    assert.deepEqual(report.reference, { language: 'bf16', vision: 'bf16', seconds: report.reference.seconds });
    assert.deepEqual(
      report.results.map((r) => r.weights),
      (['bf16', 'int8', 'int4', 'int4m'] as const).map((language) => ({ language, vision: 'bf16' })),
    );
    for (const r of report.results) {
      assert.equal(r.top1.positions, 256);
      assert.deepEqual([r.greedy.prompts, r.greedy.tokens], [2, 32]);
    }
  });

  it('bf16 against itself: the same distributions and decodes', () => {
    const same = report.results[0]!;
    assert.ok(same.kl.max < 1e-9, `max KL ${same.kl.max}`);
    assert.equal(same.top1.rate, 1);
    assert.deepEqual([same.greedy.prefix, same.greedy.matching, same.greedy.identical], [32, 32, 2]);
  });

  for (const [i, format] of (['int8', 'int4', 'int4m'] as const).entries()) {
    it(`${format} stays within its bounds`, () => {
      const r = report.results[i + 1]!;
      const { meanKl, top1 } = BOUNDS[format];
      assert.ok(r.kl.mean >= meanKl[0] && r.kl.mean <= meanKl[1], `${format}: mean KL ${r.kl.mean} outside [${meanKl.join(', ')}]`);
      assert.ok(r.kl.max >= r.kl.p99 && r.kl.p99 >= r.kl.p50, `${format}: KL percentiles out of order ${JSON.stringify(r.kl)}`);
      assert.ok(r.top1.rate >= top1, `${format}: top-1 agreement ${r.top1.rate} < ${top1}`);
    });
  }

  it('a quantized vision encoder moves the image positions within its bound', async () => {
    // bf16 language: every difference comes from the vision side, at the ~200 image positions (2.7e-2 measured).
    const r = (await run(['bf16'], 'int4')).results[0]!;
    assert.deepEqual(r.weights, { language: 'bf16', vision: 'int4' });
    assert.ok(r.kl.mean > 4e-3 && r.kl.mean < 0.07, `mean KL ${r.kl.mean}`);
  });

  it('refuses a quantized checkpoint as the reference, and bad options by name', async () => {
    const quantized = join(scratch, 'int8-checkpoint');
    writeQuantizedCheckpoint({ from: model, out: quantized, formats: { language: 'int8', vision: 'bf16' } });
    await assert.rejects(compareWeights({ model: quantized, weights: ['int4'], prompts }), /stores quantized weights \(language int8, vision bf16\); compare-weights needs the bf16 checkpoint/);
    await assert.rejects(compareWeights({ model, weights: ['int3' as WeightFormat], prompts }), /weights must be one of bf16, int8, int4, int4m, got the string "int3"/);
    await assert.rejects(compareWeights({ model, weights: ['int4'], prompts: [] }), /prompts is empty/);
    await assert.rejects(compareWeights({ model, weights: ['int4'], prompts, positions: 0 }), /positions must be an integer >= 1/);
  });

  it('names the prompt whose media cannot be read', async () => {
    const broken: ComparePrompt = { label: 'data.jsonl line 7', baseDir: scratch, conversation: { messages: [{ role: 'user', content: [{ type: 'image', image: 'nope.png' }] }], addSystemPrompt: false, addGenerationPrompt: true } };
    await assert.rejects(compareWeights({ model, weights: ['int4'], prompts: [broken] }), /^Error: data\.jsonl line 7: .*nope\.png/);
  });
});

describe('vl3 dev compare-weights', { skip: !fixtures && FIXTURES_MISSING }, () => {
  const vl3 = join(repoRoot(), 'dist', 'src', 'cli', 'vl3.js');
  const cli = (args: string[]) => spawnSync(process.execPath, [vl3, 'dev', 'compare-weights', ...args], { encoding: 'utf8', timeout: 120_000 });
  const model = fixtures ? join(fixtures, TINY_CHECKPOINT) : '';
  const data = join(scratch, 'prompts.txt');
  writeFileSync(data, 'The quick brown fox jumps over the lazy dog.\n"A second prompt,\\nover two lines."\n');

  it('--json prints one object: positions, reference, one result per format', () => {
    const r = cli(['-m', model, '--weights', 'int8,int4m', '--data', data, '--greedy-tokens', '8', '--json']);
    assert.equal(r.status, 0, r.stderr);
    const report = JSON.parse(r.stdout) as CompareReport;
    assert.equal(report.prompts, 2);
    assert.equal(report.promptsRun, 2);
    assert.ok(report.positions > 20 && report.positions < 100, `${report.positions} positions`);
    assert.equal(report.greedyTokens, 8);
    assert.deepEqual(Object.keys(report).sort(), ['backend', 'greedyTokens', 'model', 'positions', 'prompts', 'promptsRun', 'reference', 'results']);
    assert.deepEqual(report.results.map((x) => x.weights.language), ['int8', 'int4m']);
    for (const x of report.results) {
      assert.deepEqual(Object.keys(x).sort(), ['greedy', 'kl', 'seconds', 'top1', 'weights']);
      assert.deepEqual(Object.keys(x.kl).sort(), ['max', 'mean', 'p50', 'p99']);
      assert.equal(x.top1.positions, report.positions);
      assert.equal(x.greedy.tokens, 16);
      assert.equal(x.greedy.perPrompt.length, 2);
    }
  });

  it('prints a table by default, --positions capping what is scored', () => {
    const r = cli(['-m', model, '--weights', 'int4', '--data', data, '--positions', '5', '--greedy-tokens', '4']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /5 positions scored in 1 of 2 prompts/);
    assert.match(r.stdout, /^weights +vision +KL mean +KL p50 +KL p99 +KL max +top-1 agree/m);
    assert.match(r.stdout, /^int4 +bf16 +\d\.\d\de-\d+ .* \d+\/5 \(\d+\.\d%\) +\d+\/4 /m);
  });

  it('fails naming the bad input: data file, format, checkpoint', () => {
    const missing = cli(['-m', model, '--weights', 'int4', '--data', join(scratch, 'absent.txt')]);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /^vl3: cannot read data file .*absent\.txt/);
    const empty = join(scratch, 'empty.txt');
    writeFileSync(empty, '\n');
    assert.match(cli(['-m', model, '--weights', 'int4', '--data', empty]).stderr, /^vl3: data file .*empty\.txt has no prompts/);
    const format = cli(['-m', model, '--weights', 'int4,int3']);
    assert.equal(format.status, 2);
    assert.match(format.stderr, /unknown format "int3" \(expected bf16, int8, int4, int4m/);
    const help = cli(['--help']);
    for (const f of ['MODEL', 'WEIGHTS', 'VISION_WEIGHTS', 'DATA', 'POSITIONS', 'GREEDY_TOKENS', 'TMP_DIR', 'JSON']) assert.match(help.stdout, new RegExp(`VL3_${f}\\b`));
  });
});
