// What every `vl3` command shares: exit codes, flags with environment twins, argument parsers.
import { InvalidArgumentError, Option } from 'commander';

/** Exit codes scripts can rely on. */
export const EXIT = { ok: 0, failure: 1, usage: 2, interrupted: 130 } as const;

export const integer = (name: string, min: number) => (value: string) => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
  return n;
};
export const number = (name: string) => (value: string) => {
  const n = Number(value);
  if (!Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a number`);
  return n;
};

export const positive = (name: string) => (value: string) => {
  const n = Number(value);
  if (!(n > 0) || !Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a number > 0`);
  return n;
};
export const seconds = (name: string) => (value: string) => {
  const n = Number(value);
  if (!(n >= 0) || !Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a number of seconds >= 0`);
  return n;
};

const BINARY_UNITS: Record<string, number> = { '': 1, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40 };

/** A size in bytes: a whole number, optionally with a binary unit (512MiB, 2GiB). */
export const byteCount = (name: string) => (value: string) => {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]ib)?$/i.exec(value.trim());
  const n = m ? Number(m[1]) * BINARY_UNITS[(m[2] ?? '').toLowerCase()]! : NaN;
  if (!Number.isSafeInteger(n)) throw new InvalidArgumentError(`${name} must be a whole number of bytes, optionally with KiB, MiB, GiB or TiB (e.g. 2GiB)`);
  return n;
};

/** A flag with its environment twin: --max-new-tokens ↔ VL3_MAX_NEW_TOKENS. */
export function flag(flags: string, description: string): Option {
  const long = /--([a-z0-9-]+)/.exec(flags)![1]!;
  return new Option(flags, description).env(`VL3_${long.toUpperCase().replaceAll('-', '_')}`);
}

/** Values of a repeatable flag (its environment twin holds one value: a data URL may contain any delimiter). */
export const collect = (value: string, previous: string[] = []) => [...previous, value];
