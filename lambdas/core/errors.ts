/**
 * Every failure the engine meets is either worth retrying (the network, a restarting server,
 * a 5xx) or not (a refused file, bad credentials, a malformed message). The classification
 * decides between backoff and dead-lettering, so it is made once, where the failure is seen.
 */
export type FailureKind = 'transient' | 'permanent';

export class ForwarderError extends Error {
  readonly kind: FailureKind;
  /** HTTP status, when the failure is an answer from a server. */
  readonly status: number | undefined;

  constructor(kind: FailureKind, message: string, options?: { cause?: unknown; status?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = kind === 'transient' ? 'TransientError' : 'PermanentError';
    this.kind = kind;
    this.status = options?.status;
  }
}

export const transient = (message: string, options?: { cause?: unknown; status?: number }) =>
  new ForwarderError('transient', message, options);

export const permanent = (message: string, options?: { cause?: unknown; status?: number }) =>
  new ForwarderError('permanent', message, options);

/**
 * Transient: instances were sent, but the destination does not list them when verified. The
 * retry resumes with them; the forwarder counts these as `VerificationFailures`.
 */
export class NotVerifiedError extends ForwarderError {
  constructor(message: string) {
    super('transient', message);
  }
}

/** Anything not classified where it was thrown is a bug or an unknown condition: retry it. */
export const failureKind = (error: unknown): FailureKind =>
  error instanceof ForwarderError ? error.kind : 'transient';

export const describe = (error: unknown): string => (error instanceof Error ? error.message : String(error));
