import * as fs from 'node:fs/promises';

/**
 * Reads and parses a JSON file. Errors name the file and say whether it is missing or malformed, because the usual
 * cause is a checkpoint folder that is incomplete or was downloaded as Git LFS pointers.
 * With `optional`, a missing file gives `undefined` instead of an error (a malformed one still throws).
 */
export async function readJsonFile(file: string, options: { optional: true }): Promise<unknown | undefined>;
export async function readJsonFile(file: string, options?: { optional?: false }): Promise<unknown>;
export async function readJsonFile(file: string, options: { optional?: boolean } = {}): Promise<unknown | undefined> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && options.optional) return undefined;
    const why = code === 'ENOENT' ? 'file not found' : (err as Error).message;
    throw new Error(`cannot read ${file}: ${why}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${file} is not valid JSON: ${(err as Error).message}`);
  }
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
