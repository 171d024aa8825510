import type { ChatInput, VideoLLaMA3 } from '../api/videollama3.js';
import { generateTokens } from '../engine/generate.js';
import { writeSafetensors, type F64Array } from '../model/safetensors.js';
import { Tensor } from '../tensor/tensor.js';

export interface InspectOptions {
  out: string;
  /** Tokens to decode greedily (0: none). */
  greedy: number;
  /** Overrides the generation config's repetition penalty for the greedy decode. */
  repetitionPenalty?: number;
  /** Relative media paths in the conversation are resolved against this folder. */
  baseDir?: string;
  /** Override the checkpoint's `use_token_compression` (DiffFP). */
  tokenCompression?: boolean;
}

export interface InspectSummary {
  out: string;
  promptTokens: number;
  visualTokens: number;
  greedyIds: number[];
}

function int64(values: readonly number[], shape: readonly number[]): Tensor<'i64'> {
  return new Tensor('i64', shape, BigInt64Array.from(values, BigInt));
}

/**
 * Runs one conversation the way the official `generate` does (prompt embeddings in, greedy with the checkpoint's
 * repetition penalty over generated tokens only) and writes the tensors to compare with it.
 */
export async function inspectConversation(model: VideoLLaMA3, conversation: unknown, options: InspectOptions): Promise<InspectSummary> {
  const request = await model.prepare(conversation as ChatInput, { baseDir: options.baseDir, tokenCompression: options.tokenCompression });
  const { inputIds, visuals } = request;
  const features = model.encodeVisuals(request);
  let lastLogits: Tensor | undefined;
  const tokens = generateTokens(model.llm, {
    promptEmbeds: model.embed(request, features),
    maxNewTokens: options.greedy,
    sampling: { ...model.samplingFor({ greedy: true }), repetitionPenalty: options.repetitionPenalty ?? model.generationConfig.repetitionPenalty },
    stopTokenIds: model.generationConfig.eosTokenIds,
    // Copied: the logits tensor is reused for every later step.
    onPromptLogits: (logits) => (lastLogits = Tensor.f32([logits.numel], model.llm.backend.download(logits).data as Float32Array)),
  });
  const greedyIds: number[] = [];
  for await (const id of tokens) greedyIds.push(id);

  const tensors: Record<string, Tensor> = {
    input_ids: int64(inputIds, [1, inputIds.length]),
    last_logits: lastLogits!,
  };
  if (options.greedy > 0) tensors.greedy_ids = int64(greedyIds, [greedyIds.length]);
  tensors.llm_input_ids = int64(request.llmInputIds, [request.llmInputIds.length]);
  if (visuals && features) {
    tensors.grid_sizes = int64(visuals.gridSizes.flat(), [visuals.gridSizes.length, 3]);
    tensors.merge_sizes = int64(visuals.mergeSizes, [visuals.mergeSizes.length]);
    tensors.vision_features = model.llm.backend.download(features);
    tensors.compression_mask = new Tensor('u8', [request.keepMask!.length], request.keepMask!);
  }
  const timestamps: Record<string, F64Array> = {};
  request.videoTimestamps.forEach((t, i) => (timestamps[`timestamps_${i}`] = { dtype: 'f64', shape: [t.length], data: t }));
  writeSafetensors(options.out, { ...tensors, ...timestamps }, { producer: 'videollama3 vl3 inspect' });
  return { out: options.out, promptTokens: inputIds.length, visualTokens: request.visualTokens, greedyIds };
}
