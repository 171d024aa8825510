import type { AttentionOptions, ComputeMode, Kernels, TopK } from './backend.js';
import { CheckedBackend } from './checked.js';
import { bf16ToF32, f32ToBf16, floatReader, isQuantized } from './dtype.js';
import { quantizedMatmulInt } from './quant.js';
import { HostKernels } from './host.js';
import { erf } from './math.js';
import type { Tensor } from './tensor.js';

/** A value as bf16 holds it: round-to-nearest-even to 8 significant bits (NaN stays NaN, infinities stay). */
const toBf16 = (v: number) => bf16ToF32(f32ToBf16(v));

/**
 * Plain TypeScript loops, one per op: the definition every faster backend's kernels are tested against, and kernels
 * that run anywhere. Accumulation is in f32 (Math.fround) where the native kernels accumulate in f32, so the two can
 * be compared tightly; clarity comes before speed here. Arguments were checked by `CheckedBackend`.
 */
export class ReferenceKernels extends HostKernels implements Kernels {
  readonly name = 'reference';
  readonly threads = 1;

  constructor(readonly compute: ComputeMode = 'exact') {
    super();
  }

  /**
   * In bf16 mode x and w are rounded to bf16 first; their products are exact in f32, summed in f32 as in exact mode.
   * Quantized weights: exact mode multiplies by their exactly dequantized values; bf16 mode (the fast mode) quantizes
   * x per block and sums exact integer block dots (quant.ts `quantizedMatmulInt`).
   */
  matmul(x: Tensor, w: Tensor, bias: Tensor | null, out: Tensor): void {
    const [N, K] = [w.dim(0), w.dim(1)];
    const M = K === 0 ? out.numel / N : x.numel / K;
    const bf16 = this.compute === 'bf16';
    const od = out.data as Float32Array;
    const br = bias ? floatReader(bias.dtype, bias.data) : null;
    if (isQuantized(w.dtype) && bf16) {
      quantizedMatmulInt(w.dtype, x.data as Float32Array, w.data as Uint8Array, br ?? (() => 0), od, M, N, K);
      return;
    }
    const xd = bf16 ? (x.data as Float32Array).map(toBf16) : (x.data as Float32Array);
    const wf = isQuantized(w.dtype) ? w.toFloat32() : null;
    const wr = wf ? (i: number) => wf[i]! : floatReader(w.dtype, w.data);
    const wRow = new Float32Array(K);
    for (let n = 0; n < N; n++) {
      for (let k = 0; k < K; k++) wRow[k] = bf16 ? toBf16(wr(n * K + k)) : wr(n * K + k);
      const b = br ? br(n) : 0;
      for (let m = 0; m < M; m++) {
        let acc = 0;
        const base = m * K;
        for (let k = 0; k < K; k++) acc = Math.fround(acc + Math.fround(xd[base + k]! * wRow[k]!));
        od[m * N + n] = Math.fround(acc + b);
      }
    }
  }

  add(a: Tensor, b: Tensor, out: Tensor): void {
    this.binary(a, b, out, (p, q) => p + q);
  }

  mul(a: Tensor, b: Tensor, out: Tensor): void {
    this.binary(a, b, out, (p, q) => p * q);
  }

  private binary(a: Tensor, b: Tensor, out: Tensor, f: (p: number, q: number) => number): void {
    const ad = a.data as Float32Array;
    const bd = b.data as Float32Array;
    const od = out.data as Float32Array;
    const inner = bd.length;
    for (let i = 0; i < ad.length; i++) od[i] = f(ad[i]!, bd[i % inner]!);
  }

  rmsNorm(x: Tensor, weight: Tensor, eps: number, out: Tensor): void {
    const D = x.dim(-1);
    const xd = x.data as Float32Array;
    const od = out.data as Float32Array;
    const wr = floatReader(weight.dtype, weight.data);
    for (let r = 0; r < x.numel / D; r++) {
      const base = r * D;
      let sum = 0;
      for (let i = 0; i < D; i++) sum += xd[base + i]! * xd[base + i]!;
      const inv = Math.fround(1 / Math.sqrt(Math.fround(Math.fround(sum / D) + eps)));
      for (let i = 0; i < D; i++) od[base + i] = Math.fround(xd[base + i]! * inv) * wr(i);
    }
  }

  layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps: number, out: Tensor): void {
    const D = x.dim(-1);
    const xd = x.data as Float32Array;
    const od = out.data as Float32Array;
    const wr = floatReader(weight.dtype, weight.data);
    const br = floatReader(bias.dtype, bias.data);
    for (let r = 0; r < x.numel / D; r++) {
      const base = r * D;
      let sum = 0;
      for (let i = 0; i < D; i++) sum += xd[base + i]!;
      const mean = sum / D;
      let sq = 0;
      for (let i = 0; i < D; i++) sq += (xd[base + i]! - mean) ** 2;
      const inv = 1 / Math.sqrt(sq / D + eps);
      for (let i = 0; i < D; i++) od[base + i] = (xd[base + i]! - mean) * inv * wr(i) + br(i);
    }
  }

  gelu(x: Tensor, out: Tensor, approximation: 'tanh' | 'erf'): void {
    const xd = x.data as Float32Array;
    const od = out.data as Float32Array;
    const c = Math.sqrt(2 / Math.PI);
    for (let i = 0; i < xd.length; i++) {
      const u = xd[i]!;
      od[i] = approximation === 'tanh' ? 0.5 * u * (1 + Math.tanh(c * (u + 0.044715 * u * u * u))) : 0.5 * u * (1 + erf(u / Math.SQRT2));
    }
  }

  siluMul(gate: Tensor, up: Tensor, out: Tensor): void {
    const g = gate.data as Float32Array;
    const u = up.data as Float32Array;
    const o = out.data as Float32Array;
    for (let i = 0; i < g.length; i++) o[i] = Math.fround(g[i]! / (1 + Math.exp(-g[i]!))) * u[i]!;
  }

  softmax(x: Tensor, out: Tensor): void {
    const D = x.dim(-1);
    const xd = x.data as Float32Array;
    const od = out.data as Float32Array;
    for (let r = 0; r < x.numel / D; r++) softmaxRow(xd, od, r * D, D);
  }

  rope(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor): void {
    const [T, H, D] = x.shape as [number, number, number];
    const half = D / 2;
    const xd = x.data as Float32Array;
    const od = out.data as Float32Array;
    const c = cos.data as Float32Array;
    const s = sin.data as Float32Array;
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < H; h++) {
        const base = (t * H + h) * D;
        for (let j = 0; j < half; j++) {
          const x1 = xd[base + j]!;
          const x2 = xd[base + j + half]!;
          const cj = c[t * half + j]!;
          const sj = s[t * half + j]!;
          od[base + j] = Math.fround(x1 * cj) - Math.fround(x2 * sj);
          od[base + j + half] = Math.fround(x2 * cj) + Math.fround(x1 * sj);
        }
      }
    }
  }

  attention(q: Tensor, k: Tensor, v: Tensor, out: Tensor, options: AttentionOptions): void {
    const [T, Hq, D] = q.shape as [number, number, number];
    const [S, Hkv] = k.shape as [number, number, number];
    const offset = options.queryOffset ?? S - T;
    const qd = q.data as Float32Array;
    const kd = k.data as Float32Array;
    const vd = v.data as Float32Array;
    const od = out.data as Float32Array;
    const scores = new Float32Array(S);
    for (let h = 0; h < Hq; h++) {
      const g = Math.floor(h / (Hq / Hkv));
      for (let t = 0; t < T; t++) {
        const visible = options.causal ? Math.min(S, offset + t + 1) : S;
        const qBase = (t * Hq + h) * D;
        for (let s = 0; s < visible; s++) {
          const kBase = (s * Hkv + g) * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot = Math.fround(dot + Math.fround(qd[qBase + d]! * kd[kBase + d]!));
          scores[s] = Math.fround(dot * options.scale);
        }
        softmaxRow(scores, scores, 0, visible);
        for (let d = 0; d < D; d++) {
          let acc = 0;
          for (let s = 0; s < visible; s++) acc = Math.fround(acc + Math.fround(scores[s]! * vd[(s * Hkv + g) * D + d]!));
          od[qBase + d] = acc;
        }
      }
    }
  }

  mergeBlocks(x: Tensor, mergeSize: number, out: Tensor): void {
    const C = x.dim(-1);
    const n = out.dim(0);
    const xd = x.data as Float32Array;
    const od = out.data as Float32Array;
    if (mergeSize === 1) {
      od.set(xd);
      return;
    }
    const f = Math.fround;
    for (let r = 0; r < n; r++) {
      const a = r * 4 * C;
      for (let c = 0; c < C; c++) {
        const top = f(f(0.5 * xd[a + c]!) + f(0.5 * xd[a + C + c]!));
        const bottom = f(f(0.5 * xd[a + 2 * C + c]!) + f(0.5 * xd[a + 3 * C + c]!));
        od[r * C + c] = f(f(0.5 * top) + f(0.5 * bottom));
      }
    }
  }

  embedding(table: Tensor, ids: Tensor, out: Tensor): void {
    const D = table.dim(1);
    const dequantized = isQuantized(table.dtype) ? table.toFloat32() : null;
    const read = dequantized ? (i: number) => dequantized[i]! : floatReader(table.dtype, table.data);
    const od = out.data as Float32Array;
    const idd = ids.data as Int32Array;
    for (let t = 0; t < idd.length; t++) {
      const id = idd[t]!;
      for (let d = 0; d < D; d++) od[t * D + d] = read(id * D + d);
    }
  }

  argmax(x: Tensor): number {
    const d = x.data as Float32Array;
    let best = 0;
    for (let i = 1; i < d.length; i++) if (d[i]! > d[best]!) best = i;
    return best;
  }

  topK(x: Tensor, k: number): TopK {
    const d = x.data as Float32Array;
    const n = Math.min(k, d.length);
    const order = Array.from(d.keys()).sort((a, b) => d[b]! - d[a]! || a - b).slice(0, n);
    return { indices: Int32Array.from(order), values: Float32Array.from(order, (i) => d[i]!) };
  }
}

function softmaxRow(x: Float32Array, out: Float32Array, base: number, n: number): void {
  let max = -Infinity;
  for (let i = 0; i < n; i++) max = Math.max(max, x[base + i]!);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.fround(Math.exp(x[base + i]! - max));
    out[base + i] = e;
    sum += e;
  }
  const inv = 1 / sum;
  for (let i = 0; i < n; i++) out[base + i] = Math.fround(out[base + i]! * inv);
}

/** The reference kernels behind the checking layer: a complete backend in plain TypeScript. */
export class ReferenceBackend extends CheckedBackend {
  constructor(options: { compute?: ComputeMode } = {}) {
    super(new ReferenceKernels(options.compute));
  }
}
