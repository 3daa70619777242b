/**
 * The change feed against a real Orthanc: what a poll reports about the watch list; polls bounded
 * by their deadline in every phase, carried across polls (issue 13, item 2); a sweep that queues
 * a study only when it changed since it was last queued, and never one in flight (item 4); and
 * settings that changed making every study due at the next run (item 8).
 */
import { describe, expect, it } from 'vitest';
import { type PollReport, pollSource } from '../lambdas/core/changes-feed.ts';
import { parseConfig } from '../lambdas/core/config.ts';
import { buildEngine, feedSettings } from '../lambdas/core/engine.ts';
import { createLog } from '../lambdas/core/log.ts';
import type { OrthancClient } from '../lambdas/core/orthanc-client.ts';
import type { WorkItem } from '../lambdas/core/ports.ts';
import { openState } from '../lambdas/local/sqlite-state.ts';
import {
  type GeneratedInstance,
  generateStudies,
  SOP_CLASS_UID_TAG,
  withoutElements,
} from '../testbed/dicom-generator.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import {
  configFor,
  destinationEntry,
  heldUids,
  pollOnce,
  runUntilIdle,
  shape,
  startServers,
  uidsOf,
  until,
  upload,
  useTestbed,
  withDestinations,
} from './support/harness.ts';
import { expectBoundedHeadway, queuedCounts } from './support/scale-run.ts';

const stableStudies = async (server: OrthancServer): Promise<number> =>
  (await server.rest<{ Changes: { ChangeType: string }[] }>('GET', '/changes?limit=1000')).Changes.filter(
    (change) => change.ChangeType === 'StableStudy',
  ).length;

/** The source's client, each call recorded and costing `cost` ms on a virtual clock when it ends. */
const clocked = (
  client: OrthancClient,
  clock: { now: number },
  cost: number,
  calls: string[],
): OrthancClient =>
  new Proxy(client, {
    get: (target, name, receiver) => {
      const value: unknown = Reflect.get(target, name, receiver);
      if (typeof value !== 'function') return value;
      return async (...args: unknown[]) => {
        calls.push(String(name));
        try {
          return await value.apply(target, args);
        } finally {
          clock.now += cost;
        }
      };
    },
  });

describe('change feed', () => {
  const { fleet, workPath } = useTestbed('feed');
  const log = createLog({ level: 'SILENT' });

  it('reports no study waiting when the read that watched the studies also saw them turn stable', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('feed-waiting'));
    await upload(source, set.instances);
    await until(async () => (await stableStudies(source)) === 2);
    // One change a page: each study's NewStudy (which watches it) and its StableStudy (which
    // queues it and takes it off the list) are read in different pages of the one poll.
    const config = parseConfig(
      configFor([{ id: 'site-a', server: source }], destination, { changesPageSize: 1 }),
    );
    const state = openState(workPath('state.sqlite'), { maxReceives: config.retry.maxAttempts });
    try {
      const report = await pollOnce(config, state, log, { sweep: false });

      expect(report).toMatchObject({ queued: 2, waiting: 0 });
      expect(await state.feed.watched('site-a')).toEqual([]);
      expect(await state.queue.stats()).toEqual({ waiting: 2, inFlight: 0, deadLetters: 0 });
    } finally {
      state.close();
    }
  });

  it('polls in steps bounded by the deadline, feed first, each making headway, the sweep paged across polls, and queues every study once', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(
      shape('feed-bounded', { patients: 6, seriesPerStudy: 1, instancesPerSeries: 1 }),
    );
    await upload(source, set.instances);
    await until(async () => (await stableStudies(source)) === 6);
    const config = parseConfig(configFor([{ id: 'site-a', server: source }], destination));
    const state = openState(workPath('state.sqlite'), { maxReceives: config.retry.maxAttempts });
    try {
      const engine = buildEngine(config, { ledger: state.ledger, feed: state.feed, log, owner: 'test' });
      const clock = { now: Date.now() };
      const calls: string[][] = [];
      const items: WorkItem[] = [];
      // Every request costs 10 ms of the virtual clock; a poll has 25 ms: a page or a lookup or two.
      const budgetMs = 25;
      const polls = { reports: [] as PollReport[], used: [] as number[], budgetMs, overshootMs: 30 };
      for (let poll = 0; poll < 100; poll++) {
        calls.push([]);
        const began = clock.now;
        const report = await pollSource(
          {
            sourceId: 'site-a',
            source: clocked(
              engine.sources.get('site-a') as OrthancClient,
              clock,
              10,
              calls[poll] as string[],
            ),
            store: state.feed,
            sink: { enqueue: async (queued) => void items.push(...queued) },
            log,
            ...feedSettings(config, state.ledger),
            pageSize: 2,
            listPageSize: 2,
            now: () => clock.now,
            deadline: began + budgetMs,
          },
          // Until one has started: a poll whose time the feed took starts none.
          { sweepNow: !polls.reports.some((before) => before.sweeping || before.swept > 0) },
        );
        polls.reports.push(report);
        polls.used.push(clock.now - began);
        if (!report.outOfTime && !report.sweeping && report.waiting === 0) break;
      }

      expectBoundedHeadway(polls);
      expect(polls.reports.length).toBeGreaterThan(5);
      for (const made of calls) expect(made[0]).toBe('changes');
      // The sweep listed the source two studies a page, across polls.
      expect(polls.reports.filter((report) => report.sweeping).length).toBeGreaterThan(1);
      expect(calls.flat().filter((call) => call === 'studiesPage').length).toBeGreaterThanOrEqual(3);
      const studies = await source.rest<string[]>('GET', '/studies');
      expect([...queuedCounts(items)].sort()).toEqual(studies.map((id) => [id, 1]).sort());
    } finally {
      state.close();
    }
  });

  it('sweeps a partly moved study again only once it changed since it was moved', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('feed-partial', { patients: 1 }));
    // Without SOPClassUID in its data set: Orthanc's REST API stores it, its STOW-RS refuses it.
    const instances = set.instances.map((instance, index) =>
      index === 4 ? withoutElements(instance, [SOP_CLASS_UID_TAG]) : instance,
    );
    const refused = instances[4] as GeneratedInstance;
    const late = instances.at(-1) as GeneratedInstance;
    await upload(source, instances.slice(0, -1));
    await until(async () => (await stableStudies(source)) === 1);
    const config = parseConfig(configFor([{ id: 'site-a', server: source }], destination));
    const state = openState(workPath('state.sqlite'), { maxReceives: config.retry.maxAttempts });
    try {
      const { outcomes } = await runUntilIdle(config, state, log);
      expect(outcomes.map((outcome) => outcome.result)).toContain('partial');
      expect(await heldUids(source)).toEqual([refused.sopInstanceUid]);

      // Unchanged since it was moved: the sweep leaves it, however often it runs.
      for (let sweep = 0; sweep < 2; sweep++) {
        expect(await pollOnce(config, state, log)).toMatchObject({ queued: 0, swept: 1, waiting: 0 });
      }
      expect(await state.queue.stats()).toEqual({ waiting: 0, inFlight: 0, deadLetters: 0 });

      // An instance arrives: the study is queued again, once, whether the feed or the sweep sees it first.
      await upload(source, [late]);
      await until(async () => (await stableStudies(source)) === 2);
      expect(await pollOnce(config, state, log)).toMatchObject({ queued: 1 });
      expect(await pollOnce(config, state, log)).toMatchObject({ queued: 0 });
      expect(await state.queue.stats()).toMatchObject({ waiting: 1 });
    } finally {
      state.close();
    }
  });

  it('does not queue a study again while its work item is in flight', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    await upload(source, generateStudies(shape('feed-in-flight', { patients: 1 })).instances);
    await until(async () => (await stableStudies(source)) === 1);
    const config = parseConfig(configFor([{ id: 'site-a', server: source }], destination));
    const state = openState(workPath('state.sqlite'), { maxReceives: config.retry.maxAttempts });
    try {
      expect(await pollOnce(config, state, log, { sweep: false })).toMatchObject({ queued: 1 });
      expect(await state.queue.receive(1, 60_000)).toHaveLength(1);

      expect(await pollOnce(config, state, log)).toMatchObject({ queued: 0, swept: 1 });
      expect(await state.queue.stats()).toEqual({ waiting: 0, inFlight: 1, deadLetters: 0 });
    } finally {
      state.close();
    }
  });

  describe('settings that decided where studies stayed, changed', () => {
    type Settings = (raw: Record<string, unknown>, destination: OrthancServer) => Record<string, unknown>;

    /** Runs until idle under `before`, then under `after`: the second run moves every study. */
    const moveAgain = async (before: Settings, after: Settings) => {
      const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
      const set = generateStudies(shape('feed-settings'));
      await upload(source, set.instances);
      await until(async () => (await stableStudies(source)) === 2);
      const raw = configFor([{ id: 'site-a', server: source }], destination);
      const state = openState(workPath('state.sqlite'));
      try {
        const first = await runUntilIdle(parseConfig(before(raw, destination)), state, log);
        expect(await heldUids(source)).toEqual(uidsOf(set.instances));

        // The next run looks at every study again at once, and returns only once they are moved.
        const { outcomes } = await runUntilIdle(parseConfig(after(raw, destination)), state, log);
        expect(await heldUids(source)).toEqual([]);
        expect(outcomes.filter((outcome) => outcome.result === 'moved')).toHaveLength(2);
        return first.outcomes;
      } finally {
        state.close();
      }
    };

    it('moves every copied study once copying turns to moving, before run --until-idle returns', async () => {
      const first = await moveAgain(
        (raw) => ({ ...raw, deleteAfterForward: false }),
        (raw) => raw,
      );
      expect(first.filter((outcome) => outcome.result === 'copied')).toHaveLength(2);
    });

    it('moves every skipped study once the filter that skipped it is gone, before run --until-idle returns', async () => {
      const filtered =
        (filter?: object): Settings =>
        (raw, destination) =>
          withDestinations(raw, [
            destinationEntry('cloud', destination, filter === undefined ? {} : { filter }),
          ]);
      // The generated studies are CT: a filter on MR skips them, and they stay.
      const first = await moveAgain(filtered({ modalities: ['MR'] }), filtered());
      expect(first.filter((outcome) => outcome.result === 'skipped')).toHaveLength(2);
    });
  });
});
