/**
 * How the change-feed reader reads Orthanc's sequence numbers (issue 13, item 6), against the
 * Orthanc stand-in (test/support/orthanc-standin.ts): a real Orthanc reaches 2^31 changes only
 * after years, and answers oddly only behind a balancer or a stale proxy. Orthanc writes its
 * 64-bit sequence numbers as a C int, so past 2^31 they come out negative; and a cursor above
 * Last is taken for a reset database only when a second read agrees.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type PollReport, pollSource } from '../lambdas/core/changes-feed.ts';
import { parseConfig } from '../lambdas/core/config.ts';
import { feedSettings } from '../lambdas/core/engine.ts';
import { createEndpoint } from '../lambdas/core/http.ts';
import type { Log } from '../lambdas/core/log.ts';
import { OrthancClient } from '../lambdas/core/orthanc-client.ts';
import type { WorkItem } from '../lambdas/core/ports.ts';
import { type LocalState, openState } from '../lambdas/local/sqlite-state.ts';
import { captureLog } from './support/harness.ts';
import { OrthancStandIn } from './support/orthanc-standin.ts';
import { studyId } from './support/scale-run.ts';

describe('change feed sequence numbers', () => {
  let standIn: OrthancStandIn;
  let state: LocalState;
  const items: WorkItem[] = [];

  const start = async (firstSeq?: number) => {
    standIn = new OrthancStandIn(firstSeq === undefined ? {} : { firstSeq });
    await standIn.start();
  };

  /** A stable study, announced by NewStudy and StableStudy changes. */
  const arrive = (n: number) =>
    standIn.addStudy(studyId(n), {
      isStable: true,
      lastUpdate: `2024010${n}T000000`,
      changes: ['NewStudy', 'StableStudy'],
    });

  const poll = (log: Log): Promise<PollReport> => {
    const config = parseConfig({
      sources: [{ id: 'site-a', url: standIn.url }],
      destination: { url: 'http://127.0.0.1:9/dicom-web' },
    });
    const source = new OrthancClient(
      createEndpoint(config.sources[0] as (typeof config.sources)[number], config.timeouts),
    );
    return pollSource({
      sourceId: 'site-a',
      source,
      store: state.feed,
      sink: { enqueue: async (queued) => void items.push(...queued) },
      log,
      ...feedSettings(config, state.ledger),
    });
  };

  beforeEach(() => {
    state = openState(':memory:');
    items.length = 0;
  });

  afterEach(async () => {
    state.close();
    await standIn.stop();
  });

  it('reads sequence numbers past 2^31, which Orthanc writes negative, as unsigned', async () => {
    await start(2 ** 31 - 3);
    for (const n of [1, 2, 3]) arrive(n);
    await state.feed.advanceCursor('site-a', undefined, 2 ** 31 - 4);
    const { log, entries } = captureLog();

    const report = await poll(log);

    expect(report).toMatchObject({
      reset: false,
      changesRead: 6,
      cursor: 2 ** 31 + 2,
      last: 2 ** 31 + 2,
      queued: 3,
    });
    expect(await state.feed.getCursor('site-a')).toBe(2 ** 31 + 2);
    expect(entries.filter((entry) => entry.level === 'warn')).toEqual([]);
    // Read again from there: nothing new, and no reset either.
    expect(await poll(log)).toMatchObject({ reset: false, changesRead: 0, queued: 0, cursor: 2 ** 31 + 2 });
  });

  it('takes one answer whose Last is below the cursor for an odd answer, not a reset, when a second read disagrees', async () => {
    await start();
    for (const n of [1, 2, 3]) arrive(n);
    const { log, entries } = captureLog();
    expect(await poll(log)).toMatchObject({ cursor: 6, queued: 3 });

    // One answer as a wiped database would give it (another server behind a balancer, say).
    standIn.nextChangesAnswer = { Changes: [], Done: true, Last: 0 };
    const odd = await poll(log);

    expect(odd).toMatchObject({ reset: false, cursor: 6, queued: 0 });
    expect(await state.feed.getCursor('site-a')).toBe(6);
    expect(items).toHaveLength(3);
    expect(entries.map((entry) => entry.message)).toContain(
      'the source answered a last change below the cursor once: not taken for a reset',
    );
  });

  it('reads the feed again from the start when both reads say the database was reset', async () => {
    await start();
    for (const n of [1, 2, 3]) arrive(n);
    const { log, entries } = captureLog();
    expect(await poll(log)).toMatchObject({ cursor: 6, queued: 3 });

    standIn.wipe();
    arrive(4);
    const reset = await poll(log);

    expect(reset).toMatchObject({ reset: true, cursor: 2, queued: 1 });
    expect(items.map((item) => item.studyId)).toEqual([1, 2, 3, 4].map(studyId));
    expect(entries.map((entry) => entry.message)).toContain(
      'source database was reset: reading its change feed from the start',
    );
  });
});
