import type { AttentionOptions, Backend, TopK } from './backend.js';
import { floatReader } from './dtype.js';
import { erf } from './math.js';
import { assertDType, assertShape, type Tensor } from './tensor.js';

/**
 * Plain TypeScript loops, one per op: the definition every faster backend is tested against, and a backend that
 * runs anywhere. Accumulation is in f32 (Math.fround) where the native kernels accumulate in f32, so the two can be
 * compared tightly; clarity comes before speed here.
 */
export class ReferenceBackend implements Backend {
  readonly name = 'reference';
  threads = 1;

  matmul(x: Tensor, w: Tensor, bias: Tensor | null, out: Tensor): void {
    assertDType('matmul x', x, 'f32');
    assertDType('matmul w', w, 'f32', 'bf16');
    const [N, K] = [w.dim(0), w.dim(1)];
    const M = x.numel / K;
    if (w.rank !== 2 || x.dim(-1) !== K) throw new Error(`matmul: x [${x.shape}] does not match w [${w.shape}]`);
    assertShape('matmul out', out, [...x.shape.slice(0, -1), N]);
    if (bias) assertShape('matmul bias', bias, [N]);
    const xd = x.data as Float32Array;
    const od = out.data as Float32Array;
    const wr = floatReader(w.dtype, w.data);
    const br = bias ? floatReader(bias.dtype, bias.data) : null;
    const wRow = new Float32Array(K);
    for (let n = 0; n < N; n++) {
      for (let k = 0; k < K; k++) wRow[k] = wr(n * K + k);
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
    this.binary('add', a, b, out, (p, q) => p + q);
  }

  mul(a: Tensor, b: Tensor, out: Tensor): void {
    this.binary('mul', a, b, out, (p, q) => p * q);
  }

  private binary(op: string, a: Tensor, b: Tensor, out: Tensor, f: (p: number, q: number) => number): void {
    assertDType(`${op} a`, a, 'f32');
    assertShape(`${op} out`, out, a.shape);
    const broadcast = b.numel !== a.numel;
    if (broadcast && (b.rank !== 1 || b.numel !== a.dim(-1))) {
      throw new Error(`${op}: b [${b.shape}] is neither a's shape [${a.shape}] nor its last dimension`);
    }
    const ad = a.data as Float32Array;
    const od = out.data as Float32Array;
    const br = floatReader(b.dtype, b.data);
    const inner = b.numel;
    for (let i = 0; i < ad.length; i++) od[i] = f(ad[i]!, br(broadcast ? i % inner : i));
  }

  rmsNorm(x: Tensor, weight: Tensor, eps: number, out: Tensor): void {
    assertDType('rmsNorm x', x, 'f32');
    const D = x.dim(-1);
    assertShape('rmsNorm weight', weight, [D]);
    assertShape('rmsNorm out', out, x.shape);
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
    assertDType('layerNorm x', x, 'f32');
    const D = x.dim(-1);
    assertShape('layerNorm weight', weight, [D]);
    assertShape('layerNorm bias', bias, [D]);
    assertShape('layerNorm out', out, x.shape);
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
    assertShape('gelu out', out, x.shape);
    const xd = x.data as Float32Array;
    const od = out.data as Float32Array;
    const c = Math.sqrt(2 / Math.PI);
    for (let i = 0; i < xd.length; i++) {
      const u = xd[i]!;
      od[i] = approximation === 'tanh' ? 0.5 * u * (1 + Math.tanh(c * (u + 0.044715 * u * u * u))) : 0.5 * u * (1 + erf(u / Math.SQRT2));
    }
  }

  siluMul(gate: Tensor, up: Tensor, out: Tensor): void {
    assertShape('siluMul up', up, gate.shape);
    assertShape('siluMul out', out, gate.shape);
    const g = gate.data as Float32Array;
    const u = up.data as Float32Array;
    const o = out.data as Float32Array;
    for (let i = 0; i < g.length; i++) o[i] = Math.fround(g[i]! / (1 + Math.exp(-g[i]!))) * u[i]!;
  }

  softmax(x: Tensor, out: Tensor): void {
    assertShape('softmax out', out, x.shape);
    const D = x.dim(-1);
    const xd = x.data as Float32Array;
    const od = out.data as Float32Array;
    for (let r = 0; r < x.numel / D; r++) softmaxRow(xd, od, r * D, D);
  }

  rope(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor): void {
    if (x.rank !== 3) throw new Error(`rope: x must be [T,H,D], got [${x.shape}]`);
    const [T, H, D] = x.shape as [number, number, number];
    const half = D / 2;
    assertShape('rope cos', cos, [T, half]);
    assertShape('rope sin', sin, [T, half]);
    assertShape('rope out', out, x.shape);
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
    if (q.rank !== 3 || k.rank !== 3) throw new Error(`attention: q and k must be [T,H,D], got [${q.shape}] and [${k.shape}]`);
    const [T, Hq, D] = q.shape as [number, number, number];
    const [S, Hkv] = k.shape as [number, number, number];
    assertShape('attention k', k, [S, Hkv, D]);
    assertShape('attention v', v, [S, Hkv, D]);
    assertShape('attention out', out, [T, Hq, D]);
    if (Hq % Hkv !== 0) throw new Error(`attention: ${Hq} query heads are not a multiple of ${Hkv} KV heads`);
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
    if (mergeSize !== 1 && mergeSize !== 2) throw new Error(`mergeBlocks: merge size ${mergeSize} is not supported (1 or 2)`);
    const C = x.dim(-1);
    const group = mergeSize * mergeSize;
    const n = x.numel / C / group;
    if (!Number.isInteger(n)) throw new Error(`mergeBlocks: ${x.numel / C} rows are not a multiple of ${group}`);
    assertShape('mergeBlocks out', out, [n, C]);
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
    assertDType('embedding ids', ids, 'i32');
    const [V, D] = table.shape as [number, number];
    assertShape('embedding out', out, [ids.numel, D]);
    const read = floatReader(table.dtype, table.data);
    const od = out.data as Float32Array;
    const idd = ids.data as Int32Array;
    for (let t = 0; t < idd.length; t++) {
      const id = idd[t]!;
      if (id < 0 || id >= V) throw new Error(`embedding: token id ${id} at position ${t} is outside the table's ${V} rows`);
      for (let d = 0; d < D; d++) od[t * D + d] = read(id * D + d);
    }
  }

  argmax(x: Tensor): number {
    const d = x.data as Float32Array;
    if (d.length === 0) throw new Error('argmax: empty tensor');
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
