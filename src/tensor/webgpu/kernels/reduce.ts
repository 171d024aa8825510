// Hand-written WGSL for argmax and top-k, so that only ids and a few scores leave the device.
import type { BufferRef, KernelDispatch, Slice } from '../dispatch.js';
import { bind, dispatchOver, elementwiseMain, GRID_BUILTINS, GROUP_INDEX, grid } from './operands.js';

const WG = 256;
/** −∞'s bits, passed as a uniform: WGSL refuses an infinite constant. */
const NEG_INF = 0xff800000;
/** Elements one argmax workgroup scans in its first pass. */
const CHUNK = WG * 16;

/** Scratch words argmaxPlan needs for n elements: a (value, index) pair per first-pass workgroup and one for the result. */
export function argmaxScratchBytes(n: number): number {
  return (Math.ceil(n / CHUNK) + 1) * 8;
}

/**
 * The order argmax and topK rank by: the larger value first, on ties the lower index (the reference's scan keeps the
 * first). An invocation without elements holds (−∞, 0xffffffff), which every element ranks before.
 */
const COMBINE = `
fn before(va: f32, ia: u32, vb: f32, ib: u32) -> bool { return va > vb || (va == vb && ia < ib); }
var<workgroup> best_v: array<f32, ${WG}>;
var<workgroup> best_i: array<u32, ${WG}>;
fn reduce_best(v: f32, i: u32, lid: u32) {
  best_v[lid] = v;
  best_i[lid] = i;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s && before(best_v[lid + s], best_i[lid + s], best_v[lid], best_i[lid])) { best_v[lid] = best_v[lid + s]; best_i[lid] = best_i[lid + s]; }
    workgroupBarrier();
  }
}
`;

/** Two passes: each workgroup's best of a chunk into scratch, then one workgroup's best of those; the index lands in the scratch's last pair. */
export function argmaxPlan(x: Slice, n: number, scratch: BufferRef): KernelDispatch[] {
  const groups = Math.ceil(n / CHUNK);
  const first = bind(
    [
      { name: 'x', at: x, as: 'f32' },
      { name: 'p', at: { buffer: scratch, byteOffset: 0 }, as: 'f32', write: true },
    ],
    ['n', 'ninf'],
  );
  const pass1 = `@compute @workgroup_size(${WG}) fn main(${GRID_BUILTINS}) {
  let g = ${GROUP_INDEX};
  let start = g * ${CHUNK}u;
  var bv = bitcast<f32>(u.ninf);
  var bi = 0xffffffffu;
  for (var k = 0u; k < ${CHUNK / WG}u; k++) {
    let i = start + k * ${WG}u + lid;
    if (i < u.n) { let v = x_ld(i); if (before(v, i, bv, bi)) { bv = v; bi = i; } }
  }
  reduce_best(bv, bi, lid);
  if (lid == 0u) { p_st(2u * g, best_v[0]); b${first.variant.includes('p0') ? 0 : 1}[u.p_o + 2u * g + 1u] = best_i[0]; }
}
`;
  const second = bind([{ name: 'p', at: { buffer: scratch, byteOffset: 0 }, as: 'f32', write: true }], ['groups', 'ninf']);
  const pass2 = `@compute @workgroup_size(${WG}) fn main(@builtin(local_invocation_index) lid: u32) {
  var bv = bitcast<f32>(u.ninf);
  var bi = 0xffffffffu;
  for (var g = lid; g < u.groups; g += ${WG}u) {
    let v = p_ld(2u * g);
    let i = b0[2u * g + 1u];
    if (before(v, i, bv, bi)) { bv = v; bi = i; }
  }
  reduce_best(bv, bi, lid);
  if (lid == 0u) { p_st(2u * u.groups, best_v[0]); b0[2u * u.groups + 1u] = best_i[0]; }
}
`;
  return [
    { key: `argmax-1:${first.variant}`, wgsl: () => first.header + COMBINE + pass1, buffers: first.buffers, uniforms: first.uniforms([n, NEG_INF]), workgroups: grid(groups) },
    { key: 'argmax-2', wgsl: () => second.header + COMBINE + pass2, buffers: second.buffers, uniforms: second.uniforms([groups, NEG_INF]), workgroups: [1, 1, 1] },
  ];
}

/** Pairs one workgroup sorts in workgroup memory (8 KiB: within WebGPU's default 16 KiB). */
const BLOCK = 1024;
const BEFORE = 'fn before(va: f32, ia: u32, vb: f32, ib: u32) -> bool { return va > vb || (va == vb && ia < ib); }\n';

/** The padded length (a power of two ≥ n) and the run length kept (a power of two ≥ k), in pairs. */
function topKSizes(n: number, k: number): { size: number; run: number; partial: boolean } {
  const size = 2 ** Math.ceil(Math.log2(Math.max(n, 1)));
  const run = 2 ** Math.ceil(Math.log2(Math.max(k, 2)));
  // Keeping the top runs pays where they are short: they must fit a block and leave something to drop.
  return { size, run, partial: run <= BLOCK && 2 * run < size };
}

/** Bytes of topKPlan's scratch: a (value, index) pair per padded element, twice over for the partial path. */
export function topKScratchBytes(n: number, k: number): number {
  const { size, partial } = topKSizes(n, k);
  return 8 * size * (partial ? 2 : 1);
}

/**
 * The top k (value, index) pairs of x in the `before` order, best first, at the returned byte offset of the scratch;
 * no host round trip, any k up to n. Bitonic networks over a power-of-two length (padding ranks last); stages that
 * compare pairs less than a block apart run in workgroup memory, a block a workgroup, many stages a dispatch.
 *
 * Small k (the run r = k rounded up to a power of two fits a block): runs of r are sorted, alternately best first and
 * worst first; then each round keeps, of two neighbouring runs a and b, max(a[i], b[i]) for every i: the best r of
 * the two as a bitonic sequence (Batcher's split), which r's merge stages sort, into a buffer half the size (the
 * scratch's two halves in turn). log2(n/r) rounds leave the top r: O(n log r) work. Otherwise the whole length is
 * sorted: O(n log² n).
 */
export function topKPlan(x: Slice, n: number, k: number, scratch: BufferRef): { plan: KernelDispatch[]; byteOffset: number } {
  const { size, run, partial } = topKSizes(n, k);
  const region = (half: number): Slice => ({ buffer: scratch, byteOffset: half * size * 8 });
  const init = bind(
    [
      { name: 'x', at: x, as: 'f32' },
      { name: 'p', at: region(0), as: 'u32', write: true },
    ],
    ['n', 'len', 'ninf'],
  );
  const initBody = `  let inside = gi < u.len;
  p_st(2u * gi, select(u.ninf, bitcast<u32>(x_ld(min(gi, u.len - 1u))), inside));
  p_st(2u * gi + 1u, select(0xffffffffu, gi, inside));`;
  const plan: KernelDispatch[] = [
    dispatchOver(`topk-init:${init.variant}`, () => init.header + elementwiseMain(WG, initBody), init, [size, n, NEG_INF], size, WG),
  ];
  if (size === 1) return { plan, byteOffset: 0 };
  if (!partial) {
    const block = Math.min(size, BLOCK);
    const local = localSort(region(0), size, block);
    // Runs of up to a block sorted in place, alternating direction (bit k of the pair's index), as the network wants.
    plan.push(local(2, block, 1));
    const step = bind([{ name: 'p', at: region(0), as: 'u32', write: true }], ['n', 'k', 'j']);
    // Invocation gi compares pair gi with pair gi ^ j (the lower one of the two does the work); within a run of k the
    // order is `before` where bit k of gi is clear and reversed where it is set, which merges into one sorted run.
    const stepBody = `  let l = gi ^ u.j;
  if (l <= gi) { return; }
  let va = bitcast<f32>(p_ld(2u * gi));
  let ia = p_ld(2u * gi + 1u);
  let vb = bitcast<f32>(p_ld(2u * l));
  let ib = p_ld(2u * l + 1u);
  let forward = (gi & u.k) == 0u;
  if (select(before(va, ia, vb, ib), before(vb, ib, va, ia), forward)) {
    p_st(2u * gi, bitcast<u32>(vb)); p_st(2u * gi + 1u, ib);
    p_st(2u * l, bitcast<u32>(va)); p_st(2u * l + 1u, ia);
  }`;
    const stepWgsl = () => step.header + BEFORE + elementwiseMain(WG, stepBody);
    for (let k = 2 * block; k <= size; k *= 2) {
      for (let j = k / 2; j >= block; j /= 2) plan.push(dispatchOver('topk-step', stepWgsl, step, [size, k, j], size, WG));
      plan.push(local(k, k, block / 2));
    }
    return { plan, byteOffset: 0 };
  }
  plan.push(localSort(region(0), size, Math.min(size, BLOCK))(2, run, 1));
  let length = size;
  let from = 0;
  while (length > run) {
    const to = 1 - from;
    const half = length / 2;
    const select = bind(
      [
        { name: 'a', at: region(from), as: 'u32' },
        { name: 'c', at: region(to), as: 'u32', write: true },
      ],
      ['n', 'run'],
    );
    // Output pair gi is element i of the kept run m; a[i] is in run 2m (best first), b[i] in run 2m + 1 (worst first).
    const body = `  let m = gi / u.run;
  let i = gi % u.run;
  let a = (2u * m) * u.run + i;
  let b = a + u.run;
  let va = bitcast<f32>(a_ld(2u * a));
  let ia = a_ld(2u * a + 1u);
  let vb = bitcast<f32>(a_ld(2u * b));
  let ib = a_ld(2u * b + 1u);
  let keepA = before(va, ia, vb, ib);
  c_st(2u * gi, bitcast<u32>(select(vb, va, keepA)));
  c_st(2u * gi + 1u, select(ib, ia, keepA));`;
    plan.push(dispatchOver(`topk-select:${select.variant}`, () => select.header + BEFORE + elementwiseMain(WG, body), select, [half, run], half, WG));
    plan.push(localSort(region(to), half, Math.min(half, BLOCK))(run, run, run / 2));
    length = half;
    from = to;
  }
  return { plan, byteOffset: region(from).byteOffset };
}

/**
 * The dispatch that runs, in each block of `block` pairs in workgroup memory, the network's stages for run lengths
 * k0..k1 (powers of two), starting at distance j0 for k0 and at k/2 for the others; over the `size` pairs at `at`.
 */
function localSort(at: Slice, size: number, block: number): (k0: number, k1: number, j0: number) => KernelDispatch {
  const bound = bind([{ name: 'p', at, as: 'u32', write: true }], ['k0', 'k1', 'j0']);
  const threads = Math.min(WG, block / 2);
  const wgsl = () => `${bound.header}${BEFORE}
var<workgroup> sv: array<f32, ${block}>;
var<workgroup> si: array<u32, ${block}>;
@compute @workgroup_size(${threads}) fn main(${GRID_BUILTINS}) {
  let base = (${GROUP_INDEX}) * ${block}u;
  for (var t = lid; t < ${block}u; t += ${threads}u) { sv[t] = bitcast<f32>(p_ld(2u * (base + t))); si[t] = p_ld(2u * (base + t) + 1u); }
  workgroupBarrier();
  for (var k = u.k0; k <= u.k1; k <<= 1u) {
    for (var j = select(k >> 1u, u.j0, k == u.k0); j >= 1u; j >>= 1u) {
      // Pair q of the stage: the lower element i (bit j clear) and i + j.
      for (var q = lid; q < ${block / 2}u; q += ${threads}u) {
        let i = (q / j) * 2u * j + q % j;
        let l = i + j;
        let forward = ((base + i) & k) == 0u;
        let swap = select(before(sv[i], si[i], sv[l], si[l]), before(sv[l], si[l], sv[i], si[i]), forward);
        if (swap) { let v = sv[i]; let x = si[i]; sv[i] = sv[l]; si[i] = si[l]; sv[l] = v; si[l] = x; }
      }
      workgroupBarrier();
    }
  }
  for (var t = lid; t < ${block}u; t += ${threads}u) { p_st(2u * (base + t), bitcast<u32>(sv[t])); p_st(2u * (base + t) + 1u, si[t]); }
}
`;
  return (k0, k1, j0) => ({ key: `topk-local-${block}:${bound.variant}`, wgsl, buffers: bound.buffers, uniforms: bound.uniforms([k0, k1, j0]), workgroups: grid(size / block) });
}
