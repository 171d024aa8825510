// The decode profile (bench/decode-profile.ts) on the fixture checkpoint: every kernel call of the timed decode is
// counted per token, under its op and, for matmuls, its weights' shapes.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { profileDecode } from '../bench/decode-profile.js';
import { FIXTURES_MISSING, fixturesDir, readJson, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();

test('the decode profile counts each kernel call of a decode step once, by op and matmul shape', { skip: fixtures ? false : FIXTURES_MISSING }, async () => {
  const dir = join(fixtures!, TINY_CHECKPOINT);
  const text = readJson<{ text_config?: Record<string, number> } & Record<string, number>>(join(dir, 'config.json'));
  const c = text.text_config ?? text;
  const [H, I, layers, V] = [c.hidden_size!, c.intermediate_size!, c.num_hidden_layers!, c.vocab_size!];
  const kv = (c.num_key_value_heads! * H) / c.num_attention_heads!;
  const p = await profileDecode(dir, 2, 'int4', 3, 40);
  assert.equal(p.threads, 2);
  assert.equal(p.tokens, 3);
  assert.equal(p.promptTokens, 40);
  const op = (name: string) => {
    const found = p.ops.find((o) => o.op === name);
    assert.ok(found, `${name} among ${p.ops.map((o) => o.op).join(', ')}`);
    return found;
  };
  // Per token: q/k/v as one job, o, gate/up as one job and down in every layer, then the LM head.
  assert.equal(op(`matmuls ${H}+${kv}+${kv}×${H}`).callsPerToken, layers);
  assert.equal(op(`matmul ${H}×${H}`).callsPerToken, layers);
  assert.equal(op(`matmuls ${I}+${I}×${H}`).callsPerToken, layers);
  assert.equal(op(`matmul ${H}×${I}`).callsPerToken, layers);
  assert.equal(op(`matmul ${V}×${H}`).callsPerToken, 1);
  assert.equal(op('attention').callsPerToken, layers);
  assert.equal(op('rmsNorm').callsPerToken, 2 * layers + 1);
  // Keys and values are computed into the cache, and a lone sequence's logits into its own row: no copy at all.
  assert.ok(!p.ops.some((o) => o.op === 'copy'), `a copy among ${p.ops.map((o) => o.op).join(', ')}`);
  for (const o of p.ops) {
    // A trivial call (a download of one value) may take under the 0.1 µs the figures are rounded to.
    assert.ok(o.medianMicros >= 0 && o.medianMicros <= o.p90Micros && o.p90Micros <= o.maxMicros, `${o.op}: ${JSON.stringify(o)}`);
    assert.equal(o.medianGBs !== undefined, o.op.startsWith('matmul'), o.op);
  }
  const inKernels = p.ops.reduce((s, o) => s + o.msPerToken, 0);
  // Both sides are rounded (to 0.001 and 0.01 ms).
  assert.ok(inKernels > 0 && inKernels <= p.timedMsPerToken + 0.01, `kernels ${inKernels} ms of a ${p.timedMsPerToken} ms token`);
  assert.ok(p.untimedMsPerToken > 0 && p.readGBsBefore > 0 && p.readGBsAfter > 0);
});
