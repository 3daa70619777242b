/**
 * WADO-RS, for what QIDO-RS cannot say: the identifying attributes of a series where an archive
 * leaves them out of its QIDO answers, and the bytes of an instance, hashed as they stream (the
 * `checksum` verification at an archive that is not an Orthanc).
 */
import { createHash, type Hash } from 'node:crypto';
import { transient } from './errors.ts';
import { call, type Endpoint, statusError } from './http.ts';
import { getListedCopies, type ListedCopy } from './qido-client.ts';

const segment = encodeURIComponent;

const CRLF = Buffer.from('\r\n');
const HEADERS_END = Buffer.from('\r\n\r\n');

/**
 * The MD5 of each part of a multipart body, read as it streams: memory holds one chunk and a
 * delimiter's length, whatever the size of the instances.
 */
export const digestParts = async (chunks: AsyncIterable<Buffer>, boundary: string): Promise<string[]> => {
  const delimiter = Buffer.from(`\r\n--${boundary}`);
  const digests: string[] = [];
  // A delimiter at the very start has no CRLF before it: lend it one.
  let pending: Buffer = CRLF;
  let state: 'preamble' | 'delimited' | 'headers' | 'body' | 'done' = 'preamble';
  let hash: Hash | undefined;
  const keepTail = () => {
    const keep = Math.min(pending.length, delimiter.length - 1);
    hash?.update(pending.subarray(0, pending.length - keep));
    pending = pending.subarray(pending.length - keep);
  };
  for await (const chunk of chunks) {
    if (state === 'done') continue;
    pending = Buffer.concat([pending, chunk]);
    for (let progress = true; progress; ) {
      progress = false;
      if (state === 'preamble' || state === 'body') {
        const at = pending.indexOf(delimiter);
        if (at < 0) {
          keepTail();
          break;
        }
        if (state === 'body') digests.push((hash as Hash).update(pending.subarray(0, at)).digest('hex'));
        hash = undefined;
        pending = pending.subarray(at + delimiter.length);
        state = 'delimited';
        progress = true;
      } else if (state === 'delimited' && pending.length >= 2) {
        state = pending.subarray(0, 2).toString() === '--' ? 'done' : 'headers';
        progress = state === 'headers';
      } else if (state === 'headers') {
        const end = pending.indexOf(HEADERS_END);
        if (end < 0) break;
        pending = pending.subarray(end + HEADERS_END.length);
        hash = createHash('md5');
        state = 'body';
        progress = true;
      }
    }
  }
  if (state !== 'done') throw transient('WADO-RS: the multipart answer ended before its closing delimiter');
  return digests;
};

const boundaryOf = (contentType: string): string | undefined =>
  /boundary="?([^";]+)"?/i.exec(contentType)?.[1];

export class WadoClient {
  readonly endpoint: Endpoint;

  constructor(endpoint: Endpoint) {
    this.endpoint = endpoint;
  }

  /** The identifying attributes of every instance of a series, from its metadata. */
  async seriesMetadata(
    studyInstanceUid: string,
    seriesInstanceUid: string,
    signal?: AbortSignal,
  ): Promise<ListedCopy[]> {
    return getListedCopies(
      this.endpoint,
      `/studies/${segment(studyInstanceUid)}/series/${segment(seriesInstanceUid)}/metadata`,
      'WADO-RS metadata',
      { signal, absentIsEmpty: true },
    );
  }

  /**
   * The MD5 of every copy the archive returns for the instance, as stored (`transfer-syntax=*`:
   * no transcoding on the way); none when it holds none.
   */
  async instanceDigests(
    uids: { readonly study: string; readonly series: string; readonly sop: string },
    signal?: AbortSignal,
  ): Promise<string[]> {
    const what = 'WADO-RS retrieve';
    const response = await call(
      this.endpoint,
      `/studies/${segment(uids.study)}/series/${segment(uids.series)}/instances/${segment(uids.sop)}`,
      what,
      {
        headers: { accept: 'multipart/related; type="application/dicom"; transfer-syntax=*' },
        ...(signal === undefined ? {} : { signal }),
      },
    );
    if (response.statusCode === 204 || response.statusCode === 404) {
      await response.body.dump();
      return [];
    }
    if (response.statusCode !== 200) throw await statusError(this.endpoint, what, response);
    const boundary = boundaryOf(String(response.headers['content-type'] ?? ''));
    if (boundary === undefined) {
      await response.body.dump();
      throw transient(`${what} at ${this.endpoint.label}: the answer is not multipart`);
    }
    return digestParts(response.body as AsyncIterable<Buffer>, boundary);
  }
}
