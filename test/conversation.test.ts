// Conversation parsing and validation, media collection and video annotation.
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import {
  collectMedia,
  isDataUrl,
  parseConversation,
  parseConversationJson,
  withVideoFrames,
  type Message,
} from '../src/processing/conversation.js';
import { FIXTURES_MISSING, fixturesDir, readJson } from './fixtures.js';

const fixtures = fixturesDir();

const mixed = [
  { role: 'system', content: 'Be brief.' },
  {
    role: 'user',
    content: [
      { type: 'video', video: { video_path: 'clip.mp4', fps: 1, max_frames: 180, start_time: 2, end_time: 10.5 } },
      'Compare with ',
      { type: 'image', image: { image_path: 'a.jpg' } },
      { image: 'data:image/png;base64,AAAA' },
      { text: 'Which is older?' },
    ],
  },
  { role: 'assistant', content: [{ type: 'text', text: 'The first.' }] },
];

/** Asserts that parsing `input` fails with exactly `message`. */
function rejects(input: unknown, message: string): void {
  assert.throws(() => parseConversation(input), (err: Error) => {
    assert.equal(err.message, message);
    return true;
  });
}

describe('parseConversation', () => {
  it('takes a message list with the default switches', () => {
    const c = parseConversation([{ role: 'user', content: 'Hi' }]);
    assert.deepEqual(c, { messages: [{ role: 'user', content: 'Hi' }], addSystemPrompt: false, addGenerationPrompt: true });
  });

  it('takes an object with snake_case or camelCase switches', () => {
    const messages = [{ role: 'user', content: 'Hi' }];
    const snake = parseConversation({ messages, add_system_prompt: true, add_generation_prompt: false });
    assert.equal(snake.addSystemPrompt, true);
    assert.equal(snake.addGenerationPrompt, false);
    assert.deepEqual(parseConversation(snake), snake); // a parsed conversation parses to itself
    assert.equal(parseConversation({ messages }).addGenerationPrompt, true);
    rejects({ messages, add_system_prompt: true, addSystemPrompt: true }, 'conversation: give only one of "add_system_prompt" and "addSystemPrompt"');
    rejects({ messages, add_system_prompt: 'yes' }, 'conversation.add_system_prompt: expected true or false, got the string "yes"');
  });

  it('normalises string parts and parts typed by their key, without touching the input', () => {
    const input = structuredClone(mixed);
    const { messages } = parseConversation(input);
    assert.deepEqual(input, mixed);
    assert.deepEqual(messages[1].content, [
      { type: 'video', video: { video_path: 'clip.mp4', fps: 1, max_frames: 180, start_time: 2, end_time: 10.5 } },
      { type: 'text', text: 'Compare with ' },
      { type: 'image', image: { image_path: 'a.jpg' } },
      { type: 'image', image: 'data:image/png;base64,AAAA' },
      { type: 'text', text: 'Which is older?' },
    ]);
    assert.deepEqual(messages[2], { role: 'assistant', content: [{ type: 'text', text: 'The first.' }] });
  });

  it('passes stream turns and already-loaded videos through', () => {
    const { messages } = parseConversation([
      { role: 'stream', content: [{ type: 'video', video: 'v.mp4', num_frames: 2, timestamps: [0, 1] }] },
    ]);
    assert.deepEqual(messages, [{ role: 'stream', content: [{ type: 'video', video: 'v.mp4', num_frames: 2, timestamps: [0, 1] }] }]);
  });

  it('names the message, part and field of each problem', () => {
    rejects('hello', 'conversation: expected a list of messages or an object with "messages", got the string "hello"');
    rejects([], 'messages: the conversation has no messages');
    rejects({ messages: [{ role: 'user', content: 'x' }], extra: 1 }, 'conversation: unknown key "extra" (allowed: messages, add_system_prompt, add_generation_prompt, addSystemPrompt, addGenerationPrompt)');
    rejects([{ role: 'user', content: 'a' }, 'b'], 'messages[1]: expected a {role, content} object, got the string "b"');
    rejects([{ role: 'bot', content: 'a' }], 'messages[0].role: unknown role "bot" (one of system, user, assistant, stream)');
    rejects([{ content: 'a' }], 'messages[0].role: expected a role, got nothing (one of system, user, assistant, stream)');
    rejects([{ role: 'user', content: 3 }], 'messages[0].content: expected a string or a list of parts, got 3');
    rejects([{ role: 'user', content: 'a', name: 'x' }], 'messages[0]: unknown key "name" (allowed: role, content)');
    rejects(
      [{ role: 'user', content: 'a' }, { role: 'user', content: [{ type: 'foo' }] }],
      'messages[1].content[0]: unknown part type "foo" (expected text, image or video)',
    );
    rejects([{ role: 'user', content: [{ text: 'a', image: 'b' }] }], 'messages[0].content[0]: part has no "type" (and is not recognisable by a single text/image/video key)');
    rejects([{ role: 'user', content: [{ type: 'text', text: 5 }] }], 'messages[0].content[0].text: expected a string, got 5');
    rejects([{ role: 'user', content: [null] }], 'messages[0].content[0]: expected a string or a part object, got null');
    rejects([{ role: 'user', content: [{ type: 'image', image: '' }] }], 'messages[0].content[0].image: expected a non-empty string, got the string ""');
    rejects([{ role: 'user', content: [{ type: 'image', image: { path: 'a' } }] }], 'messages[0].content[0].image: unknown key "path" (allowed: image_path)');
    rejects([{ role: 'user', content: [{ type: 'image', image: 'a', timestamp: 'x' }] }], 'messages[0].content[0].timestamp: expected a number, got the string "x"');
    rejects([{ role: 'user', content: [{ type: 'video', video: { fps: 1 } }] }], 'messages[0].content[0].video.video_path: expected a non-empty string, got nothing');
    rejects([{ role: 'user', content: [{ type: 'video', video: { video_path: 'v', fps: -1 } }] }], 'messages[0].content[0].video.fps: expected a number > 0, got -1');
    rejects([{ role: 'user', content: [{ type: 'video', video: { video_path: 'v', max_frames: 2.5 } }] }], 'messages[0].content[0].video.max_frames: expected an integer >= 1, got 2.5');
    rejects([{ role: 'user', content: [{ type: 'video', video: { video_path: 'v', start_time: 5, end_time: 5 } }] }], 'messages[0].content[0].video: start_time (5) must be before end_time (5)');
    rejects([{ role: 'user', content: [{ type: 'video', video: { video_path: 'v', maxframes: 2 } }] }], 'messages[0].content[0].video: unknown key "maxframes" (allowed: video_path, fps, max_frames, start_time, end_time)');
    rejects([{ role: 'user', content: [{ type: 'video', video: 'v', timestamps: [0] }] }], 'messages[0].content[0].timestamps: timestamps are given without num_frames');
    rejects([{ role: 'user', content: [{ type: 'video', video: 'v', num_frames: 2, timestamps: [0] }] }], 'messages[0].content[0].timestamps: has 1 entries for num_frames 2');
  });

  it('reports malformed JSON text', () => {
    assert.throws(() => parseConversationJson('[{"role": '), /^Error: conversation is not valid JSON/);
    assert.equal(parseConversationJson('[{"role": "user", "content": "Hi"}]').messages.length, 1);
  });
});

describe('collectMedia', () => {
  it('lists images and videos in order of appearance with their options', () => {
    const { messages } = parseConversation(mixed);
    assert.deepEqual(collectMedia(messages), [
      { kind: 'video', source: 'clip.mp4', fps: 1, maxFrames: 180, startTime: 2, endTime: 10.5, location: { messageIndex: 1, partIndex: 0 } },
      { kind: 'image', source: 'a.jpg', location: { messageIndex: 1, partIndex: 2 } },
      { kind: 'image', source: 'data:image/png;base64,AAAA', location: { messageIndex: 1, partIndex: 3 } },
    ]);
    assert.deepEqual(collectMedia(parseConversation([{ role: 'user', content: 'text only' }]).messages), []);
  });

  it('tells data URLs from paths', () => {
    assert.equal(isDataUrl('data:image/jpeg;base64,/9j/'), true);
    assert.equal(isDataUrl('DATA:image/png;base64,'), true);
    assert.equal(isDataUrl('/tmp/data:x.png'), false);
  });
});

describe('withVideoFrames', () => {
  const messages: Message[] = [
    {
      role: 'user',
      content: [
        { type: 'video', video: 'a.mp4' },
        { type: 'text', text: 'and' },
        { type: 'video', video: { video_path: 'b.mp4', fps: 2 } },
      ],
    },
  ];

  it('annotates each video in order and leaves the input alone', () => {
    const annotated = withVideoFrames(messages, [{ numFrames: 2, timestamps: [0, 1] }, { numFrames: 1, timestamps: Float64Array.of(0.5) }]);
    assert.deepEqual(annotated[0].content, [
      { type: 'video', video: 'a.mp4', num_frames: 2, timestamps: [0, 1] },
      { type: 'text', text: 'and' },
      { type: 'video', video: { video_path: 'b.mp4', fps: 2 }, num_frames: 1, timestamps: [0.5] },
    ]);
    assert.deepEqual(messages[0].content[0], { type: 'video', video: 'a.mp4' });
  });

  it('requires one frame list per video', () => {
    assert.throws(() => withVideoFrames(messages, [{ numFrames: 1 }]), /messages\[0\]\.content\[2\]: no frame information for video 1 \(1 given\)/);
    assert.throws(() => withVideoFrames(messages, [{ numFrames: 1 }, { numFrames: 1 }, { numFrames: 1 }]), /3 frame lists given for 2 video\(s\)/);
    assert.throws(() => withVideoFrames(messages, [{ numFrames: 2, timestamps: [0] }, { numFrames: 1 }]), /has 1 entries for num_frames 2/);
  });
});

describe('fixture conversations', { skip: fixtures ? false : FIXTURES_MISSING }, () => {
  it('parse, with their media in the order of the processed items', () => {
    const casesDir = join(fixtures!, 'cases');
    const names = readdirSync(casesDir, { withFileTypes: true }).filter((e) => e.isDirectory());
    assert.equal(names.length, 7);
    for (const { name } of names) {
      const manifest = readJson<{ conversation: unknown; modals: string[] }>(join(casesDir, name, 'manifest.json'));
      const media = collectMedia(parseConversation(manifest.conversation).messages);
      assert.deepEqual(media.map((m) => m.kind), manifest.modals, name);
    }
  });
});
