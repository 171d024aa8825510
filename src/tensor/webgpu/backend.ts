/**
 * The WebGPU backend: tensors live in GPU buffers (one per storage) and ops are WGSL kernels (plan functions in
 * kernels/), recorded through the device proxy and run in batches on the device thread. Only readbacks sync: download,
 * argmax and topK (and the ids the checking layer reads back, which come from the host anyway).
 */
import v8 from 'node:v8';
import vm from 'node:vm';
import type { AdamWHyper, AttentionOptions, ComputeMode, Kernels, TopK } from '../backend.js';
import { CheckedBackend } from '../checked.js';
import { isQuantized, type DType, type QuantFormat } from '../dtype.js';
import { HostStorage, Tensor, type Storage } from '../tensor.js';
import { OPTIONAL_FEATURES } from './adapters.js';
import { WebGpuDevice, type DeviceOptions } from './device.js';
import type { BufferRef, KernelDispatch, Slice } from './dispatch.js';
import { limitError, WebGpuError, type AdapterSummary, type DeviceLimits } from './errors.js';
import { binaryPlan, copyBytesPlan, copyRowsPlan, fillPlan, geluPlan, siluMulPlan } from './kernels/elementwise.js';
import { embeddingPlan, mergeBlocks2Plan } from './kernels/gather.js';
import {
  adamwPlan,
  attentionBackwardPlan,
  crossEntropyScratchBytes,
  crossEntropyTiledPlan,
  embeddingBackwardPlan,
  geluBackwardPlan,
  layerNormBackwardPlan,
  matmulBackwardPlan,
  mergeBlocksBackwardPlan,
  rmsNormBackwardPlan,
  ropeBackwardPlan,
  siluMulBackwardPlan,
} from './kernels/gradients.js';
import { advance } from './kernels/gradients-common.js';
import type { NormBackwardOperands } from './kernels/gradients-norm.js';
import { layerNormPlan, rmsNormPlan, softmaxPlan } from './kernels/norms.js';
import { f32Bits } from './kernels/operands.js';
import { argmaxPlan, argmaxScratchBytes, topKPlan, topKScratchBytes } from './kernels/reduce.js';
import { attentionPlan, attentionSplits } from './kernels/attention.js';
import { matmulPlan, type WeightType } from './kernels/matmul.js';
import { ropePlan } from './kernels/rope.js';
import { traitsOf, type DeviceTraits } from './kernels/wgsl-common.js';

export const WEBGPU_DEVICE = 'webgpu';

/** Rows [row, row + rows) of a weight split into pages, in a buffer of their own. */
export interface RowPage {
  readonly row: number;
  readonly rows: number;
  readonly at: Slice;
}

/**
 * One GPU buffer (its size rounded up to 4 bytes, as WebGPU copies and u32 bindings need); or, for an uploaded weight
 * past the binding limit, one buffer per page of whole rows (`pages`), which only the ops that take weights read.
 */
export class WebGpuStorage implements Storage {
  readonly device = WEBGPU_DEVICE;
  constructor(
    readonly ref: BufferRef,
    readonly byteLength: number,
    readonly pages: readonly RowPage[] | null = null,
  ) {}
  get memory(): object {
    return this;
  }
}

/** The largest buffer kept mirrored on the host (ids are small; activations never mirror). */
const MIRROR_BYTES = 64 * 1024;

const padded = (bytes: number) => Math.max(4, Math.ceil(bytes / 4) * 4);

/** Where an operand lies on the device: what plan functions take. */
export function sliceOf(t: Tensor): Slice {
  if (!(t.storage instanceof WebGpuStorage)) throw new Error(`${t} is not in WebGPU memory`);
  if (t.storage.pages) {
    throw new WebGpuError('limit', `${t} is split into ${t.storage.pages.length} pages of rows (it exceeds the storage binding limit): only embedding and matmul read a split weight`);
  }
  return { buffer: t.storage.ref, byteOffset: t.byteOffset };
}

/** A weight's pages of rows: one page, the whole tensor, unless its upload split it. Plans that take weights loop over these. */
export function pagesOf(t: Tensor): readonly RowPage[] {
  if (t.storage instanceof WebGpuStorage && t.storage.pages) {
    if (t.byteOffset !== 0 || t.byteLength !== t.storage.byteLength) throw new WebGpuError('limit', `${t} is a view of a weight split into pages of rows: only the whole weight can be read`);
    return t.storage.pages;
  }
  return [{ row: 0, rows: t.dim(0), at: sliceOf(t) }];
}

/** Where rows [row, row + rows) of a weight lie, and of its gradient: within one page of each. */
interface RowRun {
  readonly row: number;
  readonly rows: number;
  readonly a: Slice;
  readonly b: Slice | null;
}

/**
 * A weight `a` and its gradient `b` (either split into pages, at rows of their own: a bf16 weight's pages hold twice
 * the rows of its f32 gradient's) cut into runs of rows that lie in one page of each, for the plans that take a
 * weight a piece at a time.
 */
function rowRuns(a: Tensor, b: Tensor | null): RowRun[] {
  const rows = a.dim(0);
  const pa = pagesOf(a);
  const pb = b ? pagesOf(b) : [];
  const cuts = [...new Set([...pa, ...pb].map((p) => p.row))].filter((row) => row < rows).sort((x, y) => x - y);
  const at = (t: Tensor, pages: readonly RowPage[], row: number): Slice => {
    const page = pages.filter((p) => p.row <= row).at(-1)!;
    return { buffer: page.at.buffer, byteOffset: page.at.byteOffset + ((row - page.row) * t.byteLength) / rows };
  };
  return cuts.map((row, i) => ({ row, rows: (cuts[i + 1] ?? rows) - row, a: at(a, pa, row), b: b && at(b, pb, row) }));
}

export interface WebGpuOptions extends DeviceOptions {
  /** How matmul multiplies (its kernels decide what 'bf16' means on the device). Default $VL3_COMPUTE, else 'exact'. */
  compute?: ComputeMode;
  /**
   * The largest buffer a kernel binds, in bytes: an uploaded weight beyond it is split into pages of rows. Default
   * and most: the adapter's maxStorageBufferBindingSize.
   */
  bindingLimit?: number;
  /** Bytes allocated (allocateStorage) between forced garbage collections; default 256 MiB. See `collect`. */
  collectAfterBytes?: number;
}

let fullCollection: (() => void) | null = null;

/**
 * GPU buffers are freed when their storages are collected, as host memory is; but V8 does not see GPU memory, and a
 * quiet heap can keep dead KV caches and features (promoted to the old generation) for a long time. So after every
 * `collectAfterBytes` allocated, a full collection is asked for: dead storages' finalizers then run at the next turn
 * of the event loop and destroy their buffers. The collector is reached through --expose-gc, set at run time.
 */
function collect(): void {
  if (!fullCollection) {
    v8.setFlagsFromString('--expose-gc');
    fullCollection = vm.runInNewContext('gc') as () => void;
  }
  fullCollection();
}

/** $VL3_COMPUTE, as the native backend reads it; else 'exact' (the matmul kernels say what 'bf16' is on a device). */
function computeFromEnvironment(): ComputeMode {
  const value = process.env.VL3_COMPUTE || undefined;
  if (value === undefined) return 'exact';
  if (value !== 'exact' && value !== 'bf16') throw new Error(`$VL3_COMPUTE must be 'exact' or 'bf16', got '${value}'`);
  return value;
}

export class WebGpuKernels implements Kernels {
  readonly name = 'webgpu';
  readonly device = WEBGPU_DEVICE;
  /** The CPU threads this backend uses for its kernels: none beyond the model's own (the device runs them). */
  readonly threads = 1;
  readonly compute: ComputeMode;
  readonly gpu: WebGpuDevice;
  // Buffers are freed when their storage is collected, as host memory is: model code never frees explicitly.
  private readonly finalizer = new FinalizationRegistry<number[]>((ids) => {
    for (const id of ids) {
      this.mirrors.delete(id);
      this.liveBuffers--;
      if (!this.closed) this.gpu.enqueue({ op: 'destroy', id });
    }
  });
  /**
   * Host copies of small buffers last written whole from the host (token ids, positions): the checking layer reads
   * ids back before every embedding, and a copy answers without waiting for the device. Any write to the buffer on
   * the device (a kernel binding it writable, a copy into it) drops its copy.
   */
  private readonly mirrors = new Map<number, Uint8Array>();
  private closed = false;

  /** The adapter's limits, with the binding limit the options may lower: what allocations and plans must fit. */
  readonly limits: DeviceLimits;
  /**
   * The optional features the device was made with (of OPTIONAL_FEATURES, those the adapter has): a plan may emit
   * `enable f16;` where 'shader-f16' is here, and subgroup builtins where 'subgroups' is.
   */
  readonly features: ReadonlySet<string>;
  /** Limits and features as kernel plans size themselves by them. */
  readonly traits: DeviceTraits;

  /** Buffers on the device now (created and not yet destroyed): what the collection keeps bounded. */
  liveBuffers = 0;
  private readonly collectAfterBytes: number;
  private allocatedSinceCollect = 0;

  constructor(options: WebGpuOptions = {}) {
    this.compute = options.compute ?? computeFromEnvironment();
    this.collectAfterBytes = options.collectAfterBytes ?? 256 * 2 ** 20;
    this.gpu = WebGpuDevice.open(options);
    const limits = this.gpu.adapter.limits;
    this.limits = { ...limits, maxStorageBufferBindingSize: Math.min(limits.maxStorageBufferBindingSize, options.bindingLimit ?? Infinity) };
    this.features = new Set(OPTIONAL_FEATURES.filter((f) => this.gpu.adapter.features.includes(f)));
    this.traits = traitsOf(this.limits, this.features);
  }

  /** The adapter: its name, features (shader-f16, subgroups) and limits, for plans and error messages. */
  get adapter(): AdapterSummary {
    return this.gpu.adapter;
  }

  /** Ends the device thread; tensors of this backend are unusable afterwards. */
  close(): void {
    this.closed = true;
    this.gpu.close();
  }

  // -- memory ----------------------------------------------------------------------------------------------------

  allocateStorage(bytes: number): Storage {
    this.allocatedSinceCollect += bytes;
    if (this.allocatedSinceCollect > this.collectAfterBytes) {
      this.allocatedSinceCollect = 0;
      collect();
    }
    return this.newStorage(bytes, 'an allocation');
  }

  upload<D extends DType>(host: Tensor<D>): Tensor<D> {
    const bytes = host.byteLength;
    const source = host.data as unknown as ArrayBufferView;
    // A copy of exactly the tensor's bytes: posting a view would clone the whole buffer behind it (a checkpoint file).
    const all = new Uint8Array(source.buffer, source.byteOffset, bytes);
    const rows = host.rank === 0 ? 1 : host.dim(0);
    if (bytes <= this.limits.maxStorageBufferBindingSize || rows < 2) {
      const data = new Uint8Array(padded(bytes));
      data.set(all);
      return new Tensor(host.dtype, host.shape, this.newStorage(bytes, `the weight ${host}`, data));
    }
    // Pages of whole rows (whole groups of 4 rows for the quantized formats, whose layout interleaves a group's rows),
    // each a buffer a kernel can bind.
    const rowBytes = bytes / rows;
    const unit = isQuantized(host.dtype) ? 4 : 1;
    const pageRows = Math.floor(this.limits.maxStorageBufferBindingSize / (rowBytes * unit)) * unit;
    if (pageRows === 0) throw limitError(this.adapter, `a row of the weight ${host}`, rowBytes * unit, this.limits)!;
    const pages: RowPage[] = [];
    for (let row = 0; row < rows; row += pageRows) {
      const n = Math.min(pageRows, rows - row);
      const data = new Uint8Array(padded(n * rowBytes));
      data.set(all.subarray(row * rowBytes, (row + n) * rowBytes));
      const page = this.newStorage(n * rowBytes, `a page of the weight ${host}`, data, false);
      pages.push({ row, rows: n, at: { buffer: page.ref, byteOffset: 0 } });
    }
    const storage = new WebGpuStorage(pages[0]!.at.buffer, bytes, pages);
    // The pages' own storages are dropped here: the weight's storage frees all their buffers.
    this.finalizer.register(storage, pages.map((p) => p.at.buffer.id));
    return new Tensor(host.dtype, host.shape, storage);
  }

  write(dst: Tensor, values: ArrayLike<number>): void {
    const host = Tensor.empty(dst.dtype, dst.shape);
    (host.data as Float32Array | Int32Array | Uint8Array).set(values);
    const bytes = new Uint8Array((host.storage as HostStorage).buffer as ArrayBuffer);
    const at = sliceOf(dst);
    this.writeBytes(at, bytes);
    const mirror = this.mirrors.get(at.buffer.id);
    if (mirror) mirror.set(bytes, at.byteOffset);
    else if (at.byteOffset === 0 && bytes.byteLength === dst.storage.byteLength && bytes.byteLength <= MIRROR_BYTES) this.mirrors.set(at.buffer.id, bytes.slice());
  }

  download<D extends DType>(t: Tensor<D>): Tensor<D> {
    if (t.storage instanceof WebGpuStorage && t.storage.pages) {
      const whole = new Uint8Array(t.byteLength);
      const rowBytes = t.byteLength / t.dim(0);
      for (const p of pagesOf(t)) whole.set(new Uint8Array(this.gpu.read(p.at.buffer.id, 0, p.rows * rowBytes)), p.row * rowBytes);
      return new Tensor(t.dtype, t.shape, new HostStorage(whole.buffer));
    }
    const id = sliceOf(t).buffer.id;
    const mirror = this.mirrors.get(id);
    const data = mirror ? mirror.slice(t.byteOffset, t.byteOffset + t.byteLength).buffer : this.gpu.read(id, t.byteOffset, t.byteLength);
    return new Tensor(t.dtype, t.shape, new HostStorage(data));
  }

  copy(src: Tensor, dst: Tensor): void {
    if (src.storage === dst.storage && src.byteOffset === dst.byteOffset) return;
    this.copyBytes(sliceOf(src), sliceOf(dst), src.byteLength);
  }

  copyRows(src: Tensor, srcRows: Int32Array, dst: Tensor, dstRows: Int32Array): void {
    const rowBytes = src.dim(0) === 0 ? 0 : src.byteLength / src.dim(0);
    if (rowBytes === 0 || srcRows.length === 0) return;
    const s = sliceOf(src);
    const d = sliceOf(dst);
    // Many rows of whole words (the visual features' scatter into the prompt) in one dispatch, the row pairs in a
    // buffer; a repeated destination row keeps the order of the copies instead (the last one wins).
    const words = rowBytes % 4 === 0 && s.byteOffset % 4 === 0 && d.byteOffset % 4 === 0;
    if (words && srcRows.length > 1 && new Set(dstRows).size === dstRows.length) {
      const pairs = new Int32Array(2 * srcRows.length);
      srcRows.forEach((r, i) => {
        pairs[2 * i] = r;
        pairs[2 * i + 1] = dstRows[i]!;
      });
      const table = this.scratch(pairs.byteLength, new Uint8Array(pairs.buffer));
      this.run(copyRowsPlan(s, d, { buffer: table, byteOffset: 0 }, srcRows.length, rowBytes / 4));
      this.gpu.enqueue({ op: 'destroy', id: table.id });
      return;
    }
    for (let i = 0; i < srcRows.length; i++) {
      this.copyBytes({ buffer: s.buffer, byteOffset: s.byteOffset + srcRows[i]! * rowBytes }, { buffer: d.buffer, byteOffset: d.byteOffset + dstRows[i]! * rowBytes }, rowBytes);
    }
  }

  fill(t: Tensor, value: number): void {
    if (t.numel === 0) return;
    const pattern = t.dtype === 'f32' ? f32Bits(value) : t.dtype === 'i32' ? value | 0 : (value & 0xff) * 0x01010101;
    this.run(fillPlan(sliceOf(t), t.byteLength, pattern));
  }

  // -- compute ---------------------------------------------------------------------------------------------------

  matmul(x: Tensor, w: Tensor, bias: Tensor | null, out: Tensor): void {
    const K = x.dim(-1);
    const N = w.dim(0);
    const pages = pagesOf(w);
    this.run(
      matmulPlan(this.traits, {
        x: sliceOf(x),
        w: pages.length === 1 ? pages[0]!.at : pages.map((p) => ({ slice: p.at, rows: p.rows })),
        wType: w.dtype as WeightType,
        bias: bias ? sliceOf(bias) : null,
        biasType: bias?.dtype === 'bf16' ? 'bf16' : 'f32',
        out: sliceOf(out),
        M: K === 0 ? out.numel / Math.max(N, 1) : x.numel / K,
        N,
        K,
        compute: this.compute,
      }),
    );
  }

  add(a: Tensor, b: Tensor, out: Tensor): void {
    if (a.numel > 0) this.run(binaryPlan('add', sliceOf(a), sliceOf(b), sliceOf(out), a.numel, b.numel));
  }

  mul(a: Tensor, b: Tensor, out: Tensor): void {
    if (a.numel > 0) this.run(binaryPlan('mul', sliceOf(a), sliceOf(b), sliceOf(out), a.numel, b.numel));
  }

  rmsNorm(x: Tensor, weight: Tensor, eps: number, out: Tensor): void {
    const d = x.dim(-1);
    this.run(rmsNormPlan(sliceOf(x), sliceOf(weight), weight.dtype === 'bf16', sliceOf(out), x.numel / d, d, eps));
  }

  layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps: number, out: Tensor): void {
    const d = x.dim(-1);
    this.run(layerNormPlan(sliceOf(x), sliceOf(weight), weight.dtype === 'bf16', sliceOf(bias), bias.dtype === 'bf16', sliceOf(out), x.numel / d, d, eps));
  }

  gelu(x: Tensor, out: Tensor, approximation: 'tanh' | 'erf'): void {
    this.run(geluPlan(sliceOf(x), sliceOf(out), x.numel, approximation));
  }

  siluMul(gate: Tensor, up: Tensor, out: Tensor): void {
    this.run(siluMulPlan(sliceOf(gate), sliceOf(up), sliceOf(out), gate.numel));
  }

  softmax(x: Tensor, out: Tensor): void {
    const d = x.dim(-1);
    this.run(softmaxPlan(sliceOf(x), sliceOf(out), x.numel / d, d));
  }

  rope(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor): void {
    const [T, H, D] = x.shape as [number, number, number];
    this.run(ropePlan(sliceOf(x), sliceOf(cos), sliceOf(sin), sliceOf(out), T, H, D));
  }

  attention(q: Tensor, k: Tensor, v: Tensor, out: Tensor, options: AttentionOptions): void {
    const [T, Hq, D] = q.shape as [number, number, number];
    const [S, Hkv] = k.shape as [number, number];
    const operands = { q: sliceOf(q), k: sliceOf(k), v: sliceOf(v), out: sliceOf(out), T, S, Hq, Hkv, D, scale: options.scale, causal: options.causal, queryOffset: options.queryOffset ?? S - T };
    // Decode splits its keys across workgroups through a scratch buffer (attention.ts attentionSplits).
    const { scratchBytes } = attentionSplits(this.traits, operands);
    const scratch = scratchBytes > 0 ? this.scratch(scratchBytes) : null;
    this.run(attentionPlan(this.traits, operands, scratch && { buffer: scratch, byteOffset: 0 }));
    if (scratch) this.gpu.enqueue({ op: 'destroy', id: scratch.id });
  }

  mergeBlocks(x: Tensor, mergeSize: number, out: Tensor): void {
    if (mergeSize === 1) this.copy(x, out);
    else this.run(mergeBlocks2Plan(sliceOf(x), sliceOf(out), out.dim(0), x.dim(-1)));
  }

  embedding(table: Tensor, ids: Tensor, out: Tensor): void {
    const D = table.dim(1);
    for (const p of pagesOf(table)) {
      this.run(embeddingPlan(p.at, table.dtype as 'f32' | 'bf16' | QuantFormat, sliceOf(ids), sliceOf(out), ids.dim(0), p.rows, D, p.row));
    }
  }

  argmax(x: Tensor): number {
    const scratch = this.scratch(argmaxScratchBytes(x.numel));
    this.run(argmaxPlan(sliceOf(x), x.numel, scratch));
    const pair = new Uint32Array(this.gpu.read(scratch.id, scratch.byteLength - 8, 8));
    this.gpu.enqueue({ op: 'destroy', id: scratch.id });
    return pair[1]!;
  }

  topK(x: Tensor, k: number): TopK {
    if (k === 0) return { indices: new Int32Array(0), values: new Float32Array(0) };
    const scratch = this.scratch(topKScratchBytes(x.numel, k));
    const { plan, byteOffset } = topKPlan(sliceOf(x), x.numel, k, scratch);
    this.run(plan);
    const pairs = this.gpu.read(scratch.id, byteOffset, 8 * k);
    this.gpu.enqueue({ op: 'destroy', id: scratch.id });
    const words = new Uint32Array(pairs);
    const asF32 = new Float32Array(pairs);
    const values = new Float32Array(k);
    const indices = new Int32Array(k);
    for (let i = 0; i < k; i++) {
      values[i] = asF32[2 * i]!;
      indices[i] = words[2 * i + 1]!;
    }
    return { indices, values };
  }

  // -- gradients ---------------------------------------------------------------------------------------------------

  matmulBackward(dy: Tensor, x: Tensor, w: Tensor, dx: Tensor | null, dw: Tensor | null, dbias: Tensor | null): void {
    const [N, K] = w.shape as [number, number];
    const [dyAt, xAt] = [sliceOf(dy), sliceOf(x)];
    const [dxAt, dbiasAt] = [dx && sliceOf(dx), dbias && sliceOf(dbias)];
    // A weight split into pages runs a plan per run of rows: its columns of dy, its rows of dw and dbias, dx summed.
    for (const [i, run] of rowRuns(w, dw).entries()) {
      this.run(
        matmulBackwardPlan(this.traits, {
          dy: advance(dyAt, run.row, 4),
          x: xAt,
          w: run.a,
          weightType: w.dtype as 'f32' | 'bf16',
          dx: dxAt,
          dw: run.b,
          dbias: dbiasAt && advance(dbiasAt, run.row, 4),
          M: dy.numel / N,
          N: run.rows,
          K,
          compute: this.compute,
          dyStride: N,
          dxAdd: i > 0,
        }),
      );
    }
  }

  rmsNormBackward(dy: Tensor, x: Tensor, weight: Tensor, eps: number, dx: Tensor, dweight: Tensor | null): void {
    this.run(rmsNormBackwardPlan(this.traits, this.normOperands(dy, x, weight, eps, dx, dweight)));
  }

  layerNormBackward(dy: Tensor, x: Tensor, weight: Tensor, eps: number, dx: Tensor, dweight: Tensor | null, dbias: Tensor | null): void {
    this.run(layerNormBackwardPlan(this.traits, { ...this.normOperands(dy, x, weight, eps, dx, dweight), dbias: dbias && sliceOf(dbias) }));
  }

  mergeBlocksBackward(dy: Tensor, mergeSize: number, dx: Tensor): void {
    this.run(mergeBlocksBackwardPlan(this.traits, { dy: sliceOf(dy), dx: sliceOf(dx), rows: dy.dim(0), C: dy.dim(1), mergeSize }));
  }

  geluBackward(dy: Tensor, x: Tensor, dx: Tensor, approximation: 'tanh' | 'erf'): void {
    this.run(geluBackwardPlan(this.traits, { dy: sliceOf(dy), x: sliceOf(x), dx: sliceOf(dx), n: x.numel, approximation }));
  }

  siluMulBackward(dy: Tensor, gate: Tensor, up: Tensor, dgate: Tensor, dup: Tensor): void {
    const operands = { dy: sliceOf(dy), gate: sliceOf(gate), up: sliceOf(up), dgate: sliceOf(dgate), dup: sliceOf(dup) };
    this.run(siluMulBackwardPlan(this.traits, { ...operands, n: gate.numel }));
  }

  ropeBackward(dy: Tensor, cos: Tensor, sin: Tensor, dx: Tensor): void {
    const [T, H, D] = dy.shape as [number, number, number];
    this.run(ropeBackwardPlan(this.traits, { dy: sliceOf(dy), cos: sliceOf(cos), sin: sliceOf(sin), dx: sliceOf(dx), T, H, D }));
  }

  attentionBackward(q: Tensor, k: Tensor, v: Tensor, dout: Tensor, dq: Tensor, dk: Tensor, dv: Tensor, options: AttentionOptions): void {
    const [T, Hq, D] = q.shape as [number, number, number];
    const [S, Hkv] = k.shape as [number, number];
    const operands = { q: sliceOf(q), k: sliceOf(k), v: sliceOf(v), dout: sliceOf(dout), dq: sliceOf(dq), dk: sliceOf(dk), dv: sliceOf(dv) };
    this.run(attentionBackwardPlan(this.traits, { ...operands, T, S, Hq, Hkv, D, options }));
  }

  embeddingBackward(dy: Tensor, ids: Tensor, dtable: Tensor): void {
    const [dyAt, idsAt, T, D] = [sliceOf(dy), sliceOf(ids), ids.dim(0), dtable.dim(1)];
    for (const p of pagesOf(dtable)) {
      this.run(embeddingBackwardPlan(this.traits, { dy: dyAt, ids: idsAt, dtable: p.at, T, D, rowStart: p.row, rows: p.rows }));
    }
  }

  crossEntropy(hidden: Tensor, head: Tensor, targets: Tensor, scale: number, losses: Tensor, dhidden: Tensor | null, dhead: Tensor | null): void {
    const [n, H] = hidden.shape as [number, number];
    const V = head.dim(0);
    const pieces = rowRuns(head, dhead).map((run) => ({ head: run.a, dhead: run.b, rows: run.rows }));
    const scratchBytes = crossEntropyScratchBytes(n, V, this.limits.maxStorageBufferBindingSize);
    const scratch = this.scratch(scratchBytes);
    try {
      this.run(
        crossEntropyTiledPlan(this.traits, {
          hidden: sliceOf(hidden),
          head: pieces[0]!.head,
          headType: head.dtype as 'f32' | 'bf16',
          targets: sliceOf(targets),
          scale,
          losses: sliceOf(losses),
          dhidden: dhidden && sliceOf(dhidden),
          dhead: pieces[0]!.dhead,
          n,
          H,
          V,
          scratch: { buffer: scratch, byteOffset: 0 },
          scratchBytes,
          pieces,
        }),
      );
    } finally {
      this.gpu.enqueue({ op: 'destroy', id: scratch.id });
    }
  }

  adamw(p: Tensor, g: Tensor, m: Tensor, v: Tensor, step: number, hyper: AdamWHyper): void {
    this.run(adamwPlan(this.traits, { p: sliceOf(p), g: sliceOf(g), m: sliceOf(m), v: sliceOf(v), n: p.numel, step, hyper }));
  }

  private normOperands(dy: Tensor, x: Tensor, weight: Tensor, eps: number, dx: Tensor, dweight: Tensor | null): NormBackwardOperands {
    const cols = x.dim(-1);
    const weightType = weight.dtype as 'f32' | 'bf16';
    const [rows, dweightAt] = [x.numel / cols, dweight && sliceOf(dweight)];
    return { dy: sliceOf(dy), x: sliceOf(x), weight: sliceOf(weight), weightType, eps, dx: sliceOf(dx), dweight: dweightAt, rows, cols };
  }

  // -- plumbing ----------------------------------------------------------------------------------------------------

  /** Records a plan's dispatches (the seam every kernel goes through: plans are pure, this runs them). */
  run(plan: readonly KernelDispatch[]): void {
    for (const d of plan) for (const b of d.buffers) if (b.write) this.mirrors.delete(b.buffer.id);
    this.gpu.dispatch(plan);
  }

  /** A buffer for a kernel's own use (zeros, or `data`), freed by the caller (`gpu.enqueue({ op: 'destroy' })`) after its last use. */
  scratch(bytes: number, data?: Uint8Array): BufferRef {
    const error = limitError(this.adapter, 'a scratch buffer', bytes, this.limits);
    if (error) throw error;
    const id = this.gpu.newBufferId();
    const size = padded(bytes);
    let initial: Uint8Array | undefined;
    if (data) {
      initial = new Uint8Array(size);
      initial.set(data);
    }
    this.gpu.enqueue({ op: 'create', id, size, data: initial });
    return { id, byteLength: size };
  }

  /** A buffer and its storage, freed when the storage is collected (`owned`: unless a paged weight's storage frees it). */
  private newStorage(bytes: number, what: string, data?: Uint8Array, owned = true): WebGpuStorage {
    const error = limitError(this.adapter, what, bytes, this.limits);
    if (error) throw error;
    const id = this.gpu.newBufferId();
    const size = padded(bytes);
    this.gpu.enqueue({ op: 'create', id, size, data });
    this.liveBuffers++;
    const storage = new WebGpuStorage({ id, byteLength: size }, bytes);
    if (owned) this.finalizer.register(storage, [id]);
    return storage;
  }

  /** Host bytes into the device at a slice: a queued write where WebGPU allows it, else via a staging buffer and a copy kernel. */
  private writeBytes(at: Slice, bytes: Uint8Array): void {
    if (bytes.byteLength === 0) return;
    if (at.byteOffset % 4 === 0 && bytes.byteLength % 4 === 0) {
      this.gpu.enqueue({ op: 'write', id: at.buffer.id, offset: at.byteOffset, data: bytes.slice() });
      return;
    }
    const staging = this.scratch(bytes.byteLength);
    const data = new Uint8Array(staging.byteLength);
    data.set(bytes);
    this.gpu.enqueue({ op: 'write', id: staging.id, offset: 0, data });
    this.run(copyBytesPlan({ buffer: staging, byteOffset: 0 }, at, bytes.byteLength));
    this.gpu.enqueue({ op: 'destroy', id: staging.id });
  }

  private copyBytes(src: Slice, dst: Slice, bytes: number): void {
    if (bytes === 0) return;
    const aligned = src.byteOffset % 4 === 0 && dst.byteOffset % 4 === 0 && bytes % 4 === 0;
    if (aligned && src.buffer.id !== dst.buffer.id) {
      this.mirrors.delete(dst.buffer.id);
      this.gpu.enqueue({ op: 'copy', src: src.buffer.id, srcOffset: src.byteOffset, dst: dst.buffer.id, dstOffset: dst.byteOffset, size: bytes });
    } else {
      this.run(copyBytesPlan(src, dst, bytes));
    }
  }
}

/** The WebGPU kernels behind the checking layer. Creating one starts the device thread and waits for its device. */
export class WebGpuBackend extends CheckedBackend {
  declare protected readonly kernels: WebGpuKernels;

  constructor(options: WebGpuOptions = {}) {
    super(new WebGpuKernels(options));
  }

  get adapter(): AdapterSummary {
    return this.kernels.adapter;
  }

  close(): void {
    this.kernels.close();
  }
}
