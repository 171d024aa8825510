/**
 * The Qwen2 byte-level BPE tokenizer of a VideoLLaMA3 checkpoint, with the semantics of the reference (the slow
 * `Qwen2Tokenizer` of transformers 4.46): no BOS/EOS added, no clean-up of tokenisation spaces, and
 * `skip_special_tokens` dropping exactly `all_special_ids` — the ids of bos/eos/unk/sep/pad/cls/mask and of
 * `additional_special_tokens`. Added tokens that are merely flagged special in tokenizer.json (`<image>`,
 * `<|stream_start|>`, `<|stream_end|>`) are kept, as the reference keeps them.
 *
 * Encoding and batch decoding use `@huggingface/tokenizers` (ids verified identical to the reference); special
 * tokens are filtered here before decoding because that library would drop every added token flagged special.
 * `encodePrompt` gives the same ids as `encode` for a server: bounded, cancellable, off the caller's thread when
 * long, and with a way to keep user text from becoming control tokens (`escapeSpecialTokens`).
 */
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import * as path from 'node:path';
import { loadChatTemplate, type ChatTemplate } from './chat-template.js';
import { isPlainObject, readJsonFile } from './json-file.js';
import { PromptEncoder, type PromptLimits } from './prompt-encoder.js';
import { ByteLevelStreamDecoder, type StreamDecoder } from './stream-decoder.js';
import { TokenizerThread, type TokenizerWorkerData } from './tokenizer-thread.js';

export type { StreamDecoder } from './stream-decoder.js';
export { ESCAPE as SPECIAL_TOKEN_ESCAPE, PromptTooLongError } from './prompt-encoder.js';

export interface EncodePromptOptions extends PromptLimits {
  /** Aborting rejects with the signal's reason and stops the work. */
  signal?: AbortSignal;
}

/**
 * Prompts with at most this many UTF-16 units outside added tokens are encoded on the caller's thread. Worst case
 * (one long pre-token, e.g. a run of one letter) BPE costs about 6 us per unit, so this holds the thread at most
 * about 25 ms; ordinary text of this size takes about 2 ms.
 */
const INLINE_PLAIN_LENGTH = 4096;
/** Longer prompts go to the worker whatever they hold: even a run of added tokens costs about 1 us per token. */
const INLINE_LENGTH = 1 << 20;

export interface DecodeOptions {
  /** Drop the special ids (`specialIds`), as `skip_special_tokens=True`. Default false. */
  skipSpecialTokens?: boolean;
}

/** transformers' SPECIAL_TOKENS_ATTRIBUTES, minus the list-valued `additional_special_tokens`. */
const SPECIAL_TOKEN_KEYS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'] as const;

/** A special token in a config is a string, an AddedToken dict `{content, ...}`, or null. */
function tokenContent(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (isPlainObject(value) && typeof value.content === 'string') return value.content;
  return undefined;
}

/**
 * The special tokens as transformers resolves them on load: tokenizer_config.json, overridden key by key by
 * special_tokens_map.json, whose `additional_special_tokens` are appended to the config's.
 */
function resolveSpecialTokens(config: Record<string, unknown>, map: Record<string, unknown> | undefined) {
  const single = new Map<string, string | undefined>();
  for (const key of SPECIAL_TOKEN_KEYS) {
    const value = map !== undefined && key in map ? map[key] : config[key];
    single.set(key, tokenContent(value));
  }
  const additional: string[] = [];
  for (const list of [config.additional_special_tokens, map?.additional_special_tokens]) {
    if (!Array.isArray(list)) continue;
    for (const entry of list) {
      const content = tokenContent(entry);
      if (content !== undefined && !additional.includes(content)) additional.push(content);
    }
  }
  return { single, additional };
}

export class Tokenizer {
  /** `<|im_end|>`: the tokenizer's eos_token. */
  readonly eosTokenId: number;
  /** `<|endoftext|>` for VideoLLaMA3; undefined when the checkpoint sets no pad_token. */
  readonly padTokenId: number | undefined;
  /** `<image>`, the placeholder of every image and video-frame token. */
  readonly imageTokenId: number;
  /** transformers' `all_special_ids`: what `skipSpecialTokens` removes. */
  readonly specialIds: ReadonlySet<number>;
  /** `len(tokenizer)`: base vocabulary plus added tokens (151668), below the model's vocab_size (151936). */
  readonly vocabSize: number;
  /**
   * UTF-8 length of the longest token's text (128 for Qwen2): tokenised text of more bytes than
   * `maxTokens * maxTokenBytes` cannot fit in maxTokens tokens. The bytes are those of the text after NFC
   * normalisation, which can shrink text (decomposed Hangul to a third), and without escapes.
   */
  readonly maxTokenBytes: number;

  /** Content of every added token, by id (`<|im_start|>`, `<image>`, ...): decoded verbatim, not as bytes. */
  private readonly addedTokens: ReadonlyMap<number, string>;
  private thread: TokenizerThread | undefined;
  private closed = false;

  private constructor(
    private readonly hf: HfTokenizer,
    readonly chatTemplate: ChatTemplate,
    specialTokens: ReturnType<typeof resolveSpecialTokens>,
    configFile: string,
    private readonly prompts: PromptEncoder,
    private readonly workerData: Omit<TokenizerWorkerData, 'expected'>,
  ) {
    this.maxTokenBytes = prompts.maxTokenBytes;
    this.addedTokens = new Map([...hf.get_added_tokens_decoder()].map(([id, token]) => [id, token.content]));
    this.vocabSize = prompts.vocabularySize;

    const idOf = (token: string, role: string): number => {
      const id = hf.token_to_id(token);
      if (id === undefined) throw new Error(`${configFile}: ${role} ${JSON.stringify(token)} is not in the vocabulary`);
      return id;
    };
    const special = new Set<number>();
    for (const [key, token] of specialTokens.single) if (token !== undefined) special.add(idOf(token, key));
    for (const token of specialTokens.additional) special.add(idOf(token, 'additional special token'));
    this.specialIds = special;

    const eos = specialTokens.single.get('eos_token');
    if (eos === undefined) throw new Error(`${configFile}: no eos_token`);
    this.eosTokenId = idOf(eos, 'eos_token');
    const pad = specialTokens.single.get('pad_token');
    this.padTokenId = pad === undefined ? undefined : idOf(pad, 'pad_token');
    this.imageTokenId = idOf('<image>', 'the image token');
  }

  /**
   * Loads tokenizer.json, tokenizer_config.json, special_tokens_map.json (optional) and the chat template
   * (tokenizer_config.json's, else chat_template.json's) from a checkpoint folder.
   */
  static async load(folder: string): Promise<Tokenizer> {
    const tokenizerFile = path.join(folder, 'tokenizer.json');
    const configFile = path.join(folder, 'tokenizer_config.json');
    const mapFile = path.join(folder, 'special_tokens_map.json');
    // One after the other, so that an incomplete folder always reports the same (first) missing file.
    const tokenizerJson = await readJsonFile(tokenizerFile);
    const config = await readJsonFile(configFile);
    const map = await readJsonFile(mapFile, { optional: true });
    if (!isPlainObject(tokenizerJson) || !isPlainObject(tokenizerJson.model)) {
      throw new Error(`${tokenizerFile}: not a tokenizers JSON file (no "model")`);
    }
    if (!isPlainObject(tokenizerJson.decoder) || tokenizerJson.decoder.type !== 'ByteLevel') {
      throw new Error(`${tokenizerFile}: expected a byte-level BPE tokenizer (decoder type "ByteLevel")`);
    }
    if (!isPlainObject(config)) throw new Error(`${configFile}: expected a JSON object`);
    if (map !== undefined && !isPlainObject(map)) throw new Error(`${mapFile}: expected a JSON object`);

    let hf: HfTokenizer;
    let prompts: PromptEncoder;
    try {
      hf = new HfTokenizer(tokenizerJson, config);
      prompts = PromptEncoder.fromJson(tokenizerJson, config, hf);
    } catch (err) {
      throw new Error(`${tokenizerFile}: cannot build the tokenizer: ${(err as Error).message}`);
    }
    const chatTemplate = await loadChatTemplate(folder, config);
    return new Tokenizer(hf, chatTemplate, resolveSpecialTokens(config, map), configFile, prompts, { tokenizerFile, config });
  }

  /** Token ids of `text`; added tokens written in the text (`<image>`, `<|im_start|>`) become their single ids. */
  encode(text: string): number[] {
    if (text.length === 0) return [];
    return this.hf.encode(text, { add_special_tokens: false }).ids;
  }

  /**
   * `text` with every added-token string (`<|im_start|>`, `<image>`, ...) replaced by an escape that `encodePrompt`
   * tokenises as the same characters in plain text. For user text: escape each piece, render the chat template, then
   * call encodePrompt. Text with no added-token string and no `SPECIAL_TOKEN_ESCAPE` is returned unchanged.
   */
  escapeSpecialTokens(text: string): string {
    return this.prompts.escape(text);
  }

  /**
   * The ids of `encode(text)` (identical for text without escapes), with escaped added-token strings tokenised as
   * plain text. Rejects with PromptTooLongError as soon as more than `maxTokens` ids other than `countExcept` are
   * produced, without tokenising the rest; with the signal's reason when `signal` aborts. Short prompts are encoded
   * at once on this thread, longer ones on the tokenizer's worker thread.
   */
  async encodePrompt(text: string, options: EncodePromptOptions = {}): Promise<number[]> {
    const { signal, maxTokens, countExcept } = options;
    if (maxTokens !== undefined && !(Number.isInteger(maxTokens) && maxTokens >= 0)) {
      throw new RangeError(`invalid maxTokens ${maxTokens}: must be an integer >= 0`);
    }
    if (countExcept !== undefined && !Number.isInteger(countExcept)) throw new RangeError(`invalid countExcept ${countExcept}`);
    signal?.throwIfAborted();
    if (this.closed) throw new Error('the tokenizer is closed');
    this.prompts.checkSupported();
    const limits = { maxTokens, countExcept };
    if (text.length <= INLINE_LENGTH && !this.prompts.plainLengthExceeds(text, INLINE_PLAIN_LENGTH)) {
      return this.prompts.encode(text, limits);
    }
    this.thread ??= new TokenizerThread({ ...this.workerData, expected: this.prompts.summary });
    return this.thread.encode(text, limits, signal);
  }

  /** Stops the worker thread, failing prompts still being encoded; later `encodePrompt` calls reject. Idempotent. */
  close(): void {
    this.closed = true;
    this.thread?.close();
  }

  /**
   * Text of `ids`. Ids at or above `vocabSize` (padding rows of the embedding) have no token and print nothing, as
   * in the Rust tokenizers; negative or fractional ids are an error.
   */
  decode(ids: ArrayLike<number>, options: DecodeOptions = {}): string {
    const kept: number[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = this.checkedId(ids[i]);
      if (id >= this.vocabSize) continue;
      if (options.skipSpecialTokens && this.specialIds.has(id)) continue;
      kept.push(id);
    }
    if (kept.length === 0) return ''; // the library refuses an empty list
    return this.hf.decode(kept, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }

  /** The id of a vocabulary entry or added token (e.g. `<|im_end|>`); throws for an unknown token. */
  tokenId(token: string): number {
    const id = this.hf.token_to_id(token);
    if (id === undefined) throw new Error(`unknown token ${JSON.stringify(token)}`);
    return id;
  }

  /** The vocabulary entry of an id (byte-level form, e.g. "Ġthe"), or undefined. */
  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  /**
   * A decoder for ids arriving one at a time. The concatenated output of `push` calls and `flush` equals `decode`
   * of all ids with the same options, and no piece ever ends inside a split UTF-8 character.
   */
  createStreamDecoder(options: DecodeOptions = {}): StreamDecoder {
    const decoder = new ByteLevelStreamDecoder(
      {
        addedTokenContent: (id) => this.addedTokens.get(id),
        byteLevelToken: (id) => (id < this.vocabSize ? this.hf.id_to_token(id) : undefined),
        isSkippedSpecial: (id) => this.specialIds.has(id),
      },
      options.skipSpecialTokens ?? false,
    );
    return {
      push: (id: number) => decoder.push(this.checkedId(id)),
      flush: () => decoder.flush(),
    };
  }

  private checkedId(id: number): number {
    if (!Number.isInteger(id) || id < 0) throw new RangeError(`invalid token id ${id}`);
    return id;
  }
}
