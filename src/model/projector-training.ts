import type { Backend } from '../tensor/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import { TrainingLinear, type AdapterActivations, type LinearAdapter } from './lora-linear.js';
import { loadSpecs, projectorWeights, type Loaded, type WeightSpec } from './weight-names.js';

export type ProjectorParameters = Loaded<ReturnType<typeof projectorWeights>, Tensor>;
type ProjectorGradients = Loaded<ReturnType<typeof projectorWeights>, Tensor | null>;

/** What the projector's backward needs: its input and the first linear layer's output before the GELU. */
export interface ProjectorActivations {
  features: Tensor;
  preActivation: Tensor;
  activated: Tensor;
  out: Tensor;
  adapters: { fc1: AdapterActivations | null; fc2: AdapterActivations | null };
}

/**
 * The `mlp2x_gelu` projector (spec 7) for training: Linear(C→H) → GELU (erf) → Linear(H→H), forward keeping its
 * activations and backward beside it. Gradients are added into the tensors `gradientOf` gives (null: frozen).
 */
export class ProjectorTraining {
  private readonly fc1: TrainingLinear;
  private readonly fc2: TrainingLinear;

  /** `adapterOf(spec)`: a LoRA adapter on the linear layer whose weight `spec` is (the official path adds none). */
  constructor(
    readonly params: ProjectorParameters,
    gradientOf: (spec: WeightSpec) => Tensor | null,
    readonly backend: Backend,
    prefix = 'model.mm_projector.readout.',
    adapterOf: (spec: WeightSpec) => LinearAdapter | null = () => null,
  ) {
    const [H, C] = params.fc1.weight.shape as [number, number];
    const specs = projectorWeights(C, H, prefix);
    const g: ProjectorGradients = loadSpecs(specs, gradientOf);
    const a = loadSpecs(specs, adapterOf);
    this.fc1 = new TrainingLinear(backend, params.fc1.weight, params.fc1.bias, g.fc1.weight, g.fc1.bias, a.fc1.weight);
    this.fc2 = new TrainingLinear(backend, params.fc2.weight, params.fc2.bias, g.fc2.weight, g.fc2.bias, a.fc2.weight);
  }

  /** features [n, C] → activations, `out` [n, H] among them; `training` applies LoRA dropout. */
  forward(features: Tensor, training = false): ProjectorActivations {
    const b = this.backend;
    const n = features.dim(0);
    const H = this.params.fc1.weight.dim(0);
    const preActivation = b.allocate('f32', [n, H]);
    const activated = b.allocate('f32', [n, H]);
    const out = b.allocate('f32', [n, H]);
    const fc1 = this.fc1.forward(features, preActivation, training);
    b.gelu(preActivation, activated, 'erf');
    const fc2 = this.fc2.forward(activated, out, training);
    return { features, preActivation, activated, out, adapters: { fc1, fc2 } };
  }

  /** Adds the trainable parameters' gradients; returns d(loss)/d(features) [n, C]. */
  backward(acts: ProjectorActivations, dOut: Tensor): Tensor {
    const b = this.backend;
    const dActivated = b.allocate('f32', acts.activated.shape);
    this.fc2.backward(dOut, acts.activated, acts.adapters.fc2, dActivated);
    b.geluBackward(dActivated, acts.preActivation, dActivated, 'erf');
    const dFeatures = b.allocate('f32', acts.features.shape);
    this.fc1.backward(dActivated, acts.features, acts.adapters.fc1, dFeatures);
    return dFeatures;
  }
}
