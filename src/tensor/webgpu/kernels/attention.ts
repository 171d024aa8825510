// Our own WGSL attention: flash-style with grouped KV heads in one workgroup, bounded by tiles, never T×S scores.
/**
 * out[T,Hq,D] = softmax(scale·q·kᵀ) v per query head, the head h reading KV head ⌊h/G⌋ (G = Hq/Hkv), causal (row t
 * sees keys 0..queryOffset+t) or full; all f32, as backend.ts `attention`.
 *
 * A workgroup takes one KV head and a tile of BQ query rows, a row being a (t, head of the group) pair: the G query
 * heads that share a KV head read each key tile once (at decode, T = 1, the tile is the G heads). It walks the keys in
 * tiles of BS held in workgroup memory (K, then V in the same space) with an online softmax: a running maximum and
 * sum per row, the output accumulator rescaled when the maximum grows. Eight threads serve a row: each computes BS/8
 * of the row's scores and owns every eighth dimension of its output. Workgroup memory is (BQ + BS)·(D + 1) + BQ·BS
 * floats (rows padded by one against bank conflicts); tiles shrink to fit the device's limit.
 */
import type { KernelDispatch, Slice } from '../dispatch.js';
import { bindOperands, f32Access, f32Bits, grid, LINEAR_GROUP, wordOffset, type DeviceTraits } from './wgsl-common.js';

export interface AttentionOperands {
  q: Slice;
  k: Slice;
  v: Slice;
  out: Slice;
  T: number;
  S: number;
  Hq: number;
  Hkv: number;
  D: number;
  scale: number;
  causal: boolean;
  /** Causal only: the key position of query row 0 (backend.ts default S − T; checked.ts keeps it ≥ 0). */
  queryOffset: number;
}

const UNIFORMS = ['q_off', 'k_off', 'v_off', 'o_off', 'S', 'Hq', 'Hkv', 'G', 'R', 'qoff', 'scale', 'groups', 'splits', 'split_len', 'causal'] as const;
const THREADS_PER_ROW = 8;
/** Below this many workgroups a device sits mostly idle, so decode splits the keys (flash-decoding). */
const ENOUGH_GROUPS = 128;

/** Query rows and keys per tile: as large as the device's workgroup memory and invocations allow, up to 16 × 32. */
export function attentionTiles(t: DeviceTraits, rows: number, D: number): { BQ: number; BS: number } {
  const fits = (bq: number, bs: number) => 4 * ((bq + bs) * (D + 1) + bq * bs) <= t.maxWorkgroupStorageBytes && bq * THREADS_PER_ROW <= t.maxInvocations;
  let BQ = 1;
  while (BQ < 16 && BQ < rows) BQ *= 2;
  let BS = 32;
  while (!fits(BQ, BS)) {
    if (BS > THREADS_PER_ROW) BS /= 2;
    else if (BQ > 1) BQ /= 2;
    else throw new Error(`attention: head dimension ${D} does not fit the device's ${t.maxWorkgroupStorageBytes} bytes of workgroup memory`);
  }
  return { BQ, BS };
}

/**
 * How the keys are split across workgroups: with few query rows (decode) one workgroup per KV head would walk all S
 * keys alone, so the keys are cut into `splits` ranges of `splitLen` (whole tiles), each workgroup leaving its row's
 * running maximum, sum and unnormalised output in scratch, and a second dispatch combines them. `scratchBytes` is what
 * `attentionPlan` then needs as `scratch` (0: no split).
 */
export function attentionSplits(t: DeviceTraits, o: Pick<AttentionOperands, 'T' | 'S' | 'Hq' | 'Hkv' | 'D'>): { splits: number; splitLen: number; scratchBytes: number } {
  const R = o.T * (o.Hq / o.Hkv);
  const { BQ, BS } = attentionTiles(t, R, o.D);
  const groups = Math.ceil(R / BQ) * o.Hkv;
  const tiles = Math.ceil(o.S / BS);
  // Each split walks at least 4 tiles, so the combine stays small next to the work it divides.
  const splits = Math.max(1, Math.min(Math.ceil(ENOUGH_GROUPS / groups), Math.floor(tiles / 4)));
  if (splits === 1) return { splits: 1, splitLen: tiles * BS, scratchBytes: 0 };
  const splitLen = Math.ceil(tiles / splits) * BS;
  const used = Math.ceil(o.S / splitLen);
  return { splits: used, splitLen, scratchBytes: o.T * o.Hq * used * (o.D + 2) * 4 };
}

/** `scratch`, of at least `attentionSplits(...).scratchBytes` bytes, lets decode split its keys; without it, one pass. */
export function attentionPlan(t: DeviceTraits, o: AttentionOperands, scratch: Slice | null = null): KernelDispatch[] {
  const { T, S, Hq, Hkv, D } = o;
  if (T === 0 || Hq === 0 || D === 0) return [];
  if (Hkv === 0 || Hq % Hkv !== 0) throw new Error(`attention: ${Hq} query heads are not a multiple of ${Hkv} KV heads`);
  const G = Hq / Hkv;
  const R = T * G;
  const { BQ, BS } = attentionTiles(t, R, D);
  let { splits, splitLen, scratchBytes } = attentionSplits(t, o);
  if (!scratch || scratch.byteOffset + scratchBytes > scratch.buffer.byteLength) {
    splits = 1;
    splitLen = Math.ceil(S / BS) * BS;
  }
  const split = splits > 1;
  const target = split ? scratch! : o.out;
  const operands = [{ slice: o.q }, { slice: o.k }, { slice: o.v }, { slice: target, write: true }];
  for (const op of [...operands, { slice: o.out }]) {
    if (op.slice.buffer.byteLength > t.maxStorageBufferBindingSize)
      throw new Error(`attention: a buffer of ${op.slice.buffer.byteLength} bytes exceeds the device's maxStorageBufferBindingSize (${t.maxStorageBufferBindingSize})`);
  }
  const bound = bindOperands(operands);
  const [qb, kb, vb, ob] = bound.names as [string, string, string, string];
  const groups = Math.ceil(R / BQ) * Hkv * splits;
  const values: Record<(typeof UNIFORMS)[number], number> = {
    q_off: wordOffset(o.q, 'attention: q'),
    k_off: wordOffset(o.k, 'attention: k'),
    v_off: wordOffset(o.v, 'attention: v'),
    o_off: wordOffset(target, split ? 'attention: scratch' : 'attention: out'),
    S,
    Hq,
    Hkv,
    G,
    R,
    qoff: o.queryOffset >>> 0,
    scale: f32Bits(o.scale),
    groups,
    splits,
    split_len: splitLen,
    causal: o.causal ? 1 : 0,
  };
  const uniforms = Uint32Array.from(UNIFORMS, (f) => values[f]);
  const pass: KernelDispatch = {
    key: `attention-d${D}-q${BQ}-s${BS}-${split ? 'partial' : 'final'}-${bound.signature}`,
    wgsl: () =>
      [bound.declarations(UNIFORMS), f32Access('q', qb), f32Access('k', kb), f32Access('v', vb), f32Access('o', ob, true), kernel(D, BQ, BS, split)].join('\n'),
    buffers: bound.buffers,
    uniforms,
    workgroups: grid(groups, t),
  };
  if (!split) return [pass];
  const cb = bindOperands([{ slice: scratch! }, { slice: o.out, write: true }]);
  const [sb, outb] = cb.names as [string, string];
  const combineValues = { ...values, q_off: wordOffset(scratch!, 'attention: scratch'), o_off: wordOffset(o.out, 'attention: out'), groups: T * Hq };
  const combine: KernelDispatch = {
    key: `attention-combine-d${D}-${cb.signature}`,
    wgsl: () => [cb.declarations(UNIFORMS), f32Access('s', sb), f32Access('o', outb, true), COMBINE(D)].join('\n'),
    buffers: cb.buffers,
    uniforms: Uint32Array.from(UNIFORMS, (f) => combineValues[f]),
    workgroups: grid(T * Hq, t),
  };
  return [pass, combine];
}

// One workgroup per query row (KV head g, row t·G + j); scratch holds, per row and split, [max, sum, output[D]].
const COMBINE = (D: number) => `
const D = ${D}u;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let rho = ${LINEAR_GROUP};
  if (rho >= u.groups) { return; }
  let g = rho / u.R;
  let row = rho % u.R;
  let t = row / u.G;
  let h = g * u.G + row % u.G;
  let base = u.q_off + rho * u.splits * (D + 2u);
  // A split whose row saw no key left sum 0; one that saw any has sum ≥ 1 (its maximum's own term).
  var mx = 0.0;
  var seen = false;
  for (var p = 0u; p < u.splits; p++) {
    let at = base + p * (D + 2u);
    if (s_f32(at + 1u) > 0.0) { mx = select(s_f32(at), max(mx, s_f32(at)), seen); seen = true; }
  }
  var l = 0.0;
  for (var p = 0u; p < u.splits; p++) {
    let at = base + p * (D + 2u);
    if (s_f32(at + 1u) > 0.0) { l += s_f32(at + 1u) * exp(s_f32(at) - mx); }
  }
  for (var d = lid; d < D; d += 64u) {
    var acc = 0.0;
    for (var p = 0u; p < u.splits; p++) {
      let at = base + p * (D + 2u);
      if (s_f32(at + 1u) > 0.0) { acc = fma(s_f32(at + 2u + d), exp(s_f32(at) - mx), acc); }
    }
    o_set(u.o_off + (t * u.Hq + h) * D + d, select(0.0, acc / l, seen));
  }
}
`;

function kernel(D: number, BQ: number, BS: number, split: boolean): string {
  const TPR = THREADS_PER_ROW;
  return `
const D = ${D}u;
const DP = ${D + 1}u;
const BQ = ${BQ}u;
const BS = ${BS}u;
const TPR = ${TPR}u;
const DPT = ${Math.ceil(D / TPR)}u;
const SPT = ${BS / TPR}u;
var<workgroup> Qs: array<f32, ${BQ * (D + 1)}>;
var<workgroup> KV: array<f32, ${BS * (D + 1)}>;
var<workgroup> Ss: array<f32, ${BQ * BS}>;

// Keys 0..visible(t)−1 are seen by query time t. (Causal is a uniform, not a variant: one shader less to compile.)
fn visible(t: u32) -> u32 {
  if (u.causal == 0u) { return u.S; }
  return u32(clamp(bitcast<i32>(u.qoff) + i32(t) + 1, 0, i32(u.S)));
}

// Rows s0.. of K or V (one KV head) into KV; zeros past S.
${(['k', 'v'] as const)
  .map(
    (x) => `fn load_${x}(s0: u32, g: u32, lid: u32) {
  for (var e = lid; e < BS * D; e += BQ * TPR) {
    let s = s0 + e / D;
    var x = 0.0;
    if (s < u.S) { x = ${x}_f32(u.${x}_off + (s * u.Hkv + g) * D + e % D); }
    KV[(e / D) * DP + e % D] = x;
  }
}`,
  )
  .join('\n')}

@compute @workgroup_size(${BQ * TPR})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let gi = ${LINEAR_GROUP};
  if (gi >= u.groups) { return; }
  let part = gi % u.splits;
  let g = (gi / u.splits) % u.Hkv;
  let row0 = (gi / u.splits / u.Hkv) * BQ;
  let s_lo = part * u.split_len;
  let lr = lid / TPR;
  let lt = lid % TPR;
  let row = row0 + lr;
  let live = row < u.R;
  let t = row / u.G;
  let h = g * u.G + row % u.G;
  let scale = bitcast<f32>(u.scale);
  for (var e = lid; e < BQ * D; e += BQ * TPR) {
    let r = row0 + e / D;
    var x = 0.0;
    if (r < u.R) { x = q_f32(u.q_off + ((r / u.G) * u.Hq + g * u.G + r % u.G) * D + e % D); }
    Qs[(e / D) * DP + e % D] = x;
  }
  // visible() grows with t, so the tile's last row bounds the keys any row of it sees.
  let s_end = min(s_lo + u.split_len, visible((min(row0 + BQ, u.R) - 1u) / u.G));
  let vis = select(0u, visible(t), live);
  var seen = false;
  var mx = 0.0;
  var l = 0.0;
  var acc: array<f32, DPT>;
  for (var s0 = s_lo; s0 < s_end; s0 += BS) {
    workgroupBarrier();
    load_k(s0, g, lid);
    workgroupBarrier();
    for (var i = 0u; i < SPT; i++) {
      let sl = lt + i * TPR;
      var dot = 0.0;
      for (var d = 0u; d < D; d++) { dot = fma(Qs[lr * DP + d], KV[sl * DP + d], dot); }
      Ss[lr * BS + sl] = dot * scale;
    }
    workgroupBarrier();
    load_v(s0, g, lid);
    workgroupBarrier();
    let n = select(0u, min(BS, vis - s0), vis > s0);
    if (n > 0u) {
      var mt = select(Ss[lr * BS], max(mx, Ss[lr * BS]), seen);
      for (var sl = 1u; sl < n; sl++) { mt = max(mt, Ss[lr * BS + sl]); }
      // Before the first visible key l and acc are 0, and exp(0) keeps them so without an infinite maximum.
      let alpha = exp(select(0.0, mx - mt, seen));
      l *= alpha;
      for (var j = 0u; j < DPT; j++) { acc[j] *= alpha; }
      for (var sl = 0u; sl < n; sl++) {
        let p = exp(Ss[lr * BS + sl] - mt);
        l += p;
        for (var j = 0u; j < DPT; j++) {
          let d = lt + j * TPR;
          if (d < D) { acc[j] = fma(p, KV[sl * DP + d], acc[j]); }
        }
      }
      mx = mt;
      seen = true;
    }
  }
  if (live) {
${
  split
    ? `    // This split's part of the row: its maximum, its sum (0 if it saw no key) and its unnormalised output.
    let at = u.o_off + ((g * u.R + row) * u.splits + part) * (D + 2u);
    if (lt == 0u) { o_set(at, mx); o_set(at + 1u, l); }
    for (var j = 0u; j < DPT; j++) {
      let d = lt + j * TPR;
      if (d < D) { o_set(at + 2u + d, acc[j]); }
    }`
    : `    // A row that sees no key is 0, as the reference's empty softmax gives (checked.ts refuses the offsets that do it).
    let inv = select(0.0, 1.0 / l, seen);
    for (var j = 0u; j < DPT; j++) {
      let d = lt + j * TPR;
      if (d < D) { o_set(u.o_off + (t * u.Hq + h) * D + d, acc[j] * inv); }
    }`
}
  }
}
`;
}
