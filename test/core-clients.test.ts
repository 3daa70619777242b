/**
 * The core clients against real Orthancs: a source read through its REST API and a destination
 * written and queried through DICOMweb. What they promise the engine (one request per listing,
 * exact deletes, refused parts reported rather than thrown, failures classified) is checked here
 * against the server's real answers, not a mock's idea of them.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Timeouts } from '../lambdas/core/config.ts';
import { ForwarderError } from '../lambdas/core/errors.ts';
import { createEndpoint, type Endpoint } from '../lambdas/core/http.ts';
import { OrthancClient } from '../lambdas/core/orthanc-client.ts';
import { QidoClient } from '../lambdas/core/qido-client.ts';
import { StowClient, type StowPart, UNANSWERED_400 } from '../lambdas/core/stow-client.ts';
import {
  corruptDicomBytes,
  type GeneratedInstance,
  type GeneratedSet,
  generateStudies,
} from '../testbed/dicom-generator.ts';
import { OrthancFleet, type OrthancServer } from '../testbed/orthanc.ts';
import { uploadToOrthanc } from '../testbed/upload.ts';
import { HttpFront } from './support/fronts.ts';
import { forwarderErrorOf } from './support/harness.ts';

/** Short enough that a hang fails the test quickly, long enough for any loopback answer. */
const TIMEOUTS: Timeouts = { connectMs: 5_000, headersMs: 30_000, bodyMs: 30_000 };

const NOT_ACKNOWLEDGED = 'not acknowledged by the destination (a file it could not read)';

const fleet = new OrthancFleet();
const dispatchers: Dispatcher[] = [];
let source: OrthancServer;
let destination: OrthancServer;

beforeAll(async () => {
  [source, destination] = await Promise.all([
    // A StableAge far beyond the test's length: no Stable* change may slip into the feed we assert.
    fleet.start({ name: 'source', stableAge: 3600 }),
    fleet.start({ name: 'destination' }),
  ]);
});

afterAll(async () => {
  await Promise.allSettled(dispatchers.map((dispatcher) => dispatcher.close()));
  await fleet.destroyAll();
});

/** An endpoint whose requests are counted, so a test can prove how many a call made. */
const endpointFor = (
  url: string,
  options: { password?: string; timeouts?: Timeouts } = {},
): { endpoint: Endpoint; requests: () => number } => {
  const endpoint = createEndpoint(
    { url, username: 'orthanc', password: options.password ?? 'orthanc' },
    options.timeouts ?? TIMEOUTS,
  );
  let count = 0;
  const counted = endpoint.dispatcher().then((dispatcher) => {
    dispatchers.push(dispatcher);
    return dispatcher.compose((dispatch) => (opts, handler) => {
      count++;
      return dispatch(opts, handler);
    });
  });
  return { endpoint: { ...endpoint, dispatcher: () => counted }, requests: () => count };
};

const sourceClient = () => new OrthancClient(endpointFor(source.url).endpoint);

const shape = (seed: string, seriesPerStudy: number, instancesPerSeries: number): GeneratedSet =>
  generateStudies({
    patients: 1,
    studiesPerPatient: 1,
    seriesPerStudy,
    instancesPerSeries,
    pixelBytes: 2048,
    seed,
  });

const bytesOf = async (stream: Readable): Promise<Buffer> => {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
};

const md5 = (bytes: Buffer): string => createHash('md5').update(bytes).digest('hex');

const partOf = (instance: GeneratedInstance): StowPart => ({
  sopInstanceUid: instance.sopInstanceUid,
  open: async () => instance.stream(),
});

/** A part the destination cannot parse; the UID is ours, the file has none. */
const corruptPart = (sopInstanceUid: string): StowPart => ({
  sopInstanceUid,
  open: async () => Readable.from([corruptDicomBytes()]),
});

/** A part deleted at the source between listing and sending. */
const gonePart = (sopInstanceUid: string): StowPart => ({ sopInstanceUid, open: async () => undefined });

const uids = (instances: readonly GeneratedInstance[]): Set<string> =>
  new Set(instances.map((instance) => instance.sopInstanceUid));

const totalBytes = (instances: readonly GeneratedInstance[]): number =>
  instances.reduce((sum, instance) => sum + instance.byteLength, 0);

describe('OrthancClient', () => {
  // 3 series × 4 instances, uploaded one at a time so the feed's order is fixed.
  const set = shape('orthanc client', 3, 4);
  let orthancIds: string[];
  let feedStart: number;

  beforeAll(async () => {
    feedStart = await sourceClient().lastChange();
    const results = await uploadToOrthanc(source, set.instances, { concurrency: 1 });
    expect(results.map((r) => r.orthancStatus)).toEqual(set.instances.map(() => 'Success'));
    orthancIds = results.map((r) => r.orthancId ?? '');
  });

  it('pages through the change feed of a fresh upload', async () => {
    const client = sourceClient();
    const pages = [];
    for (let since = feedStart; ; ) {
      const page = await client.changes(since, 5);
      pages.push(page);
      if (page.done) break;
      since = page.last;
    }
    expect(pages.map((p) => [p.changes.length, p.done])).toEqual([
      [5, false],
      [5, false],
      [5, false],
      [2, true],
    ]);
    const changes = pages.flatMap((p) => p.changes);
    // Seq is contiguous and increasing, and each page's Last is its last change.
    expect(changes.map((c) => c.seq)).toEqual(Array.from({ length: 17 }, (_, i) => feedStart + 1 + i));
    for (const page of pages) expect(page.last).toBe(page.changes.at(-1)?.seq);
    // The first instance of a series announces it, the very first one its study and patient too.
    const expected = set.instances.flatMap((_, index) => [
      'NewInstance',
      ...(index % 4 === 0 ? ['NewSeries'] : []),
      ...(index === 0 ? ['NewStudy', 'NewPatient'] : []),
    ]);
    expect(changes.map((c) => c.changeType)).toEqual(expected);
    expect(changes.filter((c) => c.changeType === 'NewInstance').map((c) => c.id)).toEqual(orthancIds);
    expect(changes.filter((c) => c.changeType === 'NewInstance').map((c) => c.resourceType)).toEqual(
      orthancIds.map(() => 'Instance'),
    );

    // Past the end: nothing more, and Last stays put.
    expect(await client.changes(feedStart + 17, 5)).toEqual({
      changes: [],
      done: true,
      last: feedStart + 17,
    });
    expect(await client.lastChange()).toBe(feedStart + 17);
  });

  it('refuses to send a since or limit Orthanc would silently turn into 0 or 100', async () => {
    const client = sourceClient();
    await expect(client.changes(1.5, 10)).rejects.toThrow(RangeError);
    await expect(client.changes(Number.NaN, 10)).rejects.toThrow(RangeError);
    await expect(client.changes(-1, 10)).rejects.toThrow(RangeError);
    await expect(client.changes(0, 2.5)).rejects.toThrow(RangeError);
    await expect(client.changes(0, 0)).rejects.toThrow(RangeError);
  });

  it('reads a study, and undefined for one that does not exist', async () => {
    const client = sourceClient();
    const [studyId] = await source.rest<string[]>('GET', '/studies');
    const study = await client.study(studyId ?? '');
    expect(study).toMatchObject({
      id: studyId,
      studyInstanceUid: set.instances[0]?.studyInstanceUid,
      isStable: false,
    });
    expect(study?.lastUpdate).toMatch(/^\d{8}T\d{6}$/);
    expect(await client.study('0000000-00000000-00000000-00000000-00000000')).toBeUndefined();
    expect(await client.studyInstances('0000000-00000000-00000000-00000000-00000000')).toBeUndefined();
  });

  it('lists every instance of a study with its UID, ID, series and size in one request', async () => {
    const { endpoint, requests } = endpointFor(source.url);
    const [studyId] = await source.rest<string[]>('GET', '/studies');
    const listed = await new OrthancClient(endpoint).studyInstances(studyId ?? '');
    expect(requests()).toBe(1);

    const byUid = new Map(listed?.map((instance) => [instance.sopInstanceUid, instance]));
    expect(new Set(byUid.keys())).toEqual(uids(set.instances));
    const { Series: seriesIds } = await source.rest<{ Series: string[] }>('GET', `/studies/${studyId}`);
    for (const [index, instance] of set.instances.entries()) {
      const found = byUid.get(instance.sopInstanceUid);
      expect(found).toMatchObject({ id: orthancIds[index], fileSize: instance.byteLength });
      expect(seriesIds).toContain(found?.seriesId);
    }
    // Instances of one generated series share one Orthanc series, and the three differ.
    const seriesOf = (index: number) => byUid.get(set.instances[index]?.sopInstanceUid ?? '')?.seriesId;
    expect([0, 1, 2, 3].map(seriesOf)).toEqual(Array(4).fill(seriesOf(0)));
    expect(new Set([0, 4, 8].map(seriesOf)).size).toBe(3);
  });

  it('streams an instance byte for byte, and knows its MD5 and its ID by UID', async () => {
    const client = sourceClient();
    const instance = set.instances[5] as GeneratedInstance;
    const id = orthancIds[5] ?? '';
    const original = await bytesOf(instance.stream());

    expect((await bytesOf(await client.openInstance(id))).equals(original)).toBe(true);
    expect(await client.instanceMd5(id)).toBe(md5(original));
    expect(await client.findInstances(instance.sopInstanceUid)).toEqual([id]);

    expect(await client.instanceMd5('0000000-00000000-00000000-00000000-00000000')).toBeUndefined();
    expect(await client.findInstances('1.2.3.4.5.6.7.8.9')).toEqual([]);
    await expect(client.openInstance('0000000-00000000-00000000-00000000-00000000')).rejects.toMatchObject({
      kind: 'permanent',
      status: 404,
    });
  });

  it('deletes exactly the listed instances, skipping those already gone', async () => {
    const client = sourceClient();
    const [first, second, third] = [orthancIds[0] ?? '', orthancIds[7] ?? '', orthancIds[11] ?? ''];
    const remaining = async () => (await source.rest<string[]>('GET', '/instances')).sort();

    await client.deleteInstances([first, second]);
    expect(await remaining()).toEqual(orthancIds.filter((id) => id !== first && id !== second).sort());

    // Two gone, one present: the present one goes, the others are no error.
    await client.deleteInstances([first, second, third]);
    expect(await remaining()).toEqual(orthancIds.filter((id) => ![first, second, third].includes(id)).sort());

    await client.deleteInstances([]);
    expect(await remaining()).toHaveLength(9);
  });
});

describe('StowClient and QidoClient against Orthanc DICOMweb', () => {
  // One study of 5 instances: 3 stored first, 2 later in a batch with a corrupt part.
  const set = shape('stow client', 1, 5);
  const firstThree = set.instances.slice(0, 3);
  const lastTwo = set.instances.slice(3);
  const studyUid = set.instances[0]?.studyInstanceUid ?? '';
  const stow = () => new StowClient(endpointFor(destination.dicomWebUrl).endpoint);
  const destinationInstances = async () => (await destination.rest<string[]>('GET', '/instances')).length;
  const firstThreeStored = {
    status: 200,
    stored: uids(firstThree),
    refused: new Map(),
    existing: new Set(),
    coerced: new Set(),
    goneAtSource: [],
    bytes: totalBytes(firstThree),
  };

  it('stores three instances and lists them all as stored', async () => {
    expect(await stow().store(firstThree.map(partOf))).toEqual(firstThreeStored);
    expect(await destinationInstances()).toBe(3);
  });

  it('answers a second store of the same instances exactly like the first', async () => {
    expect(await stow().store(firstThree.map(partOf))).toEqual(firstThreeStored);
    expect(await destinationInstances()).toBe(3);
  });

  it('stores the good parts of a batch and reports the corrupt one as refused, without throwing', async () => {
    const corruptUid = '2.25.1111111111111111111111111111';
    // The corrupt part in the middle: the parts after it must still be read and stored.
    const parts = [
      partOf(lastTwo[0] as GeneratedInstance),
      corruptPart(corruptUid),
      partOf(lastTwo[1] as GeneratedInstance),
    ];
    const result = await stow().store(parts);
    expect(result).toEqual({
      existing: new Set(),
      coerced: new Set(),
      status: 400,
      stored: uids(lastTwo),
      refused: new Map([[corruptUid, NOT_ACKNOWLEDGED]]),
      goneAtSource: [],
      bytes: totalBytes(lastTwo) + corruptDicomBytes().length,
    });
    expect(await destinationInstances()).toBe(5);
  });

  it('reports a part that vanished at the source as gone, not sent and not refused', async () => {
    const goneUid = '2.25.2222222222222222222222222222';
    const [kept] = firstThree as [GeneratedInstance];
    const mixed = await stow().store([gonePart(goneUid), partOf(kept)]);
    expect(mixed).toEqual({
      existing: new Set(),
      coerced: new Set(),
      status: 200,
      stored: uids([kept]),
      refused: new Map(),
      goneAtSource: [goneUid],
      bytes: kept.byteLength,
    });
    // Nothing left to send: an empty batch, still no error.
    const allGone = await stow().store([gonePart(goneUid)]);
    expect(allGone).toEqual({
      existing: new Set(),
      coerced: new Set(),
      status: 200,
      stored: new Set(),
      refused: new Map(),
      goneAtSource: [goneUid],
      bytes: 0,
    });
  });

  it("matches Orthanc's answer to a batch of only corrupt parts: 400 with both sequences empty", async () => {
    // Orthanc's own answer, asked by hand: what the client below must classify.
    const boundary = 'all-corrupt-boundary';
    const part = Buffer.concat([
      Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`),
      corruptDicomBytes(),
      Buffer.from('\r\n'),
    ]);
    const raw = await fetch(`${destination.dicomWebUrl}/studies`, {
      method: 'POST',
      headers: {
        authorization: destination.authorization,
        'content-type': `multipart/related; type="application/dicom"; boundary=${boundary}`,
        accept: 'application/dicom+json',
      },
      body: Buffer.concat([part, part, Buffer.from(`--${boundary}--\r\n`)]),
    });
    expect(raw.status).toBe(400);
    expect(JSON.parse(await raw.text())).toEqual({
      '00080005': { Value: ['ISO_IR 100'], vr: 'CS' },
      '00081198': { vr: 'SQ' },
      '00081199': { vr: 'SQ' },
    });

    const [a, b] = ['2.25.3333333333333333333333333333', '2.25.4444444444444444444444444444'];
    const result = await stow().store([corruptPart(a), corruptPart(b)]);
    expect(result).toEqual({
      existing: new Set(),
      coerced: new Set(),
      status: 400,
      stored: new Set(),
      refused: new Map([
        [a, NOT_ACKNOWLEDGED],
        [b, NOT_ACKNOWLEDGED],
      ]),
      goneAtSource: [],
      bytes: 2 * corruptDicomBytes().length,
    });
    expect(await destinationInstances()).toBe(5);
  });

  it('halves a batch answered 400 without a DICOM answer down to the instance refused alone', async () => {
    // The front drops the sequences from every 400 Orthanc answers: a bare 400, as a proxy or an
    // archive that does not say which part it refused gives.
    const front = await HttpFront.start(destination.url, ({ method }) =>
      method === 'POST'
        ? { rewrite: (real) => (real.status === 400 ? { ...real, body: '{"error":"Bad Request"}' } : real) }
        : undefined,
    );
    try {
      const good = shape('bare 400', 1, 2).instances;
      const corruptUid = '2.25.6666666666666666666666666666';
      const parts = [
        partOf(good[0] as GeneratedInstance),
        corruptPart(corruptUid),
        partOf(good[1] as GeneratedInstance),
      ];
      const before = await destinationInstances();
      const result = await new StowClient(endpointFor(front.urlFor(destination.dicomWebUrl)).endpoint).store(
        parts,
      );
      expect(result.stored).toEqual(uids(good));
      expect(result.refused).toEqual(new Map([[corruptUid, UNANSWERED_400]]));
      // [good, corrupt, good] → [good, corrupt] + [good] → [good] + [corrupt]: five requests.
      expect(front.passed).toBe(5);
      expect(await destinationInstances()).toBe(before + 2);
    } finally {
      await front.close();
    }
  });

  it('fails permanently with status 401 on a wrong password', async () => {
    const client = new StowClient(endpointFor(destination.dicomWebUrl, { password: 'wrong' }).endpoint);
    const failure = client.store(firstThree.map(partOf));
    await expect(failure).rejects.toBeInstanceOf(ForwarderError);
    await expect(failure).rejects.toMatchObject({ kind: 'permanent', status: 401 });
  });

  it('lists exactly the stored instances through QIDO, page by page', async () => {
    // 5 instances: the client reads until an empty page, since an archive may cap a page below
    // the limit asked for: 2+2+1+0, 5+0, 5+0.
    for (const [pageSize, expectedRequests] of [
      [2, 4],
      [5, 2],
      [1000, 2],
    ] as const) {
      const { endpoint, requests } = endpointFor(destination.dicomWebUrl);
      const listed = await new QidoClient(endpoint, pageSize).studyInstances(studyUid);
      expect(new Set(listed.map((copy) => copy.sopInstanceUid))).toEqual(uids(set.instances));
      expect(requests()).toBe(expectedRequests);
    }
  });

  describe('QIDO paging against an archive that ignores offset', () => {
    const fronts: HttpFront[] = [];
    afterAll(async () => {
      await Promise.all(fronts.map((front) => front.close()));
    });
    const isListing = (path: string) => path.startsWith(`/dicom-web/studies/${studyUid}/instances`);
    /** Answers every listing with `page(n)` for the n-th request; a client still asking after 20 gets a 500. */
    const frontAnswering = async (page: (request: number) => unknown) => {
      let requests = 0;
      const front = await HttpFront.start(destination.url, ({ path }) => {
        if (!isListing(path)) return undefined;
        requests++;
        const body = requests > 20 ? '{}' : JSON.stringify(page(requests));
        return {
          answer: {
            status: requests > 20 ? 500 : 200,
            headers: { 'content-type': 'application/dicom+json' },
            body,
          },
        };
      });
      fronts.push(front);
      return {
        endpoint: endpointFor(front.urlFor(destination.dicomWebUrl)).endpoint,
        requests: () => requests,
      };
    };

    it('stops at a page that lists nothing new, and lists only what the archive holds', async () => {
      const firstPage = await fetch(
        `${destination.dicomWebUrl}/studies/${studyUid}/instances?limit=2&offset=0`,
        {
          headers: { authorization: destination.authorization, accept: 'application/dicom+json' },
        },
      );
      const answer: unknown = await firstPage.json();
      const { endpoint, requests } = await frontAnswering(() => answer);
      const listed = await new QidoClient(endpoint, 2).studyInstances(studyUid);
      expect(listed).toHaveLength(2);
      // What is listed is held; the rest of the study only counts as not held yet.
      for (const copy of listed) expect(uids(set.instances).has(copy.sopInstanceUid)).toBe(true);
      expect(requests()).toBe(2);
    });

    it('stops past maxCopies when every page lists something new', async () => {
      const fresh = (request: number) =>
        [0, 1].map((index) => ({ '00080018': { vr: 'UI', Value: [`2.25.${request}${index}`] } }));
      const { endpoint, requests } = await frontAnswering(fresh);
      const listed = await new QidoClient(endpoint, 2, { maxCopies: 6 }).studyInstances(studyUid);
      expect(listed.map((copy) => copy.sopInstanceUid)).toEqual([
        '2.25.10',
        '2.25.11',
        '2.25.20',
        '2.25.21',
        '2.25.30',
        '2.25.31',
      ]);
      expect(requests()).toBe(3);
    });
  });

  it('finds nothing for a study the destination does not hold', async () => {
    const qido = new QidoClient(endpointFor(destination.dicomWebUrl).endpoint, 2);
    expect(await qido.studyInstances('2.25.5555555555555555555555555555')).toEqual([]);
  });
});

describe('HTTP failure classification', () => {
  it('calls a stopped server transiently unreachable, and reaches it again once started', async () => {
    // A fresh endpoint: no pooled socket from an earlier test can turn the refusal into a reset.
    const client = new OrthancClient(endpointFor(source.url).endpoint);
    const last = await client.lastChange();
    await source.stop();
    try {
      const failure = await forwarderErrorOf(client.lastChange());
      expect(failure.kind).toBe('transient');
      expect(failure.status).toBeUndefined();
      expect(failure.message).toContain('ECONNREFUSED');
    } finally {
      await source.start();
    }
    expect(await client.lastChange()).toBe(last);
  });

  it("keeps of a JSON error answer only its status and the name of Orthanc's error, never the archive's text", async () => {
    const echo = 'DOE^JANE 19700101 ACC-4711';
    const answers = [
      { body: { OrthancStatus: 15, OrthancError: echo, Message: echo }, detail: ' (Bad file format)' },
      { body: { OrthancStatus: 987654, OrthancError: echo }, detail: ' (Orthanc error 987654)' },
      { body: { Message: `Patient ${echo} not allowed` }, detail: '' },
    ];
    let next = 0;
    const front = await HttpFront.start(destination.url, () => ({
      answer: {
        status: 400,
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(answers[next++]?.body),
      },
    }));
    try {
      const qido = new QidoClient(endpointFor(front.urlFor(destination.dicomWebUrl)).endpoint, 10);
      for (const { detail } of answers) {
        const failure = await forwarderErrorOf(qido.studyInstances('2.25.7777777777777777777777777777'));
        expect(failure.message).toMatch(/^QIDO-RS at http:\/\/127\.0\.0\.1:\d+ answered 400/);
        expect(failure.message.replace(/^QIDO-RS at \S+ answered 400/, '')).toBe(detail);
      }
    } finally {
      await front.close();
    }
  });

  it('gives up on a paused server after headersMs with a transient error, and recovers on resume', async () => {
    const client = new OrthancClient(
      endpointFor(source.url, { timeouts: { ...TIMEOUTS, headersMs: 500 } }).endpoint,
    );
    const last = await client.lastChange();
    await source.pause();
    try {
      const failure = await forwarderErrorOf(client.lastChange());
      expect(failure.kind).toBe('transient');
      expect(failure.message).toContain('UND_ERR_HEADERS_TIMEOUT');
    } finally {
      source.resume();
    }
    expect(await client.lastChange()).toBe(last);
  });
});
