/**
 * The wire format of the OpenAI chat completions API, as far as this server reads and writes it, plus the extension
 * fields shared with the web page: `usage.visual_tokens` and `timings`.
 */

export interface ChatCompletionRequest {
  model?: string;
  messages: RequestMessage[];
  stream?: boolean;
  stream_options?: { include_usage?: boolean } | null;
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  repetition_penalty?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  n?: number | null;
  /** Extensions (vLLM accepts extra fields in the same way). */
  fps?: number;
  max_frames?: number;
  max_visual_tokens?: number;
}

export interface RequestMessage {
  role: 'system' | 'developer' | 'user' | 'assistant';
  content: string | RequestPart[];
  name?: string;
}

export type RequestPart =
  | { type: 'text'; text: string }
  | { type: 'image_url'; image_url: { url: string; detail?: string } }
  | { type: 'video_url'; video_url: { url: string; fps?: number; max_frames?: number; start_time?: number; end_time?: number } };

export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** Prompt tokens read from the prefix cache (a request re-sending an earlier conversation), as OpenAI reports them. */
  prompt_tokens_details: { cached_tokens: number };
  /** Extension: image and video tokens in the prompt (after pruning), included in prompt_tokens. */
  visual_tokens: number;
}

/** Extension: where the time went, from the library's `ChatResult.timings`. */
export interface CompletionTimings {
  prefill_ms: number;
  decode_ms: number;
  total_ms: number;
  prefill_tokens_per_second: number;
  decode_tokens_per_second: number;
}

export type FinishReason = 'stop' | 'length';

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: { index: 0; message: { role: 'assistant'; content: string }; finish_reason: FinishReason; logprobs: null }[];
  usage: CompletionUsage;
  timings: CompletionTimings;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: { index: 0; delta: { role?: 'assistant'; content?: string }; finish_reason: FinishReason | null; logprobs: null }[];
  /** Only on the usage chunk (`stream_options.include_usage`), whose `choices` is empty. */
  usage?: CompletionUsage;
  timings?: CompletionTimings;
}

export interface ModelList {
  object: 'list';
  data: { id: string; object: 'model'; created: number; owned_by: string }[];
}
