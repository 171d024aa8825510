// Reading a benchmark's release files (JSON, JSON lines, CSV, Parquet, SRT), each failure naming the file and field.
import { parse as parseCsv } from 'csv-parse/sync';
import { asyncBufferFromFile, parquetReadObjects } from 'hyparquet';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeValue } from '../processing/describe.js';
import { EvalDataError } from './errors.js';

export type Json = Record<string, unknown>;

function read(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new EvalDataError(file, undefined, (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : (e as Error).message, { cause: e });
  }
}

export function readJson(file: string): unknown {
  const text = read(file);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new EvalDataError(file, undefined, `not valid JSON: ${(e as Error).message}`);
  }
}

/** One JSON object per non-empty line. */
export function readJsonl(file: string): Json[] {
  return read(file)
    .split('\n')
    .map((line, i) => [line.trim(), i] as const)
    .filter(([line]) => line.length > 0)
    .map(([line, i]) => {
      try {
        return object(JSON.parse(line), file, `line ${i + 1}`);
      } catch (e) {
        if (e instanceof EvalDataError) throw e;
        throw new EvalDataError(file, `line ${i + 1}`, `not valid JSON: ${(e as Error).message}`);
      }
    });
}

/** A CSV file with a header row, as objects of strings. */
export function readCsv(file: string): Record<string, string>[] {
  try {
    return parseCsv(read(file), { columns: true, skip_empty_lines: true }) as Record<string, string>[];
  } catch (e) {
    if (e instanceof EvalDataError) throw e;
    throw new EvalDataError(file, undefined, `not valid CSV: ${(e as Error).message}`);
  }
}

/**
 * The rows of a Parquet file (as the Hugging Face hub stores datasets): string columns (annotated UTF8, as pyarrow
 * writes them) as strings, binary columns (an image's `bytes`) as bytes, not decoded as text.
 */
export async function readParquet(file: string): Promise<Json[]> {
  if (!existsSync(file)) throw new EvalDataError(file, undefined, 'not found');
  try {
    return (await parquetReadObjects({ file: await asyncBufferFromFile(file), utf8: false })) as Json[];
  } catch (e) {
    throw new EvalDataError(file, undefined, `not a readable Parquet file: ${(e as Error).message}`);
  }
}

export function object(value: unknown, file: string, where: string): Json {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new EvalDataError(file, where, `expected an object, got ${describeValue(value)}`);
  return value as Json;
}

export function list(value: unknown, file: string, where: string): unknown[] {
  if (Array.isArray(value)) return value;
  // Parquet list columns may arrive as typed arrays.
  if (ArrayBuffer.isView(value)) return Array.from(value as unknown as ArrayLike<unknown>);
  throw new EvalDataError(file, where, `expected a list, got ${describeValue(value)}`);
}

export function str(o: Json, key: string, file: string, where: string): string {
  const v = o[key];
  if (typeof v !== 'string') throw new EvalDataError(file, `${where}.${key}`, `expected a string, got ${describeValue(v)}`);
  return v;
}

export function num(o: Json, key: string, file: string, where: string): number {
  const v = typeof o[key] === 'bigint' ? Number(o[key]) : o[key];
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new EvalDataError(file, `${where}.${key}`, `expected a number, got ${describeValue(v)}`);
  return v;
}

/** A string, or a number written as Python's str() would (ids are either in the releases). */
export function id(o: Json, key: string, file: string, where: string): string {
  const v = o[key];
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'bigint') return String(v);
  throw new EvalDataError(file, `${where}.${key}`, `expected a string or number id, got ${describeValue(v)}`);
}

export function strings(o: Json, key: string, file: string, where: string): string[] {
  return list(o[key], file, `${where}.${key}`).map((v, i) => {
    if (typeof v !== 'string') throw new EvalDataError(file, `${where}.${key}[${i}]`, `expected a string, got ${describeValue(v)}`);
    return v;
  });
}

/** `<folder>/<name>.<mp4|avi|mov|mkv>` (or the extensions given), the first that exists, as the official loaders look. */
export function findVideo(folder: string, name: string, file: string, where: string, extensions: readonly string[] = ['mp4', 'avi', 'mov', 'mkv']): string {
  for (const ext of extensions) {
    const path = join(folder, `${name}.${ext}`);
    if (existsSync(path)) return path;
  }
  throw new EvalDataError(file, where, `no video ${name}.{${extensions.join(',')}} in ${folder}`);
}

export function mustExist(path: string, file: string, where: string): string {
  if (!existsSync(path)) throw new EvalDataError(file, where, `${path} not found`);
  return path;
}

export interface SubtitleLine {
  /** Milliseconds, as pysubs2 holds them. */
  start: number;
  end: number;
  text: string;
}

/** An SRT file as pysubs2 reads it: times in ms, the lines of a cue joined with "\N". */
export function readSrt(file: string): SubtitleLine[] {
  const out: SubtitleLine[] = [];
  const time = /(\d+):(\d+):(\d+)[,.](\d+)\s*-->\s*(\d+):(\d+):(\d+)[,.](\d+)/;
  for (const block of read(file).replace(/^\ufeff/, '').replace(/\r\n?/g, '\n').split(/\n\s*\n/)) {
    const lines = block.split('\n');
    const at = lines.findIndex((l) => time.test(l));
    if (at < 0) continue;
    const m = time.exec(lines[at]!)!.slice(1).map(Number);
    const ms = (h: number, mi: number, s: number, f: number, digits: number) => ((h * 60 + mi) * 60 + s) * 1000 + Math.round(f * 10 ** (3 - digits));
    const parts = time.exec(lines[at]!)!;
    out.push({
      start: ms(m[0]!, m[1]!, m[2]!, m[3]!, parts[4]!.length),
      end: ms(m[4]!, m[5]!, m[6]!, m[7]!, parts[8]!.length),
      text: lines.slice(at + 1).filter((l) => l.length > 0).join('\\N'),
    });
  }
  return out;
}
