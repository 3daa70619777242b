/**
 * QIDO-RS: which instances of a study a DICOMweb archive holds. It is the verification that
 * works against any archive, not only an Orthanc.
 */
import { z } from 'zod';
import { transient } from './errors.ts';
import { call, type Endpoint, readJson, statusError } from './http.ts';

const SOP_INSTANCE_UID = '00080018';

const instancesSchema = z.array(
  z.object({ [SOP_INSTANCE_UID]: z.object({ Value: z.array(z.string()).min(1) }) }),
);

export class QidoClient {
  readonly endpoint: Endpoint;
  readonly pageSize: number;

  constructor(endpoint: Endpoint, pageSize: number) {
    this.endpoint = endpoint;
    this.pageSize = pageSize;
  }

  /**
   * The SOPInstanceUIDs the archive holds for a study, read page by page until an empty page:
   * an archive may cap a page below the limit asked for (Orthanc's LimitFindInstances), and a
   * short page taken for the last would hide instances.
   */
  async studyInstances(studyInstanceUid: string, signal?: AbortSignal): Promise<Set<string>> {
    const held = new Set<string>();
    for (let offset = 0; ; ) {
      const page = await this.page(studyInstanceUid, offset, signal);
      if (page.length === 0) return held;
      for (const uid of page) held.add(uid);
      offset += page.length;
    }
  }

  private async page(studyInstanceUid: string, offset: number, signal?: AbortSignal): Promise<string[]> {
    const what = 'QIDO-RS';
    const path =
      `/studies/${encodeURIComponent(studyInstanceUid)}/instances` +
      `?includefield=${SOP_INSTANCE_UID}&limit=${this.pageSize}&offset=${offset}`;
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
    const parsed = instancesSchema.safeParse(await readJson(this.endpoint, what, response));
    if (!parsed.success) throw transient(`${what} at ${this.endpoint.label}: unexpected answer`);
    return parsed.data.map((item) => item[SOP_INSTANCE_UID].Value[0] as string);
  }
}
