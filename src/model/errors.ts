/**
 * A checkpoint that cannot be used as it is: a missing or malformed file, a config key out of range, a tensor whose
 * shape or dtype disagrees with the config. `file` and `tensor` name what is at fault, for callers that report it.
 */
export class CheckpointError extends Error {
  override readonly name = 'CheckpointError';
  constructor(
    message: string,
    readonly file?: string,
    readonly tensor?: string,
  ) {
    super(message);
  }
}

/**
 * A LoRA adapter that cannot be used with this model: a missing or malformed file, a config PEFT would not have
 * written or that this port does not implement, a module the model lacks, a shape that disagrees with the config.
 * `file` is the adapter file at fault and `module` the adapted layer, when one is.
 */
export class AdapterError extends Error {
  override readonly name = 'AdapterError';
  constructor(
    message: string,
    readonly file?: string,
    readonly module?: string,
  ) {
    super(message);
  }
}
