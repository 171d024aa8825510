// The quantized bench's grouping of decode runs by the host's bandwidth phase (bench/quantized-run.ts): the numbers
// that decide which runs are compared with which.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { measureQuantizedRounds, printQuantized, ratioMeets } from '../bench/quantized.js';
import { type BracketedRun, ComputeScaling, phaseFloors, type QuantizedRunReport, runsByPhase } from '../bench/quantized-run.js';

const run = (tokensPerSecond: number, beforeGBs: number, afterGBs = beforeGBs, steady = true): BracketedRun => ({ tokensPerSecond, beforeGBs, afterGBs, steady, tries: 1 });
const twoThreads = (bytesPerToken: QuantizedRunReport['bytesPerToken'], rounds: QuantizedRunReport['rounds']): QuantizedRunReport => ({
  threads: 2,
  compute: 'bf16',
  isa: 'avx512bf16',
  bytesPerToken,
  rounds,
});

test('phases split at the widest gap over 1.25×, one phase otherwise', () => {
  assert.deepEqual(phaseFloors([35, 36.5, 61, 58.9, 37.2]), [58.9, 0]);
  assert.deepEqual(phaseFloors([30, 33, 31.5, 36]), [0]); // 36/33 is under 1.25×
  assert.deepEqual(phaseFloors([30, 38, 60]), [60, 0]); // 60/38 is the wider gap
  assert.deepEqual(phaseFloors([42]), [0]);
  assert.deepEqual(phaseFloors([]), [0]);
});

test('runs are grouped by phase, unsteady runs left out', () => {
  const { floors, runs } = runsByPhase([
    { bf16: run(15.9, 60.5, 60.1), int8: run(19.6, 36.3, 35.6), q8_0: run(14.4, 35.7, 36.7) },
    { bf16: run(10.9, 36.2, 37.8), int8: run(27.6, 62.2, 60.3), q8_0: run(14.1, 61, 36, false) },
  ]);
  assert.equal(floors.length, 2);
  const [fast, slow] = runs;
  assert.deepEqual(fast!.get('bf16')?.map((r) => r.tokensPerSecond), [15.9]);
  assert.deepEqual(fast!.get('int8')?.map((r) => r.tokensPerSecond), [27.6]);
  assert.equal(fast!.get('q8_0'), undefined);
  assert.deepEqual(slow!.get('bf16')?.map((r) => r.tokensPerSecond), [10.9]);
  assert.deepEqual(slow!.get('int8')?.map((r) => r.tokensPerSecond), [19.6]);
  assert.deepEqual(slow!.get('q8_0')?.map((r) => r.tokensPerSecond), [14.4]);
});

test("each phase reports the median of its runs' compute scaling, and the summary names it", () => {
  const scaled = (tokensPerSecond: number, gbs: number, computeScaling: number): BracketedRun => ({ ...run(tokensPerSecond, gbs), computeScaling });
  const report = twoThreads({ bf16: 3e9, int4: 0.9e9 }, [
    { bf16: scaled(15.5, 60, 1.4), int4: scaled(41, 59, 1.5) },
    { bf16: scaled(10.2, 35, 1.8), int4: scaled(33, 35.5, 1.7), q4_0: run(26, 35) },
    { bf16: scaled(15.7, 61, 1.3) },
  ]);
  const q = measureQuantizedRounds({ modelDir: 'unused', threads: 2, compute: 'bf16', rounds: 3, llamaCpp: true, child: <T>() => report as T });
  assert.deepEqual(q.phases.map((p) => p.computeScaling), [1.4, 1.75]);
  const lines: string[] = [];
  printQuantized(q, (l) => lines.push(l));
  assert.ok(lines.some((l) => l.includes('runs that met 60 GB/s (3 runs, where 2 threads ran an in-cache int4 GEMV 1.4× as fast as one)')), lines.join('\n'));
  // Without the field (one thread, or a report from before it existed) the line stays as it was.
  const plain = measureQuantizedRounds({ modelDir: 'unused', threads: 1, compute: 'bf16', rounds: 1, llamaCpp: false, child: <T>() => ({ ...report, rounds: [{ bf16: run(8.3, 31) }] }) as T });
  assert.equal(plain.phases[0]!.computeScaling, undefined);
});

test('ratios pair the runs of each round within a phase; the paired median decides the target', () => {
  // bf16 drifts from round to round; int8 runs beside it at 1.85× its rate each time, but the two medians come
  // from different rounds. Round 3's int8 ran in the other phase and round 4's bf16 was unsteady: neither pairs.
  const report = twoThreads({ bf16: 3e9, int8: 1.6e9 }, [
    { bf16: run(14, 80), int8: run(25.9, 80) },
    { bf16: run(18, 82), int8: run(33.3, 82) },
    { bf16: run(17, 81), int8: run(20, 35) },
    { bf16: run(16, 80, 60, false), int8: run(30, 80) },
    { bf16: run(10, 36), int8: run(18.5, 36) },
  ]);
  const q = measureQuantizedRounds({ modelDir: 'unused', threads: 2, compute: 'bf16', rounds: 5, llamaCpp: false, child: <T>() => report as T });
  const [fast, slow] = q.phases.map((p) => p.ratios.find((r) => r.label === 'int8 ÷ our bf16')!);
  assert.deepEqual(fast!.paired, { ratio: 1.85, rounds: 2 });
  assert.equal(fast!.ratio, 1.76); // median 30 (of 25.9, 33.3, 30) ÷ median 17 (of 14, 18, 17)
  assert.ok(ratioMeets(fast!));
  assert.deepEqual(slow!.paired, { ratio: 1.85, rounds: 1 });
  assert.equal(ratioMeets({ label: 'x', ratio: 1.9, paired: { ratio: 1.7, rounds: 3 }, target: 1.8 }), false);
  assert.equal(ratioMeets({ label: 'x', ratio: 1.9, target: 1.8 }), true);
  const lines: string[] = [];
  printQuantized(q, (l) => lines.push(l));
  assert.ok(lines.includes('    int8 ÷ our bf16: 1.85× paired within 2 rounds (medians: 1.76×) (target ≥ 1.8×: met)'), lines.join('\n'));
});

test('ComputeScaling measures a positive ratio of the pool to one thread', () => {
  const r = new ComputeScaling(2).measure();
  assert.ok(Number.isFinite(r) && r > 0, String(r));
});
