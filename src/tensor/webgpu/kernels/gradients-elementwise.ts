// Our WGSL for the elementwise backward ops, the embedding's scatter and AdamW: their numerics are defined by
// host-gradients.ts, and AdamW must give that definition's bits, which no generic kernel promises.
import type { AdamWHyper } from '../../backend.js';
import { adamwScalars } from '../../host-gradients.js';
import type { KernelDispatch, Slice } from '../dispatch.js';
import { type DeviceTraits, dispatch, f32u, grid, type Operand, u32u, type UniformValue } from './gradients-common.js';

const WG = 256;

/** One invocation per element i < u.n (wrapped in a grid of WG-wide workgroups). */
const elementwise = (body: string) => `
@compute @workgroup_size(${WG}) fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
    @builtin(local_invocation_index) lid: u32) {
  let i = item(wg, nwg) * ${WG}u + lid;
  if (i >= u.n) { return; }
${body}
}`;

/**
 * The one dispatch of an elementwise op over n elements, all its operands f32: `reads`, then `writes`, named as the
 * body's accessors name them; `helpers` is WGSL the body calls.
 */
function elementwisePlan(
  t: DeviceTraits,
  o: {
    op: string;
    variant?: string;
    reads: Record<string, Slice>;
    writes: Record<string, Slice>;
    n: number;
    uniforms?: Record<string, UniformValue>;
    helpers?: string;
    body: string;
  },
): KernelDispatch[] {
  const operands = (slices: Record<string, Slice>, write: boolean): Operand[] =>
    Object.entries(slices).map(([name, slice]) => ({ name, slice, elem: 'f32', write }));
  return [
    dispatch(t, {
      op: o.op,
      variant: o.variant,
      operands: [...operands(o.reads, false), ...operands(o.writes, true)],
      uniforms: { n: u32u(o.n), ...o.uniforms },
      body: `${o.helpers ?? ''}${elementwise(o.body)}`,
      workgroups: grid(t, Math.ceil(o.n / WG)),
    }),
  ];
}

/**
 * An f32 fused multiply-add rounded once, from f32 operations alone: WGSL's `fma` may round twice (Vulkan lets it;
 * lavapipe does), and a compiler may contract a product into the add after it (SPIR-V allows it unless
 * NoContraction, which WGSL cannot ask for). So every product and sum goes through `keep`, an xor with a uniform
 * zero the compiler cannot see through, and the fused result is built as Boldo and Melquiond's emulated FMA: the
 * exact product (Dekker's split), an exact sum with c, the two error terms added rounding to odd, one final rounding.
 * That needs the product's error term to be a normal number: a product below 2^-60 changes nothing beside a c of
 * 2^-30 or more, and is otherwise computed scaled by 2^64, then rounded onto the subnormal grid from the scaled
 * result's significand and the sign of what its rounding left out, so subnormal results are exact too (on a device
 * that keeps subnormals). Operands above 2^115 are out of its range. Needs a uniform u32 `u.zero` holding 0.
 */
export const FMA32_WGSL = `
fn keep(x: f32) -> f32 { return bitcast<f32>(bitcast<u32>(x) ^ u.zero); }
fn twoSum(a: f32, b: f32) -> vec2f {
  let s = keep(a + b);
  let bb = keep(s - a);
  return vec2f(s, keep(keep(a - keep(s - bb)) + keep(b - bb)));
}
fn split(a: f32) -> vec2f {
  let c = keep(4097.0 * a);
  let hi = keep(c - keep(c - a));
  return vec2f(hi, keep(a - hi));
}
fn twoProd(a: f32, b: f32) -> vec2f {
  let p = keep(a * b);
  let x = split(a);
  let y = split(b);
  let e = keep(keep(keep(keep(x.x * y.x) - p) + keep(x.x * y.y)) + keep(x.y * y.x));
  return vec2f(p, keep(e + keep(x.y * y.y)));
}
// (a·b + c rounded once, then two terms whose sum has the sign of what that rounding left out: the first, when not
// zero, outweighs the second).
fn fmaParts(a: f32, b: f32, c: f32) -> vec3f {
  let u = twoProd(a, b);
  let t = twoSum(c, u.x);
  let w = twoSum(t.y, u.y);
  var v = w.x;
  let bits = bitcast<u32>(v);
  // Round to odd: an inexact sum that rounded to an even significand moves one ulp towards the exact value.
  if (w.y != 0.0 && (bits & 1u) == 0u) { v = bitcast<f32>(select(bits - 1u, bits + 1u, (w.y > 0.0) == (v > 0.0))); }
  let r = twoSum(t.x, v);
  return vec3f(r.x, r.y, keep(keep(w.x - v) + w.y));
}
// The result of fmaParts computed 2^64 larger, scaled back: below 2^-126 it is rounded to a multiple of 2^-149
// directly (scaling the rounded value would round twice).
fn unscale(p: vec3f) -> f32 {
  let mag = abs(p.x);
  if (mag >= 0x1p-62f) { return keep(p.x * 0x1p-64f); }
  let neg = p.x < 0.0;
  let sgn = select(0u, 0x80000000u, neg);
  // Below half a step, and not a tie (2^-86 is representable, so a value above it would not round below it).
  if (mag < 0x1p-86f) { return bitcast<f32>(sgn); }
  var rest = select(p.z, p.y, p.y != 0.0);
  if (neg) { rest = -rest; }
  let bits = bitcast<u32>(mag);
  let k = 65u - (bits >> 23u);
  let sig = (bits & 0x7fffffu) | 0x800000u;
  let low = sig & ((1u << k) - 1u);
  let half = 1u << (k - 1u);
  let q = sig >> k;
  let up = low > half || (low == half && (rest > 0.0 || (rest == 0.0 && (q & 1u) == 1u)));
  return bitcast<f32>((q + select(0u, 1u, up)) | sgn);
}
fn fma32(a: f32, b: f32, c: f32) -> f32 {
  let p = abs(keep(a * b));
  if (p >= 0x1p-60f) { return fmaParts(a, b, c).x; }
  if (abs(c) >= 0x1p-30f) { return c; }
  return unscale(fmaParts(a * 0x1p32f, b * 0x1p32f, c * 0x1p64f));
}`;

/**
 * Division and square root rounded to nearest even, whatever the device's own (Vulkan allows 2.5 ulp for division
 * and more for sqrt): its result is stepped to a neighbour while the exact remainder (fma32) says the true value lies
 * beyond the midpoint on that side. Operands are first scaled by powers of two into [1, 2) (or [1, 4) for sqrt),
 * which changes no rounding; normal results only (others keep the device's value). Needs FMA32_WGSL.
 */
export const DIV_SQRT_WGSL = `
fn pow2(k: i32) -> f32 { return bitcast<f32>(u32(k + 127) << 23u); }
fn up1(x: f32) -> f32 { return bitcast<f32>(bitcast<u32>(x) + 1u); }
fn down1(x: f32) -> f32 { return bitcast<f32>(bitcast<u32>(x) - 1u); }
// RN(a/b) for a in [1, 2) and b within 2^±100, from a start q within a few ulps.
fn divFix(a: f32, b: f32, start: f32) -> f32 {
  var q = start;
  for (var i = 0u; i < 6u; i++) {
    let r = fma32(-q, b, a);
    let hu = keep(keep(up1(q) - q) * b) * 0.5;
    let hd = keep(keep(q - down1(q)) * b) * 0.5;
    let odd = (bitcast<u32>(q) & 1u) == 1u;
    if (r > hu || (r == hu && odd)) { q = up1(q); } else if (r < -hd || (r == -hd && odd)) { q = down1(q); } else { break; }
  }
  return q;
}
fn divRN(a: f32, b: f32) -> f32 {
  let q0 = keep(a / b);
  let A = abs(a);
  let B = abs(b);
  if (!(A >= 0x1p-126f && A <= 0x1p126f && B >= 0x1p-100f && B <= 0x1p100f)) { return q0; }
  let e = i32(bitcast<u32>(A) >> 23u) - 127;
  let As = keep(A * pow2(-e));
  let q = keep(divFix(As, B, keep(As / B)) * pow2(e));
  if (!(q >= 0x1p-126f && q <= 0x1p126f)) { return q0; }
  return select(q, -q, (a < 0.0) != (b < 0.0));
}
// RN(√x) for x in [1, 4), from a start s within a few ulps: step up while x > (s + ulp/2)², which on the grid of
// s² is r = x − s² > s·ulp; step down while x < (s − ulp/2)², r ≤ −s·ulp (the ulp below s).
fn sqrtFix(x: f32, start: f32) -> f32 {
  var s = start;
  for (var i = 0u; i < 6u; i++) {
    let r = fma32(-s, s, x);
    if (r > keep(keep(up1(s) - s) * s)) { s = up1(s); } else if (r <= -keep(keep(s - down1(s)) * s)) { s = down1(s); } else { break; }
  }
  return s;
}
fn sqrtRN(x: f32) -> f32 {
  if (!(x >= 0x1p-126f && x <= 0x1p126f)) { return sqrt(x); }
  let k = (i32(bitcast<u32>(x) >> 23u) - 127) >> 1u;
  let xs = keep(x * pow2(-2 * k));
  return keep(sqrtFix(xs, keep(sqrt(xs))) * pow2(k));
}`;

/**
 * AdamW in the float32 arithmetic of host-gradients.ts `adamw`, bit for bit: its two single-rounding moment updates
 * through `fma32`, every other product kept apart from the add after it, division and sqrt correctly rounded by
 * `divRN` and `sqrtRN`. The device must keep subnormals for subnormal moments to match (lavapipe does);
 * test/webgpu-gradients.test.ts checks the bits.
 */
export function adamwPlan(
  t: DeviceTraits,
  o: { p: Slice; g: Slice; m: Slice; v: Slice; n: number; step: number; hyper: AdamWHyper },
): KernelDispatch[] {
  const s = adamwScalars(o.step, o.hyper);
  return elementwisePlan(t, {
    op: 'adamw',
    reads: { g: o.g },
    writes: { p: o.p, m: o.m, v: o.v },
    n: o.n,
    uniforms: {
      zero: u32u(0),
      decay: f32u(s.decay),
      w1: f32u(s.w1),
      b2: f32u(s.b2),
      w2: f32u(s.w2),
      stepSize: f32u(s.stepSize),
      bc2Sqrt: f32u(s.bc2Sqrt),
      eps: f32u(s.eps),
    },
    helpers: `${FMA32_WGSL}
${DIV_SQRT_WGSL}
`,
    body: `
  let gi = ld_g(i);
  let m0 = ld_m(i);
  let v0 = ld_v(i);
  let pi = keep(ld_p(i) * u.decay);
  let mi = fma32(u.w1, keep(gi - m0), m0);
  let vi = fma32(keep(u.w2 * gi), gi, keep(v0 * u.b2));
  let denom = keep(divRN(sqrtRN(vi), u.bc2Sqrt)) + u.eps;
  st_p(i, pi + keep(divRN(keep(u.stepSize * mi), denom)));
  st_m(i, mi);
  st_v(i, vi);`,
  });
}

/**
 * erf in f32 (WGSL has none): Abramowitz–Stegun 7.1.26 is too coarse (1.5e-7 absolute, but its relative error near 0
 * is large), so a Taylor series below 2 and the complement's continued fraction above, as math.ts does in f64.
 */
const ERF_WGSL = `
fn erf32(x: f32) -> f32 {
  let ax = abs(x);
  if (ax < 2.0) {
    let x2 = ax * ax;
    var term = ax;
    var sum = ax;
    for (var n = 1u; n < 40u; n++) {
      term = term * (-x2 / f32(n));
      sum += term / f32(2u * n + 1u);
    }
    return sign(x) * 1.1283791670955126 * sum;
  }
  if (ax > 6.0) { return sign(x); }
  var f = ax;
  for (var k = 40u; k >= 1u; k--) { f = ax + (f32(k) * 0.5) / f; }
  return sign(x) * (1.0 - exp(-ax * ax) * 0.5641895835477563 / f);
}`;

/** dx = dy · gelu'(x); dx may be dy or x (each element is read before it is written). */
export function geluBackwardPlan(t: DeviceTraits, o: { dy: Slice; x: Slice; dx: Slice; n: number; approximation: 'tanh' | 'erf' }): KernelDispatch[] {
  const slope =
    o.approximation === 'tanh'
      ? `let c = 0.7978845608028654;
  let th = tanh(c * (u0 + 0.044715 * u0 * u0 * u0));
  let slope = 0.5 * (1.0 + th) + 0.5 * u0 * (1.0 - th * th) * c * (1.0 + 3.0 * 0.044715 * u0 * u0);`
      : `let slope = 0.5 * (1.0 + erf32(u0 * 0.7071067811865476)) + u0 * exp(-0.5 * u0 * u0) * 0.3989422804014327;`;
  return elementwisePlan(t, {
    op: 'geluBackward',
    variant: o.approximation,
    reads: { dy: o.dy, x: o.x },
    writes: { dx: o.dx },
    n: o.n,
    helpers: o.approximation === 'erf' ? `${ERF_WGSL}\n` : '\n',
    body: `
  let u0 = ld_x(i);
  let g = ld_dy(i);
  ${slope}
  st_dx(i, g * slope);`,
  });
}

/** For out = silu(gate) ⊙ up: dgate and dup written; each may be dy, gate or up itself. */
export function siluMulBackwardPlan(
  t: DeviceTraits,
  o: { dy: Slice; gate: Slice; up: Slice; dgate: Slice; dup: Slice; n: number },
): KernelDispatch[] {
  return elementwisePlan(t, {
    op: 'siluMulBackward',
    reads: { dy: o.dy, gate: o.gate, up: o.up },
    writes: { dgate: o.dgate, dup: o.dup },
    n: o.n,
    body: `
  let g = ld_dy(i);
  let a = ld_gate(i);
  let up = ld_up(i);
  let s = 1.0 / (1.0 + exp(-a));
  st_dup(i, g * a * s);
  st_dgate(i, g * up * s * (1.0 + a * (1.0 - s)));`,
  });
}

/** dy[T,H,D] rotated back by −θ (half-split layout); dx may be dy. One invocation per (t, h, j < D/2) pair. */
export function ropeBackwardPlan(
  t: DeviceTraits,
  o: { dy: Slice; cos: Slice; sin: Slice; dx: Slice; T: number; H: number; D: number },
): KernelDispatch[] {
  const half = o.D / 2;
  const n = o.T * o.H * half;
  return elementwisePlan(t, {
    op: 'ropeBackward',
    reads: { dy: o.dy, cos: o.cos, sin: o.sin },
    writes: { dx: o.dx },
    n,
    uniforms: { H: u32u(o.H), half: u32u(half) },
    body: `
  let j = i % u.half;
  let th = i / u.half;
  let tk = th / u.H;
  let base = th * 2u * u.half + j;
  let g1 = ld_dy(base);
  let g2 = ld_dy(base + u.half);
  let c = ld_cos(tk * u.half + j);
  let s = ld_sin(tk * u.half + j);
  st_dx(base, g1 * c + g2 * s);
  st_dx(base + u.half, g2 * c - g1 * s);`,
  });
}

/** dy[rows, C] → dx[rows·m², C]: each row of a block gets dy / m² (exact: m² is a power of two). */
export function mergeBlocksBackwardPlan(t: DeviceTraits, o: { dy: Slice; dx: Slice; rows: number; C: number; mergeSize: number }): KernelDispatch[] {
  const group = o.mergeSize * o.mergeSize;
  const n = o.rows * group * o.C;
  return elementwisePlan(t, {
    op: 'mergeBlocksBackward',
    reads: { dy: o.dy },
    writes: { dx: o.dx },
    n,
    uniforms: { C: u32u(o.C), group: u32u(group), inv: f32u(1 / group) },
    body: `
  let c = i % u.C;
  let r = i / u.C / u.group;
  st_dx(i, ld_dy(r * u.C + c) * u.inv);`,
  });
}

/**
 * dtable[ids[t]] += dy[t] without float atomics: one workgroup per position t, which does the work only when t is
 * the first position holding its id, adding every later position's row in order. The sums are then the reference's
 * own sequence of f32 additions, so the result is bit-exact and independent of scheduling. A table split by rows
 * across buffers runs as one plan per piece: `dtable` holds rows [rowStart, rowStart + rows), other ids are skipped.
 */
export function embeddingBackwardPlan(
  t: DeviceTraits,
  o: { dy: Slice; ids: Slice; dtable: Slice; T: number; D: number; rowStart?: number; rows?: number },
): KernelDispatch[] {
  return [
    dispatch(t, {
      op: 'embeddingBackward',
      operands: [
        { name: 'dy', slice: o.dy, elem: 'f32' },
        { name: 'ids', slice: o.ids, elem: 'i32' },
        { name: 'dtable', slice: o.dtable, elem: 'f32', write: true },
      ],
      uniforms: { T: u32u(o.T), D: u32u(o.D), rowStart: u32u(o.rowStart ?? 0), rows: u32u(o.rows ?? 0xffffffff) },
      body: `
// Every writer stores the same 1, so the unsynchronised stores cannot disagree.
var<workgroup> seen: u32;
@compute @workgroup_size(64) fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
    @builtin(local_invocation_index) lid: u32) {
  let tk = item(wg, nwg);
  if (tk >= u.T) { return; }
  let id = ld_ids(tk);
  // An id of another piece is skipped like a repeat (its value is not uniform, so the decision goes through \`seen\`).
  if (u32(id) < u.rowStart || u32(id) - u.rowStart >= u.rows) { seen = 1u; }
  for (var s = lid; s < tk; s += 64u) {
    if (ld_ids(s) == id) { seen = 1u; }
  }
  if (workgroupUniformLoad(&seen) != 0u) { return; }
  let row = (u32(id) - u.rowStart) * u.D;
  // Ids are scanned once; each match adds its row, every element by the one invocation that owns it.
  for (var s = tk; s < u.T; s++) {
    if (ld_ids(s) == id) {
      for (var d = lid; d < u.D; d += 64u) { add_dtable(row + d, ld_dy(s * u.D + d)); }
    }
  }
}`,
      workgroups: grid(t, o.T),
    }),
  ];
}
