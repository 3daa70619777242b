/**
 * The move protocol where studies are partial, large or slow, on real Orthancs: a partly moved
 * study is never routed anew (so nothing of it is deleted unsent), a deletion's record survives a
 * worker that dies right after it, an attempt that made headway does not use up the attempts, a
 * batch cut by the deadline is either sent again or refused with its size, and a long move keeps
 * its lease.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../lambdas/core/config.ts';
import { buildEngine } from '../lambdas/core/engine.ts';
import { ForwarderError } from '../lambdas/core/errors.ts';
import { attemptStowLimits, forwardWorkItem } from '../lambdas/core/forward-work-item.ts';
import { createLog } from '../lambdas/core/log.ts';
import { encodeWorkItem } from '../lambdas/core/work-item.ts';
import {
  type GeneratedInstance,
  generateStudies,
  SOP_CLASS_UID_TAG,
  withChanges,
  withoutElements,
} from '../testbed/dicom-generator.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import { HttpFront } from './support/fronts.ts';
import {
  configFor,
  expectAllAtDestination,
  heldUids,
  instanceCount,
  runUntilIdle,
  shape,
  startServers,
  uidsOf,
  until,
  upload,
  useTestbed,
} from './support/harness.ts';
import { TcpProxy } from './support/tcp-proxy.ts';

const log = createLog({ level: 'SILENT' });

/** A study of one CT series and one SR series (the same study's report), 3 instances each. */
const ctWithReport = (seed: string) => {
  const set = generateStudies(shape(seed, { patients: 1, seriesPerStudy: 2 }));
  const [ct, sr] = set.patients[0]?.studies[0]?.series ?? [];
  if (ct === undefined || sr === undefined) throw new Error('two series expected');
  const report = sr.instances.map((i) => withChanges(i, { study: { modality: 'SR' } }));
  return { ct: ct.instances, report, all: [...ct.instances, ...report] };
};

const studyIdAt = async (server: OrthancServer): Promise<string> =>
  (await server.rest<string[]>('GET', '/studies'))[0] ?? '';

const untilStable = async (server: OrthancServer): Promise<void> => {
  const id = await studyIdAt(server);
  await until(async () => (await server.rest<{ IsStable: boolean }>('GET', `/studies/${id}`)).IsStable);
};

describe('the move protocol at its limits', () => {
  const { fleet, closeAfterTest, withState } = useTestbed('move-limits');

  /** CT studies go to the destination; anything else is deleted at the source as unrouted. */
  const ctOnly = (source: OrthancServer, destination: OrthancServer, extra: Record<string, unknown> = {}) => {
    const raw = configFor([{ id: 'site-a', server: source }], destination, { unrouted: 'delete', ...extra });
    return parseConfig({
      ...raw,
      destination: { ...(raw.destination as object), filter: { modalities: ['CT'] } },
    });
  };

  it('keeps the instances a destination refused when what is left of the study no longer matches its filter', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const { ct, report } = ctWithReport('refused-report');
    // The destination refuses the report (no SOPClassUID): it stays at the source, refused.
    await upload(source, [...ct, ...report.map((i) => withoutElements(i, [SOP_CLASS_UID_TAG]))]);
    const config = ctOnly(source, destination);
    await withState(config, async (state) => {
      await runUntilIdle(config, state, log);
      expect((await heldUids(source)).sort()).toEqual(uidsOf(report).sort());
      expect(await state.ledger.rejected()).toHaveLength(report.length);

      // Looked at again (a sweep, a redelivery), what is left is SR only: the filter would not
      // take it, and `unrouted: delete` would delete it.
      await state.queue.enqueue([{ sourceId: 'site-a', studyId: await studyIdAt(source), reason: 'stable' }]);
      const { outcomes } = await runUntilIdle(config, state, log);
      expect(outcomes.map((o) => [o.result, o.deleted, o.rejected])).toEqual([['partial', 0, report.length]]);
      expect((await heldUids(source)).sort()).toEqual(uidsOf(report).sort());
      expect(await state.ledger.rejected()).toHaveLength(report.length);
    });
  });

  it('sends a late series of a moved study where the study went, even when the series alone would not match', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const { ct, report } = ctWithReport('late-report');
    await upload(source, ct);
    const config = ctOnly(source, destination);
    await withState(config, async (state) => {
      await runUntilIdle(config, state, log);
      expect(await instanceCount(source)).toBe(0);
      // The report arrives once the images have left.
      await upload(source, report);
      await untilStable(source);
      await runUntilIdle(config, state, log);
    });
    expect(await instanceCount(source)).toBe(0);
    await expectAllAtDestination(destination, [...ct, ...report]);
  });

  it('StableSeries: routes a series by its study and sends a late one where the study went; nothing leaves unsent', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('series-by-study', { patients: 1, seriesPerStudy: 3 }));
    const [ct, report, addendum] = set.patients[0]?.studies[0]?.series ?? [];
    if (ct === undefined || report === undefined || addendum === undefined)
      throw new Error('three series expected');
    const asReport = (instances: typeof ct.instances) =>
      instances.map((i) => withChanges(i, { study: { modality: 'SR' } }));
    // The report first, so that it is likely stable, and routed, while the images are still at
    // the source; either way it must go where they go.
    await upload(source, asReport(report.instances));
    await upload(source, ct.instances);
    const config = ctOnly(source, destination, {
      trigger: 'StableSeries',
      concurrency: 1,
      // The whole-study safety net waits long enough not to overtake the series' own changes.
      quietSeconds: 30,
    });
    await withState(config, async (state) => {
      const first = await runUntilIdle(config, state, log);
      expect(first.outcomes.filter((o) => o.result === 'skipped')).toEqual([]);
      expect(await instanceCount(source)).toBe(0);
      await expectAllAtDestination(destination, [...ct.instances, ...asReport(report.instances)]);

      // An addendum arrives once the study has left: what is at the source is SR alone.
      await upload(source, asReport(addendum.instances));
      await untilStable(source);
      const late = await runUntilIdle(config, state, log);
      expect(late.outcomes.map((o) => [o.result, o.deleted])).toEqual([['moved', addendum.instances.length]]);
    });
    expect(await instanceCount(source)).toBe(0);
    await expectAllAtDestination(destination, [
      ...ct.instances,
      ...asReport(report.instances),
      ...asReport(addendum.instances),
    ]);
  });

  it('records the deletion of a worker that died right after it, not the study as gone', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('died-after-delete', { patients: 1 }));
    await upload(source, set.instances);
    const config = parseConfig(configFor([{ id: 'site-a', server: source }], destination));
    await withState(config, async (state) => {
      let died = false;
      const { outcomes } = await runUntilIdle(config, state, log, {
        onStep: async (step) => {
          if (step !== 'deleted' || died) return;
          died = true;
          throw new Error('the worker died after the source deleted, before the outcome was recorded');
        },
      });
      expect(died).toBe(true);
      expect(await instanceCount(source)).toBe(0);
      expect(outcomes.map((o) => [o.result, o.deleted])).toEqual([['moved', set.instances.length]]);
      expect((await state.ledger.totals()).deleted).toBe(set.instances.length);
    });
  });

  it('does not count an attempt that made headway against retry.maxAttempts', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('headway', { patients: 1, seriesPerStudy: 3 }));
    await upload(source, set.instances);
    // Every other STOW request fails: each attempt stores some batches and fails on another.
    let stows = 0;
    const front = closeAfterTest(
      await HttpFront.start(destination.url, (request) => {
        if (request.method !== 'POST' || !request.path.endsWith('/studies')) return undefined;
        stows++;
        return stows % 2 === 0
          ? { answer: { status: 503, headers: { 'content-type': 'text/plain' }, body: 'busy' } }
          : undefined;
      }),
    );
    const raw = configFor([{ id: 'site-a', server: source }], destination, {
      retry: { maxAttempts: 2, baseDelayMs: 50, maxDelayMs: 100 },
      stow: { maxInstances: 1, parallel: 1 },
    });
    const config = parseConfig({
      ...raw,
      destination: { ...(raw.destination as object), url: front.urlFor(destination.dicomWebUrl) },
    });
    await withState(config, async (state) => {
      const { summary } = await runUntilIdle(config, state, log);
      expect(front.faked).toBeGreaterThan(1);
      expect(summary.deadLettered).toBe(0);
    });
    expect(await instanceCount(source)).toBe(0);
    await expectAllAtDestination(destination, set.instances);
  });

  it('sends batches half as large at each counted retry, so that one too large for a deadline gets through', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const sets = ['first-attempt', 'third-attempt'].map((seed) =>
      generateStudies(shape(seed, { patients: 1, seriesPerStudy: 1, instancesPerSeries: 8 })),
    );
    for (const set of sets) await upload(source, set.instances);
    let stows = 0;
    const front = closeAfterTest(
      await HttpFront.start(destination.url, (request) => {
        if (request.method === 'POST' && request.path.endsWith('/studies')) stows++;
        return undefined;
      }),
    );
    const raw = configFor([{ id: 'site-a', server: source }], destination, {
      stow: { maxInstances: 8, maxBytes: 64 * 1024 * 1024, parallel: 1 },
    });
    const config = parseConfig({
      ...raw,
      destination: { ...(raw.destination as object), url: front.urlFor(destination.dicomWebUrl) },
    });
    expect(attemptStowLimits(config.stow, 3)).toEqual({
      ...config.stow,
      maxInstances: 2,
      maxBytes: 16 * 1024 * 1024,
    });
    const studyIds = await source.rest<string[]>('GET', '/studies');
    await withState(config, async (state) => {
      const engine = buildEngine(config, { ledger: state.ledger, feed: state.feed, log, owner: 'test' });
      const perAttempt: number[] = [];
      for (const [index, attempt] of [1, 3].entries()) {
        const before = stows;
        const body = encodeWorkItem({ sourceId: 'site-a', studyId: studyIds[index] ?? '', reason: 'stable' });
        expect((await forwardWorkItem(engine, body, { attempt })).result).toBe('moved');
        perAttempt.push(stows - before);
      }
      // Eight instances: one batch at the first attempt, four of two at the third.
      expect(perAttempt).toEqual([1, 4]);
    });
    expect(await instanceCount(source)).toBe(0);
    await expectAllAtDestination(
      destination,
      sets.flatMap((set) => set.instances),
    );
  });

  it('refuses, naming its size, an instance that alone cannot be sent before the deadline; the study stays', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const big = generateStudies(
      shape('too-big', {
        patients: 1,
        seriesPerStudy: 1,
        instancesPerSeries: 1,
        pixelBytes: 4 * 1024 * 1024,
      }),
    );
    await upload(source, big.instances);
    // A slow link to the destination: every chunk waits.
    const proxy = closeAfterTest(await TcpProxy.start(destination.httpPort));
    proxy.setMode({ kind: 'delay', ms: 200 });
    const raw = configFor([{ id: 'site-a', server: source }], destination);
    const config = parseConfig({
      ...raw,
      destination: { ...(raw.destination as object), url: `${proxy.url}/dicom-web` },
    });
    await withState(config, async (state) => {
      const engine = buildEngine(config, { ledger: state.ledger, feed: state.feed, log, owner: 'test' });
      const body = encodeWorkItem({ sourceId: 'site-a', studyId: await studyIdAt(source), reason: 'stable' });
      // Long enough to start the batch on a busy machine, far too short for it to get through.
      const failure = await forwardWorkItem(engine, body, { deadline: Date.now() + 3_000 }).then(
        () => undefined,
        (error: unknown) => error,
      );
      expect(failure).toBeInstanceOf(ForwarderError);
      expect(failure).toMatchObject({ kind: 'permanent' });
      const instance = big.instances[0] as GeneratedInstance;
      expect((failure as Error).message).toMatch(
        new RegExp(`\\(${instance.byteLength} bytes\\) cannot be sent within`),
      );
    });
    expect(await heldUids(source)).toEqual(uidsOf(big.instances));
  });

  it('verifies a series at a time until finishBy, deletes what it verified, and the retries verify the rest uncounted', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('verify-slices', { patients: 1, seriesPerStudy: 3 }));
    await upload(source, set.instances);
    const config = parseConfig({
      ...configFor([{ id: 'site-a', server: source }], destination),
      verify: 'checksum',
    });
    await withState(config, async (state) => {
      const engine = buildEngine(config, { ledger: state.ledger, feed: state.feed, log, owner: 'test' });
      const body = encodeWorkItem({ sourceId: 'site-a', studyId: await studyIdAt(source), reason: 'stable' });
      // Past already: each attempt verifies its one slice, a series, and no more.
      const attempt = () => forwardWorkItem(engine, body, { finishBy: Date.now() });
      const left: number[] = [];
      for (const _ of [1, 2]) {
        const failure = await attempt().then(
          () => undefined,
          (error: unknown) => error,
        );
        expect(failure).toBeInstanceOf(ForwarderError);
        expect(failure).toMatchObject({ kind: 'transient', uncounted: true });
        left.push(await instanceCount(source));
      }
      const last = await attempt();
      expect(left).toEqual([6, 3]);
      expect([last.result, last.deleted]).toEqual(['moved', 3]);
    });
    expect(await instanceCount(source)).toBe(0);
    await expectAllAtDestination(destination, set.instances);
  });

  it('moves at most maxConcurrentMoves studies of a source at once; the others wait without using up attempts', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(
      shape('one-at-a-time', { patients: 4, seriesPerStudy: 1, instancesPerSeries: 2 }),
    );
    await upload(source, set.instances);
    const raw = configFor([{ id: 'site-a', server: source }], destination, {
      concurrency: 4,
      retry: { maxAttempts: 1, baseDelayMs: 50, maxDelayMs: 100 },
    });
    const config = parseConfig({
      ...raw,
      sources: (raw.sources as object[]).map((entry) => ({ ...entry, maxConcurrentMoves: 1 })),
    });
    let active = 0;
    let most = 0;
    await withState(config, async (state) => {
      const { summary } = await runUntilIdle(config, state, log, {
        onStep: async (step) => {
          if (step === 'snapshot-taken') most = Math.max(most, ++active);
          // Long enough for the other workers to try the source meanwhile.
          if (step === 'sent') await sleep(200);
          if (step === 'deleted') active--;
        },
      });
      expect(summary.deadLettered).toBe(0);
    });
    expect(most).toBe(1);
    expect(await instanceCount(source)).toBe(0);
    await expectAllAtDestination(destination, set.instances);
  });

  it('keeps the lease on a study for as long as its move runs', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('long-move', { patients: 1 }));
    await upload(source, set.instances);
    const config = parseConfig(configFor([{ id: 'site-a', server: source }], destination));
    await withState(config, async (state) => {
      const studyId = await studyIdAt(source);
      const leaseMs = 400;
      const taken: boolean[] = [];
      const engine = {
        ...buildEngine(config, { ledger: state.ledger, feed: state.feed, log, owner: 'first' }),
        leaseMs,
        // The move stalls after sending for three lease lengths; a second worker keeps trying.
        onStep: async (step: string) => {
          if (step !== 'sent') return;
          for (let i = 0; i < 6; i++) {
            await sleep(leaseMs / 2);
            taken.push(
              await state.ledger.acquireLease(`study#site-a#${studyId}`, 'second', leaseMs, Date.now()),
            );
          }
        },
      };
      const outcome = await forwardWorkItem(
        engine,
        encodeWorkItem({ sourceId: 'site-a', studyId, reason: 'stable' }),
      );
      expect(outcome.result).toBe('moved');
      expect(taken).toEqual([false, false, false, false, false, false]);
    });
  });
});
