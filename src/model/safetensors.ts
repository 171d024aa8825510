/**
 * Reading and writing the safetensors format:
 *
 *   [u64 little-endian N] [N bytes of UTF-8 JSON header] [data]
 *
 * The header maps each tensor name to `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the start of
 * the data section) plus an optional `__metadata__` object of string values. Checkpoints are several GB, so a file is
 * never read as a whole: the header is parsed once and each tensor is read with one positioned read straight into a
 * fresh ArrayBuffer that becomes the tensor's storage.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { arrayFor, BYTES_PER_ELEMENT, isQuantized, type DType, type QuantFormat, type TypedArrayFor } from '../tensor/dtype.js';
import { HostStorage, numelOf, Tensor } from '../tensor/tensor.js';
import { weightBuffer } from '../tensor/native.js';

// Typed arrays over the file's bytes are only meaningful on a little-endian host (every platform Node ships for).
if (os.endianness() !== 'LE') throw new Error('safetensors: a little-endian host is required');

/**
 * Element types a safetensors file may hold here: every plain tensor DType plus f64 (fixture timestamps). Quantized
 * weights are stored as U8 bytes of their packed layout (src/model/weight-formats.ts reads them back).
 */
export type StoredDType = Exclude<DType, QuantFormat> | 'f64';

/** A float64 array: our Tensor has no f64, but fixtures store timestamps that way. */
export interface F64Array {
  readonly dtype: 'f64';
  readonly shape: readonly number[];
  readonly data: Float64Array;
}

/** Maps bytes [offset, offset + length) of an open file: the buffer and where the range starts in it. */
export type MapRange = (fd: number, offset: number, length: number) => { buffer: ArrayBuffer; byteOffset: number };

export interface TensorInfo {
  readonly dtype: StoredDType;
  readonly shape: readonly number[];
  /** Absolute position of the first byte in the file. */
  readonly fileOffset: number;
  readonly byteLength: number;
}

const FILE_DTYPE_TO_STORED: Readonly<Record<string, StoredDType>> = {
  BF16: 'bf16',
  F16: 'f16',
  F32: 'f32',
  F64: 'f64',
  I64: 'i64',
  I32: 'i32',
  U8: 'u8',
};

const STORED_TO_FILE_DTYPE: Readonly<Record<StoredDType, string>> = {
  bf16: 'BF16',
  f16: 'F16',
  f32: 'F32',
  f64: 'F64',
  i64: 'I64',
  i32: 'I32',
  u8: 'U8',
};

export function itemSize(dtype: StoredDType): number {
  return dtype === 'f64' ? 8 : BYTES_PER_ELEMENT[dtype];
}

/**
 * Rank of each dtype in the official writer's data order: tensors are laid out by dtype (the order of the Rust
 * `Dtype` enum, largest first: I64, F64, F32, I32, BF16, F16, U8), then by name. Following it makes our files
 * byte-identical to `safetensors.save_file` output and keeps every tensor aligned to its element size.
 */
const WRITE_ORDER_RANK: Readonly<Record<StoredDType, number>> = { i64: 0, f64: 1, f32: 2, i32: 3, bf16: 4, f16: 5, u8: 6 };

/** The reference implementation refuses headers above 100 MB; a larger length means a corrupt file. */
const MAX_HEADER_BYTES = 100_000_000;

/** Reads are issued in pieces below Linux's ~2 GiB per-call limit. */
const MAX_IO_BYTES = 1 << 30;

function fail(file: string, message: string): never {
  throw new Error(`safetensors ${file}: ${message}`);
}

function isShape(value: unknown): value is number[] {
  return Array.isArray(value) && value.every((d) => Number.isSafeInteger(d) && d >= 0);
}

/** Reads exactly `target.length` bytes at `position`, or throws naming the file. */
function readFully(fd: number, file: string, target: Uint8Array, position: number): void {
  let done = 0;
  while (done < target.length) {
    const want = Math.min(target.length - done, MAX_IO_BYTES);
    const got = fs.readSync(fd, target, done, want, position + done);
    if (got === 0) fail(file, `unexpected end of file at byte ${position + done}`);
    done += got;
  }
}

/** Writes all of `bytes` at the file's current position (writeSync may write less than asked). */
function writeFully(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) {
    done += fs.writeSync(fd, bytes, done, Math.min(bytes.length - done, MAX_IO_BYTES));
  }
}

function parseHeader(file: string, fileSize: number, headerBytes: Uint8Array, dataStart: number): {
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
} {
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
  } catch (err) {
    fail(file, `header is not valid UTF-8 JSON (${(err as Error).message})`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) fail(file, 'header is not a JSON object');

  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  const spans: { name: string; begin: number; end: number }[] = [];
  const dataSize = fileSize - dataStart;

  for (const [name, entry] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) fail(file, '__metadata__ is not an object');
      for (const [key, value] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof value !== 'string') fail(file, `__metadata__.${key} is not a string`);
        metadata[key] = value;
      }
      continue;
    }
    if (entry === null || typeof entry !== 'object') fail(file, `tensor "${name}": entry is not an object`);
    const { dtype: fileDtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
    const dtype = typeof fileDtype === 'string' ? FILE_DTYPE_TO_STORED[fileDtype] : undefined;
    if (!dtype) fail(file, `tensor "${name}": unsupported dtype ${JSON.stringify(fileDtype)}`);
    if (!isShape(shape)) fail(file, `tensor "${name}": invalid shape ${JSON.stringify(shape)}`);
    if (!isShape(offsets) || offsets.length !== 2 || offsets[0]! > offsets[1]!) {
      fail(file, `tensor "${name}": invalid data_offsets ${JSON.stringify(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    if (end > dataSize) {
      fail(file, `tensor "${name}": data_offsets [${begin}, ${end}] run past the end of the data (${dataSize} bytes)`);
    }
    const expected = numelOf(shape) * itemSize(dtype);
    if (end - begin !== expected) {
      fail(file, `tensor "${name}": ${end - begin} bytes stored but shape [${shape.join(', ')}] ${dtype} needs ${expected}`);
    }
    tensors.set(name, { dtype, shape: Object.freeze([...shape]), fileOffset: dataStart + begin, byteLength: expected });
    spans.push({ name, begin, end });
  }

  // Like the reference reader: the tensors must tile the data section exactly, with no gap, overlap or trailing byte.
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const span of spans) {
    if (span.begin !== cursor) {
      const what = span.begin < cursor ? 'overlaps the previous tensor' : `leaves a gap after byte ${cursor}`;
      fail(file, `tensor "${span.name}": data_offsets [${span.begin}, ${span.end}] ${what}`);
    }
    cursor = span.end;
  }
  if (cursor !== dataSize) fail(file, `tensors cover ${cursor} bytes but the data section has ${dataSize}`);
  return { tensors, metadata };
}

/** One open .safetensors file. The header is parsed and validated on open; tensors are read on demand. */
export class SafetensorsFile {
  readonly path: string;
  /** Tensor names in header order. */
  readonly names: readonly string[];
  /** The `__metadata__` strings (empty when the file has none). */
  readonly metadata: Readonly<Record<string, string>>;
  private readonly tensors: ReadonlyMap<string, TensorInfo>;
  private fd: number | null;
  /** Maps a range of this file, when opened with `map`: tensors are then views of mappings, read on first touch. */
  private map: MapRange | null = null;

  private constructor(file: string, fd: number, tensors: Map<string, TensorInfo>, metadata: Record<string, string>) {
    this.path = file;
    this.fd = fd;
    this.tensors = tensors;
    this.names = Object.freeze([...tensors.keys()]);
    this.metadata = Object.freeze(metadata);
  }

  /**
   * Opens a file and validates its header. With `map` (the native addon's mmap), `read` returns a view of a mapping
   * of the tensor's bytes instead of reading them into new memory, so weights are paged in on first use and shared
   * with the page cache.
   */
  static open(file: string, map?: MapRange): SafetensorsFile {
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (err) {
      throw new Error(`safetensors ${file}: cannot open (${(err as Error).message})`);
    }
    try {
      const fileSize = fs.fstatSync(fd).size;
      if (fileSize < 8) fail(file, `file is ${fileSize} bytes, too short for the 8-byte header length`);
      const lengthBytes = new Uint8Array(8);
      readFully(fd, file, lengthBytes, 0);
      const headerLength = new DataView(lengthBytes.buffer).getBigUint64(0, true);
      if (headerLength > BigInt(Math.min(MAX_HEADER_BYTES, fileSize - 8)) || headerLength < 2n) {
        fail(file, `header length ${headerLength} is impossible for a file of ${fileSize} bytes`);
      }
      const headerBytes = new Uint8Array(Number(headerLength));
      readFully(fd, file, headerBytes, 8);
      const { tensors, metadata } = parseHeader(file, fileSize, headerBytes, 8 + headerBytes.length);
      const opened = new SafetensorsFile(file, fd, tensors, metadata);
      opened.map = map ?? null;
      return opened;
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (!info) fail(this.path, `no tensor named "${name}"`);
    return info;
  }

  /** Reads a tensor into new storage. f64 tensors have no Tensor dtype: use readF64. */
  read(name: string): Tensor {
    const info = this.info(name);
    if (info.dtype === 'f64') fail(this.path, `tensor "${name}" is F64; read it with readF64()`);
    const dtype = info.dtype;
    // A tensor the writer did not align to its element size (other writers may not) is read instead.
    if (this.map && info.byteLength > 0 && info.fileOffset % itemSize(dtype) === 0) {
      if (this.fd === null) fail(this.path, `read of "${name}" after close()`);
      let range: { buffer: ArrayBuffer; byteOffset: number };
      try {
        range = this.map(this.fd, info.fileOffset, info.byteLength);
      } catch (err) {
        fail(this.path, `cannot map tensor "${name}" (${(err as Error).message})`);
      }
      return new Tensor(dtype, info.shape, new HostStorage(range.buffer), range.byteOffset);
    }
    const bytes = this.readBytes(name);
    return new Tensor(dtype, info.shape, arrayFor(dtype, bytes.buffer, bytes.byteOffset, numelOf(info.shape)) as TypedArrayFor<DType>);
  }

  readF64(name: string): F64Array {
    const info = this.info(name);
    if (info.dtype !== 'f64') fail(this.path, `tensor "${name}" is ${STORED_TO_FILE_DTYPE[info.dtype]}, not F64`);
    const bytes = this.readBytes(name);
    return { dtype: 'f64', shape: info.shape, data: new Float64Array(bytes.buffer, bytes.byteOffset, numelOf(info.shape)) };
  }

  /** Either kind, for generic code such as copying a file. */
  readAny(name: string): Tensor | F64Array {
    return this.info(name).dtype === 'f64' ? this.readF64(name) : this.read(name);
  }

  /** True when tensors are views of memory mappings of the file. */
  get isMapped(): boolean {
    return this.map !== null;
  }

  /** The tensor's raw little-endian bytes, new, starting on a cache line (huge pages where large: weightBuffer). */
  readBytes(name: string): Uint8Array {
    const info = this.info(name);
    if (this.fd === null) fail(this.path, `read of "${name}" after close()`);
    const buffer = weightBuffer(info.byteLength);
    readFully(this.fd, this.path, buffer, info.fileOffset);
    return buffer;
  }

  close(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }
}

/** File names of an HF checkpoint's weights. */
export const SINGLE_FILE_NAME = 'model.safetensors';
export const INDEX_FILE_NAME = 'model.safetensors.index.json';

/**
 * The weights of a checkpoint folder: either one `model.safetensors` or the shards listed by
 * `model.safetensors.index.json` (`weight_map: name → file`). Every file's header is read when the checkpoint opens,
 * so a missing shard or a name the index promises but the shard lacks is reported up front.
 */
export class SafetensorsCheckpoint {
  readonly folder: string;
  /** Tensor names, sorted. */
  readonly names: readonly string[];
  /** The files in the order they were opened (one for a single-file checkpoint). */
  readonly files: readonly SafetensorsFile[];
  private readonly fileByName: ReadonlyMap<string, SafetensorsFile>;

  private constructor(folder: string, files: SafetensorsFile[], fileByName: Map<string, SafetensorsFile>) {
    this.folder = folder;
    this.files = Object.freeze(files);
    this.fileByName = fileByName;
    this.names = Object.freeze([...fileByName.keys()].sort());
  }

  /** Opens every file of the folder; `map` as for `SafetensorsFile.open`. */
  static open(folder: string, map?: MapRange): SafetensorsCheckpoint {
    const single = path.join(folder, SINGLE_FILE_NAME);
    const index = path.join(folder, INDEX_FILE_NAME);
    if (fs.existsSync(single)) {
      const file = SafetensorsFile.open(single, map);
      return new SafetensorsCheckpoint(folder, [file], new Map(file.names.map((n) => [n, file])));
    }
    if (fs.existsSync(index)) return SafetensorsCheckpoint.openIndex(folder, index, map);
    throw new Error(`checkpoint ${folder}: no weights found (expected ${SINGLE_FILE_NAME} or ${INDEX_FILE_NAME})`);
  }

  private static openIndex(folder: string, indexPath: string, map?: MapRange): SafetensorsCheckpoint {
    let weightMap: unknown;
    try {
      weightMap = (JSON.parse(fs.readFileSync(indexPath, 'utf8')) as { weight_map?: unknown }).weight_map;
    } catch (err) {
      throw new Error(`safetensors index ${indexPath}: ${(err as Error).message}`);
    }
    if (weightMap === null || typeof weightMap !== 'object' || Array.isArray(weightMap)) {
      throw new Error(`safetensors index ${indexPath}: "weight_map" is missing or not an object`);
    }
    const opened = new Map<string, SafetensorsFile>();
    const fileByName = new Map<string, SafetensorsFile>();
    try {
      for (const [name, fileName] of Object.entries(weightMap as Record<string, unknown>)) {
        // Shard names are plain file names; anything that would leave the folder is refused.
        if (typeof fileName !== 'string' || fileName !== path.basename(fileName)) {
          throw new Error(`safetensors index ${indexPath}: tensor "${name}" maps to invalid file ${JSON.stringify(fileName)}`);
        }
        let file = opened.get(fileName);
        if (!file) {
          file = SafetensorsFile.open(path.join(folder, fileName), map);
          opened.set(fileName, file);
        }
        if (!file.has(name)) throw new Error(`safetensors index ${indexPath}: tensor "${name}" is not in ${file.path}`);
        fileByName.set(name, file);
      }
    } catch (err) {
      for (const file of opened.values()) file.close();
      throw err;
    }
    return new SafetensorsCheckpoint(folder, [...opened.values()], fileByName);
  }

  has(name: string): boolean {
    return this.fileByName.has(name);
  }

  /** The file holding `name`. */
  fileOf(name: string): SafetensorsFile {
    const file = this.fileByName.get(name);
    if (!file) throw new Error(`checkpoint ${this.folder}: no tensor named "${name}"`);
    return file;
  }

  info(name: string): TensorInfo {
    return this.fileOf(name).info(name);
  }

  read(name: string): Tensor {
    return this.fileOf(name).read(name);
  }

  close(): void {
    for (const file of this.files) file.close();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Writing

/**
 * A tensor to be written whose bytes are produced piece by piece: `emit` is called with consecutive chunks that
 * together make exactly numel × itemSize bytes. Used to write tensors that never exist in memory as a whole.
 */
export interface TensorSource {
  readonly dtype: StoredDType;
  readonly shape: readonly number[];
  produce(emit: (chunk: Uint8Array) => void): void;
}

function bytesOf(data: ArrayBufferView): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/**
 * The header block (length prefix + JSON padded with spaces so that the data starts at a multiple of `alignment`) and
 * the order of the data: by element size, largest first, then by name, as the official writer orders them. With an
 * `alignment` above 8, the tensors whose sizes are multiples of it come first, so each of them starts at such a
 * multiple too (a memory-mapped tensor then starts on a cache line, BENCHMARKS.md run 15); the others follow in the
 * same order, each still aligned to its element size.
 */
export function encodeHeader(
  entries: Record<string, { dtype: StoredDType; shape: readonly number[] }>,
  metadata?: Record<string, string>,
  alignment = 8,
): { bytes: Uint8Array; order: string[] } {
  if (!Number.isInteger(Math.log2(alignment)) || alignment < 8) throw new Error(`safetensors: alignment must be a power of two of at least 8, got ${alignment}`);
  const misfit = (name: string) => (alignment > 8 && (numelOf(entries[name]!.shape) * itemSize(entries[name]!.dtype)) % alignment !== 0 ? 1 : 0);
  const order = Object.keys(entries).sort((a, b) => {
    const rank = misfit(a) - misfit(b) || WRITE_ORDER_RANK[entries[a]!.dtype] - WRITE_ORDER_RANK[entries[b]!.dtype];
    return rank !== 0 ? rank : a < b ? -1 : a > b ? 1 : 0;
  });
  // Built by hand rather than with JSON.stringify(object): an object would move integer-like names ("0") first.
  const fields: string[] = [];
  if (metadata && Object.keys(metadata).length > 0) {
    const sorted = Object.keys(metadata).sort();
    for (const key of sorted) {
      if (typeof metadata[key] !== 'string') throw new Error(`safetensors: metadata "${key}" is not a string`);
    }
    fields.push(`"__metadata__":{${sorted.map((k) => `${JSON.stringify(k)}:${JSON.stringify(metadata[k])}`).join(',')}}`);
  }
  let offset = 0;
  for (const name of order) {
    if (name === '__metadata__') throw new Error('safetensors: "__metadata__" cannot be a tensor name');
    const { dtype, shape } = entries[name]!;
    const size = numelOf(shape) * itemSize(dtype);
    const entry = { dtype: STORED_TO_FILE_DTYPE[dtype], shape: [...shape], data_offsets: [offset, offset + size] };
    fields.push(`${JSON.stringify(name)}:${JSON.stringify(entry)}`);
    offset += size;
  }
  const json = new TextEncoder().encode(`{${fields.join(',')}}`);
  const padded = Math.ceil((8 + json.length) / alignment) * alignment - 8;
  const bytes = new Uint8Array(8 + padded).fill(0x20, 8 + json.length);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(padded), true);
  bytes.set(json, 8);
  return { bytes, order };
}

/**
 * Writes a safetensors file from tensor sources, streaming each one's bytes. The file appears under its final name
 * only when complete (written to a temporary name, then renamed), so an interrupted write leaves no valid-looking
 * truncated checkpoint behind. `alignment`: as for `encodeHeader`.
 */
export function writeSafetensorsFrom(
  file: string,
  sources: Record<string, TensorSource>,
  metadata?: Record<string, string>,
  alignment = 8,
): void {
  const { bytes, order } = encodeHeader(sources, metadata, alignment);
  writeFileAtomically(file, (write) => {
    write(bytes);
    for (const name of order) {
      const source = sources[name]!;
      const expected = numelOf(source.shape) * itemSize(source.dtype);
      let written = 0;
      source.produce((chunk) => {
        written += chunk.length;
        if (written > expected) throw new Error(`safetensors ${file}: tensor "${name}" produced more than ${expected} bytes`);
        write(chunk);
      });
      if (written !== expected) {
        throw new Error(`safetensors ${file}: tensor "${name}" produced ${written} bytes, expected ${expected}`);
      }
    }
  });
}

/**
 * Runs `body` with a writer into `file` that appears under its name only once `body` returns: the bytes go to a
 * temporary name beside it, renamed at the end and removed if `body` throws.
 */
export function writeFileAtomically(file: string, body: (write: (bytes: Uint8Array) => void) => void): void {
  const partial = `${file}.partial-${process.pid}`;
  const fd = fs.openSync(partial, 'w');
  try {
    body((bytes) => writeFully(fd, bytes));
    fs.closeSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(partial, { force: true });
    throw err;
  }
  fs.renameSync(partial, file);
}

/** Writes in-memory tensors (and f64 arrays) as a safetensors file, in the official writer's layout. */
export function writeSafetensors(
  file: string,
  tensors: Record<string, Tensor | F64Array>,
  metadata?: Record<string, string>,
): void {
  const sources: Record<string, TensorSource> = {};
  for (const [name, t] of Object.entries(tensors)) {
    if (t.dtype !== 'f64' && isQuantized(t.dtype)) throw new Error(`safetensors ${file}: tensor "${name}" is ${t.dtype}: write its packed bytes as u8`);
    const dtype: StoredDType = t.dtype;
    const expected = numelOf(t.shape);
    if (t.data.length !== expected) {
      throw new Error(`safetensors ${file}: tensor "${name}" has ${t.data.length} elements, shape needs ${expected}`);
    }
    sources[name] = { dtype, shape: t.shape, produce: (emit) => emit(bytesOf(t.data)) };
  }
  writeSafetensorsFrom(file, sources, metadata);
}
