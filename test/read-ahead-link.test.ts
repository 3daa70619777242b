/**
 * The read-ahead against a real source Orthanc across an emulated link (20 ms, 1 Gbit/s): its
 * pipelined reads move a study of many small instances completely at the first attempt, on the
 * connections of one pool; and so they do when the source closes every connection after one
 * answer (Orthanc's KeepAlive off). A read ahead that fails is read again on its own
 * (test/read-ahead.test.ts).
 * How fast, is `npm run bench -- --link` (docs/performance.md, "Over a link").
 */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../lambdas/core/config.ts';
import { generateStudies } from '../testbed/dicom-generator.ts';
import { LinkEmulator } from '../testbed/link-emulator.ts';
import {
  captureLog,
  configFor,
  expectAllAtDestination,
  instanceCount,
  runUntilIdle,
  shape,
  startServers,
  untilStudiesStable,
  upload,
  useTestbed,
} from './support/harness.ts';

const LINK = { rttMs: 20, mbit: 1000 };

describe('read-ahead over a link', () => {
  const { fleet, withState, closeAfterTest } = useTestbed('read-ahead-link');

  it.each([
    { keepAlive: true, name: 'pipelined on a few connections' },
    { keepAlive: false, name: 'with KeepAlive off at the source (a connection per read)' },
  ])('moves 160 small instances at the first attempt, $name', async ({ keepAlive }) => {
    const [destination, source] = await startServers(fleet, [
      'destination',
      { name: 'source', extraConfig: { KeepAlive: keepAlive } },
    ]);
    const set = generateStudies(
      shape(`read-ahead-${keepAlive}`, {
        patients: 1,
        seriesPerStudy: 2,
        instancesPerSeries: 80,
        pixelBytes: 4 * 1024,
      }),
    );
    await upload(source, set.instances);
    await untilStudiesStable(source);
    const link = closeAfterTest(await LinkEmulator.start(source.httpPort, LINK));
    const raw = configFor([{ id: 'site-a', server: source }], destination, {
      // One request for the whole study, all of it read ahead: the most pipelining there can be.
      stow: { maxInstances: 200, parallel: 1, readAheadInstances: 64 },
    });
    const config = parseConfig({
      ...raw,
      sources: (raw.sources as Record<string, unknown>[]).map((entry) => ({ ...entry, url: link.url })),
    });

    await withState(config, async (state) => {
      const capture = captureLog();
      const { outcomes, summary } = await runUntilIdle(config, state, capture.log);
      expect(outcomes.map((outcome) => [outcome.result, outcome.sent, outcome.deleted])).toEqual([
        ['moved', 160, 160],
      ]);
      expect(summary).toMatchObject({ deadLettered: 0 });
      // No attempt failed: nothing was retried.
      expect(capture.entries.filter((entry) => entry.level === 'warn' || entry.level === 'error')).toEqual(
        [],
      );
    });
    expect(await instanceCount(source)).toBe(0);
    await expectAllAtDestination(destination, set.instances);
    if (keepAlive) {
      // 160 reads and the rest of the move on the pool's connections, not one connection each.
      expect(link.stats.connections).toBeLessThanOrEqual(16);
    } else {
      expect(link.stats.connections).toBeGreaterThan(160);
    }
  });
});
