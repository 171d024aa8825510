// Our WGSL for the fused LM-head cross-entropy of host-gradients.ts: logits recomputed where needed, a vocabulary
// chunk at a time, so they never exist whole; every sum in a fixed order.
import type { KernelDispatch, Slice } from '../dispatch.js';
import { type DeviceTraits, dispatch, f32u, grid, type Operand, u32u } from './gradients-common.js';

const WG = 256;

/** One logit, summed over the hidden size in order: every pass calls this one function, so all see the same bits. */
const LOGIT = `
fn logit(i: u32, v: u32) -> f32 {
  var s = 0.0;
  for (var c = 0u; c < u.H; c++) { s += ld_hidden(i * u.H + c) * ld_head(v * u.H + c); }
  return s;
}
// d loss / d logit for row i, vocabulary entry v, given the row's log-sum-exp.
fn dlogit(i: u32, v: u32, lse: f32) -> f32 {
  return u.scale * (exp(logit(i, v) - lse) - select(0.0, 1.0, u32(ld_targets(i)) == v));
}`;

const HEAD = `@compute @workgroup_size(${WG}) fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
    @builtin(local_invocation_index) lid: u32)`;

/**
 * Cross-entropy of hidden[n,H]·head[V,H]ᵀ against targets[n]: losses[n] written; for the loss scale·Σ losses,
 * dhidden written and dhead added to (each optional). Passes: (1) each row's log-sum-exp (a workgroup per row, online
 * over its vocabulary stride, then a fixed tree), kept in `losses` while the gradients need it; (2) dhidden, a
 * workgroup per row, 256 vocabulary entries' dlogits at a time in workgroup memory; (3) dhead, a workgroup per
 * vocabulary row, 256 rows' dlogits at a time; (4) losses = log-sum-exp − the target's logit.
 */
export function crossEntropyPlan(
  t: DeviceTraits,
  o: {
    hidden: Slice;
    head: Slice;
    headType: 'f32' | 'bf16';
    targets: Slice;
    scale: number;
    losses: Slice;
    dhidden: Slice | null;
    dhead: Slice | null;
    n: number;
    H: number;
    V: number;
  },
): KernelDispatch[] {
  const uniforms = { n: u32u(o.n), H: u32u(o.H), V: u32u(o.V), scale: f32u(o.scale) };
  const inputs: Operand[] = [
    { name: 'hidden', slice: o.hidden, elem: 'f32' },
    { name: 'head', slice: o.head, elem: o.headType },
    { name: 'targets', slice: o.targets, elem: 'i32' },
  ];
  const losses: Operand = { name: 'losses', slice: o.losses, elem: 'f32', write: true };
  const grads = !!(o.dhidden || o.dhead);
  // Columns of H per invocation, baked into the code as the size of its accumulators.
  const per = Math.max(1, Math.ceil(o.H / WG));
  const plans: KernelDispatch[] = [
    dispatch(t, {
      op: 'crossEntropy.lse',
      variant: grads ? 'keep' : 'loss',
      operands: [...inputs, losses],
      uniforms,
      body: `${LOGIT}
var<workgroup> mx: array<f32, ${WG}>;
var<workgroup> sm: array<f32, ${WG}>;
${HEAD} {
  let i = item(wg, nwg);
  if (i >= u.n) { return; }
  var m = -3.0e38;
  var s = 0.0;
  for (var v = lid; v < u.V; v += ${WG}u) {
    let l = logit(i, v);
    if (l > m) { s = s * exp(m - l) + 1.0; m = l; } else { s += exp(l - m); }
  }
  mx[lid] = m;
  sm[lid] = s;
  workgroupBarrier();
  for (var w = ${WG / 2}u; w > 0u; w >>= 1u) {
    if (lid < w) {
      let m2 = max(mx[lid], mx[lid + w]);
      sm[lid] = sm[lid] * exp(mx[lid] - m2) + sm[lid + w] * exp(mx[lid + w] - m2);
      mx[lid] = m2;
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    let lse = mx[0] + log(sm[0]);
    st_losses(i, ${grads ? 'lse' : 'lse - logit(i, u32(ld_targets(i)))'});
  }
}`,
      workgroups: grid(t, o.n),
    }),
  ];
  if (!grads) return plans;
  const lse: Operand = { name: 'losses', slice: o.losses, elem: 'f32' };
  if (o.dhidden)
    plans.push(
      dispatch(t, {
        op: 'crossEntropy.dhidden',
        variant: `per${per}`,
        operands: [...inputs, lse, { name: 'dhidden', slice: o.dhidden, elem: 'f32', write: true }],
        uniforms,
        body: `${LOGIT}
var<workgroup> dl: array<f32, ${WG}>;
${HEAD} {
  let i = item(wg, nwg);
  if (i >= u.n) { return; }
  let lse = ld_losses(i);
  var acc: array<f32, ${per}>;
  for (var v0 = 0u; v0 < u.V; v0 += ${WG}u) {
    var d = 0.0;
    if (v0 + lid < u.V) { d = dlogit(i, v0 + lid, lse); }
    dl[lid] = d;
    workgroupBarrier();
    let count = min(${WG}u, u.V - v0);
    for (var q = 0u; q < ${per}u; q++) {
      let c = lid + q * ${WG}u;
      if (c < u.H) {
        var a = acc[q];
        for (var e = 0u; e < count; e++) { a += dl[e] * ld_head((v0 + e) * u.H + c); }
        acc[q] = a;
      }
    }
    workgroupBarrier();
  }
  for (var q = 0u; q < ${per}u; q++) {
    let c = lid + q * ${WG}u;
    if (c < u.H) { st_dhidden(i * u.H + c, acc[q]); }
  }
}`,
        workgroups: grid(t, o.n),
      }),
    );
  if (o.dhead)
    plans.push(
      dispatch(t, {
        op: 'crossEntropy.dhead',
        variant: `per${per}`,
        operands: [...inputs, lse, { name: 'dhead', slice: o.dhead, elem: 'f32', write: true }],
        uniforms,
        body: `${LOGIT}
var<workgroup> dl: array<f32, ${WG}>;
${HEAD} {
  let v = item(wg, nwg);
  if (v >= u.V) { return; }
  var acc: array<f32, ${per}>;
  for (var i0 = 0u; i0 < u.n; i0 += ${WG}u) {
    var d = 0.0;
    if (i0 + lid < u.n) { d = dlogit(i0 + lid, v, ld_losses(i0 + lid)); }
    dl[lid] = d;
    workgroupBarrier();
    let count = min(${WG}u, u.n - i0);
    for (var q = 0u; q < ${per}u; q++) {
      let c = lid + q * ${WG}u;
      if (c < u.H) {
        var a = acc[q];
        for (var e = 0u; e < count; e++) { a += dl[e] * ld_hidden((i0 + e) * u.H + c); }
        acc[q] = a;
      }
    }
    workgroupBarrier();
  }
  for (var q = 0u; q < ${per}u; q++) {
    let c = lid + q * ${WG}u;
    if (c < u.H) { add_dhead(v * u.H + c, acc[q]); }
  }
}`,
        workgroups: grid(t, o.V),
      }),
    );
  plans.push(
    dispatch(t, {
      op: 'crossEntropy.loss',
      operands: [...inputs, losses],
      uniforms,
      body: `${LOGIT}
@compute @workgroup_size(64) fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
    @builtin(local_invocation_index) lid: u32) {
  let i = item(wg, nwg) * 64u + lid;
  if (i >= u.n) { return; }
  st_losses(i, ld_losses(i) - logit(i, u32(ld_targets(i))));
}`,
      workgroups: grid(t, Math.ceil(o.n / 64)),
    }),
  );
  return plans;
}
