// Hand-written WGSL for the rotary embedding (half-split layout), since WebGPU has no library kernels.
import type { KernelDispatch, Slice } from '../dispatch.js';
import { bind, dispatchOver, elementwiseMain } from './operands.js';

const WG = 256;

/**
 * x[T,H,D] rotated by cos, sin [T,D/2]: one invocation per pair (j, j + D/2) reads both before writing both, so out
 * may be x.
 */
export function ropePlan(x: Slice, cos: Slice, sin: Slice, out: Slice, T: number, H: number, D: number): KernelDispatch[] {
  const bound = bind(
    [
      { name: 'x', at: x, as: 'f32' },
      { name: 'c', at: cos, as: 'f32' },
      { name: 's', at: sin, as: 'f32' },
      { name: 'o', at: out, as: 'f32', write: true },
    ],
    ['n', 'h', 'half'],
  );
  const half = D / 2;
  const body = `  let j = gi % u.half;
  let th = gi / u.half;
  let t = th / u.h;
  let base = th * 2u * u.half;
  let x1 = x_ld(base + j);
  let x2 = x_ld(base + j + u.half);
  let cj = c_ld(t * u.half + j);
  let sj = s_ld(t * u.half + j);
  o_st(base + j, x1 * cj - x2 * sj);
  o_st(base + j + u.half, x2 * cj + x1 * sj);`;
  const n = T * H * half;
  return [dispatchOver(`rope:${bound.variant}`, () => bound.header + elementwiseMain(WG, body), bound, [n, H, half], n, WG)];
}
