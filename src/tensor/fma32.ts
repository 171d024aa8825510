/**
 * Float32 fused multiply-add, `a·b + c` rounded once, for float32 inputs: what torch's CPU kernels compute where they
 * use an fmadd or the compiler contracts one (host-gradients.ts `adamw`). JavaScript has no fma, so the exact product
 * (a float32 product fits a double exactly) is added in double with round-to-odd, which a final rounding to float32
 * turns into the correctly rounded sum: a double has more than 24 + 2 bits, the condition for round-to-odd to be safe.
 */
const scratch = new Float64Array(1);
const words = new Uint32Array(scratch.buffer);
// The low word of a little-endian double holds its last significand bit.
const LO = 0;
const HI = 1;

export function fma32(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  if (!Number.isFinite(s)) return Math.fround(s);
  // TwoSum: the exact rounding error of p + c.
  const bv = s - p;
  const err = p - (s - bv) + (c - bv);
  if (err === 0) return Math.fround(s);
  scratch[0] = s;
  if ((words[LO]! & 1) === 0) {
    // Replace the even neighbour by the odd one on the side of the exact sum: one ulp away from or towards zero.
    if (err > 0 === s > 0) {
      words[LO] = words[LO]! + 1;
    } else if (words[LO] === 0) {
      words[LO] = 0xffffffff;
      words[HI] = words[HI]! - 1;
    } else {
      words[LO] = words[LO]! - 1;
    }
  }
  return Math.fround(scratch[0]);
}
