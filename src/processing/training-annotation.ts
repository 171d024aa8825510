/**
 * Training annotations in the official format (spec 10.4) and their conversion to chat messages, as
 * `LazySupervisedDataset._convert_normal` of the official `train.py` does it.
 *
 * A file is a JSON list of samples or JSON lines, one sample per line (the official loader, `datasets.load_dataset
 * ("json")`, reads either form from a .json or a .jsonl file). A sample:
 *   { "image": "a.jpg" | ["a.jpg", "b.jpg"], "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}] }
 *   { "video": ["clip.mp4"], "conversations": [...] }        exactly one video, as a one-element list
 *   { "conversations": [...] }                               text only
 * `image` / `video` set to null count as absent (the loader fills keys missing from some samples with null).
 *
 * Where the official code raises (the training loop then silently trains on a random other sample), this module
 * throws an AnnotationError naming the file, the sample and the field. Three inputs the official code accepts are
 * refused too, because what it does with them is certainly not what the author meant: a sample with both `image`
 * and `video` (the video would be ignored), a `from` other than human / gpt / system (a typo would become a
 * supervised answer), and `stream` samples, which this pipeline does not build.
 */
import { readFile } from 'node:fs/promises';
import { describeValue, quoted } from './describe.js';
import { InputError } from './input-error.js';
import { isPlainObject } from './json-file.js';

/** The placeholder of an image in the text of a `human` turn. */
export const IMAGE_TAG = '<image>';
/** The placeholder of the video in the text of a `human` turn. */
export const VIDEO_TAG = '<video>';

/** A sample that cannot be trained on: `file`, the 0-based `sample` index in it, and the `field` at fault. */
export class AnnotationError extends InputError {
  constructor(
    readonly file: string,
    readonly sample: number,
    readonly field: string,
    problem: string,
    options?: { cause?: unknown },
  ) {
    super(`${file}: sample ${sample}${field ? `: ${field}` : ''}`, problem, options);
  }
}

export type Speaker = 'human' | 'gpt' | 'system';

export interface AnnotationTurn {
  from: Speaker;
  value: string;
}

/** One validated sample: paths as written (relative to the data folder). */
export interface AnnotationSample {
  /** Where it came from, for errors: the file and the 0-based index of the sample in it. */
  file: string;
  index: number;
  images?: string[];
  /** How the annotation names image k: `image` when it gave one path as a string, else `image[k]`. */
  imageFields?: string[];
  video?: string;
  conversations: AnnotationTurn[];
}

export type TrainingModal = 'image' | 'video' | 'text';

export type TrainingPart =
  | { type: 'text'; text: string }
  | { type: 'image' }
  | { type: 'video'; num_frames: number; timestamps: number[] };

/** A message as `_convert_normal` builds it: user turns as parts, every other turn as an assistant string. */
export interface TrainingMessage {
  role: 'user' | 'assistant';
  content: string | TrainingPart[];
}

const SPEAKERS: readonly Speaker[] = ['human', 'gpt', 'system'];

/**
 * Python's `str.strip()` with no argument: it strips what `str.isspace` calls whitespace, which differs from
 * JavaScript's `trim` (Python strips U+001C..U+001F and U+0085, and keeps U+FEFF).
 */
export function pythonStrip(text: string): string {
  return text.replace(PYTHON_EDGE_WHITESPACE, '');
}

/** The characters for which Python's `str.isspace()` is true, at either end of a string. */
const PYTHON_EDGE_WHITESPACE = /^[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+|[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$/g;

/** Parses a file's text: a JSON list of samples, or JSON lines (blank lines skipped). */
export function parseAnnotations(text: string, file: string): AnnotationSample[] {
  const body = text.replace(/^\ufeff/, '');
  const raw: unknown[] = [];
  if (body.trimStart().startsWith('[')) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(body);
    } catch (err) {
      throw new AnnotationError(file, 0, '', `not valid JSON: ${(err as Error).message}`, { cause: err });
    }
    if (!Array.isArray(parsed)) throw new AnnotationError(file, 0, '', `expected a list of samples, got ${describeValue(parsed)}`);
    raw.push(...parsed);
  } else {
    const lines = body.split('\n');
    for (const [lineIndex, line] of lines.entries()) {
      if (line.trim() === '') continue;
      try {
        raw.push(JSON.parse(line));
      } catch (err) {
        throw new AnnotationError(file, raw.length, '', `line ${lineIndex + 1} is not valid JSON: ${(err as Error).message}`, { cause: err });
      }
    }
  }
  return raw.map((sample, index) => validateSample(sample, file, index));
}

function validateSample(value: unknown, file: string, index: number): AnnotationSample {
  const fail = (field: string, problem: string): never => {
    throw new AnnotationError(file, index, field, problem);
  };
  if (!isPlainObject(value)) fail('', `expected an object with "conversations", got ${describeValue(value)}`);
  const sample = value as Record<string, unknown>;
  if (sample.stream !== undefined && sample.stream !== null && sample.stream !== false) {
    fail('stream', 'streaming samples are not supported by this pipeline');
  }
  const hasImage = sample.image !== undefined && sample.image !== null;
  const hasVideo = sample.video !== undefined && sample.video !== null;
  if (hasImage && hasVideo) fail('video', 'a sample has either "image" or "video", not both (the official code would ignore the video)');

  const path = (field: string, p: unknown): string => {
    if (typeof p !== 'string' || p.length === 0) fail(field, `expected a file path, got ${describeValue(p)}`);
    return p as string;
  };
  let images: string[] | undefined;
  let imageFields: string[] | undefined;
  if (hasImage) {
    if (Array.isArray(sample.image)) {
      if (sample.image.length === 0) fail('image', 'the list of images is empty');
      imageFields = sample.image.map((_, i) => `image[${i}]`);
      images = sample.image.map((p, i) => path(imageFields![i]!, p));
    } else {
      imageFields = ['image'];
      images = [path('image', sample.image)];
    }
  }
  let video: string | undefined;
  if (hasVideo) {
    if (!Array.isArray(sample.video) || sample.video.length !== 1) {
      fail('video', `expected a list of exactly one video path, got ${describeValue(sample.video)} (the official code raises "Unsupported video format")`);
    }
    video = path('video[0]', (sample.video as unknown[])[0]);
  }

  if (!Array.isArray(sample.conversations)) fail('conversations', `expected a list of turns, got ${describeValue(sample.conversations)}`);
  const conversations = (sample.conversations as unknown[]).map((turn, i): AnnotationTurn => {
    const where = `conversations[${i}]`;
    if (!isPlainObject(turn)) fail(where, `expected {"from", "value"}, got ${describeValue(turn)}`);
    const { from, value: text } = turn as Record<string, unknown>;
    if (typeof from !== 'string' || !(SPEAKERS as readonly string[]).includes(from)) {
      fail(`${where}.from`, `expected "human", "gpt" or "system", got ${typeof from === 'string' ? quoted(from) : describeValue(from)}`);
    }
    if (typeof text !== 'string') fail(`${where}.value`, `expected a string, got ${describeValue(text)}`);
    return { from: from as Speaker, value: text as string };
  });
  return { file, index, images, imageFields, video, conversations };
}

export function sampleModal(sample: AnnotationSample): TrainingModal {
  return sample.images ? 'image' : sample.video !== undefined ? 'video' : 'text';
}

/** The loaded video of a video sample: what its `video` parts carry into the chat template. */
export interface VideoFramesInfo {
  numFrames: number;
  timestamps: readonly number[];
}

/**
 * The turns `_convert_normal` keeps: those from the first human / system turn on, at least two of them, with the
 * modality's tag prepended to the first when no turn contains one. Checked before any media is read, as the
 * official code does.
 */
export function keptTurns(sample: AnnotationSample): AnnotationTurn[] {
  const start = sample.conversations.findIndex((turn) => turn.from === 'human' || turn.from === 'system');
  const turns = start < 0 ? [] : sample.conversations.slice(start).map((turn) => ({ ...turn }));
  if (turns.length < 2) {
    const dropped = start < 0 ? sample.conversations.length : start;
    throw new AnnotationError(
      sample.file,
      sample.index,
      'conversations',
      `needs at least two turns from the first "human" or "system" turn on; ${turns.length} remain after dropping ${dropped} leading turn(s)`,
    );
  }
  const modal = sampleModal(sample);
  const tag = modal === 'image' ? IMAGE_TAG : VIDEO_TAG;
  if (modal !== 'text' && !turns.some((turn) => turn.value.includes(tag))) turns[0]!.value = tag + turns[0]!.value;
  return turns;
}

/**
 * `_convert_normal` on the kept turns: every human turn is split on the tag (`<image>` for image samples, `<video>`
 * otherwise, so `<video>` tags vanish from text-only samples and `<image>` stays literal text in video samples), its
 * text chunks stripped and dropped when empty, each tag becoming an image part or a video part with the frames'
 * count and timestamps; every other turn, `system` included, becomes an assistant message with the turn's text as
 * it is.
 */
export function convertConversation(sample: AnnotationSample, video?: VideoFramesInfo): TrainingMessage[] {
  const modal = sampleModal(sample);
  if (modal === 'video' && !video) throw new Error(`${sample.file}: sample ${sample.index}: the video must be loaded before its messages are built`);
  const turns = keptTurns(sample);
  const tag = modal === 'image' ? IMAGE_TAG : VIDEO_TAG;
  return turns.map((turn): TrainingMessage => {
    if (turn.from !== 'human') return { role: 'assistant', content: turn.value };
    const content: TrainingPart[] = [];
    for (const [i, chunk] of turn.value.split(tag).entries()) {
      if (i > 0) {
        if (modal === 'image') content.push({ type: 'image' });
        else if (modal === 'video') content.push({ type: 'video', num_frames: video!.numFrames, timestamps: [...video!.timestamps] });
      }
      const text = pythonStrip(chunk);
      if (text) content.push({ type: 'text', text });
    }
    return { role: 'user', content };
  });
}

/** Reads and parses an annotation file (see parseAnnotations). */
export async function readAnnotationFile(file: string): Promise<AnnotationSample[]> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new AnnotationError(file, 0, '', `cannot read the file: ${(err as Error).message}`, { cause: err });
  }
  return parseAnnotations(text, file);
}
