/**
 * STOW-RS: stores instances at a DICOMweb destination in one multipart request whose body is
 * streamed, chunked, straight from the source, so that memory does not grow with the batch.
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { isSigner } from './credentials.ts';
import { KIND_PROFILES, type KindProfile } from './destination-kind.ts';
import { describe, ForwarderError, transient } from './errors.ts';
import { call, type Endpoint, isTransientStatus, statusError } from './http.ts';

/** One instance to send: its UID, and how to open its file when its turn comes. */
export interface StowPart {
  readonly sopInstanceUid: string;
  /** Opens the file; resolves undefined when the instance no longer exists at the source. */
  readonly open: () => Promise<Readable | undefined>;
  /** The file's size, where the request must declare its length beforehand (a signed body). */
  readonly size?: number;
}

export interface StowResult {
  readonly status: number;
  /** Listed by the destination as stored (new or already there). */
  readonly stored: ReadonlySet<string>;
  /** Refused by the destination, with the reason it gave or the one we inferred. */
  readonly refused: ReadonlyMap<string, string>;
  /**
   * Refused because the destination already holds an instance under this SOPInstanceUID (Azure's
   * 45070, a duplicate SOP instance 0x0111): the same instance, or a conflict; verification decides.
   */
  readonly existing: ReadonlySet<string>;
  /**
   * Stored with a warning (coercion 0xB000, elements discarded, …): the destination changed what
   * it was sent, so its answer is no proof of holding the same instance; identity decides.
   */
  readonly coerced: ReadonlySet<string>;
  /** Could not be read at the source any more (deleted meanwhile): not sent. */
  readonly goneAtSource: readonly string[];
  /** Bytes of DICOM sent, multipart framing excluded. */
  readonly bytes: number;
}

const REFERENCED_SOP_SEQUENCE = '00081199';
const FAILED_SOP_SEQUENCE = '00081198';
const REFERENCED_SOP_INSTANCE_UID = '00081155';
const FAILURE_REASON = '00081197';
const WARNING_REASON = '00081196';

/** What a destination's failure reasons mean: "already exists", or "try again" (destination-kind.ts). */
export type FailureReasons = Pick<KindProfile, 'existingReasons' | 'transientReasons'>;

interface DicomJsonItem {
  readonly [tag: string]: { readonly Value?: readonly unknown[] } | undefined;
}

const sequenceItems = (answer: DicomJsonItem, tag: string): DicomJsonItem[] | undefined => {
  const element = answer[tag];
  if (element === undefined) return undefined;
  return (element.Value ?? []) as DicomJsonItem[];
};

const firstValue = (item: DicomJsonItem, tag: string): unknown => item[tag]?.Value?.[0];

const partHeader = (boundary: string) =>
  Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`);
const PART_END = Buffer.from('\r\n');
const closing = (boundary: string) => Buffer.from(`--${boundary}--\r\n`);

/** The body's length from the parts' sizes: undefined when one is not known. */
const multipartLength = (parts: readonly StowPart[], boundary: string): number | undefined =>
  parts.every((part) => part.size !== undefined)
    ? parts.reduce(
        (sum, part) => sum + partHeader(boundary).length + (part.size ?? 0) + PART_END.length,
        closing(boundary).length,
      )
    : undefined;

/**
 * The multipart body, one part per instance opened only when the previous one is sent. With its
 * length declared, a part gone at the source cannot be left out: the request fails for now, and
 * its retry, on a new snapshot, goes without it.
 */
async function* multipartBody(
  parts: readonly StowPart[],
  boundary: string,
  progress: { bytes: number; sent: string[]; gone: string[]; complete: boolean },
  declared: boolean,
): AsyncGenerator<Buffer> {
  for (const part of parts) {
    const stream = await part.open();
    if (stream === undefined && declared) {
      throw transient('an instance was deleted at the source during a STOW-RS request of declared length');
    }
    if (stream === undefined) {
      progress.gone.push(part.sopInstanceUid);
      continue;
    }
    yield partHeader(boundary);
    for await (const chunk of stream) {
      progress.bytes += (chunk as Buffer).length;
      yield chunk as Buffer;
    }
    yield PART_END;
    progress.sent.push(part.sopInstanceUid);
  }
  progress.complete = true;
  yield closing(boundary);
}

/**
 * Compares the answer with what was sent. An archive may answer 400 although it stored some
 * parts, may leave a part it could not parse out of both sequences, and answers an already
 * stored instance exactly like a new one: only the comparison tells which is which.
 */
export const interpret = (
  answer: DicomJsonItem,
  sent: readonly string[],
  reasons: FailureReasons = KIND_PROFILES.generic,
): Pick<StowResult, 'stored' | 'refused' | 'existing' | 'coerced'> => {
  const sentSet = new Set(sent);
  const stored = new Set<string>();
  const coerced = new Set<string>();
  for (const item of sequenceItems(answer, REFERENCED_SOP_SEQUENCE) ?? []) {
    const uid = firstValue(item, REFERENCED_SOP_INSTANCE_UID);
    if (typeof uid !== 'string' || !sentSet.has(uid)) continue;
    stored.add(uid);
    if (item[WARNING_REASON] !== undefined) coerced.add(uid);
  }
  const refused = new Map<string, string>();
  const existing = new Set<string>();
  // Refused for now (out of resources, processing failure): neither stored nor refused for good,
  // so the move protocol retries them.
  const retryable = new Set<string>();
  for (const item of sequenceItems(answer, FAILED_SOP_SEQUENCE) ?? []) {
    const uid = firstValue(item, REFERENCED_SOP_INSTANCE_UID);
    const reason = firstValue(item, FAILURE_REASON);
    if (typeof uid !== 'string' || !sentSet.has(uid) || stored.has(uid)) continue;
    const code = typeof reason === 'number' ? reason : undefined;
    if (code !== undefined && reasons.transientReasons.has(code)) {
      retryable.add(uid);
    } else if (code !== undefined && reasons.existingReasons.has(code)) {
      existing.add(uid);
    } else {
      refused.set(
        uid,
        `refused by the destination (failure reason 0x${(code ?? 0).toString(16).padStart(4, '0')})`,
      );
    }
  }
  for (const uid of sent) {
    if (!stored.has(uid) && !refused.has(uid) && !retryable.has(uid) && !existing.has(uid)) {
      refused.set(uid, 'not acknowledged by the destination (a file it could not read)');
    }
  }
  return { stored, refused, existing, coerced };
};

/** What a lone instance answered 400 without a DICOM answer is recorded as. */
export const UNANSWERED_400 = 'refused by the destination (400 without a DICOM answer, sent alone)';

/** A request the destination answered 400 without a DICOM answer, once its whole body was sent. */
interface Unanswered {
  readonly base: Pick<StowResult, 'status' | 'goneAtSource' | 'bytes'>;
  /** The parts it carried, those gone at the source left out. */
  readonly sent: readonly StowPart[];
}

const nothingStored = () => ({
  stored: new Set<string>(),
  refused: new Map<string, string>(),
  existing: new Set<string>(),
  coerced: new Set<string>(),
});

/** The halves' answers as one: everything was sent, some of it twice. */
const joined = (first: Unanswered['base'], halves: readonly StowResult[]): StowResult => ({
  status: first.status,
  stored: new Set(halves.flatMap((half) => [...half.stored])),
  refused: new Map(halves.flatMap((half) => [...half.refused])),
  existing: new Set(halves.flatMap((half) => [...half.existing])),
  coerced: new Set(halves.flatMap((half) => [...half.coerced])),
  goneAtSource: [...new Set([...first.goneAtSource, ...halves.flatMap((half) => half.goneAtSource)])],
  bytes: halves.reduce((sum, half) => sum + half.bytes, first.bytes),
});

export class StowClient {
  readonly endpoint: Endpoint;
  /** What the destination's failure reasons mean. */
  readonly reasons: FailureReasons;
  /** Bytes one request may carry there; undefined when the archive states no limit. */
  readonly maxBytes: number | undefined;

  constructor(endpoint: Endpoint, profile: KindProfile = KIND_PROFILES.generic) {
    this.endpoint = endpoint;
    this.reasons = profile;
    this.maxBytes = profile.maxStowBytes;
  }

  /**
   * Sends the parts. Throws a classified error when the request as a whole failed. A 400 without
   * a DICOM answer to a whole body says that something in it was refused, not what: the batch is
   * sent again in halves, down to single instances, and an instance refused so on its own is
   * refused for good (it stays at the source, recorded), rather than retried by every sweep. For
   * one refused instance the halving re-sends about twice the batch's bytes.
   */
  async store(parts: readonly StowPart[], signal?: AbortSignal): Promise<StowResult> {
    const answered = await this.#post(parts, signal);
    if (!('sent' in answered)) return answered;
    const { base, sent } = answered;
    const [alone] = sent;
    if (sent.length === 1 && alone !== undefined) {
      return { ...base, ...nothingStored(), refused: new Map([[alone.sopInstanceUid, UNANSWERED_400]]) };
    }
    const middle = Math.ceil(sent.length / 2);
    const first = await this.store(sent.slice(0, middle), signal);
    return joined(base, [first, await this.store(sent.slice(middle), signal)]);
  }

  async #post(parts: readonly StowPart[], signal?: AbortSignal): Promise<StowResult | Unanswered> {
    const what = 'STOW-RS';
    const boundary = `orthanc-forwarder-${randomBytes(12).toString('hex')}`;
    const progress = { bytes: 0, sent: [] as string[], gone: [] as string[], complete: false };
    const { authorization } = this.endpoint;
    const contentLength =
      isSigner(authorization) && authorization.streamedBodyLength === 'required'
        ? multipartLength(parts, boundary)
        : undefined;
    let sourceError: unknown;
    const body = Readable.from(
      (async function* () {
        try {
          yield* multipartBody(parts, boundary, progress, contentLength !== undefined);
        } catch (error) {
          sourceError = error;
          throw error;
        }
      })(),
    );
    let response: Awaited<ReturnType<typeof call>>;
    try {
      response = await call(this.endpoint, '/studies', what, {
        method: 'POST',
        headers: {
          'content-type': `multipart/related; type="application/dicom"; boundary=${boundary}`,
          accept: 'application/dicom+json',
        },
        body,
        ...(contentLength === undefined ? {} : { contentLength }),
        ...(signal === undefined ? {} : { signal }),
      });
    } catch (error) {
      // A failure to read the source surfaces as an aborted upload: report the real cause.
      if (sourceError !== undefined) throw sourceFailure(sourceError);
      throw error;
    }
    const base = { status: response.statusCode, goneAtSource: progress.gone, bytes: progress.bytes };
    if (
      isTransientStatus(response.statusCode) ||
      [401, 403, 404, 405, 413, 415].includes(response.statusCode)
    ) {
      // STOW-RS has one resource, the root's /studies: a 404 says the root is wrong, not the batch.
      const fault = response.statusCode === 404 ? 'root' : undefined;
      throw await statusError(this.endpoint, what, response, fault);
    }
    if (progress.sent.length === 0) {
      await response.body.dump();
      return { ...base, ...nothingStored() };
    }
    const answer = await this.readAnswer(response);
    if (answer !== undefined) return { ...base, ...interpret(answer, progress.sent, this.reasons) };
    if (response.statusCode === 400 && progress.complete) {
      const sent = new Set(progress.sent);
      return { base, sent: parts.filter((part) => sent.has(part.sopInstanceUid)) };
    }
    // Any other answer without sequences says nothing of what was stored: a 200 that dropped them,
    // or an answer before the body ended (a stalled upload ends so), about the upload, not a part.
    throw transient(`${what} at ${this.endpoint.label} answered ${response.statusCode} without a result`, {
      status: response.statusCode,
    });
  }

  private async readAnswer(response: Awaited<ReturnType<typeof call>>): Promise<DicomJsonItem | undefined> {
    const text = await response.body.text();
    let answer: unknown;
    try {
      answer = JSON.parse(text);
    } catch {
      return undefined;
    }
    // Some archives wrap the single result dataset in an array.
    const item = (Array.isArray(answer) ? answer[0] : answer) as DicomJsonItem | undefined;
    if (item === null || typeof item !== 'object') return undefined;
    if (item[REFERENCED_SOP_SEQUENCE] === undefined && item[FAILED_SOP_SEQUENCE] === undefined)
      return undefined;
    return item;
  }
}

const sourceFailure = (error: unknown): ForwarderError =>
  error instanceof ForwarderError
    ? error
    : transient(`reading the source during STOW: ${describe(error)}`, { cause: error });
