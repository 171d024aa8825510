// Hand-written WGSL for the per-row ops (rmsNorm, layerNorm, softmax): one workgroup a row, sums in workgroup memory.
import type { KernelDispatch, Slice } from '../dispatch.js';
import { bind, f32Bits, GRID_BUILTINS, GROUP_INDEX, grid, type Access } from './operands.js';

const WG = 256;

/** A tree reduction of one f32 per invocation over the workgroup (`op` combines two partials). */
function reduceFn(name: string, op: string): string {
  return `fn ${name}(v: f32, lid: u32) -> f32 {
  workgroupBarrier();
  partial[lid] = v;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { let a = partial[lid]; let b = partial[lid + s]; partial[lid] = ${op}; }
    workgroupBarrier();
  }
  return partial[0];
}
`;
}

const SHARED = `var<workgroup> partial: array<f32, ${WG}>;\n`;

function rowMain(body: string): string {
  return `@compute @workgroup_size(${WG}) fn main(${GRID_BUILTINS}) {
  let row = ${GROUP_INDEX};
  if (row >= u.rows) { return; }
  let base = row * u.d;
${body}
}
`;
}

const weightAccess = (bf16: boolean): Access => (bf16 ? 'bf16' : 'f32');

/** Rows of d: out = x · 1/sqrt(mean(x²) + eps) ⊙ w. Each invocation owns the same elements in every pass, so out may be x. */
export function rmsNormPlan(x: Slice, weight: Slice, weightBf16: boolean, out: Slice, rows: number, d: number, eps: number): KernelDispatch[] {
  const bound = bind(
    [
      { name: 'x', at: x, as: 'f32' },
      { name: 'w', at: weight, as: weightAccess(weightBf16) },
      { name: 'o', at: out, as: 'f32', write: true },
    ],
    ['rows', 'd', 'eps'],
  );
  const body = `  var sq = 0.0;
  for (var i = lid; i < u.d; i += ${WG}u) { let v = x_ld(base + i); sq += v * v; }
  let total = sum(sq, lid);
  let inv = 1.0 / sqrt(total / f32(u.d) + bitcast<f32>(u.eps));
  for (var i = lid; i < u.d; i += ${WG}u) { o_st(base + i, (x_ld(base + i) * inv) * w_ld(i)); }`;
  const wgsl = () => bound.header + SHARED + reduceFn('sum', 'a + b') + rowMain(body);
  return [{ key: `rms-norm:${bound.variant}`, wgsl, buffers: bound.buffers, uniforms: bound.uniforms([rows, d, f32Bits(eps)]), workgroups: grid(rows) }];
}

/** Rows of d: out = (x − mean)/sqrt(var + eps) ⊙ w + b, the variance biased and taken about the mean (two passes). */
export function layerNormPlan(
  x: Slice,
  weight: Slice,
  weightBf16: boolean,
  bias: Slice,
  biasBf16: boolean,
  out: Slice,
  rows: number,
  d: number,
  eps: number,
): KernelDispatch[] {
  const bound = bind(
    [
      { name: 'x', at: x, as: 'f32' },
      { name: 'w', at: weight, as: weightAccess(weightBf16) },
      { name: 'c', at: bias, as: weightAccess(biasBf16) },
      { name: 'o', at: out, as: 'f32', write: true },
    ],
    ['rows', 'd', 'eps'],
  );
  const body = `  var s = 0.0;
  for (var i = lid; i < u.d; i += ${WG}u) { s += x_ld(base + i); }
  let mean = sum(s, lid) / f32(u.d);
  var sq = 0.0;
  for (var i = lid; i < u.d; i += ${WG}u) { let v = x_ld(base + i) - mean; sq += v * v; }
  let inv = 1.0 / sqrt(sum(sq, lid) / f32(u.d) + bitcast<f32>(u.eps));
  for (var i = lid; i < u.d; i += ${WG}u) { o_st(base + i, (x_ld(base + i) - mean) * inv * w_ld(i) + c_ld(i)); }`;
  const wgsl = () => bound.header + SHARED + reduceFn('sum', 'a + b') + rowMain(body);
  return [{ key: `layer-norm:${bound.variant}`, wgsl, buffers: bound.buffers, uniforms: bound.uniforms([rows, d, f32Bits(eps)]), workgroups: grid(rows) }];
}

/** Softmax of rows of d: exp(x − max) / Σ; out may be x. */
export function softmaxPlan(x: Slice, out: Slice, rows: number, d: number): KernelDispatch[] {
  const bound = bind(
    [
      { name: 'x', at: x, as: 'f32' },
      { name: 'o', at: out, as: 'f32', write: true },
    ],
    ['rows', 'd'],
  );
  const body = `  var m = -3.4028234663852886e38;
  for (var i = lid; i < u.d; i += ${WG}u) { m = max(m, x_ld(base + i)); }
  let top = largest(m, lid);
  var s = 0.0;
  for (var i = lid; i < u.d; i += ${WG}u) { let e = exp(x_ld(base + i) - top); o_st(base + i, e); s += e; }
  let inv = 1.0 / sum(s, lid);
  for (var i = lid; i < u.d; i += ${WG}u) { o_st(base + i, o_ld(base + i) * inv); }`;
  const wgsl = () => bound.header + SHARED + reduceFn('sum', 'a + b') + reduceFn('largest', 'max(a, b)') + rowMain(body);
  return [{ key: `softmax:${bound.variant}`, wgsl, buffers: bound.buffers, uniforms: bound.uniforms([rows, d]), workgroups: grid(rows) }];
}
