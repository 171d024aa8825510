// Our WGSL plan for the LM-head cross-entropy at training sizes: the logits of a block of rows against a vocabulary
// chunk are materialised in a scratch buffer the backend lends, so every product runs in the tiled GEMM.
import type { KernelDispatch, Slice } from '../dispatch.js';
import { advance, type DeviceTraits, dispatch, f32u, grid, type Operand, u32u } from './gradients-common.js';
import { gemm } from './gradients-matmul.js';

const WG = 64;
/** The widest vocabulary chunk: beyond it a bigger scratch buys more rows per block instead. */
const MAX_CHUNK = 8192;
/** Rows of a block of logits worth a scratch of their own: the head is read three times a block (gradients.ts). */
const BLOCK_ROWS = 1024;

/** The scratch `crossEntropyTiledPlan` wants for n rows against V entries: blocks of up to 1024 rows, within `maxBytes`. */
export function crossEntropyScratchBytes(n: number, V: number, maxBytes: number): number {
  const want = Math.min(n, BLOCK_ROWS) * Math.min(V, MAX_CHUNK) * 4;
  return Math.max(4, Math.min(want, Math.floor(maxBytes / 4) * 4));
}

/**
 * Cross-entropy of hidden[n,H]·head[V,H]ᵀ against targets[n]: losses[n] written; for the loss scale·Σ losses,
 * dhidden written and dhead added to (each optional). `scratch` (at least one f32 per vocabulary entry up to the
 * chunk, ideally rows·chunk) holds one block of logits at a time: per row block, (1) for
 * each chunk, logits = hidden·headᵀ (GEMM) and each row's log-sum-exp merged into `losses`; then, when gradients are
 * asked for, per chunk, the logits again, dlogits in place, dhidden (+)= dlogits·head and dhead += dlogitsᵀ·hidden
 * (GEMMs); last, losses = log-sum-exp − the target's logit. Every sum runs in a fixed order. A head (and dhead) split
 * by rows across buffers is given as `pieces`, chunked piece by piece.
 */
export function crossEntropyTiledPlan(
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
    scratch: Slice;
    scratchBytes: number;
    /** A head split by rows across buffers: its pieces in vocabulary order (then `head` and `dhead` are unused). */
    pieces?: readonly HeadPiece[];
  },
): KernelDispatch[] {
  const { n, H, V } = o;
  const pieces = o.pieces ?? [{ head: o.head, dhead: o.dhead, rows: V }];
  if (pieces.reduce((s, p) => s + p.rows, 0) !== V) throw new Error(`WebGPU crossEntropy: the head's pieces do not add up to ${V} rows`);
  const room = Math.floor(o.scratchBytes / 4);
  if (room < 1) throw new Error('WebGPU crossEntropy: the scratch buffer holds no f32');
  const chunk = Math.min(V, MAX_CHUNK, room);
  const rowsPer = Math.min(n, Math.floor(room / chunk));
  const headBytes = o.headType === 'bf16' ? 2 : 4;
  const plans: KernelDispatch[] = [];
  const grads = !!(o.dhidden || o.dhead);
  // The chunks of every piece, in vocabulary order: [first entry, width, head rows, dhead rows].
  const chunks: [number, number, Slice, Slice | null][] = [];
  let base = 0;
  for (const p of pieces) {
    for (let v = 0; v < p.rows; v += chunk)
      chunks.push([base + v, Math.min(chunk, p.rows - v), advance(p.head, v * H, headBytes), p.dhead && advance(p.dhead, v * H, 4)]);
    base += p.rows;
  }
  for (let r0 = 0; r0 < n; r0 += rowsPer) {
    const rows = Math.min(rowsPer, n - r0);
    const hidden = advance(o.hidden, r0 * H, 4);
    const losses = advance(o.losses, r0, 4);
    const scratch = o.scratch;
    const compute = 'exact';
    const logits = (head: Slice, width: number) =>
      gemm(t, { a: hidden, b: head, bElem: o.headType, c: scratch, I: rows, J: width, L: H, sAi: H, sAl: 1, sBl: 1, sBj: H, add: false, compute });
    for (const [v0, width, head] of chunks) plans.push(logits(head, width), mergeLse(t, { scratch, losses, rows, width, first: v0 === 0 }));
    if (!grads) continue;
    const targets = advance(o.targets, r0, 4);
    for (const [v0, width, head, dhead] of chunks) {
      plans.push(logits(head, width), dlogits(t, { scratch, losses, targets, rows, width, v0, scale: o.scale }));
      if (o.dhidden) {
        const c = advance(o.dhidden, r0 * H, 4);
        // Written by the first chunk, added to by the others.
        const add = v0 > 0;
        plans.push(gemm(t, { a: scratch, b: head, bElem: o.headType, c, I: rows, J: H, L: width, sAi: width, sAl: 1, sBl: H, sBj: 1, add, compute }));
      }
      if (dhead)
        plans.push(
          gemm(t, { a: scratch, b: hidden, bElem: 'f32', c: dhead, I: width, J: H, L: rows, sAi: 1, sAl: width, sBl: H, sBj: 1, add: true, compute }),
        );
    }
  }
  base = 0;
  for (const p of pieces) {
    plans.push(finalLoss(t, { ...o, head: p.head, vStart: base, vCount: p.rows }));
    base += p.rows;
  }
  return plans;
}

/** Rows [start, start + rows) of a head split across buffers, and of its gradient when one is asked for. */
export interface HeadPiece {
  readonly head: Slice;
  readonly dhead: Slice | null;
  readonly rows: number;
}

const HEAD = `@compute @workgroup_size(${WG}) fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
    @builtin(local_invocation_index) lid: u32)`;

/** losses[r] ← the log-sum-exp of row r of the scratch (width wide), merged with what it holds unless `first`. */
function mergeLse(t: DeviceTraits, o: { scratch: Slice; losses: Slice; rows: number; width: number; first: boolean }): KernelDispatch {
  return dispatch(t, {
    op: 'crossEntropy.mergeLse',
    variant: o.first ? 'first' : 'merge',
    operands: [
      { name: 'logits', slice: o.scratch, elem: 'f32' },
      { name: 'losses', slice: o.losses, elem: 'f32', write: true },
    ],
    uniforms: { rows: u32u(o.rows), width: u32u(o.width) },
    body: `
var<workgroup> mx: array<f32, ${WG}>;
var<workgroup> sm: array<f32, ${WG}>;
${HEAD} {
  let r = item(wg, nwg);
  if (r >= u.rows) { return; }
  var m = -3.0e38;
  for (var v = lid; v < u.width; v += ${WG}u) { m = max(m, ld_logits(r * u.width + v)); }
  mx[lid] = m;
  workgroupBarrier();
  for (var w = ${WG / 2}u; w > 0u; w >>= 1u) {
    if (lid < w) { mx[lid] = max(mx[lid], mx[lid + w]); }
    workgroupBarrier();
  }
  let top = mx[0];
  var s = 0.0;
  for (var v = lid; v < u.width; v += ${WG}u) { s += exp(ld_logits(r * u.width + v) - top); }
  sm[lid] = s;
  workgroupBarrier();
  for (var w = ${WG / 2}u; w > 0u; w >>= 1u) {
    if (lid < w) { sm[lid] += sm[lid + w]; }
    workgroupBarrier();
  }
  if (lid == 0u) {
    let lse = top + log(sm[0]);
    ${o.first ? 'st_losses(r, lse);' : 'let old = ld_losses(r); let hi = max(old, lse); st_losses(r, hi + log(exp(old - hi) + exp(lse - hi)));'}
  }
}`,
    workgroups: grid(t, o.rows),
  });
}

/** The scratch's logits become scale·(softmax − one-hot(target)), in place. */
function dlogits(
  t: DeviceTraits,
  o: { scratch: Slice; losses: Slice; targets: Slice; rows: number; width: number; v0: number; scale: number },
): KernelDispatch {
  const count = o.rows * o.width;
  return dispatch(t, {
    op: 'crossEntropy.dlogits',
    operands: [
      { name: 'logits', slice: o.scratch, elem: 'f32', write: true },
      { name: 'losses', slice: o.losses, elem: 'f32' },
      { name: 'targets', slice: o.targets, elem: 'i32' },
    ],
    uniforms: { count: u32u(count), width: u32u(o.width), v0: u32u(o.v0), scale: f32u(o.scale) },
    body: `
@compute @workgroup_size(256) fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
    @builtin(local_invocation_index) lid: u32) {
  let i = item(wg, nwg) * 256u + lid;
  if (i >= u.count) { return; }
  let r = i / u.width;
  let hit = select(0.0, 1.0, u32(ld_targets(r)) == u.v0 + i % u.width);
  st_logits(i, u.scale * (exp(ld_logits(i) - ld_losses(r)) - hit));
}`,
    workgroups: grid(t, Math.ceil(count / 256)),
  });
}

/**
 * losses[i] ← log-sum-exp − hidden[i]·head[target[i]] for the targets in this piece of the head (vocabulary entries
 * [vStart, vStart + vCount)), the dot summed in order as the GEMM sums it.
 */
function finalLoss(
  t: DeviceTraits,
  o: { hidden: Slice; head: Slice; headType: 'f32' | 'bf16'; targets: Slice; losses: Slice; n: number; H: number; vStart: number; vCount: number },
): KernelDispatch {
  const operands: Operand[] = [
    { name: 'hidden', slice: o.hidden, elem: 'f32' },
    { name: 'head', slice: o.head, elem: o.headType },
    { name: 'targets', slice: o.targets, elem: 'i32' },
    { name: 'losses', slice: o.losses, elem: 'f32', write: true },
  ];
  return dispatch(t, {
    op: 'crossEntropy.finalLoss',
    operands,
    uniforms: { n: u32u(o.n), H: u32u(o.H), vStart: u32u(o.vStart), vCount: u32u(o.vCount) },
    body: `
@compute @workgroup_size(${WG}) fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
    @builtin(local_invocation_index) lid: u32) {
  let i = item(wg, nwg) * ${WG}u + lid;
  if (i >= u.n) { return; }
  let v = u32(ld_targets(i)) - u.vStart;
  if (u32(ld_targets(i)) < u.vStart || v >= u.vCount) { return; }
  var s = 0.0;
  for (var c = 0u; c < u.H; c++) { s += ld_hidden(i * u.H + c) * ld_head(v * u.H + c); }
  st_losses(i, ld_losses(i) - s);
}`,
    workgroups: grid(t, Math.ceil(o.n / WG)),
  });
}
