/**
 * QIDO-RS: which instances of a study a DICOMweb archive holds, each with its identifying
 * attributes. It is the verification that works against any archive, not only an Orthanc.
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import type { KindProfile } from './destination-kind.ts';
import { transient } from './errors.ts';
import { call, type Endpoint, readJson, statusError } from './http.ts';
import { IDENTITY_ATTRIBUTES, IDENTITY_TAGS, type Identity, identityFromDicomJson } from './identity.ts';

/** One copy the archive lists: an archive may hold several under one SOPInstanceUID. */
export interface ListedCopy {
  readonly sopInstanceUid: string;
  readonly identity: Identity;
}

const itemSchema = z.looseObject({
  [IDENTITY_ATTRIBUTES.SOPInstanceUID]: z.object({ Value: z.array(z.string()).min(1) }),
});

/**
 * Parses a DICOM JSON array of instances: QIDO-RS answers, or WADO-RS metadata (whole data sets,
 * where an element left out is absent from the instance).
 */
export const listedCopies = (
  raw: unknown,
  options: { readonly absentIsEmpty?: boolean } = {},
): ListedCopy[] | undefined => {
  const parsed = z.array(itemSchema).safeParse(raw);
  if (!parsed.success) return undefined;
  return parsed.data.map((item) => ({
    sopInstanceUid: item[IDENTITY_ATTRIBUTES.SOPInstanceUID].Value[0] as string,
    identity: identityFromDicomJson(item, options),
  }));
};

/**
 * GETs a DICOM JSON list of instances (QIDO-RS, or WADO-RS metadata). An archive that holds
 * nothing of it may say so with 204 or 404: none.
 */
export const getListedCopies = async (
  endpoint: Endpoint,
  path: string,
  what: string,
  options: { readonly signal?: AbortSignal | undefined; readonly absentIsEmpty?: boolean } = {},
): Promise<ListedCopy[]> => {
  const response = await call(endpoint, path, what, {
    headers: { accept: 'application/dicom+json' },
    ...(options.signal === undefined ? {} : { signal: options.signal }),
  });
  if (response.statusCode === 204 || response.statusCode === 404) {
    await response.body.dump();
    return [];
  }
  if (response.statusCode !== 200) throw await statusError(endpoint, what, response);
  const copies = listedCopies(await readJson(endpoint, what, response), {
    absentIsEmpty: options.absentIsEmpty === true,
  });
  if (copies === undefined) throw transient(`${what} at ${endpoint.label}: unexpected answer`);
  return copies;
};

const INCLUDE_FIELDS = IDENTITY_TAGS.map((tag) => `includefield=${tag}`).join('&');

/**
 * More copies than any study has: the largest studies seen (thin-slice multiphase CT, multiframe
 * split into frames) hold about 100,000 instances. A listing held in memory costs some hundreds
 * of bytes a copy, so this also keeps a runaway listing within a Lambda's memory.
 */
export const MAX_LISTED_COPIES = 500_000;

/**
 * A copy as the archive lists it: two copies with the same key are one entry listed twice. A
 * digest, so that remembering what was seen costs tens of bytes a copy, not the copy again.
 */
const copyKey = (copy: ListedCopy): string =>
  createHash('sha256').update(copy.sopInstanceUid).update(JSON.stringify(copy.identity)).digest('base64');

/** What paging there may assume (destination-kind.ts); nothing by default. */
export type PagingProfile = Pick<KindProfile, 'maxPageSize' | 'maxListed' | 'shortPageEnds'>;

export class QidoClient {
  readonly endpoint: Endpoint;
  readonly pageSize: number;
  readonly maxCopies: number;
  readonly shortPageEnds: boolean;

  constructor(
    endpoint: Endpoint,
    pageSize: number,
    options: { readonly maxCopies?: number; readonly profile?: PagingProfile } = {},
  ) {
    const { profile } = options;
    this.endpoint = endpoint;
    this.pageSize = Math.min(pageSize, profile?.maxPageSize ?? pageSize);
    this.maxCopies = Math.min(
      options.maxCopies ?? MAX_LISTED_COPIES,
      profile?.maxListed ?? MAX_LISTED_COPIES,
    );
    this.shortPageEnds = profile?.shortPageEnds === true;
  }

  /**
   * Every copy the archive lists for a study, read page by page until an empty page: an archive
   * may cut a page below the limit asked for (Google's Cloud Healthcare, silently), and a short
   * page taken for the last would hide instances. Reading also stops at a page that lists nothing new
   * (an archive or proxy that ignores `offset` answers its first page for ever, one that clamps it
   * its last), at a short page where the archive is known to honour the limit (`shortPageEnds`),
   * and past `maxCopies` (an archive's own maximum: no page beyond it is asked for). Stopping
   * early is safe: a copy left unlisted only counts as not held yet, so it is sent again or waits
   * for the next attempt, never deleted unverified.
   */
  async studyInstances(studyInstanceUid: string, signal?: AbortSignal): Promise<ListedCopy[]> {
    const listed: ListedCopy[] = [];
    const seen = new Set<string>();
    while (listed.length < this.maxCopies) {
      const limit = Math.min(this.pageSize, this.maxCopies - listed.length);
      const page = await this.page(studyInstanceUid, listed.length, limit, signal);
      const keys = page.map(copyKey);
      if (keys.every((key) => seen.has(key))) break;
      for (const key of keys) seen.add(key);
      listed.push(...page);
      if (this.shortPageEnds && page.length < limit) break;
    }
    return listed;
  }

  private page(
    studyInstanceUid: string,
    offset: number,
    limit: number,
    signal?: AbortSignal,
  ): Promise<ListedCopy[]> {
    const path =
      `/studies/${encodeURIComponent(studyInstanceUid)}/instances` +
      `?${INCLUDE_FIELDS}&limit=${limit}&offset=${offset}`;
    return getListedCopies(this.endpoint, path, 'QIDO-RS', { signal });
  }
}
