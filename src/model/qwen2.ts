import { BATCH_ROWS, type Backend } from '../tensor/backend.js';
import { decoderLayerOps } from '../tensor/decoder-layer.js';
import type { Tensor } from '../tensor/tensor.js';
import { Workspace } from '../tensor/workspace.js';
import type { VideoLlama3Config } from './config.js';
import { ropeInverseFrequencies, ropeTables } from './rope.js';
import type { WeightSource } from './weight-formats.js';
import { decoderWeights, loadSpecs, type Loaded } from './weight-names.js';

/** The Qwen2.5 sizes the decoder needs (spec 8.1), as the checkpoint's config states them. */
export type Qwen2Dims = Pick<
  VideoLlama3Config,
  | 'hiddenSize'
  | 'intermediateSize'
  | 'numHiddenLayers'
  | 'numAttentionHeads'
  | 'numKeyValueHeads'
  | 'rmsNormEps'
  | 'ropeTheta'
  | 'vocabSize'
  | 'maxPositionEmbeddings'
>;

/** Per-sequence keys and values, written layer by layer during a forward pass (implemented by the engine). */
export interface AttentionCache {
  readonly length: number;
  reserve(extra: number): void;
  write(layer: number, k: Tensor, v: Tensor): void;
  /**
   * Positions [0, end) of `layer` ([end, kvHeads, headDim]), views: a forward pass of count positions computes its
   * keys and values into the last count rows of keysUpTo(layer, length + count) directly; `reserve` first.
   */
  keysUpTo(layer: number, end: number): Tensor;
  valuesUpTo(layer: number, end: number): Tensor;
  advance(count: number): void;
}

/** One decoder layer's tensors, named as in `decoderWeights`. */
type DecoderLayer = Loaded<ReturnType<typeof decoderWeights>['layers'][number], Tensor>;

export interface ForwardOptions {
  /** Called with (index, rows) for every hidden state transformers reports: the embeddings, each layer's output
   * except the last, and the final normed output. Rows are this call's positions; the tensor is reused after. */
  onHiddenState?: (index: number, hidden: Tensor) => void;
}

/**
 * The Qwen2.5 decoder: per layer h = x + O(Attn(RMSNorm(x))), out = h + Down(SiLU(Gate(RMSNorm(h))) ⊙ Up(RMSNorm(h))),
 * then a final RMSNorm and the LM head. Activations are f32; weights stay as loaded (bf16, or block-quantized) and are
 * widened inside the backend's kernels.
 */
export class Qwen2Model {
  readonly headDim: number;
  readonly embedTokens: Tensor;
  readonly lmHead: Tensor;
  private readonly layers: DecoderLayer[];
  private readonly finalNorm: Tensor;
  private readonly invFreq: Float32Array;
  private readonly ws: Workspace;

  constructor(
    readonly dims: Qwen2Dims,
    weights: WeightSource,
    readonly backend: Backend,
    lmHeadName = 'lm_head.weight',
  ) {
    const { hiddenSize: H, numAttentionHeads: Hq, numKeyValueHeads: Hkv } = dims;
    if (H % Hq !== 0) throw new Error(`hidden size ${H} is not divisible by ${Hq} attention heads`);
    if (Hq % Hkv !== 0) throw new Error(`${Hq} attention heads are not a multiple of ${Hkv} key/value heads`);
    this.headDim = H / Hq;
    this.ws = new Workspace(backend);
    const w = loadSpecs(decoderWeights(dims, lmHeadName), (spec) => backend.upload(weights.get(spec)));
    this.embedTokens = w.embedTokens;
    // The weight source resolves a tied head to the embedding table (2B stores no lm_head.weight).
    this.lmHead = w.lmHead;
    this.finalNorm = w.finalNorm;
    this.layers = w.layers;
    this.invFreq = ropeInverseFrequencies(this.headDim, dims.ropeTheta);
  }

  /** Embeddings of token ids, [ids.length, hidden] f32, into `out` (or a new tensor). */
  embed(ids: ArrayLike<number>, out?: Tensor): Tensor {
    const idTensor = this.ws.take('ids', 'i32', [ids.length]);
    this.backend.write(idTensor, ids);
    const target = out ?? this.backend.allocate('f32', [ids.length, this.dims.hiddenSize]);
    this.backend.embedding(this.embedTokens, idTensor, target);
    return target;
  }

  /**
   * Runs `embeds` [T, hidden] (in place: it holds the final normed hidden states afterwards) at positions
   * cache.length .. cache.length+T-1, appending their keys and values to `cache`.
   */
  forward(embeds: Tensor, cache: AttentionCache, options: ForwardOptions = {}): Tensor {
    const T = embeds.dim(0);
    const start = cache.length;
    cache.reserve(T);
    const out = this.run(embeds, Array.from({ length: T }, (_, t) => start + t), options, cache);
    cache.advance(T);
    return out;
  }

  /**
   * One decode step of several sequences: row i of `embeds` [B, hidden] (in place, as in `forward`) is the next token
   * of the sequence whose keys and values are caches[i], at position caches[i].length. The linear layers run once
   * over the batch (every weight read once for B tokens); each row attends to its own cache only. With B at most
   * BATCH_ROWS, row i gets the bits `forward` gives it alone.
   */
  forwardBatch(embeds: Tensor, caches: readonly AttentionCache[]): Tensor {
    const B = embeds.dim(0);
    if (caches.length !== B) throw new Error(`forwardBatch: ${B} rows of embeddings for ${caches.length} caches`);
    if (B > BATCH_ROWS) throw new Error(`forwardBatch: ${B} sequences; a batch holds at most ${BATCH_ROWS}`);
    const starts = caches.map((c) => c.length);
    for (const c of caches) c.reserve(1);
    const scale = 1 / Math.sqrt(this.headDim);
    // One sequence is a forward pass of one position; several share the layers' rows and copy their keys and values out.
    const out =
      B === 1
        ? this.run(embeds, starts, {}, caches[0]!)
        : this.run(embeds, starts, {}, null, (l, q, attn, k, v) => {
            caches.forEach((cache, i) => {
              cache.write(l, k.rows(i, i + 1), v.rows(i, i + 1));
              const end = starts[i]! + 1;
              this.backend.attention(q.rows(i, i + 1), cache.keysUpTo(l, end), cache.valuesUpTo(l, end), attn.rows(i, i + 1), {
                scale,
                causal: true,
                queryOffset: starts[i]!,
              });
            });
          });
    for (const c of caches) c.advance(1);
    return out;
  }

  /**
   * The decoder layers over rows at `positions`. With a cache, one `decoderLayers` call over the cache's rows (their
   * keys and values computed into them), or one `decoderLayer` a layer when a caller reads each layer's hidden states;
   * without, the layer's ops with keys and values in scratch rows, and
   * `attend` fills `attn` from q and them (a batch of sequences, each attending to its own cache).
   */
  private run(
    x: Tensor,
    positions: number[],
    options: ForwardOptions,
    cache: AttentionCache | null,
    attend?: (layer: number, q: Tensor, attn: Tensor, k: Tensor, v: Tensor) => void,
  ): Tensor {
    const { hiddenSize: H, intermediateSize: I, numAttentionHeads: Hq, numKeyValueHeads: Hkv, rmsNormEps: eps } = this.dims;
    const D = this.headDim;
    const T = x.dim(0);
    const b = this.backend;
    const ws = this.ws;

    const cos = ws.take('rope.cos', 'f32', [T, D / 2]);
    const sin = ws.take('rope.sin', 'f32', [T, D / 2]);
    const tables = ropeTables(this.invFreq, positions);
    b.write(cos, tables.cos);
    b.write(sin, tables.sin);

    const scratch = {
      h: ws.take('h', 'f32', [T, H]),
      q: ws.take('q', 'f32', [T, Hq, D]),
      attn: ws.take('attn', 'f32', [T, Hq, D]),
      gate: ws.take('gate', 'f32', [T, I]),
      up: ws.take('up', 'f32', [T, I]),
    };
    const k = cache ? null : ws.take('k', 'f32', [T, Hkv, D]);
    const v = cache ? null : ws.take('v', 'f32', [T, Hkv, D]);
    const end = cache ? cache.length + T : 0;
    const scale = 1 / Math.sqrt(D);

    options.onHiddenState?.(0, x);
    if (cache && !options.onHiddenState) {
      // Every layer in one call: nobody reads the hidden states between them.
      const keys = this.layers.map((_, l) => cache.keysUpTo(l, end));
      const values = this.layers.map((_, l) => cache.valuesUpTo(l, end));
      b.decoderLayers(this.layers, { x, keys, values, cos, sin, eps, scale, scratch });
    } else {
      this.layers.forEach((layer, l) => {
        if (cache) {
          const step = { x, keys: cache.keysUpTo(l, end), values: cache.valuesUpTo(l, end), cos, sin, eps, scale, scratch };
          b.decoderLayer(layer, step);
        } else {
          decoderLayerOps(b, layer, x, k!, v!, { cos, sin }, eps, scratch, (q, attn) => attend!(l, q, attn, k!, v!));
        }
        if (l < this.layers.length - 1) options.onHiddenState?.(l + 1, x);
      });
    }
    b.rmsNorm(x, this.finalNorm, eps, x);
    options.onHiddenState?.(this.layers.length, x);
    return x;
  }

  /** Full-vocabulary logits [rows, vocab] of normed hidden rows, into `out` (or a new tensor). */
  logits(hidden: Tensor, out?: Tensor): Tensor {
    const target = out ?? this.backend.allocate('f32', [hidden.dim(0), this.dims.vocabSize]);
    this.backend.matmul(hidden, this.lmHead, null, target);
    return target;
  }

  /** Bytes held by the activation scratch buffers (reused from call to call). */
  get scratchBytes(): number {
    return this.ws.bytes;
  }

  /** Drops the scratch buffers; the next forward pass reallocates what it needs. */
  releaseScratch(): void {
    this.ws.release();
  }
}
