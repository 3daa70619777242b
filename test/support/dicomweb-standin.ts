/**
 * A cloud DICOMweb archive on loopback, one module for the three kinds the forwarder knows
 * (AWS HealthImaging, Google Cloud Healthcare, Azure DICOM service), each reproducing what its
 * public documentation says of the requests the forwarder makes (docs/destinations.md lists the
 * documents and each behaviour). Instances are kept in memory: tests are small.
 *
 * Every kind: STOW-RS `POST {root}/studies` (multipart/related, one DICOM file a part; a part it
 * cannot read, or one without SOPClassUID, is refused with FailureReason 0xA900 in the
 * FailedSOPSequence); 200 when all were stored, 202 when some were, 409 when none; QIDO-RS
 * `GET {root}/studies/{study}/instances` with `includefield`, `limit`, `offset`, and
 * `GET {root}/studies` (answered as an archive holding no study: what `check` asks); WADO-RS
 * `GET {root}/studies/{study}/series/{series}/metadata`.
 *
 * - `healthimaging`: SigV4 for `medical-imaging` in its region, recomputed from each request with
 *   the test's own credentials (sigv4-check.ts); STOW-RS at most 1 GB a request (413 beyond); a
 *   re-send with the same UIDs and other content is answered as stored but filed in a
 *   non-primary image set, which neither QIDO-RS nor metadata shows; QIDO-RS lists 10,000
 *   results at most, and not PatientSex or InstanceNumber (they are not among its search
 *   elements: the forwarder reads them from the series metadata).
 * - `google`: a bearer token; an identical re-send is stored again as success, a changed one
 *   refused 409 with FailureReason 0x0110 (272); QIDO-RS `limit` defaults to 1,000 instances and
 *   one above `maxResults` is cut to it silently; past the end, 200 with `[]`.
 * - `azure`: a bearer token; an instance it holds (identical or not) is refused with
 *   FailureReason 45070; QIDO-RS `limit` 1-200 (anything else a 400), 204 past the end.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { type DicomElement, dicomJson, readDicom } from './dicom-reader.ts';
import { readAll, send, serve } from './fronts.ts';
import { checkSigV4, type TestCredentials } from './sigv4-check.ts';

export type CloudKind = 'healthimaging' | 'google' | 'azure';

interface Stored {
  readonly study: string;
  readonly series: string;
  readonly sop: string;
  readonly elements: ReadonlyMap<string, DicomElement>;
  readonly bytes: Buffer;
  /** HealthImaging files a conflicting re-send in a non-primary image set: listed nowhere. */
  readonly primary: boolean;
}

export interface StandInOptions {
  /** Who may call it: tokens a TokenStandIn issued, or SigV4 credentials (HealthImaging). */
  readonly auth:
    | { readonly kind: 'bearer'; readonly isValid: (token: string) => boolean }
    | {
        readonly kind: 'sigv4';
        readonly region: string;
        readonly accepted: TestCredentials[];
        /** Credentials whose session has ended: 403 ExpiredTokenException. */
        readonly expired: TestCredentials[];
      };
  /** The most results one QIDO-RS answer lists, where the kind cuts silently (Google). */
  readonly maxResults?: number;
}

const SOP_CLASS_UID = '00080016';
const SOP_INSTANCE_UID = '00080018';
const STUDY_UID = '0020000D';
const SERIES_UID = '0020000E';
/** Data set does not match SOP class (PS3.4 Annex GG): what a part it cannot take is refused with. */
const CANNOT_TAKE = 0xa900;
const GOOGLE_CONFLICT = 0x0110;
const AZURE_EXISTS = 45070;
const HEALTHIMAGING_MAX_REQUEST = 1_000_000_000;
const HEALTHIMAGING_MAX_RESULTS = 10_000;
/** Not among HealthImaging's instance search elements. */
const HEALTHIMAGING_NOT_SEARCHED = new Set(['00100040', '00200013']);

const DICOM_JSON = { 'content-type': 'application/dicom+json' };

const answerJson = (response: ServerResponse, status: number, body: unknown): void =>
  send(response, { status, headers: DICOM_JSON, body: JSON.stringify(body) });

/** The parts of a multipart/related body (read whole: tests are small). */
const partsOf = (body: Buffer, contentType: string): Buffer[] => {
  const boundary = /boundary="?([^";]+)"?/i.exec(contentType)?.[1];
  if (boundary === undefined) return [];
  const delimiter = Buffer.from(`--${boundary}`);
  const parts: Buffer[] = [];
  let at = body.indexOf(delimiter);
  while (at >= 0) {
    const start = at + delimiter.length;
    if (body.subarray(start, start + 2).toString() === '--') break;
    const next = body.indexOf(delimiter, start);
    if (next < 0) break;
    const part = body.subarray(start, next);
    const headersEnd = part.indexOf('\r\n\r\n');
    // The part's own CRLF before the next delimiter is not content.
    parts.push(part.subarray(headersEnd + 4, part.length - 2));
    at = next;
  }
  return parts;
};

const item = (sop: string, failure?: number): Record<string, unknown> => ({
  '00081155': { vr: 'UI', Value: [sop] },
  ...(failure === undefined ? {} : { '00081197': { vr: 'US', Value: [failure] } }),
});

export class DicomWebStandIn {
  readonly kind: CloudKind;
  readonly options: StandInOptions;
  /** Every copy stored, in the order it came. */
  readonly stored: Stored[] = [];
  /** The QIDO-RS `limit` of each listing asked for, and the statuses of every answer. */
  readonly limitsAsked: number[] = [];
  readonly statuses: number[] = [];
  private server: Awaited<ReturnType<typeof serve>> | undefined;
  /** Errors of the stand-in itself: the test's to check. */
  readonly errors: unknown[] = [];

  private constructor(kind: CloudKind, options: StandInOptions) {
    this.kind = kind;
    this.options = options;
  }

  static async start(kind: CloudKind, options: StandInOptions): Promise<DicomWebStandIn> {
    const standIn = new DicomWebStandIn(kind, options);
    standIn.server = await serve((request, response) => standIn.answer(request, response), standIn.errors);
    return standIn;
  }

  /** The DICOMweb root, shaped as the kind's own URLs are. */
  get url(): string {
    const origin = `http://127.0.0.1:${this.server?.port}`;
    if (this.kind === 'healthimaging') return `${origin}/datastore/d9a2a515ab294163a2d2f4069eed584c`;
    if (this.kind === 'google') {
      return `${origin}/v1/projects/p/locations/l/datasets/d/dicomStores/s/dicomWeb`;
    }
    return `${origin}/v2`;
  }

  /** The copies QIDO-RS and metadata show: HealthImaging's primary image sets only. */
  listed(): Stored[] {
    return this.stored.filter((copy) => copy.primary);
  }

  async close(): Promise<void> {
    await this.server?.close();
  }

  private async answer(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const body = await readAll(request);
    const root = new URL(this.url).pathname;
    const target = request.url ?? '/';
    const respond = (status: number, answer?: unknown) => {
      this.statuses.push(status);
      if (answer === undefined) send(response, { status, headers: {}, body: '' });
      else answerJson(response, status, answer);
    };
    const refusal = this.refusal(request, target, body);
    if (refusal !== undefined) return respond(refusal.status, refusal.body);
    const { pathname, searchParams } = new URL(target, 'http://stand-in');
    if (!pathname.startsWith(root)) return respond(404, { message: 'not found' });
    const path = pathname.slice(root.length);
    if (request.method === 'POST' && path === '/studies') {
      const [status, answer] = this.store(partsOf(body, String(request.headers['content-type'] ?? '')));
      return respond(status, answer);
    }
    // What `check` asks: a DICOMweb root answers a search for studies (none of them is needed).
    if (request.method === 'GET' && path === '/studies')
      return this.kind === 'azure' ? respond(204) : respond(200, []);
    const instances = /^\/studies\/([^/]+)\/instances$/.exec(path);
    if (request.method === 'GET' && instances !== null) {
      const [status, answer] = this.search(decodeURIComponent(instances[1] ?? ''), searchParams);
      return respond(status, answer);
    }
    const metadata = /^\/studies\/([^/]+)\/series\/([^/]+)\/metadata$/.exec(path);
    if (request.method === 'GET' && metadata !== null) {
      const [study, series] = [metadata[1], metadata[2]].map((uid) => decodeURIComponent(uid ?? ''));
      const copies = this.listed().filter((copy) => copy.study === study && copy.series === series);
      return copies.length === 0
        ? respond(404, { message: 'not found' })
        : respond(
            200,
            copies.map((c) => dicomJson(c.elements)),
          );
    }
    return respond(404, { message: 'not found' });
  }

  /** What the kind answers a request it does not let through: its auth, HealthImaging's size limit. */
  private refusal(
    request: IncomingMessage,
    target: string,
    body: Buffer,
  ): { status: number; body: unknown } | undefined {
    const { auth } = this.options;
    if (auth.kind === 'bearer') {
      const token = /^Bearer (.+)$/.exec(String(request.headers.authorization ?? ''))?.[1];
      return token !== undefined && auth.isValid(token)
        ? undefined
        : { status: 401, body: { error: 'invalid_token' } };
    }
    const refused = checkSigV4(
      { method: request.method ?? 'GET', target, headers: request.headers, body },
      { region: auth.region, service: 'medical-imaging' },
      auth.accepted,
      auth.expired,
    );
    if (refused !== undefined)
      return { status: refused === 'MissingAuthenticationToken' ? 401 : 403, body: { __type: refused } };
    if (body.length > HEALTHIMAGING_MAX_REQUEST)
      return { status: 413, body: { message: 'request too large' } };
    return undefined;
  }

  private store(parts: readonly Buffer[]): [number, unknown] {
    const referenced: unknown[] = [];
    const failed: unknown[] = [];
    for (const part of parts) {
      let elements: Map<string, DicomElement>;
      try {
        elements = readDicom(part);
      } catch {
        failed.push(item('', CANNOT_TAKE));
        continue;
      }
      const sop = elements.get(SOP_INSTANCE_UID)?.text ?? '';
      if ((elements.get(SOP_CLASS_UID)?.text ?? '') === '') {
        failed.push(item(sop, CANNOT_TAKE));
        continue;
      }
      const copy: Stored = {
        study: elements.get(STUDY_UID)?.text ?? '',
        series: elements.get(SERIES_UID)?.text ?? '',
        sop,
        elements,
        bytes: part,
        primary: true,
      };
      const held = this.listed().find(
        (c) => c.study === copy.study && c.series === copy.series && c.sop === sop,
      );
      const failure = this.existing(held, copy);
      if (failure !== undefined) failed.push(item(sop, failure));
      else {
        referenced.push(item(sop));
        if (held === undefined) this.stored.push(copy);
        else if (!held.bytes.equals(part)) this.stored.push({ ...copy, primary: false });
      }
    }
    const status = failed.length === 0 ? 200 : referenced.length === 0 ? 409 : 202;
    return [status, { '00081199': { vr: 'SQ', Value: referenced }, '00081198': { vr: 'SQ', Value: failed } }];
  }

  /** How the kind answers an instance it holds under the same UIDs: undefined for "stored". */
  private existing(held: Stored | undefined, copy: Stored): number | undefined {
    if (held === undefined) return undefined;
    if (this.kind === 'azure') return AZURE_EXISTS;
    if (this.kind === 'google' && !held.bytes.equals(copy.bytes)) return GOOGLE_CONFLICT;
    return undefined;
  }

  private search(study: string, query: URLSearchParams): [number, unknown?] {
    const asked = query.has('limit') ? Number(query.get('limit')) : undefined;
    const offset = Number(query.get('offset') ?? '0');
    if (asked !== undefined) this.limitsAsked.push(asked);
    let limit: number;
    if (this.kind === 'azure') {
      if (asked !== undefined && !(Number.isInteger(asked) && asked >= 1 && asked <= 200)) {
        return [400, { message: 'The limit must be between 1 and 200' }];
      }
      limit = asked ?? 100;
    } else if (this.kind === 'google') {
      limit = Math.min(asked ?? 1000, this.options.maxResults ?? 1000);
    } else {
      limit = Math.min(asked ?? HEALTHIMAGING_MAX_RESULTS, Math.max(0, HEALTHIMAGING_MAX_RESULTS - offset));
    }
    const leaveOut = this.kind === 'healthimaging' ? HEALTHIMAGING_NOT_SEARCHED : new Set<string>();
    const page = this.listed()
      .filter((copy) => copy.study === study)
      .slice(offset, offset + limit)
      .map((copy) => dicomJson(copy.elements, leaveOut));
    if (page.length === 0 && this.kind === 'azure') return [204];
    return [200, page];
  }
}
