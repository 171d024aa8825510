// Hand-written WGSL for the ops that gather rows: the 2×2 merge and the embedding lookup (f32, bf16, quantized).
import type { QuantFormat } from '../../dtype.js';
import type { KernelDispatch, Slice } from '../dispatch.js';
import { bind, dispatchOver, elementwiseMain, type Access } from './operands.js';

const WG = 256;

/** out[r, c] = 0.5·(0.5·a + 0.5·b) + 0.5·(0.5·c + 0.5·d) of block r's four rows (merge size 2; products by 0.5 are exact). */
export function mergeBlocks2Plan(x: Slice, out: Slice, n: number, C: number): KernelDispatch[] {
  const bound = bind(
    [
      { name: 'x', at: x, as: 'f32' },
      { name: 'o', at: out, as: 'f32', write: true },
    ],
    ['n', 'c'],
  );
  const body = `  let r = gi / u.c;
  let col = gi % u.c;
  let a = r * 4u * u.c + col;
  let top = 0.5 * x_ld(a) + 0.5 * x_ld(a + u.c);
  let bottom = 0.5 * x_ld(a + 2u * u.c) + 0.5 * x_ld(a + 3u * u.c);
  o_st(gi, 0.5 * top + 0.5 * bottom);`;
  return [dispatchOver(`merge2:${bound.variant}`, () => bound.header + elementwiseMain(WG, body), bound, [n * C, C], n * C, WG)];
}

/**
 * The value of element (row, k) of a packed quantized [N, K] matrix, as quant.ts lays it out: rows in groups of 4,
 * blocks of 32 in chunks of 4; a chunk of b blocks of a group of r rows holds r·b f16 scales, for int4m r·b f16
 * minimums, then the codes of every row, k-major: 4-byte words, word (s, r, i) holding elements 4s..4s+3 of row r's
 * block i (int4: s < 4, elements 4s.. in the low nibbles and 16+4s.. in the high); whole chunks go in pairs, both
 * chunks' scales (and minimums) before both chunks' codes, except a row's last whole chunk when their count is odd.
 */
function dequantWgsl(format: QuantFormat): string {
  const blockBytes = { int8: 34, int4: 18, int4m: 20 }[format];
  const paramBytes = format === 'int4m' ? 4 : 2;
  const codeBytes = format === 'int8' ? 32 : 16;
  const code =
    format === 'int8'
      ? 'let code = t_ld(codes + (((j >> 2u) * rows + r) * b + i) * 4u + (j & 3u));'
      : 'let byte = t_ld(codes + ((((j & 15u) >> 2u) * rows + r) * b + i) * 4u + (j & 3u));\n  let code = select(byte & 15u, byte >> 4u, j >= 16u);';
  const value = format === 'int8' ? 'd * f32(i32(code) - 128)' : format === 'int4' ? 'd * f32(i32(code) - 8)' : 'd * f32(code) + f16_at(chunk + rows * b * 2u + (r * b + i) * 2u)';
  return `
// f16 bits to f32, subnormals included (exact: an f16 is an f32).
fn f16_at(at: u32) -> f32 {
  let h = t_ld(at) | (t_ld(at + 1u) << 8u);
  let sign = select(1.0, -1.0, (h & 0x8000u) != 0u);
  let e = (h >> 10u) & 31u;
  let f = h & 1023u;
  if (e == 0u) { return sign * f32(f) * 5.9604644775390625e-8; }
  if (e == 31u) { return bitcast<f32>(((h & 0x8000u) << 16u) | 0x7f800000u | (f << 13u)); }
  return bitcast<f32>(((h & 0x8000u) << 16u) | ((e + 112u) << 23u) | (f << 13u));
}
fn dequant(n: u32, k: u32, N: u32, K: u32) -> f32 {
  let nb = K / 32u;
  let blk = k / 32u;
  let j = k % 32u;
  let g = n / 4u;
  let rows = min(4u, N - g * 4u);
  let r = n - g * 4u;
  let c0 = blk - blk % 4u;
  let b = min(4u, nb - c0);
  let i = blk - c0;
  let group = g * 4u * nb * ${blockBytes}u;
  var chunk = group + rows * c0 * ${blockBytes}u;
  var codes = chunk + rows * b * ${paramBytes}u;
  let c = c0 / 4u;
  if ((c | 1u) < nb / 4u) {
    let odd = c & 1u;
    let pair = group + rows * (c0 - odd * 4u) * ${blockBytes}u;
    chunk = pair + odd * rows * ${4 * paramBytes}u;
    codes = pair + rows * (${8 * paramBytes}u + odd * ${4 * codeBytes}u);
  }
  let d = f16_at(chunk + (r * b + i) * 2u);
  ${code}
  return ${value};
}
`;
}

/**
 * out[t, :] = row ids[t] of table[V, D] (f32, bf16, or quantized and dequantized here); ids were checked on the host.
 * A table split into row pages (a weight past the binding limit) is looked up a page at a time: `table` then holds
 * rows [firstRow, firstRow + V) and ids outside them are left to the other pages' dispatches.
 */
export function embeddingPlan(table: Slice, dtype: 'f32' | 'bf16' | QuantFormat, ids: Slice, out: Slice, T: number, V: number, D: number, firstRow = 0): KernelDispatch[] {
  const quantized = dtype !== 'f32' && dtype !== 'bf16';
  const access: Access = quantized ? 'u8' : dtype;
  const bound = bind(
    [
      { name: 't', at: table, as: access },
      { name: 'i', at: ids, as: 'i32' },
      { name: 'o', at: out, as: 'f32', write: true },
    ],
    ['n', 'd', 'v', 'row0'],
  );
  const read = quantized ? 'dequant(id, col, u.v, u.d)' : 't_ld(id * u.d + col)';
  const body = `  let id = u32(i_ld(gi / u.d)) - u.row0;
  if (id >= u.v) { return; }
  let col = gi % u.d;
  o_st(gi, ${read});`;
  const wgsl = () => bound.header + (quantized ? dequantWgsl(dtype) : '') + elementwiseMain(WG, body);
  const n = T * D;
  return [dispatchOver(`embedding-${dtype}:${bound.variant}`, wgsl, bound, [n, D, V, firstRow], n, WG)];
}
