/**
 * Block-quantized weight formats (src/tensor/quant.ts and docs/quantization.md give the layout): blocks of 32 values
 * of a row, each with an f16 scale; 'int8' 8-bit codes, 'int4' 4-bit codes (symmetric), 'int4m' 4-bit codes with an
 * f16 minimum per block (asymmetric). A tensor of these holds a [N, K] weight matrix, K a multiple of 32, as packed
 * bytes: only matmul weights and embedding tables take them.
 */
export type QuantFormat = 'int8' | 'int4' | 'int4m';
export const QUANT_FORMATS: readonly QuantFormat[] = ['int8', 'int4', 'int4m'];

/** How a model's weights are held: as stored in bf16 (or f32), or block-quantized. */
export type WeightFormat = 'bf16' | QuantFormat;
export const WEIGHT_FORMATS: readonly WeightFormat[] = ['bf16', ...QUANT_FORMATS];

/** Element types a tensor can hold. Half-precision floats are stored as raw 16-bit words. */
export type DType = 'f32' | 'bf16' | 'f16' | 'i32' | 'i64' | 'u8' | QuantFormat;

export function isQuantized(dtype: DType): dtype is QuantFormat {
  return dtype === 'int8' || dtype === 'int4' || dtype === 'int4m';
}

export type TypedArrayFor<D extends DType> = D extends 'f32'
  ? Float32Array
  : D extends 'bf16' | 'f16'
    ? Uint16Array
    : D extends 'i32'
      ? Int32Array
      : D extends 'i64'
        ? BigInt64Array
        : Uint8Array;

export type AnyTypedArray = Float32Array | Uint16Array | Int32Array | BigInt64Array | Uint8Array;

/** Bytes per block of 32 values of each quantized format: the f16 scale (and minimum) and the codes. */
export const QUANT_BLOCK_BYTES: Record<QuantFormat, number> = { int8: 34, int4: 18, int4m: 20 };

/** Bytes per element: a fraction for the quantized formats (a block's bytes over its 32 values). */
export const BYTES_PER_ELEMENT: Record<DType, number> = {
  f32: 4,
  bf16: 2,
  f16: 2,
  i32: 4,
  i64: 8,
  u8: 1,
  int8: QUANT_BLOCK_BYTES.int8 / 32,
  int4: QUANT_BLOCK_BYTES.int4 / 32,
  int4m: QUANT_BLOCK_BYTES.int4m / 32,
};

/** Bytes of `numel` elements; quantized formats count whole blocks of 32 only. */
export function byteSizeOf(dtype: DType, numel: number): number {
  if (isQuantized(dtype) && numel % 32 !== 0) throw new Error(`${dtype} holds whole blocks of 32 values, not ${numel}`);
  return numel * BYTES_PER_ELEMENT[dtype];
}

export function isFloat(dtype: DType): boolean {
  return dtype === 'f32' || dtype === 'bf16' || dtype === 'f16';
}

export function arrayFor(dtype: DType, buffer: ArrayBufferLike, byteOffset: number, length: number): AnyTypedArray {
  switch (dtype) {
    case 'f32':
      return new Float32Array(buffer, byteOffset, length);
    case 'bf16':
    case 'f16':
      return new Uint16Array(buffer, byteOffset, length);
    case 'i32':
      return new Int32Array(buffer, byteOffset, length);
    case 'i64':
      return new BigInt64Array(buffer, byteOffset, length);
    case 'u8':
      return new Uint8Array(buffer, byteOffset, length);
    case 'int8':
    case 'int4':
    case 'int4m':
      return new Uint8Array(buffer, byteOffset, byteSizeOf(dtype, length));
  }
}

// One scratch word shared by the scalar conversions below (they are not re-entrant across awaits, and need not be).
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

export function bf16ToF32(bits: number): number {
  scratchU32[0] = bits << 16;
  return scratchF32[0]!;
}

/** Round-to-nearest-even, as torch's `.to(torch.bfloat16)`; NaN stays a quiet NaN. */
export function f32ToBf16(value: number): number {
  scratchF32[0] = value;
  const u = scratchU32[0]!;
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x007fffff) !== 0) return ((u >>> 16) | 0x0040) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

export function f16ToF32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >>> 10) & 0x1f;
  const frac = bits & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** Reads element i of a float tensor's storage as a JS number, whatever its storage type. */
export function floatReader(dtype: DType, data: AnyTypedArray): (i: number) => number {
  switch (dtype) {
    case 'f32':
      return (i) => (data as Float32Array)[i]!;
    case 'bf16':
      return (i) => bf16ToF32((data as Uint16Array)[i]!);
    case 'f16':
      return (i) => f16ToF32((data as Uint16Array)[i]!);
    default:
      throw new Error(`expected a float dtype, got ${dtype}`);
  }
}
