import type { Backend } from '../tensor/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import { loadSpecs, projectorWeights, type Loaded, type WeightSpec } from './weight-names.js';

export type ProjectorParameters = Loaded<ReturnType<typeof projectorWeights>, Tensor>;
type ProjectorGradients = Loaded<ReturnType<typeof projectorWeights>, Tensor | null>;

/** What the projector's backward needs: its input and the first linear layer's output before the GELU. */
export interface ProjectorActivations {
  features: Tensor;
  preActivation: Tensor;
  activated: Tensor;
  out: Tensor;
}

/**
 * The `mlp2x_gelu` projector (spec 7) for training: Linear(C→H) → GELU (erf) → Linear(H→H), forward keeping its
 * activations and backward beside it. Gradients are added into the tensors `gradientOf` gives (null: frozen).
 */
export class ProjectorTraining {
  private readonly grads: ProjectorGradients;

  constructor(
    readonly params: ProjectorParameters,
    gradientOf: (spec: WeightSpec) => Tensor | null,
    readonly backend: Backend,
    prefix = 'model.mm_projector.readout.',
  ) {
    const [H, C] = params.fc1.weight.shape as [number, number];
    this.grads = loadSpecs(projectorWeights(C, H, prefix), gradientOf);
  }

  /** features [n, C] → activations, `out` [n, H] among them. */
  forward(features: Tensor): ProjectorActivations {
    const b = this.backend;
    const n = features.dim(0);
    const H = this.params.fc1.weight.dim(0);
    const preActivation = b.allocate('f32', [n, H]);
    const activated = b.allocate('f32', [n, H]);
    const out = b.allocate('f32', [n, H]);
    b.matmul(features, this.params.fc1.weight, this.params.fc1.bias, preActivation);
    b.gelu(preActivation, activated, 'erf');
    b.matmul(activated, this.params.fc2.weight, this.params.fc2.bias, out);
    return { features, preActivation, activated, out };
  }

  /** Adds the trainable parameters' gradients; returns d(loss)/d(features) [n, C]. */
  backward(acts: ProjectorActivations, dOut: Tensor): Tensor {
    const b = this.backend;
    const dActivated = b.allocate('f32', acts.activated.shape);
    b.matmulBackward(dOut, acts.activated, this.params.fc2.weight, dActivated, this.grads.fc2.weight, this.grads.fc2.bias);
    b.geluBackward(dActivated, acts.preActivation, dActivated, 'erf');
    const dFeatures = b.allocate('f32', acts.features.shape);
    b.matmulBackward(dActivated, acts.features, this.params.fc1.weight, dFeatures, this.grads.fc1.weight, this.grads.fc1.bias);
    return dFeatures;
  }
}
