/**
 * Checks a request's AWS Signature Version 4 as an AWS service does, recomputing it from the
 * request with the test's own credentials (the IAM User Guide's "Create a signed AWS API
 * request"): the canonical request (method; the path, each segment URI-encoded again, as for
 * every service but S3; the query sorted and encoded; the signed headers; the payload hash the
 * request declares in x-amz-content-sha256), the string to sign, the key derived from the secret
 * key, date, region and service. Independent of the SDK the forwarder signs with.
 *
 * The payload: a hex SHA-256 must be the body's; `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` (how
 * HealthImaging's STOW-RS page signs a body) needs x-amz-decoded-content-length equal to the
 * body's length; `UNSIGNED-PAYLOAD` is refused, since HealthImaging documents neither it nor any
 * request without the header.
 */
import { createHash, createHmac } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';

export interface TestCredentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken?: string;
}

export interface SignedRequestView {
  readonly method: string;
  /** The request target as received: path and query, still percent-encoded. */
  readonly target: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
}

/** Why a request is refused, as the service's error type says it. */
export type SigV4Refusal =
  | 'MissingAuthenticationToken'
  | 'UnrecognizedClientException'
  | 'ExpiredTokenException'
  | 'InvalidSignatureException'
  | 'XAmzContentSHA256Mismatch';

const STREAMING = 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD';
const MAX_SKEW_MS = 15 * 60_000;

const sha256 = (data: string | Buffer): string => createHash('sha256').update(data).digest('hex');
const hmac = (key: string | Buffer, data: string): Buffer => createHmac('sha256', key).update(data).digest();

/** RFC 3986 unreserved characters stay, everything else is %XX (upper case). */
const encode = (text: string): string =>
  encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

const canonicalUri = (path: string): string => path.split('/').map(encode).join('/') || '/';

const canonicalQuery = (query: string): string =>
  [...new URLSearchParams(query)]
    .map(([key, value]) => [encode(key), encode(value)] as const)
    .sort(([a, x], [b, y]) => (a === b ? (x < y ? -1 : x > y ? 1 : 0) : a < b ? -1 : 1))
    .map(([key, value]) => `${key}=${value}`)
    .join('&');

const headerValue = (headers: IncomingHttpHeaders, name: string): string => {
  const value = headers[name];
  return (Array.isArray(value) ? value.join(',') : (value ?? '')).trim().replace(/\s+/g, ' ');
};

const AUTHORIZATION =
  /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, ?SignedHeaders=([a-z0-9;-]+), ?Signature=([0-9a-f]{64})$/;

/**
 * Undefined when the request is signed with credentials in `accepted` for this region and
 * service, and the signature is right; otherwise why it is refused.
 */
export const checkSigV4 = (
  request: SignedRequestView,
  scope: { readonly region: string; readonly service: string },
  accepted: readonly TestCredentials[],
  expired: readonly TestCredentials[] = [],
): SigV4Refusal | undefined => {
  const match = AUTHORIZATION.exec(headerValue(request.headers, 'authorization'));
  if (match === null) return 'MissingAuthenticationToken';
  const [, keyId, day, region, service, signedHeaders, signature] = match as unknown as string[];
  if (expired.some((credentials) => credentials.accessKeyId === keyId)) return 'ExpiredTokenException';
  const credentials = accepted.find((candidate) => candidate.accessKeyId === keyId);
  if (credentials === undefined) return 'UnrecognizedClientException';
  if (region !== scope.region || service !== scope.service) return 'InvalidSignatureException';
  if ((credentials.sessionToken ?? '') !== headerValue(request.headers, 'x-amz-security-token')) {
    return 'UnrecognizedClientException';
  }
  const amzDate = headerValue(request.headers, 'x-amz-date');
  const at = Date.parse(
    amzDate.replace(/^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/, '$1-$2-$3T$4:$5:$6Z'),
  );
  if (!amzDate.startsWith(day ?? '') || !(Math.abs(Date.now() - at) <= MAX_SKEW_MS)) {
    return 'InvalidSignatureException';
  }
  const payload = headerValue(request.headers, 'x-amz-content-sha256');
  if (payload === STREAMING) {
    if (headerValue(request.headers, 'x-amz-decoded-content-length') !== String(request.body.length)) {
      return 'XAmzContentSHA256Mismatch';
    }
  } else if (payload !== sha256(request.body)) return 'XAmzContentSHA256Mismatch';
  const names = (signedHeaders ?? '').split(';');
  if (
    !names.includes('host') ||
    names.some((name) => name.startsWith('x-amz-') && !(name in request.headers))
  ) {
    return 'InvalidSignatureException';
  }
  for (const name of Object.keys(request.headers)) {
    if (name.startsWith('x-amz-') && !names.includes(name)) return 'InvalidSignatureException';
  }
  const [path = '', query = ''] = request.target.split('?', 2);
  const canonical = [
    request.method,
    canonicalUri(path),
    canonicalQuery(query),
    ...names.map((name) => `${name}:${headerValue(request.headers, name)}`),
    '',
    signedHeaders,
    payload,
  ].join('\n');
  const credentialScope = `${day}/${region}/${service}/aws4_request`;
  const toSign = ['AWS4-HMAC-SHA256', amzDate, credentialScope, sha256(canonical)].join('\n');
  const key = ['aws4_request'].reduce(
    (derived, part) => hmac(derived, part),
    hmac(hmac(hmac(`AWS4${credentials.secretAccessKey}`, day ?? ''), region ?? ''), service ?? ''),
  );
  return createHmac('sha256', key).update(toSign).digest('hex') === signature
    ? undefined
    : 'InvalidSignatureException';
};
