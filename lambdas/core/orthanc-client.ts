/**
 * The REST API of an Orthanc server, as far as the forwarder uses it: the change feed, a study's
 * instances, instance files, and deletion of exactly the instances we name.
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { Agent } from 'undici';
import { z } from 'zod';
import { ForwarderError, transient } from './errors.ts';
import { type CallOptions, call, callJson, type Endpoint, openLane, statusError } from './http.ts';
import { type Identity, identityFromOrthancTags } from './identity.ts';
import type { Tally } from './ports.ts';
import type { ReadRate } from './read-rate.ts';

/**
 * Orthanc keeps 64-bit sequence numbers but writes them into its JSON as a C `int`: past 2^31
 * changes they come out negative. Read as unsigned, they are right up to 2^32 changes.
 */
const sequenceNumber = z
  .number()
  .int()
  .min(-(2 ** 31))
  .transform((seq) => (seq < 0 ? seq + 2 ** 32 : seq));

const changesSchema = z.object({
  Changes: z.array(
    z.object({
      ChangeType: z.string(),
      ID: z.string(),
      ResourceType: z.string(),
      Seq: sequenceNumber,
    }),
  ),
  Done: z.boolean(),
  Last: sequenceNumber,
});

const studySchema = z.object({
  ID: z.string(),
  IsStable: z.boolean(),
  LastUpdate: z.string().optional(),
  MainDicomTags: z.object({
    StudyInstanceUID: z.string(),
    StudyDescription: z.string().optional(),
    StudyDate: z.string().optional(),
  }),
});

/** Only what the sweep needs of an expanded study: of its tags, the StudyDate (a minimum age may count from it). */
const listedStudySchema = z.object({
  ID: z.string(),
  IsStable: z.boolean(),
  LastUpdate: z.string().optional(),
  MainDicomTags: z.object({ StudyDate: z.string().optional() }).optional(),
});

const statisticsSchema = z.object({ CountStudies: z.number().int().nonnegative() });
/** TotalDiskSize is a string of bytes: TotalDiskSizeMB is rounded down to whole megabytes. */
const holdingsSchema = statisticsSchema.extend({
  CountInstances: z.number().int().nonnegative(),
  TotalDiskSize: z.string().regex(/^\d+$/),
});

const studyStatisticsSchema = z.object({
  CountInstances: z.number().int().nonnegative(),
  DiskSize: z.string().regex(/^\d+$/),
});

const seriesSchema = z.object({
  ID: z.string(),
  ParentStudy: z.string(),
  LastUpdate: z.string().optional(),
  MainDicomTags: z.object({ Modality: z.string().optional() }),
});

const jobCreatedSchema = z.object({ ID: z.string() });

const jobSchema = z.object({
  State: z.string(),
  ErrorCode: z.number().optional(),
  ErrorDescription: z.string().optional(),
  Content: z
    .object({
      FunctionErrorCode: z.number().optional(),
      FunctionErrorDescription: z.string().optional(),
    })
    .optional(),
});

const instancesSchema = z.array(
  z.object({
    ID: z.string(),
    ParentSeries: z.string(),
    FileSize: z.number().int().nonnegative(),
    FileUuid: z.string(),
    MainDicomTags: z.object({ SOPInstanceUID: z.string() }),
  }),
);

const lookupSchema = z.array(z.object({ ID: z.string(), Type: z.string() }));

export interface Change {
  readonly seq: number;
  readonly changeType: string;
  readonly resourceType: string;
  /** The Orthanc ID of the resource that changed. */
  readonly id: string;
}

export interface ChangesPage {
  readonly changes: readonly Change[];
  readonly done: boolean;
  readonly last: number;
}

export interface StudyInfo {
  readonly id: string;
  readonly studyInstanceUid: string;
  readonly isStable: boolean;
  readonly lastUpdate: string | undefined;
  /** For routing only: a DICOM tag value, never logged. */
  readonly description: string | undefined;
  /** For a minimum age only (YYYYMMDD): a DICOM tag value, never logged. */
  readonly studyDate: string | undefined;
}

/** A study as a listing shows it: enough to tell whether the feed should look at it again. */
export interface ListedStudy {
  readonly id: string;
  readonly isStable: boolean;
  readonly lastUpdate: string | undefined;
  /** For a minimum age only: a DICOM tag value, never logged. */
  readonly studyDate: string | undefined;
}

export interface SeriesInfo {
  readonly id: string;
  readonly studyId: string;
  /** When the source last received an instance of the series (Orthanc's LastUpdate). */
  readonly lastUpdate: string | undefined;
  /** For routing only: a DICOM tag value, never logged. */
  readonly modality: string | undefined;
}

/** An Orthanc job as far as the forwarder follows one. */
export interface JobStatus {
  /** Pending, Running, Success, Failure, Paused or Retry. */
  readonly state: string;
  /** Orthanc's error code and its fixed description (the plugin's own when it gave one): no PHI. */
  readonly errorCode: number | undefined;
  readonly errorDescription: string | undefined;
}

export interface SourceInstance {
  /** Orthanc's ID at the source. */
  readonly id: string;
  readonly sopInstanceUid: string;
  readonly seriesId: string;
  readonly fileSize: number;
  /**
   * The stored file's attachment. An instance ID names whatever file arrives under the same
   * identifiers: a re-send (OverwriteInstances) or a delete and re-send gets a new attachment,
   * so a changed FileUuid means other content than the one verified.
   */
  readonly fileUuid: string;
}

const parse = <T>(schema: z.ZodType<T>, value: unknown, what: string, endpoint: Endpoint): T => {
  const result = schema.safeParse(value);
  if (!result.success) {
    const field = result.error.issues[0]?.path.join('.') ?? '';
    throw transient(`${what} at ${endpoint.label}: unexpected answer (field '${field}')`);
  }
  return result.data;
};

const segment = (id: string): string => encodeURIComponent(id);

const toStudyInfo = (study: z.output<typeof studySchema>): StudyInfo => ({
  id: study.ID,
  studyInstanceUid: study.MainDicomTags.StudyInstanceUID,
  isStable: study.IsStable,
  lastUpdate: study.LastUpdate,
  description: study.MainDicomTags.StudyDescription,
  studyDate: study.MainDicomTags.StudyDate,
});

const toSeriesInfo = (series: z.output<typeof seriesSchema>): SeriesInfo => ({
  id: series.ID,
  studyId: series.ParentStudy,
  lastUpdate: series.LastUpdate,
  modality: series.MainDicomTags.Modality,
});

export class OrthancClient {
  readonly endpoint: Endpoint;
  /** The source's read rate cap, shared by every move of this process; none when absent. */
  readonly #readRate: ReadRate | undefined;

  constructor(endpoint: Endpoint, options: { readonly readRate?: ReadRate | undefined } = {}) {
    this.endpoint = endpoint;
    this.#readRate = options.readRate;
  }

  /** One page of the change feed after `since` (exclusive). */
  async changes(since: number, limit: number): Promise<ChangesPage> {
    // Orthanc turns a malformed value into since=0 without a word: only ever send integers.
    if (!Number.isSafeInteger(since) || since < 0 || !Number.isSafeInteger(limit) || limit < 1) {
      throw new RangeError(`changes: since and limit must be non-negative integers (${since}, ${limit})`);
    }
    const what = 'reading the change feed';
    const raw = await callJson(this.endpoint, `/changes?since=${since}&limit=${limit}`, what);
    const page = parse(changesSchema, raw, what, this.endpoint);
    return {
      changes: page.Changes.map((c) => ({
        seq: c.Seq,
        changeType: c.ChangeType,
        resourceType: c.ResourceType,
        id: c.ID,
      })),
      done: page.Done,
      last: page.Last,
    };
  }

  /** The sequence number of the newest change: how far the feed has gone. */
  async lastChange(): Promise<number> {
    const what = 'reading the last change';
    return parse(changesSchema, await callJson(this.endpoint, '/changes?last', what), what, this.endpoint)
      .Last;
  }

  /** The study, or undefined when it no longer exists. */
  async study(studyId: string): Promise<StudyInfo | undefined> {
    const what = 'reading a study';
    const raw = await callJson(this.endpoint, `/studies/${segment(studyId)}`, what, { allow404: true });
    if (raw === undefined) return undefined;
    return toStudyInfo(parse(studySchema, raw, what, this.endpoint));
  }

  /** The study an instance belongs to, in one request; undefined when the instance is gone. */
  async instanceStudy(instanceId: string): Promise<StudyInfo | undefined> {
    const what = "reading an instance's study";
    const raw = await callJson(this.endpoint, `/instances/${segment(instanceId)}/study`, what, {
      allow404: true,
    });
    return raw === undefined ? undefined : toStudyInfo(parse(studySchema, raw, what, this.endpoint));
  }

  /** The series, or undefined when it no longer exists. */
  async series(seriesId: string): Promise<SeriesInfo | undefined> {
    const what = 'reading a series';
    const raw = await callJson(this.endpoint, `/series/${segment(seriesId)}`, what, { allow404: true });
    return raw === undefined ? undefined : toSeriesInfo(parse(seriesSchema, raw, what, this.endpoint));
  }

  /** Every series of the study in one request, or undefined when the study no longer exists. */
  async studySeries(studyId: string): Promise<SeriesInfo[] | undefined> {
    const what = "listing a study's series";
    const raw = await callJson(this.endpoint, `/studies/${segment(studyId)}/series`, what, {
      allow404: true,
    });
    return raw === undefined
      ? undefined
      : parse(z.array(seriesSchema), raw, what, this.endpoint).map(toSeriesInfo);
  }

  /** Every instance of the study in one request, or undefined when the study no longer exists. */
  async studyInstances(studyId: string): Promise<SourceInstance[] | undefined> {
    return this.instancesOf('studies', studyId, "listing a study's instances");
  }

  /** Every instance of the series in one request, or undefined when the series no longer exists. */
  async seriesInstances(seriesId: string): Promise<SourceInstance[] | undefined> {
    return this.instancesOf('series', seriesId, "listing a series' instances");
  }

  private async instancesOf(
    level: 'studies' | 'series',
    id: string,
    what: string,
  ): Promise<SourceInstance[] | undefined> {
    const raw = await callJson(this.endpoint, `/${level}/${segment(id)}/instances`, what, { allow404: true });
    if (raw === undefined) return undefined;
    return parse(instancesSchema, raw, what, this.endpoint).map((i) => ({
      id: i.ID,
      sopInstanceUid: i.MainDicomTags.SOPInstanceUID,
      seriesId: i.ParentSeries,
      fileSize: i.FileSize,
      fileUuid: i.FileUuid,
    }));
  }

  /**
   * The identity of every instance of a series as its file says (not the database's patient,
   * study and series records, which keep the first instance's values), in one request; undefined
   * when the series no longer exists. Per series, so that memory follows the largest series.
   */
  async seriesIdentities(seriesId: string, signal?: AbortSignal): Promise<Map<string, Identity> | undefined> {
    const what = "reading a series' instance tags";
    const raw = await callJson(this.endpoint, `/series/${segment(seriesId)}/instances-tags?short`, what, {
      allow404: true,
      ...(signal === undefined ? {} : { signal }),
    });
    if (raw === undefined) return undefined;
    const tags = parse(z.record(z.string(), z.record(z.string(), z.unknown())), raw, what, this.endpoint);
    return new Map(
      Object.entries(tags).map(([id, instanceTags]) => [id, identityFromOrthancTags(instanceTags)]),
    );
  }

  /**
   * How many studies the server holds: where a sweep starts. Orthanc lists studies in a stable
   * order (SQLite: as they arrived; the database plugins: by ID), so positions mean something.
   */
  async studyCount(): Promise<number> {
    const what = 'counting studies';
    return parse(statisticsSchema, await callJson(this.endpoint, '/statistics', what), what, this.endpoint)
      .CountStudies;
  }

  /** What the server holds, in one cheap request: studies, instances, and their size on disk. */
  async holdings(): Promise<Tally> {
    const what = 'reading the statistics';
    const raw = parse(
      holdingsSchema,
      await callJson(this.endpoint, '/statistics', what),
      what,
      this.endpoint,
    );
    return { studies: raw.CountStudies, instances: raw.CountInstances, bytes: Number(raw.TotalDiskSize) };
  }

  /**
   * The studies at listing positions `since` to `since + limit - 1`, each with its stability and
   * LastUpdate, in one request (`expand`): the feed's safety net reads a source in such pages.
   * Measured on Orthanc 1.10.1 (3,000 studies): 50 ms per 500 wherever the page starts, where
   * `/tools/find` with `Since` grows with the offset (52 ms at 0, 193 ms at 2,500) and lists in
   * another order.
   */
  async studiesPage(since: number, limit: number): Promise<ListedStudy[]> {
    return (await this.#listStudies(since, limit, listedStudySchema)).map((study) => ({
      id: study.ID,
      isStable: study.IsStable,
      lastUpdate: study.LastUpdate,
      studyDate: study.MainDicomTags?.StudyDate,
    }));
  }

  /** The same page, with what routing reads of each study: for `plan`. */
  async studyInfosPage(since: number, limit: number): Promise<StudyInfo[]> {
    return (await this.#listStudies(since, limit, studySchema)).map(toStudyInfo);
  }

  async #listStudies<T>(since: number, limit: number, schema: z.ZodType<T>): Promise<T[]> {
    if (!Number.isSafeInteger(since) || since < 0 || !Number.isSafeInteger(limit) || limit < 1) {
      throw new RangeError(`studies: since and limit must be non-negative integers (${since}, ${limit})`);
    }
    const what = 'listing studies';
    const raw = await callJson(this.endpoint, `/studies?expand&since=${since}&limit=${limit}`, what);
    return parse(z.array(schema), raw, what, this.endpoint);
  }

  /** A study's instances and their size on disk, in one cheap request; undefined when it no longer exists. */
  async studySize(studyId: string): Promise<{ instances: number; bytes: number } | undefined> {
    const what = "reading a study's statistics";
    const raw = await callJson(this.endpoint, `/studies/${segment(studyId)}/statistics`, what, {
      allow404: true,
    });
    if (raw === undefined) return undefined;
    const statistics = parse(studyStatisticsSchema, raw, what, this.endpoint);
    return { instances: statistics.CountInstances, bytes: Number(statistics.DiskSize) };
  }

  /** The quickest of its recent answers, in ms (about the round trip to it); undefined before one. */
  quickestAnswerMs(): number | undefined {
    return this.endpoint.answers.quickest();
  }

  /** A connection of its own to the source, for a batch's read-ahead: destroy it after. */
  lane(): Promise<Agent> {
    return openLane(this.endpoint);
  }

  /** Streams an instance's DICOM file, no faster than the read rate cap; on a lane, for a read-ahead. */
  async openInstance(
    instanceId: string,
    signal?: AbortSignal,
    options: Pick<CallOptions, 'lane'> = {},
  ): Promise<Readable> {
    const what = 'reading an instance';
    const response = await call(this.endpoint, `/instances/${segment(instanceId)}/file`, what, {
      headers: { accept: 'application/dicom' },
      ...(signal === undefined ? {} : { signal }),
      ...options,
    });
    if (response.statusCode !== 200) throw await statusError(this.endpoint, what, response);
    // A proxy's login or error page answered with 200 is not the file: sent on, the destination
    // would refuse it and the instance would be recorded as refused for good, never sent again.
    const type = String(response.headers['content-type'] ?? '');
    if (!/^application\/(dicom|octet-stream)\s*(;|$)/i.test(type)) {
      await response.body.dump();
      throw transient(
        `${what} at ${this.endpoint.label}: expected DICOM, got ${type === '' ? 'no content type' : type}`,
      );
    }
    return this.#readRate === undefined ? response.body : this.#readRate.throttle(response.body);
  }

  /**
   * The calling AET that sent the instance (Orthanc's RemoteAET metadata): '' for an instance
   * that came another way (REST API, DICOMweb), undefined when the instance does not exist.
   */
  async remoteAet(instanceId: string): Promise<string | undefined> {
    const what = "reading an instance's RemoteAET";
    const response = await call(this.endpoint, `/instances/${segment(instanceId)}/metadata/RemoteAET`, what);
    if (response.statusCode === 404) {
      await response.body.dump();
      // Also the answer when the metadata is absent: it came without one.
      return (await this.hasInstance(instanceId)) ? '' : undefined;
    }
    if (response.statusCode !== 200) throw await statusError(this.endpoint, what, response);
    return (await response.body.text()).trim();
  }

  /** Whether the source holds the instance: only its 404 says it does not. */
  async hasInstance(instanceId: string): Promise<boolean> {
    const what = 'reading an instance';
    const raw = await callJson(this.endpoint, `/instances/${segment(instanceId)}`, what, { allow404: true });
    return raw !== undefined;
  }

  /**
   * Asks the source to send these resources (series or instances) to a DICOMweb server declared
   * in its own configuration (`DicomWeb.Servers`), as a job; returns the job's ID. Undefined when
   * a resource no longer exists.
   */
  async pushToDicomWeb(serverName: string, resources: readonly string[]): Promise<string | undefined> {
    const what = 'starting a push to a DICOMweb server';
    const raw = await callJson(this.endpoint, `/dicom-web/servers/${segment(serverName)}/stow`, what, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ Resources: resources, Synchronous: false }),
      allow404: true,
    });
    return raw === undefined ? undefined : parse(jobCreatedSchema, raw, what, this.endpoint).ID;
  }

  /** The names of the DICOMweb servers the source declares. */
  async dicomWebServers(): Promise<string[]> {
    const what = 'listing DICOMweb servers';
    return parse(
      z.array(z.string()),
      await callJson(this.endpoint, '/dicom-web/servers', what),
      what,
      this.endpoint,
    );
  }

  /** A job's state, or undefined when Orthanc no longer knows it (it keeps only the latest ones). */
  async job(jobId: string): Promise<JobStatus | undefined> {
    const what = 'reading a job';
    const raw = await callJson(this.endpoint, `/jobs/${segment(jobId)}`, what, { allow404: true });
    if (raw === undefined) return undefined;
    const job = parse(jobSchema, raw, what, this.endpoint);
    return {
      state: job.State,
      errorCode: job.Content?.FunctionErrorCode ?? job.ErrorCode,
      errorDescription: job.Content?.FunctionErrorDescription ?? job.ErrorDescription,
    };
  }

  /** Cancels a job; one that has ended or that Orthanc forgot is no error. */
  async cancelJob(jobId: string): Promise<void> {
    const what = 'cancelling a job';
    const response = await call(this.endpoint, `/jobs/${segment(jobId)}/cancel`, what, {
      method: 'POST',
      body: '',
    });
    await response.body.dump();
  }

  /**
   * The MD5 of the stored DICOM file: Orthanc's own when it kept one, else computed from the file
   * as it streams (`StoreMD5ForAttachments: false`, or files stored before it was on). Undefined
   * when the instance does not exist: never assumed equal to anything.
   */
  async instanceMd5(instanceId: string, signal?: AbortSignal): Promise<string | undefined> {
    const what = "reading an instance's MD5";
    const response = await call(
      this.endpoint,
      `/instances/${segment(instanceId)}/attachments/dicom/md5`,
      what,
      {
        ...(signal === undefined ? {} : { signal }),
      },
    );
    if (response.statusCode === 200) return (await response.body.text()).trim();
    if (response.statusCode !== 404) throw await statusError(this.endpoint, what, response);
    await response.body.dump();
    try {
      const hash = createHash('md5');
      for await (const chunk of await this.openInstance(instanceId, signal)) hash.update(chunk as Buffer);
      return hash.digest('hex');
    } catch (error) {
      if (error instanceof ForwarderError && error.status === 404) return undefined;
      throw error;
    }
  }

  /** The Orthanc IDs of every instance with this SOPInstanceUID: a server may hold several. */
  async findInstances(sopInstanceUid: string, signal?: AbortSignal): Promise<string[]> {
    const what = 'looking up an instance';
    const raw = await callJson(this.endpoint, '/tools/lookup', what, {
      method: 'POST',
      body: sopInstanceUid,
      ...(signal === undefined ? {} : { signal }),
    });
    return parse(lookupSchema, raw, what, this.endpoint)
      .filter((match) => match.Type === 'Instance')
      .map((match) => match.ID);
  }

  /**
   * Deletes exactly these instances. Never a whole study by ID: that would also destroy
   * instances that arrived after we listed it. IDs already gone are skipped by Orthanc.
   */
  async deleteInstances(instanceIds: readonly string[], signal?: AbortSignal): Promise<void> {
    if (instanceIds.length === 0) return;
    const what = 'deleting instances';
    const response = await call(this.endpoint, '/tools/bulk-delete', what, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ Resources: instanceIds }),
      ...(signal === undefined ? {} : { signal }),
    });
    if (response.statusCode !== 200) throw await statusError(this.endpoint, what, response);
    await response.body.dump();
  }
}
