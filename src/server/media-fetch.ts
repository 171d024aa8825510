/**
 * Downloads a media URL for a request, refusing what would let a client use the server as a proxy into its own
 * network (SSRF): every connection's address is checked after DNS resolution (a `lookup` hook, so a host name that
 * resolves to 127.0.0.1 is caught, and the checked address is the one connected to), redirects are followed by hand
 * so each hop is checked again, and the whole download (all hops, headers and body) runs under one deadline and one
 * byte limit. Redirects and keep-alive sockets are not shared between requests (`agent: false`).
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import { isIP, type LookupFunction } from 'node:net';

import { badRequest, HttpError } from './errors.js';
import { isPublicAddress } from './public-address.js';

export interface FetchPolicy {
  allowPrivateNetwork: boolean;
  /** Lower-case host names; undefined: any host. */
  allowedDomains?: readonly string[];
  maxRedirects: number;
}

export interface FetchLimits {
  timeoutMs: number;
  maxBytes: number;
  /** For messages: "image" or "video". */
  what: string;
  /** The request's part, e.g. `messages[0].content[1]`. */
  param: string;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

/** For messages: a URL without its query string, shortened. */
export function displayUrl(url: string): string {
  const shown = url.replace(/[?#].*$/, '');
  return shown.length > 120 ? `${shown.slice(0, 117)}...` : shown;
}

class BlockedAddress extends Error {
  constructor(host: string, address: string) {
    super(`${host} resolves to ${address}, which is not a public address`);
  }
}

/** A DNS lookup that only ever hands non-blocked addresses to the socket. */
function checkedLookup(): LookupFunction {
  return (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses: LookupAddress[]) => {
      if (err) return callback(err, '', 0);
      const usable = addresses.filter((a) => isPublicAddress(a.address));
      if (usable.length === 0) {
        const e = new BlockedAddress(hostname, addresses[0]?.address ?? '(nothing)') as NodeJS.ErrnoException;
        e.code = 'EBLOCKEDADDRESS';
        return callback(e, '', 0);
      }
      if (options.all) (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, usable);
      else callback(null, usable[0]!.address, usable[0]!.family);
    });
  };
}

function checkUrl(url: URL, policy: FetchPolicy, limits: FetchLimits): void {
  const shown = displayUrl(url.href);
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw badRequest(`${limits.param}: ${limits.what} URL ${shown}: only http and https URLs can be fetched`, limits.param, 'invalid_media_url');
  }
  if (url.username || url.password) throw badRequest(`${limits.param}: ${limits.what} URL ${shown}: credentials in URLs are not accepted`, limits.param, 'invalid_media_url');
  const host = url.hostname.toLowerCase().replace(/\.$/, '');
  if (policy.allowedDomains && !policy.allowedDomains.includes(host)) {
    throw badRequest(`${limits.param}: ${limits.what} URL ${shown}: the host ${host} is not among the allowed media domains`, limits.param, 'media_domain_not_allowed');
  }
  // Connections to IP literals skip the lookup hook, so they are checked here.
  const literal = host.replace(/^\[|\]$/g, '');
  if (!policy.allowPrivateNetwork && isIP(literal) && !isPublicAddress(literal)) {
    throw badRequest(`${limits.param}: ${limits.what} URL ${shown}: ${literal} is not a public address`, limits.param, 'media_url_not_allowed');
  }
}

function get(url: URL, policy: FetchPolicy, signal: AbortSignal): Promise<IncomingMessage> {
  const client = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const request = client.get(url, {
      agent: false,
      signal,
      lookup: policy.allowPrivateNetwork ? undefined : checkedLookup(),
      headers: { accept: '*/*', 'user-agent': 'videollama3-server' },
    });
    request.once('response', resolve);
    request.once('error', reject);
  });
}

/**
 * Fetches `href` (following checked redirects) and passes the body to `onChunk` as it arrives; an awaited
 * `onChunk` applies back-pressure. Rejects with a 400 HttpError naming the part for every failure a client can
 * cause (bad URL, blocked host, unreachable, HTTP error status, too large, too slow), and with `signal`'s reason
 * when the request is cancelled.
 */
export async function fetchMedia(
  href: string,
  policy: FetchPolicy,
  limits: FetchLimits,
  onChunk: (chunk: Buffer) => void | Promise<void>,
  signal?: AbortSignal,
): Promise<void> {
  const deadline = AbortSignal.timeout(limits.timeoutMs);
  const both = signal ? AbortSignal.any([signal, deadline]) : deadline;
  const fail = (why: string, code: string) => badRequest(`${limits.param}: cannot fetch ${limits.what} ${displayUrl(href)}: ${why}`, limits.param, code);
  let url: URL;
  try {
    url = new URL(href);
  } catch {
    throw badRequest(`${limits.param}: ${limits.what} URL ${displayUrl(href)} is not a valid URL`, limits.param, 'invalid_media_url');
  }
  try {
    for (let hop = 0; ; hop++) {
      checkUrl(url, policy, limits);
      const response = await get(url, policy, both);
      const status = response.statusCode ?? 0;
      if (REDIRECTS.has(status)) {
        response.resume();
        const location = response.headers.location;
        if (!location) throw fail(`HTTP ${status} without a Location header`, 'media_fetch_failed');
        if (hop >= policy.maxRedirects) throw fail(`more than ${policy.maxRedirects} redirects`, 'media_fetch_failed');
        url = new URL(location, url);
        continue;
      }
      if (status < 200 || status > 299) {
        response.resume();
        throw fail(`HTTP ${status}`, 'media_fetch_failed');
      }
      const declared = Number(response.headers['content-length']);
      if (declared > limits.maxBytes) {
        response.destroy();
        throw new HttpError(413, `${limits.param}: ${limits.what} ${displayUrl(href)} is ${declared} bytes, more than the limit of ${limits.maxBytes}`, limits.param, 'media_too_large');
      }
      let received = 0;
      for await (const chunk of response as AsyncIterable<Buffer>) {
        received += chunk.length;
        if (received > limits.maxBytes) {
          response.destroy();
          throw new HttpError(413, `${limits.param}: ${limits.what} ${displayUrl(href)} is more than the limit of ${limits.maxBytes} bytes`, limits.param, 'media_too_large');
        }
        await onChunk(chunk);
      }
      return;
    }
  } catch (err) {
    if (err instanceof HttpError) throw err;
    if (signal?.aborted) throw signal.reason;
    if (deadline.aborted) throw fail(`no complete answer within ${limits.timeoutMs} ms`, 'media_fetch_timeout');
    if (err instanceof BlockedAddress) throw fail(err.message, 'media_url_not_allowed');
    const e = err as NodeJS.ErrnoException;
    throw fail(e.code ? `${e.code} ${e.message}` : e.message, 'media_fetch_failed');
  }
}
