/**
 * The memory ops of backends whose tensors live in host memory (the CPU backends): allocation is an ArrayBuffer,
 * upload and download are the tensor itself, copies are typed-array copies (memmove, so a tensor may be copied over
 * itself shifted).
 */
import type { ComputeMode, GradientOps, Kernels } from './backend.js';
import { hostGradients } from './host-gradients.js';
import type { DType } from './dtype.js';
import { HostStorage, type Storage, type Tensor } from './tensor.js';

type HostMemory = Pick<Kernels, 'device' | 'allocateStorage' | 'upload' | 'download' | 'write' | 'copy' | 'copyRows' | 'fill'>;

export const hostMemory: HostMemory = {
  device: 'host',

  allocateStorage(bytes: number): Storage {
    return new HostStorage(new ArrayBuffer(bytes));
  },

  upload<D extends DType>(host: Tensor<D>): Tensor<D> {
    return host;
  },

  download<D extends DType>(t: Tensor<D>): Tensor<D> {
    return t;
  },

  write(dst: Tensor, values: ArrayLike<number>): void {
    (dst.data as Float32Array | Int32Array | Uint8Array).set(values);
  },

  copy(src: Tensor, dst: Tensor): void {
    (dst.data as Uint8Array).set(src.data as Uint8Array);
  },

  copyRows(src: Tensor, srcRows: Int32Array, dst: Tensor, dstRows: Int32Array): void {
    const row = src.dim(0) === 0 ? 0 : src.numel / src.dim(0);
    const from = src.data as Float32Array;
    const to = dst.data as Float32Array;
    for (let i = 0; i < srcRows.length; i++) to.set(from.subarray(srcRows[i]! * row, (srcRows[i]! + 1) * row), dstRows[i]! * row);
  },

  fill(t: Tensor, value: number): void {
    (t.data as Float32Array).fill(value);
  },
};

/**
 * The CPU backends' kernels start from this: their memory ops are the host ones above, and their gradient ops the
 * TypeScript ones of host-gradients.ts, as methods so that a backend with its own kernels (NativeKernels) overrides
 * them one by one.
 */
export abstract class HostKernels implements GradientOps {
  readonly device = hostMemory.device;
  readonly allocateStorage = hostMemory.allocateStorage;
  readonly upload = hostMemory.upload;
  readonly download = hostMemory.download;
  readonly write = hostMemory.write;
  readonly copy = hostMemory.copy;
  readonly copyRows = hostMemory.copyRows;
  readonly fill = hostMemory.fill;
  /** The compute mode matmul and matmulBackward multiply in. */
  abstract readonly compute: ComputeMode;
  matmulBackward(...a: Parameters<GradientOps['matmulBackward']>): void {
    hostGradients.matmulBackward(...a, this.compute);
  }
  rmsNormBackward(...a: Parameters<GradientOps['rmsNormBackward']>): void {
    hostGradients.rmsNormBackward(...a);
  }
  layerNormBackward(...a: Parameters<GradientOps['layerNormBackward']>): void {
    hostGradients.layerNormBackward(...a);
  }
  mergeBlocksBackward(...a: Parameters<GradientOps['mergeBlocksBackward']>): void {
    hostGradients.mergeBlocksBackward(...a);
  }
  geluBackward(...a: Parameters<GradientOps['geluBackward']>): void {
    hostGradients.geluBackward(...a);
  }
  siluMulBackward(...a: Parameters<GradientOps['siluMulBackward']>): void {
    hostGradients.siluMulBackward(...a);
  }
  ropeBackward(...a: Parameters<GradientOps['ropeBackward']>): void {
    hostGradients.ropeBackward(...a);
  }
  attentionBackward(...a: Parameters<GradientOps['attentionBackward']>): void {
    hostGradients.attentionBackward(...a);
  }
  embeddingBackward(...a: Parameters<GradientOps['embeddingBackward']>): void {
    hostGradients.embeddingBackward(...a);
  }
  crossEntropy(...a: Parameters<GradientOps['crossEntropy']>): void {
    hostGradients.crossEntropy(...a);
  }
  adamw(...a: Parameters<GradientOps['adamw']>): void {
    hostGradients.adamw(...a);
  }
}
