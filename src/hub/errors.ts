/** Why a hub operation failed, for callers that want to react (retry, ask for a token) rather than print. */
export type HubErrorCode =
  | 'RepoNotFound'
  | 'RevisionNotFound'
  | 'EntryNotFound'
  | 'GatedRepo'
  | 'Unauthorized'
  | 'HttpError'
  | 'BadResponse'
  | 'NetworkError'
  | 'IntegrityError'
  | 'NotCached';

export class HubError extends Error {
  override readonly name = 'HubError';
  constructor(
    message: string,
    readonly code: HubErrorCode,
    readonly details: { status?: number; url?: string; repoId?: string; cause?: unknown } = {},
  ) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
  }
}

/**
 * A URL fit for an error message: signed CDN URLs carry credentials in the query string, which has no place in a
 * log, and the path is what tells the user which file failed.
 */
export function displayUrl(url: string | URL): string {
  const u = new URL(url);
  return `${u.origin}${u.pathname}`;
}

export interface RequestContext {
  endpoint: string;
  repoId: string;
  revision: string;
  file?: string;
  /** Whether an Authorization header went with the request (changes what a 401 means). */
  withToken: boolean;
}

/**
 * The hub's refusal as a HubError. The hub names the cause in `X-Error-Code` (RepoNotFound, RevisionNotFound,
 * EntryNotFound, GatedRepo) and explains it in `X-Error-Message`; without a token it answers 401 RepoNotFound for
 * private repos too, so as not to reveal that they exist.
 */
export function errorFromResponse(response: Response, url: string, ctx: RequestContext): HubError {
  const status = response.status;
  const code = response.headers.get('x-error-code') ?? '';
  const hubMessage = response.headers.get('x-error-message');
  const why = hubMessage ? ` (hub: ${hubMessage})` : '';
  const at = displayUrl(url);
  const details = { status, url: at, repoId: ctx.repoId };
  const page = `${ctx.endpoint}/${ctx.repoId}`;
  const tokenHint = ctx.withToken
    ? 'the token in use (HF_TOKEN, --token or the huggingface-cli login file) was not accepted for it: check that it is valid and that its account'
    : 'no token was sent: set HF_TOKEN (or --token) to a token of an account that';
  if (code === 'GatedRepo' || (status === 403 && code !== 'RepoNotFound')) {
    return new HubError(
      `access to ${ctx.repoId} was refused (HTTP ${status}${why}): it is gated or private; ${tokenHint} has accepted the model's licence at ${page}`,
      'GatedRepo',
      details,
    );
  }
  if (code === 'RepoNotFound' || (status === 401 && !code)) {
    const maybePrivate = status === 401 || !ctx.withToken ? `, or it is private or gated and ${tokenHint} has access (accept the licence at ${page})` : '';
    return new HubError(
      `repository ${ctx.repoId} was not found at ${ctx.endpoint} (HTTP ${status}${why}): check the id${maybePrivate}`,
      status === 401 ? 'Unauthorized' : 'RepoNotFound',
      details,
    );
  }
  if (code === 'RevisionNotFound') {
    return new HubError(`revision "${ctx.revision}" of ${ctx.repoId} was not found (HTTP ${status}${why}): check the branch, tag or commit`, 'RevisionNotFound', details);
  }
  if (code === 'EntryNotFound' || (status === 404 && ctx.file)) {
    return new HubError(`file ${ctx.file ?? '?'} of ${ctx.repoId} at revision ${ctx.revision} was not found (HTTP ${status}${why}): ${at}`, 'EntryNotFound', details);
  }
  if (status === 401) {
    return new HubError(`${at} answered HTTP 401${why}: ${tokenHint} has access to ${ctx.repoId}`, 'Unauthorized', details);
  }
  return new HubError(`${at} answered HTTP ${status} ${response.statusText}${why}`, 'HttpError', details);
}

/** A fetch that did not get an answer at all, naming the URL it tried. */
export function networkError(url: string, error: unknown): HubError {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  const reason = cause?.code ?? cause?.message ?? (error as Error).message;
  return new HubError(`network error reaching ${displayUrl(url)}: ${reason}`, 'NetworkError', { url: displayUrl(url), cause: error });
}
