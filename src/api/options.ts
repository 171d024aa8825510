/**
 * Checks of the numbers a caller gives `load` and `chat`, each failing with the option's own name. A bad budget
 * found only when a request runs would blame the request ("targetSizes: maxTokens...", "Array buffer allocation
 * failed"), so every option is checked where it is given.
 */
import { describeValue } from '../processing/describe.js';

export interface NumberRule {
  integer?: boolean;
  min?: number;
  /** Exclusive lower bound. */
  above?: number;
  max?: number;
}

/** The rule in words: "an integer >= 1 and <= 32768". */
export function ruleText(rule: NumberRule): string {
  const bounds = [rule.min !== undefined && `>= ${rule.min}`, rule.above !== undefined && `> ${rule.above}`, rule.max !== undefined && `<= ${rule.max}`];
  return [`${rule.integer ? 'an integer' : 'a number'}`, bounds.filter(Boolean).join(' and ')].filter(Boolean).join(' ');
}

export function satisfies(value: unknown, rule: NumberRule): value is number {
  return (
    typeof value === 'number' &&
    Number.isFinite(value) &&
    (!rule.integer || Number.isSafeInteger(value)) &&
    (rule.min === undefined || value >= rule.min) &&
    (rule.above === undefined || value > rule.above) &&
    (rule.max === undefined || value <= rule.max)
  );
}

/**
 * Checks the options that are set (undefined means "the default"); `fail` builds the error for the first bad one
 * from the option's name and a message that names it.
 */
export function checkNumbers<T extends object>(options: T, rules: Partial<Record<keyof T & string, NumberRule>>, fail: (option: string, message: string) => Error): void {
  for (const [name, rule] of Object.entries(rules) as [keyof T & string, NumberRule][]) {
    const value = (options as Record<string, unknown>)[name];
    if (value !== undefined && !satisfies(value, rule)) throw fail(name, `${name} must be ${ruleText(rule)}, got ${describeValue(value)}`);
  }
}

const INTEGER_FROM_1: NumberRule = { integer: true, min: 1 };

/** What `load` accepts; budgets are checked against the checkpoint once it is open (see `checkBudgets`). */
export const LOAD_RULES = {
  threads: INTEGER_FROM_1,
  maxVisualTokens: INTEGER_FROM_1,
  minVisualTokens: INTEGER_FROM_1,
  fps: { above: 0 },
  maxFrames: INTEGER_FROM_1,
  maxActiveRequests: INTEGER_FROM_1,
  maxImagePixels: INTEGER_FROM_1,
  featureCacheBytes: { integer: true, min: 0 },
  prefixCacheBytes: { integer: true, min: 0 },
} satisfies Record<string, NumberRule>;

/** What a chat request accepts on its own; its budgets are checked against the model's with `checkBudgets`. */
export const CHAT_RULES = {
  maxNewTokens: { integer: true, min: 0 },
  maxVisualTokens: INTEGER_FROM_1,
  minVisualTokens: INTEGER_FROM_1,
  fps: { above: 0 },
  maxFrames: INTEGER_FROM_1,
  maxImagePixels: INTEGER_FROM_1,
} satisfies Record<string, NumberRule>;

/**
 * The visual token budget in effect must make sense for the model: no more than its context holds (a larger budget
 * only lets one image cost minutes before its request is refused as too long), and a minimum within the maximum.
 */
export function checkBudgets(budget: { maxVisualTokens: number; minVisualTokens: number }, contextLength: number, fail: (option: string, message: string) => Error): void {
  if (budget.maxVisualTokens > contextLength) {
    throw fail('maxVisualTokens', `maxVisualTokens must be at most the model's context of ${contextLength} tokens, got ${budget.maxVisualTokens}`);
  }
  if (budget.minVisualTokens > budget.maxVisualTokens) {
    throw fail('minVisualTokens', `minVisualTokens (${budget.minVisualTokens}) must not exceed maxVisualTokens (${budget.maxVisualTokens})`);
  }
}
