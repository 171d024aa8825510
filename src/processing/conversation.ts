/**
 * Conversations in the official VideoLLaMA3 format, validated and normalised.
 *
 * Accepted input (from JSON or TypeScript):
 *   - a list of messages `[{role, content}, ...]`, or
 *   - an object `{messages, add_system_prompt?, add_generation_prompt?}` (camelCase `addSystemPrompt` /
 *     `addGenerationPrompt` are accepted too, so a parsed `Conversation` parses to itself).
 * `content` is a string or a list of parts:
 *   - `"text"` or `{type: "text", text}`
 *   - `{type: "image", image: "<path or data URL>"}` or `{type: "image", image: {image_path}}`, optional `timestamp`
 *   - `{type: "video", video: {video_path, fps?, max_frames?, start_time?, end_time?}}` or `video: "<path>"`
 * A part without `type` is typed by its single `text` / `image` / `video` key, as the template would read it.
 * Video parts may already carry `num_frames` and `timestamps`: the processor adds them after loading the video,
 * before rendering the chat template (see `withVideoFrames`).
 *
 * Errors name the offending place, e.g. `messages[1].content[0]: unknown part type "foo"`.
 */
import { describeValue, quoted } from './describe.js';
import { InputError } from './input-error.js';
import { isPlainObject } from './json-file.js';

export type Role = 'system' | 'user' | 'assistant' | 'stream';

export const ROLES: readonly Role[] = ['system', 'user', 'assistant', 'stream'];

export interface TextPart {
  type: 'text';
  text: string;
}

export interface ImagePart {
  type: 'image';
  /** A file path or a data URL, or the official `{image_path}` object. */
  image: string | { image_path: string };
  /** Seconds; the template then writes `Time X.Xs: ` before the image. */
  timestamp?: number;
}

export interface VideoSpec {
  video_path: string;
  /** Frames sampled per second (processor default: processor_config.json, 1 for the released checkpoints). */
  fps?: number;
  max_frames?: number;
  /** Clip bounds in seconds. */
  start_time?: number;
  end_time?: number;
}

export interface VideoPart {
  type: 'video';
  video: string | VideoSpec;
  /** Number of frames kept after loading; required to render the template. */
  num_frames?: number;
  /** Time of each kept frame in seconds (numpy float64 in the reference), rendered as `Time X.Xs:`. */
  timestamps?: number[];
}

export type ContentPart = TextPart | ImagePart | VideoPart;

export interface Message {
  role: Role;
  content: string | ContentPart[];
}

export interface Conversation {
  messages: Message[];
  /** Insert the default VideoLLaMA3 system prompt when the first message is not a system message. */
  addSystemPrompt: boolean;
  /** End the prompt with `<|im_start|>assistant\n`. */
  addGenerationPrompt: boolean;
}

export const DEFAULT_ADD_SYSTEM_PROMPT = false;
export const DEFAULT_ADD_GENERATION_PROMPT = true;

/** Where a validation problem was found, e.g. `messages[1].content[0]`. */
function fail(where: string, problem: string): never {
  throw new InputError(where, problem);
}

function rejectUnknownKeys(where: string, object: Record<string, unknown>, allowed: readonly string[]): void {
  for (const key of Object.keys(object)) {
    if (!allowed.includes(key)) fail(where, `unknown key ${quoted(key)} (allowed: ${allowed.join(', ')})`);
  }
}

function nonEmptyString(where: string, value: unknown): string {
  if (typeof value !== 'string' || value.length === 0) fail(where, `expected a non-empty string, got ${describeValue(value)}`);
  return value;
}

function optionalNumber(
  where: string,
  value: unknown,
  check: { integer?: boolean; min?: number; positive?: boolean },
): number | undefined {
  if (value === undefined) return undefined;
  const wanted = `${check.integer ? 'an integer' : 'a number'}${check.positive ? ' > 0' : check.min !== undefined ? ` >= ${check.min}` : ''}`;
  if (typeof value !== 'number' || !Number.isFinite(value)) fail(where, `expected ${wanted}, got ${describeValue(value)}`);
  if (check.integer && !Number.isInteger(value)) fail(where, `expected ${wanted}, got ${value}`);
  if (check.positive && !(value > 0)) fail(where, `expected ${wanted}, got ${value}`);
  if (check.min !== undefined && value < check.min) fail(where, `expected ${wanted}, got ${value}`);
  return value;
}

function optionalBoolean(where: string, value: unknown): boolean | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'boolean') fail(where, `expected true or false, got ${describeValue(value)}`);
  return value;
}

/** Copies an object, leaving out keys whose value is undefined (the template tests keys with `in`). */
function withoutUndefined<T extends object>(object: T): T {
  return Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined)) as T;
}

const PART_TYPES = ['text', 'image', 'video'] as const;

function partType(where: string, part: Record<string, unknown>): ContentPart['type'] {
  if (part.type !== undefined) {
    if (typeof part.type !== 'string' || !(PART_TYPES as readonly string[]).includes(part.type)) {
      fail(where, `unknown part type ${typeof part.type === 'string' ? quoted(part.type) : describeValue(part.type)} (expected text, image or video)`);
    }
    return part.type as ContentPart['type'];
  }
  const present = PART_TYPES.filter((key) => key in part);
  if (present.length !== 1) fail(where, 'part has no "type" (and is not recognisable by a single text/image/video key)');
  return present[0];
}

function parseVideoSpec(where: string, value: unknown): string | VideoSpec {
  if (typeof value === 'string') return nonEmptyString(where, value);
  if (!isPlainObject(value)) fail(where, `expected a path or {video_path, fps, max_frames, start_time, end_time}, got ${describeValue(value)}`);
  rejectUnknownKeys(where, value, ['video_path', 'fps', 'max_frames', 'start_time', 'end_time']);
  const spec: VideoSpec = withoutUndefined({
    video_path: nonEmptyString(`${where}.video_path`, value.video_path),
    fps: optionalNumber(`${where}.fps`, value.fps, { positive: true }),
    max_frames: optionalNumber(`${where}.max_frames`, value.max_frames, { integer: true, min: 1 }),
    start_time: optionalNumber(`${where}.start_time`, value.start_time, { min: 0 }),
    end_time: optionalNumber(`${where}.end_time`, value.end_time, { min: 0 }),
  });
  if (spec.start_time !== undefined && spec.end_time !== undefined && !(spec.start_time < spec.end_time)) {
    fail(where, `start_time (${spec.start_time}) must be before end_time (${spec.end_time})`);
  }
  return spec;
}

function parseImageSource(where: string, value: unknown): string | { image_path: string } {
  if (typeof value === 'string') return nonEmptyString(where, value);
  if (!isPlainObject(value)) fail(where, `expected a path, a data URL or {image_path}, got ${describeValue(value)}`);
  rejectUnknownKeys(where, value, ['image_path']);
  return { image_path: nonEmptyString(`${where}.image_path`, value.image_path) };
}

function parsePart(where: string, value: unknown): ContentPart {
  if (typeof value === 'string') return { type: 'text', text: value };
  if (!isPlainObject(value)) fail(where, `expected a string or a part object, got ${describeValue(value)}`);
  const type = partType(where, value);
  switch (type) {
    case 'text':
      rejectUnknownKeys(where, value, ['type', 'text']);
      if (typeof value.text !== 'string') fail(`${where}.text`, `expected a string, got ${describeValue(value.text)}`);
      return { type, text: value.text };
    case 'image':
      rejectUnknownKeys(where, value, ['type', 'image', 'timestamp']);
      return withoutUndefined({
        type,
        image: parseImageSource(`${where}.image`, value.image),
        timestamp: optionalNumber(`${where}.timestamp`, value.timestamp, {}),
      });
    case 'video': {
      rejectUnknownKeys(where, value, ['type', 'video', 'num_frames', 'timestamps']);
      const numFrames = optionalNumber(`${where}.num_frames`, value.num_frames, { integer: true, min: 1 });
      const timestamps = parseTimestamps(`${where}.timestamps`, value.timestamps, numFrames);
      return withoutUndefined({ type, video: parseVideoSpec(`${where}.video`, value.video), num_frames: numFrames, timestamps });
    }
  }
}

function parseTimestamps(where: string, value: unknown, numFrames: number | undefined): number[] | undefined {
  if (value === undefined) return undefined;
  if (numFrames === undefined) fail(where, 'timestamps are given without num_frames');
  // A Float64Array (timestamps read from a tensor) is as good as a list.
  const list: unknown[] | undefined = Array.isArray(value)
    ? value
    : value instanceof Float64Array || value instanceof Float32Array
      ? Array.from(value)
      : undefined;
  if (list === undefined || !list.every((t) => typeof t === 'number' && Number.isFinite(t))) {
    fail(where, `expected a list of numbers, got ${describeValue(value)}`);
  }
  if (list.length !== numFrames) fail(where, `has ${list.length} entries for num_frames ${numFrames}`);
  return list.slice() as number[];
}

function parseMessage(where: string, value: unknown): Message {
  if (!isPlainObject(value)) fail(where, `expected a {role, content} object, got ${describeValue(value)}`);
  rejectUnknownKeys(where, value, ['role', 'content']);
  const role = value.role;
  if (typeof role !== 'string' || !(ROLES as readonly string[]).includes(role)) {
    const got = typeof role === 'string' ? `unknown role ${quoted(role)}` : `expected a role, got ${describeValue(role)}`;
    fail(`${where}.role`, `${got} (one of ${ROLES.join(', ')})`);
  }
  const content = value.content;
  if (typeof content === 'string') return { role: role as Role, content };
  if (!Array.isArray(content)) fail(`${where}.content`, `expected a string or a list of parts, got ${describeValue(content)}`);
  return { role: role as Role, content: content.map((part, j) => parsePart(`${where}.content[${j}]`, part)) };
}

function parseMessages(value: unknown): Message[] {
  if (!Array.isArray(value)) fail('messages', `expected a list of messages, got ${describeValue(value)}`);
  if (value.length === 0) fail('messages', 'the conversation has no messages');
  return value.map((m, i) => parseMessage(`messages[${i}]`, m));
}

/** Reads a flag given in snake_case (JSON, official) or camelCase (TypeScript); both at once is an error. */
function flag(object: Record<string, unknown>, snake: string, camel: string, fallback: boolean): boolean {
  const a = optionalBoolean(`conversation.${snake}`, object[snake]);
  const b = optionalBoolean(`conversation.${camel}`, object[camel]);
  if (a !== undefined && b !== undefined) fail('conversation', `give only one of "${snake}" and "${camel}"`);
  return a ?? b ?? fallback;
}

/** Validates a conversation (a message list or `{messages, add_system_prompt, add_generation_prompt}`). */
export function parseConversation(input: unknown): Conversation {
  if (Array.isArray(input)) {
    return {
      messages: parseMessages(input),
      addSystemPrompt: DEFAULT_ADD_SYSTEM_PROMPT,
      addGenerationPrompt: DEFAULT_ADD_GENERATION_PROMPT,
    };
  }
  if (!isPlainObject(input)) fail('conversation', `expected a list of messages or an object with "messages", got ${describeValue(input)}`);
  rejectUnknownKeys('conversation', input, [
    'messages',
    'add_system_prompt',
    'add_generation_prompt',
    'addSystemPrompt',
    'addGenerationPrompt',
  ]);
  return {
    messages: parseMessages(input.messages),
    addSystemPrompt: flag(input, 'add_system_prompt', 'addSystemPrompt', DEFAULT_ADD_SYSTEM_PROMPT),
    addGenerationPrompt: flag(input, 'add_generation_prompt', 'addGenerationPrompt', DEFAULT_ADD_GENERATION_PROMPT),
  };
}

/** Parses conversation JSON text (a file's content or a command-line argument). */
export function parseConversationJson(text: string): Conversation {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new Error(`conversation is not valid JSON: ${(err as Error).message}`);
  }
  return parseConversation(value);
}

export interface MediaLocation {
  messageIndex: number;
  partIndex: number;
}

export interface ImageMedia {
  kind: 'image';
  /** File path or data URL. */
  source: string;
  timestamp?: number;
  location: MediaLocation;
}

export interface VideoMedia {
  kind: 'video';
  /** File path. */
  source: string;
  fps?: number;
  maxFrames?: number;
  startTime?: number;
  endTime?: number;
  location: MediaLocation;
}

export type MediaItem = ImageMedia | VideoMedia;

export function isDataUrl(source: string): boolean {
  return /^data:/i.test(source);
}

/**
 * The images and videos of a conversation in order of appearance. This is also their order in the rendered prompt
 * and therefore the order the visual features must follow (spec 5.2).
 */
export function collectMedia(messages: readonly Message[]): MediaItem[] {
  const media: MediaItem[] = [];
  messages.forEach((message, messageIndex) => {
    if (typeof message.content === 'string') return;
    message.content.forEach((part, partIndex) => {
      const location = { messageIndex, partIndex };
      if (part.type === 'image') {
        const source = typeof part.image === 'string' ? part.image : part.image.image_path;
        media.push(withoutUndefined({ kind: 'image', source, timestamp: part.timestamp, location }));
      } else if (part.type === 'video') {
        const spec: VideoSpec = typeof part.video === 'string' ? { video_path: part.video } : part.video;
        media.push(
          withoutUndefined({
            kind: 'video',
            source: spec.video_path,
            fps: spec.fps,
            maxFrames: spec.max_frames,
            startTime: spec.start_time,
            endTime: spec.end_time,
            location,
          }),
        );
      }
    });
  });
  return media;
}

/** What loading a video produced, as far as the prompt is concerned. */
export interface VideoFrames {
  numFrames: number;
  /** Seconds, one per kept frame. */
  timestamps?: readonly number[] | Float64Array;
}

/**
 * Returns a copy of the messages in which the k-th video part (in order of appearance) carries `num_frames` and
 * `timestamps` from `frames[k]`, as the official processor annotates the conversation before rendering it.
 */
export function withVideoFrames(messages: readonly Message[], frames: readonly VideoFrames[]): Message[] {
  let next = 0;
  const annotated = messages.map((message, i): Message => {
    if (typeof message.content === 'string') return { ...message };
    const content = message.content.map((part, j): ContentPart => {
      if (part.type !== 'video') return { ...part };
      const where = `messages[${i}].content[${j}]`;
      const info = frames[next++];
      if (info === undefined) fail(where, `no frame information for video ${next - 1} (${frames.length} given)`);
      const numFrames = optionalNumber(`${where}.num_frames`, info.numFrames, { integer: true, min: 1 });
      return withoutUndefined({
        ...part,
        num_frames: numFrames,
        timestamps: parseTimestamps(`${where}.timestamps`, info.timestamps, numFrames),
      });
    });
    return { role: message.role, content };
  });
  if (next !== frames.length) fail('messages', `${frames.length} frame lists given for ${next} video(s)`);
  return annotated;
}
