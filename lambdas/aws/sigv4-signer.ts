/**
 * SigV4 for a DICOMweb destination on AWS (HealthImaging), with the AWS SDK's signer and its
 * default credential provider chain: the Lambda's role on AWS; the environment, a profile, SSO
 * or a credential process locally. Imported lazily by the core (authorizers.ts), only when a
 * request is first signed.
 *
 * A STOW-RS body streams from the source and is never held whole, so it cannot be hashed before
 * it is sent. HealthImaging's STOW-RS documentation signs such a body as
 * `x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD` with its length in
 * `x-amz-decoded-content-length`, the body sent as it is; `UNSIGNED-PAYLOAD` is not documented
 * there, so this is what is sent. Bodies sent whole (and requests without one) are hashed.
 */
import { defaultProvider } from '@aws-sdk/credential-provider-node';
import { Hash } from '@smithy/core/serde';
import { SignatureV4 } from '@smithy/signature-v4';
import type { RequestSigner, RequestToSign } from '../core/credentials.ts';

export const STREAMING_PAYLOAD = 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD';

type Provider = ReturnType<typeof defaultProvider>;
type Credentials = Awaited<ReturnType<Provider>>;

/** The query as the signer takes it: a key given twice (includefield) has a list of values. */
const queryOf = (url: URL): Record<string, string | string[]> => {
  const query: Record<string, string | string[]> = {};
  for (const [key, value] of url.searchParams) {
    const before = query[key];
    query[key] = before === undefined ? value : [...(Array.isArray(before) ? before : [before]), value];
  }
  return query;
};

const sameCredentials = (a: Credentials | undefined, b: Credentials): boolean =>
  a?.accessKeyId === b.accessKeyId &&
  a.secretAccessKey === b.secretAccessKey &&
  a.sessionToken === b.sessionToken;

export const sigV4Signer = (
  scope: { readonly region: string; readonly service: string },
  provider: Provider = defaultProvider(),
): RequestSigner => {
  let current: Credentials | undefined;
  const signer = new SignatureV4({
    ...scope,
    // The chain keeps credentials until they are about to expire (a role's session), then renews them.
    credentials: async () => {
      current = await provider();
      return current;
    },
    sha256: Hash.bind(null, 'sha256'),
  });
  return {
    streamedBodyLength: 'required',
    sign: async (request: RequestToSign) => {
      const { url } = request;
      const streamed: Record<string, string> =
        request.streamedLength === undefined
          ? {}
          : {
              'x-amz-content-sha256': STREAMING_PAYLOAD,
              'x-amz-decoded-content-length': String(request.streamedLength),
            };
      const signed = await signer.sign({
        method: request.method,
        protocol: url.protocol,
        hostname: url.hostname,
        ...(url.port === '' ? {} : { port: Number(url.port) }),
        path: url.pathname,
        query: queryOf(url),
        // The HTTP client sends the same Host (the URL's host and port).
        headers: { host: url.host, ...streamed },
        body: request.body,
      });
      const { host: _host, ...added } = signed.headers;
      return added;
    },
    refresh: async () => {
      const before = current;
      current = await provider({ forceRefresh: true });
      return !sameCredentials(before, current);
    },
  };
};
