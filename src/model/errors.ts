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
