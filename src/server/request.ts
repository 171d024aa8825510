/**
 * Validates a chat completions request body and maps it to the library's conversation and options. Messages and
 * parts keep their positions, so the library's error paths (`messages[1].content[0]`) point at the client's own
 * request. Media URLs are collected here and resolved later (media.ts), once the request is known to be valid.
 *
 * Every number a client sends is bounded here, before the request waits for a slot: the budgets the operator set
 * (visual tokens, frames, fps, image pixels) may be lowered by a request, never raised, and the rest are held to
 * what the model can use. Values are described by type and size in errors, never echoed whole.
 */
import type { ModelInfo } from '../api/videollama3.js';
import type { ChatOptions } from '../api/videollama3.js';
import { ruleText, satisfies, type NumberRule } from '../api/options.js';
import type { ContentPart, Message, Role } from '../processing/conversation.js';
import { describeValue, quoted } from '../processing/describe.js';
import { badRequest, HttpError } from './errors.js';
import type { MediaKind } from './media.js';

/** A media part waiting for its URL to become a library source. */
export interface MediaRef {
  kind: MediaKind;
  url: string;
  /** Where it is in the request, e.g. `messages[0].content[1].image_url`. */
  param: string;
  /** Puts the resolved source into the conversation. */
  assign(source: string): void;
}

export interface ParsedRequest {
  messages: Message[];
  media: MediaRef[];
  options: ChatOptions;
  stream: boolean;
  includeUsage: boolean;
}

export interface RequestLimits {
  modelId: string;
  /** The loaded model: its context, vocabulary and the operator's budgets. */
  model: ModelInfo;
  maxImages: number;
  maxVideos: number;
  maxMessages: number;
  maxContentParts: number;
  maxImagePixels: number;
  maxStopStrings: number;
  maxStopLength: number;
}

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Fields of the OpenAI API this server cannot honour, with the values that are harmless (the defaults). */
const UNSUPPORTED: Record<string, (value: unknown) => boolean> = {
  n: (v) => v === 1,
  best_of: (v) => v === 1,
  tools: (v) => Array.isArray(v) && v.length === 0,
  tool_choice: (v) => v === 'none',
  functions: (v) => Array.isArray(v) && v.length === 0,
  function_call: (v) => v === 'none',
  logprobs: (v) => v === false,
  top_logprobs: (v) => v === 0,
  logit_bias: (v) => isObject(v) && Object.keys(v).length === 0,
  response_format: (v) => isObject(v) && v.type === 'text',
  presence_penalty: (v) => v === 0,
  frequency_penalty: (v) => v === 0,
  audio: () => false,
  modalities: (v) => Array.isArray(v) && v.every((m) => m === 'text'),
  prediction: () => false,
  use_beam_search: (v) => v === false,
  echo: (v) => v === false,
};

function unsupported(field: string): HttpError {
  return badRequest(`the field "${field}" is not supported by this server (only its default is accepted)`, field, 'unsupported_parameter');
}

/** An optional number field; `param` is its full path in the request. */
function number(body: Json, field: string, rule: NumberRule, param = field, why = ''): number | undefined {
  const v = body[field];
  if (v === undefined || v === null) return undefined;
  if (!satisfies(v, rule)) throw badRequest(`"${param}" must be ${ruleText(rule)}${why}, got ${describeValue(v)}`, param, 'invalid_value');
  return v;
}

/** The operator's budget as the upper bound of a field, and the reason it gives. */
const atMost = (max: number, flag: string) => ({ max, why: ` (this server's limit, ${flag}; a request may lower it, not raise it)` });

class RequestParser {
  private readonly media: MediaRef[] = [];
  private parts = 0;
  private textBytes = 0;

  constructor(private readonly limits: RequestLimits) {}

  parse(body: unknown): ParsedRequest {
    if (!isObject(body)) throw badRequest(`the request body must be a JSON object, got ${describeValue(body)}`, null, 'invalid_request');
    const l = this.limits;
    if (body.model !== undefined && body.model !== null) {
      if (typeof body.model !== 'string') throw badRequest(`"model" must be a string, got ${describeValue(body.model)}`, 'model', 'invalid_value');
      if (body.model !== l.modelId) throw new HttpError(404, `the model ${quoted(body.model)} does not exist; this server serves "${l.modelId}"`, 'model', 'model_not_found');
    }
    for (const [field, harmless] of Object.entries(UNSUPPORTED)) {
      if (body[field] !== undefined && body[field] !== null && !harmless(body[field])) throw unsupported(field);
    }
    if (body.stream !== undefined && body.stream !== null && typeof body.stream !== 'boolean') throw badRequest(`"stream" must be true or false, got ${describeValue(body.stream)}`, 'stream', 'invalid_value');
    const streamOptions = body.stream_options;
    if (streamOptions !== undefined && streamOptions !== null && !isObject(streamOptions)) throw badRequest(`"stream_options" must be an object, got ${describeValue(streamOptions)}`, 'stream_options', 'invalid_value');
    const includeUsage = isObject(streamOptions) ? streamOptions.include_usage : undefined;
    if (includeUsage !== undefined && includeUsage !== null && typeof includeUsage !== 'boolean') {
      throw badRequest(`"stream_options.include_usage" must be true or false, got ${describeValue(includeUsage)}`, 'stream_options.include_usage', 'invalid_value');
    }

    const messages = this.messages(body.messages);
    const count = (kind: MediaKind) => this.media.filter((m) => m.kind === kind).length;
    for (const [kind, max] of [['image', l.maxImages], ['video', l.maxVideos]] as const) {
      if (count(kind) > max) throw badRequest(`the request has ${count(kind)} ${kind}s; this server accepts at most ${max} per request`, 'messages', 'too_many_media_items');
    }
    // A text of more bytes than the context times the longest token cannot fit: refused before any tokenising.
    const maxTextBytes = l.model.contextLength * l.model.maxTokenBytes;
    if (this.textBytes > maxTextBytes) {
      throw badRequest(
        `the messages hold ${this.textBytes} bytes of text, more than can fit in the model's context of ${l.model.contextLength} tokens (at most ${maxTextBytes} bytes)`,
        'messages',
        'context_length_exceeded',
      );
    }

    const m = l.model;
    // Both names are checked, though the newer one wins: a bad value in either is the client's mistake to hear of.
    const tokensRule = { integer: true, min: 1, max: m.contextLength };
    const maxCompletionTokens = number(body, 'max_completion_tokens', tokensRule);
    const legacyMaxTokens = number(body, 'max_tokens', tokensRule);
    const maxTokens = maxCompletionTokens ?? legacyMaxTokens;
    const temperature = number(body, 'temperature', { min: 0, max: 2 });
    const topK = number(body, 'top_k', { integer: true, min: -1, max: m.vocabSize });
    const budget = (field: string, rule: NumberRule, max: number, flag: string) => {
      const { why } = atMost(max, flag);
      return number(body, field, { ...rule, max }, field, why);
    };
    const options: ChatOptions = {
      maxNewTokens: maxTokens,
      // Temperature 0 is how OpenAI clients ask for greedy decoding.
      greedy: temperature === undefined ? undefined : temperature === 0,
      temperature: temperature === 0 ? undefined : temperature,
      topP: number(body, 'top_p', { above: 0, max: 1 }),
      // vLLM's "-1 disables top-k"; the library's is 0.
      topK: topK === undefined ? undefined : Math.max(0, topK),
      repetitionPenalty: number(body, 'repetition_penalty', { above: 0, max: 10 }),
      seed: number(body, 'seed', { integer: true }),
      stop: this.stopStrings(body.stop),
      fps: budget('fps', { above: 0 }, m.fps, '--fps'),
      maxFrames: budget('max_frames', { integer: true, min: 1 }, m.maxFrames, '--max-frames'),
      maxVisualTokens: budget('max_visual_tokens', { integer: true, min: m.minVisualTokens }, m.maxVisualTokens, '--max-visual-tokens'),
      maxImagePixels: l.maxImagePixels,
    };
    return {
      messages,
      media: this.media,
      options: Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as ChatOptions,
      stream: body.stream === true,
      includeUsage: body.stream === true && includeUsage === true,
    };
  }

  private stopStrings(value: unknown): string[] | undefined {
    if (value === undefined || value === null) return undefined;
    const { maxStopStrings: count, maxStopLength: length } = this.limits;
    const list = typeof value === 'string' ? [value] : value;
    if (!Array.isArray(list)) throw badRequest(`"stop" must be a string or a list of strings, got ${describeValue(value)}`, 'stop', 'invalid_value');
    if (list.length > count) throw badRequest(`"stop" has ${list.length} strings; at most ${count} are accepted`, 'stop', 'invalid_value');
    list.forEach((s, i) => {
      if (typeof s !== 'string' || s.length === 0 || s.length > length) {
        throw badRequest(`"stop[${i}]" must be a string of 1 to ${length} characters, got ${describeValue(s)}`, `stop[${i}]`, 'invalid_value');
      }
    });
    return list.length ? (list as string[]) : undefined;
  }

  private text(text: string): void {
    this.textBytes += Buffer.byteLength(text);
  }

  private messages(value: unknown): Message[] {
    const max = this.limits.maxMessages;
    if (!Array.isArray(value) || value.length === 0) throw badRequest(`"messages" must be a non-empty list, got ${describeValue(value)}`, 'messages', 'invalid_value');
    if (value.length > max) throw badRequest(`"messages" has ${value.length} messages; this server accepts at most ${max}`, 'messages', 'too_many_messages');
    return value.map((m, i): Message => {
      const where = `messages[${i}]`;
      if (!isObject(m)) throw badRequest(`${where}: expected a {role, content} object, got ${describeValue(m)}`, where, 'invalid_value');
      const role: Role | undefined = m.role === 'developer' ? 'system' : m.role === 'system' || m.role === 'user' || m.role === 'assistant' ? m.role : undefined;
      if (!role) {
        const got = typeof m.role === 'string' ? quoted(m.role) : describeValue(m.role);
        throw badRequest(`${where}.role: ${got} is not supported (system, developer, user, assistant)`, `${where}.role`, 'invalid_value');
      }
      for (const field of ['tool_calls', 'function_call']) if (m[field] !== undefined) throw unsupported(`${where}.${field}`);
      if (typeof m.content === 'string') {
        this.text(m.content);
        return { role, content: m.content };
      }
      if (!Array.isArray(m.content)) throw badRequest(`${where}.content: expected a string or a list of parts, got ${describeValue(m.content)}`, `${where}.content`, 'invalid_value');
      const content: ContentPart[] = [];
      m.content.forEach((part, j) => this.part(part, `${where}.content[${j}]`, content));
      return { role, content };
    });
  }

  private part(part: unknown, where: string, content: ContentPart[]): void {
    const max = this.limits.maxContentParts;
    if (++this.parts > max) throw badRequest(`the messages have more than ${max} content parts; this server accepts at most ${max}`, where, 'too_many_content_parts');
    if (typeof part === 'string') {
      this.text(part);
      return void content.push({ type: 'text', text: part });
    }
    if (!isObject(part)) throw badRequest(`${where}: expected a content part object, got ${describeValue(part)}`, where, 'invalid_value');
    const index = content.length;
    switch (part.type) {
      case 'text':
        if (typeof part.text !== 'string') throw badRequest(`${where}.text: expected a string, got ${describeValue(part.text)}`, `${where}.text`, 'invalid_value');
        this.text(part.text);
        content.push({ type: 'text', text: part.text });
        return;
      case 'image_url': {
        const { url, param } = mediaUrl(part, 'image_url', where);
        content.push({ type: 'image', image: url });
        this.media.push({ kind: 'image', url, param, assign: (source) => (content[index] = { type: 'image', image: source }) });
        return;
      }
      case 'video_url': {
        const { url, spec, param } = mediaUrl(part, 'video_url', where);
        // Per-video sampling as an extension, within the server's budgets; the request-wide fields apply to the others.
        const m = this.limits.model;
        const fps = number(spec, 'fps', { above: 0, max: m.fps }, `${param}.fps`, atMost(m.fps, '--fps').why);
        const maxFrames = number(spec, 'max_frames', { integer: true, min: 1, max: m.maxFrames }, `${param}.max_frames`, atMost(m.maxFrames, '--max-frames').why);
        // A clip of the video (seconds), as the official conversation format's start_time / end_time.
        const startTime = number(spec, 'start_time', { min: 0 }, `${param}.start_time`);
        const endTime = number(spec, 'end_time', { min: 0 }, `${param}.end_time`);
        const video = (path: string) => ({
          video_path: path,
          ...(fps !== undefined && { fps }),
          ...(maxFrames !== undefined && { max_frames: maxFrames }),
          ...(startTime !== undefined && { start_time: startTime }),
          ...(endTime !== undefined && { end_time: endTime }),
        });
        content.push({ type: 'video', video: video(url) });
        this.media.push({ kind: 'video', url, param, assign: (source) => (content[index] = { type: 'video', video: video(source) }) });
        return;
      }
      default: {
        const type = typeof part.type === 'string' ? quoted(part.type) : describeValue(part.type);
        throw badRequest(`${where}: content parts of type ${type} are not supported (text, image_url, video_url)`, `${where}.type`, 'unsupported_content');
      }
    }
  }
}

function mediaUrl(part: Json, key: 'image_url' | 'video_url', where: string): { url: string; spec: Json; param: string } {
  const value = part[key];
  const param = `${where}.${key}`;
  // A bare string is accepted as well as the documented {url} object.
  const spec = typeof value === 'string' ? { url: value } : value;
  if (!isObject(spec)) throw badRequest(`${param}: expected {"url": "..."}, got ${describeValue(value)}`, param, 'invalid_value');
  if (typeof spec.url !== 'string' || spec.url.length === 0) {
    const field = typeof value === 'string' ? param : `${param}.url`;
    throw badRequest(`${field}: expected a non-empty URL string, got ${describeValue(spec.url)}`, param, 'invalid_value');
  }
  return { url: spec.url, spec, param };
}

export function parseChatRequest(body: unknown, limits: RequestLimits): ParsedRequest {
  return new RequestParser(limits).parse(body);
}
