/**
 * Validates a chat completions request body and maps it to the library's conversation and options. Messages and
 * parts keep their positions, so the library's error messages (`messages[1].content[0]: ...`) point at the client's
 * own request. Media URLs are collected here and resolved later (media.ts), once the request is known to be valid.
 */
import type { ChatOptions } from '../api/videollama3.js';
import type { ContentPart, Message, Role } from '../processing/conversation.js';
import { badRequest, HttpError } from './errors.js';
import type { MediaKind } from './media.js';

/** A media part waiting for its URL to become a library source. */
export interface MediaRef {
  kind: MediaKind;
  url: string;
  /** Where it is in the request, e.g. `messages[0].content[1]`. */
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
  maxImages: number;
  maxVideos: number;
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

function number(body: Json, field: string, rule: { integer?: boolean; min?: number; max?: number; above?: number }): number | undefined {
  const v = body[field];
  if (v === undefined || v === null) return undefined;
  const ok =
    typeof v === 'number' &&
    Number.isFinite(v) &&
    (!rule.integer || Number.isSafeInteger(v)) &&
    (rule.min === undefined || v >= rule.min) &&
    (rule.max === undefined || v <= rule.max) &&
    (rule.above === undefined || v > rule.above);
  if (!ok) {
    const range = [rule.min !== undefined && `>= ${rule.min}`, rule.above !== undefined && `> ${rule.above}`, rule.max !== undefined && `<= ${rule.max}`].filter(Boolean).join(' and ');
    throw badRequest(`"${field}" must be ${rule.integer ? 'an integer' : 'a number'}${range ? ` ${range}` : ''}, got ${JSON.stringify(v)}`, field, 'invalid_value');
  }
  return v;
}

function stopStrings(value: unknown): string[] | undefined {
  if (value === undefined || value === null) return undefined;
  const list = typeof value === 'string' ? [value] : value;
  if (!Array.isArray(list) || list.length > 16 || !list.every((s) => typeof s === 'string' && s.length > 0)) {
    throw badRequest('"stop" must be a non-empty string or a list of at most 16 non-empty strings', 'stop', 'invalid_value');
  }
  return list.length ? (list as string[]) : undefined;
}

function mediaUrl(part: Json, key: 'image_url' | 'video_url', where: string): { url: string; spec: Json } {
  const value = part[key];
  // A bare string is accepted as well as the documented {url} object.
  const spec = typeof value === 'string' ? { url: value } : value;
  if (!isObject(spec) || typeof spec.url !== 'string' || spec.url.length === 0) {
    throw badRequest(`${where}.${key}: expected {"url": "..."}`, where, 'invalid_value');
  }
  return { url: spec.url, spec };
}

function parsePart(part: unknown, where: string, media: MediaRef[], content: ContentPart[]): void {
  if (typeof part === 'string') return void content.push({ type: 'text', text: part });
  if (!isObject(part)) throw badRequest(`${where}: expected a content part object`, where, 'invalid_value');
  const index = content.length;
  switch (part.type) {
    case 'text':
      if (typeof part.text !== 'string') throw badRequest(`${where}.text: expected a string`, where, 'invalid_value');
      content.push({ type: 'text', text: part.text });
      return;
    case 'image_url': {
      const { url } = mediaUrl(part, 'image_url', where);
      content.push({ type: 'image', image: url });
      media.push({ kind: 'image', url, param: where, assign: (source) => (content[index] = { type: 'image', image: source }) });
      return;
    }
    case 'video_url': {
      const { url, spec } = mediaUrl(part, 'video_url', where);
      // Per-video sampling as an extension; the request-wide `fps` / `max_frames` apply to the others.
      const fps = number(spec, 'fps', { above: 0 });
      const maxFrames = number(spec, 'max_frames', { integer: true, min: 1 });
      const video = (path: string) => ({ video_path: path, ...(fps !== undefined && { fps }), ...(maxFrames !== undefined && { max_frames: maxFrames }) });
      content.push({ type: 'video', video: video(url) });
      media.push({ kind: 'video', url, param: where, assign: (source) => (content[index] = { type: 'video', video: video(source) }) });
      return;
    }
    default:
      throw badRequest(`${where}: content parts of type ${JSON.stringify(part.type)} are not supported (text, image_url, video_url)`, where, 'unsupported_content');
  }
}

function parseMessages(value: unknown, media: MediaRef[]): Message[] {
  if (!Array.isArray(value) || value.length === 0) throw badRequest('"messages" must be a non-empty list', 'messages', 'invalid_value');
  return value.map((m, i): Message => {
    const where = `messages[${i}]`;
    if (!isObject(m)) throw badRequest(`${where}: expected a {role, content} object`, where, 'invalid_value');
    const role: Role | undefined = m.role === 'developer' ? 'system' : m.role === 'system' || m.role === 'user' || m.role === 'assistant' ? m.role : undefined;
    if (!role) throw badRequest(`${where}.role: ${JSON.stringify(m.role)} is not supported (system, developer, user, assistant)`, `${where}.role`, 'invalid_value');
    if (m.tool_calls !== undefined || m.function_call !== undefined) throw unsupported(`${where}.tool_calls`);
    if (typeof m.content === 'string') return { role, content: m.content };
    if (!Array.isArray(m.content)) throw badRequest(`${where}.content: expected a string or a list of parts`, `${where}.content`, 'invalid_value');
    const content: ContentPart[] = [];
    m.content.forEach((part, j) => parsePart(part, `${where}.content[${j}]`, media, content));
    return { role, content };
  });
}

export function parseChatRequest(body: unknown, limits: RequestLimits): ParsedRequest {
  if (!isObject(body)) throw badRequest('the request body must be a JSON object', null, 'invalid_request');
  if (body.model !== undefined && body.model !== null && body.model !== limits.modelId) {
    throw new HttpError(404, `the model ${JSON.stringify(body.model)} does not exist; this server serves "${limits.modelId}"`, 'model', 'model_not_found');
  }
  for (const [field, harmless] of Object.entries(UNSUPPORTED)) {
    if (body[field] !== undefined && body[field] !== null && !harmless(body[field])) throw unsupported(field);
  }
  if (body.stream !== undefined && body.stream !== null && typeof body.stream !== 'boolean') throw badRequest('"stream" must be true or false', 'stream', 'invalid_value');
  const streamOptions = body.stream_options;
  if (streamOptions !== undefined && streamOptions !== null && !isObject(streamOptions)) throw badRequest('"stream_options" must be an object', 'stream_options', 'invalid_value');

  const media: MediaRef[] = [];
  const messages = parseMessages(body.messages, media);
  const count = (kind: MediaKind) => media.filter((m) => m.kind === kind).length;
  for (const [kind, max] of [['image', limits.maxImages], ['video', limits.maxVideos]] as const) {
    if (count(kind) > max) throw badRequest(`the request has ${count(kind)} ${kind}s; this server accepts at most ${max} per request`, 'messages', 'too_many_media_items');
  }

  const maxTokens = number(body, 'max_completion_tokens', { integer: true, min: 1 }) ?? number(body, 'max_tokens', { integer: true, min: 1 });
  const temperature = number(body, 'temperature', { min: 0, max: 2 });
  const topK = number(body, 'top_k', { integer: true, min: -1 });
  const options: ChatOptions = {
    maxNewTokens: maxTokens,
    // Temperature 0 is how OpenAI clients ask for greedy decoding.
    greedy: temperature === undefined ? undefined : temperature === 0,
    temperature: temperature === 0 ? undefined : temperature,
    topP: number(body, 'top_p', { above: 0, max: 1 }),
    // vLLM's "-1 disables top-k"; the library's is 0.
    topK: topK === undefined ? undefined : Math.max(0, topK),
    repetitionPenalty: number(body, 'repetition_penalty', { above: 0 }),
    seed: number(body, 'seed', { integer: true }),
    stop: stopStrings(body.stop),
    fps: number(body, 'fps', { above: 0 }),
    maxFrames: number(body, 'max_frames', { integer: true, min: 1 }),
    maxVisualTokens: number(body, 'max_visual_tokens', { integer: true, min: 1 }),
  };
  return {
    messages,
    media,
    options: Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as ChatOptions,
    stream: body.stream === true,
    includeUsage: body.stream === true && isObject(streamOptions) && streamOptions.include_usage === true,
  };
}
