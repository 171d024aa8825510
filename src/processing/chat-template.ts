/**
 * The checkpoint's own Jinja chat template, rendered as transformers renders it.
 *
 * Whitespace: transformers compiles chat templates with `trim_blocks=True, lstrip_blocks=True` (and Jinja's default
 * `keep_trailing_newline=False`). `@huggingface/jinja`'s `Template` always applies exactly these options: before
 * lexing it drops one trailing newline of the template, strips spaces/tabs from the start of a line up to a `{%` or
 * `{#` tag (lstrip_blocks) and removes the first newline after a `%}` or `#}` tag (trim_blocks). It does this on the
 * template text with regular expressions, which matches Jinja2 for templates that do not contain those tag
 * delimiters inside string literals (the VideoLLaMA3 template does not). `{%+` / `+%}` overrides are not supported.
 *
 * The `round` filter: `@huggingface/jinja` has none, and the template prints frame times with
 * `t | round(1) | string`. Each `x | round(...)` in the parsed template is rewritten into `__round(x, ...) | float`,
 * where `__round` is a function passed in at render time. `| float` keeps the result a float, so `| string` prints
 * it as Python does for a float: always with a decimal point ("12.0", "12.3").
 */
import { Template } from '@huggingface/jinja';
import * as path from 'node:path';
import type { ContentPart, Message } from './conversation.js';
import { isPlainObject, readJsonFile } from './json-file.js';
import { numpyRound, pythonRound } from './rounding.js';

export const IMAGE_TOKEN = '<image>';

/**
 * How `round` treats numbers: `numpy` (default) as `np.round` on float64, which is what the reference sees for the
 * timestamps of its ffmpeg video path; `python` as Python's `round` on a float (the frame-index video path).
 */
export type TimestampRounding = 'numpy' | 'python';

export interface RenderOptions {
  addSystemPrompt: boolean;
  addGenerationPrompt: boolean;
  /** Default `<image>`. */
  imageToken?: string;
  /** Default `numpy`. */
  timestampRounding?: TimestampRounding;
}

/** Name under which the `round` replacement is passed to the template; not a name a template would use. */
const ROUND_FUNCTION = '__vl3_round';

interface AstNode {
  type: string;
  [key: string]: unknown;
}

function isAstNode(value: unknown): value is AstNode {
  return typeof value === 'object' && value !== null && typeof (value as AstNode).type === 'string';
}

function isIdentifier(node: unknown, name: string): boolean {
  return isAstNode(node) && node.type === 'Identifier' && node.value === name;
}

/** Rewrites every `x | round` / `x | round(args)` below `node` into `__vl3_round(x, args) | float`, in place. */
function replaceRoundFilters(node: unknown): void {
  if (Array.isArray(node)) {
    for (const child of node) replaceRoundFilters(child);
    return;
  }
  if (!isAstNode(node)) return;
  for (const child of Object.values(node)) {
    if (typeof child === 'object' && child !== null) replaceRoundFilters(child);
  }
  if (node.type !== 'FilterExpression') return;
  const filter = node.filter;
  let args: unknown[];
  if (isIdentifier(filter, 'round')) args = [];
  else if (isAstNode(filter) && filter.type === 'CallExpression' && isIdentifier(filter.callee, 'round')) args = filter.args as unknown[];
  else return;
  node.operand = { type: 'CallExpression', callee: { type: 'Identifier', value: ROUND_FUNCTION }, args: [node.operand, ...args] };
  node.filter = { type: 'Identifier', value: 'float' };
}

/**
 * Jinja2's `round(value, precision=0, method='common')`. The template engine calls it with plain values, keyword
 * arguments arriving last as a Map of runtime values.
 */
function makeRound(rounding: TimestampRounding): (...args: unknown[]) => number {
  return (...args: unknown[]) => {
    const keywords = new Map<string, unknown>();
    const last = args[args.length - 1];
    if (last instanceof Map) {
      args.pop();
      for (const [key, value] of last as Map<string, { value: unknown }>) keywords.set(key, value.value);
    }
    const [value, precision = keywords.get('precision') ?? 0, method = keywords.get('method') ?? 'common'] = args;
    if (typeof value !== 'number') throw new Error(`round filter: expected a number, got ${JSON.stringify(value)}`);
    if (typeof precision !== 'number' || !Number.isInteger(precision)) throw new Error('round filter: precision must be an integer');
    switch (method) {
      case 'common':
        return rounding === 'numpy' ? numpyRound(value, precision) : pythonRound(value, precision);
      case 'floor':
        return Math.floor(value * 10 ** precision) / 10 ** precision;
      case 'ceil':
        return Math.ceil(value * 10 ** precision) / 10 ** precision;
      default:
        throw new Error(`round filter: method must be "common", "ceil" or "floor", got ${JSON.stringify(method)}`);
    }
  };
}

/** A compiled chat template. */
export class ChatTemplate {
  private readonly compiled: Template;

  /** `origin` names where the text came from, for error messages. */
  constructor(
    readonly source: string,
    readonly origin = 'chat template',
  ) {
    try {
      this.compiled = new Template(source);
    } catch (err) {
      throw new Error(`${origin}: cannot parse the chat template: ${(err as Error).message}`);
    }
    replaceRoundFilters(this.compiled.parsed);
  }

  /**
   * Renders with template variables as transformers passes them (`messages`, `add_generation_prompt`, ...).
   * Values must be JSON-like; a key that is present with value `undefined` still counts for `'key' in obj`.
   */
  renderVariables(variables: Record<string, unknown>, rounding: TimestampRounding = 'numpy'): string {
    try {
      // The library already defines transformers' template globals (raise_exception, namespace, ...).
      return this.compiled.render({ ...variables, [ROUND_FUNCTION]: makeRound(rounding) });
    } catch (err) {
      throw new Error(`${this.origin}: rendering failed: ${(err as Error).message}`);
    }
  }
}

/** The template text as transformers picks it: `chat_template` of tokenizer_config.json wins over chat_template.json. */
export async function loadChatTemplate(folder: string, tokenizerConfig?: unknown): Promise<ChatTemplate> {
  const configFile = path.join(folder, 'tokenizer_config.json');
  const config = tokenizerConfig ?? (await readJsonFile(configFile, { optional: true }));
  const fromConfig = isPlainObject(config) ? templateText(config.chat_template, configFile) : undefined;
  if (fromConfig !== undefined) return new ChatTemplate(fromConfig, `${configFile} (chat_template)`);

  const templateFile = path.join(folder, 'chat_template.json');
  const json = await readJsonFile(templateFile, { optional: true });
  const fromFile = isPlainObject(json) ? templateText(json.chat_template, templateFile) : undefined;
  if (fromFile !== undefined) return new ChatTemplate(fromFile, templateFile);
  throw new Error(`no chat template in ${folder}: neither tokenizer_config.json nor chat_template.json has "chat_template"`);
}

/** A template entry is a string, or (newer transformers) a list of `{name, template}` of which "default" is used. */
function templateText(value: unknown, file: string): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) {
    const entry = value.find((e) => isPlainObject(e) && e.name === 'default');
    if (entry && typeof entry.template === 'string') return entry.template;
    throw new Error(`${file}: chat_template is a list without a "default" template`);
  }
  throw new Error(`${file}: chat_template must be a string`);
}

/** The JSON-like form of a part that the template sees: only the keys that are set. */
function templatePart(part: ContentPart, where: string): Record<string, unknown> {
  if (part.type === 'video' && part.num_frames === undefined) {
    throw new Error(`${where}: the video has not been loaded yet (num_frames is missing), so the prompt cannot be rendered`);
  }
  return Object.fromEntries(Object.entries(part).filter(([, value]) => value !== undefined));
}

/**
 * Renders a conversation as the official processor does: video parts must already carry `num_frames` (and
 * normally `timestamps`), images need nothing. Every image and every video frame becomes one image token.
 */
export function renderChatTemplate(template: ChatTemplate, messages: readonly Message[], options: RenderOptions): string {
  const templateMessages = messages.map((message, i) => ({
    role: message.role,
    content:
      typeof message.content === 'string'
        ? message.content
        : message.content.map((part, j) => templatePart(part, `messages[${i}].content[${j}]`)),
  }));
  return template.renderVariables(
    {
      messages: templateMessages,
      add_system_prompt: options.addSystemPrompt,
      add_generation_prompt: options.addGenerationPrompt,
      image_token: options.imageToken ?? IMAGE_TOKEN,
    },
    options.timestampRounding,
  );
}
