/**
 * QIDO-RS: which instances of a study a DICOMweb archive holds, each with its identifying
 * attributes. It is the verification that works against any archive, not only an Orthanc.
 */
import { z } from 'zod';
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

const INCLUDE_FIELDS = IDENTITY_TAGS.map((tag) => `includefield=${tag}`).join('&');

export class QidoClient {
  readonly endpoint: Endpoint;
  readonly pageSize: number;

  constructor(endpoint: Endpoint, pageSize: number) {
    this.endpoint = endpoint;
    this.pageSize = pageSize;
  }

  /**
   * Every copy the archive lists for a study, read page by page until an empty page: an archive
   * may cap a page below the limit asked for (Orthanc's LimitFindInstances), and a short page
   * taken for the last would hide instances.
   */
  async studyInstances(studyInstanceUid: string, signal?: AbortSignal): Promise<ListedCopy[]> {
    const listed: ListedCopy[] = [];
    for (let offset = 0; ; ) {
      const page = await this.page(studyInstanceUid, offset, signal);
      if (page.length === 0) return listed;
      listed.push(...page);
      offset += page.length;
    }
  }

  private async page(studyInstanceUid: string, offset: number, signal?: AbortSignal): Promise<ListedCopy[]> {
    const what = 'QIDO-RS';
    const path =
      `/studies/${encodeURIComponent(studyInstanceUid)}/instances` +
      `?${INCLUDE_FIELDS}&limit=${this.pageSize}&offset=${offset}`;
    const response = await call(this.endpoint, path, what, {
      headers: { accept: 'application/dicom+json' },
      ...(signal === undefined ? {} : { signal }),
    });
    // An archive that holds nothing of the study may say so with 204 or 404.
    if (response.statusCode === 204 || response.statusCode === 404) {
      await response.body.dump();
      return [];
    }
    if (response.statusCode !== 200) throw await statusError(this.endpoint, what, response);
    const copies = listedCopies(await readJson(this.endpoint, what, response));
    if (copies === undefined) throw transient(`${what} at ${this.endpoint.label}: unexpected answer`);
    return copies;
  }
}
