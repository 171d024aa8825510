// Our WGSL for attention's backward (host-gradients.ts defines it): probabilities recomputed from q and k a 16×16
// tile at a time, never T×S of them; grouped KV heads and causal offsets as the forward; no atomics.
import type { AttentionOptions } from '../../backend.js';
import type { KernelDispatch, Slice } from '../dispatch.js';
import { type DeviceTraits, dispatch, f32u, grid, type Operand, u32u } from './gradients-common.js';

/** Query rows and keys per tile (a 16×16 workgroup holds one score per invocation), and head dimensions staged at once. */
const B = 16;
const DC = 32;

const COMMON = `
// Keys query row t sees.
fn visible(t: u32) -> u32 { return select(u.S, min(u.S, u.offset + t + 1u), u.causal != 0u); }
var<workgroup> Qs: array<f32, ${B * DC}>;
var<workgroup> Os: array<f32, ${B * DC}>;
var<workgroup> Ks: array<f32, ${B * DC}>;
var<workgroup> Vs: array<f32, ${B * DC}>;
// (scaled score, dP) of query row t0 + lid/16 (head h) against key j0 + lid%16 (KV head g), from q, dout, k and v
// staged ${DC} dimensions at a time; both summed over d in order, so every pass sees the same bits. Out-of-range rows
// and keys read zeros.
fn tile(t0: u32, h: u32, j0: u32, g: u32, lid: u32) -> vec2f {
  let r = lid / ${B}u;
  let c = lid % ${B}u;
  var s = 0.0;
  var dp = 0.0;
  for (var d0 = 0u; d0 < u.D; d0 += ${DC}u) {
    for (var e = lid; e < ${B * DC}u; e += ${B * B}u) {
      let row = e / ${DC}u;
      let d = d0 + e % ${DC}u;
      let tq = t0 + row;
      let j = j0 + row;
      var qv = 0.0;
      var ov = 0.0;
      var kv = 0.0;
      var vv = 0.0;
      if (d < u.D && tq < u.T) {
        qv = ld_q((tq * u.Hq + h) * u.D + d);
        ov = ld_dout((tq * u.Hq + h) * u.D + d);
      }
      if (d < u.D && j < u.S) {
        kv = ld_k((j * u.Hkv + g) * u.D + d);
        vv = ld_v((j * u.Hkv + g) * u.D + d);
      }
      Qs[e] = qv;
      Os[e] = ov;
      Ks[e] = kv;
      Vs[e] = vv;
    }
    workgroupBarrier();
    let n = min(${DC}u, u.D - d0);
    for (var d = 0u; d < n; d++) {
      s += Qs[r * ${DC}u + d] * Ks[c * ${DC}u + d];
      dp += Os[r * ${DC}u + d] * Vs[c * ${DC}u + d];
    }
    workgroupBarrier();
  }
  return vec2f(s * u.scale, dp);
}
fn valid(tq: u32, j: u32) -> bool { return tq < u.T && j < visible(tq); }`;

const HEAD = `@compute @workgroup_size(${B * B}) fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
    @builtin(local_invocation_index) lid: u32)`;

/** Passes (1) and (3): a workgroup per query block of B rows and query head h (of KV head g), from row t0. */
const QUERY_BLOCK = `${HEAD} {
  let blk = item(wg, nwg);
  if (blk >= u.blocks) { return; }
  let h = blk % u.Hq;
  let g = h / u.group;
  let t0 = (blk / u.Hq) * ${B}u;`;

/**
 * For out = attention(q[T,Hq,D], k, v [S,Hkv,D]): dq, dk, dv written, flash-style: scores and dP of 16 query rows
 * against 16 keys at a time, never more. Three passes: (1) per 16-row query block and head, each row's log-sum-exp and
 * Σ P·dP (= dout·out), online over key blocks, parked in the first two elements of that row of dq until the last
 * pass; (2) per 16-key block and KV head, dk and dv summed over the group's heads and the query rows in order; (3) per
 * query block and head, dq over the key blocks in order. Needs D ≥ 2 (for the parked statistics).
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
  // Head dimensions each invocation accumulates (16 lanes share a row or key), baked in as accumulator sizes.
  const per = Math.ceil(o.D / B);
  const queryBlocks = Math.ceil(o.T / B) * o.Hq;
  // Passes (1) and (3) read the same operands and write dq (the parked statistics, then the gradient).
  const perQueryBlock = {
    operands: [...inputs, { name: 'dq', slice: o.dq, elem: 'f32', write: true } as const],
    uniforms: { ...uniforms, blocks: u32u(queryBlocks) },
  };
  const stats = dispatch(t, {
    op: 'attentionBackward.stats',
    ...perQueryBlock,
    body: `${COMMON}
var<workgroup> Ms: array<f32, ${B * B}>;
var<workgroup> Ss: array<f32, ${B * B}>;
var<workgroup> As: array<f32, ${B * B}>;
${QUERY_BLOCK}
  let c = lid % ${B}u;
  let tq = t0 + lid / ${B}u;
  let keys = visible(min(t0 + ${B - 1}u, u.T - 1u));
  var m = -3.0e38;
  var s = 0.0;
  var a = 0.0;
  for (var j0 = 0u; j0 < keys; j0 += ${B}u) {
    let sd = tile(t0, h, j0, g, lid);
    if (valid(tq, j0 + c)) {
      if (sd.x > m) {
        let f = exp(m - sd.x);
        s = s * f + 1.0;
        a = a * f + sd.y;
        m = sd.x;
      } else {
        let e = exp(sd.x - m);
        s += e;
        a += e * sd.y;
      }
    }
  }
  Ms[lid] = m;
  Ss[lid] = s;
  As[lid] = a;
  workgroupBarrier();
  for (var w = ${B / 2}u; w > 0u; w >>= 1u) {
    if (c < w) {
      let top = max(Ms[lid], Ms[lid + w]);
      let f1 = exp(Ms[lid] - top);
      let f2 = exp(Ms[lid + w] - top);
      Ss[lid] = Ss[lid] * f1 + Ss[lid + w] * f2;
      As[lid] = As[lid] * f1 + As[lid + w] * f2;
      Ms[lid] = top;
    }
    workgroupBarrier();
  }
  if (c == 0u && tq < u.T) {
    let row = (tq * u.Hq + h) * u.D;
    st_dq(row, Ms[lid] + log(Ss[lid]));
    st_dq(row + 1u, As[lid] / Ss[lid]);
  }
}`,
    workgroups: grid(t, queryBlocks),
  });
  const keyBlocks = Math.ceil(o.S / B) * o.Hkv;
  const kv = dispatch(t, {
    op: 'attentionBackward.dkdv',
    variant: `per${per}`,
    operands: [
      ...inputs,
      { name: 'dq', slice: o.dq, elem: 'f32' },
      { name: 'dk', slice: o.dk, elem: 'f32', write: true },
      { name: 'dv', slice: o.dv, elem: 'f32', write: true },
    ],
    uniforms: { ...uniforms, blocks: u32u(keyBlocks) },
    body: `${COMMON}
var<workgroup> Ps: array<f32, ${B * B}>;
var<workgroup> Ds: array<f32, ${B * B}>;
${HEAD} {
  let blk = item(wg, nwg);
  if (blk >= u.blocks) { return; }
  let g = blk % u.Hkv;
  let j0 = (blk / u.Hkv) * ${B}u;
  let r = lid / ${B}u;
  let c = lid % ${B}u;
  // Accumulation: invocation (key, lane) owns dk and dv of key j0 + key at dimensions lane, lane + 16, …
  let key = lid / ${B}u;
  let lane = lid % ${B}u;
  var ak: array<f32, ${per}>;
  var av: array<f32, ${per}>;
  // The first query row that sees key j0.
  let first = select(0u, select(0u, j0 - u.offset, j0 > u.offset), u.causal != 0u);
  for (var hh = 0u; hh < u.group; hh++) {
    let h = g * u.group + hh;
    for (var t0 = (first / ${B}u) * ${B}u; t0 < u.T; t0 += ${B}u) {
      let sd = tile(t0, h, j0, g, lid);
      let tq = t0 + r;
      var p = 0.0;
      var ds = 0.0;
      if (valid(tq, j0 + c)) {
        let row = (tq * u.Hq + h) * u.D;
        p = exp(sd.x - ld_dq(row));
        ds = p * (sd.y - ld_dq(row + 1u)) * u.scale;
      }
      Ps[lid] = p;
      Ds[lid] = ds;
      workgroupBarrier();
      let rows = min(${B}u, u.T - t0);
      for (var i = 0u; i < ${per}u; i++) {
        let d = lane + i * ${B}u;
        if (d < u.D) {
          var sk = ak[i];
          var sv = av[i];
          for (var x = 0u; x < rows; x++) {
            let at = ((t0 + x) * u.Hq + h) * u.D + d;
            sk += Ds[x * ${B}u + key] * ld_q(at);
            sv += Ps[x * ${B}u + key] * ld_dout(at);
          }
          ak[i] = sk;
          av[i] = sv;
        }
      }
      workgroupBarrier();
    }
  }
  let j = j0 + key;
  if (j < u.S) {
    for (var i = 0u; i < ${per}u; i++) {
      let d = lane + i * ${B}u;
      if (d < u.D) {
        st_dk((j * u.Hkv + g) * u.D + d, ak[i]);
        st_dv((j * u.Hkv + g) * u.D + d, av[i]);
      }
    }
  }
}`,
    workgroups: grid(t, keyBlocks),
  });
  const dq = dispatch(t, {
    op: 'attentionBackward.dq',
    variant: `per${per}`,
    ...perQueryBlock,
    body: `${COMMON}
var<workgroup> Ds: array<f32, ${B * B}>;
${QUERY_BLOCK}
  let r = lid / ${B}u;
  let c = lid % ${B}u;
  let tq = t0 + r;
  let row = (tq * u.Hq + h) * u.D;
  var lse = 0.0;
  var pdp = 0.0;
  if (tq < u.T) {
    lse = ld_dq(row);
    pdp = ld_dq(row + 1u);
  }
  // Everyone has read the parked statistics before anyone overwrites them.
  workgroupBarrier();
  var acc: array<f32, ${per}>;
  let keys = visible(min(t0 + ${B - 1}u, u.T - 1u));
  for (var j0 = 0u; j0 < keys; j0 += ${B}u) {
    let sd = tile(t0, h, j0, g, lid);
    var ds = 0.0;
    if (valid(tq, j0 + c)) { ds = exp(sd.x - lse) * (sd.y - pdp) * u.scale; }
    Ds[lid] = ds;
    workgroupBarrier();
    let n = min(${B}u, u.S - j0);
    // Invocation (r, lane) owns dq of row tq at dimensions lane, lane + 16, …
    for (var i = 0u; i < ${per}u; i++) {
      let d = c + i * ${B}u;
      if (d < u.D) {
        var s = acc[i];
        for (var x = 0u; x < n; x++) { s += Ds[r * ${B}u + x] * ld_k(((j0 + x) * u.Hkv + g) * u.D + d); }
        acc[i] = s;
      }
    }
    workgroupBarrier();
  }
  if (tq < u.T) {
    for (var i = 0u; i < ${per}u; i++) {
      let d = c + i * ${B}u;
      if (d < u.D) { st_dq(row + d, acc[i]); }
    }
  }
}`,
    workgroups: grid(t, queryBlocks),
  });
  return [stats, kv, dq];
}
