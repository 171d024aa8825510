// Our WGSL for matmul's backward: two tiled GEMMs over strided operands (dy·w and dyᵀ·x) and the bias's column sums,
// in the compute modes host-gradients.ts defines (bf16 mode rounds each operand as it is staged).
import type { ComputeMode } from '../../backend.js';
import type { KernelDispatch, Slice } from '../dispatch.js';
import { type DeviceTraits, dispatch, type Elem, grid, u32u } from './gradients-common.js';

/** Output tile edge (rows and columns per workgroup) and the depth staged per step: 2·TILE·DEPTH f32 of workgroup memory. */
const TILE = 64;
const DEPTH = 16;

/**
 * C[i,j] = Σ_l A(i,l)·B(l,j) over l in order (written, or added to what C holds), A(i,l) at a + i·sAi + l·sAl and
 * B(l,j) at b + l·sBl + j·sBj: one kernel serves dy·w and dyᵀ·x. A 16×16 workgroup computes a 64×64 tile, 4×4 per
 * invocation at rows and columns 16 apart, from A and B slabs staged in workgroup memory DEPTH deep. C's rows are J
 * apart.
 */
export function gemm(
  t: DeviceTraits,
  o: {
    a: Slice;
    b: Slice;
    bElem: Elem;
    c: Slice;
    I: number;
    J: number;
    L: number;
    sAi: number;
    sAl: number;
    sBl: number;
    sBj: number;
    add: boolean;
    compute: ComputeMode;
  },
): KernelDispatch {
  const tilesJ = Math.ceil(o.J / TILE);
  const tilesI = Math.ceil(o.I / TILE);
  const staged = (v: string) => (o.compute === 'bf16' ? `roundBf16(${v})` : v);
  // Neighbouring invocations load neighbouring addresses: along l where the operand is contiguous in l.
  const aAlongL = o.sAl === 1 && o.sAi !== 1;
  const bAlongL = o.sBl === 1 && o.sBj !== 1;
  const slab = (alongL: boolean) =>
    alongL ? `let r = e / ${DEPTH}u;\n      let dl = e % ${DEPTH}u;` : `let r = e % ${TILE}u;\n      let dl = e / ${TILE}u;`;
  return dispatch(t, {
    op: 'gemm',
    variant: `${o.add ? 'add' : 'write'}.${o.compute}.${aAlongL ? 'al' : 'ar'}${bAlongL ? 'bl' : 'bj'}`,
    operands: [
      { name: 'a', slice: o.a, elem: 'f32' },
      { name: 'b', slice: o.b, elem: o.bElem },
      { name: 'c', slice: o.c, elem: 'f32', write: true },
    ],
    uniforms: {
      tilesJ: u32u(tilesJ),
      tiles: u32u(tilesI * tilesJ),
      I: u32u(o.I),
      J: u32u(o.J),
      L: u32u(o.L),
      sAi: u32u(o.sAi),
      sAl: u32u(o.sAl),
      sBl: u32u(o.sBl),
      sBj: u32u(o.sBj),
    },
    body: `
var<workgroup> As: array<f32, ${TILE * DEPTH}>;
var<workgroup> Bs: array<f32, ${TILE * DEPTH}>;
@compute @workgroup_size(16, 16) fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
    @builtin(local_invocation_id) lid3: vec3u, @builtin(local_invocation_index) lid: u32) {
  let tile = item(wg, nwg);
  if (tile >= u.tiles) { return; }
  let i0 = (tile / u.tilesJ) * ${TILE}u;
  let j0 = (tile % u.tilesJ) * ${TILE}u;
  var acc: array<f32, 16>;
  for (var l0 = 0u; l0 < u.L; l0 += ${DEPTH}u) {
    for (var e = lid; e < ${TILE * DEPTH}u; e += 256u) {
      {
        ${slab(aAlongL)}
        let l = l0 + dl;
        var av = 0.0;
        if (i0 + r < u.I && l < u.L) { av = ${staged('ld_a((i0 + r) * u.sAi + l * u.sAl)')}; }
        As[dl * ${TILE}u + r] = av;
      }
      {
        ${slab(bAlongL)}
        let l = l0 + dl;
        var bv = 0.0;
        if (j0 + r < u.J && l < u.L) { bv = ${staged('ld_b(l * u.sBl + (j0 + r) * u.sBj)')}; }
        Bs[dl * ${TILE}u + r] = bv;
      }
    }
    workgroupBarrier();
    for (var l = 0u; l < ${DEPTH}u; l++) {
      var ar: array<f32, 4>;
      var br: array<f32, 4>;
      for (var q = 0u; q < 4u; q++) {
        ar[q] = As[l * ${TILE}u + lid3.y + 16u * q];
        br[q] = Bs[l * ${TILE}u + lid3.x + 16u * q];
      }
      for (var r = 0u; r < 4u; r++) {
        for (var q = 0u; q < 4u; q++) { acc[r * 4u + q] += ar[r] * br[q]; }
      }
    }
    workgroupBarrier();
  }
  for (var r = 0u; r < 4u; r++) {
    let i = i0 + lid3.y + 16u * r;
    for (var q = 0u; q < 4u; q++) {
      let j = j0 + lid3.x + 16u * q;
      if (i < u.I && j < u.J) { ${o.add ? 'add_c' : 'st_c'}(i * u.J + j, acc[r * 4u + q]); }
    }
  }
}`,
    workgroups: grid(t, tilesI * tilesJ),
  });
}

/**
 * For out[M,N] = x[M,K]·w[N,K]ᵀ (+ bias): dx = dy·w written, dw += dyᵀ·x, dbias += Σ rows of dy (each optional).
 * dbias sums each column in row order, one invocation per column, as dy is (not rounded) in both modes.
 *
 * A weight split by rows across buffers (one binding cannot reach it whole) runs as one plan per piece of rows
 * [n0, n0 + N): dy advanced by n0 with `dyStride` the whole weight's row count, and `dxAdd` on every piece but the
 * first, so dx sums the pieces' products.
 */
export function matmulBackwardPlan(
  t: DeviceTraits,
  o: {
    dy: Slice;
    x: Slice;
    w: Slice;
    weightType: 'f32' | 'bf16';
    dx: Slice | null;
    dw: Slice | null;
    dbias: Slice | null;
    M: number;
    N: number;
    K: number;
    compute: ComputeMode;
    dyStride?: number;
    dxAdd?: boolean;
  },
): KernelDispatch[] {
  const { M, N, K, compute } = o;
  const stride = o.dyStride ?? N;
  const plans: KernelDispatch[] = [];
  const add = !!o.dxAdd;
  const bElem = o.weightType;
  if (o.dx) plans.push(gemm(t, { a: o.dy, b: o.w, bElem, c: o.dx, I: M, J: K, L: N, sAi: stride, sAl: 1, sBl: K, sBj: 1, add, compute }));
  if (o.dw)
    plans.push(gemm(t, { a: o.dy, b: o.x, bElem: 'f32', c: o.dw, I: N, J: K, L: M, sAi: 1, sAl: stride, sBl: K, sBj: 1, add: true, compute }));
  if (o.dbias)
    plans.push(
      dispatch(t, {
        op: 'biasBackward',
        operands: [
          { name: 'dy', slice: o.dy, elem: 'f32' },
          { name: 'dbias', slice: o.dbias, elem: 'f32', write: true },
        ],
        uniforms: { M: u32u(M), N: u32u(N), stride: u32u(stride) },
        body: `
@compute @workgroup_size(64) fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
    @builtin(local_invocation_index) lid: u32) {
  let n = item(wg, nwg) * 64u + lid;
  if (n >= u.N) { return; }
  var s = 0.0;
  for (var m = 0u; m < u.M; m++) { s += ld_dy(m * u.stride + n); }
  add_dbias(n, s);
}`,
        workgroups: grid(t, Math.ceil(N / 64)),
      }),
    );
  return plans;
}
