/** A benchmark's data is missing or not in its release's format: names the file and the field. */
export class EvalDataError extends Error {
  override name = 'EvalDataError';
  constructor(
    readonly file: string,
    readonly field: string | undefined,
    message: string,
    options?: ErrorOptions,
  ) {
    super(`${file}${field ? ` ${field}` : ''}: ${message}`, options);
  }
}

/** An OpenAI-compatible server refused or failed a request. */
export class EvalServerError extends Error {
  override name = 'EvalServerError';
  constructor(
    readonly url: string,
    readonly status: number | undefined,
    message: string,
  ) {
    super(`${url}: ${message}`);
  }
}
