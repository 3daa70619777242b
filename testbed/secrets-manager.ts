/**
 * A small stand-in for AWS Secrets Manager on loopback, for the deployed Lambda bundles: the SDK
 * inside them reaches it through AWS_ENDPOINT_URL_SECRETS_MANAGER (no emulator of the service is
 * at hand). It reproduces what a bundle's read of a secret (Powertools Parameters' getSecret, that
 * is the SDK's GetSecretValue) depends on:
 * - the service's JSON 1.1 protocol: `POST /` with `X-Amz-Target: secretsmanager.GetSecretValue`
 *   and `Content-Type: application/x-amz-json-1.1`, the body `{"SecretId", "VersionId"?,
 *   "VersionStage"?}`, the answer `{"ARN", "Name", "SecretString", "VersionId", "VersionStages",
 *   "CreatedDate"}` (epoch seconds);
 * - a secret named by its name, its ARN, or its ARN without the six random characters;
 * - only the current version (AWSCURRENT): each `put` makes a new one, as a rotation does, and a
 *   request for another version or stage is answered as one for a missing secret;
 * - errors as the service sends them, status 400 with `x-amzn-ErrorType` and `{"__type",
 *   "message"}`: ResourceNotFoundException, SerializationException for a body that is not JSON,
 *   UnknownOperationException for any other target, IncompleteSignatureException for a request
 *   without a SigV4 `Authorization` for secretsmanager in its region (the signature itself is
 *   not checked);
 * - an endpoint that is down: `stop()` closes the port (connections refused), `start()` listens
 *   on the same port again.
 * Not reproduced: any other operation, binary secrets, resource policies, KMS, throttling.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { LOCAL_REGION } from './sqs-emulator.ts';

const ACCOUNT = '000000000000';
const TARGET = 'secretsmanager.GetSecretValue';

interface StoredSecret {
  readonly arn: string;
  readonly name: string;
  readonly secretString: string;
  readonly versionId: string;
  readonly createdDate: number;
}

const answer = (response: ServerResponse, status: number, body: unknown, errorType?: string): void => {
  response.writeHead(status, {
    'content-type': 'application/x-amz-json-1.1',
    'x-amzn-requestid': randomUUID(),
    ...(errorType === undefined ? {} : { 'x-amzn-errortype': errorType }),
  });
  response.end(JSON.stringify(body));
};

const refuse = (response: ServerResponse, errorType: string, message: string): void =>
  answer(response, 400, { __type: errorType, message }, errorType);

const readBody = async (request: IncomingMessage): Promise<string> => {
  const chunks: Buffer[] = [];
  for await (const chunk of request) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
};

export class SecretsManagerStandIn {
  /** The secret names read, in order: what the Lambdas asked for, cache misses only. */
  readonly reads: string[] = [];
  readonly region: string;
  private readonly secrets = new Map<string, StoredSecret>();
  private readonly server: Server = createServer((request, response) => {
    this.answer(request, response).catch((error: unknown) =>
      refuse(response, 'InternalServiceError', String(error)),
    );
  });
  private port = 0;

  constructor(region: string = LOCAL_REGION) {
    this.region = region;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Listens on a free port, or after a stop on the same one. */
  async start(): Promise<void> {
    this.server.listen(this.port, '127.0.0.1');
    await once(this.server, 'listening');
    this.port = (this.server.address() as AddressInfo).port;
  }

  /** The endpoint goes down: open connections are cut, new ones refused. */
  async stop(): Promise<void> {
    if (!this.server.listening) return;
    this.server.closeAllConnections();
    this.server.close();
    await once(this.server, 'close');
  }

  /** Stores a new current version of a secret (created on first use); objects are stored as JSON. */
  put(name: string, value: unknown): void {
    const arn =
      this.secrets.get(name)?.arn ??
      `arn:aws:secretsmanager:${this.region}:${ACCOUNT}:secret:${name}-${randomBytes(3).toString('hex')}`;
    this.secrets.set(name, {
      arn,
      name,
      secretString: typeof value === 'string' ? value : JSON.stringify(value),
      versionId: randomUUID(),
      createdDate: Date.now() / 1000,
    });
  }

  private find(secretId: unknown): StoredSecret | undefined {
    if (typeof secretId !== 'string') return undefined;
    return [...this.secrets.values()].find(
      (secret) => secretId === secret.name || secretId === secret.arn || secretId === secret.arn.slice(0, -7),
    );
  }

  private async answer(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const authorization = String(request.headers.authorization ?? '');
    if (
      !authorization.startsWith('AWS4-HMAC-SHA256 ') ||
      !authorization.includes(`/${this.region}/secretsmanager/aws4_request`)
    ) {
      refuse(
        response,
        'IncompleteSignatureException',
        `a SigV4 signature for secretsmanager in ${this.region} is required`,
      );
      return;
    }
    if (request.method !== 'POST' || request.headers['x-amz-target'] !== TARGET) {
      refuse(response, 'UnknownOperationException', `only ${TARGET} is stood in for`);
      return;
    }
    let body: { SecretId?: unknown; VersionId?: unknown; VersionStage?: unknown };
    try {
      body = JSON.parse(await readBody(request));
    } catch {
      refuse(response, 'SerializationException', 'the body is not JSON');
      return;
    }
    const secret = this.find(body.SecretId);
    const otherVersion =
      (body.VersionId !== undefined && body.VersionId !== secret?.versionId) ||
      (body.VersionStage !== undefined && body.VersionStage !== 'AWSCURRENT');
    if (secret === undefined || otherVersion) {
      refuse(response, 'ResourceNotFoundException', "Secrets Manager can't find the specified secret.");
      return;
    }
    this.reads.push(secret.name);
    answer(response, 200, {
      ARN: secret.arn,
      Name: secret.name,
      SecretString: secret.secretString,
      VersionId: secret.versionId,
      VersionStages: ['AWSCURRENT'],
      CreatedDate: secret.createdDate,
    });
  }
}
