/**
 * What a poll reports about the watch list, against a real Orthanc: the count of studies still
 * waiting is what the watch list holds when the poll ends (it is logged and published as the
 * StudiesWaiting metric), not how many studies the read put on it on the way.
 */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../lambdas/core/config.ts';
import { createLog } from '../lambdas/core/log.ts';
import { openState } from '../lambdas/local/sqlite-state.ts';
import { generateStudies } from '../testbed/dicom-generator.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import { configFor, pollOnce, shape, startServers, until, upload, useTestbed } from './support/harness.ts';

const stableStudies = async (server: OrthancServer): Promise<number> =>
  (await server.rest<{ Changes: { ChangeType: string }[] }>('GET', '/changes?limit=1000')).Changes.filter(
    (change) => change.ChangeType === 'StableStudy',
  ).length;

describe('change feed', () => {
  const { fleet, workPath } = useTestbed('feed');

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
      const report = await pollOnce(config, state, createLog({ level: 'SILENT' }), { sweep: false });

      expect(report).toMatchObject({ queued: 2, waiting: 0 });
      expect(await state.feed.watched('site-a')).toEqual([]);
      expect(await state.queue.stats()).toEqual({ waiting: 2, inFlight: 0, deadLetters: 0 });
    } finally {
      state.close();
    }
  });
});
