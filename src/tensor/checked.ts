/**
 * The one checking layer over every backend: each op's shapes, dtypes, storage and aliasing are checked here, once,
 * with an error naming the op and the operand, and then the backend's kernel runs on arguments known to be valid.
 * Backends implement kernels only (`Kernels`), so two backends can never disagree on what a call means.
 */
import type { AdamWHyper, AttentionOptions, Backend, ComputeMode, DecoderLayerStep, DecoderLayersStep, DecoderLayerWeights, Kernels, MatmulPart, TopK } from './backend.js';
import { DECODER_LAYER_WEIGHTS, decoderLayerOps, LayerWeightsMemo } from './decoder-layer.js';
import { BYTES_PER_ELEMENT, QUANT_FORMATS, byteSizeOf, type DType } from './dtype.js';
import { numelOf, Tensor, type Storage } from './tensor.js';

// The checks below run on every kernel call (400 a decode token), between kernels that have just streamed the weights
// through the caches: they name an operand "op: name" but build that text only when they fail, and take their dtype
// lists as constants rather than fresh arrays (BENCHMARKS.md run 19).
const F32: readonly DType[] = ['f32'];
const I32: readonly DType[] = ['i32'];
const FLOAT: readonly DType[] = ['f32', 'bf16'];
const WEIGHT: readonly DType[] = ['f32', 'bf16', ...QUANT_FORMATS];
const WRITABLE: readonly DType[] = ['f32', 'i32', 'u8'];

function assertDType(op: string, name: string, t: Tensor, dtypes: readonly DType[]): void {
  if (!dtypes.includes(t.dtype)) throw new Error(`${op}: ${name}: expected dtype ${dtypes.join(' or ')}, got ${t.dtype}`);
}

function shapeError(op: string, name: string, t: Tensor, shape: readonly number[]): Error {
  return new Error(`${op}: ${name}: expected shape [${shape.join(', ')}], got [${t.shape.join(', ')}]`);
}

function assertShape(op: string, name: string, t: Tensor, shape: readonly number[]): void {
  const have = t.shape;
  let same = have.length === shape.length;
  for (let i = 0; same && i < shape.length; i++) same = have[i] === shape[i];
  if (!same) throw shapeError(op, name, t, shape);
}

/** t's shape is `like`'s with the last dimension `last` (a matmul's out against its x). */
function assertShapeLastDim(op: string, name: string, t: Tensor, like: Tensor, last: number): void {
  const have = t.shape;
  const r = like.rank;
  let same = have.length === r && have[r - 1] === last;
  for (let i = 0; same && i < r - 1; i++) same = have[i] === like.shape[i];
  if (!same) throw shapeError(op, name, t, [...like.shape.slice(0, -1), last]);
}

function assertRank(op: string, name: string, t: Tensor, rank: number): void {
  if (t.rank !== rank) throw new Error(`${op}: ${name}: expected rank ${rank}, got shape [${t.shape.join(', ')}]`);
}

function assertRankAtLeast(op: string, name: string, t: Tensor, rank: number): void {
  if (t.rank < rank) throw new Error(`${op}: ${name}: expected rank >= ${rank}, got shape [${t.shape.join(', ')}]`);
}

/** Byte ranges of two tensors' storage intersect (the same tensor twice counts). */
function overlaps(a: Tensor, b: Tensor): boolean {
  if (a.storage.memory !== b.storage.memory) return false;
  return a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
}

function assertNoOverlap(op: string, out: Tensor, name: string, t: Tensor): void {
  if (out.numel > 0 && t.numel > 0 && overlaps(out, t)) throw new Error(`${op}: out must not share storage with ${name}`);
}

/** An op whose out may be `t` itself, but not a partly overlapping view of it. */
function assertSameOrDisjoint(op: string, out: Tensor, name: string, t: Tensor): void {
  const same = out.storage.memory === t.storage.memory && out.byteOffset === t.byteOffset && out.byteLength === t.byteLength;
  if (!same) assertNoOverlap(op, out, name, t);
}

function checkEps(op: string, eps: number): void {
  if (!Number.isFinite(eps) || eps < 0) throw new Error(`${op}: eps must be a finite number >= 0, got ${eps}`);
}

function checkRowIndices(op: string, name: string, rows: Int32Array, count: number): void {
  if (!(rows instanceof Int32Array)) throw new Error(`${op}: ${name} must be an Int32Array`);
  rows.forEach((r, i) => {
    if (r < 0 || r >= count) throw new Error(`${op}: ${name}[${i}] = ${r} is outside [0, ${count})`);
  });
}

/** The activations a one-call decoder layer writes, as its checks name them (keys and values besides). */
const WRITTEN = ['x', 'h', 'q', 'attn', 'gate', 'up'] as const;

/** What a layer writes: its keys and values, then the activations. */
const WRITTEN_BY_LAYER = ['keys', 'values', ...WRITTEN] as const;

/** How the checks of `decoderLayers`' layer l name it (built once per index: a decode step checks every layer). */
const LAYER_OPS: string[] = [];
function layerOp(op: 'decoderLayer' | 'decoderLayers', l: number): string {
  return op === 'decoderLayer' ? op : (LAYER_OPS[l] ??= `decoderLayers: layer ${l}`);
}

export class CheckedBackend implements Backend {
  /** Layers' weights already checked, with the sizes they were checked against and the storage they live in. */
  private readonly checkedLayers = new LayerWeightsMemo<{ sizes: number[]; memories: Set<unknown> }>();

  constructor(protected readonly kernels: Kernels) {}

  get name(): string {
    return this.kernels.name;
  }

  get device(): string {
    return this.kernels.device;
  }

  get threads(): number {
    return this.kernels.threads;
  }

  get compute(): ComputeMode {
    return this.kernels.compute;
  }

  // -- memory ----------------------------------------------------------------------------------------------------

  allocateStorage(bytes: number): Storage {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new Error(`allocateStorage: bytes must be an integer >= 0, got ${bytes}`);
    return this.kernels.allocateStorage(bytes);
  }

  allocate<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D> {
    if (!(dtype in BYTES_PER_ELEMENT)) throw new Error(`allocate: unknown dtype ${String(dtype)}`);
    return new Tensor(dtype, shape, this.kernels.allocateStorage(byteSizeOf(dtype, numelOf(shape))));
  }

  upload<D extends DType>(host: Tensor<D>): Tensor<D> {
    if (!host.isHost) throw new Error(`upload: ${host} is not in host memory (it lives on ${host.storage.device})`);
    return this.kernels.upload(host);
  }

  write(dst: Tensor, values: ArrayLike<number>): void {
    this.mine('write', { dst });
    assertDType('write', 'dst', dst, WRITABLE);
    if (values.length !== dst.numel) throw new Error(`write: ${values.length} values for ${dst} of ${dst.numel} elements`);
    this.kernels.write(dst, values);
  }

  download<D extends DType>(t: Tensor<D>): Tensor<D> {
    this.mine('download', { t });
    return this.kernels.download(t);
  }

  copy(src: Tensor, dst: Tensor): void {
    this.mine('copy', { src, dst });
    if (src.dtype !== dst.dtype) throw new Error(`copy: src is ${src.dtype}, dst is ${dst.dtype}`);
    if (src.numel !== dst.numel) throw new Error(`copy: src has ${src.numel} elements, dst ${dst.numel}`);
    assertSameOrDisjoint('copy', dst, 'src', src);
    this.kernels.copy(src, dst);
  }

  copyRows(src: Tensor, srcRows: Int32Array, dst: Tensor, dstRows: Int32Array): void {
    this.mine('copyRows', { src, dst });
    assertRankAtLeast('copyRows', 'src', src, 1);
    assertRankAtLeast('copyRows', 'dst', dst, 1);
    if (src.dtype !== dst.dtype) throw new Error(`copyRows: src is ${src.dtype}, dst is ${dst.dtype}`);
    const rowSize = (t: Tensor) => (t.dim(0) === 0 ? numelOf(t.shape.slice(1)) : t.numel / t.dim(0));
    if (rowSize(src) !== rowSize(dst)) throw new Error(`copyRows: rows of ${src} and ${dst} differ in size`);
    if (srcRows.length !== dstRows.length) throw new Error(`copyRows: ${srcRows.length} source rows for ${dstRows.length} destination rows`);
    checkRowIndices('copyRows', 'srcRows', srcRows, src.dim(0));
    checkRowIndices('copyRows', 'dstRows', dstRows, dst.dim(0));
    assertNoOverlap('copyRows', dst, 'src', src);
    this.kernels.copyRows(src, srcRows, dst, dstRows);
  }

  fill(t: Tensor, value: number): void {
    this.mine('fill', { t });
    assertDType('fill', 't', t, WRITABLE);
    this.kernels.fill(t, value);
  }

  // -- compute ---------------------------------------------------------------------------------------------------

  matmul(x: Tensor, w: Tensor, bias: Tensor | null, out: Tensor): void {
    this.checkMatmul('matmul', x, w, bias, out);
    this.kernels.matmul(x, w, bias, out);
  }

  matmuls(x: Tensor, parts: readonly MatmulPart[]): void {
    if (!Array.isArray(parts) || parts.length === 0) throw new Error('matmuls: parts must be a non-empty array');
    parts.forEach((p, i) => {
      this.checkMatmul(`matmuls: parts[${i}]`, x, p.w, p.bias, p.out);
      for (let j = 0; j < i; j++) assertNoOverlap(`matmuls: parts[${i}]`, p.out, `parts[${j}].out`, parts[j]!.out);
    });
    if (this.kernels.matmuls) this.kernels.matmuls(x, parts);
    else for (const p of parts) this.kernels.matmul(x, p.w, p.bias, p.out);
  }

  /** matmul's operands; `op` prefixes every message ("matmul", or "matmuls: parts[i]"). */
  private checkMatmul(op: string, x: Tensor, w: Tensor, bias: Tensor | null, out: Tensor): void {
    this.mine(op, { x, w, bias, out });
    // x may carry leading dimensions ([..., K]); they are flattened into M rows and kept in out ([..., N]).
    assertDType(op, 'x', x, F32);
    assertRankAtLeast(op, 'x', x, 1);
    assertDType(op, 'w', w, WEIGHT);
    assertRank(op, 'w', w, 2);
    const K = x.dim(-1);
    const N = w.dim(0);
    assertShape(op, 'w', w, [N, K]);
    if (bias) {
      assertDType(op, 'bias', bias, FLOAT);
      assertShape(op, 'bias', bias, [N]);
    }
    assertDType(op, 'out', out, F32);
    assertShapeLastDim(op, 'out', out, x, N);
    assertNoOverlap(op, out, 'x', x);
    assertNoOverlap(op, out, 'w', w);
    if (bias) assertNoOverlap(op, out, 'bias', bias);
  }

  decoderLayer(weights: DecoderLayerWeights, step: DecoderLayerStep): void {
    this.runLayers('decoderLayer', [weights], { ...step, keys: [step.keys], values: [step.values] });
  }

  decoderLayers(layers: readonly DecoderLayerWeights[], step: DecoderLayersStep): void {
    this.runLayers('decoderLayers', layers, step);
  }

  private runLayers(op: 'decoderLayer' | 'decoderLayers', layers: readonly DecoderLayerWeights[], step: DecoderLayersStep): void {
    const { x, keys, values, scale } = step;
    const L = layers.length;
    if (keys.length !== L || values.length !== L) {
      throw new Error(`${op}: ${L} layers need as many keys and values, got ${keys.length} keys and ${values.length} values`);
    }
    if (L === 0) return;
    assertRank(op, 'x', x, 2);
    const T = x.dim(0);
    const S = keys[0]!.dim(0);
    for (let l = 0; l < L; l++) {
      const at = layerOp(op, l);
      assertRank(at, 'keys', keys[l]!, 3);
      if (keys[l]!.dim(0) !== S) throw new Error(`${at}: keys hold ${keys[l]!.dim(0)} positions, layer 0's ${S}`);
    }
    if (S < T) throw new Error(`${op}: keys hold ${S} positions, fewer than x's ${T}`);
    if (!this.kernels.decoderLayers) {
      for (let l = 0; l < L; l++) {
        const k = keys[l]!, v = values[l]!;
        decoderLayerOps(this, layers[l]!, x, k.rows(S - T, S), v.rows(S - T, S), step, step.eps, step.scratch, (q, attn) =>
          this.attention(q, k, v, attn, { scale, causal: true, queryOffset: S - T }),
        );
      }
      return;
    }
    const { h, q, attn, gate, up } = step.scratch;
    const activations = [x, h, q, attn, gate, up];
    const sizes = this.checkLayerActivations(op, step, activations);
    for (let l = 0; l < L; l++) this.checkLayer(layerOp(op, l), layers[l]!, keys[l]!, values[l]!, step, activations, sizes);
    if (x.numel > 0) this.kernels.decoderLayers(layers, step);
  }

  /**
   * A one-call layer's activations (x, h, q, attn, gate, up: WRITTEN's order), shared by all its layers: what their
   * ops would check one by one, and that no buffer overlaps another. Returns the sizes [H, Hq, Hkv, D, I] they give.
   */
  private checkLayerActivations(op: string, step: DecoderLayersStep, written: Tensor[]): number[] {
    const { x, cos, sin, scratch } = step;
    const { h, q, attn, gate, up } = scratch;
    for (let i = 0; i < written.length; i++) {
      this.mineOne(op, WRITTEN[i]!, written[i]!);
      assertDType(op, WRITTEN[i]!, written[i]!, F32);
    }
    assertRank(op, 'q', q, 3);
    assertRank(op, 'gate', gate, 2);
    const [T, H] = x.shape as [number, number];
    const [, Hq, D] = q.shape as [number, number, number];
    const Hkv = step.keys[0]!.dim(1);
    const I = gate.dim(1);
    if (D % 2 !== 0) throw new Error(`${op}: head dimension must be even, got ${D}`);
    if (Hkv === 0 || Hq % Hkv !== 0) throw new Error(`${op}: query heads (${Hq}) must be a multiple of KV heads (${Hkv})`);
    assertShape(op, 'q', q, [T, Hq, D]);
    assertShape(op, 'attn', attn, q.shape);
    assertShape(op, 'h', h, x.shape);
    assertShape(op, 'gate', gate, [T, I]);
    assertShape(op, 'up', up, gate.shape);
    this.mineOne(op, 'cos', cos);
    this.mineOne(op, 'sin', sin);
    assertDType(op, 'cos', cos, F32);
    assertShape(op, 'cos', cos, [T, D / 2]);
    assertDType(op, 'sin', sin, F32);
    assertShape(op, 'sin', sin, cos.shape);
    checkEps(op, step.eps);
    if (!Number.isFinite(step.scale)) throw new Error(`${op}: scale must be finite, got ${step.scale}`);
    // A layer writes every buffer of `written` at some point while reading the others, cos and sin.
    for (let i = 0; i < written.length; i++) {
      const t = written[i]!;
      if (t.numel === 0) continue;
      for (let j = 0; j < i; j++) if (overlaps(t, written[j]!)) throw new Error(`${op}: ${WRITTEN[i]} and ${WRITTEN[j]} must not share storage`);
      if (overlaps(t, cos) || overlaps(t, sin)) throw new Error(`${op}: ${WRITTEN[i]} must not share storage with cos or sin`);
    }
    return [H, Hq, Hkv, D, I];
  }

  /** One layer of a one-call layer stack: its keys and values, and its weights (checked once per weights object). */
  private checkLayer(
    op: string,
    w: DecoderLayerWeights,
    keys: Tensor,
    values: Tensor,
    { cos, sin }: DecoderLayersStep,
    activations: Tensor[],
    sizes: number[],
  ): void {
    const [, , Hkv, D] = sizes as [number, number, number, number, number];
    for (const [name, t] of [['keys', keys], ['values', values]] as const) {
      this.mineOne(op, name, t);
      assertDType(op, name, t, F32);
      assertShape(op, name, t, [keys.dim(0), Hkv, D]);
      if (t.numel === 0) continue;
      for (let j = 0; j < activations.length; j++) if (overlaps(t, activations[j]!)) throw new Error(`${op}: ${name} and ${WRITTEN[j]} must not share storage`);
      if (overlaps(t, cos) || overlaps(t, sin)) throw new Error(`${op}: ${name} must not share storage with cos or sin`);
    }
    if (keys.numel > 0 && overlaps(keys, values)) throw new Error(`${op}: values and keys must not share storage`);

    let layer = this.checkedLayers.get(w);
    if (!layer || layer.sizes.some((n, i) => n !== sizes[i])) {
      this.checkLayerWeights(op, w, sizes);
      layer = { sizes, memories: new Set(DECODER_LAYER_WEIGHTS.map((name) => w[name]?.storage.memory)) };
      this.checkedLayers.set(w, layer);
    }
    // The layer writes keys, values and the activations while reading its weights.
    const written = [keys, values, ...activations];
    for (let i = 0; i < written.length; i++) {
      const t = written[i]!;
      if (t.numel === 0 || !layer.memories.has(t.storage.memory)) continue;
      for (const name of DECODER_LAYER_WEIGHTS) {
        const weight = w[name];
        if (weight && overlaps(t, weight)) throw new Error(`${op}: ${WRITTEN_BY_LAYER[i]} must not share storage with ${name}`);
      }
    }
  }

  /** A layer's weights against the sizes [H, Hq, Hkv, D, I] its activations give. */
  private checkLayerWeights(op: string, w: DecoderLayerWeights, [H, Hq, Hkv, D, I]: number[]): void {
    this.mine(op, w as unknown as Record<string, Tensor | null>);
    const linear = (name: string, t: Tensor, bias: Tensor | null, N: number, K: number) => {
      assertDType(op, name, t, WEIGHT);
      assertShape(op, name, t, [N, K]);
      if (bias) {
        assertDType(op, `${name} bias`, bias, FLOAT);
        assertShape(op, `${name} bias`, bias, [N]);
      }
    };
    for (const [name, t] of [['inputNorm', w.inputNorm], ['postNorm', w.postNorm]] as const) {
      assertDType(op, name, t, FLOAT);
      assertShape(op, name, t, [H!]);
    }
    linear('qProj', w.qProj, w.qBias, Hq! * D!, H!);
    linear('kProj', w.kProj, w.kBias, Hkv! * D!, H!);
    linear('vProj', w.vProj, w.vBias, Hkv! * D!, H!);
    linear('oProj', w.oProj, null, H!, Hq! * D!);
    linear('gateProj', w.gateProj, null, I!, H!);
    linear('upProj', w.upProj, null, I!, H!);
    linear('downProj', w.downProj, null, H!, I!);
  }

  add(a: Tensor, b: Tensor, out: Tensor): void {
    this.checkBinary('add', a, b, out);
    this.kernels.add(a, b, out);
  }

  mul(a: Tensor, b: Tensor, out: Tensor): void {
    this.checkBinary('mul', a, b, out);
    this.kernels.mul(a, b, out);
  }

  rmsNorm(x: Tensor, weight: Tensor, eps: number, out: Tensor): void {
    this.mine('rmsNorm', { x, weight, out });
    assertDType('rmsNorm', 'x', x, F32);
    assertRankAtLeast('rmsNorm', 'x', x, 1);
    assertDType('rmsNorm', 'weight', weight, FLOAT);
    assertShape('rmsNorm', 'weight', weight, [x.dim(-1)]);
    assertDType('rmsNorm', 'out', out, F32);
    assertShape('rmsNorm', 'out', out, x.shape);
    checkEps('rmsNorm', eps);
    assertSameOrDisjoint('rmsNorm', out, 'x', x);
    assertNoOverlap('rmsNorm', out, 'weight', weight);
    if (x.numel > 0) this.kernels.rmsNorm(x, weight, eps, out);
  }

  layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps: number, out: Tensor): void {
    this.mine('layerNorm', { x, weight, bias, out });
    assertDType('layerNorm', 'x', x, F32);
    assertRankAtLeast('layerNorm', 'x', x, 1);
    assertDType('layerNorm', 'weight', weight, FLOAT);
    assertShape('layerNorm', 'weight', weight, [x.dim(-1)]);
    assertDType('layerNorm', 'bias', bias, FLOAT);
    assertShape('layerNorm', 'bias', bias, [x.dim(-1)]);
    assertDType('layerNorm', 'out', out, F32);
    assertShape('layerNorm', 'out', out, x.shape);
    checkEps('layerNorm', eps);
    assertSameOrDisjoint('layerNorm', out, 'x', x);
    assertNoOverlap('layerNorm', out, 'weight', weight);
    assertNoOverlap('layerNorm', out, 'bias', bias);
    if (x.numel > 0) this.kernels.layerNorm(x, weight, bias, eps, out);
  }

  gelu(x: Tensor, out: Tensor, approximation: 'tanh' | 'erf'): void {
    this.mine('gelu', { x, out });
    assertDType('gelu', 'x', x, F32);
    assertDType('gelu', 'out', out, F32);
    assertShape('gelu', 'out', out, x.shape);
    if (approximation !== 'tanh' && approximation !== 'erf') {
      throw new Error(`gelu: approximation must be 'tanh' or 'erf', got ${String(approximation)}`);
    }
    assertSameOrDisjoint('gelu', out, 'x', x);
    if (x.numel > 0) this.kernels.gelu(x, out, approximation);
  }

  mergeBlocks(x: Tensor, mergeSize: number, out: Tensor): void {
    this.mine('mergeBlocks', { x, out });
    if (mergeSize !== 1 && mergeSize !== 2) throw new Error(`mergeBlocks: merge size ${mergeSize} is not supported (1 or 2)`);
    assertDType('mergeBlocks', 'x', x, F32);
    assertRankAtLeast('mergeBlocks', 'x', x, 1);
    const C = x.dim(-1);
    const group = mergeSize * mergeSize;
    const rows = C === 0 ? 0 : x.numel / C;
    if (rows % group !== 0) throw new Error(`mergeBlocks: x has ${rows} rows, not a multiple of ${group} (merge size ${mergeSize})`);
    assertDType('mergeBlocks', 'out', out, F32);
    assertShape('mergeBlocks', 'out', out, [rows / group, C]);
    assertNoOverlap('mergeBlocks', out, 'x', x);
    if (out.numel > 0) this.kernels.mergeBlocks(x, mergeSize, out);
  }

  siluMul(gate: Tensor, up: Tensor, out: Tensor): void {
    this.mine('siluMul', { gate, up, out });
    assertDType('siluMul', 'gate', gate, F32);
    assertDType('siluMul', 'up', up, F32);
    assertShape('siluMul', 'up', up, gate.shape);
    assertDType('siluMul', 'out', out, F32);
    assertShape('siluMul', 'out', out, gate.shape);
    assertSameOrDisjoint('siluMul', out, 'gate', gate);
    assertSameOrDisjoint('siluMul', out, 'up', up);
    if (gate.numel > 0) this.kernels.siluMul(gate, up, out);
  }

  softmax(x: Tensor, out: Tensor): void {
    this.mine('softmax', { x, out });
    assertDType('softmax', 'x', x, F32);
    assertRankAtLeast('softmax', 'x', x, 1);
    assertDType('softmax', 'out', out, F32);
    assertShape('softmax', 'out', out, x.shape);
    assertSameOrDisjoint('softmax', out, 'x', x);
    if (x.numel > 0) this.kernels.softmax(x, out);
  }

  rope(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor): void {
    this.mine('rope', { x, cos, sin, out });
    assertDType('rope', 'x', x, F32);
    assertRank('rope', 'x', x, 3);
    const [T, , D] = x.shape as [number, number, number];
    if (D % 2 !== 0) throw new Error(`rope: head dimension must be even, got ${D}`);
    assertDType('rope', 'cos', cos, F32);
    assertShape('rope', 'cos', cos, [T, D / 2]);
    assertDType('rope', 'sin', sin, F32);
    assertShape('rope', 'sin', sin, [T, D / 2]);
    assertDType('rope', 'out', out, F32);
    assertShape('rope', 'out', out, x.shape);
    assertSameOrDisjoint('rope', out, 'x', x);
    assertNoOverlap('rope', out, 'cos', cos);
    assertNoOverlap('rope', out, 'sin', sin);
    if (x.numel > 0) this.kernels.rope(x, cos, sin, out);
  }

  attention(q: Tensor, k: Tensor, v: Tensor, out: Tensor, options: AttentionOptions): void {
    this.mine('attention', { q, k, v, out });
    const queryOffset = this.checkAttention('attention', q, k, v, options);
    assertDType('attention', 'out', out, F32);
    assertShape('attention', 'out', out, q.shape);
    assertNoOverlap('attention', out, 'q', q);
    assertNoOverlap('attention', out, 'k', k);
    assertNoOverlap('attention', out, 'v', v);
    if (q.dim(0) > 0) this.kernels.attention(q, k, v, out, { scale: options.scale, causal: options.causal, queryOffset });
  }

  embedding(table: Tensor, ids: Tensor, out: Tensor): void {
    this.mine('embedding', { table, ids, out });
    assertDType('embedding', 'table', table, WEIGHT);
    assertRank('embedding', 'table', table, 2);
    assertDType('embedding', 'ids', ids, I32);
    assertRank('embedding', 'ids', ids, 1);
    const [V, D] = table.shape as [number, number];
    assertDType('embedding', 'out', out, F32);
    assertShape('embedding', 'out', out, [ids.dim(0), D]);
    assertNoOverlap('embedding', out, 'table', table);
    this.checkIds('embedding', ids, V);
    if (out.numel > 0) this.kernels.embedding(table, ids, out);
  }

  argmax(x: Tensor): number {
    this.mine('argmax', { x });
    assertDType('argmax', 'x', x, F32);
    assertRank('argmax', 'x', x, 1);
    if (x.numel === 0) throw new Error('argmax: x is empty');
    return this.kernels.argmax(x);
  }

  topK(x: Tensor, k: number): TopK {
    this.mine('topK', { x });
    assertDType('topK', 'x', x, F32);
    assertRank('topK', 'x', x, 1);
    if (!Number.isInteger(k) || k < 0 || k > x.numel) throw new Error(`topK: k must be an integer in [0, ${x.numel}], got ${k}`);
    return this.kernels.topK(x, k);
  }

  // -- gradients ------------------------------------------------------------------------------------------------

  matmulBackward(dy: Tensor, x: Tensor, w: Tensor, dx: Tensor | null, dw: Tensor | null, dbias: Tensor | null): void {
    const op = 'matmulBackward';
    this.mine(op, { dy, x, w, dx, dw, dbias });
    assertDType(op, 'x', x, F32);
    assertRankAtLeast(op, 'x', x, 1);
    assertDType(op, 'w', w, FLOAT);
    assertRank(op, 'w', w, 2);
    const [N, K] = w.shape as [number, number];
    assertShape(op, 'w', w, [N, x.dim(-1)]);
    assertDType(op, 'dy', dy, F32);
    assertShapeLastDim(op, 'dy', dy, x, N);
    const outputs = { dx, dw, dbias };
    const shapes = { dx: x.shape, dw: [N, K], dbias: [N] };
    for (const [name, t] of Object.entries(outputs)) {
      if (!t) continue;
      assertDType(op, name, t, F32);
      assertShape(op, name, t, shapes[name as keyof typeof shapes]);
      for (const [inName, input] of Object.entries({ dy, x, w })) assertNoOverlap(op, t, inName, input);
    }
    if (dx && dw) assertNoOverlap(op, dx, 'dw', dw);
    if (dy.numel > 0) this.kernels.matmulBackward(dy, x, w, dx, dw, dbias);
  }

  rmsNormBackward(dy: Tensor, x: Tensor, weight: Tensor, eps: number, dx: Tensor, dweight: Tensor | null): void {
    const op = 'rmsNormBackward';
    this.mine(op, { dy, x, weight, dx, dweight });
    assertDType(op, 'x', x, F32);
    assertRankAtLeast(op, 'x', x, 1);
    assertDType(op, 'weight', weight, FLOAT);
    assertShape(op, 'weight', weight, [x.dim(-1)]);
    for (const [name, t] of Object.entries({ dy, dx })) {
      assertDType(op, name, t, F32);
      assertShape(op, name, t, x.shape);
    }
    if (dweight) {
      assertDType(op, 'dweight', dweight, F32);
      assertShape(op, 'dweight', dweight, weight.shape);
      assertNoOverlap(op, dweight, 'dx', dx);
    }
    checkEps(op, eps);
    assertSameOrDisjoint(op, dx, 'dy', dy);
    assertNoOverlap(op, dx, 'x', x);
    if (x.numel > 0) this.kernels.rmsNormBackward(dy, x, weight, eps, dx, dweight);
  }

  layerNormBackward(dy: Tensor, x: Tensor, weight: Tensor, eps: number, dx: Tensor, dweight: Tensor | null, dbias: Tensor | null): void {
    const op = 'layerNormBackward';
    this.mine(op, { dy, x, weight, dx, dweight, dbias });
    assertDType(op, 'x', x, F32);
    assertRankAtLeast(op, 'x', x, 1);
    assertDType(op, 'weight', weight, FLOAT);
    assertShape(op, 'weight', weight, [x.dim(-1)]);
    for (const [name, t] of Object.entries({ dy, dx })) {
      assertDType(op, name, t, F32);
      assertShape(op, name, t, x.shape);
    }
    for (const [name, t] of Object.entries({ dweight, dbias })) {
      if (!t) continue;
      assertDType(op, name, t, F32);
      assertShape(op, name, t, weight.shape);
      assertNoOverlap(op, t, 'dx', dx);
    }
    if (dweight && dbias) assertNoOverlap(op, dweight, 'dbias', dbias);
    checkEps(op, eps);
    assertSameOrDisjoint(op, dx, 'dy', dy);
    assertNoOverlap(op, dx, 'x', x);
    if (x.numel > 0) this.kernels.layerNormBackward(dy, x, weight, eps, dx, dweight, dbias);
  }

  mergeBlocksBackward(dy: Tensor, mergeSize: number, dx: Tensor): void {
    const op = 'mergeBlocksBackward';
    this.mine(op, { dy, dx });
    if (mergeSize !== 1 && mergeSize !== 2) throw new Error(`${op}: merge size ${mergeSize} is not supported (1 or 2)`);
    assertDType(op, 'dy', dy, F32);
    assertRank(op, 'dy', dy, 2);
    assertDType(op, 'dx', dx, F32);
    assertShape(op, 'dx', dx, [dy.dim(0) * mergeSize * mergeSize, dy.dim(1)]);
    assertNoOverlap(op, dx, 'dy', dy);
    if (dy.numel > 0) this.kernels.mergeBlocksBackward(dy, mergeSize, dx);
  }

  geluBackward(dy: Tensor, x: Tensor, dx: Tensor, approximation: 'tanh' | 'erf'): void {
    const op = 'geluBackward';
    this.mine(op, { dy, x, dx });
    for (const [name, t] of Object.entries({ dy, x, dx })) {
      assertDType(op, name, t, F32);
      assertShape(op, name, t, x.shape);
    }
    if (approximation !== 'tanh' && approximation !== 'erf') throw new Error(`${op}: approximation must be 'tanh' or 'erf', got ${String(approximation)}`);
    assertSameOrDisjoint(op, dx, 'dy', dy);
    assertSameOrDisjoint(op, dx, 'x', x);
    if (x.numel > 0) this.kernels.geluBackward(dy, x, dx, approximation);
  }

  siluMulBackward(dy: Tensor, gate: Tensor, up: Tensor, dgate: Tensor, dup: Tensor): void {
    const op = 'siluMulBackward';
    this.mine(op, { dy, gate, up, dgate, dup });
    for (const [name, t] of Object.entries({ dy, gate, up, dgate, dup })) {
      assertDType(op, name, t, F32);
      assertShape(op, name, t, gate.shape);
    }
    // Each element is read before it is written, so the gradients may replace dy, gate or up element for element.
    for (const [name, t] of Object.entries({ dy, gate, up })) {
      assertSameOrDisjoint(op, dgate, name, t);
      assertSameOrDisjoint(op, dup, name, t);
    }
    assertNoOverlap(op, dgate, 'dup', dup);
    if (gate.numel > 0) this.kernels.siluMulBackward(dy, gate, up, dgate, dup);
  }

  ropeBackward(dy: Tensor, cos: Tensor, sin: Tensor, dx: Tensor): void {
    const op = 'ropeBackward';
    this.mine(op, { dy, cos, sin, dx });
    assertDType(op, 'dy', dy, F32);
    assertRank(op, 'dy', dy, 3);
    const [T, , D] = dy.shape as [number, number, number];
    if (D % 2 !== 0) throw new Error(`${op}: head dimension must be even, got ${D}`);
    for (const [name, t] of Object.entries({ cos, sin })) {
      assertDType(op, name, t, F32);
      assertShape(op, name, t, [T, D / 2]);
      assertNoOverlap(op, dx, name, t);
    }
    assertDType(op, 'dx', dx, F32);
    assertShape(op, 'dx', dx, dy.shape);
    assertSameOrDisjoint(op, dx, 'dy', dy);
    if (dy.numel > 0) this.kernels.ropeBackward(dy, cos, sin, dx);
  }

  attentionBackward(q: Tensor, k: Tensor, v: Tensor, dout: Tensor, dq: Tensor, dk: Tensor, dv: Tensor, options: AttentionOptions): void {
    const op = 'attentionBackward';
    this.mine(op, { q, k, v, dout, dq, dk, dv });
    const queryOffset = this.checkAttention(op, q, k, v, options);
    for (const [name, t, like] of [['dout', dout, q], ['dq', dq, q], ['dk', dk, k], ['dv', dv, v]] as const) {
      assertDType(op, name, t, F32);
      assertShape(op, name, t, like.shape);
    }
    for (const [outName, out] of Object.entries({ dq, dk, dv })) {
      for (const [name, t] of Object.entries({ q, k, v, dout })) assertNoOverlap(op, out, name, t);
      for (const [name, t] of Object.entries({ dq, dk, dv })) if (name !== outName) assertNoOverlap(op, out, name, t);
    }
    if (q.numel > 0) this.kernels.attentionBackward(q, k, v, dout, dq, dk, dv, { scale: options.scale, causal: options.causal, queryOffset });
  }

  embeddingBackward(dy: Tensor, ids: Tensor, dtable: Tensor): void {
    const op = 'embeddingBackward';
    this.mine(op, { dy, ids, dtable });
    assertDType(op, 'dtable', dtable, F32);
    assertRank(op, 'dtable', dtable, 2);
    assertDType(op, 'ids', ids, I32);
    assertRank(op, 'ids', ids, 1);
    assertDType(op, 'dy', dy, F32);
    assertShape(op, 'dy', dy, [ids.dim(0), dtable.dim(1)]);
    assertNoOverlap(op, dtable, 'dy', dy);
    this.checkIds(op, ids, dtable.dim(0));
    if (dy.numel > 0) this.kernels.embeddingBackward(dy, ids, dtable);
  }

  crossEntropy(hidden: Tensor, head: Tensor, targets: Tensor, scale: number, losses: Tensor, dhidden: Tensor | null, dhead: Tensor | null): void {
    const op = 'crossEntropy';
    this.mine(op, { hidden, head, targets, losses, dhidden, dhead });
    assertDType(op, 'hidden', hidden, F32);
    assertRank(op, 'hidden', hidden, 2);
    assertDType(op, 'head', head, FLOAT);
    assertRank(op, 'head', head, 2);
    const [n, H] = hidden.shape as [number, number];
    assertShape(op, 'head', head, [head.dim(0), H]);
    assertDType(op, 'targets', targets, I32);
    assertShape(op, 'targets', targets, [n]);
    assertDType(op, 'losses', losses, F32);
    assertShape(op, 'losses', losses, [n]);
    if (!Number.isFinite(scale)) throw new Error(`${op}: scale must be finite, got ${scale}`);
    this.checkIds(op, targets, head.dim(0));
    const outputs: [string, Tensor | null, readonly number[]][] = [['dhidden', dhidden, hidden.shape], ['dhead', dhead, head.shape]];
    for (const [name, t, shape] of outputs) {
      if (!t) continue;
      assertDType(op, name, t, F32);
      assertShape(op, name, t, shape);
      for (const [inName, input] of Object.entries({ hidden, head, losses })) assertNoOverlap(op, t, inName, input);
    }
    if (dhidden && dhead) assertNoOverlap(op, dhidden, 'dhead', dhead);
    if (n > 0) this.kernels.crossEntropy(hidden, head, targets, scale, losses, dhidden, dhead);
  }

  adamw(p: Tensor, g: Tensor, m: Tensor, v: Tensor, step: number, hyper: AdamWHyper): void {
    const op = 'adamw';
    const operands = { p, g, m, v };
    this.mine(op, operands);
    for (const [name, t] of Object.entries(operands)) {
      assertDType(op, name, t, F32);
      assertShape(op, name, t, p.shape);
    }
    // Overlapping operands would make the result depend on the order a kernel visits elements in (its vector width,
    // its threads), and a correct caller never has any.
    const entries = Object.entries(operands);
    entries.forEach(([an, a], i) => {
      for (const [bn, b] of entries.slice(i + 1)) {
        if (a.numel > 0 && overlaps(a, b)) throw new Error(`${op}: ${an} and ${bn} must not share storage`);
      }
    });
    if (!Number.isInteger(step) || step < 1) throw new Error(`${op}: step must be an integer >= 1, got ${step}`);
    const { lr, beta1, beta2, eps, weightDecay } = hyper;
    for (const [name, value] of Object.entries({ lr, eps, weightDecay })) {
      if (!Number.isFinite(value)) throw new Error(`${op}: ${name} must be finite, got ${value}`);
    }
    for (const [name, value] of Object.entries({ beta1, beta2 })) {
      if (!(value >= 0 && value < 1)) throw new Error(`${op}: ${name} must be in [0, 1), got ${value}`);
    }
    if (p.numel > 0) this.kernels.adamw(p, g, m, v, step, { lr, beta1, beta2, eps, weightDecay });
  }

  /** Checks q, k, v and the options of an attention op; returns the causal query offset (0 when not causal). */
  private checkAttention(op: string, q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions): number {
    assertDType(op, 'q', q, F32);
    assertRank(op, 'q', q, 3);
    assertDType(op, 'k', k, F32);
    assertRank(op, 'k', k, 3);
    const [T, Hq, D] = q.shape as [number, number, number];
    const [S, Hkv] = k.shape as [number, number, number];
    assertShape(op, 'k', k, [S, Hkv, D]);
    assertDType(op, 'v', v, F32);
    assertShape(op, 'v', v, [S, Hkv, D]);
    if (Hkv === 0 || Hq % Hkv !== 0) throw new Error(`${op}: query heads (${Hq}) must be a multiple of KV heads (${Hkv})`);
    if (T > 0 && S === 0) throw new Error(`${op}: k and v hold no keys`);
    if (!Number.isFinite(options.scale)) throw new Error(`${op}: scale must be finite, got ${options.scale}`);
    const queryOffset = options.queryOffset ?? S - T;
    if (options.causal && (!Number.isInteger(queryOffset) || queryOffset < 0)) {
      throw new Error(`${op}: causal queryOffset must be an integer >= 0, got ${queryOffset} (T=${T}, S=${S})`);
    }
    return options.causal ? queryOffset : 0;
  }

  /** Ids come from the host (tokenizer, labels), so checking them here costs no transfer. */
  private checkIds(op: string, ids: Tensor, count: number): void {
    const idData = this.kernels.download(ids).data as Int32Array;
    idData.forEach((id, i) => {
      if (id < 0 || id >= count) throw new Error(`${op}: ids[${i}] = ${id} is outside [0, ${count})`);
    });
  }

  private checkBinary(op: string, a: Tensor, b: Tensor, out: Tensor): void {
    this.mine(op, { a, b, out });
    assertDType(op, 'a', a, F32);
    assertDType(op, 'b', b, F32);
    const sameShape = b.rank === a.rank && b.shape.every((d, i) => d === a.shape[i]);
    if (!sameShape) {
      if (a.rank === 0) assertShape(op, 'b', b, a.shape);
      assertShape(op, "b (a's shape or a vector over its last dimension)", b, [a.dim(-1)]);
    }
    assertDType(op, 'out', out, F32);
    assertShape(op, 'out', out, a.shape);
    assertSameOrDisjoint(op, out, 'a', a);
    assertSameOrDisjoint(op, out, 'b', b);
  }

  private mineOne(op: string, name: string, t: Tensor): void {
    if (t.storage.device !== this.kernels.device) {
      throw new Error(`${op}: ${name} (${t}) lives on ${t.storage.device}, this backend (${this.name}) on ${this.kernels.device}: upload it first`);
    }
  }

  /** Every operand must be in this backend's memory: a tensor of another device is refused by name. */
  private mine(op: string, operands: Record<string, Tensor | null>): void {
    // for…in rather than Object.entries: this runs on every kernel call (400 a decode token), and the entries' arrays
    // were the largest item of a decode step's JavaScript.
    for (const name in operands) {
      const t = operands[name];
      if (t) this.mineOne(op, name, t);
    }
  }
}
