/**
 * A pre-norm decoder layer as primitive ops: the definition `Backend.decoderLayer` is held to (a backend's one-call
 * layer gives these bits), the checking layer's way of running it on kernels without one, and a batch's layer, whose
 * rows attend to different sequences.
 */
import type { Backend, DecoderLayerScratch, DecoderLayerWeights } from './backend.js';
import type { Tensor } from './tensor.js';

type LayerOps = Pick<Backend, 'rmsNorm' | 'matmuls' | 'matmul' | 'rope' | 'add' | 'siluMul'>;

/**
 * x [T, H] through one layer, in place. k and v [T, Hkv, D] receive the layer's keys (roped) and values; then
 * `attend(q, attn)` fills attn [T, Hq, D] from q [T, Hq, D] and the sequence's keys and values, k and v among them.
 */
export function decoderLayerOps(
  b: LayerOps,
  w: DecoderLayerWeights,
  x: Tensor,
  k: Tensor,
  v: Tensor,
  rope: { cos: Tensor; sin: Tensor },
  eps: number,
  scratch: DecoderLayerScratch,
  attend: (q: Tensor, attn: Tensor) => void,
): void {
  const { h, q, attn, gate, up } = scratch;
  const T = x.dim(0);
  const flat = (t: Tensor) => t.reshape([T, t.dim(1) * t.dim(2)]);
  b.rmsNorm(x, w.inputNorm, eps, h);
  b.matmuls(h, [
    { w: w.qProj, bias: w.qBias, out: flat(q) },
    { w: w.kProj, bias: w.kBias, out: flat(k) },
    { w: w.vProj, bias: w.vBias, out: flat(v) },
  ]);
  b.rope(q, rope.cos, rope.sin, q);
  b.rope(k, rope.cos, rope.sin, k);
  attend(q, attn);
  b.matmul(flat(attn), w.oProj, null, h);
  b.add(x, h, x);

  b.rmsNorm(x, w.postNorm, eps, h);
  b.matmuls(h, [
    { w: w.gateProj, bias: null, out: gate },
    { w: w.upProj, bias: null, out: up },
  ]);
  b.siluMul(gate, up, gate);
  b.matmul(gate, w.downProj, null, h);
  b.add(x, h, x);
}

/** The tensors of `DecoderLayerWeights`, in the order backends list them. */
export const DECODER_LAYER_WEIGHTS = [
  'inputNorm',
  'qProj',
  'qBias',
  'kProj',
  'kBias',
  'vProj',
  'vBias',
  'oProj',
  'postNorm',
  'gateProj',
  'upProj',
  'downProj',
] as const satisfies readonly (keyof DecoderLayerWeights)[];

/**
 * What a backend derives from a layer's weights (their checks, their arrays), kept while the object holds the same
 * tensors: tensors never change shape, dtype or storage, so a decode step's 28 layers compare 12 references each
 * rather than reading every weight's fields from caches the previous layer's weights have just swept.
 */
export class LayerWeightsMemo<V> {
  private readonly memo = new WeakMap<DecoderLayerWeights, { tensors: (Tensor | null)[]; value: V }>();

  /** The value kept for w, if w still holds the tensors it was made from. */
  get(w: DecoderLayerWeights): V | undefined {
    const hit = this.memo.get(w);
    if (!hit) return undefined;
    for (let i = 0; i < DECODER_LAYER_WEIGHTS.length; i++) if (hit.tensors[i] !== w[DECODER_LAYER_WEIGHTS[i]!]) return undefined;
    return hit.value;
  }

  set(w: DecoderLayerWeights, value: V): void {
    this.memo.set(w, { tensors: DECODER_LAYER_WEIGHTS.map((name) => w[name]), value });
  }
}
