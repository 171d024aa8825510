// What answers the samples: a loaded model (the library), or any OpenAI-compatible server (ours, vLLM, llama.cpp),
// both with the protocol of spec 11.1 (greedy, the checkpoint's repetition penalty, fps 1, 180 frames).
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { ChatModel } from '../api/chat-model.js';
import type { ContentPart } from '../processing/conversation.js';
import { EvalServerError } from './errors.js';
import { PROTOCOL, type EvalPart } from './types.js';

export interface Target {
  readonly name: string;
  answer(parts: readonly EvalPart[], signal: AbortSignal): Promise<string>;
}

const isDataUrl = (s: string) => s.startsWith('data:');

/** The library model: one user turn, no system prompt, greedy, the generation config's repetition penalty. */
export function modelTarget(model: ChatModel, name: string, maxNewTokens: number = PROTOCOL.maxNewTokens): Target {
  return {
    name,
    async answer(parts, signal) {
      const content: ContentPart[] = parts.map((p): ContentPart => {
        if (p.type === 'text') return p;
        if (p.type === 'image') return { type: 'image', image: p.path };
        return { type: 'video', video: { video_path: p.path, fps: PROTOCOL.fps, max_frames: PROTOCOL.maxFrames, ...(p.start !== undefined && { start_time: p.start }), ...(p.end !== undefined && { end_time: p.end }) } };
      });
      const result = await model.chat([{ role: 'user', content }], { greedy: true, maxNewTokens, maxVisualTokens: PROTOCOL.maxVisualTokens, signal }).result;
      return result.text;
    },
  };
}

export interface ServerTargetOptions {
  url: string;
  model: string;
  apiKey?: string;
  maxNewTokens?: number;
}

/**
 * An OpenAI-compatible server: media as file:// URLs (the server must be allowed to read --data, `vl3 serve
 * --allowed-local-media-path`) or data: URLs as given; videos with `fps` and `max_frames`, and a clip's
 * `start_time`/`end_time`, as extensions in the `video_url` object; temperature 0 and the server's default
 * repetition penalty (the checkpoint's, for ours and vLLM).
 */
export function serverTarget(o: ServerTargetOptions): Target {
  const endpoint = chatEndpoint(o.url);
  return {
    name: `${o.model} at ${o.url}`,
    async answer(parts, signal) {
      const url = (path: string) => (isDataUrl(path) ? path : pathToFileURL(resolve(path)).href);
      const content = parts.map((p) => {
        if (p.type === 'text') return p;
        if (p.type === 'image') return { type: 'image_url', image_url: { url: url(p.path) } };
        return { type: 'video_url', video_url: { url: url(p.path), fps: PROTOCOL.fps, max_frames: PROTOCOL.maxFrames, ...(p.start !== undefined && { start_time: p.start }), ...(p.end !== undefined && { end_time: p.end }) } };
      });
      const body = { model: o.model, messages: [{ role: 'user', content }], temperature: 0, max_tokens: o.maxNewTokens ?? PROTOCOL.maxNewTokens };
      return (await chatCompletion(endpoint, body, o.apiKey, signal)).trim();
    },
  };
}

/** `<url>/v1/chat/completions`, for a URL given with or without its `/v1`. */
export const chatEndpoint = (url: string): string => `${url.replace(/\/+$/, '').replace(/\/v1$/, '')}/v1/chat/completions`;

/** One chat completion: the first choice's message content, or an EvalServerError naming the endpoint and status. */
export async function chatCompletion(endpoint: string, body: object, apiKey: string | undefined, signal: AbortSignal): Promise<string> {
  let response: Response;
  try {
    response = await fetch(endpoint, { method: 'POST', signal, headers: { 'content-type': 'application/json', ...(apiKey && { authorization: `Bearer ${apiKey}` }) }, body: JSON.stringify(body) });
  } catch (e) {
    if (signal.aborted) throw e;
    throw new EvalServerError(endpoint, undefined, `request failed: ${(e as Error).message}`);
  }
  const text = await response.text();
  let json: { choices?: { message?: { content?: unknown } }[]; error?: { message?: string } } = {};
  try {
    json = JSON.parse(text);
  } catch {
    throw new EvalServerError(endpoint, response.status, `answered ${response.status} with a body that is not JSON: ${text.slice(0, 200)}`);
  }
  if (!response.ok) throw new EvalServerError(endpoint, response.status, `answered ${response.status}: ${json.error?.message ?? text.slice(0, 200)}`);
  const answer = json.choices?.[0]?.message?.content;
  if (typeof answer !== 'string') throw new EvalServerError(endpoint, response.status, 'choices[0].message.content is not a string');
  return answer;
}
