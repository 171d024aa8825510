// Our WGSL for attention's backward (host-gradients.ts defines it): probabilities recomputed from q and k a block of
// keys or queries at a time, never T×S of them; grouped KV heads and causal offsets as the forward; no atomics.
import type { AttentionOptions } from '../../backend.js';
import type { KernelDispatch, Slice } from '../dispatch.js';
import { type DeviceTraits, dispatch, f32u, grid, type Operand, u32u } from './gradients-common.js';

const WG = 64;

const COMMON = `
fn dotQK(t: u32, h: u32, s: u32, g: u32) -> f32 {
  var a = 0.0;
  for (var d = 0u; d < u.D; d++) { a += ld_q((t * u.Hq + h) * u.D + d) * ld_k((s * u.Hkv + g) * u.D + d); }
  return a * u.scale;
}
fn dotOV(t: u32, h: u32, s: u32, g: u32) -> f32 {
  var a = 0.0;
  for (var d = 0u; d < u.D; d++) { a += ld_dout((t * u.Hq + h) * u.D + d) * ld_v((s * u.Hkv + g) * u.D + d); }
  return a;
}
// Keys query row t sees.
fn visible(t: u32) -> u32 { return select(u.S, min(u.S, u.offset + t + 1u), u.causal != 0u); }
var<workgroup> ra: array<f32, ${WG}>;
var<workgroup> rb: array<f32, ${WG}>;`;

const HEAD = `@compute @workgroup_size(${WG}) fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
    @builtin(local_invocation_index) lid: u32)`;

/**
 * For out = attention(q[T,Hq,D], k, v [S,Hkv,D]): dq, dk, dv written. Three passes: (1) per query row and head, its
 * log-sum-exp and Σ P·dP (= dout·out), parked in the first two elements of that row of dq, which no other pass
 * needs until the last; (2) per key and KV head, dk and dv summed over the group's heads and the query rows in
 * order, 64 (head, row) pairs' probabilities at a time in workgroup memory; (3) per query row and head, dq, 64 keys
 * at a time. Needs D ≥ 2 (for the parked statistics).
 */
export function attentionBackwardPlan(
  t: DeviceTraits,
  o: {
    q: Slice;
    k: Slice;
    v: Slice;
    dout: Slice;
    dq: Slice;
    dk: Slice;
    dv: Slice;
    T: number;
    S: number;
    Hq: number;
    Hkv: number;
    D: number;
    options: AttentionOptions;
  },
): KernelDispatch[] {
  if (o.D < 2) throw new Error(`WebGPU attentionBackward: head dimension ${o.D} is below 2`);
  const offset = o.options.queryOffset ?? o.S - o.T;
  const uniforms = {
    T: u32u(o.T),
    S: u32u(o.S),
    Hq: u32u(o.Hq),
    Hkv: u32u(o.Hkv),
    D: u32u(o.D),
    group: u32u(o.Hq / o.Hkv),
    offset: u32u(offset),
    causal: u32u(o.options.causal ? 1 : 0),
    scale: f32u(o.options.scale),
  };
  const inputs: Operand[] = [
    { name: 'q', slice: o.q, elem: 'f32' },
    { name: 'k', slice: o.k, elem: 'f32' },
    { name: 'v', slice: o.v, elem: 'f32' },
    { name: 'dout', slice: o.dout, elem: 'f32' },
  ];
  const per = Math.ceil(o.D / WG);
  const tree = (combine: string) => `
  workgroupBarrier();
  for (var w = ${WG / 2}u; w > 0u; w >>= 1u) {
    if (lid < w) { ${combine} }
    workgroupBarrier();
  }`;
  const stats = dispatch(t, {
    op: 'attentionBackward.stats',
    operands: [...inputs, { name: 'dq', slice: o.dq, elem: 'f32', write: true }],
    uniforms,
    body: `${COMMON}
${HEAD} {
  let row = item(wg, nwg);
  if (row >= u.T * u.Hq) { return; }
  let tq = row / u.Hq;
  let h = row % u.Hq;
  let g = h / u.group;
  let n = visible(tq);
  var m = -3.0e38;
  var s = 0.0;
  for (var j = lid; j < n; j += ${WG}u) {
    let l = dotQK(tq, h, j, g);
    if (l > m) { s = s * exp(m - l) + 1.0; m = l; } else { s += exp(l - m); }
  }
  ra[lid] = m;
  rb[lid] = s;
  ${tree('let m2 = max(ra[lid], ra[lid + w]); rb[lid] = rb[lid] * exp(ra[lid] - m2) + rb[lid + w] * exp(ra[lid + w] - m2); ra[lid] = m2;')}
  let lse = ra[0] + log(rb[0]);
  workgroupBarrier();
  var pdp = 0.0;
  for (var j = lid; j < n; j += ${WG}u) { pdp += exp(dotQK(tq, h, j, g) - lse) * dotOV(tq, h, j, g); }
  ra[lid] = pdp;
  ${tree('ra[lid] += ra[lid + w];')}
  if (lid == 0u) {
    st_dq(row * u.D, lse);
    st_dq(row * u.D + 1u, ra[0]);
  }
}`,
    workgroups: grid(t, o.T * o.Hq),
  });
  const parked: Operand = { name: 'dq', slice: o.dq, elem: 'f32' };
  const kv = dispatch(t, {
    op: 'attentionBackward.dkdv',
    variant: `per${per}`,
    operands: [...inputs, parked, { name: 'dk', slice: o.dk, elem: 'f32', write: true }, { name: 'dv', slice: o.dv, elem: 'f32', write: true }],
    uniforms,
    body: `${COMMON}
var<workgroup> pair: array<u32, ${WG}>;
${HEAD} {
  let key = item(wg, nwg);
  if (key >= u.S * u.Hkv) { return; }
  let j = key / u.Hkv;
  let g = key % u.Hkv;
  var ak: array<f32, ${per}>;
  var av: array<f32, ${per}>;
  let pairs = u.group * u.T;
  for (var e0 = 0u; e0 < pairs; e0 += ${WG}u) {
    let e = e0 + lid;
    var p = 0.0;
    var ds = 0.0;
    var row = 0u;
    if (e < pairs) {
      let h = g * u.group + e / u.T;
      let tq = e % u.T;
      row = tq * u.Hq + h;
      if (j < visible(tq)) {
        p = exp(dotQK(tq, h, j, g) - ld_dq(row * u.D));
        ds = p * (dotOV(tq, h, j, g) - ld_dq(row * u.D + 1u)) * u.scale;
      }
    }
    ra[lid] = p;
    rb[lid] = ds;
    pair[lid] = row;
    workgroupBarrier();
    let count = min(${WG}u, pairs - e0);
    for (var c = 0u; c < ${per}u; c++) {
      let d = lid + c * ${WG}u;
      if (d < u.D) {
        var sk = ak[c];
        var sv = av[c];
        for (var x = 0u; x < count; x++) {
          let at = pair[x] * u.D + d;
          sk += rb[x] * ld_q(at);
          sv += ra[x] * ld_dout(at);
        }
        ak[c] = sk;
        av[c] = sv;
      }
    }
    workgroupBarrier();
  }
  for (var c = 0u; c < ${per}u; c++) {
    let d = lid + c * ${WG}u;
    if (d < u.D) {
      st_dk(key * u.D + d, ak[c]);
      st_dv(key * u.D + d, av[c]);
    }
  }
}`,
    workgroups: grid(t, o.S * o.Hkv),
  });
  const dq = dispatch(t, {
    op: 'attentionBackward.dq',
    variant: `per${per}`,
    operands: [...inputs, { name: 'dq', slice: o.dq, elem: 'f32', write: true }],
    uniforms,
    body: `${COMMON}
${HEAD} {
  let row = item(wg, nwg);
  if (row >= u.T * u.Hq) { return; }
  let tq = row / u.Hq;
  let h = row % u.Hq;
  let g = h / u.group;
  let n = visible(tq);
  let lse = ld_dq(row * u.D);
  let pdp = ld_dq(row * u.D + 1u);
  // Everyone has read the parked statistics before anyone overwrites them.
  workgroupBarrier();
  var acc: array<f32, ${per}>;
  for (var j0 = 0u; j0 < n; j0 += ${WG}u) {
    let j = j0 + lid;
    var ds = 0.0;
    if (j < n) { ds = exp(dotQK(tq, h, j, g) - lse) * (dotOV(tq, h, j, g) - pdp) * u.scale; }
    ra[lid] = ds;
    workgroupBarrier();
    let count = min(${WG}u, n - j0);
    for (var c = 0u; c < ${per}u; c++) {
      let d = lid + c * ${WG}u;
      if (d < u.D) {
        var s = acc[c];
        for (var x = 0u; x < count; x++) { s += ra[x] * ld_k(((j0 + x) * u.Hkv + g) * u.D + d); }
        acc[c] = s;
      }
    }
    workgroupBarrier();
  }
  for (var c = 0u; c < ${per}u; c++) {
    let d = lid + c * ${WG}u;
    if (d < u.D) { st_dq(row * u.D + d, acc[c]); }
  }
}`,
    workgroups: grid(t, o.T * o.Hq),
  });
  return [stats, kv, dq];
}
