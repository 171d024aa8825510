// The request processor beyond the fixture cases: several video items on one file (spec 3.4) and DiffFP switched off.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { Processor } from '../src/processing/processor.js';
import { Tokenizer } from '../src/processing/tokenizer.js';
import { fixturesDir, FIXTURES_MISSING, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();

describe('Processor with videos', { skip: !fixtures && FIXTURES_MISSING }, () => {
  let processor: Processor;
  const clip = () => join(fixtures!, 'media', 'synthetic_diffp.mkv'); // 5 s, 10 fps, lossless

  before(async () => {
    const folder = join(fixtures!, TINY_CHECKPOINT);
    processor = await Processor.load(folder, await Tokenizer.load(folder));
  });

  it('loads items on the same file once over the union of their ranges, each keeping its own frames', async () => {
    const request = await processor.process([
      {
        role: 'user',
        content: [
          { type: 'video', video: { video_path: clip(), fps: 1, start_time: 1, end_time: 2.5 } },
          { type: 'video', video: { video_path: clip(), fps: 1, start_time: 2, end_time: 4 } },
          { type: 'text', text: 'Compare.' },
        ],
      },
    ]);
    // One load from 1 s to 4 s samples t = 1, 2, 3; the first item keeps [1, 2.5], the second [2, 4].
    assert.deepEqual(request.videoTimestamps.map((t) => Array.from(t)), [[1, 2], [2, 3]]);
    assert.match(request.prompt, /Time 1\.0s:<image>,Time 2\.0s:<image>\nTime 2\.0s:<image>,Time 3\.0s:<image>\nCompare\./);
    // The frame at 2 s is the same frame in both items: identical pixel rows.
    const v = request.visuals!;
    const [t, gh, gw] = v.gridSizes[0]!;
    const rowsPerFrame = gh * gw;
    const width = v.pixelValues.dim(1);
    const frame = (item: number, f: number) => {
      const start = (item * t * rowsPerFrame + f * rowsPerFrame) * width;
      return v.pixelValues.data.subarray(start, start + rowsPerFrame * width);
    };
    assert.deepEqual(v.gridSizes, [[2, gh, gw], [2, gh, gw]]);
    assert.deepEqual(frame(0, 1), frame(1, 0));
  });

  it('keeps every video token when DiffFP is off, and prunes some of this static clip when on', async () => {
    const conversation = [{ role: 'user', content: [{ type: 'video', video: { video_path: clip(), fps: 1 } }, { type: 'text', text: 'x' }] }];
    const off = await processor.process(conversation, { tokenCompression: false });
    const on = await processor.process(conversation);
    assert.equal(off.visualTokens, off.keepMask!.length);
    assert.deepEqual(off.llmInputIds, off.inputIds);
    assert.ok(on.visualTokens < off.visualTokens, `DiffFP kept ${on.visualTokens} of ${off.visualTokens}`);
    assert.equal(on.llmInputIds.length, on.inputIds.length - (off.visualTokens - on.visualTokens));
  });

  it('names the message part of a video it cannot read', async () => {
    await assert.rejects(
      processor.process([{ role: 'user', content: [{ type: 'text', text: 'x' }, { type: 'video', video: { video_path: '/nonexistent/clip.mp4' } }] }]),
      /messages\[0\]\.content\[1\]: .*\/nonexistent\/clip\.mp4/,
    );
  });
});
