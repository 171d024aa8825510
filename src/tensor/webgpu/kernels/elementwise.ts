// Hand-written WGSL for the elementwise ops (and byte fills and copies), since WebGPU has no library kernels.
import type { KernelDispatch, Slice } from '../dispatch.js';
import { bind, dispatchOver, elementwiseMain, f32Bits } from './operands.js';

const WG = 256;

/** out = a + b or a ⊙ b over n elements; b has `inner` elements (n, or a's last dimension: broadcast). */
export function binaryPlan(op: 'add' | 'mul', a: Slice, b: Slice, out: Slice, n: number, inner: number): KernelDispatch[] {
  const bound = bind(
    [
      { name: 'a', at: a, as: 'f32' },
      { name: 'b', at: b, as: 'f32' },
      { name: 'o', at: out, as: 'f32', write: true },
    ],
    ['n', 'inner'],
  );
  const expr = op === 'add' ? 'a_ld(gi) + b_ld(gi % u.inner)' : 'a_ld(gi) * b_ld(gi % u.inner)';
  const key = `${op}:${bound.variant}`;
  return [dispatchOver(key, () => bound.header + elementwiseMain(WG, `  o_st(gi, ${expr});`), bound, [n, inner], n, WG)];
}

/**
 * Both GELUs as u·σ(·), which equals 0.5·u·(1 + tanh(z)) with σ(2z) and 0.5·u·(1 + erf(u/√2)) with Φ(u): no 1 + tanh
 * or 1 + erf that cancels for negative u, and no tanh of a large argument (WGSL's overflows on some drivers).
 */
const GELU_WGSL = `
// erfc for x >= 0 with relative error below 1.2e-7: t·exp(−x² + P(t)), t = 1/(1 + x/2) (a Chebyshev fit of the
// exponent, Numerical Recipes' erfcc). x² is split into its f32 product and the product's rounding error (fma), since
// the exponent reaches −88 and one ulp of it would be an error of 1e-5 in exp.
fn erfc_pos(x: f32) -> f32 {
  let t = 1.0 / (1.0 + 0.5 * x);
  let p = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 +
    t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
  let hi = x * x;
  let lo = fma(x, x, -hi);
  return t * exp(-hi) * exp(p - lo);
}
// Φ(u) = erfc(−u/√2)/2.
fn normal_cdf(u: f32) -> f32 {
  let z = abs(u) * 0.70710678118654752;
  let tail = 0.5 * erfc_pos(z);
  return select(1.0 - tail, tail, u < 0.0);
}
fn sigmoid(z: f32) -> f32 {
  return 1.0 / (1.0 + exp(-z));
}
`;

export function geluPlan(x: Slice, out: Slice, n: number, approximation: 'tanh' | 'erf'): KernelDispatch[] {
  const bound = bind(
    [
      { name: 'x', at: x, as: 'f32' },
      { name: 'o', at: out, as: 'f32', write: true },
    ],
    ['n'],
  );
  const body =
    approximation === 'tanh'
      ? '  let v = x_ld(gi);\n  o_st(gi, v * sigmoid(1.5957691216057308 * (v + 0.044715 * v * v * v)));'
      : '  let v = x_ld(gi);\n  o_st(gi, v * normal_cdf(v));';
  const key = `gelu-${approximation}:${bound.variant}`;
  return [dispatchOver(key, () => bound.header + GELU_WGSL + elementwiseMain(WG, body), bound, [n], n, WG)];
}

/** out = silu(gate) ⊙ up; out may be gate or up (one binding then). */
export function siluMulPlan(gate: Slice, up: Slice, out: Slice, n: number): KernelDispatch[] {
  const bound = bind(
    [
      { name: 'g', at: gate, as: 'f32' },
      { name: 'p', at: up, as: 'f32' },
      { name: 'o', at: out, as: 'f32', write: true },
    ],
    ['n'],
  );
  const body = '  let g = g_ld(gi);\n  o_st(gi, (g / (1.0 + exp(-g))) * p_ld(gi));';
  return [dispatchOver(`silu-mul:${bound.variant}`, () => bound.header + elementwiseMain(WG, body), bound, [n], n, WG)];
}

/**
 * Bytes [at, at + bytes) ← a repeating 4-byte word (an f32's or i32's bits, or a byte four times), whole words
 * where the range covers them and masked edges where it does not, so u8 views at any offset fill too.
 */
export function fillPlan(at: Slice, bytes: number, pattern: number): KernelDispatch[] {
  const first = Math.floor(at.byteOffset / 4);
  const words = Math.ceil((at.byteOffset + bytes) / 4) - first;
  const bound = bind([{ name: 't', at: { buffer: at.buffer, byteOffset: 0 }, as: 'u8', write: true }], ['n', 'first', 'start', 'end', 'pattern']);
  const body = `  let w = u.first + gi;
  var mask = 0xffffffffu;
  for (var k = 0u; k < 4u; k++) {
    let byte = w * 4u + k;
    if (byte < u.start || byte >= u.end) { mask &= ~(0xffu << (k * 8u)); }
  }
  b0[w] = (b0[w] & ~mask) | (u.pattern & mask);`;
  const params = [words, first, at.byteOffset, at.byteOffset + bytes, pattern >>> 0];
  return [dispatchOver('fill-bytes', () => bound.header + elementwiseMain(WG, body), bound, params, words, WG)];
}

/**
 * dst bytes ← src bytes, at any offsets, within one buffer or between two (the ranges do not overlap): each
 * invocation assembles one destination word from the source's bytes and keeps the bytes outside the range.
 */
export function copyBytesPlan(src: Slice, dst: Slice, bytes: number): KernelDispatch[] {
  const first = Math.floor(dst.byteOffset / 4);
  const words = Math.ceil((dst.byteOffset + bytes) / 4) - first;
  const bound = bind(
    [
      { name: 's', at: { buffer: src.buffer, byteOffset: 0 }, as: 'u8' },
      { name: 'd', at: { buffer: dst.buffer, byteOffset: 0 }, as: 'u8', write: true },
    ],
    ['n', 'first', 'start', 'end', 'shift'],
  );
  const target = bound.variant.includes('d0') ? 'b0' : 'b1';
  const body = `  let w = u.first + gi;
  var word = ${target}[w];
  for (var k = 0u; k < 4u; k++) {
    let byte = w * 4u + k;
    if (byte >= u.start && byte < u.end) {
      word = (word & ~(0xffu << (k * 8u))) | (s_ld(byte - u.shift) << (k * 8u));
    }
  }
  ${target}[w] = word;`;
  // s_ld adds s's offset (0); the source byte of destination byte q is q − dst.byteOffset + src.byteOffset.
  const shift = dst.byteOffset - src.byteOffset;
  const params = [words, first, dst.byteOffset, dst.byteOffset + bytes, shift >>> 0];
  return [dispatchOver(`copy-bytes:${bound.variant}`, () => bound.header + elementwiseMain(WG, body), bound, params, words, WG)];
}

/**
 * Rows of whole words: dst row pairs[2i + 1] ← src row pairs[2i], for `count` pairs (i32, in a buffer) of rows of
 * `rowWords` words; one invocation a word. Destination rows are distinct (the caller copies in order otherwise).
 */
export function copyRowsPlan(src: Slice, dst: Slice, pairs: Slice, count: number, rowWords: number): KernelDispatch[] {
  const bound = bind(
    [
      { name: 's', at: src, as: 'u32' },
      { name: 'd', at: dst, as: 'u32', write: true },
      { name: 'p', at: pairs, as: 'u32' },
    ],
    ['n', 'row'],
  );
  const body = `  let i = gi / u.row;
  let w = gi % u.row;
  d_st(p_ld(2u * i + 1u) * u.row + w, s_ld(p_ld(2u * i) * u.row + w));`;
  const n = count * rowWords;
  return [dispatchOver(`copy-rows:${bound.variant}`, () => bound.header + elementwiseMain(WG, body), bound, [n, rowWords], n, WG)];
}

export { f32Bits };
