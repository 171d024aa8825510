// The chat template against every fixture case's prompt.txt, placeholder expansion against prompt_expanded.txt and
// the tokenized expansion against the case's input_ids; plus the template's rounding and its other branches.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SafetensorsFile } from '../src/model/safetensors.js';
import { ChatTemplate, loadChatTemplate, renderChatTemplate } from '../src/processing/chat-template.js';
import { parseConversation, withVideoFrames, type Message, type VideoFrames } from '../src/processing/conversation.js';
import { expandImageTokens, visualTokenCounts } from '../src/processing/placeholders.js';
import { numpyRound, pythonRound } from '../src/processing/rounding.js';
import { Tokenizer } from '../src/processing/tokenizer.js';
import { FIXTURES_MISSING, fixturesDir, readJson, TINY_CHECKPOINT } from './fixtures.js';

interface Manifest {
  case: string;
  conversation: unknown;
  processor_call: { kwargs: { add_system_prompt: boolean; add_generation_prompt: boolean } };
  modals: ('image' | 'video')[];
  grid_sizes: [number, number, number][];
  merge_sizes: number[];
  visual_items: { item: number; modal: 'image' | 'video'; timestamps?: number[] }[];
}

const fixtures = fixturesDir();
const skip = fixtures ? false : FIXTURES_MISSING;

const SYSTEM_PROMPT =
  '<|im_start|>system\nYou are VideoLLaMA3 created by Alibaba DAMO Academy, a helpful assistant to help people understand images and videos.<|im_end|>\n';

describe('chat template on the fixture cases', { skip }, () => {
  let tokenizer: Tokenizer;
  const caseNames = fixtures
    ? readdirSync(join(fixtures, 'cases'), { withFileTypes: true })
        .filter((e) => e.isDirectory())
        .map((e) => e.name)
        .sort()
    : [];

  before(async () => {
    tokenizer = await Tokenizer.load(join(fixtures!, TINY_CHECKPOINT));
  });

  it('finds all seven cases', () => {
    assert.equal(caseNames.length, 7);
    assert.ok(caseNames.includes('e_text_only'));
  });

  for (const name of caseNames) {
    describe(name, () => {
      const dir = join(fixtures!, 'cases', name);
      const manifest = readJson<Manifest>(join(dir, 'manifest.json'));
      const inputs = SafetensorsFile.open(join(dir, 'inputs.safetensors'));
      after(() => inputs.close());
      // What the processor's video loader reported for each video, in order: here taken from the manifest.
      const videos: VideoFrames[] = manifest.visual_items
        .filter((item) => item.modal === 'video')
        .map((item) => ({ numFrames: item.timestamps!.length, timestamps: item.timestamps }));

      it('manifest timestamps are those stored with the inputs', () => {
        for (const item of manifest.visual_items.filter((v) => v.modal === 'video')) {
          assert.deepEqual(Array.from(inputs.readF64(`item${item.item}_timestamps`).data), item.timestamps);
        }
      });

      it('renders prompt.txt byte for byte', () => {
        const conversation = parseConversation(manifest.conversation);
        const { add_system_prompt, add_generation_prompt } = manifest.processor_call.kwargs;
        const prompt = renderChatTemplate(tokenizer.chatTemplate, withVideoFrames(conversation.messages, videos), {
          addSystemPrompt: add_system_prompt,
          addGenerationPrompt: add_generation_prompt,
        });
        assert.deepEqual(Buffer.from(prompt, 'utf8'), readFileSync(join(dir, 'prompt.txt')));
      });

      it('expands the placeholders to prompt_expanded.txt and tokenizes it to input_ids', () => {
        const counts = manifest.grid_sizes.flatMap((grid, i) => visualTokenCounts(grid, manifest.merge_sizes[i]));
        const expanded = expandImageTokens(readFileSync(join(dir, 'prompt.txt'), 'utf8'), counts);
        assert.equal(expanded, readFileSync(join(dir, 'prompt_expanded.txt'), 'utf8'));
        const expected = Array.from(inputs.read('input_ids').data as BigInt64Array, Number);
        assert.deepEqual(tokenizer.encode(expanded), expected);
      });
    });
  }
});

describe('chat template loading', { skip }, () => {
  it('takes the template of tokenizer_config.json before chat_template.json', async () => {
    const template = await loadChatTemplate(join(fixtures!, TINY_CHECKPOINT));
    assert.match(template.origin, /tokenizer_config\.json/);

    const dir = mkdtempSync(join(tmpdir(), 'vl3-tpl-'));
    try {
      writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ chat_template: 'from config' }));
      writeFileSync(join(dir, 'chat_template.json'), JSON.stringify({ chat_template: 'from file' }));
      assert.equal((await loadChatTemplate(dir)).renderVariables({}), 'from config');
      writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({}));
      assert.equal((await loadChatTemplate(dir)).renderVariables({}), 'from file');
      rmSync(join(dir, 'chat_template.json'));
      await assert.rejects(loadChatTemplate(dir), /no chat template/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the VideoLLaMA3 template, other branches', { skip }, () => {
  let template: ChatTemplate;
  const render = (messages: Message[], addSystemPrompt = false, addGenerationPrompt = true) =>
    renderChatTemplate(template, messages, { addSystemPrompt, addGenerationPrompt });

  before(async () => {
    template = await loadChatTemplate(join(fixtures!, TINY_CHECKPOINT));
  });

  it('inserts the default system prompt only before a non-system first message', () => {
    const user: Message = { role: 'user', content: 'Hi' };
    assert.equal(render([user], true), `${SYSTEM_PROMPT}<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n`);
    assert.equal(render([user], false, false), '<|im_start|>user\nHi<|im_end|>\n');
    assert.equal(
      render([{ role: 'system', content: 'Be brief.' }, user], true),
      '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
    );
  });

  it('renders multi-turn text, image timestamps and stream turns', () => {
    const messages: Message[] = [
      { role: 'user', content: [{ type: 'image', image: 'a.png', timestamp: 1.25 }, { type: 'text', text: 'What?' }] },
      { role: 'assistant', content: [{ type: 'text', text: 'A cat.' }] },
      { role: 'stream', content: [{ type: 'video', video: 'v.mp4', num_frames: 2, timestamps: [0.35, 2.45] }] },
    ];
    assert.equal(
      render(messages, false, false),
      '<|im_start|>user\nTime 1.2s: <image>\nWhat?<|im_end|>\n' +
        '<|im_start|>assistant\nA cat.<|im_end|>\n' +
        '<|stream_start|>stream\nTime 0.4s:<image>,Time 2.4s:<image>\n<|stream_end|>',
    );
  });

  it('renders a video without timestamps as bare image tokens', () => {
    const messages: Message[] = [{ role: 'user', content: [{ type: 'video', video: 'v.mp4', num_frames: 3 }, { type: 'text', text: 'Q' }] }];
    assert.equal(render(messages, false, false), '<|im_start|>user\n<image>,<image>,<image>\nQ<|im_end|>\n');
  });

  it('renders timestamps with Python rounding on request', () => {
    const messages: Message[] = [{ role: 'user', content: [{ type: 'video', video: 'v.mp4', num_frames: 2, timestamps: [0.35, 12.25] }] }];
    const prompt = renderChatTemplate(template, messages, { addSystemPrompt: false, addGenerationPrompt: false, timestampRounding: 'python' });
    assert.equal(prompt, '<|im_start|>user\nTime 0.3s:<image>,Time 12.2s:<image>\n<|im_end|>\n');
  });

  it('refuses a video that has not been loaded', () => {
    assert.throws(
      () => render([{ role: 'user', content: [{ type: 'video', video: 'v.mp4' }] }]),
      /messages\[0\]\.content\[0\]: the video has not been loaded/,
    );
  });
});

describe('the round filter', () => {
  const show = (source: string, x: unknown, timestampRounding?: 'numpy' | 'python') =>
    new ChatTemplate(source).renderVariables({ x }, timestampRounding);

  it('prints floats as Python does, always with a decimal point', () => {
    assert.equal(show('{{ x | round(1) | string }}', 12), '12.0');
    assert.equal(show('{{ x | round(1) | string }}', 0), '0.0');
    assert.equal(show('{{ x | round(1) | string }}', 12.34), '12.3');
    assert.equal(show('{{ x | round }}', 2.5), '2.0');
    assert.equal(show("{{ 'Time ' + x | round(1) | string + 's:' }}", 3), 'Time 3.0s:');
  });

  it('accepts the precision and method arguments by position and keyword', () => {
    assert.equal(show('{{ x | round(precision=1) }}', 0.35), '0.4');
    assert.equal(show("{{ x | round(1, 'floor') }}", 0.39), '0.3');
    assert.equal(show("{{ x | round(1, method='ceil') }}", 0.31), '0.4');
    assert.throws(() => show("{{ x | round(1, 'up') }}", 1), /method must be/);
    assert.throws(() => show('{{ x | round(1) }}', 'a'), /expected a number/);
  });

  // Expected values computed with numpy 2.4 (np.round on float64) and Python 3 (round on float).
  const table: [number, string, string][] = [
    [0.0, '0.0', '0.0'],
    [0.35, '0.4', '0.3'],
    [2.45, '2.4', '2.5'],
    [12.25, '12.2', '12.2'],
    [12.35, '12.4', '12.3'],
    [0.05, '0.0', '0.1'],
    [0.15, '0.2', '0.1'],
    [0.45, '0.4', '0.5'],
    [1.05, '1.0', '1.1'],
    [4.95, '5.0', '5.0'],
    [0.968, '1.0', '1.0'],
    [59.95, '60.0', '60.0'],
    [3599.85, '3599.8', '3599.8'],
    [100.05, '100.0', '100.0'],
  ];

  it('rounds like numpy by default and like Python on request', () => {
    for (const [x, numpy, python] of table) {
      assert.equal(show('{{ x | round(1) | string }}', x), numpy, `numpy ${x}`);
      assert.equal(show('{{ x | round(1) | string }}', x, 'python'), python, `python ${x}`);
    }
  });

  it('rounding helpers agree with numpy and Python on ties at other precisions', () => {
    assert.equal(numpyRound(0.125, 2), 0.12);
    assert.equal(pythonRound(0.125, 2), 0.12);
    assert.equal(pythonRound(0.375, 2), 0.38);
    assert.equal(pythonRound(2.5, 0), 2);
    assert.equal(pythonRound(3.5, 0), 4);
    assert.equal(pythonRound(-12.25, 1), -12.2);
    assert.equal(numpyRound(-0.04, 1), -0);
    assert.ok(Object.is(numpyRound(-0.04, 1), -0));
  });
});
