// GGUF v3 writer (llama.cpp's model format), Q8_0/Q4_0 quantizers, and a checkpoint's Qwen2 decoder written as a GGUF for the llama.cpp peer.
/*
 * Layout, from the format's public specification (all little-endian):
 *   u32 magic "GGUF", u32 version 3, u64 tensor count, u64 key/value count,
 *   key/values: string key, u32 value type, value (arrays: u32 item type, u64 count, items),
 *   tensor infos: string name, u32 dimension count, u64 dimensions (innermost first), u32 ggml type,
 *                 u64 offset into the data section (a multiple of general.alignment),
 *   zero padding to general.alignment, then the data section.
 * A string is a u64 byte length and UTF-8 bytes, without a terminator.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readModelConfig, type VideoLlama3Config } from '../src/model/config.js';
import { SafetensorsCheckpoint, writeFileAtomically } from '../src/model/safetensors.js';
import { decoderWeights } from '../src/model/weight-names.js';
import { f16ToF32 } from '../src/tensor/dtype.js';
import { f32ToF16 } from '../src/tensor/quant.js';

export const GGUF_MAGIC = 0x46554747; // the bytes "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;

export enum GgufType {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
}

/** The ggml tensor types this writer produces (numbers from ggml's `ggml_type`). */
export enum GgmlType {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q8_0 = 8,
  BF16 = 30,
}

/** llama.cpp's `llama_ftype`: the file's dominant weight type, which it reports and uses for defaults. */
const FILE_TYPE: Record<GgmlType, number> = {
  [GgmlType.F32]: 0,
  [GgmlType.F16]: 1,
  [GgmlType.Q4_0]: 2,
  [GgmlType.Q8_0]: 7,
  [GgmlType.BF16]: 32,
};

export type GgufScalarType = Exclude<GgufType, GgufType.ARRAY>;
export type GgufValue =
  | { type: GgufScalarType; value: number | bigint | boolean | string }
  | { type: GgufType.ARRAY; itemType: GgufScalarType; value: readonly (number | bigint | boolean | string)[] };

export const gguf = {
  u32: (value: number): GgufValue => ({ type: GgufType.U32, value }),
  i32: (value: number): GgufValue => ({ type: GgufType.I32, value }),
  u64: (value: number | bigint): GgufValue => ({ type: GgufType.U64, value }),
  f32: (value: number): GgufValue => ({ type: GgufType.F32, value }),
  bool: (value: boolean): GgufValue => ({ type: GgufType.BOOL, value }),
  str: (value: string): GgufValue => ({ type: GgufType.STRING, value }),
  array: (itemType: GgufScalarType, value: readonly (number | bigint | boolean | string)[]): GgufValue => ({ type: GgufType.ARRAY, itemType, value }),
};

export const QK = 32; // weights per Q8_0 / Q4_0 block
export const Q8_0_BLOCK_BYTES = 2 + QK; // fp16 scale + 32 × i8
export const Q4_0_BLOCK_BYTES = 2 + QK / 2; // fp16 scale + 32 × 4 bits

/** Bytes of a tensor of `numel` elements of `type`; `rowLength` (the innermost dimension) must fill whole blocks. */
export function tensorBytes(type: GgmlType, numel: number, rowLength: number): number {
  switch (type) {
    case GgmlType.F32:
      return numel * 4;
    case GgmlType.F16:
    case GgmlType.BF16:
      return numel * 2;
    case GgmlType.Q8_0:
    case GgmlType.Q4_0:
      if (rowLength % QK !== 0) throw new Error(`gguf: rows of ${rowLength} do not split into blocks of ${QK}`);
      return (numel / QK) * (type === GgmlType.Q8_0 ? Q8_0_BLOCK_BYTES : Q4_0_BLOCK_BYTES);
  }
}

/** A tensor to be written: its bytes are produced in consecutive chunks, so it never has to exist whole in memory. */
export interface GgufTensor {
  name: string;
  type: GgmlType;
  /** Innermost first: a PyTorch [out, in] weight is [in, out] here. */
  dims: readonly number[];
  produce(emit: (chunk: Uint8Array) => void): void;
}

// ---------------------------------------------------------------------------------------------------------------
// fp16 and the block quantizers

// The half-precision conversions are the tensor layer's (the quantized weights' encoder uses the same).
export { f32ToF16 };

/**
 * Q8_0: per block of 32, scale d = max|x| / 127 stored as fp16, then round(x / d) as signed bytes. The quotients use
 * the fp16-rounded scale that the reader will multiply by, so the stored bytes are the closest to x that it can see.
 */
export function quantizeQ8_0(src: Float32Array, out: Uint8Array, outOffset = 0): void {
  if (src.length % QK !== 0) throw new Error(`Q8_0: ${src.length} values are not whole blocks of ${QK}`);
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  let o = outOffset;
  for (let b = 0; b < src.length; b += QK) {
    let amax = 0;
    for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(src[b + j]!));
    const dBits = f32ToF16(amax / 127);
    const d = f16ToF32(dBits);
    const id = d > 0 ? 1 / d : 0;
    view.setUint16(o, dBits, true);
    for (let j = 0; j < QK; j++) {
      const q = Math.max(-127, Math.min(127, Math.round(src[b + j]! * id)));
      out[o + 2 + j] = q & 0xff;
    }
    o += Q8_0_BLOCK_BYTES;
  }
}

/**
 * Q4_0: per block of 32, d = m / -8 where m is the value of largest magnitude (so m itself maps exactly to code 0),
 * codes q = clamp(round(x / d) + 8, 0, 15); byte j holds element j in its low nibble and element j + 16 in its high.
 */
export function quantizeQ4_0(src: Float32Array, out: Uint8Array, outOffset = 0): void {
  if (src.length % QK !== 0) throw new Error(`Q4_0: ${src.length} values are not whole blocks of ${QK}`);
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  let o = outOffset;
  const codes = new Uint8Array(QK);
  for (let b = 0; b < src.length; b += QK) {
    let m = 0;
    for (let j = 0; j < QK; j++) if (Math.abs(src[b + j]!) > Math.abs(m)) m = src[b + j]!;
    const dBits = f32ToF16(m / -8);
    const d = f16ToF32(dBits);
    const id = d !== 0 ? 1 / d : 0;
    view.setUint16(o, dBits, true);
    for (let j = 0; j < QK; j++) codes[j] = Math.max(0, Math.min(15, Math.round(src[b + j]! * id) + 8));
    for (let j = 0; j < QK / 2; j++) out[o + 2 + j] = codes[j]! | (codes[j + QK / 2]! << 4);
    o += Q4_0_BLOCK_BYTES;
  }
}

export function dequantizeQ8_0(src: Uint8Array, numel: number): Float32Array {
  const view = new DataView(src.buffer, src.byteOffset, src.byteLength);
  const out = new Float32Array(numel);
  for (let b = 0, o = 0; b < numel; b += QK, o += Q8_0_BLOCK_BYTES) {
    const d = f16ToF32(view.getUint16(o, true));
    for (let j = 0; j < QK; j++) out[b + j] = view.getInt8(o + 2 + j) * d;
  }
  return out;
}

export function dequantizeQ4_0(src: Uint8Array, numel: number): Float32Array {
  const view = new DataView(src.buffer, src.byteOffset, src.byteLength);
  const out = new Float32Array(numel);
  for (let b = 0, o = 0; b < numel; b += QK, o += Q4_0_BLOCK_BYTES) {
    const d = f16ToF32(view.getUint16(o, true));
    for (let j = 0; j < QK / 2; j++) {
      const byte = src[o + 2 + j]!;
      out[b + j] = ((byte & 0x0f) - 8) * d;
      out[b + j + QK / 2] = ((byte >>> 4) - 8) * d;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Writing

/** A growable little-endian byte buffer for the header (a 152k-token vocabulary makes it a few MB). */
class ByteWriter {
  private bytes = new Uint8Array(1 << 16);
  private view = new DataView(this.bytes.buffer);
  length = 0;
  private readonly encoder = new TextEncoder();

  private reserve(n: number): void {
    if (this.length + n <= this.bytes.length) return;
    let size = this.bytes.length * 2;
    while (size < this.length + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.bytes.subarray(0, this.length));
    this.bytes = next;
    this.view = new DataView(next.buffer);
  }

  u8(v: number): void {
    this.reserve(1);
    this.view.setUint8(this.length, v);
    this.length += 1;
  }
  i8(v: number): void {
    this.reserve(1);
    this.view.setInt8(this.length, v);
    this.length += 1;
  }
  u16(v: number): void {
    this.reserve(2);
    this.view.setUint16(this.length, v, true);
    this.length += 2;
  }
  i16(v: number): void {
    this.reserve(2);
    this.view.setInt16(this.length, v, true);
    this.length += 2;
  }
  u32(v: number): void {
    this.reserve(4);
    this.view.setUint32(this.length, v, true);
    this.length += 4;
  }
  i32(v: number): void {
    this.reserve(4);
    this.view.setInt32(this.length, v, true);
    this.length += 4;
  }
  u64(v: number | bigint): void {
    this.reserve(8);
    this.view.setBigUint64(this.length, BigInt(v), true);
    this.length += 8;
  }
  i64(v: number | bigint): void {
    this.reserve(8);
    this.view.setBigInt64(this.length, BigInt(v), true);
    this.length += 8;
  }
  f32(v: number): void {
    this.reserve(4);
    this.view.setFloat32(this.length, v, true);
    this.length += 4;
  }
  f64(v: number): void {
    this.reserve(8);
    this.view.setFloat64(this.length, v, true);
    this.length += 8;
  }
  str(s: string): void {
    const b = this.encoder.encode(s);
    this.u64(b.length);
    this.reserve(b.length);
    this.bytes.set(b, this.length);
    this.length += b.length;
  }
  zeros(n: number): void {
    this.reserve(n);
    this.bytes.fill(0, this.length, this.length + n);
    this.length += n;
  }
  result(): Uint8Array {
    return this.bytes.subarray(0, this.length);
  }
}

function writeScalar(w: ByteWriter, type: GgufScalarType, value: number | bigint | boolean | string, key: string): void {
  const expect = (ok: boolean, what: string) => {
    if (!ok) throw new Error(`gguf: metadata "${key}": ${JSON.stringify(String(value))} is not ${what}`);
  };
  const int = (lo: number, hi: number) => expect(typeof value === 'number' && Number.isInteger(value) && value >= lo && value <= hi, `an integer in [${lo}, ${hi}]`);
  switch (type) {
    case GgufType.U8:
      int(0, 0xff);
      return w.u8(value as number);
    case GgufType.I8:
      int(-0x80, 0x7f);
      return w.i8(value as number);
    case GgufType.U16:
      int(0, 0xffff);
      return w.u16(value as number);
    case GgufType.I16:
      int(-0x8000, 0x7fff);
      return w.i16(value as number);
    case GgufType.U32:
      int(0, 0xffffffff);
      return w.u32(value as number);
    case GgufType.I32:
      int(-0x80000000, 0x7fffffff);
      return w.i32(value as number);
    case GgufType.U64:
    case GgufType.I64:
      expect(typeof value === 'bigint' || (typeof value === 'number' && Number.isSafeInteger(value)), 'a 64-bit integer');
      return type === GgufType.U64 ? w.u64(value as number | bigint) : w.i64(value as number | bigint);
    case GgufType.F32:
    case GgufType.F64:
      expect(typeof value === 'number', 'a number');
      return type === GgufType.F32 ? w.f32(value as number) : w.f64(value as number);
    case GgufType.BOOL:
      expect(typeof value === 'boolean', 'a boolean');
      return w.u8(value ? 1 : 0);
    case GgufType.STRING:
      expect(typeof value === 'string', 'a string');
      return w.str(value as string);
  }
}

const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;

/** Header bytes (padded to the alignment) and each tensor's byte size and offset in the data section. */
export function encodeGgufHeader(
  metadata: ReadonlyMap<string, GgufValue>,
  tensors: readonly Pick<GgufTensor, 'name' | 'type' | 'dims'>[],
): { header: Uint8Array; alignment: number; sizes: number[]; offsets: number[] } {
  const alignmentValue = metadata.get('general.alignment');
  const alignment = alignmentValue ? Number(alignmentValue.value) : GGUF_DEFAULT_ALIGNMENT;
  if (alignmentValue && (alignmentValue.type !== GgufType.U32 || !Number.isInteger(alignment) || alignment <= 0 || alignment % 8 !== 0)) {
    throw new Error('gguf: general.alignment must be a u32 multiple of 8');
  }
  const w = new ByteWriter();
  w.u32(GGUF_MAGIC);
  w.u32(GGUF_VERSION);
  w.u64(tensors.length);
  w.u64(metadata.size);
  for (const [key, v] of metadata) {
    w.str(key);
    w.u32(v.type);
    if (v.type === GgufType.ARRAY) {
      w.u32(v.itemType);
      w.u64(v.value.length);
      for (const item of v.value) writeScalar(w, v.itemType, item, key);
    } else {
      writeScalar(w, v.type, v.value, key);
    }
  }
  const names = new Set<string>();
  const sizes: number[] = [];
  const offsets: number[] = [];
  let offset = 0;
  for (const t of tensors) {
    if (names.has(t.name)) throw new Error(`gguf: tensor "${t.name}" appears twice`);
    names.add(t.name);
    if (t.dims.length < 1 || t.dims.length > 4) throw new Error(`gguf: tensor "${t.name}" has ${t.dims.length} dimensions (1 to 4 allowed)`);
    const numel = t.dims.reduce((a, b) => a * b, 1);
    const size = tensorBytes(t.type, numel, t.dims[0]!);
    w.str(t.name);
    w.u32(t.dims.length);
    for (const d of t.dims) w.u64(d);
    w.u32(t.type);
    w.u64(offset);
    sizes.push(size);
    offsets.push(offset);
    offset = alignUp(offset + size, alignment);
  }
  w.zeros(alignUp(w.length, alignment) - w.length);
  return { header: w.result(), alignment, sizes, offsets };
}

/** Writes a GGUF file, streaming each tensor; it appears under its name only once complete. */
export function writeGguf(file: string, metadata: ReadonlyMap<string, GgufValue>, tensors: readonly GgufTensor[]): void {
  const { header, alignment, sizes } = encodeGgufHeader(metadata, tensors);
  writeFileAtomically(file, (write) => {
    write(header);
    const padding = new Uint8Array(alignment);
    tensors.forEach((t, i) => {
      let written = 0;
      t.produce((chunk) => {
        written += chunk.length;
        if (written > sizes[i]!) throw new Error(`gguf ${file}: tensor "${t.name}" produced more than ${sizes[i]} bytes`);
        write(chunk);
      });
      if (written !== sizes[i]) throw new Error(`gguf ${file}: tensor "${t.name}" produced ${written} bytes, expected ${sizes[i]}`);
      if (i < tensors.length - 1) write(padding.subarray(0, alignUp(written, alignment) - written));
    });
  });
}

// ---------------------------------------------------------------------------------------------------------------
// A checkpoint's Qwen2 decoder as llama.cpp's `qwen2` architecture

export type GgufWeightType = 'bf16' | 'q8_0' | 'q4_0';
const WEIGHT_TYPE: Record<GgufWeightType, GgmlType> = { bf16: GgmlType.BF16, q8_0: GgmlType.Q8_0, q4_0: GgmlType.Q4_0 };

/** llama.cpp's token types (`llama_token_type`). */
const TOKEN_NORMAL = 1;
const TOKEN_CONTROL = 3;
const TOKEN_USER_DEFINED = 4;

interface TokenizerJson {
  model: { type: string; vocab: Record<string, number>; merges: (string | [string, string])[] };
  added_tokens: { id: number; content: string; special: boolean }[];
}

/**
 * The tokenizer as llama.cpp's `gpt2` (byte-level BPE) vocabulary, padded to the embedding's row count: the model has
 * 151936 rows but the tokenizer names 151668 tokens (151643 + 25 added), and llama.cpp wants one token per row, so the rows no
 * token uses get placeholder names ("[PAD<id>]", user-defined), as llama.cpp's own converter does for Qwen2.
 */
export function qwen2Vocabulary(checkpointDir: string, rows: number, config: Pick<VideoLlama3Config, 'bosTokenId'>) {
  const tok = JSON.parse(fs.readFileSync(path.join(checkpointDir, 'tokenizer.json'), 'utf8')) as TokenizerJson;
  if (tok.model.type !== 'BPE') throw new Error(`${checkpointDir}/tokenizer.json: a BPE model is expected, got ${tok.model.type}`);
  const tokens: (string | undefined)[] = new Array(rows);
  const types = new Array<number>(rows).fill(TOKEN_USER_DEFINED);
  for (const [text, id] of Object.entries(tok.model.vocab)) {
    if (id >= rows) throw new Error(`token ${id} ${JSON.stringify(text)} lies beyond the embedding's ${rows} rows`);
    tokens[id] = text;
    types[id] = TOKEN_NORMAL;
  }
  for (const added of tok.added_tokens) {
    if (added.id >= rows) throw new Error(`added token ${added.id} lies beyond the embedding's ${rows} rows`);
    tokens[added.id] = added.content;
    // `<|fim_prefix|>` and its kin are added tokens not flagged special; llama.cpp treats any `<|...|>` token as
    // control (and warns when the file says otherwise), so they are marked so here.
    types[added.id] = added.special || /^<\|.*\|>$/.test(added.content) ? TOKEN_CONTROL : TOKEN_USER_DEFINED;
  }
  const list = Array.from(tokens, (t, i) => t ?? `[PAD${i}]`); // Array.from visits holes; map would skip them
  const merges = tok.model.merges.map((m) => (typeof m === 'string' ? m : `${m[0]} ${m[1]}`));

  const tokConfigFile = path.join(checkpointDir, 'tokenizer_config.json');
  const tokConfig = fs.existsSync(tokConfigFile) ? (JSON.parse(fs.readFileSync(tokConfigFile, 'utf8')) as Record<string, unknown>) : {};
  const idOf = (key: string): number | undefined => {
    const v = tokConfig[key];
    const content = typeof v === 'string' ? v : v && typeof v === 'object' ? (v as { content?: string }).content : undefined;
    if (content === undefined) return undefined;
    const id = list.indexOf(content);
    return id >= 0 ? id : undefined;
  };
  return {
    tokens: list,
    types,
    merges,
    // Qwen2's tokenizer sets no bos_token; the model config's bos_token_id (<|endoftext|>) is what converters record.
    bos: idOf('bos_token') ?? config.bosTokenId ?? undefined,
    eos: idOf('eos_token'),
    pad: idOf('pad_token'),
    addBos: tokConfig.add_bos_token === true,
  };
}

/** bf16 bits → f32 for a run of values (a bit shift per value). */
function widenBf16(src: Uint16Array, out: Float32Array): void {
  const u = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < src.length; i++) u[i] = src[i]! << 16;
}

/** Rows converted per chunk when quantizing: keeps memory to a few MB whatever the tensor's size. */
const QUANT_CHUNK_VALUES = 1 << 20;

export interface Qwen2GgufOptions {
  checkpointDir: string;
  out: string;
  type: GgufWeightType;
  name?: string;
}

/**
 * Writes the decoder of a VideoLLaMA3 (Qwen2.5) checkpoint as a llama.cpp `qwen2` GGUF: the embeddings, every layer,
 * the final norm and the LM head (omitted when tied: llama.cpp then reads the embeddings). Matrices take `type`;
 * norms and biases stay F32, which is what llama.cpp's converter writes and what its CPU kernels add and multiply.
 */
export function writeQwen2Gguf(options: Qwen2GgufOptions): { file: string; bytes: number; tensors: number } {
  const config = readModelConfig(path.join(options.checkpointDir, 'config.json'));
  const store = SafetensorsCheckpoint.open(options.checkpointDir);
  try {
    const specs = decoderWeights(config);
    const matrixType = WEIGHT_TYPE[options.type];
    const tensors: GgufTensor[] = [];

    const add = (ggufName: string, hfName: string, kind: 'matrix' | 'vector') => {
      const info = store.info(hfName);
      if (info.dtype !== 'bf16' && info.dtype !== 'f32') throw new Error(`${hfName}: ${info.dtype} weights are not supported`);
      const shape = info.shape;
      const type = kind === 'vector' ? GgmlType.F32 : matrixType;
      tensors.push({
        name: ggufName,
        type,
        dims: [...shape].reverse(),
        produce(emit) {
          const raw = store.read(hfName);
          const numel = raw.data.length;
          if (type === GgmlType.BF16 && raw.dtype === 'bf16') {
            const d = raw.data as Uint16Array;
            emit(new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
            return;
          }
          const f32 = new Float32Array(Math.min(numel, QUANT_CHUNK_VALUES));
          const block = type === GgmlType.Q8_0 ? Q8_0_BLOCK_BYTES : type === GgmlType.Q4_0 ? Q4_0_BLOCK_BYTES : 0;
          const out = new Uint8Array(type === GgmlType.F32 ? f32.byteLength : type === GgmlType.BF16 ? f32.length * 2 : (f32.length / QK) * block);
          for (let s = 0; s < numel; s += f32.length) {
            const n = Math.min(f32.length, numel - s);
            const values = f32.subarray(0, n);
            if (raw.dtype === 'bf16') widenBf16((raw.data as Uint16Array).subarray(s, s + n), values);
            else values.set((raw.data as Float32Array).subarray(s, s + n));
            if (type === GgmlType.F32) emit(new Uint8Array(values.buffer, 0, n * 4));
            else if (type === GgmlType.BF16) {
              // Only an f32 checkpoint reaches here: truncation would bias every weight, so round to nearest even.
              const o = new Uint16Array(out.buffer, 0, n);
              const u = new Uint32Array(values.buffer, 0, n);
              for (let i = 0; i < n; i++) o[i] = (u[i]! + 0x7fff + ((u[i]! >>> 16) & 1)) >>> 16;
              emit(new Uint8Array(out.buffer, 0, n * 2));
            } else {
              (type === GgmlType.Q8_0 ? quantizeQ8_0 : quantizeQ4_0)(values, out, 0);
              emit(out.subarray(0, (n / QK) * block));
            }
          }
        },
      });
    };

    add('token_embd.weight', specs.embedTokens.name, 'matrix');
    specs.layers.forEach((l, i) => {
      const b = `blk.${i}.`;
      add(`${b}attn_norm.weight`, l.inputNorm.name, 'vector');
      add(`${b}attn_q.weight`, l.qProj.name, 'matrix');
      add(`${b}attn_q.bias`, l.qBias.name, 'vector');
      add(`${b}attn_k.weight`, l.kProj.name, 'matrix');
      add(`${b}attn_k.bias`, l.kBias.name, 'vector');
      add(`${b}attn_v.weight`, l.vProj.name, 'matrix');
      add(`${b}attn_v.bias`, l.vBias.name, 'vector');
      add(`${b}attn_output.weight`, l.oProj.name, 'matrix');
      add(`${b}ffn_norm.weight`, l.postNorm.name, 'vector');
      add(`${b}ffn_gate.weight`, l.gateProj.name, 'matrix');
      add(`${b}ffn_up.weight`, l.upProj.name, 'matrix');
      add(`${b}ffn_down.weight`, l.downProj.name, 'matrix');
    });
    add('output_norm.weight', specs.finalNorm.name, 'vector');
    if (!config.tieWordEmbeddings) add('output.weight', specs.lmHead.name, 'matrix');

    // Every expected tensor must be there with the config's shape before minutes of writing begin.
    const expected = [specs.embedTokens, specs.finalNorm, ...specs.layers.flatMap((l) => Object.values(l)), ...(config.tieWordEmbeddings ? [] : [specs.lmHead])];
    for (const s of expected) {
      const got = store.info(s.name).shape;
      if (got.join() !== s.shape.join()) throw new Error(`${s.name}: shape [${got.join(', ')}], the config implies [${s.shape.join(', ')}]`);
    }

    const vocab = qwen2Vocabulary(options.checkpointDir, config.vocabSize, config);
    const m = new Map<string, GgufValue>();
    m.set('general.architecture', gguf.str('qwen2'));
    m.set('general.name', gguf.str(options.name ?? path.basename(path.resolve(options.checkpointDir))));
    m.set('general.file_type', gguf.u32(FILE_TYPE[matrixType]));
    if (matrixType === GgmlType.Q8_0 || matrixType === GgmlType.Q4_0) m.set('general.quantization_version', gguf.u32(2));
    m.set('general.alignment', gguf.u32(GGUF_DEFAULT_ALIGNMENT));
    m.set('qwen2.context_length', gguf.u32(config.maxPositionEmbeddings));
    m.set('qwen2.embedding_length', gguf.u32(config.hiddenSize));
    m.set('qwen2.block_count', gguf.u32(config.numHiddenLayers));
    m.set('qwen2.feed_forward_length', gguf.u32(config.intermediateSize));
    m.set('qwen2.attention.head_count', gguf.u32(config.numAttentionHeads));
    m.set('qwen2.attention.head_count_kv', gguf.u32(config.numKeyValueHeads));
    m.set('qwen2.rope.freq_base', gguf.f32(config.ropeTheta));
    m.set('qwen2.attention.layer_norm_rms_epsilon', gguf.f32(config.rmsNormEps));
    m.set('tokenizer.ggml.model', gguf.str('gpt2'));
    m.set('tokenizer.ggml.pre', gguf.str('qwen2'));
    m.set('tokenizer.ggml.tokens', gguf.array(GgufType.STRING, vocab.tokens));
    m.set('tokenizer.ggml.token_type', gguf.array(GgufType.I32, vocab.types));
    m.set('tokenizer.ggml.merges', gguf.array(GgufType.STRING, vocab.merges));
    if (vocab.bos !== undefined) m.set('tokenizer.ggml.bos_token_id', gguf.u32(vocab.bos));
    if (vocab.eos !== undefined) m.set('tokenizer.ggml.eos_token_id', gguf.u32(vocab.eos));
    if (vocab.pad !== undefined) m.set('tokenizer.ggml.padding_token_id', gguf.u32(vocab.pad));
    m.set('tokenizer.ggml.add_bos_token', gguf.bool(vocab.addBos));

    writeGguf(options.out, m, tensors);
    return { file: options.out, bytes: fs.statSync(options.out).size, tensors: tensors.length };
  } finally {
    store.close();
  }
}
