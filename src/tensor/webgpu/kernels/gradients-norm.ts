// Our WGSL for the norms' backward passes (RMSNorm, LayerNorm) as host-gradients.ts defines them, deterministic:
// reductions in a fixed tree, the parameter gradients summed over rows in row order.
import type { KernelDispatch, Slice } from '../dispatch.js';
import { type DeviceTraits, dispatch, f32u, grid, type Operand, u32u } from './gradients-common.js';

const WG = 256;

/**
 * A row's statistics, computed cooperatively by the workgroup in a fixed order (invocation `lid` sums elements
 * lid, lid + WG, …; then a tree): the row pass and the column pass share this code, so both see the same bits of
 * 1/rms (or the mean and 1/σ).
 */
const STATS = (layer: boolean) => `
var<workgroup> red: array<f32, ${WG}>;
fn total(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}
// (mean, 1/rms or 1/σ) of row \`base\`.
fn stats(base: u32, lid: u32) -> vec2f {
  let D = f32(u.D);
${
  layer
    ? `  var s = 0.0;
  for (var i = lid; i < u.D; i += ${WG}u) { s += ld_x(base + i); }
  let mean = total(s, lid) / D;
  var q = 0.0;
  for (var i = lid; i < u.D; i += ${WG}u) { let c = ld_x(base + i) - mean; q += c * c; }
  return vec2f(mean, 1.0 / sqrt(total(q, lid) / D + u.eps));`
    : `  var q = 0.0;
  for (var i = lid; i < u.D; i += ${WG}u) { let v = ld_x(base + i); q += v * v; }
  return vec2f(0.0, 1.0 / sqrt(total(q, lid) / D + u.eps));`
}
}`;

/** The operands both norms' backward passes share (x and dy are rows × cols). */
export interface NormBackwardOperands {
  dy: Slice;
  x: Slice;
  weight: Slice;
  weightType: 'f32' | 'bf16';
  eps: number;
  dx: Slice;
  dweight: Slice | null;
  rows: number;
  cols: number;
}

const HEAD = `@compute @workgroup_size(${WG}) fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
    @builtin(local_invocation_index) lid: u32)`;

function normBackward(
  t: DeviceTraits,
  layer: boolean,
  o: NormBackwardOperands & { dbias: Slice | null },
): KernelDispatch[] {
  const op = layer ? 'layerNormBackward' : 'rmsNormBackward';
  const uniforms = { rows: u32u(o.rows), D: u32u(o.cols), eps: f32u(o.eps) };
  const dy: Operand = { name: 'dy', slice: o.dy, elem: 'f32' };
  const x: Operand = { name: 'x', slice: o.x, elem: 'f32' };
  const plans: KernelDispatch[] = [];
  // Parameter gradients first: dx may be dy itself and is written last.
  if (o.dweight || o.dbias) {
    const operands: Operand[] = [dy, x];
    if (o.dweight) operands.push({ name: 'dweight', slice: o.dweight, elem: 'f32', write: true });
    if (o.dbias) operands.push({ name: 'dbias', slice: o.dbias, elem: 'f32', write: true });
    plans.push(
      dispatch(t, {
        op: `${op}.params`,
        variant: `${o.dweight ? 'w' : ''}${o.dbias ? 'b' : ''}`,
        operands,
        uniforms,
        body: `${STATS(layer)}
${HEAD} {
  let c = item(wg, nwg) * ${WG}u + lid;
  var dw = 0.0;
  var db = 0.0;
  for (var r = 0u; r < u.rows; r++) {
    let st = stats(r * u.D, lid);
    if (c < u.D) {
      let g = ld_dy(r * u.D + c);
      dw += g * ((ld_x(r * u.D + c) - st.x) * st.y);
      db += g;
    }
  }
  if (c < u.D) {
    ${o.dweight ? 'add_dweight(c, dw);' : ''}
    ${o.dbias ? 'add_dbias(c, db);' : ''}
  }
}`,
        workgroups: grid(t, Math.ceil(o.cols / WG)),
      }),
    );
  }
  const rowBody = layer
    ? `  var a = 0.0;
  var b = 0.0;
  for (var i = lid; i < u.D; i += ${WG}u) {
    let dn = ld_dy(base + i) * ld_weight(i);
    a += dn;
    b += dn * ((ld_x(base + i) - st.x) * st.y);
  }
  let dnMean = total(a, lid) / D;
  let dnDot = total(b, lid) / D;
  for (var i = lid; i < u.D; i += ${WG}u) {
    let n = (ld_x(base + i) - st.x) * st.y;
    st_dx(base + i, st.y * (ld_dy(base + i) * ld_weight(i) - dnMean - n * dnDot));
  }`
    : `  var a = 0.0;
  for (var i = lid; i < u.D; i += ${WG}u) { a += ld_dy(base + i) * ld_weight(i) * ld_x(base + i) * st.y; }
  let mean = total(a, lid) / D;
  for (var i = lid; i < u.D; i += ${WG}u) {
    let n = ld_x(base + i) * st.y;
    st_dx(base + i, st.y * (ld_dy(base + i) * ld_weight(i) - n * mean));
  }`;
  plans.push(
    dispatch(t, {
      op: `${op}.dx`,
      operands: [dy, x, { name: 'weight', slice: o.weight, elem: o.weightType }, { name: 'dx', slice: o.dx, elem: 'f32', write: true }],
      uniforms,
      body: `${STATS(layer)}
${HEAD} {
  let row = item(wg, nwg);
  if (row >= u.rows) { return; }
  let base = row * u.D;
  let D = f32(u.D);
  let st = stats(base, lid);
${rowBody}
}`,
      workgroups: grid(t, o.rows),
    }),
  );
  return plans;
}

/** For out = rmsNorm(x)·weight over rows of `cols`: dx written (dx may be dy), dweight added to. */
export function rmsNormBackwardPlan(
  t: DeviceTraits,
  o: NormBackwardOperands,
): KernelDispatch[] {
  return normBackward(t, false, { ...o, dbias: null });
}

/** For out = layerNorm(x)·weight + bias over rows of `cols`: dx written (dx may be dy), dweight and dbias added to. */
export function layerNormBackwardPlan(
  t: DeviceTraits,
  o: NormBackwardOperands & { dbias: Slice | null },
): KernelDispatch[] {
  return normBackward(t, true, o);
}
