// Our own WGSL matmul: it must read our bf16 and packed quantized layouts in place and keep BATCH_ROWS row-independence.
/**
 * out[M,N] = x[M,K]·w[N,K]ᵀ (+ bias), as kernel plans (dispatch.ts). Two kernels:
 * - M ≤ BATCH_ROWS (decode, batched decode): a GEMV, a workgroup streaming 4 weight rows from memory once, for each
 *   row of x in turn (again from cache). One pipeline serves every M up to 16 with a loop over the rows, so each row
 *   of out is computed by the same instructions in the same order whatever M is: the bits of a row alone (backend.ts
 *   BATCH_ROWS). Its reduction of the thread partials uses subgroupAdd where the device has subgroups (the order a
 *   driver picks per pipeline, the same for every M), else a fixed sequential sum in workgroup memory.
 * - Larger M (prefill, the vision encoder): a tiled GEMM, 128×128 output tiles over k-slices of 8 held in workgroup
 *   memory, each thread 8×8 outputs (64×64 tiles, 4×4 a thread, where the matrix has too few large tiles to fill the
 *   device).
 * Weights are read in place: f32; bf16 (two per u32, any even byte offset); int8/int4/int4m in the packed layout of
 * quant.ts, dequantized exactly as `dequantize` does. Compute modes: 'exact' multiplies f32 by the weights' values;
 * 'bf16' first rounds x and f32 weights to bf16 (RNE). Quantized weights are multiplied exactly in both modes (the
 * CPU's 'bf16' mode quantizes activations to int8 instead; this backend computes that mode's weights at 'exact'
 * precision, so its results differ from the CPU's fast mode by the activation quantization error).
 * Weights over the binding limit come as row pages (`WeightPage[]`): one dispatch each, writing its own columns.
 */
import { BATCH_ROWS } from '../../backend.js';
import type { QuantFormat } from '../../dtype.js';
import type { KernelDispatch, Slice } from '../dispatch.js';
import {
  bf16Access,
  bindOperands,
  byteAccess,
  f32Access,
  grid,
  halfOffset,
  LINEAR_GROUP,
  WGSL_CONVERSIONS,
  wordOffset,
  type DeviceTraits,
} from './wgsl-common.js';

export type { DeviceTraits } from './wgsl-common.js';

export type WeightType = 'f32' | 'bf16' | QuantFormat;

/**
 * Rows [first row of the page, + rows) of a weight split to fit maxStorageBufferBindingSize; pages follow each other
 * in row order. A quantized weight splits only at multiples of 4 rows (its row groups), so each page is itself a
 * packed matrix of `rows` rows.
 */
export interface WeightPage {
  slice: Slice;
  rows: number;
}

/**
 * The most rows of an [N, K] weight one page may hold within the device's binding limit (a multiple of 4 for the
 * quantized formats, whose pages must start on a row group): N when the whole weight fits.
 */
export function weightPageRows(t: DeviceTraits, wType: WeightType, N: number, K: number): number {
  const rowBytes = wType === 'f32' ? 4 * K : wType === 'bf16' ? 2 * K : (K / 32) * { int8: 34, int4: 18, int4m: 20 }[wType];
  // A bf16 page may start at 2 mod 4 in its buffer; a packed page at any byte: leave room for the rounding up to 4.
  let rows = Math.floor((t.maxStorageBufferBindingSize - 4) / Math.max(1, rowBytes));
  if (isQuant(wType)) rows -= rows % 4;
  if (rows < 1) throw new Error(`matmul: one ${wType} weight row of ${rowBytes} bytes exceeds the device's maxStorageBufferBindingSize (${t.maxStorageBufferBindingSize})`);
  return Math.min(N, rows);
}

export interface MatmulOperands {
  x: Slice;
  w: Slice | readonly WeightPage[];
  wType: WeightType;
  bias: Slice | null;
  biasType: 'f32' | 'bf16';
  out: Slice;
  M: number;
  N: number;
  K: number;
  compute: 'exact' | 'bf16';
  /** The GEMM's output tile (M > 16); by default 128 where that still gives WIDE_TILES workgroups, else 64. */
  gemmTile?: 64 | 128;
}

/** Enough 128×128 tiles to fill a large GPU (over 100 compute units, a few workgroups each). */
const WIDE_TILES = 256;

const UNIFORMS = ['x_off', 'w_off', 'b_off', 'o_off', 'M', 'N', 'K', 'ldo', 'n_base', 'groups', 'tiles_n', 'bf16', 'bias_bf16'] as const;

const isQuant = (w: WeightType): w is QuantFormat => w === 'int8' || w === 'int4' || w === 'int4m';

export function matmulPlan(t: DeviceTraits, o: MatmulOperands): KernelDispatch[] {
  const { M, N, K } = o;
  if (M === 0 || N === 0) return [];
  const pages: readonly WeightPage[] = 'buffer' in o.w ? [{ slice: o.w, rows: N }] : o.w;
  if (pages.reduce((s, p) => s + p.rows, 0) !== N) throw new Error(`matmul: weight pages hold ${pages.map((p) => p.rows).join('+')} rows, not ${N}`);
  if (isQuant(o.wType) && K % 32 !== 0) throw new Error(`matmul: ${o.wType} weights need K a multiple of 32, got ${K}`);
  const gemv = M <= BATCH_ROWS;
  // The 64×64 GEMM tile has 256 threads; 16 KiB of workgroup memory is WebGPU's guaranteed minimum and both kernels fit it.
  if (t.maxInvocations < (gemv ? 64 : 256)) throw new Error(`matmul: the device allows ${t.maxInvocations} invocations per workgroup, fewer than ${gemv ? 64 : 256}`);
  const compute = isQuant(o.wType) ? 'exact' : o.compute;
  const dispatches: KernelDispatch[] = [];
  let nBase = 0;
  for (const [p, page] of pages.entries()) {
    if (isQuant(o.wType) && p < pages.length - 1 && page.rows % 4 !== 0) throw new Error(`matmul: a ${o.wType} weight page holds ${page.rows} rows, not a multiple of 4`);
    if (page.rows > 0) dispatches.push(pageDispatch(t, o, page, nBase, gemv, compute));
    nBase += page.rows;
  }
  return dispatches;
}

function pageDispatch(t: DeviceTraits, o: MatmulOperands, page: WeightPage, nBase: number, gemv: boolean, compute: 'exact' | 'bf16'): KernelDispatch {
  const operands = [{ slice: o.x }, { slice: page.slice }, ...(o.bias ? [{ slice: o.bias }] : []), { slice: o.out, write: true }];
  for (const op of operands) {
    if (op.slice.buffer.byteLength > t.maxStorageBufferBindingSize)
      throw new Error(
        `matmul: a buffer of ${op.slice.buffer.byteLength} bytes exceeds the device's maxStorageBufferBindingSize (${t.maxStorageBufferBindingSize}); split the weight into row pages, or the activations into smaller batches`,
      );
  }
  const bound = bindOperands(operands);
  const [xb, wb] = bound.names as [string, string];
  const bb = o.bias ? bound.names[2]! : null;
  const ob = bound.names[bound.names.length - 1]!;
  const rows = page.rows;
  const wOff = o.wType === 'f32' ? wordOffset(page.slice, 'matmul: w') : o.wType === 'bf16' ? halfOffset(page.slice, 'matmul: w') : page.slice.byteOffset;
  const bOff = !o.bias ? 0 : o.biasType === 'f32' ? wordOffset(o.bias, 'matmul: bias') : halfOffset(o.bias, 'matmul: bias');
  const tile = o.gemmTile ?? (Math.ceil(o.M / 128) * Math.ceil(rows / 128) >= WIDE_TILES ? 128 : 64);
  const tilesN = Math.ceil(rows / tile);
  const groups = gemv ? Math.ceil(rows / 4) : Math.ceil(o.M / tile) * tilesN;
  const values: Record<(typeof UNIFORMS)[number], number> = {
    x_off: wordOffset(o.x, 'matmul: x'),
    w_off: wOff,
    b_off: bOff,
    o_off: wordOffset(o.out, 'matmul: out'),
    M: o.M,
    N: rows,
    K: o.K,
    ldo: o.N,
    n_base: nBase,
    groups,
    tiles_n: tilesN,
    bf16: compute === 'bf16' ? 1 : 0,
    bias_bf16: o.biasType === 'bf16' ? 1 : 0,
  };
  // The compute mode and the bias's type are uniforms, tested where the values are loaded, not variants: every
  // variant is one more shader for a driver to compile (seconds each on a software rasteriser).
  // Vector loads where the operand has its binding to itself and every 4-element unit (k a multiple of 4) starts on
  // the vector: x and f32 weights as vec4<u32>, bf16 weights as vec2<u32>. The values loaded are the scalar ones.
  const alone = (name: string) => bound.names.filter((n) => n === name).length === 1;
  const xVec = alone(xb) && o.K % 4 === 0 && o.x.byteOffset % 16 === 0;
  const wVecBytes = o.wType === 'f32' ? 16 : o.wType === 'bf16' ? 8 : 0;
  const wVec = wVecBytes > 0 && alone(wb) && o.K % 4 === 0 && page.slice.byteOffset % wVecBytes === 0;
  const elements: Record<string, string> = {};
  if (xVec) elements[xb] = 'vec4<u32>';
  if (wVec) elements[wb] = wVecBytes === 16 ? 'vec4<u32>' : 'vec2<u32>';
  const sg = gemv && t.subgroups;
  const key = `matmul-${gemv ? `gemv${sg ? '-sg' : ''}` : `gemm${tile}`}-${o.wType}${xVec ? '-xv' : ''}${wVec ? '-wv' : ''}-${o.bias ? 'bias' : 'nobias'}-${bound.signature}`;
  const head = () =>
    [
      sg ? 'enable subgroups;' : '',
      bound.declarations(UNIFORMS, elements),
      WGSL_CONVERSIONS,
      xVec ? '' : f32Access('x', xb),
      f32Access('o', ob, true),
      wVec ? '' : o.wType === 'f32' ? f32Access('w', wb) : o.wType === 'bf16' ? bf16Access('w', wb) : byteAccess('w', wb),
      bb ? `${f32Access('bias', bb)}\n${bf16Access('bias', bb)}` : '',
      `fn bias_at(n: u32) -> f32 {
  ${bb ? 'if (u.bias_bf16 == 1u) { return bias_bf16(u.b_off + n); }\n  return bias_f32(u.b_off + n);' : 'return 0.0;'}
}`,
      // 'bf16' compute rounds x and f32 weights to bf16 as they are loaded.
      `fn rnd(v: vec4<f32>) -> vec4<f32> {
  if (u.bf16 == 0u) { return v; }
  return vec4<f32>(round_bf16(v.x), round_bf16(v.y), round_bf16(v.z), round_bf16(v.w));
}`,
      xUnit(xVec ? xb : null),
      wUnit(o.wType, wb, wVec),
    ].join('\n');
  return {
    key,
    wgsl: () => `${head()}\n${gemv ? gemvKernel(sg) : gemm(tile)}`,
    buffers: bound.buffers,
    uniforms: Uint32Array.from(UNIFORMS, (f) => values[f]),
    workgroups: grid(groups, t),
  };
}

/**
 * x[m, k..k+3] as f32 (0 past K), rounded to bf16 in 'bf16' compute. `vec`: x's binding as vec4<u32>, with K and its
 * offset multiples of 4, so that a unit is whole or wholly past K.
 */
function xUnit(vec: string | null): string {
  if (vec)
    return `fn x_unit(m: u32, k: u32) -> vec4<f32> {
  if (k + 4u > u.K) { return vec4<f32>(0.0); }
  return rnd(bitcast<vec4<f32>>(${vec}[(u.x_off + m * u.K + k) >> 2u]));
}`;
  return `fn x_unit(m: u32, k: u32) -> vec4<f32> {
  let base = u.x_off + m * u.K + k;
  var v = vec4<f32>(0.0);
  if (k + 4u <= u.K) {
    v = vec4<f32>(x_f32(base), x_f32(base + 1u), x_f32(base + 2u), x_f32(base + 3u));
  } else {
    for (var i = 0u; i < 4u; i++) { if (k + i < u.K) { v[i] = x_f32(base + i); } }
  }
  return rnd(v);
}`;
}

/** w[n, k..k+3] of the page as f32 (0 past K); k is a multiple of 4. `vec`: as xUnit says, for f32 and bf16. */
function wUnit(w: WeightType, wb: string, vec: boolean): string {
  const quad = `fn w_quad(n0: u32, k: u32) -> array<vec4<f32>, 4> {
  var w = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
  for (var r = 0u; r < 4u; r++) { if (n0 + r < u.N) { w[r] = w_unit(n0 + r, k); } }
  return w;
}`;
  if (vec) {
    const load =
      w === 'f32'
        ? 'rnd(bitcast<vec4<f32>>(p))'
        : 'vec4<f32>(bitcast<f32>(p.x << 16u), bitcast<f32>(p.x & 0xffff0000u), bitcast<f32>(p.y << 16u), bitcast<f32>(p.y & 0xffff0000u))';
    return `fn w_unit(n: u32, k: u32) -> vec4<f32> {
  if (k + 4u > u.K) { return vec4<f32>(0.0); }
  let p = ${wb}[(u.w_off + n * u.K + k) >> 2u];
  return ${load};
}
${quad}`;
  }
  if (w === 'f32' || w === 'bf16') {
    // bf16: two whole words when the four halves start on a word.
    const whole =
      w === 'f32'
        ? 'v = vec4<f32>(w_f32(base), w_f32(base + 1u), w_f32(base + 2u), w_f32(base + 3u));'
        : `if ((base & 1u) == 0u) {
      let w0 = ${wb}[base >> 1u];
      let w1 = ${wb}[(base >> 1u) + 1u];
      v = vec4<f32>(bitcast<f32>(w0 << 16u), bitcast<f32>(w0 & 0xffff0000u), bitcast<f32>(w1 << 16u), bitcast<f32>(w1 & 0xffff0000u));
    } else {
      v = vec4<f32>(w_bf16(base), w_bf16(base + 1u), w_bf16(base + 2u), w_bf16(base + 3u));
    }`;
    return `fn w_unit(n: u32, k: u32) -> vec4<f32> {
  let base = u.w_off + n * u.K + k;
  var v = vec4<f32>(0.0);
  if (k + 4u <= u.K) {
    ${whole}
  } else {
    for (var i = 0u; i < 4u; i++) { if (k + i < u.K) { v[i] = w_${w}(base + i); } }
  }
  return ${w === 'f32' ? 'rnd(v)' : 'v'};
}
${quad}`;
  }
  // quant.ts blockRef: rows in groups of 4, blocks in chunks of 4, scales (and minimums) first, then the codes, k-major
  // (4-byte words of (s, row, block), so 4 k from j are one word); whole chunks in pairs, both scales first. A chunk's place is where its scales and its first row's codes start.
  const codeBytes = w === 'int8' ? 32 : 16;
  const paramBytes = w === 'int4m' ? 4 : 2;
  const decode =
    w === 'int8'
      ? `let c = w_u32(codes + (((j >> 2u) * rows + r) * b + i) * 4u);
  let q = vec4<f32>(f32(c & 0xffu), f32((c >> 8u) & 0xffu), f32((c >> 16u) & 0xffu), f32(c >> 24u));
  return d * (q - 128.0);`
      : `let c = w_u32(codes + ((((j & 15u) >> 2u) * rows + r) * b + i) * 4u) >> select(0u, 4u, j >= 16u);
  let q = vec4<f32>(f32(c & 0xfu), f32((c >> 8u) & 0xfu), f32((c >> 16u) & 0xfu), f32((c >> 24u) & 0xfu));
  ${w === 'int4' ? 'return d * (q - 8.0);' : 'return d * q + f16_to_f32(w_u16(chunk.x + rows * b * 2u + (r * b + i) * 2u));'}`;
  // w_quad reads the 4 rows of a row group at once: their chunk is one place, found once.
  return `fn w_decode(chunk: vec2<u32>, rows: u32, b: u32, i: u32, j: u32, r: u32) -> vec4<f32> {
  let d = f16_to_f32(w_u16(chunk.x + (r * b + i) * 2u));
  let codes = chunk.y;
  ${decode}
}
fn w_chunk(g: u32, rows: u32, blk: u32) -> vec2<u32> {
  let nb = u.K >> 5u;
  let c = blk >> 2u;
  let group = u.w_off + g * 4u * nb * ${codeBytes + paramBytes}u;
  if ((c | 1u) < (nb >> 2u)) {
    let odd = c & 1u;
    let pair = group + rows * ((c & ~1u) << 2u) * ${codeBytes + paramBytes}u;
    return vec2<u32>(pair + odd * rows * ${4 * paramBytes}u, pair + rows * (${8 * paramBytes}u + odd * ${4 * codeBytes}u));
  }
  let params = group + rows * (blk & ~3u) * ${codeBytes + paramBytes}u;
  return vec2<u32>(params, params + rows * min(4u, nb - (blk & ~3u)) * ${paramBytes}u);
}
fn w_unit(n: u32, k: u32) -> vec4<f32> {
  let blk = k >> 5u;
  let rows = min(4u, u.N - (n & ~3u));
  let b = min(4u, (u.K >> 5u) - (blk & ~3u));
  return w_decode(w_chunk(n >> 2u, rows, blk), rows, b, blk & 3u, k & 31u, n & 3u);
}
fn w_quad(n0: u32, k: u32) -> array<vec4<f32>, 4> {
  let blk = k >> 5u;
  let rows = min(4u, u.N - n0);
  let b = min(4u, (u.K >> 5u) - (blk & ~3u));
  let chunk = w_chunk(n0 >> 2u, rows, blk);
  var w = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
  for (var r = 0u; r < rows; r++) { w[r] = w_decode(chunk, rows, b, blk & 3u, k & 31u, r); }
  return w;
}`;
}

// The per-row arithmetic must not depend on M (see the top): the rows of x are taken one after another by the same
// code, each with its own 4 accumulators (the workgroup's 4 weight rows) over k in the same order; the weight rows,
// read again for each row of x, come from cache. Then each output's 64 thread partials are summed in a fixed order.
// With subgroups (`sg`), each subgroup first adds its lanes' partials (subgroupAdd, in the order the driver has for
// this pipeline's subgroup size: the same for every M, since one pipeline serves all), and the output's thread sums
// the subgroup totals in the order of their first lanes; without, it sums all 64 partials in thread order.
// `part` is swizzled so that both its writes and its reads touch distinct banks.
function gemvKernel(sg: boolean): string {
  return `
var<workgroup> part: array<f32, ${64 * 4 * BATCH_ROWS}>;
${sg ? 'var<workgroup> lead: array<u32, 64>;' : ''}
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32${sg ? ', @builtin(subgroup_invocation_id) sl: u32' : ''}) {
  let gi = ${LINEAR_GROUP};
  if (gi >= u.groups) { return; }
  let n0 = gi * 4u;
  for (var m = 0u; m < u.M; m++) {
    var a = vec4<f32>(0.0);
    for (var k = lid * 4u; k < u.K; k += 256u) {
      let w = w_quad(n0, k);
      let xv = x_unit(m, k);
      a = fma(vec4<f32>(xv.x), vec4<f32>(w[0].x, w[1].x, w[2].x, w[3].x), a);
      a = fma(vec4<f32>(xv.y), vec4<f32>(w[0].y, w[1].y, w[2].y, w[3].y), a);
      a = fma(vec4<f32>(xv.z), vec4<f32>(w[0].z, w[1].z, w[2].z, w[3].z), a);
      a = fma(vec4<f32>(xv.w), vec4<f32>(w[0].w, w[1].w, w[2].w, w[3].w), a);
    }
    ${sg ? 'let t = subgroupAdd(a);\n    if (sl == 0u) { for (var r = 0u; r < 4u; r++) { part[lid * 64u + ((m * 4u + r) ^ (lid & 31u))] = t[r]; } }' : 'for (var r = 0u; r < 4u; r++) { part[lid * 64u + ((m * 4u + r) ^ (lid & 31u))] = a[r]; }'}
  }
  ${sg ? 'lead[lid] = select(0u, 1u, sl == 0u);' : ''}
  workgroupBarrier();
  let m = lid >> 2u;
  let n = n0 + (lid & 3u);
  if (m < u.M && n < u.N) {
    var s = 0.0;
    for (var i = 0u; i < 64u; i++) { ${sg ? 'if (lead[i] == 1u) { s += part[i * 64u + (lid ^ (i & 31u))]; }' : 's += part[i * 64u + (lid ^ (i & 31u))];'} }
    o_set(u.o_off + m * u.ldo + u.n_base + n, s + bias_at(u.n_base + n));
  }
}
`;
}

/**
 * The GEMM for T×T output tiles (T = 64 or 128) over k-slices of BK (16 or 8: T·BK = 1024, a 4-wide unit per thread
 * to load). Each of the 256 threads computes (T/16)² outputs as P×P blocks of 4×4 (P = T/64), 64 rows and columns
 * apart, so that a warp's reads of the tiles are consecutive vec4s of workgroup memory.
 */
function gemm(T: 64 | 128): string {
  const BK = 1024 / T;
  const P = T / 64;
  const Q = T / 4;
  const blocks: [number, number][] = [];
  for (let pa = 0; pa < P; pa++) for (let pb = 0; pb < P; pb++) blocks.push([pa, pb]);
  const accName = (pa: number, i: number, pb: number) => `acc${pa * 4 + i}_${pb}`;
  const accs = blocks.flatMap(([pa, pb]) => [0, 1, 2, 3].map((i) => accName(pa, i, pb)));
  const fmas = blocks.flatMap(([pa, pb]) => ['x', 'y', 'z', 'w'].map((c, i) => `${accName(pa, i, pb)} = fma(vec4<f32>(a${pa}.${c}), b${pb}, ${accName(pa, i, pb)});`));
  const stores = blocks.flatMap(([pa, pb]) =>
    [0, 1, 2, 3].map((i) => `store(m0 + ${pa * 64 + i}u + ty * 4u, n0 + ${pb * 64}u + tx * 4u, ${accName(pa, i, pb)});`),
  );
  const loads = (what: 'a' | 'b', tile: string, lane: string) =>
    Array.from({ length: P }, (_, p) => `let ${what}${p} = ${tile}[kk * ${Q}u + ${p * 16}u + ${lane}];`).join('\n      ');
  return `
var<workgroup> As: array<vec4<f32>, ${BK * Q}>;
var<workgroup> Bs: array<vec4<f32>, ${BK * Q}>;
fn store(m: u32, n: u32, v: vec4<f32>) {
  for (var c = 0u; c < 4u; c++) {
    if (m < u.M && n + c < u.N) { o_set(u.o_off + m * u.ldo + u.n_base + n + c, v[c] + bias_at(u.n_base + n + c)); }
  }
}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let gi = ${LINEAR_GROUP};
  if (gi >= u.groups) { return; }
  let m0 = (gi / u.tiles_n) * ${T}u;
  let n0 = (gi % u.tiles_n) * ${T}u;
  let tx = lid & 15u;
  let ty = lid >> 4u;
  let lr = lid / ${BK / 4}u;
  let lk = (lid % ${BK / 4}u) * 4u;
  ${accs.map((a) => `var ${a} = vec4<f32>(0.0);`).join('\n  ')}
  for (var k0 = 0u; k0 < u.K; k0 += ${BK}u) {
    var xa = vec4<f32>(0.0);
    if (m0 + lr < u.M) { xa = x_unit(m0 + lr, k0 + lk); }
    var wb = vec4<f32>(0.0);
    if (n0 + lr < u.N) { wb = w_unit(n0 + lr, k0 + lk); }
    for (var e = 0u; e < 4u; e++) {
      As[(lk + e) * ${Q}u + (lr >> 2u)][lr & 3u] = xa[e];
      Bs[(lk + e) * ${Q}u + (lr >> 2u)][lr & 3u] = wb[e];
    }
    workgroupBarrier();
    for (var kk = 0u; kk < ${BK}u; kk++) {
      ${loads('a', 'As', 'ty')}
      ${loads('b', 'Bs', 'tx')}
      ${fmas.join('\n      ')}
    }
    workgroupBarrier();
  }
  ${stores.join('\n  ')}
}
`;
}
