import type { Backend } from '../tensor/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { WeightSource } from './weight-formats.js';
import { loadSpecs, projectorWeights } from './weight-names.js';

/**
 * The `mlp2x_gelu` projector (spec 7): Linear(C→H) → GELU (exact erf form) → Linear(H→H), per visual token.
 */
export class Projector {
  private readonly w1: Tensor;
  private readonly b1: Tensor;
  private readonly w2: Tensor;
  private readonly b2: Tensor;

  constructor(
    visionSize: number,
    readonly outputSize: number,
    weights: WeightSource,
    readonly backend: Backend,
    type = 'mlp2x_gelu',
    prefix = 'model.mm_projector.readout.',
  ) {
    if (type !== 'mlp2x_gelu') throw new Error(`projector type "${type}" is not supported (only mlp2x_gelu, used by every release)`);
    const w = loadSpecs(projectorWeights(visionSize, outputSize, prefix), (spec) => backend.upload(weights.get(spec)));
    this.w1 = w.fc1.weight;
    this.b1 = w.fc1.bias;
    this.w2 = w.fc2.weight;
    this.b2 = w.fc2.bias;
  }

  /** features [n, C] → [n, H]. */
  project(features: Tensor): Tensor<'f32'> {
    const n = features.dim(0);
    const hidden = this.backend.allocate('f32', [n, this.outputSize]);
    const out = this.backend.allocate('f32', [n, this.outputSize]);
    this.backend.matmul(features, this.w1, this.b1, hidden);
    this.backend.gelu(hidden, hidden, 'erf');
    this.backend.matmul(hidden, this.w2, this.b2, out);
    return out;
  }
}
