/** Why an image could not be loaded; callers (API, CLI) map the kinds to their own status codes. */
export type ImageErrorKind = 'unreadable' | 'truncated' | 'unsupported' | 'too-large';

/** An image that cannot be loaded. The message starts with the input's name: its path, or "image #k (N bytes)". */
export class ImageLoadError extends Error {
  constructor(
    readonly kind: ImageErrorKind,
    message: string,
  ) {
    super(message);
    this.name = 'ImageLoadError';
  }
}

/** Thrown by the decoders, which do not know the input's name; loadImage adds it. */
export class DecodeFailure extends Error {
  constructor(
    readonly kind: Exclude<ImageErrorKind, 'too-large'>,
    message: string,
  ) {
    super(message);
    this.name = 'DecodeFailure';
  }
}
