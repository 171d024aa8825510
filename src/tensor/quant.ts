/**
 * The block-quantized weight formats, in plain TypeScript: the definition the native encoder (native/quant.h) and every
 * tier's kernels are tested against, byte for byte and within f32 accumulation bounds.
 *
 * A weight [N, K] (K a multiple of 32) is quantized per block of 32 consecutive values of a row. Each block has an f16
 * scale d (and for int4m an f16 minimum m) and 32 codes u:
 *   int8:  value = d·(u − 128), u = 128 + round(v / d) in [1, 255], d = max|v| / 127
 *   int4:  value = d·(u − 8),   u = 8 + round(v / d) in [0, 15],   d = v* / −8 (v*: the value of largest magnitude)
 *   int4m: value = d·u + m,     u = round((v − m) / d) in [0, 15], d = (max − min) / 15, m = min
 * (round: half to even, in f32, by the scale as stored in f16; d = 0 gives code 0 offset, that is value 0 or m).
 *
 * Packed layout (what kernels read, and what a quantized checkpoint stores): rows in groups of 4 (the last group of a
 * matrix may be shorter), blocks in chunks of 4 (the last chunk of a row may be shorter). Groups follow each other,
 * each taking rows·K/32 blocks' bytes; inside a group, chunks follow each other; a chunk of b blocks of a group of r
 * rows is: the r·b f16 scales (row-major: row, then block), for int4m the r·b f16 minimums, then the codes of every
 * row, k-major: 4-byte words, word (s, r, i) holding elements 4s..4s+3 of row r's block i (int8: s = 0..7; int4 and
 * int4m: s = 0..3, elements 4s..4s+3 in the low nibbles and 16+4s..16+4s+3 in the high ones). Whole chunks go in
 * pairs (chunks 0 and 1, 2 and 3…; a row's last whole chunk, when their count is odd, and a shorter chunk stand
 * alone): a pair is both chunks' scales (and minimums), then both chunks' codes, so that in a group that starts on a
 * 64-byte line every code vector of a whole chunk does too. So a 4-row group's pair of chunks is one contiguous run a
 * vector kernel streams through, and in a whole chunk of a whole group 64 bytes of codes are one word per (row,
 * block), in the order of the scales: an int8 dot instruction sums each block into its own lane (native/quant.h
 * orders the activation codes to match).
 */
import { f16ToF32, type QuantFormat } from './dtype.js';

export const QUANT_BLOCK = 32;
const GROUP_ROWS = 4;
const CHUNK_BLOCKS = 4;

const codeBytes = (f: QuantFormat) => (f === 'int8' ? 32 : 16);
const paramBytes = (f: QuantFormat) => (f === 'int4m' ? 4 : 2);
const blockBytes = (f: QuantFormat) => codeBytes(f) + paramBytes(f);
/** The code that stands for zero (int4m has none: its minimum is added instead). */
export const zeroCode = (f: QuantFormat) => (f === 'int8' ? 128 : f === 'int4' ? 8 : 0);

/** Bytes of a packed [N, K] matrix. */
export function packedBytes(format: QuantFormat, N: number, K: number): number {
  if (K % QUANT_BLOCK !== 0) throw new Error(`${format}: rows of ${K} values are not whole blocks of ${QUANT_BLOCK}`);
  return N * (K / QUANT_BLOCK) * blockBytes(format);
}

const f32 = Math.fround;
const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);

/** Round-to-nearest-even f32 → f16 bits; beyond the largest f16, ±Inf. */
export function f32ToF16(value: number): number {
  scratch[0] = value;
  const u = scratchBits[0]!;
  const sign = (u >>> 16) & 0x8000;
  const a = u & 0x7fffffff;
  if (a >= 0x7f800000) return sign | 0x7c00 | (a > 0x7f800000 ? 0x200 : 0);
  if (a >= 0x477ff000) return sign | 0x7c00;
  if (a < 0x38800000) return sign | roundHalfEven(Math.abs(scratch[0]!) * 16777216);
  const r = a + 0xfff + ((a >>> 13) & 1);
  return sign | ((r - 0x38000000) >>> 13);
}

export function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const diff = v - f;
  if (diff < 0.5) return f;
  if (diff > 0.5) return f + 1;
  return f % 2 === 0 ? f : f + 1;
}

const clamp = (v: number, lo: number, hi: number) => (v < lo ? lo : v > hi ? hi : v);

interface BlockRef {
  /** Byte offsets into the packed bytes (codes: the chunk's, every row's). */
  d: number;
  m: number;
  codes: number;
  chunkBlocks: number;
  index: number;
  rows: number;
  row: number;
}

function blockRef(f: QuantFormat, N: number, K: number, n: number, blk: number): BlockRef {
  const nb = K / QUANT_BLOCK;
  const g = Math.floor(n / GROUP_ROWS);
  const rows = Math.min(GROUP_ROWS, N - g * GROUP_ROWS);
  const r = n - g * GROUP_ROWS;
  const c0 = blk - (blk % CHUNK_BLOCKS);
  const b = Math.min(CHUNK_BLOCKS, nb - c0);
  const i = blk - c0;
  const group = g * GROUP_ROWS * nb * blockBytes(f);
  let params = group + rows * c0 * blockBytes(f);
  let codes = params + rows * b * paramBytes(f);
  const c = c0 / CHUNK_BLOCKS;
  if ((c | 1) < Math.floor(nb / CHUNK_BLOCKS)) {
    // One of a pair of whole chunks: both chunks' scales (and minimums), then both chunks' codes.
    const odd = c & 1;
    const pair = group + rows * (c0 - odd * CHUNK_BLOCKS) * blockBytes(f);
    params = pair + odd * rows * CHUNK_BLOCKS * paramBytes(f);
    codes = pair + rows * CHUNK_BLOCKS * (2 * paramBytes(f) + odd * codeBytes(f));
  }
  return {
    d: params + (r * b + i) * 2,
    m: f === 'int4m' ? params + rows * b * 2 + (r * b + i) * 2 : -1,
    codes,
    chunkBlocks: b,
    index: i,
    rows,
    row: r,
  };
}

/** Byte of element j of the block at `ref` among its chunk's codes (int4: its low nibble when j < 16). */
function codeOffset(f: QuantFormat, ref: BlockRef, j: number): number {
  const s = (f === 'int8' ? j : j & 15) >> 2;
  return ((s * ref.rows + ref.row) * ref.chunkBlocks + ref.index) * 4 + (j & 3);
}

function codeAt(f: QuantFormat, bytes: Uint8Array, ref: BlockRef, j: number): number {
  const byte = bytes[ref.codes + codeOffset(f, ref, j)]!;
  return f === 'int8' ? byte : j < 16 ? byte & 15 : byte >> 4;
}

function setCode(f: QuantFormat, bytes: Uint8Array, ref: BlockRef, j: number, u: number): void {
  const at = ref.codes + codeOffset(f, ref, j);
  if (f === 'int8') bytes[at] = u;
  else if (j < 16) bytes[at] = (bytes[at]! & 0xf0) | u;
  else bytes[at] = (bytes[at]! & 0x0f) | (u << 4);
}

const readF16 = (bytes: Uint8Array, at: number) => f16ToF32(bytes[at]! | (bytes[at + 1]! << 8));
const writeF16 = (bytes: Uint8Array, at: number, bits: number) => {
  bytes[at] = bits & 0xff;
  bytes[at + 1] = bits >>> 8;
};

/** A value that cannot be quantized: not finite, or needing a scale beyond f16. */
export class QuantizeRangeError extends Error {
  constructor(
    readonly row: number,
    message: string,
  ) {
    super(message);
  }
}

/** Packs `read(n·K + k)` (f32 values) of an [N, K] matrix in `format`. */
export function quantize(format: QuantFormat, read: (i: number) => number, N: number, K: number): Uint8Array {
  const bytes = new Uint8Array(packedBytes(format, N, K));
  const v = new Float32Array(QUANT_BLOCK);
  for (let n = 0; n < N; n++) {
    for (let blk = 0; blk < K / QUANT_BLOCK; blk++) {
      for (let j = 0; j < QUANT_BLOCK; j++) v[j] = read(n * K + blk * QUANT_BLOCK + j);
      const bad = (what: string) => new QuantizeRangeError(n, `row ${n}, values ${blk * QUANT_BLOCK}..${blk * QUANT_BLOCK + 31}: ${what}`);
      if (!v.every(Number.isFinite)) throw bad('a value is not finite');
      const ref = blockRef(format, N, K, n, blk);
      let dBits: number;
      let mBits = 0;
      let code: (x: number, d: number, m: number) => number;
      if (format === 'int8') {
        const amax = v.reduce((a, x) => Math.max(a, Math.abs(x)), 0);
        dBits = f32ToF16(f32(amax / 127));
        code = (x, d) => 128 + (d === 0 ? 0 : clamp(roundHalfEven(f32(x / d)), -127, 127));
      } else if (format === 'int4') {
        let vmax = 0;
        for (const x of v) if (Math.abs(x) > Math.abs(vmax)) vmax = x;
        dBits = f32ToF16(f32(vmax / -8));
        code = (x, d) => 8 + (d === 0 ? 0 : clamp(roundHalfEven(f32(x / d)), -8, 7));
      } else {
        const lo = v.reduce((a, x) => Math.min(a, x));
        const hi = v.reduce((a, x) => Math.max(a, x));
        dBits = f32ToF16(f32(f32(hi - lo) / 15));
        mBits = f32ToF16(lo);
        code = (x, d, m) => (d === 0 ? 0 : clamp(roundHalfEven(f32(f32(x - m) / d)), 0, 15));
      }
      const d = f16ToF32(dBits);
      const m = f16ToF32(mBits);
      if (!Number.isFinite(d) || !Number.isFinite(m)) throw bad('the block needs a scale beyond the f16 range');
      writeF16(bytes, ref.d, dBits);
      if (format === 'int4m') writeF16(bytes, ref.m, mBits);
      for (let j = 0; j < QUANT_BLOCK; j++) setCode(format, bytes, ref, j, code(v[j]!, d, m));
    }
  }
  return bytes;
}

/** The exact dequantized values: d·(u − z) (exact in f32), or for int4m d·u + m rounded once to f32. */
export function dequantize(format: QuantFormat, bytes: Uint8Array, N: number, K: number): Float32Array {
  const out = new Float32Array(N * K);
  const z = zeroCode(format);
  for (let n = 0; n < N; n++) {
    for (let blk = 0; blk < K / QUANT_BLOCK; blk++) {
      const ref = blockRef(format, N, K, n, blk);
      const d = readF16(bytes, ref.d);
      const m = format === 'int4m' ? readF16(bytes, ref.m) : 0;
      for (let j = 0; j < QUANT_BLOCK; j++) {
        const u = codeAt(format, bytes, ref, j);
        out[n * K + blk * QUANT_BLOCK + j] = format === 'int4m' ? f32(f32(d * u) + m) : d * (u - z);
      }
    }
  }
  return out;
}

/** Rows of activations quantized per block of 32 for the integer dot (native/kernels.h states the contract). */
export interface QuantizedActivations {
  q: Int8Array;
  /** Per block: amax / 127 in f32. */
  d: Float32Array;
  /** Per block: Σ q. */
  sum: Int32Array;
}

export function quantizeActivations(x: Float32Array, M: number, K: number): QuantizedActivations {
  const nb = K / QUANT_BLOCK;
  const q = new Int8Array(M * K);
  const d = new Float32Array(M * nb);
  const sum = new Int32Array(M * nb);
  for (let b = 0; b < M * nb; b++) {
    let amax = 0;
    for (let j = 0; j < QUANT_BLOCK; j++) amax = Math.max(amax, Math.abs(x[b * QUANT_BLOCK + j]!));
    const inv = amax > 0 ? f32(127 / amax) : 0;
    d[b] = f32(amax / 127);
    for (let j = 0; j < QUANT_BLOCK; j++) {
      const v = roundHalfEven(f32(x[b * QUANT_BLOCK + j]! * inv));
      q[b * QUANT_BLOCK + j] = v;
      sum[b] += v;
    }
  }
  return { q, d, sum };
}

/**
 * out[M,N] = x̂·ŵᵀ (+ bias) of the fast mode: x̂ the per-block int8 activations, ŵ the quantized weights, each block's
 * integer dot exact, scaled and summed in f32 block by block (int4m adds m·d_x·Σq per block).
 */
export function quantizedMatmulInt(
  format: QuantFormat,
  x: Float32Array,
  w: Uint8Array,
  bias: (n: number) => number,
  out: Float32Array,
  M: number,
  N: number,
  K: number,
): void {
  const a = quantizeActivations(x, M, K);
  const nb = K / QUANT_BLOCK;
  const z = zeroCode(format);
  const codes = new Int32Array(QUANT_BLOCK);
  const acc = new Float64Array(M);
  for (let n = 0; n < N; n++) {
    acc.fill(0);
    for (let blk = 0; blk < nb; blk++) {
      const ref = blockRef(format, N, K, n, blk);
      const dw = readF16(w, ref.d);
      const mw = format === 'int4m' ? readF16(w, ref.m) : 0;
      for (let j = 0; j < QUANT_BLOCK; j++) codes[j] = codeAt(format, w, ref, j) - z;
      for (let m = 0; m < M; m++) {
        let s = 0;
        const base = m * K + blk * QUANT_BLOCK;
        for (let j = 0; j < QUANT_BLOCK; j++) s += codes[j]! * a.q[base + j]!;
        const dx = a.d[m * nb + blk]!;
        acc[m] = f32(acc[m]! + f32(f32(dw * dx) * s));
        if (format === 'int4m') acc[m] = f32(acc[m]! + f32(mw * f32(dx * a.sum[m * nb + blk]!)));
      }
    }
    for (let m = 0; m < M; m++) out[m * N + n] = f32(acc[m]! + bias(n));
  }
}
