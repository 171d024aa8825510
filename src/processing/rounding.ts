/**
 * The two roundings a chat template's `x | round(n)` can mean in the reference pipeline (spec 5.1). They differ
 * only on decimal ties, e.g. 0.35 -> 0.4 (numpy) vs 0.3 (Python), 2.45 -> 2.4 vs 2.5.
 */

/** Round half to even (C `rint` in the default rounding mode), keeping the sign of a zero result as rint does. */
export function roundHalfEven(y: number): number {
  if (!Number.isFinite(y)) return y;
  const floor = Math.floor(y);
  const fraction = y - floor; // exact for every float64
  const rounded = fraction < 0.5 ? floor : fraction > 0.5 ? floor + 1 : floor % 2 === 0 ? floor : floor + 1;
  return rounded === 0 && (y < 0 || Object.is(y, -0)) ? -0 : rounded;
}

/**
 * `np.round(x, decimals)` on a float64 — what Python's `round()` does for numpy scalars, such as the timestamps of
 * the ffmpeg video path: scale by 10^decimals (one float64 multiplication, itself rounded), round half to even,
 * scale back.
 */
export function numpyRound(x: number, decimals: number): number {
  if (decimals >= 0) {
    const scale = 10 ** decimals;
    return roundHalfEven(x * scale) / scale;
  }
  const scale = 10 ** -decimals;
  return roundHalfEven(x / scale) * scale;
}

/**
 * Python's built-in `round(x, ndigits)` on a float: the decimal nearest to the exact binary value of x, exact ties
 * to even. `toFixed` computes the same nearest decimal but sends exact ties away from zero; exact ties do occur
 * (12.25 = 49/4 is one at one decimal: Python gives 12.2, toFixed 12.3), so they are detected on the exact
 * expansion and rounded to even. Negative ndigits are approximated with a scaled rint.
 */
export function pythonRound(x: number, ndigits: number): number {
  if (!Number.isFinite(x)) return x;
  if (ndigits === 0) return roundHalfEven(x);
  if (ndigits < 0) {
    const scale = 10 ** -ndigits;
    return roundHalfEven(x / scale) * scale;
  }
  // toFixed is exact only below 1e21 and for at most 100 digits; rounding past either changes no practical value.
  if (Math.abs(x) >= 1e21 || ndigits >= 100) return x;
  const nearest = Number(x.toFixed(ndigits));
  // A tie has at most ndigits + 1 fractional digits, so 100 digits show it exactly.
  const [whole, fraction] = Math.abs(x).toFixed(100).split('.');
  const isTie = fraction[ndigits] === '5' && /^0*$/.test(fraction.slice(ndigits + 1));
  if (!isTie) return nearest;
  const lastKept = Number(fraction[ndigits - 1]);
  if (lastKept % 2 !== 0) return nearest; // away from zero reaches the even digit
  const truncated = Number(`${whole}.${fraction.slice(0, ndigits)}`);
  return x < 0 ? -truncated : truncated;
}
