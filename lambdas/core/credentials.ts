/**
 * Credentials and TLS material that come from a secret store (Secrets Manager on AWS) and may
 * change while a process runs: a rotated password is read again when a server refuses the old
 * one, and an internal CA or a client certificate is read when the server is first called. The
 * store is a port: the core never sees the AWS SDK.
 */
import { z } from 'zod';
import { ConfigError } from './config.ts';

/**
 * Reads a secret's JSON value. Reads may be cached (Powertools Parameters' maxAge on AWS);
 * `fresh` goes past the cache: after a refusal, the secret may have been rotated meanwhile.
 */
export type SecretReader = (secretId: string, options?: { readonly fresh?: boolean }) => Promise<unknown>;

const passwordSecret = z.object({ username: z.string().min(1).optional(), password: z.string() });
const caSecret = z.object({ ca: z.string().includes('-----BEGIN') });
const clientCertSecret = z.object({
  cert: z.string().includes('-----BEGIN'),
  key: z.string().includes('-----BEGIN'),
});

export const parsed = <T>(schema: z.ZodType<T>, value: unknown, field: string, shape: string): T => {
  const result = schema.safeParse(value);
  if (!result.success) throw new ConfigError(`${field}: the secret must be JSON ${shape}`);
  return result.data;
};

/** The Authorization header a server's secret gives, and a way to read it anew. */
export interface CredentialSource {
  header(): Promise<string>;
  /** Reads the secret past any cache; true when the credentials changed (a rotation). */
  refresh(): Promise<boolean>;
}

/** A request as it will be sent, for a signature over it. */
export interface RequestToSign {
  readonly method: string;
  readonly url: URL;
  /** A body sent whole, hashed into the signature; undefined for none or a streamed one. */
  readonly body: string | Buffer | undefined;
  /** The length of a streamed body, declared before it is sent (`contentLength`); undefined when not streamed. */
  readonly streamedLength: number | undefined;
}

/**
 * Signs each request itself (SigV4): the headers to add, computed over its method, URL, date
 * and body. A streamed body is signed as its length declared beforehand (`streamedBodyLength`).
 */
export interface RequestSigner {
  /** Whether a streamed body must come with its length (`CallOptions.contentLength`). */
  readonly streamedBodyLength: 'required' | 'none';
  sign(request: RequestToSign): Promise<Record<string, string>>;
  /** Resolves the credentials past any cache; true when they changed (a rotation, a renewed session). */
  refresh(): Promise<boolean>;
}

/** What authorizes a server's requests: a fixed header, one that may change, or a signature per request. */
export type Authorization = string | CredentialSource | RequestSigner;

export const isSigner = (authorization: Authorization | undefined): authorization is RequestSigner =>
  typeof authorization === 'object' && 'sign' in authorization;

export const basicHeader = (username: string, password: string): string =>
  `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;

/**
 * A header made from something that can be read again (a secret): `refresh` reads it past any
 * cache and says whether the header changed.
 */
export const rereadable = (load: (fresh: boolean) => Promise<string>): CredentialSource => {
  let last: string | undefined;
  const read = async (fresh: boolean) => {
    last = await load(fresh);
    return last;
  };
  return {
    header: () => read(false),
    refresh: async () => {
      const before = last;
      return (await read(true)) !== before;
    },
  };
};

export const secretCredentials = (
  server: { readonly secretId: string; readonly username?: string | undefined },
  read: SecretReader,
): CredentialSource =>
  rereadable(async (fresh) => {
    const secret = parsed(
      passwordSecret,
      await read(server.secretId, { fresh }),
      'secretId',
      '{"username": …, "password": …}',
    );
    return basicHeader(secret.username ?? server.username ?? '', secret.password);
  });

/** PEM material for a server's TLS connections: CAs to trust, a client certificate and its key. */
export interface TlsMaterial {
  readonly ca?: string;
  readonly cert?: string;
  readonly key?: string;
}

export const secretTlsMaterial = async (
  server: { readonly caSecretId?: string | undefined; readonly clientCertSecretId?: string | undefined },
  read: SecretReader,
): Promise<TlsMaterial> => ({
  ...(server.caSecretId === undefined
    ? {}
    : parsed(
        caSecret,
        await read(server.caSecretId),
        'caSecretId',
        '{"ca": "-----BEGIN CERTIFICATE-----…"}',
      )),
  ...(server.clientCertSecretId === undefined
    ? {}
    : parsed(
        clientCertSecret,
        await read(server.clientCertSecretId),
        'clientCertSecretId',
        '{"cert": "-----BEGIN CERTIFICATE-----…", "key": "-----BEGIN … PRIVATE KEY-----…"}',
      )),
});
