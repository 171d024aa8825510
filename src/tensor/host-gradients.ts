// Own backward kernels (and the optimizer's update) in TypeScript: the definition the native ones will be tested against, so the numerics are ours; sums run in f64, results are stored in f32.
import type { AdamWHyper, AttentionOptions, ComputeMode, GradientOps } from './backend.js';
import { bf16ToF32, f32ToBf16, floatReader } from './dtype.js';
import { fma32 } from './fma32.js';
import { erf } from './math.js';
import type { Tensor } from './tensor.js';

const f32 = (t: Tensor) => t.data as Float32Array;
const reader = (t: Tensor) => floatReader(t.dtype, t.data);
const toBf16 = (v: number) => bf16ToF32(f32ToBf16(v));

/** Vocabulary rows per chunk of logits in `crossEntropy`, and rows of hidden states per block: the logits of one block
 * against one chunk are all that exists at once. */
const VOCAB_CHUNK = 4096;
const ROW_BLOCK = 64;

const f = Math.fround;

/** The float32 scalars of one AdamW update, as `adamwScalars` forms them. */
export interface AdamWScalars {
  /** 1 − lr·wd: exactly 1 without weight decay, so multiplying by it then changes nothing. */
  decay: number;
  /** 1 − β1, the lerp weight of the first moment. */
  w1: number;
  b2: number;
  w2: number;
  /** −lr / (1 − β1^t). */
  stepSize: number;
  /** √(1 − β2^t). */
  bc2Sqrt: number;
  eps: number;
}

/**
 * The scalars as torch forms them: in double on the Python side, rounded to float32 once where a kernel takes them.
 * A native kernel takes these values rather than recomputing them, so that `**` and sqrt need not agree with C's.
 */
export function adamwScalars(step: number, h: AdamWHyper): AdamWScalars {
  return {
    decay: f(1 - h.lr * h.weightDecay),
    w1: f(1 - h.beta1),
    b2: f(h.beta2),
    w2: f(1 - h.beta2),
    stepSize: f(-(h.lr / (1 - h.beta1 ** step))),
    bc2Sqrt: f(Math.sqrt(1 - h.beta2 ** step)),
    eps: f(h.eps),
  };
}

/**
 * The gradient ops on host memory: the reference backend's kernels, and the definition the native ones
 * (native/grad_impl.h) are tested against.
 */
export const hostGradients = {
  /**
   * In bf16 compute mode (the backend's, as for matmul) dy, x and w are rounded to bf16 before they multiply; dbias
   * sums dy as it is, in both modes.
   */
  matmulBackward(dy: Tensor, x: Tensor, w: Tensor, dx: Tensor | null, dw: Tensor | null, dbias: Tensor | null, compute: ComputeMode = 'exact'): void {
    const [N, K] = w.shape as [number, number];
    const M = x.numel / K;
    const bf16 = compute === 'bf16';
    const g = bf16 ? f32(dy).map(toBf16) : f32(dy);
    const xd = bf16 ? f32(x).map(toBf16) : f32(x);
    const wf = reader(w);
    const wr = bf16 ? (i: number) => toBf16(wf(i)) : wf;
    if (dx) {
      const out = f32(dx);
      const row = new Float64Array(K);
      for (let m = 0; m < M; m++) {
        row.fill(0);
        for (let n = 0; n < N; n++) {
          const a = g[m * N + n]!;
          if (a !== 0) for (let k = 0; k < K; k++) row[k] += a * wr(n * K + k);
        }
        for (let k = 0; k < K; k++) out[m * K + k] = row[k]!;
      }
    }
    if (dw) {
      const out = f32(dw);
      const row = new Float64Array(K);
      for (let n = 0; n < N; n++) {
        row.fill(0);
        for (let m = 0; m < M; m++) {
          const a = g[m * N + n]!;
          if (a !== 0) for (let k = 0; k < K; k++) row[k] += a * xd[m * K + k]!;
        }
        for (let k = 0; k < K; k++) out[n * K + k] += row[k]!;
      }
    }
    if (dbias) {
      const out = f32(dbias);
      const d = f32(dy);
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let m = 0; m < M; m++) s += d[m * N + n]!;
        out[n] += s;
      }
    }
  },

  rmsNormBackward(dy: Tensor, x: Tensor, weight: Tensor, eps: number, dx: Tensor, dweight: Tensor | null): void {
    const D = x.dim(-1);
    const rows = x.numel / D;
    const g = f32(dy);
    const xd = f32(x);
    const wr = reader(weight);
    const out = f32(dx);
    const dwSum = dweight ? new Float64Array(D) : null;
    for (let r = 0; r < rows; r++) {
      const base = r * D;
      let sq = 0;
      for (let i = 0; i < D; i++) sq += xd[base + i]! * xd[base + i]!;
      // The forward's 1/rms in f32, as the kernels compute it, so the normed values are the forward's.
      const inv = Math.fround(1 / Math.sqrt(Math.fround(sq / D) + eps));
      // With n = x·inv: dx = inv·(dn − n·mean(dn·n)), dn = dy·weight.
      let dot = 0;
      for (let i = 0; i < D; i++) dot += g[base + i]! * wr(i) * xd[base + i]! * inv;
      const mean = dot / D;
      for (let i = 0; i < D; i++) {
        const n = xd[base + i]! * inv;
        out[base + i] = inv * (g[base + i]! * wr(i) - n * mean);
        if (dwSum) dwSum[i] += g[base + i]! * n;
      }
    }
    if (dweight && dwSum) {
      const out = f32(dweight);
      for (let i = 0; i < D; i++) out[i] += dwSum[i]!;
    }
  },

  layerNormBackward(dy: Tensor, x: Tensor, weight: Tensor, eps: number, dx: Tensor, dweight: Tensor | null, dbias: Tensor | null): void {
    const D = x.dim(-1);
    const rows = x.numel / D;
    const g = f32(dy);
    const xd = f32(x);
    const wr = reader(weight);
    const out = f32(dx);
    const dwSum = new Float64Array(D);
    const dbSum = new Float64Array(D);
    const normed = new Float64Array(D);
    for (let r = 0; r < rows; r++) {
      const base = r * D;
      let sum = 0;
      for (let i = 0; i < D; i++) sum += xd[base + i]!;
      const mean = sum / D;
      let sq = 0;
      for (let i = 0; i < D; i++) sq += (xd[base + i]! - mean) ** 2;
      const inv = 1 / Math.sqrt(sq / D + eps);
      // With n = (x − μ)·inv and dn = dy·weight: dx = inv·(dn − mean(dn) − n·mean(dn·n)).
      let dnMean = 0;
      let dnDot = 0;
      for (let i = 0; i < D; i++) {
        normed[i] = (xd[base + i]! - mean) * inv;
        const dn = g[base + i]! * wr(i);
        dnMean += dn;
        dnDot += dn * normed[i]!;
        dwSum[i] += g[base + i]! * normed[i]!;
        dbSum[i] += g[base + i]!;
      }
      dnMean /= D;
      dnDot /= D;
      for (let i = 0; i < D; i++) out[base + i] = inv * (g[base + i]! * wr(i) - dnMean - normed[i]! * dnDot);
    }
    if (dweight) {
      const w = f32(dweight);
      for (let i = 0; i < D; i++) w[i] += dwSum[i]!;
    }
    if (dbias) {
      const bb = f32(dbias);
      for (let i = 0; i < D; i++) bb[i] += dbSum[i]!;
    }
  },

  mergeBlocksBackward(dy: Tensor, mergeSize: number, dx: Tensor): void {
    const C = dy.dim(-1);
    const g = f32(dy);
    const out = f32(dx);
    const group = mergeSize * mergeSize;
    // m = 1 copies; m = 2 averages the block's 4 rows (0.5·(0.5·a + 0.5·b) + 0.5·(0.5·c + 0.5·d)): each gets dy / 4.
    for (let r = 0; r < g.length / C; r++)
      for (let j = 0; j < group; j++)
        for (let c = 0; c < C; c++) out[(r * group + j) * C + c] = g[r * C + c]! / group;
  },

  geluBackward(dy: Tensor, x: Tensor, dx: Tensor, approximation: 'tanh' | 'erf'): void {
    const g = f32(dy);
    const xd = f32(x);
    const out = f32(dx);
    const c = Math.sqrt(2 / Math.PI);
    for (let i = 0; i < xd.length; i++) {
      const u = xd[i]!;
      let slope: number;
      if (approximation === 'tanh') {
        // 0.5·u·(1 + tanh(z)), z = c·(u + 0.044715·u³).
        const t = Math.tanh(c * (u + 0.044715 * u * u * u));
        slope = 0.5 * (1 + t) + 0.5 * u * (1 - t * t) * c * (1 + 3 * 0.044715 * u * u);
      } else {
        // 0.5·u·(1 + erf(u/√2)): Φ(u) + u·φ(u).
        slope = 0.5 * (1 + erf(u / Math.SQRT2)) + (u * Math.exp(-0.5 * u * u)) / Math.sqrt(2 * Math.PI);
      }
      out[i] = g[i]! * slope;
    }
  },

  siluMulBackward(dy: Tensor, gate: Tensor, up: Tensor, dgate: Tensor, dup: Tensor): void {
    const g = f32(dy);
    const a = f32(gate);
    const u = f32(up);
    const da = f32(dgate);
    const du = f32(dup);
    for (let i = 0; i < g.length; i++) {
      const s = 1 / (1 + Math.exp(-a[i]!));
      const grad = g[i]!;
      // Both outputs may be written over the inputs they are computed from: read everything first.
      const upValue = u[i]!;
      du[i] = grad * a[i]! * s;
      da[i] = grad * upValue * s * (1 + a[i]! * (1 - s));
    }
  },

  ropeBackward(dy: Tensor, cos: Tensor, sin: Tensor, dx: Tensor): void {
    const [T, H, D] = dy.shape as [number, number, number];
    const half = D / 2;
    const g = f32(dy);
    const out = f32(dx);
    const c = f32(cos);
    const s = f32(sin);
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < H; h++) {
        const base = (t * H + h) * D;
        for (let j = 0; j < half; j++) {
          const g1 = g[base + j]!;
          const g2 = g[base + j + half]!;
          const cj = c[t * half + j]!;
          const sj = s[t * half + j]!;
          // The forward rotates (x1, x2) by +θ; its transpose rotates the gradient by −θ.
          out[base + j] = g1 * cj + g2 * sj;
          out[base + j + half] = g2 * cj - g1 * sj;
        }
      }
    }
  },

  attentionBackward(q: Tensor, k: Tensor, v: Tensor, dout: Tensor, dq: Tensor, dk: Tensor, dv: Tensor, options: AttentionOptions): void {
    const [T, Hq, D] = q.shape as [number, number, number];
    const [S, Hkv] = k.shape as [number, number, number];
    const offset = options.queryOffset ?? S - T;
    const qd = f32(q);
    const kd = f32(k);
    const vd = f32(v);
    const go = f32(dout);
    const dqd = f32(dq);
    const dkSum = new Float64Array(S * Hkv * D);
    const dvSum = new Float64Array(S * Hkv * D);
    const p = new Float64Array(S);
    const dp = new Float64Array(S);
    const dqRow = new Float64Array(D);
    for (let h = 0; h < Hq; h++) {
      const g = Math.floor(h / (Hq / Hkv));
      for (let t = 0; t < T; t++) {
        const visible = options.causal ? Math.min(S, offset + t + 1) : S;
        const qBase = (t * Hq + h) * D;
        let max = -Infinity;
        for (let s = 0; s < visible; s++) {
          const kBase = (s * Hkv + g) * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += qd[qBase + d]! * kd[kBase + d]!;
          p[s] = dot * options.scale;
          if (p[s]! > max) max = p[s]!;
        }
        let sum = 0;
        for (let s = 0; s < visible; s++) {
          p[s] = Math.exp(p[s]! - max);
          sum += p[s]!;
        }
        // dS = P ⊙ (dP − Σ P ⊙ dP), dP = dout·vᵀ; Σ P ⊙ dP equals dout·out without needing the forward's output.
        let pdp = 0;
        for (let s = 0; s < visible; s++) {
          p[s] = p[s]! / sum;
          const vBase = (s * Hkv + g) * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += go[qBase + d]! * vd[vBase + d]!;
          dp[s] = dot;
          pdp += p[s]! * dot;
        }
        dqRow.fill(0);
        for (let s = 0; s < visible; s++) {
          const kvBase = (s * Hkv + g) * D;
          const ds = p[s]! * (dp[s]! - pdp) * options.scale;
          for (let d = 0; d < D; d++) {
            dqRow[d] += ds * kd[kvBase + d]!;
            dkSum[kvBase + d] += ds * qd[qBase + d]!;
            dvSum[kvBase + d] += p[s]! * go[qBase + d]!;
          }
        }
        for (let d = 0; d < D; d++) dqd[qBase + d] = dqRow[d]!;
      }
    }
    f32(dk).set(dkSum);
    f32(dv).set(dvSum);
  },

  embeddingBackward(dy: Tensor, ids: Tensor, dtable: Tensor): void {
    const D = dtable.dim(1);
    const g = f32(dy);
    const idData = ids.data as Int32Array;
    const out = f32(dtable);
    for (let t = 0; t < idData.length; t++) {
      const base = idData[t]! * D;
      for (let d = 0; d < D; d++) out[base + d] += g[t * D + d]!;
    }
  },

  crossEntropy(hidden: Tensor, head: Tensor, targets: Tensor, scale: number, losses: Tensor, dhidden: Tensor | null, dhead: Tensor | null): void {
    const [n, H] = hidden.shape as [number, number];
    const V = head.dim(0);
    const hd = f32(hidden);
    const wr = reader(head);
    const ids = targets.data as Int32Array;
    const lossOut = f32(losses);
    const dh = dhidden ? f32(dhidden) : null;
    const dw = dhead ? f32(dhead) : null;
    const table = new Float32Array(VOCAB_CHUNK * H);
    const logits = new Float64Array(ROW_BLOCK * VOCAB_CHUNK);
    // Logits of rows [i0, i1) against the chunk [v0, v1) of the head (widened once per chunk into `table`), rounded
    // to f32 as a forward pass computes them.
    const chunkLogits = (i0: number, i1: number, v0: number, v1: number) => {
      for (let j = 0; j < (v1 - v0) * H; j++) table[j] = wr(v0 * H + j);
      for (let i = i0; i < i1; i++)
        for (let v = 0; v < v1 - v0; v++) {
          let dot = 0;
          for (let c = 0; c < H; c++) dot += hd[i * H + c]! * table[v * H + c]!;
          logits[(i - i0) * VOCAB_CHUNK + v] = Math.fround(dot);
        }
    };
    for (let i0 = 0; i0 < n; i0 += ROW_BLOCK) {
      const i1 = Math.min(n, i0 + ROW_BLOCK);
      // First pass: each row's log-sum-exp, online over the chunks; second: the softmax gradient, chunk by chunk.
      const max = new Float64Array(i1 - i0).fill(-Infinity);
      const sum = new Float64Array(i1 - i0);
      const target = new Float64Array(i1 - i0);
      for (let v0 = 0; v0 < V; v0 += VOCAB_CHUNK) {
        const v1 = Math.min(V, v0 + VOCAB_CHUNK);
        chunkLogits(i0, i1, v0, v1);
        for (let r = 0; r < i1 - i0; r++)
          for (let v = v0; v < v1; v++) {
            const l = logits[r * VOCAB_CHUNK + v - v0]!;
            if (v === ids[i0 + r]) target[r] = l;
            if (l > max[r]!) {
              sum[r] = sum[r]! * Math.exp(max[r]! - l) + 1;
              max[r] = l;
            } else {
              sum[r] += Math.exp(l - max[r]!);
            }
          }
      }
      const lse = max.map((m, r) => m + Math.log(sum[r]!));
      for (let r = 0; r < i1 - i0; r++) lossOut[i0 + r] = lse[r]! - target[r]!;
      if (!dh && !dw) continue;
      const dhRows = new Float64Array((i1 - i0) * H);
      for (let v0 = 0; v0 < V; v0 += VOCAB_CHUNK) {
        const v1 = Math.min(V, v0 + VOCAB_CHUNK);
        chunkLogits(i0, i1, v0, v1);
        for (let r = 0; r < i1 - i0; r++) {
          const i = i0 + r;
          for (let v = v0; v < v1; v++) {
            const dl = scale * (Math.exp(logits[r * VOCAB_CHUNK + v - v0]! - lse[r]!) - (v === ids[i] ? 1 : 0));
            const w = (v - v0) * H;
            for (let c = 0; c < H; c++) {
              dhRows[r * H + c] += dl * table[w + c]!;
              if (dw) dw[v * H + c] += dl * hd[i * H + c]!;
            }
          }
        }
      }
      if (dh) for (let j = 0; j < (i1 - i0) * H; j++) dh[i0 * H + j] = dhRows[j]!;
    }
  },

  /**
   * AdamW as `torch.optim.AdamW` (torch >= 2.0, the single-tensor CPU path) computes it in float32: the official
   * training runs use `optim="adamw_torch"` (spec 10.2, fixtures/training/README.md "Optimizer and schedule").
   *
   * Every tensor op of torch rounds to float32, and its Python-float scalars (lr, betas, bias corrections) are rounded
   * to float32 when they meet a float32 tensor, so each step below is one `fround` at the same place. The two moment
   * updates round once, as fused multiply-adds: so does the torch build that made the goldens (torch 2.x's vectorised
   * lerp is an explicit fmadd, and FMA builds contract addcmul's `self + value·t1·t2`); with a rounding after each
   * product instead, about half the moments after the second update are one ulp off. As written, the stored goldens
   * are reproduced bit for bit (test/train-optimizer.test.ts). Every other f32 operation here (product, quotient, sum,
   * square root) is correctly rounded in double and then to float32, which equals the float32 operation itself: the
   * native kernels' vector instructions give these bits.
   */
  adamw(p: Tensor, g: Tensor, m: Tensor, v: Tensor, step: number, hyper: AdamWHyper): void {
    const { decay, w1, b2, w2, stepSize, bc2Sqrt, eps } = adamwScalars(step, hyper);
    const pd = f32(p);
    const gd = f32(g);
    const md = f32(m);
    const vd = f32(v);
    for (let i = 0; i < pd.length; i++) {
      const gi = gd[i]!;
      // param.mul_(1 - lr·weight_decay), which torch skips without weight decay: decay is then 1 and changes nothing.
      const pi = f(pd[i]! * decay);
      // exp_avg.lerp_(grad, 1 - β1): for weights below 0.5 torch's lerp is m + w·(g − m).
      const mi = fma32(w1, f(gi - md[i]!), md[i]!);
      // exp_avg_sq.mul_(β2).addcmul_(grad, grad, value=1 - β2)
      const vi = fma32(f(w2 * gi), gi, f(vd[i]! * b2));
      // denom = (exp_avg_sq.sqrt() / sqrt(bias_correction2)).add_(eps); param.addcdiv_(exp_avg, denom, value=-step_size)
      const denom = f(f(f(Math.sqrt(vi)) / bc2Sqrt) + eps);
      pd[i] = f(pi + f(f(stepSize * mi) / denom));
      md[i] = mi;
      vd[i] = vi;
    }
  },
} satisfies GradientOps;
