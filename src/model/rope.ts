/**
 * Inverse frequencies of 1-D rotary embedding, computed in float32 like transformers' Qwen2 rotary module:
 * inv_freq[j] = 1 / theta^(2j / dim), j = 0 .. dim/2-1.
 */
export function ropeInverseFrequencies(dim: number, theta: number): Float32Array {
  const inv = new Float32Array(dim / 2);
  for (let j = 0; j < inv.length; j++) {
    const exponent = Math.fround(Math.fround(2 * j) / dim);
    inv[j] = Math.fround(1 / Math.fround(Math.pow(theta, exponent)));
  }
  return inv;
}

/**
 * cos and sin tables [positions.length, dim/2] for the given positions (angles pos·inv_freq rounded to float32 before
 * the trigonometric functions, as the reference computes them), as host arrays for the backend to `write`.
 */
export function ropeTables(invFreq: Float32Array, positions: ArrayLike<number>): { cos: Float32Array; sin: Float32Array } {
  const half = invFreq.length;
  const cos = new Float32Array(positions.length * half);
  const sin = new Float32Array(positions.length * half);
  for (let t = 0; t < positions.length; t++) {
    const p = positions[t]!;
    for (let j = 0; j < half; j++) {
      const angle = Math.fround(p * invFreq[j]!);
      cos[t * half + j] = Math.cos(angle);
      sin[t * half + j] = Math.sin(angle);
    }
  }
  return { cos, sin };
}
