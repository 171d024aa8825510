/**
 * `POST /v1/chat/completions`: a validated request → media resolved → a chat on the model → a `chat.completion`
 * object, or a stream of `chat.completion.chunk` events. Bad media found by the model is reported before any
 * streamed byte is sent (the stream opens with the first delta), so it gets a proper 400 in both modes.
 */
import { randomUUID } from 'node:crypto';
import type { ServerResponse } from 'node:http';

import type { ChatModel } from '../api/chat-model.js';
import type { ChatResult, ChatStream } from '../api/videollama3.js';
import type { Admission } from './admission.js';
import { HttpError, modelErrorToHttp } from './errors.js';
import { RequestMedia } from './media.js';
import type { ChatCompletion, ChatCompletionChunk, CompletionTimings, CompletionUsage, FinishReason } from './openai-types.js';
import type { ResolvedOptions } from './options.js';
import { parseChatRequest } from './request.js';
import { SseWriter } from './sse.js';

export interface CompletionContext {
  options: ResolvedOptions;
  admission: Admission;
  model: ChatModel;
}

function usageOf(r: ChatResult): CompletionUsage {
  const u = r.usage;
  return {
    prompt_tokens: u.promptTokens,
    completion_tokens: u.completionTokens,
    total_tokens: u.promptTokens + u.completionTokens,
    prompt_tokens_details: { cached_tokens: u.cachedTokens },
    visual_tokens: u.visualTokens,
  };
}

function timingsOf(r: ChatResult): CompletionTimings {
  const t = r.timings;
  return {
    prefill_ms: t.prefillMs,
    decode_ms: t.decodeMs,
    total_ms: t.totalMs,
    prefill_tokens_per_second: t.prefillTokensPerSecond,
    decode_tokens_per_second: t.decodeTokensPerSecond,
  };
}

function finishReasonOf(r: ChatResult): FinishReason {
  // 'abort' with the client still connected means the model was closed under the request.
  if (r.finishReason === 'abort') throw new HttpError(503, 'the request was cancelled because the model is shutting down', null, 'aborted');
  return r.finishReason;
}

/**
 * Answers one request. Errors before the response started are thrown (as HttpError) for the caller to send; errors
 * after a stream opened end it with an error event. `log` receives the fields worth a log line.
 */
export async function handleChatCompletion(body: unknown, res: ServerResponse, signal: AbortSignal, ctx: CompletionContext, log: Record<string, unknown>): Promise<void> {
  const o = ctx.options;
  const model = ctx.model.info;
  const request = parseChatRequest(body, {
    modelId: o.modelId,
    model,
    maxImages: o.maxImagesPerRequest,
    maxVideos: o.maxVideosPerRequest,
    maxMessages: o.maxMessages,
    maxContentParts: o.maxContentParts,
    maxImagePixels: Math.min(o.maxImagePixels, model.maxImagePixels),
    maxStopStrings: o.maxStopStrings,
    maxStopLength: o.maxStopLength,
  });
  log.stream = request.stream;
  log.media = request.media.length;
  const release = await ctx.admission.enter(signal);
  if (!release) return; // the client left while waiting
  // A failed download cancels the request's other downloads.
  const mediaAbort = new AbortController();
  const media = new RequestMedia(o, AbortSignal.any([signal, mediaAbort.signal]));
  let stream: ChatStream | undefined;
  let deltas: AsyncIterator<string> | undefined;
  let drained = false;
  try {
    // All downloads settle before the request goes on or fails, so none writes a file after the cleanup.
    const resolved = await Promise.allSettled(
      request.media.map(async (ref) => {
        try {
          ref.assign(await media.resolve(ref.kind, ref.url, ref.param));
        } catch (err) {
          mediaAbort.abort(err);
          throw err;
        }
      }),
    );
    const failed = resolved.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    if (signal.aborted) return;
    stream = ctx.model.chat(request.messages, { ...request.options, textSpecialTokens: o.textSpecialTokens, signal });
    deltas = stream[Symbol.asyncIterator]();
    // The library names a media part by its place in the conversation; the client's name for it ends in its key.
    const paramOf = (path: string) => request.media.find((m) => m.param.startsWith(`${path}.`))?.param ?? path;
    const describe = (err: unknown) => {
      const e = modelErrorToHttp(err, paramOf);
      return new HttpError(e.status, media.describe(e.message), e.param, e.code);
    };
    let next: IteratorResult<string>;
    try {
      next = await deltas.next();
    } catch (err) {
      drained = true;
      if (signal.aborted) return;
      throw describe(err);
    }
    const id = `chatcmpl-${randomUUID().replaceAll('-', '')}`;
    const created = Math.floor(Date.now() / 1000);

    if (!request.stream) {
      let result: ChatResult;
      try {
        while (!next.done) next = await deltas.next();
        drained = true;
        result = await stream.result;
      } catch (err) {
        drained = true;
        if (signal.aborted) return;
        throw describe(err);
      }
      if (signal.aborted) return;
      const completion: ChatCompletion = {
        id,
        object: 'chat.completion',
        created,
        model: o.modelId,
        choices: [{ index: 0, message: { role: 'assistant', content: result.text }, finish_reason: finishReasonOf(result), logprobs: null }],
        usage: usageOf(result),
        timings: timingsOf(result),
      };
      Object.assign(log, completion.usage);
      const text = JSON.stringify(completion);
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
      return;
    }

    const sse = new SseWriter(res);
    const chunk = (delta: ChatCompletionChunk['choices'][0]['delta'], finish: FinishReason | null): ChatCompletionChunk => ({
      id,
      object: 'chat.completion.chunk',
      created,
      model: o.modelId,
      choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }],
    });
    sse.open();
    log.status = 200;
    sse.send(chunk({ role: 'assistant', content: '' }, null));
    try {
      while (!next.done) {
        if (next.value) sse.send(chunk({ content: next.value }, null));
        next = await deltas.next();
      }
      drained = true;
      const result = await stream.result;
      if (signal.aborted) return;
      sse.send(chunk({}, finishReasonOf(result)));
      if (request.includeUsage) {
        const usage: ChatCompletionChunk = { ...chunk({}, null), choices: [], usage: usageOf(result), timings: timingsOf(result) };
        sse.send(usage);
      }
      Object.assign(log, usageOf(result));
      sse.done();
    } catch (err) {
      drained = true;
      if (signal.aborted) return;
      const e = err instanceof HttpError ? err : describe(err);
      log.error = e.message;
      sse.fail(e.toJSON());
    }
  } finally {
    // Leaving the loop early (the client left) closes the stream, which cancels the chat and frees its memory.
    if (deltas && !drained) await deltas.return?.().catch(() => {});
    // The model may still read a temporary file until its chat has settled (e.g. after an abort).
    await stream?.result.catch(() => {});
    await media.dispose();
    release();
  }
}
